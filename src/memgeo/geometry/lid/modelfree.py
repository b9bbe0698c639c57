"""Model-free LID of a data set around query points (LID_data), through scikit-dimension.

The query points (e.g. generated samples) need not belong to the reference (training) set: a
query's neighbourhood is its ``k`` nearest neighbours AMONG THE REFERENCE DATA, found with one
exact :class:`KNNIndex` that all estimators fitted on the same reference share (one search serves
every estimator; see :meth:`KNNIndex.neighbors`).

What each estimator sees (the query point itself is never part of the patch: it only chooses which
data are local, so LID_data describes the data, not the query):

=================  ==========================================================================
``LocalPCA``       PCA spectrum of the patch of the ``k`` neighbours (centred at their mean),
                   turned into a dimension by :class:`skdim.id.lPCA` (``'FO'``: eigenvalues above
                   ``threshold`` times the largest; ``'ratio'``: components needed to explain a
                   ``threshold`` fraction of the variance).
``MLE``            Levina-Bickel maximum likelihood from the ``k`` distances query -> neighbours,
                   by :class:`skdim.id.MLE` (``(k-1) / sum_j log(R_k / R_j)``).
``TwoNN``          :class:`skdim.id.TwoNN` fitted on the patch of the ``k`` neighbours (ratios of
                   second to first nearest-neighbour distances inside the patch).
=================  ==========================================================================

In-sample queries (the query is itself a reference row) pass ``exclude_self=True``: one exact copy
of the query (distance exactly 0) is dropped from its neighbours, which reproduces
scikit-dimension's own pointwise estimates (``fit_pw`` / ``dimension_pw_``) on the reference.

Degenerate neighbourhoods (documented contract, no NaN):

* zero spread: when the ``k`` neighbours are all the same point (a point duplicated at least ``k``
  times, an atom of the data), every estimator returns exactly ``0.0``, whether or not the query
  sits on that point;
* ``MLE`` returns ``0.0`` whenever a neighbour is at distance exactly 0 (the query coincides with a
  reference point: ``log(R_k / 0)`` diverges, the limit of the estimate is 0), and ``+inf`` when all
  ``k`` distances are equal and positive (no radial spread; only exact ties do this). Pass
  ``exclude_self=True`` when the query's own copy in the reference must not count;
* ``TwoNN`` drops patch points with an exact duplicate inside the patch (as scikit-dimension does);
  if too few remain for scikit-dimension to fit (at most 2), the patch is a few atoms and the
  estimate is ``0.0``.

Away from the data ``LocalPCA`` and ``TwoNN`` still describe the neighbours' patch, while the MLE
grows (the distances to the neighbours become nearly equal); every value stays finite.

Cost: one exact kNN search of the queries (chunked ``torch.cdist`` with an exact float64
re-ranking, :func:`memgeo.data.neighbors.nearest_neighbors`), then per query either a batched
step (MLE, PCA spectra, within-patch distances) or a small scikit-dimension call.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import numpy as np
import skdim
import torch

from memgeo.errors import MemgeoError, Registry, check_choice, check_scalar
from memgeo.geometry.lid.base import DataLIDEstimator, register
from memgeo.data.neighbors import ArrayLike, as_points, nearest_neighbors

__all__ = ["MLE", "MODEL_FREE_ESTIMATORS", "KNNIndex", "LocalPCA", "TwoNN"]

# Budget, in float64 elements, for a chunk of gathered (chunk, k, D) patches (128 MiB).
_PATCH_BUDGET = 1 << 24

class KNNIndex:
    """Exact k-nearest-neighbour search in a fixed reference set, shared by LID estimators.

    Parameters
    ----------
    reference : torch.Tensor or numpy.ndarray, shape (N, ...)
        Reference (training) points, flattened to (N, D). Validated (finite, numeric) once here.
    chunk_size : int, default 1024
        Queries searched at once (peak memory about ``chunk_size * N`` floats).
    device : str or torch.device, optional
        Where the search runs; default the reference's device (CPU for arrays).

    Attributes
    ----------
    reference : torch.Tensor, shape (N, D)
        The flattened reference (float32, or float64 if given so).
    k_max : int
        Largest ``k`` reserved or requested so far; every search by :meth:`neighbors` fetches
        ``k_max + 1`` neighbours so that one search serves all estimators (and both values of
        ``exclude_self``).
    n_queries : int
        Number of searches actually run (a cache hit does not count).

    Notes
    -----
    Distances are plain Euclidean ``||q - r||_2`` (``sqrt(D)`` times the normalized distances of
    :mod:`memgeo.data.neighbors`, whose exact search this uses): an exact copy of a query has
    distance exactly 0, and equal distances are ordered by smaller reference index.

    ``exclude_self`` (default ``False``, for genuine out-of-sample queries such as generated
    samples): with ``True``, when a query's nearest neighbour is at distance exactly 0 (the query is
    itself a reference row, or bitwise identical to one) that one neighbour is dropped and the next
    ``k`` are returned; a query with no exact copy gets its plain ``k`` nearest. Other exact copies
    (duplicates in the reference) are kept, so a duplicated training point still has zero spread.
    """

    def __init__(self, reference: ArrayLike, *, chunk_size: int = 1024,
                 device: str | torch.device | None = None) -> None:
        ref = as_points(reference, "reference")
        if ref.shape[0] < 2:
            raise MemgeoError(f"reference has {ref.shape[0]} point(s)", "pass at least 2 reference points")
        self.chunk_size = check_scalar(chunk_size, "chunk_size", min=1)
        self.device = torch.device(device) if device is not None else ref.device
        self.reference = ref.to(self.device)
        self.source = reference
        self.k_max = 0
        self.n_queries = 0
        self._cache: tuple | None = None

    @property
    def n_reference(self) -> int:
        """Number of reference points N."""
        return int(self.reference.shape[0])

    @property
    def dim(self) -> int:
        """Flattened dimension D."""
        return int(self.reference.shape[1])

    def _check_k(self, k: object) -> int:
        n = self.n_reference
        return check_scalar(k, "k", min=1, max=n - 1,
                            fix=f"ask for k in [1, {n - 1}] neighbours: k must be below the {n} reference point(s)")

    def reserve(self, k: int) -> None:
        """Announce that ``k`` neighbours will be asked for, so the next search fetches enough.

        Estimators call this from ``fit``; then the first :meth:`neighbors` call for a batch of
        queries serves every estimator that shares this index.
        """
        self.k_max = max(self.k_max, self._check_k(k))

    def clear_cache(self) -> None:
        """Forget the memoised search (needed only after modifying a numpy query array in place)."""
        self._cache = None

    def _search(self, x: ArrayLike, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = as_points(x, "queries")
        if q.shape[1] != self.dim:
            raise MemgeoError(f"queries have flattened dimension {q.shape[1]} but the reference has {self.dim}",
                              "pass query points of the reference's shape")
        dist, idx = nearest_neighbors(q, self.reference, k, self.chunk_size, device=self.device)
        self.n_queries += 1
        return dist * math.sqrt(self.dim), idx

    @staticmethod
    def _take(dist: torch.Tensor, idx: torch.Tensor, k: int, exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """First k columns of a search with at least k + 1 columns, dropping an exact self-match."""
        if not exclude_self:
            return dist[:, :k], idx[:, :k]
        start = (dist[:, 0] == 0).long()  # 1 where the query has an exact copy in the reference
        cols = start[:, None] + torch.arange(k, device=dist.device)[None]
        return torch.gather(dist, 1, cols), torch.gather(idx, 1, cols)

    def query(self, x: ArrayLike, k: int, *, exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Search the k nearest reference points of each query (always a new search, no cache).

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (M, ...)
            Queries, flattened to (M, D).
        k : int
            Number of neighbours, ``1 <= k <= N - 1``.
        exclude_self : bool, default False
            Drop one exact (distance 0) copy of the query; see the class notes.

        Returns
        -------
        distances : torch.Tensor, shape (M, k), float64
            Euclidean distances, ascending along each row.
        indices : torch.Tensor, shape (M, k), int64
            Row indices into :attr:`reference`.
        """
        k = self._check_k(k)
        dist, idx = self._search(x, k + 1 if exclude_self else k)
        return self._take(dist, idx, k, exclude_self)

    def neighbors(self, x: ArrayLike, k: int, *, exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`query`, memoised on the identity of ``x``.

        The index remembers the last query batch (the object itself and, for tensors, its version
        counter, so in-place edits of a tensor invalidate the cache). A search fetches
        ``max(k, k_max) + 1`` neighbours, so several estimators with ``k <= k_max``, in-sample or not,
        reuse one search. After editing a numpy query array in place call :meth:`clear_cache`.
        """
        k = self._check_k(k)
        self.k_max = max(self.k_max, k)
        version = x._version if isinstance(x, torch.Tensor) else None
        c = self._cache
        if c is None or c[0] is not x or c[1] != version or c[2].shape[1] < k + 1:
            dist, idx = self._search(x, self.k_max + 1)
            self._cache = c = (x, version, dist, idx)
        return self._take(c[2], c[3], k, exclude_self)


class _ModelFreeLID(DataLIDEstimator):
    """Shared fit/estimate of the scikit-dimension estimators; subclasses implement ``_estimate``."""

    supports_exclude_self: ClassVar[bool] = True
    _min_k: ClassVar[int] = 2

    def fit(self, reference: ArrayLike | None = None, index: KNNIndex | None = None) -> _ModelFreeLID:
        """Attach the reference set: build a :class:`KNNIndex` or reuse a shared one.

        Parameters
        ----------
        reference : torch.Tensor or numpy.ndarray, shape (N, ...), optional
            Reference (training) points. May be omitted when ``index`` is given; if both are given
            they must hold the same points.
        index : KNNIndex, optional
            Shared index built on ``reference``; the estimator reserves its ``k`` in it so that one
            search serves all estimators sharing it.

        Returns
        -------
        self
        """
        if index is None:
            if reference is None:
                raise MemgeoError(f"{type(self).__name__}.fit got neither reference nor index",
                                  "pass the reference points or a KNNIndex built on them")
            index = KNNIndex(reference)
        elif not isinstance(index, KNNIndex):
            raise MemgeoError(f"index is a {type(index).__name__}, not a KNNIndex", "build it with KNNIndex(reference)")
        elif reference is not None and reference is not index.source:
            ref = as_points(reference, "reference")
            if ref.shape != index.reference.shape or not torch.equal(ref.to(index.reference), index.reference):
                raise MemgeoError("the index was built on other points than the reference passed to fit",
                                  "pass the same reference to KNNIndex and fit, or pass only the index")
        if index.dim < 2:
            raise MemgeoError(f"reference points have dimension {index.dim}",
                              "scikit-dimension estimators need at least 2 features per point")
        index.reserve(self.k)
        self.index_ = index
        return self

    def estimate(self, x: ArrayLike, *, exclude_self: bool = False) -> torch.Tensor:
        """LID of the reference data around each query point.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (M, ...)
            Query points of the reference's shape; need not be reference points.
        exclude_self : bool, default False
            ``True`` for in-sample queries: one exact copy of the query is removed from its
            neighbourhood (see :class:`KNNIndex`).

        Returns
        -------
        torch.Tensor, shape (M,), float64, on CPU
        """
        if not hasattr(self, "index_"):
            raise MemgeoError(f"{type(self).__name__}.estimate was called before fit", "call fit(reference) first")
        dist, idx = self.index_.neighbors(x, self.k, exclude_self=bool(exclude_self))
        m = dist.shape[0]
        out = np.zeros(m, dtype=np.float64)
        if m:
            ref = self.index_.reference
            step = max(1, _PATCH_BUDGET // (self.k * self.index_.dim))
            for s in range(0, m, step):
                patch = ref[idx[s:s + step]].to(torch.float64)  # (c, k, D)
                flat = (patch == patch[:, :1]).all(dim=2).all(dim=1)  # zero spread: one repeated point
                live = (~flat).nonzero().squeeze(1)
                if live.numel():
                    vals = self._estimate(dist[s:s + step][live].double(), patch[live])
                    out[s + live.cpu().numpy()] = vals
        return torch.from_numpy(out)

    def _estimate(self, dist: torch.Tensor, patch: torch.Tensor) -> np.ndarray:
        """Estimates for queries with non-degenerate patches: dist (c, k), patch (c, k, D)."""
        raise NotImplementedError


@register
class LocalPCA(_ModelFreeLID):
    """Local PCA (:class:`skdim.id.lPCA`) on the query's k reference neighbours.

    The patch is the k nearest reference points (the query excluded), centred at their mean. Its
    PCA spectrum (``explained_variance_`` of scikit-learn's PCA, computed here in one batched SVD)
    is handed to ``skdim.id.lPCA(ver=version, fit_explained_variance=True)``.

    Parameters
    ----------
    k : int, default 50
        Neighbours per query, ``2 <= k < N``.
    threshold : float in (0, 1), optional
        ``version='FO'`` (Fukunaga-Olsen): count eigenvalues above ``threshold`` times the largest
        (skdim's ``alphaFO``), default 0.05. ``version='ratio'``: number of components needed to
        explain a ``threshold`` fraction of the variance (skdim's ``alphaRatio``), default 0.95.
    version : {'FO', 'ratio'}, default 'FO'

    Notes
    -----
    Gives integers. For noise-free flat data FO returns exactly d; noise above ``threshold`` times
    the tangent variance, or curvature over the patch, adds dimensions.
    """

    name = "lpca"
    _VERSIONS: ClassVar[tuple[str, ...]] = ("FO", "ratio")
    _DEFAULT_THRESHOLD: ClassVar[dict[str, float]] = {"FO": 0.05, "ratio": 0.95}

    def __init__(self, k: int = 50, threshold: float | None = None, version: str = "FO") -> None:
        check_choice(version, self._VERSIONS, "local PCA version")
        check_scalar(threshold, "threshold", float, min=0, max=1, include_min=False, include_max=False,
                     allow_none=True, fix="use e.g. 0.05 for version='FO' or 0.95 for version='ratio'")
        self.k = check_scalar(k, "k", min=self._min_k)
        self.threshold = threshold
        self.version = version

    def _estimate(self, dist: torch.Tensor, patch: torch.Tensor) -> np.ndarray:
        centred = patch - patch.mean(dim=1, keepdim=True)
        ev = (torch.linalg.svdvals(centred) ** 2 / (patch.shape[1] - 1)).cpu().numpy()  # descending
        thr = self._DEFAULT_THRESHOLD[self.version] if self.threshold is None else float(self.threshold)
        alpha = {"alphaFO": thr} if self.version == "FO" else {"alphaRatio": thr}
        est = skdim.id.lPCA(ver=self.version, fit_explained_variance=True, **alpha)
        return np.array([est.fit(e).dimension_ for e in ev], dtype=np.float64)


@register
class MLE(_ModelFreeLID):
    """Levina-Bickel maximum-likelihood LID (:class:`skdim.id.MLE`) from the query's k neighbour distances.

    The distances R_1 <= ... <= R_k from the query to its k nearest reference points are passed to
    ``skdim.id.MLE().fit`` as precomputed kNN arrays (one batched call), which returns
    ``(k - 1) / sum_j log(R_k / R_j)`` per query (``k - 2`` in the numerator if ``unbiased``).

    Parameters
    ----------
    k : int, default 20
        Neighbours per query, ``2 <= k < N`` (3 if ``unbiased``).
    unbiased : bool, default False
        scikit-dimension's bias correction; without it the estimate is biased up by about
        ``(k - 1) / (k - 2)`` on a uniform patch.

    Notes
    -----
    0 when a neighbour is an exact copy of the query, +inf when all k distances tie (see the module
    notes); a near-copy (tiny R_1) pulls the estimate towards 0.
    """

    name = "mle"

    def __init__(self, k: int = 20, unbiased: bool = False) -> None:
        self.k = check_scalar(k, "k", min=3 if unbiased else self._min_k)
        self.unbiased = bool(unbiased)

    def _estimate(self, dist: torch.Tensor, patch: torch.Tensor) -> np.ndarray:
        d = dist.cpu().numpy()
        idx = np.broadcast_to(np.arange(d.shape[1]), d.shape)  # unused by skdim's MLE
        # skdim validates X (>= 2 samples) although it uses only the distances here: pass the
        # patch means as the "samples" (duplicated when there is a single query).
        xs = patch.mean(dim=1).cpu().numpy()
        if d.shape[0] == 1:
            d, idx, xs = np.repeat(d, 2, 0), np.repeat(idx, 2, 0), np.repeat(xs, 2, 0)
        est = skdim.id.MLE(unbiased=self.unbiased)
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            # with precomputed neighbours skdim's n_neighbors and K are unused; ignore its notes on them
            warnings.filterwarnings("ignore", message=r"(n_neighbors|self\.K) >= len\(X\)")
            est.fit(xs, precomputed_knn_arrays=(d, idx), n_neighbors=self.k, comb="mean")
        out = np.asarray(est.dimension_pw_, dtype=np.float64)[: dist.shape[0]]
        return np.where(d[: dist.shape[0], 0] == 0, 0.0, out)  # exact copy of the query: limit 0


@register
class TwoNN(_ModelFreeLID):
    """TwoNN (:class:`skdim.id.TwoNN`) on the patch of the query's k reference neighbours.

    Inside the patch (the query excluded) each point's first and second nearest-neighbour distances
    (r1, r2) are computed in one batched exact pass and handed to ``skdim.id.TwoNN(dist=True)``,
    which gives the same result as ``TwoNN().fit(patch)`` without a kNN fit per query.

    Parameters
    ----------
    k : int, default 50
        Patch size, ``3 <= k < N``. TwoNN is noisy on small patches (standard error about
        ``d / sqrt(k)`` per query).
    discard_fraction : float in [0, 1), default 0.1
        Fraction of the largest ratios r2/r1 discarded (skdim's default).
    method : {'linear', 'mle'}, default 'linear'
        Facco et al.'s linear fit or the closed-form MLE (skdim's ``method``).
    """

    name = "twonn"
    _min_k = 3

    def __init__(self, k: int = 50, discard_fraction: float = 0.1, method: str = "linear") -> None:
        check_choice(method, ("linear", "mle"), "TwoNN method")
        check_scalar(discard_fraction, "discard_fraction", float, min=0, max=1, include_max=False)
        self.k = check_scalar(k, "k", min=self._min_k)
        self.discard_fraction = float(discard_fraction)
        self.method = method

    def _estimate(self, dist: torch.Tensor, patch: torch.Tensor) -> np.ndarray:
        # exact differences (not the matrix-product expansion) so duplicates get r1 == 0 exactly
        pd = torch.cdist(patch, patch, compute_mode="donot_use_mm_for_euclid_dist")
        pd.diagonal(dim1=1, dim2=2).fill_(math.inf)
        r12 = torch.topk(pd, 2, dim=2, largest=False).values.cpu().numpy()  # (c, k, 2)
        est = skdim.id.TwoNN(discard_fraction=self.discard_fraction, dist=True, method=self.method)
        out = np.empty(len(r12), dtype=np.float64)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Dropping .* duplicate points")
            for i, r in enumerate(r12):
                try:
                    out[i] = est.fit(r).dimension_
                except ValueError:  # skdim: fewer than 2 non-duplicate points left, a few atoms
                    out[i] = 0.0
        return out


#: The data-based estimators (also in ``LID_ESTIMATORS``).
MODEL_FREE_ESTIMATORS: Registry[type[_ModelFreeLID]] = Registry(
    "model-free LID estimator", {"lpca": LocalPCA, "mle": MLE, "twonn": TwoNN})
