"""Closed forms for recursive refitting, exact at finite t (array index = generation, 0..T).

Notation: generation t is fitted on n_t samples; ``sizes`` is the array (n_1, ..., n_T).

* Replace loop, Gaussian in d dimensions, covariance S / n (MLE), S / (n - 1) (unbiased) or the
  unbiased one times (1 - c n^-beta) (biased), S ~ Wishart_d(n - 1, Sigma_{t-1}) independent of the
  past given Sigma_{t-1}. Then log det Sigma_t - log det Sigma_{t-1} are independent steps with

      mean  sum_{i=1..d} psi((n_t - i) / 2) + d log 2 - d log m_t + d log(1 - c n_t^-beta) [biased only]
      var   sum_{i=1..d} psi'((n_t - i) / 2)

  where m_t = n_t (MLE) or n_t - 1 (unbiased, biased). In 1-D: E log sigma_t^2 is a random walk
  with step psi((n - 1) / 2) + log(2 / n) for the MLE, variance psi'((n - 1) / 2). We report
  ``log_var`` = log det Sigma / d, so these sums are divided by d and d^2.
* E Sigma_t = f_t E Sigma_{t-1} with f = (n - 1) / n (MLE), 1 (unbiased: a martingale),
  1 - c n^-beta (biased); E sigma_t^2 = prod f. For the MLE, ||mu_t - mu_0||^2 + tr Sigma_t is a
  martingale: its mean stays tr Sigma_0.
* Accumulate, mean-only model: mu_t - mu_0 = mu_{t-1} - mu_0 + (n_t / N_t) eps_t with N_t = n_1 + ... + n_t
  and eps_t ~ N(0, Sigma / n_t), so E ||mu_T - mu_0||^2 = tr Sigma sum_t n_t / N_t^2 -> tr Sigma pi^2 / (6 n)
  for constant n.
* Fresh real data with weight w (mean-only): V_t = w^2 s / f + (1 - w)^2 (V_{t-1} + s / m_t) with f fresh
  real and m_t synthetic samples, s = tr Sigma, V_1 = s / n_1. The stationary V(w) = s (w^2 / f +
  (1 - w)^2 / m) / (w (2 - w)) is smallest where w^2 + k w - k = 0, k = f / m (k = 1: the golden
  ratio 0.618...).
* Categorical, replace: E[1 - sum p_t^2] = (1 - 1 / n_t) E[1 - sum p_{t-1}^2] (Gini-Simpson).
* Whether the variance collapses: sum_t 1 / n_t diverging (plus sum c n_t^-beta for the biased
  estimator) sends log sigma_t^2 to -infinity almost surely; constant and linear schedules do,
  n t^p with p > 1 does not (for the biased estimator it also needs p beta > 1).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import polygamma, psi

from memgeo.errors import MemgeoError

__all__ = ["accumulate_mean_sq_dist", "collapse_predicted", "expected_log_var", "expected_trace_ratio",
           "fresh_mean_sq_dist", "fresh_stationary_mse", "gini_simpson_replace", "log_var_step",
           "optimal_fresh_weight"]


def _sizes(sizes) -> np.ndarray:
    n = np.asarray(sizes, dtype=np.float64).reshape(-1)
    if n.size == 0 or np.any(n < 1):
        raise MemgeoError("sample sizes must be a non-empty list of numbers >= 1", "pass n_1..n_T")
    return n


def log_var_step(n, estimator: str = "mle", dim: int = 1, bias_c: float = 1.0,
                 bias_beta: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of one replace step of ``log det Sigma / d`` at sample size(s) ``n``."""
    n = _sizes(n)
    if np.any(n <= dim):
        raise MemgeoError(f"log-variance step needs n > d = {dim}", "use larger sample sizes")
    i = np.arange(1, dim + 1, dtype=np.float64)[:, None]
    half = (n[None, :] - i) / 2.0
    mean = psi(half).sum(0) + dim * math.log(2.0)
    var = polygamma(1, half).sum(0)
    if estimator == "mle":
        mean = mean - dim * np.log(n)
    elif estimator in ("unbiased", "biased"):
        mean = mean - dim * np.log(n - 1.0)
        if estimator == "biased":
            mean = mean + dim * np.log1p(-bias_c * n ** (-bias_beta))
    else:
        raise MemgeoError(f"unknown estimator {estimator!r}", "choose mle, unbiased or biased")
    return mean / dim, var / dim**2


def expected_log_var(sizes, estimator: str = "mle", dim: int = 1, log_var0: float = 0.0, bias_c: float = 1.0,
                     bias_beta: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """E and sd of log det Sigma_t / d for t = 0..T under the replace loop, shapes (T+1,)."""
    mean, var = log_var_step(sizes, estimator, dim, bias_c, bias_beta)
    m = np.concatenate([[log_var0], log_var0 + np.cumsum(mean)])
    v = np.concatenate([[0.0], np.cumsum(var)])
    return m, np.sqrt(v)


def expected_trace_ratio(sizes, estimator: str = "mle", bias_c: float = 1.0, bias_beta: float = 0.5) -> np.ndarray:
    """E tr Sigma_t / tr Sigma_0 for t = 0..T under the replace loop, shape (T+1,)."""
    n = _sizes(sizes)
    if estimator == "mle":
        f = (n - 1.0) / n
    elif estimator == "unbiased":
        f = np.ones_like(n)
    elif estimator == "biased":
        f = 1.0 - bias_c * n ** (-bias_beta)
    else:
        raise MemgeoError(f"unknown estimator {estimator!r}", "choose mle, unbiased or biased")
    return np.concatenate([[1.0], np.cumprod(f)])


def accumulate_mean_sq_dist(sizes, trace0: float = 1.0) -> np.ndarray:
    """E ||mu_t - mu_0||^2 for the accumulate loop with the mean-only model, t = 0..T."""
    n = _sizes(sizes)
    total = np.cumsum(n)
    return np.concatenate([[0.0], trace0 * np.cumsum(n / total**2)])


def fresh_mean_sq_dist(sizes, weights, fresh_n: float, trace0: float = 1.0) -> np.ndarray:
    """E ||mu_t - mu_0||^2, t = 0..T, for the fresh-data loop (mean-only model).

    Generation 1 is fitted on n_1 real samples; generation t >= 2 on ``fresh_n`` fresh real samples with
    weight ``weights[t-1]`` and n_t synthetic samples from generation t - 1 with the rest.
    """
    n = _sizes(sizes)
    w = np.broadcast_to(np.asarray(weights, dtype=np.float64), n.shape)
    out = np.zeros(n.size + 1)
    out[1] = trace0 / n[0]
    for t in range(1, n.size):
        out[t + 1] = w[t] ** 2 * trace0 / fresh_n + (1 - w[t]) ** 2 * (out[t] + trace0 / n[t])
    return out


def fresh_stationary_mse(w, fresh_n: float, synth_n: float, trace0: float = 1.0) -> np.ndarray:
    """Limit of :func:`fresh_mean_sq_dist` for constant sizes, as a function of the weight w in (0, 1]."""
    w = np.asarray(w, dtype=np.float64)
    return trace0 * (w**2 / fresh_n + (1 - w) ** 2 / synth_n) / (w * (2 - w))


def optimal_fresh_weight(k) -> np.ndarray:
    """The root in (0, 1) of w^2 + k w - k = 0, k = fresh real / synthetic samples per generation."""
    k = np.asarray(k, dtype=np.float64)
    if np.any(k <= 0):
        raise MemgeoError("k = fresh / synthetic sample ratio must be > 0", "pass positive sizes")
    return (-k + np.sqrt(k * k + 4 * k)) / 2


def gini_simpson_replace(sizes, gini0: float) -> np.ndarray:
    """E Gini-Simpson index 1 - sum p_t^2 for t = 0..T under the replace loop (categorical)."""
    n = _sizes(sizes)
    return gini0 * np.concatenate([[1.0], np.cumprod(1.0 - 1.0 / n)])


def collapse_predicted(schedule_kind: str, p: float = 1.0, estimator: str = "unbiased",
                       bias_beta: float = 0.5) -> bool:
    """Does log sigma_t^2 -> -infinity (a.s.) under replace with this schedule? (constant/linear/power)."""
    exponent = {"constant": 0.0, "linear": 1.0}.get(schedule_kind, p if schedule_kind == "power" else None)
    if exponent is None:
        raise MemgeoError(f"no rule for schedule {schedule_kind!r}", "use constant, linear or power")
    diverges = exponent <= 1.0  # sum 1 / n_t
    if estimator == "biased":
        diverges = diverges or exponent * bias_beta <= 1.0  # sum c n_t^-beta
    return bool(diverges)


def theory_curves(family: str, loop: str, sizes, *, estimator: str = "mle", dim: int = 1, mean_only: bool = False,
                  weights=None, fresh_n: float | None = None, trace0: float = 1.0, log_var0: float = 0.0,
                  gini0: float | None = None, bias_c: float = 1.0,
                  bias_beta: float = 0.5) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Every closed form that applies to a run: metric name -> (mean (T+1,), sd (T+1,) or None).

    Metric names are those of :mod:`memgeo.collapse.metrics`; a metric without a closed form for this
    family/loop is absent.
    """
    n = _sizes(sizes)
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    if family == "gaussian" and not mean_only and loop == "replace":
        out["log_var"] = expected_log_var(n, estimator, dim, log_var0, bias_c, bias_beta)
        out["trace_ratio"] = (expected_trace_ratio(n, estimator, bias_c, bias_beta), None)
        if estimator == "mle":
            out["mu_dist2_plus_trace"] = (np.ones(n.size + 1), None)
    elif family == "gaussian" and mean_only:
        if loop == "replace":
            out["mean_sq_dist"] = (np.concatenate([[0.0], trace0 * np.cumsum(1.0 / n)]), None)
        elif loop == "accumulate":
            out["mean_sq_dist"] = (accumulate_mean_sq_dist(n, trace0), None)
        elif loop == "fresh" and weights is not None and fresh_n is not None:
            out["mean_sq_dist"] = (fresh_mean_sq_dist(n, weights, fresh_n, trace0), None)
        out["log_var"] = (np.full(n.size + 1, log_var0), np.zeros(n.size + 1))
    elif family == "categorical" and loop == "replace" and gini0 is not None:
        out["gini_simpson"] = (gini_simpson_replace(n, gini0), None)
    return out
