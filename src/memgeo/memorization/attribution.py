"""Token attribution: which words of a prompt drive its memorization score?

For a prompt with token input embeddings e_1..e_L (``model.token_embeddings``), the attribution of
token l is the gradient norm ||d S / d e_l|| of a differentiable detection score S (Wen's ||d_eps||
by default, averaged over the prompt's generations), back-propagated through the text encoder
(``model.encode_embeddings``) and the denoiser. A token the condition does not depend on gets 0;
the word that selects a memorized training image gets the largest value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from memgeo.errors import MemgeoError
from memgeo.memorization.prompt_scores import SamplingSettings, flatten_generations, get_prompt_score
from memgeo.models.prompt import PromptDiffusionModel


@dataclass
class TokenAttribution:
    """Attribution of one prompt.

    Attributes
    ----------
    prompt : str
    tokens : list of str
        The prompt's real tokens (padding excluded), as the tokenizer shows them.
    values : numpy.ndarray, shape (len(tokens),)
        ||d score / d token embedding|| per token.
    score : float
        The score value itself (mean over generations).
    score_name : str
    """

    prompt: str
    tokens: list[str]
    values: np.ndarray
    score: float
    score_name: str

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "tokens": list(self.tokens), "values": self.values.tolist(),
                "score": self.score, "score_name": self.score_name}


def token_attribution(model: PromptDiffusionModel, prompts: Sequence[str], x_T: torch.Tensor, *,
                      score: str = "wen", params: dict[str, Any] | None = None,
                      sampling: SamplingSettings | None = None) -> list[TokenAttribution]:
    """Gradient-norm attribution of a detection score to every token of every prompt.

    Parameters
    ----------
    model : PromptDiffusionModel
    prompts : list of str, length B
    x_T : Tensor, shape (B, n, *data_shape) or (B, *data_shape)
        Initial noise of the generations the score is averaged over.
    score : str
        A registered prompt score with a differentiable form (``wen``).
    params : dict, optional
        Its hyper-parameters.
    sampling : SamplingSettings, optional

    Returns
    -------
    list of TokenAttribution, one per prompt
    """
    scorer = get_prompt_score(score, **(params or {}))
    if not hasattr(scorer, "differentiable_rows"):
        raise MemgeoError(f"score {score!r} has no differentiable form for token attribution", "use score='wen'")
    if not isinstance(model, PromptDiffusionModel):
        raise MemgeoError(f"token attribution needs a prompt model, got {type(model).__name__}",
                          "load the model with memgeo.models.load")
    sampling = sampling or SamplingSettings()
    batch = model.tokenize(list(prompts))
    emb = model.token_embeddings(batch.ids).detach().requires_grad_(True)
    cond = model.encode_embeddings(emb, batch.mask)
    x_rows, cond_rows, b, n = flatten_generations(model, cond, x_T.detach())
    values = scorer.differentiable_rows(model, cond_rows, x_rows, sampling).reshape(b, n).mean(1)
    # Rows are independent, so the gradient of the sum gives every prompt's own gradient.
    (grad,) = torch.autograd.grad(values.sum(), emb)
    norms = grad.detach().double().norm(dim=-1).cpu().numpy()  # (B, L)
    mask = batch.mask.cpu().numpy()
    out = []
    for i, prompt in enumerate(prompts):
        vals = norms[i][mask[i]]
        tokens = list(batch.tokens[i])
        if len(tokens) != vals.size:  # tokenizers that do not list every masked position
            tokens = [f"#{k}" for k in range(vals.size)]
        out.append(TokenAttribution(prompt=str(prompt), tokens=tokens, values=vals, score=float(values[i]),
                                    score_name=score))
    return out
