"""A trainable caption-conditional diffusion model (the memorized-caption benchmark's model).

Text path (all differentiable, per sample, no batch coupling)::

    prompt --words--> [<bos>, w_1, ..., w_n, <eos>, <pad>, ...]      ids (B, L), fixed L = max_length
           --token + position embedding--> (B, L, E)                  token_embeddings
           --pre-norm self-attention blocks, pads zeroed--> (B, L, E) encode_embeddings = the condition

Denoiser: the residual MLP of :mod:`memgeo.models.nets` on the flattened image, with the time
embedding plus a projection of the mean of the encoded prompt added in every block. The empty
prompt (``cond=None``) is ``[<bos>, <eos>]``: condition dropout during training replaces captions by
it, so classifier-free guidance queries a trained unconditional model.

Words are lower-cased with punctuation removed; words outside the training vocabulary map to
``<unk>``; prompts longer than ``max_length - 2`` words are truncated (as CLIP truncates at 77).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from memgeo.errors import MemgeoError, check_finite
from memgeo.io import atomic_write_text
from memgeo.models.base import DiffusionModel, as_time
from memgeo.models.checkpoint import (
    MODEL_FILE,
    load_configured_module,
    pydantic_config_parser,
    read_metadata,
    save_tensors,
)
from memgeo.models.nets import ResBlock, timestep_embedding
from memgeo.models.prompt import PromptDiffusionModel, TokenBatch
from memgeo.models.schedule import VPSchedule
from memgeo.models.training import TrainConfig, TrainResult, fit

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
CONFIG_KEY = "caption_model_config"


def caption_words(prompt: str) -> list[str]:
    """Lower-case words of a prompt with punctuation stripped ("The 3, drawn!" -> ["the", "3", "drawn"])."""
    return re.findall(r"[a-z0-9]+", prompt.lower())


def build_vocab(captions: Sequence[str]) -> tuple[str, ...]:
    """Special tokens followed by every distinct caption word, sorted (deterministic)."""
    words = sorted({w for c in captions for w in caption_words(c)})
    return SPECIAL_TOKENS + tuple(words)


class CaptionModelConfig(BaseModel):
    """Hyper-parameters and vocabulary of :class:`CaptionDiffusionModel` (saved with the checkpoint)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: Literal["caption"] = "caption"
    data_shape: tuple[int, ...]
    vocab: tuple[str, ...] = Field(..., min_length=len(SPECIAL_TOKENS) + 1)
    max_length: int = Field(16, ge=3)
    embed_dim: int = Field(64, ge=8)
    heads: int = Field(4, ge=1)
    encoder_layers: int = Field(1, ge=0)
    hidden: int = Field(256, ge=8)
    depth: int = Field(3, ge=1)
    time_dim: int = Field(64, ge=8)
    schedule: VPSchedule = VPSchedule()


class _AttentionBlock(nn.Module):
    """Pre-norm self-attention + MLP over the token axis; padded keys are masked out.

    Written out (rather than nn.TransformerEncoderLayer) so no fused fast path runs: torch.func
    transforms and double backward work everywhere.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise MemgeoError(f"embed_dim={dim} is not divisible by heads={heads}", "pick heads dividing embed_dim")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, dim = h.shape
        q, k, v = self.qkv(self.norm1(h)).reshape(b, length, 3, self.heads, dim // self.heads).unbind(2)
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / (dim // self.heads) ** 0.5
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        att = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v).reshape(b, length, dim)
        h = h + self.proj(att)
        return h + self.mlp(self.norm2(h))


class CaptionDiffusionModel(PromptDiffusionModel):
    """Caption-conditional noise predictor; ``eps(x, t, cond)`` with cond (B, L, E) from :meth:`encode`.

    Parameters
    ----------
    config : CaptionModelConfig
    """

    def __init__(self, config: CaptionModelConfig) -> None:
        super().__init__()
        self.config = config
        self.schedule = config.schedule
        self.data_shape = tuple(config.data_shape)
        self.vocab = tuple(config.vocab)
        if self.vocab[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise MemgeoError(f"vocabulary must start with {SPECIAL_TOKENS}", "build it with build_vocab(captions)")
        self.word_index = {w: i for i, w in enumerate(self.vocab)}
        e, h, length = config.embed_dim, config.hidden, config.max_length
        self.tok_emb = nn.Embedding(len(self.vocab), e)
        self.pos_emb = nn.Parameter(torch.randn(length, e) * 0.02)
        self.encoder = nn.ModuleList(_AttentionBlock(e, config.heads) for _ in range(config.encoder_layers))
        self.enc_norm = nn.LayerNorm(e)
        self.cond_mlp = nn.Sequential(nn.Linear(e, h), nn.SiLU(), nn.Linear(h, h))
        self.inp = nn.Linear(self.dim, h)
        self.time_mlp = nn.Sequential(nn.Linear(config.time_dim, h), nn.SiLU(), nn.Linear(h, h))
        self.blocks = nn.ModuleList(ResBlock(h) for _ in range(config.depth))
        self.out_norm = nn.LayerNorm(h)
        self.out = nn.Linear(h, self.dim)

    # --- text path ------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> TokenBatch:
        if isinstance(prompts, str):
            raise MemgeoError("tokenize got one string, expected a list of prompts", "wrap it: [prompt]")
        length = self.config.max_length
        unk = self.word_index[UNK]
        ids = torch.zeros(len(prompts), length, dtype=torch.long)  # PAD = 0
        tokens: list[list[str]] = []
        for row, prompt in enumerate(prompts):
            words = caption_words(prompt)[: length - 2]
            seq = [self.word_index[BOS]] + [self.word_index.get(w, unk) for w in words] + [self.word_index[EOS]]
            ids[row, : len(seq)] = torch.tensor(seq)
            tokens.append([BOS] + [w if w in self.word_index else UNK for w in words] + [EOS])
        return TokenBatch(ids=ids, mask=ids != self.word_index[PAD], tokens=tokens)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tok_emb(ids.to(self.pos_emb.device))

    def encode_embeddings(self, token_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.to(device=token_emb.device, dtype=torch.bool)
        h = token_emb + self.pos_emb
        for block in self.encoder:
            h = block(h, mask)
        # Zero the padding so a prompt's condition depends only on its real tokens.
        return self.enc_norm(h) * mask[..., None].to(h.dtype)

    def null_embedding(self) -> torch.Tensor:
        # Frozen weights (a loaded model): the empty prompt's encoding is a constant, computed once
        # per version of the parameters. While training, it is recomputed so gradients reach it.
        params = list(self.parameters())
        if any(p.requires_grad for p in params):
            return self.encode([""])
        key = tuple(p._version for p in params) + (params[0].device, params[0].dtype)
        if getattr(self, "_null_key", None) != key:
            with torch.no_grad():
                self._null_cache = self.encode([""])
            self._null_key = key
        return self._null_cache

    def check_cond(self, cond: torch.Tensor, batch: int) -> None:
        # Same check as the base class, from the config instead of an encoder pass.
        want = (batch, self.config.max_length, self.config.embed_dim)
        if tuple(cond.shape) != want:
            raise MemgeoError(f"prompt condition has shape {tuple(cond.shape)}, expected {want}",
                              "encode the prompts with model.encode(prompts)")
        # No NaN check: eps runs inside vmap(jacrev) for dense Jacobians (sharpness, exact FLIPD, audit),
        # where a data-dependent branch cannot run; prompt embeddings come from encode().

    # --- denoiser -------------------------------------------------------------------------------
    def eps(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x, cond)
        b = x.shape[0]
        if cond is None:
            cond = self.null_cond(torch.empty(b, 1, 1, dtype=x.dtype, device=x.device))
        emb = self.time_mlp(timestep_embedding(as_time(t, b, x), self.config.time_dim))
        emb = emb + self.cond_mlp(cond.to(x.dtype).mean(dim=1))
        h = self.inp(x.reshape(b, -1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.out_norm(h))).reshape(x.shape)


# --- checkpoints --------------------------------------------------------------------------------
def save_caption_model(model: CaptionDiffusionModel, folder: str | Path,
                       extra_metadata: dict[str, str] | None = None) -> Path:
    """Atomically write ``model.safetensors`` (weights + config incl. vocabulary) and ``vocab.txt``."""
    folder = Path(folder)
    path = folder / MODEL_FILE
    save_tensors(path, dict(model.state_dict()), {**(extra_metadata or {}),
                                                   CONFIG_KEY: model.config.model_dump_json()})
    atomic_write_text(folder / "vocab.txt", "\n".join(model.vocab) + "\n")  # for reading only
    return path


def is_caption_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds a caption-model ``model.safetensors``."""
    path = Path(folder) / MODEL_FILE
    return path.is_file() and CONFIG_KEY in read_metadata(path)


def load_caption_model(folder: str | Path, device: str | torch.device = "cpu") -> CaptionDiffusionModel:
    """Load a caption model checkpoint (EMA weights) in eval mode without parameter gradients."""
    model = load_configured_module(folder, MODEL_FILE, CONFIG_KEY,
                                   pydantic_config_parser(CaptionModelConfig, "caption model"),
                                   CaptionDiffusionModel,
                                   ("is not a caption-model checkpoint", "train one with train_caption_model"))
    return model.to(device)


# --- training -----------------------------------------------------------------------------------
def train_caption_model(config: CaptionModelConfig, train_config: TrainConfig, data: torch.Tensor,
                        captions: Sequence[str], out_dir: str | Path | None = None, *, progress: bool | str = True,
                        resume: bool = True, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Train a caption model by denoising score matching with caption dropout.

    Parameters
    ----------
    config : CaptionModelConfig
        Usually ``CaptionModelConfig(data_shape=..., vocab=build_vocab(captions), ...)``.
    train_config : TrainConfig
        ``cond_drop`` is the probability of replacing a caption by the empty prompt.
    data : Tensor, shape (N, *data_shape)
    captions : list of N str
        One caption per training row (duplicated rows repeat their caption).
    out_dir : path, optional
        Checkpoint folder (``model.safetensors`` loadable by :func:`load_caption_model`,
        ``state.safetensors`` for resume, ``train_log.csv``); resumes like :func:`~memgeo.models.train`.
    on_log : callable(dict), optional
        Called with every loss-log entry (step, loss, seconds).

    Returns
    -------
    TrainResult
        ``model`` is the EMA :class:`CaptionDiffusionModel` in eval mode.
    """
    if tuple(data.shape[1:]) != tuple(config.data_shape):
        raise MemgeoError(f"data has per-sample shape {tuple(data.shape[1:])} but the config says "
                          f"{tuple(config.data_shape)}", "make the config match the data")
    check_finite(data, "training data")
    if len(captions) != data.shape[0]:
        raise MemgeoError(f"{len(captions)} captions for {data.shape[0]} images", "give one caption per image")
    torch.manual_seed(train_config.seed)
    net = CaptionDiffusionModel(config)
    batch = net.tokenize(list(captions))
    empty = net.tokenize([""])

    def caption_cond(module: DiffusionModel, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        ids, mask = batch.ids[idx].clone(), batch.mask[idx].clone()
        drop = torch.rand(idx.shape[0], generator=gen) < train_config.cond_drop
        ids[drop], mask[drop] = empty.ids[0], empty.mask[0]
        return module.encode_embeddings(module.token_embeddings(ids), mask)

    return fit(net, train_config, data, caption_cond, out_dir, meta={CONFIG_KEY: config.model_dump_json()},
               config_keys=(CONFIG_KEY,), save_inference=save_caption_model,
               progress="training caption model" if progress is True else progress, resume=resume,
               on_log=on_log)


__all__ = [
    "SPECIAL_TOKENS",
    "CaptionDiffusionModel",
    "CaptionModelConfig",
    "build_vocab",
    "caption_words",
    "is_caption_checkpoint",
    "load_caption_model",
    "save_caption_model",
    "train_caption_model",
]
