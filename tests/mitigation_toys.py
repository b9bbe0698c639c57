"""An exact prompt-conditioned diffusion model for mitigation tests (no training).

Data: K classes, each a Gaussian blob N(mu_k, s^2 I) in D dimensions (generic images: sampling one
does not reproduce any particular training point), plus M "memorized" atoms x_j (training images
duplicated many times; belonging to class k_j). A prompt is a sequence of words: ``"class3"`` (generic)
or ``"class3 mem1"`` (the unique caption of atom 1). Each word embeds as a scaled one-hot in
R^E, E = K + M, and the encoded prompt (the condition, (B, L, E)) is the masked token embedding; the
model pools it by summing over L.

The prior weight of component c (K blobs, then M atoms) under condition e is
pi_c exp(F_c . sum_l e_l) with F_c = beta at the class slot and gamma at the atom's own slot, so the
null prompt (zeros) gives the unconditional mixture, a class word restricts to that class, and a
memorized caption puts most of the class's mass on its atom. At time t the VP-smoothed density is a
Gaussian mixture in closed form, so the score (and eps) is exact and differentiable in x and e.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from memgeo.models.base import as_time
from memgeo.models.prompt import PromptDiffusionModel, TokenBatch
from memgeo.models.schedule import VPSchedule


class ToyPromptMixture(PromptDiffusionModel):
    """Closed-form prompt-conditional Gaussian/atom mixture (see the module docstring).

    Parameters
    ----------
    means : Tensor, shape (K, D)
        Class blob centres.
    atoms : Tensor, shape (M, D)
        Memorized training images.
    atom_class : sequence of int, length M
    blob_std : float
        Standard deviation s of every class blob.
    atom_weight : float
        Prior weight pi of an atom relative to a class blob (1).
    beta, gamma : float
        Strength of the class word and of the memorized caption word.
    """

    def __init__(self, means: torch.Tensor, atoms: torch.Tensor, atom_class: Sequence[int], blob_std: float = 0.5,
                 atom_weight: float = 0.1, beta: float = 8.0, gamma: float = 4.0, max_len: int = 3) -> None:
        super().__init__()
        k, d = means.shape
        m = atoms.shape[0]
        self.schedule = VPSchedule()
        self.data_shape = (d,)
        self.n_classes, self.n_atoms, self.max_len = k, m, max_len
        self.vocab = [f"class{i}" for i in range(k)] + [f"mem{j}" for j in range(m)]
        e = k + m
        feats = torch.zeros(k + m, e, dtype=means.dtype)
        feats[torch.arange(k), torch.arange(k)] = beta
        for j, c in enumerate(atom_class):
            feats[k + j, c] = beta
            feats[k + j, k + j] = gamma
        self.register_buffer("centres", torch.cat([means, atoms]))
        self.register_buffer("var0", torch.cat([torch.full((k,), blob_std ** 2), torch.zeros(m)]).to(means.dtype))
        self.register_buffer("log_prior", torch.cat([torch.zeros(k), torch.full((m,), float(atom_weight)).log()]
                                                    ).to(means.dtype))
        self.register_buffer("feats", feats)
        # Row 0 of the embedding table is padding; word i embeds as one-hot slot i.
        self.register_buffer("table", torch.cat([torch.zeros(1, e), torch.eye(e)]).to(means.dtype))

    def tokenize(self, prompts: Sequence[str]) -> TokenBatch:
        ids = torch.zeros(len(prompts), self.max_len, dtype=torch.long)
        mask = torch.zeros(len(prompts), self.max_len, dtype=torch.bool)
        tokens = []
        for i, p in enumerate(prompts):
            words = p.split()[: self.max_len]
            tokens.append(words)
            for j, w in enumerate(words):
                ids[i, j] = self.vocab.index(w) + 1
                mask[i, j] = True
        return TokenBatch(ids=ids, mask=mask, tokens=tokens)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]

    def encode_embeddings(self, token_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return token_emb * mask[..., None].to(token_emb.dtype)

    def null_embedding(self) -> torch.Tensor:
        return torch.zeros(1, self.max_len, self.table.shape[1], dtype=self.table.dtype)

    def score(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Exact score of the smoothed mixture, shape (B, D)."""
        tt = as_time(t, x.shape[0], x)
        ab = self.schedule.alpha_bar(tt)[:, None]  # (B, 1)
        psi = ab.sqrt()
        var = ab * self.var0[None] + (1 - ab)  # (B, C)
        diff = x[:, None, :] - psi[:, :, None] * self.centres[None]  # (B, C, D)
        logits = self.log_prior[None] - 0.5 * (diff ** 2).sum(-1) / var - 0.5 * x.shape[1] * var.log()
        if cond is not None:
            logits = logits + cond.sum(1) @ self.feats.T
        w = torch.softmax(logits, dim=1)
        return -(w[:, :, None] * diff / var[:, :, None]).sum(1)


def make_toy(dtype: torch.dtype = torch.float64, dim: int = 6, n_classes: int = 3, seed: int = 0,
             **kwargs) -> ToyPromptMixture:
    """A small instance: class centres at 2 e_k, one memorized atom per class near its centre."""
    g = torch.Generator().manual_seed(seed)
    means = torch.zeros(n_classes, dim, dtype=dtype)
    means[torch.arange(n_classes), torch.arange(n_classes)] = 2.0
    atoms = means + 0.6 * torch.randn(n_classes, dim, generator=g, dtype=dtype)
    return ToyPromptMixture(means, atoms, list(range(n_classes)), **kwargs)


def toy_training_set(model: ToyPromptMixture, per_class: int = 40, copies: int = 10, seed: int = 1) -> torch.Tensor:
    """Training images consistent with the toy: ``per_class`` blob draws per class plus duplicated atoms."""
    g = torch.Generator().manual_seed(seed)
    k = model.n_classes
    blobs = model.centres[:k].repeat_interleave(per_class, 0)
    std = model.var0[:k].sqrt().repeat_interleave(per_class, 0)[:, None]
    blobs = blobs + std * torch.randn(blobs.shape, generator=g, dtype=blobs.dtype)
    return torch.cat([blobs, model.centres[k:].repeat_interleave(copies, 0)])


class NormBumpModel(PromptDiffusionModel):
    """A fake prompt model whose guidance norm along time is known: ||eps_c - eps_u|| = |c| h(t).

    eps(x, t, c) = 0.1 x + h(t) * pooled(c), h(t) = 1 + 10 (t - t_min)^2, so along any trajectory the
    guidance norm has its only local minimum at the grid time closest to ``t_min``.
    """

    def __init__(self, dim: int = 4, t_min: float = 0.5) -> None:
        super().__init__()
        self.schedule = VPSchedule()
        self.data_shape = (dim,)
        self.t_min = t_min

    def tokenize(self, prompts: Sequence[str]) -> TokenBatch:
        ids = torch.tensor([[len(p)] for p in prompts])
        return TokenBatch(ids=ids, mask=torch.ones_like(ids, dtype=torch.bool), tokens=[[p] for p in prompts])

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return ids[..., None].to(torch.get_default_dtype()).expand(*ids.shape, self.data_shape[0]) / 10

    def encode_embeddings(self, token_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return token_emb

    def null_embedding(self) -> torch.Tensor:
        return torch.zeros(1, 1, self.data_shape[0])

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        tt = as_time(t, x.shape[0], x)
        h = 1 + 10 * (tt - self.t_min) ** 2
        c = torch.zeros_like(x) if cond is None else cond.sum(1).to(x.dtype)
        return 0.1 * x + h[:, None] * c
