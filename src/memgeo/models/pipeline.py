"""A diffusers text-to-image pipeline folder behind memgeo's prompt-model interface.

The folder is what ``save_pretrained`` writes (a Stable Diffusion checkout has this layout)::

    model_index.json  unet/  text_encoder/  tokenizer/  scheduler/  [vae/]

Components are loaded one by one, offline (``local_files_only``): a ``UNet2DConditionModel``, a
CLIP text encoder and tokenizer, the scheduler's config (only its ``alphas_cumprod`` and
``prediction_type`` are used) and, if present, an ``AutoencoderKL``. With a VAE the model lives in
latent space: ``data_shape`` is the latent shape, :meth:`DiffusersPromptModel.decode` and
:meth:`~DiffusersPromptModel.encode_images` move between latents and images.

Time: the scheduler's discrete ``alphas_cumprod`` become a :class:`DiscreteSchedule` (step k at
t = (k + 1) / T, log alpha_bar linear in between) and ``eps(x, t, cond)`` calls the UNet at the
continuous timestep t T - 1, exact at the training steps. Sampling and every first-step score use
the scheduler's own grid (:func:`scheduler_grid`): "step k" is ``scheduler.set_timesteps(steps);
scheduler.timesteps[k]`` (steps_offset and timestep spacing honoured; SD 1.x, 50 DDIM steps: 981,
961, ..., 1). The condition is CLIP's last hidden state
(B, L, E) of the prompt padded to the tokenizer's ``model_max_length``; the empty prompt ``""`` is
the null condition, as in Stable Diffusion's classifier-free guidance.

:func:`build_tiny_pipeline` writes a random-weight pipeline of this layout for tests (no network).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from memgeo.errors import MemgeoError
from memgeo.io import atomic_write_text
from memgeo.models.base import as_time, expand_like
from memgeo.models.prompt import PromptDiffusionModel, TokenBatch
from memgeo.models.sampling import SamplingGrid
from memgeo.models.schedule import DiscreteSchedule

REQUIRED = ("unet", "text_encoder", "tokenizer", "scheduler")
#: Scheduler classes whose own update memgeo's sampler core reproduces (others: DDIM on their timesteps).
EXACT_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler")


def load_scheduler(folder: Path):
    """The pipeline's scheduler as configured (its own class), offline."""
    import diffusers

    config = diffusers.DDPMScheduler.load_config(folder)
    cls = getattr(diffusers, str(config.get("_class_name", "DDPMScheduler")), None)
    if cls is None or not hasattr(cls, "from_config"):
        cls = diffusers.DDIMScheduler
    return cls.from_config(config)


def scheduler_grid(scheduler, schedule: DiscreteSchedule, steps: int) -> SamplingGrid:
    """The grid a diffusers scheduler visits in ``steps`` steps, in memgeo time (for VP schedulers).

    ``set_timesteps(steps)`` is called on a copy. DDIM: step k evaluates at ``timesteps[k]`` and moves to
    ``timesteps[k] - T // steps`` (the scheduler's own rule; the final alpha when that is negative:
    1 with ``set_alpha_to_one``, else ``alphas_cumprod[0]``). DDPM: ancestral (eta = 1) to
    ``previous_timestep``. Euler (deterministic, ``s_churn = 0``): the scheduler's sigmas, the last 0.
    Other classes (PNDM, DPM-Solver, ...) are multistep methods memgeo does not reproduce: their
    timesteps are used with DDIM updates, and ``source`` says so.

    Returns
    -------
    SamplingGrid
        ``ts`` (steps + 1,) with the update targets in ``ts_next``; ``final_denoise=False``.
    """
    import diffusers

    name = type(scheduler).__name__
    sched = type(scheduler).from_config(scheduler.config)
    if name not in EXACT_SCHEDULERS:
        sched = diffusers.DDIMScheduler.from_config(scheduler.config)
    sched.set_timesteps(steps)
    n_train = schedule.num_train_timesteps
    timesteps = sched.timesteps.detach().to(torch.float64).cpu()
    if len(timesteps) != steps:
        raise MemgeoError(f"{name} gives {len(timesteps)} timesteps for {steps} steps",
                          "use a scheduler with one network evaluation per step (DDIM, DDPM, Euler)")

    def t_of(tau: float) -> float:
        return (tau + 1.0) / n_train if tau >= 0 else 0.0

    eta = 0.0
    if isinstance(sched, diffusers.EulerDiscreteScheduler):
        sig_ve = sched.sigmas.detach().to(torch.float64).cpu().tolist()

        def t_of_sigma(k: int) -> float:  # exact at integer timesteps, else by the schedule's inverse
            if sig_ve[k] == 0.0:
                return 0.0
            if k < steps and abs(float(timesteps[k]) - round(float(timesteps[k]))) < 1e-6:
                return t_of(float(round(float(timesteps[k]))))
            return schedule.t_from_sigma(sig_ve[k] / (1.0 + sig_ve[k] ** 2) ** 0.5)

        ts = torch.tensor([t_of_sigma(k) for k in range(steps + 1)], dtype=torch.float64)
        ts_next = ts[1:]
    else:
        ts_now = [t_of(float(tau)) for tau in timesteps]
        if isinstance(sched, diffusers.DDPMScheduler):
            eta = 1.0
            prev = [float(sched.previous_timestep(int(tau))) for tau in timesteps]
            nxt = [t_of(p) for p in prev]
        else:  # DDIM's rule: prev = t - T // steps, the final alpha when negative
            ratio = n_train // steps
            final = 0.0 if bool(sched.config.get("set_alpha_to_one", True)) else t_of(0.0)
            nxt = [t_of(float(tau) - ratio) if float(tau) - ratio >= 0 else final for tau in timesteps]
        ts = torch.tensor(ts_now + [nxt[-1]], dtype=torch.float64)
        ts_next = torch.tensor(nxt, dtype=torch.float64)
    clip = None
    if bool(sched.config.get("clip_sample", False)):
        r = float(sched.config.get("clip_sample_range", 1.0))
        clip = (-r, r)
    source = name if name in EXACT_SCHEDULERS else f"DDIMScheduler on {name}'s timesteps"
    return SamplingGrid(ts=ts, ts_next=ts_next, timesteps=timesteps, eta=eta, final_denoise=False, source=source,
                        clip=clip)


def one_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type when empty), at most ``limit`` characters."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
#: A tokenizer that pads to more tokens than this is misconfigured (transformers' "no limit" is 1e30).
MAX_TOKENIZER_LENGTH = 100_000


def check_tokenizer_folder(folder: Path) -> None:
    """Raise :class:`MemgeoError` when a tokenizer folder holds no vocabulary file."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise MemgeoError(f"tokenizer folder {folder} holds no vocabulary ({', '.join(TOKENIZER_FILES)})",
                          "restore the tokenizer (save_pretrained writes it)")


def check_tokenizer(tok, folder: Path) -> None:
    """Raise :class:`MemgeoError` when a loaded tokenizer has no usable length or vocabulary."""
    length = getattr(tok, "model_max_length", None)
    if not isinstance(length, int) or not 0 < length <= MAX_TOKENIZER_LENGTH:
        raise MemgeoError(f"tokenizer in {folder} has no usable model_max_length ({length!r})",
                          "set model_max_length in its tokenizer_config.json (77 for CLIP)")
    if len(tok) < 3:
        raise MemgeoError(f"tokenizer in {folder} has an empty vocabulary", "restore the tokenizer files")


def _check_folder(folder: Path) -> None:
    if not (folder / "model_index.json").is_file():
        raise MemgeoError(f"{folder} has no model_index.json", "point at a diffusers pipeline folder")
    missing = [c for c in REQUIRED if not (folder / c).is_dir()]
    if missing:
        raise MemgeoError(f"pipeline folder {folder} lacks {', '.join(missing)}",
                          "a text-to-image pipeline needs unet/, text_encoder/, tokenizer/ and scheduler/")


class DiffusersPromptModel(PromptDiffusionModel):
    """A diffusers text-to-image pipeline (UNet2DConditionModel + CLIP text encoder) as a prompt model.

    Build it with :meth:`from_folder`. Parameters are frozen and the modules in eval mode.

    Attention. By default every attention call (UNet and text encoder) runs PyTorch's *math*
    scaled-dot-product kernel, which is made of differentiable primitives: forward-mode JVPs and
    double backward (the VJP fallback for J v, gradients of scores w.r.t. tokens) all work. The
    fused kernels are faster but, on CPU, support only first-order reverse mode (``J^T w``);
    ``fused_attention=True`` selects them for plain sampling.
    """

    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae=None, *, fused_attention: bool = False) -> None:
        super().__init__()
        self.fused_attention = fused_attention
        self.unet = unet.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False) if vae is not None else None
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.schedule = DiscreteSchedule.from_scheduler(scheduler)
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise MemgeoError(f"scheduler prediction_type {self.prediction_type!r} is not supported",
                              "use an epsilon, v_prediction or sample model")
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.data_shape = (unet.config.in_channels, h, w)
        self.max_length = int(tokenizer.model_max_length)
        self._null: torch.Tensor | None = None

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    fused_attention: bool = False) -> DiffusersPromptModel:
        """Load the components of a pipeline folder (offline); ``fused_attention`` as in the class."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = Path(folder)
        _check_folder(folder)
        step = "unet"
        try:  # weights only from safetensors files: a pickle .bin is refused, never unpickled
            unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True, use_safetensors=True,
                                                        torch_dtype=dtype)
            step = "text_encoder"
            text = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True, use_safetensors=True,
                                                 dtype=dtype)
            step = "tokenizer"
            check_tokenizer_folder(folder / "tokenizer")
            tok = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
            check_tokenizer(tok, folder / "tokenizer")
            step = "scheduler"
            sched = load_scheduler(folder / "scheduler")
            step = "vae"
            vae = (AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True, use_safetensors=True,
                                                 torch_dtype=dtype) if (folder / "vae").is_dir() else None)
            step = "scheduler"
            return cls(unet, text, tok, sched, vae, fused_attention=fused_attention).to(device)
        except MemgeoError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a third-party loader is a broken component
            pickled = sorted(f.name for f in (folder / step).glob("*.bin")) if (folder / step).is_dir() else []
            if pickled and not any((folder / step).glob("*.safetensors")):
                raise MemgeoError(f"{step}/ of the pipeline in {folder} holds pickle weights ({', '.join(pickled)}) "
                                  "and no .safetensors: memgeo never unpickles weights (a pickle can run code)",
                                  f"convert them: load {step}/ with diffusers or transformers and save_pretrained it "
                                  "(safetensors is the default)") from exc
            raise MemgeoError(f"cannot load {step}/ of the pipeline in {folder} ({one_line(exc)})",
                              f"restore {step}/ (save_pretrained writes it, with weights as .safetensors)") from exc

    def sampling_grid(self, steps: int) -> SamplingGrid:
        """The scheduler's own grid for ``steps`` steps (:func:`scheduler_grid`)."""
        return scheduler_grid(self.scheduler, self.schedule, steps)

    def native_output(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """The UNet's raw output (eps, v or x0 as the scheduler's ``prediction_type`` says)."""
        return self._unet_output(x, t, cond)

    # --- text path ------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> TokenBatch:
        if isinstance(prompts, str):
            raise MemgeoError("tokenize got one string, expected a list of prompts", "wrap it: [prompt]")
        enc = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"].bool()
        tokens = [self.tokenizer.convert_ids_to_tokens(row[m].tolist()) for row, m in zip(ids, mask)]
        return TokenBatch(ids=ids, mask=mask, tokens=tokens)

    def _text_model(self):
        # transformers 4.x nests the transformer in .text_model; 5.x puts its parts on the model itself.
        return getattr(self.text_encoder, "text_model", self.text_encoder)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        tm = self._text_model()
        return tm.embeddings.token_embedding(ids.to(tm.embeddings.token_embedding.weight.device))

    def encode_embeddings(self, token_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """CLIP's last hidden state from token embeddings (B, L, E_in) -> (B, L, E).

        As in Stable Diffusion, attention is causal and the padding mask is not applied (padding
        tokens are encoded too and the UNet attends to all L positions); ``mask`` is accepted for
        the interface.
        """
        from transformers.masking_utils import create_causal_mask

        tm = self._text_model()
        hidden = tm.embeddings(inputs_embeds=token_emb)
        causal = create_causal_mask(config=self.text_encoder.config, inputs_embeds=hidden, attention_mask=None,
                                    past_key_values=None)
        with self._attention():
            out = tm.encoder(inputs_embeds=hidden, attention_mask=causal, is_causal=True)
        return tm.final_layer_norm(out.last_hidden_state)

    def _attention(self):
        """Context selecting the attention kernel (see the class docstring)."""
        from contextlib import nullcontext

        from torch.nn.attention import SDPBackend, sdpa_kernel

        return nullcontext() if self.fused_attention else sdpa_kernel([SDPBackend.MATH])

    def null_embedding(self) -> torch.Tensor:
        if self._null is None:  # the weights are frozen, so the empty prompt's encoding is a constant
            with torch.no_grad():
                self._null = self.encode([""])
        return self._null

    # --- denoiser -------------------------------------------------------------------------------
    def _unet_output(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None) -> torch.Tensor:
        self.check_input(x, cond)
        b = x.shape[0]
        tt = as_time(t, b, x)
        if cond is None:
            cond = self.null_embedding().to(dtype=x.dtype, device=x.device).expand(b, -1, -1)
        with self._attention():
            return self.unet(x, self.schedule.timestep(tt), encoder_hidden_states=cond.to(x.dtype)).sample

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) from one UNet call, each converted directly from the raw output (no round trip)."""
        out = self._unet_output(x, t, cond)
        tt = as_time(t, x.shape[0], x)
        psi = expand_like(self.schedule.sqrt_alpha_bar(tt), x)
        sigma = expand_like(self.schedule.sigma(tt), x)
        if self.prediction_type == "v_prediction":
            return psi * out + sigma * x, psi * x - sigma * out
        if self.prediction_type == "sample":
            return (x - psi * out) / sigma, out
        return out, (x - sigma * out) / psi

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        out = self._unet_output(x, t, cond)
        tt = as_time(t, x.shape[0], x)
        if self.prediction_type == "epsilon":
            return out
        psi = expand_like(self.schedule.sqrt_alpha_bar(tt), x)
        sigma = expand_like(self.schedule.sigma(tt), x)
        if self.prediction_type == "v_prediction":  # v = psi eps - sigma x0  =>  eps = psi v + sigma x_t
            return psi * out + sigma * x
        return (x - psi * out) / sigma  # "sample": the network predicts x0

    # --- latent space ---------------------------------------------------------------------------
    def _require_vae(self):
        if self.vae is None:
            raise MemgeoError("this pipeline has no VAE: the model works on images directly", "skip decode/encode")
        return self.vae

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images from latents, (B, *data_shape) -> (B, C, H, W) in about [-1, 1]."""
        vae = self._require_vae()
        return vae.decode(latents / vae.config.scaling_factor).sample

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Latents (the posterior mean, scaled) of images (B, C, H, W) in [-1, 1] -> (B, *data_shape)."""
        vae = self._require_vae()
        return vae.encode(images).latent_dist.mean * vae.config.scaling_factor


# --- a tiny random pipeline for tests -------------------------------------------------------------
TINY_WORDS = ("a", "photo", "of", "cat", "dog", "digit", "three", "seven", "the", "red", "blue", "mat", "on")


def _write_clip_vocab(folder: Path) -> None:
    """A small byte-level-BPE vocabulary: every letter and digit (alone and word-final) plus whole words."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in TINY_WORDS:  # merge left to right: "c a" -> "ca", "ca t</w>" -> "cat</w>"
        if len(word) < 2:
            continue
        left = word[0]
        for i, ch in enumerate(word[1:], 1):
            right = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append(f"{left} {right}")
            left = left + right
            if left not in tokens:
                tokens.append(left)
    merges = list(dict.fromkeys(merges))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "vocab.json", json.dumps({tok: i for i, tok in enumerate(tokens)}))
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")


def build_tiny_pipeline(folder: str | Path, seed: int = 0, latent: bool = False, max_length: int = 16,
                        scheduler=None) -> Path:
    """Write a random-weight text-to-image pipeline folder (no network), loadable by ``memgeo.models.load``.

    Pixel space (``latent=False``): UNet on (1, 8, 8) images. Latent space: a tiny ``AutoencoderKL``
    maps (1, 16, 16) images to (4, 8, 8) latents. Text: a 2-layer CLIP encoder (width 32) with a
    letter-level BPE tokenizer (whole-word tokens for :data:`TINY_WORDS`), prompts padded to
    ``max_length``. Scheduler: Stable Diffusion's 1000-step ``scaled_linear`` DDPM schedule, or the
    diffusers scheduler instance given as ``scheduler`` (e.g. SD 1.4's DDIM with ``steps_offset=1``).

    Returns
    -------
    Path
        The folder.
    """
    import diffusers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok_dir = folder / "tokenizer"
    _write_clip_vocab(tok_dir / "src")
    # from_pretrained on the two BPE files works across transformers 4.x (slow) and 5.x (fast) tokenizers.
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir / "src", local_files_only=True, model_max_length=max_length,
                                              pad_token="<|endoftext|>")
    tokenizer.save_pretrained(tok_dir)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    text.save_pretrained(folder / "text_encoder")
    channels = 4 if latent else 1
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=channels, out_channels=channels, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    unet.save_pretrained(folder / "unet")
    if scheduler is None:
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012)
    scheduler.save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", type(scheduler).__name__],
             "vae": [None, None], "safety_checker": [None, None], "feature_extractor": [None, None]}
    if latent:
        AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4, block_out_channels=(16, 32),
                      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                      norm_num_groups=8, sample_size=16).save_pretrained(folder / "vae")
        index["vae"] = ["diffusers", "AutoencoderKL"]
    atomic_write_text(folder / "model_index.json", json.dumps(index, indent=2))
    return folder


__all__ = ["TINY_WORDS", "DiffusersPromptModel", "build_tiny_pipeline"]
