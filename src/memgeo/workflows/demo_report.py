"""Figures of the digits demo, written to ``figures/`` and embedded in the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from memgeo.geometry import SharpnessResult
from memgeo.memorization import roc_curve
from memgeo.memorization.mmh import MMHAudit
from memgeo.report import (
    Report,
    image_grid,
    roc_plot,
    scatter_plot,
    score_histogram,
    spectra_plot,
    trajectory_spectrum_plot,
)
from memgeo.workflows.common import figure_to_report


def write_demo_figures(report: Report, figs: Path, cfg: Any, *, x0: torch.Tensor, cond: torch.Tensor,
                       is_copy: np.ndarray, is_mem: np.ndarray, spectra: dict[float, SharpnessResult],
                       detection: dict[str, dict], trajectory: tuple[torch.Tensor, torch.Tensor, list[str]],
                       audit: MMHAudit | None = None) -> None:
    """Sample grids, spectra, sharpness histogram, ROC curves and trajectory spectra.

    Parameters
    ----------
    x0 : Tensor, shape (B, C, H, W)
        Generations; ``cond`` (B,) their classes; ``is_copy`` / ``is_mem`` (B,) bool.
    spectra : dict
        Noise level t -> spectra of the generations at t.
    trajectory : (ts (T,), eigenvalues (T, K, D), names of the K samples)
    audit : MMHAudit, optional
        LID_model / LID_data / MMH labels of the generations.
    """
    head = spectra[cfg.headline_t]
    rows = np.r_[np.flatnonzero(is_mem)[:16], np.flatnonzero(~is_mem)[:16]]
    figure_to_report(report, image_grid(x0[rows].numpy(), highlight=is_copy[rows],
                                        title=f"First 16 of class {cfg.memorize_class} (top), "
                                              f"class {cfg.control_class} (bottom)"),
                     figs / "samples_by_class.png", heading="Generations",
                     caption="Red border: a copy of a training image under the ground-truth criterion.")
    copies_t, others_t = torch.as_tensor(is_copy), torch.as_tensor(~is_copy)
    figure_to_report(report, spectra_plot({"copies": head.eigenvalues_sigma2[copies_t].numpy(),
                                           "non-copies": head.eigenvalues_sigma2[others_t].numpy()},
                                          title=f"Hessian spectra at t={cfg.headline_t} "
                                                f"(sigma={float(head.sigma[0]):.3f})"),
                     figs / "spectra.png", heading="Spectra",
                     caption="Sorted eigenvalues lambda sigma^2 of each generation: copies sit near -1 (a point mass) "
                             "in every direction, non-copies keep flat directions (> -1/2).")
    figure_to_report(report, score_histogram({"copies": head.sharpness.numpy()[is_copy],
                                              "non-copies": head.sharpness.numpy()[~is_copy]},
                                             xlabel="sharpness = -mean(lambda sigma^2)",
                                             title="Sharpness by ground truth"),
                     figs / "sharpness_hist.png", heading="Sharpness score")
    if 0 < is_copy.sum() < len(is_copy):
        curves = {}
        for t, res in spectra.items():
            fpr, tpr, _ = roc_curve(res.sharpness.numpy(), is_copy)
            curves[f"t={t}"] = (fpr, tpr, detection[f"sharpness@t={t}"]["auroc"])
        figure_to_report(report, roc_plot(curves, title="ROC of sharpness for detecting copies"), figs / "roc.png",
                         heading="ROC", caption="ROC curves of the sharpness score at each noise level.")
    ts, ev, names = trajectory
    figure_to_report(report, trajectory_spectrum_plot(ts.numpy(), {k: ev[:, j].numpy() for j, k in enumerate(names)},
                                                      title="Hessian eigenvalues along the sampling trajectory"),
                     figs / "trajectory.png", heading="Along the trajectory",
                     caption="Spectrum at x_t along DDIM sampling for one copy and one non-copy. At the last steps "
                             "(t < 0.05) the network no longer resolves curvature of order 1/sigma^2 and all "
                             "eigenvalues drift toward 0 for both; the separation lives at t of about 0.05-0.3.")
    if audit is not None:
        groups = np.where(is_copy, "copy", "non-copy")
        labels = ", ".join(f"{k}: {v}" for k, v in audit.counts().items())
        figure_to_report(report, scatter_plot(audit.lid_data, audit.lid_model, groups, xlabel="LID_data (local PCA)",
                                              ylabel=f"LID_model (FLIPD, t0={cfg.headline_t})",
                                              title="Manifold memorization audit"),
                         figs / "mmh_scatter.png", heading="Manifold memorization audit",
                         caption=f"A generation is memorized when LID_model < {audit.model_low:.2f}; DD-Mem if "
                                 f"also LID_data < {audit.data_low:.2f}, else OD-Mem (thresholds: a quarter of the "
                                 f"training set's median local-PCA LID). Labels: {labels}.")
