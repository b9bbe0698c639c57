"""K-fold likelihood memorization score (van den Burg & Williams 2021) against exact KDE references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import norm, spearmanr

from memgeo.errors import MemgeoError
from memgeo.memorization.kfold import (
    MemorizationScores,
    kfold_assignments,
    kfold_memorization_score,
    scores_from_log_likelihoods,
)


def kde(x: np.ndarray, h: float, calls: list[np.ndarray] | None = None):
    """A 1-D Gaussian KDE with fixed bandwidth: fit stores the training points, log_likelihood is exact."""
    def fit(idx: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(idx.copy())
        return x[idx]

    def log_likelihood(points: np.ndarray, idx: np.ndarray) -> np.ndarray:
        d = x[idx][:, None] - points[None, :]
        return logsumexp(-0.5 * (d / h) ** 2, axis=1) - np.log(len(points) * h * np.sqrt(2 * np.pi))

    return fit, log_likelihood


def direct_scores(x: np.ndarray, h: float, folds: np.ndarray) -> np.ndarray:
    """Independent reference: densities (not logs) summed in loops, averaged, then logged."""
    n = len(x)
    k = int(folds.max()) + 1
    dens_in = [[] for _ in range(n)]
    dens_out = [[] for _ in range(n)]
    for fold_row in folds:
        for j in range(k):
            train = x[fold_row != j]
            for i in range(n):
                p = float(np.mean(norm.pdf(x[i], loc=train, scale=h)))
                (dens_out if fold_row[i] == j else dens_in)[i].append(p)
    return np.array([np.log(np.mean(a)) - np.log(np.mean(b)) for a, b in zip(dens_in, dens_out)])


def test_folds_partition_and_fit_gets_complement() -> None:
    n, k, repeats = 23, 5, 3
    x = np.random.default_rng(0).standard_normal(n)
    calls: list[np.ndarray] = []
    fit, ll = kde(x, 0.5, calls)
    res = kfold_memorization_score(n, fit, ll, k=k, repeats=repeats, seed=7)
    assert isinstance(res, MemorizationScores)
    assert res.folds.shape == (repeats, n) and len(calls) == k * repeats
    for r in range(repeats):
        sizes = np.bincount(res.folds[r], minlength=k)
        assert sizes.sum() == n and sizes.max() - sizes.min() <= 1  # balanced partition
        for j in range(k):
            expected = np.flatnonzero(res.folds[r] != j)
            np.testing.assert_array_equal(calls[r * k + j], expected)
            np.testing.assert_array_equal(res.trained_on[r * k + j], res.folds[r] != j)
    np.testing.assert_array_equal(res.n_in, np.full(n, repeats * (k - 1)))
    np.testing.assert_array_equal(res.n_out, np.full(n, repeats))
    assert res.settings() == {"n": n, "k": k, "repeats": repeats, "seed": 7, "n_models": k * repeats}
    np.testing.assert_array_equal(kfold_assignments(n, k, repeats, 7), res.folds)  # seeded
    assert not np.array_equal(kfold_assignments(n, k, repeats, 8), res.folds)
    assert not np.array_equal(res.folds[0], res.folds[1])  # repeats are independent partitions


def test_equals_direct_density_average_with_same_folds() -> None:
    """Log of the *mean density* (log-mean-exp), computed independently with the function's folds."""
    rng = np.random.default_rng(1)
    h = 0.5
    x = np.concatenate([rng.uniform(-1.0, 1.0, 19), [8.0]])  # cluster + outlier (kernel 1e-56: no underflow)
    fit, ll = kde(x, h)
    res = kfold_memorization_score(len(x), fit, ll, k=4, repeats=3, seed=3)
    np.testing.assert_allclose(res.scores, direct_scores(x, h, res.folds), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.scores, res.log_p_in - res.log_p_out)
    # the mean of log-likelihoods (not the paper's estimator) gives a different number
    mean_in = np.array([res.log_likelihoods[res.trained_on[:, i], i].mean() for i in range(len(x))])
    assert not np.allclose(mean_in, res.log_p_in)
    assert np.all(mean_in <= res.log_p_in + 1e-12)  # Jensen


def test_duplicated_cluster_closed_form() -> None:
    """c copies at 0 and one outlier at D: every term has a closed form.

    A model trained on m points including the outlier gives the outlier the density
    (phi(0) + (m - 1) phi(D)) / m in-fold and phi(D) out-of-fold (only cluster points), so
    M_outlier = log((exp(D^2 / 2h^2) + m - 1) / m) for any folds when k divides n. A cluster point
    has density phi(0) under a model without the outlier and ((m - 1) phi(0) + phi(D)) / m under
    one with it, whether or not it was trained on, so |M| <= log(m / (m - 1)).
    """
    c, D, h, k = 39, 10.0, 1.0, 4
    x = np.concatenate([np.zeros(c), [D]])
    n, m = c + 1, c + 1 - (c + 1) // k
    fit, ll = kde(x, h)
    res = kfold_memorization_score(n, fit, ll, k=k, repeats=3, seed=11)
    expected_outlier = np.log((np.exp(D ** 2 / (2 * h ** 2)) + m - 1) / m)
    np.testing.assert_allclose(res.scores[-1], expected_outlier, rtol=1e-12)
    assert res.scores[-1] > 45.0
    # cluster points: closed form per model, averaged as densities over the same folds
    phi0, phiD = norm.pdf(0.0, scale=h), norm.pdf(D, scale=h)
    with_outlier = res.trained_on[:, -1]
    p_model = np.where(with_outlier, ((m - 1) * phi0 + phiD) / m, phi0)  # (n_models,)
    for i in range(c):
        seen = res.trained_on[:, i]
        expected = np.log(p_model[seen].mean()) - np.log(p_model[~seen].mean())
        np.testing.assert_allclose(res.scores[i], expected, rtol=1e-10, atol=1e-12)
    assert np.abs(res.scores[:c]).max() <= np.log(m / (m - 1)) + 1e-12
    assert np.abs(res.scores[:c]).max() < 1e-3 * res.scores[-1]


def test_spread_cluster_and_outlier_bounds() -> None:
    """Cluster in [-1, 1], outlier at 12: rigorous closed-form bounds on both scores.

    Outlier (nearest/farthest cluster point at D_min/D_max, training sizes m_min..m_max):
        D_min^2/2h^2 - log m_max <= M <= D_max^2/2h^2 + log(1/m_min + exp(-D_min^2/2h^2)).
    Central cluster point (all other cluster points within R): every model's density lies in
    [(m - 1)/m phi(R), phi(0)], so |M| <= R^2/2h^2 + log(m_min / (m_min - 1)).
    """
    h = 1.0
    cluster = np.linspace(-1.0, 1.0, 41)  # contains 0 (index 20)
    x = np.concatenate([cluster, [12.0]])
    n = len(x)
    fit, ll = kde(x, h)
    for k, repeats in [(2, 1), (10, 3)]:
        res = kfold_memorization_score(n, fit, ll, k=k, repeats=repeats, seed=5)
        m_min, m_max = n - -(-n // k), n - n // k
        d_min, d_max, big_r = 11.0, 13.0, 1.0
        lower = d_min ** 2 / (2 * h ** 2) - np.log(m_max)
        upper = d_max ** 2 / (2 * h ** 2) + np.log(1 / m_min + np.exp(-d_min ** 2 / (2 * h ** 2)))
        assert lower <= res.scores[-1] <= upper, (k, res.scores[-1], lower, upper)
        centre_bound = big_r ** 2 / (2 * h ** 2) + np.log(m_min / (m_min - 1))
        assert abs(res.scores[20]) <= centre_bound
        assert abs(res.scores[20]) < 0.01 * res.scores[-1]
        assert int(np.argmax(res.scores)) == n - 1


def exact_memorization(x: np.ndarray, h: float) -> np.ndarray:
    """The definition itself for a deterministic KDE: log p(x_i | D) - log p(x_i | D minus i)."""
    n = len(x)
    log_phi = norm.logpdf(x[:, None] - x[None, :], scale=h)  # (n, n), log-domain: isolated points do not underflow
    log_others = logsumexp(np.where(np.eye(n, dtype=bool), -np.inf, log_phi), axis=1)
    log_all = np.logaddexp(np.diag(log_phi), log_others)
    return (log_all - np.log(n)) - (log_others - np.log(n - 1))


def test_cheap_setting_ranks_like_full_setting() -> None:
    """k=2, repeats=1 vs k=10, repeats=3 on points of graded rarity (gaps growing by 12% a point).

    Measured: Spearman(cheap, full) >= 0.83 over 20 fold seeds (mean 0.90). On a homogeneous sample
    (60 points of N(0, 1), h = 0.05) the same comparison gives only ~0.5: there the scores differ by
    less than the fold noise of a single 2-fold split.
    """
    h, n = 0.1, 40
    x = np.concatenate([[0.0], np.cumsum(0.02 * 1.12 ** np.arange(n - 1))])
    x = x[np.random.default_rng(0).permutation(n)]  # index order carries no information
    fit, ll = kde(x, h)
    truth = exact_memorization(x, h)
    rhos = []
    for s in range(5):
        cheap = kfold_memorization_score(n, fit, ll, k=2, repeats=1, seed=100 + s).scores
        full = kfold_memorization_score(n, fit, ll, k=10, repeats=3, seed=200 + s).scores
        rho = spearmanr(cheap, full)[0]
        rhos.append(rho)
        assert rho > 0.8, (s, rho)
        assert spearmanr(full, truth)[0] > 0.9
        assert spearmanr(cheap, truth)[0] > 0.8
    assert np.mean(rhos) > 0.85


def test_leave_one_out_case_matches_definition_ordering() -> None:
    """k = n: in-fold models see n - 1 points; the score then ranks exactly like the definition."""
    h = 0.3
    x = np.random.default_rng(4).lognormal(0.0, 1.0, 15)
    fit, ll = kde(x, h)
    res = kfold_memorization_score(len(x), fit, ll, k=len(x), repeats=1, seed=0)
    np.testing.assert_allclose(res.scores, direct_scores(x, h, res.folds), rtol=1e-9, atol=1e-9)
    assert spearmanr(res.scores, exact_memorization(x, h))[0] > 0.95


@pytest.mark.parametrize("kwargs", [dict(k=1), dict(k=11), dict(repeats=0), dict(seed=-1), dict(n_jobs=2),
                                    dict(k=2.5), dict(repeats=True)])
def test_bad_settings_refused(kwargs: dict) -> None:
    x = np.arange(10.0)
    fit, ll = kde(x, 1.0)
    with pytest.raises(MemgeoError):
        kfold_memorization_score(10, fit, ll, **{"k": 2, "repeats": 1, **kwargs})


def test_bad_log_likelihood_refused() -> None:
    fit = lambda idx: idx  # noqa: E731
    with pytest.raises(MemgeoError, match="shape"):
        kfold_memorization_score(6, fit, lambda model, idx: np.zeros(3), k=2, repeats=1)
    with pytest.raises(MemgeoError, match="NaN"):
        kfold_memorization_score(6, fit, lambda model, idx: np.full(len(idx), np.nan), k=2, repeats=1)
    with pytest.raises(MemgeoError):
        kfold_memorization_score(1, fit, lambda model, idx: np.zeros(len(idx)))
    # -inf (density 0) out-of-fold is allowed: the score is then +inf
    res = kfold_memorization_score(
        4, fit, lambda model, idx: np.where(np.isin(idx, model), 0.0, -np.inf), k=2, repeats=1)
    assert np.all(np.isposinf(res.scores))


def test_scores_from_table_needs_in_and_out() -> None:
    ll = np.zeros((2, 3))
    seen = np.array([[True, True, False], [True, False, True]])  # point 0 never held out
    with pytest.raises(MemgeoError, match="point 0"):
        scores_from_log_likelihoods(ll, seen)
    with pytest.raises(MemgeoError):
        scores_from_log_likelihoods(ll, seen.astype(int))
    ll = np.log(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    seen = np.array([[True, False], [True, True], [False, True]])
    scores, lin, lout, n_in, n_out = scores_from_log_likelihoods(ll, seen)
    np.testing.assert_allclose(lin, np.log([2.0, 5.0]))
    np.testing.assert_allclose(lout, np.log([5.0, 2.0]))
    np.testing.assert_allclose(scores, np.log([0.4, 2.5]))
    np.testing.assert_array_equal(n_in, [2, 2])
    np.testing.assert_array_equal(n_out, [1, 1])
