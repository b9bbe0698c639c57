"""Tests for memgeo.geometry: score Jacobians (dense, JVP, VJP) and sharpness spectra.

Ground truths: the Gaussian's exact Hessian -Sigma_t^{-1}; the closed-form posterior covariance of
the smoothed empirical distribution (point mass -> -1/sigma^2, k-dimensional patch -> k flat
directions); torch.autograd.functional.jacobian row by row; finite differences; the adjoint identity.
Everything is float64 with dtypes passed explicitly (the global default dtype is never changed).
"""

from __future__ import annotations

import math

import pytest
import torch

from memgeo.data import make_patch_with_duplicate
from memgeo.errors import MemgeoError
from memgeo.geometry import (
    FLAT_THRESHOLD,
    ScoreJacobianOperator,
    SharpnessResult,
    flat_score_fn,
    jacobian_asymmetry,
    resolve_time,
    score_jacobian,
    sharpness_spectrum,
    spectrum_along_trajectory,
    spectrum_from_jacobian,
)
from memgeo.models import (
    NULL_CLASS,
    EmpiricalMixtureScore,
    GaussianScore,
    MLPConfig,
    MLPEps,
    UNetConfig,
    UNetEps,
    sample_ddim,
)

F64 = torch.float64

# torch emits this once, when forward-mode AD first loads its decompositions; it is not ours.
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.usefixtures("single_thread")]




def _gaussian(singular: bool) -> tuple[GaussianScore, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    d = 5
    a = torch.randn(d, d, generator=g, dtype=F64)
    if singular:
        a[:, 3:] = 0.0  # rank 3: a flat 3-D manifold in R^5
    cov = a @ a.T
    cov = 0.5 * (cov + cov.T)
    mean = torch.randn(d, generator=g, dtype=F64)
    return GaussianScore(mean, cov), cov


def _empirical() -> EmpiricalMixtureScore:
    g = torch.Generator().manual_seed(1)
    return EmpiricalMixtureScore(torch.randn(30, 5, generator=g, dtype=F64))


def _random_mlp(num_classes: int | None = None) -> MLPEps:
    torch.manual_seed(0)
    cfg = MLPConfig(data_shape=(5,), hidden=16, depth=2, time_dim=8, num_classes=num_classes)
    model = MLPEps(cfg).to(F64).eval()
    with torch.no_grad():  # random but not tiny weights, so J is far from symmetric
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, dtype=F64))
    return model


def _reference_jacobian(model, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
    """Row-by-row torch.autograd.functional.jacobian: independent of vmap/jacrev/jvp."""
    out = []
    for b in range(x.shape[0]):
        c = None if cond is None else cond[b:b + 1]
        out.append(torch.autograd.functional.jacobian(lambda xi: model.score(xi[None], t[b:b + 1], c)[0], x[b]))
    return torch.stack(out)


# ============================================================================ Gaussian: J = -Sigma_t^{-1}


@pytest.mark.parametrize("singular", [False, True])
@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_gaussian_score_jacobian_equals_minus_inverse_cov_t(singular, mode):
    """DESIGN acceptance: GaussianScore Jacobian equals -Sigma_t^{-1}."""
    model, cov = _gaussian(singular)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 5, generator=g, dtype=F64)
    t = torch.tensor([0.01, 0.05, 0.2, 0.5, 0.8, 1.0], dtype=F64)
    jac = score_jacobian(model, x, t, chunk_size=4, mode=mode)  # chunk 4 < B = 6: two chunks
    assert jac.shape == (6, 5, 5)
    for b in range(6):
        ab = model.schedule.alpha_bar(t[b])
        ref = -torch.linalg.inv(ab * cov + (1 - ab) * torch.eye(5, dtype=F64))
        torch.testing.assert_close(jac[b], ref, rtol=1e-10, atol=1e-10)
    # matrix-free products agree too
    v = torch.randn(6, 5, generator=g, dtype=F64)
    ref_jv = torch.einsum("bij,bj->bi", jac, v)
    for op_mode in ("jvp", "vjp"):
        op = ScoreJacobianOperator(model, x, t, mode=op_mode)
        torch.testing.assert_close(op.matvec(v), ref_jv, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(op.rmatvec(v), ref_jv, rtol=1e-10, atol=1e-10)  # symmetric


@pytest.mark.parametrize("singular", [False, True])
def test_gaussian_sharpness_spectrum_closed_form(singular):
    model, cov = _gaussian(singular)
    lam = torch.linalg.eigvalsh(cov).clamp_min(0)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(3), dtype=F64)
    for sig in (0.1, 0.5):
        res = sharpness_spectrum(model, x, sigma=sig)
        ab = 1 - sig**2
        ref = torch.sort(-(sig**2) / (ab * lam + sig**2)).values
        for b in range(3):
            torch.testing.assert_close(res.eigenvalues_sigma2[b], ref, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.sigma, torch.full((3,), sig, dtype=F64), rtol=1e-12, atol=0)
        assert float(res.asymmetry.max()) < 1e-12
        assert bool((res.n_positive == 0).all())
        n_flat_ref = int((ref > FLAT_THRESHOLD).sum())
        assert res.n_flat.tolist() == [n_flat_ref] * 3
        torch.testing.assert_close(res.sharpness, torch.full((3,), float(-ref.mean()), dtype=F64))
    if singular:  # the 2 normal directions are exactly point-mass like: lambda sigma^2 = -1
        res = sharpness_spectrum(model, x, sigma=0.3)
        torch.testing.assert_close(res.eigenvalues_sigma2[:, :2], -torch.ones(3, 2, dtype=F64), rtol=0, atol=1e-12)


# ============================================================================ empirical mixture acceptance test


@pytest.fixture(scope="module")
def patch_model():
    # Geometry chosen so that both sigma = 0.1 and 0.3 lie in the regime "data spacing < sigma <
    # data extent" (DESIGN section 3). With the generator's defaults (scale 1, distance 1) sigma = 0.3 is
    # outside it: the duplicated point is only 1 / 0.3 = 3.3 sigma from 4,000 patch points (20 per
    # copy), so ~2.5% of its posterior leaks onto the patch and its normal-direction eigenvalue rises
    # to lambda sigma^2 = -0.44 (measured max |lambda sigma^2 + 1| = 0.56, one "flat" eigenvalue);
    # and the patch (half-width 0.5 psi = 0.48 = 1.6 sigma) is barely wider than sigma (in-patch
    # eigenvalues -0.43 / -0.38, right at the -1/2 threshold). Here: scale 2 (spacing 2/sqrt(4000)
    # = 0.032 < 0.1, half-width 0.95 = 3.2 sigma at sigma 0.3) and distance 2 (6.7 sigma).
    ds = make_patch_with_duplicate(n_patch=4000, dim=64, patch_dim=2, n_duplicates=200, seed=0,
                                   scale=2.0, distance=2.0, dtype=F64)
    assert ds.x.shape == (4200, 64)
    return EmpiricalMixtureScore(ds.x), ds


@pytest.mark.parametrize("sigma", [0.1, 0.3])
def test_empirical_patch_acceptance(patch_model, sigma):
    model, ds = patch_model
    basis, origin = ds.meta["basis"], ds.meta["origin"]
    dup = ds.meta["duplicate_point"][None]
    torch.testing.assert_close(ds.x[4000:], dup.expand(200, 64), rtol=0, atol=0)
    coords = (ds.x[:4000] - origin) @ basis
    centre = int(coords.norm(dim=1).argmin())  # the training point closest to the patch centre
    assert float(coords[centre].norm()) < 0.05  # far from the border (half-width 1.0)
    res = sharpness_spectrum(model, torch.cat([dup, ds.x[centre:centre + 1]]), sigma=sigma, at="scaled")
    ev = res.eigenvalues_sigma2
    assert ev.shape == (2, 64)
    # At the duplicated point: a point mass, every lambda sigma^2 = -1. Measured max |lambda sigma^2 + 1|:
    # 2e-15 (sigma 0.1), 2e-7 (sigma 0.3).
    assert int(res.n_positive[0]) == 0 and int(res.n_flat[0]) == 0
    assert float((ev[0] + 1).abs().max()) < 1e-2
    # Inside the patch: exactly the 2 patch directions are flat (measured top eigenvalues -0.12 / 0.09
    # at sigma 0.1, -0.04 / 0.02 at sigma 0.3); the 62 normal ones stay point-mass like.
    assert int(res.n_flat[1]) == 2
    assert float((ev[1, :-2] + 1).abs().max()) < 1e-2
    # and the flat eigenvectors span the patch plane (measured principal cosines 1 - 2e-16)
    psi = model.schedule.sqrt_alpha_bar(torch.tensor(res.t[1].item(), dtype=F64))
    jac = score_jacobian(model, psi * ds.x[centre:centre + 1], res.t[1:2])[0]
    _, vecs = torch.linalg.eigh(0.5 * (jac + jac.T))
    cosines = torch.linalg.svdvals(vecs[:, -2:].T @ basis)
    assert float(cosines.min()) > 0.99
    assert float(res.asymmetry.max()) < 1e-10


# ============================================================================ JVP / VJP / dense agreement


@pytest.mark.parametrize("which", ["empirical", "mlp", "mlp_cond"])
def test_jacobian_products_agree(which):
    if which == "empirical":
        model, cond = _empirical(), None
    elif which == "mlp":
        model, cond = _random_mlp(), None
    else:
        model, cond = _random_mlp(num_classes=3), torch.tensor([0, 1, 2, NULL_CLASS])
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 5, generator=g, dtype=F64)
    t = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=F64)
    ref = _reference_jacobian(model, x, t, cond)
    for mode in ("rev", "fwd"):
        torch.testing.assert_close(score_jacobian(model, x, t, cond, chunk_size=3, mode=mode), ref,
                                   rtol=1e-10, atol=1e-10)
    v = torch.randn(4, 5, generator=g, dtype=F64)
    w = torch.randn(4, 5, generator=g, dtype=F64)
    jv = torch.einsum("bij,bj->bi", ref, v)
    jtw = torch.einsum("bji,bj->bi", ref, w)
    results = {}
    for mode in ("jvp", "vjp"):
        op = ScoreJacobianOperator(model, x, t, cond, mode=mode)
        assert op.shape == (4, 5, 5)
        results[mode] = (op.matvec(v), op.rmatvec(w), op.sym_matvec(v))
        torch.testing.assert_close(results[mode][0], jv, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(results[mode][1], jtw, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(results[mode][2], 0.5 * (jv + torch.einsum("bji,bj->bi", ref, v)),
                                   rtol=1e-10, atol=1e-10)
        # adjoint identity <w, J v> = <J^T w, v>, per sample (measured: <= 4e-15 relative)
        lhs = (w * op.matvec(v)).sum(1)
        rhs = (op.rmatvec(w) * v).sum(1)
        assert float(((lhs - rhs).abs() / lhs.abs().clamp_min(1e-300)).max()) < 1e-5
        assert op.n_matvecs == 1 + 1 + 2 + 2
    torch.testing.assert_close(results["jvp"][0], results["vjp"][0], rtol=1e-12, atol=1e-12)
    # central finite differences of the score along v (measured relative error <= 3.3e-10, h = 1e-5)
    f = flat_score_fn(model, t, cond)
    h = 1e-5
    with torch.no_grad():
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
    rel = (fd - jv).norm(dim=1) / jv.norm(dim=1)
    assert float(rel.max()) < 1e-4


def test_operator_on_image_shaped_unet():
    """Image-shaped input is flattened; reverse-only J v (double backward) matches forward mode on a UNet."""
    torch.manual_seed(0)
    model = UNetEps(UNetConfig(data_shape=(1, 8, 8), channels=(8, 16), num_classes=2)).eval()
    x = torch.randn(3, 1, 8, 8)
    cond = torch.tensor([0, 1, NULL_CLASS])
    jac = score_jacobian(model, x, 0.5, cond)
    assert jac.shape == (3, 64, 64)
    v = torch.randn(3, 64)
    ref = torch.einsum("bij,bj->bi", jac, v)
    scale = float(ref.abs().max())
    for mode in ("jvp", "vjp"):
        op = ScoreJacobianOperator(model, x, 0.5, cond, mode=mode)
        assert op.x.shape == (3, 64)
        torch.testing.assert_close(op.matvec(v), ref, rtol=0, atol=1e-4 * scale)
    assert float(jacobian_asymmetry(jac).min()) > 1e-2  # an untrained net is not conservative (1.35)


def test_n_matvecs_counts_calls():
    op = ScoreJacobianOperator(_empirical(), torch.zeros(2, 5, dtype=F64), 0.5)
    v = torch.ones(2, 5, dtype=F64)
    assert op.n_matvecs == 0
    op.matvec(v)
    assert op.n_matvecs == 1
    op.rmatvec(v)
    op.rmatvec(v)
    assert op.n_matvecs == 3
    op.sym_matvec(v)
    assert op.n_matvecs == 5


# ============================================================================ asymmetry and spectrum units


def test_asymmetry_exact_scores_zero_mlp_positive():
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(5), dtype=F64)
    for model in (_gaussian(False)[0], _gaussian(True)[0], _empirical()):
        asym = jacobian_asymmetry(score_jacobian(model, x, 0.3))
        assert asym.shape == (4,) and float(asym.max()) < 1e-12
    mlp_asym = jacobian_asymmetry(score_jacobian(_random_mlp(), x, 0.3))
    assert float(mlp_asym.min()) > 1e-2  # measured 1.38-1.60
    # hand-made cases: a nilpotent Jordan block and a symmetric matrix
    jordan = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]], dtype=F64)
    torch.testing.assert_close(jacobian_asymmetry(jordan), torch.tensor([math.sqrt(2)], dtype=F64))
    torch.testing.assert_close(jacobian_asymmetry(torch.zeros(1, 3, 3, dtype=F64)), torch.zeros(1, dtype=F64))


def test_spectrum_from_jacobian_units():
    sig = torch.tensor([0.1, 0.7], dtype=F64)
    point_mass = -torch.eye(4, dtype=F64)[None] / (sig**2)[:, None, None]
    ev, asym = spectrum_from_jacobian(point_mass, sig)
    torch.testing.assert_close(ev, -torch.ones(2, 4, dtype=F64), rtol=0, atol=1e-14)
    torch.testing.assert_close(asym, torch.zeros(2, dtype=F64))
    # an antisymmetric part does not change the eigenvalues of the symmetric part
    a = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    skew = a - a.transpose(-1, -2)
    sym = a + a.transpose(-1, -2)
    ev2, asym2 = spectrum_from_jacobian(sym + skew, sig)
    ref = torch.linalg.eigvalsh(sym) * (sig**2)[:, None]
    torch.testing.assert_close(ev2, ref)
    assert bool((ev2[:, 1:] >= ev2[:, :-1]).all())  # ascending
    assert bool((asym2 > 0).all())
    # the exact empirical score of one point is a point mass at every t
    one = EmpiricalMixtureScore(torch.randn(1, 4, generator=torch.Generator().manual_seed(7), dtype=F64))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(8), dtype=F64)
    for at in ("scaled", "raw"):
        res = sharpness_spectrum(one, x, t=0.4, at=at)
        torch.testing.assert_close(res.eigenvalues_sigma2, -torch.ones(3, 4, dtype=F64), rtol=0, atol=1e-12)
        torch.testing.assert_close(res.sharpness, torch.ones(3, dtype=F64))


def test_scaled_is_raw_at_psi_x_and_records():
    model = _empirical()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(9), dtype=F64)
    t = 0.25
    psi = model.schedule.sqrt_alpha_bar(torch.tensor(t, dtype=F64))
    scaled = sharpness_spectrum(model, x, t)
    raw = sharpness_spectrum(model, psi * x, t, at="raw")
    torch.testing.assert_close(scaled.eigenvalues_sigma2, raw.eigenvalues_sigma2, rtol=1e-12, atol=1e-12)
    # sigma= and t= give the same evaluation
    by_sigma = sharpness_spectrum(model, x, sigma=float(model.schedule.sigma(torch.tensor(t, dtype=F64))))
    torch.testing.assert_close(by_sigma.eigenvalues_sigma2, scaled.eigenvalues_sigma2, rtol=1e-9, atol=1e-10)
    recs = scaled.to_records()
    assert len(recs) == 3 and len(recs[0]["eigenvalues_sigma2"]) == 5
    assert recs[0]["t"] == pytest.approx(t) and recs[0]["n_flat"] == int(scaled.n_flat[0])
    rows = scaled.summary_rows()
    assert set(rows[0]) == {"t", "sigma", "n_positive", "n_flat", "sharpness", "asymmetry"}
    # summaries on a hand-made result
    hand = SharpnessResult(t=torch.ones(1), sigma=torch.ones(1), asymmetry=torch.zeros(1),
                           eigenvalues_sigma2=torch.tensor([[-1.0, -0.6, -0.4, 0.0, 0.2]]))
    assert hand.n_positive.tolist() == [1] and hand.n_flat.tolist() == [3]
    assert hand.sharpness.tolist() == pytest.approx([0.36])
    assert SharpnessResult(t=torch.ones(1), sigma=torch.ones(1), asymmetry=torch.zeros(1), flat_threshold=-0.7,
                           eigenvalues_sigma2=hand.eigenvalues_sigma2).n_flat.tolist() == [4]
    assert sharpness_spectrum(model, x, t, flat_threshold=-0.99).flat_threshold == -0.99


# ============================================================================ along the sampling trajectory


def test_spectrum_along_trajectory():
    g = torch.Generator().manual_seed(10)
    points = torch.randn(5, 4, generator=g, dtype=F64)
    model = EmpiricalMixtureScore(points)
    res = sample_ddim(model, torch.randn(6, 4, generator=g, dtype=F64), steps=20, return_trajectory=True)
    ts, ev = spectrum_along_trajectory(model, res.trajectory, res.ts, every=3)
    idx = [0, 3, 6, 9, 12, 15, 18, 20]  # every 3rd plus the last
    assert ev.shape == (len(idx), 6, 4)
    torch.testing.assert_close(ts, res.ts[idx])
    # each entry is the raw-point spectrum at that time
    k = 3
    direct = sharpness_spectrum(model, res.trajectory[idx[k]], float(res.ts[idx[k]]), at="raw")
    torch.testing.assert_close(ev[k], direct.eigenvalues_sigma2)
    # At the end (t = 1e-3, sigma ~ 0.01) every sample sits on a training point: a point mass.
    # Measured max |lambda sigma^2 + 1| = 6.4e-14.
    assert float((ev[-1] + 1).abs().max()) < 1e-6
    # in between, the posterior spreads over several points and some directions flatten (top: 1.9)
    assert float(ev[:, :, -1].max()) > -0.5
    ts_all, ev_all = spectrum_along_trajectory(model, res.trajectory, res.ts)
    assert ev_all.shape == (21, 6, 4) and ts_all.shape == (21,)
    ts_last, _ = spectrum_along_trajectory(model, res.trajectory, res.ts, every=100)
    torch.testing.assert_close(ts_last, res.ts[[0, 20]])
    with pytest.raises(MemgeoError, match="steps"):
        spectrum_along_trajectory(model, res.trajectory, res.ts[:-1])
    with pytest.raises(MemgeoError, match="every"):
        spectrum_along_trajectory(model, res.trajectory, res.ts, every=0)


# ============================================================================ bad inputs


def test_bad_inputs_raise():
    model = _empirical()
    x = torch.zeros(2, 5, dtype=F64)
    nan = x.clone()
    nan[1, 2] = float("nan")
    with pytest.raises(MemgeoError, match="NaN"):
        sharpness_spectrum(model, nan, 0.5)
    with pytest.raises(MemgeoError, match="NaN"):
        score_jacobian(model, nan, 0.5)
    with pytest.raises(MemgeoError, match="NaN"):
        ScoreJacobianOperator(model, nan, 0.5)
    with pytest.raises(MemgeoError, match="dimension 4"):
        sharpness_spectrum(model, torch.zeros(2, 4, dtype=F64), 0.5)
    with pytest.raises(MemgeoError, match="dimension 4"):
        score_jacobian(model, torch.zeros(2, 4, dtype=F64), 0.5)
    with pytest.raises(MemgeoError, match="batch"):
        sharpness_spectrum(model, torch.zeros(5, dtype=F64), 0.5)
    with pytest.raises(MemgeoError, match="exactly one"):
        sharpness_spectrum(model, x, 0.5, sigma=0.3)
    with pytest.raises(MemgeoError, match="exactly one"):
        sharpness_spectrum(model, x)
    for bad_t in (0.0, -0.2, 1.5):
        with pytest.raises(MemgeoError, match="outside"):
            sharpness_spectrum(model, x, bad_t)
    for bad_sigma in (0.0, 1.0, 2.0):
        with pytest.raises(MemgeoError, match="sigma"):
            sharpness_spectrum(model, x, sigma=bad_sigma)
    with pytest.raises(MemgeoError, match="evaluation point"):
        sharpness_spectrum(model, x, 0.5, at="noisy")
    with pytest.raises(MemgeoError, match="mode"):
        ScoreJacobianOperator(model, x, 0.5, mode="fwd")
    op = ScoreJacobianOperator(model, x, 0.5)
    with pytest.raises(MemgeoError, match="vector batch"):
        op.matvec(torch.zeros(3, 5, dtype=F64))
    with pytest.raises(MemgeoError, match="vector batch"):
        op.rmatvec(torch.zeros(2, 4, dtype=F64))
    with pytest.raises(MemgeoError, match="time has shape"):
        score_jacobian(model, x, torch.tensor([0.1, 0.2, 0.3], dtype=F64))
    assert resolve_time(model, t=1) == 1.0
    assert resolve_time(model, sigma=0.3) == pytest.approx(model.schedule.t_from_sigma(0.3))
