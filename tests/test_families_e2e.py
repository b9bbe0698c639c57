"""Every supported pipeline family runs ``memgeo detect`` (all first-step scores) and ``mitigate`` (SAIL) end to end.

Tiny random-weight folders built from config: SD 1.x-style (DDIM, eps and v), SDXL-style (two text
encoders, pooled embedding, time ids; Euler) and SD3-style flow matching (FlowMatchEuler, velocity).
The checks are about the plumbing: the loader dispatches, the scheduler's first timestep is where
the scores are evaluated, every score is finite and differs between prompts, SAIL moves the noise.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from memgeo.cli import app
from memgeo.models.loading import load

FIRST_STEP = "wen,jeon,jeon_vjp,asthana,hessian_diff,sharpness"
PROMPTS = ["a photo of a cat", "the red dog on the mat", "a blue digit seven"]


def _sd(folder):
    from diffusers import DDIMScheduler

    from memgeo.models.pipeline import build_tiny_pipeline

    return build_tiny_pipeline(folder, seed=2, scheduler=DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
        clip_sample=False, set_alpha_to_one=False, prediction_type="v_prediction"))


def _sdxl(folder):
    from memgeo.models.pipeline_sdxl import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(folder, seed=2)


def _flow(folder):
    from memgeo.models.pipeline_flow import build_tiny_flow_pipeline

    return build_tiny_flow_pipeline(folder, seed=2)


BUILDERS = {"sd2_v": (_sd, "DiffusersPromptModel"), "sdxl": (_sdxl, "DiffusersSDXLModel"),
            "sd3_flow": (_flow, "DiffusersFlowModel")}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: build(root / name) for name, (build, _) in BUILDERS.items()}


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p, "memorized": int(i == 0)}) for i, p in enumerate(PROMPTS)))
    return path


@pytest.mark.parametrize("family", list(BUILDERS))
def test_detect_every_first_step_score(folders, prompt_file, tmp_path, family):
    folder = folders[family]
    model = load(folder)
    assert type(model).__name__ == BUILDERS[family][1]
    res = CliRunner().invoke(app, ["detect", "--model", str(folder), "--prompts", str(prompt_file), "--scores",
                                   FIRST_STEP, "--steps", "10", "--guidance", "5", "--attribution", "none",
                                   "--labels-from-field", "memorized", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "d" / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    for name in FIRST_STEP.split(","):
        vals = np.array([float(r[name]) for r in rows])
        assert np.isfinite(vals).all() and np.ptp(vals) > 0, (name, vals)
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    grid = model.sampling_grid(10)
    assert summary["grid"]["first_t"] == pytest.approx(float(grid.ts[0]))
    assert summary["grid"]["first_timestep"] == pytest.approx(float(grid.timesteps[0]))


@pytest.mark.parametrize("family", list(BUILDERS))
def test_mitigate_sail(folders, prompt_file, tmp_path, family):
    res = CliRunner().invoke(app, ["mitigate", "--model", str(folders[family]), "--prompts", str(prompt_file),
                                   "--method", "sail", "--generations", "1", "--steps", "6", "--guidance", "4",
                                   "--params", '{"sail": {"opt_steps": 2}}', "--out", str(tmp_path / "m"),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "m" / "results.json").read_text())
    sail = next(r for r in summary["table"] if r["method"] == "sail")
    base = next(r for r in summary["table"] if r["method"] == "none")
    assert sail["nfe_per_generation"] > base["nfe_per_generation"]


def test_flow_eps_convention_is_refused_at_sigma_one(folders, prompt_file, tmp_path, run_cli):
    code, _, err = run_cli("detect", "--model", folders["sd3_flow"], "--prompts", prompt_file, "--scores", "wen",
                           "--v-convention", "eps", "--steps", "4", "--attribution", "none", "--out", tmp_path / "d")
    assert code == 2 and err.count("error: ") == 1
    assert "sigma = 1" in err and "native" in err
