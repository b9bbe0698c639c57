"""The digits demo's report: verdict first, notation, key numbers, then the figures (also in ``figures/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from memgeo.geometry import SharpnessResult
from memgeo.memorization import roc_curve
from memgeo.memorization.copies import CopyLabels
from memgeo.memorization.mmh import MMHAudit
from memgeo.report import (
    Report,
    copy_pairs_grid,
    glossary,
    image_grid,
    mmh_scatter,
    roc_plot,
    score_histogram,
    spectra_plot,
    trajectory_spectrum_plot,
)
from memgeo.workflows.common import figure_to_report

#: Shown under every plot of LID_model values (FLIPD) in the demo and audit reports.
NEGATIVE_LID_CAPTION = (
    "For the exact score of any distribution FLIPD = ψ^{2} tr Cov[x_{0} | x_{t}] / σ^{2} + σ^{2}‖s‖^{2} ≥ 0, so a "
    "negative LID_{model} is the trained network's error, not a dimension: at a copy its score Jacobian contracts "
    "slightly faster than a point mass (−1/σ^{2} in every direction), which pushes FLIPD below 0. Values are shown "
    "unclipped; read them as 0. The MMH labels do not change, because the threshold is positive.")


def fmt_auroc(ev: dict[str, Any]) -> str:
    """``"0.9999 [0.9994, 1.000]"`` from an evaluate_or_reason dict, or the reason it is undefined."""
    if ev.get("auroc") is None:
        return f"undefined ({ev.get('reason', 'one class only')})"
    lo, hi = ev.get("ci_low"), ev.get("ci_high")
    ci = f" [{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else ""
    return f"{ev['auroc']:.4f}{ci}"


def detection_rows(detection: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Reader-sized rows of a detection dict: score, AUROC [CI], TPR@1%FPR, counts (and why, if undefined)."""
    rows = []
    for name, ev in detection.items():
        row = {"score": name, "auroc_ci": fmt_auroc(ev), "tpr_at_1pct_fpr": ev.get("tpr_at_1pct_fpr"),
               "n_pos": ev.get("n_pos"), "n_neg": ev.get("n_neg")}
        rows.append(row)
    return rows


def _plain(name: str) -> str:
    return (name.replace("sharpness@t=", "sharpness at t = ").replace("-n_flat@t=", "−(number of flat directions) at t = ")
            .replace("-lid_model", "−LID model"))


def write_demo_report(report: Report, out: Path, cfg: Any, *, x0: torch.Tensor, cond: torch.Tensor,
                      is_copy: np.ndarray, is_mem: np.ndarray, spectra: dict[float, SharpnessResult],
                      detection: dict[str, dict], trajectory: tuple[torch.Tensor, torch.Tensor, list[str]],
                      audit: MMHAudit, copies: CopyLabels, train_x: torch.Tensor, metrics: dict[str, Any],
                      injection: dict[str, Any], hidden: int) -> None:
    """Verdict, notation, method, key numbers and detection table, then :func:`write_demo_figures`.

    Parameters
    ----------
    x0 : Tensor, shape (B, C, H, W)
        Generations (memorized class first); ``cond`` (B,) their classes; ``is_copy`` / ``is_mem`` (B,) bool.
    copies : CopyLabels
        Copy labels of the generations against ``train_x`` (N, C, H, W), the training set used.
    metrics : dict
        The demo's metrics (copy rates, AUROC and CI, MMH counts).
    injection : dict
        The duplication record (``source_index``, ``n_copies``, ``n_replaced``).
    """
    n = int(is_mem.sum())
    n_ctrl = int((~is_mem).sum())
    mc, cc = cfg.memorize_class, cfg.control_class
    src = injection.get("source_index")
    n_src = int(round(metrics.get("copy_rate_of_source_memorized", 0.0) * n))
    n_copy_ctrl = int(is_copy[~is_mem].sum())
    head = detection[f"sharpness@t={cfg.headline_t}"]
    lab_c, lab_n = metrics["mmh_labels_of_copies"], metrics["mmh_labels_of_non_copies"]
    n_copies = int(is_copy.sum())
    tpr = head.get("tpr_at_1pct_fpr")
    lines = [
        f"**{n_src} of {n} generated {mc}s copy training image #{src}**, the image duplicated "
        f"{injection.get('n_copies')} times in training; {n_copy_ctrl} of {n_ctrl} generated {cc}s (the untouched "
        "control class) copy any training image.",
        f"**Sharpness flags the copies with AUROC {fmt_auroc(head)}** at t = {cfg.headline_t:g} "
        f"(σ = {float(spectra[cfg.headline_t].sigma[0]):.3f})"
        + (f"; at 1 % false positives it finds {100 * tpr:.0f} % of them" if tpr is not None else "") + ".",
        f"MMH audit: of the {n_copies} copies {lab_c['DD-Mem']} are DD-Mem, {lab_c['OD-Mem']} OD-Mem and "
        f"{lab_c['none']} not memorized; of the {len(is_copy) - n_copies} other generations {lab_n['DD-Mem']} are "
        f"DD-Mem and {lab_n['OD-Mem']} OD-Mem (thresholds LID_{{model}} < {audit.model_low:.2f}, "
        f"LID_{{data}} < {audit.data_low:.2f}).",
    ]
    report.add_verdict("\n".join(f"- {s}" for s in lines), warn=head.get("auroc") is None)
    report.add_glossary(glossary(["x", "D", "t", "sigma", "score", "lambda", "sharpness", "n_flat", "copy", "d1",
                                  "auroc", "tpr", "lid_model", "lid_data", "t0", "mmh"]))
    report.add_text(
        f"Training set: {cfg.data}; {injection.get('n_replaced', '?')} images of class {mc} were replaced by "
        f"{injection.get('n_copies')} copies of image #{src}; class {cc} is untouched. A class-conditional MLP "
        f"({hidden} wide, depth {cfg.depth}"
        + (f", {cfg.prediction}-prediction" if hasattr(cfg, "prediction") else "")
        + f") was trained for {cfg.train.steps} steps; {n} generations per class were drawn with {cfg.sampler} "
        f"({cfg.sample_steps} steps). A generation is a copy when d_{{1}}/d_{{2}} < {copies.threshold:.3g} "
        f"(criterion “{copies.criterion}”). Sharpness = −mean(λσ^{{2}}) of the symmetrized score Jacobian at "
        "ψ(t) x: 1 for a point mass. AUROCs use a fixed sign: higher sharpness = predicted copy.",
        heading="What was done")
    key = [
        {"quantity": f"copy rate, class {mc} (duplicated)", "value": metrics["copy_rate_memorized"]},
        {"quantity": f"copy rate, class {cc} (control)", "value": metrics["copy_rate_control"]},
        {"quantity": f"sharpness AUROC [95 % CI] at t = {cfg.headline_t:g}", "value": fmt_auroc(head)},
        {"quantity": f"sharpness AUROC within class {mc} only",
         "value": metrics.get("auroc_sharpness_within_memorized_class")},
        {"quantity": "mean sharpness: copies / others",
         "value": _pair(metrics["mean_sharpness"]["copies"], metrics["mean_sharpness"]["non_copies"])},
        {"quantity": "mean n_{flat}: copies / others",
         "value": _pair(metrics["mean_n_flat"]["copies"], metrics["mean_n_flat"]["non_copies"])},
        {"quantity": "mean LID_{model}: copies / others",
         "value": _pair(metrics["mean_lid_model"]["copies"], metrics["mean_lid_model"]["non_copies"])},
        {"quantity": "AUROC of −LID_{model} (FLIPD)", "value": fmt_auroc(detection["-lid_model (FLIPD)"])},
        {"quantity": "final training loss", "value": metrics.get("final_train_loss")},
    ]
    report.add_key_numbers([(r["quantity"], r["value"]) for r in key], heading="Key numbers", csv="metrics.json")
    report.add_table([{**r, "score": _plain(r["score"])} for r in detection_rows(detection)],
                     heading="Detection of copies by each score and noise level", drop_constant=True,
                     csv="samples.csv", note="Per-generation scores are in samples.csv; every number in metrics.json.")
    write_demo_figures(report, out / "figures", cfg, x0=x0, cond=cond, is_copy=is_copy, is_mem=is_mem,
                       spectra=spectra, detection=detection, trajectory=trajectory, audit=audit, copies=copies,
                       train_x=train_x)


def _pair(a: float | None, b: float | None) -> str:
    f = (lambda v: "n/a" if v is None else f"{v:.3g}")
    return f"{f(a)} / {f(b)}"


def write_demo_figures(report: Report, figs: Path, cfg: Any, *, x0: torch.Tensor, cond: torch.Tensor,
                       is_copy: np.ndarray, is_mem: np.ndarray, spectra: dict[float, SharpnessResult],
                       detection: dict[str, dict], trajectory: tuple[torch.Tensor, torch.Tensor, list[str]],
                       audit: MMHAudit | None = None, copies: CopyLabels | None = None,
                       train_x: torch.Tensor | None = None) -> None:
    """Sample grids, copies beside their training match, spectra, histogram, ROC, MMH scatter, trajectories.

    Parameters
    ----------
    x0 : Tensor, shape (B, C, H, W)
        Generations; ``cond`` (B,) their classes; ``is_copy`` / ``is_mem`` (B,) bool.
    spectra : dict
        Noise level t -> spectra of the generations at t.
    trajectory : (ts (T,), eigenvalues (T, K, D), names of the K samples)
    audit : MMHAudit, optional
        LID_model / LID_data / MMH labels of the generations.
    copies, train_x : optional
        Copy labels and the training set (N, C, H, W): each copy is shown beside its nearest training image.
    """
    head = spectra[cfg.headline_t]
    rows = np.r_[np.flatnonzero(is_mem)[:16], np.flatnonzero(~is_mem)[:16]]
    figure_to_report(report, image_grid(x0[rows].numpy(), highlight=is_copy[rows],
                                        title=f"First 16 of class {cfg.memorize_class} (top), "
                                              f"class {cfg.control_class} (bottom)"),
                     figs / "samples_by_class.png", heading="Generations",
                     caption="Red border: a copy of a training image (d_{1}/d_{2} below the threshold).")
    if copies is not None and train_x is not None:
        pick = np.r_[np.flatnonzero(is_copy)[:8], np.flatnonzero(~is_copy)[:4]].astype(int)
        nn = copies.nn_index[pick].astype(int)
        gen = [f"gen {i}: {'copy' if is_copy[i] else 'new'}" for i in pick]
        match = [f"train #{j} (d₁/d₂={copies.statistic[i]:.2f})" for i, j in zip(pick, nn)]
        figure_to_report(report, copy_pairs_grid(x0[pick].numpy(), train_x[torch.as_tensor(nn)].numpy(), gen, match,
                                                 ncols=4, title="Each generation beside its nearest training image"),
                         figs / "copies_and_matches.png", heading="Copies and their training match",
                         caption="Left of each pair: a generation; right: its nearest training image. Up to 8 "
                                 "copies first, then up to 4 generations that are not copies: their nearest "
                                 "training image is only similar, not the same.")
    copies_t, others_t = torch.as_tensor(is_copy), torch.as_tensor(~is_copy)
    sigma = float(head.sigma[0])
    figure_to_report(report, spectra_plot({"copies": head.eigenvalues_sigma2[copies_t].numpy(),
                                           "non-copies": head.eigenvalues_sigma2[others_t].numpy()},
                                          title=f"Hessian spectra at t = {cfg.headline_t:g} (σ = {sigma:.3f})"),
                     figs / "spectra.png", heading="Spectra",
                     caption="Sorted eigenvalues λσ^{2} of each generation: copies sit near −1 (a point mass) in "
                             "every direction, non-copies keep flat directions (> −½).")
    figure_to_report(report, score_histogram({"copies": head.sharpness.numpy()[is_copy],
                                              "non-copies": head.sharpness.numpy()[~is_copy]},
                                             xlabel=r"sharpness $= -\mathrm{mean}(\lambda\sigma^2)$ (dimensionless)",
                                             title="Sharpness by ground truth"),
                     figs / "sharpness_hist.png", heading="Sharpness score")
    if 0 < is_copy.sum() < len(is_copy):
        curves = {}
        for t, res in spectra.items():
            fpr, tpr, _ = roc_curve(res.sharpness.numpy(), is_copy)
            curves[f"t = {t:g}"] = (fpr, tpr, detection[f"sharpness@t={t}"]["auroc"])
        figure_to_report(report, roc_plot(curves, title="ROC of sharpness for detecting copies", log_fpr=True),
                         figs / "roc.png", heading="ROC",
                         caption="ROC curves of the sharpness score at each noise level. Right: the same curves with "
                                 "the false positive rate on a log axis, which separates curves that all hug the "
                                 "top-left corner on the left; the dotted line marks FPR = 1 %.")
    ts, ev, names = trajectory
    figure_to_report(report, trajectory_spectrum_plot(ts.numpy(), {k: ev[:, j].numpy() for j, k in enumerate(names)},
                                                      title="Hessian eigenvalues along the sampling trajectory"),
                     figs / "trajectory.png", heading="Along the trajectory",
                     caption="Spectrum λσ^{2} at x_{t} along DDIM sampling for one copy and one non-copy. At the last "
                             "steps (t < 0.05) the network no longer resolves curvature of order 1/σ^{2} and all "
                             "eigenvalues drift toward 0 for both; the separation lives at t of about 0.05–0.3.")
    if audit is not None:
        counts = ", ".join(f"{k}: {v}" for k, v in audit.counts().items())
        n_neg = int(np.sum(np.asarray(audit.lid_model) < 0))
        neg = (f" {n_neg} of {len(audit.lid_model)} LID_{{model}} values are below 0 (lowest "
               f"{float(np.min(audit.lid_model)):.2f}). " + NEGATIVE_LID_CAPTION) if n_neg else ""
        figure_to_report(report, mmh_scatter(audit.lid_data, audit.lid_model, audit.label, audit.model_low,
                                             audit.data_low, is_copy=is_copy, t0=cfg.headline_t,
                                             title="Manifold memorization audit"),
                         figs / "mmh_scatter.png", heading="Manifold memorization audit",
                         caption=f"Colour: MMH label ({counts}); black rings: copies. A generation is memorized "
                                 f"below the dashed line (LID_{{model}} < {audit.model_low:.2f}); DD-Mem if also left "
                                 f"of the dotted line (LID_{{data}} < {audit.data_low:.2f}), else OD-Mem. Thresholds: "
                                 f"a quarter of the training set's median local-PCA LID.{neg}")
