"""Scores read off the first sampling step(s), with d_eps = eps(x, t, c) - eps(x, t, null).

* ``wen`` (Wen et al., ICLR 2024): ||d_eps||, averaged over a window of sampling steps (default the
  first only); the trajectory between steps follows the guided DDIM sampler.
* ``jeon`` / ``jeon_vjp`` (Jeon et al., ICML 2025): ||(H_c - H_u) d_s|| with d_s = -d_eps / sigma and
  H the score Jacobian (Hessian of log p_t), at the first step. ``jeon`` uses J v (forward-mode JVP,
  falling back to a reverse-only double VJP where forward mode fails); ``jeon_vjp`` uses J^T v (one
  VJP). They agree exactly when the Jacobians are symmetric (a conservative score); for a trained
  network they differ by its asymmetry, which is why both are reported.
* ``asthana`` (Asthana & Belagiannis, ICLR 2026): ||d_eps|| at t = t_max plus gamma times the cosine
  between eps_u and d_eps evaluated on the same initial noise but at a low-noise time t_low
  (memorized prompts align the guidance with the unconditional direction there).
* ``hessian_diff``: ||H_c^T eps_c - H_u^T eps_u|| at the first step (two VJPs).
* ``sharpness`` (Jeon et al.): -mean(lambda sigma^2) of the symmetrised conditional score Jacobian
  at the first step, with the count of flat directions (lambda sigma^2 > -1/2) as a side output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import vjp

from memgeo.errors import MemgeoError, check_choice
from memgeo.geometry.jacobian import ScoreJacobianOperator, flat_score_fn
from memgeo.geometry.sharpness import FLAT_THRESHOLD, SharpnessResult, spectrum_from_jacobian
from memgeo.memorization.prompt_scores.base import (
    PromptScore,
    RowCost,
    SamplingSettings,
    dense_score_jacobian,
    eps_pair,
    flat_norm,
    register_prompt_score,
    sigma_at,
)
from memgeo.models.base import DiffusionModel, as_time
from memgeo.models.sampling import ddim_step


def guidance_norm(model: DiffusionModel, x: torch.Tensor, t: float, cond: torch.Tensor) -> torch.Tensor:
    """Wen's statistic at one step: ||eps(x, t, c) - eps(x, t, null)|| per row, (R, *shape) -> (R,).

    Differentiable (no ``no_grad`` inside), so it serves token attribution and prompt optimisation.
    Two forward evaluations per row, in one batched call.
    """
    e_c, e_u = eps_pair(model, x, t, cond)
    return flat_norm(e_c - e_u)


def _guided_update(model: DiffusionModel, x: torch.Tensor, t: float, s: float, e_c: torch.Tensor,
                   e_u: torch.Tensor, sampling: SamplingSettings) -> torch.Tensor:
    """One DDIM step x_t -> x_s with the CFG noise e_u + w (e_c - e_u) (and the sampler's x0 clipping)."""
    eps = e_u + sampling.guidance * (e_c - e_u)
    if sampling.clip is not None:
        ab = float(model.schedule.alpha_bar(torch.tensor(t, dtype=torch.float64)))
        x0 = ((x - (1 - ab) ** 0.5 * eps) / ab ** 0.5).clamp(*sampling.clip)
        eps = (x - ab ** 0.5 * x0) / (1 - ab) ** 0.5
    return ddim_step(model, x, t, s, eps)[0]


def wen_window_values(model: DiffusionModel, cond: torch.Tensor, x: torch.Tensor, sampling: SamplingSettings,
                      window: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Mean of ||d_eps|| over sampling steps ``window[0] <= k < window[1]`` along the guided DDIM path, (R,).

    Differentiable with respect to ``cond``; 2 * window[1] forward evaluations per row.
    """
    k0, k1 = window
    if not 0 <= k0 < k1 <= sampling.steps:
        raise MemgeoError(f"step window {window} is not inside 0..{sampling.steps}",
                          "use 0 <= start < end <= steps, e.g. (0, 1) for the first step only")
    ts = sampling.grid().tolist()
    norms = []
    for k in range(k1):
        e_c, e_u = eps_pair(model, x, ts[k], cond)
        if k >= k0:
            norms.append(flat_norm(e_c - e_u))
        if k + 1 < k1:
            x = _guided_update(model, x, ts[k], ts[k + 1], e_c, e_u, sampling)
    return torch.stack(norms).mean(0)


@register_prompt_score
class Wen(PromptScore):
    """||eps(x_t, t, c) - eps(x_t, t, null)|| over a window of sampling steps (default: the first).

    Parameters
    ----------
    window : (int, int)
        Steps ``start <= k < end`` of the sampler's grid whose norms are averaged.
    """

    name = "wen"

    def __init__(self, window: tuple[int, int] = (0, 1)) -> None:
        self.window = tuple(int(k) for k in window)

    def differentiable_rows(self, model: DiffusionModel, cond: torch.Tensor, x: torch.Tensor,
                            sampling: SamplingSettings) -> torch.Tensor:
        """Per-row values with gradients flowing to ``cond`` (for token attribution)."""
        return wen_window_values(model, cond, x, sampling, self.window)

    def rows(self, model, cond, x, sampling, cache):
        with torch.no_grad():
            vals = wen_window_values(model, cond, x, sampling, self.window)
        return vals, {}, RowCost(forward=2 * self.window[1])


def _stack_cond_null(model: DiffusionModel, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x, x]), torch.cat([cond, model.null_cond(cond)])


@register_prompt_score
class Jeon(PromptScore):
    """||(H_c - H_u) d_s|| at the first step, d_s = -d_eps / sigma, H = score Jacobian, products J v.

    Parameters
    ----------
    mode : {"jvp", "vjp"}
        How J v is computed: forward mode (falls back to ``"vjp"``, a reverse-only double VJP, if the
        network does not support forward-mode AD) or the double VJP directly.
    """

    name = "jeon"
    transpose = False

    def __init__(self, mode: str = "jvp") -> None:
        self.mode = mode

    def rows(self, model, cond, x, sampling, cache):
        check_choice(self.mode, ("jvp", "vjp"), "Jacobian product mode")
        t = sampling.t_max
        r = x.shape[0]
        with torch.no_grad():
            e_c, e_u = eps_pair(model, x, t, cond)
        d_s = (-(e_c - e_u) / sigma_at(model, t)).reshape(r, -1)
        xx, cc = _stack_cond_null(model, x, cond)
        v = torch.cat([d_s, d_s])
        fell_back = False
        if self.transpose:
            prod = ScoreJacobianOperator(model, xx, t, cc).rmatvec(v)
            cost = RowCost(forward=4, derivative=2)
        else:
            try:
                prod = ScoreJacobianOperator(model, xx, t, cc, mode=self.mode).matvec(v)
                double = self.mode == "vjp"
            except (RuntimeError, NotImplementedError):  # forward-mode AD unsupported by some layer
                prod = ScoreJacobianOperator(model, xx, t, cc, mode="vjp").matvec(v)
                fell_back = double = True
            cost = RowCost(forward=4, derivative=4 if double else 2)
        h_c, h_u = prod.chunk(2)
        extra = {"vjp_fallback": torch.full((r,), float(fell_back))} if not self.transpose else {}
        return (h_c - h_u).norm(dim=1), extra, cost


@register_prompt_score
class JeonVJP(Jeon):
    """Transposed variant ||(H_c^T - H_u^T) d_s||: one VJP each; equals ``jeon`` for symmetric Jacobians."""

    name = "jeon_vjp"
    transpose = True

    def __init__(self) -> None:
        self.mode = "vjp"

    def params(self) -> dict[str, Any]:
        return {}


def _cosine(a: torch.Tensor, b: torch.Tensor, how: str) -> torch.Tensor:
    """Cosine between rows of a and b, (R, C, ...) -> (R,): over all pixels ("flat") or across channels
    at each pixel, averaged over pixels ("per_pixel")."""
    tiny = torch.finfo(a.dtype).tiny
    if how == "per_pixel":
        num = (a * b).sum(1)
        den = (a.norm(dim=1) * b.norm(dim=1)).clamp_min(tiny)
        return (num / den).reshape(a.shape[0], -1).mean(1)
    af, bf = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp_min(tiny)


@register_prompt_score
class Asthana(PromptScore):
    """||d_eps(x_T, t_max)|| + gamma * cos(eps_u, d_eps) at (x_T, t_low): same noise, two times.

    Parameters
    ----------
    gamma : float
        Weight of the alignment term.
    t_low : float
        The low-noise time at which the alignment is read (on the initial noise itself).
    cosine : {"auto", "flat", "per_pixel"}
        "per_pixel": cosine across channels at every pixel, averaged over pixels (needs C >= 2;
        the form for latent images); "flat": one cosine over all pixels; "auto" picks per_pixel
        when the data have at least 2 channels and spatial dimensions.
    """

    name = "asthana"

    def __init__(self, gamma: float = 1.0, t_low: float = 0.02, cosine: str = "auto") -> None:
        self.gamma = gamma
        self.t_low = t_low
        self.cosine = cosine

    def rows(self, model, cond, x, sampling, cache):
        check_choice(self.cosine, ("auto", "flat", "per_pixel"), "cosine")
        if not 0 < self.t_low < sampling.t_max:
            raise MemgeoError(f"t_low={self.t_low} is not in (0, t_max={sampling.t_max})", "use e.g. t_low=0.02")
        how = self.cosine
        if how == "auto":
            how = "per_pixel" if len(model.data_shape) >= 3 and model.data_shape[0] >= 2 else "flat"
        r = x.shape[0]
        tt = torch.cat([as_time(sampling.t_max, 2 * r, x), as_time(self.t_low, 2 * r, x)])
        null = model.null_cond(cond)
        with torch.no_grad():
            e = model.eps(torch.cat([x, x, x, x]), tt, torch.cat([cond, null, cond, null]))
        e_c_hi, e_u_hi, e_c_lo, e_u_lo = e.chunk(4)
        norm = flat_norm(e_c_hi - e_u_hi)
        cos = _cosine(e_u_lo, e_c_lo - e_u_lo, how)
        return norm + self.gamma * cos, {"norm": norm, "cosine": cos}, RowCost(forward=4)


@register_prompt_score
class HessianDiff(PromptScore):
    """||H_c^T eps_c - H_u^T eps_u|| at the first step (H = score Jacobian; two VJPs, batched)."""

    name = "hessian_diff"

    def rows(self, model, cond, x, sampling, cache):
        t = sampling.t_max
        r = x.shape[0]
        xx, cc = _stack_cond_null(model, x, cond)
        f = flat_score_fn(model, as_time(t, 2 * r, x), cc)
        sigma = sigma_at(model, t)
        with torch.no_grad():
            s, pullback = vjp(f, xx.reshape(2 * r, -1))
            g = pullback(-sigma * s)[0]  # H^T eps with eps = -sigma s, from the VJP's own forward
        g_c, g_u = g.chunk(2)
        return (g_c - g_u).norm(dim=1), {}, RowCost(forward=2, derivative=2)


@register_prompt_score
class Sharpness(PromptScore):
    """-mean(lambda sigma^2) of the symmetrised conditional score Jacobian at the first step.

    Side output ``n_flat``: eigenvalues with lambda sigma^2 > ``flat_threshold``. Dense Jacobian:
    one forward and D reverse passes per row.
    """

    name = "sharpness"

    def __init__(self, flat_threshold: float = FLAT_THRESHOLD, chunk_size: int = 32) -> None:
        self.flat_threshold = flat_threshold
        self.chunk_size = chunk_size

    def rows(self, model, cond, x, sampling, cache):
        t = sampling.t_max
        jac = dense_score_jacobian(model, x, t, cond, self.chunk_size)
        sigma = as_time(model.schedule.sigma(torch.tensor(t, dtype=torch.float64)), x.shape[0], jac)
        evals, asym = spectrum_from_jacobian(jac, sigma)
        res = SharpnessResult(t=as_time(t, x.shape[0], jac), sigma=sigma, eigenvalues_sigma2=evals, asymmetry=asym,
                              flat_threshold=self.flat_threshold)
        return res.sharpness, {"n_flat": res.n_flat.double(), "asymmetry": res.asymmetry}, \
            RowCost(forward=1, derivative=model.dim)
