"""Per-generation metrics of R fitted distributions against the original, each an array (R,).

* Moments (every continuous family): ``log_var`` = log det Sigma_t / d (log sigma^2 in 1-D),
  ``trace_ratio`` = tr Sigma_t / tr Sigma_0, ``logdet_ratio``, ``mean_sq_dist`` = ||mu_t - mu_0||^2,
  ``mu_dist2_plus_trace`` = (||mu_t - mu_0||^2 + tr Sigma_t) / tr Sigma_0.
* Gaussian closed forms: ``w2`` (squared 2-Wasserstein distance), ``kl`` = KL(p_0 || p_t),
  ``nll_real`` = E_{x ~ p_0}[-log p_t(x)] = KL + H(p_0), ``tail_mass`` = P_t(|x_i - mu_0i| > 3 sigma_0i)
  averaged over coordinates.
* Sample-based (other continuous families), on ``n_eval`` model samples and held-out real samples:
  ``energy`` distance, ``nll_real`` (where a density exists), ``tail_mass``, kNN ``precision`` /
  ``recall`` (Kynkaenniemi et al. 2019).
* Categorical: ``entropy``, ``gini_simpson`` = 1 - sum p^2, ``surviving`` categories, ``tv`` distance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import ndtr

from memgeo.collapse.params import CategoricalParams, GaussianParams, psd_sqrt

__all__ = ["categorical_metrics", "energy_distance", "gaussian_kl", "gaussian_metrics", "gaussian_w2",
           "knn_precision_recall", "make_metrics", "moment_metrics", "sample_metrics"]

_LOG_2PI_E = float(np.log(2 * np.pi * np.e))


def moment_metrics(mean: np.ndarray, cov: np.ndarray, mean0: np.ndarray, cov0: np.ndarray) -> dict[str, np.ndarray]:
    """Moment metrics of (R, d) means and (R, d, d) covariances against the original's."""
    d = mean.shape[-1]
    if d == 1:
        with np.errstate(divide="ignore"):
            logdet, logdet0 = np.log(cov[:, 0, 0]), np.log(cov0[:, 0, 0])
    else:
        sign, logdet = np.linalg.slogdet(cov)
        logdet = np.where(sign > 0, logdet, -np.inf)
        logdet0 = np.linalg.slogdet(cov0)[1]
    tr, tr0 = np.trace(cov, axis1=1, axis2=2), np.trace(cov0, axis1=1, axis2=2)
    dist2 = ((mean - mean0) ** 2).sum(-1)
    return {"log_var": logdet / d, "trace_ratio": tr / tr0, "logdet_ratio": logdet - logdet0,
            "mean_sq_dist": dist2, "mu_dist2_plus_trace": (dist2 + tr) / tr0}


def gaussian_w2(mean: np.ndarray, cov: np.ndarray, mean0: np.ndarray, cov0: np.ndarray) -> np.ndarray:
    """Squared W2 between N(mean, cov) and N(mean0, cov0), batched: ||dm||^2 + tr(C + C0 - 2 (C0^1/2 C C0^1/2)^1/2)."""
    dist2 = ((mean - mean0) ** 2).sum(-1)
    if mean.shape[-1] == 1:
        return dist2 + (np.sqrt(np.maximum(cov[:, 0, 0], 0)) - np.sqrt(cov0[:, 0, 0])) ** 2
    r0 = psd_sqrt(cov0)
    cross = psd_sqrt(r0 @ cov @ r0)
    return dist2 + np.trace(cov + cov0 - 2 * cross, axis1=1, axis2=2)


def gaussian_kl(mean: np.ndarray, cov: np.ndarray, mean0: np.ndarray, cov0: np.ndarray) -> np.ndarray:
    """KL(N(mean0, cov0) || N(mean, cov)), batched; inf where cov is singular."""
    d = mean.shape[-1]
    diff = (mean - mean0)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        if d == 1:
            c, c0 = cov[:, 0, 0], cov0[:, 0, 0]
            out = 0.5 * (c0 / c + diff[:, 0, 0] ** 2 / c - 1 + np.log(c / c0))
        else:
            sign, logdet = np.linalg.slogdet(cov)
            try:
                tr = np.trace(np.linalg.solve(cov, cov0), axis1=1, axis2=2)
                maha = (diff * np.linalg.solve(cov, diff)).sum((1, 2))
            except np.linalg.LinAlgError:
                return np.full(mean.shape[0], np.inf)
            out = 0.5 * (tr + maha - d + logdet - np.linalg.slogdet(cov0)[1])
            out = np.where(sign > 0, out, np.inf)
    return np.where(np.isfinite(out), out, np.inf)


def _tail_mass_gaussian(mean, cov, mean0, cov0) -> np.ndarray:
    s0 = np.sqrt(np.diagonal(cov0, axis1=1, axis2=2))
    s = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 1e-300))
    lo, hi = (mean0 - 3 * s0 - mean) / s, (mean0 + 3 * s0 - mean) / s
    return (ndtr(lo) + 1 - ndtr(hi)).mean(-1)


def gaussian_metrics(params: GaussianParams, truth: GaussianParams) -> dict[str, np.ndarray]:
    """All closed-form metrics of Gaussian fits (R runs) against the true Gaussian."""
    m, c, m0, c0 = params.mean, params.cov, truth.mean, truth.cov
    out = moment_metrics(m, c, m0, c0)
    kl = gaussian_kl(m, c, m0, c0)
    entropy0 = 0.5 * (m.shape[-1] * _LOG_2PI_E + np.linalg.slogdet(c0)[1])  # H(p_0)
    out.update(w2=gaussian_w2(m, c, m0, c0), kl=kl, nll_real=kl + entropy0, tail_mass=_tail_mass_gaussian(m, c, m0, c0))
    return out


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(R, m, d), (R, k, d) -> (R, m, k) squared distances."""
    d2 = (a**2).sum(-1)[:, :, None] + (b**2).sum(-1)[:, None, :] - 2 * a @ np.swapaxes(b, 1, 2)
    return np.maximum(d2, 0.0)


def energy_distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| per run (U-statistics within), (R, m, d) -> (R,)."""
    def within(a):
        m = a.shape[1]
        return np.sqrt(_sq_dists(a, a)).sum((1, 2)) / (m * (m - 1))
    return 2 * np.sqrt(_sq_dists(x, y)).mean((1, 2)) - within(x) - within(y)


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """kNN precision (fake inside the real k-NN balls) and recall (real inside the fake balls), (R,) each."""
    def radii(a):
        d2 = _sq_dists(a, a)
        return np.sqrt(np.sort(d2, axis=-1)[:, :, k])  # index 0 is the point itself

    cross = np.sqrt(_sq_dists(fake, real))  # (R, m_fake, m_real)
    precision = (cross <= radii(real)[:, None, :]).any(-1).mean(-1)
    recall = (np.swapaxes(cross, 1, 2) <= radii(fake)[:, None, :]).any(-1).mean(-1)
    return precision, recall


def sample_metrics(params, truth, rng: np.random.Generator, heldout: np.ndarray, n_eval: int = 256,
                   k: int = 5) -> dict[str, np.ndarray]:
    """Moment and sample-based metrics of any continuous fitted distribution (R runs).

    ``heldout`` (R, m, d): real samples not used in any fit (one set per run).
    """
    m, c = params.moments()
    m0, c0 = truth.moments()
    out = moment_metrics(m, c, m0, c0)
    fake = params.draw(n_eval, rng)
    out["energy"] = energy_distance(fake, heldout)
    nll = params.logpdf(heldout)
    if nll is not None:
        out["nll_real"] = -nll.mean(-1)
    s0 = np.sqrt(np.diagonal(c0, axis1=1, axis2=2))[:, None, :]
    out["tail_mass"] = (np.abs(fake - m0[:, None, :]) > 3 * s0).mean((1, 2))
    out["precision"], out["recall"] = knn_precision_recall(heldout, fake, k)
    return out


def categorical_metrics(params: CategoricalParams, truth: CategoricalParams) -> dict[str, np.ndarray]:
    """Entropy (nats), Gini-Simpson, surviving categories and total variation to the original."""
    p = params.probs
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(-1)
    return {"entropy": ent, "gini_simpson": 1 - (p**2).sum(-1), "surviving": (p > 0).sum(-1).astype(float),
            "tv": 0.5 * np.abs(p - truth.probs).sum(-1)}


def make_metrics(truth, rng: np.random.Generator | None = None, heldout: np.ndarray | None = None,
                 n_eval: int = 256) -> Callable[[object], dict[str, np.ndarray]]:
    """The metric function of a loop: closed forms for Gaussian and categorical fits, samples otherwise."""
    def metrics(params) -> dict[str, np.ndarray]:
        if isinstance(params, CategoricalParams):
            return categorical_metrics(params, truth)
        if isinstance(params, GaussianParams) and isinstance(truth, GaussianParams):
            return gaussian_metrics(params, truth)
        return sample_metrics(params, truth, rng, heldout, n_eval)
    return metrics
