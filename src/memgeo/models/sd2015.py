"""The diffusion probabilistic model of Sohl-Dickstein, Weiss, Maheswaranathan & Ganguli (ICML 2015,
"Deep Unsupervised Learning using Nonequilibrium Thermodynamics"), Gaussian case, on the
:class:`~memgeo.models.generators.Generator` protocol.

Model
-----
Discrete steps ``t = 1..T`` (the paper uses T = 40 on the swiss roll).

* Forward (fixed): ``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)``, so with
  ``alpha_t = 1 - beta_t`` and ``abar_t = prod_{s<=t} alpha_s`` the marginal is
  ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``.
* Reverse (learned): ``p(x_{t-1} | x_t) = N(mu_theta(x_t, t), diag sigma^2_theta(x_t, t))``; one MLP
  takes ``[x_t, time features]`` and outputs ``[h_mu, h_sigma]`` with
  ``mu_theta = x_t + sqrt(beta_t) h_mu`` and ``log sigma^2_theta = log beta_t + h_sigma`` (so both
  the mean and the diagonal variance are learned, each on the scale of one diffusion step).
  Override :meth:`SD2015Diffusion.reverse_params` to plug in other kernels (tests use the exact ones).
* Prior: ``p(x_T) = N(0, I)``.

Beta schedule (fixed; the paper also allows learning it): ``"sigmoid"`` (default) spaces
``logit(beta_t)`` linearly from ``logit(beta_min)`` to ``logit(beta_max)`` (the paper's
logistic-parametrised schedule with its learned perturbations set to zero), ``"linear"`` spaces
``beta_t`` linearly. With the defaults (T = 40, 1e-3 .. 0.5, sigmoid) ``abar_T = 6.8e-3``.

Objective
---------
The paper's lower bound K on ``log p(x_0)`` (its eq. 14, rewritten with the posterior of the
forward process, as in its appendix B),

    K(x_0) = E_q[log p(x_0 | x_1)] - sum_{t=2}^T E_q[KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))]
             - KL(q(x_T | x_0) || p(x_T)),

with ``q(x_{t-1} | x_t, x_0) = N(c0_t x_0 + ct_t x_t, btilde_t I)``,
``c0_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t)``, ``ct_t = sqrt(alpha_t)(1 - abar_{t-1}) / (1 - abar_t)``,
``btilde_t = (1 - abar_{t-1}) beta_t / (1 - abar_t)``. Every KL is the closed-form Gaussian one;
the expectation over ``x_t ~ q(x_t | x_0)`` is estimated with one draw per step (all T terms
every time, not a random step). :meth:`SD2015Diffusion.bound` returns K per point; ``elbo`` is K.

Score
-----
Because ``x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps``, Tweedie's formula gives *exactly*
``sqrt(alpha_t) E_q[x_{t-1} | x_t] = x_t + beta_t grad log q_t(x_t)``. For every fixed variance the
bound is maximised over the reverse mean by ``mu_theta(x_t, t) = E_q[x_{t-1} | x_t]`` (the KL terms
are quadratic in the mean), so the 2015 model implies the score

    s_t(x) = (sqrt(1 - beta_t) mu_theta(x, t) - x) / beta_t  ~=  grad_x log q_t(x),

exact at the bound's optimum; the only approximation is ``mu_theta ~= E_q[x_{t-1} | x_t]`` (finite
capacity and training). :meth:`SD2015Diffusion.score` returns it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from tqdm.auto import tqdm

from memgeo.errors import MemgeoError, check_finite, check_scalar
from memgeo.models.generators import Generator, mlp

_LOG_2PI = math.log(2.0 * math.pi)


class SD2015Config(BaseModel):
    """Hyper-parameters of :class:`SD2015Diffusion`.

    Attributes
    ----------
    data_shape : tuple of int
        Shape of one data point.
    T : int
        Number of diffusion steps (paper: 40 on the swiss roll).
    schedule : {"sigmoid", "linear"}
        Fixed forward schedule: logit-linear (default) or linear beta between ``beta_min`` and ``beta_max``.
    beta_min, beta_max : float
        beta_1 and beta_T, in (0, 1), beta_min < beta_max.
    hidden : tuple of int
        Hidden widths of the reverse-kernel MLP (SiLU between layers).
    time_dim : int
        Number of sinusoidal time features (even).
    seed : int
        Seed of the weight initialisation.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: Literal["sd2015"] = "sd2015"
    data_shape: tuple[int, ...] = Field(..., min_length=1)
    T: int = Field(40, ge=1)
    schedule: Literal["sigmoid", "linear"] = "sigmoid"
    beta_min: float = Field(1e-3, gt=0.0, lt=1.0)
    beta_max: float = Field(0.5, gt=0.0, lt=1.0)
    hidden: tuple[int, ...] = (128, 128)
    time_dim: int = Field(16, ge=2)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> SD2015Config:
        if self.T > 1 and not self.beta_min < self.beta_max:
            raise ValueError(f"beta_min={self.beta_min} must be < beta_max={self.beta_max}")
        if self.time_dim % 2:
            raise ValueError(f"time_dim={self.time_dim} must be even")
        return self


def beta_schedule(T: int, schedule: str = "sigmoid", beta_min: float = 1e-3, beta_max: float = 0.5) -> torch.Tensor:
    """Forward variances ``beta_1..beta_T`` in float64, shape ``(T,)`` (see the module docstring)."""
    T = check_scalar(T, "T", int, min=1)
    if T == 1:
        return torch.tensor([beta_min], dtype=torch.float64)
    if schedule == "linear":
        return torch.linspace(beta_min, beta_max, T, dtype=torch.float64)
    if schedule == "sigmoid":
        lo, hi = math.log(beta_min / (1 - beta_min)), math.log(beta_max / (1 - beta_max))
        return torch.sigmoid(torch.linspace(lo, hi, T, dtype=torch.float64))
    raise MemgeoError(f"unknown beta schedule {schedule!r}", "use schedule='sigmoid' or schedule='linear'")


class SD2015Diffusion(Generator):
    """Gaussian diffusion probabilistic model with learned reverse mean and diagonal variance.

    ``latent_dim`` is ``data_dim``: the latent is ``x_T`` with prior N(0, I).

    Parameters
    ----------
    config : SD2015Config

    Attributes
    ----------
    betas : Tensor, shape (T,)
        ``betas[t - 1] = beta_t``.
    alpha_bar : Tensor, shape (T + 1,)
        ``alpha_bar[t] = prod_{s<=t} (1 - beta_s)``, ``alpha_bar[0] = 1``.
    """

    betas: torch.Tensor
    alpha_bar: torch.Tensor

    def __init__(self, config: SD2015Config) -> None:
        d = 1
        for s in config.data_shape:
            d *= s
        super().__init__(config.data_shape, d)
        self.config = config
        self.T = config.T
        betas = beta_schedule(config.T, config.schedule, config.beta_min, config.beta_max)
        abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])
        dt = torch.get_default_dtype()
        self.register_buffer("betas", betas.to(dt))
        self.register_buffer("alpha_bar", abar.to(dt))
        k = config.time_dim // 2
        self.register_buffer("_freqs", (math.pi * torch.logspace(0, math.log10(max(config.T, 2)), k,
                                                                 dtype=torch.float64)).to(dt), persistent=False)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG left untouched
            torch.manual_seed(config.seed)
            self.net = mlp(d + config.time_dim, config.hidden, 2 * d)

    # --- schedule helpers -------------------------------------------------------------------------
    def _steps(self, t: int | torch.Tensor, m: int) -> torch.Tensor:
        """Step indices as a long tensor ``(m,)`` in 1..T (an int is broadcast)."""
        if isinstance(t, torch.Tensor):
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise MemgeoError("t must hold integer steps", "pass t as an int or an integer tensor in 1..T")
            t = t.to(device=self.betas.device, dtype=torch.long).reshape(-1)
            if t.numel() == 1:
                t = t.expand(m)
        else:
            t = torch.full((m,), check_scalar(t, "t", int, min=1, max=self.T), device=self.betas.device,
                           dtype=torch.long)
        if t.numel() != m:
            raise MemgeoError(f"t has {t.numel()} entries for {m} points", "pass one step per point or a single step")
        if t.numel() and (int(t.min()) < 1 or int(t.max()) > self.T):
            raise MemgeoError(f"steps must lie in 1..{self.T}", f"pass t between 1 and T={self.T}")
        return t

    def forward_marginal(self, t: int) -> tuple[float, float]:
        """``(sqrt(abar_t), 1 - abar_t)``: mean coefficient and variance of ``q(x_t | x_0)`` (t in 0..T)."""
        t = check_scalar(t, "t", int, min=0, max=self.T)
        ab = float(self.alpha_bar[t])
        return math.sqrt(ab), 1.0 - ab

    def forward_step(self, x_prev: torch.Tensor, t: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One forward draw ``x_t ~ q(x_t | x_{t-1})``; ``x_prev (n, *data_shape)`` -> same shape."""
        t = check_scalar(t, "t", int, min=1, max=self.T)
        b = self.betas[t - 1]
        z = torch.randn(x_prev.shape, generator=generator, device=x_prev.device, dtype=x_prev.dtype)
        return torch.sqrt(1.0 - b) * x_prev + torch.sqrt(b) * z

    def q_sample(self, x0: torch.Tensor, t: int, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``, shape of ``x0``."""
        a, v = self.forward_marginal(t)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return a * x0 + math.sqrt(v) * noise

    def _time_features(self, t: torch.Tensor) -> torch.Tensor:
        """Sinusoidal features of ``t / T``, ``(m,)`` -> ``(m, time_dim)``."""
        ang = (t.to(self._freqs.dtype) / self.T)[:, None] * self._freqs
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)

    # --- reverse process ------------------------------------------------------------------------
    def reverse_params(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``p(x_{t-1} | x_t)``.

        Parameters
        ----------
        x_t : Tensor, shape (m, data_dim)
            Flattened states.
        t : Tensor of int64, shape (m,)
            Steps in 1..T.

        Returns
        -------
        mean, logvar : Tensor, shape (m, data_dim) each
        """
        out = self.net(torch.cat([x_t, self._time_features(t)], dim=1))
        d = self.data_dim
        beta = self.betas[t - 1][:, None]
        return x_t + torch.sqrt(beta) * out[:, :d], torch.log(beta) + out[:, d:]

    def _data(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        xf = self._flat(x, name)
        check_finite(xf, name)
        return xf.to(self.betas.dtype)

    def bound_terms(self, x0: torch.Tensor, noise: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """The terms of the bound K, one draw of ``x_t ~ q(x_t | x_0)`` for every step.

        Parameters
        ----------
        x0 : Tensor, shape (n, *data_shape)
        noise : Tensor, shape (T, n, *data_shape), optional
            Standard normal draws ``eps_t`` with ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps_t``
            (default: drawn from ``generator``). Each term depends only on its own ``eps_t``.
        generator : torch.Generator, optional

        Returns
        -------
        Tensor, shape (T + 1, n)
            Row 0: ``log p(x_0 | x_1)``; row ``t - 1`` for t = 2..T:
            ``-KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))``; row T: ``-KL(q(x_T | x_0) || N(0, I))``.
            Their sum over rows is K.
        """
        x = self._data(x0, "x0")
        n, d, T = x.shape[0], self.data_dim, self.T
        if noise is None:
            eps = torch.randn((T, n, d), generator=generator, device=x.device, dtype=x.dtype)
        else:
            if tuple(noise.shape) not in ((T, n, d), (T, n, *self.data_shape)):
                raise MemgeoError(f"noise has shape {tuple(noise.shape)} but (T, n, *data_shape) = "
                                  f"{(T, n, *self.data_shape)} is needed", "pass one standard normal draw per step")
            eps = noise.reshape(T, n, d).to(x.dtype)
        ab = self.alpha_bar
        beta = self.betas[:, None, None]
        ab_t, ab_prev = ab[1:, None, None], ab[:-1, None, None]
        xt = torch.sqrt(ab_t) * x + torch.sqrt(1.0 - ab_t) * eps  # (T, n, d)
        steps = torch.arange(1, T + 1, device=x.device).repeat_interleave(n)
        mean, logvar = self.reverse_params(xt.reshape(T * n, d), steps)
        mean, logvar = mean.reshape(T, n, d), logvar.reshape(T, n, d)
        inv_var = torch.exp(-logvar)
        terms = x.new_empty((T + 1, n))
        # t = 1: decoder log-likelihood log p(x_0 | x_1)
        terms[0] = -0.5 * (_LOG_2PI + logvar[0] + (x - mean[0]) ** 2 * inv_var[0]).sum(-1)
        if T > 1:
            c0 = torch.sqrt(ab_prev) * beta / (1.0 - ab_t)
            ct = torch.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab_t)
            bt = (1.0 - ab_prev) * beta / (1.0 - ab_t)
            mu_q = (c0 * x + ct * xt)[1:]
            kl = 0.5 * (logvar[1:] - torch.log(bt[1:]) + (bt[1:] + (mu_q - mean[1:]) ** 2) * inv_var[1:] - 1.0)
            terms[1:T] = -kl.sum(-1)
        abT = ab[T]
        terms[T] = -0.5 * (abT * x**2 + (1.0 - abT) - 1.0 - torch.log(1.0 - abT)).sum(-1)
        return terms

    def bound(self, x0: torch.Tensor, noise: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """The variational lower bound K on ``log p(x_0)`` per point (one draw per step), shape ``(n,)``."""
        return self.bound_terms(x0, noise, generator).sum(0)

    def elbo(self, x: torch.Tensor, n_samples: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """The bound K averaged over ``n_samples`` draws, ``x (n, *data_shape)`` -> ``(n,)``."""
        n_samples = check_scalar(n_samples, "n_samples", int, min=1)
        return torch.stack([self.bound(x, generator=generator) for _ in range(n_samples)]).mean(0)

    def log_weights(self, x0: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``log p(x_{0:T}) - log q(x_{1:T} | x_0)`` for ``k`` forward trajectories per point.

        Parameters
        ----------
        x0 : Tensor, shape (n, *data_shape)
        k : int
        generator : torch.Generator, optional

        Returns
        -------
        Tensor, shape (k, n)
            Each row's mean over trajectories is an unbiased estimate of K; its log-mean-exp is the
            importance-weighted bound.
        """
        k = check_scalar(k, "k", int, min=1)
        x = self._data(x0, "x0")
        n, d = x.shape
        prev = x.expand(k, n, d)
        logw = x.new_zeros((k, n))
        for t in range(1, self.T + 1):
            b = self.betas[t - 1]
            z = torch.randn((k, n, d), generator=generator, device=x.device, dtype=x.dtype)
            cur = torch.sqrt(1.0 - b) * prev + torch.sqrt(b) * z
            logw = logw + 0.5 * (_LOG_2PI + torch.log(b) + z**2).sum(-1)  # - log q(x_t | x_{t-1})
            mean, logvar = self.reverse_params(cur.reshape(k * n, d), self._steps(t, k * n))
            lp = -0.5 * (_LOG_2PI + logvar + (prev.reshape(k * n, d) - mean) ** 2 * torch.exp(-logvar)).sum(-1)
            logw = logw + lp.reshape(k, n)
            prev = cur
        return logw + self.prior_log_prob(prev)

    def iw_bound(self, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Importance-weighted bound ``log (1/k) sum_j p(x_{0:T}^j) / q(x_{1:T}^j | x_0)``, ``(n,)``.

        The proposal is the forward process itself (whole trajectories); k = 1 is a one-draw
        estimate of K, and the bound tightens towards ``log p(x_0)`` as k grows.
        """
        lw = self.log_weights(x, k, generator)
        return torch.logsumexp(lw, 0) - math.log(lw.shape[0])

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x_T ~ N(0, I)``, shape ``(n, latent_dim)``."""
        n = check_scalar(n, "n", int, min=1)
        return torch.randn((n, self.latent_dim), generator=generator, device=self.betas.device,
                           dtype=self.betas.dtype)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log N(z; 0, I)`` for ``z (..., latent_dim)`` -> ``(...)``."""
        return -0.5 * (z**2 + _LOG_2PI).sum(-1)

    def sample(self, n: int, cond: Any = None, generator: torch.Generator | None = None,
               final_noise: bool = True) -> torch.Tensor:
        """Ancestral sampling ``x_T ~ N(0, I)``, ``x_{t-1} ~ p(x_{t-1} | x_t)`` for t = T..1.

        Parameters
        ----------
        n : int
        cond : None
            The model is unconditional.
        generator : torch.Generator, optional
        final_noise : bool, default True
            Draw ``x_0 ~ p(x_0 | x_1)`` (a sample of the model's density); ``False`` returns the
            mean of the last kernel.

        Returns
        -------
        Tensor, shape (n, *data_shape)
        """
        n = check_scalar(n, "n", int, min=1)
        if cond is not None:
            raise MemgeoError("the 2015 diffusion is unconditional but cond was given", "pass cond=None")
        with torch.no_grad():
            x = self.prior_sample(n, generator)
            for t in range(self.T, 0, -1):
                mean, logvar = self.reverse_params(x, self._steps(t, n))
                if t == 1 and not final_noise:
                    x = mean
                else:
                    z = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                    x = mean + torch.exp(0.5 * logvar) * z
        return x.reshape(n, *self.data_shape)

    def score(self, x: torch.Tensor, t: int | torch.Tensor, cond: Any = None) -> torch.Tensor:
        """Score implied by the learned reverse mean, ``(sqrt(1 - beta_t) mu_theta(x, t) - x) / beta_t``.

        It approximates ``grad_x log q_t(x)`` (the noisy marginal at step t) and is exact when
        ``mu_theta(x, t) = E_q[x_{t-1} | x_t = x]`` (module docstring).

        Parameters
        ----------
        x : Tensor, shape (n, *data_shape)
        t : int or Tensor of int, shape () or (n,)
            Steps in 1..T.
        cond : None

        Returns
        -------
        Tensor, shape (n, *data_shape)
        """
        if cond is not None:
            raise MemgeoError("the 2015 diffusion is unconditional but cond was given", "pass cond=None")
        xf = self._data(x)
        steps = self._steps(t, xf.shape[0])
        mean, _ = self.reverse_params(xf, steps)
        beta = self.betas[steps - 1][:, None]
        return ((torch.sqrt(1.0 - beta) * mean - xf) / beta).reshape(x.shape)


def train_sd2015(model: SD2015Diffusion, data: torch.Tensor, steps: int = 2000, lr: float = 1e-3,
                 batch: int = 128, generator: torch.Generator | None = None,
                 progress: bool | str = False) -> list[float]:
    """Train on the negative bound ``-K`` with Adam.

    Parameters
    ----------
    model : SD2015Diffusion
    data : Tensor, shape (N, *data_shape)
    steps, batch : int
    lr : float
    generator : torch.Generator, optional
        Drives minibatch choice and the diffusion noise.
    progress : bool or str, default False
        Show a progress bar; a str names it.

    Returns
    -------
    list of float
        The minibatch loss (mean ``-K`` in nats per data point) at each step.
    """
    steps = check_scalar(steps, "steps", int, min=1)
    batch = check_scalar(batch, "batch", int, min=1)
    lr = check_scalar(lr, "lr", float, min=0.0, include_min=False)
    data = model._data(data, "data")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    model.train()
    desc = progress if isinstance(progress, str) else "training sd2015 diffusion"
    for _ in tqdm(range(steps), disable=not progress, desc=desc):
        idx = torch.randint(data.shape[0], (min(batch, data.shape[0]),), generator=generator)
        loss = -model.bound(data[idx].reshape(-1, *model.data_shape), generator=generator).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
