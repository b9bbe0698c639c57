"""Discrete-time variational bound on log p(x_0) of memgeo's own diffusion models (DDPM, Ho et al. 2020).

memgeo's networks are trained on continuous time t in (0, 1] of a VP schedule
(``psi_t = sqrt(alpha_bar(t))``, ``sigma_t^2 = 1 - alpha_bar(t)``). Any grid of times
``0 < s_1 < ... < s_N <= 1`` turns that model into a discrete-time latent-variable model with latents
``x_1..x_N`` (``x_i`` at time ``s_i``), whose evidence lower bound is the DDPM bound

    log p(x_0) >= E_q[log p(x_0 | x_1)] - sum_{i=2}^N E_q[KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i))]
                  - KL(q(x_N | x_0) || N(0, I)),

with the forward marginals ``q(x_i | x_0) = N(psi_i x_0, sigma_i^2 I)`` and, between two grid times
``s < t`` (``a = psi_t / psi_s``, ``v = sigma_t^2 - a^2 sigma_s^2``), the forward posterior

    q(x_s | x_t, x_0) = N(a sigma_s^2 / sigma_t^2 x_t + psi_s v / sigma_t^2 x_0,  v sigma_s^2 / sigma_t^2 I).

The reverse kernel is that posterior with x_0 replaced by the network's clean-data estimate
``xhat_0(x_t, t) = (x_t - sigma_t eps_theta(x_t, t)) / psi_t`` (Ho et al.'s choice sigma^2 = beta-tilde),
so each KL is ``(psi_s v / sigma_t^2)^2 ||x_0 - xhat_0||^2 / (2 v sigma_s^2 / sigma_t^2)``. The decoder
is ``p(x_0 | x_1) = N(xhat_0(x_1, s_1), (sigma_1 / psi_1)^2 I)``: Gaussian with the noise level of the
first step in data units (a choice; any fixed variance keeps it a bound). The expectation over
``x_i ~ q(x_i | x_0)`` is estimated with one draw per step and point (``n_draws`` averages several).

It is a bound for every grid; the default grid is ``n_steps`` times spaced geometrically from the
training ``t_min`` (1e-3) to 1 (a linear grid needs far more steps: its first steps jump across most
of the noise scales). For the exact score of a Gaussian it approaches the exact log-density as the
grid is refined (``tests/test_ddpm_bound.py``).
"""

from __future__ import annotations

import math

import torch

from memgeo.errors import MemgeoError, check_finite, check_scalar
from memgeo.models.base import DiffusionModel, model_dtype

_LOG_2PI = math.log(2.0 * math.pi)

__all__ = ["ddpm_variational_bound"]


def ddpm_variational_bound(model: DiffusionModel, x0: torch.Tensor, cond: torch.Tensor | None = None, *,
                           n_steps: int = 200, t_min: float = 1e-3, n_draws: int = 1,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-point discrete-time variational lower bound on ``log p(x_0 | cond)`` (nats), see the module docstring.

    Parameters
    ----------
    model : DiffusionModel
        A memgeo diffusion model on a VP schedule (e.g. the demo's :class:`~memgeo.models.nets.MLPEps`).
    x0 : Tensor, shape (n, *data_shape)
        Data points.
    cond : Tensor, shape (n,), optional
        Class labels of a class-conditional model (``None``: the null condition).
    n_steps : int, default 200
        Grid size N (>= 2): times geometric from ``t_min`` to 1.
    t_min : float, default 1e-3
        First grid time s_1, in (0, 1) (memgeo's training draws t from U(t_min, 1)).
    n_draws : int, default 1
        Monte-Carlo draws of the forward noise averaged per point.
    generator : torch.Generator, optional
        Source of the forward noise.

    Returns
    -------
    Tensor, shape (n,), float64
        The bound per point (an unbiased estimate of it; exact in expectation over the noise).

    Raises
    ------
    MemgeoError
        Bad settings, non-finite data, or data of the wrong shape.
    """
    n_steps = check_scalar(n_steps, "n_steps", int, min=2)
    t_min = check_scalar(t_min, "t_min", float, min=0.0, max=1.0, include_min=False)
    n_draws = check_scalar(n_draws, "n_draws", int, min=1)
    model.check_input(x0, cond)
    check_finite(x0, "x0")
    dtype = model_dtype(model)
    n = x0.shape[0]
    x = x0.to(dtype)
    x64 = x0.reshape(n, -1).double()
    d = x64.shape[1]
    times = torch.logspace(math.log10(t_min), 0.0, n_steps, dtype=torch.float64)  # geometric grid
    psi = model.schedule.sqrt_alpha_bar(times).double()
    sig2 = (1.0 - model.schedule.alpha_bar(times).double()).clamp_min(1e-300)

    def xhat0(i: int) -> torch.Tensor:
        """Clean-data estimate at grid time i from one forward draw, (n, d) float64."""
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        xt = float(psi[i]) * x + math.sqrt(float(sig2[i])) * eps
        with torch.no_grad():
            _, x0_hat = model.denoise(xt, torch.full((n,), float(times[i]), dtype=x.dtype, device=x.device), cond)
        return x0_hat.reshape(n, -1).double()

    # The Gaussian terms' constants depend on the grid only: once, before the draws.
    v_dec = float(sig2[0] / psi[0] ** 2)  # decoder log p(x_0 | x_1) has variance (sigma_1 / psi_1)^2
    a = psi[1:] / psi[:-1]
    v = sig2[1:] - a * a * sig2[:-1]
    weight = ((psi[:-1] * v / sig2[1:]) ** 2 / (2.0 * v * sig2[:-1] / sig2[1:])).tolist()  # c0^2 / (2 var_post)
    p_n, s_n = float(psi[-1]), float(sig2[-1])
    prior = 0.5 * (p_n * p_n * x64.pow(2).sum(1) + d * (s_n - 1.0 - math.log(s_n)))
    total = x64.new_zeros(n)
    for _ in range(n_draws):
        err = (x64 - xhat0(0)).pow(2).sum(1)
        bound = -0.5 * (d * (_LOG_2PI + math.log(v_dec)) + err / v_dec)
        for i in range(1, n_steps):
            bound = bound - weight[i - 1] * (x64 - xhat0(i)).pow(2).sum(1)
        total = total + bound - prior
    return total / n_draws
