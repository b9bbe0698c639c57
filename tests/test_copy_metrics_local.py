"""Copy-metrics framework and local metrics (issue 12): reference behaviours and known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from copy_metric_fixtures import mixture_triple
from memgeo.errors import MemgeoError
from memgeo.memorization.copy_metrics import COPY_METRICS, CopyData, compute_copy_metrics
from memgeo.memorization.copy_metrics.datacopy import levina_bickel_dimension
from memgeo.memorization.copy_metrics.local import tile_index, tiled_nearest

pytestmark = pytest.mark.usefixtures("single_thread")

LOCAL = ["d1d2", "nn_ratio", "dcr", "cosine", "authenticity"]


@pytest.fixture(scope="module", params=[16, 64])
def fresh_and_copies(request):
    d = request.param
    out = {}
    for gen in ("fresh", "copies", "noisy_copies"):
        t = mixture_triple(d, gen, seed=d)
        out[gen] = (t, compute_copy_metrics(t.train, t.test, t.gen, LOCAL, seed=1))
    return d, out


# --- issue 12 reference behaviours ---------------------------------------------------------------
def test_authenticity_reference(fresh_and_copies):
    d, res = fresh_and_copies
    assert res["copies"][1]["authenticity"].value == 0.0  # exactly 0 %, not ~25 %
    assert res["noisy_copies"][1]["authenticity"].value == 0.0
    fresh = res["fresh"][1]["authenticity"]
    assert abs(fresh.value - fresh.baseline) <= 0.05
    # The level depends on dimension: about 67 % at d = 16 and 78 % at d = 64.
    assert abs(fresh.value - {16: 0.67, 64: 0.78}[d]) <= 0.05


def test_copies_flagged_with_their_source(fresh_and_copies):
    _, res = fresh_and_copies
    t, r = res["copies"]
    for name in ("d1d2", "nn_ratio", "dcr"):
        assert r[name].value == 1.0
        assert np.array_equal(r[name].nearest_index, t.source)
        assert r[name].baseline <= 0.1  # the held-out set is not flagged (dcr: about its 5 % quantile)
    t, r = res["fresh"]
    assert r["d1d2"].value == 0.0 and r["nn_ratio"].value == 0.0
    assert r["dcr"].value < 0.1


@pytest.mark.parametrize("d", [16, 64])
def test_ten_percent_copies(d):
    t = mixture_triple(d, "copies", copy_fraction=0.1, seed=100 + d)
    res = compute_copy_metrics(t.train, t.test, t.gen, ["d1d2", "nn_ratio"], seed=0)
    for r in res.values():
        assert 0.08 <= r.value <= 0.12
        assert r.ci_low <= r.value <= r.ci_high
        assert np.array_equal(r.nearest_index[t.is_copy], t.source[t.is_copy])


def test_bootstrap_ci_contains_value_and_is_deterministic():
    t = mixture_triple(16, "noisy_copies", copy_fraction=0.3, seed=5)
    a = compute_copy_metrics(t.train, t.test, t.gen, LOCAL, seed=3)
    b = compute_copy_metrics(t.train, t.test, t.gen, LOCAL, seed=3)
    for name in LOCAL:
        r = a[name]
        if name != "cosine":  # cosine is 1 everywhere here: a degenerate CI [1, 1]
            assert r.ci_low < r.ci_high
        assert r.ci_low <= r.value <= r.ci_high
        assert (r.ci_low, r.ci_high, r.baseline) == (b[name].ci_low, b[name].ci_high, b[name].baseline)
        json.dumps(r.summary())  # JSON-ready
        assert "baseline_ci" in r.summary()


# --- known answers ---------------------------------------------------------------------------------
def test_d1d2_closed_form():
    train = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 10.0]])
    gen = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    test = np.array([[0.0, 5.0], [5.0, 5.0]])
    r = compute_copy_metrics(train, test, gen, ["d1d2"], n_boot=0)["d1d2"]
    np.testing.assert_allclose(r.per_sample, [1 / 3, 1.0, 0.0])
    assert r.flagged.tolist() == [False, False, True]  # 1/3 is not < 1/3
    assert r.nearest_index.tolist() == [0, 0, 0]
    assert np.isnan(r.ci_low) and np.isnan(r.ci_high)


def test_duplicates_in_train_do_not_hide_copies():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 8))
    train[10] = train[3]  # an exact duplicate
    gen = train[[3, 5]]
    r = compute_copy_metrics(train, rng.normal(size=(20, 8)), gen, ["d1d2", "authenticity"])
    assert r["d1d2"].flagged.all() and r["d1d2"].nearest_index.tolist() == [3, 5]
    assert r["authenticity"].value == 0.0


def test_cosine_of_scaled_copies_is_one():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(40, 6))
    gen = np.concatenate([3.0 * train[:5], rng.normal(size=(5, 6))])
    r = compute_copy_metrics(train, rng.normal(size=(10, 6)), gen, ["cosine"], options={"cosine": {"threshold": 0.99}})
    c = r["cosine"]
    np.testing.assert_allclose(c.per_sample[:5], 1.0, atol=1e-12)
    assert c.nearest_index[:5].tolist() == [0, 1, 2, 3, 4]
    assert c.flagged[:5].all()
    # Independent check of the similarity of the fresh ones: brute-force max cosine.
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    gn = gen[5:] / np.linalg.norm(gen[5:], axis=1, keepdims=True)
    np.testing.assert_allclose(c.per_sample[5:], (gn @ tn.T).max(axis=1), atol=1e-6)


def test_tiled_l2_one_tile_differs():
    rng = np.random.default_rng(2)
    train = rng.uniform(-1, 1, size=(30, 1, 8, 8))
    gen = train[:2].copy()
    gen[0, 0, 0:2, 2:4] += 0.5  # one 2x2 tile of a 4x4 grid: tile distance sqrt(mean(0.5^2)) = 0.5
    gen[1, 0, 6:8, 6:8] -= 0.2
    tiles = tile_index((1, 8, 8), 4)
    assert len(tiles) == 16 and sorted(np.concatenate(tiles).tolist()) == list(range(64))
    d, i = tiled_nearest(torch.as_tensor(gen.reshape(2, -1), dtype=torch.float32),
                         torch.as_tensor(train.reshape(30, -1), dtype=torch.float32), tiles, k=1)
    np.testing.assert_allclose(d[:, 0], [0.5, 0.2], rtol=1e-5)
    assert i[:, 0].tolist() == [0, 1]
    # The plain normalized l2 of the same change is 4x smaller (one tile of 16): 0.5 / 4.
    r = compute_copy_metrics(train, rng.uniform(-1, 1, size=(10, 1, 8, 8)), gen, ["tiled_l2", "d1d2"],
                             options={"tiled_l2": {"threshold": 0.3}})
    assert r["tiled_l2"].flagged.tolist() == [False, True]
    np.testing.assert_allclose(r["tiled_l2"].per_sample, [0.5, 0.2], rtol=1e-5)


def test_tiled_nearest_matches_brute_force():
    rng = np.random.default_rng(3)
    q, ref = rng.normal(size=(7, 3, 6, 6)), rng.normal(size=(25, 3, 6, 6))
    tiles = tile_index((3, 6, 6), 3)
    d, i = tiled_nearest(torch.as_tensor(q.reshape(7, -1)), torch.as_tensor(ref.reshape(25, -1)), tiles, k=3)
    diff = q.reshape(7, 1, -1) - ref.reshape(1, 25, -1)
    brute = np.stack([np.sqrt((diff[:, :, t] ** 2).mean(axis=2)) for t in tiles]).max(axis=0)
    np.testing.assert_allclose(d, np.sort(brute, axis=1)[:, :3], rtol=1e-5)
    assert np.array_equal(i, np.argsort(brute, axis=1)[:, :3])


def test_clique_finds_planted_clique_only():
    t = mixture_triple(16, "fresh", n_gen=500, seed=3)
    rng = np.random.default_rng(5)
    gen = t.gen.copy()
    pos = np.sort(rng.choice(500, 10, replace=False))
    gen[pos] = t.train[7] + 0.01 * rng.normal(size=(10, 16))
    r = compute_copy_metrics(t.train, t.test, gen, ["clique"])["clique"]
    assert r.extra["n_cliques"] == 1
    (c,) = r.extra["cliques"]
    assert c["members"] == pos.tolist() and c["medoid_train_index"] == 7
    assert np.flatnonzero(r.flagged).tolist() == pos.tolist()
    assert r.value == pytest.approx(10 / 500) and r.baseline == 0.0
    fresh = compute_copy_metrics(t.train, t.test, t.gen, ["clique"])["clique"]
    assert fresh.extra["n_cliques"] == 0 and fresh.value == 0.0


def test_datacopy_rate_detects_repeated_copies_not_fresh():
    t = mixture_triple(16, "fresh", seed=9)
    rng = np.random.default_rng(9)
    src = np.repeat(rng.choice(2000, 20, replace=False), 10)
    gen = t.gen.copy()
    gen[:200] = t.train[src] + 0.01 * rng.normal(size=(200, 16))
    r = compute_copy_metrics(t.train, t.test, gen, ["datacopy_rate"])["datacopy_rate"]
    assert r.flagged[:200].mean() > 0.7 and r.flagged[200:].mean() < 0.02
    hit = r.flagged[:200]
    assert np.array_equal(r.nearest_index[:200][hit], src[hit])
    fresh = compute_copy_metrics(t.train, t.test, t.gen, ["datacopy_rate"])["datacopy_rate"]
    assert fresh.value < 0.02 and fresh.baseline < 0.02


def test_levina_bickel_on_a_plane():
    rng = np.random.default_rng(4)
    x = np.zeros((3000, 10))
    x[:, :3] = rng.uniform(size=(3000, 3))
    data = CopyData(x, x[:10], x[:10])
    d, _ = data.train_train_nn(20)
    assert abs(levina_bickel_dimension(d) - 3.0) < 0.4


# --- framework -------------------------------------------------------------------------------------
def test_copydata_knn_excludes_self_and_caches():
    rng = np.random.default_rng(6)
    train = rng.normal(size=(60, 5))
    data = CopyData(train, rng.normal(size=(10, 5)), rng.normal(size=(7, 5)))
    d, i = data.train_train_nn(3)
    assert not (i == np.arange(60)[:, None]).any()
    brute = np.linalg.norm(train[:, None] - train[None], axis=2) / np.sqrt(5)
    np.fill_diagonal(brute, np.inf)
    np.testing.assert_allclose(d, np.sort(brute, axis=1)[:, :3], rtol=1e-6)
    assert data.train_train_nn(2)[0].shape == (60, 2)  # served from the k=3 cache
    base = data.baseline(split=True)
    assert base.n_gen == 5 and base.n_test == 5
    np.testing.assert_array_equal(base.gen_train_nn(1)[1][:, 0],
                                  data.test_train_nn(1)[1][:, 0][np.isin(np.arange(10), base._rows["gen"][1])])


def test_registry_and_summary():
    assert {"d1d2", "nn_ratio", "dcr", "cosine", "tiled_l2", "authenticity", "datacopy_rate", "clique"} <= set(COPY_METRICS)
    for name in ("d1d2", "nn_ratio", "dcr", "cosine", "tiled_l2"):
        assert COPY_METRICS[name].kind == "local"


@pytest.mark.parametrize("call, match", [
    (lambda tr, te, g: compute_copy_metrics(tr, te, g[:, :3]), "dimension"),
    (lambda tr, te, g: compute_copy_metrics(tr, te, g, ["nope"]), "unknown copy metric"),
    (lambda tr, te, g: compute_copy_metrics(tr, te, g, ["d1d2"], options={"cosine": {}}), "not computed"),
    (lambda tr, te, g: compute_copy_metrics(tr, te, g, ["d1d2"], options={"d1d2": {"threshold": -1}}), "threshold"),
    (lambda tr, te, g: compute_copy_metrics(tr, te, g, ["d1d2"], options={"d1d2": {"bogus": 1}}), "bogus"),
    (lambda tr, te, g: compute_copy_metrics(tr, te, g, ["tiled_l2"]), "image shape"),
    (lambda tr, te, g: compute_copy_metrics(tr, te, g, image_shape=(3, 3)), "image_shape"),
    (lambda tr, te, g: compute_copy_metrics(tr, te, g, n_boot=-1), "n_boot"),
    (lambda tr, te, g: compute_copy_metrics(tr, te, g, level=1.0), "level"),
    (lambda tr, te, g: compute_copy_metrics(tr, te, g[:0]), "no samples"),
    (lambda tr, te, g: compute_copy_metrics(tr[:1].repeat(5, 0), te, g), "distinct"),
    (lambda tr, te, g: compute_copy_metrics(np.where(np.arange(4) == 0, np.nan, tr), te, g), "NaN"),
    (lambda tr, te, g: compute_copy_metrics(tr, te, g, ["datacopy_rate"], options={"datacopy_rate": {"lam": 1}}), "lam"),
])
def test_bad_inputs(call, match):
    rng = np.random.default_rng(7)
    tr, te, g = rng.normal(size=(30, 4)), rng.normal(size=(10, 4)), rng.normal(size=(8, 4))
    with pytest.raises(MemgeoError, match=match):
        call(tr, te, g)
