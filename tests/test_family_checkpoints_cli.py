"""`memgeo lid --model CKPT` and `memgeo audit --model CKPT` accept a checkpoint of every generative family.

One tiny checkpoint per family (ddpm: memgeo's class-conditional diffusion MLP as `memgeo demo` trains it;
sd2015, vae, gsvae, gan, wgan-gp: :func:`memgeo.models.families.train_generator`), a few training steps on
4-D data. Each runs through both commands; the check is that they succeed with one finite LID_model per
point, the estimator the family calls for (FLIPD through the score for the diffusions, the generator
Jacobian's rank, at most the latent size, for the latent families) and one MMH label per point.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from memgeo.cli import app
from memgeo.models import MLPConfig, TrainConfig, VPSchedule, train
from memgeo.models.families import get_family, train_generator

D = 4
SMALL = {
    "sd2015": {"hidden": (16,), "T": 6},
    "vae": {"hidden": (16,), "latent_dim": 2},
    "gsvae": {"hidden": (16,), "n_latent": 2, "n_categories": 3},
    "gan": {"hidden": 16, "depth": 1, "latent_dim": 2},
    "wgan-gp": {"hidden": 16, "depth": 1, "latent_dim": 2, "n_critic": 2},
}
FAMILIES = ("ddpm", *SMALL)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fam_ckpt")
    g = torch.Generator().manual_seed(0)
    x = (0.5 * torch.randn(160, D, generator=g)).clamp(-1, 1)
    y = torch.arange(160) % 2
    np.save(folder / "train.npy", x.numpy())
    np.save(folder / "points.npy", x[:12].numpy())
    return folder, x, y


def _checkpoint(family, folder, x, y):
    out = folder / family
    if family == "ddpm":
        cfg = MLPConfig(data_shape=(D,), hidden=16, depth=1, time_dim=8, num_classes=2, schedule=VPSchedule())
        train(cfg, TrainConfig(steps=5, batch_size=32, checkpoint_every=5, log_every=5), x, y, out, progress=False)
    else:
        cfg = get_family(family).make_config((D,), **SMALL[family])
        train_generator(cfg, x, 5, out, progress=False, batch=32)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_lid_and_audit_accept_every_family(family, data, tmp_path):
    folder, x, y = data
    ckpt = _checkpoint(family, tmp_path, x, y)
    diffusion = family in ("ddpm", "sd2015")
    cond = ["--cond", "1"] if family == "ddpm" else []
    runner = CliRunner()

    res = runner.invoke(app, ["lid", "--model", str(ckpt), "--points", str(folder / "points.npy"), "--estimator",
                              "flipd" if diffusion else "generator_jacobian", *cond, "--out", str(tmp_path / "lid")])
    assert res.exit_code == 0, res.output
    lid = json.loads((tmp_path / "lid" / "lid.json").read_text())
    values = np.array(lid["lid"], dtype=float)
    assert values.shape == (12,) and np.all(np.isfinite(values))
    if not diffusion:  # rank of J_G(z): an integer between 0 and the latent size
        latent = SMALL[family].get("latent_dim", SMALL[family].get("n_latent", 0) * SMALL[family].get("n_categories", 1))
        assert np.all((values >= 0) & (values <= latent)) and np.all(values == np.round(values))

    res = runner.invoke(app, ["audit", "--model", str(ckpt), "--points", str(folder / "points.npy"), "--train-data",
                              str(folder / "train.npy"), *cond, "--out", str(tmp_path / "audit")])
    assert res.exit_code == 0, res.output
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["lid_model_estimator"] == ("flipd" if diffusion else "generator_jacobian")
    assert audit["n"] == 12 and len(audit["samples"]) == 12
    assert sum(audit["mmh"]["counts"].values()) == 12
    assert all(np.isfinite(r["lid_model"]) for r in audit["samples"])
    # the points are training rows: every one is its own nearest neighbour, so every one is a copy
    assert all(r["is_copy"] for r in audit["samples"])
