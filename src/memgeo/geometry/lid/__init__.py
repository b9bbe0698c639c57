"""Local intrinsic dimension (LID) estimators and their registry.

Model-based (LID_model): :class:`FLIPD`, :class:`FPRegress`, :class:`NormalBundle`.
Data-based (LID_data): :class:`CFDM` (closed-form FLIPD of the empirical measure) and the
scikit-dimension estimators in :mod:`~memgeo.geometry.lid.modelfree` (local PCA, MLE, TwoNN) with
out-of-sample queries over one shared kNN index. All are in :data:`LID_ESTIMATORS`; build one by
name with :func:`get_lid_estimator`.
"""

from memgeo.geometry.lid.base import LID_ESTIMATORS, LIDEstimator, get_lid_estimator, register
from memgeo.geometry.lid.bundle import NormalBundle
from memgeo.geometry.lid.flipd import CFDM, FLIPD, FPRegress, LIDCurve
from memgeo.geometry.lid.modelfree import MLE, MODEL_FREE_ESTIMATORS, KNNIndex, LocalPCA, TwoNN

__all__ = ["CFDM", "FLIPD", "FPRegress", "KNNIndex", "LIDCurve", "LID_ESTIMATORS", "LIDEstimator", "LocalPCA", "MLE",
           "MODEL_FREE_ESTIMATORS", "NormalBundle", "TwoNN", "get_lid_estimator", "register"]
