"""Deprecated home of the model SPEC loader: everything now lives in :mod:`memgeo.models.loading`.

``load_model_spec`` is the deprecated name of :func:`memgeo.models.loading.load`; ``MODEL_SPECS``
lists every kind of ``--model`` value that :func:`~memgeo.models.loading.load` accepts.
"""

from __future__ import annotations

from memgeo.models.loading import MODEL_SPECS, load_model_spec

__all__ = ["MODEL_SPECS", "load_model_spec"]
