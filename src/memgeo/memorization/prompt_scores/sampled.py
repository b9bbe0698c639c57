"""Scores of the finished generation: FLIPD (local intrinsic dimension) under the prompt or the null prompt.

A memorized prompt makes the sampler land on (near) an atom of the learned density, where the local
intrinsic dimension is 0; a generic prompt lands on a data manifold of positive dimension. The score is
therefore ``-FLIPD(x_0)``, so that higher means more likely memorized:

* ``flipd_cond``: FLIPD of x_0 under p_t(. | c);
* ``flipd_uncond``: FLIPD of the same x_0 under the unconditional model p_t(. | null).

Both need the full guided DDIM sample first (``SamplingSettings``); it is generated once per batch and
shared through the ``cache`` (its cost is still charged to each score, which is what it costs alone).
"""

from __future__ import annotations

from typing import Any

import torch

from memgeo.geometry.lid.flipd import FLIPD
from memgeo.memorization.prompt_scores.base import (
    PromptScore,
    RowCost,
    SamplingSettings,
    dense_score_jacobian,
    register_prompt_score,
)
from memgeo.models.base import DiffusionModel
from memgeo.models.sampling import sample_ddim


def sample_forward_evals(model: DiffusionModel, sampling: SamplingSettings) -> int:
    """Forward evaluations per generation of the guided sampler on the model's grid (memgeo's grids:
    steps + the final denoise; a pipeline's scheduler grid: steps)."""
    per_step = 1 if sampling.guidance in (0.0, 1.0) else 2
    return per_step * sampling.grid(model).evaluations


def generated_samples(model: DiffusionModel, cond: torch.Tensor, x: torch.Tensor, sampling: SamplingSettings,
                      cache: dict[str, Any]) -> torch.Tensor:
    """The finished generation x_0 of every row, (R, *data_shape), sampled once and kept in ``cache``."""
    hit = cache.get("x0")
    if hit is None or hit.shape != x.shape:
        res = sample_ddim(model, x, steps=sampling.steps, cond=cond, guidance=sampling.guidance,
                          t_max=sampling.t_max, t_min=sampling.t_min, clip=sampling.clip)
        cache["x0"] = hit = res.x0.detach()
    return hit


def exact_flipd(model: DiffusionModel, x0: torch.Tensor, t0: float, cond: torch.Tensor) -> torch.Tensor:
    """FLIPD(x0, t0) = D + sigma^2 [tr H(y) + ||s(y)||^2] at y = psi x0, with the trace of the dense Jacobian, (R,).

    The formula of :class:`memgeo.geometry.lid.FLIPD` with ``trace="exact"``, computed through
    :func:`dense_score_jacobian` for models that vmap cannot trace.
    """
    r = x0.shape[0]
    tt = torch.tensor(t0, dtype=torch.float64)
    psi, sigma2 = float(model.schedule.sqrt_alpha_bar(tt)), float(model.schedule.sigma(tt)) ** 2
    y = psi * x0
    with torch.no_grad():
        s = model.score(y, t0, cond).reshape(r, -1).double()
    jac = dense_score_jacobian(model, y, t0, cond)
    tr = torch.diagonal(jac, dim1=-2, dim2=-1).sum(-1).double()
    return model.dim + sigma2 * (tr + (s * s).sum(1))


class _FlipdScore(PromptScore):
    """-FLIPD(x_0, t0) under the conditional (``conditional=True``) or unconditional model.

    Parameters
    ----------
    t0 : float
        Diffusion time of FLIPD.
    trace : {"auto", "exact", "hutchinson", "hutch++"}
        "auto": exact for D <= 256, else Hutchinson with ``n_probes`` probes.
    n_probes, seed : int
        Probes and their seed for the stochastic traces.
    """

    needs_sample = True
    conditional = True

    def __init__(self, t0: float = 0.05, trace: str = "auto", n_probes: int = 8, seed: int = 0) -> None:
        self.t0 = t0
        self.trace = trace
        self.n_probes = n_probes
        self.seed = seed

    def rows(self, model, cond, x, sampling, cache):
        x0 = generated_samples(model, cond, x, sampling, cache)
        trace = self.trace if self.trace != "auto" else ("exact" if model.dim <= 256 else "hutchinson")
        est = FLIPD(t0=self.t0, trace=trace, n_probes=self.n_probes, seed=self.seed)
        c = cond if self.conditional else model.null_cond(cond)
        try:
            lid = est.estimate(model, x0, cond=c)
        except RuntimeError as exc:  # vmap refused by the model (see dense_score_jacobian)
            if trace != "exact" or "vmap" not in str(exc):
                raise
            lid = exact_flipd(model, x0, self.t0, c)
        if trace == "exact":
            cost = RowCost(forward=sample_forward_evals(model, sampling) + 2, derivative=model.dim)
        else:
            cost = RowCost(forward=sample_forward_evals(model, sampling) + 1 + est.result_.n_matvecs,
                           derivative=est.result_.n_matvecs)
        return -lid, {"lid": lid}, cost


@register_prompt_score
class FlipdCond(_FlipdScore):
    __doc__ = _FlipdScore.__doc__
    name = "flipd_cond"
    conditional = True


@register_prompt_score
class FlipdUncond(_FlipdScore):
    __doc__ = _FlipdScore.__doc__
    name = "flipd_uncond"
    conditional = False
