"""Caption-conditional diffusion model, prompt-model loading, prompt conds in samplers, digit classifier."""

from __future__ import annotations

import pytest
import torch

from memgeo.errors import MemgeoError
from memgeo.models.base import guided_eps, noise_difference
from memgeo.models.caption import (
    CaptionDiffusionModel,
    CaptionModelConfig,
    build_vocab,
    caption_words,
    train_caption_model,
)
from memgeo.models.classifier import (
    ClassifierConfig,
    load_classifier,
    save_classifier,
    train_classifier,
)
from memgeo.models.loading import load
from memgeo.models.sampling import sample_ddim
from memgeo.models.training import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")

CAPTIONS = ["a red one", "a blue two", "the zebra kite, seven!"]


def tiny_config(**kw) -> CaptionModelConfig:
    base = dict(data_shape=(1, 4, 4), vocab=build_vocab(CAPTIONS), max_length=6, embed_dim=16, heads=2,
                hidden=32, depth=2, time_dim=16)
    return CaptionModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def model() -> CaptionDiffusionModel:
    torch.manual_seed(0)
    return CaptionDiffusionModel(tiny_config()).eval()


def test_words_and_vocab():
    assert caption_words("The Zebra-kite, 7!") == ["the", "zebra", "kite", "7"]
    vocab = build_vocab(CAPTIONS)
    assert vocab[:4] == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert set(vocab[4:]) == {"a", "red", "one", "blue", "two", "the", "zebra", "kite", "seven"}


def test_tokenize_pads_truncates_and_marks_unknown(model):
    tb = model.tokenize(["A RED one.", "", "a purple one", "the zebra kite seven a red"])
    assert tb.ids.shape == (4, 6) and tb.mask.shape == (4, 6)
    assert tb.tokens[0] == ["<bos>", "a", "red", "one", "<eos>"]
    assert tb.tokens[1] == ["<bos>", "<eos>"]
    assert tb.tokens[2][2] == "<unk>" and int(tb.ids[2, 2]) == 3
    assert tb.tokens[3] == ["<bos>", "the", "zebra", "kite", "seven", "<eos>"]  # truncated to L - 2 words
    assert tb.mask.sum(1).tolist() == [5, 2, 5, 6]
    assert torch.equal(tb.mask, tb.ids != 0)
    with pytest.raises(MemgeoError, match="one string"):
        model.tokenize("a red one")


def test_encode_shapes_null_and_padding(model):
    cond = model.encode(CAPTIONS)
    assert cond.shape == (3, 6, 16)
    assert torch.allclose(model.null_embedding(), model.encode([""]))
    tb = model.tokenize(CAPTIONS)
    assert torch.all(cond[~tb.mask] == 0)  # padding positions carry nothing
    # The condition of a prompt does not depend on what else is in the batch.
    assert torch.allclose(model.encode([CAPTIONS[1]])[0], cond[1], atol=1e-6)
    assert not torch.allclose(cond[0], cond[1])


def test_null_embedding_cache_follows_the_weights():
    frozen = CaptionDiffusionModel(tiny_config()).eval().requires_grad_(False)
    first = frozen.null_embedding()
    assert frozen.null_embedding() is first  # cached for frozen weights
    with torch.no_grad():
        frozen.tok_emb.weight.mul_(2.0)
    assert torch.allclose(frozen.null_embedding(), frozen.encode([""]))
    assert not torch.allclose(frozen.null_embedding(), first)
    trainable = CaptionDiffusionModel(tiny_config())
    assert trainable.null_embedding().requires_grad  # while training, gradients reach the empty prompt


def test_eps_none_is_empty_prompt_and_rows_independent(model):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 4, 4, generator=g)
    cond = model.encode(CAPTIONS)
    null = model.null_cond(cond)
    assert null.shape == cond.shape
    assert torch.allclose(model.eps(x, 0.5, None), model.eps(x, 0.5, null), atol=1e-6)
    batched = model.eps(x, torch.tensor([0.2, 0.5, 0.9]), cond)
    for i, t in enumerate([0.2, 0.5, 0.9]):
        assert torch.allclose(batched[i], model.eps(x[i:i + 1], t, cond[i:i + 1])[0], atol=1e-6)
    with pytest.raises(MemgeoError, match="prompt condition has shape"):
        model.eps(x, 0.5, cond[:, :3])
    # no NaN check inside eps (it runs under vmap); a NaN condition propagates instead of passing silently
    assert torch.isnan(model.eps(x, 0.5, torch.full_like(cond, float("nan")))).all()


def test_jvp_matches_finite_difference_per_sample(model):
    """Batched forward-mode products equal per-sample finite differences (no batch coupling)."""
    m64 = CaptionDiffusionModel(tiny_config()).double().eval()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    v = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    cond = m64.encode(CAPTIONS)
    _, jv = torch.func.jvp(lambda z: m64.eps(z, 0.4, cond), (x,), (v,))
    h = 1e-6
    fd = (m64.eps(x + h * v, 0.4, cond) - m64.eps(x - h * v, 0.4, cond)) / (2 * h)
    assert torch.allclose(jv, fd, rtol=1e-6, atol=1e-8)
    v_only_first = v.clone()
    v_only_first[1:] = 0
    _, jv1 = torch.func.jvp(lambda z: m64.eps(z, 0.4, cond), (x,), (v_only_first,))
    assert torch.all(jv1[1:] == 0)


def test_guidance_and_sampler_with_prompt_conds(model):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 1, 4, 4, generator=g)
    cond = model.encode(CAPTIONS)
    e_c, e_u = model.eps(x, 0.7, cond), model.eps(x, 0.7, None)
    assert torch.allclose(guided_eps(model, x, 0.7, cond, 3.0), e_u + 3.0 * (e_c - e_u), atol=1e-5)
    assert torch.allclose(noise_difference(model, x, 0.7, cond), e_c - e_u, atol=1e-5)
    a = sample_ddim(model, x, steps=4, cond=cond, guidance=4.0).x0
    b = torch.cat([sample_ddim(model, x[i:i + 1], steps=4, cond=cond[i:i + 1], guidance=4.0).x0 for i in range(3)])
    assert a.shape == x.shape and torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, sample_ddim(model, x, steps=4, cond=cond, guidance=0.0).x0)


def test_token_embeddings_carry_gradient(model):
    """Token attribution needs d(anything)/d(token embedding) through the encoder."""
    tb = model.tokenize(CAPTIONS[:1])
    emb = model.token_embeddings(tb.ids).detach().requires_grad_(True)
    cond = model.encode_embeddings(emb, tb.mask)
    out = model.eps(torch.zeros(1, 1, 4, 4), 0.9, cond).pow(2).sum()
    (grad,) = torch.autograd.grad(out, emb)
    assert grad[0, tb.mask[0]].norm(dim=-1).min() > 0
    assert torch.all(grad[0, ~tb.mask[0]] == 0)  # padding is zeroed after the encoder


def _tiny_data():
    g = torch.Generator().manual_seed(4)
    protos = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    x = protos.repeat_interleave(8, 0)
    caps = [c for c in CAPTIONS for _ in range(8)]
    return x, caps


TRAIN = TrainConfig(steps=40, batch_size=16, lr=3e-3, lr_warmup=5, log_every=10, checkpoint_every=20, seed=0)


def test_train_save_load_and_dispatch(tmp_path):
    x, caps = _tiny_data()
    res = train_caption_model(tiny_config(), TRAIN, x, caps, tmp_path / "m", progress=False)
    assert res.log[-1]["loss"] < res.log[0]["loss"]
    loaded = load(tmp_path / "m")
    assert isinstance(loaded, CaptionDiffusionModel)
    assert not any(p.requires_grad for p in loaded.parameters())
    z = torch.randn(3, 1, 4, 4)
    cond = loaded.encode(CAPTIONS)
    assert torch.allclose(loaded.eps(z, 0.3, cond), res.model.eps(z, 0.3, res.model.encode(CAPTIONS)), atol=1e-6)
    assert (tmp_path / "m" / "vocab.txt").read_text().split()[:2] == ["<pad>", "<bos>"]
    with pytest.raises(MemgeoError, match="neither"):
        load(tmp_path)
    with pytest.raises(MemgeoError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(MemgeoError, match="one caption per image"):
        train_caption_model(tiny_config(), TRAIN, x, caps[:-1], progress=False)


def test_resume_after_crash_gives_the_same_model(tmp_path):
    x, caps = _tiny_data()
    full = train_caption_model(tiny_config(), TRAIN, x, caps, progress=False).model

    def crash(entry):
        if entry["step"] == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_caption_model(tiny_config(), TRAIN, x, caps, tmp_path, progress=False, on_log=crash)
    resumed = train_caption_model(tiny_config(), TRAIN, x, caps, tmp_path, progress=False)
    assert resumed.resumed_from == 20
    for (k, a), b in zip(full.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(MemgeoError, match="different config"):
        train_caption_model(tiny_config(hidden=16), TRAIN, x, caps, tmp_path, progress=False)


def test_caption_model_learns_its_captions():
    """After a short fit, the caption tells the denoiser which training image a noisy point came from.

    At t = 0.5 the x0 prediction given the caption is much closer to the true image than the
    prediction given the empty prompt.
    """
    x, caps = _tiny_data()
    cfg = TRAIN.model_copy(update={"steps": 400, "batch_size": 48, "lr": 1e-2, "checkpoint_every": 400,
                                   "log_every": 100})
    model = train_caption_model(tiny_config(hidden=64), cfg, x, caps, progress=False).model
    protos = x[::8].repeat_interleave(16, 0)
    cond = model.encode(CAPTIONS).repeat_interleave(16, 0)
    noise = torch.randn(48, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    t = 0.5
    psi, sigma = model.schedule.sqrt_alpha_bar(torch.tensor(t)), model.schedule.sigma(torch.tensor(t))
    xt = psi * protos + sigma * noise
    err_c = ((xt - sigma * model.eps(xt, t, cond)) / psi - protos).pow(2).mean()
    err_u = ((xt - sigma * model.eps(xt, t, None)) / psi - protos).pow(2).mean()
    assert err_c < 0.5 * err_u


def test_classifier_trains_saves_and_loads(tmp_path):
    from memgeo.data import load_digits

    d = load_digits()
    res = train_classifier(d.x[:600], d.y[:600], ClassifierConfig(data_shape=(1, 8, 8), epochs=15, hidden=64))
    assert res.holdout_accuracy > 0.85 and res.n_holdout == 120
    save_classifier(res.model, tmp_path)
    loaded = load_classifier(tmp_path)
    assert torch.equal(loaded.predict(d.x[600:700]), res.model.predict(d.x[600:700]))
    assert loaded.accuracy(d.x[600:900], d.y[600:900]) > 0.8
    with pytest.raises(MemgeoError, match="shape"):
        loaded.predict(torch.zeros(2, 64))
    with pytest.raises(MemgeoError, match="labels"):
        train_classifier(d.x[:10], torch.full((10,), 12), ClassifierConfig(data_shape=(1, 8, 8)))


def test_caption_bench_workflow_writes_a_complete_folder(tmp_path):
    """Tiny settings: the folder holds every artefact the detection/mitigation runs read, READY last."""
    import json

    import numpy as np

    from memgeo.data.prompts import load_prompts
    from memgeo.workflows.caption_bench import CaptionBenchConfig, run_caption_bench

    cfg = CaptionBenchConfig(n_memorized=10, copies=2, steps=20, hidden=32, depth=1, embed_dim=16, batch_size=32,
                             sample_steps=2, generations=1, classifier_epochs=1, max_images=200,
                             guidance_sweep=(1.0,))
    summary = run_caption_bench(cfg, tmp_path, progress=False)
    assert (tmp_path / "READY").is_file()
    mem = load_prompts(tmp_path / "prompts_memorized.jsonl")
    gen = load_prompts(tmp_path / "prompts_generic.jsonl")
    assert len(mem) == 10 and all(e.memorized and e.extra["train_index"] is not None for e in mem)
    assert len(gen) == 40 and not any(e.memorized for e in gen)
    assert len(load_prompts(tmp_path / "prompts_all.jsonl")) == 50
    train_x = np.load(tmp_path / "train_x.npy")
    assert train_x.shape == (200, 1, 8, 8)
    model = load(tmp_path / "model")
    assert model.data_shape == (1, 8, 8) and load_classifier(tmp_path / "classifier").config.num_classes == 10
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["copy"]["memorized"]["n_generations"] == 10 == summary["copy"]["memorized"]["n_generations"]
    assert 0.0 <= saved["copy"]["generic"]["copy_rate"] <= 1.0
    assert [r["guidance"] for r in saved["guidance_sweep"]] == [1.0]
    assert (tmp_path / "guidance_sweep.csv").is_file() and (tmp_path / "report.html").is_file()
