"""The one interface every diffusion model in memgeo exposes to the geometry layer.

A model is a noise predictor ``eps(x, t, cond)`` plus a :class:`VPSchedule`; the score follows as
``score = -eps / sigma(t)``. Implementations: trained networks (:mod:`memgeo.models.nets`) and exact
references (:mod:`memgeo.models.reference`). To add a model, subclass :class:`DiffusionModel` and
implement :meth:`eps` (or :meth:`score` and derive ``eps``); it must treat batch rows independently
(no batch norm) so that batched JVP/VJP give per-sample Jacobians.
"""

from __future__ import annotations

import torch
from torch import nn

from memgeo.errors import MemgeoError
from memgeo.models.schedule import VPSchedule


NULL_CLASS = -1
"""Condition value meaning "no condition" for a row; ``cond=None`` means it for the whole batch."""


def as_time(t: torch.Tensor | float, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or (B,) time to a (B,) tensor with ``like``'s dtype and device."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise MemgeoError(f"time has shape {tuple(t.shape)} but the batch has {batch} rows", "pass a scalar or (B,) t")
    return t


def expand_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor to broadcast against x of shape (B, ...)."""
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


class DiffusionModel(nn.Module):
    """Base class: a noise predictor on a VP schedule.

    Attributes
    ----------
    schedule : VPSchedule
    data_shape : tuple of int
        Shape of one sample, e.g. ``(1, 8, 8)`` or ``(2,)``.
    num_classes : int or None
        Number of condition classes; ``None`` for unconditional models. ``cond=None`` always
        means the null (unconditional) condition.
    """

    schedule: VPSchedule
    data_shape: tuple[int, ...]
    num_classes: int | None = None
    #: What the network outputs: "epsilon", "v_prediction", "sample" (x0) or "flow" (velocity eps - x0).
    prediction_type: str = "epsilon"

    @property
    def dim(self) -> int:
        """Flattened data dimension D."""
        d = 1
        for s in self.data_shape:
            d *= s
        return d

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise, shape (B, *data_shape), for x (B, *data_shape), t scalar or (B,), cond (B,) or None."""
        sigma = expand_like(self.schedule.sigma(as_time(t, x.shape[0], x)), x)
        return -sigma * self.score(x, t, cond)

    def score(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Score grad_x log p_t(x | cond) = -eps / sigma(t), shape (B, *data_shape)."""
        sigma = expand_like(self.schedule.sigma(as_time(t, x.shape[0], x)), x)
        return -self.eps(x, t, cond) / sigma

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted noise and clean sample (eps, x0), each (B, *data_shape), from one network call.

        Default: x0 = (x - sigma eps) / psi. Models whose network gives x0 more directly (flow
        matching, where psi = 0 at the first step) override this.
        """
        eps = self.eps(x, t, cond)
        if isinstance(t, (int, float)):
            ab = float(self.schedule.alpha_bar(torch.tensor(float(t), dtype=torch.float64)))
            return eps, (x - (1 - ab) ** 0.5 * eps) / ab ** 0.5
        tt = as_time(t, x.shape[0], x)
        psi = expand_like(self.schedule.sqrt_alpha_bar(tt), x)
        sigma = expand_like(self.schedule.sigma(tt), x)
        return eps, (x - sigma * eps) / psi

    def native_output(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """The network's raw output (eps, v or a flow velocity, see :attr:`prediction_type`), (B, *data_shape)."""
        return self.eps(x, t, cond)

    def sampling_grid(self, steps: int):
        """The model's own sampling grid (a :class:`~memgeo.models.sampling.SamplingGrid`), or ``None``.

        ``None`` (memgeo's own models) means memgeo's uniform continuous grid; pipeline folders return
        their scheduler's grid (``scheduler.set_timesteps(steps); scheduler.timesteps``).
        """
        return None

    def check_input(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> None:
        """Validate a batch against the model's data shape and condition classes."""
        if tuple(x.shape[1:]) != tuple(self.data_shape):
            raise MemgeoError(
                f"input has per-sample shape {tuple(x.shape[1:])} but the model expects {tuple(self.data_shape)}",
                "reshape the points to the model's data shape",
            )
        if cond is not None:
            self.check_cond(cond, x.shape[0])

    def check_cond(self, cond: torch.Tensor, batch: int) -> None:
        """Validate a condition batch; label models take (B,) integers. Prompt models override this."""
        if self.num_classes is None:
            raise MemgeoError("a condition was given to an unconditional model", "drop cond / --cond")
        if cond.shape != (batch,):
            raise MemgeoError(f"cond has shape {tuple(cond.shape)}, expected ({batch},)", "one label per row")

    def null_cond(self, cond: torch.Tensor) -> torch.Tensor:
        """The null ("no condition") counterpart of a condition batch, same shape as ``cond``.

        Label models use :data:`NULL_CLASS` per row; prompt models return the empty prompt's embedding.
        """
        return torch.full_like(cond, NULL_CLASS)


def model_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of a model's parameters or buffers (float32 when it has neither)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def guided_eps(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor | float,
               cond: torch.Tensor | None, guidance: float = 1.0) -> torch.Tensor:
    """Classifier-free guided noise eps_u + w (eps_c - eps_u); ``guidance=1`` is the plain conditional.

    Shapes as :meth:`DiffusionModel.eps`. With ``cond=None`` or ``guidance == 1`` one network call.
    """
    if cond is None or guidance == 1.0:
        return model.eps(x, t, cond)
    if guidance == 0.0:
        return model.eps(x, t, None)
    both = model.eps(torch.cat([x, x]), torch.cat([as_time(t, x.shape[0], x)] * 2),
                     torch.cat([cond, model.null_cond(cond)]))
    e_c, e_u = both.chunk(2)
    return e_u + guidance * (e_c - e_u)


def noise_difference(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor | float,
                     cond: torch.Tensor) -> torch.Tensor:
    """Conditional minus unconditional noise, eps(x, t, c) - eps(x, t, null), shape (B, *data_shape).

    The quantity behind the prompt-level memorization scores (Wen et al.'s norm, Jeon et al.'s
    Hessian-score product, SAIL). One batched network call on the stacked (2B) batch.
    """
    both = model.eps(torch.cat([x, x]), torch.cat([as_time(t, x.shape[0], x)] * 2),
                     torch.cat([cond, model.null_cond(cond)]))
    e_c, e_u = both.chunk(2)
    return e_c - e_u


def denoise_pair(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(eps_c, eps_u, x0_c, x0_u) of :meth:`DiffusionModel.denoise` from one batched call on the stacked 2B rows.

    The conditional and the null condition in one batch: 2 forward evaluations per row.
    """
    e, x0 = model.denoise(torch.cat([x, x]), torch.cat([as_time(t, x.shape[0], x)] * 2),
                          torch.cat([cond, model.null_cond(cond)]))
    e_c, e_u = e.chunk(2)
    x0_c, x0_u = x0.chunk(2)
    return e_c, e_u, x0_c, x0_u
