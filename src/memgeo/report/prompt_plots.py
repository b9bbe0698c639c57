"""Figures of the prompt-level detection benchmark, from plain numpy arrays.

* :func:`score_histograms`: one panel per score, memorized vs other prompts overlaid;
* :func:`detection_roc`: ROC curves of every score on one axes (see :func:`memgeo.report.roc_plot`);
* :func:`cost_vs_auroc`: AUROC (with CI bars) against cost in network passes per prompt, log x.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from memgeo.errors import MemgeoError
from memgeo.report.plots import finish_axes, roc_plot


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def score_histograms(scores: Mapping[str, np.ndarray], labels: np.ndarray | None = None, *, bins: int = 20,
                     group_names: tuple[str, str] = ("memorized", "other"), ncols: int = 3) -> Figure:
    """One histogram panel per score; with labels, the two groups overlaid on shared bins.

    Parameters
    ----------
    scores : dict of str to array, each shape (N,)
    labels : array of 0/1, shape (N,), optional
        1 = first group (memorized).
    bins : int
    group_names : (str, str)
    ncols : int
    """
    if not scores:
        raise MemgeoError("no scores to plot", "pass a dict name -> (N,) array")
    names = list(scores)
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig = _figure(3.0 * ncols, 2.3 * nrows)
    y = None if labels is None else np.asarray(labels).astype(bool).reshape(-1)
    for k, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        v = np.asarray(scores[name], dtype=float).reshape(-1)
        if y is not None and y.shape != v.shape:
            raise MemgeoError(f"score {name!r} has {v.size} values but there are {y.size} labels",
                              "pass one label per value")
        ok = np.isfinite(v)
        if not ok.any():
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        else:
            lo, hi = float(v[ok].min()), float(v[ok].max())
            edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
            if y is None:
                ax.hist(v[ok], bins=edges, color="C0", alpha=0.6)
            else:
                for sel, gname, color in ((y, group_names[0], "C3"), (~y, group_names[1], "C0")):
                    vals = v[ok & sel]
                    if vals.size:
                        ax.hist(vals, bins=edges, color=color, alpha=0.5, label=f"{gname} ({vals.size})")
                ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("score value", fontsize=7)
        ax.set_ylabel("prompts", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25)
    return fig


def detection_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float | None]], title: str | None = None,
                  log_fpr: bool = False) -> Figure:
    """ROC curves of several scores: ``{name: (fpr, tpr, auroc)}`` (delegates to :func:`roc_plot`;
    ``log_fpr`` adds the log-FPR zoom panel)."""
    return roc_plot(curves, title=title, log_fpr=log_fpr)


def cost_vs_auroc(names: Sequence[str], costs: Sequence[float], aurocs: Sequence[float],
                  ci: Sequence[tuple[float, float]] | None = None, title: str | None = None) -> Figure:
    """AUROC against network passes per prompt (log scale), one labelled point per score.

    Parameters
    ----------
    names : list of str, length K
    costs : array-like, shape (K,)
        Network passes per prompt (> 0).
    aurocs : array-like, shape (K,)
    ci : list of (low, high), optional
    """
    c = np.asarray(costs, dtype=float).reshape(-1)
    a = np.asarray(aurocs, dtype=float).reshape(-1)
    if not (len(names) == c.size == a.size):
        raise MemgeoError(f"{len(names)} names, {c.size} costs and {a.size} AUROCs", "pass one of each per score")
    fig = _figure(5.4, 3.8)
    ax = fig.add_subplot()
    for k, name in enumerate(names):
        if not (np.isfinite(c[k]) and np.isfinite(a[k]) and c[k] > 0):
            continue
        if ci is not None:
            lo, hi = ci[k]
            ax.errorbar([c[k]], [a[k]], yerr=[[a[k] - lo], [hi - a[k]]], fmt="o", color=f"C{k % 10}", capsize=3)
        else:
            ax.plot([c[k]], [a[k]], "o", color=f"C{k % 10}")
        ax.annotate(name, (c[k], a[k]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.axhline(0.5, color="0.5", linestyle="--", linewidth=1)
    ax.set_ylim(min(0.0, float(np.nanmin(a)) - 0.05) if a.size else 0.0, 1.02)
    finish_axes(ax, "network passes per prompt", "AUROC", title)
    return fig
