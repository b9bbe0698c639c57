"""Prompt-conditioned diffusion models: the interface the prompt-level scores and mitigations use.

A prompt model is a :class:`DiffusionModel` whose condition is a batch of *encoded prompts*,
``cond`` of shape (B, L, E) (L token positions, E features), instead of (B,) class labels. The
text path is split in three differentiable stages so that token attribution (gradient with respect
to each token's input embedding) and prompt-embedding optimisation (on the encoder output) both
have a tensor to work on::

    prompts --tokenize--> TokenBatch(ids (B, L), mask (B, L))
            --token_embeddings--> (B, L, E_in)   # attribution happens here
            --encode_embeddings--> cond (B, L, E) # Wen's prompt optimisation happens here
    eps(x, t, cond)                               # cond=None means the empty prompt

Implementations: the trainable caption model of memgeo and the adapter for a diffusers
text-to-image pipeline folder. To add one, subclass :class:`PromptDiffusionModel` and implement
the four abstract methods. Load any of them with :func:`memgeo.models.load`.

This module defines the interface only and imports none of its implementations (they import it).
``memgeo.models.prompt.load_prompt_model``, the deprecated loader, is bound here by the package
``memgeo.models`` (it lives in :mod:`memgeo.models.loading`) so that old imports keep working.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from memgeo.errors import MemgeoError
from memgeo.models.base import DiffusionModel


@dataclass(frozen=True)
class TokenBatch:
    """Tokenized prompts.

    Attributes
    ----------
    ids : LongTensor, shape (B, L)
        Token ids, padded to a common length L.
    mask : BoolTensor, shape (B, L)
        True at real tokens (including special begin/end tokens), False at padding.
    tokens : list of list of str
        The readable token strings per prompt (padding excluded), for attribution displays.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    tokens: list[list[str]]


class PromptDiffusionModel(DiffusionModel):
    """Base class of diffusion models conditioned on encoded prompts, ``cond`` of shape (B, L, E)."""

    num_classes = None  # conditions are prompts, not labels

    @abstractmethod
    def tokenize(self, prompts: Sequence[str]) -> TokenBatch:
        """Tokenize a list of B prompts into a padded :class:`TokenBatch`."""
        raise NotImplementedError

    @abstractmethod
    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids, (B, L) -> (B, L, E_in); differentiable."""
        raise NotImplementedError

    @abstractmethod
    def encode_embeddings(self, token_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoded prompt (the condition), (B, L, E_in) and (B, L) -> (B, L, E); differentiable."""
        raise NotImplementedError

    @abstractmethod
    def null_embedding(self) -> torch.Tensor:
        """The empty prompt's condition, shape (1, L, E) (broadcast by :meth:`null_cond`)."""
        raise NotImplementedError

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Condition tensor (B, L, E) of a list of B prompts."""
        tb = self.tokenize(prompts)
        return self.encode_embeddings(self.token_embeddings(tb.ids), tb.mask)

    def null_cond(self, cond: torch.Tensor) -> torch.Tensor:
        """The empty prompt's condition broadcast to ``cond``'s batch, shape (B, L, E)."""
        null = self.null_embedding().to(dtype=cond.dtype, device=cond.device)
        return null.expand(cond.shape[0], *null.shape[1:])

    def check_cond(self, cond: torch.Tensor, batch: int) -> None:
        null = self.null_embedding()
        if cond.ndim != 3 or cond.shape[0] != batch or tuple(cond.shape[1:]) != tuple(null.shape[1:]):
            raise MemgeoError(f"prompt condition has shape {tuple(cond.shape)}, expected ({batch}, "
                              f"{', '.join(str(s) for s in null.shape[1:])})",
                              "encode the prompts with model.encode(prompts)")
        # No NaN check here: eps runs inside vmap(jacrev) for dense Jacobians, where a data-dependent
        # branch cannot run. Prompt embeddings come from encode(); inputs are checked where they enter.
