"""Paper presets: each detection paper's published settings, as memgeo options.

``get_preset(name)`` returns a :class:`DetectionPreset`; ``memgeo detect --preset NAME`` applies it
(explicit options still win). What each paper's code does, with file and line references, is in
``docs/paper_conventions.md``; ``tests/test_paper_scores.py`` checks that memgeo with a preset gives
the numbers of an independent transcription of that code on the same pipeline, prompts and noise.

All three use 50 DDIM steps from the scheduler's config (first step at ``timesteps[0]``, 981 on
SD 1.x), guidance 7.5 and the v-prediction formulas of their code (``convention="native"``). Every
preset also carries the other two papers' score settings, so that ``--scores wen,jeon,asthana``
compares the three methods as published, under one run protocol:

=============  =================================================================================
preset         protocol
=============  =================================================================================
wen2024        4 generations, seed per prompt (prompt i: seed 0 + i), ``wen`` averaged over all
               50 steps (the authors' notebook; ``--step-window 0:1`` gives the first-step variant)
jeon2025       4 generations, the same noise for every prompt (seed 42), ``jeon`` at step one
asthana2026    1 generation, the same noise for every prompt (seed 51), ``asthana`` with
               gamma 2 (SD 1.4; 0.1 on SD 2.0, see ``--gamma``), the cosine at ``timesteps[-3]``
=============  =================================================================================

The authors ran in float16/bfloat16; memgeo runs in the model's dtype (float32 by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memgeo.errors import MemgeoError

#: Score settings of the published code (docs/paper_conventions.md).
PAPER_SCORE_PARAMS: dict[str, dict[str, Any]] = {
    "wen": {"window": (0, 1), "convention": "native"},
    "jeon": {"mode": "jvp", "n_steps": 1, "convention": "native"},
    "jeon_vjp": {"n_steps": 1, "convention": "native"},
    "asthana": {"gamma": 2.0, "gamma_norm": 1.0, "low_step": -3, "t_low": None, "cosine": "per_pixel",
                "convention": "native"},
}


@dataclass(frozen=True)
class DetectionPreset:
    """One paper's detection protocol.

    Attributes
    ----------
    name, citation : str
    steps, guidance : sampler settings (the model's grid, CFG weight)
    generations : int
        Initial noises per prompt.
    seeding : {"per_prompt", "shared"}
        "per_prompt": prompt i uses seed + i; "shared": every prompt uses the same noise (seed).
    seed : int
    scores : tuple of str
        The paper's own score(s), used when ``--scores`` is not given.
    score_params : dict
        Settings of every score this preset knows (the other papers' as published).
    """

    name: str
    citation: str
    steps: int
    guidance: float
    generations: int
    seeding: str
    seed: int
    scores: tuple[str, ...]
    score_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def params_for(self, scores: tuple[str, ...] | list[str]) -> dict[str, dict[str, Any]]:
        """The preset's settings of those of ``scores`` it knows."""
        return {s: dict(self.score_params[s]) for s in scores if s in self.score_params}


def _with(**changes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    params = {k: dict(v) for k, v in PAPER_SCORE_PARAMS.items()}
    for name, upd in changes.items():
        params[name].update(upd)
    return params


PRESETS: dict[str, DetectionPreset] = {
    "wen2024": DetectionPreset("wen2024", "Wen et al., ICLR 2024", steps=50, guidance=7.5, generations=4,
                               seeding="per_prompt", seed=0, scores=("wen",),
                               score_params=_with(wen={"window": (0, 50)})),
    "jeon2025": DetectionPreset("jeon2025", "Jeon, Kim & No, ICML 2025", steps=50, guidance=7.5, generations=4,
                                seeding="shared", seed=42, scores=("jeon",), score_params=_with()),
    "asthana2026": DetectionPreset("asthana2026", "Asthana & Belagiannis, ICLR 2026", steps=50, guidance=7.5,
                                   generations=1, seeding="shared", seed=51, scores=("asthana",),
                                   score_params=_with()),
}

SEEDINGS = ("per_prompt", "shared")


def get_preset(name: str) -> DetectionPreset:
    """The preset called ``name`` (see the module table)."""
    if name not in PRESETS:
        raise MemgeoError(f"unknown preset {name!r}", f"choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


__all__ = ["PAPER_SCORE_PARAMS", "PRESETS", "SEEDINGS", "DetectionPreset", "get_preset"]
