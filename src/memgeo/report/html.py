"""A single-file HTML report.

:class:`Report` collects text, metric tables, row tables, figures and JSON blocks in insertion
order and renders them to ONE self-contained HTML file: the CSS is inline and figures are
embedded as base64 PNG ``data:`` URIs, so the file can be mailed, archived or opened offline and
never fetches anything. All user text is HTML-escaped, so sample names, config values or error
messages containing ``<script>`` cannot inject markup.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from memgeo.errors import MemgeoError
from memgeo.io import _to_jsonable, atomic_write_text
from memgeo.report.glossary import COLUMN_LABELS
from memgeo.report.plots import PNG_SIGNATURE, close_figure, figure_to_png_bytes, image_grid

__all__ = ["Report", "format_value"]

_CSS = """
:root { --fg: #1d2329; --muted: #5f6b76; --line: #d9dee3; --bg-alt: #f5f7f9; --accent: #2b6cb0; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); max-width: 1100px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3, h4, h5, h6 { margin: 18px 0 6px; }
.subtitle { color: var(--muted); font-size: 0.85em; margin-bottom: 18px; }
nav.toc { background: var(--bg-alt); border: 1px solid var(--line); border-radius: 6px;
          padding: 10px 18px; display: inline-block; min-width: 260px; }
nav.toc strong { display: block; margin-bottom: 4px; }
nav.toc ol { margin: 0; padding-left: 20px; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code { background: var(--bg-alt); padding: 1px 4px; border-radius: 3px; font-size: 0.92em; }
pre { background: var(--bg-alt); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
      overflow-x: auto; font-size: 0.85em; line-height: 1.4; }
pre code { background: none; padding: 0; }
.table-wrap { overflow-x: auto; max-width: 100%; margin: 8px 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--bg-alt); font-weight: 600; }
td { overflow-wrap: anywhere; max-width: 36em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, Menlo, monospace;
         white-space: nowrap; }
.verdict { border: 2px solid var(--accent); background: #eef4fb; border-radius: 8px; padding: 10px 18px;
           margin: 10px 0 18px; font-size: 1.05em; }
.verdict.warn { border-color: #b7791f; background: #fdf6e7; }
.verdict h2 { border: none; margin: 4px 0 6px; padding: 0; font-size: 1.15em; }
.verdict ul { margin: 4px 0; padding-left: 22px; }
dl.glossary { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 6px 0; }
dl.glossary dt { font-weight: 600; white-space: nowrap; }
dl.glossary dd { margin: 0; }
a.csv { font-size: 0.88em; }
tbody tr:nth-child(even) td { background: #fafbfc; }
table.metrics td:first-child { font-weight: 500; }
.note { color: var(--muted); font-size: 0.85em; }
figure { margin: 14px 0; }
figure { max-width: 100%; overflow-x: auto; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 0.88em; margin-top: 4px; }
details summary { cursor: pointer; color: var(--accent); }
footer { margin-top: 48px; color: var(--muted); font-size: 0.8em; border-top: 1px solid var(--line);
         padding-top: 8px; }
"""


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """Format a metric or table cell for display (plain text; escape before putting in HTML).

    Floats get 4 significant digits, switching to scientific notation for very large or small
    magnitudes; NaN/inf read ``nan``/``inf``; ``None`` is empty; short sequences are listed and
    long arrays summarized by shape, so a stray array cannot blow up a table.
    """
    if value is None:
        return ""
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            value = value.item()
        elif value.size > 8:
            return f"array{tuple(value.shape)} {value.dtype}"
        else:
            value = value.tolist()
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        f = float(value)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        if f == 0.0:
            return "0"
        if abs(f) >= 1e5 or abs(f) < 1e-3:
            return f"{f:.3e}"
        return f"{f:.4g}"
    if isinstance(value, (list, tuple)):
        if len(value) > 8:
            return f"[{', '.join(format_value(v) for v in value[:8])}, … ({len(value)} items)]"
        return f"[{', '.join(format_value(v) for v in value)}]"
    return str(value)


def _is_numeric(value: Any) -> bool:
    return isinstance(value, (Real, np.number)) and not isinstance(value, (bool, np.bool_))


def _cell(value: Any) -> str:
    """One escaped ``<td>``; numbers are right-aligned so columns of them line up."""
    cls = ' class="num"' if _is_numeric(value) else ""
    return f"<td{cls}>{html.escape(format_value(value))}</td>"


def _header(column: str, labels: Mapping[str, str] | None = None) -> str:
    """Display name of a table column: ``labels``, then :data:`COLUMN_LABELS`, then the raw name."""
    if labels and column in labels:
        return str(labels[column])
    return COLUMN_LABELS.get(str(column), str(column))


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted keys (``{"a": {"b": 1}} -> {"a.b": 1}``) for a flat key/value table."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


_CODE_SPAN = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_BULLET = re.compile(r"^\s*[-*]\s+(.*)$")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+(.*)$")
_HEADING = re.compile(r"^(#{1,4})\s+(.*)$")
_SUB = re.compile(r"_\{([^{}<>]+)\}")
_SUP = re.compile(r"\^\{([^{}<>]+)\}")


def _inline(text: str) -> str:
    """Escape ``text``, then turn `code`, **bold**, ``X_{sub}`` and ``X^{sup}`` into tags (only tags we
    generate ever appear)."""
    parts = _CODE_SPAN.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:  # inside backticks: literal
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            tagged = _BOLD.sub(r"<strong>\1</strong>", html.escape(part))
            out.append(_SUP.sub(r"<sup>\1</sup>", _SUB.sub(r"<sub>\1</sub>", tagged)))
    return "".join(out)


def _markdownish(text: str) -> str:
    """A small, safe Markdown subset: paragraphs, ``#`` headings, bullet/numbered lists,
    fenced code blocks, inline `code` and **bold**. Everything else is plain escaped text.
    """
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    list_tag = ""
    code: list[str] | None = None

    def flush() -> None:
        nonlocal list_tag
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()
        if items:
            out.append(f"<{list_tag}>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + f"</{list_tag}>")
            items.clear()
            list_tag = ""

    for line in str(text).splitlines():
        if code is not None:
            if line.strip().startswith("```"):
                out.append(f"<pre><code>{html.escape(chr(10).join(code))}</code></pre>")
                code = None
            else:
                code.append(line)
            continue
        if line.strip().startswith("```"):
            flush()
            code = []
            continue
        if not line.strip():
            flush()
            continue
        if m := _HEADING.match(line):
            flush()
            level = min(2 + len(m.group(1)), 6)  # the report uses h1/h2 itself, text headings go below
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            continue
        bullet, numbered = _BULLET.match(line), _NUMBERED.match(line)
        if bullet or numbered:
            tag = "ul" if bullet else "ol"
            if para or (items and tag != list_tag):
                flush()
            list_tag = tag
            items.append((bullet or numbered).group(1))
            continue
        if items:  # continuation of the previous list item
            items[-1] += " " + line.strip()
            continue
        para.append(line.strip())
    if code is not None:  # unterminated fence: still show the code
        out.append(f"<pre><code>{html.escape(chr(10).join(code))}</code></pre>")
    flush()
    return "\n".join(out)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "section"


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


@dataclass
class _Block:
    heading: str | None
    anchor: str | None
    body: str  # already-safe HTML


class Report:
    """Builder for one self-contained HTML report.

    Blocks appear in insertion order. A block added with a ``heading`` starts a new section and
    gets an entry in the table of contents at the top. Every ``add_*`` method returns the
    report, so calls can be chained.

    Parameters
    ----------
    title : str
        Page title and top heading.
    subtitle : str, optional
        A muted line under the title (e.g. run name and date).

    Examples
    --------
    >>> rep = Report("demo")
    >>> rep.add_metrics({"auroc": 0.91234}, heading="Detection").add_text("All <good>.")  # doctest: +ELLIPSIS
    <memgeo.report.html.Report object at ...>
    >>> "<good>" in rep.render()
    False
    """

    def __init__(self, title: str, subtitle: str | None = None) -> None:
        self.title = str(title)
        self.subtitle = subtitle
        self._blocks: list[_Block] = []
        self._verdict: list[str] = []
        self._verdict_warn = False

    # -- building --------------------------------------------------------------------------

    def _add(self, body: str, heading: str | None) -> Report:
        anchor = None
        if heading is not None:
            # The section number keeps anchors unique even when headings repeat.
            anchor = f"s{len(self.headings) + 1}-{_slug(str(heading))}"
        self._blocks.append(_Block(None if heading is None else str(heading), anchor, body))
        return self

    def add_verdict(self, text: str, warn: bool = False) -> Report:
        """Add plain-language findings to the verdict box, which renders FIRST, above the contents.

        ``text`` is Markdown-ish like :meth:`add_text` (a sentence, or a bullet list of findings with
        their numbers and intervals); several calls add to the same box. ``warn`` colours the box as a
        caution (e.g. no labels, so nothing could be evaluated).
        """
        self._verdict.append(_markdownish(text))
        self._verdict_warn = self._verdict_warn or bool(warn)
        return self

    @property
    def verdict(self) -> str:
        """The verdict box's HTML ("" when none was added)."""
        return "".join(self._verdict)

    def add_glossary(self, entries: Mapping[str, str], heading: str | None = "Notation") -> Report:
        """Add a definition list ``symbol: meaning`` (see :func:`memgeo.report.glossary.glossary`).

        Both sides are Markdown-ish inline text, so ``LID_{model}`` and ``σ^{2}`` render as sub- and
        superscripts.
        """
        items = "".join(f"<dt>{_inline(str(k))}</dt><dd>{_inline(str(v))}</dd>" for k, v in entries.items())
        return self._add(f'<dl class="glossary">{items}</dl>', heading)

    def add_text(self, text: str, heading: str | None = None) -> Report:
        """Add plain or Markdown-ish text (paragraphs, lists, `code`, **bold**, fences); escaped."""
        return self._add(f'<div class="text">{_markdownish(text)}</div>', heading)

    def add_metrics(self, metrics: Mapping[str, Any], heading: str | None = None) -> Report:
        """Add a two-column key/value table; nested dicts become dotted keys, floats are rounded."""
        flat = _flatten(metrics)
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td>{_cell(v)}</tr>" for k, v in flat.items()
        )
        body = (f'<div class="table-wrap"><table class="metrics"><thead><tr><th>metric</th><th>value</th>'
                f"</tr></thead><tbody>{rows}</tbody></table></div>")
        if not flat:
            body = '<p class="note">(no metrics)</p>'
        return self._add(body, heading)

    def add_key_numbers(self, items: Sequence[tuple[str, Any]], heading: str | None = None,
                        csv: str | None = None) -> Report:
        """Add a short ``quantity | value`` table of hand-picked numbers.

        Quantity names are Markdown-ish inline text (``LID_{model}`` renders with a subscript);
        ``csv`` links the file holding every number (e.g. ``"metrics.json"``).
        """
        body = "".join(f"<tr><td>{_inline(str(k))}</td>{_cell(v)}</tr>" for k, v in items)
        link = (f'<p class="note"><a class="csv" href="{html.escape(csv, quote=True)}">full data: '
                f"{html.escape(csv)}</a></p>" if csv else "")
        return self._add('<div class="table-wrap"><table class="metrics"><thead><tr><th>quantity</th><th>value</th>'
                         f"</tr></thead><tbody>{body}</tbody></table></div>{link}", heading)

    def add_table(
        self,
        rows: Sequence[Mapping[str, Any]],
        heading: str | None = None,
        max_rows: int = 50,
        columns: Sequence[str] | None = None,
        *,
        drop_constant: bool = False,
        csv: str | None = None,
        labels: Mapping[str, str] | None = None,
        note: str | None = None,
    ) -> Report:
        """Add a table of dict rows (columns: ``columns`` or the union of keys in first-seen order).

        Only the first ``max_rows`` rows are shown, with a note saying how many were left out
        (the full data belongs in a CSV next to the report).

        Parameters
        ----------
        drop_constant : bool
            Leave out columns with the same value in every row (2 rows or more) and name them with
            their value in a note under the table.
        csv : str, optional
            File name of the full data, relative to the report (e.g. ``"scores.csv"``): a link
            "full data: scores.csv" follows the table.
        labels : dict, optional
            Header text per column, on top of :data:`memgeo.report.glossary.COLUMN_LABELS`.
        note : str, optional
            A muted line under the table (Markdown-ish).
        """
        rows = [dict(r) for r in rows]
        if columns is None:
            cols: list[str] = []
            for r in rows:
                cols.extend(k for k in r if k not in cols)
        else:
            cols = list(columns)
        link = (f' <a class="csv" href="{html.escape(csv, quote=True)}">full data: {html.escape(csv)}</a>'
                if csv else "")
        if not rows:
            return self._add(f'<p class="note">(empty table){link}</p>', heading)
        notes = []
        if drop_constant and len(rows) > 1:
            const = [c for c in cols if len({format_value(r.get(c)) for r in rows}) == 1]
            if const:
                cols = [c for c in cols if c not in const]
                notes.append("Same in every row: " + "; ".join(
                    f"{_header(c, labels)} = {format_value(rows[0].get(c)) or '(empty)'}" for c in const) + ".")
        shown = rows[: max(int(max_rows), 0)]
        head = "".join(f"<th>{html.escape(_header(c, labels))}</th>" for c in cols)
        body_rows = []
        for r in shown:
            body_rows.append(f"<tr>{''.join(_cell(r.get(c)) for c in cols)}</tr>")
        body = (f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
                f"<tbody>{''.join(body_rows)}</tbody></table></div>")
        if len(rows) > len(shown):
            notes.append(f"Showing {len(shown)} of {len(rows)} rows.")
        if note:
            notes.append(note)
        if notes or link:
            body += f'<p class="note">{_inline(" ".join(notes))}{link}</p>'
        return self._add(body, heading)

    def add_figure(
        self,
        fig: Figure | bytes,
        caption: str | None = None,
        heading: str | None = None,
        dpi: int = 110,
        close: bool = True,
    ) -> Report:
        """Embed a figure (a matplotlib Figure or PNG bytes) as a base64 data URI.

        A Figure is rendered now at ``dpi`` and, if ``close``, closed afterwards, so reports with
        many figures do not keep them all alive.
        """
        if isinstance(fig, Figure):
            try:
                png = figure_to_png_bytes(fig, dpi=dpi)
            finally:
                if close:
                    close_figure(fig)
        elif isinstance(fig, (bytes, bytearray, memoryview)):
            png = bytes(fig)
            if not png.startswith(PNG_SIGNATURE):
                raise MemgeoError("add_figure got bytes that are not a PNG image",
                                  "pass a matplotlib Figure or PNG bytes (e.g. from figure_to_png_bytes)")
        else:
            raise MemgeoError(f"add_figure got a {type(fig).__name__}", "pass a matplotlib Figure or PNG bytes")
        alt = html.escape(caption or heading or "figure", quote=True)
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        cap = f"<figcaption>{_inline(caption)}</figcaption>" if caption else ""
        return self._add(f'<figure><img src="{uri}" alt="{alt}">{cap}</figure>', heading)

    def add_images(
        self,
        images: np.ndarray,
        titles: Sequence[str] | None = None,
        highlight: np.ndarray | Sequence[bool] | None = None,
        caption: str | None = None,
        heading: str | None = None,
        ncols: int = 8,
    ) -> Report:
        """Add a grid of images, shape (B, C, H, W) or (B, H, W) in [-1, 1]; see :func:`image_grid`."""
        fig = image_grid(images, titles=titles, highlight=highlight, ncols=ncols)
        return self.add_figure(fig, caption=caption, heading=heading)

    def add_json(self, obj: Any, heading: str, open: bool = False) -> Report:  # noqa: A002 (HTML name)
        """Add ``obj`` as pretty JSON inside a collapsible ``<details>`` (config, provenance).

        numpy/torch values and pydantic models are converted as in :func:`memgeo.io.write_json`;
        anything else unknown is shown by its ``str``.
        """
        text = json.dumps(_to_jsonable(obj), indent=2, default=str, ensure_ascii=False)
        n_lines = text.count("\n") + 1
        body = (f"<details{' open' if open else ''}><summary>show JSON ({n_lines} lines)</summary>"
                f"<pre><code>{html.escape(text)}</code></pre></details>")
        return self._add(body, heading)

    # -- output ----------------------------------------------------------------------------

    @property
    def headings(self) -> list[str]:
        """Section headings, in order (the table of contents)."""
        return [b.heading for b in self._blocks if b.heading is not None]

    def render(self) -> str:
        """The whole report as one HTML document (str)."""
        from memgeo import __version__  # the package root is always importable; no layer cycle

        esc = html.escape
        toc_items = "".join(
            f'<li><a href="#{b.anchor}">{esc(b.heading)}</a></li>' for b in self._blocks if b.heading is not None
        )
        toc = f'<nav class="toc"><strong>Contents</strong><ol>{toc_items}</ol></nav>' if toc_items else ""
        parts = []
        for b in self._blocks:
            if b.heading is not None:
                parts.append(f'<section id="{b.anchor}"><h2>{esc(b.heading)}</h2>\n{b.body}</section>')
            else:
                parts.append(f'<div class="block">{b.body}</div>')
        subtitle = f'<div class="subtitle">{esc(self.subtitle)}</div>' if self.subtitle else ""
        verdict = ""
        if self._verdict:
            cls = "verdict warn" if self._verdict_warn else "verdict"
            verdict = f'<section class="{cls}" id="verdict"><h2>Verdict</h2>\n{self.verdict}</section>\n'
        body = "\n".join(parts)
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{esc(self.title)}</h1>{subtitle}</header>\n{verdict}{toc}\n<main>\n{body}\n</main>\n"
            f"<footer>Generated by memgeo {esc(__version__)}.</footer>\n</body>\n</html>\n"
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Render and write the report to ``path`` atomically; returns the path."""
        return atomic_write_text(path, self.render())
