"""Geometry of learned densities: score Jacobians, Hessian spectra (sharpness), matrix-free linear
algebra (traces, Lanczos, Arnoldi, SLQ) and local intrinsic dimension (:mod:`memgeo.geometry.lid`)."""

from memgeo.geometry.jacobian import ScoreJacobianOperator, flat_score_fn, jacobian_asymmetry, score_jacobian
from memgeo.geometry.linalg import ArnoldiResult, LanczosResult, SLQDensity, arnoldi_eigs, lanczos_extreme, slq_density
from memgeo.geometry.sharpness import (
    FLAT_THRESHOLD,
    SharpnessResult,
    resolve_time,
    sharpness_spectrum,
    spectrum_along_trajectory,
    spectrum_from_jacobian,
)
from memgeo.geometry.trace import TRACE_METHODS, TraceEstimate, estimate_trace

__all__ = ["TRACE_METHODS", "ArnoldiResult", "LanczosResult", "SLQDensity", "TraceEstimate", "arnoldi_eigs",
           "estimate_trace", "lanczos_extreme", "slq_density", "FLAT_THRESHOLD", "ScoreJacobianOperator", "SharpnessResult", "flat_score_fn", "jacobian_asymmetry",
           "resolve_time", "score_jacobian", "sharpness_spectrum", "spectrum_along_trajectory",
           "spectrum_from_jacobian"]
