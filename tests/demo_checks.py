"""Helpers shared by the demo tests: run a demo folder's ``reproduce`` commands and compare."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import numpy as np
import pytest


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
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
