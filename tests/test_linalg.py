"""Batched Lanczos / Arnoldi / SLQ against dense eigensolvers."""

from __future__ import annotations

import pytest
import torch

from memgeo.errors import MemgeoError
from memgeo.geometry.jacobian import ScoreJacobianOperator, score_jacobian
from memgeo.geometry.linalg import (
    ArnoldiResult,
    LanczosResult,
    SLQDensity,
    arnoldi_eigs,
    lanczos_extreme,
    slq_density,
)
from memgeo.models.reference import EmpiricalMixtureScore

pytestmark = pytest.mark.usefixtures("single_thread")
F64 = torch.float64


def dense_matvec(a: torch.Tensor):
    calls = {"n": 0}

    def mv(v: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return torch.einsum("bij,bj->bi", a.to(v.dtype), v)

    mv.calls = calls
    return mv


def with_spectrum(lam: torch.Tensor, seed: int) -> torch.Tensor:
    """Symmetric batch U diag(lam) U^T with Haar-random U; lam (B, D)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(lam.shape[0], lam.shape[1], lam.shape[1], generator=g, dtype=F64)).Q
    return (u * lam[:, None, :]) @ u.transpose(1, 2)


def score_like_spectrum(batch: int, dim: int, seed: int) -> torch.Tensor:
    """lambda sigma^2-like eigenvalues in [-1.2, 0.3]: a bulk near -1 (point-mass curvature), a few
    flat / positive directions and a few separated sharp ones, sorted ascending, shape (B, D)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        bulk = -1.05 + 0.45 * torch.rand(dim - 10, generator=g, dtype=F64)
        top = torch.tensor([0.3, 0.22, 0.15, 0.05, -0.2], dtype=F64) * (1 + 0.1 * b)
        bottom = torch.tensor([-1.2, -1.17, -1.14, -1.11, -1.08], dtype=F64)
        rows.append(torch.cat([bulk, top, bottom]))
    return torch.sort(torch.stack(rows), dim=1).values


def max_rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((got.double() - ref).abs() / ref.abs()).max())


@pytest.mark.parametrize("dim", [784, 64])
def test_lanczos_acceptance_extremes_within_one_percent(dim):
    """DESIGN acceptance: extreme eigenvalues within 1% after at most 100 matvecs for D <= 784.

    Measured (k = 5 at both ends, default tol 1e-5, float32 operator): D = 784 stops after 40
    matvecs with max relative error 9e-7; D = 64 after 35 matvecs, 1e-6 (float32 rounding). With
    tol=0 the error at D = 784 is 4% after 20 matvecs, 0.3% after 25 and 2e-5 after 30.
    """
    lam = score_like_spectrum(3, dim, seed=0)
    a = with_spectrum(lam, seed=1)
    mv = dense_matvec(a)
    res = lanczos_extreme(mv, 3, dim, k=5, n_iter=100, which="both", generator=torch.Generator().manual_seed(2))
    assert isinstance(res, LanczosResult)
    assert res.eigenvalues.shape == res.residual_bounds.shape == (3, 10)
    assert res.eigenvalues.dtype == torch.float32
    assert res.n_matvecs == mv.calls["n"] <= 100
    ref = torch.cat([lam[:, :5], lam[:, -5:]], 1)
    assert max_rel_err(res.eigenvalues, ref) < 0.01
    assert (res.eigenvalues.diff(dim=1) >= 0).all()


def test_lanczos_gapless_spectrum_reported():
    """Harder case without gaps (uniform spectrum, D = 400): 1% needs more iterations than with gaps.

    Measured at D = 784: 100 matvecs give 1.7% max relative error (6e-3 absolute) on the 5th
    extreme, 150 give 0.2%. Here we check that the error shrinks with n_iter and that every Ritz
    value lies within its residual bound of some eigenvalue.
    """
    g = torch.Generator().manual_seed(3)
    lam = torch.sort(-1.2 + 1.5 * torch.rand(2, 400, generator=g, dtype=F64), 1).values
    a = with_spectrum(lam, seed=4)
    ref = torch.cat([lam[:, :5], lam[:, -5:]], 1)
    errs = []
    for n in (30, 90):
        res = lanczos_extreme(dense_matvec(a), 2, 400, k=5, n_iter=n, tol=0, dtype=F64,
                              generator=torch.Generator().manual_seed(5))
        assert res.n_matvecs == n
        nearest = (res.eigenvalues[:, :, None] - lam[:, None, :]).abs().amin(2)
        assert (nearest <= res.residual_bounds + 1e-10).all()
        errs.append(float((res.eigenvalues - ref).abs().max()))
    assert errs[1] < 0.2 * errs[0]


@pytest.mark.parametrize("which", ["smallest", "largest", "both"])
def test_lanczos_which_and_residual_bounds(which):
    g = torch.Generator().manual_seed(6)
    m = torch.randn(4, 64, 64, generator=g, dtype=F64)
    a = (m + m.transpose(1, 2)) / 2
    ev = torch.linalg.eigvalsh(a)
    res = lanczos_extreme(dense_matvec(a), 4, 64, k=3, n_iter=40, which=which, tol=0, dtype=F64,
                          return_vectors=True, generator=g)
    ref = {"smallest": ev[:, :3], "largest": ev[:, -3:], "both": torch.cat([ev[:, :3], ev[:, -3:]], 1)}[which]
    assert res.eigenvalues.shape == ref.shape and res.which == which
    # A GOE spectrum has no gaps at the edges: not converged to 1%, but within the residual bounds
    # of *some* eigenvalue, and the Ritz values interlace inside the spectrum.
    nearest = (res.eigenvalues[:, :, None] - ev[:, None, :]).abs().amin(2)
    assert (nearest <= res.residual_bounds + 1e-10).all()
    assert (res.eigenvalues >= ev[:, :1] - 1e-10).all() and (res.eigenvalues <= ev[:, -1:] + 1e-10).all()
    # Ritz vectors: unit norm, residual norm equal to the bound.
    y = res.eigenvectors
    assert y.shape == (4, 64, ref.shape[1])
    torch.testing.assert_close(y.norm(dim=1), torch.ones(4, ref.shape[1], dtype=F64))
    r = torch.einsum("bij,bjk->bik", a, y) - y * res.eigenvalues[:, None, :]
    torch.testing.assert_close(r.norm(dim=1), res.residual_bounds, atol=1e-9, rtol=1e-6)


def test_lanczos_full_dimension_is_exact():
    g = torch.Generator().manual_seed(7)
    m = torch.randn(3, 20, 20, generator=g, dtype=F64)
    a = m + m.transpose(1, 2)
    res = lanczos_extreme(dense_matvec(a), 3, 20, k=10, n_iter=500, tol=0, dtype=F64, generator=g)
    assert res.n_matvecs == 20  # capped at D
    torch.testing.assert_close(res.eigenvalues, torch.linalg.eigvalsh(a))


def test_lanczos_breakdown_restart_finds_repeated_eigenvalues():
    # -I + rank 3: the Krylov space of a single start vector is 4-dimensional; restarts after
    # breakdown recover further copies of the eigenvalue -1 (all samples still advance together).
    g = torch.Generator().manual_seed(8)
    u = torch.randn(2, 50, 3, generator=g, dtype=F64)
    a = -torch.eye(50, dtype=F64) + 0.1 * u @ u.transpose(1, 2)
    ev = torch.linalg.eigvalsh(a)
    res = lanczos_extreme(dense_matvec(a), 2, 50, k=5, n_iter=30, generator=g, dtype=F64)
    torch.testing.assert_close(res.eigenvalues, torch.cat([ev[:, :5], ev[:, -5:]], 1))
    assert res.n_matvecs <= 15


def test_lanczos_early_stop_and_tol_zero():
    lam = score_like_spectrum(2, 200, seed=9)
    a = with_spectrum(lam, seed=10)
    early = lanczos_extreme(dense_matvec(a), 2, 200, k=2, n_iter=150, tol=1e-4, dtype=F64,
                            generator=torch.Generator().manual_seed(0))
    full = lanczos_extreme(dense_matvec(a), 2, 200, k=2, n_iter=150, tol=0, dtype=F64,
                           generator=torch.Generator().manual_seed(0))
    assert early.n_matvecs < 100 and full.n_matvecs == 150
    scale = early.eigenvalues.abs().amax(1, keepdim=True)
    assert (early.residual_bounds <= 1e-4 * scale).all()
    torch.testing.assert_close(early.eigenvalues, full.eigenvalues, atol=1e-6, rtol=0)


def test_lanczos_on_score_jacobian_operator():
    """sym_matvec of the exact empirical-mixture score vs eigvalsh of the dense symmetrized Jacobian.

    Measured (D = 64, 400 training points of scale 0.1, sigma = 0.3; lambda sigma^2 from -0.996 to
    0.404): 40 matvecs (80 network products), max relative error 7.7e-4 on the 3 smallest and 3
    largest eigenvalues.
    """
    g = torch.Generator().manual_seed(11)
    d, n, b = 64, 400, 3
    data = 0.1 * torch.randn(n, d, generator=g, dtype=F64)
    model = EmpiricalMixtureScore(data)
    t = float(model.schedule.t_from_sigma(torch.tensor(0.3)))
    ab = float(model.schedule.alpha_bar(torch.tensor(t)))
    x = ab ** 0.5 * data[:b] + (1 - ab) ** 0.5 * torch.randn(b, d, generator=g, dtype=F64)
    op = ScoreJacobianOperator(model, x, t)
    jac = score_jacobian(model, x, t)
    ev = torch.linalg.eigvalsh(0.5 * (jac + jac.transpose(1, 2)))
    res = lanczos_extreme(op.sym_matvec, b, d, k=3, n_iter=40, dtype=F64, generator=g)
    assert op.n_matvecs == 2 * res.n_matvecs  # sym_matvec = one J v plus one J^T v
    ref = torch.cat([ev[:, :3], ev[:, -3:]], 1)
    assert max_rel_err(res.eigenvalues, ref) < 0.01


def nonnormal_batch(batch: int, dim: int, seed: int) -> torch.Tensor:
    """P A0 P^-1 with A0 block diagonal (two rotation blocks -> complex pairs at the right end)."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.sort(-1.2 + 1.2 * torch.rand(batch, dim, generator=g, dtype=F64), 1).values
    lam[:, -4:] = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    a0 = torch.diag_embed(lam)
    for i, w in ((dim - 2, 0.3), (dim - 4, 0.1)):
        a0[:, i, i + 1] = w
        a0[:, i + 1, i] = -w
    p = torch.eye(dim, dtype=F64) + 0.3 * torch.randn(batch, dim, dim, generator=g, dtype=F64) / dim ** 0.5
    return p @ a0 @ torch.linalg.inv(p)


def match_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Max over reference eigenvalues of the relative distance to the nearest returned one."""
    return float(((got[:, :, None] - ref[:, None, :]).abs().amin(1) / ref.abs()).max())


def test_arnoldi_matches_eigvals_nonsymmetric():
    """Measured (B = 3, D = 200, k = 5, 60 matvecs): max relative error 2.2e-5 for the largest real
    parts (two complex pairs), 9.4e-4 for the smallest."""
    a = nonnormal_batch(3, 200, seed=12)
    assert not torch.allclose(a, a.transpose(1, 2))
    ev = torch.linalg.eigvals(a)
    mv = dense_matvec(a)
    res = arnoldi_eigs(mv, 3, 200, k=5, n_iter=60, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert isinstance(res, ArnoldiResult)
    assert res.largest_real.shape == res.smallest_real.shape == (3, 5)
    assert res.largest_real.is_complex() and res.n_matvecs == mv.calls["n"] == 60
    top = ev.gather(1, torch.argsort(-ev.real, 1))[:, :5]
    assert match_err(res.largest_real, top) < 0.01
    assert (res.largest_real.real.diff(dim=1) <= 1e-12).all()
    assert (res.smallest_real.real.diff(dim=1) >= -1e-12).all()
    # complex pairs come out as pairs
    assert (res.largest_real[:, 0].imag.abs() > 0.1).all()
    torch.testing.assert_close(res.largest_real[:, 0], res.largest_real[:, 1].conj())


def test_arnoldi_float32_default_and_symmetric_input():
    g = torch.Generator().manual_seed(13)
    lam = score_like_spectrum(2, 100, seed=13)
    a = with_spectrum(lam, seed=14)
    res = arnoldi_eigs(dense_matvec(a), 2, 100, k=3, n_iter=60, generator=g)
    assert res.largest_real.dtype == torch.complex64 and res.residual_largest.dtype == torch.float32
    assert float(res.largest_real.imag.abs().max()) < 1e-3
    assert max_rel_err(res.largest_real.real, lam.flip(1)[:, :3]) < 0.01
    assert max_rel_err(res.smallest_real.real, lam[:, :3]) < 0.01


def test_arnoldi_on_score_jacobian_matvec():
    g = torch.Generator().manual_seed(15)
    d = 48
    data = 0.1 * torch.randn(300, d, generator=g, dtype=F64)
    model = EmpiricalMixtureScore(data)
    t = float(model.schedule.t_from_sigma(torch.tensor(0.3)))
    x = data[:2] + 0.2 * torch.randn(2, d, generator=g, dtype=F64)
    op = ScoreJacobianOperator(model, x, t)
    ev = torch.linalg.eigvals(score_jacobian(model, x, t))
    res = arnoldi_eigs(op.matvec, 2, d, k=3, n_iter=16, dtype=F64, generator=g)  # measured error 4e-8
    top = ev.gather(1, torch.argsort(-ev.real, 1))[:, :3]
    assert match_err(res.largest_real, top) < 0.01


def test_slq_density_integrates_to_one_and_mean_is_trace_over_d():
    g = torch.Generator().manual_seed(16)
    b, d = 3, 300
    lam = torch.cat([-1 + 0.1 * torch.randn(b, d // 2, generator=g, dtype=F64),
                     0.05 * torch.randn(b, d - d // 2, generator=g, dtype=F64)], 1)
    a = with_spectrum(lam, seed=17)
    mv = dense_matvec(a)
    out = slq_density(mv, b, d, n_probes=8, n_iter=40, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert isinstance(out, SLQDensity)
    grid, density, nodes, weights = out  # unpacks as a 4-tuple
    assert grid.shape == (512,) and density.shape == (b, 512)
    assert nodes.shape == weights.shape == (b, 8 * 40)
    assert out.n_matvecs == mv.calls["n"] == 320
    torch.testing.assert_close(weights.sum(1), torch.ones(b, dtype=F64))
    torch.testing.assert_close(torch.trapezoid(density, grid, dim=1), torch.ones(b, dtype=F64), atol=1e-3, rtol=0)
    # sum nodes*weights = mean of q^T A q over unit probes: a Hutchinson estimate of tr(A)/D.
    # Measured errors 0.021, 0.012, 0.003 against a probe std of sqrt(2 sum_{i!=j} A_ij^2)/D/sqrt(8) ~ 0.02.
    assert (out.mean - lam.mean(1)).abs().max() < 0.06
    # Bimodal spectrum: half the mass above -0.5 (measured 0.49-0.52).
    upper = (weights * (nodes > -0.5)).sum(1)
    assert (upper - 0.5).abs().max() < 0.08


def test_slq_mean_exact_for_diagonal_with_rademacher():
    # For diagonal A, q^T A q with a normalized Rademacher q is exactly tr(A)/D.
    diag = torch.linspace(-1, 1, 30, dtype=F64)
    a = torch.diag_embed(diag)[None].repeat(2, 1, 1)
    out = slq_density(dense_matvec(a), 2, 30, n_probes=2, n_iter=10, dtype=F64,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.mean, torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)


def test_slq_custom_grid_and_bandwidth():
    a = with_spectrum(torch.linspace(-1, 0, 40, dtype=F64)[None].repeat(2, 1), seed=18)
    grid = torch.linspace(-2, 1, 301, dtype=F64)
    out = slq_density(dense_matvec(a), 2, 40, n_probes=4, n_iter=40, grid=grid, bandwidth=0.05, dtype=F64,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.grid, grid)
    torch.testing.assert_close(torch.trapezoid(out.density, grid, dim=1), torch.ones(2, dtype=F64), atol=1e-3, rtol=0)
    # n_iter = D: the quadrature is exact, so its Ritz values are the eigenvalues.
    assert (out.nodes >= -1 - 1e-9).all() and (out.nodes <= 1e-9).all()


@pytest.mark.parametrize(("fn", "kwargs"), [
    (lanczos_extreme, {"which": "middle"}),
    (lanczos_extreme, {"k": 0}),
    (lanczos_extreme, {"k": 6, "n_iter": 10}),          # 2k > Krylov dimension
    (lanczos_extreme, {"k": 3, "which": "largest", "dim": 2}),  # k > D
    (lanczos_extreme, {"n_iter": 0}),
    (arnoldi_eigs, {"k": 11, "n_iter": 10}),
    (arnoldi_eigs, {"batch": 0}),
    (slq_density, {"n_probes": 0}),
    (slq_density, {"bandwidth": -1.0}),
    (slq_density, {"probe": "sphere"}),
    (slq_density, {"grid": torch.zeros(2, 2)}),
])
def test_bad_arguments_raise(fn, kwargs):
    kwargs = dict(kwargs)
    batch, dim = kwargs.pop("batch", 2), kwargs.pop("dim", 8)
    a = torch.eye(8)[None].repeat(2, 1, 1)
    with pytest.raises(MemgeoError):
        fn(dense_matvec(a), batch, dim, **kwargs)


def test_bad_matvec_shape_raises():
    with pytest.raises(MemgeoError, match="matvec returned"):
        lanczos_extreme(lambda v: v[:, :3], 2, 8, k=2)


def test_gap_bound_stops_no_later_at_the_same_accuracy_and_vectors_stay_orthonormal():
    """bound="gap" (error <= min(r, r^2/gap)) against the residual bound, D = 300, k = 5 at both ends."""
    lam = score_like_spectrum(4, 300, seed=6)
    a = with_spectrum(lam, seed=7)
    ref = torch.cat([lam[:, :5], lam[:, -5:]], 1)
    out = {}
    for bound in ("residual", "gap"):
        res = lanczos_extreme(dense_matvec(a), 4, 300, k=5, n_iter=200, tol=1e-6, dtype=F64, bound=bound,
                              return_vectors=True, generator=torch.Generator().manual_seed(8))
        radius = lam.abs().amax(1, keepdim=True)
        assert float(((res.eigenvalues - ref).abs() / radius).max()) < 1e-6
        v = res.eigenvectors
        torch.testing.assert_close(v.transpose(1, 2) @ v, torch.eye(10, dtype=F64).expand(4, 10, 10),
                                   rtol=0, atol=1e-8)
        out[bound] = res.n_matvecs
    assert out["gap"] <= out["residual"]
    with pytest.raises(MemgeoError, match="stopping bound"):
        lanczos_extreme(dense_matvec(a), 4, 300, bound="ritz")


def test_slq_batched_probes_match_the_probe_loop_in_fewer_calls():
    lam = score_like_spectrum(3, 60, seed=9)
    a = with_spectrum(lam, seed=10)
    calls = {"n": 0}

    def mv(v):  # (B, D) or (P, B, D)
        calls["n"] += 1
        return torch.einsum("bij,...bj->...bi", a, v)

    kw = dict(n_probes=4, n_iter=20, dtype=F64, grid=64)
    loop = slq_density(mv, 3, 60, generator=torch.Generator().manual_seed(11), **kw)
    n_loop, calls["n"] = calls["n"], 0
    many = slq_density(mv, 3, 60, generator=torch.Generator().manual_seed(11), batched=True, **kw)
    assert n_loop == 4 * 20 and calls["n"] == 20
    torch.testing.assert_close(many.nodes, loop.nodes, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(many.weights, loop.weights, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(many.density, loop.density, rtol=1e-9, atol=1e-9)


# ============================================================================ active-set (deflated) Lanczos


def _mixed_speed_batch(batch: int = 6, dim: int = 120) -> torch.Tensor:
    """Samples whose smallest eigenvalues converge at very different speeds: sample b has its 3 lowest
    eigenvalues separated from a bulk in [0, 1] by a gap that shrinks with b (fast ... slow)."""
    g = torch.Generator().manual_seed(21)
    rows = []
    for b in range(batch):
        gap = 0.8 / 3 ** b
        low = torch.tensor([-3 * gap, -2 * gap, -gap], dtype=F64)
        rows.append(torch.cat([low, torch.rand(dim - 3, generator=g, dtype=F64)]))
    return with_spectrum(torch.sort(torch.stack(rows), dim=1).values, seed=22)


@pytest.mark.parametrize("return_vectors", [False, True])
def test_restricted_lanczos_freezes_converged_samples(return_vectors):
    a = _mixed_speed_batch()
    b, d = a.shape[0], a.shape[1]
    ref = torch.linalg.eigvalsh(a)[:, :3]
    calls: list[torch.Tensor] = []

    def restrict(idx: torch.Tensor):
        calls.append(idx.clone())
        return dense_matvec(a[idx])

    full_mv = dense_matvec(a)
    kw = dict(k=3, n_iter=d, which="smallest", tol=1e-6, dtype=F64, bound="gap", return_vectors=return_vectors)
    deflated = lanczos_extreme(full_mv, b, d, generator=torch.Generator().manual_seed(0), restrict=restrict, **kw)
    plain = lanczos_extreme(dense_matvec(a), b, d, generator=torch.Generator().manual_seed(0), **kw)
    radius = ref.abs().amax(1, keepdim=True)
    # every sample within the tolerance of the dense answer, and of the run without restriction
    assert float(((deflated.eigenvalues - ref).abs() / radius).max()) < 1e-5
    assert float(((deflated.eigenvalues - plain.eigenvalues).abs() / radius).max()) < 1e-5
    steps = deflated.n_steps
    assert steps.shape == (b,) and int(steps.max()) == deflated.n_matvecs <= plain.n_matvecs + 5
    assert int(steps.min()) < int(steps.max()) - 10  # very different speeds, each recorded
    assert bool((plain.n_steps == plain.n_matvecs).all()) and plain.sample_matvecs == b * plain.n_matvecs
    # restrict got ascending, shrinking index sets of exactly the samples that were still unfrozen
    assert calls, "some samples converged long before the slowest: the batch must be restricted"
    prev = torch.arange(b)
    for idx in calls:
        assert idx.dtype == torch.long and bool((idx.diff() > 0).all())
        assert set(idx.tolist()) < set(prev.tolist())
        assert bool((steps[idx] > steps[~torch.isin(torch.arange(b), idx)].min()).all())
        prev = idx
    # per-sample products: the full batch until the first restriction, then the restricted ones
    assert deflated.sample_matvecs < plain.sample_matvecs
    assert full_mv.calls["n"] + 0 < deflated.n_matvecs
    if return_vectors:
        v = deflated.eigenvectors
        av = torch.einsum("bij,bjk->bik", a, v)
        resid = (av - v * deflated.eigenvalues[:, None, :]).norm(dim=1)
        assert float((resid - deflated.residual_bounds).abs().max()) < 1e-8
        torch.testing.assert_close(v.transpose(1, 2) @ v, torch.eye(3, dtype=F64).expand(b, 3, 3),
                                   atol=1e-8, rtol=0)


def test_restricted_lanczos_both_ends_and_tol_zero_run_to_the_end():
    a = _mixed_speed_batch(batch=4, dim=80)
    full = torch.linalg.eigvalsh(a)
    ref = torch.cat([full[:, :2], full[:, -2:]], 1)
    seen: list[int] = []

    def restrict(idx):
        seen.append(len(idx))
        return dense_matvec(a[idx])

    res = lanczos_extreme(dense_matvec(a), 4, 80, k=2, n_iter=80, which="both", tol=1e-7, dtype=F64,
                          generator=torch.Generator().manual_seed(1), restrict=restrict)
    assert float(((res.eigenvalues - ref).abs() / full.abs().amax(1, keepdim=True)).max()) < 1e-6
    zero = lanczos_extreme(dense_matvec(a), 4, 80, k=2, n_iter=30, which="both", tol=0, dtype=F64,
                           generator=torch.Generator().manual_seed(1), restrict=restrict)
    assert zero.n_matvecs == 30 and bool((zero.n_steps == 30).all()) and zero.sample_matvecs == 4 * 30


@pytest.mark.parametrize("workers", [2, 3, 10])
def test_lanczos_workers_split_the_batch_and_give_the_one_batch_result(workers):
    """workers=T runs T sub-batches in threads: per-sample results equal the one-batch run (same start
    vectors, products independent per sample), the vectors come back in batch order, and the
    process-wide torch thread count is restored."""
    a = _mixed_speed_batch()
    b, d = a.shape[0], a.shape[1]
    kw = dict(k=3, n_iter=d, which="smallest", tol=1e-8, dtype=F64, bound="gap", return_vectors=True)
    one = lanczos_extreme(dense_matvec(a), b, d, generator=torch.Generator().manual_seed(0),
                          restrict=lambda idx: dense_matvec(a[idx]), **kw)
    threads = torch.get_num_threads()
    seen: list[list[int]] = []

    def restrict(idx):
        seen.append(idx.tolist())
        return dense_matvec(a[idx])

    split = lanczos_extreme(dense_matvec(a), b, d, generator=torch.Generator().manual_seed(0), restrict=restrict,
                            workers=workers, **kw)
    assert torch.get_num_threads() == threads
    ref = torch.linalg.eigvalsh(a)[:, :3]
    assert float(((split.eigenvalues - ref).abs() / ref.abs().amax(1, keepdim=True)).max()) < 1e-7
    torch.testing.assert_close(split.eigenvalues, one.eigenvalues, atol=1e-10, rtol=0)
    assert torch.equal(split.n_steps, one.n_steps)
    # Ritz vectors in batch order: A y = theta y up to the residual bound, per sample
    av = torch.einsum("bij,bjk->bik", a, split.eigenvectors)
    resid = (av - split.eigenvectors * split.eigenvalues[:, None, :]).norm(dim=1)
    assert float((resid - split.residual_bounds).abs().max()) < 1e-8
    # every operator asked for lies within one contiguous sub-batch, and the sub-batches cover the batch
    chunks = [set(c.tolist()) for c in torch.arange(b).tensor_split(min(workers, b))]
    assert all(any(set(s) <= c for c in chunks) for s in seen)
    assert set(i for s in seen for i in s) == set(range(b))
    assert split.sample_matvecs >= int(split.n_steps.sum())


def test_lanczos_workers_need_restrict():
    a = _mixed_speed_batch(batch=2, dim=20)
    with pytest.raises(MemgeoError, match="workers=2 needs restrict"):
        lanczos_extreme(dense_matvec(a), 2, 20, k=2, workers=2)
    with pytest.raises(MemgeoError):
        lanczos_extreme(dense_matvec(a), 2, 20, k=2, workers=0)


@pytest.mark.parametrize("which", ["smallest", "largest", "both"])
def test_ritz_ends_against_a_dense_eigendecomposition(which):
    """The check's Ritz pairs: values, |beta_j s_last| residual bounds, gaps to the neighbours and the
    radius equal a dense eigh of T, including a sample with a restart (a zero coupling)."""
    import memgeo.geometry.linalg as L

    g = torch.Generator().manual_seed(5)
    b, j, k = 5, 70, 4
    alpha = torch.randn(b, j, generator=g, dtype=F64)
    beta = torch.rand(b, j, generator=g, dtype=F64) + 0.1
    beta[2, 30] = 0.0  # a restart: block-diagonal T
    ends = L._ritz_ends(alpha, beta, which, k)
    t = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + torch.diag_embed(beta[:, :-1], -1)
    ev, vec = torch.linalg.eigh(t)
    idx = {"smallest": list(range(k)), "largest": list(range(j - k, j)),
           "both": list(range(k)) + list(range(j - k, j))}[which]
    torch.testing.assert_close(ends.theta, ev[:, idx], atol=1e-10, rtol=0)
    torch.testing.assert_close(ends.res, (beta[:, -1:] * vec[:, -1, idx]).abs(), atol=1e-10, rtol=0)
    gaps = torch.stack([torch.stack([min((ev[s, i] - ev[s, i2]).abs() for i2 in range(j) if i2 != i)
                                     for i in idx]) for s in range(b)])
    torch.testing.assert_close(ends.gap, gaps, atol=1e-10, rtol=0)
    torch.testing.assert_close(ends.radius[:, 0], ev.abs().amax(1), atol=1e-10, rtol=0)
