"""Improved precision/recall (Kynkaanniemi et al. 2019) and density/coverage (Naeem et al. 2020).

All four describe fidelity and diversity through k-nearest-neighbour balls, with ``r_k(x)`` the
distance from ``x`` to its k-th nearest *other* point of its own set (normalized l2, as every copy
metric), real points ``x_1..x_n`` and generated points ``y_1..y_m``:

- precision = (1/m) sum_j 1[exists i: d(y_j, x_i) <= r_k(x_i)]   (generated samples inside the real support)
- recall    = (1/n) sum_i 1[exists j: d(x_i, y_j) <= r_k(y_j)]   (real samples inside the generated support)
- density   = 1/(k m) sum_j #{i: d(y_j, x_i) <= r_k(x_i)}          (how many real balls hold each sample; ~1 ideal)
- coverage  = (1/n) sum_i 1[exists j: d(y_j, x_i) <= r_k(x_i)]   (real balls that hold a generated sample)

None of them detects copying: a generator that outputs training samples scores precision, recall and
coverage of about 1 against the training set. They sit next to the copy metrics to tell a copying
generator from a poor or mode-dropping one.

Choice: four registered metrics, ``"precision"``, ``"recall"``, ``"density"`` and ``"coverage"``,
that share one cached pass (:func:`prdc_counts`) over the (generated x real) distances, so asking
for all four costs one pass; every result carries all four numbers in ``extra``. The real set is the
training set by default (its distinct rows) or the test set (``reference="test"``); ``k = 5`` by
default (the value Naeem et al. recommend for density/coverage; Kynkaanniemi et al. used 3).
The pass is exact and blocked (memory ``budget_mb``), time ``O(G * N * D)``.

Large training sets: with more than ``max_train`` (default 10,000) distinct training samples the real
set is a seeded random subsample of ``max_train`` of them (``CopyData.train_subsample``, purpose
``"prdc"``), radii taken within the subsample, as PRDC is usually computed on equal-sized real and
generated samples; this keeps the cost at ``O(max_train^2 D + G max_train D)`` instead of ``N^2 D``.
``extra["train_subsampled"]`` and ``extra["n_real"]`` say when and how many.
A point exactly at the radius counts as inside (a relative tolerance of 1e-9 absorbs float rounding
between the cached radii and the block distances). The CIs resample generated samples (precision,
density) or real samples (recall, coverage), radii fixed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from memgeo.data.neighbors import nearest_neighbors
from memgeo.errors import MemgeoError, check_choice, check_scalar
from memgeo.memorization.copy_metrics.base import COPY_METRICS, CopyData, CopyMetric, MetricResult, _drop_self

#: Relative tolerance of "inside the ball" (d <= r (1 + _RADIUS_RTOL)).
_RADIUS_RTOL = 1e-9
REFERENCES = ("train", "test")


def prdc_counts(real: Any, gen: Any, real_radius: Any, gen_radius: Any | None, *, budget_mb: float = 64.0) -> dict[str, np.ndarray]:
    """One blocked pass over the (generated x real) normalized-l2 distances.

    Parameters
    ----------
    real : array-like, shape (n, D)
    gen : array-like, shape (m, D)
    real_radius : array-like, shape (n,)
        ``r_k`` of each real point among the real points.
    gen_radius : array-like, shape (m,), optional
        ``r_k`` of each generated point among the generated points (needed for recall).
    budget_mb : float, default 64
        Largest float64 (generated rows x n) block, in MiB.

    Returns
    -------
    dict of str to numpy.ndarray
        ``"gen_count"`` (m,) number of real balls holding each generated point; ``"real_covered"``
        (n,) bool, a generated point lies in the real point's ball; ``"real_recalled"`` (n,) bool,
        the real point lies in some generated ball (all False without ``gen_radius``).
    """
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    g = torch.as_tensor(np.asarray(gen), dtype=torch.float64)
    dim = r.shape[1]
    rad_r = torch.as_tensor(np.asarray(real_radius, dtype=np.float64)) * (1 + _RADIUS_RTOL)
    rad_g = None if gen_radius is None else torch.as_tensor(np.asarray(gen_radius, dtype=np.float64)) * (1 + _RADIUS_RTOL)
    r_sq = (r * r).sum(dim=1)
    step = max(1, int(budget_mb * 2 ** 20) // (8 * max(1, r.shape[0])))
    gen_count = torch.zeros(g.shape[0], dtype=torch.int64)
    covered = torch.zeros(r.shape[0], dtype=torch.bool)
    recalled = torch.zeros(r.shape[0], dtype=torch.bool)
    for s in range(0, g.shape[0], step):
        y = g[s:s + step]
        d = ((y * y).sum(dim=1, keepdim=True) + r_sq[None, :] - 2.0 * (y @ r.T)).clamp_min_(0.0).sqrt_() / np.sqrt(dim)
        inside = d <= rad_r[None, :]
        gen_count[s:s + y.shape[0]] = inside.sum(dim=1)
        covered |= inside.any(dim=0)
        if rad_g is not None:
            recalled |= (d <= rad_g[s:s + y.shape[0], None]).any(dim=0)
        del d, inside
    return {"gen_count": gen_count.numpy(), "real_covered": covered.numpy(), "real_recalled": recalled.numpy()}


def prdc_values(counts: dict[str, np.ndarray], k: int, has_recall: bool = True) -> dict[str, float]:
    """Precision, recall, density and coverage from :func:`prdc_counts` (recall NaN without generated radii)."""
    gc = counts["gen_count"]
    return {"precision": float(np.mean(gc > 0)),
            "recall": float(np.mean(counts["real_recalled"])) if has_recall else float("nan"),
            "density": float(np.mean(gc) / k),
            "coverage": float(np.mean(counts["real_covered"]))}


class _PRDCMetric(CopyMetric):
    """Shared implementation of the four k-NN-ball metrics (see the module docstring).

    Parameters
    ----------
    k : int, default 5
        Neighbour rank of the ball radii.
    reference : {"train", "test"}, default "train"
        The real set: the distinct training rows, or the held-out test set.
    budget_mb : float, default 64
        Largest float64 (generated x real) block held at once, in MiB.
    max_train : int or None, default 10000
        With ``reference="train"``: most distinct training samples used as the real set (a seeded
        subsample beyond it; ``None``: all, an ``N x N`` neighbour search).
    """

    kind: ClassVar[str] = "global"
    uses_test: ClassVar[bool] = False

    def __init__(self, k: int = 5, reference: str = "train", budget_mb: float = 64.0,
                 max_train: int | None = 10_000) -> None:
        self.k = check_scalar(k, "k", min=1, fix="pass k as a neighbour rank, e.g. k=5")
        check_choice(reference, REFERENCES, "reference set")
        self.reference = reference
        self.budget_mb = check_scalar(budget_mb, "budget_mb", float, min=0, include_min=False,
                                      fix="pass a memory budget in MiB, e.g. budget_mb=64")
        self.max_train = check_scalar(max_train, "max_train", min=2, allow_none=True,
                                      fix="pass max_train=10000 (or None for the whole training set)")
        # With the test set as the real set, the baseline must split it (see CopyData.baseline).
        self.uses_test = reference == "test"  # type: ignore[misc]

    def shared(self, data: CopyData) -> dict[str, Any]:
        """The cached pass for ``(k, reference)`` on ``data``: counts, values and the real-set size."""
        k = self.k

        def compute() -> dict[str, Any]:
            subsampled = False
            if self.reference == "train":
                n_real = data.n_train_unique
                if self.max_train is not None and self.max_train < n_real:
                    n_real, subsampled = self.max_train, True
                if k > n_real - 1:
                    raise MemgeoError(f"k={k} but the training set has only {n_real} distinct samples"
                                      + (" in the subsample" if subsampled else ""), f"pass k <= {n_real - 1}")
                if subsampled:
                    real, radius = _subsample_radius(data, k, n_real)
                else:
                    real = data.train_unique
                    radius = data.train_train_nn(k)[0][data.train_first, k - 1]
            else:
                n_real = data.n_test
                if k > n_real - 1:
                    raise MemgeoError(f"k={k} but the test set has only {n_real} samples", f"pass k <= {n_real - 1}")
                real = data.test
                radius = data.test_test_nn(k)[0][:, k - 1]
            has_recall = data.n_gen > k
            gen_radius = data.gen_gen_nn(k)[0][:, k - 1] if has_recall else None
            counts = prdc_counts(real.numpy(), data.gen.numpy(), radius, gen_radius, budget_mb=self.budget_mb)
            return {"counts": counts, "values": prdc_values(counts, k, has_recall), "n_real": n_real,
                    "has_recall": has_recall, "train_subsampled": subsampled}

        return data.cached(("prdc", k, self.reference, self.budget_mb, self.max_train), compute)

    def compute(self, data: CopyData) -> MetricResult:
        sh = self.shared(data)
        counts = sh["counts"]
        which = self.name
        per_sample: np.ndarray | None = None
        if which in ("precision", "density"):
            per_sample = (counts["gen_count"] > 0).astype(np.float64) if which == "precision" \
                else counts["gen_count"] / self.k
            lo, hi = data.bootstrap_mean_ci(per_sample, f"prdc/{which}")
        elif which == "recall" and not sh["has_recall"]:
            lo = hi = float("nan")
        else:
            per_real = counts["real_recalled" if which == "recall" else "real_covered"].astype(np.float64)
            lo = hi = float("nan")
            if data.n_boot > 0:
                lo, hi = data.percentile_ci(per_real[data.bootstrap_indices(per_real.size, f"prdc/{which}")].mean(axis=1))
        extra = {**sh["values"], "k": self.k, "reference": self.reference, "n_real": sh["n_real"],
                 "max_train": self.max_train, "train_subsampled": sh["train_subsampled"]}
        return MetricResult(name=which, value=sh["values"][which], ci_low=lo, ci_high=hi, baseline=None,
                            per_sample=per_sample, flagged=None, nearest_index=data.gen_train_nn(1)[1][:, 0].copy(),
                            direction=self.direction, extra=extra)


def _subsample_radius(data: CopyData, k: int, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """A seeded subsample of ``size`` distinct training rows and each one's k-th nearest other row within it.

    Cached on the training set (shared with the baseline views).
    """
    key = ("prdc_subsample", k, size)
    if key not in data._train_store:
        rows = data.train_subsample(size, "prdc")
        real = data.train_unique[torch.from_numpy(rows)].contiguous()
        d, i = nearest_neighbors(real, real, k=k + 1, chunk_size=data.chunk_size, backend=data.backend)
        d, _ = _drop_self(d.cpu().numpy(), i.cpu().numpy(), k)
        data._train_store[key] = (real, d[:, k - 1].copy())
    return data._train_store[key]


@COPY_METRICS.register
class PrecisionMetric(_PRDCMetric):
    """Improved precision (Kynkaanniemi et al. 2019): share of generated samples inside the real k-NN balls.

    Options ``k`` (default 5), ``reference`` ("train" or "test"), ``budget_mb`` and ``max_train`` as
    :class:`_PRDCMetric`.
    """

    name: ClassVar[str] = "precision"
    direction: ClassVar[str] = ("higher = more generated samples inside the real data's support (fidelity); "
                                "not a copy detector: copies of training samples score about 1")


@COPY_METRICS.register
class RecallMetric(_PRDCMetric):
    """Improved recall (Kynkaanniemi et al. 2019): share of real samples inside the generated k-NN balls.

    Options ``k`` (default 5), ``reference`` ("train" or "test"), ``budget_mb`` and ``max_train`` as
    :class:`_PRDCMetric`.
    """

    name: ClassVar[str] = "recall"
    direction: ClassVar[str] = ("higher = more of the real data reached by generated samples (diversity); "
                                "not a copy detector")


@COPY_METRICS.register
class DensityMetric(_PRDCMetric):
    """Density (Naeem et al. 2020): real k-NN balls holding each generated sample, over k (about 1 ideal).

    Options ``k`` (default 5), ``reference`` ("train" or "test"), ``budget_mb`` and ``max_train`` as
    :class:`_PRDCMetric`.
    """

    name: ClassVar[str] = "density"
    direction: ClassVar[str] = ("about 1 = generated samples as dense around real ones as real data; higher = "
                                "crowding near real samples; not a copy detector")


@COPY_METRICS.register
class CoverageMetric(_PRDCMetric):
    """Coverage (Naeem et al. 2020): share of real k-NN balls holding at least one generated sample.

    Options ``k`` (default 5), ``reference`` ("train" or "test"), ``budget_mb`` and ``max_train`` as
    :class:`_PRDCMetric`.
    """

    name: ClassVar[str] = "coverage"
    direction: ClassVar[str] = ("higher = more of the real data covered (diversity); not a copy detector: copies "
                                "of the training set cover it")
