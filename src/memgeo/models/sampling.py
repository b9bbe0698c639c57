"""DDIM / DDPM samplers in continuous time with classifier-free guidance.

Both share one signature ``sampler(model, x, *, steps, cond, guidance, generator, callback,
progress, ...)``: ``x`` is the initial noise x_T (B, *data_shape). One update from t to s < t,
with x0_hat = (x_t - sigma_t eps) / psi_t, is

    x_s = psi_s x0_hat + sqrt(sigma_s^2 - c^2) eps + c z,   c = eta * sigma_s/sigma_t * sqrt(1 - ab_t/ab_s),

so eta = 0 is deterministic DDIM and eta = 1 is DDPM's ancestral sampler (the posterior
q(x_s | x_t, x0_hat)). On the grid t_k = (k + 1) / 1000 this is exactly diffusers' DDIMScheduler step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from memgeo.errors import MemgeoError
from memgeo.models.base import DiffusionModel, guided_eps


@dataclass
class SampleResult:
    """Output of a sampler.

    Attributes
    ----------
    x0 : Tensor, shape (B, *data_shape)
        Final samples (the denoised prediction at the last time point).
    ts : Tensor, shape (T,)
        Times at which the trajectory was recorded (decreasing from t_max).
    trajectory : Tensor or None, shape (T, B, *data_shape)
        x_t at each recorded time, when ``return_trajectory`` was set.
    """

    x0: torch.Tensor
    ts: torch.Tensor
    trajectory: torch.Tensor | None = None


def time_grid(steps: int, t_max: float = 1.0, t_min: float = 1e-3) -> torch.Tensor:
    """Uniform decreasing grid of ``steps + 1`` times from t_max to t_min, shape (steps + 1,)."""
    if steps < 1:
        raise MemgeoError(f"steps={steps}", "use at least one sampling step")
    if not 0 < t_min < t_max <= 1:
        raise MemgeoError(f"time range ({t_min}, {t_max}) is invalid", "need 0 < t_min < t_max <= 1")
    return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)


def ddim_step(model: DiffusionModel, x: torch.Tensor, t: float, s: float, eps: torch.Tensor,
              eta: float = 0.0, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One update x_t -> x_s given the predicted noise; returns (x_s, x0_hat)."""
    sch = model.schedule
    ab_t, ab_s = float(sch.alpha_bar(torch.tensor(t, dtype=torch.float64))), float(
        sch.alpha_bar(torch.tensor(s, dtype=torch.float64)))
    x0 = (x - (1 - ab_t) ** 0.5 * eps) / ab_t ** 0.5
    c = eta * ((1 - ab_s) / (1 - ab_t)) ** 0.5 * (1 - ab_t / ab_s) ** 0.5
    dir_coef = max(1 - ab_s - c * c, 0.0) ** 0.5
    x_s = ab_s ** 0.5 * x0 + dir_coef * eps
    if c > 0:
        x_s = x_s + c * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x_s, x0


@torch.no_grad()
def sample_ddim(model: DiffusionModel, x: torch.Tensor, *, steps: int = 100, cond: torch.Tensor | None = None,
                guidance: float = 1.0, eta: float = 0.0, t_max: float = 1.0, t_min: float = 1e-3,
                clip: tuple[float, float] | None = None, generator: torch.Generator | None = None,
                callback: Callable[[int, float, torch.Tensor], None] | None = None, progress: bool = False,
                return_trajectory: bool = False) -> SampleResult:
    """Sample by DDIM (``eta=0``) or any eta in [0, 1]; ``eta=1`` is DDPM.

    Parameters
    ----------
    model : DiffusionModel
    x : Tensor, shape (B, *data_shape)
        Initial noise at ``t_max``.
    steps : int
        Number of network evaluations (times ``2`` with guidance other than 0 or 1).
    cond : Tensor, shape (B,), optional
        Class labels; ``None`` samples unconditionally.
    guidance : float
        Classifier-free guidance weight w in eps_u + w (eps_c - eps_u).
    clip : (low, high), optional
        Clamp the x0 prediction at every step (the data range); ``None`` leaves it free.
    callback : callable(step, t, x_t), optional
    return_trajectory : bool
        Keep x_t at every grid time, (steps + 1, B, *data_shape).
    """
    model.check_input(x, cond)
    if not 0.0 <= eta <= 1.0:
        raise MemgeoError(f"eta={eta} is outside [0, 1]", "use 0 for DDIM and 1 for DDPM")
    ts = time_grid(steps, t_max, t_min)
    traj = [x] if return_trajectory else None
    x0 = x
    for k in tqdm(range(steps), disable=not progress, desc="sampling", leave=False):
        t, s = float(ts[k]), float(ts[k + 1])
        eps = guided_eps(model, x, t, cond, guidance)
        if clip is not None:
            sch = model.schedule
            ab_t = float(sch.alpha_bar(torch.tensor(t, dtype=torch.float64)))
            x0c = ((x - (1 - ab_t) ** 0.5 * eps) / ab_t ** 0.5).clamp(*clip)
            eps = (x - ab_t ** 0.5 * x0c) / (1 - ab_t) ** 0.5  # keep eps consistent with the clipped x0
        x, x0 = ddim_step(model, x, t, s, eps, eta, generator)
        if callback is not None:
            callback(k, s, x)
        if traj is not None:
            traj.append(x)
    # Final denoise at t_min: report the x0 prediction rather than the slightly noisy x_{t_min}.
    eps = guided_eps(model, x, float(ts[-1]), cond, guidance)
    ab = float(model.schedule.alpha_bar(torch.tensor(float(ts[-1]), dtype=torch.float64)))
    x0 = (x - (1 - ab) ** 0.5 * eps) / ab ** 0.5
    if clip is not None:
        x0 = x0.clamp(*clip)
    return SampleResult(x0=x0, ts=ts.to(x.dtype), trajectory=torch.stack(traj) if traj is not None else None)


def sample_ddpm(model: DiffusionModel, x: torch.Tensor, *, steps: int = 1000, cond: torch.Tensor | None = None,
                guidance: float = 1.0, t_max: float = 1.0, t_min: float = 1e-3,
                clip: tuple[float, float] | None = None, generator: torch.Generator | None = None,
                callback: Callable[[int, float, torch.Tensor], None] | None = None, progress: bool = False,
                return_trajectory: bool = False) -> SampleResult:
    """Ancestral DDPM sampling: :func:`sample_ddim` with ``eta=1``; same parameters."""
    return sample_ddim(model, x, steps=steps, cond=cond, guidance=guidance, eta=1.0, t_max=t_max, t_min=t_min,
                       clip=clip, generator=generator, callback=callback, progress=progress,
                       return_trajectory=return_trajectory)


SAMPLERS: dict[str, Callable[..., SampleResult]] = {"ddim": sample_ddim, "ddpm": sample_ddpm}


def get_sampler(name: str) -> Callable[..., SampleResult]:
    """Look up a sampler by name (``"ddim"`` or ``"ddpm"``)."""
    if name not in SAMPLERS:
        raise MemgeoError(f"unknown sampler {name!r}", f"choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
