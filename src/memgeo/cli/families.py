"""`memgeo families` (the duplicated-9 experiment for every generator family): registers on :data:`memgeo.cli.app`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memgeo.cli.common import Out, app, load_config
from memgeo.cli.output import Json, emit


@app.command()
def families(
    family: Annotated[str, typer.Option(help="Comma-separated families: vae, gsvae, gan, wgan-gp. "
                                             "[default: all four]")] = None,
    n_samples: Annotated[int, typer.Option(help="Generations per family. [default: 200]")] = None,
    subsample: Annotated[int, typer.Option(help="Keep this many random data rows (quick runs). "
                                                "[default: all]")] = None,
    config: Annotated[Path, typer.Option(help="FamiliesDemoConfig JSON; options override it. "
                                              "[default: none]")] = None,
    seed: Annotated[int, typer.Option(help="Random seed. [default: 0]")] = None,
    json_out: Json = False,
    out: Out = Path("runs/families"),
) -> None:
    """Duplicated-9 / control-3 memorization experiment for vae, gsvae, gan and wgan-gp; writes report.html.

    \b
    Example: memgeo families --out runs/families
    """
    from memgeo.workflows.families_demo import FamiliesDemoConfig, run_families_demo

    fams = tuple(f.strip() for f in family.split(",") if f.strip()) if family else None
    cfg = load_config(config, FamiliesDemoConfig, {"families": fams, "n_samples": n_samples,
                                                    "subsample": subsample, "seed": seed})
    summary = run_families_demo(cfg, out)
    emit(json_out, summary, list(summary["verdict"]) + [f"report in {out / 'report.html'}"])
