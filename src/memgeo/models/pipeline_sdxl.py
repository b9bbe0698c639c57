"""A Stable Diffusion XL pipeline folder behind memgeo's prompt-model interface.

The folder is what ``StableDiffusionXLPipeline.save_pretrained`` writes::

    model_index.json  unet/  text_encoder/  text_encoder_2/  tokenizer/  tokenizer_2/  scheduler/  [vae/]

It differs from Stable Diffusion 1.x/2.x (:class:`~memgeo.models.pipeline.DiffusersPromptModel`) in
its conditioning, which :class:`DiffusersSDXLModel` reproduces exactly as diffusers'
``StableDiffusionXLPipeline`` (``encode_prompt``, ``_get_add_time_ids``) computes it:

* two CLIP text encoders read the same prompt; the cross-attention condition is the concatenation
  of their *penultimate* hidden states on the feature axis, (B, L, E1 + E2) (768 + 1280 = 2048 in
  SDXL);
* a *pooled* embedding, (B, P), comes from ``text_encoder_2`` (a ``CLIPTextModelWithProjection``):
  the final-layer-normed hidden state at the end-of-text token, projected;
* six "time ids" ``(original_size, crops_coords_top_left, target_size)`` = ``(h, w, 0, 0, h, w)``
  with the pipeline's default size ``h = w = unet.sample_size * vae_scale_factor`` (1024 in SDXL);
  they do not depend on the prompt.

The UNet receives the pooled embedding and the time ids as ``added_cond_kwargs``.

Packed condition. memgeo passes a condition as ONE tensor, so ``cond`` has shape (B, L + 1, E),
E = E1 + E2: rows ``0 .. L-1`` are the token states and row ``L`` (the last) holds the pooled
embedding in its first P features, zero-padded to E (P <= E is checked on load).
:meth:`DiffusersSDXLModel.unpack` splits it again; :meth:`~DiffusersSDXLModel.eps` does so before
calling the UNet. Gradients and JVPs with respect to ``cond`` therefore cover the pooled embedding
too (the padding features are unused, their gradient is zero).

Null condition: what the pipeline uses for an empty negative prompt. With
``force_zeros_for_empty_prompt`` (in ``model_index.json``; the pipeline's default, true for SDXL
base) that is all zeros (tokens and pooled); otherwise the encoding of ``""``.

Text path. Both tokenizers use CLIP's BPE vocabulary (checked on load) and differ only in the
padding token (SDXL: ``<|endoftext|>`` and ``!``). :meth:`~DiffusersSDXLModel.tokenize` returns the
first tokenizer's ids; :meth:`~DiffusersSDXLModel.token_embeddings` maps the trailing padding to
the second tokenizer's pad id for the second encoder and returns both encoders' input embeddings
concatenated, (B, L, E1_in + E2_in); :meth:`~DiffusersSDXLModel.encode_embeddings` splits them,
runs both encoders and packs the result. The end-of-text position of the pooled embedding is the
last True of the padding mask.

:func:`build_tiny_sdxl_pipeline` writes a random-weight folder of this layout for tests (no network).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from memgeo.errors import MemgeoError
from memgeo.io import atomic_write_text
from memgeo.models.base import as_time, model_dtype
from memgeo.models.pipeline import DiffusersPromptModel, _write_clip_vocab, load_scheduler

SDXL_REQUIRED = ("unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
try:  # a corrupt weights file
    from safetensors import SafetensorError as _SafetensorError
except ImportError:  # pragma: no cover - older safetensors
    _SafetensorError = OSError
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError, _SafetensorError)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_sdxl_folder(folder: Path) -> dict:
    """The parsed ``model_index.json`` of an SDXL pipeline folder, after checking its components exist."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise MemgeoError(f"{folder} has no model_index.json", "point at a diffusers pipeline folder")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MemgeoError(f"cannot read {index_file} ({_one_line(exc)})", "re-save the pipeline") from exc
    if not isinstance(index, dict):
        raise MemgeoError(f"{index_file} is not a JSON object", "re-save the pipeline with save_pretrained")
    missing = [c for c in SDXL_REQUIRED if not (folder / c).is_dir()]
    if missing:
        raise MemgeoError(f"SDXL pipeline folder {folder} lacks {', '.join(missing)}",
                          "an SDXL pipeline needs unet/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/ "
                          "and scheduler/")
    empty = [c for c in ("tokenizer", "tokenizer_2")
             if not any((folder / c / name).is_file() for name in ("tokenizer.json", "vocab.json"))]
    if empty:
        raise MemgeoError(f"{', '.join(c + '/' for c in empty)} of {folder} holds no tokenizer files "
                          "(tokenizer.json or vocab.json)", "re-save the tokenizers with save_pretrained")
    return index


def _load_transformer(cls, path: Path, dtype: torch.dtype):
    """A transformers model loaded offline; missing or unexpected weights are an error, not a warning."""
    model, info = cls.from_pretrained(path, local_files_only=True, dtype=dtype, output_loading_info=True,
                                       use_safetensors=True)
    bad = list(info.get("missing_keys", [])) + list(info.get("mismatched_keys", []))
    if bad:
        raise MemgeoError(f"{path} does not hold a complete {cls.__name__} (missing or mismatched: "
                          f"{', '.join(str(k) for k in bad[:3])}{' ...' if len(bad) > 3 else ''})",
                          "re-save the component with save_pretrained")
    return model


def _clip_hidden(tm, config, token_emb: torch.Tensor, layers: int) -> list[torch.Tensor]:
    """Hidden states of a CLIP text transformer from token input embeddings.

    Returns ``[h_0, ..., h_layers]`` (each (B, L, E)): h_0 the embedding output (tokens plus
    positions), h_i the output of encoder layer i, as transformers' ``hidden_states``. Attention is
    causal and padding is not masked, as in the pipelines.
    """
    from transformers.masking_utils import create_causal_mask

    hidden = tm.embeddings(inputs_embeds=token_emb)
    causal = create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=None, cache=None)
    states = [hidden]
    for layer in tm.encoder.layers[:layers]:
        hidden = layer(hidden, causal, is_causal=True)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        states.append(hidden)
    return states


class DiffusersSDXLModel(DiffusersPromptModel):
    """A diffusers Stable Diffusion XL pipeline as a prompt model; ``cond`` packing in the module docstring.

    Build it with :meth:`from_folder`. Parameters are frozen, modules in eval mode; attention runs
    the math kernel unless ``fused_attention`` (see :class:`DiffusersPromptModel`).

    Parameters
    ----------
    unet : UNet2DConditionModel
        With ``addition_embed_type="text_time"``.
    text_encoder : CLIPTextModel
    text_encoder_2 : CLIPTextModelWithProjection
    tokenizer, tokenizer_2 : CLIPTokenizer
        Same vocabulary and ``model_max_length``; the pad tokens may differ.
    scheduler
        Any diffusers scheduler carrying the training betas (its ``alphas_cumprod`` and
        ``prediction_type`` are used).
    vae : AutoencoderKL, optional
    force_zeros_for_empty_prompt : bool
        Null condition = zeros (the pipeline's default) instead of the encoding of ``""``.
    original_size, target_size : (int, int), optional
        Size conditioning (height, width); default ``unet.sample_size * vae_scale_factor`` as the pipeline.
    crops_coords_top_left : (int, int)
    fused_attention : bool
    """

    def __init__(self, unet, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler, vae=None, *,
                 force_zeros_for_empty_prompt: bool = True, original_size: tuple[int, int] | None = None,
                 crops_coords_top_left: tuple[int, int] = (0, 0), target_size: tuple[int, int] | None = None,
                 fused_attention: bool = False) -> None:
        if unet.config.get("addition_embed_type") != "text_time":
            raise MemgeoError(f"the UNet has addition_embed_type={unet.config.get('addition_embed_type')!r}, "
                              "not 'text_time': this is not an SDXL pipeline",
                              "load Stable Diffusion 1.x/2.x folders with DiffusersPromptModel")
        super().__init__(unet, text_encoder, tokenizer, scheduler, vae, fused_attention=fused_attention)
        self.text_encoder_2 = text_encoder_2.eval().requires_grad_(False)
        self.tokenizer_2 = tokenizer_2
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        if int(tokenizer_2.model_max_length) != self.max_length:
            raise MemgeoError(f"the tokenizers pad to different lengths ({self.max_length} and "
                              f"{tokenizer_2.model_max_length})", "use an SDXL folder whose tokenizers agree")
        if tokenizer.get_vocab() != tokenizer_2.get_vocab():
            raise MemgeoError("tokenizer/ and tokenizer_2/ have different vocabularies",
                              "SDXL's two tokenizers share CLIP's vocabulary; check the folder")
        self.widths = (int(text_encoder.config.hidden_size), int(text_encoder_2.config.hidden_size))
        self.cond_width = sum(self.widths)
        self.pooled_dim = int(text_encoder_2.config.projection_dim)
        if int(unet.config.cross_attention_dim) != self.cond_width:
            raise MemgeoError(f"the UNet attends to {unet.config.cross_attention_dim} features but the text "
                              f"encoders give {self.widths[0]} + {self.widths[1]}", "check the folder's configs")
        if self.pooled_dim > self.cond_width:
            raise MemgeoError(f"pooled width {self.pooled_dim} exceeds the token width {self.cond_width}",
                              "this pipeline cannot be packed into one condition tensor")
        # Pad ids: tokenize() returns tokenizer's ids; encoder 2 sees tokenizer_2's padding.
        self.pad_id, self.pad_id_2 = int(tokenizer.pad_token_id), int(tokenizer_2.pad_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        # Size conditioning exactly as StableDiffusionXLPipeline.__call__ defaults it.
        scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        default = (self.data_shape[1] * scale, self.data_shape[2] * scale)
        self.original_size = tuple(original_size) if original_size is not None else default
        self.crops_coords_top_left = tuple(crops_coords_top_left)
        self.target_size = tuple(target_size) if target_size is not None else default
        ids = list(self.original_size + self.crops_coords_top_left + self.target_size)
        expected = unet.add_embedding.linear_1.in_features
        passed = int(unet.config.addition_time_embed_dim) * len(ids) + self.pooled_dim
        if passed != expected:
            raise MemgeoError(f"the UNet's added embedding takes {expected} features but the time ids and the "
                              f"pooled text give {passed}", "check unet addition_time_embed_dim and "
                              "text_encoder_2 projection_dim")
        self.register_buffer("add_time_ids", torch.tensor([ids], dtype=torch.float32), persistent=False)

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    fused_attention: bool = False) -> DiffusersSDXLModel:
        """Load the components of an SDXL pipeline folder (offline); ``fused_attention`` as in the class.

        Raises
        ------
        MemgeoError
            If a component is missing, unreadable or incomplete, or the UNet is not an SDXL one.
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        folder = Path(folder)
        index = _check_sdxl_folder(folder)
        step = "unet"
        try:
            unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True, use_safetensors=True,
                                                        torch_dtype=dtype)
            step = "text_encoder"
            text = _load_transformer(CLIPTextModel, folder / "text_encoder", dtype)
            step = "text_encoder_2"
            text_2 = _load_transformer(CLIPTextModelWithProjection, folder / "text_encoder_2", dtype)
            step = "tokenizer"
            tok = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
            step = "tokenizer_2"
            tok_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True)
            step = "scheduler"
            sched = load_scheduler(folder / "scheduler")  # its own class: the sampling grid is the pipeline's
            step = "vae"
            vae = (AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True, use_safetensors=True,
                                                 torch_dtype=dtype)
                   if (folder / "vae").is_dir() else None)
        except MemgeoError:
            raise
        except _LOAD_ERRORS as exc:
            raise MemgeoError(f"cannot load {step}/ of the SDXL pipeline in {folder} ({_one_line(exc)})",
                              "check that it was saved with save_pretrained and is complete") from exc
        zeros = index.get("force_zeros_for_empty_prompt", True)  # StableDiffusionXLPipeline's default
        return cls(unet, text, text_2, tok, tok_2, sched, vae, force_zeros_for_empty_prompt=bool(zeros),
                   fused_attention=fused_attention).to(device)

    # --- text path ------------------------------------------------------------------------------
    def ids_for_tokenizer_2(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) of ``tokenizer`` rewritten as ``tokenizer_2`` pads them, (B, L).

        The padding is the trailing run of ``tokenizer``'s pad id; when that pad id is the
        end-of-text token (SDXL), the first token of the run is the real end-of-text and is kept.
        """
        if self.pad_id == self.pad_id_2:
            return ids
        is_pad = ids == self.pad_id
        trailing = torch.cumprod(is_pad.flip(1).long(), dim=1).flip(1).bool()  # all pads from here to the end
        if self.pad_id == self.eos_id:
            first = torch.zeros_like(trailing)
            first[:, 1:] = trailing[:, :-1]
            trailing = trailing & first  # drop the run's first element: the end-of-text token
        return torch.where(trailing, torch.full_like(ids, self.pad_id_2), ids)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Both encoders' input embeddings of ``tokenizer`` ids, (B, L) -> (B, L, E1_in + E2_in)."""
        emb_1 = self._text_model().embeddings.token_embedding
        emb_2 = self.text_encoder_2.text_model.embeddings.token_embedding
        ids = ids.to(emb_1.weight.device)
        return torch.cat([emb_1(ids), emb_2(self.ids_for_tokenizer_2(ids))], dim=-1)

    def encode_embeddings(self, token_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The packed condition from token embeddings, (B, L, E1_in + E2_in) and (B, L) -> (B, L + 1, E).

        Rows 0..L-1: both encoders' penultimate hidden states, concatenated; row L: the pooled
        (projected end-of-text) embedding of encoder 2 in the first P features, zeros after.
        ``mask`` locates the end-of-text token (its last True); padding is encoded too, as in SDXL.
        """
        e_1, e_2 = token_emb.split(list(self.widths), dim=-1)
        tm_1, tm_2 = self._text_model(), self.text_encoder_2.text_model
        n_1, n_2 = len(tm_1.encoder.layers), len(tm_2.encoder.layers)
        with self._attention():
            h_1 = _clip_hidden(tm_1, self.text_encoder.config, e_1, n_1 - 1)[-1]  # only the penultimate is used
            states_2 = _clip_hidden(tm_2, self.text_encoder_2.config, e_2, n_2)
        length = mask.shape[1]
        eos = (length - 1) - mask.to(torch.long).flip(1).argmax(dim=1).to(token_emb.device)
        last = tm_2.final_layer_norm(states_2[-1])
        pooled = self.text_encoder_2.text_projection(last[torch.arange(last.shape[0], device=last.device), eos])
        tokens = torch.cat([h_1, states_2[-2]], dim=-1)
        return self.pack(tokens, pooled)

    def pack(self, tokens: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """One condition tensor from token states (B, L, E) and pooled embeddings (B, P) -> (B, L + 1, E)."""
        row = F.pad(pooled, (0, tokens.shape[-1] - pooled.shape[-1])).unsqueeze(1)
        return torch.cat([tokens, row.to(tokens.dtype)], dim=1)

    def unpack(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (B, L, E) and pooled embeddings (B, P) of a packed condition (B, L + 1, E)."""
        return cond[:, :-1], cond[:, -1, : self.pooled_dim]

    def null_embedding(self) -> torch.Tensor:
        """The pipeline's condition for an empty negative prompt, (1, L + 1, E)."""
        if self._null is None:
            if self.force_zeros_for_empty_prompt:
                param = next(self.unet.parameters())
                self._null = torch.zeros(1, self.max_length + 1, self.cond_width, dtype=model_dtype(self.unet),
                                         device=param.device)
            else:  # the weights are frozen, so the empty prompt's encoding is a constant
                with torch.no_grad():
                    self._null = self.encode([""])
        return self._null

    def time_ids(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """The size-conditioning ids (original_size, crops, target_size), (batch, 6) in ``like``'s dtype."""
        return self.add_time_ids.to(dtype=like.dtype, device=like.device).expand(batch, -1)

    # --- denoiser -------------------------------------------------------------------------------
    def _unet_output(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None) -> torch.Tensor:
        """The UNet's raw output for a packed condition, (B, *data_shape).

        The hook of :class:`DiffusersPromptModel`: its ``eps`` / ``native_output`` convert this output
        by ``prediction_type`` (epsilon, v_prediction, sample) exactly as for SD 1.x/2.x.
        """
        self.check_input(x, cond)
        b = x.shape[0]
        tt = as_time(t, b, x)
        if cond is None:
            cond = self.null_embedding().to(dtype=x.dtype, device=x.device).expand(b, -1, -1)
        tokens, pooled = self.unpack(cond.to(x.dtype))
        added = {"text_embeds": pooled, "time_ids": self.time_ids(b, x)}
        with self._attention():
            return self.unet(x, self.schedule.timestep(tt), encoder_hidden_states=tokens,
                             added_cond_kwargs=added).sample


# --- a tiny random SDXL pipeline for tests ------------------------------------------------------
def build_tiny_sdxl_pipeline(folder: str | Path, seed: int = 0, latent: bool = False, max_length: int = 16,
                             prediction_type: str = "epsilon", force_zeros_for_empty_prompt: bool = True) -> Path:
    """Write a random-weight SDXL pipeline folder (no network) that ``StableDiffusionXLPipeline`` loads.

    UNet on (1, 8, 8) images (``latent=False``) or (4, 8, 8) latents of a tiny ``AutoencoderKL``
    for (1, 16, 16) images, with SDXL's ``text_time`` added conditioning (time-id embedding width
    4). Text: 2-layer CLIP encoders of widths 32 (``CLIPTextModel``) and 48
    (``CLIPTextModelWithProjection``, projection 16), cross-attention width 80, sharing the
    letter-level BPE vocabulary of :func:`~memgeo.models.pipeline.build_tiny_pipeline` plus ``!``;
    ``tokenizer`` pads with ``<|endoftext|>`` and ``tokenizer_2`` with ``!`` as in SDXL. Scheduler:
    SDXL's ``EulerDiscreteScheduler`` config (1000 ``scaled_linear`` steps, ``steps_offset=1``,
    ``clip_sample=False``, ``set_alpha_to_one=False``), ``prediction_type`` as given.

    Returns
    -------
    Path
        The folder.
    """
    import diffusers
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    src = folder / "tokenizer" / "src"
    _write_clip_vocab(src)
    vocab = json.loads((src / "vocab.json").read_text())
    vocab.setdefault("!", len(vocab))  # tokenizer_2's pad token, as in SDXL
    atomic_write_text(src / "vocab.json", json.dumps(vocab))
    toks = []
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        tok = CLIPTokenizer.from_pretrained(src, local_files_only=True, model_max_length=max_length, pad_token=pad)
        tok.save_pretrained(folder / name)
        toks.append(tok)
    tok = toks[0]

    def clip_config(width: int, **extra) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width,
                              num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_length,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id, **extra)

    CLIPTextModel(clip_config(32)).save_pretrained(folder / "text_encoder")
    CLIPTextModelWithProjection(clip_config(48, projection_dim=16)).save_pretrained(folder / "text_encoder_2")
    channels = 4 if latent else 1
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=channels, out_channels=channels, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=80, attention_head_dim=8, norm_num_groups=8, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 * 4 + 16)
    unet.save_pretrained(folder / "unet")
    EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                           beta_end=0.012, steps_offset=1, timestep_spacing="leading",
                           prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    # SDXL's scheduler config also carries DDIM/PNDM keys (kept by diffusers, used by DDIMScheduler.from_config).
    sched_file = folder / "scheduler" / "scheduler_config.json"
    sched_config = json.loads(sched_file.read_text())
    sched_config.update(clip_sample=False, set_alpha_to_one=False, sample_max_value=1.0, skip_prk_steps=True)
    atomic_write_text(sched_file, json.dumps(sched_config, indent=2))
    index = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": diffusers.__version__,
             "force_zeros_for_empty_prompt": force_zeros_for_empty_prompt,
             "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"], "vae": [None, None],
             "image_encoder": [None, None], "feature_extractor": [None, None]}
    if latent:
        AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(16, 32),
                      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                      norm_num_groups=8, sample_size=16).save_pretrained(folder / "vae")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    atomic_write_text(folder / "model_index.json", json.dumps(index, indent=2))
    return folder


__all__ = ["DiffusersSDXLModel", "build_tiny_sdxl_pipeline"]
