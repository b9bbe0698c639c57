"""`memgeo copies` (model-agnostic copy metrics on any samples): registers its command on :data:`memgeo.cli.app`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from memgeo.cli.common import (Address, Engine, GpusPerWorker, Out, PanelCommand, Shard, Workers, app, emit_shard,
                               load_config, scale_options)
from memgeo.cli.output import Json, emit, num

SETS_HELP = ".npy file (N, ...) (memory-mapped) or a folder of PNG/JPEG images (converted to the training images' " \
            "mode and size)"


@app.command(cls=PanelCommand)
def copies(
    train: Annotated[str, typer.Option(help="Training set: " + SETS_HELP + ".")],
    test: Annotated[str, typer.Option(help="Held-out set of the same distribution, never trained on: " + SETS_HELP
                                           + ".")],
    gen: Annotated[str, typer.Option(help="Generated samples: " + SETS_HELP + ", or a memgeo checkpoint folder "
                                          "sampled --n-gen times.")],
    n_gen: Annotated[int, typer.Option(help="Samples to draw when --gen is a checkpoint. [default: none]")] = None,
    sample_steps: Annotated[int, typer.Option(help="DDIM steps for a diffusion checkpoint --gen. "
                                                   "[default: 50]")] = None,
    features: Annotated[str, typer.Option(help="Feature space: pixels, digits-ae, mnist-ae (trained in-repo) or a "
                                               "local TorchScript / torch.save(model) file (cached by content "
                                               "hash). [default: pixels]")] = None,
    feature_options: Annotated[str, typer.Option(help="JSON options of a model-file extractor, e.g. "
                                                      "'{\"resize\": 224, \"channels\": 3}'. [default: {}]")] = None,
    metrics: Annotated[str, typer.Option(help="Comma-separated: d1d2, nn_ratio, dcr, cosine, tiled_l2, authenticity, "
                                              "datacopy_rate, clique, ct, fld, precision, recall, density, coverage. "
                                              "[default: all that apply: tiled_l2 only for images in pixels, cosine "
                                              "only in a learned feature space]")] = None,
    options: Annotated[str, typer.Option(help="JSON per-metric options, e.g. '{\"d1d2\": {\"threshold\": 0.25}, "
                                              "\"ct\": {\"k\": 10}}'. [default: {}]")] = None,
    backend: Annotated[str, typer.Option(help="kNN index: auto, torch, faiss (exact), faiss-ivf, faiss-hnsw "
                                              "(approximate). [default: auto]")] = None,
    index_options: Annotated[str, typer.Option(help="JSON options of an approximate index, e.g. "
                                                    "'{\"nlist\": 4000, \"nprobe\": 32}'. [default: {}]")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates of the CIs (0: none). [default: 200]")] = None,
    max_pairs: Annotated[int, typer.Option(help="Most generation / training-match pairs in the report. "
                                                "[default: 24]")] = None,
    resample: Annotated[str, typer.Option(help="Filter for resizing images: bicubic, area, bilinear, lanczos, "
                                               "nearest. [default: bicubic]")] = None,
    config: Annotated[Path, typer.Option(help="CopiesConfig JSON; options given here override it. "
                                              "[default: none]")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap, the baseline split and sampling. "
                                           "[default: 0]")] = None,
    json_out: Json = False,
    out: Out = Path("runs/copies"),
    shard: Shard = None,
    engine: Engine = None,
    address: Address = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
) -> None:
    """Copy metrics of generated samples vs a training set, each beside its held-out baseline; copies.csv, report.

    Writes copies.csv (one row per generation: copy verdict per criterion, nearest training sample and
    distance), summary.json (values, CIs, baselines, inputs with sha256, timings) and report.html.

    \b
    Example: memgeo copies --train data/train --test data/heldout --gen samples/ --out runs/copies
    Example: memgeo copies --train train_x.npy --test test_x.npy --gen runs/model --n-gen 500 --metrics d1d2,ct --out runs/copies
    Example: memgeo copies --train train_x.npy --test test_x.npy --gen gen.npy --out runs/copies --shard 0/8  (then: memgeo merge runs/copies)
    """
    from memgeo.io import parse_json_text
    from memgeo.workflows.copies import CopiesConfig, run_copies

    metric_list = tuple(m.strip() for m in metrics.split(",")) if metrics is not None else None
    cfg = load_config(config, CopiesConfig, {
        "train": train, "test": test, "gen": gen, "n_gen": n_gen, "sample_steps": sample_steps, "features": features,
        "feature_options": parse_json_text(feature_options, "--feature-options", example='\'{"resize": 224}\'')
        if feature_options is not None else None,
        "metrics": metric_list,
        "options": parse_json_text(options, "--options", example='\'{"d1d2": {"threshold": 0.25}}\'')
        if options is not None else None,
        "backend": backend,
        "index_options": parse_json_text(index_options, "--index-options", example='\'{"nprobe": 32}\'')
        if index_options is not None else None,
        "n_boot": n_boot, "max_pairs": max_pairs, "resample": resample, "seed": seed})
    summary = run_copies(cfg, out, scale=scale_options(shard, engine, address, workers, gpus_per_worker))
    if emit_shard(json_out, summary):
        return
    emit(json_out, _short(summary, out), _lines(summary, out))


def _short(summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """The --json line: counts, the primary criterion and every metric's value, CI and baseline."""
    keep = ("n_train", "n_test", "n_gen", "dim", "primary", "n_copies", "copy_rate", "copy_rate_ci",
            "copy_rate_baseline", "global_sees_copying")
    return {**{k: summary[k] for k in keep},
            "metrics": {k: {f: m.get(f) for f in ("value", "ci_low", "ci_high", "baseline", "n_flagged")}
                        for k, m in summary["metrics"].items()},
            "report": str(out / "report.html")}


def _lines(summary: dict[str, Any], out: Path) -> list[str]:
    lines = []
    if summary["primary"] is not None:
        lo, hi = summary["copy_rate_ci"]
        lines.append(f"{summary['n_copies']} of {summary['n_gen']} generations copy a training sample "
                     f"({summary['primary']}): rate {num(summary['copy_rate'], 3)} [{num(lo, 3)}, {num(hi, 3)}], "
                     f"held-out baseline {num(summary['copy_rate_baseline'], 3)}")
    parts = []
    for k, m in summary["metrics"].items():
        if k == summary["primary"]:
            continue
        parts.append(f"{k} {num(m['value'], 3)} (baseline {num(m['baseline'], 3)})")
    if parts:
        lines.append("; ".join(parts))
    sees = summary["global_sees_copying"]
    if sees:
        yes = [k for k, v in sees.items() if v]
        lines.append(f"global tests seeing copying: {', '.join(yes) if yes else 'none'} (of {', '.join(sees)})")
    lines.append(f"per sample in {out / 'copies.csv'}; report: {out / 'report.html'}")
    return lines
