"""Generative adversarial networks: the GAN with the non-saturating generator loss and the WGAN-GP.

Two families share one model class, :class:`GAN`: an MLP generator G(z) pushing the standard normal
latent prior z ~ N(0, I_d) forward to data space, and an MLP discriminator (GAN) or critic (WGAN-GP)
D(x) giving one real number per sample. Neither network uses batch normalisation, so every output row
depends on its own input row only and per-sample Jacobians (of G for the geometry, of D for the gradient
penalty) are independent of the rest of the batch.

Objectives, written from the papers' definitions:

- GAN (Goodfellow et al., 2014, "Generative Adversarial Nets", eq. 1 and the remark in Sec. 3 that
  G should maximise log D(G(z)) instead of minimising log(1 - D(G(z))) early in training): D is trained
  with the binary cross-entropy of real-vs-fake on its logits (:func:`discriminator_loss`), G with the
  non-saturating loss -E log sigmoid(D(G(z))) (:func:`generator_loss_nonsaturating`). For a fixed G the
  optimal discriminator is D*(x) = p_data(x) / (p_data(x) + p_g(x)) (their Proposition 1).
- WGAN-GP (Gulrajani et al., 2017, "Improved Training of Wasserstein GANs", Algorithm 1): the critic
  minimises E D(G(z)) - E D(x) + lambda E (||grad D(x_hat)||_2 - 1)^2 at random interpolates
  x_hat = eps x + (1 - eps) G(z), eps ~ U[0, 1] per sample (:func:`wgan_critic_loss`,
  :func:`gradient_penalty`); the generator minimises -E D(G(z)) (:func:`wgan_generator_loss`).

Default hyper-parameters (resolved from ``kind`` by :class:`GANConfig`):

- WGAN-GP: lambda = 10, n_critic = 5, Adam with lr 1e-4, betas (0.0, 0.9) -- the values of
  Gulrajani et al., Algorithm 1 ("default values").
- GAN: n_critic = 1 (Goodfellow et al. use k = 1 step of D per step of G in their experiments), Adam with
  lr 2e-4, betas (0.5, 0.999) -- the Adam settings of DCGAN (Radford, Metz & Chintala, 2016, Sec. 4),
  which have become standard practice for the non-saturating GAN (the 2014 paper used momentum SGD).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from tqdm.auto import tqdm

from memgeo.errors import MemgeoError, check_scalar
from memgeo.models.generators import Generator, mlp

GANKind = Literal["gan", "wgan-gp"]

#: The per-family defaults (see the module docstring for their sources).
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "gan": {"n_critic": 1, "lr": 2e-4, "betas": (0.5, 0.999)},
    "wgan-gp": {"n_critic": 5, "lr": 1e-4, "betas": (0.0, 0.9)},
}


class GANConfig(BaseModel):
    """Hyper-parameters of :class:`GAN` and of its training (saved with every checkpoint).

    ``n_critic``, ``lr`` and ``betas`` left out (or ``None``) take the defaults of ``kind``:
    WGAN-GP 5 / 1e-4 / (0.0, 0.9) as in Gulrajani et al. (2017, Algorithm 1); GAN 1 / 2e-4 / (0.5, 0.999)
    as in DCGAN (Radford et al., 2016) practice. ``gp_weight`` (lambda, 10 in Gulrajani et al.) is used
    by the WGAN-GP only.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: GANKind = "gan"
    data_shape: tuple[int, ...]
    latent_dim: int = Field(2, ge=1)
    hidden: int = Field(128, ge=1)
    depth: int = Field(2, ge=1)
    gp_weight: float = Field(10.0, ge=0)
    n_critic: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        """Fill ``n_critic``, ``lr`` and ``betas`` from the kind's defaults where not given."""
        if not isinstance(data, dict):
            return data
        kind = data.get("kind", "gan")
        if kind not in KIND_DEFAULTS:
            raise MemgeoError(f"GAN kind={kind!r} is not known", "pass kind='gan' or kind='wgan-gp'")
        out = dict(data)
        for key, value in KIND_DEFAULTS[kind].items():
            if out.get(key) is None:
                out[key] = value
        return out

    @model_validator(mode="after")
    def _check(self) -> GANConfig:
        if not self.data_shape or any(int(s) < 1 for s in self.data_shape):
            raise MemgeoError(f"GAN data_shape={self.data_shape!r} must be non-empty with sizes >= 1",
                              "pass data_shape as e.g. (2,) or (1, 8, 8)")
        b1, b2 = self.betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise MemgeoError(f"GAN betas={self.betas!r} must both lie in [0, 1)", "pass Adam betas such as (0.5, 0.999)")
        return self


class GAN(Generator):
    """MLP generator G and MLP discriminator/critic D on flattened data.

    Parameters
    ----------
    config : GANConfig
        Shapes, widths and the training hyper-parameters; ``config.seed`` seeds the initial weights.

    Attributes
    ----------
    generator_net : nn.Sequential
        (B, latent_dim) -> (B, D) with D = prod(data_shape); ReLU hidden layers, linear output.
    discriminator : nn.Sequential
        (B, D) -> (B, 1); LeakyReLU(0.2) hidden layers (as in DCGAN's discriminator), linear output
        (logits for the GAN, critic values for the WGAN-GP).
    """

    def __init__(self, config: GANConfig) -> None:
        super().__init__(config.data_shape, config.latent_dim)
        self.config = config
        self.kind: str = config.kind
        dim = self.data_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.generator_net = mlp(self.latent_dim, [config.hidden] * config.depth, dim, nn.ReLU)
            self.discriminator = mlp(dim, [config.hidden] * config.depth, 1, nn.LeakyReLU(0.2))

    # --- protocol: sample, decode, prior_sample, prior_log_prob (no likelihood) -------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z ~ N(0, I), shape (n, latent_dim), on the model's device and dtype."""
        n = check_scalar(n, "n", int, min=1)
        p = next(self.parameters())
        return torch.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) per row: z (B, latent_dim) -> (B,)."""
        self._check_latent(z)
        return -0.5 * (z * z).sum(-1) - 0.5 * self.latent_dim * math.log(2 * math.pi)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The generator G: z (B, latent_dim) -> x (B, *data_shape). Differentiable (no ``no_grad``)."""
        self._check_latent(z)
        return self.generator_net(z).reshape(z.shape[0], *self.data_shape)

    def sample(self, n: int, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples G(z), z ~ N(0, I): (n, *data_shape), without gradients. Unconditional only."""
        if cond is not None:
            raise MemgeoError("a GAN/WGAN-GP is unconditional but cond was given", "call sample(n) without cond")
        with torch.no_grad():
            return self.decode(self.prior_sample(n, generator))

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        """D(x): x (B, *data_shape) -> (B,) (logits for the GAN, critic values for the WGAN-GP)."""
        return self.discriminator(self._flat(x, "critic input")).squeeze(-1)

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise MemgeoError(f"latent z has shape {tuple(z.shape)}, expected (B, {self.latent_dim})",
                              f"pass z of shape (B, {self.latent_dim})")


# --- losses ------------------------------------------------------------------------------------------
def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the discriminator's logits: -E log s(D(x)) - E log(1 - s(D(G(z)))).

    Parameters
    ----------
    d_real, d_fake : torch.Tensor
        Logits on real (B_r,) and generated (B_f,) samples.

    Returns
    -------
    torch.Tensor
        Scalar; minimised by D(x) = logit(p_data / (p_data + p_g)). Computed with softplus for stability
        (-log s(a) = softplus(-a), -log(1 - s(a)) = softplus(a)).
    """
    return nn.functional.softplus(-d_real).mean() + nn.functional.softplus(d_fake).mean()


def generator_loss_nonsaturating(d_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss -E log s(D(G(z))) from logits d_fake (B,); scalar."""
    return nn.functional.softplus(-d_fake).mean()


def wgan_critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Wasserstein critic loss E D(G(z)) - E D(x) (without the penalty); d_real (B_r,), d_fake (B_f,) -> scalar."""
    return d_fake.mean() - d_real.mean()


def wgan_generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """WGAN generator loss -E D(G(z)); d_fake (B,) -> scalar."""
    return -d_fake.mean()


def gradient_penalty(critic: Any, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Gulrajani et al.'s penalty E[(||grad_x D(x_hat)||_2 - 1)^2] at x_hat = eps real + (1 - eps) fake.

    Parameters
    ----------
    critic : callable
        (B, *S) -> (B,) or (B, 1); each output row must depend on its own input row only (no batch norm),
        so that the gradient of the summed output is the per-sample gradient.
    real, fake : torch.Tensor
        (B, *S) each.
    generator : torch.Generator, optional
        Draws eps as ``torch.rand(B, generator=generator)`` (one U[0, 1) number per sample, broadcast over
        the data dimensions), so that a caller with the same seed can recompute the interpolates.

    Returns
    -------
    torch.Tensor
        Scalar, differentiable w.r.t. the critic's parameters (``create_graph=True``); ``fake`` is used
        detached.
    """
    if real.shape != fake.shape or real.ndim < 2:
        raise MemgeoError(f"gradient_penalty needs real and fake of one shape (B, ...), got {tuple(real.shape)} "
                          f"and {tuple(fake.shape)}", "pass equal-sized batches of real and generated samples")
    b = real.shape[0]
    eps = torch.rand(b, generator=generator, dtype=real.dtype, device=real.device)
    eps = eps.reshape(b, *([1] * (real.ndim - 1)))
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    norm = grad.reshape(b, -1).norm(dim=1)
    return ((norm - 1.0) ** 2).mean()


# --- training ----------------------------------------------------------------------------------------
@dataclass
class GANTrainResult:
    """Loss histories of :func:`train_gan`.

    Attributes
    ----------
    critic_loss : list of float
        One entry per critic/discriminator step (``steps * n_critic`` of them); for the WGAN-GP the
        total E D(fake) - E D(real) + lambda GP.
    generator_loss : list of float
        One entry per generator step (``steps``).
    gradient_penalty : list of float
        One entry per critic step for the WGAN-GP (empty for the GAN).
    critic_steps, generator_steps : int
        How many optimiser steps each network took.
    seconds : float
        Wall time.
    """

    critic_loss: list[float] = field(default_factory=list)
    generator_loss: list[float] = field(default_factory=list)
    gradient_penalty: list[float] = field(default_factory=list)
    critic_steps: int = 0
    generator_steps: int = 0
    seconds: float = 0.0
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict, repr=False)


def train_gan(model: GAN, data: torch.Tensor, steps: int, batch: int,
              generator: torch.Generator | None = None, progress: bool | str = False,
              optimizers: dict[str, torch.optim.Optimizer] | None = None) -> GANTrainResult:
    """Train a :class:`GAN` in place: per generator step, ``config.n_critic`` critic steps.

    Each critic step draws a fresh real batch (uniformly with replacement) and a fresh fake batch;
    the GAN minimises :func:`discriminator_loss`, the WGAN-GP :func:`wgan_critic_loss` plus
    ``gp_weight`` times :func:`gradient_penalty`. Each generator step then minimises
    :func:`generator_loss_nonsaturating` (GAN) or :func:`wgan_generator_loss` (WGAN-GP) on a fresh
    latent batch. Both networks use Adam with ``config.lr`` and ``config.betas``.

    Parameters
    ----------
    model : GAN
        Trained in place.
    data : torch.Tensor
        (N, *data_shape) training set.
    steps : int
        Generator steps.
    batch : int
        Batch size of every real, fake and latent batch.
    generator : torch.Generator, optional
        Source of all randomness of the loop (batch indices, latents, interpolation weights).
    progress : bool or str, default False
        Show a progress bar; a str names it.
    optimizers : dict, optional
        ``{"generator": Adam, "critic": Adam}`` from an earlier result, to continue training.

    Returns
    -------
    GANTrainResult
        Loss histories and step counts (and the optimisers, for continuing).
    """
    import time

    if not isinstance(model, GAN):
        raise MemgeoError(f"train_gan needs a GAN model, got {type(model).__name__}", "build one with GAN(GANConfig(...))")
    steps = check_scalar(steps, "steps", int, min=1)
    batch = check_scalar(batch, "batch", int, min=1)
    if data.ndim < 2 or tuple(data.shape[1:]) != model.data_shape or data.shape[0] < 1:
        raise MemgeoError(f"training data has shape {tuple(data.shape)} but the model's data_shape is "
                          f"{model.data_shape}", "pass data of shape (N, *data_shape) with N >= 1")
    cfg = model.config
    wgan = cfg.kind == "wgan-gp"
    p = next(model.parameters())
    data = data.to(device=p.device, dtype=p.dtype)
    if optimizers is None:
        optimizers = {
            "generator": torch.optim.Adam(model.generator_net.parameters(), lr=cfg.lr, betas=cfg.betas),
            "critic": torch.optim.Adam(model.discriminator.parameters(), lr=cfg.lr, betas=cfg.betas),
        }
    opt_g, opt_d = optimizers["generator"], optimizers["critic"]
    result = GANTrainResult(optimizers=optimizers)
    n = data.shape[0]
    t0 = time.perf_counter()
    was_training = model.training
    model.train()
    desc = progress if isinstance(progress, str) else f"training {cfg.kind}"
    for _ in tqdm(range(steps), disable=not progress, desc=desc):
        for _ in range(cfg.n_critic):
            real = data[torch.randint(n, (batch,), generator=generator, device=p.device)]
            with torch.no_grad():
                fake = model.decode(model.prior_sample(batch, generator))
            d_real, d_fake = model.critic(real), model.critic(fake)
            if wgan:
                gp = gradient_penalty(model.critic, real, fake, generator)
                loss_d = wgan_critic_loss(d_real, d_fake) + cfg.gp_weight * gp
                result.gradient_penalty.append(gp.item())
            else:
                loss_d = discriminator_loss(d_real, d_fake)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            result.critic_loss.append(loss_d.item())
            result.critic_steps += 1
        fake = model.decode(model.prior_sample(batch, generator))
        d_fake = model.critic(fake)
        loss_g = wgan_generator_loss(d_fake) if wgan else generator_loss_nonsaturating(d_fake)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        # the generator step also put gradients in D; drop them so that they never leak into a critic step
        opt_d.zero_grad(set_to_none=True)
        result.generator_loss.append(loss_g.item())
        result.generator_steps += 1
    model.train(was_training)
    result.seconds = time.perf_counter() - t0
    return result
