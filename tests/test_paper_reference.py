"""Sanity checks of tests/paper_reference.py (the papers' scores transcribed with diffusers only).

Each check recomputes a quantity by an independent route: the text embeddings straight from the tokenizer
and the CLIP encoder (not ``encode_prompt``), one UNet call per condition (not the batched ``[x; x]``),
DDIM's update in closed form (not ``scheduler.step``), and Jacobian-vector products as central finite
differences of the score in float64 (not ``torch.func.jvp``). Pipelines: memgeo's tiny random latent
pipeline with an SD-1.4-shaped DDIM scheduler (epsilon and v-prediction variants).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper_reference as ref  # noqa: E402

PROMPTS = ["a photo of a cat", "the red dog on the mat"]
SD14_DDIM = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                 steps_offset=1, clip_sample=False, set_alpha_to_one=False)


def _with_ddim(folder: Path, prediction_type: str) -> Path:
    from diffusers import DDIMScheduler

    shutil.rmtree(folder / "scheduler")
    DDIMScheduler(**SD14_DDIM, prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def _load(folder: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def folders(tmp_path_factory, single_thread):
    from memgeo.models import build_tiny_pipeline

    root = tmp_path_factory.mktemp("paper_ref")
    eps = build_tiny_pipeline(root / "eps", seed=1, latent=True)
    shutil.copytree(eps, root / "v")
    return {"epsilon": _with_ddim(eps, "epsilon"), "v_prediction": _with_ddim(root / "v", "v_prediction")}


@pytest.fixture(scope="module")
def pipes(folders):
    return {kind: _load(folder) for kind, folder in folders.items()}


@pytest.fixture(scope="module")
def noise():
    """One (C, h, w) noise shared by both prompts (the authors' convention) and a per-prompt (B, G, ...) set."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 8, 8, generator=g), torch.randn(2, 3, 4, 8, 8, generator=g)


def _embed(pipe, prompts):
    """CLIP last hidden state of max-length padded prompts, straight from tokenizer + encoder."""
    ids = pipe.tokenizer(list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def _unet(pipe, x, t, emb):
    with torch.no_grad():
        return pipe.unet(x, int(t), encoder_hidden_states=emb).sample


def _ab(pipe, t):
    return float(pipe.scheduler.alphas_cumprod[int(t)])


def test_loaded_scheduler_is_sd14_ddim(folders, pipes):
    for kind, pipe in pipes.items():
        assert type(pipe.scheduler).__name__ == "DDIMScheduler"
        assert pipe.scheduler.config.prediction_type == kind
        pipe.scheduler.set_timesteps(50)
        ts = pipe.scheduler.timesteps.tolist()
        assert len(ts) == 50 and ts[0] == 981 and ts[1] == 961 and ts[-3] == 41 and ts[-1] == 1
        assert _ab(pipe, 981) == pytest.approx(0.0057755, rel=1e-4)
        assert _ab(pipe, 41) == pytest.approx(0.9608727, rel=1e-5)


def test_wen_first_step_is_the_norm_of_the_conditional_difference_at_981(pipes, noise):
    pipe, (shared, _) = pipes["epsilon"], noise
    got = ref.wen_reference(pipe, PROMPTS, shared)
    cond, null = _embed(pipe, PROMPTS), _embed(pipe, [""])
    for b in range(2):
        x = shared[None]
        d = _unet(pipe, x, 981, cond[b:b + 1]) - _unet(pipe, x, 981, null)
        assert got[b] == pytest.approx(d.norm().item(), rel=1e-5)
    assert got[0] != pytest.approx(got[1], rel=1e-3)  # the prompts do matter


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_wen_window_follows_the_guided_ddim_trajectory(pipes, noise, kind):
    """Wen over steps 0..2 = mean of the per-step norms along x_981 -> x_961 -> x_941 (closed-form DDIM, w = 7.5)."""
    pipe, (shared, _) = pipes[kind], noise
    got = ref.wen_reference(pipe, PROMPTS[:1], shared, window=(0, 3))
    cond, null = _embed(pipe, PROMPTS[:1]), _embed(pipe, [""])
    x, norms = shared[None].clone(), []
    for t in (981, 961, 941):
        out_c, out_u = _unet(pipe, x, t, cond), _unet(pipe, x, t, null)
        norms.append((out_c - out_u).norm().item())
        out = out_u + 7.5 * (out_c - out_u)
        a, s = _ab(pipe, t) ** 0.5, (1 - _ab(pipe, t)) ** 0.5
        if kind == "epsilon":
            eps, x0 = out, (x - s * out) / a
        else:
            eps, x0 = a * out + s * x, a * x - s * out
        a_prev = _ab(pipe, t - 20)
        x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    assert got[0] == pytest.approx(np.mean(norms), rel=1e-5)
    assert ref.wen_reference(pipe, PROMPTS[:1], shared, window=(1, 2))[0] == pytest.approx(norms[1], rel=1e-5)


def test_v_prediction_native_wen_is_the_norm_of_d_v_and_eps_is_alpha_times_it(pipes, noise):
    pipe, (shared, _) = pipes["v_prediction"], noise
    cond, null = _embed(pipe, PROMPTS), _embed(pipe, [""])
    dv = torch.stack([(_unet(pipe, shared[None], 981, cond[b:b + 1]) - _unet(pipe, shared[None], 981, null)).norm()
                      for b in range(2)]).numpy()
    alpha = _ab(pipe, 981) ** 0.5
    np.testing.assert_allclose(ref.wen_reference(pipe, PROMPTS, shared), dv, rtol=1e-5)
    np.testing.assert_allclose(ref.wen_reference(pipe, PROMPTS, shared, native=False), alpha * dv, rtol=1e-5)
    # Asthana's SD 2 norm term: the authors' score difference alpha ||d_v|| / sigma^2
    parts = ref.asthana_parts(pipe, PROMPTS, shared)
    np.testing.assert_allclose(parts["norm"], alpha * dv / (1 - _ab(pipe, 981)), rtol=1e-5)


def test_latent_layouts_and_generation_average(pipes, noise):
    pipe, (shared, per) = pipes["epsilon"], noise
    np.testing.assert_allclose(ref.wen_reference(pipe, PROMPTS, shared),
                               ref.wen_reference(pipe, PROMPTS, shared.expand(2, 4, 8, 8)), rtol=1e-6)
    table = ref.wen_reference(pipe, PROMPTS, per, reduce=False)
    assert table.shape == (2, 3)
    for g in range(3):
        np.testing.assert_allclose(table[:, g], ref.wen_reference(pipe, PROMPTS, per[:, g]), rtol=1e-5)
    np.testing.assert_allclose(ref.wen_reference(pipe, PROMPTS, per), table.mean(1), rtol=1e-12)
    with pytest.raises(ValueError):
        ref.wen_reference(pipe, PROMPTS, per[0, 0, 0])  # (h, w) is no layout
    with pytest.raises(ValueError):
        ref.wen_reference(pipe, PROMPTS, torch.randn(3, 4, 8, 8))  # 3 latents for 2 prompts


@pytest.fixture(scope="module")
def pipes64(folders):
    return {kind: _load(folder).to(dtype=torch.float64) for kind, folder in folders.items()}


@pytest.mark.parametrize("kind,native", [("epsilon", True), ("v_prediction", True), ("v_prediction", False)])
def test_jeon_jvp_matches_a_central_difference_of_the_score(pipes64, noise, kind, native):
    """||(H_c - H_u) d_s|| at t = 981 with H d_s from (s(x + h d) - s(x - h d)) / 2h, one condition at a time."""
    pipe, (shared, _) = pipes64[kind], noise
    x = shared[None].double()
    cond, null = _embed(pipe, PROMPTS[:1]), _embed(pipe, [""])
    ab = _ab(pipe, 981)
    a, s = ab ** 0.5, (1 - ab) ** 0.5

    def score(y, emb):
        out = _unet(pipe, y, 981, emb)
        if kind == "epsilon":
            return -out / s
        if native:  # the authors' SD 2 code: (alpha v - x) / sigma^2 with x the fixed model input
            return (a * out - x) / s ** 2
        return -(a * out + s * y) / s  # the exact score of a v-prediction model

    d = score(x, cond) - score(x, null)
    h = 1e-4 / d.norm().item()
    fd = [(score(x + h * d, e) - score(x - h * d, e)) / (2 * h) for e in (cond, null)]
    expected = (fd[0] - fd[1]).norm().item()
    got = ref.jeon_reference(pipe, PROMPTS[:1], shared.double(), native=native)[0]
    assert got == pytest.approx(expected, rel=1e-6)
    # The batched JVP itself, per condition, against the finite difference
    with torch.no_grad():
        _, null_b = ref.encode(pipe, PROMPTS[:1], 1)
    h_u, h_c = ref.score_hvp(pipe, x, torch.tensor(981), cond, null_b, d, native)
    torch.testing.assert_close(h_c, fd[0], rtol=1e-6, atol=1e-6 * fd[0].abs().max().item())
    torch.testing.assert_close(h_u, fd[1], rtol=1e-6, atol=1e-6 * fd[1].abs().max().item())


def test_jeon_float32_agrees_with_float64_and_v_native_is_exact_over_sigma2(pipes, pipes64, noise):
    shared = noise[0]
    j32 = ref.jeon_reference(pipes["epsilon"], PROMPTS, shared)
    j64 = ref.jeon_reference(pipes64["epsilon"], PROMPTS, shared.double())
    np.testing.assert_allclose(j32, j64, rtol=1e-3)
    v = pipes64["v_prediction"]
    sigma2 = 1 - _ab(v, 981)
    np.testing.assert_allclose(ref.jeon_reference(v, PROMPTS, shared.double(), native=True),
                               ref.jeon_reference(v, PROMPTS, shared.double(), native=False) / sigma2, rtol=1e-9)


def test_jeon_two_steps_average_the_first_two(pipes, noise):
    pipe, shared = pipes["epsilon"], noise[0]
    two = ref.jeon_reference(pipe, PROMPTS, shared, n_steps=2)
    one = ref.jeon_reference(pipe, PROMPTS, shared, n_steps=1)
    def second_step(i, t, x_in, out_u, out_c, cond, uncond):  # Jeon's eps formula at the step-1 latent
        d_s = -(out_c - out_u) / ref.alpha_sigma(pipe, t)[1]
        h_u, h_c = ref.score_hvp(pipe, x_in, t, cond, uncond, d_s)
        return ref.flat_norm(h_c - h_u)

    second = ref.walk(pipe, PROMPTS, shared, steps=50, guidance=7.5, scored=range(1, 2), measure=second_step)
    np.testing.assert_allclose(two, (one + second) / 2, rtol=1e-5)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_asthana_cosine_is_per_pixel_over_channels_at_41_on_the_initial_noise(pipes, noise, kind):
    pipe, (shared, _) = pipes[kind], noise
    parts = ref.asthana_parts(pipe, PROMPTS, shared)
    assert np.all(np.abs(parts["cosine"]) <= 1)
    cond, null = _embed(pipe, PROMPTS), _embed(pipe, [""])
    for b in range(2):
        u = _unet(pipe, shared[None], 41, null)[0]
        c = _unet(pipe, shared[None], 41, cond[b:b + 1])[0]
        w = c - u
        cos = (u * w).sum(0) / (u.norm(dim=0) * w.norm(dim=0))  # (h, w): one cosine per pixel
        assert parts["cosine"][b] == pytest.approx(cos.mean().item(), rel=1e-5, abs=1e-6)
    if kind == "epsilon":
        np.testing.assert_allclose(parts["norm"], ref.wen_reference(pipe, PROMPTS, shared), rtol=1e-6)
    np.testing.assert_allclose(ref.asthana_reference(pipe, PROMPTS, shared, gamma=2.0),
                               parts["norm"] + 2.0 * parts["cosine"], rtol=1e-12)
    np.testing.assert_allclose(ref.asthana_reference(pipe, PROMPTS, shared, gamma=0.1, gamma_norm=3.0),
                               3.0 * parts["norm"] + 0.1 * parts["cosine"], rtol=1e-12)


def test_asthana_not_native_v_cosine_uses_the_noise_conversion(pipes, noise):
    pipe, shared = pipes["v_prediction"], noise[0]
    parts = ref.asthana_parts(pipe, PROMPTS[:1], shared, native=False)
    cond, null = _embed(pipe, PROMPTS[:1]), _embed(pipe, [""])
    a, s = _ab(pipe, 41) ** 0.5, (1 - _ab(pipe, 41)) ** 0.5
    x = shared[None]
    u = a * _unet(pipe, x, 41, null)[0] + s * x[0]
    c = a * _unet(pipe, x, 41, cond)[0] + s * x[0]
    cos = torch.nn.functional.cosine_similarity(u, c - u, dim=0).mean().item()
    assert parts["cosine"][0] == pytest.approx(cos, rel=1e-5, abs=1e-6)
    dv = (_unet(pipe, x, 981, cond) - _unet(pipe, x, 981, null)).norm().item()
    assert parts["norm"][0] == pytest.approx(_ab(pipe, 981) ** 0.5 * dv, rel=1e-5)
