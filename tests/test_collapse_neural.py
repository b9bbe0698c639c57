"""Neural recursive training, kept tiny: the MLP diffusion model retrained on its own 2-D samples."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from memgeo.collapse.neural import load_real, recursive_diffusion, sample_metrics_torch
from memgeo.errors import MemgeoError
from memgeo.models import MLPConfig, TrainConfig


def test_neural_config_through_cli(run_cli, tmp_path, single_thread):
    cfg = {"family": "mlp_diffusion", "dataset": "mixture2d", "loops": ["replace"], "generations": 2, "n": 200,
           "n_heldout": 100, "hidden": 32, "depth": 1, "steps": 150, "batch_size": 128, "sample_steps": 10,
           "n_eval": 100, "n_geometry": 4}
    path = tmp_path / "neural.json"
    path.write_text(json.dumps(cfg))
    code, stdout, err = run_cli("collapse", "--config", path, "--json", "--out", tmp_path / "run")
    assert code == 0, err
    final = json.loads(stdout)["replace"]
    assert len(final["trace_ratio"]) == 3 and final["trace_ratio"][0] == pytest.approx(1.0)
    with open(tmp_path / "run" / "generations.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["generation"]) for r in rows] == [0, 1, 2]
    for key in ("copy_rate_own", "sharpness", "lid", "energy", "recall"):
        assert rows[2][key] != "", key
    lid = float(rows[1]["lid"])
    assert -1 < lid < 3  # FLIPD of a 2-D model lies near [0, 2]
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "samples_replace.png").is_file()


def test_sample_metrics_and_errors():
    real, held = load_real("mixture2d", 300, 300, seed=1)
    same = sample_metrics_torch(real, held, float(torch.cov(real.T).trace()))
    shrunk = sample_metrics_torch(0.3 * real, held, float(torch.cov(real.T).trace()))
    assert same["trace_ratio"] == pytest.approx(1.0)
    assert shrunk["trace_ratio"] == pytest.approx(0.09, rel=1e-6)
    assert shrunk["energy"] > 10 * abs(same["energy"]) and shrunk["recall"] < same["recall"]
    with pytest.raises(MemgeoError, match="neural loop"):
        recursive_diffusion(real, held, "fresh")
    with pytest.raises(MemgeoError, match="dataset"):
        load_real("cifar", 10, 10)
    with pytest.raises(MemgeoError, match="fewer than"):
        load_real("digits", 1500, 500)
    with pytest.raises(MemgeoError, match="data_shape"):
        recursive_diffusion(real, held, model_config=MLPConfig(data_shape=(3,)))


@pytest.mark.slow
def test_replace_shrinks_accumulate_holds(single_thread):
    """The acceptance experiment in small: 5 replace generations shrink the covariance trace and move away
    from held-out data; accumulate stays nearer (the full run is benchmarks/collapse.py)."""
    real, held = load_real("mixture2d", 500, 500, seed=0)
    tcfg = TrainConfig(steps=1500, batch_size=256, lr=2e-3, lr_warmup=100, log_every=500)
    kw = dict(model_config=MLPConfig(data_shape=(2,), hidden=64, depth=2), train_config=tcfg, n_geometry=4,
              clip=(-1.5, 1.5), sample_steps=30)
    rep = recursive_diffusion(real, held, "replace", 5, **kw)
    acc = recursive_diffusion(real, held, "accumulate", 5, **kw)
    summary = [(r["loop"], r["generation"], round(r["trace_ratio"], 3), round(r["energy"], 4)) for r in rep + acc]
    assert rep[5]["trace_ratio"] < rep[1]["trace_ratio"] and rep[5]["energy"] > rep[1]["energy"], summary
    # accumulate: closer to the data than replace, and within a band around generation 1 (whose model
    # already under-disperses a little)
    assert acc[5]["trace_ratio"] > rep[5]["trace_ratio"] and acc[5]["energy"] < rep[5]["energy"], summary
    assert abs(acc[5]["trace_ratio"] / acc[1]["trace_ratio"] - 1) < 0.2, summary
