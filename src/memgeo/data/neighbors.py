"""Nearest neighbours in normalized pixel l2 (exact, or approximate through faiss), and exact
de-duplication of a training set.

Distances throughout the memorization layer are *normalized* pixel l2 distances

    d(a, b) = sqrt(mean_j (a_j - b_j)^2) = ||a - b||_2 / sqrt(D),

computed over the flattened dimension D, so that a distance reads as a root-mean-square pixel
difference and is comparable across image sizes (for images in [-1, 1] it lies in [0, 2]).

Exact search (backends ``"torch"`` and ``"faiss"``) is done in two passes per block of the reference
and chunk of queries: a fast matrix-product distance (``torch.cdist`` or faiss's brute-force
``knn``, i.e. what ``IndexFlatL2`` computes; both can be off by float rounding) pre-selects a few more
candidates than asked for, then the candidates' distances are recomputed exactly in float64 from the
differences and re-sorted. This keeps the speed of the matrix product while an exact copy gets
distance exactly 0 and the order of the returned neighbours is the order of the exact distances.
A guard makes the pre-selection safe: when the last pre-selected candidate's approximate squared
distance is not above the k-th exact one by more than a bound on the rounding error (many ties, e.g.
a duplicated training image), that query is re-ranked against *every* reference point whose
approximate distance is within the bound. The result is the exact k nearest neighbours with equal
distances ordered by smaller index, so both exact backends return identical neighbours and distances.

Scale: the reference is processed in blocks of ``block_size`` rows and the per-block top-k lists are
merged, so memory stays about one block (plus a chunk x block distance tile for ``"torch"``) whatever
N is. A memory-mapped ``.npy`` (``numpy.load(path, mmap_mode="r")``, or just its path) is read block
by block and never loaded whole: 1,000,000 x 784 float32 (3.1 GB) is searched in ~256 MiB.

Approximate backends (need ``faiss``, the ``scale`` extra): ``"faiss-ivf"`` (``IndexIVFFlat`` with
``nlist`` k-means cells, ``nprobe`` of them visited per query) and ``"faiss-hnsw"``
(``IndexHNSWFlat`` with ``hnsw_m`` links per node, ``ef_search`` candidates per search). They hold the
whole reference in faiss's memory (``N * D * 4`` bytes; added block by block) and may miss true
neighbours; the neighbours they return are re-ranked exactly (exact distances). Measure what they
miss with :func:`approximate_recall`.
"""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memgeo.errors import MemgeoError, check_choice, check_finite, check_scalar

ArrayLike = torch.Tensor | np.ndarray

__all__ = ["APPROXIMATE_BACKENDS", "BACKENDS", "EXACT_BACKENDS", "ArrayLike", "NeighborIndex", "approximate_recall",
           "as_points", "faiss_available", "first_occurrence", "load_reference", "nearest_neighbors", "unique_inverse",
           "unique_rows"]

BACKENDS = ("auto", "torch", "faiss", "faiss-ivf", "faiss-hnsw")
EXACT_BACKENDS = ("torch", "faiss")
APPROXIMATE_BACKENDS = ("faiss-ivf", "faiss-hnsw")

# Extra candidates kept by the float32 pre-selection; the exact pass re-ranks them. The matrix
# product's rounding error is far below typical gaps between the k-th and (k + 8)-th neighbour
# (and the guard in _refine catches the cases where it is not).
_EXTRA_CANDIDATES = 8
# Budget, in float64 elements, for the difference tensor of the exact pass (2 MiB: small enough to
# stay in cache, which made the re-ranking 4x faster than with a 128 MiB tensor).
_REFINE_BUDGET = 1 << 18
# Default reference block: 256 MiB of float32 rows.
_BLOCK_BYTES = 1 << 28
# Budget, in elements, of one (queries, block) approximate distance tile of the torch backend.
_TILE_BUDGET = 1 << 25
_EPS32 = float(np.finfo(np.float32).eps)
# Elements per slice of the finite check and of the row hashing of unique_rows.
_FINITE_SLICE = 1 << 24
_HASH_SLICE = 1 << 22


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
        _check_numeric_dtype(arr.dtype, name)
        cow = _copy_on_write_view(arr)
        if cow is not None:
            # A read-only memory map is re-opened copy-on-write: torch shares it (the file is paged in
            # on demand and never written), instead of a private copy of the whole array.
            arr = cow
        else:
            arr = np.ascontiguousarray(arr)
        # Other read-only memory is copied (torch cannot share non-writable memory).
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if t.dtype == torch.bool or t.is_complex():
        raise MemgeoError(f"{name} has dtype {t.dtype}", "pass a real-valued float tensor")
    if t.ndim == 0:
        raise MemgeoError(f"{name} is a scalar (0-D)", "pass a batch of points with shape (N, ...)")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    if t.numel() and not _all_finite(t):
        check_finite(t, name)  # raises with a count and the first bad index
    # Explicit width: reshape(0, -1) is ambiguous for an empty batch.
    return t.reshape(t.shape[0], int(np.prod(t.shape[1:], dtype=np.int64)))


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every entry is finite, checked in slices of at most 2**24 elements (no full-size mask)."""
    if t.ndim == 0 or t.numel() <= _FINITE_SLICE:
        return bool(torch.isfinite(t).all())
    step = max(1, _FINITE_SLICE // max(1, t[0].numel()))
    return all(bool(torch.isfinite(t[s:s + step]).all()) for s in range(0, t.shape[0], step))


def _copy_on_write_view(arr: np.ndarray) -> np.ndarray | None:
    """A writable, copy-on-write memory map of the same bytes as the read-only memory map ``arr``.

    Returns ``None`` unless ``arr`` is a C-contiguous, read-only ``numpy.memmap`` (or a view of one)
    whose bytes can be located in its file; then the result has the same dtype, shape and values and
    shares the file's pages (writes to it would stay private to the process).
    """
    if arr.flags.writeable or not arr.flags.c_contiguous or arr.size == 0:
        return None
    base: Any = arr
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    mm = getattr(base, "_mmap", None)
    filename = getattr(base, "filename", None)
    if mm is None or filename is None:
        return None
    try:
        start = int(base.offset) - int(base.offset) % mmap.ALLOCATIONGRANULARITY
        mm_addr = np.frombuffer(mm, dtype=np.uint8).ctypes.data
        offset = start + (arr.ctypes.data - mm_addr)
        if offset < 0 or offset + arr.nbytes > os.path.getsize(filename):
            return None
        return np.memmap(filename, dtype=arr.dtype, mode="c", offset=offset, shape=arr.shape)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _check_numeric_dtype(dtype: np.dtype, name: str) -> None:
    if dtype == np.bool_ or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise MemgeoError(f"{name} has non-numeric dtype {dtype}", "pass a real-valued float array")


def faiss_available() -> bool:
    """Whether ``faiss`` imports (the ``scale`` extra: ``pip install 'memgeo[scale]'``)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise MemgeoError("the faiss backends need faiss, which is not installed",
                          "pip install 'memgeo[scale]' (faiss-cpu) or use backend='torch'") from exc
    return faiss


def load_reference(x: ArrayLike | str | os.PathLike[str], name: str = "reference") -> np.ndarray | torch.Tensor:
    """A reference set as a 2-D (N, D) array or tensor, *without* copying or loading it into memory.

    Parameters
    ----------
    x : torch.Tensor, numpy.ndarray (memory-mapped or not), or path to a ``.npy`` file, shape (N, ...)
        A path is opened with ``numpy.load(path, mmap_mode="r")``.
    name : str
        Used in error messages.

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape (N, D)
        A view of ``x`` (a memory map stays a memory map). Values are checked (finite) only when
        blocks are read by a search.

    Raises
    ------
    MemgeoError
        Missing or unreadable file, non-numeric dtype, 0-D input.
    """
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if path.suffix.lower() != ".npy":
            raise MemgeoError(f"{name} {path} is not a .npy file", "save the array with numpy.save(path.npy, array)")
        if not path.is_file():
            raise MemgeoError(f"{name} file {path} does not exist", "check the path")
        try:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise MemgeoError(f"cannot read {name} {path} as a .npy array ({exc})",
                              "pass a file written by numpy.save") from exc
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or t.dtype in (
                torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
            raise MemgeoError(f"{name} has dtype {t.dtype}", "pass a real-valued float tensor")
        if t.ndim == 0:
            raise MemgeoError(f"{name} is a scalar (0-D)", "pass a batch of points with shape (N, ...)")
        return t.reshape(t.shape[0], int(np.prod(t.shape[1:], dtype=np.int64)))
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    _check_numeric_dtype(arr.dtype, name)
    if arr.ndim == 0:
        raise MemgeoError(f"{name} is a scalar (0-D)", "pass a batch of points with shape (N, ...)")
    return arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:], dtype=np.int64)))


def _is_float64(x: np.ndarray | torch.Tensor) -> bool:
    return x.dtype in (torch.float64, np.float64)


def _release_pages(arr: np.ndarray) -> None:
    """Unmap the resident pages of a memory-mapped array after a block was copied out of it.

    The pages stay in the OS page cache (a later read is fast) but no longer count in this process's
    resident memory, so scanning a 3 GB memory map keeps the RSS at about one block. Skipped for
    copy-on-write maps (``mode="c"``), whose private changes ``MADV_DONTNEED`` would discard.
    """
    mm = getattr(arr, "_mmap", None)
    if mm is None or getattr(arr, "mode", "c") == "c" or not hasattr(mm, "madvise"):
        return
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError, AttributeError):
        pass


def _np_dtype(work: torch.dtype) -> type:
    return np.float64 if work == torch.float64 else np.float32


class NeighborIndex:
    """k-nearest-neighbour search in a fixed reference set, exact or approximate, in bounded memory.

    Parameters
    ----------
    reference : torch.Tensor, numpy.ndarray or path to a ``.npy`` file, shape (N, ...)
        Reference points (e.g. training images), flattened to (N, D). Not copied: a memory map
        (``numpy.load(path, mmap_mode="r")`` or the path itself) is read block by block.
    backend : {"auto", "torch", "faiss", "faiss-ivf", "faiss-hnsw"}, default "auto"
        ``"auto"``: exact faiss brute force when faiss imports, the device is the CPU and the data
        are float32; exact torch otherwise. ``"torch"`` and ``"faiss"`` are exact and return
        identical results; ``"faiss-ivf"`` and ``"faiss-hnsw"`` are approximate (see the module notes).
    block_size : int, optional
        Reference rows searched at once (exact backends) or added at once (approximate ones);
        default: 256 MiB of float32 rows (85,598 rows at D = 784).
    chunk_size : int, default 1024
        Queries searched at once. The torch backend further splits a chunk so that its
        (queries, block) distance tile stays under 2**25 elements (128 MiB in float32).
    device : str or torch.device, optional
        Where the torch backend computes; default the reference's device (CPU for arrays). faiss
        runs on the CPU; its results are moved to ``device``.
    nlist : int, optional
        ``"faiss-ivf"``: number of k-means cells; default ``round(4 * sqrt(N))`` (at most N / 39, at
        least 1). The cells are trained on ``min(N, 40 * nlist)`` rows drawn with ``seed``.
    nprobe : int, optional
        ``"faiss-ivf"``: cells visited per query; default ``min(nlist, max(16, nlist // 64))``
        (recall@1 0.999 and recall@10 0.985 at N = 100,000 perturbed MNIST digits, nlist 1,265:
        docs/benchmarks.md section 11).
    hnsw_m : int, default 32
        ``"faiss-hnsw"``: links per node.
    ef_search : int, default 64
        ``"faiss-hnsw"``: size of the candidate list during search (raised to k + 8 when smaller).
    ef_construction : int, default 64
        ``"faiss-hnsw"``: size of the candidate list while building.
    seed : int, default 0
        Seed of the IVF training sample and of faiss's k-means.

    Attributes
    ----------
    reference : numpy.ndarray or torch.Tensor, shape (N, D)
        The reference as given (a view).
    backend : str
        The backend asked for (``"auto"`` is resolved per search: see :attr:`exact_backend`).
    exact : bool
        Whether searches are exact.
    """

    def __init__(self, reference: ArrayLike | str | os.PathLike[str], *, backend: str = "auto",
                 block_size: int | None = None, chunk_size: int = 1024, device: str | torch.device | None = None,
                 nlist: int | None = None, nprobe: int | None = None, hnsw_m: int = 32, ef_search: int = 64,
                 ef_construction: int = 64, seed: int = 0) -> None:
        check_choice(backend, BACKENDS, "kNN backend")
        self.reference = load_reference(reference)
        self.backend = backend
        self.exact = backend not in APPROXIMATE_BACKENDS
        self.chunk_size = check_scalar(chunk_size, "chunk_size", min=1)
        default_block = max(1, _BLOCK_BYTES // (4 * max(1, self.dim)))
        self.block_size = check_scalar(block_size, "block_size", min=1, allow_none=True) or default_block
        ref_dev = self.reference.device if isinstance(self.reference, torch.Tensor) else torch.device("cpu")
        self.device = torch.device(device) if device is not None else ref_dev
        self.seed = check_scalar(seed, "seed", min=0)
        self._cached_block: tuple[torch.dtype, torch.Tensor] | None = None
        self._index: Any = None
        if backend == "faiss" or backend in APPROXIMATE_BACKENDS:
            _import_faiss()
        if backend == "faiss-ivf":
            n = max(1, self.n)
            default_nlist = int(min(max(1, round(4 * math.sqrt(n))), max(1, n // 39)))
            self.nlist = check_scalar(nlist, "nlist", min=1, max=n, allow_none=True) or default_nlist
            self.nprobe = check_scalar(nprobe, "nprobe", min=1, allow_none=True) or min(self.nlist, max(16, self.nlist // 64))
            self.nprobe = min(self.nprobe, self.nlist)
        elif backend == "faiss-hnsw":
            self.hnsw_m = check_scalar(hnsw_m, "hnsw_m", min=2)
            self.ef_search = check_scalar(ef_search, "ef_search", min=1)
            self.ef_construction = check_scalar(ef_construction, "ef_construction", min=1)
        if not self.exact:
            if self.n == 0:
                raise MemgeoError("reference holds no points", "pass at least one reference point")
            self._build()

    # --- properties ---------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of reference points N."""
        return int(self.reference.shape[0])

    @property
    def dim(self) -> int:
        """Flattened dimension D."""
        return int(self.reference.shape[1])

    def exact_backend(self, work: torch.dtype = torch.float32) -> str:
        """The exact backend ``"auto"`` resolves to for data of dtype ``work`` (``self.backend`` otherwise)."""
        if self.backend != "auto":
            return self.backend
        return "faiss" if self._auto_faiss(work) else "torch"

    def _auto_faiss(self, work: torch.dtype) -> bool:
        """The ``"auto"`` rule: exact faiss for float32 data on the CPU when faiss is installed."""
        return work == torch.float32 and self.device.type == "cpu" and faiss_available()

    # --- reading the reference ----------------------------------------------------------------------
    def _block(self, start: int, stop: int, work: torch.dtype) -> torch.Tensor:
        """Rows ``start:stop`` as a contiguous CPU/device tensor of dtype ``work``, checked finite."""
        if start == 0 and stop == self.n and self._cached_block is not None and self._cached_block[0] == work:
            return self._cached_block[1]
        ref = self.reference
        if isinstance(ref, torch.Tensor):
            blk = ref[start:stop]
            if blk.dtype != work:
                blk = blk.to(work)
        else:
            # A copy in RAM (also of a memory map's rows), in the working dtype.
            blk = torch.from_numpy(np.array(ref[start:stop], dtype=_np_dtype(work)))
            _release_pages(ref)
        blk = blk.to(self.device).contiguous()
        self._check_block_finite(blk, start)
        if start == 0 and stop == self.n:
            self._cached_block = (work, blk)
        return blk

    @staticmethod
    def _check_block_finite(blk: torch.Tensor, start: int) -> None:
        if blk.numel() and not bool(torch.isfinite(blk).all()):
            bad = ~torch.isfinite(blk)
            row = int(bad.any(dim=1).nonzero()[0, 0])
            raise MemgeoError(f"reference contains NaN/inf value(s) (first in row {start + row}, "
                              f"{int(bad.sum())} in rows {start}-{start + blk.shape[0] - 1})",
                              "remove or impute non-finite entries")

    def _rows(self, idx: np.ndarray, work: torch.dtype) -> torch.Tensor:
        """Reference rows at sorted global indices ``idx`` (int64), as a tensor of dtype ``work``."""
        ref = self.reference
        if isinstance(ref, torch.Tensor):
            rows = ref[torch.from_numpy(idx).to(ref.device)].to(self.device, work)
        else:
            rows = torch.from_numpy(np.asarray(ref[idx], dtype=_np_dtype(work))).to(self.device)
            _release_pages(ref)
        if rows.numel() and not bool(torch.isfinite(rows).all()):
            first = int(idx[int((~torch.isfinite(rows)).any(dim=1).nonzero()[0, 0])])
            raise MemgeoError(f"reference contains NaN/inf value(s) (first in row {first})",
                              "remove or impute non-finite entries")
        return rows

    # --- approximate index --------------------------------------------------------------------------
    def _build(self) -> None:
        faiss = _import_faiss()
        d = self.dim
        if self.backend == "faiss-ivf":
            quantizer = faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, self.nlist)
            index.cp.seed = self.seed
            n_train = min(self.n, 40 * self.nlist)
            rng = np.random.default_rng(self.seed)
            sample = np.sort(rng.choice(self.n, size=n_train, replace=False)).astype(np.int64)
            index.train(np.ascontiguousarray(self._rows(sample, torch.float32).cpu().numpy()))
            index.nprobe = self.nprobe
        else:
            index = faiss.IndexHNSWFlat(d, self.hnsw_m)
            index.hnsw.efConstruction = self.ef_construction
        for start in range(0, self.n, self.block_size):
            blk = self._block(start, min(self.n, start + self.block_size), torch.float32)
            index.add(np.ascontiguousarray(blk.cpu().numpy()))
        self._cached_block = None  # the faiss index holds the data now
        self._index = index

    # --- search -------------------------------------------------------------------------------------
    def search(self, queries: ArrayLike, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """The k nearest reference points of each query.

        Parameters
        ----------
        queries : torch.Tensor or numpy.ndarray, shape (M, ...)
            Query points; flattened to (M, D).
        k : int, default 2
            Number of neighbours, ``1 <= k <= N``.

        Returns
        -------
        distances : torch.Tensor, shape (M, k), float64
            Normalized pixel l2 distances ``sqrt(mean((q - r)^2))`` (exact, also for the approximate
            backends), ascending along each row.
        indices : torch.Tensor, shape (M, k), int64
            Row indices into the reference; equal distances are ordered by smaller index.

        Raises
        ------
        MemgeoError
            Non-finite values, mismatched flattened dimensions or ``k`` outside ``[1, N]``.
        """
        q = as_points(queries, "queries")
        if q.shape[1] != self.dim:
            raise MemgeoError(
                f"queries have flattened dimension {q.shape[1]} but reference has {self.dim}",
                "pass queries and reference images of the same shape",
            )
        n = self.n
        k = check_scalar(k, "k", min=1, max=n, fix=f"ask for k in [1, {n}] neighbours from {n} reference point(s)")
        work = torch.float64 if (q.dtype == torch.float64 or _is_float64(self.reference)) else torch.float32
        if self.exact:
            dist, idx = self._search_exact(q, k, work, self.exact_backend(work) == "faiss")
        else:
            dist, idx = self._search_approx(q, k, work)
        return dist / math.sqrt(self.dim), idx

    def _search_exact(self, q: torch.Tensor, k: int, work: torch.dtype,
                      use_faiss: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact search over blocks; plain (unnormalized) l2 distances."""
        dev = self.device
        m = q.shape[0]
        best_d = torch.full((m, k), math.inf, dtype=torch.float64, device=dev)
        best_i = torch.full((m, k), -1, dtype=torch.int64, device=dev)
        if m == 0:
            return best_d, best_i
        q_work = q.to(dev, work)
        q_sq = torch.linalg.vector_norm(q_work.to(torch.float64), dim=1) ** 2
        faiss = _import_faiss() if use_faiss else None
        for b0 in range(0, self.n, self.block_size):
            b1 = min(self.n, b0 + self.block_size)
            blk = self._block(b0, b1, work)
            nb = b1 - b0
            kk, nc = min(k, nb), min(nb, k + _EXTRA_CANDIDATES)
            r_sq_max = float(torch.linalg.vector_norm(blk, dim=1).max().to(torch.float64)) ** 2
            blk32 = np.ascontiguousarray(blk.cpu().numpy(), dtype=np.float32) if use_faiss else None
            step = int(self.chunk_size) if use_faiss else max(1, min(int(self.chunk_size), _TILE_BUDGET // nb))

            def candidates(qc: torch.Tensor, n_cand: int, blk: torch.Tensor = blk,
                           blk32: np.ndarray | None = blk32) -> tuple[torch.Tensor, torch.Tensor]:
                """(c, n_cand) approximate squared distances (float64) and local indices of the nearest."""
                if use_faiss:
                    a_sq, cand = faiss.knn(np.ascontiguousarray(qc.cpu().numpy(), dtype=np.float32), blk32, n_cand)
                    return torch.from_numpy(a_sq).to(dev, torch.float64), torch.from_numpy(cand).to(dev)
                approx = torch.cdist(qc.unsqueeze(0), blk.unsqueeze(0)).squeeze(0)  # (c, nb)
                a, cand = torch.topk(approx, n_cand, dim=1, largest=False)
                return a.to(torch.float64) ** 2, cand

            for s in range(0, m, step):
                qc = q_work[s:s + step]
                a_sq, cand = candidates(qc, nc)
                tol = (2 * self.dim + 16) * _EPS32 * (q_sq[s:s + step] + r_sq_max)
                d_b, i_b = _refine(qc, blk, cand, a_sq, kk, tol, exhaustive=nc == nb)
                cat_d = torch.cat([best_d[s:s + step], d_b], dim=1)
                cat_i = torch.cat([best_i[s:s + step], i_b + b0], dim=1)
                # Stable: on equal distances the earlier (smaller-index) block's entry stays first.
                order = torch.sort(cat_d, dim=1, stable=True).indices[:, :k]
                best_d[s:s + step] = torch.gather(cat_d, 1, order)
                best_i[s:s + step] = torch.gather(cat_i, 1, order)
        return best_d, best_i

    def _search_approx(self, q: torch.Tensor, k: int, work: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate candidates from the faiss index, re-ranked exactly; plain l2 distances."""
        m = q.shape[0]
        dev = self.device
        out_d = torch.full((m, k), math.inf, dtype=torch.float64, device=dev)
        out_i = torch.full((m, k), -1, dtype=torch.int64, device=dev)
        nc = min(self.n, k + _EXTRA_CANDIDATES)
        if self.backend == "faiss-hnsw":
            self._index.hnsw.efSearch = max(self.ef_search, nc)
        short: list[int] = []
        for s in range(0, m, int(self.chunk_size)):
            qc = q[s:s + int(self.chunk_size)]
            _, cand = self._index.search(np.ascontiguousarray(qc.cpu().numpy(), dtype=np.float32), nc)
            valid = cand >= 0
            # Sort candidates by index (missing ones, -1, last) so that the stable sort breaks ties by index.
            key = np.where(valid, cand, np.iinfo(np.int64).max)
            perm = np.argsort(key, axis=1, kind="stable")
            cand, valid = np.take_along_axis(cand, perm, 1), np.take_along_axis(valid, perm, 1)
            uniq = np.unique(cand[valid])
            rows = self._rows(uniq, work)
            local = torch.from_numpy(np.where(valid, np.searchsorted(uniq, cand), 0)).to(dev)
            exact = _exact_distances(qc.to(dev, torch.float64), rows, local)
            exact[~torch.from_numpy(valid).to(dev)] = math.inf
            order = torch.sort(exact, dim=1, stable=True).indices[:, :k]
            out_d[s:s + qc.shape[0]] = torch.gather(exact, 1, order)
            out_i[s:s + qc.shape[0]] = torch.gather(torch.from_numpy(cand).to(dev), 1, order)
            short.extend((s + np.flatnonzero(valid.sum(axis=1) < k)).tolist())
        if short:  # the index returned fewer than k points (IVF with too few cells visited): search exactly
            rows_idx = torch.tensor(short, dtype=torch.int64)
            d_x, i_x = self._search_exact(q[rows_idx], k, work, self._auto_faiss(work))
            out_d[rows_idx.to(dev)], out_i[rows_idx.to(dev)] = d_x, i_x
        return out_d, out_i


def _refine(qc: torch.Tensor, blk: torch.Tensor, cand: torch.Tensor, a_sq: torch.Tensor, kk: int,
            tol: torch.Tensor, *, exhaustive: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact re-ranking of pre-selected candidates, with the rounding guard.

    Parameters
    ----------
    qc : (c, D) queries; blk : (B, D) reference block; cand : (c, nc) local candidate indices;
    a_sq : (c, nc) their approximate squared distances; kk : neighbours to keep;
    tol : (c,) bound on the rounding error of an approximate squared distance;
    exhaustive : whether ``cand`` already holds every point of the block.

    Returns
    -------
    (c, kk) plain l2 distances (float64) and local indices, ordered by (distance, index).
    """
    q64 = qc.to(torch.float64)
    d, idx, redo = _rerank(q64, blk, cand, a_sq, kk, tol, exhaustive)
    nb = blk.shape[0]
    # A row fails the guard when its candidates end too close to its k-th distance (near-ties). Such
    # rows are searched against the whole block, all at once: one matrix-product distance tile, then
    # only the points within the bound (every point that can be among the k nearest) are re-ranked exactly.
    step = max(1, _TILE_BUDGET // max(1, nb))
    for s in range(0, redo.numel(), step):
        rows = redo[s:s + step]
        approx = torch.cdist(qc[rows].unsqueeze(0), blk.unsqueeze(0)).squeeze(0).to(torch.float64) ** 2
        # The torch rounding obeys the same bound: every point within the true k nearest is kept.
        inside = approx <= (d[rows, -1] ** 2 + tol[rows])[:, None]
        del approx
        count = inside.sum(dim=1)
        r_i, c_i = inside.nonzero(as_tuple=True)  # row-major: ascending indices within each row
        width = max(kk, int(count.max()))
        pos = torch.arange(r_i.numel(), device=r_i.device) - (torch.cumsum(count, 0) - count)[r_i]
        pool = torch.zeros((rows.numel(), width), dtype=torch.int64, device=d.device)
        valid = torch.zeros((rows.numel(), width), dtype=torch.bool, device=d.device)
        pool[r_i, pos], valid[r_i, pos] = c_i, True
        ex = _exact_distances(q64[rows], blk, pool)
        ex[~valid] = math.inf
        order = torch.sort(ex, dim=1, stable=True).indices[:, :kk]
        d[rows], idx[rows] = torch.gather(ex, 1, order), torch.gather(pool, 1, order)
    return d, idx


def _rerank(q64: torch.Tensor, blk: torch.Tensor, cand: torch.Tensor, a_sq: torch.Tensor, kk: int,
            tol: torch.Tensor, exhaustive: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact distances of the candidates, the kk nearest by (distance, index), and the rows failing the guard."""
    cand = torch.sort(cand, dim=1).values  # index order first: the stable sort then breaks ties by index
    exact = _exact_distances(q64, blk, cand)
    order = torch.sort(exact, dim=1, stable=True).indices[:, :kk]
    d = torch.gather(exact, 1, order)
    idx = torch.gather(cand, 1, order)
    if exhaustive:
        return d, idx, torch.zeros(0, dtype=torch.int64, device=d.device)
    # A point left out has approximate squared distance >= the largest pre-selected one; if that exceeds
    # the k-th exact squared distance by more than the rounding bound, no left-out point can be within
    # the k nearest (ties included).
    thr = d[:, -1] ** 2 + tol
    return d, idx, (a_sq.max(dim=1).values <= thr).nonzero().flatten()


def nearest_neighbors(
    queries: ArrayLike,
    reference: ArrayLike | str | os.PathLike[str],
    k: int = 2,
    chunk_size: int = 1024,
    *,
    device: str | torch.device | None = None,
    backend: str = "auto",
    block_size: int | None = None,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int = 32,
    ef_search: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours of each query among the reference points (exact by default).

    A one-shot :class:`NeighborIndex` search; build the index once instead when searching the same
    reference several times with an approximate backend.

    Parameters
    ----------
    queries : torch.Tensor or numpy.ndarray, shape (M, ...)
        Query points; flattened to (M, D).
    reference : torch.Tensor, numpy.ndarray or path to a ``.npy`` file, shape (N, ...)
        Reference points (e.g. training images); flattened to (N, D) with the same D. A memory map
        (or a path, opened as one) is read block by block.
    k : int, default 2
        Number of neighbours, ``1 <= k <= N``.
    chunk_size : int, default 1024
        Queries processed at once. Peak extra memory is one reference block (``block_size``) plus,
        for the torch backend, a distance tile of at most 2**25 elements.
    device : str or torch.device, optional
        Where to compute (torch backend); default the device of ``queries`` if it is a tensor, else CPU.
    backend : {"auto", "torch", "faiss", "faiss-ivf", "faiss-hnsw"}, default "auto"
        See :class:`NeighborIndex`. The exact ones ("auto", "torch", "faiss") give identical results.
    block_size, nlist, nprobe, hnsw_m, ef_search
        See :class:`NeighborIndex`.

    Returns
    -------
    distances : torch.Tensor, shape (M, k), float64
        Normalized pixel l2 distances ``sqrt(mean((q - r)^2))``, ascending along each row.
    indices : torch.Tensor, shape (M, k), int64
        Row indices into ``reference``; equal distances are ordered by smaller index.

    Raises
    ------
    MemgeoError
        Non-finite values, mismatched flattened dimensions, ``k`` outside ``[1, N]``, a
        non-positive ``chunk_size`` or an unknown backend.
    """
    q = as_points(queries, "queries")
    if device is None:
        device = q.device
    ref = load_reference(reference)
    if q.shape[1] != ref.shape[1]:
        raise MemgeoError(
            f"queries have flattened dimension {q.shape[1]} but reference has {ref.shape[1]}",
            "pass queries and reference images of the same shape",
        )
    n = int(ref.shape[0])
    k = check_scalar(k, "k", min=1, max=n, fix=f"ask for k in [1, {n}] neighbours from {n} reference point(s)")
    check_scalar(chunk_size, "chunk_size", min=1)
    index = NeighborIndex(ref, backend=backend, block_size=block_size, chunk_size=chunk_size, device=device,
                          nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_search=ef_search)
    return index.search(q, k)


def approximate_recall(index: NeighborIndex, queries: ArrayLike, k: int = 10, *, n_queries: int | None = 1000,
                       seed: int = 0, exact: NeighborIndex | None = None) -> float:
    """recall@k of a (typically approximate) index against exact search, on a sample of queries.

    For each sampled query, the share of the k returned neighbours whose exact distance is at most
    the exact k-th nearest distance (so a tie at the k-th distance counts as found whichever tied
    point is returned), averaged over the sample. Exact backends give 1.0.

    Parameters
    ----------
    index : NeighborIndex
        The index to measure.
    queries : torch.Tensor or numpy.ndarray, shape (M, ...)
        Queries to sample from.
    k : int, default 10
        Neighbours per query, ``1 <= k <= N``.
    n_queries : int or None, default 1000
        Queries drawn without replacement (with ``seed``); ``None`` or more than M: all of them.
    seed : int, default 0
    exact : NeighborIndex, optional
        The exact index over the same reference (default: a new ``"auto"`` one).

    Returns
    -------
    float
        Mean recall@k in [0, 1].
    """
    if not isinstance(index, NeighborIndex):
        raise MemgeoError(f"index is a {type(index).__name__}, not a NeighborIndex", "build it with NeighborIndex(reference)")
    q = as_points(queries, "queries")
    n_queries = check_scalar(n_queries, "n_queries", min=1, allow_none=True)
    if n_queries is not None and n_queries < q.shape[0]:
        rows = np.sort(np.random.default_rng(seed).choice(q.shape[0], size=n_queries, replace=False))
        q = q[torch.from_numpy(rows)]
    if q.shape[0] == 0:
        raise MemgeoError("no queries to measure recall on", "pass at least one query")
    if exact is None:
        exact = NeighborIndex(index.reference, block_size=index.block_size, chunk_size=index.chunk_size)
    d_a, _ = index.search(q, k)
    d_e, _ = exact.search(q, k)
    # Both distance sets are exact float64 values computed the same way, so ties compare equal.
    found = (d_a.cpu() <= d_e.cpu()[:, -1:]).sum(dim=1).clamp(max=k)
    return float(found.sum()) / float(q.shape[0] * k)


def _exact_distances(q64: torch.Tensor, r: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Plain (unnormalized) l2 distances ``||q_i - r_cand[i, j]||``, shape (c, n_cand), in float64.

    Computed from the differences, not from the ``|a|^2 + |b|^2 - 2ab`` expansion, so identical rows
    give exactly 0. Rows are processed in sub-chunks that keep the (rows, n_cand, D) difference
    tensor within ``_REFINE_BUDGET`` elements.
    """
    c, n_cand = cand.shape
    dim = q64.shape[1]
    step = max(1, _REFINE_BUDGET // max(1, n_cand * dim))
    col = n_cand if step > 1 else max(1, _REFINE_BUDGET // max(1, dim))  # long pools: in column slices too
    out = torch.empty((c, n_cand), dtype=torch.float64, device=q64.device)
    for s in range(0, c, step):
        for t in range(0, n_cand, col):
            diff = r[cand[s:s + step, t:t + col]].to(torch.float64)
            diff.sub_(q64[s:s + step, None, :])
            out[s:s + step, t:t + col] = torch.linalg.vector_norm(diff, dim=2)
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
    is ``first_occurrence(inverse)``. See :func:`unique_inverse` for the cost.
    """
    arr = as_points(x, "x").cpu().numpy()
    inverse = _unique_inverse(arr)  # arr is checked already: no second pass over it
    return arr[first_occurrence(inverse)].copy(), inverse


def unique_inverse(x: ArrayLike) -> np.ndarray:
    """The ``inverse`` of :func:`unique_rows` (distinct rows numbered by first appearance), without copying ``x``.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray, shape (N, ...)
        Finite points, flattened to (N, D); a memory map is read in slices.

    Returns
    -------
    numpy.ndarray, shape (N,), int64
        ``inverse[i] == inverse[j]`` iff rows i and j are numerically equal; distinct rows are
        numbered 0, 1, ... in order of first appearance.

    Notes
    -----
    Every row gets a 64-bit hash of its bit pattern (``-0.0`` mapped to ``0.0`` first): a random
    linear form modulo 2**64 of its 32- or 64-bit words, computed in slices of 2**22 elements, so the
    cost is one pass over the data, ``O(N D)``, plus a sort of N integers. Equal rows have equal
    hashes; rows with equal hashes are then compared exactly (a hash collision of distinct rows is
    resolved by an exact ``numpy.unique`` of that group), so the result is exact.
    """
    return _unique_inverse(as_points(x, "x").cpu().numpy())


def _unique_inverse(arr: np.ndarray) -> np.ndarray:
    """:func:`unique_inverse` of a checked (N, D) float array."""
    n, d = arr.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    word = np.uint64 if arr.dtype == np.float64 else np.uint32
    mult = np.random.default_rng(0x6D656D67).integers(1, np.iinfo(np.int64).max, size=d, dtype=np.uint64) | np.uint64(1)
    h = np.empty(n, dtype=np.uint64)
    step = max(1, _HASH_SLICE // max(1, d))
    zero = arr.dtype.type(0)
    for s in range(0, n, step):
        bits = (np.asarray(arr[s:s + step]) + zero).view(word).astype(np.uint64)  # + 0 turns -0.0 into 0.0
        h[s:s + step] = (bits * mult).sum(axis=1, dtype=np.uint64)  # wraps modulo 2**64
    order = np.argsort(h, kind="stable")  # within equal hashes: ascending row index
    hs = h[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = hs[1:] != hs[:-1]
    label_sorted = np.cumsum(new_group) - 1  # hash-group id per sorted position
    label = np.empty(n, dtype=np.int64)
    label[order] = label_sorted
    # Rows sharing a hash: check each against its group's first row (smallest index).
    starts = np.flatnonzero(new_group)
    size = np.diff(np.append(starts, n))
    multi = np.repeat(size > 1, size)
    members = order[multi]
    if members.size:
        rep = order[starts[label_sorted[multi]]]
        same = np.empty(members.size, dtype=bool)
        for s in range(0, members.size, step):
            a = np.asarray(arr[members[s:s + step]]) + zero
            b = np.asarray(arr[rep[s:s + step]]) + zero
            same[s:s + step] = (a == b).all(axis=1)
        next_label = int(label_sorted[-1]) + 1
        for g in np.unique(label[members[~same]]):  # hash collisions of distinct rows (practically never)
            rows = np.sort(order[label_sorted == g])
            _, sub = np.unique(np.asarray(arr[rows]) + zero, axis=0, return_inverse=True)
            sub = sub.reshape(-1)
            sub_first = sub[0]
            for v in np.unique(sub):
                if v != sub_first:
                    label[rows[sub == v]] = next_label
                    next_label += 1
    # Renumber the groups by first appearance.
    first = first_occurrence(label)  # every label 0..max is used, so every group has a first row
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[label]


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
