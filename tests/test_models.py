"""Tests for memgeo.models: schedule, exact reference scores, samplers, networks, training, checkpoints.

Every check compares against an independent ground truth: closed forms, torch.distributions
log-densities differentiated by autograd or finite differences, diffusers' own schedulers, or
Monte Carlo moments with tolerances taken from the Monte Carlo standard error. Closed-form
comparisons run in float64 with the dtype passed explicitly (the global default is never changed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from memgeo.data import make_toy2d
from memgeo.errors import MemgeoError
from memgeo.models import (
    NULL_CLASS,
    SAMPLERS,
    EmpiricalMixtureScore,
    GaussianScore,
    MLPConfig,
    MLPEps,
    TrainConfig,
    UNetConfig,
    UNetEps,
    VPSchedule,
    build_model,
    get_sampler,
    guided_eps,
    load_model,
    sample_ddim,
    sample_ddpm,
    save_model,
    train,
)
from memgeo.models.loading import load
from memgeo.models.sampling import ddim_step, time_grid

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


def _gauss_params(singular: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3-D mean and a correlated covariance; the singular one has rank 2 (a tilted plane)."""
    mean = torch.tensor([0.5, -1.0, 0.2], dtype=F64)
    if singular:
        u = torch.tensor([1.0, 1.0, 0.0], dtype=F64) / math.sqrt(2.0)
        e3 = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
        cov = 0.8 * torch.outer(u, u) + 0.3 * torch.outer(e3, e3) + 0.2 * (torch.outer(u, e3) + torch.outer(e3, u))
    else:
        a = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.5, 0.0], [-0.3, 0.2, 0.4]], dtype=F64)
        cov = a @ a.T
    return mean, cov


def _gaussian_log_density(model: GaussianScore, mean: torch.Tensor, cov: torch.Tensor, x: torch.Tensor, t: float):
    ab = model.schedule.alpha_bar(torch.tensor(t, dtype=F64))
    cov_t = ab * cov + (1 - ab) * torch.eye(cov.shape[0], dtype=F64)
    return torch.distributions.MultivariateNormal(ab.sqrt() * mean, covariance_matrix=cov_t).log_prob(x)


# ============================================================================ VPSchedule


def test_schedule_closed_form_and_identity():
    s = VPSchedule()
    t = torch.linspace(1e-4, 1.0, 401, dtype=F64)
    ab_ref = torch.exp(-(0.1 * t + 0.5 * (20.0 - 0.1) * t**2))
    torch.testing.assert_close(s.alpha_bar(t), ab_ref, rtol=1e-14, atol=0)
    torch.testing.assert_close(s.sigma(t), torch.sqrt(1 - ab_ref), rtol=1e-12, atol=0)
    torch.testing.assert_close(s.sqrt_alpha_bar(t), ab_ref.sqrt(), rtol=1e-14, atol=0)
    torch.testing.assert_close(s.sigma(t) ** 2 + s.alpha_bar(t), torch.ones_like(t), rtol=0, atol=1e-14)
    torch.testing.assert_close(s.beta(t), 0.1 + t * 19.9, rtol=1e-14, atol=0)
    # expm1 keeps sigma accurate at tiny t: sigma^2 ~ beta_min t.
    tiny = torch.tensor([1e-9], dtype=F64)
    assert abs(float(s.sigma(tiny) ** 2) / (0.1 * 1e-9) - 1) < 1e-6
    # beta(t) is d/dt (-log alpha_bar): check by central differences.
    h = 1e-6
    tm = torch.tensor([0.05, 0.5, 0.9], dtype=F64)
    fd = -(s.log_alpha_bar(tm + h) - s.log_alpha_bar(tm - h)) / (2 * h)
    torch.testing.assert_close(fd, s.beta(tm), rtol=1e-8, atol=0)


@pytest.mark.parametrize("schedule", [VPSchedule(), VPSchedule(beta_min=0.5, beta_max=0.5),
                                      VPSchedule(beta_min=1.0, beta_max=5.0)])
def test_t_from_sigma_inverts_sigma(schedule):
    smax = float(schedule.sigma(torch.tensor(1.0, dtype=F64)))
    for sig in [x for x in (1e-4, 0.01, 0.1, 0.3, 0.5, 0.9) if x < smax] + [0.999 * smax]:
        t = schedule.t_from_sigma(sig)
        assert 0 < t < 1
        assert abs(float(schedule.sigma(torch.tensor(t, dtype=F64))) - sig) < 1e-12 * max(1.0, 1 / sig) + 1e-13
    for t in [0.001, 0.2, 0.77]:
        assert abs(schedule.t_from_sigma(float(schedule.sigma(torch.tensor(t, dtype=F64)))) - t) < 1e-10


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.0, 1.5, float("nan")])
def test_t_from_sigma_rejects_invalid_sigma(bad):
    with pytest.raises(MemgeoError, match="sigma"):
        VPSchedule().t_from_sigma(bad)


def test_schedule_config_validation():
    # pydantic wraps the validator's MemgeoError (a ValueError) in its ValidationError (also a ValueError)
    with pytest.raises(ValueError, match="beta_max=1.0 < beta_min=2.0"):
        VPSchedule(beta_min=2.0, beta_max=1.0)
    with pytest.raises(ValueError):
        VPSchedule(beta_min=0.0)
    with pytest.raises(ValueError):
        VPSchedule(foo=1.0)
    with pytest.raises(MemgeoError, match="scheduler kind"):
        VPSchedule().to_diffusers("euler")


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_to_diffusers_alphas_cumprod_match_alpha_bar(kind):
    s = VPSchedule()
    sch = s.to_diffusers(kind)
    assert sch.config.beta_schedule == "linear" and sch.config.prediction_type == "epsilon"
    assert float(sch.betas[0]) == pytest.approx(1e-4, rel=1e-6)
    assert float(sch.betas[-1]) == pytest.approx(0.02, rel=1e-6)
    ac = sch.alphas_cumprod.to(F64)
    t = VPSchedule.t_from_timestep(torch.arange(1000)).to(F64)
    torch.testing.assert_close(t, (torch.arange(1000, dtype=F64) + 1) / 1000)
    ab = s.alpha_bar(t)
    rel = (ac - ab).abs() / ab
    # Measured (diffusers 0.42, float32 alphas): max |ac - ab| = 8.1e-4 (k = 141); max relative error
    # 1.03e-3 for k < 300 (t <= 0.3), growing to 6.5e-2 at k = 999 where alpha_bar = 4.3e-5. That growth
    # is the O(1/N) second-order term of the discrete product: log prod(1 - beta_j) = -sum beta_j -
    # sum beta_j^2 / 2 - ..., and sum beta_j^2 / 2 = 0.068 at k = 999. So "~1e-3 relative" holds for
    # t <= 0.3 and in absolute terms everywhere; at large t only in log space up to that known term.
    assert float((ac - ab).abs().max()) < 1e-3
    assert float(rel[:300].max()) < 1.2e-3
    assert float(rel[:10].max()) < 1.2e-4
    b = sch.betas.to(F64)
    second_order = torch.cumsum(b * b / 2, 0)
    log_gap = torch.log(ac) - torch.log(ab)
    assert float((log_gap + second_order).abs().max()) < 3e-3  # what is left is O(1/N) Riemann error
    assert float(rel.max()) < 0.07


def _matched_ddim_scheduler(schedule: VPSchedule, exact_alphas: bool):
    """A diffusers DDIMScheduler whose alphas_cumprod[k] equal our alpha_bar((k + 1) / 1000).

    diffusers keeps its alphas in float32; ``exact_alphas`` replaces them by the float64 values so
    that only the update formula is compared.
    """
    from diffusers import DDIMScheduler

    t = (torch.arange(1000, dtype=F64) + 1) / 1000
    ab = schedule.alpha_bar(t)
    betas = 1 - ab / torch.cat([torch.ones(1, dtype=F64), ab[:-1]])
    sch = DDIMScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(), clip_sample=False,
                        set_alpha_to_one=False, prediction_type="epsilon")
    if exact_alphas:
        sch.alphas_cumprod = ab.clone()
        sch.final_alpha_cumprod = ab[0].clone()
    return sch


@pytest.mark.parametrize("exact_alphas,tol", [(False, 1e-5), (True, 1e-12)])
@pytest.mark.parametrize("n_steps", [10, 50])
def test_ddim_step_reproduces_diffusers_ddim(exact_alphas, tol, n_steps):
    s = VPSchedule()
    model = GaussianScore(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64), s)
    sch = _matched_ddim_scheduler(s, exact_alphas)
    sch.set_timesteps(n_steps)
    ratio = 1000 // n_steps
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g, dtype=F64)
    worst = worst_eta1 = 0.0
    for i, k in enumerate(sch.timesteps.tolist()):
        eps = torch.randn(8, 3, generator=g, dtype=F64)
        t = (k + 1) / 1000
        s_prev = (k - ratio + 1) / 1000 if k - ratio >= 0 else 1 / 1000  # set_alpha_to_one=False: ab[0]
        ref = sch.step(eps, k, x, eta=0.0).prev_sample
        ours, x0 = ddim_step(model, x, t, s_prev, eps, eta=0.0)
        worst = max(worst, float((ours - ref).norm() / ref.norm()))
        # eta = 1 (DDPM posterior): same variance; same noise via the same generator seed.
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + i), dtype=F64)
        ref1 = sch.step(eps, k, x, eta=1.0, variance_noise=noise).prev_sample
        ours1, _ = ddim_step(model, x, t, s_prev, eps, eta=1.0, generator=torch.Generator().manual_seed(100 + i))
        worst_eta1 = max(worst_eta1, float((ours1 - ref1).norm() / ref1.norm()))
        x = ref
    # Measured: 2.0e-7 with diffusers' float32 alphas, 3e-16 with the exact float64 ones.
    assert worst < tol
    assert worst_eta1 < 10 * tol


# ============================================================================ GaussianScore


@pytest.mark.parametrize("singular", [False, True])
def test_gaussian_score_closed_form(singular):
    mean, cov = _gauss_params(singular)
    model = GaussianScore(mean, cov)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=g, dtype=F64)
    t = torch.rand(16, generator=g, dtype=F64) * 0.9 + 0.05
    score = model.score(x, t)
    for i in range(16):
        ab = model.schedule.alpha_bar(t[i])
        cov_t = ab * cov + (1 - ab) * torch.eye(3, dtype=F64)
        ref = -torch.linalg.solve(cov_t, x[i] - ab.sqrt() * mean)
        torch.testing.assert_close(score[i], ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model.cov_t(float(t[i])), cov_t, rtol=1e-12, atol=1e-14)
    sigma = model.schedule.sigma(t)[:, None]
    torch.testing.assert_close(model.eps(x, t), -sigma * score, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("singular", [False, True])
def test_gaussian_score_is_gradient_of_log_density(singular):
    mean, cov = _gauss_params(singular)
    model = GaussianScore(mean, cov)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, generator=g, dtype=F64)
    for t in [0.01, 0.3, 0.9]:
        score = model.score(x, t)
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(_gaussian_log_density(model, mean, cov, xr, t).sum(), xr)
        torch.testing.assert_close(score, grad, rtol=1e-9, atol=1e-10)
        h = 1e-5
        fd = torch.stack([
            (_gaussian_log_density(model, mean, cov, x + h * e, t) - _gaussian_log_density(model, mean, cov, x - h * e, t))
            / (2 * h) for e in torch.eye(3, dtype=F64)], dim=1)
        # Measured: max relative deviation 2.8e-11 (h = 1e-5, float64).
        assert float((fd - score).norm() / score.norm()) < 1e-6


def test_gaussian_score_input_validation():
    mean, cov = _gauss_params(False)
    with pytest.raises(MemgeoError, match="shapes"):
        GaussianScore(mean, cov[:2, :2])
    with pytest.raises(MemgeoError, match="symmetric"):
        GaussianScore(mean, cov + torch.triu(torch.ones(3, 3, dtype=F64), 1))
    with pytest.raises(MemgeoError, match="negative eigenvalue"):
        GaussianScore(mean, -cov)
    with pytest.raises(MemgeoError, match="NaN"):
        GaussianScore(mean, cov.clone().fill_(float("nan")))
    model = GaussianScore(mean, cov)
    with pytest.raises(MemgeoError, match="per-sample shape"):
        model.score(torch.zeros(2, 4, dtype=F64), 0.5)
    with pytest.raises(MemgeoError, match="time has shape"):
        model.score(torch.zeros(2, 3, dtype=F64), torch.tensor([0.1, 0.2, 0.3], dtype=F64))


# ============================================================================ EmpiricalMixtureScore


def _mixture_log_density(points: torch.Tensor, x: torch.Tensor, t: torch.Tensor, schedule: VPSchedule):
    """log mean_i N(x; psi x_i, sigma^2 I), row by row (independent of the code under test)."""
    out = []
    for b in range(x.shape[0]):
        ab = schedule.alpha_bar(t[b])
        comp = torch.distributions.Normal(ab.sqrt() * points, (1 - ab).sqrt())
        logp = comp.log_prob(x[b][None]).sum(-1)
        out.append(torch.logsumexp(logp, 0) - math.log(points.shape[0]))
    return torch.stack(out)


def test_empirical_score_is_gradient_of_log_mixture():
    g = torch.Generator().manual_seed(3)
    points = torch.randn(20, 4, generator=g, dtype=F64)
    model = EmpiricalMixtureScore(points)
    x = 0.7 * torch.randn(12, 4, generator=g, dtype=F64)
    t = torch.rand(12, generator=g, dtype=F64) * 0.95 + 0.02
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_mixture_log_density(points, xr, t, model.schedule).sum(), xr)
    score = model.score(x, t)
    torch.testing.assert_close(score, grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.eps(x, t), -model.schedule.sigma(t)[:, None] * score, rtol=1e-13, atol=1e-14)
    w = model.posterior_weights(x, t)
    assert w.shape == (12, 20)
    torch.testing.assert_close(w.sum(1), torch.ones(12, dtype=F64))


def test_empirical_score_image_shaped_data():
    g = torch.Generator().manual_seed(4)
    data = torch.randn(6, 1, 2, 3, generator=g, dtype=F64)
    model = EmpiricalMixtureScore(data)
    assert model.data_shape == (1, 2, 3) and model.dim == 6
    x = torch.randn(3, 1, 2, 3, generator=g, dtype=F64)
    flat = EmpiricalMixtureScore(data.reshape(6, -1))
    torch.testing.assert_close(model.score(x, 0.4).reshape(3, -1), flat.score(x.reshape(3, -1), 0.4))


def test_empirical_class_conditional_score():
    g = torch.Generator().manual_seed(5)
    points = torch.randn(30, 3, generator=g, dtype=F64)
    labels = torch.arange(30) % 3
    model = EmpiricalMixtureScore(points, labels)
    assert model.num_classes == 3
    x = torch.randn(8, 3, generator=g, dtype=F64)
    t = 0.35
    uncond = EmpiricalMixtureScore(points).score(x, t)
    torch.testing.assert_close(model.score(x, t), uncond, rtol=0, atol=0)
    for c in range(3):
        cond = torch.full((8,), c)
        ref = EmpiricalMixtureScore(points[labels == c]).score(x, t)
        torch.testing.assert_close(model.score(x, t, cond), ref, rtol=1e-12, atol=1e-12)
    mixed = torch.tensor([0, 1, NULL_CLASS, 2, NULL_CLASS, 0, 1, 2])
    s = model.score(x, t, mixed)
    for i, c in enumerate(mixed.tolist()):
        ref = uncond[i] if c == NULL_CLASS else EmpiricalMixtureScore(points[labels == c]).score(x[i:i + 1], t)[0]
        torch.testing.assert_close(s[i], ref, rtol=1e-12, atol=1e-12)


def test_empirical_input_validation():
    with pytest.raises(MemgeoError):
        EmpiricalMixtureScore(torch.zeros(0, 3))
    with pytest.raises(MemgeoError):
        EmpiricalMixtureScore(torch.zeros(3))
    with pytest.raises(MemgeoError, match="NaN"):
        EmpiricalMixtureScore(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(MemgeoError, match="one entry per training point"):
        EmpiricalMixtureScore(torch.zeros(4, 2), torch.zeros(3))
    model = EmpiricalMixtureScore(torch.zeros(4, 2))
    with pytest.raises(MemgeoError, match="unconditional"):
        model.score(torch.zeros(2, 2), 0.5, torch.zeros(2, dtype=torch.long))
    cmodel = EmpiricalMixtureScore(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(MemgeoError, match="cond has shape"):
        cmodel.score(torch.zeros(2, 2), 0.5, torch.zeros(3, dtype=torch.long))


# ============================================================================ samplers


def _mc_check(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, n_se: float = 5.0) -> None:
    """Sample mean/cov within n_se Monte Carlo standard errors of the truth.

    SE(mean_i) = sqrt(C_ii / N); SE(cov_ij) = sqrt((C_ii C_jj + C_ij^2) / N) for Gaussian data.
    """
    n = samples.shape[0]
    m_hat, c_hat = samples.mean(0), torch.cov(samples.T)
    se_m = (cov.diag() / n).sqrt()
    se_c = ((torch.outer(cov.diag(), cov.diag()) + cov**2) / n).sqrt()
    assert bool(((m_hat - mean).abs() <= n_se * se_m + 1e-9).all()), (m_hat, mean)
    assert bool(((c_hat - cov).abs() <= n_se * se_c + 1e-9).all()), (c_hat, cov)


@pytest.mark.parametrize("singular", [False, True])
def test_samplers_reproduce_gaussian_moments(singular):
    mean, cov = _gauss_params(singular)
    model = GaussianScore(mean, cov)
    n = 8000
    g = torch.Generator().manual_seed(6)
    x = torch.randn(n, 3, generator=g, dtype=F64)
    # 1000 steps keep the O(1/steps) discretization bias of the covariance at <= 0.005 (measured with
    # 100k samples; DDIM: 0.035 at 100 steps, 0.009 at 400), well below the SE here (0.006-0.016).
    # Measured max deviations in SE units: mean 2.4 / cov 1.6 (DDPM), 1.2 / 2.4 (DDIM) non-singular;
    # 2.1 / 0.9 and 0.7 / 3.6 singular. DDIM's 3.6 is inherited from the initial noise itself, whose
    # sample covariance is 3.3 SE off in one entry for this seed (DDIM is an affine map here).
    ddpm = sample_ddpm(model, x, steps=1000, generator=g).x0
    ddim = sample_ddim(model, x, steps=1000).x0
    _mc_check(ddpm, mean, cov)
    _mc_check(ddim, mean, cov)
    if singular:
        # The final x0 is the posterior mean, which lies exactly in mean + range(cov).
        evals, evecs = torch.linalg.eigh(cov)
        normal = evecs[:, evals < 1e-12]
        assert normal.shape[1] == 1
        assert float(((ddim - mean) @ normal).abs().max()) < 1e-9
        assert float(((ddpm - mean) @ normal).abs().max()) < 1e-9


def test_ddim_on_empirical_mixture_lands_on_training_points():
    g = torch.Generator().manual_seed(7)
    points = torch.randn(5, 4, generator=g, dtype=F64)
    model = EmpiricalMixtureScore(points)
    x = torch.randn(64, 4, generator=g, dtype=F64)
    res = sample_ddim(model, x, steps=100, return_trajectory=True)
    d = torch.cdist(res.x0, points).min(1).values
    assert float(d.max()) < 1e-2
    # more than one training point is reached
    assert len(set(torch.cdist(res.x0, points).argmin(1).tolist())) >= 2
    assert res.trajectory.shape == (101, 64, 4)
    assert res.ts.shape == (101,) and res.ts.dtype == F64
    assert bool((res.ts[1:] < res.ts[:-1]).all())
    torch.testing.assert_close(res.trajectory[0], x)


def test_sampler_seed_determinism_and_callback():
    model = GaussianScore(*_gauss_params(False))
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = sample_ddpm(model, x, steps=20, generator=torch.Generator().manual_seed(42)).x0
    b = sample_ddpm(model, x, steps=20, generator=torch.Generator().manual_seed(42)).x0
    c = sample_ddpm(model, x, steps=20, generator=torch.Generator().manual_seed(43)).x0
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # DDIM ignores the generator (deterministic)
    d1 = sample_ddim(model, x, steps=20, generator=torch.Generator().manual_seed(1)).x0
    d2 = sample_ddim(model, x, steps=20, generator=torch.Generator().manual_seed(2)).x0
    assert torch.equal(d1, d2)
    seen = []
    res = sample_ddim(model, x, steps=7, callback=seen.append, return_trajectory=True)
    # one dict per network evaluation: 7 steps and the final denoise
    assert [d["step"] for d in seen] == list(range(8))
    np.testing.assert_allclose([d["t"] for d in seen], res.ts.numpy(), rtol=1e-12)
    assert [d["t_next"] for d in seen][-1] is None
    for d, x_next in zip(seen[:-1], res.trajectory[1:]):
        torch.testing.assert_close(d["x_next"], x_next)
    torch.testing.assert_close(seen[-1]["x0"], res.x0)
    assert all(d["x"].shape == (10, 3) and d["forward_evals"] == 1 for d in seen)
    assert res.trajectory.shape == (8, 10, 3)


def test_clip_keeps_x0_in_range():
    model = GaussianScore(torch.zeros(2, dtype=F64), 9 * torch.eye(2, dtype=F64))
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    res = sample_ddim(model, x, steps=20, clip=(-1.0, 1.0))
    assert float(res.x0.abs().max()) <= 1.0
    assert float(sample_ddim(model, x, steps=20).x0.abs().max()) > 1.0


def _conditional_mixture() -> tuple[EmpiricalMixtureScore, torch.Tensor]:
    g = torch.Generator().manual_seed(8)
    points = torch.randn(12, 3, generator=g, dtype=F64)
    return EmpiricalMixtureScore(points, torch.arange(12) % 3), torch.randn(6, 3, generator=g, dtype=F64)


def test_guidance_limits_and_linear_combination():
    model, x = _conditional_mixture()
    cond = torch.tensor([0, 1, 2, 0, 1, 2])
    t = torch.full((6,), 0.4, dtype=F64)
    e_c, e_u = model.eps(x, t, cond), model.eps(x, t, None)
    assert not torch.allclose(e_c, e_u)
    torch.testing.assert_close(guided_eps(model, x, t, cond, 1.0), e_c, rtol=0, atol=0)
    torch.testing.assert_close(guided_eps(model, x, t, cond, 0.0), e_u, rtol=0, atol=0)
    torch.testing.assert_close(guided_eps(model, x, 0.4, cond, 3.5), e_u + 3.5 * (e_c - e_u), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(guided_eps(model, x, 0.4, None, 3.5), e_u, rtol=0, atol=0)
    # the same limits hold for whole sampling runs
    xs = torch.randn(6, 3, generator=torch.Generator().manual_seed(9), dtype=F64)
    u = sample_ddim(model, xs, steps=15).x0
    torch.testing.assert_close(sample_ddim(model, xs, steps=15, cond=cond, guidance=0.0).x0, u, rtol=0, atol=0)
    c1 = sample_ddim(model, xs, steps=15, cond=cond, guidance=1.0).x0
    assert not torch.allclose(c1, u)
    # conditional samples land on points of their own class
    labels = model.labels
    nearest = torch.cdist(c1, model.points).argmin(1)
    assert torch.equal(labels[nearest], cond)


def test_sampler_registry_and_validation():
    assert get_sampler("ddim") is sample_ddim and get_sampler("ddpm") is sample_ddpm
    assert set(SAMPLERS) == {"ddim", "ddpm"}
    with pytest.raises(MemgeoError, match="unknown sampler"):
        get_sampler("bad")
    model = GaussianScore(*_gauss_params(False))
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(MemgeoError, match="eta"):
        sample_ddim(model, x, steps=2, eta=1.5)
    with pytest.raises(MemgeoError, match="steps"):
        sample_ddim(model, x, steps=0)
    with pytest.raises(MemgeoError, match="time range"):
        sample_ddim(model, x, steps=2, t_min=0.5, t_max=0.4)
    with pytest.raises(MemgeoError, match="per-sample shape"):
        sample_ddim(model, torch.zeros(2, 4, dtype=F64), steps=2)
    with pytest.raises(MemgeoError, match="unconditional"):
        sample_ddim(model, x, steps=2, cond=torch.zeros(2, dtype=torch.long))
    grid = time_grid(4, 1.0, 0.2)
    torch.testing.assert_close(grid, torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2], dtype=F64))


# ============================================================================ networks


def _rows_independent(model, x: torch.Tensor, t: torch.Tensor, cond=None, atol: float = 0.0) -> None:
    base = model.eps(x, t, cond)
    g = torch.Generator().manual_seed(11)
    x2 = x.clone()
    x2[1:] = torch.randn(x2[1:].shape, generator=g, dtype=x.dtype)
    t2 = t.clone()
    t2[1:] = 0.9
    cond2 = None if cond is None else torch.cat([cond[:1], torch.full_like(cond[1:], NULL_CLASS)])
    out = model.eps(x2, t2, cond2)
    torch.testing.assert_close(out[0], base[0], rtol=0, atol=atol)
    # and a batch of one gives the same row
    torch.testing.assert_close(model.eps(x[:1], t[:1], None if cond is None else cond[:1])[0], base[0], rtol=0, atol=atol)


def test_mlp_eps_shapes_conditioning_and_row_independence():
    torch.manual_seed(0)
    cfg = MLPConfig(data_shape=(1, 2, 3), hidden=16, depth=2, time_dim=8, num_classes=3)
    model = MLPEps(cfg).to(F64).eval()
    assert isinstance(build_model(cfg), MLPEps) and model.dim == 6
    x = torch.randn(5, 1, 2, 3, dtype=F64)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=F64)
    cond = torch.tensor([0, 1, 2, NULL_CLASS, 1])
    out = model.eps(x, t, cond)
    assert out.shape == x.shape and out.dtype == F64
    none = model.eps(x, t, None)
    torch.testing.assert_close(out[3], none[3], rtol=0, atol=0)  # NULL_CLASS row == unconditional
    assert not torch.allclose(out[0], none[0])
    torch.testing.assert_close(model.eps(x, t, torch.full((5,), NULL_CLASS)), none, rtol=0, atol=0)
    torch.testing.assert_close(model.score(x, t, cond), -out / model.schedule.sigma(t)[:, None, None, None])
    assert model.eps(x, 0.5).shape == x.shape  # scalar t broadcast
    _rows_independent(model, x, t, cond, atol=1e-12)
    uncond = MLPEps(MLPConfig(data_shape=(2,), hidden=8, depth=1, time_dim=8)).to(F64)
    assert uncond.eps(torch.zeros(4, 2, dtype=F64), 0.5).shape == (4, 2)
    with pytest.raises(MemgeoError, match="unconditional"):
        uncond.eps(torch.zeros(4, 2, dtype=F64), 0.5, torch.zeros(4, dtype=torch.long))
    with pytest.raises(MemgeoError, match="per-sample shape"):
        uncond.eps(torch.zeros(4, 3, dtype=F64), 0.5)
    with pytest.raises(ValueError):
        MLPConfig(data_shape=(2,), hidden=8, unknown=1)


def test_unet_eps_shapes_conditioning_and_row_independence():
    torch.manual_seed(0)
    cfg = UNetConfig(data_shape=(1, 8, 8), channels=(8, 16), num_classes=3)
    model = UNetEps(cfg).eval()
    assert isinstance(build_model(cfg), UNetEps)
    x = torch.randn(4, 1, 8, 8)
    t = torch.tensor([0.1, 0.4, 0.6, 0.95])
    cond = torch.tensor([2, NULL_CLASS, 0, 1])
    with torch.no_grad():
        out = model.eps(x, t, cond)
        none = model.eps(x, t, None)
        assert out.shape == (4, 1, 8, 8)
        torch.testing.assert_close(out[1], none[1], rtol=0, atol=1e-6)
        assert not torch.allclose(out[0], none[0])
        _rows_independent(model, x, t, cond, atol=1e-5)
        plain = UNetEps(UNetConfig(data_shape=(2, 8, 8), channels=(8, 16))).eval()
        assert plain.eps(torch.randn(3, 2, 8, 8), 0.3).shape == (3, 2, 8, 8)
        _rows_independent(plain, torch.randn(3, 2, 8, 8), torch.tensor([0.2, 0.5, 0.8]), atol=1e-5)



def test_x0_prediction_converts_to_the_exact_noise_and_gives_flat_off_manifold_jacobian(tmp_path):
    from memgeo.geometry.jacobian import score_jacobian
    from memgeo.models.nets import output_to_eps

    sch = VPSchedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, dtype=F64, generator=g)
    noise = torch.randn(6, 3, dtype=F64, generator=g)
    t = torch.tensor([0.001, 0.01, 0.1, 0.3, 0.7, 1.0], dtype=F64)
    xt = sch.sqrt_alpha_bar(t)[:, None] * x0 + sch.sigma(t)[:, None] * noise
    # a perfect clean-data output gives back exactly the noise that was added
    torch.testing.assert_close(output_to_eps(x0, xt, t, sch, "x0"), noise, rtol=1e-10, atol=1e-10)
    assert output_to_eps(x0, xt, t, sch, "eps") is x0
    # a network whose clean-data output is constant has score -(x - psi c)/sigma^2: Jacobian exactly -I/sigma^2
    model = MLPEps(MLPConfig(data_shape=(3,), hidden=16, depth=1, time_dim=8, prediction="x0")).to(F64).eval()
    with torch.no_grad():
        model.out.weight.zero_()
    for tv in (0.01, 0.2):
        jac = score_jacobian(model, torch.randn(4, 3, dtype=F64, generator=g), tv)
        expected = -torch.eye(3, dtype=F64) / float(sch.sigma(torch.tensor(tv, dtype=F64))) ** 2
        torch.testing.assert_close(jac, expected.expand(4, 3, 3), rtol=1e-10, atol=1e-8)
    # the choice survives a checkpoint round trip
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config.prediction == "x0"
    x = torch.randn(2, 3, generator=g)
    torch.testing.assert_close(loaded.eps(x, 0.3), model.float().eps(x, 0.3))
    with pytest.raises(ValueError):
        MLPConfig(data_shape=(3,), prediction="v")


# ============================================================================ training and checkpoints

TINY = MLPConfig(data_shape=(2,), hidden=32, depth=1, time_dim=16)
RESUME_CFG = TrainConfig(steps=60, batch_size=64, lr=3e-3, lr_warmup=5, log_every=10, checkpoint_every=30,
                         ema_decay=0.9, seed=3)


@pytest.fixture(scope="module")
def toy_data() -> torch.Tensor:
    return make_toy2d(n=512, n_duplicates=16, seed=0).x


@pytest.fixture(scope="module")
def straight_run(toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "straight"
    return train(TINY, RESUME_CFG, toy_data, out_dir=out, progress=False), out


def test_training_lowers_the_loss(toy_data):
    cfg = TrainConfig(steps=200, batch_size=128, lr=3e-3, lr_warmup=10, log_every=20, ema_decay=0.99)
    res = train(TINY, cfg, toy_data, progress=False)
    losses = [e["loss"] for e in res.log]
    assert len(losses) == 10 and [e["step"] for e in res.log] == list(range(20, 201, 20))
    # Measured: 0.63 over steps 1-20, 0.18 over steps 181-200.
    assert losses[-1] < 0.5 * losses[0]
    assert res.steps_done == 200 and res.resumed_from == 0
    assert not res.model.training
    assert all(not p.requires_grad for p in res.model.parameters())


class _Interrupt(Exception):
    pass


def test_resume_is_bit_identical(toy_data, straight_run, tmp_path):
    straight, _ = straight_run
    out = tmp_path / "resumed"

    def crash(entry):  # dies after the step-30 checkpoint, before the one at step 60
        if entry["step"] == 40:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(TINY, RESUME_CFG, toy_data, out_dir=out, progress=False, on_log=crash)
    meta = safe_open(str(out / "state.safetensors"), framework="pt").metadata()
    assert meta["step"] == "30"
    resumed = train(TINY, RESUME_CFG, toy_data, out_dir=out, progress=False)
    assert resumed.resumed_from == 30 and resumed.steps_done == 30
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert [e["loss"] for e in resumed.log] == [e["loss"] for e in straight.log]
    # resuming a finished run does nothing and returns the same EMA weights
    again = train(TINY, RESUME_CFG, toy_data, out_dir=out, progress=False)
    assert again.steps_done == 0 and all(torch.equal(again.model.state_dict()[k], sa[k]) for k in sa)
    assert (out / "train_log.csv").is_file()


def test_extending_a_finished_run_is_bit_identical(toy_data, straight_run, tmp_path):
    """30 steps, then the same settings with steps=60 in the same folder: resumes from step 30."""
    straight, _ = straight_run
    out = tmp_path / "extended"
    first = train(TINY, RESUME_CFG.model_copy(update={"steps": 30}), toy_data, out_dir=out, progress=False)
    assert first.steps_done == 30
    assert not all(torch.equal(first.model.state_dict()[k], v) for k, v in straight.model.state_dict().items())
    ext = train(TINY, RESUME_CFG, toy_data, out_dir=out, progress=False)
    assert ext.resumed_from == 30 and ext.steps_done == 30
    for k, v in straight.model.state_dict().items():
        assert torch.equal(ext.model.state_dict()[k], v), k
    assert [e["loss"] for e in ext.log] == [e["loss"] for e in straight.log]
    assert json.loads(safe_open(str(out / "model.safetensors"), framework="pt").metadata()["train_config"])["steps"] == 60
    with pytest.raises(MemgeoError, match="beyond steps=20"):
        train(TINY, RESUME_CFG.model_copy(update={"steps": 20}), toy_data, out_dir=out, progress=False)


def test_log_averages_only_the_steps_it_saw(toy_data, tmp_path):
    """Each loss entry is the mean over the steps since the previous entry, also across a resume."""
    fine = train(TINY, RESUME_CFG, toy_data, progress=False).log  # entries every 10 steps
    coarse_cfg = RESUME_CFG.model_copy(update={"log_every": 20})  # checkpoints at 30 fall between entries

    def crash(entry):
        if entry["step"] == 40:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(TINY, coarse_cfg, toy_data, out_dir=tmp_path / "c", progress=False, on_log=crash)
    coarse = train(TINY, coarse_cfg, toy_data, out_dir=tmp_path / "c", progress=False).log
    assert [e["step"] for e in coarse] == [20, 40, 60]
    by_step = {e["step"]: e["loss"] for e in fine}
    assert coarse[0]["loss"] == pytest.approx((by_step[10] + by_step[20]) / 2, rel=1e-12)
    assert coarse[1]["loss"] == pytest.approx(by_step[40], rel=1e-12)  # only steps 31-40 after the resume
    assert coarse[2]["loss"] == pytest.approx((by_step[50] + by_step[60]) / 2, rel=1e-12)
    partial = train(TINY, RESUME_CFG.model_copy(update={"steps": 25}), toy_data, progress=False).log
    assert [e["step"] for e in partial] == [10, 20, 25]
    assert partial[1]["loss"] == pytest.approx(by_step[20], rel=1e-12)


def test_resume_with_different_config_raises(toy_data, straight_run, tmp_path):
    _, out = straight_run
    with pytest.raises(MemgeoError, match="different config"):
        train(TINY, RESUME_CFG.model_copy(update={"lr": 1e-2}), toy_data, out_dir=out, progress=False)
    with pytest.raises(MemgeoError, match="different config"):
        train(TINY.model_copy(update={"hidden": 16}), RESUME_CFG, toy_data, out_dir=out, progress=False)


def test_train_input_validation(toy_data):
    cfg = TrainConfig(steps=1, batch_size=4)
    with pytest.raises(MemgeoError, match="per-sample shape"):
        train(TINY, cfg, torch.zeros(10, 3), progress=False)
    with pytest.raises(MemgeoError, match="NaN"):
        train(TINY, cfg, torch.full((10, 2), float("nan")), progress=False)
    with pytest.raises(MemgeoError, match="labels"):
        train(TINY, cfg, toy_data, labels=torch.zeros(len(toy_data), dtype=torch.long), progress=False)
    cond_cfg = TINY.model_copy(update={"num_classes": 2})
    with pytest.raises(MemgeoError, match="labels"):
        train(cond_cfg, cfg, toy_data, progress=False)
    with pytest.raises(MemgeoError, match="labels"):
        train(cond_cfg, cfg, toy_data, labels=torch.full((len(toy_data),), 2), progress=False)


def test_training_accepts_float64_data(toy_data):
    cfg = TrainConfig(steps=5, batch_size=16, log_every=5)
    a = train(TINY, cfg, toy_data, progress=False).model.state_dict()
    b = train(TINY, cfg, toy_data.to(F64), progress=False).model.state_dict()
    assert all(torch.equal(a[k], b[k]) and b[k].dtype == torch.float32 for k in a)


def test_conditional_training_runs(toy_data):
    labels = (toy_data[:, 0] > 0).long()
    cfg = TrainConfig(steps=5, batch_size=16, log_every=5)
    res = train(TINY.model_copy(update={"num_classes": 2}), cfg, toy_data, labels=labels, progress=False)
    x = torch.zeros(3, 2)
    assert res.model.eps(x, 0.5, torch.tensor([0, 1, NULL_CLASS])).shape == (3, 2)


def test_load_model_round_trip(straight_run, tmp_path):
    straight, out = straight_run
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 2, generator=g)
    t = torch.rand(7, generator=g)
    for src in (out, out / "model.safetensors"):
        loaded = load_model(src)
        assert isinstance(loaded, MLPEps) and not loaded.training and loaded.config == TINY
        with torch.no_grad():
            assert torch.equal(loaded.eps(x, t), straight.model.eps(x, t))
    # save_model / load_model on a fresh folder
    path = save_model(straight.model, tmp_path / "copy")
    assert path.name == "model.safetensors"
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "copy").eps(x, t), straight.model.eps(x, t))
    # a UNet survives the round trip too
    torch.manual_seed(0)
    unet = UNetEps(UNetConfig(data_shape=(1, 8, 8), channels=(8, 16), num_classes=2)).eval()
    save_model(unet, tmp_path / "unet")
    back = load_model(tmp_path / "unet")
    xi = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(back.eps(xi, 0.3, torch.tensor([1, NULL_CLASS])), unet.eps(xi, 0.3, torch.tensor([1, NULL_CLASS])))


def test_corrupt_checkpoints_raise(straight_run, tmp_path):
    _, out = straight_run
    raw = (out / "model.safetensors").read_bytes()
    cases = {
        "truncated": raw[: len(raw) // 2],
        "header_only": raw[:40],
        "garbage": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
        "empty": b"",
        "text": b"this is not a checkpoint\n",
    }
    for name, blob in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(blob)
        with pytest.raises(MemgeoError):
            load_model(folder)
        with pytest.raises(MemgeoError):
            load(str(folder))
    with pytest.raises(MemgeoError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def _rewrite(src: Path, dst: Path, edit) -> None:
    tensors = load_file(str(src))
    meta = dict(safe_open(str(src), framework="pt").metadata())
    edit(tensors, meta)
    dst.mkdir(parents=True)
    save_file(tensors, str(dst / "model.safetensors"), metadata=meta)


def test_edited_checkpoint_metadata_raises(straight_run, tmp_path):
    _, out = straight_run
    src = out / "model.safetensors"

    def more_hidden(tensors, meta):
        cfg = json.loads(meta["model_config"])
        cfg["hidden"] = 64
        meta["model_config"] = json.dumps(cfg)

    _rewrite(src, tmp_path / "hidden", more_hidden)
    with pytest.raises(MemgeoError, match="do not match its config"):
        load_model(tmp_path / "hidden")

    def deeper(tensors, meta):
        cfg = json.loads(meta["model_config"])
        cfg["depth"] = 2
        meta["model_config"] = json.dumps(cfg)

    _rewrite(src, tmp_path / "deeper", deeper)
    with pytest.raises(MemgeoError, match="do not match its config"):
        load_model(tmp_path / "deeper")

    def bad_json(tensors, meta):
        meta["model_config"] = "{not json"

    _rewrite(src, tmp_path / "badjson", bad_json)
    with pytest.raises(MemgeoError, match="model config .* is invalid"):
        load_model(tmp_path / "badjson")

    def unknown_field(tensors, meta):
        cfg = json.loads(meta["model_config"])
        cfg["colour"] = "red"
        meta["model_config"] = json.dumps(cfg)

    _rewrite(src, tmp_path / "extra", unknown_field)
    with pytest.raises(MemgeoError, match="is invalid"):
        load_model(tmp_path / "extra")

    def no_config(tensors, meta):
        del meta["model_config"]

    _rewrite(src, tmp_path / "noconfig", no_config)
    with pytest.raises(MemgeoError, match="no memgeo model config"):
        load_model(tmp_path / "noconfig")

    def drop_tensor(tensors, meta):
        tensors.pop(sorted(tensors)[0])

    _rewrite(src, tmp_path / "missing", drop_tensor)
    with pytest.raises(MemgeoError, match="do not match its config"):
        load_model(tmp_path / "missing")


def test_load_specs_and_checkpoints(straight_run, tmp_path):
    straight, out = straight_run
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(9, 3, generator=g, dtype=F64)
    np.save(tmp_path / "pts.npy", pts.numpy())
    emp = load(f"empirical:{tmp_path / 'pts.npy'}")
    assert isinstance(emp, EmpiricalMixtureScore)
    x = torch.randn(4, 3, generator=g, dtype=F64)
    torch.testing.assert_close(emp.score(x, 0.3), EmpiricalMixtureScore(pts).score(x, 0.3), rtol=0, atol=0)
    np.save(tmp_path / "pts32.npy", pts.numpy().astype(np.float32))
    assert load(f"empirical:{tmp_path / 'pts32.npy'}").points.dtype == torch.float32

    mean, cov = _gauss_params(True)
    np.save(tmp_path / "mean.npy", mean.numpy())
    np.save(tmp_path / "cov.npy", cov.numpy())
    gm = load(f"gaussian:{tmp_path / 'mean.npy'},{tmp_path / 'cov.npy'}")
    assert isinstance(gm, GaussianScore)
    torch.testing.assert_close(gm.score(x, 0.3), GaussianScore(mean, cov).score(x, 0.3), rtol=1e-14, atol=1e-14)

    ck = load(str(out))
    xs = torch.randn(3, 2, generator=g)
    with torch.no_grad():
        assert torch.equal(ck.eps(xs, 0.5), straight.model.eps(xs, 0.5))
    assert isinstance(load(str(out / "model.safetensors")), MLPEps)

    bad = pts.numpy().copy()
    bad[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "vec.npy", np.zeros(5))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    (tmp_path / "empty_dir").mkdir()
    errors = {
        f"empirical:{tmp_path / 'nan.npy'}": "NaN",
        f"empirical:{tmp_path / 'missing.npy'}": "does not exist",
        f"empirical:{tmp_path / 'vec.npy'}": r"\(N, D\)",
        f"empirical:{tmp_path / 'junk.npy'}": "not a readable",
        f"gaussian:{tmp_path / 'mean.npy'}": "bad gaussian SPEC",
        f"gaussian:{tmp_path / 'mean.npy'},{tmp_path / 'nan.npy'}": "NaN|shapes",
        f"gaussian:{tmp_path / 'mean.npy'},{tmp_path / 'missing.npy'}": "does not exist",
        "hologram:foo.npy": "unknown model SPEC kind",
        str(tmp_path / "empty_dir"): "has no model.safetensors",
        str(tmp_path / "no_such_model.safetensors"): "does not exist",
        "just-a-name": "neither a checkpoint folder",
    }
    for spec, msg in errors.items():
        with pytest.raises(MemgeoError, match=msg):
            load(spec)
