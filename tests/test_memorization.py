"""Tests for memgeo.memorization: kNN, de-duplication, copy criteria and detection evaluation.

Every check compares against an independent ground truth: brute-force numpy distances,
hand-computed constructed cases, or scikit-learn's ROC implementation.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from copy_metric_fixtures import brute_knn
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from memgeo.errors import MemgeoError
from memgeo.memorization import (
    COPY_CRITERIA,
    CalibratedCriterion,
    auroc,
    bootstrap_auroc,
    bootstrap_auroc_ci,
    evaluate_detector,
    first_occurrence,
    get_copy_criterion,
    label_copies,
    nearest_neighbors,
    roc_curve,
    tpr_at_closest_fpr,
    tpr_at_fpr,
    typical_spacing,
    unique_rows,
)


# --------------------------------------------------------------------------- neighbours


@pytest.mark.parametrize("chunk_size", [1, 7, 37, 1000])
def test_knn_matches_brute_force_across_chunk_boundaries(chunk_size):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((37, 3, 4, 5)).astype(np.float32)  # 37 is not a multiple of 7
    r = rng.standard_normal((53, 3, 4, 5)).astype(np.float32)
    d, i = nearest_neighbors(q, r, k=5, chunk_size=chunk_size)
    d_ref, i_ref = brute_knn(q, r, 5)
    assert d.shape == (37, 5) and i.shape == (37, 5)
    np.testing.assert_array_equal(i.numpy(), i_ref)
    np.testing.assert_allclose(d.numpy(), d_ref, rtol=1e-6, atol=1e-7)


def test_knn_k_equals_n_and_torch_float64_input():
    rng = np.random.default_rng(1)
    q = torch.from_numpy(rng.standard_normal((9, 6)))
    r = torch.from_numpy(rng.standard_normal((12, 6)))
    d, i = nearest_neighbors(q, r, k=12, chunk_size=4)
    d_ref, i_ref = brute_knn(q.numpy(), r.numpy(), 12)
    np.testing.assert_array_equal(i.numpy(), i_ref)
    np.testing.assert_allclose(d.numpy(), d_ref, rtol=1e-12)
    assert torch.all(d[:, 1:] >= d[:, :-1])


def test_normalized_distance_scaling_is_rms_pixel_difference():
    # Constant offset c in every pixel: distance c whatever the dimension.
    for dim in (1, 16, 784):
        d, _ = nearest_neighbors(np.zeros((1, dim)), np.full((1, dim), 0.5), k=1)
        assert d.item() == pytest.approx(0.5, rel=1e-12)
    # One pixel differing by 2 out of 4: sqrt(4 / 4) = 1, not the plain l2 of 2.
    d, _ = nearest_neighbors(np.zeros((1, 2, 2)), np.array([[[2.0, 0.0], [0.0, 0.0]]]), k=1)
    assert d.item() == pytest.approx(1.0, rel=1e-12)


def test_exact_copy_has_distance_exactly_zero_despite_large_values():
    # Large magnitudes make the |a|^2 + |b|^2 - 2ab expansion lose all precision in float32.
    rng = np.random.default_rng(2)
    r = (rng.standard_normal((30, 100)) * 1e3 + 1e4).astype(np.float32)
    q = r[[4, 17]]
    d, i = nearest_neighbors(q, r, k=2)
    assert d[:, 0].tolist() == [0.0, 0.0]
    assert i[:, 0].tolist() == [4, 17]
    assert torch.all(d[:, 1] > 0)


def test_knn_ties_are_ordered_by_index():
    r = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    d, i = nearest_neighbors(np.array([[1.0, 0.0]]), r, k=4)
    assert i[0].tolist() == [0, 2, 3, 1]
    assert d[0, :3].tolist() == [0.0, 0.0, 0.0]


def test_knn_validation_errors():
    r = np.zeros((5, 4))
    with pytest.raises(MemgeoError, match="NaN"):
        nearest_neighbors(np.array([[0.0, np.nan, 0.0, 0.0]]), r)
    with pytest.raises(MemgeoError, match="NaN"):
        nearest_neighbors(np.zeros((1, 4)), np.where(np.eye(5, 4) > 0, np.inf, 0.0))
    with pytest.raises(MemgeoError, match="dimension 3"):
        nearest_neighbors(np.zeros((2, 3)), r)
    with pytest.raises(MemgeoError, match="k=6"):
        nearest_neighbors(np.zeros((2, 4)), r, k=6)
    with pytest.raises(MemgeoError, match="k=0"):
        nearest_neighbors(np.zeros((2, 4)), r, k=0)
    with pytest.raises(MemgeoError, match="chunk_size"):
        nearest_neighbors(np.zeros((2, 4)), r, chunk_size=0)


def test_unique_rows_first_appearance_order_and_inverse():
    x = np.array([[3.0, 1.0], [0.0, 2.0], [3.0, 1.0], [1.0, 1.0], [0.0, 2.0], [-0.0, 2.0]])
    uniq, inv = unique_rows(x)
    np.testing.assert_array_equal(uniq, [[3.0, 1.0], [0.0, 2.0], [1.0, 1.0]])
    np.testing.assert_array_equal(inv, [0, 1, 0, 2, 1, 1])
    np.testing.assert_array_equal(uniq[inv], x)
    np.testing.assert_array_equal(first_occurrence(inv), [0, 1, 3])
    # Images are flattened; torch input works the same way.
    imgs = torch.tensor(x).reshape(6, 1, 2)
    uniq_t, inv_t = unique_rows(imgs)
    np.testing.assert_array_equal(uniq_t, uniq)
    np.testing.assert_array_equal(inv_t, inv)


# --------------------------------------------------------------------------- copy criteria


@pytest.fixture()
def train_with_duplicates():
    rng = np.random.default_rng(3)
    base = rng.uniform(-1, 1, size=(20, 1, 8, 8))
    # Image 3 appears 4 times in total (indices 3, 20, 21, 22).
    return np.concatenate([base, base[[3, 3, 3]]]).astype(np.float32)


def test_ratio_exact_copy_is_copy_and_midpoint_is_not(train_with_duplicates):
    train = train_with_duplicates
    gen = np.stack([train[5], 0.5 * (train[0] + train[1]), train[3]])
    labels = label_copies(gen, train)  # default criterion: ratio, 1/3
    assert labels.criterion == "ratio" and labels.threshold == pytest.approx(1 / 3)
    assert labels.is_copy.tolist() == [True, False, True]
    assert labels.d1[0] == 0.0 and labels.statistic[0] == 0.0
    # The midpoint is equidistant from images 0 and 1, which are its two nearest: ratio exactly 1.
    assert labels.nn_index[1] in (0, 1)
    assert labels.statistic[1] == pytest.approx(1.0, rel=1e-6)
    assert labels.nn_index[0] == 5 and labels.nn_index[2] == 3


def test_ratio_duplicates_do_not_make_d2_zero(train_with_duplicates):
    train = train_with_duplicates
    labels = label_copies(train[[3, 20]], train)
    distinct = np.delete(train, [20, 21, 22], axis=0)
    d_ref, _ = brute_knn(train[[3]], distinct, 2)
    assert labels.n_train == 23 and labels.n_train_unique == 20
    assert np.all(labels.d2 > 0)
    np.testing.assert_allclose(labels.d2, d_ref[0, 1], rtol=1e-6)
    assert labels.is_copy.all()
    # nn_index points into the original array, at the first occurrence of the duplicated image.
    assert labels.nn_index.tolist() == [3, 3]
    # Without de-duplication the second neighbour would be the duplicate at distance 0.
    d_raw, _ = nearest_neighbors(train[[3]], train, k=2)
    assert d_raw[0, 1].item() == 0.0


def test_ratio_near_copy_and_threshold_override(train_with_duplicates):
    train = train_with_duplicates
    rng = np.random.default_rng(4)
    near = train[7] + 0.05 * rng.standard_normal(train[7].shape).astype(np.float32)
    d_ref, _ = brute_knn(near[None], np.delete(train, [20, 21, 22], axis=0), 2)
    ratio = d_ref[0, 0] / d_ref[0, 1]
    assert ratio < 1 / 3
    labels = label_copies(near[None], train)
    assert labels.statistic[0] == pytest.approx(ratio, rel=1e-6)
    assert labels.is_copy[0]
    assert not label_copies(near[None], train, threshold=ratio * 0.99).is_copy[0]
    assert label_copies(near[None], train, threshold=ratio * 1.01).is_copy[0]


def test_calibrated_matches_formula_on_a_line():
    train = np.arange(60, dtype=np.float64)[:, None]  # 1-D points 0, 1, ..., 59
    # 0.1: d1 = 0.1 against a 50-neighbour mean of ~25 -> copy. 70: d1 = 11, mean 35.5 -> 0.62.
    gen = np.array([[0.1], [70.0]])
    labels = label_copies(gen, train, criterion="calibrated")
    d_all = np.sort(np.abs(train[:, 0][None, :] - gen), axis=1)
    expected = d_all[:, 0] / (0.5 * d_all[:, :50].mean(axis=1))
    np.testing.assert_allclose(labels.statistic, expected, rtol=1e-12)
    assert labels.threshold == pytest.approx(1 / 3)
    assert labels.is_copy.tolist() == [True, False]
    assert labels.summary()["n_mean"] == 50


def test_calibrated_is_looser_than_ratio_with_a_near_duplicate_cluster():
    # A near-duplicate pair (0 and 0.01) makes d2 tiny and hides the copy from the ratio test;
    # the 50-neighbour mean barely notices it.
    train = np.r_[0.0, 0.01, np.arange(10.0, 58.0)][:, None]
    gen = np.array([[0.003]])
    ratio = label_copies(gen, train, "ratio")
    calibrated = label_copies(gen, train, "calibrated")
    assert ratio.statistic[0] == pytest.approx(0.003 / 0.007, rel=1e-9)
    assert not ratio.is_copy[0]
    assert calibrated.is_copy[0]
    # Fewer than 50 distinct images: the mean runs over all of them.
    small = label_copies(gen, train[:10], "calibrated")
    d = np.sort(np.abs(train[:10, 0] - 0.003))
    assert small.statistic[0] == pytest.approx(d[0] / (0.5 * d.mean()), rel=1e-9)


def test_absolute_uses_leave_one_out_spacing_of_distinct_images():
    # Spacing 1 on a line; the duplicated 4.0 must not make the spacing 0.
    train = np.r_[np.arange(10.0), 4.0, 4.0][:, None]
    assert typical_spacing(unique_rows(train)[0]) == pytest.approx(1.0)
    gen = np.array([[0.2], [3.3], [9.0], [12.0]])
    labels = label_copies(gen, train, criterion="absolute")
    assert labels.summary()["typical_spacing"] == pytest.approx(1.0)
    assert labels.threshold == 0.25
    np.testing.assert_allclose(labels.d1, [0.2, 0.3, 0.0, 3.0], atol=1e-12)
    assert labels.is_copy.tolist() == [True, False, True, False]
    # Uneven spacing: LOO distances 1, 1, 3, 3 -> median 2.
    assert typical_spacing(np.array([[0.0], [1.0], [4.0], [7.0]])) == pytest.approx(2.0)


@pytest.mark.parametrize("name", sorted(COPY_CRITERIA))
def test_criteria_are_scale_invariant(name, train_with_duplicates):
    train = train_with_duplicates
    rng = np.random.default_rng(5)
    gen = np.concatenate([train[[1, 2]] + 0.02, rng.uniform(-1, 1, size=(6, 1, 8, 8))]).astype(np.float32)
    a = label_copies(gen, train, name)
    b = label_copies(gen * 7.0, train * 7.0, name)
    np.testing.assert_allclose(a.statistic, b.statistic, rtol=1e-5)
    np.testing.assert_array_equal(a.is_copy, b.is_copy)
    np.testing.assert_allclose(b.d1, 7.0 * a.d1, rtol=1e-5)


def test_copy_labels_rows_and_summary(train_with_duplicates):
    train = train_with_duplicates
    gen = np.stack([train[0], train[1] + 0.5, train[21]])
    labels = label_copies(torch.from_numpy(gen), torch.from_numpy(train), "ratio", threshold=0.2)
    rows = labels.to_rows()
    assert len(rows) == 3
    assert set(rows[0]) == {"sample", "d1", "d2", "nn_index", "scale", "statistic", "is_copy"}
    assert rows[2]["nn_index"] == 3 and rows[2]["is_copy"] is True
    s = labels.summary()
    assert s["criterion"] == "ratio" and s["threshold"] == 0.2
    assert s["n_samples"] == 3 and s["n_copies"] == int(labels.is_copy.sum())
    assert s["copy_rate"] == pytest.approx(s["n_copies"] / 3)
    assert s["n_train"] == 23 and s["n_train_unique"] == 20


def test_copy_label_errors():
    train = np.random.default_rng(6).standard_normal((10, 4))
    with pytest.raises(MemgeoError, match="unknown copy criterion 'sscd'"):
        label_copies(train[:2], train, "sscd")
    with pytest.raises(MemgeoError, match="threshold=0.0 must be a finite number > 0"):
        label_copies(train[:2], train, threshold=0.0)
    with pytest.raises(MemgeoError, match="1 distinct image"):
        label_copies(train[:2], np.repeat(train[:1], 5, axis=0))
    with pytest.raises(MemgeoError, match="dimension"):
        label_copies(np.zeros((2, 5)), train)
    with pytest.raises(MemgeoError, match="no samples"):
        label_copies(np.zeros((0, 4)), train)
    with pytest.raises(MemgeoError, match="threshold given together"):
        label_copies(train[:2], train, CalibratedCriterion(0.5), threshold=0.3)
    assert get_copy_criterion("absolute").threshold == 0.25


# --------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_roc_curve_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    labels = rng.integers(0, 2, n)
    scores = rng.integers(0, 12, n) + 0.8 * labels  # heavy ties, some signal
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-14)
    fpr, tpr, thr = roc_curve(scores, labels)
    fpr_sk, tpr_sk, thr_sk = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_sk)
    np.testing.assert_allclose(tpr, tpr_sk)
    np.testing.assert_array_equal(thr[1:], thr_sk[1:])
    assert thr[0] == np.inf
    assert len(thr) == len(np.unique(scores)) + 1
    # The trapezoid area of the ROC curve is the same number (ties are diagonal steps).
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(scores, labels), abs=1e-12)


def test_auroc_sign_is_fixed_never_flipped():
    labels = np.r_[np.ones(10), np.zeros(10)].astype(int)
    scores = np.r_[np.arange(10, 20), np.arange(10)].astype(float)
    assert auroc(scores, labels) == 1.0
    assert auroc(-scores, labels) == 0.0
    assert auroc(np.ones(20), labels) == 0.5
    assert auroc(torch.tensor(scores), torch.tensor(labels).bool()) == 1.0


def test_bootstrap_is_stratified_and_equals_per_resample_auroc():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 6, 40).astype(float)
    labels = np.r_[np.ones(12), np.zeros(28)].astype(int)
    boots = bootstrap_auroc(scores, labels, n_boot=50, seed=3)
    # Same draws, done one resample at a time with sklearn.
    gen = np.random.default_rng(3)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pi = gen.integers(0, 12, size=(50, 12))
    ni = gen.integers(0, 28, size=(50, 28))
    expected = [roc_auc_score(np.r_[np.ones(12), np.zeros(28)], np.r_[pos[pi[b]], neg[ni[b]]]) for b in range(50)]
    np.testing.assert_allclose(boots, expected, atol=1e-14)
    # A single positive is in every resample, so the bootstrap is always defined.
    one = bootstrap_auroc(scores, np.r_[1, np.zeros(39)].astype(int), n_boot=20, seed=0)
    assert np.all(np.isfinite(one))


def test_bootstrap_ci_contains_estimate_narrows_and_is_reproducible():
    rng = np.random.default_rng(8)

    def data(n):
        y = np.r_[np.ones(n // 2), np.zeros(n - n // 2)].astype(int)
        return rng.normal(loc=y * 1.0), y

    s_small, y_small = data(60)
    s_big, y_big = data(2000)
    lo_s, hi_s = bootstrap_auroc_ci(s_small, y_small, seed=1)
    lo_b, hi_b = bootstrap_auroc_ci(s_big, y_big, seed=1)
    assert lo_s <= auroc(s_small, y_small) <= hi_s
    assert lo_b <= auroc(s_big, y_big) <= hi_b
    assert (hi_b - lo_b) < 0.5 * (hi_s - lo_s)
    assert bootstrap_auroc_ci(s_small, y_small, seed=1) == (lo_s, hi_s)
    assert bootstrap_auroc_ci(s_small, y_small, seed=2) != (lo_s, hi_s)
    assert bootstrap_auroc_ci(s_small, y_small, level=0.5, seed=1)[1] - bootstrap_auroc_ci(
        s_small, y_small, level=0.5, seed=1)[0] < hi_s - lo_s
    # Perfect separation: every resample is perfect too.
    assert bootstrap_auroc_ci(np.r_[np.ones(5), np.zeros(5)], np.r_[np.ones(5), np.zeros(5)]) == (1.0, 1.0)


def test_bootstrap_is_fast_for_400_samples():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 400)
    s = rng.normal(size=400) + y
    bootstrap_auroc_ci(s, y, n_boot=50)  # warm-up
    t0 = time.perf_counter()
    bootstrap_auroc_ci(s, y, n_boot=1000)
    assert time.perf_counter() - t0 < 0.2


def test_tpr_at_fpr_hand_computed():
    # Sorted by score: P .95, N .90, P .80, P .70, N .65, then 8 negatives below every positive
    # ... and the last positive at .10. 4 positives, 10 negatives.
    pos = [0.95, 0.80, 0.70, 0.10]
    neg = [0.90, 0.65, 0.60, 0.55, 0.50, 0.45, 0.40, 0.35, 0.30, 0.20]
    s = np.r_[pos, neg]
    y = np.r_[np.ones(4), np.zeros(10)].astype(int)
    assert tpr_at_fpr(s, y, max_fpr=0.0) == 0.25  # threshold .95
    assert tpr_at_fpr(s, y, max_fpr=0.05) == 0.25  # one FP would already be 10%
    assert tpr_at_fpr(s, y, max_fpr=0.1) == 0.75  # threshold .70: TP 3, FP 1
    assert tpr_at_fpr(s, y, max_fpr=0.19) == 0.75
    assert tpr_at_fpr(s, y, max_fpr=1.0) == 1.0
    # Closest-FPR variant: 0.05 is equally far from FPR 0 and 0.1 -> lower FPR is used.
    assert tpr_at_closest_fpr(s, y, target_fpr=0.05) == (0.25, 0.0)
    assert tpr_at_closest_fpr(s, y, target_fpr=0.08) == (0.75, 0.1)
    assert tpr_at_closest_fpr(s, y, target_fpr=0.7) == (0.75, 0.7)
    # A tie between the third positive and a negative cannot be split by a threshold.
    s_tie = s.copy()
    s_tie[6] = 0.70  # a negative now ties with the positive at .70
    assert tpr_at_fpr(s_tie, y, max_fpr=0.1) == 0.5


def test_tpr_at_one_percent_fpr_default():
    pos = np.linspace(5, 6, 10)
    y = np.r_[np.ones(10), np.zeros(200)].astype(int)
    s = np.r_[pos, np.linspace(0, 1, 198), 5.55, 7.0]
    # FPR <= 1% allows 2 of 200 negatives above the threshold: threshold 5.0 flags every positive.
    assert tpr_at_fpr(s, y) == 1.0
    # A third high negative (5.72) forces the threshold above 5.55.
    s[-3] = 5.72
    assert tpr_at_fpr(s, y) == pytest.approx(np.mean(pos > 5.55)) == 0.5


def test_evaluate_detector_result():
    rng = np.random.default_rng(10)
    y = np.r_[np.ones(60), np.zeros(140)].astype(int)
    s = rng.normal(size=200) + 1.5 * y
    res = evaluate_detector(s, y, "norm_d_eps", n_boot=200, seed=4)
    assert res.auroc == pytest.approx(roc_auc_score(y, s))
    assert res.ci_low <= res.auroc <= res.ci_high
    assert res.tpr_at_1pct_fpr == tpr_at_fpr(s, y, 0.01)
    assert (res.tpr_at_closest_1pct_fpr, res.closest_fpr_used) == tpr_at_closest_fpr(s, y, 0.01)
    assert (res.n_pos, res.n_neg, res.n_boot, res.seed) == (60, 140, 200, 4)
    d = res.to_dict()
    assert d["name"] == "norm_d_eps" and d["auroc"] == res.auroc and d["ci_high"] == res.ci_high
    # Reversed score: evaluated as is, not flipped.
    assert evaluate_detector(-s, y, "neg", n_boot=50).auroc == pytest.approx(1 - res.auroc)


def test_evaluation_errors_name_the_problem():
    s = np.arange(6.0)
    with pytest.raises(MemgeoError, match="labels contain only negatives: AUROC is undefined"):
        auroc(s, np.zeros(6))
    with pytest.raises(MemgeoError, match="labels contain only positives"):
        evaluate_detector(s, np.ones(6, dtype=bool), "x")
    with pytest.raises(MemgeoError, match="scores contain 1 NaN/inf"):
        auroc(np.r_[s[:5], np.nan], [0, 1, 0, 1, 0, 1])
    with pytest.raises(MemgeoError, match="length mismatch: 6 scores but 5 labels"):
        roc_curve(s, [0, 1, 0, 1, 0])
    with pytest.raises(MemgeoError, match="labels must be 0/1"):
        auroc(s, [-1, 1, -1, 1, -1, 1])
    with pytest.raises(MemgeoError, match="1-D"):
        auroc(s.reshape(3, 2), [0, 1, 0, 1, 0, 1])
    with pytest.raises(MemgeoError, match="n_boot"):
        bootstrap_auroc_ci(s, [0, 1, 0, 1, 0, 1], n_boot=0)
    with pytest.raises(MemgeoError, match="level"):
        bootstrap_auroc_ci(s, [0, 1, 0, 1, 0, 1], level=1.5)
    with pytest.raises(MemgeoError, match="max_fpr"):
        tpr_at_fpr(s, [0, 1, 0, 1, 0, 1], max_fpr=-0.1)
