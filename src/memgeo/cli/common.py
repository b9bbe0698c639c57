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
from pydantic import BaseModel, ValidationError

from memgeo.errors import MemgeoError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure, explain and prevent memorization in generative models.")

Out = Annotated[Path, typer.Option("--out", help="Output folder (created; files are written atomically).")]
Seed = Annotated[int, typer.Option(help="Random seed (recorded in provenance.json).")]


def load_config(path: Path | None, cls: type[BaseModel], overrides: dict[str, Any]) -> BaseModel:
    """Config file (JSON) first, then the command-line options that were given."""
    base: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise MemgeoError(f"config file {path} does not exist", "check --config")
        try:
            base = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise MemgeoError(f"config file {path} is not valid JSON ({exc})", "fix the file") from exc
    for key, value in overrides.items():
        if value is None:
            continue
        if "." in key:  # nested, e.g. train.steps
            outer, inner = key.split(".", 1)
            base.setdefault(outer, {})
            base[outer] = {**(base[outer] if isinstance(base[outer], dict) else base[outer]), inner: value}
        else:
            base[key] = value
    try:
        return cls.model_validate(base)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        raise MemgeoError(f"invalid option {loc}: {err['msg']}", "see --help for allowed values") from exc


__all__ = ["Out", "Seed", "app", "load_config"]
