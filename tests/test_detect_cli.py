"""`memgeo detect` end to end: caption checkpoint and diffusers pipeline folders, resume, errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from prompt_toys import write_caption_checkpoint


pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = ["a photo of zebra", "a photo of quokka", "a digit one", "a digit two", "a digit three", "a digit four"]


@pytest.fixture(scope="module")
def caption_folder(tmp_path_factory):
    """A small random-weight caption model saved as a checkpoint folder, with a labelled prompt file."""
    folder = tmp_path_factory.mktemp("caption")
    write_caption_checkpoint(folder, CAPTIONS)
    return folder


def _args(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["detect", "--model", str(folder / "model"), "--prompts", str(folder / "prompts.jsonl"),
            "--out", str(out), "--steps", "3", "--batch", "2", "--clip", "-1:1", *extra]


def _score_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "scores_per_generation.csv") as fh:
        return list(csv.DictReader(fh))


def test_detect_end_to_end_on_a_caption_checkpoint(run_cli, caption_folder, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(*_args(caption_folder, out, "--scores", "wen,jeon,jeon_vjp,sharpness,flipd_cond",
                                       "--generations", "2", "--labels-from-field", "memorized",
                                       "--train-data", str(caption_folder / "train_x.npy"), "--wen-window", "0:2",
                                       "--json"))
    assert code == 0, err
    brief = json.loads(stdout)
    assert brief["n_prompts"] == 6 and set(brief["scores"]) == {"wen", "jeon", "jeon_vjp", "sharpness", "flipd_cond"}
    summary = json.loads((out / "summary.json").read_text())
    wen = next(r for r in summary["table"] if r["score"] == "wen")
    assert wen["n_pos"] == 2 and wen["n_neg"] == 4 and 0 <= wen["auroc"] <= 1
    assert wen["evals_per_prompt"] == 2 * 2 * 2  # 2 steps x (c, null) x 2 generations
    assert summary["copies"]["n_generations"] == 12 and "copy_detection" in summary
    rows = _score_rows(out)
    assert len(rows) == 12 and {"is_copy", "nn_index", "sharpness.n_flat"} <= set(rows[0])
    assert len(list((out / "prompts").glob("*.json"))) == 6
    rec = json.loads((out / "prompts" / "000003.json").read_text())
    assert rec["seed"] == 1234 and json.loads((out / "prompts" / "000002.json").read_text())["seed"] == 2
    page = (out / "report.html").read_text()
    for text in ("Detection scores", "ROC curves", "Token attribution", "Copies of the training data"):
        assert text in page
    attr = json.loads((out / "attribution.json").read_text())
    assert attr[0]["label"] == 1 and attr[0]["tokens"][0] == "<bos>"  # memorized prompts listed first
    assert sorted(a["label"] for a in attr) == [0, 0, 0, 0, 1, 1]
    for name in ("roc.png", "histograms.png", "cost_auroc.png", "config.json", "provenance.json"):
        assert (out / name).is_file()


def test_restart_after_losing_records_gives_identical_results(run_cli, caption_folder, tmp_path):
    out = tmp_path / "run"
    args = _args(caption_folder, out, "--scores", "wen,asthana,hessian_diff", "--generations", "2")
    assert run_cli(*args)[0] == 0
    first = _score_rows(out)
    kept = (out / "prompts" / "000000.json").read_text()
    (out / "prompts" / "000003.json").unlink()
    (out / "prompts" / "000005.json").write_text('{"index": 5, "prompt": "a digit')  # a torn write
    (out / "scores_per_generation.csv").unlink()
    code, _, err = run_cli(*args)
    assert code == 0 and "resuming: 4 of 6" in err
    assert _score_rows(out) == first
    assert (out / "prompts" / "000000.json").read_text() == kept  # finished prompts were not recomputed


@pytest.mark.slow  # a fresh interpreter (torch import) plus two runs: about 15 s on a busy 2-core machine
def test_a_killed_run_resumes_to_the_same_results(run_cli, caption_folder, tmp_path):
    args = ["--scores", "wen,flipd_cond,flipd_uncond", "--generations", "3", "--batch", "1", "--steps", "60"]
    ref = tmp_path / "ref"
    assert run_cli(*_args(caption_folder, ref, *args))[0] == 0
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from memgeo.cli import main; main()",
                             *_args(caption_folder, out, *args)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "prompts").glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = len(list((out / "prompts").glob("*.json")))
    assert n_done >= 1
    if n_done == 6:
        pytest.skip("the run finished before it could be killed")
    assert not (out / "scores.csv").exists()
    code, _, err = run_cli(*_args(caption_folder, out, *args))
    assert code == 0 and f"resuming: {n_done} of 6" in err
    assert _score_rows(out) == _score_rows(ref)


def test_bad_input_and_changed_options_are_refused(run_cli, caption_folder, tmp_path):
    code, _, err = run_cli(*_args(caption_folder, tmp_path / "a", "--scores", "wen,nope"))
    assert code == 2 and "unknown prompt score 'nope'" in err and not (tmp_path / "a").exists()
    code, _, err = run_cli(*_args(caption_folder, tmp_path / "b", "--scores", "wen", "--labels-from-field", "gold"))
    assert code == 2 and "no 'gold' field" in err and not (tmp_path / "b").exists()
    code, _, err = run_cli(*_args(caption_folder, tmp_path / "c", "--wen-window", "3"))
    assert code == 2 and "START:END" in err
    out = tmp_path / "d"
    assert run_cli(*_args(caption_folder, out, "--scores", "wen"))[0] == 0
    code, _, err = run_cli(*_args(caption_folder, out, "--scores", "wen", "--generations", "2"))
    assert code == 2 and "different configuration" in err


def test_detect_runs_on_a_tiny_diffusers_pipeline_folder(run_cli, tmp_path):
    pipeline = pytest.importorskip("memgeo.models.pipeline")
    folder = tmp_path / "pipe"
    pipeline.build_tiny_pipeline(folder, seed=0)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\na red car\n")
    out = tmp_path / "run"
    code, _, err = run_cli("detect", "--model", str(folder), "--prompts", str(prompts), "--out", str(out),
                                "--scores", "wen,jeon,asthana,hessian_diff", "--steps", "2")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["score"] for r in summary["table"]][:4] == ["wen", "jeon", "asthana", "hessian_diff"]
    with open(out / "scores.csv") as fh:
        assert all(np.isfinite(float(r["wen"])) for r in csv.DictReader(fh))
    assert (out / "report.html").is_file()
