"""Geometry of learned densities: score Jacobians, Hessian spectra (sharpness)."""

from memgeo.geometry.jacobian import ScoreJacobianOperator, flat_score_fn, jacobian_asymmetry, score_jacobian
from memgeo.geometry.sharpness import (
    FLAT_THRESHOLD,
    SharpnessResult,
    resolve_time,
    sharpness_spectrum,
    spectrum_along_trajectory,
    spectrum_from_jacobian,
)

__all__ = ["FLAT_THRESHOLD", "ScoreJacobianOperator", "SharpnessResult", "flat_score_fn", "jacobian_asymmetry",
           "resolve_time", "score_jacobian", "sharpness_spectrum", "spectrum_along_trajectory",
           "spectrum_from_jacobian"]
