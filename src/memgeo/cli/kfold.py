"""`memgeo kfold` (K-fold likelihood memorization score as work items): registers its command on :data:`memgeo.cli.app`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from memgeo.cli.common import (Address, Engine, GpusPerWorker, Out, PanelCommand, Shard, Workers, app, emit_shard,
                               load_config, scale_options)
from memgeo.cli.output import Json, emit


@app.command(cls=PanelCommand)
def kfold(
    family: Annotated[str, typer.Option(help="Family with a likelihood or bound: ddpm, sd2015, vae, gsvae.")],
    data: Annotated[str, typer.Option(help="Data set: digits, mnist, mnist:PATH, npy:PATH or a .npy path. "
                                           "[default: digits]")] = None,
    folds: Annotated[int, typer.Option(help="Folds K per repeat (each point is held out of one model per repeat). "
                                            "[default: 2]")] = None,
    repeats: Annotated[int, typer.Option(help="Repeats L (independent fold assignments); K x L trainings. "
                                              "[default: 1]")] = None,
    steps: Annotated[int, typer.Option(help="Steps of each training. [default: ddpm 2000, sd2015 1000, vae 2000, "
                                            "gsvae 2000]")] = None,
    rows: Annotated[int, typer.Option(help="Score a random subset of this many data rows. [default: all]")] = None,
    latent_dim: Annotated[int, typer.Option(help="Latent size (vae; gsvae: categorical latents). [default: vae 2, "
                                                 "gsvae 1]")] = None,
    iw: Annotated[int, typer.Option(help="Importance samples of the vae / gsvae / sd2015 bound. "
                                         "[default: 64]")] = None,
    config: Annotated[Path, typer.Option(help="KFoldConfig JSON; options given here override it. "
                                              "[default: none]")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the row subset and the folds; training m uses seed + m. "
                                           "[default: 0]")] = None,
    json_out: Json = False,
    out: Out = Path("runs/kfold"),
    shard: Shard = None,
    engine: Engine = None,
    address: Address = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
) -> None:
    """K-fold likelihood memorization score (van den Burg & Williams 2021) of every training point; kfold.csv, report.

    Trains K x L models of the family (each on all folds but one; the same training and bound as
    `memgeo families`), scores every point by how much likelier it is under the models trained on it,
    and writes kfold.csv (one row per point), trainings.csv, summary.json and report.html. Each
    training is one work item: --shard I/N runs a slice, --engine ray runs each training as a Ray task.

    \b
    Example: memgeo kfold --family vae --data digits --folds 2 --repeats 1 --out runs/kfold
    Example: memgeo kfold --family vae --data digits --folds 10 --repeats 10 --out runs/kfold --engine ray --address auto
    """
    from memgeo.workflows.kfold_runs import KFoldConfig, run_kfold

    cfg = load_config(config, KFoldConfig, {"family": family, "data": data, "folds": folds, "repeats": repeats,
                                            "steps": steps, "rows": rows, "latent_dim": latent_dim, "iw": iw,
                                            "seed": seed})
    summary = run_kfold(cfg, out, scale=scale_options(shard, engine, address, workers, gpus_per_worker))
    if emit_shard(json_out, summary):
        return
    emit(json_out, _short(summary, out), list(summary["verdict"]) + [f"per point in {out / 'kfold.csv'}; report: "
                                                                     f"{out / 'report.html'}"])


def _short(summary: dict[str, Any], out: Path) -> dict[str, Any]:
    keep = ("family", "data", "n", "folds", "repeats", "n_trainings", "steps", "score", "stands_out_limit",
            "n_stand_out", "top")
    return {**{k: summary[k] for k in keep}, "report": str(out / "report.html")}
