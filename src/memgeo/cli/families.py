"""`memgeo families` (the duplicated-9 experiment for every generator family): registers on :data:`memgeo.cli.app`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memgeo.cli.common import Out, app, load_config
from memgeo.cli.output import Json, emit


@app.command()
def families(
    family: Annotated[str, typer.Option(help="Comma-separated families: ddpm, sd2015, vae, gsvae, gan, wgan-gp, "
                                             "or all. [default: all]")] = None,
    steps: Annotated[str, typer.Option(help="Steps per family, e.g. 'vae=20000,gan=20000,wgan-gp=5000' (GANs: "
                                            "generator steps); others keep the default. [default: ddpm 4000, "
                                            "sd2015 2000, vae 20000, gsvae 5000, gan 10000, wgan-gp 3000]")] = None,
    latent_dim: Annotated[int, typer.Option(help="Latent size of every latent family (gsvae: categorical "
                                                 "latents). [default: vae/gan/wgan-gp 2, gsvae 1]")] = None,
    copies: Annotated[int, typer.Option(help="Copies of the duplicated image. [default: 360, twice the nines of digits]")] = None,
    n_samples: Annotated[int, typer.Option(help="Generations per family. [default: 200]")] = None,
    subsample: Annotated[int, typer.Option(help="Keep this many random data rows (quick runs). "
                                                "[default: all]")] = None,
    config: Annotated[Path, typer.Option(help="FamiliesDemoConfig JSON; options override it. "
                                              "[default: none]")] = None,
    seed: Annotated[int, typer.Option(help="Random seed. [default: 0]")] = None,
    json_out: Json = False,
    out: Out = Path("runs/families"),
) -> None:
    """Duplicated-9 / control-3 memorization experiment for ddpm, sd2015, vae, gsvae, gan and wgan-gp; writes report.html.

    \b
    Example: memgeo families --out runs/families
    Two:     memgeo families --family ddpm,vae --out runs/families_two
    """
    from memgeo.errors import MemgeoError
    from memgeo.workflows.families_demo import DEFAULT_STEPS, FamiliesDemoConfig, run_families_demo

    fams = tuple(f.strip() for f in family.split(",") if f.strip()) if family and family.strip() != "all" else None
    step_map = None
    if steps:
        step_map = dict(DEFAULT_STEPS)
        for item in (p.strip() for p in steps.split(",") if p.strip()):
            name, _, val = item.partition("=")
            if name.strip() not in DEFAULT_STEPS or not val.strip().isdigit() or int(val) < 1:
                raise MemgeoError(f"--steps item {item!r} is not family=positive integer",
                                  f"use e.g. vae=20000,wgan-gp=5000 with families {', '.join(DEFAULT_STEPS)}")
            step_map[name.strip()] = int(val)
    cfg = load_config(config, FamiliesDemoConfig, {"families": fams, "n_samples": n_samples, "steps": step_map,
                                                    "latent_dim": latent_dim, "copies": copies, "subsample": subsample,
                                                    "seed": seed})
    summary = run_families_demo(cfg, out)
    emit(json_out, summary, list(summary["verdict"]) + [f"report in {out / 'report.html'}"])
