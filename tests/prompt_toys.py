"""Exact prompt-conditioned references for the prompt-level scores (no training).

:class:`ExactCaptionMixture` is the Gaussian-smoothed empirical distribution of captioned training
images whose component weights depend on the prompt:

    p_t(x | c) = sum_i pi_i(c) N(x; psi x_i, sigma^2 I),   pi(c) = softmax_i(beta * cos(bag(c), bag_i)),

with bag(c) the (encoded) bag of words of the prompt and bag_i that of caption i. The empty prompt
has bag 0, cosine 0 with every caption, hence uniform weights: the unconditional model is the plain
empirical mixture. A prompt that names a duplicated image's unique words puts (almost) all weight
on that atom, the textbook memorized prompt.

Text path (all differentiable):

* tokenize: lower-case words, id 0 = padding, 1 = unknown, then the training-caption words, then
  ``extra_words`` (in the vocabulary but in no training caption);
* token_embeddings: one-hot rows, (B, L) -> (B, L, V);
* encode_embeddings: c_l = P e_l * ||P e_l|| * mask_l, where P keeps the caption-word coordinates.
  At one-hot inputs this equals the plain projection, but its Jacobian vanishes for a word outside
  every caption (P e = 0), so such a word cannot change the condition to first order either: the
  ground truth of the token-attribution test.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from memgeo.models.base import as_time
from memgeo.models.prompt import PromptDiffusionModel, TokenBatch
from memgeo.models.schedule import VPSchedule


def words(text: str) -> list[str]:
    return text.lower().split()


class ExactCaptionMixture(PromptDiffusionModel):
    """Closed-form prompt-conditional score of captioned training images.

    Parameters
    ----------
    images : Tensor, shape (N, *data_shape)
        Training images (duplicates kept).
    captions : list of str, length N
    extra_words : sequence of str
        Vocabulary words that appear in no caption.
    beta : float
        Sharpness of the prompt-to-caption weights.
    max_len : int
        Token positions L (prompts are padded/truncated to it).
    """

    def __init__(self, images: torch.Tensor, captions: Sequence[str], extra_words: Sequence[str] = (),
                 beta: float = 12.0, max_len: int = 8, schedule: VPSchedule | None = None) -> None:
        super().__init__()
        images = torch.as_tensor(images)
        self.schedule = schedule or VPSchedule()
        self.data_shape = tuple(images.shape[1:])
        self.max_len = max_len
        self.beta = beta
        caption_words = sorted({w for c in captions for w in words(c)})
        extra = [w for w in extra_words if w not in caption_words]
        self.vocab = ["<pad>", "<unk>"] + caption_words + extra
        self.index = {w: i for i, w in enumerate(self.vocab)}
        v, e = len(self.vocab), len(caption_words)
        proj = torch.zeros(e, v, dtype=images.dtype)
        proj[torch.arange(e), torch.arange(2, 2 + e)] = 1.0
        self.register_buffer("proj", proj)
        self.register_buffer("points", images.reshape(images.shape[0], -1))
        bags = torch.zeros(images.shape[0], e, dtype=images.dtype)
        for i, c in enumerate(captions):
            for w in words(c):
                bags[i, self.index[w] - 2] += 1.0
        self.register_buffer("caption_bags", bags / bags.norm(dim=1, keepdim=True))

    # -- text path ---------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> TokenBatch:
        ids = torch.zeros(len(prompts), self.max_len, dtype=torch.long)
        tokens = []
        for b, p in enumerate(prompts):
            ws = words(p)[: self.max_len]
            tokens.append(ws)
            for l, w in enumerate(ws):
                ids[b, l] = self.index.get(w, 1)
        return TokenBatch(ids=ids, mask=ids != 0, tokens=tokens)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.eye(len(self.vocab), dtype=self.points.dtype)[ids]

    def encode_embeddings(self, token_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = token_emb @ self.proj.T  # (B, L, E)
        gate = torch.sqrt((p * p).sum(-1, keepdim=True) + 1e-30)
        return p * gate * mask[..., None].to(p.dtype)

    def null_embedding(self) -> torch.Tensor:
        return torch.zeros(1, self.max_len, self.proj.shape[0], dtype=self.points.dtype)

    # -- exact score ---------------------------------------------------------------------------
    def prior_logits(self, cond: torch.Tensor) -> torch.Tensor:
        """beta * cos(bag(c), bag_i), shape (B, N); 0 for the empty prompt."""
        bag = cond.sum(1)
        norm = torch.sqrt((bag * bag).sum(-1, keepdim=True) + 1e-24)
        return self.beta * (bag / norm) @ self.caption_bags.T

    def score(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        if cond is None:
            cond = self.null_cond(torch.zeros(b, 1, 1, dtype=x.dtype))
        xf = x.reshape(b, -1)
        tt = as_time(t, b, x)
        ab = self.schedule.alpha_bar(tt)[:, None]
        s2 = 1.0 - ab
        sq = (xf * xf).sum(1, keepdim=True) - 2 * ab.sqrt() * (xf @ self.points.T) \
            + ab * (self.points * self.points).sum(1)[None]
        w = torch.softmax(self.prior_logits(cond) - sq / (2 * s2), dim=1)
        s = (ab.sqrt() * (w @ self.points) - xf) / s2
        return s.reshape(x.shape)


def caption_benchmark(dim: int = 16, n_memorized: int = 3, copies: int = 3, n_classes: int = 3,
                      per_class: int = 16, seed: int = 0, dtype: torch.dtype = torch.float64):
    """A tiny memorized-caption data set for the exact model.

    Returns
    -------
    model : ExactCaptionMixture
    memorized_prompts : list of str
        The unique captions of the duplicated images (``"a photo of <name>"``).
    generic_prompts : list of str
        The shared class captions (``"a photo of digit <k>"``).
    """
    g = torch.Generator().manual_seed(seed)
    names = ["zebra", "quokka", "axolotl", "narwhal", "okapi", "tapir"][:n_memorized]
    digits = ["one", "two", "three", "four", "five"][:n_classes]
    imgs, caps = [], []
    for name in names:
        x = torch.rand(dim, generator=g, dtype=dtype) * 2 - 1
        imgs += [x] * copies
        caps += [f"a photo of {name}"] * copies
    for d in digits:
        # Generic classes: a weak class signal under a large spread, so that the class mean (what
        # a generic prompt selects) sits near the global mean, as for real generic captions.
        centre = 0.1 * (torch.rand(dim, generator=g, dtype=dtype) * 2 - 1)
        for _ in range(per_class):
            imgs.append((centre + 0.6 * torch.randn(dim, generator=g, dtype=dtype)).clamp(-1, 1))
            caps.append(f"a photo of digit {d}")
    model = ExactCaptionMixture(torch.stack(imgs).reshape(-1, 1, 4, dim // 4), caps, extra_words=["purple"])
    return model, [f"a photo of {n}" for n in names], [f"a photo of digit {d}" for d in digits]


class TinyPromptNet(PromptDiffusionModel):
    """A small random-weight prompt network: non-conservative (asymmetric Jacobian), nonlinear in x and c.

    eps(x, t, c) = W2 tanh(W1 x + U mean_l(c) + t b) + A x, with the same tokenizer as
    :class:`ExactCaptionMixture` built from ``vocabulary``.

    Parameters
    ----------
    vocabulary : sequence of str
    data_shape : tuple of int
    hidden : int
    forward_mode : bool
        False routes the hidden layer through an autograd Function without a forward-mode rule,
        so that ``torch.func.jvp`` fails as it does through some diffusers attention kernels.
    validate : bool
        True checks the input for NaN with Python control flow, which ``vmap`` refuses (as input
        validation in real models does).
    """

    def __init__(self, vocabulary: Sequence[str], data_shape: tuple[int, ...] = (1, 4, 4), hidden: int = 32,
                 seed: int = 0, forward_mode: bool = True, validate: bool = False,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.schedule = VPSchedule()
        self.data_shape = tuple(data_shape)
        self.max_len = 6
        self.forward_mode = forward_mode
        self.validate = validate
        self.vocab = ["<pad>", "<unk>"] + sorted(set(vocabulary))
        self.index = {w: i for i, w in enumerate(self.vocab)}
        d, e = self.dim, 8
        self.register_buffer("emb", torch.randn(len(self.vocab), e, generator=g, dtype=dtype))
        self.register_buffer("W1", torch.randn(hidden, d, generator=g, dtype=dtype) / d ** 0.5)
        self.register_buffer("U", torch.randn(hidden, e, generator=g, dtype=dtype))
        self.register_buffer("b", torch.randn(hidden, generator=g, dtype=dtype))
        self.register_buffer("W2", torch.randn(d, hidden, generator=g, dtype=dtype) / hidden ** 0.5)
        self.register_buffer("A", 0.3 * torch.randn(d, d, generator=g, dtype=dtype) / d ** 0.5)

    tokenize = ExactCaptionMixture.tokenize

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb[ids]

    def encode_embeddings(self, token_emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.tanh(token_emb) * mask[..., None].to(token_emb.dtype)

    def null_embedding(self) -> torch.Tensor:
        return torch.zeros(1, self.max_len, self.emb.shape[1], dtype=self.emb.dtype)

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        if self.validate and not bool(torch.isfinite(x).all()):
            raise ValueError("non-finite input")
        if cond is None:
            cond = self.null_cond(torch.zeros(b, 1, 1, dtype=x.dtype))
        xf = x.reshape(b, -1)
        tt = as_time(t, b, x)[:, None]
        pre = xf @ self.W1.T + cond.mean(1) @ self.U.T + tt * self.b
        h = torch.tanh(pre) if self.forward_mode else _NoForwardTanh.apply(pre)
        return (h @ self.W2.T + xf @ self.A.T).reshape(x.shape)


class _NoForwardTanh(torch.autograd.Function):
    """tanh with a backward but no forward-mode (jvp) rule."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


def write_caption_checkpoint(folder, captions: Sequence[str]) -> None:
    """A random-weight (seed 0) (1, 4, 4) caption model saved under ``folder/model``, a labelled prompt file
    ``folder/prompts.jsonl`` ("photo" prompts memorized; the fourth has its own seed 1234) and 20 uniform
    training images ``folder/train_x.npy``: the tiny checkpoint of the detect / shard / Ray CLI tests."""
    import json

    import numpy as np

    from memgeo.models.caption import CaptionDiffusionModel, CaptionModelConfig, build_vocab, save_caption_model

    torch.manual_seed(0)
    cfg = CaptionModelConfig(data_shape=(1, 4, 4), vocab=build_vocab(list(captions)), hidden=32, depth=1,
                             embed_dim=16, heads=2, max_length=8)
    save_caption_model(CaptionDiffusionModel(cfg).eval(), folder / "model")
    lines = [{"prompt": p, "memorized": int("photo" in p)} for p in captions]
    lines[3]["seed"] = 1234
    (folder / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    np.save(folder / "train_x.npy", np.random.default_rng(0).uniform(-1, 1, (20, 1, 4, 4)).astype(np.float32))
