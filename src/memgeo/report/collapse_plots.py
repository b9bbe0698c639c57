"""Figures of recursive-training (model collapse) runs, from plain numpy arrays.

* :func:`fan_chart`: median and 50 % / 90 % quantile bands of a per-run metric over generations,
  the Monte Carlo mean, and the theory mean (+- 2 sd of the theoretical spread) where one exists;
* :func:`lines_plot`: one mean curve (+- 2 standard errors) per group, with dashed theory curves
  (e.g. schedules compared, or replace against accumulate);
* :func:`metric_panels`: a grid of :func:`lines_plot`-style panels, one per metric;
* :func:`point_clouds`: 2-D samples of successive generations side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from memgeo.errors import MemgeoError
from memgeo.report.plots import as_array, check_groups, finish_axes, group_colors, new_figure

__all__ = ["fan_chart", "lines_plot", "metric_panels", "point_clouds"]


def fan_chart(generations: np.ndarray, values: np.ndarray, *, theory_mean: np.ndarray | None = None,
              theory_sd: np.ndarray | None = None, ylabel: str = "log variance", title: str | None = None,
              ax=None) -> Figure:
    """Fan chart of ``values`` (T+1, R) over ``generations`` (T+1,).

    Non-finite values (a fully collapsed run has log variance -inf) are left out of the mean but kept
    in the quantiles, which handle -inf correctly.
    """
    gen = as_array(generations, "generations", (1,))
    vals = as_array(values, "values", (2,))
    if vals.shape[0] != gen.shape[0]:
        raise MemgeoError(f"values has {vals.shape[0]} rows for {gen.shape[0]} generations", "pass (T+1, R)")
    fig = ax.figure if ax is not None else new_figure(6.4, 4.0)
    ax = ax if ax is not None else fig.add_subplot()
    with np.errstate(invalid="ignore"):  # quantiles between two -inf runs are -inf, not an error
        q = np.nanquantile(np.where(np.isnan(vals), -np.inf, vals), [0.05, 0.25, 0.5, 0.75, 0.95], axis=1)
    q = np.where(np.isfinite(q), q, np.nan)
    ax.fill_between(gen, q[0], q[4], color="tab:blue", alpha=0.15, lw=0, label="5-95 % of runs")
    ax.fill_between(gen, q[1], q[3], color="tab:blue", alpha=0.3, lw=0, label="25-75 %")
    ax.plot(gen, q[2], color="tab:blue", lw=1.5, label="median")
    finite = np.where(np.isfinite(vals), vals, np.nan)
    with np.errstate(invalid="ignore"):
        ax.plot(gen, np.nanmean(finite, axis=1), color="black", lw=1, label="mean (simulated)")
    if theory_mean is not None:
        tm = as_array(theory_mean, "theory_mean", (1,))
        ax.plot(gen, tm, color="tab:red", ls="--", lw=1.5, label="theory mean")
        if theory_sd is not None:
            sd = as_array(theory_sd, "theory_sd", (1,))
            ax.plot(gen, tm - 2 * sd, color="tab:red", ls=":", lw=1, label="theory +- 2 sd")
            ax.plot(gen, tm + 2 * sd, color="tab:red", ls=":", lw=1)
    finish_axes(ax, "generation", ylabel, title, legend={"fontsize": 7, "loc": "best"}, grid_alpha=0.3)
    return fig


def lines_plot(generations: np.ndarray, means: Mapping[str, np.ndarray], *,
               se: Mapping[str, np.ndarray] | None = None, theory: Mapping[str, np.ndarray] | None = None,
               ylabel: str = "", title: str | None = None, logy: bool = False, logx: bool = False,
               ax=None) -> Figure:
    """One line per group (mean over runs, shaded +- 2 se), theory curves dashed in the same colour.

    ``logx`` puts generations on a symmetric-log axis (linear up to 1), where a loss that grows like
    log t -- the linear schedule -- is a straight line and a levelling-off curve bends flat.
    """
    check_groups(means, "means")
    gen = as_array(generations, "generations", (1,))
    colors = group_colors(list(means))
    fig = ax.figure if ax is not None else new_figure(6.4, 4.0)
    ax = ax if ax is not None else fig.add_subplot()
    for name, m in means.items():
        m = as_array(m, f"means[{name}]", (1,))
        if m.shape != gen.shape:
            raise MemgeoError(f"means[{name}] has {m.shape[0]} values for {gen.shape[0]} generations", "align them")
        ax.plot(gen, m, color=colors[name], lw=1.5, marker="o" if gen.size <= 12 else None, ms=3, label=name)
        if se is not None and name in se:
            s = as_array(se[name], f"se[{name}]", (1,))
            ax.fill_between(gen, m - 2 * s, m + 2 * s, color=colors[name], alpha=0.2, lw=0)
        if theory is not None and theory.get(name) is not None:
            ax.plot(gen, as_array(theory[name], f"theory[{name}]", (1,)), color=colors[name], ls="--", lw=1,
                    label=f"{name} (theory)")
    if logy:
        ax.set_yscale("log")
    if logx:
        if gen.min() > 0:
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlim(left=0)
    finish_axes(ax, "generation", ylabel, title, legend={"fontsize": 7, "loc": "best"}, grid_alpha=0.3)
    return fig


def metric_panels(generations: np.ndarray, panels: Mapping[str, Mapping[str, np.ndarray]], *,
                  se: Mapping[str, Mapping[str, np.ndarray]] | None = None, ncols: int = 3,
                  title: str | None = None, theory: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                  labels: Mapping[str, str] | None = None) -> Figure:
    """``panels[metric][group]`` = mean per generation: one small :func:`lines_plot` per metric.

    ``theory[metric][group]`` adds a dashed closed-form curve where one exists; ``labels[metric]`` is
    the panel's readable name (title and y label), default the metric name.
    """
    check_groups(panels, "panels")
    names = list(panels)
    ncols = max(1, min(ncols, len(names)))
    nrows = -(-len(names) // ncols)
    fig = new_figure(3.6 * ncols, 2.8 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i // ncols][i % ncols]
        label = (labels or {}).get(name, name)
        lines_plot(generations, panels[name], se=None if se is None else se.get(name), ylabel="",
                   theory=None if theory is None else theory.get(name), ax=ax)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("mean over runs", fontsize=8)
    for j in range(len(names), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


def point_clouds(clouds: Sequence[np.ndarray], titles: Sequence[str] | None = None,
                 reference: np.ndarray | None = None, title: str | None = None) -> Figure:
    """2-D samples (n, 2) of successive generations side by side, the real data in grey behind."""
    if len(clouds) == 0:
        raise MemgeoError("no point clouds to plot", "pass at least one (n, 2) array")
    arrays = [as_array(c, "cloud", (2,)) for c in clouds]
    if any(a.shape[1] != 2 for a in arrays):
        raise MemgeoError("point clouds must be 2-D points (n, 2)", "project or pick two coordinates")
    if titles is not None and len(titles) != len(arrays):
        raise MemgeoError(f"{len(titles)} titles for {len(arrays)} clouds", "pass one title per cloud")
    fig = new_figure(2.6 * len(arrays), 2.8)
    axes = fig.subplots(1, len(arrays), squeeze=False)[0]
    lim = max(float(np.nanmax(np.abs(a))) for a in arrays + ([reference] if reference is not None else []))
    for i, (ax, pts) in enumerate(zip(axes, arrays)):
        if reference is not None:
            ax.scatter(reference[:, 0], reference[:, 1], s=2, color="0.8")
        ax.scatter(pts[:, 0], pts[:, 1], s=2, color="tab:blue")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
