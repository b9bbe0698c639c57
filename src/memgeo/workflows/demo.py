"""The one-command reproduction of Jeon, Kim & No (ICML 2025) on handwritten digits.

A class-conditional diffusion model is trained on digits where one class (default "9") is replaced
by copies of a single image; a control class (default "3") is left intact. Generations of both
classes are labelled copy / non-copy by nearest-neighbour distances to the de-duplicated training
set, and the sharpness of the learned log-density (Hessian spectrum in units of sigma^2) is
measured at a few noise levels and along the sampling trajectory. A 2-D toy with one duplicated
point shows the same effect where it can be drawn.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from memgeo.data import Dataset, load_dataset, replace_class_with_copies
from memgeo.errors import MemgeoError
from memgeo.geometry import sharpness_spectrum, spectrum_along_trajectory
from memgeo.geometry.lid import get_lid_estimator
from memgeo.io import atomic_write_text, write_csv, write_json, write_npy
from memgeo.memorization import COPY_CRITERIA, label_copies
from memgeo.memorization.mmh import MMH_LABELS, MMHThresholds, mmh_audit
from memgeo.models import MLPConfig, SampleResult, TrainConfig, TrainResult, VPSchedule, get_sampler, train
from memgeo.models.base import DiffusionModel
from memgeo.report import Report
from memgeo.workflows.common import evaluate_or_reason, masked_mean, run_command, say, start_run
from memgeo.workflows.demo_report import write_demo_report
from memgeo.workflows.lid_runs import AuditConfig, build_estimator, estimate_lid, reference_typical_lid
from memgeo.workflows.toy import ToyConfig, run_toy


#: `memgeo audit`'s defaults; the demo's headline noise level is the same, so that its folder's
#: ``reproduce`` commands and a plain `memgeo audit` agree.
AUDIT_T: float = AuditConfig.model_fields["t0"].default
#: Output sub-folder (inside the demo folder) of the reproduction commands.
REPRODUCE_DIR = "reproduce"


#: Why FLIPD can be negative on a trained network, stated wherever LID_model values are shown.
NEGATIVE_FLIPD_NOTE = (
    "LID_model (FLIPD) values are shown unclipped. For the exact score of any data distribution "
    "FLIPD = ψ² tr Cov[x₀ | x_t] / σ² + σ² ‖score‖² ≥ 0 (0 at a copy of a duplicated image), so a negative "
    "value is the trained network's error, not a dimension: its score Jacobian at a copy contracts slightly "
    "faster than a point mass (−1/σ² in every direction). Read such values as 0; clipping them would change "
    "no MMH label, since the threshold is positive.")


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
    # eps, measured against x0 on this demo (4,000 steps, FLIPD at t0 = 0.1, exact value 0 at a copy):
    # eps reads -1.0 at copies (74 of 200 generations slightly below 0) and 25.9 elsewhere, so 91 of 97
    # copies are DD-Mem; x0 reads 5.1 at copies (5.06-5.30, none negative; 3.35 after 8,000 steps) and
    # 31.2 elsewhere, above the MMH threshold of 3.25, so no copy is labelled memorized. Copy rate and
    # sharpness AUROC are 0.97 / 0.9999 (eps) and 1.00 / 1.000 (x0). See README, "What the demo shows".
    prediction: Literal["eps", "x0"] = Field("eps", description="network output: eps (noise) or x0 (clean data)")
    train: TrainConfig = TrainConfig(steps=4000, batch_size=256, lr=1e-3, checkpoint_every=1000, log_every=200)
    n_samples: int = Field(100, ge=2, description="generations per class")
    sampler: str = "ddim"
    sample_steps: int = Field(100, ge=1)
    guidance: float = 1.0
    copy_criterion: str = "ratio"
    copy_threshold: float | None = None
    sharpness_t: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    headline_t: float = Field(AUDIT_T, description="t of the headline sharpness and FLIPD's t0 (as `memgeo audit`)")
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


def _fmt(v: float | None) -> str:
    return "undefined (one class only)" if v is None else f"{v:.4f}"


def sample_seeds(cfg: DemoConfig) -> dict[int, int]:
    """Class -> seed of its generations (memorized class: ``seed + 1``, control class: ``seed + 2``)."""
    return {cfg.memorize_class: cfg.seed + 1, cfg.control_class: cfg.seed + 2}


def sample_class(model: DiffusionModel, cfg: DemoConfig, cls: int, seed: int) -> SampleResult:
    """``n_samples`` generations of class ``cls``, x0 (n, *data_shape) plus the trajectory.

    The noise and the sampler call are those of ``memgeo sample --cond CLS --seed SEED`` (one
    generator seeded with ``seed`` draws the (n, *data_shape) noise, samples clipped to [-1, 1]), so
    that command reproduces these generations from the saved model.
    """
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((cfg.n_samples,) + tuple(model.data_shape), generator=gen)
    cond = torch.full((cfg.n_samples,), cls, dtype=torch.long)
    return get_sampler(cfg.sampler)(model, noise, steps=cfg.sample_steps, cond=cond, guidance=cfg.guidance,
                                    clip=(-1.0, 1.0), generator=gen, return_trajectory=True, progress=True)


def train_demo_model(cfg: DemoConfig, x: torch.Tensor, y: torch.Tensor, n_classes: int,
                     out_dir: str | Path | None, *, steps: int | None = None, progress: bool | str = True
                     ) -> TrainResult:
    """Train the demo's class-conditional diffusion model (MLP, VP schedule, ``cfg.train``) on ``x (N, *shape)``
    with labels ``y (N,)``; ``steps`` overrides ``cfg.train.steps``. Shared with `memgeo families` (its ddpm)."""
    update: dict[str, Any] = {"seed": cfg.seed} if steps is None else {"seed": cfg.seed, "steps": steps}
    model_cfg = MLPConfig(data_shape=tuple(x.shape[1:]), hidden=cfg.resolved_hidden(x[0].numel()), depth=cfg.depth,
                          num_classes=n_classes, schedule=VPSchedule(), prediction=cfg.prediction)
    return train(model_cfg, cfg.train.model_copy(update=update), x, y, out_dir, progress=progress)


def _write_training_set(out: Path, train_ds: Dataset) -> None:
    """``train_x.npy`` (N, *data_shape) float32, ``train_labels.npy`` (N,) int64 and
    ``train_duplicates.npy`` (N,) bool: True on the injected copies (rows ``copy_rows`` of the injection)."""
    write_npy(out / "train_x.npy", train_ds.x.detach().cpu().float().numpy())
    write_npy(out / "train_labels.npy", train_ds.y.detach().cpu().long().numpy())
    start, stop = train_ds.meta["injection"]["copy_rows"]
    injected = np.zeros(train_ds.n, dtype=bool)
    injected[start:stop] = True
    write_npy(out / "train_duplicates.npy", injected)


def reproduce_commands(cfg: DemoConfig, folder: str | Path) -> list[dict[str, str]]:
    """The memgeo commands that recompute the demo's headline numbers from its folder alone.

    Each entry is ``{"what", "command", "result"}``: what it reproduces, the shell command (paths
    relative to the demo folder, so the first entry changes into it) and where its output holds the
    number. Results go to ``reproduce/`` inside the folder.
    """
    q = shlex.quote
    seeds = sample_seeds(cfg)
    common = f"--sampler {cfg.sampler} --steps {cfg.sample_steps} --guidance {cfg.guidance:g}"
    cmds: list[dict[str, str]] = [
        {"what": "go to the demo folder (every path below is relative to it)", "command": f"cd {q(str(folder))}",
         "result": ""}]
    for cls, key in ((cfg.memorize_class, "copy_rate_memorized"), (cfg.control_class, "copy_rate_control")):
        cmds.append({
            "what": f"copy rate of class {cls} (metrics.json {key}): regenerate its {cfg.n_samples} samples "
                    "from the saved model and label copies against the saved training set",
            "command": f"memgeo sample --model model --n {cfg.n_samples} --cond {cls} {common} --seed {seeds[cls]} "
                       f"--train-data train_x.npy --out {REPRODUCE_DIR}/sample_{cls}",
            "result": f"{REPRODUCE_DIR}/sample_{cls}/summary.json: copies.copy_rate "
                      f"(samples.npy rows {'0' if cls == cfg.memorize_class else cfg.n_samples}..)"})
    t = f"{cfg.headline_t:g}"
    cmds += [
        {"what": f"sharpness spectra at t = {t} of the demo's generations (samples.csv sharpness@t={cfg.headline_t})",
         "command": f"memgeo sharpness --model model --points samples.npy --labels sample_classes.npy --t {t} "
                    f"--out {REPRODUCE_DIR}/sharpness",
         "result": f"{REPRODUCE_DIR}/sharpness/sharpness.json: points[i].sharpness"},
        {"what": "LID_data: local PCA of each generation's neighbourhood in the training set (samples.csv lid_data)",
         "command": f"memgeo lid --estimator lpca --data train_x.npy --points samples.npy --out {REPRODUCE_DIR}/lid_data",
         "result": f"{REPRODUCE_DIR}/lid_data/lid.json: lid"},
        {"what": f"sharpness AUROC (metrics.json auroc_sharpness), FLIPD LID_model at t0 = {t} and the MMH counts "
                 "(mmh_labels_of_copies, mmh_labels_of_non_copies)",
         "command": f"memgeo audit --model model --points samples.npy --labels sample_classes.npy "
                    f"--train-data train_x.npy --t0 {t} --sharpness-t {t} --out {REPRODUCE_DIR}/audit",
         "result": f"{REPRODUCE_DIR}/audit/audit.json: detection.sharpness.auroc, labels_of_copies, mmh.counts "
                   "(non-copies = counts - labels_of_copies)"},
    ]
    if cfg.copy_criterion != "ratio" or cfg.copy_threshold is not None:
        cmds.append({"what": f"note: sample and audit label copies with the default ratio criterion, this demo used "
                             f"{cfg.copy_criterion} (threshold {cfg.copy_threshold}); copy rates and AUROC can differ",
                     "command": "", "result": ""})
    return cmds


def _write_reproduce_script(out: Path, cmds: list[dict[str, str]]) -> None:
    lines = ["#!/bin/sh", "# Recomputes the demo's headline numbers from this folder alone (memgeo must be on PATH,",
             "# e.g. after `. .venv/bin/activate` in the memgeo checkout). Results go to reproduce/.",
             "set -e", 'cd "$(dirname "$0")"']
    for c in cmds[1:]:
        lines += ["", f"# {c['what']}"] + ([f"# -> {c['result']}"] if c["result"] else [])
        if c["command"]:
            lines.append(c["command"])
    path = atomic_write_text(out / "reproduce.sh", "\n".join(lines) + "\n")
    path.chmod(0o755)


@run_command
def run_demo(cfg: DemoConfig, out: str | Path) -> dict[str, Any]:
    """Run the demo end to end and write its folder; returns the metrics also saved in ``metrics.json``.

    Output folder: ``config.json``, ``provenance.json``, ``metrics.json`` (with ``reproduce``: the
    commands that recompute the headline numbers, also in ``reproduce.sh``), ``samples.csv`` (one row
    per generation), ``samples.npy`` (2 n_samples, *data_shape) generated images (memorized class
    first) with their classes in ``sample_classes.npy`` (2 n_samples,), the training set actually
    used (``train_x.npy``, ``train_labels.npy``, ``train_duplicates.npy``), ``sharpness.json`` (per
    noise level and sample, the sorted eigenvalues lambda sigma^2), ``trajectory_spectra.json``,
    ``model/`` (checkpoint, resumable), with the toy ``toy_model/`` and ``toy_samples.npy``,
    ``figures/*.png`` and ``report.html``.
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
    _write_training_set(out, train_ds)
    report = Report("memgeo demo: memorization is sharpness",
                    subtitle=f"{cfg.data}; class {cfg.memorize_class} duplicated, class {cfg.control_class} control")

    t0 = time.perf_counter()
    tr = train_demo_model(cfg, train_ds.x, train_ds.y, n_classes, out / "model")
    model = tr.model
    timings["train_s"] = time.perf_counter() - t0
    if tr.resumed_from:
        say(f"resumed training from step {tr.resumed_from}")

    t0 = time.perf_counter()
    n = cfg.n_samples
    say(f"sampling {n} generations of class {cfg.memorize_class} and {n} of class {cfg.control_class} "
        f"({cfg.sampler}, {cfg.sample_steps} steps, guidance {cfg.guidance})")
    parts = [sample_class(model, cfg, cls, seed) for cls, seed in sample_seeds(cfg).items()]
    x0 = torch.cat([p.x0 for p in parts])
    trajectory = torch.cat([p.trajectory for p in parts], dim=1)
    cond = torch.cat([torch.full((n,), cfg.memorize_class), torch.full((n,), cfg.control_class)])
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

    # Manifold-memorization audit, computed exactly as `memgeo audit` does (same estimators, same
    # reference subsample for the typical LID), so its reproduce command gives the same labels:
    # LID_model = FLIPD at t0 = headline_t, LID_data = local PCA of each generation's neighbourhood
    # in the training set actually used (copies sit on the duplicates).
    t0 = time.perf_counter()
    say(f"MMH audit: FLIPD(t0={cfg.headline_t}) vs local PCA on the training set")
    lid_model_t = estimate_lid(get_lid_estimator("flipd", t0=cfg.headline_t), x0, model=model, cond=cond)
    lpca = build_estimator("lpca", {})
    lid_data_t = estimate_lid(lpca, x0, reference=train_ds.x)
    lid_model, lid_data = lid_model_t.numpy(), lid_data_t.numpy()
    audit = mmh_audit(lid_model, lid_data, MMHThresholds(typical=reference_typical_lid(lpca, train_ds.x)))
    detection["-lid_model (FLIPD)"] = evaluate_or_reason(-lid_model, is_copy, "-lid_model (FLIPD)", cfg.seed)
    timings["mmh_s"] = time.perf_counter() - t0
    n_negative = int((lid_model < 0).sum())

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
        "prediction": cfg.prediction,
        "final_train_loss": tr.log[-1]["loss"] if tr.log else None,
        "auroc_lid_model": detection["-lid_model (FLIPD)"]["auroc"],
        "mmh_labels_of_copies": {k: int(((audit.label == k) & is_copy).sum()) for k in MMH_LABELS},
        "mmh_labels_of_non_copies": {k: int(((audit.label == k) & ~is_copy).sum()) for k in MMH_LABELS},
        "mmh_thresholds": {"model_low": audit.model_low, "data_low": audit.data_low},
        "mean_lid_model": {"copies": masked_mean(lid_model, is_copy), "non_copies": masked_mean(lid_model, ~is_copy)},
        "mean_lid_data": {"copies": masked_mean(lid_data, is_copy), "non_copies": masked_mean(lid_data, ~is_copy)},
        "lid_model_negative": {"count": n_negative, "min": float(lid_model.min()), "note": NEGATIVE_FLIPD_NOTE},
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
    write_npy(out / "sample_classes.npy", cond.numpy())
    write_json(out / "sharpness.json", {str(t): res.to_records() for t, res in spectra.items()})

    # Trajectory spectra: the first copy and the first non-copy.
    t0 = time.perf_counter()
    picks = {}
    if is_copy.any():
        picks[f"copy (class {int(cond[np.flatnonzero(is_copy)[0]])})"] = int(np.flatnonzero(is_copy)[0])
    if (~is_copy).any():
        picks[f"non-copy (class {int(cond[np.flatnonzero(~is_copy)[0]])})"] = int(np.flatnonzero(~is_copy)[0])
    idx = torch.tensor(list(picks.values()))
    ts, ev = spectrum_along_trajectory(model, trajectory[:, idx], parts[0].ts, cond[idx], every=cfg.trajectory_every)
    timings["trajectory_s"] = time.perf_counter() - t0
    write_json(out / "trajectory_spectra.json", {"t": ts.tolist(), **{k: ev[:, j].tolist() for j, k in enumerate(picks)}})

    # The report's sections (verdict first, notation, key numbers, figures) live in demo_report.
    write_demo_report(report, out, cfg, x0=x0, cond=cond, is_copy=is_copy, is_mem=is_mem, spectra=spectra,
                      detection=detection, trajectory=(ts, ev, list(picks)), audit=audit, copies=copies,
                      train_x=train_ds.x, metrics=metrics, injection=inj, hidden=hidden)

    if cfg.toy.enabled:
        t0 = time.perf_counter()
        metrics.update(run_toy(cfg.toy, out, cfg.seed, report))
        timings["toy_s"] = time.perf_counter() - t0

    cmds = reproduce_commands(cfg, out)
    metrics["reproduce"] = cmds
    _write_reproduce_script(out, cmds)
    timings["total_s"] = time.perf_counter() - t_start
    metrics["timings_s"] = timings
    write_json(out / "metrics.json", metrics)
    report.add_json(cfg, heading="Resolved config")
    report.add_json(timings, heading="Timings (s)")
    report.write(out / "report.html")
    say(f"copy rate {cfg.memorize_class}: {metrics['copy_rate_memorized']:.2f}, {cfg.control_class}: "
        f"{metrics['copy_rate_control']:.2f}; AUROC(sharpness@t={cfg.headline_t}) = {_fmt(metrics['auroc_sharpness'])}; "
        f"wrote {out / 'report.html'} in {timings['total_s']:.0f} s")
    say("to recompute these numbers from the folder alone (also in " + str(out / "reproduce.sh") + "):\n"
        + "\n".join(f"  # {c['what']}\n  {c['command']}" for c in cmds if c["command"]))
    return metrics
