"""`memgeo merge` (finish a sharded run): registers its command on :data:`memgeo.cli.app`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memgeo.cli.common import app
from memgeo.cli.output import Json, emit


@app.command()
def merge(
    dirs: Annotated[list[Path], typer.Argument(help="The --out folder(s) of the shard runs (their shards/ "
                                                    "part-I-of-N.parquet files).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Where the merged results go. [default: the first DIR]")] = None,
    json_out: Json = False,
) -> None:
    """Check that all N shards of one run are there (same config, every item once) and write the same
    CSV / JSON / report as a single run.

    \b
    Example: memgeo merge runs/detect --out runs/detect
    """
    from memgeo.workflows.items import merge_shards

    summary = merge_shards(dirs, out)
    m = summary["merged"]
    target = out if out is not None else dirs[0]
    emit(json_out, summary, f"merged {m['shards']} shard(s) of {m['command']}: {m['n_items']} items; results and "
                            f"report in {target}")
