"""Memorization layer: ground-truth copy labels and detection evaluation.

Takes tensors/arrays only (no models, geometry or plotting):

- :mod:`~memgeo.data.neighbors`: exact kNN in normalized pixel l2, de-duplication.
- :mod:`~memgeo.memorization.copies`: copy criteria (``COPY_CRITERIA``) and :func:`label_copies`.
- :mod:`~memgeo.memorization.evaluation`: ROC/AUROC (higher score = predicted memorized, never
  flipped), stratified bootstrap CI, TPR at FPR <= 1%, :func:`evaluate_detector`.
"""

from memgeo.memorization.copies import (
    COPY_CRITERIA,
    AbsoluteCriterion,
    CalibratedCriterion,
    CopyCriterion,
    CopyLabels,
    RatioCriterion,
    get_copy_criterion,
    label_copies,
    typical_spacing,
)
from memgeo.memorization.evaluation import (
    DetectionResult,
    auroc,
    bootstrap_auroc,
    bootstrap_auroc_ci,
    check_scores_labels,
    evaluate_detector,
    roc_curve,
    tpr_at_closest_fpr,
    tpr_at_fpr,
)
from memgeo.data.neighbors import first_occurrence, nearest_neighbors, unique_rows

__all__ = [
    "COPY_CRITERIA",
    "AbsoluteCriterion",
    "CalibratedCriterion",
    "CopyCriterion",
    "CopyLabels",
    "DetectionResult",
    "RatioCriterion",
    "auroc",
    "bootstrap_auroc",
    "bootstrap_auroc_ci",
    "check_scores_labels",
    "evaluate_detector",
    "first_occurrence",
    "get_copy_criterion",
    "label_copies",
    "nearest_neighbors",
    "roc_curve",
    "tpr_at_closest_fpr",
    "tpr_at_fpr",
    "typical_spacing",
    "unique_rows",
]
