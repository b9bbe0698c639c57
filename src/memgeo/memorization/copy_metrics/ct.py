"""The C_T data-copying statistic of Meehan, Chaudhuri & Dasgupta (AISTATS 2020).

"A non-parametric test to detect data-copying in generative models" compares, cell by cell of a
partition of the instance space, how close generated samples lie to the training set with how close
held-out test samples lie to it. With ``L(x) = min_{t in train} d(x, t)`` (normalized l2, the shared
cached search of :class:`~memgeo.memorization.copy_metrics.base.CopyData`):

1. Partition: k-means with ``k`` cells fitted on the training set (optionally after a PCA to ``pca``
   dimensions, which only shapes the partition; the distances stay in the full feature space).
   Test and generated samples fall in the cell of their nearest centre.
2. In each cell ``pi``, the Mann-Whitney U statistic ``U = #{(g, t): L(g) > L(t)} + 1/2 #{ties}``
   between the ``m_pi`` generated and ``n_pi`` test distances, z-scored under the null of equal
   distributions (the normal approximation with the tie correction, as
   ``scipy.stats.mannwhitneyu(..., method="asymptotic", use_continuity=False)``):

       Z_pi = (U - m n / 2) / sqrt(m n / 12 * ((N + 1) - sum_ties (t^3 - t) / (N (N - 1)))),  N = m + n.

   ``Z_pi << 0``: generated samples are closer to the training set than fresh data is (data-copying
   in that cell); ``Z_pi >> 0``: farther (underfitting).
3. ``C_T = sum_{pi in Pi_tau} P_n(pi) Z_pi / sum_{pi in Pi_tau} P_n(pi)``, the average weighted by
   the fraction of test samples ``P_n(pi)``, over the cells ``Pi_tau`` holding at least
   ``tau * n_gen`` generated samples (and at least one test sample); the others are reported as
   dropped.

Differences from the authors' reference code, all deliberate: the nearest training sample is searched
in the whole training set rather than only among the training samples of the same cell (the two agree
except next to cell borders, and the search is shared with the other copy metrics); the z-score
carries the tie correction (which matters for exact copies, whose distances tie at 0) and no
continuity correction; a cell needs ``>= tau * n_gen`` generated samples (the reference uses ``>``).

Defaults: ``k = clip(N_train // 400, 1, 50)`` (5 cells for 2000 training samples, as in the paper's
two-moons experiment; 50 for 20,000 and more), ``tau = 20 / n_gen`` (cells with at least 20
generated samples, as in the paper's experiments).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from memgeo.errors import MemgeoError, check_scalar
from memgeo.memorization.copy_metrics.base import COPY_METRICS, CopyData, CopyMetric, MetricResult

#: Generated samples a cell needs by default (tau = MIN_GEN_DEFAULT / n_gen).
MIN_GEN_DEFAULT = 20


def mann_whitney_z_cells(d_gen: np.ndarray, cell_gen: np.ndarray, d_test: np.ndarray, cell_test: np.ndarray,
                         n_cells: int) -> dict[str, np.ndarray]:
    """Tie-corrected Mann-Whitney z-score of generated vs test distances within each cell.

    Parameters
    ----------
    d_gen : numpy.ndarray, shape (m,)
        Distance of each generated sample to the training set.
    cell_gen : numpy.ndarray, shape (m,), int
        Cell of each generated sample, in ``[0, n_cells)``.
    d_test : numpy.ndarray, shape (n,)
        Distance of each test sample to the training set.
    cell_test : numpy.ndarray, shape (n,), int
        Cell of each test sample.
    n_cells : int
        Number of cells.

    Returns
    -------
    dict of str to numpy.ndarray, each shape (n_cells,)
        ``"z"`` (NaN where a cell lacks generated or test samples, or all its distances tie),
        ``"u"`` (U of the generated samples: pairs with the generated distance larger, ties 1/2),
        ``"n_gen"``, ``"n_test"`` (counts per cell).
    """
    d_gen = np.asarray(d_gen, dtype=np.float64).reshape(-1)
    d_test = np.asarray(d_test, dtype=np.float64).reshape(-1)
    cell_gen = np.asarray(cell_gen, dtype=np.int64).reshape(-1)
    cell_test = np.asarray(cell_test, dtype=np.int64).reshape(-1)
    values = np.concatenate([d_gen, d_test])
    cells = np.concatenate([cell_gen, cell_test])
    m = np.bincount(cell_gen, minlength=n_cells).astype(np.float64)
    n = np.bincount(cell_test, minlength=n_cells).astype(np.float64)
    if values.size == 0:
        nan = np.full(n_cells, np.nan)
        return {"z": nan, "u": nan.copy(), "n_gen": m, "n_test": n}
    # One exact integer key per (cell, distance value): groups of equal keys are the ties of a cell.
    _, code = np.unique(values, return_inverse=True)
    n_values = int(code.max()) + 1
    key = cells * n_values + code.reshape(-1)
    keys, group, counts = np.unique(key, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    counts = counts.astype(np.float64)
    # Average (1-based) rank of each tie group in the global sort by (cell, value) ...
    start = np.cumsum(counts) - counts
    avg_rank = start + (counts + 1.0) / 2.0
    # ... minus the number of elements in the cells before it: the rank within the cell.
    per_cell = m + n
    offset = np.cumsum(per_cell) - per_cell
    rank = avg_rank[group] - offset[cells]
    r_gen = np.bincount(cell_gen, weights=rank[: d_gen.size], minlength=n_cells)
    u = r_gen - m * (m + 1.0) / 2.0
    ties = np.bincount(keys // n_values, weights=counts ** 3 - counts, minlength=n_cells)
    total = m + n
    with np.errstate(divide="ignore", invalid="ignore"):
        var = m * n / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)))
        z = (u - m * n / 2.0) / np.sqrt(var)
    z = np.where((m > 0) & (n > 0) & (var > 0), z, np.nan)
    u = np.where((m > 0) & (n > 0), u, np.nan)
    return {"z": z, "u": u, "n_gen": m, "n_test": n}


def ct_from_cells(z: np.ndarray, n_gen_cell: np.ndarray, n_test_cell: np.ndarray, min_gen: float) -> tuple[float, np.ndarray]:
    """C_T from per-cell z-scores: test-weighted mean over cells with ``>= min_gen`` generated samples.

    Parameters
    ----------
    z, n_gen_cell, n_test_cell : numpy.ndarray, shape (k,)
        Per-cell z-score and counts (as from :func:`mann_whitney_z_cells`).
    min_gen : float
        Generated samples a cell needs (``tau * n_gen``).

    Returns
    -------
    ct : float
        NaN if no cell qualifies.
    used : numpy.ndarray, shape (k,), bool
        The cells ``Pi_tau`` that entered the average.
    """
    used = (n_gen_cell >= min_gen) & (n_test_cell > 0) & np.isfinite(z)
    w = n_test_cell[used]
    if w.sum() <= 0:
        return float("nan"), used
    return float(np.dot(w, z[used]) / w.sum()), used


def ct_statistic(d_gen: np.ndarray, cell_gen: np.ndarray, d_test: np.ndarray, cell_test: np.ndarray, n_cells: int,
                 tau: float | None = None) -> dict[str, Any]:
    """C_T of Meehan et al. (2020) from distances to the training set and cell labels.

    Parameters
    ----------
    d_gen, cell_gen : numpy.ndarray, shape (m,)
        Distances of the generated samples to the training set and their cells.
    d_test, cell_test : numpy.ndarray, shape (n,)
        The same for the test samples.
    n_cells : int
        Number of cells ``k``.
    tau : float, optional
        A cell enters ``C_T`` when it holds at least ``tau * m`` generated samples; default
        ``20 / m``.

    Returns
    -------
    dict
        ``"ct"`` (float), ``"used"`` (k,) bool, ``"min_gen"`` (float) and the arrays of
        :func:`mann_whitney_z_cells`.
    """
    m_total = np.asarray(d_gen).size
    min_gen = MIN_GEN_DEFAULT if tau is None else tau * m_total
    cells = mann_whitney_z_cells(d_gen, cell_gen, d_test, cell_test, n_cells)
    ct, used = ct_from_cells(cells["z"], cells["n_gen"], cells["n_test"], min_gen)
    return {"ct": ct, "used": used, "min_gen": float(min_gen), **cells}


@COPY_METRICS.register
class CTMetric(CopyMetric):
    """C_T (Meehan et al. 2020): per-cell Mann-Whitney z of generated vs test distances to the training set.

    Parameters
    ----------
    k : int, optional
        Number of k-means cells; default ``clip(N_train // 400, 1, 50)``.
    tau : float, optional
        A cell counts when it holds at least ``tau * n_gen`` generated samples; default ``20 / n_gen``.
    pca : int, optional
        Fit the partition on the first ``pca`` principal components of the training set (the
        distances stay in the full space); default none.
    n_init : int, default 4
        k-means restarts (seeded by the data's seed).
    max_train : int or None, default 20000
        Most training rows the k-means partition (and the PCA) is fitted on: beyond it a seeded
        random subsample (``None``: all rows, a float64 copy of the whole training set). Every
        training row is still assigned to its cell (in slices) for the per-cell counts.

    Notes
    -----
    ``value`` is ``C_T`` (lower = more copying; about N(0, 1)-distributed per cell for a generator
    independent of the training set). ``per_sample`` is the z-score of each generated sample's cell
    (NaN where undefined); ``extra["cells"]`` lists every cell's counts, z and whether it was used,
    ``extra["dropped_cells"]`` the cells left out. The CI resamples generated and test samples
    (partition and distances fixed).
    """

    name: ClassVar[str] = "ct"
    kind: ClassVar[str] = "global"
    uses_test: ClassVar[bool] = True
    direction: ClassVar[str] = ("lower = more copying (C_T << 0: generated samples lie closer to the training set "
                                "than held-out samples do; >> 0: farther, underfitting)")

    def __init__(self, k: int | None = None, tau: float | None = None, pca: int | None = None, n_init: int = 4,
                 max_train: int | None = 20_000) -> None:
        self.k = check_scalar(k, "k", min=1, allow_none=True, fix="pass k as the number of cells, e.g. k=5")
        self.tau = check_scalar(tau, "tau", float, min=0, max=1, allow_none=True,
                                fix="pass tau as a fraction of the generated samples, e.g. tau=0.02")
        self.pca = check_scalar(pca, "pca", min=1, allow_none=True, fix="pass pca as a number of dimensions, e.g. pca=64")
        self.n_init = check_scalar(n_init, "n_init", min=1)
        self.max_train = check_scalar(max_train, "max_train", min=1, allow_none=True,
                                      fix="pass max_train=20000 (or None for the whole training set)")

    def n_cells(self, data: CopyData) -> int:
        """The number of cells used on ``data`` (the option, or the default from the training-set size)."""
        k = self.k if self.k is not None else int(np.clip(data.n_train // 400, 1, 50))
        if k > data.n_train_unique:
            raise MemgeoError(f"k={k} cells but the training set has only {data.n_train_unique} distinct samples",
                              f"pass k <= {data.n_train_unique}")
        return k

    def partition(self, data: CopyData) -> dict[str, np.ndarray]:
        """Cell labels of train, test and gen (k-means on the training set, optional PCA); cached on ``data``."""
        k = self.n_cells(data)
        if self.pca is not None and self.pca > min(data.dim, data.n_train):
            raise MemgeoError(f"pca={self.pca} exceeds the {min(data.dim, data.n_train)} dimensions the training set "
                              "spans", f"pass pca <= {min(data.dim, data.n_train)} or leave it unset")

        def compute() -> dict[str, np.ndarray]:
            from sklearn.cluster import KMeans  # imported here: sklearn is slow to import

            sub = None
            if self.max_train is not None and self.max_train < data.n_train:
                sub = np.sort(data.rng("ct/max_train").choice(data.n_train, size=self.max_train, replace=False))
            tr = (data.train if sub is None else data.train[torch.from_numpy(sub)]).numpy().astype(np.float64)
            te = data.test.numpy().astype(np.float64)
            ge = data.gen.numpy().astype(np.float64)
            proj = None
            if self.pca is not None:
                from sklearn.decomposition import PCA

                proj = PCA(n_components=self.pca, svd_solver="full").fit(tr)
                tr, te, ge = proj.transform(tr), proj.transform(te), proj.transform(ge)
            km = KMeans(n_clusters=k, n_init=self.n_init, random_state=data.seed).fit(tr)
            if sub is None:
                train_labels = km.labels_.astype(np.int64)
            else:  # every training row to its cell, in slices of the (possibly memory-mapped) training set
                train_labels = np.empty(data.n_train, dtype=np.int64)
                step = max(1, (1 << 22) // max(1, data.dim))
                for s in range(0, data.n_train, step):
                    blk = data.train[s:s + step].numpy().astype(np.float64)
                    train_labels[s:s + step] = km.predict(blk if proj is None else proj.transform(blk))
            return {"train": train_labels, "test": km.predict(te).astype(np.int64),
                    "gen": km.predict(ge).astype(np.int64), "centres": km.cluster_centers_}

        return data.cached(("ct/partition", k, self.pca, self.n_init, self.max_train), compute)

    def compute(self, data: CopyData) -> MetricResult:
        k = self.n_cells(data)
        cells = self.partition(data)
        d_gen, i_gen = data.gen_train_nn(1)
        d_test, _ = data.test_train_nn(1)
        d_gen, d_test = d_gen[:, 0], d_test[:, 0]
        res = ct_statistic(d_gen, cells["gen"], d_test, cells["test"], k, self.tau)
        lo = hi = float("nan")
        if data.n_boot > 0:
            ig = data.bootstrap_indices(data.n_gen, "ct/gen")
            it = data.bootstrap_indices(data.n_test, "ct/test")
            reps = np.array([ct_statistic(d_gen[a], cells["gen"][a], d_test[b], cells["test"][b], k, self.tau)["ct"]
                             for a, b in zip(ig, it)])
            lo, hi = data.percentile_ci(reps)
        n_train_cell = np.bincount(cells["train"], minlength=k)
        table = [{"cell": c, "n_train": int(n_train_cell[c]), "n_test": int(res["n_test"][c]),
                  "n_gen": int(res["n_gen"][c]), "z": float(res["z"][c]), "used": bool(res["used"][c])}
                 for c in range(k)]
        per_sample = res["z"][cells["gen"]]
        extra = {
            "k": k, "tau": res["min_gen"] / data.n_gen, "min_gen": res["min_gen"], "pca": self.pca,
            "max_train": self.max_train, "partition_subsampled": self.max_train is not None and self.max_train < data.n_train,
            "cells": table, "z_per_cell": res["z"].tolist(),
            "dropped_cells": [c for c in range(k) if not res["used"][c]],
            "n_cells_used": int(res["used"].sum()),
            "test_share_used": float(res["n_test"][res["used"]].sum() / data.n_test),
            "gen_share_used": float(res["n_gen"][res["used"]].sum() / data.n_gen),
        }
        return MetricResult(name=self.name, value=res["ct"], ci_low=lo, ci_high=hi, baseline=None,
                            per_sample=per_sample, flagged=None, nearest_index=i_gen[:, 0].astype(np.int64),
                            direction=self.direction, extra=extra)
