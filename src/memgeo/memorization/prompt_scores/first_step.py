"""Scores read off the first sampling step(s), with d_eps = eps(x, t, c) - eps(x, t, null).

"Step k" is the k-th network evaluation of the guided DDIM sampler on the model's grid
(:class:`SamplingSettings`): on a pipeline folder the scheduler's own ``timesteps[k]`` (SD 1.x, 50
steps: 981, 961, ...), where the published methods evaluate. ``docs/paper_conventions.md`` states what
each paper's code computes; ``tests/test_paper_scores.py`` checks memgeo against a transcription of it.

* ``wen`` (Wen et al., ICLR 2024): ||d_eps||, averaged over a window of sampling steps (default the
  first only); the trajectory between steps follows the guided DDIM sampler.
* ``jeon`` / ``jeon_vjp`` (Jeon et al., ICML 2025): ||(H_c - H_u) d_s|| with d_s = s_c - s_u and
  H the score Jacobian (Hessian of log p_t), averaged over the first ``n_steps`` steps. ``jeon`` uses
  J v (forward-mode JVP, falling back to a reverse-only double VJP where forward mode fails);
  ``jeon_vjp`` uses J^T v (one VJP). They agree exactly when the Jacobians are symmetric.
* ``asthana`` (Asthana & Belagiannis, ICLR 2026): gamma_norm ||d_eps|| at step one plus gamma times the
  cosine between eps_u and d_eps evaluated on the same initial noise at a low-noise time (the grid's
  ``low_step``-th timestep, the authors' third-last, or an explicit ``t_low``).
* ``hessian_diff``: ||H_c^T eps_c - H_u^T eps_u|| at the first step (two VJPs).
* ``sharpness`` (Jeon et al.): -mean(lambda sigma^2) of the symmetrised conditional score Jacobian
  at the first step, with the count of flat directions (lambda sigma^2 > -1/2) as a side output.

v-prediction and flow models (``convention``): ``"eps"`` reads every output as the noise prediction
(eps = psi v + sigma x; the exact score -eps/sigma); ``"native"`` does what the published code does on
v-prediction models: Wen's norm is ||d v||, Jeon's "score" is psi v / sigma^2 (the authors'
(psi v - x)/sigma^2, whose x term cancels in every difference and Jacobian), Asthana's norm is
psi ||d v|| / sigma^2 and its cosine is taken on raw v. On flow models native means the velocity u
(Wen ||d u||, Jeon's field -u / t, Asthana on raw u: no published code, memgeo's choice); there the
eps convention is refused at sigma = 1, where eps = x for every prompt.
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
    check_eps_readable,
    dense_score_jacobian,
    eps_pair,
    flat_norm,
    register_prompt_score,
    resolve_convention,
    sigma_at,
    to_native,
)
from memgeo.models.base import DiffusionModel, as_time, denoise_pair, expand_like
from memgeo.models.sampling import sample


def guidance_norm(model: DiffusionModel, x: torch.Tensor, t: float, cond: torch.Tensor) -> torch.Tensor:
    """Wen's statistic at one step: ||eps(x, t, c) - eps(x, t, null)|| per row, (R, *shape) -> (R,).

    Differentiable (no ``no_grad`` inside), so it serves token attribution and prompt optimisation.
    Two forward evaluations per row, in one batched call.
    """
    e_c, e_u = eps_pair(model, x, t, cond)
    return flat_norm(e_c - e_u)


def _native_difference(model: DiffusionModel, info: dict[str, Any], convention: str) -> torch.Tensor:
    """The prompt's effect on the network output at one sampler step: d_eps, or d(native output)."""
    if convention == "eps":
        return info["eps_cond"] - info["eps_uncond"]
    return to_native(model, info["t"], info["eps_cond"] - info["eps_uncond"], info["x0_cond"] - info["x0_uncond"])


def trajectory_steps(model: DiffusionModel, cond: torch.Tensor, x: torch.Tensor, sampling: SamplingSettings,
                     n: int, on_step) -> None:
    """Run the guided sampler on the model's grid for its first ``n`` evaluations, calling ``on_step(dict)``.

    The step dict is the sampler core's (:func:`memgeo.models.sampling.sample`) with both branches.
    Differentiable with respect to ``cond`` and ``x``; 2 n forward evaluations per row.
    """
    grid = sampling.grid(model)
    if not 1 <= n <= grid.evaluations:
        raise MemgeoError(f"{n} steps asked of a {grid.steps}-step sampler", f"use 1 ... {grid.steps} steps")
    sample(model, x, grid=grid, cond=cond, guidance=sampling.guidance, both=True, clip=sampling.clip,
           callback=on_step, max_evals=n)


def wen_window_values(model: DiffusionModel, cond: torch.Tensor, x: torch.Tensor, sampling: SamplingSettings,
                      window: tuple[int, int] = (0, 1), convention: str = "auto") -> torch.Tensor:
    """Mean of ||d_eps|| (or ||d native||) over sampling steps ``window[0] <= k < window[1]``, (R,).

    Along the guided DDIM path; differentiable with respect to ``cond``; 2 * window[1] forward
    evaluations per row. ``window=(0, steps)`` averages over every step, as Wen et al.'s notebook does.
    """
    k0, k1 = (int(k) for k in window)
    if not 0 <= k0 < k1 <= sampling.steps:
        raise MemgeoError(f"step window {window} is not inside 0..{sampling.steps}",
                          f"use 0 <= start < end <= {sampling.steps} (steps), e.g. 0:1 for the first step only")
    conv = resolve_convention(model, convention)
    norms: list[torch.Tensor] = []

    def record(info: dict[str, Any]) -> None:
        if info["step"] >= k0:
            check_eps_readable(model, info["t"], conv)
            norms.append(flat_norm(_native_difference(model, info, conv)))

    trajectory_steps(model, cond, x, sampling, k1, record)
    return torch.stack(norms).mean(0)


@register_prompt_score
class Wen(PromptScore):
    """||eps(x_t, t, c) - eps(x_t, t, null)|| over a window of sampling steps (default: the first).

    Parameters
    ----------
    window : (int, int)
        Steps ``start <= k < end`` of the sampler's grid whose norms are averaged ((0, steps): all).
    convention : {"auto", "eps", "native"}
        How v-prediction / flow outputs are read (module docstring); native: ||d v|| or ||d u||.
    """

    name = "wen"

    def __init__(self, window: tuple[int, int] = (0, 1), convention: str = "auto") -> None:
        self.window = tuple(int(k) for k in window)
        self.convention = convention

    def differentiable_rows(self, model: DiffusionModel, cond: torch.Tensor, x: torch.Tensor,
                            sampling: SamplingSettings) -> torch.Tensor:
        """Per-row values with gradients flowing to ``cond`` (for token attribution)."""
        return wen_window_values(model, cond, x, sampling, self.window, self.convention)

    def rows(self, model, cond, x, sampling, cache):
        with torch.no_grad():
            vals = wen_window_values(model, cond, x, sampling, self.window, self.convention)
        return vals, {}, RowCost(forward=2 * self.window[1])


def _stack_cond_null(model: DiffusionModel, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x, x]), torch.cat([cond, model.null_cond(cond)])


class NativeScoreField(DiffusionModel):
    """The field the published code differentiates on v-prediction / flow models, as a model's ``score``.

    v_prediction: psi v / sigma^2 (Jeon et al.'s (psi v - x)/sigma^2 without its constant x term);
    flow: -u / t (memgeo's choice); epsilon: the exact score -eps / sigma. Only ``score`` is meaningful.
    """

    def __init__(self, model: DiffusionModel) -> None:
        super().__init__()
        self.inner = model
        self.schedule = model.schedule
        self.data_shape = tuple(model.data_shape)
        self.prediction_type = model.prediction_type

    def null_cond(self, cond: torch.Tensor) -> torch.Tensor:
        return self.inner.null_cond(cond)

    def check_cond(self, cond: torch.Tensor, batch: int) -> None:
        self.inner.check_cond(cond, batch)

    def score(self, x, t, cond=None):
        kind = self.inner.prediction_type
        if kind not in ("v_prediction", "flow"):
            return self.inner.score(x, t, cond)
        out = self.inner.native_output(x, t, cond)
        tt = as_time(t, x.shape[0], x)
        if kind == "flow":
            return -out / expand_like(tt, x)
        psi = expand_like(self.schedule.sqrt_alpha_bar(tt), x)
        return psi * out / expand_like(self.schedule.sigma(tt), x) ** 2

    def eps(self, x, t, cond=None):
        return -expand_like(self.schedule.sigma(as_time(t, x.shape[0], x)), x) * self.score(x, t, cond)


def first_step_field(model: DiffusionModel, sampling: SamplingSettings, convention: str
                     ) -> tuple[float, DiffusionModel]:
    """(t_1, the field whose Jacobian a score reads there): the model itself ("eps") or its native reading."""
    t = sampling.first_time(model)
    conv = resolve_convention(model, convention)
    check_eps_readable(model, t, conv)
    return t, (model if conv == "eps" else NativeScoreField(model))


@register_prompt_score
class Jeon(PromptScore):
    """||(H_c - H_u) d_s|| with d_s = s_c - s_u, H = score Jacobian, products J v; mean over the first steps.

    Parameters
    ----------
    mode : {"jvp", "vjp"}
        How J v is computed: forward mode (falls back to ``"vjp"``, a reverse-only double VJP, if the
        network does not support forward-mode AD) or the double VJP directly.
    n_steps : int
        Average over the first ``n_steps`` steps of the guided sampler (Jeon et al.: 1).
    convention : {"auto", "eps", "native"}
        How v-prediction / flow outputs are read (module docstring).
    """

    name = "jeon"
    transpose = False

    def __init__(self, mode: str = "jvp", n_steps: int = 1, convention: str = "auto") -> None:
        self.mode = mode
        self.n_steps = int(n_steps)
        self.convention = convention

    def _one_step(self, model: DiffusionModel, cond: torch.Tensor, x: torch.Tensor, t: float
                  ) -> tuple[torch.Tensor, bool]:
        """(||(H_c - H_u) d_s|| per row, whether forward mode fell back to the double VJP).

        Reverse-mode products (``jeon_vjp``, ``mode="vjp"``) take s_c and s_u from the operator's own
        cached forward (:meth:`ScoreJacobianOperator.score`): one forward of the stacked rows in all.
        Forward mode needs d_s before its J v, which recomputes the primal: two forwards.
        """
        r = x.shape[0]
        xx, cc = _stack_cond_null(model, x, cond)
        fell_back = False
        if self.transpose or self.mode == "vjp":
            with ScoreJacobianOperator(model, xx, t, cc, mode="vjp") as op:
                s_c, s_u = op.score().chunk(2)
                d_s = s_c - s_u
                v = torch.cat([d_s, d_s])
                prod = op.rmatvec(v) if self.transpose else op.matvec(v)
        else:
            with torch.no_grad():
                s_c, s_u = flat_score_fn(model, t, cc)(xx.reshape(2 * r, -1)).chunk(2)
            d_s = s_c - s_u
            v = torch.cat([d_s, d_s])
            try:
                prod = ScoreJacobianOperator(model, xx, t, cc, mode=self.mode).matvec(v)
            except (RuntimeError, NotImplementedError):  # forward-mode AD unsupported by some layer
                prod = ScoreJacobianOperator(model, xx, t, cc, mode="vjp").matvec(v)
                fell_back = True
        h_c, h_u = prod.chunk(2)
        return (h_c - h_u).norm(dim=1), fell_back

    def rows(self, model, cond, x, sampling, cache):
        check_choice(self.mode, ("jvp", "vjp"), "Jacobian product mode")
        if self.n_steps < 1:
            raise MemgeoError(f"n_steps={self.n_steps}", "average over at least the first step (--jeon-steps 1)")
        conv = resolve_convention(model, self.convention)
        field = model if conv == "eps" else NativeScoreField(model)
        points: list[tuple[float, torch.Tensor]] = [(sampling.first_time(model), x)]
        if self.n_steps > 1:  # the guided trajectory's next points
            with torch.no_grad():
                trajectory_steps(model, cond, x, sampling, self.n_steps - 1,
                                 lambda info: points.append((info["t_next"], info["x_next"])))
        values, fell_back = [], False
        for t, xk in points:
            check_eps_readable(model, t, conv)
            val, fb = self._one_step(field, cond, xk, t)
            values.append(val)
            fell_back |= fb
        r, k = x.shape[0], len(points)
        double = (not self.transpose) and (self.mode == "vjp" or fell_back)
        shared = self.transpose or self.mode == "vjp"  # s_c, s_u from the operator's own forward
        cost = RowCost(forward=2 * (k - 1) + (2 if shared else 4) * k, derivative=(4 if double else 2) * k)
        extra = {"vjp_fallback": torch.full((r,), float(fell_back))} if not self.transpose else {}
        return torch.stack(values).mean(0), extra, cost


@register_prompt_score
class JeonVJP(Jeon):
    """Transposed variant ||(H_c^T - H_u^T) d_s||: one VJP each; equals ``jeon`` for symmetric Jacobians."""

    name = "jeon_vjp"
    transpose = True

    def __init__(self, n_steps: int = 1, convention: str = "auto") -> None:
        super().__init__("vjp", n_steps, convention)

    def params(self) -> dict[str, Any]:
        return {"n_steps": self.n_steps, "convention": self.convention}


def _cosine(a: torch.Tensor, b: torch.Tensor, how: str) -> torch.Tensor:
    """Cosine between rows of a and b, (R, C, ...) -> (R,): over all pixels ("flat") or across channels
    at each pixel, averaged over pixels ("per_pixel", ``F.cosine_similarity(a, b, dim=1)`` as Asthana et al.)."""
    if how == "per_pixel":
        return torch.nn.functional.cosine_similarity(a, b, dim=1).reshape(a.shape[0], -1).mean(1)
    return torch.nn.functional.cosine_similarity(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), dim=1)


@register_prompt_score
class Asthana(PromptScore):
    """gamma_norm ||d_eps(x_T, t_1)|| + gamma cos(eps_u, d_eps)(x_T, t_low): the same noise at two times.

    Parameters
    ----------
    gamma : float
        Weight of the alignment (cosine) term (Asthana et al.: 2 on SD 1.4, 0.1 on SD 2.0, 1 on RV 5.1).
    gamma_norm : float
        Weight of the norm term (the authors' gamma_1: 1, or 2 on Realistic Vision 5.1).
    low_step : int, optional
        Read the alignment at the grid's ``timesteps[low_step]`` (the authors: -3, the third-last).
    t_low : float, optional
        Or at this explicit low-noise time; exactly one of ``low_step`` / ``t_low`` is used
        (``t_low`` wins when both are given). The alignment is read on the initial noise itself.
    cosine : {"auto", "flat", "per_pixel"}
        "per_pixel": cosine across channels at every pixel, averaged over pixels (needs C >= 2;
        the authors' form for latent images); "flat": one cosine over all pixels; "auto" picks per_pixel
        when the data have at least 2 channels and spatial dimensions.
    convention : {"auto", "eps", "native"}
        v-prediction / flow outputs (module docstring); native on v: norm psi ||d v|| / sigma^2, cosine on raw v.
    """

    name = "asthana"

    def __init__(self, gamma: float = 1.0, t_low: float | None = 0.02, cosine: str = "auto",
                 low_step: int | None = None, gamma_norm: float = 1.0, convention: str = "auto") -> None:
        self.gamma = gamma
        self.gamma_norm = gamma_norm
        self.t_low = t_low
        self.low_step = low_step
        self.cosine = cosine
        self.convention = convention

    def low_time(self, model: DiffusionModel, sampling: SamplingSettings) -> float:
        """The low-noise time of the alignment term on ``model``'s grid."""
        grid = sampling.grid(model)
        t_first = float(grid.ts[0])
        if self.t_low is not None:
            t = float(self.t_low)
        elif self.low_step is not None:
            if not -grid.steps <= int(self.low_step) < grid.steps:
                raise MemgeoError(f"low_step={self.low_step} is outside the {grid.steps}-step grid",
                                  f"use -{grid.steps} ... {grid.steps - 1} (-3: the third-last timestep)")
            t = float(grid.ts[: grid.steps][int(self.low_step)])
        else:
            raise MemgeoError("asthana needs low_step or t_low", "pass --low-step -3 or t_low=0.02")
        if not 0 < t < t_first:
            raise MemgeoError(f"the low-noise time {t} is not in (0, {t_first}) (the first step)",
                              "use a later step (--low-step -3) or a smaller t_low")
        return t

    def rows(self, model, cond, x, sampling, cache):
        check_choice(self.cosine, ("auto", "flat", "per_pixel"), "cosine")
        conv = resolve_convention(model, self.convention)
        t_hi, t_lo = sampling.first_time(model), self.low_time(model, sampling)
        check_eps_readable(model, t_hi, conv)
        how = self.cosine
        if how == "auto":
            how = "per_pixel" if len(model.data_shape) >= 3 and model.data_shape[0] >= 2 else "flat"
        with torch.no_grad():
            e_c, e_u, x0_c, x0_u = denoise_pair(model, x, t_hi, cond)
            lo_c, lo_u, lo_x0_c, lo_x0_u = denoise_pair(model, x, t_lo, cond)
        if conv == "eps":
            norm = flat_norm(e_c - e_u)
        elif model.prediction_type == "v_prediction":  # the authors' psi ||d v|| / sigma^2
            tt = torch.tensor(t_hi, dtype=torch.float64)
            psi, sigma = float(model.schedule.sqrt_alpha_bar(tt)), float(model.schedule.sigma(tt))
            norm = psi * flat_norm(to_native(model, t_hi, e_c - e_u, x0_c - x0_u)) / sigma ** 2
        else:
            norm = flat_norm(to_native(model, t_hi, e_c - e_u, x0_c - x0_u))
        if conv == "native":
            lo_c, lo_u = to_native(model, t_lo, lo_c, lo_x0_c), to_native(model, t_lo, lo_u, lo_x0_u)
        cos = _cosine(lo_u, lo_c - lo_u, how)
        return self.gamma_norm * norm + self.gamma * cos, {"norm": norm, "cosine": cos}, RowCost(forward=4)


@register_prompt_score
class HessianDiff(PromptScore):
    """||H_c^T eps_c - H_u^T eps_u|| at the first step (H = score Jacobian; two VJPs, batched).

    ``convention`` as for ``jeon``: with "native" the field is the published v / flow reading
    (:class:`NativeScoreField`) and eps = -sigma times it.
    """

    name = "hessian_diff"

    def __init__(self, convention: str = "auto") -> None:
        self.convention = convention

    def rows(self, model, cond, x, sampling, cache):
        t, field = first_step_field(model, sampling, self.convention)
        r = x.shape[0]
        xx, cc = _stack_cond_null(field, x, cond)
        f = flat_score_fn(field, as_time(t, 2 * r, x), cc)
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
    one forward and D reverse passes per row. ``convention`` as for ``jeon`` (on flow models at
    sigma = 1 the exact score is -x, whose spectrum is the same for every prompt; "auto" reads the
    velocity field there).
    """

    name = "sharpness"

    def __init__(self, flat_threshold: float = FLAT_THRESHOLD, chunk_size: int = 32, convention: str = "auto") -> None:
        self.flat_threshold = flat_threshold
        self.chunk_size = chunk_size
        self.convention = convention

    def rows(self, model, cond, x, sampling, cache):
        t, field = first_step_field(model, sampling, self.convention)
        jac = dense_score_jacobian(field, x, t, cond, self.chunk_size)
        if jac.dtype in (torch.float16, torch.bfloat16):  # no eigh in these dtypes on CPU: the spectrum in float32
            jac = jac.float()
        sigma = as_time(model.schedule.sigma(torch.tensor(t, dtype=torch.float64)), x.shape[0], jac)
        evals, asym = spectrum_from_jacobian(jac, sigma)
        res = SharpnessResult(t=as_time(t, x.shape[0], jac), sigma=sigma, eigenvalues_sigma2=evals, asymmetry=asym,
                              flat_threshold=self.flat_threshold)
        return res.sharpness, {"n_flat": res.n_flat.double(), "asymmetry": res.asymmetry}, \
            RowCost(forward=1, derivative=model.dim)
