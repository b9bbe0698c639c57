"""Synthetic manifolds with known LID (memgeo.data.manifolds) and the LID accuracy metrics."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from scipy.special import i0e, i1e

from memgeo.data.manifolds import (
    LOLLIPOP_ATOM,
    LOLLIPOP_STICK,
    MANIFOLD_DATASETS,
    SquigglyMap,
    affine_mixture,
    lollipop,
    sphere,
    squiggly_mixture,
    torus,
    true_lid,
    von_mises_with_atom,
)
from memgeo.errors import MemgeoError
from memgeo.memorization.lid_metrics import (
    concordance_index,
    lid_mae,
    lid_relative_bias,
    per_component_summary,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _check_meta(ds, ambient: int) -> None:
    """The contract every generator keeps: lid/component/component_lid agree with y and x."""
    n = ds.n
    assert ds.x.shape == (n, ambient) and ds.x.dtype == torch.float32
    lid, comp = ds.meta["lid"], ds.meta["component"]
    assert lid.dtype == torch.int64 and lid.shape == (n,)
    assert comp.dtype == torch.int64 and comp.shape == (n,)
    assert torch.equal(ds.y, comp)
    table = ds.meta["component_lid"]
    assert set(table) == set(torch.unique(comp).tolist())
    for k, d in table.items():
        assert torch.all(lid[comp == k] == d)
    assert torch.equal(true_lid(ds), lid)


def _rank(points: torch.Tensor, rtol: float = 1e-6, atol: float = 1e-9) -> int:
    s = torch.linalg.svdvals((points - points.mean(0)).double())
    return int((s > max(rtol * float(s[0]), atol)).sum())


def _block(ds, k: int) -> torch.Tensor:
    start, stop = ds.meta["rows"][k]
    return ds.x[start:stop]


# ------------------------------------------------------------------------------------ generators
@pytest.mark.parametrize("name", sorted(MANIFOLD_DATASETS))
def test_every_generator_defaults_keep_the_meta_contract(name):
    ds = MANIFOLD_DATASETS[name]()
    _check_meta(ds, ds.x.shape[1])
    assert bool(torch.isfinite(ds.x).all())


@pytest.mark.parametrize(("dims", "ambient"), [((2, 4, 8), 10), ((10, 25, 50), 100), ((10,), 100), ((0, 1, 3), 3)])
@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
def test_affine_components_span_exactly_their_dimension(dims, ambient, distribution):
    ds = affine_mixture(dims=dims, ambient=ambient, n_per=200, distribution=distribution, seed=1,
                        dtype=torch.float64)
    assert ds.x.shape == (200 * len(dims), ambient) and ds.x.dtype == torch.float64
    assert ds.meta["component_lid"] == dict(enumerate(dims))
    for k, d in enumerate(dims):
        pts = _block(ds, k)
        assert _rank(pts) == d
        basis, origin = ds.meta["bases"][k], ds.meta["origins"][k]
        assert basis.shape == (ambient, d)
        torch.testing.assert_close(basis.T @ basis, torch.eye(d, dtype=torch.float64))
        # x = origin + basis @ u exactly, with u the stored latent coordinates.
        torch.testing.assert_close(pts, origin + ds.meta["latent"][k] @ basis.T)
        if distribution == "uniform" and d > 0:
            assert float(ds.meta["latent"][k].abs().max()) <= 0.5
    # Atoms (d = 0) are one point repeated, and only they are duplicates.
    atom = torch.tensor([d == 0 for d in dims]).repeat_interleave(200)
    assert torch.equal(ds.is_duplicate, atom)


def test_affine_components_are_separated_and_float32_matches_float64():
    ds = affine_mixture(dims=(1, 2, 3), ambient=4, n_per=300, separation=0.5, seed=3, dtype=torch.float64)
    for a in range(3):
        for b in range(a + 1, 3):
            assert float(torch.cdist(_block(ds, a), _block(ds, b)).min()) >= 0.5 - 1e-9
    ds32 = affine_mixture(dims=(1, 2, 3), ambient=4, n_per=300, separation=0.5, seed=3)
    torch.testing.assert_close(ds32.x, ds.x.float())
    again = affine_mixture(dims=(1, 2, 3), ambient=4, n_per=300, separation=0.5,
                           seed=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(again.x, ds.x)
    assert not torch.equal(affine_mixture(dims=(1, 2, 3), ambient=4, n_per=300, seed=4).x, ds32.x)


def test_affine_per_component_counts():
    ds = affine_mixture(dims=(1, 2), ambient=3, n_per=(5, 7))
    assert ds.n == 12 and ds.meta["rows"] == [(0, 5), (5, 12)]
    assert torch.bincount(ds.y).tolist() == [5, 7]


@pytest.mark.parametrize(("dims", "ambient"), [((2, 4, 8), 10), ((10, 25), 40), ((0, 3, 5), 5)])
def test_squiggly_map_reproduces_data_and_is_an_immersion(dims, ambient):
    ds = squiggly_mixture(dims=dims, ambient=ambient, n_per=300, seed=2, dtype=torch.float64)
    _check_meta(squiggly_mixture(dims=dims, ambient=ambient, n_per=300, seed=2), ambient)
    gen = torch.Generator().manual_seed(0)
    for k, d in enumerate(dims):
        fmap = ds.meta["maps"][k]
        assert isinstance(fmap, SquigglyMap) and fmap.dim == d
        torch.testing.assert_close(fmap(ds.meta["latent"][k]), _block(ds, k))
        if d == 0:
            assert _rank(_block(ds, k)) == 0
            continue
        # Autograd Jacobian at a few latent points: rank d, every singular value >= 1.
        for u in (torch.rand(4, d, generator=gen, dtype=torch.float64) - 0.5):
            jac = torch.autograd.functional.jacobian(fmap, u)
            assert jac.shape == (ambient, d)
            assert float(torch.linalg.svdvals(jac).min()) >= 1 - 1e-9
        # Local PCA: a tiny latent ball maps to a patch with d dominant directions.
        centre = torch.rand(d, generator=gen, dtype=torch.float64) - 0.5
        ball = centre + 1e-4 * (2 * torch.rand(200, d, generator=gen, dtype=torch.float64) - 1)
        s = torch.linalg.svdvals(fmap(ball) - fmap(ball).mean(0))
        if d < ambient:
            assert float(s[d - 1]) > 1e3 * float(s[d])
            # ... while the whole component is curved: not inside a d-dimensional affine subspace.
            assert _rank(_block(ds, k), rtol=1e-3) > d


def test_squiggly_flat_when_amplitude_zero():
    ds = squiggly_mixture(dims=(2, 3), ambient=6, n_per=100, amplitude=0.0, dtype=torch.float64)
    assert [_rank(_block(ds, k)) for k in range(2)] == [2, 3]


def test_sphere_and_torus_satisfy_their_equations():
    for dim, ambient in [(2, 3), (1, 2), (3, 7)]:
        ds = sphere(n=400, dim=dim, ambient=ambient, radius=2.0, seed=5, dtype=torch.float64)
        _check_meta(sphere(n=400, dim=dim, ambient=ambient, radius=2.0, seed=5), ambient)
        torch.testing.assert_close(ds.x.norm(dim=1), torch.full((400,), 2.0, dtype=torch.float64))
        assert _rank(ds.x) == dim + 1 and set(ds.meta["lid"].tolist()) == {dim}

    for ambient in (3, 6):
        ds = torus(n=500, ambient=ambient, radii=(1.5, 0.5), seed=6, dtype=torch.float64)
        _check_meta(torus(n=500, ambient=ambient, radii=(1.5, 0.5), seed=6), ambient)
        xyz = ds.x @ ds.meta["basis"]
        lhs = (xyz[:, :2].norm(dim=1) - 1.5) ** 2 + xyz[:, 2] ** 2
        torch.testing.assert_close(lhs, torch.full((500,), 0.25, dtype=torch.float64))
        assert set(ds.meta["lid"].tolist()) == {2}
    # Area-uniform: the outer half (cos v > 0) holds more points than the inner half.
    v = torus(n=4000, radii=(1.0, 0.8), seed=0).meta["angles"][:, 1]
    assert float((torch.cos(v) > 0).float().mean()) > 0.6


@pytest.mark.parametrize("ambient", [2, 5])
def test_lollipop_components_and_atom(ambient):
    ds = lollipop(n_disc=300, n_stick=100, n_atom=20, ambient=ambient, seed=1, dtype=torch.float64)
    assert ds.n == 420 and ds.meta["component_lid"] == {0: 2, 1: 1, 2: 0}
    assert torch.bincount(ds.y).tolist() == [300, 100, 20]
    plane = ds.x @ ds.meta["basis"]  # back to the 2-D picture
    torch.testing.assert_close(plane, ds.meta["plane"])
    disc, stick, atom = plane[:300], plane[300:400], plane[400:]
    assert float(disc.norm(dim=1).max()) <= 1.0 + 1e-12
    a, b = (torch.tensor(p, dtype=torch.float64) for p in LOLLIPOP_STICK)
    along = (stick - a) @ (b - a) / (b - a).norm() ** 2
    assert float(along.min()) >= 0 and float(along.max()) <= 1
    torch.testing.assert_close(stick, a + along[:, None] * (b - a))  # on the segment
    torch.testing.assert_close(atom, torch.tensor(LOLLIPOP_ATOM, dtype=torch.float64).expand(20, 2))
    assert torch.equal(ds.x[400:], ds.x[400].expand(20, ambient))  # exact copies
    assert torch.equal(ds.is_duplicate, ds.y == 2) and ds.n_sources == 401
    assert float(torch.cdist(atom[:1], plane[:400]).min()) > 1.5
    _check_meta(lollipop(n_disc=300, n_stick=100, n_atom=20, ambient=ambient, seed=1), ambient)


def test_lollipop_without_atom():
    ds = lollipop(n_disc=10, n_stick=5, n_atom=0)
    assert ds.n == 15 and ds.meta["component_lid"] == {0: 2, 1: 1}
    _check_meta(ds, 2)


def test_von_mises_atom_multiplicity_and_isolated_points():
    ds = von_mises_with_atom(n_circle=500, kappa=3.0, n_atom=40, n_isolated=6, seed=2, dtype=torch.float64)
    _check_meta(von_mises_with_atom(n_circle=500, kappa=3.0, n_atom=40, n_isolated=6, seed=2), 2)
    assert ds.n == 546 and ds.meta["component_lid"] == {0: 1, 1: 0, 2: 0}
    circle = ds.x[:500]
    torch.testing.assert_close(circle.norm(dim=1), torch.ones(500, dtype=torch.float64))
    start, stop = ds.meta["atom_rows"]
    assert (start, stop) == (500, 540)
    assert torch.equal(ds.x[start:stop], torch.zeros(40, 2, dtype=torch.float64))
    assert int(ds.is_duplicate.sum()) == 40 and bool(ds.is_duplicate[start:stop].all())
    assert ds.n_sources == 500 + 1 + 6
    iso = ds.x[slice(*ds.meta["isolated_rows"])]
    torch.testing.assert_close(iso.norm(dim=1), torch.full((6,), 1.6, dtype=torch.float64))
    assert float(torch.pdist(iso).min()) > 1.5
    unique = ds.unique()
    assert int((unique.meta["copies"] > 1).sum()) == 1 and int(unique.meta["copies"].max()) == 40
    assert torch.equal(true_lid(unique), torch.tensor([1] * 500 + [0] * 7))


@pytest.mark.parametrize("kappa", [0.0, 0.5, 4.0, 50.0])
def test_von_mises_angles_have_the_right_concentration(kappa):
    ds = von_mises_with_atom(n_circle=20000, kappa=kappa, mu=1.0, n_atom=0, n_isolated=0, seed=0,
                             dtype=torch.float64)
    theta = ds.meta["angles"]
    assert float(theta.min()) >= -math.pi and float(theta.max()) < math.pi
    # E[cos(theta - mu)] = I1(kappa) / I0(kappa); E[sin(theta - mu)] = 0.
    want = float(i1e(kappa) / i0e(kappa)) if kappa > 0 else 0.0
    assert abs(float(torch.cos(theta - 1.0).mean()) - want) < 0.02
    assert abs(float(torch.sin(theta - 1.0).mean())) < 0.02


@pytest.mark.parametrize(("fn", "kwargs"), [
    (affine_mixture, {"dims": (2, -1)}),
    (affine_mixture, {"dims": (2, 11), "ambient": 10}),
    (affine_mixture, {"dims": ()}),
    (affine_mixture, {"n_per": 0}),
    (affine_mixture, {"n_per": (1, 2)}),
    (affine_mixture, {"scale": 0.0}),
    (affine_mixture, {"separation": -1.0}),
    (affine_mixture, {"distribution": "cauchy"}),
    (affine_mixture, {"seed": 1.5}),
    (affine_mixture, {"dtype": torch.int64}),
    (squiggly_mixture, {"dims": (12,), "ambient": 10}),
    (squiggly_mixture, {"frequency": -1.0}),
    (squiggly_mixture, {"n_waves": -1}),
    (lollipop, {"n_disc": 0}),
    (lollipop, {"ambient": 1}),
    (sphere, {"dim": 2, "ambient": 2}),
    (sphere, {"n": 0}),
    (torus, {"radii": (0.4, 1.0)}),
    (torus, {"ambient": 2}),
    (von_mises_with_atom, {"kappa": -1.0}),
    (von_mises_with_atom, {"atom": (1.0, 0.0)}),
    (von_mises_with_atom, {"n_circle": 0}),
])
def test_bad_arguments_raise_memgeo_error(fn, kwargs):
    with pytest.raises(MemgeoError):
        fn(**kwargs)


def test_true_lid_needs_manifold_meta():
    from memgeo.data import make_toy2d

    with pytest.raises(MemgeoError):
        true_lid(make_toy2d(n=10, n_duplicates=2))


# ------------------------------------------------------------------------------------ metrics
def _brute_c_index(e: np.ndarray, t: np.ndarray) -> float:
    de, dt = e[None, :] - e[:, None], t[None, :] - t[:, None]
    comparable = dt > 0
    return float(((de > 0) & comparable).sum() + 0.5 * ((de == 0) & comparable).sum()) / comparable.sum()


def test_mae_and_relative_bias_hand_examples():
    assert lid_mae([1.0, 2.0, 3.0], [1, 1, 1]) == pytest.approx(1.0)
    assert lid_mae(torch.tensor([0.5, 2.5]), np.array([1, 2])) == pytest.approx(0.5)
    # (2-2)/2 = 0 and (3-2)/2 = 0.5; the true-0 point is left out.
    assert lid_relative_bias([2.0, 3.0, 0.5], [2, 2, 0]) == pytest.approx(0.25)
    assert lid_relative_bias([1.0, 4.0], [2, 8]) == pytest.approx(-0.5)
    assert math.isnan(lid_relative_bias([0.3, 0.1], [0, 0]))


def test_concordance_index_hand_examples():
    true = [0, 1, 2, 3]
    assert concordance_index([0.1, 0.2, 0.3, 0.4], true) == 1.0
    assert concordance_index([4.0, 3.0, 2.0, 1.0], true) == 0.0
    assert concordance_index([7.0, 7.0, 7.0, 7.0], true) == 0.5
    # Pairs (0,1), (0,2) concordant; (1,2) tied in est -> (2 + 0.5) / 3.
    assert concordance_index([0.0, 1.0, 1.0], [0, 1, 2]) == pytest.approx(2.5 / 3)
    # Pairs with equal true LID are not counted: only (a, c) and (b, c) with a=b=1.
    assert concordance_index([1.0, 5.0, 3.0], [1, 1, 2]) == pytest.approx(0.5)
    assert concordance_index(torch.tensor([3.0, 1.0]), torch.tensor([2, 1])) == 1.0


@pytest.mark.parametrize("case", range(6))
def test_concordance_index_matches_brute_force(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(2, 400))
    t = rng.integers(0, 5, n).astype(float) if case % 2 else rng.normal(size=n)
    e = rng.integers(0, 4, n) + 0.5 * t if case % 3 else rng.normal(size=n) + t
    if len(np.unique(t)) < 2:
        t[0] += 1.0
    assert concordance_index(e, t) == pytest.approx(_brute_c_index(e, t), abs=1e-12)


def test_concordance_index_is_fast_for_3000_points():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 60, 3000).astype(float)
    e = t + rng.normal(size=3000)
    start = time.perf_counter()
    c = concordance_index(e, t)
    cont = concordance_index(rng.normal(size=3000), rng.normal(size=3000))
    assert time.perf_counter() - start < 1.0
    assert 0.9 < c < 1.0 and 0.45 < cont < 0.55


def test_per_component_summary_hand_example():
    est = [1.0, 3.0, 0.0, 0.4, 5.0]
    true = [2, 2, 0, 0, 4]
    comp = torch.tensor([0, 0, 1, 1, 2])
    rows = per_component_summary(est, true, comp)
    assert [r["component"] for r in rows] == [0, 1, 2]
    r0, r1, r2 = rows
    assert r0 == {"component": 0, "true_lid": 2, "n": 2, "mean": 2.0, "std": 1.0, "mae": 1.0,
                  "relative_bias": 0.0}
    assert r1["true_lid"] == 0 and r1["relative_bias"] is None and r1["mae"] == pytest.approx(0.2)
    assert r2["relative_bias"] == pytest.approx(0.25) and r2["std"] == 0.0


def test_metrics_on_a_generated_mixture():
    ds = affine_mixture(dims=(2, 4, 8), ambient=10, n_per=50)
    est = ds.meta["lid"].float() * 0.9
    assert lid_relative_bias(est, ds.meta["lid"]) == pytest.approx(-0.1, abs=1e-6)
    assert concordance_index(est, ds.meta["lid"]) == 1.0
    rows = per_component_summary(est, ds.meta["lid"], ds.y)
    assert [r["true_lid"] for r in rows] == [2, 4, 8] and all(r["n"] == 50 for r in rows)


@pytest.mark.parametrize("fn", [lid_mae, lid_relative_bias, concordance_index])
def test_metric_input_errors(fn):
    with pytest.raises(MemgeoError):
        fn([1.0, 2.0], [1, 2, 3])
    with pytest.raises(MemgeoError):
        fn([1.0, float("nan")], [1, 2])
    with pytest.raises(MemgeoError):
        fn(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(MemgeoError):
        fn([], [])


def test_metric_special_errors():
    with pytest.raises(MemgeoError):
        concordance_index([1.0, 2.0, 3.0], [2, 2, 2])
    with pytest.raises(MemgeoError):
        per_component_summary([1.0, 2.0], [1, 2], [0])
    with pytest.raises(MemgeoError):
        per_component_summary([1.0, 2.0], [1, float("inf")], [0, 1])
    with pytest.raises(MemgeoError):
        per_component_summary([1.0, 2.0], [1, 2], [0.5, 1.0])
