"""Detection evaluation: ROC, AUROC with a stratified bootstrap CI, and TPR at low FPR.

Sign convention, fixed for every function here: a **higher score means "predicted memorized"**
(label 1, positive). Nothing here ever flips labels or scores after looking at them, so an AUROC
below 0.5 is reported as such: it means the score points the wrong way. A score whose *small*
values indicate memorization (e.g. a local intrinsic dimension) must be negated by the caller,
before evaluation, as part of the score's definition.

A threshold ``t`` predicts positive for every sample with ``score >= t``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from memgeo.errors import MemgeoError, check_scalar

# Bound on the (resamples x distinct values) integer blocks in the bootstrap (~32 MiB of int64).
_BOOT_BLOCK = 1 << 22


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch here
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a detector's scores and 0/1 labels.

    Parameters
    ----------
    scores : array-like, shape (n,)
        Real, finite; higher means "predicted memorized".
    labels : array-like, shape (n,)
        Booleans or 0/1 values; 1 (True) means memorized (positive).

    Returns
    -------
    scores : numpy.ndarray, shape (n,), float64
    labels : numpy.ndarray, shape (n,), bool

    Raises
    ------
    MemgeoError
        Wrong shapes, length mismatch, non-finite scores, labels other than 0/1, or a single
        class present (AUROC is then undefined).
    """
    s = _to_numpy(scores)
    y = _to_numpy(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise MemgeoError(
            f"scores have shape {s.shape} and labels {y.shape} but both must be 1-D",
            "pass one score and one label per sample",
        )
    if s.shape[0] != y.shape[0]:
        raise MemgeoError(
            f"length mismatch: {s.shape[0]} scores but {y.shape[0]} labels",
            "pass one score per labelled sample, in the same order",
        )
    if s.shape[0] == 0:
        raise MemgeoError("scores and labels are empty", "pass at least one positive and one negative sample")
    if s.dtype == np.bool_ or not np.issubdtype(s.dtype, np.number) or np.iscomplexobj(s):
        raise MemgeoError(f"scores have non-numeric dtype {s.dtype}", "pass real-valued scores")
    s = s.astype(np.float64)
    bad = ~np.isfinite(s)
    if bad.any():
        raise MemgeoError(
            f"scores contain {int(bad.sum())} NaN/inf value(s) (first at index {int(np.argmax(bad))})",
            "drop or fix those samples before evaluating",
        )
    if y.dtype != np.bool_:
        if not np.issubdtype(y.dtype, np.number) or np.iscomplexobj(y):
            raise MemgeoError(f"labels have dtype {y.dtype}", "pass booleans or 0/1 (1 = memorized)")
        ok = (y == 0) | (y == 1)
        if not ok.all():
            bad_vals = np.unique(y[~ok])[:5].tolist()
            raise MemgeoError(
                f"labels must be 0/1 but contain {bad_vals}",
                "pass booleans or 0/1 (1 = memorized); the sign is never inferred",
            )
        y = y == 1
    if not y.any():
        raise MemgeoError("labels contain only negatives: AUROC is undefined", "include memorized (label 1) samples")
    if y.all():
        raise MemgeoError("labels contain only positives: AUROC is undefined", "include non-memorized (label 0) samples")
    return s, y.astype(bool)


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve over all distinct score thresholds.

    Parameters
    ----------
    scores : array-like, shape (n,)
        Higher means "predicted memorized".
    labels : array-like, shape (n,)
        0/1 or bool, 1 = memorized.

    Returns
    -------
    fpr, tpr : numpy.ndarray, shape (T + 1,)
        Rates of ``score >= thresholds[i]``; non-decreasing, from (0, 0) to (1, 1).
    thresholds : numpy.ndarray, shape (T + 1,)
        ``inf`` followed by the T distinct scores in decreasing order. Tied scores form a single
        point (one diagonal step), never several points in an arbitrary order.
    """
    s, y = check_scores_labels(scores, labels)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # Last position of each run of equal scores: all tied samples switch at the same threshold.
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    n_pos, n_neg = int(tp[-1]), int(fp[-1])
    tpr = np.r_[0.0, tp[last] / n_pos]
    fpr = np.r_[0.0, fp[last] / n_neg]
    return fpr, tpr, np.r_[np.inf, s_sorted[last]]


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve, as the Mann-Whitney statistic.

    ``AUROC = P(score_pos > score_neg) + 0.5 * P(score_pos == score_neg)`` over all
    positive/negative pairs; equals ``sklearn.metrics.roc_auc_score``. 1.0 means every memorized
    sample scores above every other, 0.0 the reverse (not flipped).

    Parameters
    ----------
    scores : array-like, shape (n,)
    labels : array-like, shape (n,)
        0/1 or bool, 1 = memorized; both classes must be present.

    Returns
    -------
    float
    """
    s, y = check_scores_labels(scores, labels)
    pos, neg = s[y], np.sort(s[~y])
    below = np.searchsorted(neg, pos, side="left")
    below_or_tied = np.searchsorted(neg, pos, side="right")
    # Twice the Mann-Whitney U in integers, so ties add exactly 1/2 with no rounding until the end.
    twice_u = int(np.sum(below + below_or_tied, dtype=np.int64))
    return twice_u / (2.0 * pos.size * neg.size)


def bootstrap_auroc(
    scores: Any, labels: Any, n_boot: int = 1000, seed: int | np.random.Generator | None = 0
) -> np.ndarray:
    """AUROC of ``n_boot`` stratified bootstrap resamples.

    Positives and negatives are resampled separately, each with replacement to its own size, so
    every resample has both classes and the class balance of the data.

    Parameters
    ----------
    scores, labels : array-like, shape (n,)
    n_boot : int, default 1000
    seed : int or numpy.random.Generator, optional
        Same seed, same resamples.

    Returns
    -------
    numpy.ndarray, shape (n_boot,)
    """
    s, y = check_scores_labels(scores, labels)
    check_scalar(n_boot, "n_boot", min=1)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    # Work with ranks of distinct values: the AUROC depends only on the order of the scores.
    _, code = np.unique(s, return_inverse=True)
    code = code.reshape(-1)
    n_val = int(code.max()) + 1
    pos_code, neg_code = code[y], code[~y]
    n_pos, n_neg = pos_code.size, neg_code.size
    out = np.empty(int(n_boot))
    step = max(1, min(int(n_boot), _BOOT_BLOCK // max(n_val, n_pos, n_neg)))
    for b0 in range(0, int(n_boot), step):
        nb = min(step, int(n_boot) - b0)
        pos_draw = pos_code[rng.integers(0, n_pos, size=(nb, n_pos))]
        neg_draw = neg_code[rng.integers(0, n_neg, size=(nb, n_neg))]
        # Histogram of resampled negatives over distinct values, one row per resample.
        offsets = (np.arange(nb) * n_val)[:, None]
        hist = np.bincount((neg_draw + offsets).ravel(), minlength=nb * n_val).reshape(nb, n_val)
        below = np.cumsum(hist, axis=1) - hist
        # For a positive with value v: 2 * (#neg < v) + (#neg == v), i.e. twice its U contribution.
        twice = 2 * below + hist
        out[b0:b0 + nb] = np.take_along_axis(twice, pos_draw, axis=1).sum(axis=1) / (2.0 * n_pos * n_neg)
    return out


def bootstrap_auroc_ci(
    scores: Any,
    labels: Any,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> tuple[float, float]:
    """Stratified percentile-bootstrap confidence interval for the AUROC.

    Parameters
    ----------
    scores, labels : array-like, shape (n,)
        As for :func:`auroc`.
    n_boot : int, default 1000
        Number of resamples (see :func:`bootstrap_auroc`).
    level : float, default 0.95
        Coverage; the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the
        resampled AUROCs.
    seed : int or numpy.random.Generator, default 0

    Returns
    -------
    (low, high) : tuple of float
    """
    check_scalar(level, "level", float, min=0, max=1, include_min=False, include_max=False)
    boots = bootstrap_auroc(scores, labels, n_boot=n_boot, seed=seed)
    alpha = 1.0 - float(level)
    low, high = np.quantile(boots, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def tpr_at_fpr(scores: Any, labels: Any, max_fpr: float = 0.01) -> float:
    """Largest TPR at any threshold whose FPR is at most ``max_fpr`` (strict definition).

    Only thresholds that can actually be used count (no interpolation between ROC points); the
    threshold ``inf`` (nothing flagged, TPR = FPR = 0) is always allowed, so the result is 0 when
    even the highest-scoring negative outranks every positive.

    Parameters
    ----------
    scores, labels : array-like, shape (n,)
    max_fpr : float, default 0.01

    Returns
    -------
    float
    """
    max_fpr = check_scalar(max_fpr, "max_fpr", float, min=0, max=1)
    s, y = check_scores_labels(scores, labels)
    fpr, tpr, _ = roc_curve(s, y)
    n_neg = int(np.sum(~y))
    # Compare false-positive counts, not rounded rates: fpr = k / n_neg exactly meets max_fpr.
    allowed = np.rint(fpr * n_neg) <= max_fpr * n_neg + 1e-9
    return float(tpr[allowed].max())


def tpr_at_closest_fpr(scores: Any, labels: Any, target_fpr: float = 0.01) -> tuple[float, float]:
    """"Closest FPR" variant: TPR at the ROC point whose FPR is closest to ``target_fpr``.

    This is **not** the strict TPR at FPR <= target (see :func:`tpr_at_fpr`): the FPR used may
    exceed the target, and is returned so that it can be reported next to the TPR. Among ROC
    points equally close to the target the lower FPR is used (the conservative choice), and at
    that FPR the highest TPR.

    Parameters
    ----------
    scores, labels : array-like, shape (n,)
    target_fpr : float, default 0.01

    Returns
    -------
    tpr : float
    fpr_used : float
    """
    target_fpr = check_scalar(target_fpr, "target_fpr", float, min=0, max=1)
    fpr, tpr, _ = roc_curve(scores, labels)
    gap = np.abs(fpr - target_fpr)
    closest = gap <= gap.min() + 1e-12
    fpr_used = fpr[closest].min()
    return float(tpr[closest & (fpr == fpr_used)].max()), float(fpr_used)


@dataclass(frozen=True)
class DetectionResult:
    """Evaluation of one detection score against ground-truth memorization labels.

    Attributes
    ----------
    name : str
        Score name (with its sign convention, e.g. ``"-lid_model"``).
    auroc : float
    ci_low, ci_high : float
        Stratified percentile bootstrap CI for the AUROC at coverage ``level``.
    tpr_at_1pct_fpr : float
        Strict: largest TPR at FPR <= 1%.
    tpr_at_closest_1pct_fpr : float
        "Closest FPR" variant: TPR at the ROC point with FPR closest to 1%.
    closest_fpr_used : float
        The FPR of that point.
    n_pos, n_neg : int
    level : float
    n_boot : int
    seed : int or None
    """

    name: str
    auroc: float
    ci_low: float
    ci_high: float
    tpr_at_1pct_fpr: float
    tpr_at_closest_1pct_fpr: float
    closest_fpr_used: float
    n_pos: int
    n_neg: int
    level: float
    n_boot: int
    seed: int | None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (JSON/CSV friendly)."""
        return asdict(self)


def evaluate_detector(
    scores: Any,
    labels: Any,
    name: str,
    n_boot: int = 1000,
    seed: int | None = 0,
    level: float = 0.95,
) -> DetectionResult:
    """AUROC with bootstrap CI and TPR at 1% FPR (strict and closest) for one score.

    Parameters
    ----------
    scores : array-like, shape (n,)
        Higher means "predicted memorized"; never flipped.
    labels : array-like, shape (n,)
        0/1 or bool, 1 = memorized; both classes must be present.
    name : str
        Score name, stored in the result.
    n_boot : int, default 1000
    seed : int, default 0
    level : float, default 0.95

    Returns
    -------
    DetectionResult
    """
    s, y = check_scores_labels(scores, labels)
    low, high = bootstrap_auroc_ci(s, y, n_boot=n_boot, level=level, seed=seed)
    tpr_c, fpr_c = tpr_at_closest_fpr(s, y, 0.01)
    return DetectionResult(
        name=str(name),
        auroc=auroc(s, y),
        ci_low=low,
        ci_high=high,
        tpr_at_1pct_fpr=tpr_at_fpr(s, y, 0.01),
        tpr_at_closest_1pct_fpr=tpr_c,
        closest_fpr_used=fpr_c,
        n_pos=int(y.sum()),
        n_neg=int((~y).sum()),
        level=float(level),
        n_boot=int(n_boot),
        seed=seed,
    )
