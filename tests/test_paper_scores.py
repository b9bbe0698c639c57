"""memgeo's detection with a paper preset gives the papers' own numbers.

On a tiny SD-1.4-shaped latent pipeline folder (DDIM with ``steps_offset=1``, 50 steps, guidance
7.5), ``memgeo detect --scores wen,jeon,asthana --preset P`` with no other timing option is compared,
per prompt, with ``tests/paper_reference.py``: an independent transcription of the authors' scoring
code written with diffusers and transformers only, on the same prompts and the same initial noise.
Agreement to 1e-5 relative in float32, for epsilon and for v-prediction (``native`` convention, the
published formulas), and for the ``eps`` convention on v-prediction against the reference's
non-native variant.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from memgeo.cli import app
from memgeo.memorization.prompt_scores import generation_noise
from memgeo.memorization.prompt_scores.presets import get_preset
from memgeo.models.pipeline import DiffusersPromptModel, build_tiny_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper_reference as ref  # noqa: E402

PROMPTS = ["a photo of a cat", "the red dog on the mat", "a blue digit seven"]
SD14_DDIM = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                 steps_offset=1, clip_sample=False, set_alpha_to_one=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from diffusers import DDIMScheduler

    root = tmp_path_factory.mktemp("paper_scores")
    return {kind: build_tiny_pipeline(root / kind, seed=1, latent=True,
                                      scheduler=DDIMScheduler(**SD14_DDIM, prediction_type=kind))
            for kind in ("epsilon", "v_prediction")}


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def _pipe(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _detect(folder, prompt_file, out, preset, *extra):
    res = CliRunner().invoke(app, ["detect", "--model", str(folder), "--prompts", str(prompt_file), "--preset",
                                   preset, "--scores", "wen,jeon,asthana", "--attribution", "none", "--out", str(out),
                                   *extra])
    assert res.exit_code == 0, res.output
    with open(out / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {name: np.array([float(r[name]) for r in rows]) for name in ("wen", "jeon", "asthana")}


def _latents(folder, preset):
    """The initial noise memgeo drew for the run: (1, G, C, h, w) shared, or (B, G, C, h, w) per prompt."""
    p = get_preset(preset)
    model = DiffusersPromptModel.from_folder(folder)
    if p.seeding == "shared":
        return generation_noise(model, [p.seed], p.generations)
    return generation_noise(model, [p.seed + i for i in range(len(PROMPTS))], p.generations)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("preset", ["jeon2025", "asthana2026",
                                    pytest.param("wen2024", marks=pytest.mark.slow)])  # 50-step window: ~1 min
def test_preset_matches_the_published_code(folders, prompt_file, tmp_path, kind, preset):
    folder = folders[kind]
    ours = _detect(folder, prompt_file, tmp_path / "run", preset)
    pipe = _pipe(folder)
    lat = _latents(folder, preset)
    p = get_preset(preset)
    window = tuple(p.score_params["wen"]["window"])
    with torch.no_grad():
        want_wen = ref.wen_reference(pipe, PROMPTS, lat, steps=50, guidance=7.5, window=window, native=True)
        want_asthana = ref.asthana_reference(pipe, PROMPTS, lat, gamma=2.0, gamma_norm=1.0, low_step=-3,
                                             native=True)
    want_jeon = ref.jeon_reference(pipe, PROMPTS, lat, steps=50, guidance=7.5, n_steps=1, native=True)
    np.testing.assert_allclose(ours["wen"], want_wen, rtol=1e-5)
    np.testing.assert_allclose(ours["jeon"], want_jeon, rtol=1e-5)
    np.testing.assert_allclose(ours["asthana"], want_asthana, rtol=1e-5, atol=1e-6)
    # the scores are not trivially equal across prompts (the comparison could fail)
    assert np.ptp(want_wen) > 1e-3 * np.abs(want_wen).max() and np.ptp(want_jeon) > 0


def test_eps_convention_on_v_prediction_is_the_exact_score(folders, prompt_file, tmp_path):
    """--v-convention eps: ||d eps|| = psi ||d v||, Jeon with the exact score, Asthana on eps; a factor apart."""
    folder = folders["v_prediction"]
    ours = _detect(folder, prompt_file, tmp_path / "run", "jeon2025", "--v-convention", "eps")
    native = _detect(folder, prompt_file, tmp_path / "native", "jeon2025")
    pipe = _pipe(folder)
    lat = _latents(folder, "jeon2025")
    with torch.no_grad():
        want_wen = ref.wen_reference(pipe, PROMPTS, lat, window=(0, 1), native=False)
        want_asthana = ref.asthana_reference(pipe, PROMPTS, lat, native=False)
    want_jeon = ref.jeon_reference(pipe, PROMPTS, lat, n_steps=1, native=False)
    np.testing.assert_allclose(ours["wen"], want_wen, rtol=1e-5)
    np.testing.assert_allclose(ours["jeon"], want_jeon, rtol=1e-5)
    np.testing.assert_allclose(ours["asthana"], want_asthana, rtol=1e-5, atol=1e-6)
    # the two conventions differ by the documented constants at t = 981: psi for Wen, sigma^2 for Jeon
    ab = float(pipe.scheduler.alphas_cumprod[981])
    np.testing.assert_allclose(ours["wen"], np.sqrt(ab) * native["wen"], rtol=1e-5)
    np.testing.assert_allclose(native["jeon"], ours["jeon"] / (1 - ab), rtol=1e-4)


def test_old_first_time_differs_from_the_schedulers(folders, prompt_file, tmp_path):
    """--t-first 1.0 (memgeo's former default on pipelines) gives different numbers: the fix matters."""
    folder = folders["epsilon"]
    grid = _detect(folder, prompt_file, tmp_path / "grid", "jeon2025")
    old = _detect(folder, prompt_file, tmp_path / "old", "jeon2025", "--t-first", "1.0")
    assert np.max(np.abs(old["jeon"] / grid["jeon"] - 1)) > 1e-3
