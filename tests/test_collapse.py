"""Model-collapse simulator against closed-form theory (float64 throughout).

Simulated means are compared with exact finite-t formulas within 4 Monte Carlo standard errors,
on the log-variance (light-tailed) rather than the heavy-tailed variance itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import psi

from memgeo.collapse import theory
from memgeo.collapse.families import (CategoricalFamily, EmpiricalFamily, GaussianFamily, KernelDensityFamily,
                                      MixtureFamily, make_family)
from memgeo.collapse.loops import simulate
from memgeo.collapse.metrics import energy_distance, gaussian_kl, gaussian_w2, knn_precision_recall
from memgeo.collapse.params import GaussianParams
from memgeo.collapse.schedules import Schedule, parse_schedule
from memgeo.errors import MemgeoError


def _z(samples: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """(T+1, R) per-run values -> z-scores of their means against ``expected`` (generation 0 skipped)."""
    se = samples[1:].std(1, ddof=1) / np.sqrt(samples.shape[1])
    return (samples[1:].mean(1) - expected[1:]) / se


# ---------------------------------------------------------------------------- replace, Gaussian


def test_replace_mle_log_variance_matches_digamma_random_walk():
    hist = simulate(GaussianFamily(estimator="mle"), "replace", "constant", 100, 4000, n=100, seed=1)
    mean, sd = theory.expected_log_var(hist.sizes, "mle")
    # the number quoted in the issue: E log sigma_100^2 = 100 [psi(49.5) + log(2/100)]
    assert mean[100] == pytest.approx(100 * (psi(49.5) + np.log(2 / 100)), rel=1e-12)
    assert mean[100] == pytest.approx(-2.0185, abs=1e-3)
    lv = hist.metrics["log_var"]
    assert np.abs(_z(lv, mean)).max() < 4
    # the spread of the walk follows the trigamma sum
    np.testing.assert_allclose(lv.std(1)[1:], sd[1:], rtol=0.06)


def test_replace_mle_martingale_and_expected_variance():
    hist = simulate(GaussianFamily(estimator="mle"), "replace", "constant", 50, 4000, n=100, seed=2)
    # E[(mu_t - mu_0)^2 + sigma_t^2] = sigma_0^2 = 1 at every t
    assert np.abs(_z(hist.metrics["mu_dist2_plus_trace"], np.ones(51))).max() < 4
    assert np.abs(_z(hist.metrics["trace_ratio"], theory.expected_trace_ratio(hist.sizes, "mle"))).max() < 4
    np.testing.assert_allclose(theory.expected_trace_ratio([100] * 3), (99 / 100) ** np.arange(4))


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_replace_other_estimators_log_variance(estimator):
    fam = GaussianFamily(estimator=estimator, bias_c=1.0, bias_beta=0.5)
    hist = simulate(fam, "replace", "constant", 60, 4000, n=50, seed=3)
    mean, _ = theory.expected_log_var(hist.sizes, estimator, bias_c=1.0, bias_beta=0.5)
    assert np.abs(_z(hist.metrics["log_var"], mean)).max() < 4
    # the unbiased variance is a martingale (its mean stays 1) while its log drifts down
    trace_theory = theory.expected_trace_ratio(hist.sizes, estimator, 1.0, 0.5)
    assert np.abs(_z(hist.metrics["trace_ratio"][:21], trace_theory[:21])).max() < 4
    assert mean[-1] < -0.5


@pytest.mark.parametrize("mode", ["stats", "data"])
def test_replace_multivariate_log_det_follows_wishart(mode):
    hist = simulate(GaussianFamily(dim=3, mode=mode), "replace", "constant", 30, 3000, n=20, seed=4)
    mean, sd = theory.expected_log_var(hist.sizes, "mle", dim=3)
    lv = hist.metrics["log_var"]
    assert np.abs(_z(lv, mean)).max() < 4
    np.testing.assert_allclose(lv.std(1)[1:], sd[1:], rtol=0.08)
    assert np.abs(_z(hist.metrics["mu_dist2_plus_trace"], np.ones(31))).max() < 4


# ---------------------------------------------------------------------------- schedules


def _window_losses(spec: str, estimator: str) -> tuple[np.ndarray, np.ndarray, float]:
    hist = simulate(GaussianFamily(estimator=estimator), "replace", spec, 64, 20_000, n=4, seed=5)
    lv = hist.metrics["log_var"]
    mean, _ = theory.expected_log_var(hist.sizes, estimator)
    assert np.abs(_z(lv[:, :4000], mean)).max() < 4  # any schedule: the walk's mean is exact
    return lv[2] - lv[4], lv[32] - lv[64], float(mean[64])


@pytest.mark.parametrize("spec,estimator,collapses", [
    ("constant", "unbiased", True), ("linear", "unbiased", True), ("power:1.5", "unbiased", False),
    ("power:2", "unbiased", False), ("power:1.5", "biased", True), ("power:2.5", "biased", False)])
def test_schedules_collapse_or_level_off(spec, estimator, collapses):
    """Log-variance lost per doubling of t: stays (or grows) when sum 1/n_t (+ sum n_t^-1/2 with bias
    -n^-1/2) diverges, shrinks when it converges. Compare the loss over t in [32, 64] with [2, 4]."""
    early, late, _ = _window_losses(spec, estimator)
    diff = late - 0.6 * early
    z = diff.mean() / (diff.std(ddof=1) / np.sqrt(diff.size))
    assert (z > 4) if collapses else (z < -4)
    assert late.mean() > 0  # every schedule still loses some log-variance
    sched = parse_schedule(spec)
    assert theory.collapse_predicted(sched.kind, sched.p, estimator, 0.5) == collapses


def test_schedule_sums_diverge_or_converge_in_theory():
    """Long horizons by theory alone: the total loss keeps growing for linear, levels off for t^2."""
    lin = theory.expected_log_var(Schedule("linear", 10).sizes(4096), "unbiased")[0]
    sq = theory.expected_log_var(Schedule("power", 10, p=2).sizes(4096), "unbiased")[0]
    assert lin[2048] - lin[4096] > 0.5 * (lin[32] - lin[64]) > 0
    assert 0 < sq[2048] - sq[4096] < 0.03 * (sq[32] - sq[64])  # halves with every doubling


def test_schedule_sizes_and_errors():
    np.testing.assert_array_equal(Schedule("linear", 5).sizes(3), [5, 10, 15])
    np.testing.assert_array_equal(parse_schedule("power:2", 3).sizes(3), [3, 12, 27])
    np.testing.assert_array_equal(parse_schedule(lambda t: 10 + t).sizes(2), [11, 12])
    assert parse_schedule("power:1.5").name == "power:1.5"
    for bad in ("cubic", "power:x", "linear:2"):
        with pytest.raises(MemgeoError):
            parse_schedule(bad)
    with pytest.raises(MemgeoError, match="fewer than"):
        Schedule("constant", 1).sizes(3)
    with pytest.raises(MemgeoError, match="int64"):
        Schedule("power", 10, p=30).sizes(100)


# ---------------------------------------------------------------------------- other loops


def test_accumulate_mean_only_tends_to_pi2_over_6():
    hist = simulate(GaussianFamily(mean_only=True), "accumulate", "constant", 100, 4000, n=100, seed=6)
    scaled = 100 * hist.metrics["mean_sq_dist"]
    expected = 100 * theory.accumulate_mean_sq_dist(hist.sizes)
    np.testing.assert_allclose(expected[1:], np.cumsum(1 / np.arange(1, 101) ** 2))
    assert np.abs(_z(scaled, expected)).max() < 4
    assert 100 * theory.accumulate_mean_sq_dist([100] * 10_000)[-1] == pytest.approx(np.pi**2 / 6, abs=1e-3)


def test_accumulate_keeps_variance_while_replace_loses_it():
    acc = simulate(GaussianFamily(), "accumulate", "constant", 50, 2000, n=50, seed=7).metrics["log_var"]
    rep = simulate(GaussianFamily(), "replace", "constant", 50, 2000, n=50, seed=7).metrics["log_var"]
    assert acc[-1].mean() > -0.15 and rep[-1].mean() < -0.9


def test_fresh_data_recursion_and_optimal_weight():
    w_star = theory.optimal_fresh_weight(1.0)
    assert w_star == pytest.approx((np.sqrt(5) - 1) / 2)  # golden ratio for equal sizes
    for k in (0.25, 1.0, 4.0):
        grid = np.linspace(0.01, 1, 20_000)
        best = grid[np.argmin(theory.fresh_stationary_mse(grid, fresh_n=k * 50, synth_n=50))]
        w = float(theory.optimal_fresh_weight(k))
        assert w**2 + k * w - k == pytest.approx(0, abs=1e-12)
        assert best == pytest.approx(w, abs=1e-3)
    hist = simulate(GaussianFamily(mean_only=True), "fresh", "constant", 30, 4000, n=50, fresh_n=100,
                    fresh_weight="optimal", seed=8)
    assert hist.weights[1] == pytest.approx(theory.optimal_fresh_weight(2.0))
    expected = theory.fresh_mean_sq_dist(hist.sizes, hist.weights, 100)
    assert np.abs(_z(hist.metrics["mean_sq_dist"], expected)).max() < 4
    assert expected[-1] == pytest.approx(theory.fresh_stationary_mse(hist.weights[1], 100, 50), rel=1e-6)


def test_real_share_and_subsample_loops_run_and_stabilise():
    share = simulate(GaussianFamily(), "real-share", "constant", 40, 2000, n=50, real_share=0.5, seed=9)
    sub = simulate(GaussianFamily(mode="data"), "accumulate-subsample", "constant", 40, 500, n=50, seed=9)
    rep = simulate(GaussianFamily(), "replace", "constant", 40, 2000, n=50, seed=9)
    assert share.metrics["log_var"][-1].mean() > -0.2  # anchored by the real half
    assert rep.metrics["log_var"][-1].mean() < sub.metrics["log_var"][-1].mean() < share.metrics["log_var"][-1].mean()
    np.testing.assert_array_equal(share.weights[1:], 0.5)


def test_categorical_gini_simpson_decays_geometrically():
    fam = CategoricalFamily(probs0=np.array([0.4, 0.3, 0.2, 0.1]))
    hist = simulate(fam, "replace", "constant", 50, 4000, n=30, seed=10)
    g0 = 1 - (0.16 + 0.09 + 0.04 + 0.01)
    expected = theory.gini_simpson_replace(hist.sizes, g0)
    np.testing.assert_allclose(expected, g0 * (1 - 1 / 30) ** np.arange(51))
    assert np.abs(_z(hist.metrics["gini_simpson"], expected)).max() < 4
    assert hist.metrics["surviving"][-1].mean() < 4  # categories die out
    sub = simulate(fam, "accumulate-subsample", "constant", 5, 50, n=30, seed=10)
    assert sub.metrics["gini_simpson"].shape == (6, 50)


# ---------------------------------------------------------------------------- data families


def test_kde_scaled_bandwidth_follows_the_data_scale():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 200, 1))
    fam = KernelDensityFamily(bandwidth="scaled")
    h1, h10 = fam.fit([x]).bandwidth, fam.fit([10 * x]).bandwidth
    np.testing.assert_allclose(h10, 10 * h1)  # scikit-learn's "scott" would give the same h for both
    np.testing.assert_allclose(h1, x.std(1)[:, 0] * 200 ** (-1 / 5))
    # a KDE adds h^2 to the variance every generation: it spreads out rather than collapsing
    hist = simulate(KernelDensityFamily(bandwidth="scaled"), "replace", "constant", 10, 20, n=100, seed=0)
    assert hist.metrics["trace_ratio"][-1].mean() > 1.5


def test_empirical_resampling_loses_support_and_mixture_em_runs():
    emp = simulate(EmpiricalFamily(), "replace", "constant", 30, 20, n=50, seed=1)
    assert emp.metrics["recall"][-1].mean() < 0.5 * emp.metrics["recall"][1].mean()
    assert np.isnan(emp.metrics["nll_real"][1:]).all() and np.isfinite(emp.metrics["nll_real"][0]).all()
    mix = simulate(MixtureFamily(components=2), "replace", "constant", 3, 4, n=60, seed=1)
    assert set(mix.metrics) >= {"log_var", "energy", "nll_real", "tail_mass", "precision", "recall"}
    assert np.isfinite(mix.metrics["nll_real"]).all()


# ---------------------------------------------------------------------------- metrics


def test_gaussian_w2_and_kl_closed_forms():
    rng = np.random.default_rng(3)
    m0, c0 = np.zeros((1, 2)), np.eye(2)[None]
    m1, c1 = np.array([[1.0, -2.0]]), np.diag([4.0, 0.25])[None]
    # commuting covariances: W2^2 = |dm|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    assert gaussian_w2(m1, c1, m0, c0)[0] == pytest.approx(5 + 1 + 0.25)
    # KL(p0 || p1) against a Monte Carlo average of log p0 - log p1
    x = rng.standard_normal((1, 400_000, 2))
    mc = (GaussianParams(m0, c0).logpdf(x) - GaussianParams(m1, c1).logpdf(x)).mean()
    assert gaussian_kl(m1, c1, m0, c0)[0] == pytest.approx(mc, abs=0.01)
    # 1-D path equals the general one
    a = gaussian_kl(np.array([[0.3]]), np.array([[[2.0]]]), np.zeros((1, 1)), np.ones((1, 1, 1)))[0]
    assert a == pytest.approx(0.5 * (1 / 2 + 0.09 / 2 - 1 + np.log(2)))
    # non-commuting case: W2 against scipy's matrix square root formula
    from scipy.linalg import sqrtm
    c2 = np.array([[2.0, 0.8], [0.8, 0.5]])
    ref = np.trace(c2 + np.eye(2) - 2 * sqrtm(c2).real)
    assert gaussian_w2(m0, c2[None], m0, c0)[0] == pytest.approx(ref, rel=1e-9)


def test_sample_metrics_distinguish_distributions():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((2, 500, 2)), rng.standard_normal((2, 500, 2))
    near = energy_distance(x, y)
    far = energy_distance(x, y + 2.0)
    assert np.all(np.abs(near) < 0.05) and np.all(far > 1.0)
    p, r = knn_precision_recall(x, y)
    assert np.all(p > 0.9) and np.all(r > 0.9)
    p, r = knn_precision_recall(x, 0.05 * y)  # a collapsed generator: precise but no recall
    assert np.all(p > 0.9) and np.all(r < 0.2)


# ---------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(MemgeoError, match="estimator"):
        GaussianFamily(estimator="ols")
    with pytest.raises(MemgeoError, match="family"):
        make_family("gan")
    with pytest.raises(MemgeoError, match="loop"):
        simulate(GaussianFamily(), "recycle", generations=2, runs=2)
    with pytest.raises(MemgeoError, match="relative bias"):
        simulate(GaussianFamily(estimator="biased", bias_c=2.0, bias_beta=0.5), generations=2, runs=2, n=3)
    with pytest.raises(MemgeoError, match="real share"):
        simulate(GaussianFamily(), "real-share", generations=2, runs=2, real_share=0.0)
    with pytest.raises(MemgeoError, match="fresh weight"):
        simulate(GaussianFamily(), "fresh", generations=2, runs=2, fresh_weight=1.5)
    with pytest.raises(MemgeoError, match="cannot"):
        simulate(MixtureFamily(), "fresh", generations=2, runs=2)
    with pytest.raises(MemgeoError, match="subsample"):
        simulate(GaussianFamily(mode="stats"), "accumulate-subsample", generations=2, runs=2)
    with pytest.raises(MemgeoError, match="fewer than the 4"):
        simulate(GaussianFamily(dim=3), generations=2, runs=2, n=3)
    with pytest.raises(MemgeoError, match="probabilities"):
        CategoricalFamily(probs0=np.array([0.5, 0.6]))
    with pytest.raises(MemgeoError, match="k = "):
        theory.optimal_fresh_weight(0.0)
