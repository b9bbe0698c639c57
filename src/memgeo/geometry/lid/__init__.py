"""Local intrinsic dimension (LID) estimators and their registry.

Model-based (LID_model, subclasses of :class:`ModelLIDEstimator`): :class:`FLIPD`, :class:`FPRegress`,
:class:`NormalBundle` (diffusion models) and :class:`GeneratorLID` (decoders / generators).
Data-based (LID_data, subclasses of :class:`DataLIDEstimator`): :class:`CFDM` (closed-form FLIPD of the empirical measure) and the
scikit-dimension estimators in :mod:`~memgeo.geometry.lid.modelfree` (local PCA, MLE, TwoNN) with
out-of-sample queries over one shared kNN index. All are in :data:`LID_ESTIMATORS`; build one by
name with :func:`get_lid_estimator`.
"""

from memgeo.geometry.lid.base import (
    LID_ESTIMATORS,
    DataLIDEstimator,
    LIDEstimator,
    ModelLIDEstimator,
    get_lid_estimator,
    register,
)
from memgeo.geometry.lid.bundle import NormalBundle
from memgeo.geometry.lid.flipd import CFDM, FLIPD, FPRegress, LIDCurve
from memgeo.geometry.lid.generator import GeneratorLID, GeneratorLIDResult
from memgeo.geometry.lid.modelfree import MLE, MODEL_FREE_ESTIMATORS, KNNIndex, LocalPCA, TwoNN

__all__ = ["CFDM", "FLIPD", "DataLIDEstimator", "FPRegress", "GeneratorLID", "GeneratorLIDResult", "KNNIndex",
           "LIDCurve", "LID_ESTIMATORS", "LIDEstimator", "LocalPCA", "MLE", "MODEL_FREE_ESTIMATORS",
           "ModelLIDEstimator", "NormalBundle", "TwoNN", "get_lid_estimator", "register"]
