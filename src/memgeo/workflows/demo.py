"""The one-command reproduction of Jeon, Kim & No (ICML 2025) on handwritten digits.

A class-conditional diffusion model is trained on digits where one class (default "9") is replaced
by copies of a single image; a control class (default "3") is left intact. Generations of both
classes are labelled copy / non-copy by nearest-neighbour distances to the de-duplicated training
set, and the sharpness of the learned log-density (Hessian spectrum in units of sigma^2) is
measured at a few noise levels and along the sampling trajectory. A 2-D toy with one duplicated
point shows the same effect where it can be drawn.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from memgeo.data import Dataset, load_dataset, make_toy2d, replace_class_with_copies
from memgeo.errors import MemgeoError
from memgeo.geometry import sharpness_spectrum, spectrum_along_trajectory
from memgeo.io import write_csv, write_json, write_npy
from memgeo.memorization import COPY_CRITERIA, label_copies, roc_curve
from memgeo.models import MLPConfig, SampleResult, TrainConfig, VPSchedule, get_sampler, train
from memgeo.models.base import DiffusionModel
from memgeo.report import (
    Report,
    field_plot_2d,
    image_grid,
    roc_plot,
    save_figure,
    score_histogram,
    spectra_plot,
    trajectory_spectrum_plot,
)
from memgeo.workflows.common import evaluate_or_reason, say, start_run


class ToyConfig(BaseModel):
    """The 2-D illustration: four blobs plus one point duplicated ``n_duplicates`` times."""

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


class DemoConfig(BaseModel):
    """Everything the demo does, saved as ``config.json`` in its output folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str = "digits"
    memorize_class: int = 9
    control_class: int = 3
    copies: int | None = Field(None, ge=1, description="copies of the memorized image; default: class size")
    fraction: float = Field(1.0, gt=0, le=1, description="share of the class replaced by copies")
    source_index: int | None = None
    hidden: int | None = Field(None, ge=8, description="MLP width; default 256 for D <= 256, else 512")
    depth: int = Field(3, ge=1)
    train: TrainConfig = TrainConfig(steps=4000, batch_size=256, lr=1e-3, checkpoint_every=1000, log_every=200)
    n_samples: int = Field(100, ge=2, description="generations per class")
    sampler: str = "ddim"
    sample_steps: int = Field(100, ge=1)
    guidance: float = 1.0
    copy_criterion: str = "ratio"
    copy_threshold: float | None = None
    sharpness_t: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    headline_t: float = 0.1
    trajectory_every: int = Field(5, ge=1)
    toy: ToyConfig = ToyConfig()
    seed: int = 0

    def resolved_hidden(self, dim: int) -> int:
        return self.hidden if self.hidden is not None else (256 if dim <= 256 else 512)


def _validate(cfg: DemoConfig, ds: Dataset) -> None:
    if ds.y is None:
        raise MemgeoError(f"data {cfg.data!r} has no class labels", "use a labelled data set (digits, mnist)")
    classes = set(ds.y.unique().tolist())
    for name, c in (("--memorize-class", cfg.memorize_class), ("--control-class", cfg.control_class)):
        if c not in classes:
            raise MemgeoError(f"{name} {c} is not a class of {cfg.data!r}", f"choose one of {sorted(classes)}")
    if cfg.memorize_class == cfg.control_class:
        raise MemgeoError("memorize and control class are the same", "pick two different classes")
    if cfg.copy_criterion not in COPY_CRITERIA:
        raise MemgeoError(f"unknown copy criterion {cfg.copy_criterion!r}", f"choose one of {', '.join(COPY_CRITERIA)}")
    if cfg.headline_t not in cfg.sharpness_t:
        raise MemgeoError(f"headline_t {cfg.headline_t} is not among sharpness_t {cfg.sharpness_t}", "add it")
    get_sampler(cfg.sampler)


def _sample(model: DiffusionModel, cfg: DemoConfig, cond: torch.Tensor, seed: int) -> SampleResult:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((cond.shape[0],) + tuple(model.data_shape), generator=gen)
    return get_sampler(cfg.sampler)(model, noise, steps=cfg.sample_steps, cond=cond, guidance=cfg.guidance,
                                    clip=(-1.0, 1.0), generator=gen, return_trajectory=True, progress=True)


def run_toy(cfg: ToyConfig, out: Path, seed: int, report: Report) -> dict[str, Any]:
    """Train an unconditional MLP on the 2-D toy, sample it and contrast a memorized with a generalizing sample."""
    ds = make_toy2d(n=cfg.n, n_duplicates=cfg.n_duplicates, seed=seed)
    dup_point = torch.as_tensor(ds.meta["duplicate_point"], dtype=torch.float32)
    say(f"toy: training a 2-D MLP on {ds.n} points ({cfg.n_duplicates} copies of {dup_point.tolist()})")
    res = train(MLPConfig(data_shape=(2,), hidden=cfg.hidden, depth=cfg.depth),
                TrainConfig(steps=cfg.steps, batch_size=256, lr=cfg.lr, checkpoint_every=max(cfg.steps // 3, 1),
                            log_every=max(cfg.steps // 10, 1), seed=seed),
                ds.x, None, out / "toy_model", progress=True)
    model = res.model
    gen = torch.Generator().manual_seed(seed + 1)
    s = get_sampler("ddim")(model, torch.randn(cfg.n_samples, 2, generator=gen), steps=100,
                            return_trajectory=True)
    x0 = s.x0
    # In 2-D, nearest-neighbour ratios flag random blob samples too, so "memorized" here means
    # "ended within memorized_radius (a third of the blob std) of the duplicated point".
    at_dup = np.linalg.norm(x0.numpy() - dup_point.numpy(), axis=1) < cfg.memorized_radius
    sharp = sharpness_spectrum(model, x0, cfg.t_field)
    metrics: dict[str, Any] = {
        "toy_fraction_at_duplicate": float(at_dup.mean()),
        "toy_training_share_of_duplicate": cfg.n_duplicates / ds.n,
        "toy_mean_sharpness_at_duplicate": float(sharp.sharpness[torch.as_tensor(at_dup)].mean()) if at_dup.any() else None,
        "toy_mean_sharpness_elsewhere": float(sharp.sharpness[torch.as_tensor(~at_dup)].mean()) if (~at_dup).any() else None,
        "toy_auroc_sharpness": evaluate_or_reason(sharp.sharpness.numpy(), at_dup, "toy sharpness")["auroc"],
    }
    # Score field of the learned model and the exact smoothed data density at t_field.
    g = torch.linspace(-1.3, 1.3, 41)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    with torch.no_grad():
        sc = model.score(grid, cfg.t_field).reshape(41, 41, 2)
    sch = model.schedule
    psi, s2 = float(sch.sqrt_alpha_bar(cfg.t_field)), float(sch.sigma(cfg.t_field)) ** 2
    logd = torch.logsumexp(-((grid[:, None] - psi * ds.x[None]) ** 2).sum(-1) / (2 * s2), 1).reshape(41, 41)
    fig = field_plot_2d(g.numpy(), g.numpy(), logd.numpy(), sc[..., 0].numpy(), sc[..., 1].numpy(),
                        ds.unique().x.numpy(), dup_point.numpy(), x0.numpy(),
                        title=f"2-D toy: learned score at t={cfg.t_field} over the smoothed data density")
    save_figure(fig, out / "figures" / "toy_field.png")
    report.add_figure((out / "figures" / "toy_field.png").read_bytes(), heading="2-D toy: duplicated point",
                      caption="Heat map: log-density of the training data smoothed to t. Arrows: the trained model's "
                              "score. Star: the point duplicated in training. Crosses: generated samples.")
    # Eigenvalue evolution along the trajectory: one sample ending at the duplicate, one in a blob.
    picks = {}
    if at_dup.any():
        picks["memorized (ends at duplicate)"] = int(np.flatnonzero(at_dup)[0])
    if (~at_dup).any():
        picks["generalizing (ends in a blob)"] = int(np.flatnonzero(~at_dup)[0])
    idx = torch.tensor(list(picks.values()))
    ts, ev = spectrum_along_trajectory(model, s.trajectory[:, idx], s.ts, every=5)
    fig = trajectory_spectrum_plot(ts.numpy(), {k: ev[:, j].numpy() for j, k in enumerate(picks)},
                                   title="2-D toy: Hessian eigenvalues (lambda sigma^2) along the DDIM trajectory")
    save_figure(fig, out / "figures" / "toy_trajectory.png")
    report.add_figure((out / "figures" / "toy_trajectory.png").read_bytes(),
                      caption="At the memorized sample both eigenvalues approach -1 (a point mass) as t -> 0; "
                              "the generalizing sample keeps eigenvalues near 0 (flat directions of a blob).")
    write_npy(out / "toy_samples.npy", x0.numpy())
    return metrics


def run_demo(cfg: DemoConfig, out: str | Path) -> dict[str, Any]:
    """Run the demo end to end and write its folder; returns the metrics also saved in ``metrics.json``.

    Output folder: ``config.json``, ``provenance.json``, ``metrics.json``, ``samples.csv`` (one row per
    generation), ``samples.npy`` (B, *data_shape), ``sharpness.json`` (per noise level and sample, the
    sorted eigenvalues lambda sigma^2), ``model/`` (checkpoint, resumable), ``figures/*.png`` and
    ``report.html``.
    """
    t_start = time.perf_counter()
    ds = load_dataset(cfg.data)
    _validate(cfg, ds)
    out = start_run(out, cfg, cfg.seed)
    timings: dict[str, float] = {}

    train_ds = replace_class_with_copies(ds, cfg.memorize_class, n_copies=cfg.copies, fraction=cfg.fraction,
                                         source_index=cfg.source_index, seed=cfg.seed)
    inj = train_ds.meta["injection"]
    n_classes = int(ds.y.max()) + 1
    hidden = cfg.resolved_hidden(ds.dim)
    say(f"data {cfg.data}: {ds.n} images of shape {ds.data_shape}; class {cfg.memorize_class}: "
        f"{inj.get('n_copies')} copies of image {inj.get('source_index')} (fraction {cfg.fraction}), "
        f"training set {train_ds.n} rows")
    report = Report("memgeo demo: memorization is sharpness",
                    subtitle=f"{cfg.data}; class {cfg.memorize_class} duplicated, class {cfg.control_class} control")

    t0 = time.perf_counter()
    model_cfg = MLPConfig(data_shape=train_ds.data_shape, hidden=hidden, depth=cfg.depth, num_classes=n_classes,
                          schedule=VPSchedule())
    tr = train(model_cfg, cfg.train.model_copy(update={"seed": cfg.seed}), train_ds.x, train_ds.y, out / "model")
    model = tr.model
    timings["train_s"] = time.perf_counter() - t0
    if tr.resumed_from:
        say(f"resumed training from step {tr.resumed_from}")

    t0 = time.perf_counter()
    n = cfg.n_samples
    cond = torch.cat([torch.full((n,), cfg.memorize_class), torch.full((n,), cfg.control_class)])
    say(f"sampling {2 * n} generations ({cfg.sampler}, {cfg.sample_steps} steps, guidance {cfg.guidance})")
    samples = _sample(model, cfg, cond, cfg.seed + 1)
    x0 = samples.x0
    timings["sample_s"] = time.perf_counter() - t0

    copies = label_copies(x0, train_ds.x, criterion=cfg.copy_criterion, threshold=cfg.copy_threshold)
    is_copy = copies.is_copy
    is_mem = (cond == cfg.memorize_class).numpy()
    source_img = ds.x[inj["source_index"]].reshape(-1)
    d_source = (x0.reshape(x0.shape[0], -1) - source_img).pow(2).mean(1).sqrt().numpy()

    t0 = time.perf_counter()
    say(f"sharpness spectra at t = {list(cfg.sharpness_t)}")
    spectra = {t: sharpness_spectrum(model, x0, t, cond=cond) for t in cfg.sharpness_t}
    timings["sharpness_s"] = time.perf_counter() - t0

    detection = {}
    for t, res in spectra.items():
        detection[f"sharpness@t={t}"] = evaluate_or_reason(res.sharpness.numpy(), is_copy, f"sharpness@t={t}", cfg.seed)
        detection[f"-n_flat@t={t}"] = evaluate_or_reason(-res.n_flat.numpy().astype(float), is_copy,
                                                         f"-n_flat@t={t}", cfg.seed)
    head = spectra[cfg.headline_t]
    head_eval = detection[f"sharpness@t={cfg.headline_t}"]
    within = evaluate_or_reason(head.sharpness.numpy()[is_mem], is_copy[is_mem], "sharpness within memorized class",
                                cfg.seed)

    metrics: dict[str, Any] = {
        "copy_rate_memorized": float(is_copy[is_mem].mean()),
        "copy_rate_control": float(is_copy[~is_mem].mean()),
        # A copy of the duplicated image itself (not of some other training image).
        "copy_rate_of_source_memorized": float(np.mean(is_copy[is_mem] & (d_source[is_mem] <= copies.d1[is_mem] + 1e-6))),
        "auroc_sharpness": head_eval["auroc"],
        "auroc_sharpness_ci": [head_eval.get("ci_low"), head_eval.get("ci_high")],
        "tpr_at_1pct_fpr_sharpness": head_eval.get("tpr_at_1pct_fpr"),
        "auroc_sharpness_within_memorized_class": within["auroc"],
        "headline_t": cfg.headline_t,
        "headline_sigma": float(head.sigma[0]),
        "copy_criterion": copies.summary(),
        "n_generations": int(x0.shape[0]),
        "mean_sharpness": {
            "copies": float(head.sharpness[torch.as_tensor(is_copy)].mean()) if is_copy.any() else None,
            "non_copies": float(head.sharpness[torch.as_tensor(~is_copy)].mean()) if (~is_copy).any() else None},
        "mean_n_flat": {
            "copies": float(head.n_flat[torch.as_tensor(is_copy)].float().mean()) if is_copy.any() else None,
            "non_copies": float(head.n_flat[torch.as_tensor(~is_copy)].float().mean()) if (~is_copy).any() else None},
        "mean_asymmetry": float(head.asymmetry.mean()),
        "detection": detection,
        "injection": inj,
        "final_train_loss": tr.log[-1]["loss"] if tr.log else None,
    }

    # Per-sample table and arrays.
    rows = []
    for i, r in enumerate(copies.to_rows()):
        row = {"sample": i, "class": int(cond[i]), "group": "memorized" if is_mem[i] else "control", **{
            k: v for k, v in r.items() if k != "sample"}, "d_source": float(d_source[i])}
        for t, res in spectra.items():
            row[f"sharpness@t={t}"] = float(res.sharpness[i])
            row[f"n_flat@t={t}"] = int(res.n_flat[i])
            row[f"n_positive@t={t}"] = int(res.n_positive[i])
        rows.append(row)
    write_csv(out / "samples.csv", rows)
    write_npy(out / "samples.npy", x0.numpy())
    write_json(out / "sharpness.json", {str(t): res.to_records() for t, res in spectra.items()})

    # Trajectory spectra: the first copy and the first non-copy.
    t0 = time.perf_counter()
    picks = {}
    if is_copy.any():
        picks[f"copy (class {int(cond[np.flatnonzero(is_copy)[0]])})"] = int(np.flatnonzero(is_copy)[0])
    if (~is_copy).any():
        picks[f"non-copy (class {int(cond[np.flatnonzero(~is_copy)[0]])})"] = int(np.flatnonzero(~is_copy)[0])
    idx = torch.tensor(list(picks.values()))
    ts, ev = spectrum_along_trajectory(model, samples.trajectory[:, idx], samples.ts, cond[idx],
                                       every=cfg.trajectory_every)
    timings["trajectory_s"] = time.perf_counter() - t0
    write_json(out / "trajectory_spectra.json", {"t": ts.tolist(), **{k: ev[:, j].tolist() for j, k in enumerate(picks)}})

    # Figures and report.
    figs = out / "figures"
    report.add_text(
        f"Training set: {cfg.data}, class {cfg.memorize_class} had {inj.get('n_replaced', '?')} of its images "
        f"replaced by {inj.get('n_copies')} copies of image #{inj.get('source_index')}; class {cfg.control_class} is "
        f"untouched. A class-conditional MLP noise predictor ({hidden} wide, depth {cfg.depth}) was trained for "
        f"{cfg.train.steps} steps; {n} generations per class were drawn with {cfg.sampler} ({cfg.sample_steps} steps). "
        f"A generation is a copy when the {copies.criterion} criterion holds (statistic < {copies.threshold:.3g}; "
        "see memgeo.memorization.copies). Sharpness = -mean(lambda sigma^2) of the symmetrized score Jacobian at "
        "psi_t x (1 for a point mass). AUROCs use a fixed sign: higher sharpness = predicted copy.",
        heading="What was done")
    report.add_metrics({k: v for k, v in metrics.items() if k not in ("detection", "injection", "copy_criterion")},
                       heading="Headline metrics")
    report.add_table([{"score": k, **{kk: vv for kk, vv in v.items() if kk != "name"}} for k, v in detection.items()],
                     heading="Detection of copies by each score and noise level")
    order = np.argsort(~is_copy, kind="stable")[:32]
    save_figure(image_grid(x0[order].numpy(), titles=[f"{int(cond[i])}{' copy' if is_copy[i] else ''}" for i in order],
                           highlight=is_copy[order], title="Generations (red border: copy)"), figs / "samples.png")
    mem_idx = np.flatnonzero(is_mem)[:16]
    ctl_idx = np.flatnonzero(~is_mem)[:16]
    save_figure(image_grid(x0[np.r_[mem_idx, ctl_idx]].numpy(), highlight=is_copy[np.r_[mem_idx, ctl_idx]],
                           title=f"First 16 of class {cfg.memorize_class} (top), class {cfg.control_class} (bottom)"),
                figs / "samples_by_class.png")
    save_figure(spectra_plot({"copies": head.eigenvalues_sigma2[torch.as_tensor(is_copy)].numpy(),
                              "non-copies": head.eigenvalues_sigma2[torch.as_tensor(~is_copy)].numpy()},
                             title=f"Hessian spectra at t={cfg.headline_t} (sigma={float(head.sigma[0]):.3f})"),
                figs / "spectra.png")
    save_figure(score_histogram({"copies": head.sharpness.numpy()[is_copy],
                                 "non-copies": head.sharpness.numpy()[~is_copy]},
                                xlabel="sharpness = -mean(lambda sigma^2)", title="Sharpness by ground truth"),
                figs / "sharpness_hist.png")
    curves = {}
    for t, res in spectra.items():
        if 0 < is_copy.sum() < len(is_copy):
            fpr, tpr, _ = roc_curve(res.sharpness.numpy(), is_copy)
            curves[f"t={t}"] = (fpr, tpr, detection[f"sharpness@t={t}"]["auroc"])
    if curves:
        save_figure(roc_plot(curves, title="ROC of sharpness for detecting copies"), figs / "roc.png")
    save_figure(trajectory_spectrum_plot(ts.numpy(), {k: ev[:, j].numpy() for j, k in enumerate(picks)},
                                         title="Hessian eigenvalues along the sampling trajectory"),
                figs / "trajectory.png")
    for name, cap in [("samples_by_class.png", "Generations; red border = copy of a training image."),
                      ("spectra.png", "Sorted eigenvalues lambda sigma^2 of each generation; copies sit near -1 "
                                      "(point mass) in every direction, non-copies keep flat directions (> -1/2)."),
                      ("sharpness_hist.png", "Sharpness score of copies vs non-copies."),
                      ("roc.png", "ROC curves of the sharpness score at each noise level."),
                      ("trajectory.png", "Evolution of the spectrum along DDIM sampling for one copy and one non-copy.")]:
        if (figs / name).exists():
            report.add_figure((figs / name).read_bytes(), caption=cap, heading=name.removesuffix(".png").replace("_", " "))

    if cfg.toy.enabled:
        t0 = time.perf_counter()
        metrics.update(run_toy(cfg.toy, out, cfg.seed, report))
        timings["toy_s"] = time.perf_counter() - t0

    timings["total_s"] = time.perf_counter() - t_start
    metrics["timings_s"] = timings
    write_json(out / "metrics.json", metrics)
    report.add_json(cfg, heading="Resolved config")
    report.add_json(timings, heading="Timings (s)")
    report.write(out / "report.html")
    say(f"copy rate {cfg.memorize_class}: {metrics['copy_rate_memorized']:.2f}, {cfg.control_class}: "
        f"{metrics['copy_rate_control']:.2f}; AUROC(sharpness@t={cfg.headline_t}) = {metrics['auroc_sharpness']}; "
        f"wrote {out / 'report.html'} in {timings['total_s']:.0f} s")
    return metrics
