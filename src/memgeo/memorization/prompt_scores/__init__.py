"""Prompt-level memorization scores: does this prompt make the model copy a training image?

Registry :data:`PROMPT_SCORES` (name -> class; :func:`get_prompt_score` instantiates one):

=================  ==========================================================  =====================
name               value (higher = more likely memorized)                      passes per generation
=================  ==========================================================  =====================
``wen``            ||d_eps|| over a step window (default the first step)       2 per step in window
``jeon``           ||(H_c - H_u) d_s||, d_s = -d_eps / sigma, J v (JVP)         4 forward + 2 JVP
``jeon_vjp``       ||(H_c^T - H_u^T) d_s|| (VJP variant)                         4 forward + 2 VJP
``asthana``        ||d_eps(T)|| + gamma cos(eps_u, d_eps)(t_low)                4 forward
``hessian_diff``   ||H_c^T eps_c - H_u^T eps_u||                                2 forward + 2 VJP
``sharpness``      -mean(lambda sigma^2) of sym(H_c) at step one                1 forward + D VJP
``flipd_cond``     -FLIPD(x_0) under the prompt                                 sampling + FLIPD
``flipd_uncond``   -FLIPD(x_0) under the null prompt                            sampling + FLIPD
=================  ==========================================================  =====================

with d_eps = eps(x, t, c) - eps(x, t, null). See :mod:`.base` for the contract and :mod:`.first_step`,
:mod:`.sampled` for the formulas.
"""

from memgeo.memorization.prompt_scores.base import (
    PROMPT_SCORES,
    CountingPromptModel,
    PromptScore,
    RowCost,
    SamplingSettings,
    ScoreResult,
    eps_pair,
    flat_norm,
    flatten_generations,
    generation_noise,
    get_prompt_score,
    parse_score_names,
    register_prompt_score,
)
from memgeo.memorization.prompt_scores.first_step import (
    Asthana,
    HessianDiff,
    Jeon,
    JeonVJP,
    Sharpness,
    Wen,
    guidance_norm,
    wen_window_values,
)
from memgeo.memorization.prompt_scores.sampled import (
    FlipdCond,
    FlipdUncond,
    generated_samples,
    sample_forward_evals,
)

__all__ = [
    "PROMPT_SCORES", "Asthana", "CountingPromptModel", "FlipdCond", "FlipdUncond", "HessianDiff", "Jeon", "JeonVJP",
    "PromptScore", "RowCost", "SamplingSettings", "ScoreResult", "Sharpness", "Wen", "eps_pair", "flat_norm",
    "flatten_generations", "generated_samples", "generation_noise", "get_prompt_score", "guidance_norm",
    "parse_score_names", "register_prompt_score", "sample_forward_evals", "wen_window_values",
]
