"""Mitigations that only change the guidance schedule: the plain baseline and Jain et al.'s delayed CFG."""

from __future__ import annotations

import numpy as np
import torch

from memgeo.errors import MemgeoError, check_scalar
from memgeo.memorization.mitigation.base import (
    CostTally, Mitigation, MitigationResult, check_inputs, sample_evals, sample_guided,
)
from memgeo.models.base import DiffusionModel
from memgeo.models.sampling import sample_ddim


class NoMitigation(Mitigation):
    """Baseline: plain classifier-free guided DDIM from the given noise (no mitigation).

    Identical to :func:`memgeo.models.sampling.sample_ddim` with the same ``x_T``. Cost per
    generation: one evaluation per grid point (``steps + 1`` on memgeo's grid, ``steps`` on a
    scheduler's) with ``guidance`` 0 or 1, twice that otherwise.
    """

    name = "none"
    summary = "plain CFG DDIM (baseline)"

    def generate(self, model: DiffusionModel, cond: torch.Tensor, x_T: torch.Tensor, *, steps: int = 50,
                 guidance: float = 3.0, generator: torch.Generator | None = None,
                 clip: tuple[float, float] | None = None) -> MitigationResult:
        check_inputs(model, cond, x_T, steps)
        res = sample_ddim(model, x_T, steps=steps, cond=cond, guidance=guidance, clip=clip)
        b = x_T.shape[0]
        return MitigationResult(samples=res.x0, noise=x_T.clone(),
                                nfe=np.full(b, sample_evals(model, steps, guidance)),
                                nbe=np.zeros(b, dtype=np.int64))


class DelayedGuidance(Mitigation):
    """Jain et al. (CVPR 2025): switch classifier-free guidance on only after the attraction basin.

    Jain et al. observe that memorized prompts pull the trajectory into an "attraction basin" while
    guidance is on, and that the guidance norm ||eps_c - eps_u|| along the trajectory drops to a
    first local minimum when the trajectory leaves it (the transition point). They sample with no
    (or opposite) guidance until that point and with the usual guidance afterwards. Here the switch
    is decided online, per generation: at every DDIM step both eps_c and eps_u are evaluated (so the
    cost is the same as plain CFG, ``2 (steps + 1)`` evaluations), the norm is recorded, and from the
    step *after* the first local minimum is seen (the norm rises again) the row uses ``guidance``;
    before that it uses ``pre_guidance`` (0: unconditional; negative: Jain's opposite guidance).

    Parameters
    ----------
    pre_guidance : float, default 0.0
        Guidance weight before the switch.
    max_delay : float in [0, 1], default 1.0
        Force the switch at this fraction of the steps even without a local minimum (1: never force).
    min_step : int, default 1
        Ignore local minima before this step (the very first steps are noise-dominated).
    """

    name = "jain_delayed"
    summary = "CFG off until the first local minimum of ||eps_c - eps_u|| (Jain et al. 2025)"

    def __init__(self, pre_guidance: float = 0.0, max_delay: float = 1.0, min_step: int = 1) -> None:
        if not np.isfinite(float(pre_guidance)):
            raise MemgeoError(f"pre_guidance={pre_guidance!r} is not finite", "use e.g. 0 (unconditional)")
        if not 0.0 <= float(max_delay) <= 1.0:
            raise MemgeoError(f"max_delay={max_delay!r} is outside [0, 1]", "use a fraction of the steps")
        self.pre_guidance = float(pre_guidance)
        self.max_delay = float(max_delay)
        self.min_step = check_scalar(min_step, "min_step", min=0)

    @torch.no_grad()
    def generate(self, model: DiffusionModel, cond: torch.Tensor, x_T: torch.Tensor, *, steps: int = 50,
                 guidance: float = 3.0, generator: torch.Generator | None = None,
                 clip: tuple[float, float] | None = None) -> MitigationResult:
        check_inputs(model, cond, x_T, steps)
        b = x_T.shape[0]
        tally = CostTally(b)
        forced = int(np.ceil(self.max_delay * steps)) if self.max_delay < 1.0 else steps + 1

        def update(k: int, norms: np.ndarray, switch: np.ndarray) -> None:
            # The previous step was a local minimum when the norm rises now: guidance on from this step.
            prev = k - 1
            if prev >= self.min_step:
                fell = np.ones(b, dtype=bool) if prev == 0 else norms[:, prev] <= norms[:, prev - 1]
                switch[fell & (norms[:, k] > norms[:, prev]) & (switch > steps)] = k
            switch[(switch > steps) & (k >= forced)] = k

        x, norms, switch = sample_guided(model, x_T, cond, tally, steps=steps, guidance=guidance,
                                         switch_step=np.full(b, steps + 1), pre_guidance=self.pre_guidance,
                                         clip=clip, update_switch=update)
        return MitigationResult(samples=x, noise=x_T.clone(), nfe=tally.nfe, nbe=tally.nbe,
                                diagnostics={"switch_step": switch.astype(float),
                                             "norm_first": norms[:, 0], "norm_min": norms.min(axis=1)})
