"""The protocol every non-diffusion generative model (VAE, GAN, ...) follows.

A :class:`Generator` maps noise to data. Only :meth:`Generator.sample` is required; the other
methods are optional *capabilities* that raise :class:`NotImplementedError` unless a subclass
provides them, and :meth:`Generator.has` tells which ones it provides, so that geometry and
memorization code can ask ``model.has("decode")`` before using a decoder Jacobian, or
``model.has("elbo")`` before scoring likelihoods.

Capabilities
------------
``decode(z)``
    Deterministic map from latents ``(n, latent_dim)`` to data ``(n, *data_shape)`` (decoder mean
    of a VAE, generator network of a GAN).
``prior_sample(n, generator)`` / ``prior_log_prob(z)``
    Sample latents ``(n, latent_dim)`` from the prior / its log-density ``(n,)``.
``log_prob(x)``
    Exact log-likelihood ``(n,)``.
``elbo(x)`` / ``iw_bound(x, k)``
    Evidence lower bound / importance-weighted bound with ``k`` samples, per point ``(n,)``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from memgeo.errors import MemgeoError

#: The optional capabilities, by method name.
CAPABILITIES: tuple[str, ...] = ("decode", "prior_sample", "prior_log_prob", "log_prob", "elbo", "iw_bound", "score")


def mlp(d_in: int, hidden: Sequence[int], d_out: int, act: type[nn.Module] | nn.Module = nn.SiLU) -> nn.Sequential:
    """Linear layers ``d_in -> hidden... -> d_out`` with ``act`` between them (one Linear if ``hidden`` is empty).

    No normalisation layers, so every sample is processed independently (per-sample Jacobians stay exact).
    ``act`` is a module class (a fresh instance per layer) or an instance (shared; stateless activations only).
    """
    layers: list[nn.Module] = []
    d = d_in
    for h in hidden:
        layers += [nn.Linear(d, h), act() if isinstance(act, type) else act]
        d = h
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """Abstract base of generative models that sample data from latent noise.

    Attributes
    ----------
    data_shape : tuple of int
        Shape of one data point (e.g. ``(2,)`` or ``(1, 28, 28)``).
    latent_dim : int
        Dimension of the flattened latent code.
    """

    data_shape: tuple[int, ...]
    latent_dim: int

    def __init__(self, data_shape: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.latent_dim = int(latent_dim)

    @property
    def data_dim(self) -> int:
        """Number of entries of one flattened data point."""
        out = 1
        for s in self.data_shape:
            out *= s
        return out

    @abstractmethod
    def sample(self, n: int, cond: Any = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples, shape ``(n, *data_shape)``; ``cond`` is an optional condition."""

    # --- optional capabilities ------------------------------------------------------------------
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(n, latent_dim)`` -> data ``(n, *data_shape)`` (deterministic)."""
        raise NotImplementedError(f"{type(self).__name__} has no decode")

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents ``(n, latent_dim)`` drawn from the prior."""
        raise NotImplementedError(f"{type(self).__name__} has no prior_sample")

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Prior log-density of latents ``(n, latent_dim)`` -> ``(n,)``."""
        raise NotImplementedError(f"{type(self).__name__} has no prior_log_prob")

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-likelihood of data ``(n, *data_shape)`` -> ``(n,)``."""
        raise NotImplementedError(f"{type(self).__name__} has no log_prob")

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Evidence lower bound of data ``(n, *data_shape)`` -> ``(n,)``."""
        raise NotImplementedError(f"{type(self).__name__} has no elbo")

    def iw_bound(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Importance-weighted bound with ``k`` samples of data ``(n, *data_shape)`` -> ``(n,)``."""
        raise NotImplementedError(f"{type(self).__name__} has no iw_bound")

    def score(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """Score of the noised data at diffusion step/time ``t`` (diffusion families), shape of ``x``."""
        raise NotImplementedError(f"{type(self).__name__} has no score")

    def has(self, capability: str) -> bool:
        """Whether this model provides an optional capability (a name in :data:`CAPABILITIES`).

        Raises
        ------
        MemgeoError
            If ``capability`` is not a known capability name.
        """
        if capability not in CAPABILITIES:
            raise MemgeoError(f"unknown generator capability {capability!r}",
                              f"choose one of: {', '.join(CAPABILITIES)}")
        return getattr(type(self), capability) is not getattr(Generator, capability)

    def _flat(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Check that ``x`` has shape ``(n, *data_shape)`` and return it flattened to ``(n, data_dim)``."""
        if x.ndim != len(self.data_shape) + 1 or tuple(x.shape[1:]) != self.data_shape:
            raise MemgeoError(f"{name} has shape {tuple(x.shape)} but the model expects (n, *{self.data_shape})",
                              "pass a batch of data points of the model's data shape")
        return x.reshape(x.shape[0], -1)
