"""Prompt-level memorization mitigation: a registry of methods sharing one ``generate`` signature.

==================  ==========================================================================
name                method
==================  ==========================================================================
``none``            plain classifier-free guided DDIM (the baseline, same seeds)
``sail``            SAIL: initial noise minimising a first-step sharpness objective (Jeon et al.)
``wen_prompt``      prompt-embedding optimisation of ||d_eps|| at the first step (Wen et al.)
``jain_delayed``    CFG switched on after the first local minimum of ||d_eps|| (Jain et al.)
``han_noise``       initial noise adjusted to a small first-step ||d_eps|| (Han et al.)
==================  ==========================================================================

Usage::

    method = get_mitigation("sail", n_candidates=4, opt_steps=10)
    res = method.generate(model, model.encode(prompts), x_T, steps=50, guidance=3.0, generator=g)
    res.samples, res.noise, res.nfe, res.nbe, res.diagnostics

Each method's class docstring states the algorithm as implemented and its cost formula. Modules:
:mod:`.base` (the :class:`Mitigation` contract, cost tally, guided sampler, row-wise Adam),
:mod:`.guidance` (``none``, ``jain_delayed``), :mod:`.noise` (``sail``, ``han_noise``) and
:mod:`.prompt` (``wen_prompt``).
"""

from __future__ import annotations

from typing import Any

from memgeo.errors import Registry
from memgeo.memorization.mitigation.base import CostTally, Mitigation, MitigationResult, sample_guided
from memgeo.memorization.mitigation.guidance import DelayedGuidance, NoMitigation
from memgeo.memorization.mitigation.noise import SAIL, InitialNoiseAdjustment
from memgeo.memorization.mitigation.prompt import PromptEmbeddingOptimisation

#: Mitigation methods by ``name``.
MITIGATIONS: Registry[type[Mitigation]] = Registry("mitigation method", {
    cls.name: cls for cls in (NoMitigation, SAIL, PromptEmbeddingOptimisation, DelayedGuidance,
                              InitialNoiseAdjustment)})


def get_mitigation(name: str, **params: Any) -> Mitigation:
    """Build a mitigation from its registry name and hyper-parameters (see each class)."""
    return MITIGATIONS.build(name, **params)


__all__ = ["MITIGATIONS", "SAIL", "CostTally", "DelayedGuidance", "InitialNoiseAdjustment", "Mitigation",
           "MitigationResult", "NoMitigation", "PromptEmbeddingOptimisation", "get_mitigation", "sample_guided"]
