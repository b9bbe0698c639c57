"""Model-agnostic copy metrics on ``(train, test, generated)`` samples (issue 12).

Import :func:`compute_copy_metrics` for the one-call audit, or build a :class:`CopyData` and call
individual metrics from :data:`COPY_METRICS` (``COPY_METRICS.build(name, **options).evaluate(data)``).
The framework is in :mod:`~memgeo.memorization.copy_metrics.base`; every other module of this package
registers its metrics on import, and all of them are imported here.
"""

from __future__ import annotations

import importlib
import pkgutil

from memgeo.memorization.copy_metrics.base import (
    COPY_METRICS,
    CopyData,
    CopyMetric,
    MetricResult,
    compute_copy_metrics,
    rate_result,
)

# Register every metric module of the package (local, authenticity, datacopy, clique, ct, fld, prdc, ...).
for _mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _mod.name.startswith("_") and _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "COPY_METRICS",
    "CopyData",
    "CopyMetric",
    "MetricResult",
    "compute_copy_metrics",
    "rate_result",
]
