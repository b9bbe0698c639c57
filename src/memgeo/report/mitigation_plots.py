"""Figures of a mitigation run: the copy-rate / fidelity trade-off and method-by-prompt sample grids.

Plain numpy in, matplotlib Figure out (this layer imports no model or memorization code).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from memgeo.errors import MemgeoError
from memgeo.report.plots import finish_axes, image_grid, new_figure


def tradeoff_plot(names: Sequence[str], copy_rate: np.ndarray, accuracy: np.ndarray, cost: np.ndarray | None = None,
                  title: str | None = None) -> Figure:
    """Copy rate on memorized prompts (x) against fidelity (y), one labelled point per method.

    Parameters
    ----------
    names : sequence of str, length M
    copy_rate, accuracy : numpy.ndarray, shape (M,)
        In [0, 1]; NaN entries are left out.
    cost : numpy.ndarray, shape (M,), optional
        Network evaluations per generation, written next to each label.
    """
    cr = np.asarray(copy_rate, dtype=float).reshape(-1)
    acc = np.asarray(accuracy, dtype=float).reshape(-1)
    if not (len(names) == cr.shape[0] == acc.shape[0]) or (cost is not None and len(cost) != len(names)):
        raise MemgeoError("names, copy_rate, accuracy (and cost) need one entry per method", "pass equal lengths")
    fig = new_figure(5.5, 4.2)
    ax = fig.subplots()
    for i, name in enumerate(names):
        if not (np.isfinite(cr[i]) and np.isfinite(acc[i])):
            continue
        label = name if cost is None else f"{name} ({float(cost[i]):.0f} NFE)"
        # A legend rather than annotations: methods often land on top of each other.
        ax.scatter([cr[i]], [acc[i]], s=40, label=label, marker="osD^vP*X"[i % 8])
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    finish_axes(ax, "copy rate on memorized prompts (lower is better)", "classifier accuracy on the intended class",
                title, legend={"fontsize": 8, "loc": "lower left"} if ax.collections else None, grid_alpha=0.3)
    return fig


def method_grid(images: np.ndarray, names: Sequence[str], highlight: np.ndarray | None = None,
                title: str | None = None) -> Figure:
    """One row per method, one column per prompt, same seeds; copies outlined in red.

    Parameters
    ----------
    images : numpy.ndarray, shape (M, P, C, H, W) or (M, P, H, W)
        Generations of M methods for the same P prompts and seeds, in [-1, 1].
    names : sequence of str, length M
    highlight : numpy.ndarray of bool, shape (M, P), optional
    """
    imgs = np.asarray(images)
    if imgs.ndim not in (4, 5) or imgs.shape[0] != len(names):
        raise MemgeoError(f"images has shape {imgs.shape} for {len(names)} methods",
                          "pass (methods, prompts, C, H, W) or (methods, prompts, H, W)")
    m, p = imgs.shape[:2]
    titles = [names[i] if j == 0 else "" for i in range(m) for j in range(p)]
    hl = None if highlight is None else np.asarray(highlight, dtype=bool).reshape(m * p)
    return image_grid(imgs.reshape(m * p, *imgs.shape[2:]), titles=titles, highlight=hl, ncols=p, title=title)
