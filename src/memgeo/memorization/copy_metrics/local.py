"""Local copy metrics: a per-sample "copy" verdict and the matching training sample for every generation.

Every metric here reports, per generated sample, a number (``per_sample``), a verdict
(``flagged``) and the index of its nearest training sample (``nearest_index``, in the metric's own
distance); the global value is the fraction flagged, with a bootstrap CI over the generated samples
(and the test samples where the threshold comes from them).

``"d1d2"`` (Yoon et al. 2023; Gu et al. 2023)
    ``d_1 / d_2 < threshold`` (default 1/3), d_1, d_2 the normalized l2 distances to the nearest and
    second-nearest *distinct* training samples: :class:`~memgeo.memorization.copies.RatioCriterion`.
``"nn_ratio"`` (Carlini et al. 2023, "Extracting training data from diffusion models")
    The calibrated ratio ``d_1 / (alpha * mean(d_1..d_n)) < threshold`` (alpha 0.5, n 50, threshold
    1/3): :class:`~memgeo.memorization.copies.CalibratedCriterion`.
``"dcr"`` (distance to closest record)
    ``d_1 / s`` with ``s`` the training set's typical spacing (median distance of a distinct training
    sample to its nearest other one, :func:`~memgeo.memorization.copies.typical_spacing`). A generation
    is flagged when its ratio is *below the ``quantile`` (default 0.05) of the held-out test samples'
    own ratios*: closer to the training set than 95 % of genuinely new samples are. So an ideal
    generator has about ``quantile`` flagged (the baseline shows it). The verdicts do not depend on
    ``s`` (both sides of the comparison are divided by it); ``s`` only puts the reported ratios in
    units of the training spacing. With more than ``spacing_rows`` (default 10,000) distinct training
    samples, ``s`` is the median over a seeded random subsample of that many distinct training
    samples, each with its exact nearest other training sample (a ``spacing_rows x N`` search instead
    of ``N x N``); ``extra["spacing_rows"]`` says how many were used.
``"cosine"`` (Somepalli et al. 2023, with SSCD features)
    Cosine similarity to the most similar training sample (searched as l2 on unit-normalised
    vectors) ``> threshold`` (default 0.5, Somepalli et al.'s SSCD threshold; meaningful in a
    feature space such as SSCD's, not in raw pixels). A zero vector has similarity 0 to everything.
``"tiled_l2"`` (Carlini et al. 2023, for large images)
    Each image is cut into a ``grid x grid`` grid of tiles (default 4 x 4 = 16 tiles, as in the
    paper); the distance of two images is the *maximum over tiles* of the normalized l2 distance of
    the tiles, so a generation that copies part of an image but differs elsewhere does not hide
    behind an average. Flagged when its tiled distance to the nearest training image is below
    ``threshold`` (absolute, in the samples' units) or, by default, below ``rel_threshold`` (1/3) x
    the median tiled distance of held-out test images to their nearest training image.

Distances are normalized l2 (``||a - b|| / sqrt(D)``), computed exactly (see
:mod:`memgeo.data.neighbors`). Samples are compared as given: scale, centre and resize them
consistently before calling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from memgeo.errors import MemgeoError, check_scalar
from memgeo.memorization.copies import CalibratedCriterion, CopyCriterion, RatioCriterion, copy_statistic
from memgeo.memorization.copy_metrics.base import COPY_METRICS, CopyData, CopyMetric, MetricResult, rate_result


class _CriterionMetric(CopyMetric):
    """A :class:`~memgeo.memorization.copies.CopyCriterion` as a copy metric (shared by d1d2 and nn_ratio)."""

    kind = "local"
    uses_test = False
    criterion: CopyCriterion

    def compute(self, data: CopyData) -> MetricResult:
        crit = self.criterion
        k = min(crit.n_neighbors(data.n_train_unique), data.n_train_unique)
        dist, idx = data.gen_train_nn(k)
        scale, details = crit.scale(dist, data.train_unique)
        stat = copy_statistic(dist[:, 0], scale)
        return rate_result(self, data, stat, stat < crit.threshold, idx[:, 0],
                           {"criterion": crit.name, "threshold": crit.threshold, "statistic": "d1 / scale",
                            "n_train_unique": data.n_train_unique, **details})


@COPY_METRICS.register
class D1D2Metric(_CriterionMetric):
    """d1/d2 ratio (Yoon et al. 2023; Gu et al. 2023): flagged iff ``d_1 / d_2 < threshold``.

    Parameters
    ----------
    threshold : float, default 1/3
        Positive. ``per_sample`` is ``d_1 / d_2`` (distinct training samples).
    """

    name = "d1d2"

    def __init__(self, threshold: float = 1.0 / 3.0) -> None:
        self.criterion = RatioCriterion(threshold)


@COPY_METRICS.register
class NNRatioMetric(_CriterionMetric):
    """Calibrated nearest-neighbour ratio (Carlini et al. 2023).

    Flagged iff ``d_1 / (alpha * mean(d_1, ..., d_n)) < threshold`` over the n nearest distinct
    training samples.

    Parameters
    ----------
    threshold : float, default 1/3
    n_mean : int, default 50
    alpha : float, default 0.5
    """

    name = "nn_ratio"

    def __init__(self, threshold: float = 1.0 / 3.0, n_mean: int = 50, alpha: float = 0.5) -> None:
        self.criterion = CalibratedCriterion(threshold, n_mean=n_mean, alpha=alpha)


def _rate_ci_held_out_threshold(data: CopyData, gen_values: np.ndarray, test_values: np.ndarray,
                                threshold: Callable[[np.ndarray], np.ndarray], purpose: str) -> tuple[float, float]:
    """Bootstrap CI of the fraction of ``gen_values`` below a threshold set on the held-out values: both sets
    resampled, the threshold recomputed per replicate (``threshold``: (n_boot, n_test) -> (n_boot,)).
    (nan, nan) without bootstrap."""
    if not data.n_boot:
        return float("nan"), float("nan")
    g = data.bootstrap_indices(data.n_gen, f"{purpose}/gen")
    t = data.bootstrap_indices(data.n_test, f"{purpose}/test")
    return data.percentile_ci((gen_values[g] < threshold(test_values[t])[:, None]).mean(axis=1))


@COPY_METRICS.register
class DCRMetric(CopyMetric):
    """Distance to closest record relative to the training spacing, flagged against the held-out DCRs.

    ``per_sample = d_1 / s`` (s: median leave-one-out NN distance among distinct training samples);
    flagged iff ``per_sample < quantile_q(test ratios)``. The CI resamples generated and test samples.

    Parameters
    ----------
    quantile : float, default 0.05
        In (0, 1): the held-out quantile below which a generation counts as a copy.
    spacing_rows : int or None, default 10000
        Largest number of distinct training samples whose nearest-other distance enters the spacing
        ``s`` (a seeded subsample beyond it; ``None``: all of them, an ``N x N`` search). ``s`` scales
        the reported ratios only, not the verdicts.
    """

    name = "dcr"
    kind = "local"
    uses_test = True

    def __init__(self, quantile: float = 0.05, spacing_rows: int | None = 10_000) -> None:
        self.quantile = check_scalar(quantile, "quantile", float, min=0, max=1, include_min=False,
                                     include_max=False, fix="pass quantile=0.05")
        self.spacing_rows = check_scalar(spacing_rows, "spacing_rows", min=2, allow_none=True,
                                         fix="pass spacing_rows=10000 (or None for every training sample)")

    def compute(self, data: CopyData) -> MetricResult:
        n_rows = data.n_train_unique if self.spacing_rows is None else min(self.spacing_rows, data.n_train_unique)
        spacing = data.train_spacing(None if n_rows == data.n_train_unique else n_rows)
        s = spacing if spacing > 0 else 1.0
        d_gen, i_gen = data.gen_train_nn(1)
        d_test, _ = data.test_train_nn(1)
        r_gen, r_test = d_gen[:, 0] / s, d_test[:, 0] / s
        thr = float(np.quantile(r_test, self.quantile))
        ci = _rate_ci_held_out_threshold(data, r_gen, r_test, lambda v: np.quantile(v, self.quantile, axis=1), "dcr")
        return rate_result(self, data, r_gen, r_gen < thr, i_gen[:, 0],
                           {"quantile": self.quantile, "threshold_ratio": thr, "train_spacing": spacing,
                            "spacing_rows": n_rows, "spacing_subsampled": n_rows < data.n_train_unique,
                            "median_ratio_gen": float(np.median(r_gen)), "median_ratio_test": float(np.median(r_test))},
                           ci=ci)


@COPY_METRICS.register
class CosineMetric(CopyMetric):
    """Cosine similarity to the most similar training sample, flagged above ``threshold`` (SSCD-style).

    Parameters
    ----------
    threshold : float, default 0.5
        In [-1, 1) (Somepalli et al. 2023 use 0.5 on SSCD features).
    """

    name = "cosine"
    kind = "local"
    uses_test = False

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = check_scalar(threshold, "threshold", float, min=-1, max=1, include_max=False,
                                      fix="pass threshold=0.5")

    def compute(self, data: CopyData) -> MetricResult:
        _, idx = data.gen_train_nn(1, space="cosine")
        cos = cosine_similarity(data.gen, data.train[torch.from_numpy(idx[:, 0])])
        return rate_result(self, data, cos, cos > self.threshold, idx[:, 0], {"threshold": self.threshold})


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosine similarity in float64, 0 where either row is zero.

    Parameters
    ----------
    a, b : torch.Tensor, shape (n, D)

    Returns
    -------
    numpy.ndarray, shape (n,)
    """
    a64, b64 = a.double(), b.double()
    na, nb = torch.linalg.vector_norm(a64, dim=1), torch.linalg.vector_norm(b64, dim=1)
    dot = (a64 * b64).sum(dim=1)
    ok = (na > 0) & (nb > 0)
    cos = torch.where(ok, dot / torch.where(ok, na * nb, torch.ones_like(na)), torch.zeros_like(na))
    return cos.clamp(-1.0, 1.0).numpy()


# --- tiled l2 --------------------------------------------------------------------------------------
def tile_index(image_shape: Sequence[int], grid: int) -> list[np.ndarray]:
    """Flat indices of the ``grid x grid`` tiles of images of shape (H, W) or (C, H, W).

    Tiles split H and W as evenly as possible (``numpy.array_split``); every channel of a tile
    belongs to it. Tiles are ordered row-major.

    Returns
    -------
    list of numpy.ndarray
        ``grid**2`` int64 arrays of flat indices into the (C * H * W,) flattened image.
    """
    shape = tuple(int(s) for s in image_shape)
    c, h, w = (1, *shape) if len(shape) == 2 else shape
    grid = check_scalar(grid, "grid", min=1, max=min(h, w), fix=f"pass grid between 1 and {min(h, w)}")
    flat = np.arange(c * h * w).reshape(c, h, w)
    return [flat[:, rows][:, :, cols].reshape(-1)
            for rows in np.array_split(np.arange(h), grid) for cols in np.array_split(np.arange(w), grid)]


def _approx_tiled(q: torch.Tensor, r: torch.Tensor, tiles: list[torch.Tensor]) -> torch.Tensor:
    """(c, N) float32 max over tiles of squared normalized tile distances (matrix-product rounding)."""
    out = torch.zeros((q.shape[0], r.shape[0]), dtype=torch.float32)
    for t in tiles:
        d2 = torch.cdist(q[:, t], r[:, t]).square_() / t.numel()
        torch.maximum(out, d2, out=out)
    return out


def _exact_tiled(q: torch.Tensor, r: torch.Tensor, tiles: list[torch.Tensor]) -> torch.Tensor:
    """Exact float64 tiled distance of row i of ``q`` to row i of ``r`` (paired rows), shape (n,)."""
    diff = q.double() - r.double()
    per_tile = torch.stack([diff[:, t].square().mean(dim=1) for t in tiles], dim=1)
    return per_tile.max(dim=1).values.sqrt()


def tiled_nearest(queries: torch.Tensor, reference: torch.Tensor, tiles: list[np.ndarray], k: int = 1,
                  chunk_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours under the tiled l2 distance ``max_t ||q_t - r_t|| / sqrt(|t|)``.

    A float32 pass (one ``cdist`` per tile, cost of one full ``cdist``) pre-selects ``k + 8``
    candidates; their distances are recomputed exactly in float64 and re-sorted (stable, so ties go
    to the smaller index). An exact copy gets distance exactly 0.

    Parameters
    ----------
    queries : torch.Tensor, shape (n, D)
    reference : torch.Tensor, shape (N, D)
    tiles : list of numpy.ndarray
        From :func:`tile_index`.
    k : int, default 1
    chunk_size : int, default 256
        Queries per block (peak memory about ``chunk_size * N`` floats).

    Returns
    -------
    distances : numpy.ndarray, shape (n, k), float64
    indices : numpy.ndarray, shape (n, k), int64
    """
    n_ref = reference.shape[0]
    k = check_scalar(k, "k", min=1, max=n_ref)
    t_idx = [torch.from_numpy(np.asarray(t, dtype=np.int64)) for t in tiles]
    q32, r32 = queries.float(), reference.float()
    n_cand = min(n_ref, k + 8)
    out_d = np.empty((q32.shape[0], k))
    out_i = np.empty((q32.shape[0], k), dtype=np.int64)
    for s in range(0, q32.shape[0], chunk_size):
        qc = q32[s:s + chunk_size]
        cand = torch.topk(_approx_tiled(qc, r32, t_idx), n_cand, dim=1, largest=False).indices
        cand = torch.sort(cand, dim=1).values
        exact = _exact_tiled(qc.repeat_interleave(n_cand, 0), r32[cand.reshape(-1)], t_idx).reshape(cand.shape)
        order = torch.sort(exact, dim=1, stable=True).indices[:, :k]
        out_d[s:s + qc.shape[0]] = torch.gather(exact, 1, order).numpy()
        out_i[s:s + qc.shape[0]] = torch.gather(cand, 1, order).numpy()
    return out_d, out_i


def tiled_pairs_below(points: torch.Tensor, tiles: list[np.ndarray], threshold: float,
                      chunk_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` of rows with exact tiled l2 distance ``< threshold``.

    Parameters
    ----------
    points : torch.Tensor, shape (n, D)
    tiles : list of numpy.ndarray
        From :func:`tile_index` (one tile of all indices gives the plain normalized l2).
    threshold : float

    Returns
    -------
    i, j : numpy.ndarray, shape (P,), int64
    distance : numpy.ndarray, shape (P,), float64
    """
    t_idx = [torch.from_numpy(np.asarray(t, dtype=np.int64)) for t in tiles]
    p32 = points.float()
    # Generous float32 pre-selection (relative and absolute slack), exact float64 check after.
    pre = (threshold * (1 + 1e-3)) ** 2 + 1e-6
    ii, jj = [], []
    for s in range(0, p32.shape[0], chunk_size):
        block = _approx_tiled(p32[s:s + chunk_size], p32, t_idx)
        a, b = torch.nonzero(block <= pre, as_tuple=True)
        a = a + s
        keep = a < b
        ii.append(a[keep])
        jj.append(b[keep])
    i = torch.cat(ii) if ii else torch.zeros(0, dtype=torch.int64)
    j = torch.cat(jj) if jj else torch.zeros(0, dtype=torch.int64)
    d = _exact_tiled(p32[i], p32[j], t_idx) if i.numel() else torch.zeros(0, dtype=torch.float64)
    keep = d < threshold
    return i[keep].numpy(), j[keep].numpy(), d[keep].numpy()


def tiled_train_nn(data: CopyData, which: str, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Cached tiled-l2 nearest distinct training sample of ``data``'s ``which`` set: (n,) distance, (n,) train index."""
    if data.image_shape is None:
        raise MemgeoError("tiled l2 needs the image shape of the samples", "pass image_shape=(C, H, W) or (H, W)")
    tiles = tile_index(data.image_shape, grid)

    def run() -> tuple[np.ndarray, np.ndarray]:
        d, i = tiled_nearest(data.points(which), data.train_unique, tiles, k=1)
        return d[:, 0], data.train_first[i[:, 0]]

    return data.cached(("tiled_train_nn", which, grid), run)


def held_out_scale(data: CopyData, grid: int | None) -> float:
    """Median distance of held-out test samples to their nearest training sample (tiled if ``grid``)."""
    if grid is None:
        return float(np.median(data.test_train_nn(1)[0][:, 0]))
    return float(np.median(tiled_train_nn(data, "test", grid)[0]))


@COPY_METRICS.register
class TiledL2Metric(CopyMetric):
    """Tiled l2 of Carlini et al. (2023): max over tiles of the tile distance, to the nearest training image.

    Parameters
    ----------
    grid : int, default 4
        Tiles per side (4 x 4 = 16 tiles).
    threshold : float, optional
        Absolute tiled-l2 threshold (in the samples' units); overrides ``rel_threshold``.
    rel_threshold : float, default 1/3
        Flag below this fraction of the median held-out tiled distance to the training set.
    """

    name = "tiled_l2"
    kind = "local"
    uses_test = True
    needs_image_shape = True

    def __init__(self, grid: int = 4, threshold: float | None = None, rel_threshold: float = 1.0 / 3.0) -> None:
        self.grid = check_scalar(grid, "grid", min=1, fix="pass grid=4 (a 4 x 4 grid of tiles)")
        self.threshold = check_scalar(threshold, "threshold", float, min=0, include_min=False, allow_none=True)
        self.rel_threshold = check_scalar(rel_threshold, "rel_threshold", float, min=0, include_min=False,
                                          fix="pass rel_threshold=1/3")

    def compute(self, data: CopyData) -> MetricResult:
        if data.image_shape is None:
            raise MemgeoError("copy metric 'tiled_l2' needs the image shape of the samples",
                              "pass image_shape=(C, H, W) or (H, W)")
        d, idx = tiled_train_nn(data, "gen", self.grid)
        extra: dict[str, Any] = {"grid": self.grid, "n_tiles": len(tile_index(data.image_shape, self.grid))}
        if self.threshold is not None:
            thr = self.threshold
            extra["threshold"] = thr
            res = rate_result(self, data, d, d < thr, idx, extra)
            return res
        d_test, _ = tiled_train_nn(data, "test", self.grid)
        thr = self.rel_threshold * float(np.median(d_test))
        extra.update({"threshold": thr, "rel_threshold": self.rel_threshold,
                      "median_test_distance": float(np.median(d_test))})
        ci = _rate_ci_held_out_threshold(data, d, d_test, lambda v: self.rel_threshold * np.median(v, axis=1),
                                         "tiled_l2")
        return rate_result(self, data, d, d < thr, idx, extra, ci=ci)
