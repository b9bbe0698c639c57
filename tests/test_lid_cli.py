"""`memgeo lid` and `memgeo audit` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def flat_gaussian_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gauss")
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))[0][:, :3]
    np.save(d / "mean.npy", np.zeros(20))
    np.save(d / "cov.npy", (basis @ basis.T).numpy())
    np.save(d / "points.npy", (torch.randn(12, 3, generator=g, dtype=torch.float64) @ basis.T).numpy())
    data = torch.cat([torch.randn(400, 3, generator=g, dtype=torch.float64) @ basis.T,
                      torch.full((30, 20), 4.0, dtype=torch.float64)])
    np.save(d / "train.npy", data.numpy())
    np.save(d / "atom.npy", data[-2:].numpy())
    return d


def test_lid_flipd_on_gaussian_spec(run_cli, flat_gaussian_files, tmp_path):
    d = flat_gaussian_files
    out = tmp_path / "lid"
    code, stdout, err = run_cli("lid", "--model", f"gaussian:{d / 'mean.npy'},{d / 'cov.npy'}",
                                "--points", d / "points.npy", "--estimator", "flipd", "--t0", "0.01", "--out", out)
    assert code == 0, err
    res = json.loads((out / "lid.json").read_text())
    assert len(res["lid"]) == 12 and abs(np.mean(res["lid"]) - 3.0) < 0.05
    assert res["t0_used"] == 0.01
    assert (out / "lid.csv").read_text().count("\n") == 13


def test_lid_cfdm_needs_data_and_reads_zero_at_atom(run_cli, flat_gaussian_files, tmp_path):
    d = flat_gaussian_files
    code, _, err = run_cli("lid", "--data", d / "train.npy", "--points", d / "atom.npy", "--estimator", "cfdm",
                           "--t0", "0.05", "--out", tmp_path / "c")
    assert code == 0, err
    assert np.allclose(json.loads((tmp_path / "c" / "lid.json").read_text())["lid"], 0.0, atol=1e-9)
    code, _, err = run_cli("lid", "--points", d / "atom.npy", "--estimator", "cfdm", "--out", tmp_path / "c2")
    assert code == 2 and "needs --data" in err
    code, _, err = run_cli("lid", "--points", d / "atom.npy", "--estimator", "flipd", "--data", d / "train.npy",
                           "--out", tmp_path / "c3")
    assert code == 2 and "needs --model" in err
    code, _, err = run_cli("lid", "--points", d / "atom.npy", "--estimator", "cfdm", "--data", d / "train.npy",
                           "--k", "5", "--out", tmp_path / "c4")
    assert code == 2 and "no option" in err
    code, _, err = run_cli("lid", "--points", d / "atom.npy", "--estimator", "magic", "--data", d / "train.npy",
                           "--out", tmp_path / "c5")
    assert code == 2 and "unknown LID estimator" in err


def test_audit_labels_duplicates_dd_mem(run_cli, flat_gaussian_files, tmp_path):
    d = flat_gaussian_files
    train = np.load(d / "train.npy")
    fresh = np.load(d / "points.npy")  # on the 3-D subspace, not training points
    pts = np.concatenate([train[-3:], fresh])  # 3 copies of the duplicated point, 12 generalizing points
    np.save(tmp_path / "pts.npy", pts)
    out = tmp_path / "audit"
    code, stdout, err = run_cli("audit", "--model", f"empirical:{d / 'train.npy'}", "--points", tmp_path / "pts.npy",
                                "--train-data", d / "train.npy", "--lid-data", "cfdm", "--t0", "0.05", "--out", out)
    assert code == 0, err
    res = json.loads((out / "audit.json").read_text())
    labels = [s["mmh_label"] for s in res["samples"]]
    assert labels[:3] == ["DD-Mem"] * 3
    assert res["labels_of_copies"]["DD-Mem"] >= 3
    for name in ("audit.csv", "report.html", "figures/lid_scatter.png"):
        assert (out / name).is_file()
