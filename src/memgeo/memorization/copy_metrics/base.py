"""The copy-metrics framework: one ``(train, test, gen)`` input, one result type, one registry.

A *copy metric* answers "does this set of generated samples copy its training set?" from three
sets of points in one feature space (pixels by default):

- ``train`` (N, D): the training set;
- ``test`` (M, D): held-out samples of the same distribution, never seen in training;
- ``gen`` (G, D): the generated samples under audit.

:class:`CopyData` holds the triple (flattened to float32) together with cached nearest-neighbour
searches (exact normalized l2, ``||a - b|| / sqrt(D)``, through
:func:`memgeo.data.neighbors.nearest_neighbors`), the bootstrap settings and the seed. Every metric
is a :class:`CopyMetric` subclass registered in :data:`COPY_METRICS`; ``compute(data)`` returns a
:class:`MetricResult` with the global value, a percentile bootstrap CI over the generated samples
(and the test samples where the metric uses them) and per-sample values, copy verdicts and matching
training indices where the metric has them.

Searches against the training set use its *distinct* rows (exact duplicates collapsed, see
:func:`~memgeo.data.neighbors.unique_rows`), so that a duplicated training image does not make its
own "second nearest neighbour" distance 0; returned training indices are the first occurrence of the
matching row in the original ``train``.

Held-out baseline
-----------------
Every number is reported next to the same metric computed with the held-out test set in place of
the generator (:meth:`CopyMetric.evaluate`), i.e. what an ideal generator that never saw the
training set would score with the same amount of data. For metrics that do not use the test set
(``uses_test = False``) the whole test set plays the generator. For metrics that do, the test set is
split once, by a seeded permutation, into halves: the first ``ceil(M / 2)`` rows play the generator
and the remaining rows play the test set.

Determinism: every random choice (bootstrap replicates, the baseline split) comes from
``numpy.random.default_rng([seed, crc32(purpose)])``, so results do not depend on the order in which
metrics are computed.
"""

from __future__ import annotations

import copy
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch

from memgeo.data.neighbors import (
    APPROXIMATE_BACKENDS,
    ArrayLike,
    NeighborIndex,
    as_points,
    first_occurrence,
    nearest_neighbors,
    unique_inverse,
)
from memgeo.errors import MemgeoError, Registry, check_choice, check_scalar
from memgeo.io import _to_jsonable

#: The three sets a :class:`CopyData` holds.
SETS = ("train", "test", "gen")
#: Distance spaces of :meth:`CopyData.knn`.
SPACES = ("l2", "cosine")


@dataclass(frozen=True, eq=False)
class MetricResult:
    """What one copy metric says about one generated set.

    Attributes
    ----------
    name : str
        Registry name of the metric (e.g. ``"d1d2"``).
    value : float
        The global value on the generated set (e.g. the fraction flagged as copies).
    ci_low, ci_high : float
        Percentile bootstrap confidence interval of ``value`` (level ``CopyData.level``, default
        0.95) over the generated samples, and the test samples where the metric uses them; NaN where
        undefined (e.g. ``n_boot = 0``).
    baseline : float or None
        ``value`` with the held-out test set as the generator (see the module docstring); ``None``
        until :meth:`CopyMetric.evaluate` fills it.
    per_sample : numpy.ndarray or None, shape (G,)
        One number per generated sample (a distance ratio, a distance, 0/1 authenticity, ...).
    flagged : numpy.ndarray or None, shape (G,), bool
        Per-sample verdict "copy", where the metric has one.
    nearest_index : numpy.ndarray or None, shape (G,), int64
        Index into the original ``train`` of each generated sample's nearest training sample (in
        the metric's own distance).
    direction : str
        How to read ``value``, in words, e.g. ``"higher = more copying"``.
    extra : dict
        Metric-specific details (thresholds used, per-cell scores, clique lists, the baseline's CI).
    """

    name: str
    value: float
    ci_low: float
    ci_high: float
    baseline: float | None
    per_sample: np.ndarray | None
    flagged: np.ndarray | None
    nearest_index: np.ndarray | None
    direction: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_flagged(self) -> int | None:
        """Number of generated samples flagged as copies (``None`` without per-sample verdicts)."""
        return None if self.flagged is None else int(np.count_nonzero(self.flagged))

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: value, CI, baseline, direction, flag count and ``extra`` (no per-sample arrays).

        NaN and infinite numbers become ``None``.
        """
        out: dict[str, Any] = {
            "name": self.name,
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "baseline": self.baseline,
            "direction": self.direction,
        }
        if self.flagged is not None:
            out["n_samples"] = int(self.flagged.shape[0])
            out["n_flagged"] = self.n_flagged
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return _to_jsonable(out)


class CopyData:
    """The ``(train, test, gen)`` triple in one feature space, with cached nearest-neighbour searches.

    Parameters
    ----------
    train : torch.Tensor or numpy.ndarray, shape (N, ...)
        Training samples (at least 2 distinct rows); flattened to (N, D).
    test : torch.Tensor or numpy.ndarray, shape (M, ...)
        Held-out samples of the training distribution (at least 2); flattened to (M, D).
    gen : torch.Tensor or numpy.ndarray, shape (G, ...)
        Generated samples (at least 1); flattened to (G, D).
    image_shape : tuple of int, optional
        ``(H, W)`` or ``(C, H, W)`` of one sample, with product D; needed by image metrics
        (``"tiled_l2"``). Inferred from 3-D/4-D ``train`` input when not given.
    backend : str, default "auto"
        kNN backend passed to :func:`~memgeo.data.neighbors.nearest_neighbors` (when it takes one).
    n_boot : int, default 200
        Bootstrap replicates for the CIs (0 = no CI).
    level : float, default 0.95
        Confidence level of the percentile CIs.
    seed : int, default 0
        Seed of every random choice (see :meth:`rng`).
    chunk_size : int, default 1024
        Queries per block in the neighbour searches.
    index_options : dict, optional
        Options of the :class:`~memgeo.data.neighbors.NeighborIndex` built once over the distinct
        training rows and reused by every search against them (e.g. ``{"nlist": 4000, "nprobe": 32}``
        for ``backend="faiss-ivf"``).

    Notes
    -----
    Memory: a read-only memory-mapped ``train`` is not copied (it is re-opened copy-on-write and
    paged in on demand), and ``train_unique`` is ``train`` itself when no row repeats. No metric
    here searches every training row against the training set unless it needs every row's
    neighbours (the data-copying rate does); see :meth:`train_nn_other`.

    Attributes
    ----------
    train, test, gen : torch.Tensor, shape (N, D), (M, D), (G, D), float32
    train_unique : torch.Tensor, shape (U, D), float32
        The distinct training rows, in order of first appearance.
    train_inverse : numpy.ndarray, shape (N,), int64
        ``train_unique[train_inverse[i]] == train[i]``.
    train_first : numpy.ndarray, shape (U,), int64
        Index into ``train`` of the first occurrence of each distinct row.
    """

    def __init__(
        self,
        train: ArrayLike,
        test: ArrayLike,
        gen: ArrayLike,
        *,
        image_shape: Sequence[int] | None = None,
        backend: str = "auto",
        n_boot: int = 200,
        level: float = 0.95,
        seed: int = 0,
        chunk_size: int = 1024,
        index_options: Mapping[str, Any] | None = None,
    ) -> None:
        # On the CPU: several metrics work in numpy (tensors on a GPU are copied over once, here).
        tr, te, ge = (as_points(x, name).to("cpu", torch.float32) for x, name in ((train, "train"), (test, "test"),
                                                                                   (gen, "gen")))
        dim = tr.shape[1]
        for t, name in ((te, "test"), (ge, "gen")):
            if t.shape[1] != dim:
                raise MemgeoError(f"{name} has flattened dimension {t.shape[1]} but train has {dim}",
                                  "pass train, test and gen in the same feature space (same shape per sample)")
        if ge.shape[0] < 1:
            raise MemgeoError("gen holds no samples", "pass at least one generated sample")
        if te.shape[0] < 2:
            raise MemgeoError(f"test holds {te.shape[0]} sample(s)", "pass at least 2 held-out test samples")
        if dim < 1:
            raise MemgeoError("samples have dimension 0", "pass samples with at least one feature")
        if image_shape is None and not isinstance(train, (list, tuple)) and np.ndim(train) in (3, 4):
            image_shape = tuple(int(s) for s in train.shape[1:])
        self.image_shape = _check_image_shape(image_shape, dim)
        if not isinstance(backend, str):
            raise MemgeoError(f"backend={backend!r} must be a string", 'pass backend="auto"')
        self.backend = backend
        self.n_boot = check_scalar(n_boot, "n_boot", min=0, fix="pass n_boot=200 (0 for no confidence interval)")
        self.level = check_scalar(level, "level", float, min=0, max=1, include_min=False, include_max=False,
                                  fix="pass level=0.95")
        self.seed = check_scalar(seed, "seed", min=0, fix="pass a non-negative integer seed")
        self.chunk_size = check_scalar(chunk_size, "chunk_size", min=1)
        if index_options is not None and not isinstance(index_options, Mapping):
            raise MemgeoError(f"index_options={index_options!r} is not a dict", 'pass e.g. {"nprobe": 32}')
        self.index_options = dict(index_options or {})
        self.train, self.test, self.gen = tr, te, ge
        inverse = unique_inverse(tr)
        first = first_occurrence(inverse)
        if first.shape[0] < 2:
            raise MemgeoError(f"train has {first.shape[0]} distinct sample(s) ({tr.shape[0]} before de-duplication)",
                              "copy metrics need at least 2 distinct training samples")
        # No repeated row: the distinct rows are train itself (no copy of a large training set).
        self.train_unique = tr if first.shape[0] == tr.shape[0] else tr[torch.from_numpy(first)].contiguous()
        self.train_inverse = inverse
        self.train_first = first
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._baselines: dict[bool, CopyData] = {}  # the baseline views, made once (see baseline)
        # Searches that depend on the training set alone, shared with the baseline views: the neighbour
        # index over the distinct rows (per space) and the per-row nearest-other-row results.
        self._train_store: dict[Any, Any] = {}
        # Baseline views: set name -> (parent set name, rows of it) when this data is a view of a parent's test set.
        self._parent: CopyData | None = None
        self._rows: dict[str, tuple[str, np.ndarray]] = {}

    # --- basic properties ------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Flattened dimension D."""
        return int(self.train.shape[1])

    @property
    def n_train(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test.shape[0])

    @property
    def n_gen(self) -> int:
        return int(self.gen.shape[0])

    @property
    def n_train_unique(self) -> int:
        return int(self.train_unique.shape[0])

    def points(self, which: str) -> torch.Tensor:
        """The (n, D) float32 tensor of ``"train"``, ``"test"`` or ``"gen"``."""
        check_choice(which, SETS, "set")
        return {"train": self.train, "test": self.test, "gen": self.gen}[which]

    def rng(self, purpose: str) -> np.random.Generator:
        """A generator seeded by ``(seed, crc32(purpose))``: independent streams per purpose, order-free."""
        return np.random.default_rng([self.seed, zlib.crc32(purpose.encode("utf-8"))])

    def cached(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """Memoise ``compute()`` under ``key`` on this data (for metric-specific searches, e.g. tiled l2)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    # --- nearest neighbours ----------------------------------------------------------------------
    def knn(self, query: str, ref: str, k: int, *, exclude_self: bool | None = None,
            space: str = "l2") -> tuple[np.ndarray, np.ndarray]:
        """Cached exact k nearest neighbours of one set's rows among another set.

        Parameters
        ----------
        query, ref : {"train", "test", "gen"}
            Query and reference sets. A ``"train"`` reference means the *distinct* training rows;
            returned indices are then into the original ``train`` (first occurrence).
        k : int
            Number of neighbours (at most the reference size, less one with ``exclude_self``).
        exclude_self : bool, optional
            Skip each query row's own row (and, for ``train``, its exact duplicates); default True
            when ``query == ref``.
        space : {"l2", "cosine"}
            ``"l2"``: normalized l2 ``||a - b|| / sqrt(D)``. ``"cosine"``: the same on rows scaled to
            unit norm (rows of norm 0 stay 0), so the order is by decreasing cosine similarity and
            ``cos = 1 - D * d^2 / 2``.

        Returns
        -------
        distances : numpy.ndarray, shape (n_query, k), float64
            Ascending along each row.
        indices : numpy.ndarray, shape (n_query, k), int64
        """
        check_choice(query, SETS, "set")
        check_choice(ref, SETS, "set")
        check_choice(space, SPACES, "distance space")
        if exclude_self is None:
            exclude_self = query == ref
        n_ref = (self.n_train_unique if ref == "train" else len(self.points(ref))) - int(bool(exclude_self))
        k = check_scalar(k, "k", min=1, max=max(n_ref, 1),
                         fix=f"ask for at most {n_ref} neighbours among the {ref} set")
        # A baseline view answers searches against train from its parent's cache (rows of the parent's test).
        if self._parent is not None and ref == "train" and query in self._rows:
            src, rows = self._rows[query]
            d, i = self._parent.knn(src, "train", k, exclude_self=False, space=space)
            return d[rows], i[rows]
        if self._parent is not None and query == "train" and ref == "train":
            return self._parent.knn("train", "train", k, exclude_self=exclude_self, space=space)
        key = ("knn", query, ref, bool(exclude_self), space)
        hit = self._cache.get(key)
        if hit is None or hit[0].shape[1] < k:
            hit = self._search(query, ref, k, bool(exclude_self), space)
            self._cache[key] = hit
        return hit[0][:, :k], hit[1][:, :k]

    def gen_train_nn(self, k: int = 1, *, space: str = "l2") -> tuple[np.ndarray, np.ndarray]:
        """k nearest distinct training rows of each generated sample: (G, k) distances, indices into ``train``."""
        return self.knn("gen", "train", k, space=space)

    def test_train_nn(self, k: int = 1, *, space: str = "l2") -> tuple[np.ndarray, np.ndarray]:
        """k nearest distinct training rows of each test sample: (M, k) distances, indices into ``train``."""
        return self.knn("test", "train", k, space=space)

    def train_train_nn(self, k: int = 1, *, exclude_self: bool = True, space: str = "l2") -> tuple[np.ndarray, np.ndarray]:
        """k nearest *other* distinct training rows of each training row: (N, k) distances, indices into ``train``."""
        return self.knn("train", "train", k, exclude_self=exclude_self, space=space)

    def gen_gen_nn(self, k: int = 1, *, exclude_self: bool = True, space: str = "l2") -> tuple[np.ndarray, np.ndarray]:
        """k nearest other generated samples of each generated sample: (G, k)."""
        return self.knn("gen", "gen", k, exclude_self=exclude_self, space=space)

    def test_test_nn(self, k: int = 1, *, exclude_self: bool = True, space: str = "l2") -> tuple[np.ndarray, np.ndarray]:
        """k nearest other test samples of each test sample: (M, k)."""
        return self.knn("test", "test", k, exclude_self=exclude_self, space=space)

    def gen_test_nn(self, k: int = 1, *, space: str = "l2") -> tuple[np.ndarray, np.ndarray]:
        """k nearest test samples of each generated sample: (G, k)."""
        return self.knn("gen", "test", k, space=space)

    def train_nn_other(self, rows: np.ndarray, k: int = 1, *, space: str = "l2") -> tuple[np.ndarray, np.ndarray]:
        """k nearest *other* distinct training rows of the given training rows only.

        The same numbers as ``train_train_nn(k)`` at ``rows``, but only the distinct rows behind
        ``rows`` are searched (each once; the results are kept and shared with the baseline views),
        so asking for the rows that some generated samples matched costs a search of those rows,
        not of the whole training set.

        Parameters
        ----------
        rows : numpy.ndarray, shape (n,), int
            Indices into the original ``train``.
        k : int, default 1
            At most ``n_train_unique - 1``.
        space : {"l2", "cosine"}

        Returns
        -------
        distances : numpy.ndarray, shape (n, k), float64
        indices : numpy.ndarray, shape (n, k), int64
            Into ``train`` (first occurrences of the distinct rows).
        """
        check_choice(space, SPACES, "distance space")
        n_u = self.n_train_unique
        k = check_scalar(k, "k", min=1, max=max(n_u - 1, 1), fix=f"ask for at most {n_u - 1} neighbours")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_train):
            raise MemgeoError(f"training row index out of range [0, {self.n_train})", "pass indices into train")
        u = self.train_inverse[rows]
        full = self._full_train_train(k, space)
        if full is not None:  # the whole train -> train search is cached already
            return full[0][self.train_first[u], :k], full[1][self.train_first[u], :k]
        store = self._train_store.setdefault(("nn_other", space), {"k": 0})
        if store["k"] < k:  # a larger k: start again (smaller k are prefixes of the new results)
            store.update(k=k, d=np.full((n_u, k), np.nan), i=np.full((n_u, k), -1, dtype=np.int64),
                         done=np.zeros(n_u, dtype=bool))
        need = np.unique(u[~store["done"][u]])
        if need.size:
            kk = store["k"]
            q = self._vectors("train", space)[torch.from_numpy(need)]
            d, i = self._train_index(space).search(q, min(kk + 1, n_u))
            d, i = _drop_self(d.cpu().numpy(), i.cpu().numpy(), kk, own=need)
            store["d"][need], store["i"][need], store["done"][need] = d, self.train_first[i], True
        return store["d"][u, :k], store["i"][u, :k]

    def _full_train_train(self, k: int, space: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached whole train -> train search (``exclude_self``) with at least k columns, if any."""
        root = self._parent if self._parent is not None else self
        hit = root._cache.get(("knn", "train", "train", True, space))
        return hit if hit is not None and hit[0].shape[1] >= k else None

    def train_subsample(self, size: int, purpose: str) -> np.ndarray:
        """Sorted indices of ``min(size, n_train_unique)`` distinct training rows drawn without replacement.

        Seeded by ``(seed, purpose)``; every distinct row (``arange``) when there are at most ``size``.
        Indices are into ``train_unique`` (``train_first`` maps them to ``train``).
        """
        size = check_scalar(size, "size", min=1)
        n_u = self.n_train_unique
        if size >= n_u:
            return np.arange(n_u, dtype=np.int64)
        return np.sort(self.rng(f"train_subsample/{purpose}").choice(n_u, size=size, replace=False)).astype(np.int64)

    def train_spacing(self, max_rows: int | None = None) -> float:
        """Median over distinct training rows of the distance to the nearest other distinct row (normalized l2).

        The same number as :func:`memgeo.memorization.copies.typical_spacing`. With ``max_rows`` and
        more distinct rows than that, the median is taken over a seeded random subsample of
        ``max_rows`` distinct rows (:meth:`train_subsample`, purpose ``"spacing"``), each with its
        exact nearest other row among *all* distinct rows: an estimate of the median at the cost of
        a ``max_rows x N`` search instead of ``N x N``.
        """
        max_rows = check_scalar(max_rows, "max_rows", min=1, allow_none=True)
        if self._full_train_train(1, "l2") is not None or max_rows is None:
            d, _ = self.train_train_nn(1)
            return float(np.median(d[self.train_first, 0]))
        rows = self.train_first[self.train_subsample(max_rows, "spacing")]
        return float(np.median(self.train_nn_other(rows, 1)[0][:, 0]))

    def _train_index(self, space: str) -> NeighborIndex:
        """The neighbour index over the distinct training rows in ``space``, built once (shared with views)."""
        key = ("index", space)
        if key not in self._train_store:
            opts = dict(self.index_options)
            if self.backend not in APPROXIMATE_BACKENDS:  # exact backends take no index options but the block
                opts = {k: v for k, v in opts.items() if k == "block_size"}
            self._train_store[key] = NeighborIndex(self._vectors("train", space), backend=self.backend,
                                                   chunk_size=self.chunk_size, seed=self.seed, **opts)
        return self._train_store[key]

    def _vectors(self, which: str, space: str) -> torch.Tensor:
        pts = self.train_unique if which == "train" else self.points(which)
        if space == "cosine":
            norm = torch.linalg.vector_norm(pts.double(), dim=1, keepdim=True)
            pts = (pts.double() / torch.where(norm > 0, norm, torch.ones_like(norm))).float()
        return pts

    def _search(self, query: str, ref: str, k: int, exclude_self: bool, space: str) -> tuple[np.ndarray, np.ndarray]:
        q = self._vectors(query, space)
        r = self._vectors(ref, space)
        k_ask = min(k + int(exclude_self), r.shape[0])
        if ref == "train":
            d, i = self._train_index(space).search(q, k_ask)
        else:
            d, i = nearest_neighbors(q, r, k=k_ask, chunk_size=self.chunk_size, backend=self.backend)
        d, i = d.cpu().numpy(), i.cpu().numpy()
        if exclude_self:
            d, i = _drop_self(d, i, k)
        if ref == "train":
            i = self.train_first[i]
        if query == "train":  # searched per distinct row; expand to every original row
            d, i = d[self.train_inverse], i[self.train_inverse]
        return np.ascontiguousarray(d), np.ascontiguousarray(i)

    # --- bootstrap -------------------------------------------------------------------------------
    def bootstrap_indices(self, n: int, purpose: str) -> np.ndarray:
        """``(n_boot, n)`` int64 indices drawn with replacement from ``range(n)``, seeded by ``purpose``."""
        return self.rng(f"bootstrap/{purpose}").integers(0, n, size=(self.n_boot, n))

    def percentile_ci(self, replicates: np.ndarray) -> tuple[float, float]:
        """Percentile CI at ``level`` of bootstrap replicates (NaN, NaN if there are none or none is finite)."""
        rep = np.asarray(replicates, dtype=np.float64)
        rep = rep[np.isfinite(rep)]
        if rep.size == 0:
            return float("nan"), float("nan")
        a = (1.0 - self.level) / 2.0
        lo, hi = np.quantile(rep, [a, 1.0 - a])
        return float(lo), float(hi)

    def bootstrap_mean_ci(self, values: np.ndarray, purpose: str) -> tuple[float, float]:
        """Percentile CI of the mean of per-generated-sample ``values`` (G,) by resampling generated samples."""
        v = np.asarray(values, dtype=np.float64)
        if self.n_boot == 0:
            return float("nan"), float("nan")
        return self.percentile_ci(v[self.bootstrap_indices(v.shape[0], purpose)].mean(axis=1))

    # --- baseline --------------------------------------------------------------------------------
    def baseline(self, *, split: bool) -> CopyData:
        """This data with the held-out test set as the generator (see the module docstring).

        Parameters
        ----------
        split : bool
            True: a seeded half of ``test`` plays the generator and the other half the test set.
            False: the whole ``test`` set plays the generator (and stays the test set).

        Returns
        -------
        CopyData
            Shares this data's training set and its cached searches against it.
        """
        if split in self._baselines:  # one view per split: the metrics share its cached searches
            return self._baselines[split]
        if split:
            perm = self.rng("baseline/split").permutation(self.n_test)
            h = (self.n_test + 1) // 2
            rows = {"gen": ("test", np.sort(perm[:h])), "test": ("test", np.sort(perm[h:]))}
        else:
            every = np.arange(self.n_test)
            rows = {"gen": ("test", every), "test": ("test", every)}
        view = object.__new__(CopyData)
        view.__dict__.update({k: v for k, v in self.__dict__.items()
                              if k not in ("_cache", "_rows", "_parent", "_baselines")})
        view.gen = self.test[torch.from_numpy(rows["gen"][1])]
        view.test = self.test[torch.from_numpy(rows["test"][1])]
        view._cache = {}
        view._baselines = {}
        view._parent = self
        view._rows = rows
        self._baselines[split] = view
        return view

    def with_gen_rows(self, rows: np.ndarray) -> CopyData:
        """This data with only the generated rows ``rows``: training set, de-duplication, settings and the
        training-set searches shared; its own cache (searches of the full generated set must not answer
        for the subset) and baseline views."""
        view = copy.copy(self)
        view.gen = self.gen[torch.from_numpy(np.asarray(rows, dtype=np.int64))]
        view._cache = {}
        view._baselines = {}
        return view


def _check_image_shape(image_shape: Sequence[int] | None, dim: int) -> tuple[int, ...] | None:
    if image_shape is None:
        return None
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise MemgeoError(f"image_shape={image_shape!r} is not a tuple of integers",
                          "pass image_shape as (H, W) or (C, H, W)") from None
    if len(shape) not in (2, 3) or any(s < 1 for s in shape) or int(np.prod(shape)) != dim:
        raise MemgeoError(f"image_shape={shape} does not describe samples of dimension {dim}",
                          f"pass (H, W) or (C, H, W) with product {dim}")
    return shape


def _drop_self(d: np.ndarray, i: np.ndarray, k: int, own: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index (``own[r]``, default r) from (n, k+1) results, keeping k columns.

    If a row's own index is not among its k+1 results (ties at distance 0 with lower indices never
    happen against distinct rows), the last column is dropped instead.
    """
    n, m = i.shape
    own = (np.arange(n) if own is None else np.asarray(own, dtype=np.int64))[:, None]
    is_self = i == own
    # Column to drop: the first own-index column, else the last one.
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), m - 1)
    keep = np.ones_like(is_self)
    keep[np.arange(n), drop] = False
    return d[keep].reshape(n, m - 1)[:, :k], i[keep].reshape(n, m - 1)[:, :k]


class CopyMetric(ABC):
    """A copy metric: ``compute(CopyData) -> MetricResult``.

    Subclasses set the class attributes and implement :meth:`compute`; ``__init__`` takes the
    metric's options (validated with :func:`~memgeo.errors.check_scalar`).

    Attributes
    ----------
    name : str
        Registry name.
    kind : {"local", "global"}
        ``"local"``: per-sample verdicts against individual training samples; ``"global"``: a
        distribution-level score.
    uses_test : bool
        Whether :meth:`compute` reads ``data.test`` (decides the baseline split, see
        :meth:`CopyData.baseline`).
    needs_image_shape : bool
        Whether the metric needs ``data.image_shape``.
    direction : str
        How to read the value, in words.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "local"
    uses_test: ClassVar[bool] = True
    needs_image_shape: ClassVar[bool] = False
    direction: ClassVar[str] = "higher = more copying"

    @abstractmethod
    def compute(self, data: CopyData) -> MetricResult:
        """The metric on ``data.gen`` (``baseline`` left ``None``)."""

    def evaluate(self, data: CopyData, *, baseline: bool = True) -> MetricResult:
        """:meth:`compute`, plus the held-out baseline (value in ``baseline``, its CI in ``extra["baseline_ci"]``)."""
        if self.needs_image_shape and data.image_shape is None:
            raise MemgeoError(f"copy metric {self.name!r} needs the image shape of the samples",
                              "pass image_shape=(C, H, W) or (H, W)")
        result = self.compute(data)
        if not baseline:
            return result
        base = self.compute(data.baseline(split=self.uses_test))
        return replace(result, baseline=base.value,
                       extra={**result.extra, "baseline_ci": [base.ci_low, base.ci_high],
                              "baseline_split": "halves of test" if self.uses_test else "all of test"})

    def __repr__(self) -> str:
        params = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


#: Copy metrics by name (filled by the modules of this package with ``@COPY_METRICS.register``).
COPY_METRICS: Registry[type[CopyMetric]] = Registry("copy metric")


def rate_result(metric: CopyMetric, data: CopyData, per_sample: np.ndarray, flagged: np.ndarray,
                nearest_index: np.ndarray | None, extra: dict[str, Any] | None = None,
                ci: tuple[float, float] | None = None) -> MetricResult:
    """A :class:`MetricResult` whose value is the fraction of flagged generated samples; its CI ``ci``, or by
    bootstrap over the generated samples when ``ci`` is None."""
    flagged = np.asarray(flagged, dtype=bool)
    lo, hi = ci if ci is not None else data.bootstrap_mean_ci(flagged.astype(np.float64), metric.name)
    return MetricResult(name=metric.name, value=float(flagged.mean()), ci_low=lo, ci_high=hi, baseline=None,
                        per_sample=np.asarray(per_sample, dtype=np.float64), flagged=flagged,
                        nearest_index=None if nearest_index is None else np.asarray(nearest_index, dtype=np.int64),
                        direction="higher = more copying (fraction of generated samples flagged as copies)",
                        extra=dict(extra or {}))


def compute_copy_metrics(
    train: ArrayLike,
    test: ArrayLike,
    gen: ArrayLike,
    metrics: Sequence[str] | None = None,
    *,
    image_shape: Sequence[int] | None = None,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    backend: str = "auto",
    options: Mapping[str, Mapping[str, Any]] | None = None,
    baseline: bool = True,
) -> dict[str, MetricResult]:
    """Compute copy metrics of ``gen`` against ``train``, each with its CI and held-out baseline.

    Parameters
    ----------
    train, test, gen : torch.Tensor or numpy.ndarray, shapes (N, ...), (M, ...), (G, ...)
        Training, held-out and generated samples in one feature space (flattened to D).
    metrics : sequence of str, optional
        :data:`COPY_METRICS` names; default every registered metric (those needing an image shape
        only when ``image_shape`` is known).
    image_shape : tuple of int, optional
        ``(H, W)`` or ``(C, H, W)`` of one sample (inferred from 3-D/4-D ``train``).
    n_boot : int, default 200
        Bootstrap replicates (0: no CI).
    level : float, default 0.95
        CI level.
    seed : int, default 0
        Seed of the bootstrap and the baseline split.
    backend : str, default "auto"
        kNN backend (see :func:`~memgeo.data.neighbors.nearest_neighbors`).
    options : dict of str to dict, optional
        Per-metric options, e.g. ``{"d1d2": {"threshold": 0.25}}``.
    baseline : bool, default True
        Also compute each metric with the test set as the generator.

    Returns
    -------
    dict of str to MetricResult
        In the order of ``metrics``.

    Raises
    ------
    MemgeoError
        Bad inputs, unknown metric names, options for metrics not computed, bad options.
    """
    # COPY_METRICS is full here: importing this module ran the package's __init__, which imports
    # every metric module.
    data = CopyData(train, test, gen, image_shape=image_shape, n_boot=n_boot, level=level, seed=seed,
                    backend=backend)
    if metrics is None:
        names = [n for n, cls in COPY_METRICS.items() if not (cls.needs_image_shape and data.image_shape is None)]
    else:
        if isinstance(metrics, str):
            metrics = [metrics]
        names = list(dict.fromkeys(metrics))
        if not names:
            raise MemgeoError("no copy metric asked for", f"choose from: {', '.join(COPY_METRICS.names())}")
        for n in names:
            COPY_METRICS.get(n)  # raises for an unknown name, listing the choices
    opts = dict(options or {})
    stray = sorted(set(opts) - set(names))
    if stray:
        raise MemgeoError(f"options given for copy metric(s) not computed: {', '.join(stray)}",
                          "add them to metrics or drop their options")
    out: dict[str, MetricResult] = {}
    for n in names:
        metric = COPY_METRICS.build(n, **dict(opts.get(n, {})))
        out[n] = metric.evaluate(data, baseline=baseline)
    return out
