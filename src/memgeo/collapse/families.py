"""Model families that are refitted generation after generation, vectorized over R runs.

A family knows the true distribution (generation 0), draws a *batch* of n samples per run from a
fitted distribution, merges batches (the pool of the accumulate loops), subsamples a pool, and fits
a new distribution to a list of batches, optionally with a share of the total weight per batch
(the fixed-real-share and fresh-data loops). Families and their batches:

* :class:`GaussianFamily` (1-D or d-D): in ``"stats"`` mode a batch is its sufficient statistics,
  drawn exactly in distribution (sample mean ~ N(mu, Sigma / n), scatter ~ Wishart(n - 1, Sigma) by
  Bartlett's construction), so a generation costs O(R d^3) whatever n is; ``"data"`` mode draws the
  points (needed to subsample a pool). Estimators of the covariance: ``mle`` (scatter / n),
  ``unbiased`` (scatter / (n - 1)) and ``biased`` (unbiased times 1 - c n^-beta, a relative bias of
  -c n^-beta by design). With shares, n is Kish's effective size 1 / sum_i w_i^2.
* :class:`MixtureFamily`: Gaussian mixture refitted by EM (scikit-learn; one fit per run).
* :class:`KernelDensityFamily`: Gaussian kernel density on the training points with a fixed
  bandwidth, or one scaled with the data's spread (Scott's factor times the fitted standard
  deviation -- scikit-learn's ``bandwidth="scott"`` omits the data scale, so it is not used);
  bandwidth 0 is the empirical distribution (:class:`EmpiricalFamily`, resampling).
* :class:`CategoricalFamily`: K categories refitted by frequencies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memgeo.collapse.params import CategoricalParams, GaussianParams, MixtureParams, PointsParams, psd_sqrt
from memgeo.errors import MemgeoError, Registry, check_choice

__all__ = ["ESTIMATORS", "FAMILIES", "CategoricalFamily", "EmpiricalFamily", "Family", "GaussStats",
           "GaussianFamily", "KernelDensityFamily", "MixtureFamily", "default_mixture", "make_family"]

ESTIMATORS = ("mle", "unbiased", "biased")


def _shares(batches: list, shares: list[float] | None, counts: list[float]) -> np.ndarray:
    """Weight of each batch in the fit, summing to 1 (None: proportional to its size)."""
    if shares is None:
        a = np.asarray(counts, dtype=np.float64)
    else:
        a = np.asarray(shares, dtype=np.float64)
        if a.shape != (len(batches),) or np.any(a < 0) or a.sum() <= 0:
            raise MemgeoError(f"shares {list(a)} do not fit {len(batches)} batches", "pass one share >= 0 per batch")
    return a / a.sum()


def default_mixture(dim: int = 1, components: int = 3, spread: float = 2.0, std: float = 0.5) -> MixtureParams:
    """The true distribution of the data families: ``components`` equal Gaussians of std ``std``,
    evenly spaced on [-spread, spread] (1-D) or on a circle of radius ``spread`` (first two axes)."""
    if dim < 1 or components < 1:
        raise MemgeoError(f"mixture needs dim >= 1 and components >= 1, got {dim}, {components}", "fix them")
    means = np.zeros((components, dim))
    if dim == 1:
        means[:, 0] = np.linspace(-spread, spread, components) if components > 1 else 0.0
    else:
        ang = 2 * np.pi * np.arange(components) / components
        means[:, 0], means[:, 1] = spread * np.cos(ang), spread * np.sin(ang)
    covs = np.broadcast_to(std**2 * np.eye(dim), (components, dim, dim)).copy()
    return MixtureParams(np.full((1, components), 1.0 / components), means[None], covs[None])


class Family:
    """Interface of a refittable family (see the module docstring). ``min_samples``: smallest n_t."""

    name = "family"
    supports_shares = True
    supports_subsample = True
    min_samples = 2

    def truth(self, runs: int):  # pragma: no cover - interface
        raise NotImplementedError

    def draw(self, params, n: int, rng: np.random.Generator):
        return params.draw(n, rng)

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b], axis=1)

    def subsample(self, batch: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """n points per run drawn without replacement (the whole pool when it holds at most n)."""
        size = batch.shape[1]
        if n >= size:
            return batch
        idx = np.argpartition(rng.random(batch.shape[:2]), n - 1, axis=1)[:, :n]  # n smallest keys: O(N)
        return np.take_along_axis(batch, idx[..., None], axis=1)

    def fit(self, batches: list, shares: list[float] | None = None):  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class GaussStats:
    """Sufficient statistics of a Gaussian batch: count n, mean (R, d), scatter sum (x - m)(x - m)^T (R, d, d)."""

    count: float
    mean: np.ndarray
    scatter: np.ndarray


def _wishart_identity(df: int, runs: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(R, d, d) draws of Wishart_d(df, I) by Bartlett: A lower triangular, A_ii^2 ~ chi2(df - i), A_ij ~ N(0, 1)."""
    if dim == 1:
        return rng.chisquare(df, size=(runs, 1, 1))
    a = np.zeros((runs, dim, dim))
    rows, cols = np.tril_indices(dim, -1)
    a[:, rows, cols] = rng.standard_normal((runs, rows.size))
    for i in range(dim):
        a[:, i, i] = np.sqrt(rng.chisquare(df - i, size=runs))
    return a @ np.swapaxes(a, -1, -2)


class GaussianFamily(Family):
    """Gaussian N(mu, Sigma) in ``dim`` dimensions refitted by sample mean and an estimated covariance.

    Parameters
    ----------
    dim : int
    estimator : {"mle", "unbiased", "biased"}
    bias_c, bias_beta : float
        Relative bias -c n^-beta of the ``biased`` estimator (needs c n^-beta < 1 for every n used).
    mean_only : bool
        Refit only the mean; the covariance stays Sigma_0 (the model of the pi^2 / 6 result).
    mode : {"stats", "data"}
        Draw sufficient statistics exactly (fast, any n) or the points themselves.
    mean0, cov0 : arrays (d,), (d, d), optional
        The true distribution (default N(0, I)).
    """

    name = "gaussian"

    def __init__(self, dim: int = 1, estimator: str = "mle", bias_c: float = 1.0, bias_beta: float = 0.5,
                 mean_only: bool = False, mode: str = "stats", mean0: np.ndarray | None = None,
                 cov0: np.ndarray | None = None) -> None:
        check_choice(estimator, ESTIMATORS, "estimator")
        check_choice(mode, ("stats", "data"), "Gaussian sampling mode")
        if int(dim) < 1:
            raise MemgeoError(f"dim={dim}", "use dim >= 1")
        if estimator == "biased" and not (bias_c > 0 and bias_beta > 0):
            raise MemgeoError(f"biased estimator needs c > 0 and beta > 0, got c={bias_c}, beta={bias_beta}",
                              "e.g. --bias-c 1 --bias-beta 0.5")
        self.dim, self.estimator, self.bias_c, self.bias_beta = int(dim), estimator, float(bias_c), float(bias_beta)
        self.mean_only, self.mode = bool(mean_only), mode
        self.mean0 = np.zeros(self.dim) if mean0 is None else np.asarray(mean0, dtype=np.float64).reshape(self.dim)
        self.cov0 = np.eye(self.dim) if cov0 is None else np.asarray(cov0, dtype=np.float64).reshape(self.dim, self.dim)
        if np.any(np.linalg.eigvalsh(self.cov0) <= 0):
            raise MemgeoError("cov0 is not positive definite", "pass a positive definite true covariance")
        self.min_samples = self.dim + 1  # a d-D covariance estimate needs d + 1 points
        self.supports_subsample = mode == "data"

    def truth(self, runs: int) -> GaussianParams:
        return GaussianParams(self.mean0[None], self.cov0[None]).broadcast(runs)

    def check_sizes(self, sizes: np.ndarray) -> None:
        """The biased estimator must keep its factor 1 - c n^-beta positive for every size used."""
        if self.estimator == "biased":
            worst = self.bias_c * float(np.min(sizes)) ** (-self.bias_beta)
            if worst >= 1:
                raise MemgeoError(f"relative bias c n^-beta = {worst:.3g} >= 1 at n = {int(np.min(sizes))}",
                                  "use larger n or a smaller --bias-c")

    def draw(self, params: GaussianParams, n: int, rng: np.random.Generator):
        if self.mode == "data":
            return params.draw(n, rng)
        if n <= self.dim:
            raise MemgeoError(f"n={n} samples cannot estimate a {self.dim}-D covariance", f"use n >= {self.dim + 1}")
        root = psd_sqrt(params.cov)
        z = rng.standard_normal((params.runs, self.dim))
        if self.dim == 1:
            mean = params.mean + root[:, :, 0] * z / np.sqrt(n)
            scatter = params.cov * _wishart_identity(n - 1, params.runs, 1, rng)
        else:
            mean = params.mean + np.einsum("rij,rj->ri", root, z) / np.sqrt(n)
            scatter = root @ _wishart_identity(n - 1, params.runs, self.dim, rng) @ root
        return GaussStats(float(n), mean, scatter)

    @staticmethod
    def stats_of(batch) -> GaussStats:
        if isinstance(batch, GaussStats):
            return batch
        mean = batch.mean(1)
        diff = batch - mean[:, None, :]
        return GaussStats(float(batch.shape[1]), mean, np.einsum("rni,rnj->rij", diff, diff))

    def merge(self, a, b):
        if self.mode == "data":
            return super().merge(a, b)
        a, b = self.stats_of(a), self.stats_of(b)
        n = a.count + b.count
        mean = (a.count * a.mean + b.count * b.mean) / n
        da, db = a.mean - mean, b.mean - mean
        between = a.count * da[:, :, None] * da[:, None, :] + b.count * db[:, :, None] * db[:, None, :]
        return GaussStats(n, mean, a.scatter + b.scatter + between)

    def fit(self, batches: list, shares: list[float] | None = None) -> GaussianParams:
        stats = [self.stats_of(b) for b in batches]
        a = _shares(batches, shares, [s.count for s in stats])
        mean = sum(w * s.mean for w, s in zip(a, stats))
        runs = mean.shape[0]
        if self.mean_only:
            return GaussianParams(mean, np.broadcast_to(self.cov0, (runs, self.dim, self.dim)).copy())
        # within-batch plus between-batch parts: no cancellation when the variance has collapsed
        cov = sum(w * (s.scatter / s.count + (s.mean - mean)[:, :, None] * (s.mean - mean)[:, None, :])
                  for w, s in zip(a, stats))
        n_eff = 1.0 / sum(w * w / s.count for w, s in zip(a, stats))
        if self.estimator != "mle":
            cov = cov * (n_eff / (n_eff - 1.0))
        if self.estimator == "biased":
            cov = cov * (1.0 - self.bias_c * n_eff ** (-self.bias_beta))
        return GaussianParams(mean, cov)


class MixtureFamily(Family):
    """Gaussian mixture with ``components`` full-covariance components, refitted by EM per run."""

    name = "mixture"
    supports_shares = False

    def __init__(self, dim: int = 1, components: int = 3, truth: MixtureParams | None = None, seed: int = 0,
                 max_iter: int = 100) -> None:
        self.dim, self.components, self.seed, self.max_iter = int(dim), int(components), int(seed), int(max_iter)
        self._truth = truth if truth is not None else default_mixture(self.dim, self.components)
        self.min_samples = self.components * (self.dim + 1)

    def truth(self, runs: int) -> MixtureParams:
        return self._truth.broadcast(runs)

    def fit(self, batches: list, shares: list[float] | None = None) -> MixtureParams:
        from sklearn.mixture import GaussianMixture  # imported here: sklearn is slow to import

        if shares is not None:
            raise MemgeoError("the mixture family cannot weight batches (EM here has no sample weights)",
                              "use loop replace, accumulate or accumulate-subsample")
        x = np.concatenate(batches, axis=1) if len(batches) > 1 else batches[0]
        runs, k, d = x.shape[0], self.components, self.dim
        w, mu, cov = np.empty((runs, k)), np.empty((runs, k, d)), np.empty((runs, k, d, d))
        for r in range(runs):  # EM has no batched implementation; runs of this family are few
            gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-6, max_iter=self.max_iter,
                                 random_state=self.seed + r).fit(x[r])
            w[r], mu[r], cov[r] = gm.weights_, gm.means_, gm.covariances_
        return MixtureParams(w, mu, cov)


class KernelDensityFamily(Family):
    """Gaussian kernel density on the training points.

    Parameters
    ----------
    bandwidth : float or "scaled"
        A fixed kernel std, or ``"scaled"``: ``scale`` * sigma_hat * N^(-1/(d+4)) with sigma_hat the
        root mean per-axis weighted variance of the training points (Scott's rule in data units).
    """

    name = "kde"

    def __init__(self, dim: int = 1, bandwidth: float | str = "scaled", scale: float = 1.0,
                 truth: MixtureParams | None = None, components: int = 3) -> None:
        if not (bandwidth == "scaled" or (isinstance(bandwidth, (int, float)) and bandwidth >= 0)):
            raise MemgeoError(f"bandwidth {bandwidth!r} is neither 'scaled' nor a number >= 0", "e.g. 0.2 or scaled")
        self.dim, self.bandwidth, self.scale = int(dim), bandwidth, float(scale)
        self._truth = truth if truth is not None else default_mixture(self.dim, components)

    def truth(self, runs: int) -> MixtureParams:
        return self._truth.broadcast(runs)

    def fit(self, batches: list, shares: list[float] | None = None) -> PointsParams:
        a = _shares(batches, shares, [b.shape[1] for b in batches])
        pts = np.concatenate(batches, axis=1)
        runs = pts.shape[0]
        weights = np.concatenate([np.full((runs, b.shape[1]), w / b.shape[1]) for w, b in zip(a, batches)], axis=1)
        if self.bandwidth == "scaled":
            mean = np.einsum("rn,rnd->rd", weights, pts)
            var = np.einsum("rn,rnd->r", weights, (pts - mean[:, None, :]) ** 2) / self.dim
            n_eff = 1.0 / (weights**2).sum(1)
            h = self.scale * np.sqrt(var) * n_eff ** (-1.0 / (self.dim + 4))
        else:
            h = np.full(runs, float(self.bandwidth))
        return PointsParams(pts, weights, h)


class EmpiricalFamily(KernelDensityFamily):
    """The empirical distribution of the training points: the next generation resamples them."""

    name = "empirical"

    def __init__(self, dim: int = 1, truth: MixtureParams | None = None, components: int = 3) -> None:
        super().__init__(dim, bandwidth=0.0, truth=truth, components=components)


@dataclass
class _Counts:
    count: float
    counts: np.ndarray  # (R, K) int


class CategoricalFamily(Family):
    """K categories with probabilities refitted as (weighted) frequencies.

    Parameters
    ----------
    probs0 : array (K,), optional
        True probabilities (default uniform over ``categories``).
    """

    name = "categorical"
    min_samples = 1

    def __init__(self, categories: int = 10, probs0: np.ndarray | None = None) -> None:
        p = np.full(int(categories), 1.0 / int(categories)) if probs0 is None else np.asarray(probs0, dtype=np.float64)
        if p.ndim != 1 or p.size < 2 or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
            raise MemgeoError("probs0 must be K >= 2 probabilities summing to 1", "fix probs0 or --categories")
        self.probs0 = p

    def truth(self, runs: int) -> CategoricalParams:
        return CategoricalParams(self.probs0[None]).broadcast(runs)

    def draw(self, params: CategoricalParams, n: int, rng: np.random.Generator) -> _Counts:
        return _Counts(float(n), rng.multinomial(n, params.probs))

    def merge(self, a: _Counts, b: _Counts) -> _Counts:
        return _Counts(a.count + b.count, a.counts + b.counts)

    def subsample(self, batch: _Counts, n: int, rng: np.random.Generator) -> _Counts:
        if n >= batch.count:
            return batch
        out = np.stack([rng.multivariate_hypergeometric(c, n) for c in batch.counts])
        return _Counts(float(n), out)

    def fit(self, batches: list, shares: list[float] | None = None) -> CategoricalParams:
        a = _shares(batches, shares, [b.count for b in batches])
        return CategoricalParams(sum(w * b.counts / b.count for w, b in zip(a, batches)))


#: Model families by name.
FAMILIES: Registry[type[Family]] = Registry("family", {c.name: c for c in (
    GaussianFamily, MixtureFamily, KernelDensityFamily, EmpiricalFamily, CategoricalFamily)})


def make_family(name: str, **kwargs) -> Family:
    """Build a family by registry name with its keyword arguments."""
    return FAMILIES.build(name, **kwargs)
