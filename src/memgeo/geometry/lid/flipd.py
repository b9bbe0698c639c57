"""Model-based LID from the Fokker-Planck view of a diffusion model (Kamkari et al., 2024).

For a clean point x, y = psi x is where the forward process puts it at time t0. The rate at which
log p_t(y) changes with log sigma is LID - D for small sigma, which the Fokker-Planck equation turns
into first-order quantities of the score:

    FLIPD(x, t0) = D + sigma^2 [ tr grad s(y, t0) + ||s(y, t0)||^2 ].

Check with a Gaussian of tangent variances lambda_i: E FLIPD = D - sum_i sigma^4/(psi^2 lambda_i + sigma^2)^2,
which is d at small t0; at an atom of the empirical score FLIPD is exactly 0.

* :class:`FLIPD`: one t0 (or ``"auto"``: the flattest point of the LID-vs-t0 curve), exact trace or
  Hutchinson / Hutch++ (reverse-mode products; tr(J^T) = tr(J)) with a confidence interval, or
  ``trace="auto"`` (exact for D <= :data:`FLIPD_EXACT_FACTOR` (1 + n_probes), Hutchinson above). The stochastic traces
  cost one forward at the B points (its output gives ||s||^2 too) plus one backward per probe, all
  probes in one ``vmap``-ed pass over the cached graph (measured within 1.5 x (1 + k) forwards,
  docs/benchmarks.md section 10). One probe is allowed; it has no interval (``ci`` is (-inf, inf));
* :class:`FPRegress`: the slope of log p_t(psi x) against log sigma over a window of scales,
  obtained by integrating the same FLIPD curve (a multi-scale average that is less sensitive to t0);
* :class:`CFDM`: FLIPD of the Gaussian-smoothed empirical measure in closed form:
  FLIPD = E_w ||psi x - psi x_i||^2 / sigma^2 with the posterior weights w over training points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from memgeo.errors import MemgeoError, check_choice, check_finite
from memgeo.geometry.jacobian import ScoreJacobianOperator, check_points, score_jacobian
from memgeo.geometry.lid.base import DataLIDEstimator, ModelLIDEstimator, register
from memgeo.geometry.trace import TRACE_CHOICES, estimate_trace
from memgeo.models.base import DiffusionModel, as_time, expand_like, model_dtype
from memgeo.models.schedule import VPSchedule


FLIPD_EXACT_FACTOR = 8
"""``trace="auto"`` takes the exact (dense ``vmap(jacrev)``) trace when D <= FLIPD_EXACT_FACTOR * (1 + n_probes).

Measured (benchmarks/kernels.py section x, docs/design.md "Dense or matrix-free"): on MLP nets the
exact trace costs 0.3-0.6 D forwards per sample and Hutchinson with k probes 0.4-1.0 (1 + k), so at
the bound the exact trace costs about 4-5x the Hutchinson one (4.2x at D = 64 with 8 probes, bound 72),
a price worth paying for removing the probe variance; above it Hutchinson is used."""


def resolve_flipd_trace(trace: str, dim: int, n_probes: int = 8) -> str:
    """``"auto"`` -> ``"exact"`` for D <= FLIPD_EXACT_FACTOR (1 + n_probes), else ``"hutchinson"``."""
    if trace != "auto":
        return trace
    return "exact" if dim <= FLIPD_EXACT_FACTOR * (1 + n_probes) else "hutchinson"


@dataclass
class LIDCurve:
    """FLIPD at every point for a grid of t0, computed once and reused for t0 choices and sweeps.

    Attributes
    ----------
    t0 : Tensor, shape (T,)
    sigma : Tensor, shape (T,)
    lid : Tensor, shape (T, B)
    ci_low, ci_high : Tensor, shape (T, B)
        Confidence interval of the trace part (equal to ``lid`` for the exact trace; -inf and inf
        with a single Hutchinson probe, which has no sample variance: see ``note``).
    n_matvecs : int
        Jacobian products used over the whole curve (0 for the dense exact trace).
    dim : int
        Ambient dimension D (0 if unknown); lets :meth:`plateau_t0` skip the LID ~ D stretch.
    """

    t0: torch.Tensor
    sigma: torch.Tensor
    lid: torch.Tensor
    ci_low: torch.Tensor
    ci_high: torch.Tensor
    n_matvecs: int = 0
    dim: int = 0
    trace: str = ""
    note: str = ""

    def at(self, t0: float) -> torch.Tensor:
        """LID at the grid point nearest to ``t0``, shape (B,)."""
        return self.lid[int(torch.argmin((self.t0 - t0).abs()))]

    def plateau_t0(self, t_min: float = 1e-3, max_fraction: float = 0.9) -> float:
        """The t0 where the batch-mean LID curve is flattest in log t0 (the plateau/knee).

        The slope |d mean LID / d log t0| is smoothed over neighbouring grid points and minimised over
        t0 >= t_min; ties go to the smaller t0 (closer to the data). Two flat stretches are not
        plateaus of the data and are skipped when other grid points remain: mean LID above
        ``max_fraction * D`` (t0 so small that a trained network does not resolve the normal
        directions, so FLIPD reads about D) and mean LID <= 0 (t0 so large that nothing is resolved).
        """
        if self.t0.numel() < 3:
            return float(self.t0[0])
        m = self.lid.mean(1).double()
        logt = self.t0.double().log()
        slope = (m[2:] - m[:-2]).abs() / (logt[2:] - logt[:-2])
        slope = torch.cat([slope[:1], slope, slope[-1:]])
        if slope.numel() >= 3:  # smooth so that one noisy grid point cannot win
            slope = torch.nn.functional.avg_pool1d(slope[None, None], 3, 1, 1, count_include_pad=False)[0, 0]
        ok = self.t0.double() >= t_min
        if self.dim > 0:
            informative = ok & (m > 0) & (m < max_fraction * self.dim)
            ok = informative if bool(informative.any()) else ok
        slope = torch.where(ok, slope, torch.full_like(slope, float("inf")))
        return float(self.t0[int(torch.argmin(slope))])


def _flipd_at(model: DiffusionModel, x: torch.Tensor, t0: float, cond: torch.Tensor | None, trace: str,
              n_probes: int, generator: torch.Generator | None, chunk_size: int) -> tuple[torch.Tensor, ...]:
    """(lid, ci_low, ci_high, n_matvecs, note) at one t0 for flattened clean points x (B, D).

    Stochastic traces: one forward at y (cached graph; its output is the score for ||s||^2) and one
    backward per probe, all probes in one call.
    """
    b, d = x.shape
    tt = as_time(t0, b, x)
    psi = expand_like(model.schedule.sqrt_alpha_bar(tt), x)
    sigma2 = float(model.schedule.sigma(torch.tensor(t0, dtype=torch.float64))) ** 2
    y = psi * x
    note = ""
    if trace == "exact":
        with torch.no_grad():
            s = model.score(y.reshape((b,) + tuple(model.data_shape)), tt, cond).reshape(b, d)
        jac = score_jacobian(model, y, tt, cond, chunk_size=chunk_size)
        tr = torch.diagonal(jac, dim1=-2, dim2=-1).sum(-1).double()
        lo = hi = tr
        used = 0
    else:
        with ScoreJacobianOperator(model, y, tt, cond, mode="vjp") as op:
            s = op.score()
            est = estimate_trace(op.rmatvec, b, d, method=trace, n_probes=n_probes, generator=generator,
                                 dtype=y.dtype, device=y.device, batched=True)
        tr, lo, hi = est.mean.double(), est.ci_low.double(), est.ci_high.double()
        used, note = est.n_matvecs, est.note
    sq = (s.double() ** 2).sum(1)
    lid = d + sigma2 * (tr + sq)
    return lid, d + sigma2 * (lo + sq), d + sigma2 * (hi + sq), used, note


@register
class FLIPD(ModelLIDEstimator):
    """FLIPD estimator of the model's LID at clean points.

    Parameters
    ----------
    t0 : float or "auto"
        Diffusion time of the evaluation; ``"auto"`` picks the plateau of the LID-vs-t0 curve over
        ``t0_grid`` (the curve is kept in ``curve_`` so further t0 choices cost nothing).
    trace : {"exact", "hutchinson", "hutch++", "auto"}
        "exact" uses the dense Jacobian (D reverse passes, batched); the stochastic methods use
        ``n_probes`` reverse-mode products per sample and give a confidence interval; "auto" is exact
        for D <= :data:`FLIPD_EXACT_FACTOR` (1 + n_probes) and Hutchinson above (the choice is in
        ``result_.trace``).
    n_probes : int
        Probes of a stochastic trace (>= 1; a single probe gives no interval, see ``result_.note``).
    seed : int
        Seed of the probe vectors.
    t0_grid : sequence of float, optional
        Grid for ``"auto"`` and :meth:`curve` (default 16 log-spaced values in [1e-3, 0.5]).
    chunk_size : int
        Samples per vectorized dense-Jacobian call.
    """

    name = "flipd"

    def __init__(self, t0: float | str = 0.05, trace: str = "exact", n_probes: int = 8, seed: int = 0,
                 t0_grid: tuple[float, ...] | None = None, chunk_size: int = 32) -> None:
        self.t0 = t0
        self.trace = trace
        self.n_probes = n_probes
        self.seed = seed
        self.t0_grid = t0_grid
        self.chunk_size = chunk_size

    def _validate(self) -> None:
        check_choice(self.trace, TRACE_CHOICES, "trace method")
        if self.t0 != "auto" and not (isinstance(self.t0, (int, float)) and 0 < float(self.t0) <= 1):
            raise MemgeoError(f"t0={self.t0!r} is neither 'auto' nor a time in (0, 1]", "pass e.g. t0=0.05")

    def _grid(self) -> torch.Tensor:
        if self.t0_grid is not None:
            return torch.tensor(sorted(self.t0_grid), dtype=torch.float64)
        return torch.logspace(-3, np.log10(0.5), 16, dtype=torch.float64)

    def curve(self, model: DiffusionModel, x: torch.Tensor, t0s: torch.Tensor | None = None,
              cond: torch.Tensor | None = None) -> LIDCurve:
        """FLIPD at every t0 of ``t0s`` (default: the estimator's grid), shape (T, B)."""
        self._validate()
        xf = check_points(model, x).to(model_dtype(model))
        t0s = self._grid() if t0s is None else torch.as_tensor(t0s, dtype=torch.float64)
        gen = torch.Generator(device=xf.device).manual_seed(self.seed)
        trace = resolve_flipd_trace(self.trace, xf.shape[1], self.n_probes)
        rows, lows, highs, used, note = [], [], [], 0, ""
        for t0 in t0s.tolist():
            lid, lo, hi, n, note = _flipd_at(model, xf, t0, cond, trace, self.n_probes, gen, self.chunk_size)
            rows.append(lid)
            lows.append(lo)
            highs.append(hi)
            used += n
        sig = model.schedule.sigma(t0s)
        return LIDCurve(t0=t0s, sigma=sig, lid=torch.stack(rows), ci_low=torch.stack(lows), ci_high=torch.stack(highs),
                        n_matvecs=used, dim=xf.shape[1], trace=trace, note=note)

    def estimate(self, model: DiffusionModel, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """LID estimates, shape (B,) float64. Also sets ``t0_`` (the t0 used) and ``result_``."""
        self._validate()
        if self.t0 == "auto":
            self.curve_ = self.curve(model, x, cond=cond)
            self.t0_ = self.curve_.plateau_t0()
            lid = self.curve_.at(self.t0_)
            self.result_ = self.curve_
            return lid
        self.t0_ = float(self.t0)
        self.result_ = self.curve(model, x, torch.tensor([self.t0_], dtype=torch.float64), cond)
        return self.result_.lid[0]


@register
class FPRegress(FLIPD):
    """Multi-scale LID: slope of log p_sigma(psi x) against log sigma over a window, plus D.

    log p is recovered up to a constant by integrating (FLIPD - D) d log sigma over the FLIPD curve
    on ``t0_grid`` restricted to [t_low, t_high]; the least-squares slope of that against log sigma
    is LID - D. Parameters as :class:`FLIPD` plus the window ``t_low``, ``t_high``.
    """

    name = "fpregress"

    def __init__(self, t_low: float = 0.005, t_high: float = 0.1, n_scales: int = 8, trace: str = "exact",
                 n_probes: int = 8, seed: int = 0, chunk_size: int = 32) -> None:
        super().__init__(t0=t_low, trace=trace, n_probes=n_probes, seed=seed, chunk_size=chunk_size)
        self.t_low = t_low
        self.t_high = t_high
        self.n_scales = n_scales

    def estimate(self, model: DiffusionModel, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if not 0 < self.t_low < self.t_high <= 1:
            raise MemgeoError(f"window ({self.t_low}, {self.t_high}) is invalid", "need 0 < t_low < t_high <= 1")
        t0s = torch.logspace(np.log10(self.t_low), np.log10(self.t_high), self.n_scales, dtype=torch.float64)
        cur = self.curve(model, x, t0s, cond)
        self.result_ = cur
        d = check_points(model, x).shape[1]
        logs = cur.sigma.double().log()
        rate = cur.lid.double() - d  # d log p / d log sigma at each scale, (T, B)
        steps = 0.5 * (rate[1:] + rate[:-1]) * (logs[1:] - logs[:-1])[:, None]
        logp = torch.cat([torch.zeros_like(rate[:1]), torch.cumsum(steps, 0)])  # (T, B), up to a constant
        lc = logs - logs.mean()
        slope = (lc[:, None] * (logp - logp.mean(0))).sum(0) / (lc * lc).sum()
        return d + slope


@register
class CFDM(DataLIDEstimator):
    """Closed-form FLIPD of the Gaussian-smoothed empirical measure of a reference set.

    ``fit(reference (N, D))`` then ``estimate(x (B, D))``: with y = psi x and posterior weights
    w_i proportional to exp(-||y - psi x_i||^2 / (2 sigma^2)),  CFDM(x) = sum_i w_i ||y - psi x_i||^2 / sigma^2.
    Exactly 0 at an isolated (possibly duplicated) training point; about d on a well-sampled
    d-dimensional patch when sigma is above the sample spacing and below the patch size.
    """

    name = "cfdm"

    def __init__(self, t0: float = 0.05, chunk_size: int = 1024) -> None:
        self.t0 = t0
        self.chunk_size = chunk_size

    def fit(self, reference: torch.Tensor, index: object | None = None) -> "CFDM":
        ref = torch.as_tensor(reference)
        if ref.ndim < 2:
            raise MemgeoError(f"reference has shape {tuple(ref.shape)}", "pass (N, D) points")
        check_finite(ref, "reference data")
        self.reference_ = ref.reshape(ref.shape[0], -1).double()
        return self

    def estimate(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "reference_"):
            raise MemgeoError("CFDM.estimate was called before fit", "call fit(reference) first")
        xf = torch.as_tensor(x).reshape(x.shape[0], -1).double()
        check_finite(xf, "query points")
        if xf.shape[1] != self.reference_.shape[1]:
            raise MemgeoError(f"queries have dimension {xf.shape[1]}, reference {self.reference_.shape[1]}",
                              "pass points of the reference's dimension")
        sch = VPSchedule()
        ab = float(sch.alpha_bar(torch.tensor(float(self.t0), dtype=torch.float64)))
        psi, s2 = ab ** 0.5, 1 - ab
        ref = psi * self.reference_
        rn = (ref * ref).sum(1)
        out = []
        for s in range(0, xf.shape[0], self.chunk_size):
            y = psi * xf[s:s + self.chunk_size]
            sq = ((y * y).sum(1, keepdim=True) - 2 * y @ ref.T + rn[None]).clamp_min(0)
            w = torch.softmax(-sq / (2 * s2), 1)
            out.append((w * sq).sum(1) / s2)
        return torch.cat(out)
