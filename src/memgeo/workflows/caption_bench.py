"""The memorized-caption benchmark run: data, caption model, digit classifier, copy rates, artefacts.

Writes into one folder (default ``runs/caption_digits``), which the prompt-level detection and
mitigation runs read::

    model/                   caption-model checkpoint (memgeo.models.load), resumable training state
    classifier/              digit classifier (load_classifier) for fidelity to the intended class
    prompts_memorized.jsonl  prompt, memorized=1, label, train_index (row of train_x it copies)
    prompts_generic.jsonl    prompt, memorized=0, label, train_index=null
    prompts_all.jsonl        both, memorized first
    train_x.npy, train_y.npy de-duplicated training images (N0, C, H, W) and classes: copy labels
    train_captions.jsonl     every training row's caption and source index (duplicates included)
    generations.csv          one row per benchmark generation: copy label, nn distances, predicted class
    summary.json             copy rates per prompt set, classifier accuracy, settings, timings
    report.html              the same with sample grids
    READY                    written last: the folder is complete
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from memgeo.data.captions import (
    BenchmarkPrompt,
    CaptionBenchmark,
    make_caption_benchmark,
)
from memgeo.data.prompts import write_prompts
from memgeo.errors import MemgeoError
from memgeo.io import atomic_write_text, write_csv, write_json, write_npy
from memgeo.memorization.copies import label_copies
from memgeo.models.caption import (
    CaptionDiffusionModel,
    CaptionModelConfig,
    build_vocab,
    train_caption_model,
)
from memgeo.models.classifier import (
    ClassifierConfig,
    DigitClassifier,
    save_classifier,
    train_classifier,
)
from memgeo.models.sampling import sample_ddim
from memgeo.models.training import TrainConfig
from memgeo.report import Report
from memgeo.report.plots import close_figure, image_grid
from memgeo.workflows.common import figure_to_report, run_command, say, start_run

DEFAULT_OUT = Path("runs/caption_digits")
READY_FILE = "READY"


class CaptionBenchConfig(BaseModel):
    """Settings of :func:`run_caption_bench` (defaults: the committed digits benchmark)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_memorized: int = Field(40, ge=1)
    copies: int = Field(15, ge=1)
    mnist: str | None = None
    max_images: int | None = Field(None, ge=10)
    hidden: int = Field(256, ge=8)
    depth: int = Field(3, ge=1)
    embed_dim: int = Field(64, ge=8)
    max_length: int = Field(16, ge=3)
    steps: int = Field(4000, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    cond_drop: float = Field(0.1, ge=0, le=1)
    guidance: float = Field(4.0, ge=0)
    guidance_sweep: tuple[float, ...] = Field((1.0, 2.0, 3.0, 5.0, 7.5),
                                              description="extra guidance weights whose copy rates are reported")
    sample_steps: int = Field(50, ge=1)
    generations: int = Field(4, ge=1, description="generations per prompt for the copy rates")
    classifier_epochs: int = Field(60, ge=1)
    seed: int = 0


def _generate(model: CaptionDiffusionModel, prompts: list[BenchmarkPrompt], cfg: CaptionBenchConfig,
              guidance: float) -> tuple[torch.Tensor, list[int]]:
    """``generations`` samples per prompt, prompt i with seeds i*generations + g; (P*G, *shape) and seeds."""
    cond = model.encode([p.prompt for p in prompts]).repeat_interleave(cfg.generations, dim=0)
    seeds = [i * cfg.generations + g for i in range(len(prompts)) for g in range(cfg.generations)]
    noise = torch.stack([torch.randn(model.data_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    x0 = sample_ddim(model, noise, steps=cfg.sample_steps, cond=cond, guidance=guidance, clip=(-1.0, 1.0)).x0
    return x0, seeds


def evaluate_copies(model: CaptionDiffusionModel, bench: CaptionBenchmark, classifier: DigitClassifier,
                    cfg: CaptionBenchConfig, guidance: float | None = None) -> tuple[list[dict], dict, torch.Tensor]:
    """Generate for every benchmark prompt, label copies (d1/d2 < 1/3) and classify.

    ``guidance`` defaults to ``cfg.guidance``. Prompt i uses the seeds i * generations + g, so every
    guidance weight sees the same initial noise. Returns per-generation rows, summary numbers per
    prompt set, and the generations (M, *shape).
    """
    prompts = bench.prompts
    guidance = cfg.guidance if guidance is None else guidance
    x0, seeds = _generate(model, prompts, cfg, guidance)
    labels = label_copies(x0, bench.base_x)
    pred = classifier.predict(x0).numpy()
    rows = []
    for m in range(x0.shape[0]):
        p = prompts[m // cfg.generations]
        rows.append({"prompt": p.prompt, "memorized": int(p.memorized), "label": p.label, "seed": seeds[m],
                     "is_copy": bool(labels.is_copy[m]), "copies_own_image": bool(
                         labels.is_copy[m] and p.train_index is not None and labels.nn_index[m] == p.train_index),
                     "nn_index": int(labels.nn_index[m]), "d1": float(labels.d1[m]), "d2": float(labels.d2[m]),
                     "predicted": int(pred[m]), "correct_class": bool(pred[m] == p.label)})
    summary: dict = {"criterion": labels.criterion, "threshold": labels.threshold, "guidance": guidance}
    for name, flag in (("memorized", 1), ("generic", 0)):
        sel = [r for r in rows if r["memorized"] == flag]
        summary[name] = {"n_prompts": len(sel) // cfg.generations, "n_generations": len(sel),
                         "copy_rate": float(np.mean([r["is_copy"] for r in sel])),
                         "copies_own_image_rate": float(np.mean([r["copies_own_image"] for r in sel])),
                         "class_accuracy": float(np.mean([r["correct_class"] for r in sel]))}
    return rows, summary, x0


@run_command
def run_caption_bench(cfg: CaptionBenchConfig, out: str | Path = DEFAULT_OUT, *, progress: bool = True) -> dict:
    """Build, train, evaluate and write the benchmark folder (see the module docstring); returns the summary."""
    if cfg.mnist is not None and not Path(cfg.mnist).exists():
        raise MemgeoError(f"MNIST path {cfg.mnist} does not exist", "fix --mnist or drop it for the digits")
    bench = make_caption_benchmark(cfg.n_memorized, cfg.copies, mnist=cfg.mnist, max_images=cfg.max_images,
                                   seed=cfg.seed)
    out = start_run(out, cfg, cfg.seed)
    (out / READY_FILE).unlink(missing_ok=True)  # a re-run invalidates the folder until it completes
    timings: dict[str, float] = {}

    say(f"data: {bench.data.x.shape[0]} training rows ({len(bench.memorized)} memorized images x {cfg.copies}), "
        f"{bench.base_x.shape[0]} distinct images, {len(bench.generic)} generic prompts")
    write_npy(out / "train_x.npy", bench.base_x.numpy())
    base_y = torch.zeros(bench.base_x.shape[0], dtype=torch.long)
    base_y[bench.data.source_index] = bench.data.y
    write_npy(out / "train_y.npy", base_y.numpy())
    write_prompts(out / "train_captions.jsonl",
                  [{"prompt": c, "source_index": int(s)} for c, s in zip(bench.captions, bench.data.source_index)])
    write_prompts(out / "prompts_memorized.jsonl", [p.to_dict() for p in bench.memorized])
    write_prompts(out / "prompts_generic.jsonl", [p.to_dict() for p in bench.generic])
    write_prompts(out / "prompts_all.jsonl", [p.to_dict() for p in bench.prompts])

    dim = int(np.prod(bench.data.x.shape[1:]))
    if cfg.hidden < dim:  # measured on MNIST: a 512-wide MLP on D = 784 plateaus at loss 0.40, samples are noise
        say(f"warning: hidden={cfg.hidden} is narrower than the data dimension {dim}; such MLP denoisers cannot "
            f"pass the noise through at small t (use --hidden {1 << (dim - 1).bit_length()})")
    t0 = time.perf_counter()
    model_cfg = CaptionModelConfig(data_shape=tuple(bench.data.x.shape[1:]), vocab=build_vocab(bench.captions),
                                   max_length=cfg.max_length, embed_dim=cfg.embed_dim, hidden=cfg.hidden,
                                   depth=cfg.depth)
    train_cfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, cond_drop=cfg.cond_drop,
                            seed=cfg.seed, checkpoint_every=max(cfg.steps // 4, 1), log_every=max(cfg.steps // 40, 1))
    say(f"training the caption model ({cfg.steps} steps)")
    result = train_caption_model(model_cfg, train_cfg, bench.data.x, bench.captions, out / "model", progress=progress)
    model = result.model
    timings["train_model_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("training the digit classifier")
    clf = train_classifier(bench.base_x, base_y, ClassifierConfig(
        data_shape=tuple(bench.base_x.shape[1:]), epochs=cfg.classifier_epochs, seed=cfg.seed))
    save_classifier(clf.model, out / "classifier")
    write_json(out / "classifier" / "metrics.json", clf.summary())
    timings["train_classifier_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say(f"sampling {cfg.generations} generations per prompt (DDIM {cfg.sample_steps}, guidance {cfg.guidance})")
    rows, copies, x0 = evaluate_copies(model, bench, clf.model, cfg)
    write_csv(out / "generations.csv", rows)
    timings["evaluate_s"] = time.perf_counter() - t0
    sweep = []
    for w in cfg.guidance_sweep:
        _, s, _ = evaluate_copies(model, bench, clf.model, cfg, guidance=w)
        sweep.append({"guidance": w, **{f"{k}_{name}": s[name][k] for name in ("memorized", "generic")
                                        for k in ("copy_rate", "copies_own_image_rate", "class_accuracy")}})
    if sweep:
        write_csv(out / "guidance_sweep.csv", sweep)

    summary = {"copy": copies, "guidance_sweep": sweep, "classifier": clf.summary(), "settings": cfg.model_dump(),
               "data": {"n_train_rows": int(bench.data.x.shape[0]), "n_distinct": int(bench.base_x.shape[0]),
                        "n_memorized_prompts": len(bench.memorized), "n_generic_prompts": len(bench.generic),
                        "vocab_size": len(model_cfg.vocab)},
               "training": {"steps": cfg.steps, "final_loss": result.log[-1]["loss"] if result.log else None,
                            "resumed_from": result.resumed_from,
                            "logged_seconds": result.log[-1]["seconds"] if result.log else None},
               "timings": timings, "torch_threads": torch.get_num_threads()}
    write_json(out / "summary.json", summary)
    _report(out, summary, rows, x0, cfg)
    atomic_write_text(out / READY_FILE, "complete\n")
    say(f"memorized copy rate {copies['memorized']['copy_rate']:.2f}, generic {copies['generic']['copy_rate']:.2f}, "
        f"classifier held-out accuracy {clf.holdout_accuracy:.3f}; wrote {out}")
    return summary


def _report(out: Path, summary: dict, rows: list[dict], x0: torch.Tensor, cfg: CaptionBenchConfig) -> None:
    report = Report("Memorized-caption benchmark", "caption-conditional diffusion on digits")
    report.add_metrics({"memorized": summary["copy"]["memorized"], "generic": summary["copy"]["generic"],
                        "classifier": summary["classifier"]}, heading="Copy rates and classifier")
    if summary["guidance_sweep"]:
        report.add_table(summary["guidance_sweep"], heading="Copy rate against guidance weight")
    for name, flag in (("memorized", 1), ("generic", 0)):
        idx = [i for i, r in enumerate(rows) if r["memorized"] == flag][: 8 * cfg.generations]
        fig = image_grid(x0[idx].numpy(), titles=[rows[i]["prompt"].split()[-1] for i in idx],
                         highlight=np.array([rows[i]["is_copy"] for i in idx]), ncols=cfg.generations * 2,
                         title=f"{name} prompts (red: copies)")
        figure_to_report(report, fig, out / f"samples_{name}.png", heading=f"Generations, {name} prompts")
        close_figure(fig)
    report.add_json(summary["settings"], heading="Settings")
    report.write(out / "report.html")


__all__ = ["DEFAULT_OUT", "READY_FILE", "CaptionBenchConfig", "evaluate_copies", "run_caption_bench"]
