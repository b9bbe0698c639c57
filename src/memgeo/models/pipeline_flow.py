"""A flow-matching transformer pipeline (Stable Diffusion 3 layout) behind memgeo's prompt-model interface.

The folder is what ``StableDiffusion3Pipeline.save_pretrained`` writes::

    model_index.json  transformer/  scheduler/  text_encoder/  tokenizer/  text_encoder_2/  tokenizer_2/
    [text_encoder_3/  tokenizer_3/]  [vae/]

Flow matching in VP coordinates
-------------------------------
diffusers' ``FlowMatchEulerDiscreteScheduler`` interpolates data and noise linearly,

    x_fm(s) = (1 - s) x0 + s eps,    s in [0, 1] the scheduler's ``sigma`` (timestep = s * 1000),

and the transformer predicts the velocity ``u = eps - x0``; a sampling step is Euler,
``x_fm(s') = x_fm(s) + (s' - s) u``. memgeo works in variance-preserving coordinates: with
``n(s) = sqrt((1 - s)^2 + s^2)``,

    x_vp = x_fm / n(s) = psi x0 + sigma eps,    psi(s) = (1 - s) / n(s),  sigma(s) = s / n(s),

so ``psi^2 + sigma^2 = 1``, and memgeo's time is the flow sigma itself, ``t = s``
(:class:`FlowMatchSchedule`). From the velocity at ``x_fm = n(s) x_vp``:

    x0 = x_fm - s u,    eps = x_fm + (1 - s) u,    score(x_vp) = -eps / sigma.

A deterministic DDIM step in VP coordinates, ``x_vp' = psi' x0 + sigma' eps``, multiplied by
``n(s')`` gives ``(1 - s') x0 + s' eps = x_fm + (s' - s) u``: exactly the scheduler's Euler step
(``tests/test_pipeline_flow.py`` checks it against ``scheduler.step``). At ``s = 1`` (the first
sampling step, psi = 0) ``eps = x`` for every prompt, so eps-based scores carry no condition
there; :meth:`DiffusersFlowModel.denoise` therefore returns x0 from ``u`` (finite at s = 1) and
:meth:`~DiffusersFlowModel.native_output` the velocity itself.

Condition
---------
As ``StableDiffusion3Pipeline.encode_prompt`` (``clip_skip=None``): both CLIP encoders' penultimate
hidden states, concatenated on the feature axis and zero-padded to the transformer's
``joint_attention_dim`` E, followed on the sequence axis by T5's last hidden state (zeros of
length ``max_sequence_length`` when the folder has no T5, as diffusers does), plus the pooled
embedding (both CLIPs' projected end-of-text features, concatenated, P values). memgeo's condition
is ONE tensor: the pooled embedding is packed as one extra row, zero-padded from P to E,

    cond = [prompt_embeds (B, L_clip + L_t5, E) ; [pooled, 0] (B, 1, E)]  ->  (B, L_clip + L_t5 + 1, E).

The null condition is the empty prompt ``""`` on all encoders (the pipeline's negative prompt by default).

Text path (token attribution)
-----------------------------
:meth:`DiffusersFlowModel.tokenize` tokenizes with the first CLIP tokenizer (L_clip positions) and,
when present, appends the T5 tokens (L_t5 positions). The second CLIP's ids are derived from the
first's (same BPE; vocabulary mapped by token string, positions after the first end-of-text set
to its own pad id). :meth:`~DiffusersFlowModel.token_embeddings` returns, per CLIP position, both
CLIP input embeddings concatenated on the feature axis ``[e1 ; e2]`` and, per T5 position, T5's
input embedding, all zero-padded to a common width E_in = max(h1 + h2, d_t5): one gradient per
displayed token, covering both CLIP encoders.

:func:`build_tiny_flow_pipeline` writes a random-weight folder of this layout for tests (no network).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from memgeo.errors import MemgeoError
from memgeo.io import atomic_write_text
from memgeo.models.base import as_time, expand_like
from memgeo.models.pipeline import TINY_WORDS, _write_clip_vocab, check_tokenizer, check_tokenizer_folder, one_line
from memgeo.models.prompt import PromptDiffusionModel, TokenBatch
from memgeo.models.sampling import SamplingGrid
from memgeo.models.schedule import _FromLogAlphaBar

REQUIRED = ("transformer", "scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


# --- the schedule -----------------------------------------------------------------------------------
def _as_tensor(t: torch.Tensor | float) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=torch.get_default_dtype())


class FlowMatchSchedule(_FromLogAlphaBar, BaseModel):
    """The rectified-flow path x_fm = (1 - t) x0 + t eps in VP coordinates, memgeo time t = flow sigma.

    psi(t) = (1 - t) / n(t), sigma(t) = t / n(t), n(t) = sqrt((1 - t)^2 + t^2); psi^2 + sigma^2 = 1,
    psi(1) = 0 and sigma(1) = 1. ``log_alpha_bar(1) = -inf``; psi and sigma are evaluated in closed
    form, so both are finite and differentiable on [0, 1].

    Parameters
    ----------
    num_train_timesteps : int
        The scheduler's ``num_train_timesteps``: the network's timestep is t * num_train_timesteps.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_train_timesteps: int = Field(1000, gt=0)

    @staticmethod
    def norm(t: torch.Tensor | float) -> torch.Tensor:
        """n(t) = sqrt((1 - t)^2 + t^2), the norm converting x_fm = n x_vp; same shape as ``t``."""
        t = _as_tensor(t)
        return torch.sqrt((1 - t) ** 2 + t * t)

    def log_alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """log psi(t)^2 = 2 log((1 - t) / n(t)); -inf at t = 1."""
        t = _as_tensor(t)
        return 2.0 * (torch.log1p(-t) - torch.log(self.norm(t)))

    def sqrt_alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """psi(t) = (1 - t) / n(t)."""
        t = _as_tensor(t)
        return (1 - t) / self.norm(t)

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma(t) = t / n(t)."""
        t = _as_tensor(t)
        return t / self.norm(t)

    def t_from_sigma(self, sigma: float) -> float:
        """Invert sigma(t): t = sigma / (sigma + sqrt(1 - sigma^2)) for 0 < sigma <= 1."""
        if not 0.0 < sigma <= 1.0:
            raise MemgeoError(f"sigma={sigma} is outside (0, 1]", "pick a noise level inside the schedule")
        return sigma / (sigma + math.sqrt(1.0 - sigma * sigma))

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The network's timestep t * num_train_timesteps (the scheduler's ``sigma * 1000``)."""
        return t * self.num_train_timesteps


# --- the model --------------------------------------------------------------------------------------
def _check_folder(folder: Path) -> dict:
    if not (folder / "model_index.json").is_file():
        raise MemgeoError(f"{folder} has no model_index.json", "point at a diffusers pipeline folder")
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except json.JSONDecodeError as exc:
        raise MemgeoError(f"{folder / 'model_index.json'} is not valid JSON ({exc})", "re-save the pipeline") from exc
    missing = [c for c in REQUIRED if not (folder / c).is_dir()]
    if missing:
        raise MemgeoError(f"flow pipeline folder {folder} lacks {', '.join(missing)}",
                          "an SD3-style pipeline needs transformer/, scheduler/ and two CLIP text encoders/tokenizers")
    return index


def is_flow_pipeline(folder: str | Path) -> bool:
    """Whether a pipeline folder holds a flow-matching transformer (``transformer`` in model_index.json)."""
    index_file = Path(folder) / "model_index.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(index.get("transformer"), list) and index["transformer"][0] is not None


class DiffusersFlowModel(PromptDiffusionModel):
    """An SD3-style pipeline (SD3Transformer2DModel + FlowMatchEulerDiscreteScheduler) as a prompt model.

    Build it with :meth:`from_folder`. See the module docstring for the VP conversion, the
    condition layout (B, L_clip + L_t5 + 1, E) and the text path. Parameters are frozen, modules
    in eval mode. Attention runs PyTorch's math SDPA kernel unless ``fused_attention`` (forward-mode
    JVPs need the math kernel, as in :class:`~memgeo.models.pipeline.DiffusersPromptModel`).
    """

    prediction_type = "flow"

    def __init__(self, transformer, text_encoder, tokenizer, text_encoder_2, tokenizer_2, scheduler,
                 text_encoder_3=None, tokenizer_3=None, vae=None, *, max_sequence_length: int = 256,
                 fused_attention: bool = False) -> None:
        super().__init__()
        self.fused_attention = fused_attention
        self.transformer = transformer.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.text_encoder_2 = text_encoder_2.eval().requires_grad_(False)
        self.text_encoder_3 = text_encoder_3.eval().requires_grad_(False) if text_encoder_3 is not None else None
        self.vae = vae.eval().requires_grad_(False) if vae is not None else None
        self.tokenizer, self.tokenizer_2, self.tokenizer_3 = tokenizer, tokenizer_2, tokenizer_3
        if (text_encoder_3 is None) != (tokenizer_3 is None):
            raise MemgeoError("the pipeline has one of text_encoder_3 / tokenizer_3 but not the other",
                              "keep both T5 components or remove both")
        self.scheduler = scheduler
        self.schedule = FlowMatchSchedule(num_train_timesteps=int(scheduler.config.num_train_timesteps))
        cfg = transformer.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.data_shape = (int(cfg.in_channels), h, w)
        self.patch_size = int(cfg.patch_size)
        self.embed_dim = int(cfg.joint_attention_dim)
        self.pooled_dim = int(cfg.pooled_projection_dim)
        self.max_length = int(tokenizer.model_max_length)  # diffusers pads both CLIPs to tokenizer 1's length
        self.max_sequence_length = int(max_sequence_length)
        self.h1 = int(text_encoder.config.hidden_size)
        self.h2 = int(text_encoder_2.config.hidden_size)
        self.d3 = int(text_encoder_3.config.d_model) if text_encoder_3 is not None else 0
        if self.h1 + self.h2 > self.embed_dim or self.pooled_dim > self.embed_dim:
            raise MemgeoError(f"CLIP widths {self.h1}+{self.h2} or pooled width {self.pooled_dim} exceed the "
                              f"transformer's joint_attention_dim {self.embed_dim}", "check the pipeline's configs")
        if text_encoder_3 is not None and self.d3 != self.embed_dim:
            raise MemgeoError(f"T5 width {self.d3} != joint_attention_dim {self.embed_dim}", "check the configs")
        proj = int(text_encoder.config.projection_dim) + int(text_encoder_2.config.projection_dim)
        if proj != self.pooled_dim:
            raise MemgeoError(f"CLIP projections give {proj} pooled features, the transformer takes {self.pooled_dim}",
                              "check the pipeline's configs")
        self.token_width = max(self.h1 + self.h2, self.d3)
        self._id_map = self._clip_id_map()
        self._pad2 = int(tokenizer_2.pad_token_id)
        self._eos1 = int(tokenizer.eos_token_id)
        self._null: torch.Tensor | None = None

    def _clip_id_map(self) -> torch.Tensor:
        """Table id in tokenizer 1 -> id of the same token string in tokenizer 2, shape (V1,)."""
        v1, v2 = self.tokenizer.get_vocab(), self.tokenizer_2.get_vocab()
        missing = [tok for tok in v1 if tok not in v2]
        if missing:
            raise MemgeoError(f"the two CLIP tokenizers differ ({len(missing)} tokens of tokenizer/ are not in "
                              f"tokenizer_2/, e.g. {missing[0]!r})", "use a pipeline whose CLIP tokenizers share a BPE")
        table = torch.zeros(max(v1.values()) + 1, dtype=torch.long)
        for tok, i in v1.items():
            table[i] = v2[tok]
        return table

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    fused_attention: bool = False, max_sequence_length: int = 256) -> DiffusersFlowModel:
        """Load an SD3-style pipeline folder offline; ``max_sequence_length`` is T5's length (diffusers' 256)."""
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
        from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

        folder = Path(folder)
        _check_folder(folder)
        has_t5 = (folder / "text_encoder_3").is_dir()
        try:
            transformer = SD3Transformer2DModel.from_pretrained(folder / "transformer", local_files_only=True,
                                                                use_safetensors=True, torch_dtype=dtype)
            sched = FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
            te1 = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder", local_files_only=True,
                                                              use_safetensors=True, dtype=dtype)
            te2 = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", local_files_only=True,
                                                              use_safetensors=True, dtype=dtype)
            for name in ("tokenizer", "tokenizer_2"):
                check_tokenizer_folder(folder / name)
            tok1 = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
            tok2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True)
            check_tokenizer(tok1, folder / "tokenizer")
            te3 = (T5EncoderModel.from_pretrained(folder / "text_encoder_3", local_files_only=True,
                                                  use_safetensors=True, dtype=dtype)
                   if has_t5 else None)
            tok3 = AutoTokenizer.from_pretrained(folder / "tokenizer_3", local_files_only=True) if has_t5 else None
            vae = (AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True, use_safetensors=True,
                                                 torch_dtype=dtype)
                   if (folder / "vae").is_dir() else None)
        except MemgeoError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a third-party loader is a broken component
            raise MemgeoError(f"cannot load the flow pipeline in {folder} ({one_line(exc)})",
                              "check that it was saved with save_pretrained and is complete") from exc
        return cls(transformer, te1, tok1, te2, tok2, sched, te3, tok3, vae, max_sequence_length=max_sequence_length,
                   fused_attention=fused_attention).to(device=device, dtype=dtype)

    def _attention(self):
        """Context selecting the attention kernel (math SDPA unless ``fused_attention``)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return nullcontext() if self.fused_attention else sdpa_kernel([SDPBackend.MATH])

    # --- text path ------------------------------------------------------------------------------
    @property
    def clip_length(self) -> int:
        """L_clip, the number of CLIP token positions."""
        return self.max_length

    @property
    def t5_length(self) -> int:
        """L_t5: T5 rows of the condition (zeros without a T5 encoder)."""
        return self.max_sequence_length

    def tokenize(self, prompts: Sequence[str]) -> TokenBatch:
        """CLIP ids (B, L_clip), followed by T5 ids (B, L_t5) when the pipeline has T5.

        ``tokens`` lists the real CLIP tokens and then (with T5) the real T5 tokens of each prompt.
        """
        if isinstance(prompts, str):
            raise MemgeoError("tokenize got one string, expected a list of prompts", "wrap it: [prompt]")
        prompts = list(prompts)
        enc = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        parts = [(enc["input_ids"], enc["attention_mask"].bool(), self.tokenizer)]
        if self.tokenizer_3 is not None:
            enc3 = self.tokenizer_3(prompts, padding="max_length", max_length=self.max_sequence_length,
                                    truncation=True, add_special_tokens=True, return_tensors="pt")
            parts.append((enc3["input_ids"], enc3["attention_mask"].bool(), self.tokenizer_3))
        ids = torch.cat([p[0] for p in parts], dim=1)
        mask = torch.cat([p[1] for p in parts], dim=1)
        tokens = [sum((tok.convert_ids_to_tokens(i[b][m[b]].tolist()) for i, m, tok in parts), [])
                  for b in range(len(prompts))]
        return TokenBatch(ids=ids, mask=mask, tokens=tokens)

    def _clip2_ids(self, ids1: torch.Tensor) -> torch.Tensor:
        """Tokenizer 2's ids of the same prompts: mapped tokens, its own pad after the first end-of-text."""
        ids2 = self._id_map.to(ids1.device)[ids1]
        is_eos = ids1 == self._eos1
        after_eos = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
        return torch.where(after_eos, torch.full_like(ids2, self._pad2), ids2)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L, E_in): ``[e1 ; e2]`` at CLIP positions, T5's embedding at T5 positions, zero-padded."""
        lc = self.clip_length
        ids1 = ids[:, :lc]
        e1 = self.text_encoder.get_input_embeddings()
        e2 = self.text_encoder_2.get_input_embeddings()
        dev = e1.weight.device
        clip = torch.cat([e1(ids1.to(dev)), e2(self._clip2_ids(ids1).to(dev))], dim=-1)
        pad = self.token_width - clip.shape[-1]
        parts = [torch.nn.functional.pad(clip, (0, pad))]
        if self.text_encoder_3 is not None:
            t5 = self.text_encoder_3.get_input_embeddings()(ids[:, lc:].to(dev))
            parts.append(torch.nn.functional.pad(t5, (0, self.token_width - t5.shape[-1])))
        return torch.cat(parts, dim=1)

    def _clip_encode(self, encoder, emb: torch.Tensor, eos_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate hidden states (B, L, h) and projected end-of-text feature (B, proj) of one CLIP."""
        from transformers.masking_utils import create_causal_mask

        tm = getattr(encoder, "text_model", encoder)
        hidden = tm.embeddings(inputs_embeds=emb)
        causal = create_causal_mask(tm.config, hidden, None, None)  # config, embeds, no padding mask, no cache
        layers = tm.encoder.layers
        for layer in layers[:-1]:
            hidden = layer(hidden, causal, is_causal=True)
        penultimate = hidden
        last = tm.final_layer_norm(layers[-1](hidden, causal, is_causal=True))
        pooled = last[torch.arange(last.shape[0], device=last.device), eos_index.to(last.device)]
        return penultimate, encoder.text_projection(pooled)

    def encode_embeddings(self, token_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Condition (B, L_clip + L_t5 + 1, E) from token embeddings (B, L, E_in) and mask (B, L).

        CLIP attention is causal over all positions and T5 attends to padding too (as diffusers);
        ``mask`` locates each CLIP prompt's end-of-text token (the last real CLIP position),
        where the pooled feature is read.
        """
        lc = self.clip_length
        b = token_emb.shape[0]
        eos_index = mask[:, :lc].long().sum(dim=1) - 1
        clip = token_emb[:, :lc]
        with self._attention():
            p1, pool1 = self._clip_encode(self.text_encoder, clip[..., : self.h1], eos_index)
            p2, pool2 = self._clip_encode(self.text_encoder_2, clip[..., self.h1: self.h1 + self.h2], eos_index)
            clip_embeds = torch.nn.functional.pad(torch.cat([p1, p2], dim=-1), (0, self.embed_dim - self.h1 - self.h2))
            if self.text_encoder_3 is not None:
                t5_emb = token_emb[:, lc:, : self.d3]
                t5 = self.text_encoder_3(inputs_embeds=t5_emb).last_hidden_state
            else:
                t5 = clip_embeds.new_zeros(b, self.max_sequence_length, self.embed_dim)
        pooled = torch.cat([pool1, pool2], dim=-1)
        return self.pack(torch.cat([clip_embeds, t5.to(clip_embeds.dtype)], dim=1), pooled)

    def pack(self, prompt_embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """diffusers' (prompt_embeds (B, L, E), pooled (B, P)) -> memgeo's cond (B, L + 1, E)."""
        row = torch.nn.functional.pad(pooled, (0, self.embed_dim - pooled.shape[-1])).unsqueeze(1)
        return torch.cat([prompt_embeds, row.to(prompt_embeds.dtype)], dim=1)

    def unpack(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memgeo's cond (B, L + 1, E) -> (prompt_embeds (B, L, E), pooled_prompt_embeds (B, P))."""
        return cond[:, :-1], cond[:, -1, : self.pooled_dim]

    def null_embedding(self) -> torch.Tensor:
        if self._null is None:  # frozen weights: the empty prompt's condition is a constant
            with torch.no_grad():
                self._null = self.encode([""])
        return self._null

    # --- denoiser -------------------------------------------------------------------------------
    def native_output(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The transformer's velocity u = eps - x0 at x_fm = n(t) x, shape (B, *data_shape).

        Parameters
        ----------
        x : Tensor, shape (B, *data_shape)
            Point in VP coordinates.
        t : float or Tensor (B,)
            memgeo time = the flow sigma, in [0, 1].
        cond : Tensor (B, L + 1, E) or None
            Packed condition; ``None`` is the empty prompt.
        """
        self.check_input(x, cond)
        b = x.shape[0]
        tt = as_time(t, b, x)
        if cond is None:
            cond = self.null_embedding().to(dtype=x.dtype, device=x.device).expand(b, -1, -1)
        embeds, pooled = self.unpack(cond.to(x.dtype))
        x_fm = expand_like(self.schedule.norm(tt), x) * x
        with self._attention():
            return self.transformer(hidden_states=x_fm, timestep=self.schedule.timestep(tt),
                                    encoder_hidden_states=embeds, pooled_projections=pooled).sample

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float,
                cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) from one network call: eps = x_fm + (1 - t) u, x0 = x_fm - t u (finite at t = 1)."""
        u = self.native_output(x, t, cond)
        tt = expand_like(as_time(t, x.shape[0], x), x)
        x_fm = self.schedule.norm(tt) * x
        return x_fm + (1 - tt) * u, x_fm - tt * u

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise in VP coordinates, eps = n(t) x + (1 - t) u, shape (B, *data_shape)."""
        return self.denoise(x, t, cond)[0]

    def sampling_grid(self, steps: int) -> SamplingGrid:
        """The scheduler's own grid after ``set_timesteps(steps)`` (shift / dynamic shifting as the pipeline).

        ``ts`` = the scheduler's sigmas (steps + 1, float64, last 0.0), ``timesteps`` its timesteps,
        deterministic (eta = 0, the Euler step), no final denoise (the last sigma is 0).
        """
        if steps < 1:
            raise MemgeoError(f"steps={steps}", "use at least one sampling step")
        sched = copy.deepcopy(self.scheduler)
        kwargs = {}
        if sched.config.get("use_dynamic_shifting", False):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            seq_len = (self.data_shape[1] // self.patch_size) * (self.data_shape[2] // self.patch_size)
            kwargs["mu"] = calculate_shift(seq_len, sched.config.get("base_image_seq_len", 256),
                                           sched.config.get("max_image_seq_len", 4096),
                                           sched.config.get("base_shift", 0.5), sched.config.get("max_shift", 1.16))
        sched.set_timesteps(steps, device="cpu", **kwargs)
        return SamplingGrid(ts=sched.sigmas.to(torch.float64).clone(), timesteps=sched.timesteps.to(torch.float64),
                            eta=0.0, final_denoise=False, source=type(sched).__name__)

    # --- latent space ---------------------------------------------------------------------------
    def _require_vae(self):
        if self.vae is None:
            raise MemgeoError("this pipeline has no VAE: the model works on images directly", "skip decode/encode")
        return self.vae

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in about [-1, 1] from latents (B, *data_shape), undoing SD3's scale and shift."""
        vae = self._require_vae()
        shift = vae.config.shift_factor or 0.0
        return vae.decode(latents / vae.config.scaling_factor + shift).sample

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Latents (posterior mean, shifted and scaled as SD3) of images (B, C, H, W) -> (B, *data_shape)."""
        vae = self._require_vae()
        shift = vae.config.shift_factor or 0.0
        return (vae.encode(images).latent_dist.mean - shift) * vae.config.scaling_factor


# --- a tiny random pipeline for tests -------------------------------------------------------------
def _tiny_clip(folder: Path, tokenizer, hidden: int, projection: int, max_length: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    model = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=projection, max_position_embeddings=max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder)


def _tiny_t5_tokenizer(folder: Path):
    from transformers import T5TokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in TINY_WORDS] + [(c, -5.0) for c in letters]
    tok = T5TokenizerFast(vocab=vocab, extra_ids=0)
    tok.save_pretrained(folder)
    return tok


def build_tiny_flow_pipeline(folder: str | Path, seed: int = 0, latent: bool = False, with_t5: bool = False,
                             max_length: int = 16) -> Path:
    """Write a random-weight SD3-style pipeline folder (no network), loadable by diffusers and memgeo.

    Transformer: 2 layers, 2 heads of width 16, patch 2, on (1, 8, 8) images or, with ``latent``,
    (4, 8, 8) latents of a tiny ``AutoencoderKL`` for (1, 16, 16) images. Text: two 2-layer CLIP
    encoders (widths 32 and 48, projections 16 and 24) on :data:`~memgeo.models.pipeline.TINY_WORDS`
    BPE vocabularies (the second pads with ``"!"``, as SD3's bigG tokenizer), prompts padded to
    ``max_length``; with ``with_t5`` a 1-layer T5 encoder of width 96 = joint_attention_dim.
    Scheduler: ``FlowMatchEulerDiscreteScheduler(shift=3.0)`` as SD3. diffusers loads the folder with
    ``StableDiffusion3Pipeline.from_pretrained(folder, vae=None, text_encoder_3=None, tokenizer_3=None)``
    (name whichever of these components the folder lacks: they are not optional there).

    Returns
    -------
    Path
        The folder.
    """
    import diffusers
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTokenizer, T5Config, T5EncoderModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    embed_dim = 96
    _write_clip_vocab(folder / "tokenizer" / "src")
    tok1 = CLIPTokenizer.from_pretrained(folder / "tokenizer" / "src", local_files_only=True,
                                         model_max_length=max_length, pad_token="<|endoftext|>")
    tok1.save_pretrained(folder / "tokenizer")
    src2 = folder / "tokenizer_2" / "src"
    _write_clip_vocab(src2)
    vocab2 = json.loads((src2 / "vocab.json").read_text())
    vocab2["!"] = len(vocab2)
    atomic_write_text(src2 / "vocab.json", json.dumps(vocab2))
    tok2 = CLIPTokenizer.from_pretrained(src2, local_files_only=True, model_max_length=max_length, pad_token="!")
    tok2.save_pretrained(folder / "tokenizer_2")
    _tiny_clip(folder / "text_encoder", tok1, 32, 16, max_length)
    _tiny_clip(folder / "text_encoder_2", tok2, 48, 24, max_length)
    channels = 4 if latent else 1
    SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=channels, out_channels=channels, num_layers=2,
                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=embed_dim,
                          caption_projection_dim=32, pooled_projection_dim=40,
                          pos_embed_max_size=8).save_pretrained(folder / "transformer")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusion3Pipeline", "_diffusers_version": diffusers.__version__,
             "transformer": ["diffusers", "SD3Transformer2DModel"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer": ["transformers", "CLIPTokenizer"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "text_encoder_3": [None, None], "tokenizer_3": [None, None], "vae": [None, None],
             "image_encoder": [None, None], "feature_extractor": [None, None]}
    if with_t5:
        tok3 = _tiny_t5_tokenizer(folder / "tokenizer_3")
        T5EncoderModel(T5Config(vocab_size=len(tok3), d_model=embed_dim, d_kv=16, d_ff=64, num_layers=1, num_heads=4,
                                relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=tok3.pad_token_id,
                                eos_token_id=tok3.eos_token_id)).save_pretrained(folder / "text_encoder_3")
        index["text_encoder_3"] = ["transformers", "T5EncoderModel"]
        index["tokenizer_3"] = ["transformers", "T5TokenizerFast"]
    if latent:
        AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(16, 32),
                      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                      norm_num_groups=8, sample_size=16, scaling_factor=1.5, shift_factor=0.1
                      ).save_pretrained(folder / "vae")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    atomic_write_text(folder / "model_index.json", json.dumps(index, indent=2))
    return folder


__all__ = ["DiffusersFlowModel", "FlowMatchSchedule", "build_tiny_flow_pipeline", "is_flow_pipeline"]
