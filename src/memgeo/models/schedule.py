"""The variance-preserving (VP / DDPM) noise schedule in continuous time.

x_t = sqrt(alpha_bar(t)) x_0 + sigma(t) eps, sigma(t) = sqrt(1 - alpha_bar(t)), t in (0, 1].
With beta(t) = beta_min + t (beta_max - beta_min) the log signal rate integrates in closed form:
log alpha_bar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2). The defaults (0.1, 20) are the
continuous limit of DDPM's 1000 linear betas 1e-4 ... 0.02, so step k of a 1000-step diffusers
scheduler corresponds to t = (k + 1) / 1000.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from memgeo.errors import MemgeoError


class _FromLogAlphaBar:
    """alpha_bar, psi and sigma of any schedule that defines ``log_alpha_bar(t)``."""

    def log_alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """Signal power alpha_bar(t) in (0, 1], same shape as ``t``."""
        return torch.exp(self.log_alpha_bar(t))

    def sqrt_alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """Signal scale psi(t) = sqrt(alpha_bar(t))."""
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Noise scale sigma(t) = sqrt(1 - alpha_bar(t)); ``-expm1`` keeps precision at small t."""
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))


class VPSchedule(_FromLogAlphaBar, BaseModel):
    """Linear-beta VP schedule.

    Parameters
    ----------
    beta_min, beta_max : float
        Endpoints of the linear beta(t); defaults match DDPM's linear 1e-4 ... 0.02 over 1000 steps.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    beta_min: float = Field(0.1, gt=0)
    beta_max: float = Field(20.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> VPSchedule:
        if self.beta_max < self.beta_min:
            raise MemgeoError(f"beta_max={self.beta_max} < beta_min={self.beta_min}", "swap them")
        return self

    # --- closed forms -------------------------------------------------------------------------
    def log_alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """log alpha_bar(t), same shape as ``t``."""
        t = torch.as_tensor(t, dtype=torch.get_default_dtype()) if not isinstance(t, torch.Tensor) else t
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t)

    def beta(self, t: torch.Tensor | float) -> torch.Tensor:
        """Instantaneous beta(t)."""
        t = torch.as_tensor(t) if not isinstance(t, torch.Tensor) else t
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def t_from_sigma(self, sigma: float) -> float:
        """Invert sigma(t): the t at which the noise scale equals ``sigma`` (0 < sigma < sigma(1))."""
        s_max = float(self.sigma(1.0))
        if not 0.0 < sigma < s_max:
            raise MemgeoError(f"sigma={sigma} is outside (0, {s_max:.4f})", "pick a noise level inside the schedule")
        # Solve (beta_max - beta_min)/2 t^2 + beta_min t + log(1 - sigma^2) = 0 for t > 0.
        a = 0.5 * (self.beta_max - self.beta_min)
        c = math.log1p(-sigma * sigma)
        b = self.beta_min
        if a == 0:
            return -c / b
        return (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)

    # --- diffusers interoperability ---------------------------------------------------------
    def diffusers_betas(self, num_train_timesteps: int = 1000) -> tuple[float, float]:
        """(beta_start, beta_end) of the equivalent diffusers ``"linear"`` schedule."""
        n = num_train_timesteps
        return self.beta_min / n, self.beta_max / n

    def to_diffusers(self, kind: str = "ddim", num_train_timesteps: int = 1000, **kwargs):
        """Build the equivalent diffusers scheduler (``"ddpm"`` or ``"ddim"``).

        Discrete step k in 0..N-1 corresponds to continuous time t = (k + 1) / N
        (see :meth:`t_from_timestep`); ``alphas_cumprod[k]`` agrees with ``alpha_bar(t)`` to O(1/N).
        """
        from diffusers import DDIMScheduler, DDPMScheduler

        start, end = self.diffusers_betas(num_train_timesteps)
        common = dict(num_train_timesteps=num_train_timesteps, beta_start=start, beta_end=end,
                      beta_schedule="linear", prediction_type="epsilon", clip_sample=False)
        if kind == "ddpm":
            return DDPMScheduler(**common, **kwargs)
        if kind == "ddim":
            return DDIMScheduler(**common, set_alpha_to_one=False, **kwargs)
        raise MemgeoError(f"unknown diffusers scheduler kind {kind!r}", "use 'ddpm' or 'ddim'")

    @staticmethod
    def t_from_timestep(k: torch.Tensor | int, num_train_timesteps: int = 1000) -> torch.Tensor:
        """Continuous t for a diffusers integer timestep ``k``."""
        return (torch.as_tensor(k, dtype=torch.get_default_dtype()) + 1.0) / num_train_timesteps


class DiscreteSchedule(_FromLogAlphaBar, BaseModel):
    """A discrete diffusers schedule (``alphas_cumprod`` of T training steps) in memgeo's continuous time.

    Step k in 0..T-1 sits at t = (k + 1) / T (as for :meth:`VPSchedule.t_from_timestep`); between
    the knots t = 0 (alpha_bar = 1) and t = k/T, log alpha_bar is interpolated linearly, so the
    schedule is continuous, strictly decreasing where the betas are positive, and exact at every
    training step. It offers the methods the samplers and the geometry use from :class:`VPSchedule`.

    Parameters
    ----------
    alphas_cumprod : tuple of float
        diffusers' ``scheduler.alphas_cumprod``, decreasing, in (0, 1].
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    alphas_cumprod: tuple[float, ...] = Field(..., min_length=2)

    @model_validator(mode="after")
    def _decreasing(self) -> DiscreteSchedule:
        a = torch.tensor(self.alphas_cumprod, dtype=torch.float64)
        if not (torch.all(a > 0) and torch.all(a <= 1) and torch.all(a[1:] <= a[:-1])):
            raise MemgeoError("alphas_cumprod must be non-increasing values in (0, 1]", "check the scheduler config")
        return self

    @classmethod
    def from_scheduler(cls, scheduler) -> DiscreteSchedule:
        """The schedule of a diffusers scheduler (anything with ``alphas_cumprod``)."""
        return cls(alphas_cumprod=tuple(float(a) for a in scheduler.alphas_cumprod))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def _knots(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_train_timesteps
        log_a = torch.log(torch.tensor(self.alphas_cumprod, dtype=torch.float64))
        ts = torch.arange(n + 1, dtype=torch.float64) / n
        return ts.to(dtype), torch.cat([torch.zeros(1, dtype=torch.float64), log_a]).to(dtype)

    def log_alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """log alpha_bar(t), piecewise linear in t through the knots, same shape as ``t``."""
        t = torch.as_tensor(t, dtype=torch.get_default_dtype()) if not isinstance(t, torch.Tensor) else t
        ts, la = self._knots(t.dtype if t.is_floating_point() else torch.get_default_dtype())
        ts, la = ts.to(t.device), la.to(t.device)
        n = self.num_train_timesteps
        tc = t.clamp(0.0, 1.0)
        k = torch.clamp(torch.floor(tc * n).long(), max=n - 1)  # segment [k/n, (k+1)/n]
        w = tc * n - k.to(tc.dtype)
        return la[k] + w * (la[k + 1] - la[k])

    def beta(self, t: torch.Tensor | float) -> torch.Tensor:
        """-d/dt log alpha_bar(t) on the segment holding t (piecewise constant)."""
        t = torch.as_tensor(t, dtype=torch.get_default_dtype()) if not isinstance(t, torch.Tensor) else t
        _, la = self._knots(t.dtype)
        n = self.num_train_timesteps
        k = torch.clamp(torch.floor(t.clamp(0.0, 1.0) * n).long(), max=n - 1)
        return -(la[k + 1] - la[k]) * n

    def t_from_sigma(self, sigma: float) -> float:
        """Invert sigma(t) on the piecewise-linear log alpha_bar (0 < sigma < sigma(1))."""
        s_max = float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))
        if not 0.0 < sigma < s_max:
            raise MemgeoError(f"sigma={sigma} is outside (0, {s_max:.4f})", "pick a noise level inside the schedule")
        target = math.log1p(-sigma * sigma)
        _, la = self._knots(torch.float64)
        k = int(torch.searchsorted(-la, torch.tensor([-target], dtype=torch.float64))[0]) - 1
        k = min(max(k, 0), self.num_train_timesteps - 1)
        lo, hi = float(la[k]), float(la[k + 1])
        w = 0.0 if hi == lo else (target - lo) / (hi - lo)
        return (k + w) / self.num_train_timesteps

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """Continuous diffusers timestep k = t T - 1 for memgeo time t (exact at the training steps)."""
        return (t * self.num_train_timesteps - 1.0).clamp(0.0, self.num_train_timesteps - 1.0)
