"""How well an LID estimate matches the true local intrinsic dimension.

Plain array functions (numpy; torch tensors, lists and arrays are all accepted) for data with
known LID such as :mod:`memgeo.data.manifolds`:

- :func:`lid_mae`: mean absolute error;
- :func:`lid_relative_bias`: mean signed error relative to the truth, over points with true LID > 0;
- :func:`concordance_index`: Harrell's C, whether the estimate *orders* points correctly, which is
  what memorization detection by "small LID" needs even when the estimate is biased;
- :func:`per_component_summary`: all of the above per sub-manifold.

Every function raises :class:`~memgeo.errors.MemgeoError` for inputs that are not 1-D, differ in
length, are empty or hold NaN/inf.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memgeo.errors import MemgeoError, check_finite


def _vector(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise MemgeoError(f"{name} has dtype {arr.dtype} but must be real numbers", f"pass {name} as a float array")
    if arr.ndim != 1:
        raise MemgeoError(f"{name} has shape {arr.shape} but must be 1-D", "pass one value per point, shape (N,)")
    if arr.shape[0] == 0:
        raise MemgeoError(f"{name} is empty", "pass at least one point")
    check_finite(arr, name)
    return arr.astype(np.float64)


def _pair(est: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    e = _vector(est, "est")
    t = _vector(true, "true")
    if e.shape[0] != t.shape[0]:
        raise MemgeoError(f"est has {e.shape[0]} values but true has {t.shape[0]}",
                          "pass one estimate and one true LID per point")
    return e, t


def lid_mae(est: Any, true: Any) -> float:
    """Mean absolute error ``mean(|est - true|)``.

    Parameters
    ----------
    est, true : array-like, shape (N,)
        Estimated and true LID per point (finite).

    Returns
    -------
    float
    """
    e, t = _pair(est, true)
    return float(np.mean(np.abs(e - t)))


def lid_relative_bias(est: Any, true: Any) -> float:
    """Mean relative error ``mean((est - true) / true)`` over the points with ``true > 0``.

    Points of true LID 0 (atoms, duplicated or isolated points) have no relative error and are
    left out; :func:`lid_mae` covers them. Negative values mean the estimate is too small on
    average (e.g. -0.1: 10% under).

    Parameters
    ----------
    est, true : array-like, shape (N,)

    Returns
    -------
    float
        ``nan`` when no point has ``true > 0``.
    """
    e, t = _pair(est, true)
    pos = t > 0
    if not pos.any():
        return float("nan")
    return float(np.mean((e[pos] - t[pos]) / t[pos]))


def concordance_index(est: Any, true: Any) -> float:
    """Harrell's concordance index C between an estimate and the true LID.

    Over all pairs of points with different true LID, the fraction that the estimate orders the
    same way (the point of larger true LID has the larger estimate); pairs with equal estimates
    count 1/2, pairs with equal true LID are not counted. C = 1 is a perfect ranking, 0 a reversed
    one, 0.5 an uninformative one (e.g. a constant estimate). Equivalently, the pair-count
    weighted average of the Mann-Whitney AUROCs between every two levels of the true LID.

    Vectorized O(N log^2 N): concordant pairs are counted by a bottom-up merge sort in numpy,
    ties from group counts (N = 10^5 takes well under a second).

    Parameters
    ----------
    est, true : array-like, shape (N,)

    Returns
    -------
    float
        In [0, 1].

    Raises
    ------
    MemgeoError
        Besides the input checks, when every point has the same true LID (no comparable pair).
    """
    e, t = _pair(est, true)
    n = e.shape[0]
    _, t_counts = np.unique(t, return_counts=True)
    pairs = (n * n - int(np.sum(t_counts.astype(np.int64) ** 2))) // 2
    if pairs == 0:
        raise MemgeoError("every point has the same true LID, so no pair can be ranked",
                          "pass points with at least two different true LIDs")
    _, e_rank = np.unique(e, return_inverse=True)
    e_rank = e_rank.reshape(-1).astype(np.int64)
    # Pairs with different true LID and equal estimates: all est-tied pairs minus those also tied in true.
    _, e_counts = np.unique(e_rank, return_counts=True)
    _, both_counts = np.unique(np.stack([t, e_rank.astype(np.float64)], axis=1), axis=0, return_counts=True)
    ties = _n_pairs(e_counts) - _n_pairs(both_counts)
    # Concordant pairs: sort by (true ascending, estimate descending), then count the pairs i < j
    # whose estimate strictly increases; within a true-LID level the estimate never increases, so
    # exactly the pairs t_i < t_j, e_i < e_j are counted.
    seq = e_rank[np.lexsort((-e_rank, t))]
    concordant = _increasing_pairs(seq)
    return (concordant + 0.5 * ties) / pairs


def _n_pairs(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int(np.sum(counts * (counts - 1) // 2))


def _increasing_pairs(seq: np.ndarray) -> int:
    """Number of pairs i < j with seq[i] < seq[j] for non-negative ints, by a vectorized merge sort.

    Bottom-up: at width w every block of w entries is sorted; for each entry in the right half of
    a 2w-block, a binary search in the (globally sorted, block-offset) left halves counts the
    smaller entries to its left, then each 2w-block is sorted. O(N log^2 N) in numpy calls only.
    """
    n = seq.shape[0]
    span = int(seq.max()) + 1
    pos = np.arange(n, dtype=np.int64)
    cur = seq.astype(np.int64)
    total = 0
    w = 1
    while w < n:
        blk = pos // (2 * w)
        left = (pos % (2 * w)) < w
        key = blk * span + cur
        left_keys = key[left]  # blocks in order, each half sorted: globally sorted
        right = ~left
        below = np.searchsorted(left_keys, key[right], side="left")
        before_block = np.searchsorted(left_keys, blk[right] * span, side="left")
        total += int(np.sum(below - before_block))
        cur = np.sort(key) - blk * span  # the sort keeps every 2w-block in its own positions
        w *= 2
    return total


def per_component_summary(est: Any, true: Any, component: Any) -> list[dict[str, Any]]:
    """Accuracy of an LID estimate on each sub-manifold.

    Parameters
    ----------
    est, true : array-like, shape (N,)
    component : array-like of int, shape (N,)
        Sub-manifold of each point (e.g. ``dataset.y`` of :mod:`memgeo.data.manifolds` data).

    Returns
    -------
    list of dict
        One per component, in increasing component order, with keys ``component`` (int),
        ``true_lid`` (the component's true LID: an int when it is one integer throughout, else the
        mean as a float), ``n``, ``mean`` and ``std`` (population std, ddof=0) of the estimate,
        ``mae`` and ``relative_bias`` (as :func:`lid_relative_bias`; ``None`` when the component's
        true LID is 0 everywhere, so that the dicts stay JSON-safe).
    """
    e, t = _pair(est, true)
    c = component.detach().cpu().numpy() if hasattr(component, "detach") else np.asarray(component)
    if c.ndim != 1 or c.shape[0] != e.shape[0]:
        raise MemgeoError(f"component has shape {c.shape} but est has {e.shape[0]} values",
                          "pass one component label per point, shape (N,)")
    if c.dtype == np.bool_ or not np.issubdtype(c.dtype, np.integer):
        if np.issubdtype(c.dtype, np.floating) and np.all(np.isfinite(c)) and np.all(c == np.round(c)):
            c = c.astype(np.int64)
        else:
            raise MemgeoError(f"component has dtype {c.dtype} but must be integers", "pass integer labels")
    rows = []
    for k in np.unique(c):
        sel = c == k
        ek, tk = e[sel], t[sel]
        if np.all(tk == tk[0]) and float(tk[0]).is_integer():
            true_lid: int | float = int(tk[0])
        else:
            true_lid = float(np.mean(tk))
        rb = lid_relative_bias(ek, tk)
        rows.append({
            "component": int(k),
            "true_lid": true_lid,
            "n": int(sel.sum()),
            "mean": float(np.mean(ek)),
            "std": float(np.std(ek)),
            "mae": float(np.mean(np.abs(ek - tk))),
            "relative_bias": None if np.isnan(rb) else rb,
        })
    return rows
