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

from memgeo.data import Dataset, load_dataset, replace_class_with_copies
from memgeo.errors import MemgeoError
from memgeo.geometry import sharpness_spectrum, spectrum_along_trajectory
from memgeo.geometry.lid import FLIPD, LocalPCA
from memgeo.io import write_csv, write_json, write_npy
from memgeo.memorization import COPY_CRITERIA, label_copies
from memgeo.memorization.mmh import MMH_LABELS, MMHThresholds, mmh_audit
from memgeo.models import MLPConfig, SampleResult, TrainConfig, VPSchedule, get_sampler, train
from memgeo.models.base import DiffusionModel
from memgeo.report import Report
from memgeo.workflows.common import evaluate_or_reason, masked_mean, say, start_run
from memgeo.workflows.demo_report import write_demo_figures
from memgeo.workflows.lid_runs import reference_typical_lid
from memgeo.workflows.toy import ToyConfig, run_toy


class DemoConfig(BaseModel):
    """Everything the demo does, saved as ``config.json`` in its output folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str = "digits"
    memorize_class: int = 9
    control_class: int = 3
    copies: int | None = Field(None, ge=1, description="copies of the memorized image; default: class size")
    fraction: float = Field(1.0, gt=0, le=1, description="share of the class replaced by copies")
    source_index: int | None = None
    hidden: int | None = Field(None, ge=8, description="MLP width; default 256 for D <= 256, else the next power of two >= D")
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
        """MLP width: at least D by default, because a hidden layer narrower than D cannot pass the
        noise through at small t (a 512-wide MLP on 784-D MNIST plateaued at loss 0.40)."""
        if self.hidden is not None:
            return self.hidden
        return 256 if dim <= 256 else 1 << (dim - 1).bit_length()  # next power of two >= D


def _validate(cfg: DemoConfig, ds: Dataset) -> None:
    if ds.y is None:
        raise MemgeoError(f"data {cfg.data!r} has no class labels", "use a labelled data set (digits, mnist)")
    classes = set(ds.y.unique().tolist())
    for name, c in (("--memorize-class", cfg.memorize_class), ("--control-class", cfg.control_class)):
        if c not in classes:
            raise MemgeoError(f"{name} {c} is not a class of {cfg.data!r}", f"choose one of {sorted(classes)}")
    if cfg.memorize_class == cfg.control_class:
        raise MemgeoError("memorize and control class are the same", "pick two different classes")
    COPY_CRITERIA.get(cfg.copy_criterion)
    if cfg.headline_t not in cfg.sharpness_t:
        raise MemgeoError(f"headline_t {cfg.headline_t} is not among sharpness_t {cfg.sharpness_t}", "add it")
    get_sampler(cfg.sampler)


def _sample(model: DiffusionModel, cfg: DemoConfig, cond: torch.Tensor, seed: int) -> SampleResult:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((cond.shape[0],) + tuple(model.data_shape), generator=gen)
    return get_sampler(cfg.sampler)(model, noise, steps=cfg.sample_steps, cond=cond, guidance=cfg.guidance,
                                    clip=(-1.0, 1.0), generator=gen, return_trajectory=True, progress=True)


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

    # Manifold-memorization audit: LID_model = FLIPD at the headline noise level, LID_data = local
    # PCA of each generation's neighbourhood in the training set (copies sit on the duplicates).
    t0 = time.perf_counter()
    say(f"MMH audit: FLIPD(t0={cfg.headline_t}) vs local PCA on the training set")
    lid_model = FLIPD(t0=cfg.headline_t).estimate(model, x0, cond).numpy()
    lpca = LocalPCA().fit(train_ds.x)
    lid_data = lpca.estimate(x0).numpy()
    audit = mmh_audit(lid_model, lid_data, MMHThresholds(typical=reference_typical_lid(lpca, train_ds.x, seed=cfg.seed)))
    detection["-lid_model (FLIPD)"] = evaluate_or_reason(-lid_model, is_copy, "-lid_model (FLIPD)", cfg.seed)
    timings["mmh_s"] = time.perf_counter() - t0

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
        "mean_sharpness": {"copies": masked_mean(head.sharpness, is_copy),
                           "non_copies": masked_mean(head.sharpness, ~is_copy)},
        "mean_n_flat": {"copies": masked_mean(head.n_flat, is_copy), "non_copies": masked_mean(head.n_flat, ~is_copy)},
        "mean_asymmetry": float(head.asymmetry.mean()),
        "detection": detection,
        "injection": inj,
        "final_train_loss": tr.log[-1]["loss"] if tr.log else None,
        "auroc_lid_model": detection["-lid_model (FLIPD)"]["auroc"],
        "mmh_labels_of_copies": {k: int(((audit.label == k) & is_copy).sum()) for k in MMH_LABELS},
        "mmh_labels_of_non_copies": {k: int(((audit.label == k) & ~is_copy).sum()) for k in MMH_LABELS},
        "mmh_thresholds": {"model_low": audit.model_low, "data_low": audit.data_low},
        "mean_lid_model": {"copies": masked_mean(lid_model, is_copy), "non_copies": masked_mean(lid_model, ~is_copy)},
        "mean_lid_data": {"copies": masked_mean(lid_data, is_copy), "non_copies": masked_mean(lid_data, ~is_copy)},
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
        row.update(audit.to_rows()[i])
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
    write_demo_figures(report, out / "figures", cfg, x0=x0, cond=cond, is_copy=is_copy, is_mem=is_mem,
                       spectra=spectra, detection=detection, trajectory=(ts, ev, list(picks)), audit=audit)

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
