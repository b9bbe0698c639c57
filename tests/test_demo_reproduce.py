"""The demo's folder is self-contained: its printed commands recompute its numbers.

A tiny demo (small MLP, few steps, few samples) runs once per module; every command of its
``reproduce`` list is then run through the CLI from inside the folder, and each output is compared
with what the demo itself saved, sample by sample (generations, sharpness, LID_model, LID_data, MMH
labels) and for the headline numbers (copy rates, sharpness AUROC, MMH counts). The default-sized
demo is checked the same way in ``test_demo_acceptance.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memgeo.models import TrainConfig
from memgeo.workflows import DemoConfig, ToyConfig, run_demo
from memgeo.workflows.lid_runs import AuditConfig

from demo_checks import check_reproduced, run_reproduce

TINY = dict(toy=ToyConfig(enabled=False), hidden=64, depth=1, n_samples=8, sample_steps=20, sharpness_t=(0.1,),
            trajectory_every=4, train=TrainConfig(steps=600, batch_size=128, lr=3e-3, checkpoint_every=600,
                                                  log_every=100))


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory, single_thread):
    out = tmp_path_factory.mktemp("tiny") / "demo"
    metrics = run_demo(DemoConfig(**TINY), out)
    return out, metrics


def test_demo_writes_its_training_set(tiny_demo):
    from memgeo.data import load_dataset, replace_class_with_copies

    out, m = tiny_demo
    x, y, dup = (np.load(out / f) for f in ("train_x.npy", "train_labels.npy", "train_duplicates.npy"))
    # Independent reference: the injection recomputed from the embedded digits.
    ref = replace_class_with_copies(load_dataset("digits"), 9, seed=0)
    np.testing.assert_array_equal(x, ref.x.numpy())
    np.testing.assert_array_equal(y, ref.y.numpy())
    assert x.dtype == np.float32 and y.dtype == np.int64 and dup.dtype == bool
    # The flagged rows are exactly the injected copies: all class 9, all equal to the source image.
    assert dup.sum() == m["injection"]["n_copies"] == (y == 9).sum()
    np.testing.assert_array_equal(x[dup], np.broadcast_to(load_dataset("digits").x[m["injection"]["source_index"]]
                                                          .numpy(), x[dup].shape))
    assert not (x[~dup][:, None] == x[dup][:1]).all(axis=(2, 3, 4)).any()


def test_reproduce_commands_recompute_the_numbers(tiny_demo, run_cli, monkeypatch):
    out, m = tiny_demo
    run_reproduce(out, m, run_cli, monkeypatch)
    check_reproduced(out, m)


def test_reproduce_script_matches_metrics(tiny_demo):
    out, m = tiny_demo
    script = (out / "reproduce.sh").read_text()
    assert os.access(out / "reproduce.sh", os.X_OK)
    for c in m["reproduce"][1:]:
        if c["command"]:
            assert c["command"] in script.splitlines()
    for c in m["reproduce"]:
        assert set(c) >= {"what", "command"} and c["what"]


def test_audit_defaults_equal_the_demo_headline():
    """`memgeo audit` without --t0/--sharpness-t measures where the demo does."""
    demo = DemoConfig()
    assert AuditConfig.model_fields["t0"].default == demo.headline_t
    assert AuditConfig.model_fields["sharpness_t"].default == demo.headline_t


def test_audit_cli_default_t0_is_the_config_default(run_cli, tmp_path):
    """The CLI's own default for --t0 is the config's (no second, drifting number)."""
    from typer.main import get_command

    from memgeo.cli import app

    cmd = get_command(app).commands["audit"]
    params = {p.name: p.default for p in cmd.params}
    assert params["t0"] == AuditConfig.model_fields["t0"].default
    assert params["sharpness_t"] == AuditConfig.model_fields["sharpness_t"].default


@pytest.mark.slow
def test_reproduce_script_runs_in_a_shell(tiny_demo, tmp_path):
    """reproduce.sh itself, with the installed ``memgeo`` on PATH, from a copy of the folder elsewhere."""
    import shutil

    out, m = tiny_demo
    moved = tmp_path / "moved"
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("reproduce"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    subprocess.run(["sh", str(moved / "reproduce.sh")], cwd=tmp_path, env=env, check=True, capture_output=True,
                   timeout=300)
    check_reproduced(moved, m)


def _readme_demo_outputs() -> list[str]:
    """The file names in the first column of the README's "Outputs in `runs/demo/`" table."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text.split("Outputs in `runs/demo/`:", 1)[1].split("\n\n", 2)[1]
    names = []
    for line in table.splitlines()[2:]:
        names += re.findall(r"`([^`]+)`", line.split("|")[1])
    return names


def test_every_output_the_readme_lists_exists(tiny_demo):
    out, _ = tiny_demo
    names = _readme_demo_outputs()
    assert {"samples.npy", "train_x.npy", "reproduce.sh", "model/", "toy_model/"} <= set(names)
    for name in names:
        if name.startswith("toy_"):  # the tiny demo runs with --no-toy; the toy's files are checked below
            assert not (out / name.rstrip("/")).exists()
            continue
        found = list(out.glob(name.rstrip("/")))
        assert found, f"README lists {name} but the demo folder has no such file"
    assert np.load(out / "samples.npy").shape == (16, 1, 8, 8)  # images, not a table


def test_toy_outputs_exist(tmp_path, single_thread):
    """The toy's files (README: ``toy_model/``, ``toy_samples.npy``) with a few toy training steps."""
    from memgeo.workflows.toy import run_toy
    from memgeo.report import Report

    m = run_toy(ToyConfig(steps=20, n=100, n_duplicates=20, n_samples=12), tmp_path, 0, Report("t"))
    for name in _readme_demo_outputs():
        if name.startswith("toy_"):
            assert (tmp_path / name.rstrip("/")).exists(), name
    assert np.load(tmp_path / "toy_samples.npy").shape == (12, 2)
    assert 0 <= m["toy_fraction_at_duplicate"] <= 1
