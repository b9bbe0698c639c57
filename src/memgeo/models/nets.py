"""Trainable noise predictors: an MLP for small D (8x8 digits, 2-D toys) and a small UNet for 28x28.

Both condition on a class label through an embedding with one extra "null" row, which is what
condition dropout trains and classifier-free guidance queries. Activations are smooth (SiLU) so that
score Jacobians are well defined everywhere.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from memgeo.models.base import NULL_CLASS, DiffusionModel, as_time, expand_like
from memgeo.models.schedule import VPSchedule


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of continuous t in (0, 1] (scaled to DDPM's 0..1000 range), (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    args = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _class_index(cond: torch.Tensor | None, batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """Map cond (None or (B,) with NULL_CLASS for unconditional rows) to embedding rows 0..num_classes."""
    if cond is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    cond = cond.to(device=device, dtype=torch.long)
    return torch.where(cond == NULL_CLASS, torch.full_like(cond, num_classes), cond)


class MLPConfig(BaseModel):
    """Hyper-parameters of :class:`MLPEps` (saved with every checkpoint)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: Literal["mlp"] = "mlp"
    data_shape: tuple[int, ...]
    hidden: int = Field(512, ge=8)
    depth: int = Field(4, ge=1)
    time_dim: int = Field(128, ge=8)
    num_classes: int | None = Field(None, ge=1)
    schedule: VPSchedule = VPSchedule()
    prediction: Literal["eps", "x0"] = "eps"


def output_to_eps(raw: torch.Tensor, x: torch.Tensor, t: torch.Tensor, schedule: VPSchedule,
                  prediction: str) -> torch.Tensor:
    """Turn the network's raw output into the predicted noise, all shapes (B, *data_shape).

    ``"eps"``: the output is the noise. ``"x0"``: the output is the clean-data estimate D and
    eps = (x - psi_t D) / sigma_t. The x0 form matters for the geometry at small t: off the data manifold
    the exact score's Jacobian has eigenvalues -1/sigma_t^2, which an eps network must produce as a slope
    1/sigma_t that changes with t, whereas an x0 network only has to be flat there (dD/dx = 0); the
    sum of ~D such eigenvalues is what FLIPD reads, so small relative slope errors add up to whole
    dimensions (see docs/design.md).
    """
    if prediction == "eps":
        return raw
    psi = expand_like(schedule.sqrt_alpha_bar(t), x)
    sigma = expand_like(schedule.sigma(t), x)
    return (x - psi * raw) / sigma


class ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lin1 = nn.Linear(width, width)
        self.lin2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.lin2(nn.functional.silu(self.lin1(nn.functional.silu(self.norm(h) + emb))))


class MLPEps(DiffusionModel):
    """Residual MLP noise predictor on flattened data; x (B, *data_shape) -> eps of the same shape."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.schedule = config.schedule
        self.data_shape = tuple(config.data_shape)
        self.num_classes = config.num_classes
        d, h = self.dim, config.hidden
        self.inp = nn.Linear(d, h)
        self.time_mlp = nn.Sequential(nn.Linear(config.time_dim, h), nn.SiLU(), nn.Linear(h, h))
        self.class_emb = nn.Embedding(config.num_classes + 1, h) if config.num_classes else None
        self.blocks = nn.ModuleList(ResBlock(h) for _ in range(config.depth))
        self.out_norm = nn.LayerNorm(h)
        self.out = nn.Linear(h, d)

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x, cond)
        b = x.shape[0]
        tt = as_time(t, b, x)
        emb = self.time_mlp(timestep_embedding(tt, self.config.time_dim))
        if self.class_emb is not None:
            emb = emb + self.class_emb(_class_index(cond, b, self.num_classes, x.device))
        h = self.inp(x.reshape(b, -1))
        for block in self.blocks:
            h = block(h, emb)
        raw = self.out(nn.functional.silu(self.out_norm(h))).reshape(x.shape)
        return output_to_eps(raw, x, tt, self.schedule, self.config.prediction)


class UNetConfig(BaseModel):
    """Hyper-parameters of :class:`UNetEps`, a diffusers ``UNet2DModel`` without attention."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: Literal["unet"] = "unet"
    data_shape: tuple[int, int, int] = (1, 28, 28)
    channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = Field(1, ge=1)
    num_classes: int | None = Field(None, ge=1)
    schedule: VPSchedule = VPSchedule()
    prediction: Literal["eps", "x0"] = "eps"


class UNetEps(DiffusionModel):
    """Small attention-free UNet (diffusers ``UNet2DModel``) on images (B, C, H, W).

    H and W must be divisible by 2^(len(channels) - 1). Time enters as the continuous DDPM step
    1000 t; classes through diffusers' ``num_class_embeds`` with one extra null row.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.config = config
        self.schedule = config.schedule
        self.data_shape = tuple(config.data_shape)
        self.num_classes = config.num_classes
        c, hh, ww = config.data_shape
        n = len(config.channels)
        self.unet = UNet2DModel(
            sample_size=(hh, ww), in_channels=c, out_channels=c,
            block_out_channels=tuple(config.channels), layers_per_block=config.layers_per_block,
            down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
            add_attention=False, norm_num_groups=min(8, min(config.channels)),
            num_class_embeds=(config.num_classes + 1) if config.num_classes else None,
        )

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x, cond)
        b = x.shape[0]
        tt = as_time(t, b, x)
        labels = _class_index(cond, b, self.num_classes, x.device) if self.num_classes else None
        raw = self.unet(x, 1000.0 * tt, class_labels=labels).sample
        return output_to_eps(raw, x, tt, self.schedule, self.config.prediction)


ModelConfig = MLPConfig | UNetConfig


def build_model(config: ModelConfig) -> DiffusionModel:
    """Instantiate the network that ``config`` describes."""
    return MLPEps(config) if config.arch == "mlp" else UNetEps(config)


__all__ = ["MLPConfig", "MLPEps", "UNetConfig", "UNetEps", "ModelConfig", "build_model", "timestep_embedding",
           "expand_like"]
