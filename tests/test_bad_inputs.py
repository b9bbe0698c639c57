"""Bad inputs and faults end in one line ``error: <problem>; <fix>`` (exit 2) and lose nothing.

One table of cases (:data:`CASES`): each builds the command line from the module's shared assets
(tiny random-weight models and deliberately broken files, made once) and names a fragment the
error line must contain. Every case must exit with code 2, print exactly one ``error:`` line and no
traceback, and leave its output folder uncreated. The faults that need a patched system call
(disk full, read-only folder), the lock, the valid-but-unusual inputs (big-endian .npy) and the
prompt warnings have their own tests below.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from memgeo.models.caption import CaptionDiffusionModel, CaptionModelConfig, build_vocab, save_caption_model
from memgeo.models.checkpoint import MODEL_FILE, save_model
from memgeo.models.nets import MLPConfig, build_model
from memgeo.models.pipeline import build_tiny_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")

CAPTIONS = ["a photo of zebra", "a photo of quokka", "a digit one", "a digit two"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """Every input the cases need, made once: good models, broken copies and bad files."""
    d = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    # a pixel-space tiny pipeline and four broken copies
    pipe = build_tiny_pipeline(d / "pipe")
    for name in ("bad_unet", "bad_scheduler", "empty_tokenizer", "pickle_bin"):
        shutil.copytree(pipe, d / name)
    cfg_file = d / "bad_unet" / "unet" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "block_out_channels": [16, 32, 64]}))
    (d / "bad_scheduler" / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDPMScheduler", "num_train_timesteps": "many"}))
    for f in (d / "empty_tokenizer" / "tokenizer").iterdir():
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    from safetensors.torch import load_file

    unet_dir = d / "pickle_bin" / "unet"
    torch.save(load_file(unet_dir / "diffusion_pytorch_model.safetensors"), unet_dir / "diffusion_pytorch_model.bin")
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    # a caption model and its prompts
    cap = CaptionModelConfig(data_shape=(1, 4, 4), vocab=build_vocab(CAPTIONS), hidden=32, depth=1, embed_dim=16,
                             heads=2, max_length=8)
    save_caption_model(CaptionDiffusionModel(cap).eval(), d / "cap")
    (d / "prompts.txt").write_text("\n".join(CAPTIONS) + "\n")
    # an MLP checkpoint on (1, 8, 8) and a copy whose metadata claims a huge width
    save_model(build_model(MLPConfig(data_shape=(1, 8, 8), hidden=16, depth=1, num_classes=None)), d / "mlp")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(d / "mlp" / MODEL_FILE), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    config = json.loads(meta["model_config"])
    config["hidden"] = 10 ** 7  # 10^7 x 10^7 float32 weights would be 400 TB
    (d / "huge").mkdir()
    save_file(tensors, str(d / "huge" / MODEL_FILE), metadata={**meta, "model_config": json.dumps(config)})
    # points and data files
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(5, 1, 8, 8)).astype(np.float32) * 0.5
    np.save(d / "pts.npy", pts)
    np.save(d / "pts_big_endian.npy", pts.astype(">f4"))
    np.save(d / "pts_1e30.npy", np.full((5, 1, 8, 8), 1e30, dtype=np.float32))
    np.save(d / "pts_5x1x4x16.npy", pts.reshape(5, 1, 4, 16))
    np.save(d / "flat.npy", rng.normal(size=(40, 64)).astype(np.float32))
    # configs of the wrong type or encoding
    (d / "list.json").write_text("[1, 2, 3]")
    (d / "latin1.json").write_bytes('{"model": "caf\u00e9"}'.encode("latin-1"))
    (d / "nan.json").write_text('{"runs": NaN}')
    (d / "a_file").write_text("not a folder")
    return d


def _sample(a: Path, out: Path, *extra: str) -> list[str]:
    return ["sample", "--model", a / "pipe", "--n", "2", "--steps", "2", "--out", out, *extra]


def _detect(a: Path, out: Path, *extra: str) -> list[str]:
    return ["detect", "--model", a / "cap", "--prompts", a / "prompts.txt", "--steps", "2", "--scores", "wen",
            "--attribution", "none", "--out", out, *extra]


def _mitigate(a: Path, out: Path, *extra: str) -> list[str]:
    return ["mitigate", "--model", a / "cap", "--prompts", a / "prompts.txt", "--steps", "2", "--generations", "1",
            "--method", "none", "--out", out, *extra]


def _sharpness(a: Path, out: Path, points: str = "pts.npy", model: str = "mlp") -> list[str]:
    return ["sharpness", "--model", a / model, "--points", a / points, "--t", "0.5", "--out", out]


Builder = Callable[[Path, Path], list]

#: (id, argv builder (assets, out) -> argv, fragment of the one error line)
CASES: list[tuple[str, Builder, str]] = [
    # output folders that cannot be made
    ("out_parent_is_a_file", lambda a, o: _sharpness(a, a / "a_file" / "sub"), "is a file"),
    ("out_is_a_file", lambda a, o: _sharpness(a, a / "a_file"), "is not a folder"),
    # broken diffusers components
    ("pipeline_edited_unet_config", lambda a, o: ["sample", "--model", a / "bad_unet", "--n", "1", "--out", o],
     "cannot load unet/"),
    ("pipeline_bad_scheduler_config", lambda a, o: ["sample", "--model", a / "bad_scheduler", "--n", "1", "--out", o],
     "cannot load scheduler/"),
    ("pipeline_empty_tokenizer", lambda a, o: ["sample", "--model", a / "empty_tokenizer", "--n", "1", "--out", o],
     "holds no vocabulary"),
    ("pipeline_pickle_bin_weights", lambda a, o: ["sample", "--model", a / "pickle_bin", "--n", "1", "--out", o],
     "never unpickles"),
    # sizes that cannot fit in memory, refused up front with an estimate
    ("sample_n_1e9", lambda a, o: ["sample", "--model", a / "mlp", "--n", str(10 ** 9), "--out", o], "of memory"),
    ("detect_generations_1e9", lambda a, o: _detect(a, o, "--generations", str(10 ** 9)), "of memory"),
    ("mitigate_generations_1e9", lambda a, o: [*_mitigate(a, o)[:-4], "--generations", str(10 ** 9),
                                               "--method", "none", "--out", o], "of memory"),
    ("collapse_runs_1e9", lambda a, o: ["collapse", "--runs", str(10 ** 9), "--out", o], "of memory"),
    # a checkpoint whose metadata claims a huge width: refused before anything is allocated
    ("checkpoint_huge_width", lambda a, o: _sharpness(a, o, model="huge"), "do not match its config"),
    # bad point files
    ("points_1e30", lambda a, o: _sharpness(a, o, "pts_1e30.npy"), "beyond"),
    ("points_reshaped_5x1x4x16", lambda a, o: _sharpness(a, o, "pts_5x1x4x16.npy"), "per-point shape (1, 4, 16)"),
    ("lid_points_reshaped", lambda a, o: ["lid", "--model", a / "mlp", "--points", a / "pts_5x1x4x16.npy",
                                          "--t0", "0.1", "--out", o], "per-point shape"),
    # configs and parameters of the wrong type or encoding
    ("config_is_a_list", lambda a, o: [*_detect(a, o), "--config", a / "list.json"], "not an object"),
    ("config_not_utf8", lambda a, o: [*_detect(a, o), "--config", a / "latin1.json"], "not UTF-8"),
    ("config_nan_literal", lambda a, o: ["collapse", "--config", a / "nan.json", "--out", o], "not valid JSON"),
    ("params_is_a_list", lambda a, o: _mitigate(a, o, "--params", "[1, 2]"), "--params"),
    ("params_not_utf8", lambda a, o: _mitigate(a, o, "--params", '{"none": {"x": "\udcff"}}'), "not UTF-8"),
    ("prompt_not_utf8", lambda a, o: _sample(a, o, "--prompt", "a \udcff cat"), "not UTF-8"),
    # names and NaN/inf options
    ("audit_lid_data_foo", lambda a, o: ["audit", "--model", a / "mlp", "--points", a / "pts.npy",
                                         "--train-data", a / "flat.npy", "--lid-data", "foo", "--out", o],
     "unknown LID estimator 'foo'"),
    ("sample_guidance_nan", lambda a, o: _sample(a, o, "--guidance", "nan"), "guidance=nan is not a finite"),
    ("sample_guidance_inf", lambda a, o: _sample(a, o, "--guidance", "inf"), "not a finite number"),
    ("detect_guidance_nan", lambda a, o: _detect(a, o, "--guidance", "nan"), "not a finite number"),
    ("mitigate_guidance_nan", lambda a, o: _mitigate(a, o, "--guidance", "nan"), "not a finite number"),
    ("sharpness_t_nan", lambda a, o: [*_sharpness(a, o)[:5], "--t", "nan", "--out", o], "not a finite number"),
    ("lid_t0_inf", lambda a, o: ["lid", "--model", a / "mlp", "--points", a / "pts.npy", "--t0", "inf",
                                 "--out", o], "not a finite number"),
    ("collapse_real_share_nan", lambda a, o: ["collapse", "--loop", "real-share", "--real-share", "nan",
                                              "--out", o], "not a finite number"),
    ("detect_clip_reversed", lambda a, o: _detect(a, o, "--clip", "1:-1"), "reversed"),
    # the suggested fix names a flag that exists
    ("train_conditional_without_labels", lambda a, o: ["train", "--data", f"npy:{a / 'flat.npy'}", "--conditional",
                                                       "--steps", "1", "--out", o], "--no-conditional"),
]


def _one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "; " in lines[0], lines[0]  # problem; fix
    return lines[0]


@pytest.mark.parametrize("build, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_writes_nothing(run_cli, assets, tmp_path, build, fragment):
    out = tmp_path / "out"
    code, _, err = run_cli(*build(assets, out))
    line = _one_error_line(code, err)
    assert fragment in line, line
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_the_table_covers_the_issue_cases():
    ids = {c[0] for c in CASES}
    assert len(ids) == len(CASES)
    for needed in ("pipeline_pickle_bin_weights", "sample_n_1e9", "detect_generations_1e9", "collapse_runs_1e9",
                   "checkpoint_huge_width", "points_1e30", "config_is_a_list", "config_not_utf8",
                   "audit_lid_data_foo", "sample_guidance_nan", "detect_clip_reversed", "points_reshaped_5x1x4x16",
                   "train_conditional_without_labels", "out_parent_is_a_file"):
        assert needed in ids


# --- faults of the file system ----------------------------------------------------------------------
def _raise(code: int) -> Callable[..., None]:
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


def test_disk_full_is_one_error_line_and_keeps_nothing_half_written(run_cli, assets, tmp_path, monkeypatch):
    out = tmp_path / "full"
    monkeypatch.setattr("memgeo.io.os.fsync", _raise(errno.ENOSPC))
    code, _, err = run_cli(*_sharpness(assets, out))
    line = _one_error_line(code, err)
    assert "No space left on device" in line and "free disk space" in line
    assert not out.exists()  # the run made the folder, wrote nothing complete: it is removed


def test_disk_full_on_a_finished_run_keeps_its_results(run_cli, assets, tmp_path, monkeypatch):
    out = tmp_path / "done"
    code, _, err = run_cli(*_sharpness(assets, out))
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setattr("memgeo.io.os.fsync", _raise(errno.ENOSPC))
    code, _, err = run_cli(*_sharpness(assets, out))
    _one_error_line(code, err)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # atomic writes: every earlier file is intact, no temp or lock file is left


def test_read_only_folder_is_one_error_line(run_cli, assets, tmp_path, monkeypatch):
    out = tmp_path / "ro"
    monkeypatch.setattr("memgeo.io.tempfile.mkstemp", _raise(errno.EROFS))
    code, _, err = run_cli(*_sharpness(assets, out))
    line = _one_error_line(code, err)
    assert "Read-only file system" in line and "writable --out" in line
    assert not out.exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_is_refused_before_anything(run_cli, assets, tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, _, err = run_cli(*_sharpness(assets, parent / "out"))
        assert "not writable" in _one_error_line(code, err)
    finally:
        parent.chmod(0o755)


def test_refused_rerun_keeps_the_finished_runs_config(run_cli, assets, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli(*_sharpness(assets, out))
    assert code == 0, err
    config = (out / "config.json").read_bytes()
    provenance = (out / "provenance.json").read_bytes()
    code, _, err = run_cli(*_sharpness(assets, out, "pts_5x1x4x16.npy"))
    _one_error_line(code, err)
    assert (out / "config.json").read_bytes() == config
    assert (out / "provenance.json").read_bytes() == provenance
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


# --- the lock ------------------------------------------------------------------------------------------
def test_second_writer_on_a_folder_is_refused(run_cli, assets, tmp_path):
    """A live process holding OUT/.memgeo.lock (as a detect run started just before would) refuses this one."""
    out = tmp_path / "shared"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".memgeo.lock").write_text(f"{other.pid}\n")
        code, _, err = run_cli(*_detect(assets, out))
        line = _one_error_line(code, err)
        assert f"is being written by process {other.pid}" in line and "choose another --out" in line
        assert sorted(p.name for p in out.iterdir()) == [".memgeo.lock"]  # nothing of ours was written
    finally:
        other.kill()
        other.wait()


def test_lock_of_a_dead_process_is_taken_over_and_released(run_cli, assets, tmp_path):
    out = tmp_path / "stale"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".memgeo.lock").write_text(f"{dead.pid}\n")
    code, _, err = run_cli(*_sharpness(assets, out))
    assert code == 0, err
    assert not (out / ".memgeo.lock").exists()
    assert (out / "config.json").is_file() and (out / "sharpness.json").is_file()


# --- valid inputs that must work, and warnings ----------------------------------------------------
def test_big_endian_points_give_the_same_result(run_cli, assets, tmp_path):
    outs = []
    for name in ("pts.npy", "pts_big_endian.npy"):
        out = tmp_path / name
        code, _, err = run_cli(*_sharpness(assets, out, name))
        assert code == 0, err
        outs.append(json.loads((out / "sharpness.json").read_text())["points"])
    assert [p["eigenvalues_sigma2"] for p in outs[0]] == [p["eigenvalues_sigma2"] for p in outs[1]]


def test_long_and_unknown_prompts_are_warned_about(run_cli, assets, tmp_path):
    long_prompt = " ".join(["cat"] * 30)  # 30 word tokens + begin/end for a 16-token tokenizer
    code, _, err = run_cli(*_sample(assets, tmp_path / "long", "--prompt", long_prompt))
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "16 tokens" in warnings[0] and "16 token(s) dropped" in warnings[0], err
    code, _, err = run_cli(*_sample(assets, tmp_path / "unk", "--prompt", "!!! ???"))
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "unknown to the tokenizer" in warnings[0], err
    code, _, err = run_cli(*_sample(assets, tmp_path / "ok", "--prompt", "a photo of a cat"))
    assert code == 0 and "warning:" not in err, err
