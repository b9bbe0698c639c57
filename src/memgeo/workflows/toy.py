"""The 2-D illustration of the demo: four blobs plus one point duplicated many times.

An unconditional MLP is trained on it; the report shows the learned score field over the smoothed
data density, and how the Hessian spectrum of a sample that ends at the duplicate (memorized)
differs along its sampling trajectory from one that ends in a blob (generalizing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from memgeo.data import make_toy2d
from memgeo.geometry import sharpness_spectrum, spectrum_along_trajectory
from memgeo.io import write_npy
from memgeo.models import MLPConfig, TrainConfig, get_sampler, train
from memgeo.report import Report, field_plot_2d, trajectory_spectrum_plot
from memgeo.workflows.common import evaluate_or_reason, figure_to_report, masked_mean, say


class ToyConfig(BaseModel):
    """Settings of the 2-D toy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    n: int = Field(2000, ge=10)
    n_duplicates: int = Field(400, ge=2)
    hidden: int = 256
    depth: int = 3
    steps: int = Field(3000, ge=1)
    lr: float = Field(1e-3, gt=0)
    n_samples: int = Field(400, ge=2)
    t_field: float = Field(0.02, gt=0, le=1)
    memorized_radius: float = Field(0.05, gt=0, description="a sample this close to the duplicate is memorized")


def run_toy(cfg: ToyConfig, out: Path, seed: int, report: Report) -> dict[str, Any]:
    """Train, sample and analyse the toy; adds two figures to ``report`` and returns ``toy_*`` metrics."""
    ds = make_toy2d(n=cfg.n, n_duplicates=cfg.n_duplicates, seed=seed)
    dup_point = torch.as_tensor(ds.meta["duplicate_point"], dtype=torch.float32)
    say(f"toy: training a 2-D MLP on {ds.n} points ({cfg.n_duplicates} copies of {dup_point.tolist()})")
    res = train(MLPConfig(data_shape=(2,), hidden=cfg.hidden, depth=cfg.depth),
                TrainConfig(steps=cfg.steps, batch_size=256, lr=cfg.lr, checkpoint_every=max(cfg.steps // 3, 1),
                            log_every=max(cfg.steps // 10, 1), seed=seed),
                ds.x, None, out / "toy_model", progress="training 2-D toy model")
    model = res.model
    gen = torch.Generator().manual_seed(seed + 1)
    s = get_sampler("ddim")(model, torch.randn(cfg.n_samples, 2, generator=gen), steps=100, return_trajectory=True)
    x0 = s.x0
    write_npy(out / "toy_samples.npy", x0.numpy())
    # In 2-D, nearest-neighbour ratios flag random blob samples too, so "memorized" here means
    # "ended within memorized_radius (a third of the blob std) of the duplicated point".
    at_dup = np.linalg.norm(x0.numpy() - dup_point.numpy(), axis=1) < cfg.memorized_radius
    sharp = sharpness_spectrum(model, x0, cfg.t_field)
    metrics: dict[str, Any] = {
        "toy_fraction_at_duplicate": float(at_dup.mean()),
        "toy_training_share_of_duplicate": cfg.n_duplicates / ds.n,
        "toy_mean_sharpness_at_duplicate": masked_mean(sharp.sharpness, at_dup),
        "toy_mean_sharpness_elsewhere": masked_mean(sharp.sharpness, ~at_dup),
        "toy_auroc_sharpness": evaluate_or_reason(sharp.sharpness.numpy(), at_dup, "toy sharpness")["auroc"],
    }

    # Score field of the learned model over the exact smoothed data density at t_field.
    g = torch.linspace(-1.3, 1.3, 41)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    with torch.no_grad():
        sc = model.score(grid, cfg.t_field).reshape(41, 41, 2)
    psi = float(model.schedule.sqrt_alpha_bar(cfg.t_field))
    s2 = float(model.schedule.sigma(cfg.t_field)) ** 2
    logd = torch.logsumexp(-((grid[:, None] - psi * ds.x[None]) ** 2).sum(-1) / (2 * s2), 1).reshape(41, 41)
    figure_to_report(report, field_plot_2d(g.numpy(), g.numpy(), logd.numpy(), sc[..., 0].numpy(), sc[..., 1].numpy(),
                                           ds.unique().x.numpy(), dup_point.numpy(), x0.numpy(),
                                           title=f"2-D toy: learned score at t = {cfg.t_field:g}",
                                           points_label=f"training points (n={ds.n}, {cfg.n_duplicates} of them "
                                                        "copies at the star)"),
                     out / "figures" / "toy_field.png", heading="2-D toy: duplicated point",
                     caption=f"Heat map: log-density (up to a constant) of the training data smoothed to t. "
                             "Arrows: direction of the trained model's score s(x, t). Red dots: training points; the "
                             f"star stands for the {cfg.n_duplicates} copies of the duplicated point. White dots, drawn "
                             f"on top: the {len(x0)} generated samples ({int(at_dup.sum())} within "
                             f"{cfg.memorized_radius:g} of the star).")

    # Spectrum along the trajectory: one sample ending at the duplicate, one ending in a blob.
    picks = {}
    if at_dup.any():
        picks["memorized (ends at duplicate)"] = int(np.flatnonzero(at_dup)[0])
    if (~at_dup).any():
        picks["generalizing (ends in a blob)"] = int(np.flatnonzero(~at_dup)[0])
    idx = torch.tensor(list(picks.values()))
    ts, ev = spectrum_along_trajectory(model, s.trajectory[:, idx], s.ts, every=5)
    figure_to_report(report, trajectory_spectrum_plot(ts.numpy(), {k: ev[:, j].numpy() for j, k in enumerate(picks)},
                                                      title="2-D toy: eigenvalues λσ² along DDIM sampling"),
                     out / "figures" / "toy_trajectory.png",
                     caption="Eigenvalues λσ^{2} at x_{t} along each sample's DDIM path. The sample heading for the "
                             "duplicate stays near −1 (a point mass) at large t; between t of about 0.3 and 0.05 its "
                             "x_{t} still sees the blobs 2–3 σ away, which flattens the density; the blob sample turns "
                             "flat (> −½) once σ drops below the blob width. Below t of about 0.02 (σ ≈ 0.08) the small "
                             "MLP no longer resolves the spike and both spectra drift toward 0: a limit of the trained "
                             "network, visible here rather than hidden.")
    report.add_verdict(f"- 2-D toy: {int(at_dup.sum())} of {len(x0)} generated samples "
                       f"({100 * metrics['toy_fraction_at_duplicate']:.0f} %) end at the duplicated point, which is "
                       f"{100 * metrics['toy_training_share_of_duplicate']:.0f} % of the {ds.n} training points.")
    return metrics
