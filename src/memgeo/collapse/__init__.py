"""Model-collapse simulator: recursive training on synthetic data.

* :mod:`~memgeo.collapse.schedules`: sample sizes n_t (constant, linear, power t^p, callable);
* :mod:`~memgeo.collapse.families`: refittable families, vectorized over runs (Gaussian with MLE /
  unbiased / biased estimators, Gaussian mixture by EM, kernel density, empirical, categorical);
* :mod:`~memgeo.collapse.loops`: :func:`simulate` with the replace, accumulate, accumulate-subsample,
  real-share and fresh loops;
* :mod:`~memgeo.collapse.metrics`: per-generation metrics (log-variance, W2, KL, energy, kNN
  precision/recall, Gini-Simpson, ...);
* :mod:`~memgeo.collapse.theory`: exact finite-t closed forms to draw over the simulations;
* :mod:`~memgeo.collapse.neural`: the MLP diffusion model retrained on its own samples.
"""

from memgeo.collapse.families import (ESTIMATORS, FAMILIES, CategoricalFamily, EmpiricalFamily, Family,
                                      GaussianFamily, KernelDensityFamily, MixtureFamily, make_family)
from memgeo.collapse.loops import LOOPS, History, simulate
from memgeo.collapse.schedules import SCHEDULE_KINDS, Schedule, parse_schedule
from memgeo.collapse.theory import (accumulate_mean_sq_dist, collapse_predicted, expected_log_var,
                                    expected_trace_ratio, fresh_mean_sq_dist, fresh_stationary_mse,
                                    gini_simpson_replace, optimal_fresh_weight, theory_curves)

__all__ = ["ESTIMATORS", "FAMILIES", "LOOPS", "SCHEDULE_KINDS", "CategoricalFamily", "EmpiricalFamily", "Family",
           "GaussianFamily", "History", "KernelDensityFamily", "MixtureFamily", "Schedule",
           "accumulate_mean_sq_dist", "collapse_predicted", "expected_log_var", "expected_trace_ratio",
           "fresh_mean_sq_dist", "fresh_stationary_mse", "gini_simpson_replace", "make_family",
           "optimal_fresh_weight", "parse_schedule", "simulate", "theory_curves"]
