"""The 2015 diffusion as a memgeo DiffusionModel (SD2015ScoreModel): exact Gaussian score and FLIPD, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from memgeo.errors import MemgeoError
from memgeo.geometry.jacobian import score_jacobian
from memgeo.geometry.lid import get_lid_estimator
from memgeo.models.families import save_generator
from memgeo.models.sd2015 import SD2015Config, SD2015Diffusion
from memgeo.models.sd2015_adapter import SD2015ScoreModel
from test_sd2015 import ExactGaussianKernels, _abar

M = torch.tensor([0.7, -1.2, 0.3], dtype=torch.float64)
S = torch.tensor([0.5, 1.3, 0.05], dtype=torch.float64)


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _exact(T: int = 10) -> ExactGaussianKernels:
    cfg = SD2015Config(data_shape=(3,), T=T, schedule="sigmoid", beta_min=1e-2, beta_max=0.4)
    return ExactGaussianKernels(cfg, M, S)


def _gauss_marginal_var(abar: float) -> torch.Tensor:
    """Variance of q_t for data N(M, diag S^2) at signal power abar: abar S^2 + 1 - abar, shape (3,)."""
    return abar * S**2 + (1.0 - abar)


def test_schedule_puts_step_k_at_k_over_T(f64):
    model = _exact(10)
    ad = SD2015ScoreModel(model)
    abar = _abar(model)  # product formula, independent of model.alpha_bar
    for k in range(1, 11):
        t = torch.tensor(k / 10)
        assert float(ad.schedule.alpha_bar(t)) == pytest.approx(abar[k], rel=1e-10)
        assert float(ad.schedule.sigma(t)) == pytest.approx(math.sqrt(1 - abar[k]), rel=1e-10)
    assert ad.num_classes is None and ad.data_shape == (3,)


def test_adapter_score_is_exact_gaussian_score_at_the_steps(f64):
    model = _exact(10)
    ad = SD2015ScoreModel(model)
    abar = _abar(model)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)) * 2
    for k in (1, 4, 10):
        v = _gauss_marginal_var(abar[k])
        exact = -(x - math.sqrt(abar[k]) * M) / v
        got = ad.score(x, k / 10)
        assert torch.allclose(got, exact, rtol=1e-9, atol=1e-9)
        # also equals the 2015 model's own score, and eps = -sigma * score
        assert torch.allclose(got, model.score(x, k), rtol=1e-9, atol=1e-9)
        assert torch.allclose(ad.eps(x, k / 10), -math.sqrt(1 - abar[k]) * exact, rtol=1e-9, atol=1e-9)
        # dense Jacobian through vmap(jacrev): exact Hessian -diag(1/v)
        jac = score_jacobian(ad, x, k / 10)
        assert torch.allclose(jac, torch.diag(-1 / v).expand(5, 3, 3), rtol=1e-9, atol=1e-9)
    # between steps: linear interpolation of the neighbouring steps' scores (t = 4.25 / 10)
    mid = ad.score(x, 0.425)
    assert torch.allclose(mid, 0.75 * model.score(x, 4) + 0.25 * model.score(x, 5), rtol=1e-9, atol=1e-9)
    # below the first step the first step's score is used
    assert torch.allclose(ad.score(x, 0.02), model.score(x, 1), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_flipd_of_adapter_matches_gaussian_closed_form(f64, k):
    model = _exact(10)
    ad = SD2015ScoreModel(model)
    abar = _abar(model)[k]
    x = torch.tensor([[0.7, -1.2, 0.3], [1.5, 0.0, -0.4], [0.0, 2.0, 0.3]])
    lid = get_lid_estimator("flipd", t0=k / 10).estimate(ad, x, None)
    # FLIPD = D + sigma^2 (tr H + ||s||^2) at y = psi x, with q_t = N(psi M, diag v)
    psi, sig2 = math.sqrt(abar), 1 - abar
    v = _gauss_marginal_var(abar)
    y = psi * x
    s = -(y - psi * M) / v
    expected = 3 + sig2 * (-(1 / v).sum() + (s**2).sum(-1))
    assert torch.allclose(lid.double(), expected, rtol=1e-8, atol=1e-8)
    # the near-degenerate third coordinate (std 0.05) is already mostly resolved at t = 0.1
    if k == 1:
        assert float(expected[0]) < 2.5


def test_adapter_rejects_bad_inputs():
    with pytest.raises(MemgeoError):
        SD2015ScoreModel(SD2015Diffusion(SD2015Config(data_shape=(2,), T=1)))
    with pytest.raises(MemgeoError):
        SD2015ScoreModel(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    ad = SD2015ScoreModel(SD2015Diffusion(SD2015Config(data_shape=(2,), T=5, hidden=(8,))))
    with pytest.raises(MemgeoError):
        ad.score(torch.zeros(3, 2), 0.5, cond=torch.zeros(3, dtype=torch.long))


def test_lid_and_audit_cli_on_sd2015_checkpoint(run_cli, tmp_path):
    model = SD2015Diffusion(SD2015Config(data_shape=(2,), T=8, hidden=(16, 16), seed=1))
    save_generator(model, tmp_path / "ckpt")
    g = torch.Generator().manual_seed(0)
    train = torch.randn(60, 2, generator=g)
    pts = torch.cat([train[:3], torch.randn(5, 2, generator=g)])
    np.save(tmp_path / "train.npy", train.numpy())
    np.save(tmp_path / "pts.npy", pts.numpy())

    code, _, err = run_cli("lid", "--model", tmp_path / "ckpt", "--points", tmp_path / "pts.npy",
                           "--estimator", "flipd", "--t0", "0.25", "--out", tmp_path / "lid")
    assert code == 0, err
    res = json.loads((tmp_path / "lid" / "lid.json").read_text())
    assert len(res["lid"]) == 8 and all(math.isfinite(v) for v in res["lid"])
    # independent reference: FLIPD from the 2015 model's own score and a finite-difference trace
    ad = SD2015ScoreModel(model)
    t0 = 0.25  # step 2 of 8
    abar = float(model.alpha_bar[2])
    y = (math.sqrt(abar) * pts).double()
    m64 = SD2015Diffusion(SD2015Config(data_shape=(2,), T=8, hidden=(16, 16), seed=1)).double()
    h = 1e-5
    tr = sum((m64.score(y + h * torch.eye(2)[i], 2)[:, i] - m64.score(y - h * torch.eye(2)[i], 2)[:, i]) / (2 * h)
             for i in range(2))
    ref = 2 + (1 - abar) * (tr + (m64.score(y, 2) ** 2).sum(-1))
    assert np.allclose(res["lid"], ref.detach().numpy(), rtol=1e-3, atol=1e-3)
    assert float(ad.schedule.alpha_bar(torch.tensor(t0))) == pytest.approx(abar, rel=1e-5)

    code, _, err = run_cli("audit", "--model", tmp_path / "ckpt", "--points", tmp_path / "pts.npy",
                           "--train-data", tmp_path / "train.npy", "--out", tmp_path / "audit")
    assert code == 0, err
    aud = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert aud["n"] == 8 and aud["lid_model_estimator"] == "flipd" and aud["sharpness_kind"] == "score_jacobian"
    assert all(math.isfinite(r["sharpness"]) and math.isfinite(r["lid_model"]) for r in aud["samples"])
    assert sum(r["is_copy"] for r in aud["samples"]) == 3

    # the generator-Jacobian estimator still refuses it (no decoder)
    code, _, err = run_cli("lid", "--model", tmp_path / "ckpt", "--points", tmp_path / "pts.npy",
                           "--estimator", "generator_jacobian", "--out", tmp_path / "gj")
    assert code == 2 and "generator_jacobian" in err
