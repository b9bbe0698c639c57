"""One sampler core: a guided, differentiable DDIM/DDPM step loop with a callback, on any time grid.

Every sampling loop in memgeo (plain sampling, Wen's step windows, Jain's delayed guidance, SAIL,
Han and Wen's prompt optimisation) is :func:`sample` with a callback or a guidance function; there
is no other loop. One update from t to s < t, with the (guided) predictions eps and x0, is

    x_s = psi_s x0 + sqrt(sigma_s^2 - c^2) eps + c z,   c = eta * sigma_s/sigma_t * sqrt(1 - ab_t/ab_s),

so eta = 0 is deterministic DDIM and eta = 1 is DDPM's ancestral sampler (the posterior
q(x_s | x_t, x0)). In VP coordinates this one update is also what diffusers' DDIM, DDPM, Euler
(epsilon) and flow-matching Euler schedulers do between two of their noise levels, so memgeo reproduces a
pipeline's latents by running this update on the scheduler's own grid (:class:`SamplingGrid`,
from :meth:`DiffusionModel.sampling_grid`); see ``tests/test_sampler_golden.py``.

Grids. memgeo's own models use the uniform continuous grid ``t_max -> t_min`` followed by a final
denoise at ``t_min`` (:meth:`SamplingGrid.uniform`). Pipeline folders use the scheduler's timesteps
(``scheduler.set_timesteps(steps); scheduler.timesteps[k]``), ending where the scheduler ends
(t = 0 is the clean sample), with no extra denoise: the result is the pipeline's final latents.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from memgeo.errors import MemgeoError, Registry
from memgeo.models.base import DiffusionModel, denoise_pair

#: The callback receives one dict per network evaluation with these keys:
#: ``step`` (int k), ``t`` (float), ``t_next`` (float or None at the final denoise), ``x`` (B, *shape) the
#: point evaluated, ``eps_cond`` / ``eps_uncond`` and ``x0_cond`` / ``x0_uncond`` (None unless both branches
#: were evaluated), ``eps`` and
#: ``x0`` (the guided, clipped predictions used for the update), ``x_next`` (None at the final denoise)
#: and ``forward_evals`` (network evaluations per row spent at this step, 1 or 2).
StepCallback = Callable[[dict[str, Any]], None]
#: A guidance function receives the same dict before the update (``eps``/``x0``/``x_next`` not yet set)
#: and returns the weight w, a float or a (B,) tensor.
GuidanceFn = Callable[[dict[str, Any]], "float | torch.Tensor"]


@dataclass
class SampleResult:
    """Output of a sampler.

    Attributes
    ----------
    x0 : Tensor, shape (B, *data_shape)
        Final samples: the denoised prediction at the last time for memgeo grids, the last iterate
        (the pipeline's final latents) for scheduler grids.
    ts : Tensor, shape (T,)
        Times at which the trajectory was recorded (decreasing).
    trajectory : Tensor or None, shape (T, B, *data_shape)
        x_t at each recorded time, when ``return_trajectory`` was set.
    """

    x0: torch.Tensor
    ts: torch.Tensor
    trajectory: torch.Tensor | None = None


@dataclass(frozen=True)
class SamplingGrid:
    """The times a sampler visits.

    Attributes
    ----------
    ts : Tensor, shape (steps + 1,), float64
        Decreasing memgeo times; step k evaluates the network at ts[k] and moves to ts[k + 1]
        (the last may be 0.0, the clean sample).
    timesteps : Tensor or None, shape (steps,)
        The scheduler's own timestep values (pipeline folders), for reports.
    eta : float
        0 for deterministic DDIM, 1 for DDPM's ancestral steps.
    final_denoise : bool
        Evaluate once more at ts[-1] and return the x0 prediction (memgeo's grids).
    source : str
        Where the grid comes from (``"uniform"`` or the scheduler's class name).
    ts_next : Tensor or None, shape (steps,)
        Where step k moves to when that is not ts[k + 1] (diffusers' DDIM moves to
        ``timesteps[k] - T // steps`` whatever the spacing).
    clip : (low, high) or None
        The scheduler's own x0 clipping (``clip_sample``), used when the caller gives none.
    """

    ts: torch.Tensor
    timesteps: torch.Tensor | None = None
    eta: float = 0.0
    final_denoise: bool = True
    source: str = "uniform"
    ts_next: torch.Tensor | None = None
    clip: tuple[float, float] | None = None

    def target(self, k: int) -> float:
        """The time step k moves to (``ts[k + 1]`` unless the scheduler's own rule says otherwise)."""
        return float(self.ts_next[k]) if self.ts_next is not None else float(self.ts[k + 1])

    def replace(self, **changes: Any) -> SamplingGrid:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def steps(self) -> int:
        return int(self.ts.shape[0]) - 1

    @property
    def evaluations(self) -> int:
        """Network evaluations of one sampling run (per branch): steps, plus one for the final denoise."""
        return self.steps + int(self.final_denoise)

    @classmethod
    def uniform(cls, steps: int, t_max: float = 1.0, t_min: float = 1e-3, eta: float = 0.0) -> SamplingGrid:
        """memgeo's continuous grid: ``steps + 1`` uniform times t_max -> t_min, then a final denoise."""
        return cls(ts=time_grid(steps, t_max, t_min), eta=eta)


def time_grid(steps: int, t_max: float = 1.0, t_min: float = 1e-3) -> torch.Tensor:
    """Uniform decreasing grid of ``steps + 1`` times from t_max to t_min, shape (steps + 1,)."""
    if steps < 1:
        raise MemgeoError(f"steps={steps}", "use at least one sampling step")
    if not 0 < t_min < t_max <= 1:
        raise MemgeoError(f"time range ({t_min}, {t_max}) is invalid", "need 0 < t_min < t_max <= 1")
    return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)


def model_grid(model: DiffusionModel, steps: int, t_max: float | None = None, t_min: float = 1e-3,
               eta: float | None = None) -> SamplingGrid:
    """The grid a model is sampled on: its scheduler's (pipeline folders) unless ``t_max`` is given.

    Parameters
    ----------
    steps : int
    t_max : float, optional
        First time of a uniform continuous grid; ``None`` takes the model's own grid (memgeo's own
        models: the uniform grid from t = 1).
    eta : float, optional
        Overrides the grid's eta (0 DDIM ... 1 DDPM).
    """
    grid = model.sampling_grid(steps) if t_max is None else None
    if grid is None:
        grid = SamplingGrid.uniform(steps, 1.0 if t_max is None else t_max, t_min)
    return grid if eta is None else grid.replace(eta=float(eta))


def _alpha_bar(model: DiffusionModel, t: float) -> float:
    return float(model.schedule.alpha_bar(torch.tensor(t, dtype=torch.float64))) if t > 0 else 1.0


def x0_from_eps(model: DiffusionModel, x: torch.Tensor, t: float, eps: torch.Tensor) -> torch.Tensor:
    """Denoised prediction (x_t - sigma_t eps) / psi_t, same shape as ``x``."""
    ab = _alpha_bar(model, t)
    return (x - (1 - ab) ** 0.5 * eps) / ab ** 0.5


def ddim_update(model: DiffusionModel, x0: torch.Tensor, eps: torch.Tensor, t: float, s: float, eta: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One update to time s from the predictions (x0, eps) made at time t (module docstring), shape of x0."""
    ab_t, ab_s = _alpha_bar(model, t), _alpha_bar(model, s)
    c = eta * ((1 - ab_s) / (1 - ab_t)) ** 0.5 * (1 - ab_t / ab_s) ** 0.5 if eta > 0 and ab_t < 1 else 0.0
    x_s = ab_s ** 0.5 * x0 + max(1 - ab_s - c * c, 0.0) ** 0.5 * eps
    if c > 0:
        x_s = x_s + c * torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return x_s


def ddim_step(model: DiffusionModel, x: torch.Tensor, t: float, s: float, eps: torch.Tensor,
              eta: float = 0.0, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One update x_t -> x_s given the predicted noise; returns (x_s, x0_hat)."""
    x0 = x0_from_eps(model, x, t, eps)
    return ddim_update(model, x0, eps, t, s, eta, generator), x0


def _predict(model: DiffusionModel, x: torch.Tensor, t: float, cond: torch.Tensor | None, both: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(eps_c, x0_c, eps_u, x0_u); the unconditional pair only when ``both`` (one batched 2B call)."""
    if not both:
        e, x0 = model.denoise(x, t, cond)
        return e, x0, None, None
    e_c, e_u, x0_c, x0_u = denoise_pair(model, x, t, cond)
    return e_c, x0_c, e_u, x0_u


def _weight(w: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    if isinstance(w, torch.Tensor) and w.ndim == 1:
        return w.to(dtype=x.dtype, device=x.device).reshape((-1,) + (1,) * (x.ndim - 1))
    return w


def sample(model: DiffusionModel, x: torch.Tensor, *, steps: int | None = None, grid: SamplingGrid | None = None,
           cond: torch.Tensor | None = None, guidance: float | GuidanceFn = 1.0, both: bool | None = None,
           clip: tuple[float, float] | None = None, generator: torch.Generator | None = None,
           callback: StepCallback | None = None, max_evals: int | None = None, progress: bool | str = False,
           return_trajectory: bool = False) -> SampleResult:
    """The sampler core: guided DDIM/DDPM on a :class:`SamplingGrid`; differentiable (wrap in ``no_grad`` to save memory).

    Parameters
    ----------
    model : DiffusionModel
    x : Tensor, shape (B, *data_shape)
        Initial point at ``grid.ts[0]`` (standard Gaussian noise at the start of a grid).
    steps : int, optional
        Build the model's own grid with this many steps (:func:`model_grid`); give ``steps`` or ``grid``.
    grid : SamplingGrid, optional
    cond : Tensor, optional
        Conditions (B,) labels or (B, L, E) encoded prompts; ``None`` samples unconditionally.
    guidance : float or callable
        Classifier-free guidance weight w in eps_u + w (eps_c - eps_u), or a function of the step dict
        returning w (a float or a (B,) tensor), called before each update.
    both : bool, optional
        Evaluate both branches at every step even when w is 0 or 1 (so that eps_cond / eps_uncond reach
        the callback). Default: only when the guidance needs them.
    clip : (low, high), optional
        Clamp the x0 prediction at every step (the data range); eps is made consistent with it.
    generator : torch.Generator, optional
        Randomness of stochastic (eta > 0) steps.
    callback : callable(dict), optional
        Called after every network evaluation with the step dict (see :data:`StepCallback`).
    max_evals : int, optional
        Stop after this many network evaluations (the first k steps), returning the current x_t as ``x0``.
    progress : bool or str
        Show a progress bar (a str names its task).
    return_trajectory : bool
        Keep x_t at every grid time visited.

    Returns
    -------
    SampleResult
    """
    if grid is None:
        if steps is None:
            raise MemgeoError("sample() needs steps or a grid", "pass steps=50 or grid=model_grid(model, 50)")
        grid = model_grid(model, int(steps))
    model.check_input(x, cond)
    if not 0.0 <= grid.eta <= 1.0:
        raise MemgeoError(f"eta={grid.eta} is outside [0, 1]", "use 0 for DDIM and 1 for DDPM")
    ts = grid.ts.tolist()
    n_evals = grid.evaluations if max_evals is None else min(int(max_evals), grid.evaluations)
    fixed_w = None if callable(guidance) else float(guidance)
    clip = clip if clip is not None else grid.clip
    pair = cond is not None and (bool(both) or fixed_w is None or fixed_w not in (0.0, 1.0))
    traj = [x] if return_trajectory else None
    desc = progress if isinstance(progress, str) else "sampling"
    for k in tqdm(range(n_evals), disable=not progress, desc=desc, leave=False):
        t = ts[k]
        final = k == grid.steps
        if pair:
            e_c, x0_c, e_u, x0_u = _predict(model, x, t, cond, True)
        else:
            e_c, x0_c, e_u, x0_u = _predict(model, x, t, None if fixed_w == 0.0 else cond, False)
        t_next = None if final else grid.target(k)
        info: dict[str, Any] = {"step": k, "t": t, "t_next": t_next, "x": x,
                                "eps_cond": e_c if pair else None, "eps_uncond": e_u,
                                "x0_cond": x0_c if pair else None, "x0_uncond": x0_u, "forward_evals": 2 if pair else 1}
        if pair:
            w = _weight(guidance(info) if fixed_w is None else fixed_w, x)
            eps, x0 = e_u + w * (e_c - e_u), x0_u + w * (x0_c - x0_u)
        else:
            eps, x0 = e_c, x0_c
        if clip is not None:
            x0 = x0.clamp(*clip)
            ab = _alpha_bar(model, t)
            eps = (x - ab ** 0.5 * x0) / (1 - ab) ** 0.5
        if final:
            x = x0
            x_next = None
        else:
            x = x_next = ddim_update(model, x0, eps, t, t_next, grid.eta, generator)
        info.update(eps=eps, x0=x0, x_next=x_next)
        if callback is not None:
            callback(info)
        if traj is not None and x_next is not None:
            traj.append(x)
    visited = grid.ts[: len(traj)] if traj is not None else grid.ts
    return SampleResult(x0=x, ts=visited.to(x.dtype), trajectory=torch.stack(traj) if traj is not None else None)


@torch.no_grad()
def sample_ddim(model: DiffusionModel, x: torch.Tensor, *, steps: int = 100, cond: torch.Tensor | None = None,
                guidance: float = 1.0, eta: float = 0.0, t_max: float | None = None, t_min: float = 1e-3,
                clip: tuple[float, float] | None = None, generator: torch.Generator | None = None,
                callback: StepCallback | None = None, progress: bool | str = False,
                return_trajectory: bool = False) -> SampleResult:
    """Sample by DDIM (``eta=0``) or any eta in [0, 1] (``eta=1`` is DDPM) on the model's grid; no gradients.

    :func:`sample` on ``model_grid(model, steps, t_max, t_min, eta)``: memgeo's own models on the uniform
    grid from ``t_max`` (default 1) with a final denoise at ``t_min``; pipeline folders on their
    scheduler's grid unless ``t_max`` is given. See :func:`sample` for the parameters.
    """
    if not 0.0 <= eta <= 1.0:
        raise MemgeoError(f"eta={eta} is outside [0, 1]", "use 0 for DDIM and 1 for DDPM")
    grid = model_grid(model, steps, t_max, t_min)
    grid = grid.replace(eta=max(eta, grid.eta))
    return sample(model, x, grid=grid, cond=cond, guidance=guidance, clip=clip, generator=generator,
                  callback=callback, progress=progress, return_trajectory=return_trajectory)


def sample_ddpm(model: DiffusionModel, x: torch.Tensor, *, steps: int = 1000, **kwargs: Any) -> SampleResult:
    """Ancestral DDPM sampling: :func:`sample_ddim` with ``eta=1``; same parameters."""
    return sample_ddim(model, x, steps=steps, eta=1.0, **kwargs)


#: Samplers by name (``sample_ddim`` and ``sample_ddpm``).
SAMPLERS: Registry[Callable[..., SampleResult]] = Registry(
    "sampler", {"ddim": sample_ddim, "ddpm": sample_ddpm})


def get_sampler(name: str) -> Callable[..., SampleResult]:
    """Look up a sampler by name (``"ddim"`` or ``"ddpm"``)."""
    return SAMPLERS.get(name)
