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

# rich_markup_mode=None: help texts are plain text, so "[default: ...]" in a help string is printed as
# written (rich markup would swallow it as a style tag).
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  context_settings={"max_content_width": 120},
                  help="Measure, explain and prevent memorization in generative models.")

Out = Annotated[Path, typer.Option("--out", help="Output folder (created; files are written atomically).")]
Seed = Annotated[int, typer.Option(help="Random seed (recorded in provenance.json).")]


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


__all__ = ["Out", "Seed", "app", "load_config"]
