"""The demo's folder is self-contained: its printed commands recompute its numbers.

A tiny demo (small MLP, few steps, few samples) runs once per module; every command of its
``reproduce`` list is then run through the CLI from inside the folder, and each output is compared
with what the demo itself saved, sample by sample (generations, sharpness, LID_model, LID_data, MMH
labels) and for the headline numbers (copy rates, sharpness AUROC, MMH counts). The default-sized
demo is checked the same way in ``test_demo_acceptance.py``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memgeo.models import TrainConfig
from memgeo.workflows import DemoConfig, ToyConfig, run_demo
from memgeo.workflows.lid_runs import AuditConfig

TINY = dict(toy=ToyConfig(enabled=False), hidden=64, depth=1, n_samples=8, sample_steps=20, sharpness_t=(0.1,),
            trajectory_every=4, train=TrainConfig(steps=600, batch_size=128, lr=3e-3, checkpoint_every=600,
                                                  log_every=100))


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory, single_thread):
    out = tmp_path_factory.mktemp("tiny") / "demo"
    metrics = run_demo(DemoConfig(**TINY), out)
    return out, metrics


def run_reproduce(folder: Path, metrics: dict, run_cli, monkeypatch) -> None:
    """Run every ``memgeo`` command of ``metrics["reproduce"]`` in-process, from inside ``folder``."""
    cmds = [c["command"] for c in metrics["reproduce"] if c["command"]]
    assert cmds[0].startswith("cd ") and Path(shlex.split(cmds[0])[1]).resolve() == folder.resolve()
    monkeypatch.chdir(folder)
    for cmd in cmds[1:]:
        argv = shlex.split(cmd)
        assert argv[0] == "memgeo", cmd
        code, _, err = run_cli(*argv[1:])
        assert code == 0, (cmd, err)


def check_reproduced(folder: Path, metrics: dict) -> None:
    """Compare the outputs under ``folder/reproduce`` with the demo's own files and metrics."""
    cfg = json.loads((folder / "config.json").read_text())
    n, mem, ctl = cfg["n_samples"], cfg["memorize_class"], cfg["control_class"]
    rep = folder / "reproduce"
    samples = np.load(folder / "samples.npy")
    table = [dict(r) for r in _csv(folder / "samples.csv")]
    # Generations: `memgeo sample` redraws the demo's rows of each class exactly.
    for cls, rows, key in ((mem, slice(0, n), "copy_rate_memorized"), (ctl, slice(n, 2 * n), "copy_rate_control")):
        np.testing.assert_array_equal(np.load(rep / f"sample_{cls}" / "samples.npy"), samples[rows])
        summary = json.loads((rep / f"sample_{cls}" / "summary.json").read_text())
        assert summary["copies"]["copy_rate"] == metrics[key]
    assert np.load(folder / "sample_classes.npy").tolist() == [mem] * n + [ctl] * n
    # Sharpness at the headline t, per sample.
    t = metrics["headline_t"]
    sharp = json.loads((rep / "sharpness" / "sharpness.json").read_text())
    np.testing.assert_allclose([p["sharpness"] for p in sharp["points"]],
                               [float(r[f"sharpness@t={t}"]) for r in table], rtol=1e-5, atol=1e-6)
    # LID_data from `memgeo lid`, per sample.
    lid = json.loads((rep / "lid_data" / "lid.json").read_text())
    np.testing.assert_allclose(lid["lid"], [float(r["lid_data"]) for r in table], rtol=1e-6, atol=1e-9)
    # The audit: per-sample LID_model and labels, then the headline numbers.
    audit = json.loads((rep / "audit" / "audit.json").read_text())
    np.testing.assert_allclose([s["lid_model"] for s in audit["samples"]], [float(r["lid_model"]) for r in table],
                               rtol=1e-5, atol=1e-4)
    assert [s["mmh_label"] for s in audit["samples"]] == [r["mmh_label"] for r in table]
    assert [s["is_copy"] for s in audit["samples"]] == [r["is_copy"] in ("True", "true", "1") for r in table]
    assert audit["detection"]["sharpness"]["auroc"] == pytest.approx(metrics["auroc_sharpness"], abs=1e-12) \
        if metrics["auroc_sharpness"] is not None else audit["detection"]["sharpness"]["auroc"] is None
    assert audit["labels_of_copies"] == metrics["mmh_labels_of_copies"]
    non_copies = {k: audit["mmh"]["counts"][k] - audit["labels_of_copies"][k] for k in audit["mmh"]["counts"]}
    assert non_copies == metrics["mmh_labels_of_non_copies"]


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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
    assert demo.prediction == "x0"


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
