"""Fitted distributions of R independent runs at once (the state of one generation).

Every class holds parameters with a leading run axis R and can draw ``n`` points per run,
shape (R, n, d), give its mean and covariance (R, d) / (R, d, d) and, where a density exists,
evaluate log p at points (R, m, d) -> (R, m). Nothing here loops over runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

__all__ = ["CategoricalParams", "GaussianParams", "MixtureParams", "PointsParams", "psd_sqrt", "pick_index"]

_LOG_2PI = float(np.log(2.0 * np.pi))


def psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of PSD matrices (..., d, d); eigenvalues below 0 (round-off) become 0.

    Used instead of a Cholesky factor because collapsed covariances are singular to working precision.
    """
    if cov.shape[-1] == 1:
        return np.sqrt(np.maximum(cov, 0.0))
    evals, evecs = np.linalg.eigh(cov)
    return (evecs * np.sqrt(np.maximum(evals, 0.0))[..., None, :]) @ np.swapaxes(evecs, -1, -2)


def pick_index(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices (R, n) drawn per run from the categorical distribution ``weights`` (R, K), vectorized."""
    cum = np.cumsum(weights, axis=-1)
    cum /= cum[:, -1:]
    u = rng.random((weights.shape[0], n))
    if weights.shape[1] <= 64:  # small K: one vectorized comparison, memory R * n * K
        idx = (u[:, :, None] >= cum[:, None, :]).sum(-1)
    else:  # large K (kernel density points): binary search, one call per run
        idx = np.stack([np.searchsorted(cum[r], u[r], side="right") for r in range(weights.shape[0])])
    return np.minimum(idx, weights.shape[1] - 1)


def _logdet(cov: np.ndarray) -> np.ndarray:
    if cov.shape[-1] == 1:
        with np.errstate(divide="ignore"):
            return np.log(cov[..., 0, 0])
    sign, logdet = np.linalg.slogdet(cov)
    return np.where(sign > 0, logdet, -np.inf)


@dataclass
class GaussianParams:
    """N(mean, cov) per run: mean (R, d), cov (R, d, d)."""

    mean: np.ndarray
    cov: np.ndarray

    @property
    def runs(self) -> int:
        return self.mean.shape[0]

    @property
    def dim(self) -> int:
        return self.mean.shape[1]

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(R, n, d) samples."""
        z = rng.standard_normal((self.runs, n, self.dim))
        return self.mean[:, None, :] + z @ np.swapaxes(psd_sqrt(self.cov), -1, -2)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean, self.cov

    def logdet(self) -> np.ndarray:
        """(R,) log det cov (-inf when singular)."""
        return _logdet(self.cov)

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        """log N(x; mean, cov) for x (R, m, d) -> (R, m)."""
        diff = x - self.mean[:, None, :]
        sol = np.linalg.solve(self.cov[:, None], diff[..., None])[..., 0]
        maha = np.einsum("rmd,rmd->rm", diff, sol)
        return -0.5 * (maha + self.logdet()[:, None] + self.dim * _LOG_2PI)

    def broadcast(self, runs: int) -> GaussianParams:
        return GaussianParams(np.broadcast_to(self.mean, (runs, self.dim)).copy(),
                              np.broadcast_to(self.cov, (runs, self.dim, self.dim)).copy())


@dataclass
class MixtureParams:
    """Gaussian mixture per run: weights (R, K), means (R, K, d), covs (R, K, d, d)."""

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray

    @property
    def runs(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[2]

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        comp = pick_index(self.weights, n, rng)  # (R, n)
        mu = np.take_along_axis(self.means, comp[..., None], axis=1)  # (R, n, d)
        root = psd_sqrt(self.covs)  # (R, K, d, d)
        z = rng.standard_normal((self.runs, n, self.dim))
        r_idx = np.arange(self.runs)[:, None]
        return mu + np.einsum("rnij,rnj->rni", root[r_idx, comp], z)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        w = self.weights[..., None]
        mean = (w * self.means).sum(1)
        second = (self.weights[..., None, None] * (self.covs + self.means[..., :, None] * self.means[..., None, :])).sum(1)
        return mean, second - mean[:, :, None] * mean[:, None, :]

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        comps = []
        for k in range(self.means.shape[1]):
            g = GaussianParams(self.means[:, k], self.covs[:, k])
            with np.errstate(divide="ignore"):
                comps.append(g.logpdf(x) + np.log(self.weights[:, k : k + 1]))
        return logsumexp(np.stack(comps, axis=-1), axis=-1)

    def broadcast(self, runs: int) -> MixtureParams:
        k, d = self.means.shape[1:]
        return MixtureParams(np.broadcast_to(self.weights, (runs, k)).copy(),
                             np.broadcast_to(self.means, (runs, k, d)).copy(),
                             np.broadcast_to(self.covs, (runs, k, d, d)).copy())


@dataclass
class PointsParams:
    """Kernel density (bandwidth > 0) or empirical distribution (bandwidth 0) per run.

    points (R, N, d), weights (R, N) summing to 1 per run, bandwidth (R,) (isotropic kernel std).
    """

    points: np.ndarray
    weights: np.ndarray
    bandwidth: np.ndarray

    @property
    def runs(self) -> int:
        return self.points.shape[0]

    @property
    def dim(self) -> int:
        return self.points.shape[2]

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        n_pts = self.points.shape[1]
        uniform = np.allclose(self.weights, 1.0 / n_pts)
        idx = rng.integers(0, n_pts, (self.runs, n)) if uniform else pick_index(self.weights, n, rng)
        x = np.take_along_axis(self.points, idx[..., None], axis=1)
        if np.any(self.bandwidth > 0):
            x = x + self.bandwidth[:, None, None] * rng.standard_normal(x.shape)
        return x

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        w = self.weights[..., None]
        mean = (w * self.points).sum(1)
        diff = self.points - mean[:, None, :]
        cov = np.einsum("rn,rni,rnj->rij", self.weights, diff, diff)
        return mean, cov + (self.bandwidth**2)[:, None, None] * np.eye(self.dim)

    def logpdf(self, x: np.ndarray) -> np.ndarray | None:
        """log density (R, m); ``None`` for the empirical distribution (no density)."""
        if np.any(self.bandwidth <= 0):
            return None
        h2 = (self.bandwidth**2)[:, None, None]
        sq = ((x[:, :, None, :] - self.points[:, None, :, :]) ** 2).sum(-1)  # (R, m, N)
        with np.errstate(divide="ignore"):
            logw = np.log(self.weights)[:, None, :]
        return logsumexp(logw - 0.5 * sq / h2, axis=-1) - 0.5 * self.dim * (_LOG_2PI + np.log(h2[:, :, 0]))


@dataclass
class CategoricalParams:
    """Probabilities over K categories per run: probs (R, K)."""

    probs: np.ndarray

    @property
    def runs(self) -> int:
        return self.probs.shape[0]

    def broadcast(self, runs: int) -> CategoricalParams:
        return CategoricalParams(np.broadcast_to(self.probs, (runs, self.probs.shape[-1])).copy())
