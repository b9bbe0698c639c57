"""``--dtype`` on ``memgeo detect`` and ``memgeo mitigate``: reduced precision really runs, stays close to float32.

A tiny random-weight SD 1.x-style pipeline (SD 1.4's DDIM scheduler, epsilon) is scored in float32,
bfloat16 and float16 with the 50-step sampler and guidance 7.5. The reduced-precision values must
differ from float32 (the dtype took effect) and stay within a tolerance taken from the measurement in
benchmarks/prompt_families.py with margin. Measured, as the largest difference over the prompts in
units of the largest |float32 value|: bfloat16 up to 0.16 (asthana on these four prompts; 0.19 on
the v-prediction model over eight), float16 up to 0.027; tolerances here 0.3 and 0.05 (a
garbled result, e.g. a wrong scale or unguided noise, lands far outside them). Scores the CPU cannot
run in a dtype fail with a one-line error.
"""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import torch

from memgeo.memorization.prompt_scores import generation_noise
from memgeo.models.loading import load
from memgeo.workflows.detect import DetectConfig, _config_key, prompt_noise

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["a photo of a cat", "the red dog on the mat", "a blue digit seven", "a cat"]
TOLERANCE = {"bfloat16": 0.3, "float16": 0.05}  # of max |float32 value| over the prompts
SAMPLING = ["--steps", "50", "--guidance", "7.5", "--attribution", "none"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from diffusers import DDIMScheduler

    from memgeo.models.pipeline import build_tiny_pipeline

    root = tmp_path_factory.mktemp("dtype")
    folder = build_tiny_pipeline(root / "sd", seed=2, scheduler=DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
        clip_sample=False, set_alpha_to_one=False))
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return folder, prompts


def _scores(folder) -> dict[str, np.ndarray]:
    with open(folder / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0] if k in ("wen", "jeon", "jeon_vjp", "asthana")}


@pytest.fixture(scope="module")
def float32_scores(pipe, tmp_path_factory):
    from typer.testing import CliRunner

    from memgeo.cli import app

    folder, prompts = pipe
    out = tmp_path_factory.mktemp("d32")
    res = CliRunner().invoke(app, ["detect", "--model", str(folder), "--prompts", str(prompts), "--scores",
                                   "wen,jeon,asthana", *SAMPLING, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return _scores(out)


def _check_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], dtype: str) -> None:
    for name, v in got.items():
        ref = want[name]
        assert np.isfinite(v).all(), name
        assert not np.array_equal(v, ref), f"{name} in {dtype} equals float32 exactly: the dtype had no effect"
        bound = TOLERANCE[dtype] * np.abs(ref).max()
        assert np.abs(v - ref).max() <= bound, (name, dtype, v, ref)


@pytest.mark.parametrize("dtype,scores", [("bfloat16", "wen,asthana"), ("float16", "wen,jeon,asthana")])
def test_reduced_precision_detect_is_close_and_different(pipe, float32_scores, run_cli, tmp_path, dtype, scores):
    folder, prompts = pipe
    code, _, err = run_cli("detect", "--model", folder, "--prompts", prompts, "--scores", scores, "--dtype", dtype,
                           *SAMPLING, "--out", tmp_path / "d")
    assert code == 0, err
    assert json.loads((tmp_path / "d" / "config.json").read_text())["dtype"] == dtype
    got = _scores(tmp_path / "d")
    assert set(got) == set(scores.split(","))
    _check_close(got, float32_scores, dtype)


def test_bfloat16_jeon(pipe, float32_scores, run_cli, tmp_path):
    folder, prompts = pipe
    code, _, err = run_cli("detect", "--model", folder, "--prompts", prompts, "--scores", "jeon", "--dtype",
                           "bfloat16", *SAMPLING, "--out", tmp_path / "d")
    assert code == 0, err
    _check_close(_scores(tmp_path / "d"), float32_scores, "bfloat16")


def test_sharpness_in_reduced_precision(pipe, run_cli, tmp_path):
    """The Jacobian is taken in the model's dtype; its spectrum in float32 (no eigh in float16 on CPU)."""
    folder, prompts = pipe
    got = {}
    for dtype in ("float32", "float16", "bfloat16"):
        code, _, err = run_cli("detect", "--model", folder, "--prompts", prompts, "--scores", "sharpness",
                               "--dtype", dtype, *SAMPLING, "--out", tmp_path / dtype)
        assert code == 0, err
        with open(tmp_path / dtype / "scores.csv") as fh:
            got[dtype] = np.array([float(r["sharpness"]) for r in csv.DictReader(fh)])
    for dtype in ("float16", "bfloat16"):
        assert not np.array_equal(got[dtype], got["float32"])
        assert np.abs(got[dtype] - got["float32"]).max() <= TOLERANCE[dtype] * np.abs(got["float32"]).max()


def test_bad_dtype_is_one_line_error(pipe, run_cli, tmp_path):
    folder, prompts = pipe
    code, _, err = run_cli("detect", "--model", folder, "--prompts", prompts, "--dtype", "int8", "--out", tmp_path / "d")
    assert code == 2 and err.count("error: ") == 1 and "dtype" in err and "bfloat16" in err


def test_noise_is_float32_noise_cast(pipe):
    """Same seeds, same noise in every dtype up to the cast; float32 is generation_noise unchanged."""
    folder, _ = pipe
    m32 = load(folder)
    ref = generation_noise(m32, [3, 9], 2)
    assert torch.equal(prompt_noise(m32, [3, 9], 2), ref)
    for dtype in (torch.bfloat16, torch.float16):
        got = prompt_noise(load(folder, dtype=dtype), [3, 9], 2)
        assert got.dtype == dtype
        assert torch.equal(got, ref.to(dtype))
        assert (got.float() - ref).abs().max() <= 2.0 ** -8 * ref.abs().max()  # the cast's rounding only


def test_default_dtype_keeps_the_resume_key():
    """Runs made before --dtype existed (no dtype field) keep their config key; a reduced dtype changes it."""
    cfg = DetectConfig(model="m", prompts="p")
    old = cfg.model_dump(mode="json", exclude={"attribution_score", "attribution_max_prompts", "labels_from_field",
                                               "dtype"})
    assert _config_key(cfg) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert _config_key(cfg.model_copy(update={"dtype": "bfloat16"})) != _config_key(cfg)
    assert DetectConfig(model="m", prompts="p", dtype="torch.float16").dtype == "float16"


def test_mitigate_optimisers_move_in_reduced_precision(pipe, run_cli, tmp_path):
    """SAIL, han_noise and wen_prompt keep Adam's iterate and moments in float32 (in the model's float16 the
    step underflowed: NaN or no movement), so they optimise in both reduced dtypes."""
    folder, prompts = pipe
    common = ["mitigate", "--model", folder, "--prompts", prompts, "--method", "sail,han_noise,wen_prompt",
              "--generations", "1", "--steps", "6", "--guidance", "7.5", "--no-progress",
              "--params", '{"sail": {"opt_steps": 2}, "han_noise": {"iters": 2}, "wen_prompt": {"opt_steps": 2}}']
    for dtype in ("bfloat16", "float16"):
        out = tmp_path / dtype
        code, _, err = run_cli(*common, "--dtype", dtype, "--out", out)
        assert code == 0, err
        for method, key in (("sail", "noise_shift"), ("han_noise", "noise_shift"), ("wen_prompt", "cond_change")):
            rec = json.loads((out / "records" / method / "00000.json").read_text())
            assert rec["diagnostics"][key][0] > 0, (dtype, method)  # the optimisation moved
            x = np.load(out / "records" / method / "00000.npy")
            assert x.dtype == np.float32 and np.isfinite(x).all()