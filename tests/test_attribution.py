"""Token attribution: ground truth on the exact caption mixture, HTML display."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from prompt_toys import TinyPromptNet, caption_benchmark

from memgeo.errors import MemgeoError
from memgeo.memorization.attribution import token_attribution
from memgeo.memorization.prompt_scores import SamplingSettings, generation_noise
from memgeo.report import Report
from memgeo.report.prompt_html import add_token_attribution, highlighted_tokens_html

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def toy():
    return caption_benchmark()


def test_word_outside_every_caption_gets_zero_and_the_unique_word_the_most(toy):
    model, mem, _ = toy
    prompts = [mem[0] + " purple", "purple " + mem[1]]  # "purple" is in the vocabulary, in no caption
    res = token_attribution(model, prompts, generation_noise(model, [0, 1], 2))
    for r, unique in zip(res, [mem[0].split()[-1], mem[1].split()[-1]]):
        vals = dict(zip(r.tokens, r.values))
        assert vals["purple"] < 1e-9 * max(r.values)
        assert max(vals, key=vals.get) == unique
        assert vals[unique] > 1.2 * max(v for k, v in vals.items() if k != unique)
        assert r.score > 0 and r.score_name == "wen"


def test_attribution_is_the_gradient_of_the_score(toy):
    model = TinyPromptNet(["a", "photo", "of", "cat"])
    prompt = "a photo of cat"
    x = generation_noise(model, [4], 1)
    settings = SamplingSettings(t_max=0.7)
    res = token_attribution(model, [prompt], x, sampling=settings)[0]
    # finite differences of the score along the gradient direction of token 3 ("cat")
    tb = model.tokenize([prompt])
    emb = model.token_embeddings(tb.ids)

    def score(e):
        cond = model.encode_embeddings(e, tb.mask)
        e_c, e_u = model.eps(x[:, 0], 0.7, cond), model.eps(x[:, 0], 0.7, model.null_cond(cond))
        return float((e_c - e_u).norm())

    e = emb.clone().requires_grad_(True)
    cond = model.encode_embeddings(e, tb.mask)
    val = (model.eps(x[:, 0], 0.7, cond) - model.eps(x[:, 0], 0.7, model.null_cond(cond))).norm()
    g = torch.autograd.grad(val, e)[0][0, 3]
    h = 1e-6
    step = torch.zeros_like(emb)
    step[0, 3] = g / g.norm()
    fd = (score(emb + h * step) - score(emb - h * step)) / (2 * h)  # directional derivative = ||g||
    assert res.values[3] == pytest.approx(fd, rel=1e-5)
    assert res.tokens == ["a", "photo", "of", "cat"]


def test_scores_without_a_differentiable_form_are_refused(toy):
    model, mem, _ = toy
    with pytest.raises(MemgeoError, match="differentiable"):
        token_attribution(model, mem[:1], generation_noise(model, [0], 1), score="jeon")


def test_highlighted_html_escapes_and_scales_to_the_largest_token():
    html_text = highlighted_tokens_html(["a", "<b>"], [0.5, 2.0])
    assert "&lt;b&gt;" in html_text and "<b>" not in html_text
    assert "rgba(220,50,47,0.250)" in html_text and "rgba(220,50,47,1.000)" in html_text
    with pytest.raises(MemgeoError):
        highlighted_tokens_html(["a"], [1.0, 2.0])
    rep = add_token_attribution(Report("t"), [{"tokens": ["x", "y"], "values": np.array([0.0, 1.0]), "score": 0.3,
                                               "label": "memorized"}], heading="Tokens")
    page = rep.render()
    assert "Tokens" in rep.headings and "rgba(220,50,47,0.000)" in page and "memorized" in page
