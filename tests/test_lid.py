"""Model-based LID estimators against closed forms (Gaussian, empirical mixture)."""

from __future__ import annotations

import pytest
import torch

from memgeo.errors import MemgeoError
from memgeo.geometry.lid import CFDM, FLIPD, LID_ESTIMATORS, FPRegress, NormalBundle, get_lid_estimator
from memgeo.models import EmpiricalMixtureScore, GaussianScore
from memgeo.models.counting import CountingModel

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")


def _flat_gaussian(ambient: int = 100, d: int = 10, seed: int = 0) -> tuple[GaussianScore, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(ambient, ambient, generator=g, dtype=F64))[0][:, :d]
    return GaussianScore(torch.zeros(ambient, dtype=F64), basis @ basis.T), basis


def _closed_form(model: GaussianScore, t0: float, ambient: int, d: int) -> float:
    ab = float(model.schedule.alpha_bar(torch.tensor(t0, dtype=F64)))
    s2 = 1 - ab
    # Unit tangent variances (lambda = 1) and D - d normal directions (lambda = 0, each contributing 1).
    return ambient - d * s2**2 / (ab + s2) ** 2 - (ambient - d)


@pytest.mark.parametrize("t0,expected", [(0.01, 10.000), (0.1, 9.892), (0.3, 6.356)])
def test_flipd_exact_matches_closed_form_on_degenerate_gaussian(t0, expected):
    model, basis = _flat_gaussian()
    # "Sigma points" +-sqrt(d) u_i have exactly the data covariance, so their mean FLIPD is E[FLIPD].
    x = torch.cat([10**0.5 * basis.T, -(10**0.5) * basis.T])
    lid = FLIPD(t0=t0, trace="exact").estimate(model, x)
    assert abs(float(lid.mean()) - _closed_form(model, t0, 100, 10)) < 1e-3
    assert abs(float(lid.mean()) - expected) < 1e-3  # the numbers quoted in the issue


@pytest.mark.parametrize("t0", [0.001, 0.01, 0.05, 0.1, 0.3, 0.7, 1.0])
def test_flipd_is_zero_at_an_atom_of_the_empirical_score(t0):
    atom = torch.full((1, 8), 3.0, dtype=F64)
    # A pure atom (a point duplicated 20 times): p_t is one Gaussian, FLIPD = 0 at every t0.
    assert abs(float(FLIPD(t0=t0).estimate(EmpiricalMixtureScore(atom.repeat(20, 1)), atom)[0])) < 1e-9
    if t0 <= 0.3:
        # With other training data far away (relative to sigma(t0)) the atom still reads 0.
        g = torch.Generator().manual_seed(1)
        others = torch.randn(200, 8, generator=g, dtype=F64) * 0.3 - 3.0
        model = EmpiricalMixtureScore(torch.cat([atom.repeat(20, 1), others]))
        assert abs(float(FLIPD(t0=t0).estimate(model, atom)[0])) < 1e-6


def test_cfdm_equals_flipd_of_the_empirical_score():
    g = torch.Generator().manual_seed(2)
    data = torch.randn(300, 6, generator=g, dtype=F64)
    x = torch.randn(7, 6, generator=g, dtype=F64)
    for t0 in (0.02, 0.2):
        flipd = FLIPD(t0=t0).estimate(EmpiricalMixtureScore(data), x)
        cfdm = CFDM(t0=t0).fit(data).estimate(x)
        assert torch.allclose(flipd, cfdm, atol=1e-8)


def test_cfdm_is_zero_at_a_duplicated_isolated_point():
    g = torch.Generator().manual_seed(3)
    data = torch.cat([torch.randn(500, 5, generator=g, dtype=F64), torch.full((30, 5), 8.0, dtype=F64)])
    assert float(CFDM(t0=0.05).fit(data).estimate(data[-1:])[0]) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("trace", ["hutchinson", "hutch++"])
def test_stochastic_trace_flipd_interval_covers_exact(trace):
    model, basis = _flat_gaussian(ambient=40, d=5)
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(4), dtype=F64) @ basis.T
    exact = FLIPD(t0=0.05).estimate(model, x)
    est = FLIPD(t0=0.05, trace=trace, n_probes=24, seed=1)
    lid = est.estimate(model, x)
    res = est.result_
    covered = ((res.ci_low[0] <= exact) & (exact <= res.ci_high[0])).double().mean()
    assert covered >= 0.75  # 95% intervals, 16 points: a generous floor that still catches a broken CI
    assert float((lid - exact).abs().mean()) < 1.5


def test_flipd_cost_is_one_forward_plus_k_products():
    model, basis = _flat_gaussian(ambient=30, d=3)
    counted = CountingModel(model)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(5), dtype=F64) @ basis.T
    est = FLIPD(t0=0.05, trace="hutchinson", n_probes=6)
    est.estimate(counted, x)
    assert est.result_.n_matvecs == 6
    # one forward builds the cached graph (its output gives ||s||^2); the 6 probes are backward
    # passes through it, in one vmap-ed call
    assert counted.calls == 1


def test_auto_t0_curve_plateau_and_reuse():
    model, basis = _flat_gaussian(ambient=50, d=4)
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(6), dtype=F64) @ basis.T
    est = FLIPD(t0="auto")
    lid = est.estimate(model, x)
    assert est.t0_ < 0.1  # the plateau of a flat Gaussian is at small t0
    assert abs(float(lid.mean()) - 4.0) < 0.1
    curve = est.curve_
    assert curve.lid.shape == (16, 20)
    assert torch.equal(curve.at(est.t0_), lid)
    # LID falls towards 0 as t0 grows (sigma exceeds the data scale): the curve is monotone here.
    assert float(curve.lid.mean(1)[-1]) < float(curve.lid.mean(1)[0])


def test_plateau_skips_the_unresolved_stretch_near_d():
    from memgeo.geometry.lid import LIDCurve

    # A trained-network-like curve: flat at about D = 100 for tiny t0, a plateau near 10, then decay.
    t0 = torch.logspace(-3, -0.3, 10, dtype=F64)
    mean = torch.tensor([99.9, 99.9, 99.8, 60.0, 11.0, 10.2, 10.0, 9.8, 6.0, 1.0], dtype=F64)
    lid = mean[:, None].repeat(1, 3)
    curve = LIDCurve(t0=t0, sigma=t0, lid=lid, ci_low=lid, ci_high=lid, dim=100)
    assert 9.5 < float(curve.at(curve.plateau_t0()).mean()) < 10.5
    # Without the dimension the flattest stretch is the unresolved one.
    nodim = LIDCurve(t0=t0, sigma=t0, lid=lid, ci_low=lid, ci_high=lid)
    assert float(nodim.at(nodim.plateau_t0()).mean()) > 99


def test_fpregress_and_normal_bundle_on_flat_gaussian():
    model, basis = _flat_gaussian(ambient=60, d=6)
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(7), dtype=F64) @ basis.T
    assert abs(float(FPRegress(t_low=0.002, t_high=0.02).estimate(model, x).mean()) - 6) < 0.2
    for rule in ("threshold", "gap"):
        nb = NormalBundle(t0=0.01, rule=rule)
        assert torch.equal(nb.estimate(model, x), torch.full((10,), 6.0, dtype=F64))
        assert nb.singular_values_.shape == (10, 60)


def test_normal_bundle_threshold_rule_reaches_zero_and_full_dimension():
    """An atom has every direction normal (LID 0); a wide full-rank Gaussian none (LID D).

    The gap rule cannot return either end: it always splits the spectrum somewhere.
    """
    atom = torch.full((1, 12), 0.3, dtype=F64)
    others = torch.randn(30, 12, generator=torch.Generator().manual_seed(3), dtype=F64) * 5
    mixture = EmpiricalMixtureScore(torch.cat([atom.repeat(20, 1), others]))
    wide = GaussianScore(torch.zeros(12, dtype=F64), 25.0 * torch.eye(12, dtype=F64))
    x = torch.randn(4, 12, generator=torch.Generator().manual_seed(4), dtype=F64)
    assert torch.equal(NormalBundle(t0=0.01).estimate(mixture, atom), torch.zeros(1, dtype=F64))
    assert torch.equal(NormalBundle(t0=0.01).estimate(wide, x), torch.full((4,), 12.0, dtype=F64))
    gap_atom = NormalBundle(t0=0.01, rule="gap").estimate(mixture, atom)
    gap_wide = NormalBundle(t0=0.01, rule="gap").estimate(wide, x)
    assert 0 < float(gap_atom[0]) < 12 and bool(((gap_wide > 0) & (gap_wide < 12)).all())
    with pytest.raises(MemgeoError, match="normal-bundle rule"):
        NormalBundle(rule="biggest").estimate(wide, x)


def test_registry_and_errors():
    assert {"flipd", "fpregress", "normal_bundle", "cfdm"} <= set(LID_ESTIMATORS)
    assert isinstance(get_lid_estimator("flipd", t0=0.1), FLIPD)
    with pytest.raises(MemgeoError, match="unknown LID estimator"):
        get_lid_estimator("nope")
    with pytest.raises(MemgeoError, match="bad options"):
        get_lid_estimator("flipd", bogus=1)
    model, _ = _flat_gaussian(ambient=10, d=2)
    with pytest.raises(MemgeoError, match="trace method"):
        FLIPD(trace="magic").estimate(model, torch.zeros(2, 10, dtype=F64))
    with pytest.raises(MemgeoError, match="t0"):
        FLIPD(t0=2.0).estimate(model, torch.zeros(2, 10, dtype=F64))
    with pytest.raises(MemgeoError, match="NaN"):
        FLIPD().estimate(model, torch.full((2, 10), float("nan"), dtype=F64))
    with pytest.raises(MemgeoError, match="before fit"):
        CFDM().estimate(torch.zeros(2, 10))


def test_flipd_one_probe_and_auto_trace():
    model, basis = _flat_gaussian(ambient=30, d=3)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(6), dtype=F64) @ basis.T
    exact = FLIPD(t0=0.05).estimate(model, x)
    one = FLIPD(t0=0.05, trace="hutchinson", n_probes=1, seed=3)
    lid = one.estimate(model, x)
    res = one.result_
    assert res.n_matvecs == 1 and "no sample variance" in res.note and res.trace == "hutchinson"
    assert bool(torch.isinf(res.ci_low).all() and torch.isinf(res.ci_high).all())
    assert bool(torch.isfinite(lid).all())
    # the one-probe value equals FLIPD's formula with the trace replaced by v^T J v for the first probe
    from memgeo.geometry.jacobian import score_jacobian
    from memgeo.geometry.trace import draw_probes
    from memgeo.models.base import as_time

    tt = as_time(0.05, 6, x)
    psi = float(model.schedule.sqrt_alpha_bar(torch.tensor(0.05, dtype=F64)))
    s2 = float(model.schedule.sigma(torch.tensor(0.05, dtype=F64))) ** 2
    y = psi * x
    jac = score_jacobian(model, y, tt)
    v = draw_probes(6, 30, generator=torch.Generator().manual_seed(3), dtype=F64)
    s = model.score(y, tt).reshape(6, -1)
    expected = 30 + s2 * (torch.einsum("bi,bij,bj->b", v, jac, v) + (s * s).sum(1))
    torch.testing.assert_close(lid, expected, rtol=1e-10, atol=1e-8)
    # trace="auto": exact at D = 30 <= 8 (1 + 8); Hutchinson above the bound
    auto = FLIPD(t0=0.05, trace="auto")
    torch.testing.assert_close(auto.estimate(model, x), exact)
    assert auto.result_.trace == "exact"
    from memgeo.geometry.lid.flipd import FLIPD_EXACT_FACTOR, resolve_flipd_trace
    assert resolve_flipd_trace("auto", FLIPD_EXACT_FACTOR * 9, 8) == "exact"
    assert resolve_flipd_trace("auto", FLIPD_EXACT_FACTOR * 9 + 1, 8) == "hutchinson"
    assert resolve_flipd_trace("auto", 30, 1) == "hutchinson" and resolve_flipd_trace("hutch++", 4) == "hutch++"
