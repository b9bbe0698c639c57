"""Global copy metrics (issue 12): C_T, FLD (gap, O_j), precision/recall/density/coverage.

Reference behaviours on the seeded Gaussian mixture and two-moons data of copy_metric_fixtures, plus
known answers from independent computations (scipy's Mann-Whitney test, closed-form maximum
likelihood, brute-force k-NN balls).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache

import numpy as np
import pytest
import scipy.stats as st
from scipy.spatial.distance import cdist

from copy_metric_fixtures import mixture_triple, moons_triple
from memgeo.errors import MemgeoError
from memgeo.memorization.copy_metrics import COPY_METRICS, CopyData, compute_copy_metrics
from memgeo.memorization.copy_metrics.ct import CTMetric, mann_whitney_z_cells
from memgeo.memorization.copy_metrics.fld import FLDMetric, fit_bandwidths, fld_scores, mixture_loglik

SCENARIOS = {
    "fresh": {"generator": "fresh"},
    "copies": {"generator": "copies"},
    "noisy": {"generator": "noisy_copies"},
    "copies10": {"generator": "copies", "copy_fraction": 0.1},
    "dropped": {"generator": "fresh", "components": np.arange(5)},
}


@lru_cache(maxsize=None)
def _data(d: int, scenario: str) -> tuple[CopyData, object]:
    tr = mixture_triple(d, **SCENARIOS[scenario])
    return CopyData(tr.train, tr.test, tr.gen, n_boot=0), tr


@lru_cache(maxsize=None)
def _ct(d: int, scenario: str):
    return CTMetric().compute(_data(d, scenario)[0])


@lru_cache(maxsize=None)
def _fld(d: int, scenario: str):
    return FLDMetric().compute(_data(d, scenario)[0])


# --- C_T -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [16, 64])
def test_ct_reference_behaviours_on_the_mixture(d):
    assert abs(_ct(d, "fresh").value) < 2
    assert _ct(d, "copies").value < -10
    assert _ct(d, "noisy").value < -10
    # 10 % copies: C_T alone does not flag the generator.
    assert _ct(d, "copies10").value > -4
    res = _ct(d, "fresh")
    assert res.extra["k"] == 5 and len(res.extra["cells"]) == 5
    assert res.per_sample.shape == (1000,) and res.nearest_index.shape == (1000,)


def test_ct_decreases_with_the_kde_bandwidth_on_moons():
    values = []
    for sigma in (10, 1, 0.32, 0.1, 0.032, 0.01):
        tr = moons_triple(sigma)
        values.append(CTMetric().compute(CopyData(tr.train, tr.test, tr.gen, n_boot=0)).value)
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[0] > 5 and values[-1] < -5


def test_one_cell_ct_is_scipys_mann_whitney_z():
    data, _ = _data(16, "copies10")
    res = CTMetric(k=1).compute(data)
    d_gen, d_test = data.gen_train_nn(1)[0][:, 0], data.test_train_nn(1)[0][:, 0]
    p = st.mannwhitneyu(d_gen, d_test, alternative="less", method="asymptotic", use_continuity=False).pvalue
    assert res.value == pytest.approx(st.norm.ppf(p), abs=1e-9)
    assert res.extra["dropped_cells"] == []


def test_per_cell_z_with_ties_and_tau_weighting():
    rng = np.random.default_rng(3)
    g, t = np.round(rng.normal(size=400), 1), np.round(rng.normal(0.3, 1, size=500), 1)  # many ties
    cg, ct = rng.integers(0, 4, 400), rng.integers(0, 4, 500)
    cg[cg == 3] = 2  # cell 3: no generated sample
    res = mann_whitney_z_cells(g, cg, t, ct, 4)
    for c in range(3):
        p = st.mannwhitneyu(g[cg == c], t[ct == c], alternative="less", method="asymptotic", use_continuity=False).pvalue
        assert res["z"][c] == pytest.approx(st.norm.ppf(p), abs=1e-9)
        assert res["u"][c] == st.mannwhitneyu(g[cg == c], t[ct == c]).statistic
    assert np.isnan(res["z"][3])
    # Through the metric: tau drops cells; C_T is the test-weighted mean over the kept ones.
    data, _ = _data(16, "dropped")
    r = CTMetric(k=10, tau=0.05).compute(data)
    cells = r.extra["cells"]
    used = [c for c in cells if c["used"]]
    assert r.extra["dropped_cells"] == [c["cell"] for c in cells if not c["used"]]
    assert all(c["n_gen"] >= 50 for c in used) and all(c["n_gen"] < 50 for c in cells if not c["used"])
    assert len(r.extra["dropped_cells"]) >= 4  # the dropped mixture components get no generated samples
    want = sum(c["n_test"] * c["z"] for c in used) / sum(c["n_test"] for c in used)
    assert r.value == pytest.approx(want, rel=1e-12)


# --- FLD -------------------------------------------------------------------------------------------
def test_only_fld_reacts_to_dropped_modes():
    fresh, dropped = _fld(16, "fresh"), _fld(16, "dropped")
    assert abs(fresh.value) < 5
    assert dropped.value > fresh.value + 50  # measured 160 vs -0.3
    assert dropped.extra["gap"] > -20  # not copying
    assert _ct(16, "dropped").value > -3  # C_T does not flag copying either


def test_fld_gap_far_below_zero_only_when_copying():
    gaps = {s: _fld(16, s).extra["gap"] for s in ("fresh", "copies", "noisy", "copies10", "dropped")}
    assert gaps["copies"] < -1000 and gaps["noisy"] < -1000, gaps
    assert gaps["copies10"] < -10, gaps
    # Dropped modes: seeds 0-3 measured 5.6, -0.2, -3.4, -12.7; 10 % copies about -31 on each.
    assert abs(gaps["fresh"]) < 5 and gaps["dropped"] > -20, gaps
    # O_j: every copied sample is more memorized than every fresh one, and points at its source row.
    res, tr = _fld(16, "copies10"), _data(16, "copies10")[1]
    assert res.per_sample[tr.is_copy].min() > res.per_sample[~tr.is_copy].max()
    np.testing.assert_array_equal(res.nearest_index[tr.is_copy], tr.source[tr.is_copy])


def test_fld_chunked_equals_unchunked():
    tr = mixture_triple(8, "noisy_copies", copy_fraction=0.3, n_train=300, n_test=200, n_gen=150, seed=2)
    whole = fld_scores(tr.train, tr.test, tr.gen, budget_mb=64)
    tiny = fld_scores(tr.train, tr.test, tr.gen, budget_mb=0.005)  # blocks of 4 rows; distances recomputed per EM step
    for key in ("fld", "fld_train", "gap", "reference_nll"):
        assert tiny[key] == pytest.approx(whole[key], rel=1e-9, abs=1e-9)
    for key in ("var", "o", "nll_test", "nll_train"):
        np.testing.assert_allclose(tiny[key], whole[key], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(tiny["o_index"], whole["o_index"])


def test_fld_building_blocks_known_answers():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5)) * 1.7
    # One component, no background: the MLE variance is mean ||x - c||^2 / D; EM never decreases the likelihood.
    c = rng.normal(size=(1, 5))
    fit = fit_bandwidths(c, x, background_weight=0.0)
    assert fit["var"][0] == pytest.approx(((x - c) ** 2).sum(axis=1).mean() / 5, rel=1e-12)
    cs, var = rng.normal(size=(7, 5)), rng.uniform(0.5, 2.0, size=7)
    fit = fit_bandwidths(cs, x, tol=0.0, max_iter=30)
    assert np.all(np.diff(fit["loglik"]) >= -1e-12)
    # Mixture likelihood against scipy's Gaussian densities.
    dens = np.stack([st.multivariate_normal(cs[j], var[j] * np.eye(5)).pdf(x[:20]) for j in range(7)], axis=1)
    np.testing.assert_allclose(mixture_loglik(x[:20], cs, var), np.log(dens.mean(axis=1)), rtol=1e-10)


# --- precision / recall / density / coverage -------------------------------------------------------
def test_prdc_on_identical_sets():
    tr = mixture_triple(16, "fresh", n_train=400, n_test=100, n_gen=100)
    for k in (3, 5):
        res = compute_copy_metrics(tr.train, tr.test, tr.train, ["precision", "recall", "density", "coverage"],
                                   options={m: {"k": k} for m in ("precision", "recall", "density", "coverage")},
                                   n_boot=20, baseline=False)
        assert res["precision"].value == res["recall"].value == res["coverage"].value == 1.0
        # Each real ball holds its centre and its k nearest neighbours: k + 1 points.
        assert res["density"].value == pytest.approx((k + 1) / k, rel=1e-12)


def test_prdc_matches_brute_force():
    rng = np.random.default_rng(4)
    real, gen, k = rng.normal(size=(120, 6)), rng.normal(0.4, 1.2, size=(90, 6)), 4
    data = CopyData(real, rng.normal(size=(10, 6)), gen, n_boot=0)
    got = {m: COPY_METRICS.build(m, k=k, budget_mb=0.01).compute(data).value
           for m in ("precision", "recall", "density", "coverage")}
    d_rr, d_gg, d_gr = cdist(real, real), cdist(gen, gen), cdist(gen, real)
    r_real = np.sort(d_rr, axis=1)[:, k]  # column 0 is the point itself
    r_gen = np.sort(d_gg, axis=1)[:, k]
    inside = d_gr <= r_real[None, :]
    want = {"precision": inside.any(axis=1).mean(), "density": inside.sum() / (k * len(gen)),
            "coverage": inside.any(axis=0).mean(), "recall": (d_gr <= r_gen[:, None]).any(axis=0).mean()}
    assert got == pytest.approx(want, abs=1e-12)


# --- baseline, summary, bad options ----------------------------------------------------------------
def test_results_carry_baseline_ci_and_json_summary():
    tr = mixture_triple(16, "copies", n_train=600, n_test=400, n_gen=300, seed=5)
    res = compute_copy_metrics(tr.train, tr.test, tr.gen, ["ct", "fld", "precision"], n_boot=30,
                               options={"ct": {"k": 2}})
    for r in res.values():
        assert r.baseline is not None and math.isfinite(r.baseline)
        assert r.ci_low <= r.ci_high
        json.dumps(r.summary())
    assert res["ct"].value < -10 < res["ct"].baseline
    assert res["fld"].extra["gap"] < -1000 and res["fld"].extra["gap_ci"][1] < 0
    assert abs(res["fld"].baseline) < 20  # test half as the generator: about the ideal 0
    assert res["fld"].extra["baseline_split"] == "halves of test"
    assert res["precision"].extra["baseline_split"] == "all of test"


@pytest.mark.parametrize("name, options", [
    ("ct", {"k": 0}), ("ct", {"tau": 1.5}), ("ct", {"pca": 0}), ("ct", {"k": 2.5}), ("ct", {"cells": 3}),
    ("fld", {"min_var": 0.0}), ("fld", {"background_weight": 1.0}), ("fld", {"budget_mb": -1}),
    ("fld", {"standardize": "yes"}), ("fld", {"max_iter": 0}), ("fld", {"tol": float("nan")}),
    ("precision", {"k": 0}), ("recall", {"reference": "validation"}), ("density", {"budget_mb": 0}),
])
def test_bad_options_are_refused(name, options):
    with pytest.raises(MemgeoError):
        COPY_METRICS.build(name, **options)


def test_options_impossible_for_the_data_are_refused():
    tr = mixture_triple(4, "fresh", n_train=30, n_test=20, n_gen=10)
    data = CopyData(tr.train, tr.test, tr.gen, n_boot=0)
    with pytest.raises(MemgeoError, match="k=31"):
        CTMetric(k=31).compute(data)
    with pytest.raises(MemgeoError, match="pca=5"):
        CTMetric(pca=5).compute(data)
    with pytest.raises(MemgeoError, match="k=30"):
        COPY_METRICS.build("precision", k=30).compute(data)
    # Recall needs k < n_gen; the other three still work.
    r = COPY_METRICS.build("recall", k=10).compute(data)
    assert math.isnan(r.value) and COPY_METRICS.build("coverage", k=10).compute(data).value >= 0
