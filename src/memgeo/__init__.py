"""memgeo: measure, explain and prevent memorization in generative models.

Layers, importing only downwards::

    errors/io -> data -> models -> geometry -> memorization -> report -> workflows -> cli

The top level is a small curated API; everything else lives in the sub-packages::

    import memgeo
    model = memgeo.load("runs/ckpt")                       # a SPEC, checkpoint or pipeline folder
    res = memgeo.sample(model, x_T, steps=50)              # the one sampler core
    spec = memgeo.sharpness_spectrum(model, x, t=0.5)      # score-Jacobian eigenvalues
    lid = memgeo.FLIPD(t0=0.05).estimate(model, x)         # or memgeo.get_lid_estimator("flipd")
    audit = memgeo.mmh_audit(lid_model, lid_data)          # manifold memorization hypothesis
    score = memgeo.get_prompt_score("wen")                 # memgeo.PROMPT_SCORES lists them
    method = memgeo.get_mitigation("sail")                 # memgeo.MITIGATIONS lists them
    hist = memgeo.simulate(family, loop="replace")         # model-collapse simulator
    lid = memgeo.GeneratorLID().estimate(vae, x)           # rank of a decoder/generator Jacobian
    res = memgeo.compute_copy_metrics(train, test, gen)    # model-agnostic copy metrics (COPY_METRICS)
    mem = memgeo.kfold_memorization_score(n, fit, loglik)  # van den Burg & Williams, any likelihood model

Only :class:`MemgeoError` and ``__version__`` are imported eagerly; the other names are resolved on
first use (module ``__getattr__``), so ``import memgeo`` stays cheap and never pulls in the
geometry or memorization stacks (let alone diffusers/transformers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from memgeo.errors import MemgeoError

__version__ = "0.1.0"

#: Curated name -> the module that defines it.
_LAZY: dict[str, str] = {
    "load": "memgeo.models.loading",
    "sample": "memgeo.models.sampling",
    "sharpness_spectrum": "memgeo.geometry.sharpness",
    "CFDM": "memgeo.geometry.lid",
    "FLIPD": "memgeo.geometry.lid",
    "FPRegress": "memgeo.geometry.lid",
    "LID_ESTIMATORS": "memgeo.geometry.lid",
    "LocalPCA": "memgeo.geometry.lid",
    "MLE": "memgeo.geometry.lid",
    "NormalBundle": "memgeo.geometry.lid",
    "TwoNN": "memgeo.geometry.lid",
    "get_lid_estimator": "memgeo.geometry.lid",
    "mmh_audit": "memgeo.memorization.mmh",
    "PROMPT_SCORES": "memgeo.memorization.prompt_scores",
    "get_prompt_score": "memgeo.memorization.prompt_scores",
    "MITIGATIONS": "memgeo.memorization.mitigation",
    "get_mitigation": "memgeo.memorization.mitigation",
    "simulate": "memgeo.collapse",
    "GeneratorLID": "memgeo.geometry.lid",
    "kfold_memorization_score": "memgeo.memorization.kfold",
    "COPY_METRICS": "memgeo.memorization.copy_metrics",
    "compute_copy_metrics": "memgeo.memorization.copy_metrics",
}

__all__ = sorted(["MemgeoError", "__version__", *_LAZY])


def __getattr__(name: str) -> Any:
    """Resolve a curated name on first access and cache it in the module namespace."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memgeo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs only; never run
    from memgeo.collapse import simulate
    from memgeo.geometry.lid import (CFDM, FLIPD, LID_ESTIMATORS, MLE, FPRegress, GeneratorLID, LocalPCA,
                                     NormalBundle, TwoNN, get_lid_estimator)
    from memgeo.memorization.copy_metrics import COPY_METRICS, compute_copy_metrics
    from memgeo.memorization.kfold import kfold_memorization_score
    from memgeo.geometry.sharpness import sharpness_spectrum
    from memgeo.memorization.mitigation import MITIGATIONS, get_mitigation
    from memgeo.memorization.mmh import mmh_audit
    from memgeo.memorization.prompt_scores import PROMPT_SCORES, get_prompt_score
    from memgeo.models.loading import load
    from memgeo.models.sampling import sample
