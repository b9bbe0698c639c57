"""Prompts with their tokens highlighted by attribution, as HTML for :class:`~memgeo.report.Report`.

Each token becomes a ``<span>`` whose background opacity is its attribution divided by the largest
one in the same prompt (so every prompt shows which of its words matter most); the raw value is in
the span's ``title`` tooltip. All text is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from memgeo.errors import MemgeoError
from memgeo.report.html import Report, format_value


def highlighted_tokens_html(tokens: Sequence[str], values: Sequence[float] | np.ndarray,
                            color: tuple[int, int, int] = (220, 50, 47)) -> str:
    """One prompt as inline HTML: a span per token with background intensity proportional to its value.

    Parameters
    ----------
    tokens : list of str, length K
    values : array-like, shape (K,)
        Non-negative attributions.
    color : (r, g, b)
        Highlight colour at full intensity.
    """
    vals = np.asarray(values, dtype=float).reshape(-1)
    if vals.size != len(tokens):
        raise MemgeoError(f"{len(tokens)} tokens but {vals.size} attribution values", "pass one value per token")
    finite = np.where(np.isfinite(vals), vals, 0.0)
    top = float(np.max(np.abs(finite))) if finite.size else 0.0
    r, g, b = color
    spans = []
    for tok, v in zip(tokens, finite):
        alpha = abs(v) / top if top > 0 else 0.0
        spans.append(f'<span title="{html.escape(format_value(float(v)), quote=True)}" '
                     f'style="background: rgba({r},{g},{b},{alpha:.3f}); padding: 1px 3px; margin: 0 1px; '
                     f'border-radius: 3px">{html.escape(str(tok))}</span>')
    return "".join(spans)


def add_token_attribution(report: Report, items: Sequence[Mapping[str, Any]], heading: str | None = None,
                          note: str | None = None) -> Report:
    """Add a table of highlighted prompts to ``report``.

    Parameters
    ----------
    items : list of dict
        Each with ``tokens`` (list of str), ``values`` (attributions), and optionally ``score``
        (float) and ``label`` (any; e.g. memorized or not).
    heading, note : str, optional
    """
    rows = []
    for it in items:
        spans = highlighted_tokens_html(it["tokens"], it["values"])
        score = html.escape(format_value(it.get("score"))) if it.get("score") is not None else ""
        label = html.escape(str(it["label"])) if it.get("label") is not None else ""
        rows.append(f'<tr><td class="num">{score}</td><td>{label}</td><td>{spans}</td></tr>')
    if not rows:
        body = '<p class="note">(no prompts)</p>'
    else:
        body = ('<div class="table-wrap"><table><thead><tr><th>score</th><th>label</th><th>prompt (tokens shaded '
                'by attribution)</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table></div>")
    if note:
        body = f'<p class="note">{html.escape(note)}</p>' + body
    return report._add(body, heading)  # a raw block: this module is the report layer's own helper
