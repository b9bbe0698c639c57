"""Tests of the 2015 diffusion probabilistic model (Sohl-Dickstein et al.) and the swiss roll data."""

from __future__ import annotations

import math

import pytest
import torch

from memgeo.data.swissroll import SWISS_ROLL_SCALE, make_swiss_roll_2d
from memgeo.errors import MemgeoError
from memgeo.models.sd2015 import SD2015Config, SD2015Diffusion, beta_schedule, train_sd2015

# Probabilists' Gauss-Hermite rule with 3 nodes: exact for E[f(eps)], eps ~ N(0, 1), f of degree <= 5.
GH_NODES = (-math.sqrt(3.0), 0.0, math.sqrt(3.0))
GH_WEIGHTS = (1.0 / 6.0, 2.0 / 3.0, 1.0 / 6.0)


def _abar(model: SD2015Diffusion) -> list[float]:
    """abar_0..abar_T by the product formula, in Python floats (independent of model.alpha_bar)."""
    out = [1.0]
    for b in model.betas.tolist():
        out.append(out[-1] * (1.0 - b))
    return out


class ExactGaussianKernels(SD2015Diffusion):
    """Reverse kernels set to the exact q(x_{t-1} | x_t) for data N(m, diag s^2).

    The marginals are q(x_t) = N(a_t m, v_t), a_t = sqrt(abar_t), v_t = abar_t s^2 + 1 - abar_t, and the
    pair (x_{t-1}, x_t) is jointly Gaussian with covariance sqrt(alpha_t) v_{t-1}, hence
    q(x_{t-1} | x_t) = N(a_{t-1} m + sqrt(alpha_t) v_{t-1} / v_t (x_t - a_t m), v_{t-1} beta_t / v_t).
    """

    def __init__(self, config: SD2015Config, m: torch.Tensor, s: torch.Tensor) -> None:
        super().__init__(config)
        self.m, self.s = m, s
        ab = torch.tensor(_abar(self), dtype=torch.float64)
        self.a = ab.sqrt()
        self.v = ab[:, None] * s**2 + (1.0 - ab[:, None])  # (T + 1, D)
        self.b = torch.tensor(self.betas.tolist(), dtype=torch.float64)

    def reverse_params(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a_t, a_p = self.a[t][:, None], self.a[t - 1][:, None]
        v_t, v_p = self.v[t], self.v[t - 1]
        beta = self.b[t - 1][:, None]
        mean = a_p * self.m + torch.sqrt(1.0 - beta) * v_p / v_t * (x_t - a_t * self.m)
        return mean, torch.log(v_p * beta / v_t)


def _gauss_logpdf(x: torch.Tensor, m: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - m) ** 2 / var)).sum(-1)


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# --- schedule and forward process -------------------------------------------------------------------
def test_schedules_closed_form():
    b = beta_schedule(40, "sigmoid", 1e-3, 0.5)
    logit = torch.log(b / (1 - b))
    assert b[0].item() == pytest.approx(1e-3, rel=1e-12) and b[-1].item() == pytest.approx(0.5, rel=1e-12)
    assert torch.allclose(logit.diff(), logit.diff()[0].expand(39), atol=1e-12)  # linear in logit
    lin = beta_schedule(5, "linear", 0.1, 0.5)
    assert torch.allclose(lin, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64))
    with pytest.raises(MemgeoError):
        beta_schedule(5, "cosine")


def test_forward_marginals_match_product_formula_and_monte_carlo(f64):
    model = SD2015Diffusion(SD2015Config(data_shape=(1,), T=10, schedule="linear", beta_min=0.05, beta_max=0.3))
    abar = _abar(model)
    g = torch.Generator().manual_seed(0)
    n, x0 = 200_000, 1.5
    x = torch.full((n, 1), x0)
    for t in range(1, 11):
        a, v = model.forward_marginal(t)
        assert a == pytest.approx(math.sqrt(abar[t]), rel=1e-12) and v == pytest.approx(1 - abar[t], rel=1e-12)
        x = model.forward_step(x, t, g)
        # Monte Carlo of the chain against the closed form (5 standard errors)
        se_mean = math.sqrt(v / n)
        se_var = v * math.sqrt(2.0 / n)
        assert abs(x.mean().item() - a * x0) < 5 * se_mean
        assert abs(x.var().item() - v) < 5 * se_var
        # one-shot marginal draw agrees too
        xq = model.q_sample(torch.full((n, 1), x0), t, generator=g)
        assert abs(xq.mean().item() - a * x0) < 5 * se_mean
    assert model.forward_marginal(0) == (1.0, 0.0)


# --- bound with exact reverse kernels -------------------------------------------------------------
def _expected_bound(model: SD2015Diffusion, x0: torch.Tensor) -> torch.Tensor:
    """E over x_t of the analytic-KL bound, exactly (each term is quadratic in its eps_t)."""
    T, n = model.T, x0.shape[0]
    total = torch.zeros(n)
    for node, w in zip(GH_NODES, GH_WEIGHTS):
        noise = torch.full((T, n, model.data_dim), node)
        total = total + w * model.bound(x0, noise=noise)
    return total


@pytest.mark.parametrize("schedule,T", [("sigmoid", 40), ("linear", 7)])
def test_bound_with_exact_kernels_is_loglik_minus_prior_gap(f64, schedule, T):
    m = torch.tensor([0.7, -1.2])
    s = torch.tensor([0.5, 1.3])
    cfg = SD2015Config(data_shape=(2,), T=T, schedule=schedule, beta_min=1e-2, beta_max=0.4)
    model = ExactGaussianKernels(cfg, m, s)
    x0 = torch.tensor([[0.0, 0.0], [1.0, -2.0], [0.3, 2.5]])
    # With exact kernels, log p(x_T) + sum_t [log q(x_{t-1}|x_t) - log q(x_t|x_{t-1})] telescopes to
    # log q(x_0) + log N(x_T; 0, I) - log q_T(x_T); take its expectation over x_T ~ q(x_T | x_0).
    abT = _abar(model)[T]
    vT = abT * s**2 + 1 - abT
    e_sq = abT * x0**2 + (1 - abT)
    e_sq_c = abT * (x0 - m) ** 2 + (1 - abT)
    gap = (-0.5 * e_sq + 0.5 * torch.log(vT) + 0.5 * e_sq_c / vT).sum(-1)
    expected = _gauss_logpdf(x0, m, s**2) + gap
    got = _expected_bound(model, x0)
    assert torch.allclose(got, expected, atol=1e-9, rtol=0), (got, expected)
    # the gap is not negligible here, so the check does see the prior-mismatch term
    assert gap.abs().max() > 1e-3


def test_bound_is_exact_loglik_for_standard_normal_data(f64):
    """Data N(0, I): q_T = N(0, I) is the prior, the bound is tight in expectation and every importance
    weight is exactly p(x_0) (the reverse kernels are the true posterior of the whole chain)."""
    d = 3
    model = ExactGaussianKernels(SD2015Config(data_shape=(d,), T=12), torch.zeros(d), torch.ones(d))
    x0 = torch.tensor([[0.1, -0.4, 2.0], [1.5, 0.0, -1.0]])
    exact = _gauss_logpdf(x0, torch.zeros(d), torch.ones(d))
    assert torch.allclose(_expected_bound(model, x0), exact, atol=1e-9, rtol=0)
    lw = model.log_weights(x0, k=5, generator=torch.Generator().manual_seed(1))
    assert lw.shape == (5, 2)
    assert torch.allclose(lw, exact.expand(5, 2), atol=1e-8, rtol=0)
    assert torch.allclose(model.iw_bound(x0, 4), exact, atol=1e-8, rtol=0)


def test_score_from_exact_reverse_mean_is_exact_score(f64):
    m, s = torch.tensor([0.7, -1.2]), torch.tensor([0.5, 1.3])
    model = ExactGaussianKernels(SD2015Config(data_shape=(2,), T=20), m, s)
    ab = _abar(model)
    x = torch.tensor([[0.0, 1.0], [2.0, -3.0], [-1.0, 0.5]])
    for t in (1, 7, 20):
        v = ab[t] * s**2 + 1 - ab[t]
        exact = -(x - math.sqrt(ab[t]) * m) / v
        assert torch.allclose(model.score(x, t), exact, atol=1e-10)
    t_vec = torch.tensor([1, 7, 20])
    out = model.score(x, t_vec)
    for i, t in enumerate((1, 7, 20)):
        assert torch.allclose(out[i], model.score(x[i:i + 1], t)[0])


def test_bound_terms_layout_and_prior_kl(f64):
    model = SD2015Diffusion(SD2015Config(data_shape=(1, 2, 2), T=5, hidden=(8,)))
    x0 = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    terms = model.bound_terms(x0, generator=torch.Generator().manual_seed(1))
    assert terms.shape == (6, 4)
    assert (terms[1:] <= 1e-12).all()  # negative KLs
    abT = _abar(model)[5]
    prior_kl = 0.5 * (abT * x0**2 + (1 - abT) - 1 - math.log(1 - abT)).sum((1, 2, 3))
    assert torch.allclose(-terms[5], prior_kl, atol=1e-12)
    assert torch.allclose(model.bound(x0, generator=torch.Generator().manual_seed(1)), terms.sum(0))
    assert model.elbo(x0, n_samples=2).shape == (4,)
    assert model.has("elbo") and model.has("iw_bound") and model.has("prior_sample") and model.has("score")
    assert not model.has("decode") and not model.has("log_prob")


def test_bad_inputs():
    model = SD2015Diffusion(SD2015Config(data_shape=(2,), T=4, hidden=(8,)))
    with pytest.raises(MemgeoError):
        model.bound(torch.zeros(3, 3))
    with pytest.raises(MemgeoError):
        model.bound(torch.zeros(3, 2), noise=torch.zeros(3, 3, 2))
    with pytest.raises(MemgeoError):
        model.score(torch.zeros(3, 2), 5)
    with pytest.raises(MemgeoError):
        model.score(torch.zeros(3, 2), torch.tensor([0.5, 1.0, 1.0]))
    with pytest.raises(MemgeoError):
        model.sample(2, cond=torch.zeros(2))
    with pytest.raises(ValueError):
        SD2015Config(data_shape=(2,), beta_min=0.5, beta_max=0.1)


# --- swiss roll ----------------------------------------------------------------------------------
def test_swiss_roll_on_spiral_and_deterministic():
    x = make_swiss_roll_2d(500, noise=0.0, seed=3, dtype=torch.float64)
    assert x.shape == (500, 2)
    r = x.norm(dim=1)
    assert r.min() >= 1 / 3 - 1e-12 and r.max() <= 1 + 1e-12
    u = r * SWISS_ROLL_SCALE  # raw angle = raw radius
    assert torch.allclose(x, torch.stack([r * torch.cos(u), r * torch.sin(u)], 1), atol=1e-12)
    assert torch.equal(x, make_swiss_roll_2d(500, noise=0.0, seed=3, dtype=torch.float64))
    assert not torch.equal(x, make_swiss_roll_2d(500, noise=0.0, seed=4, dtype=torch.float64))
    x32 = make_swiss_roll_2d(500, noise=0.0, seed=3)
    assert x32.dtype == torch.float32 and torch.allclose(x32.double(), x, atol=1e-6)
    noisy = make_swiss_roll_2d(20_000, noise=0.5, seed=3, dtype=torch.float64)
    clean = make_swiss_roll_2d(20_000, noise=0.0, seed=3, dtype=torch.float64)
    resid = (noisy - clean) * SWISS_ROLL_SCALE  # same angles (drawn first), noise in raw units
    assert abs(resid.std().item() - 0.5) < 0.02
    with pytest.raises(MemgeoError):
        make_swiss_roll_2d(10, noise=-1.0)


# --- training ------------------------------------------------------------------------------------
def test_training_on_swiss_roll_improves_bound():
    torch.manual_seed(0)
    data = make_swiss_roll_2d(2000, noise=0.3, seed=0)
    held = make_swiss_roll_2d(500, noise=0.3, seed=1)
    model = SD2015Diffusion(SD2015Config(data_shape=(2,), hidden=(64, 64), seed=0))
    noise = torch.randn(model.T, 500, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = model.bound(held, noise=noise).mean().item()
    losses = train_sd2015(model, data, steps=300, lr=3e-3, batch=128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        after = model.bound(held, noise=noise).mean().item()
    assert len(losses) == 300 and all(math.isfinite(v) for v in losses)
    assert after > before + 1.0, (before, after)
    x = model.sample(256, generator=torch.Generator().manual_seed(3))
    assert x.shape == (256, 2) and torch.isfinite(x).all()
    # samples land near the roll: most within the unit-ish disk
    assert (x.norm(dim=1) < 1.5).float().mean() > 0.8
    print(f"held-out bound before {before:.3f} after {after:.3f} nats")
