"""What every ``memgeo`` command module shares: the typer ``app``, common options, config loading.

Command modules register on :data:`app` (``@app.command()``) and import these names from here,
not from the package ``memgeo.cli``, whose ``__init__`` imports the command modules (importing the
package back would make an import cycle).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand
from pydantic import BaseModel, ValidationError

from memgeo.errors import MemgeoError

# rich_markup_mode=None: help texts are plain text, so "[default: ...]" in a help string is printed as
# written (rich markup would swallow it as a style tag).
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"max_content_width": 120},
                  help="Measure, explain and prevent memorization in generative models.")

Out = Annotated[Path, typer.Option("--out", help="Output folder (created; files are written atomically).")]
Seed = Annotated[int, typer.Option(help="Random seed (recorded in provenance.json).")]

# Scale-out options of the audit commands (docs/scale.md), shown together in one help panel.
SCALE_PANEL = "Scale-out"
Shard = Annotated[str, typer.Option("--shard", metavar="I/N", rich_help_panel=SCALE_PANEL,
                                    help="Run only slice I of N (I from 0, e.g. $SLURM_ARRAY_TASK_ID/"
                                         "$SLURM_ARRAY_TASK_COUNT) into OUT/shards/part-I-of-N.parquet; a finished "
                                         "shard is skipped; `memgeo merge OUT` writes the results. [default: all]")]
Engine = Annotated[str, typer.Option("--engine", rich_help_panel=SCALE_PANEL,
                                     help="local (this process) or ray (Ray Data actors, one model each; needs "
                                          "the [ray] extra). [default: local]")]
Address = Annotated[str, typer.Option("--address", rich_help_panel=SCALE_PANEL,
                                      help="Ray cluster address (e.g. auto or ray://HEAD:10001). [default: start "
                                           "a local Ray instance]")]
Workers = Annotated[int, typer.Option("--workers", rich_help_panel=SCALE_PANEL,
                                      help="Ray actors, each holding one copy of the model. [default: the "
                                           "cluster's CPUs, or GPUs / --gpus-per-worker]")]
GpusPerWorker = Annotated[float, typer.Option("--gpus-per-worker", rich_help_panel=SCALE_PANEL,
                                              help="GPUs per Ray actor (fractions share a GPU). [default: 0]")]


class PanelCommand(TyperCommand):
    """A command whose plain-text help lists options with a ``rich_help_panel`` in their own section
    (e.g. "Scale-out:") after the others; the app renders help without rich (``rich_markup_mode=None``),
    where typer would put every option under "Options"."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            rec = param.get_help_record(ctx)
            if rec is None or param.param_type_name != "option":
                continue
            sections.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(rec)
        for name in ["Options"] + [k for k in sections if k != "Options"]:
            if sections.get(name):
                with formatter.section(name):
                    formatter.write_dl(sections[name])


def scale_options(shard: str | None, engine: str | None, address: str | None, workers: int | None,
                  gpus_per_worker: float | None) -> Any:
    """The validated :class:`memgeo.workflows.items.ScaleOptions` of the Scale-out options."""
    from memgeo.workflows.items import scale_options as build

    return build(shard, engine, address, workers, gpus_per_worker)


def shard_line(summary: dict[str, Any]) -> str | None:
    """The line a shard run prints instead of the command's results, or ``None`` for a whole run."""
    if "shard" not in summary or "command" not in summary:
        return None
    if summary.get("skipped"):
        return f"shard {summary['shard']} was already finished: {summary['path']} (nothing done)"
    return (f"shard {summary['shard']}: {summary['n_items']} items in {summary['path']}; when every shard is "
            f"done, run `memgeo merge` on the --out folder(s)")


def emit_shard(json_out: bool, summary: dict[str, Any]) -> bool:
    """Print a shard run's line (:func:`shard_line`) and return True; False (nothing printed) for a whole run."""
    line = shard_line(summary)
    if line is None:
        return False
    from memgeo.cli.output import emit

    emit(json_out, summary, line)
    return True


def load_config(path: Path | None, cls: type[BaseModel], overrides: dict[str, Any]) -> BaseModel:
    """Config file (JSON) first, then the command-line options that were given."""
    base: dict[str, Any] = {}
    if path is not None:
        from memgeo.io import read_json_file

        base = read_json_file(path, "config file")  # a JSON object in UTF-8, else a one-line error
    for key, value in overrides.items():
        if value is None:
            continue
        if "." in key:  # nested, e.g. train.steps
            outer, inner = key.split(".", 1)
            base.setdefault(outer, {})
            base[outer] = {**(base[outer] if isinstance(base[outer], dict) else base[outer]), inner: value}
        else:
            base[key] = value
    from memgeo.errors import check_option_values

    check_option_values(base)  # NaN/inf numbers and non-UTF-8 text are refused for every option
    try:
        return cls.model_validate(base)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        raise MemgeoError(f"invalid option {loc}: {err['msg']}", "see --help for allowed values") from exc


__all__ = ["Address", "Engine", "GpusPerWorker", "Out", "PanelCommand", "SCALE_PANEL", "Seed", "Shard", "Workers", "app",
           "emit_shard", "load_config", "scale_options", "shard_line"]
