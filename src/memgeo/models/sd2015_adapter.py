"""The 2015 diffusion (:class:`~memgeo.models.sd2015.SD2015Diffusion`) as a memgeo :class:`DiffusionModel`.

The geometry layer (FLIPD, sharpness, Jacobians) reads a score ``s(x, t)`` on memgeo's continuous
time t in (0, 1] with a VP schedule. The 2015 model has a score only at its integer steps k = 1..T
(``x_k`` after k forward steps, ``alpha_bar_k = prod_{i<=k} (1 - beta_i)``). The adapter

* uses :class:`~memgeo.models.schedule.DiscreteSchedule` with ``alphas_cumprod = (abar_1, ..., abar_T)``,
  which puts step k at t = k / T exactly (log alpha_bar linear in t between steps, 1 at t = 0);
* defines the score at continuous t by **linear interpolation in t** between the scores of the two
  neighbouring steps, ``u = t T``, ``k = floor(u)``, ``w = u - k``:
  ``s(x, t) = (1 - w) s_k(x) + w s_{k+1}(x)``. It is exact at every step (w = 0), continuous in t
  and as differentiable in x as the network, so score Jacobians (jacrev/jvp/vmap) work. Below the
  first step (t < 1/T, where the 2015 model has no score) the score of step 1 is used;
* ``eps(x, t) = -sigma(t) s(x, t)`` (the base class default).

Both neighbouring steps are evaluated in one batched network call.
"""

from __future__ import annotations

import torch

from memgeo.errors import MemgeoError
from memgeo.models.base import DiffusionModel, as_time, expand_like
from memgeo.models.schedule import DiscreteSchedule
from memgeo.models.sd2015 import SD2015Diffusion


class SD2015ScoreModel(DiffusionModel):
    """Unconditional :class:`DiffusionModel` view of a trained :class:`SD2015Diffusion`.

    Parameters
    ----------
    model : SD2015Diffusion
        The 2015 model (T >= 2); kept as the submodule ``inner`` (its weights are not copied).

    Attributes
    ----------
    schedule : DiscreteSchedule
        ``alphas_cumprod = (abar_1, ..., abar_T)``: step k sits at t = k / T.
    data_shape : tuple of int
    num_classes : None
    """

    num_classes = None
    prediction_type = "epsilon"

    def __init__(self, model: SD2015Diffusion) -> None:
        super().__init__()
        if not isinstance(model, SD2015Diffusion):
            raise MemgeoError(f"SD2015ScoreModel wraps an SD2015Diffusion, got {type(model).__name__}",
                              "pass a model of the sd2015 family")
        if model.T < 2:
            raise MemgeoError(f"the 2015 model has T={model.T} step, too few for a continuous-time schedule",
                              "use an sd2015 model with T >= 2")
        self.inner = model
        self.T = int(model.T)
        self.data_shape = tuple(int(s) for s in model.data_shape)
        abar = model.alpha_bar.detach().double().cpu()[1:]  # abar_1..abar_T
        self.schedule = DiscreteSchedule(alphas_cumprod=tuple(float(a) for a in abar))

    def step_score(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """The 2015 model's score ``(sqrt(1 - beta_k) mu_theta(x, k) - x) / beta_k`` at integer steps.

        Same formula as :meth:`SD2015Diffusion.score`, without its data-dependent input checks, so
        it runs under ``torch.func`` transforms.

        Parameters
        ----------
        x : Tensor, shape (m, D)
            Flattened states, in the inner model's dtype.
        steps : Tensor of int64, shape (m,)
            Steps in 1..T.

        Returns
        -------
        Tensor, shape (m, D)
        """
        mean, _ = self.inner.reverse_params(x, steps)
        beta = self.inner.betas[steps - 1][:, None].to(mean.dtype)
        return (torch.sqrt(1.0 - beta) * mean - x.to(mean.dtype)) / beta

    def score(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Score at memgeo time t, interpolated linearly in t between the neighbouring 2015 steps.

        Parameters
        ----------
        x : Tensor, shape (B, *data_shape)
        t : float or Tensor, shape () or (B,)
            memgeo time; step k of the 2015 model is t = k / T.
        cond : None
            The model is unconditional.

        Returns
        -------
        Tensor, shape (B, *data_shape)
        """
        if cond is not None:
            raise MemgeoError("the 2015 diffusion is unconditional but a condition was given", "drop cond / --cond")
        b = x.shape[0]
        tt = as_time(t, b, x)
        dtype = self.inner.betas.dtype
        xf = x.reshape(b, -1).to(dtype)
        u = (tt.to(torch.float64) * self.T).clamp(1.0, float(self.T))
        k = torch.floor(u).clamp(max=self.T - 1)  # left step in 1..T-1
        w = expand_like((u - k).to(dtype), xf)
        k = k.long()
        both = self.step_score(torch.cat([xf, xf]), torch.cat([k, k + 1]))
        s_lo, s_hi = both[:b], both[b:]
        return ((1.0 - w) * s_lo + w * s_hi).to(x.dtype).reshape(x.shape)


def as_diffusion_model(model: object) -> object:
    """Wrap an :class:`SD2015Diffusion` in :class:`SD2015ScoreModel`; anything else is returned unchanged."""
    return SD2015ScoreModel(model) if isinstance(model, SD2015Diffusion) else model
