"""Variational autoencoders: Gaussian-latent (Kingma & Welling, AEVB) and categorical-latent with the
Gumbel-Softmax / Concrete relaxation (Jang, Gu & Poole; Maddison, Mnih & Teh).

* :class:`VAE` (config :class:`VAEConfig`): prior p(z) = N(0, I), encoder
  q(z|x) = N(mu(x), diag sigma^2(x)), decoder p(x|z) Gaussian (mean and, if learned, log-variance)
  or Bernoulli (logits; data in [0, 1]). :meth:`VAE.elbo` (analytic KL to the prior),
  :meth:`VAE.iw_bound` (the importance-weighted bound of Burda, Grosse & Salakhutdinov).
* :class:`GumbelSoftmaxVAE` (config :class:`GumbelVAEConfig`): ``n_latent`` categorical variables with
  ``n_categories`` classes each, a uniform categorical prior, relaxed samples at an annealed temperature
  ``tau = max(tau_min, tau0 * exp(-anneal_rate * step))``, optional straight-through (``hard``) samples.
* :func:`gumbel_softmax_sample`: the relaxed (or straight-through) sample of a categorical.
* :func:`train_vae`: Adam on the negative ELBO with reparameterised samples.

Network layout (so that weights can be set by hand, e.g. to the probabilistic-PCA optimum): with
``hidden=()`` both networks are one :class:`torch.nn.Linear` layer. The encoder's output is
``[mu, log sigma^2]`` (VAE) or the flattened logits ``(n_latent, n_categories)`` (Gumbel-Softmax VAE);
the decoder's output is ``[mean]`` or ``[mean, log-variance]`` (Gaussian, learned variance) or
``[logits]`` (Bernoulli), each flattened over ``data_shape``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from memgeo.errors import MemgeoError, check_finite, check_scalar
from memgeo.models.generators import Generator, mlp

_LOG_2PI = math.log(2.0 * math.pi)


class _DecoderConfig(BaseModel):
    """Fields shared by both VAE configs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_shape: tuple[int, ...] = Field(..., min_length=1)
    hidden: tuple[int, ...] = (64, 64)
    decoder: Literal["gaussian", "bernoulli"] = "gaussian"
    decoder_variance: Literal["learned", "fixed"] = "learned"
    sigma2: float = Field(1.0, gt=0.0, description="fixed decoder variance (Gaussian, decoder_variance='fixed')")
    seed: int = 0


class VAEConfig(_DecoderConfig):
    """Hyper-parameters of :class:`VAE`.

    Attributes
    ----------
    data_shape : tuple of int
        Shape of one data point.
    latent_dim : int
        Dimension of the Gaussian latent z.
    hidden : tuple of int
        Hidden widths of the encoder and decoder MLPs (``()``: linear encoder and decoder).
    decoder : {"gaussian", "bernoulli"}
        Likelihood p(x|z). Bernoulli takes data in [0, 1] (non-binary values give the usual
        cross-entropy, which is not a normalised density).
    decoder_variance : {"learned", "fixed"}
        Gaussian decoder: per-dimension log-variance output by the decoder, or the constant ``sigma2``.
    sigma2 : float
        The fixed decoder variance.
    seed : int
        Seed of the weight initialisation.
    """

    arch: Literal["vae"] = "vae"
    latent_dim: int = Field(2, ge=1)


class GumbelVAEConfig(_DecoderConfig):
    """Hyper-parameters of :class:`GumbelSoftmaxVAE` (decoder fields as in :class:`VAEConfig`).

    Attributes
    ----------
    n_latent, n_categories : int
        Number of categorical latent variables and classes per variable (Jang et al. use 30 x 10 on MNIST).
    tau0, tau_min, anneal_rate : float
        Temperature schedule ``tau(step) = max(tau_min, tau0 * exp(-anneal_rate * step))``
        (Jang et al.: tau0 = 1, tau_min = 0.5, rate 1e-5 to 1e-4).
    hard : bool
        Straight-through samples: one-hot forward values, the relaxed sample's gradient.
    """

    arch: Literal["gsvae"] = "gsvae"
    n_latent: int = Field(4, ge=1)
    n_categories: int = Field(4, ge=2)
    tau0: float = Field(1.0, gt=0.0)
    tau_min: float = Field(0.5, gt=0.0)
    anneal_rate: float = Field(3e-5, ge=0.0)
    hard: bool = False


class _DecoderMixin(Generator):
    """Decoder p(x|z) and its log-likelihood, shared by both VAEs."""

    decoder_net: nn.Sequential
    _cfg: _DecoderConfig

    def _build_decoder(self, cfg: _DecoderConfig) -> None:
        self._cfg = cfg
        self._learned_var = cfg.decoder == "gaussian" and cfg.decoder_variance == "learned"
        self.decoder_net = mlp(self.latent_dim, cfg.hidden, self.data_dim * (2 if self._learned_var else 1))
        # dtype/device reference only (the fixed variance is read from the config, in full precision)
        self.register_buffer("_ref", torch.zeros(()), persistent=False)

    def _decoder_out(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents ``(..., latent_dim)`` -> (mean or logits ``(..., data_dim)``, log-variance or None)."""
        out = self.decoder_net(z)
        if self._cfg.decoder == "bernoulli":
            return out, None
        if self._learned_var:
            return out[..., : self.data_dim], out[..., self.data_dim:]
        return out, torch.full_like(out, math.log(self._cfg.sigma2))

    def _log_lik(self, x_flat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) for ``x_flat (n, D)`` and ``z (..., n, latent_dim)`` -> ``(..., n)``."""
        a, logvar = self._decoder_out(z)
        if logvar is None:
            return -F.binary_cross_entropy_with_logits(a, x_flat.expand_as(a), reduction="none").sum(-1)
        return -0.5 * (_LOG_2PI + logvar + (x_flat - a) ** 2 * torch.exp(-logvar)).sum(-1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder mean (Gaussian) or success probability (Bernoulli).

        Parameters
        ----------
        z : Tensor, shape (n, latent_dim)

        Returns
        -------
        Tensor, shape (n, *data_shape)
        """
        a, _ = self._decoder_out(z)
        if self._cfg.decoder == "bernoulli":
            a = torch.sigmoid(a)
        return a.reshape(z.shape[0], *self.data_shape)

    def _check_data(self, x: torch.Tensor) -> torch.Tensor:
        xf = self._flat(x)
        check_finite(xf, "x")
        if self._cfg.decoder == "bernoulli" and (xf.min() < 0 or xf.max() > 1):
            raise MemgeoError("x has values outside [0, 1] but the decoder is Bernoulli",
                              "rescale the data to [0, 1] or use decoder='gaussian'")
        return xf.to(self._ref.dtype)

    def sample(self, n: int, cond: Any = None, generator: torch.Generator | None = None,
               noise: bool = False) -> torch.Tensor:
        """Decode ``n`` prior draws.

        Parameters
        ----------
        n : int
            Number of samples.
        cond : None
            Unconditional models only.
        generator : torch.Generator, optional
            Source of the randomness.
        noise : bool, default False
            Add the decoder's noise (draw x ~ p(x|z)) instead of returning its mean / probabilities.

        Returns
        -------
        Tensor, shape (n, *data_shape), the model's dtype
        """
        n = check_scalar(n, "n", int, min=1)
        if cond is not None:
            raise MemgeoError("VAEs are unconditional but cond was given", "pass cond=None")
        with torch.no_grad():
            z = self.prior_sample(n, generator)
            if not noise:
                return self.decode(z)
            a, logvar = self._decoder_out(z)
            dev = a.device
            if logvar is None:
                u = torch.rand(a.shape, generator=generator, device=dev, dtype=a.dtype)
                x = (u < torch.sigmoid(a)).to(a.dtype)
            else:
                x = a + torch.exp(0.5 * logvar) * torch.randn(a.shape, generator=generator, device=dev, dtype=a.dtype)
            return x.reshape(n, *self.data_shape)


class VAE(_DecoderMixin):
    """Gaussian-latent variational autoencoder (Kingma & Welling).

    Parameters
    ----------
    config : VAEConfig
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config.data_shape, config.latent_dim)
        self.config = config
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG left untouched
            torch.manual_seed(config.seed)
            self.encoder_net = mlp(self.data_dim, config.hidden, 2 * self.latent_dim)
            self._build_decoder(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters.

        Parameters
        ----------
        x : Tensor, shape (n, *data_shape)

        Returns
        -------
        mu, logvar : Tensor, shape (n, latent_dim) each
        """
        out = self.encoder_net(self._check_data(x))
        return out[:, : self.latent_dim], out[:, self.latent_dim:]

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I), shape ``(n, latent_dim)``."""
        p = self._ref
        return torch.randn((n, self.latent_dim), generator=generator, device=p.device, dtype=p.dtype)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) for ``z (..., latent_dim)`` -> ``(...)``."""
        return -0.5 * (z**2 + _LOG_2PI).sum(-1)

    def _posterior_draws(self, mu: torch.Tensor, logvar: torch.Tensor, k: int,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """k reparameterised draws ``(k, n, latent_dim)`` and their log q(z|x) ``(k, n)``."""
        eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        log_q = -0.5 * (_LOG_2PI + logvar + eps**2).sum(-1)
        return z, log_q

    def elbo(self, x: torch.Tensor, n_samples: int = 1, generator: torch.Generator | None = None,
             analytic_kl: bool = True) -> torch.Tensor:
        """Evidence lower bound E_q[log p(x|z)] - KL(q(z|x) || p(z)) per point.

        Parameters
        ----------
        x : Tensor, shape (n, *data_shape)
        n_samples : int, default 1
            Reparameterised draws averaged for the expectation.
        generator : torch.Generator, optional
        analytic_kl : bool, default True
            Closed-form Gaussian KL (Kingma & Welling, appendix B); ``False`` uses the single-sample
            estimate log p(x|z) + log p(z) - log q(z|x), which equals log p(x) exactly for every draw
            when q is the true posterior.

        Returns
        -------
        Tensor, shape (n,)
        """
        n_samples = check_scalar(n_samples, "n_samples", int, min=1)
        xf = self._check_data(x)
        mu, logvar = self.encode(x)
        z, log_q = self._posterior_draws(mu, logvar, n_samples, generator)
        log_lik = self._log_lik(xf, z)
        if analytic_kl:
            kl = 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar).sum(-1)
            return log_lik.mean(0) - kl
        return (log_lik + self.prior_log_prob(z) - log_q).mean(0)

    def iw_bound(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Importance-weighted bound log (1/k) sum_j p(x, z_j) / q(z_j|x), z_j ~ q(z|x) (Burda et al.).

        Parameters
        ----------
        x : Tensor, shape (n, *data_shape)
        k : int
            Number of importance samples (k = 1 is the single-sample ELBO; it tightens as k grows).
        generator : torch.Generator, optional

        Returns
        -------
        Tensor, shape (n,)
        """
        k = check_scalar(k, "k", int, min=1)
        xf = self._check_data(x)
        mu, logvar = self.encode(x)
        z, log_q = self._posterior_draws(mu, logvar, k, generator)
        log_w = self._log_lik(xf, z) + self.prior_log_prob(z) - log_q
        return torch.logsumexp(log_w, 0) - math.log(k)


def gumbel_softmax_sample(logits: torch.Tensor, tau: float, hard: bool = False,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Relaxed one-hot sample softmax((logits + g) / tau), g i.i.d. Gumbel(0, 1), over the last axis.

    Its argmax is an exact draw from Categorical(softmax(logits)) for every tau; as tau -> 0 the sample
    tends to that one-hot vector.

    Parameters
    ----------
    logits : Tensor, shape (..., K)
        Unnormalised log-probabilities.
    tau : float
        Temperature, > 0.
    hard : bool, default False
        Straight-through: return the exact one-hot argmax in the forward pass with the relaxed
        sample's gradient.
    generator : torch.Generator, optional

    Returns
    -------
    Tensor, shape (..., K), rows on the simplex
    """
    tau = check_scalar(tau, "tau", float, min=0.0, include_min=False)
    tiny = torch.finfo(logits.dtype).tiny
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    e = (-torch.log(u.clamp_min(tiny))).clamp_min(tiny)  # Exp(1) draw, kept > 0
    g = -torch.log(e)  # Gumbel(0, 1)
    y = torch.softmax((logits + g) / tau, dim=-1)
    if not hard:
        return y
    one_hot = F.one_hot(y.argmax(-1), logits.shape[-1]).to(y.dtype)
    return one_hot + (y - y.detach())  # y - y.detach() is exactly 0: forward values are exactly one-hot


class GumbelSoftmaxVAE(_DecoderMixin):
    """Categorical-latent VAE trained with the Gumbel-Softmax relaxation (Jang, Gu & Poole).

    The latent is ``n_latent`` one-hot vectors of length ``n_categories``, flattened to
    ``latent_dim = n_latent * n_categories``; the prior is uniform over the categories.

    Parameters
    ----------
    config : GumbelVAEConfig
    """

    def __init__(self, config: GumbelVAEConfig) -> None:
        super().__init__(config.data_shape, config.n_latent * config.n_categories)
        self.config = config
        self.n_latent, self.n_categories = config.n_latent, config.n_categories
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.encoder_net = mlp(self.data_dim, config.hidden, self.latent_dim)
            self._build_decoder(config)
        self.step = 0

    @property
    def tau(self) -> float:
        """Current temperature ``max(tau_min, tau0 * exp(-anneal_rate * step))``."""
        c = self.config
        return max(c.tau_min, c.tau0 * math.exp(-c.anneal_rate * self.step))

    def set_step(self, step: int) -> None:
        """Set the training step that drives the temperature schedule."""
        self.step = check_scalar(step, "step", int, min=0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior logits, shape ``(n, n_latent, n_categories)``, for ``x (n, *data_shape)``."""
        return self.encoder_net(self._check_data(x)).reshape(-1, self.n_latent, self.n_categories)

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform one-hot latents, shape ``(n, latent_dim)``."""
        p = self._ref
        idx = torch.randint(self.n_categories, (n, self.n_latent), generator=generator, device=p.device)
        return F.one_hot(idx, self.n_categories).to(p.dtype).reshape(n, self.latent_dim)

    def kl_to_prior(self, logits: torch.Tensor) -> torch.Tensor:
        """KL(q || uniform) = sum over latents of sum_k q_k (log q_k + log K); ``(n, L, K)`` -> ``(n,)``."""
        log_q = torch.log_softmax(logits, -1)
        return (log_q.exp() * (log_q + math.log(self.n_categories))).sum((-1, -2))

    def elbo(self, x: torch.Tensor, n_samples: int = 1, generator: torch.Generator | None = None,
             tau: float | None = None, hard: bool | None = None) -> torch.Tensor:
        """Relaxed ELBO E_q[log p(x|z)] - KL(q || uniform) per point (Jang et al.'s training objective).

        The expectation uses Gumbel-Softmax samples at temperature ``tau`` (default: the annealed
        :attr:`tau`); it is a bound on log p(x) only in the limit tau -> 0 or with ``hard=True``.

        Parameters
        ----------
        x : Tensor, shape (n, *data_shape)
        n_samples : int, default 1
        generator : torch.Generator, optional
        tau : float, optional
        hard : bool, optional
            Straight-through samples (default: ``config.hard``).

        Returns
        -------
        Tensor, shape (n,)
        """
        n_samples = check_scalar(n_samples, "n_samples", int, min=1)
        xf = self._check_data(x)
        logits = self.encode(x)
        y = gumbel_softmax_sample(logits.expand(n_samples, *logits.shape), self.tau if tau is None else tau,
                                  self.config.hard if hard is None else hard, generator)
        log_lik = self._log_lik(xf, y.reshape(n_samples, -1, self.latent_dim))
        return log_lik.mean(0) - self.kl_to_prior(logits)

    def iw_bound(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Importance-weighted bound with exact categorical draws z_j ~ q(z|x) (no relaxation).

        Parameters
        ----------
        x : Tensor, shape (n, *data_shape)
        k : int
        generator : torch.Generator, optional

        Returns
        -------
        Tensor, shape (n,)
        """
        k = check_scalar(k, "k", int, min=1)
        xf = self._check_data(x)
        log_q_all = torch.log_softmax(self.encode(x), -1)  # (n, L, K)
        probs = log_q_all.exp().reshape(-1, self.n_categories)
        idx = torch.multinomial(probs, k, replacement=True, generator=generator)  # (n*L, k)
        idx = idx.T.reshape(k, xf.shape[0], self.n_latent)
        log_q = log_q_all.expand(k, *log_q_all.shape).gather(-1, idx.unsqueeze(-1)).squeeze(-1).sum(-1)
        z = F.one_hot(idx, self.n_categories).to(xf.dtype).reshape(k, xf.shape[0], self.latent_dim)
        log_w = self._log_lik(xf, z) - self.n_latent * math.log(self.n_categories) - log_q
        return torch.logsumexp(log_w, 0) - math.log(k)

    def log_prob(self, x: torch.Tensor, max_states: int = 4096) -> torch.Tensor:
        """Exact log p(x) = logsumexp_z log p(x|z) - n_latent log K, by enumerating all K^L latent states.

        Parameters
        ----------
        x : Tensor, shape (n, *data_shape)
        max_states : int, default 4096
            Refuse when K^L exceeds it.

        Returns
        -------
        Tensor, shape (n,)
        """
        n_states = self.n_categories**self.n_latent
        if n_states > max_states:
            raise MemgeoError(f"exact log_prob needs {n_states} latent states (> max_states={max_states})",
                              "use iw_bound, or raise max_states")
        xf = self._check_data(x)
        states = torch.tensor(list(itertools.product(range(self.n_categories), repeat=self.n_latent)),
                              device=xf.device)
        z = F.one_hot(states, self.n_categories).to(xf.dtype).reshape(n_states, 1, self.latent_dim)
        log_lik = self._log_lik(xf, z)  # (n_states, n)
        return torch.logsumexp(log_lik, 0) - self.n_latent * math.log(self.n_categories)


def train_vae(model: VAE | GumbelSoftmaxVAE, data: torch.Tensor, steps: int = 1000, lr: float = 1e-3,
              batch: int = 128, generator: torch.Generator | None = None) -> list[float]:
    """Train a VAE on the negative ELBO with Adam (reparameterised / relaxed samples).

    For a :class:`GumbelSoftmaxVAE` the temperature follows its schedule (``set_step`` each step).

    Parameters
    ----------
    model : VAE or GumbelSoftmaxVAE
    data : Tensor, shape (N, *data_shape)
    steps, batch : int
    lr : float
    generator : torch.Generator, optional
        Drives minibatch choice and the latent noise.

    Returns
    -------
    list of float
        The minibatch loss (mean negative ELBO) at each step.
    """
    steps = check_scalar(steps, "steps", int, min=1)
    batch = check_scalar(batch, "batch", int, min=1)
    lr = check_scalar(lr, "lr", float, min=0.0, include_min=False)
    model._check_data(data)
    data = data.to(model._ref.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        if isinstance(model, GumbelSoftmaxVAE):
            model.set_step(step)
        idx = torch.randint(data.shape[0], (min(batch, data.shape[0]),), generator=generator)
        loss = -model.elbo(data[idx], generator=generator).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
