"""Independent transcription of three papers' prompt-memorization detection scores (ground truth for tests).

Written with diffusers + transformers + torch only: nothing from ``memgeo`` is imported here, so
memgeo's own scores can be tested against it. Each function follows the authors' published detection loop
(see ``docs/paper_conventions.md`` for the file/line references) on a ``diffusers.StableDiffusionPipeline``:

* :func:`wen_reference` — Wen et al. (ICLR 2024): ``||eps(x, t, c) - eps(x, t, "")||_2`` per generation,
  averaged over a window of sampling steps and over generations.
* :func:`jeon_reference` — Jeon, Kim & No (ICML 2025): ``||(H_c - H_u) d_s||_2`` with ``d_s = s_c - s_u``
  and ``H w`` the forward-mode JVP of the score (``torch.func.jvp``), averaged over the first steps.
* :func:`asthana_reference` — Asthana & Belagiannis (ICLR 2026): the first-step norm plus ``gamma`` times
  the per-pixel channel cosine ``cos(u, c - u)`` of the UNet outputs at the low-noise timestep
  ``timesteps[low_step]`` evaluated on the same latents.

Common loop (all three authors): ``scheduler.set_timesteps(steps)``; at step i the UNet runs once on
``[x; x]`` with ``[uncond; cond]`` embeddings from ``pipe.encode_prompt`` (unconditional prompt ``""``), on
``scheduler.scale_model_input(x, t)``; the trajectory then advances with
``scheduler.step(out_u + guidance (out_c - out_u), t, x)`` (eta = 0). Only the steps that are scored are run.

Latents: ``(C, h, w)`` (one noise shared by every prompt, as Jeon and Asthana do), ``(B, C, h, w)`` (one per
prompt; a leading 1 is shared), or ``(B | 1, G, C, h, w)`` (G generations per prompt, averaged as the authors
do). Computations run in the pipeline's dtype (load it in float32).

Prediction types. ``"epsilon"`` follows the SD 1.x code. For ``"v_prediction"``:

* ``native=True`` (default) — what the authors' code does on SD 2.x, or for Wen (no v-prediction code) the
  natural transcription: Wen takes ``||v_c - v_u||`` of the raw output; Jeon and Asthana's norm use the
  authors' "score" ``(alpha_t v - x) / sigma_t^2`` (x held constant in the JVP); Asthana's cosine uses the raw
  v outputs.
* ``native=False`` — the output is first converted to noise, ``eps = alpha_t v + sigma_t x`` (the exact
  score ``-eps / sigma_t`` is used for Jeon), and the epsilon formulas apply.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

PREDICTION_TYPES = ("epsilon", "v_prediction")


# ----------------------------------------------------------------------------------------------- helpers


def prediction_type(pipe) -> str:
    """The scheduler's ``prediction_type``, checked to be one this module transcribes."""
    kind = pipe.scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {kind!r} has no transcription here; "
                         "use an epsilon or v_prediction scheduler")
    return kind


def alpha_sigma(pipe, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha_t, sigma_t) = (sqrt(ab_t), sqrt(1 - ab_t))`` for the integer timestep ``t`` (0-d tensors)."""
    ab = pipe.scheduler.alphas_cumprod[int(t)].to(dtype=pipe.unet.dtype, device=pipe.unet.device)
    return ab.sqrt(), (1 - ab).sqrt()


def arrange_latents(latents: torch.Tensor, batch: int) -> torch.Tensor:
    """Bring the latents to ``(B, G, C, h, w)``.

    Parameters
    ----------
    latents : Tensor
        ``(C, h, w)`` shared, ``(B | 1, C, h, w)`` one generation, or ``(B | 1, G, C, h, w)``.
    batch : int
        Number of prompts B.
    """
    if latents.ndim == 3:
        latents = latents[None, None]
    elif latents.ndim == 4:
        latents = latents[:, None]
    elif latents.ndim != 5:
        raise ValueError(f"latents of shape {tuple(latents.shape)}: pass (C,h,w), (B,C,h,w) or (B,G,C,h,w)")
    if latents.shape[0] == 1:
        latents = latents.expand(batch, *latents.shape[1:])
    if latents.shape[0] != batch:
        raise ValueError(f"{latents.shape[0]} latents for {batch} prompts: pass one per prompt or a single shared one")
    return latents


def encode(pipe, prompts: Sequence[str], generations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cond, uncond)`` text embeddings, each ``(B * G, L, E)`` (prompt-major), via ``pipe.encode_prompt``."""
    cond, uncond = pipe.encode_prompt(list(prompts), pipe.unet.device, generations, True)
    return cond, uncond


def unet_pair(pipe, x_in: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
              uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One UNet call on ``[x_in; x_in]`` with ``[uncond; cond]`` -> ``(out_u, out_c)``, each ``(R, C, h, w)``."""
    out = pipe.unet(torch.cat([x_in, x_in]), t, encoder_hidden_states=torch.cat([uncond, cond]),
                    return_dict=False)[0]
    return out.chunk(2)


def walk(pipe, prompts: Sequence[str], latents: torch.Tensor, *, steps: int, guidance: float, scored: range,
         measure: Callable[..., torch.Tensor], reduce: bool = True) -> np.ndarray:
    """Run the guided DDIM loop over the first ``scored.stop`` steps and average ``measure`` over ``scored``.

    Parameters
    ----------
    measure : callable
        ``measure(i, t, x_in, out_u, out_c, cond, uncond) -> (R,)`` with R = B * G rows, ``x_in`` the scaled
        model input ``(R, C, h, w)`` and ``out_u, out_c`` the raw UNet outputs at ``(x_in, t)``.
    reduce : bool
        True: ``(B,)`` means over generations; False: ``(B, G)``.

    Returns
    -------
    ndarray
        ``(B,)`` or ``(B, G)``, float64: the mean over the scored steps.
    """
    prediction_type(pipe)
    batch = len(prompts)
    dtype, device = pipe.unet.dtype, pipe.unet.device
    lat = arrange_latents(torch.as_tensor(latents), batch).to(device=device, dtype=dtype)
    gens = lat.shape[1]
    x = lat.reshape(batch * gens, *lat.shape[2:]) * pipe.scheduler.init_noise_sigma
    pipe.scheduler.set_timesteps(steps, device=device)
    timesteps = pipe.scheduler.timesteps
    if not (0 <= scored.start < scored.stop <= len(timesteps)):
        raise ValueError(f"scored steps {scored.start}:{scored.stop} outside 0:{len(timesteps)}")
    with torch.no_grad():
        cond, uncond = encode(pipe, prompts, gens)
    values = []
    for i in range(scored.stop):
        t = timesteps[i]
        x_in = pipe.scheduler.scale_model_input(x, t)
        with torch.no_grad():
            out_u, out_c = unet_pair(pipe, x_in, t, cond, uncond)
        if i >= scored.start:
            values.append(measure(i, t, x_in, out_u, out_c, cond, uncond).detach().double().cpu())
        if i + 1 < scored.stop:
            guided = out_u + guidance * (out_c - out_u)
            with torch.no_grad():
                x = pipe.scheduler.step(guided, t, x, eta=0.0, return_dict=False)[0]
    per_row = torch.stack(values).mean(0).reshape(batch, gens)
    return (per_row.mean(1) if reduce else per_row).numpy()


def flat_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row, ``(R, ...) -> (R,)``."""
    return v.reshape(v.shape[0], -1).norm(dim=1)


def to_eps(pipe, out: torch.Tensor, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Raw UNet output -> predicted noise: identity for epsilon, ``alpha_t v + sigma_t x`` for v-prediction."""
    if prediction_type(pipe) == "epsilon":
        return out
    alpha, sigma = alpha_sigma(pipe, t)
    return alpha * out + sigma * x_in


# -------------------------------------------------------------------------------------------------- Wen


def wen_reference(pipe, prompts: Sequence[str], latents: torch.Tensor, *, steps: int = 50, guidance: float = 7.5,
                  window: tuple[int, int] = (0, 1), native: bool = True, reduce: bool = True) -> np.ndarray:
    """Wen et al. (ICLR 2024): mean over steps in ``window`` and generations of ``||out_c - out_u||_2``.

    ``window = (0, 1)`` is the first step (t = 981 for SD's 50-step DDIM); the authors' notebook uses
    ``(0, 50)``. For v-prediction, ``native=True`` measures the raw ``||v_c - v_u||``, ``native=False`` the
    noise difference ``alpha_t ||v_c - v_u||``.

    Returns
    -------
    ndarray
        ``(B,)`` (or ``(B, G)`` with ``reduce=False``), float64.
    """
    def measure(i, t, x_in, out_u, out_c, cond, uncond):
        if not native:
            out_u, out_c = to_eps(pipe, out_u, x_in, t), to_eps(pipe, out_c, x_in, t)
        return flat_norm(out_c - out_u)

    return walk(pipe, prompts, latents, steps=steps, guidance=guidance, scored=range(*window), measure=measure,
                reduce=reduce)


# ------------------------------------------------------------------------------------------------- Jeon


def score_function(pipe, t: torch.Tensor, x_const: torch.Tensor,
                   native: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The authors' score map, as a function of the model input, applied to raw UNet outputs.

    Returns ``f(out, y)``: epsilon ``-out / sigma``; v-prediction native (the authors' SD 2 code)
    ``(alpha out - x_const) / sigma^2`` with ``x_const`` held fixed; v-prediction not native, the exact score
    ``-(alpha out + sigma y) / sigma``.
    """
    alpha, sigma = alpha_sigma(pipe, t)
    kind = prediction_type(pipe)
    if kind == "epsilon":
        return lambda out, y: -out / sigma
    if native:
        return lambda out, y: (alpha * out - x_const) / sigma**2
    return lambda out, y: -(alpha * out + sigma * y) / sigma


def score_hvp(pipe, x_in: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
              direction: torch.Tensor, native: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H_u w, H_c w)``: forward-mode JVP of the score at ``x_in`` along ``w``, as the authors' ``hvp_comb``.

    ``H`` is the Jacobian of the score in the model input (the Hessian of log p_t). Attention runs PyTorch's
    math SDPA kernel (the authors disable the fused kernels for the JVP).

    Parameters
    ----------
    x_in, direction : Tensor
        ``(R, C, h, w)``.
    """
    score = score_function(pipe, t, torch.cat([x_in, x_in]), native)

    def f(y: torch.Tensor) -> torch.Tensor:
        yy = torch.cat([y, y])
        out = pipe.unet(yy, t, encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)[0]
        return score(out, yy)

    with sdpa_kernel(SDPBackend.MATH):
        _, jv = torch.func.jvp(f, (x_in,), (direction,))
    return jv.chunk(2)


def jeon_reference(pipe, prompts: Sequence[str], latents: torch.Tensor, *, steps: int = 50, guidance: float = 7.5,
                   n_steps: int = 1, native: bool = True, reduce: bool = True) -> np.ndarray:
    """Jeon, Kim & No (ICML 2025): ``||(H_c - H_u)(s_c - s_u)||_2`` averaged over the first ``n_steps`` steps.

    Epsilon: ``s = -eps / sigma_t``. v-prediction: ``native=True`` the authors' SD 2 score
    ``(alpha_t v - x) / sigma_t^2``; ``native=False`` the exact score ``-(alpha_t v + sigma_t x) / sigma_t``.

    Returns
    -------
    ndarray
        ``(B,)`` (or ``(B, G)`` with ``reduce=False``), float64.
    """
    def measure(i, t, x_in, out_u, out_c, cond, uncond):
        score = score_function(pipe, t, torch.cat([x_in, x_in]), native)
        s_u, s_c = score(torch.cat([out_u, out_c]), torch.cat([x_in, x_in])).chunk(2)
        h_u, h_c = score_hvp(pipe, x_in, t, cond, uncond, s_c - s_u, native)
        return flat_norm(h_c - h_u)

    return walk(pipe, prompts, latents, steps=steps, guidance=guidance, scored=range(n_steps), measure=measure,
                reduce=reduce)


# ---------------------------------------------------------------------------------------------- Asthana


def asthana_parts(pipe, prompts: Sequence[str], latents: torch.Tensor, *, steps: int = 50, guidance: float = 7.5,
                  low_step: int = -3, n_steps: int = 1, native: bool = True,
                  reduce: bool = True) -> dict[str, np.ndarray]:
    """Asthana & Belagiannis (ICLR 2026): the two terms, each averaged over the first ``n_steps`` steps.

    ``norm``: ``||eps_c - eps_u||_2`` at the step's timestep (v-prediction native: the authors'
    ``alpha_t ||v_c - v_u|| / sigma_t^2``). ``cosine``: on the SAME model input, the UNet at
    ``t' = timesteps[low_step]`` (41 for SD's 50-step DDIM), ``F.cosine_similarity(u, c - u, dim=1)`` over the
    channel axis (one cosine per pixel) averaged over pixels, with ``u, c`` the raw outputs (native) or their
    noise conversion (``native=False``).

    Returns
    -------
    dict
        ``{"norm": (B,), "cosine": (B,)}`` (``(B, G)`` with ``reduce=False``), float64.
    """
    terms: dict[str, list[torch.Tensor]] = {"norm": [], "cosine": []}
    kind = prediction_type(pipe)

    def measure(i, t, x_in, out_u, out_c, cond, uncond):
        if kind == "v_prediction" and native:
            score = score_function(pipe, t, torch.cat([x_in, x_in]), True)
            s_u, s_c = score(torch.cat([out_u, out_c]), torch.cat([x_in, x_in])).chunk(2)
            norm = flat_norm(s_c - s_u)
        else:
            norm = flat_norm(to_eps(pipe, out_c, x_in, t) - to_eps(pipe, out_u, x_in, t))
        t_low = pipe.scheduler.timesteps[low_step]
        x_low = pipe.scheduler.scale_model_input(x_in, t_low)
        with torch.no_grad():
            u, c = unet_pair(pipe, x_low, t_low, cond, uncond)
        if not native:
            u, c = to_eps(pipe, u, x_low, t_low), to_eps(pipe, c, x_low, t_low)
        cosine = F.cosine_similarity(u, c - u, dim=1).reshape(u.shape[0], -1).mean(1)
        terms["norm"].append(norm)
        terms["cosine"].append(cosine)
        return norm

    walk(pipe, prompts, latents, steps=steps, guidance=guidance, scored=range(n_steps), measure=measure)
    batch = len(prompts)
    out = {}
    for name, vals in terms.items():
        per_row = torch.stack(vals).double().mean(0).reshape(batch, -1).cpu()
        out[name] = (per_row.mean(1) if reduce else per_row).numpy()
    return out


def asthana_reference(pipe, prompts: Sequence[str], latents: torch.Tensor, *, gamma: float = 2.0,
                      gamma_norm: float = 1.0, steps: int = 50, guidance: float = 7.5, low_step: int = -3,
                      n_steps: int = 1, native: bool = True, reduce: bool = True) -> np.ndarray:
    """Asthana & Belagiannis's score ``gamma_norm * norm + gamma * cosine`` (see :func:`asthana_parts`).

    The authors use ``(gamma_norm, gamma) = (1, 2)`` on SD 1.4, ``(1, 0.1)`` on SD 2.0.

    Returns
    -------
    ndarray
        ``(B,)`` (or ``(B, G)`` with ``reduce=False``), float64.
    """
    parts = asthana_parts(pipe, prompts, latents, steps=steps, guidance=guidance, low_step=low_step,
                          n_steps=n_steps, native=native, reduce=reduce)
    return gamma_norm * parts["norm"] + gamma * parts["cosine"]


__all__ = ["alpha_sigma", "arrange_latents", "asthana_parts", "asthana_reference", "encode", "jeon_reference",
           "prediction_type", "score_hvp", "unet_pair", "walk", "wen_reference"]
