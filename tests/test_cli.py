"""The command line end to end: outputs, formats and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from memgeo.data import make_patch_with_duplicate


def _no_temp_files(folder):
    leftovers = [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == [], leftovers


@pytest.fixture(scope="module")
def patch_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("patch")
    ds = make_patch_with_duplicate(dtype=torch.float64, seed=0)
    np.save(d / "train.npy", ds.x.numpy())
    dup = ds.x[ds.is_duplicate][0]
    # A patch point near the patch centre (away from the border).
    basis, origin = torch.as_tensor(ds.meta["basis"]), torch.as_tensor(ds.meta["origin"])
    coords = (ds.x[~ds.is_duplicate] - origin) @ basis
    centre = coords.mean(0)
    inner = ds.x[~ds.is_duplicate][torch.argmin(((coords - centre) ** 2).sum(1))]
    np.save(d / "points.npy", torch.stack([dup, inner]).numpy())
    return d


def test_sharpness_on_empirical_spec_matches_ground_truth(run_cli, patch_files, tmp_path):
    out = tmp_path / "h"
    code, stdout, err = run_cli("sharpness", "--model", f"empirical:{patch_files / 'train.npy'}",
                                "--points", patch_files / "points.npy", "--sigma", "0.1", "--out", out)
    assert code == 0, err
    res = json.loads((out / "sharpness.json").read_text())
    dup, inner = res["points"]
    assert dup["n_positive"] == 0 and dup["n_flat"] == 0
    assert np.allclose(dup["eigenvalues_sigma2"], -1.0, atol=1e-2)
    assert inner["n_flat"] == 2
    assert inner["eigenvalues_sigma2"] == sorted(inner["eigenvalues_sigma2"])
    assert abs(res["sigma"] - 0.1) < 1e-9
    for name in ("sharpness.csv", "report.html", "config.json", "provenance.json", "figures/spectra.png"):
        assert (out / name).is_file(), name
    _no_temp_files(out)


def _assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_errors_name_the_problem(run_cli, patch_files, tmp_path):
    spec = f"empirical:{patch_files / 'train.npy'}"
    pts = patch_files / "points.npy"
    code, _, err = run_cli("sharpness", "--model", spec, "--points", tmp_path / "missing.npy", "--t", "0.1",
                           "--out", tmp_path / "o1")
    _assert_one_line_error(code, err, "missing.npy", "does not exist")

    bad = tmp_path / "nan.npy"
    np.save(bad, np.full((2, 64), np.nan))
    code, _, err = run_cli("sharpness", "--model", spec, "--points", bad, "--t", "0.1", "--out", tmp_path / "o2")
    _assert_one_line_error(code, err, "NaN")

    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 10)))
    code, _, err = run_cli("sharpness", "--model", spec, "--points", wrong, "--t", "0.1", "--out", tmp_path / "o3")
    _assert_one_line_error(code, err, "dimension 10", "64")

    code, _, err = run_cli("sharpness", "--model", "mystery:x.npy", "--points", pts, "--t", "0.1",
                           "--out", tmp_path / "o4")
    _assert_one_line_error(code, err, "mystery")

    code, _, err = run_cli("sharpness", "--model", spec, "--points", pts, "--t", "0.1", "--sigma", "0.2",
                           "--out", tmp_path / "o5")
    _assert_one_line_error(code, err, "exactly one of")

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "model.safetensors").write_bytes(b"not a checkpoint")
    code, _, err = run_cli("sharpness", "--model", ck, "--points", pts, "--t", "0.1", "--out", tmp_path / "o6")
    _assert_one_line_error(code, err, "corrupt")

    code, _, err = run_cli("sharpness", "--model", spec, "--points", pts, "--t", "0.1", "--cond", "1",
                           "--out", tmp_path / "o8")
    _assert_one_line_error(code, err, "unconditional")

    code, _, err = run_cli("demo", "--data", "nonsense", "--out", tmp_path / "o7")
    _assert_one_line_error(code, err, "nonsense")

    code, _, err = run_cli("sharpness", "--bogus-option")
    assert code == 2 and "bogus-option" in err
    # Failed runs leave no outputs behind (validation happens before the folder is created).
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 9))


def test_train_sample_sharpness_chain(run_cli, tmp_path):
    model_dir = tmp_path / "model"
    code, stdout, err = run_cli("train", "--data", "toy2d", "--no-conditional", "--hidden", "32", "--depth", "1",
                                "--steps", "60", "--checkpoint-every", "30", "--json", "--out", model_dir)
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["steps"] == 60 and summary["final_loss"] > 0
    for name in ("model.safetensors", "state.safetensors", "train_log.csv", "report.html", "config.json"):
        assert (model_dir / name).is_file(), name

    # Re-running with the same settings resumes (nothing left to do) instead of starting over.
    code, stdout, err = run_cli("train", "--data", "toy2d", "--no-conditional", "--hidden", "32", "--depth", "1",
                                "--steps", "60", "--checkpoint-every", "30", "--json", "--out", model_dir)
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["resumed_from"] == 60

    s_dir = tmp_path / "s"
    code, stdout, err = run_cli("sample", "--model", model_dir, "--n", "12", "--steps", "20", "--train-data", "toy2d",
                                "--out", s_dir)
    assert code == 0, err
    x = np.load(s_dir / "samples.npy")
    assert x.shape == (12, 2) and np.isfinite(x).all()
    rows = (s_dir / "samples.csv").read_text().splitlines()
    assert len(rows) == 13 and "is_copy" in rows[0]

    h_dir = tmp_path / "h"
    code, _, err = run_cli("sharpness", "--model", model_dir, "--points", s_dir / "samples.npy", "--t", "0.05",
                           "--out", h_dir)
    assert code == 0, err
    pts = json.loads((h_dir / "sharpness.json").read_text())["points"]
    assert len(pts) == 12 and all(len(p["eigenvalues_sigma2"]) == 2 for p in pts)
    np.save(tmp_path / "labels.npy", np.zeros(5, dtype=np.int64))
    code, _, err = run_cli("sharpness", "--model", model_dir, "--points", s_dir / "samples.npy", "--t", "0.05",
                           "--labels", tmp_path / "labels.npy", "--out", tmp_path / "h2")
    assert code == 2 and "unconditional" in err  # the toy model has no classes
    for d in (model_dir, s_dir, h_dir):
        _no_temp_files(d)


def test_demo_small_run_writes_everything(run_cli, tmp_path):
    cfg = tmp_path / "demo.json"
    cfg.write_text(json.dumps({"toy": {"steps": 50, "n": 200, "n_duplicates": 20, "n_samples": 20},
                               "train": {"steps": 80, "checkpoint_every": 40, "log_every": 20},
                               "sample_steps": 20, "sharpness_t": [0.1, 0.3], "headline_t": 0.1}))
    out = tmp_path / "demo"
    code, stdout, err = run_cli("demo", "--config", cfg, "--n-samples", "8", "--out", out)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    for key in ("copy_rate_memorized", "copy_rate_control", "auroc_sharpness", "auroc_sharpness_ci"):
        assert key in m
    assert 0 <= m["copy_rate_memorized"] <= 1 and m["n_generations"] == 16
    sharp = json.loads((out / "sharpness.json").read_text())
    assert set(sharp) == {"0.1", "0.3"} and len(sharp["0.1"]) == 16
    assert len(sharp["0.1"][0]["eigenvalues_sigma2"]) == 64
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "2-D toy" in html
    assert json.loads((out / "config.json").read_text())["n_samples"] == 8
    assert (out / "figures" / "toy_trajectory.png").is_file()
    _no_temp_files(out)


def test_point_conditions_validates_labels(tmp_path):
    from memgeo.errors import MemgeoError
    from memgeo.models import MLPConfig, MLPEps
    from memgeo.workflows.common import point_conditions

    model = MLPEps(MLPConfig(data_shape=(2,), hidden=8, depth=1, num_classes=3))
    assert point_conditions(model, 4) is None
    assert point_conditions(model, 4, cond=2).tolist() == [2, 2, 2, 2]
    np.save(tmp_path / "ok.npy", np.array([0, 1, 2, -1]))
    assert point_conditions(model, 4, labels=str(tmp_path / "ok.npy")).tolist() == [0, 1, 2, -1]
    np.save(tmp_path / "short.npy", np.array([0, 1]))
    with pytest.raises(MemgeoError, match="expected \\(4,\\)"):
        point_conditions(model, 4, labels=str(tmp_path / "short.npy"))
    np.save(tmp_path / "bad.npy", np.array([0, 1, 5, 0]))
    with pytest.raises(MemgeoError, match="condition 5 is not a class"):
        point_conditions(model, 4, labels=str(tmp_path / "bad.npy"))
    with pytest.raises(MemgeoError, match="at most one"):
        point_conditions(model, 4, cond=1, labels=str(tmp_path / "ok.npy"))


def test_train_with_clean_data_prediction(run_cli, tmp_path):
    from memgeo.models import load_model

    out = tmp_path / "x0"
    code, _, err = run_cli("train", "--data", "toy2d", "--no-conditional", "--hidden", "16", "--depth", "1",
                           "--prediction", "x0", "--steps", "5", "--out", out)
    assert code == 0, err
    assert load_model(out).config.prediction == "x0"
    code, _, err = run_cli("train", "--data", "toy2d", "--prediction", "v", "--out", tmp_path / "bad")
    assert code == 2 and "prediction" in err and not (tmp_path / "bad").exists()
