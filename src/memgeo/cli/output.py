"""What ``memgeo`` commands print on stdout: one human-readable summary, or JSON with ``--json``.

Numbers in the sentences are rounded to what they can carry (4 significant digits; a mean with a
standard error to the error's second significant digit); the full-precision values stay in the
files each command writes and in the ``--json`` line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["Json", "auroc_text", "emit", "num", "plus_minus"]

Json = Annotated[bool, typer.Option("--json", help="Print the summary as one JSON line (full precision) instead "
                                                   "of a sentence.")]


def num(value: Any, digits: int = 4) -> str:
    """``value`` for a reader: ``digits`` significant digits, integers as they are, ``n/a`` for None.

    >>> num(0.9998999099189271), num(12345.678), num(3), num(None)
    ('0.9999', '12346', '3', 'n/a')
    """
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    x = float(value)
    if not math.isfinite(x):
        return str(x)
    if x != 0 and abs(x) >= 10 ** digits:
        return f"{x:.0f}"
    text = f"{x:.{digits}g}"
    if "e" in text:  # tiny values: keep scientific, without a trailing "+00"-style clutter
        mant, exp = text.split("e")
        return f"{mant}e{int(exp)}"
    return text


def plus_minus(mean: float | None, se: float | None) -> str:
    """``mean ± se`` with both rounded to the second significant digit of ``se``.

    >>> plus_minus(-1.234567, 0.004321)
    '-1.2346 ± 0.0043'
    """
    if mean is None:
        return "n/a"
    if se is None or not math.isfinite(float(se)) or float(se) <= 0 or not math.isfinite(float(mean)):
        return num(mean)
    decimals = max(0, 1 - math.floor(math.log10(float(se))))
    return f"{float(mean):.{decimals}f} ± {float(se):.{decimals}f}"


def auroc_text(entry: Mapping[str, Any]) -> str:
    """``0.9999 [0.9981, 1]`` from a detection dict (``auroc``, optional ``ci_low``/``ci_high``), or the
    reason it is undefined."""
    if entry.get("auroc") is None:
        return f"n/a ({entry['reason']})" if entry.get("reason") else "n/a"
    text = num(entry["auroc"])
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f" [{num(entry['ci_low'])}, {num(entry['ci_high'])}]"
    return text


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def emit(as_json: bool, data: Any, lines: str | Iterable[str]) -> None:
    """Print ``data`` as one JSON line when ``as_json``, else the human-readable ``lines``."""
    if as_json:
        typer.echo(json.dumps(data, default=_plain))
        return
    for line in [lines] if isinstance(lines, str) else lines:
        typer.echo(line)
