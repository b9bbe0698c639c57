"""Exact nearest neighbours in normalized pixel l2, and exact de-duplication of a training set.

Distances throughout the memorization layer are *normalized* pixel l2 distances

    d(a, b) = sqrt(mean_j (a_j - b_j)^2) = ||a - b||_2 / sqrt(D),

computed over the flattened dimension D, so that a distance reads as a root-mean-square pixel
difference and is comparable across image sizes (for images in [-1, 1] it lies in [0, 2]).

Search is done in two passes per chunk of queries: ``torch.cdist`` (which uses a fast matrix
product, hence can be off by float rounding) pre-selects a few more candidates than asked for, then
the candidates' distances are recomputed exactly in float64 from the differences and re-sorted.
This keeps the speed of the matrix product while an exact copy gets distance exactly 0 and the
order of the returned neighbours is the order of the exact distances.
"""

from __future__ import annotations

import numpy as np
import torch

from memgeo.errors import MemgeoError, check_finite, check_scalar

ArrayLike = torch.Tensor | np.ndarray

# Extra candidates kept by the float32 pre-selection; the exact pass re-ranks them. The matrix
# product's rounding error is far below typical gaps between the k-th and (k + 8)-th neighbour.
_EXTRA_CANDIDATES = 8
# Budget, in float64 elements, for the difference tensor of the exact pass (128 MiB).
_REFINE_BUDGET = 1 << 24


def as_points(x: ArrayLike, name: str) -> torch.Tensor:
    """Validate ``x`` and flatten it to a 2-D float tensor of points.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray, shape (N, ...)
        Points, one per leading index (images (N, C, H, W), vectors (N, D), or scalars (N,)).
    name : str
        Argument name used in error messages.

    Returns
    -------
    torch.Tensor, shape (N, D)
        Same device as ``x`` (CPU for arrays); float64 input stays float64, anything else becomes
        float32.

    Raises
    ------
    MemgeoError
        If ``x`` is 0-D, not real-numeric, or holds NaN/inf.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise MemgeoError(f"{name} has non-numeric dtype {arr.dtype}", "pass a real-valued float array")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.bool or t.is_complex():
        raise MemgeoError(f"{name} has dtype {t.dtype}", "pass a real-valued float tensor")
    if t.ndim == 0:
        raise MemgeoError(f"{name} is a scalar (0-D)", "pass a batch of points with shape (N, ...)")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    if t.numel() and not bool(torch.isfinite(t).all()):
        check_finite(t, name)  # raises with a count and the first bad index
    # Explicit width: reshape(0, -1) is ambiguous for an empty batch.
    return t.reshape(t.shape[0], int(np.prod(t.shape[1:], dtype=np.int64)))


def nearest_neighbors(
    queries: ArrayLike,
    reference: ArrayLike,
    k: int = 2,
    chunk_size: int = 1024,
    *,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of each query among the reference points.

    Parameters
    ----------
    queries : torch.Tensor or numpy.ndarray, shape (M, ...)
        Query points; flattened to (M, D).
    reference : torch.Tensor or numpy.ndarray, shape (N, ...)
        Reference points (e.g. training images); flattened to (N, D) with the same D.
    k : int, default 2
        Number of neighbours, ``1 <= k <= N``.
    chunk_size : int, default 1024
        Queries processed at once. Peak extra memory is about ``chunk_size * N`` floats for the
        distance block, so 10k x 10k x 784 runs in well under 100 MiB.
    device : str or torch.device, optional
        Where to compute; default the device of ``queries`` if it is a tensor, else CPU.

    Returns
    -------
    distances : torch.Tensor, shape (M, k), float64
        Normalized pixel l2 distances ``sqrt(mean((q - r)^2))``, ascending along each row.
    indices : torch.Tensor, shape (M, k), int64
        Row indices into ``reference``; equal distances are ordered by smaller index.

    Raises
    ------
    MemgeoError
        Non-finite values, mismatched flattened dimensions, ``k`` outside ``[1, N]`` or a
        non-positive ``chunk_size``.
    """
    q = as_points(queries, "queries")
    r = as_points(reference, "reference")
    if q.shape[1] != r.shape[1]:
        raise MemgeoError(
            f"queries have flattened dimension {q.shape[1]} but reference has {r.shape[1]}",
            "pass queries and reference images of the same shape",
        )
    n = r.shape[0]
    k = check_scalar(k, "k", min=1, max=n, fix=f"ask for k in [1, {n}] neighbours from {n} reference point(s)")
    check_scalar(chunk_size, "chunk_size", min=1)
    dev = torch.device(device) if device is not None else q.device
    # One working dtype for the pre-selection: float64 only if an input already is.
    work = torch.float64 if torch.float64 in (q.dtype, r.dtype) else torch.float32
    r_work = r.to(dev, work)
    r64 = r_work if work == torch.float64 else r.to(dev, torch.float64)
    dim = r.shape[1]
    n_cand = min(n, k + _EXTRA_CANDIDATES)

    out_d = torch.empty((q.shape[0], k), dtype=torch.float64, device=dev)
    out_i = torch.empty((q.shape[0], k), dtype=torch.int64, device=dev)
    for start in range(0, q.shape[0], int(chunk_size)):
        qc = q[start:start + int(chunk_size)].to(dev, work)
        approx = torch.cdist(qc.unsqueeze(0), r_work.unsqueeze(0)).squeeze(0)  # (c, N)
        cand = torch.topk(approx, n_cand, dim=1, largest=False).indices
        # Sorting candidate indices first makes the later stable sort break ties by index.
        cand = torch.sort(cand, dim=1).values
        exact = _exact_distances(qc.to(torch.float64), r64, cand)
        order = torch.sort(exact, dim=1, stable=True).indices[:, :k]
        out_d[start:start + qc.shape[0]] = torch.gather(exact, 1, order) / np.sqrt(dim)
        out_i[start:start + qc.shape[0]] = torch.gather(cand, 1, order)
    return out_d, out_i


def _exact_distances(q64: torch.Tensor, r64: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Plain (unnormalized) l2 distances ``||q_i - r_cand[i, j]||``, shape (c, n_cand), in float64.

    Computed from the differences, not from the ``|a|^2 + |b|^2 - 2ab`` expansion, so identical rows
    give exactly 0. Rows are processed in sub-chunks that keep the (rows, n_cand, D) difference
    tensor within ``_REFINE_BUDGET`` elements.
    """
    c, n_cand = cand.shape
    dim = q64.shape[1]
    step = max(1, _REFINE_BUDGET // max(1, n_cand * dim))
    out = torch.empty((c, n_cand), dtype=torch.float64, device=q64.device)
    for s in range(0, c, step):
        diff = r64[cand[s:s + step]] - q64[s:s + step, None, :]
        out[s:s + step] = torch.linalg.vector_norm(diff, dim=2)
    return out


def unique_rows(x: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """De-duplicate points by exact equality of their flattened rows.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray, shape (N, ...)
        Points (e.g. a training set); flattened to (N, D). Must be finite.

    Returns
    -------
    unique : numpy.ndarray, shape (U, D)
        The distinct rows, in order of first appearance in ``x`` (so ``unique[0]`` is ``x[0]``),
        with ``x``'s float dtype (integer input becomes float32).
    inverse : numpy.ndarray, shape (N,), int64
        ``unique[inverse[i]]`` equals row ``i`` of ``x``.

    Notes
    -----
    Equality is numeric (``0.0 == -0.0``). The index of the first occurrence of each unique row
    is ``first_occurrence(inverse)``.
    """
    arr = as_points(x, "x").cpu().numpy()
    if arr.shape[0] == 0:
        return arr.copy(), np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(arr, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    # np.unique sorts rows lexicographically; renumber them by first appearance instead.
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return arr[first[order]].copy(), rank[inverse].astype(np.int64)


def first_occurrence(inverse: np.ndarray) -> np.ndarray:
    """Index of the first row mapped to each unique row.

    Parameters
    ----------
    inverse : numpy.ndarray, shape (N,)
        As returned by :func:`unique_rows`.

    Returns
    -------
    numpy.ndarray, shape (U,), int64
        ``first[u]`` is the smallest ``i`` with ``inverse[i] == u``.
    """
    inverse = np.asarray(inverse, dtype=np.int64).reshape(-1)
    n_unique = int(inverse.max()) + 1 if inverse.size else 0
    first = np.full(n_unique, inverse.size, dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(inverse.size, dtype=np.int64))
    return first
