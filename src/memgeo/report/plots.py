"""Figures for memorization reports, built from plain numpy arrays.

Every function returns a :class:`matplotlib.figure.Figure` and never shows it. Figures are built
with the object-oriented API (``Figure`` + ``FigureCanvasAgg``) instead of :mod:`matplotlib.pyplot`:
that renders with the non-interactive Agg backend without calling ``matplotlib.use`` or
importing pyplot, so nothing global (the selected backend, pyplot's figure registry) changes, the
figures work on a headless machine and they are freed by garbage collection like any object.

Sharpness values are eigenvalues ``lambda`` of the Hessian of ``log p_sigma`` scaled by
``sigma**2``. For a point mass (a memorized training image) every scaled eigenvalue is ``-1``;
directions along the data manifold are ``~0``. The plots draw reference lines at ``-1`` (point
mass), ``-0.5`` (the threshold above which a direction counts as "flat") and ``0``.
"""

from __future__ import annotations

import io
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from memgeo.errors import MemgeoError
from memgeo.io import atomic_write_bytes

__all__ = [
    "FLAT_THRESHOLD",
    "PNG_SIGNATURE",
    "POINT_MASS_VALUE",
    "MMH_COLORS",
    "close_figure",
    "copy_pairs_grid",
    "field_plot_2d",
    "figure_to_png_bytes",
    "image_grid",
    "mmh_scatter",
    "roc_plot",
    "save_figure",
    "scatter_plot",
    "score_histogram",
    "spectra_plot",
    "trajectory_spectrum_plot",
]

#: Scaled eigenvalue ``lambda * sigma**2`` of a point mass (fully memorized sample).
POINT_MASS_VALUE = -1.0
#: Scaled eigenvalues above this count as "flat" (a direction the sample can move along).
FLAT_THRESHOLD = -0.5

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Reference lines shared by the spectrum plots: (value, label, line style).
_REFERENCE_LINES = (
    (POINT_MASS_VALUE, "point mass (-1)", ":"),
    (FLAT_THRESHOLD, "flat threshold (-0.5)", "--"),
    (0.0, "0", "-"),
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def new_figure(width: float, height: float) -> Figure:
    """A figure bound to an Agg canvas, without pyplot (so no global registry or backend change)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def group_colors(names: Sequence[str]) -> dict[str, Any]:
    """One distinct color per group, in the given order (tab10, cycling if there are more groups)."""
    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def as_array(x: Any, name: str, ndims: Sequence[int]) -> np.ndarray:
    """``np.asarray(x, float)`` with a one-line :class:`MemgeoError` if the rank is wrong."""
    if hasattr(x, "detach"):  # a torch tensor slipped through: convert without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise MemgeoError(f"{name} is not numeric ({exc})", "pass a numpy array of numbers") from None
    if arr.ndim not in tuple(ndims):
        want = " or ".join(f"{d}-D" for d in ndims)
        raise MemgeoError(f"{name} has shape {arr.shape} but must be {want}", "reshape it")
    return arr


def check_groups(groups: Mapping[str, Any], name: str) -> None:
    if not isinstance(groups, Mapping) or len(groups) == 0:
        raise MemgeoError(f"{name} is empty or not a dict", "pass a dict mapping a group name to an array")


def finish_axes(ax: Any, xlabel: str, ylabel: str, title: str | None = None, *,
                legend: Mapping[str, Any] | None = None, grid_alpha: float = 0.25) -> None:
    """The lines every plot ends with: axis labels, a light grid, optionally a legend and a title.

    ``legend`` holds ``ax.legend`` keyword arguments; ``None`` draws no legend.
    """
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=grid_alpha)
    if legend is not None:
        ax.legend(**legend)
    if title:
        ax.set_title(title)


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


def image_grid(
    images: np.ndarray,
    titles: Sequence[str] | None = None,
    highlight: np.ndarray | Sequence[bool] | None = None,
    ncols: int = 8,
    title: str | None = None,
) -> Figure:
    """Show a batch of images on a grid, optionally outlining some in red.

    Parameters
    ----------
    images : np.ndarray, shape (B, C, H, W) or (B, H, W)
        Pixel values in ``[-1, 1]`` (the diffusion model's range); values outside are clipped.
        ``C`` is 1 (grayscale) or 3 (RGB).
    titles : sequence of str, length B, optional
        A small title above each image.
    highlight : array of bool, shape (B,), optional
        Images to outline with a thick red border, e.g. generated samples that copy a training image.
    ncols : int
        Images per row (fewer if ``B < ncols``).
    title : str, optional
        Title of the whole figure.

    Returns
    -------
    Figure
        One axes per image (exactly ``B`` axes).
    """
    imgs = as_array(images, "images", (3, 4))
    if imgs.shape[0] == 0:
        raise MemgeoError("images is an empty batch", "pass at least one image")
    if imgs.ndim == 4:
        if imgs.shape[1] not in (1, 3):
            raise MemgeoError(
                f"images has shape {imgs.shape}: channel axis 1 must be 1 or 3",
                "pass (B, C, H, W) with C=1 (grayscale) or C=3 (RGB)",
            )
        imgs = np.transpose(imgs, (0, 2, 3, 1))  # matplotlib wants channels last
        if imgs.shape[-1] == 1:
            imgs = imgs[..., 0]
    b = imgs.shape[0]
    if titles is not None and len(titles) != b:
        raise MemgeoError(f"titles has {len(titles)} entries for {b} images", "pass one title per image")
    hl = np.zeros(b, dtype=bool) if highlight is None else np.asarray(highlight, dtype=bool).reshape(-1)
    if hl.shape[0] != b:
        raise MemgeoError(f"highlight has {hl.shape[0]} entries for {b} images", "pass one bool per image")
    if ncols < 1:
        raise MemgeoError(f"ncols must be >= 1, got {ncols}", "pass a positive number of columns")

    # [-1, 1] -> [0, 1]; NaN (e.g. a diverged sample) shows as black rather than breaking imshow.
    pix = np.clip(np.nan_to_num((imgs + 1.0) / 2.0, nan=0.0), 0.0, 1.0)
    ncols = min(ncols, b)
    nrows = -(-b // ncols)
    cell = 1.6
    extra = 0.3 if titles is not None else 0.0
    title_lines = 0 if not title else len(textwrap.wrap(str(title), width=max(16, int(ncols * cell * 7))))
    fig = new_figure(ncols * cell, nrows * (cell + extra) + 0.25 * title_lines + (0.15 if title else 0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= b:
            fig.delaxes(ax)  # keep exactly one axes per image
            continue
        if pix.ndim == 3:
            ax.imshow(pix[i], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(pix[i], interpolation="nearest")
        # Keep the spines (unlike axis("off")) so they can serve as the highlight border.
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            if hl[i]:
                spine.set_color("red")
                spine.set_linewidth(3.0)
            else:
                spine.set_visible(False)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7, color="red" if hl[i] else "black")
    if title:
        # A narrow grid (few columns) cannot hold a long title on one line: wrap it to the figure's width.
        fig.suptitle(textwrap.fill(str(title), width=max(16, int(ncols * cell * 7))), fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# spectra
# --------------------------------------------------------------------------------------------


def _draw_reference_lines(ax: Any) -> None:
    for value, label, style in _REFERENCE_LINES:
        ax.axhline(value, color="0.35", linestyle=style, linewidth=1.0, label=label, zorder=1)


def spectra_plot(
    eigs_by_group: Mapping[str, np.ndarray],
    title: str | None = None,
    descending: bool = True,
) -> Figure:
    """Sorted sharpness spectra, one thin line per sample, colored by group.

    Parameters
    ----------
    eigs_by_group : dict of str to np.ndarray, each shape (B, D) or (D,)
        Scaled eigenvalues ``lambda * sigma**2`` for ``B`` samples of dimension ``D`` per group
        (e.g. ``{"memorized": ..., "generalized": ...}``). Groups may differ in ``B`` and ``D``.
    title : str, optional
    descending : bool
        Sort each spectrum from largest to smallest, so the index where a line crosses ``-0.5``
        is the number of flat directions.

    Returns
    -------
    Figure
        One axes with ``sum(B)`` sample lines followed by 3 reference lines (at -1, -0.5, 0).
    """
    check_groups(eigs_by_group, "eigs_by_group")
    fig = new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    colors = group_colors(list(eigs_by_group))
    for name, eigs in eigs_by_group.items():
        arr = as_array(eigs, f"eigs_by_group[{name!r}]", (1, 2))
        arr = arr[None, :] if arr.ndim == 1 else arr
        spectra = np.sort(arr, axis=1)  # NaNs sort last; matplotlib leaves gaps for them
        if descending:
            spectra = spectra[:, ::-1]
        # Many samples overlap: fade lines as the group grows so the density stays readable.
        alpha = float(np.clip(3.0 / np.sqrt(max(len(spectra), 1)), 0.15, 0.9))
        index = np.arange(1, spectra.shape[1] + 1)
        for k, row in enumerate(spectra):
            ax.plot(index, row, color=colors[name], linewidth=0.8, alpha=alpha,
                    label=f"{name} (n={len(spectra)})" if k == 0 else "_nolegend_")
    _draw_reference_lines(ax)
    finish_axes(ax, "eigenvalue index (sorted, largest first)" if descending else "eigenvalue index (sorted)",
                r"$\lambda\,\sigma^2$", title, legend={"fontsize": 8, "loc": "best"})
    return fig


def trajectory_spectrum_plot(
    ts: np.ndarray,
    eigs_by_sample: Mapping[str, np.ndarray],
    title: str | None = None,
    xlabel: str = "t",
    ncols: int = 3,
) -> Figure:
    """Evolution of the sharpness spectrum along sampling trajectories, one panel per sample.

    Each panel draws every eigenvalue ``lambda * sigma**2`` against ``t`` (the ``j``-th line is the
    ``j``-th largest eigenvalue at each step) with reference lines at -1, -0.5 and 0, and on a
    right-hand twin axis the number of flat eigenvalues (``> -0.5``). The x axis runs from the
    largest ``t`` (pure noise) on the left to the smallest on the right, the order of sampling.

    Parameters
    ----------
    ts : np.ndarray, shape (T,)
        Time or noise level of each step.
    eigs_by_sample : dict of str to np.ndarray, each shape (T, D)
        Scaled eigenvalues at each step for each named sample.
    title : str, optional
    xlabel : str
        Label of the x axis, e.g. ``"t"`` or ``"sigma"``.
    ncols : int
        Panels per row.

    Returns
    -------
    Figure
        For each sample a main axes (``D`` eigenvalue lines + 3 reference lines) and a twin axes
        (1 flat-count line): ``2 * len(eigs_by_sample)`` axes in all.
    """
    check_groups(eigs_by_sample, "eigs_by_sample")
    t = as_array(ts, "ts", (1,))
    n = len(eigs_by_sample)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = new_figure(4.6 * ncols, 3.4 * nrows + (0.4 if title else 0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    lo, hi = (float(np.nanmin(t)), float(np.nanmax(t))) if t.size else (0.0, 1.0)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            fig.delaxes(ax)
    for ax, (name, eigs) in zip(list(axes.flat)[:n], eigs_by_sample.items(), strict=True):
        arr = as_array(eigs, f"eigs_by_sample[{name!r}]", (2,))
        if arr.shape[0] != t.shape[0]:
            raise MemgeoError(
                f"eigs_by_sample[{name!r}] has {arr.shape[0]} time steps but ts has {t.shape[0]}",
                "pass eigenvalues of shape (T, D) with T = len(ts)",
            )
        d = arr.shape[1]
        spectra = np.sort(arr, axis=1)[:, ::-1]  # rank j = j-th largest, so lines do not cross
        cmap = matplotlib.colormaps["viridis"]
        for j in range(d):
            ax.plot(t, spectra[:, j], color=cmap(j / max(d - 1, 1)), linewidth=0.7, alpha=0.7)
        _draw_reference_lines(ax)
        if hi > lo:
            ax.set_xlim(hi, lo)  # noise (large t) on the left, data on the right: sampling order
        ax.set_xlabel(xlabel)
        ax.set_ylabel(r"$\lambda\,\sigma^2$")
        ax.set_title(str(name), fontsize=10)
        ax.grid(alpha=0.25)
        twin = ax.twinx()
        n_flat = np.sum(arr > FLAT_THRESHOLD, axis=1)  # NaN compares False: not counted as flat
        twin.plot(t, n_flat, color="black", linewidth=2.0, label="# flat (> -0.5)")
        twin.set_ylim(-0.5, d + 0.5)
        # The axis label names the black line; a legend box would cover the curves.
        twin.set_ylabel("# flat eigenvalues (> -0.5), black")
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------
# scores and detection
# --------------------------------------------------------------------------------------------


def score_histogram(
    scores_by_group: Mapping[str, np.ndarray],
    xlabel: str,
    title: str | None = None,
    bins: int = 30,
    density: bool = True,
) -> Figure:
    """Overlaid histograms of a score, one per group, on shared bins.

    Parameters
    ----------
    scores_by_group : dict of str to np.ndarray, each shape (N_g,) (flattened if not 1-D)
        Scores per group; non-finite values are dropped (their count goes into the legend).
    xlabel : str
    title : str, optional
    bins : int
        Number of bins spanning all groups' finite values.
    density : bool
        Normalize each histogram to unit area, so groups of very different sizes are comparable.

    Returns
    -------
    Figure
        One axes with one filled step patch per non-empty group.
    """
    check_groups(scores_by_group, "scores_by_group")
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    colors = group_colors(list(scores_by_group))
    data: dict[str, tuple[np.ndarray, int]] = {}
    for name, scores in scores_by_group.items():
        arr = as_array(scores, f"scores_by_group[{name!r}]", (0, 1, 2, 3, 4)).reshape(-1)
        finite = np.isfinite(arr)
        data[name] = (arr[finite], int((~finite).sum()))
    pooled = np.concatenate([v for v, _ in data.values()])
    if pooled.size == 0:
        ax.text(0.5, 0.5, "no finite scores", ha="center", va="center", transform=ax.transAxes)
    else:
        lo, hi = float(pooled.min()), float(pooled.max())
        if hi <= lo:  # all scores equal: give the single bin some width
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, max(int(bins), 1) + 1)  # shared edges make groups comparable
        for name, (vals, n_bad) in data.items():
            if vals.size == 0:
                continue
            label = f"{name} (n={vals.size}" + (f", {n_bad} non-finite dropped)" if n_bad else ")")
            ax.hist(vals, bins=edges, density=density, histtype="stepfilled", alpha=0.4,
                    color=colors[name], edgecolor=colors[name], linewidth=1.2, label=label)
        ax.legend(fontsize=8)
    finish_axes(ax, xlabel, "density" if density else "count", title)
    return fig


def roc_plot(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float | None]],
    title: str | None = None,
    log_fpr: bool = False,
    min_fpr: float | None = None,
) -> Figure:
    """ROC curves with the AUROC in the legend and the chance diagonal; optionally a log-FPR panel.

    Parameters
    ----------
    curves : dict of str to (fpr, tpr, auroc)
        ``fpr`` and ``tpr`` of shape (K,) each (any K, same for both), ``auroc`` a float
        (``None`` or NaN shows as ``n/a``).
    title : str, optional
    log_fpr : bool
        Add a second panel with the false positive rate on a log axis, which spreads out the
        corner where good detectors all sit (1 % FPR marked); the first panel stays linear.
    min_fpr : float, optional
        Left end of the log axis; default the smallest positive FPR of any curve (at least 1e-4),
        i.e. one negative in the largest negative set.

    Returns
    -------
    Figure
        One axes with ``len(curves)`` curve lines plus 1 diagonal line; with ``log_fpr`` a second
        axes with the same curves, the diagonal and a vertical line at FPR = 1 %.
    """
    check_groups(curves, "curves")
    fig = new_figure(9.6 if log_fpr else 4.8, 4.6)
    ax = fig.add_subplot(1, 2, 1) if log_fpr else fig.add_subplot()
    colors = group_colors(list(curves))
    parsed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, curve in curves.items():
        if len(curve) != 3:
            raise MemgeoError(f"curves[{name!r}] has {len(curve)} items", "pass a tuple (fpr, tpr, auroc)")
        fpr = as_array(curve[0], f"curves[{name!r}] fpr", (1,))
        tpr = as_array(curve[1], f"curves[{name!r}] tpr", (1,))
        if fpr.shape != tpr.shape:
            raise MemgeoError(f"curves[{name!r}]: fpr {fpr.shape} and tpr {tpr.shape} differ",
                              "pass fpr and tpr of equal length")
        auc = curve[2]
        auc_txt = "n/a" if auc is None or not np.isfinite(float(auc)) else f"{float(auc):.3f}"
        ax.plot(fpr, tpr, color=colors[name], linewidth=1.8, label=f"{name} (AUROC={auc_txt})")
        parsed[name] = (fpr, tpr)
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1.0, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    finish_axes(ax, "false positive rate (FPR)", "true positive rate (TPR)", title if not log_fpr else None,
                legend={"fontsize": 8, "loc": "lower right"})
    if log_fpr:
        ax2 = fig.add_subplot(1, 2, 2)
        positive = [f[f > 0].min() for f, _ in parsed.values() if np.any(f > 0)]
        lo = float(min_fpr) if min_fpr is not None else max(min(positive, default=1e-3), 1e-4)
        lo = min(lo, 5e-3)
        grid = np.geomspace(lo, 1.0, 200)
        for name, (fpr, tpr) in parsed.items():
            order = np.argsort(fpr, kind="stable")
            # a step curve: at each FPR the best TPR reached so far (what a threshold there achieves)
            best = np.maximum.accumulate(tpr[order])
            idx = np.searchsorted(fpr[order], grid, side="right") - 1
            ax2.plot(grid, np.where(idx >= 0, best[np.clip(idx, 0, None)], 0.0), color=colors[name], linewidth=1.8,
                     drawstyle="steps-post", label=name)
        ax2.plot(grid, grid, color="0.5", linestyle="--", linewidth=1.0, label="chance")
        ax2.axvline(0.01, color="0.35", linestyle=":", linewidth=1.0, label="FPR = 1 %")
        ax2.set_xscale("log")
        ax2.set_xlim(lo, 1.0)
        ax2.set_ylim(0, 1.01)
        finish_axes(ax2, "false positive rate (log scale)", "true positive rate", None,
                    legend={"fontsize": 8, "loc": "lower right"})
        ax2.set_title("zoom: low-FPR corner", fontsize=10)
        ax.set_title("ROC", fontsize=10)
        if title:
            fig.suptitle(title)
    return fig


def scatter_plot(
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence[Any] | np.ndarray | None = None,
    xlabel: str = "x",
    ylabel: str = "y",
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
) -> Figure:
    """Generic scatter plot, one color per group.

    Parameters
    ----------
    x, y : np.ndarray, shape (N,)
    groups : array-like, shape (N,), optional
        Group label of each point; groups are drawn in order of first appearance. ``None``
        draws all points as one group.
    xlabel, ylabel : str
    title : str, optional
    logx, logy : bool
        Logarithmic axes.

    Returns
    -------
    Figure
        One axes with one scatter collection per group.
    """
    xs = as_array(x, "x", (1,))
    ys = as_array(y, "y", (1,))
    if xs.shape != ys.shape:
        raise MemgeoError(f"x has shape {xs.shape} but y has {ys.shape}", "pass x and y of equal length")
    labels = np.asarray([""] * xs.shape[0] if groups is None else list(groups), dtype=object)
    if labels.shape[0] != xs.shape[0]:
        raise MemgeoError(f"groups has {labels.shape[0]} labels for {xs.shape[0]} points",
                          "pass one group label per point")
    order = list(dict.fromkeys(labels.tolist()))  # first-appearance order, stable across calls
    colors = group_colors([str(g) for g in order])
    fig = new_figure(5.6, 4.4)
    ax = fig.add_subplot()
    for g in order:
        mask = labels == g
        ax.scatter(xs[mask], ys[mask], s=14, alpha=0.75, color=colors[str(g)],
                   label=f"{g} (n={int(mask.sum())})" if groups is not None else None)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    finish_axes(ax, xlabel, ylabel, title, legend={"fontsize": 8} if groups is not None else None)
    return fig


#: Colours of the MMH labels in every report (none, OD-Mem, DD-Mem).
MMH_COLORS = {"none": "tab:blue", "OD-Mem": "tab:orange", "DD-Mem": "tab:red"}


def mmh_scatter(
    lid_data: np.ndarray,
    lid_model: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    model_low: float,
    data_low: float,
    is_copy: np.ndarray | None = None,
    title: str | None = None,
    t0: float | None = None,
) -> Figure:
    """LID_model against LID_data, coloured by MMH label, with both thresholds drawn.

    Parameters
    ----------
    lid_data, lid_model : np.ndarray, shape (N,)
    labels : array of str, shape (N,)
        ``"none"``, ``"OD-Mem"`` or ``"DD-Mem"`` per point (other labels get grey).
    model_low, data_low : float
        The MMH thresholds: memorized below ``model_low`` (horizontal line), DD-Mem also left of
        ``data_low`` (vertical line).
    is_copy : np.ndarray of bool, shape (N,), optional
        Ground-truth copies, ringed in black.
    title : str, optional
    t0 : float, optional
        FLIPD's time, named in the y label.

    Returns
    -------
    Figure
        One axes: one scatter per label present (legend with counts), a ring scatter for copies
        when given, a horizontal and a vertical threshold line; negative LID_model values (FLIPD
        can be negative where the score is inaccurate) are shown as they are, below a line at 0.
    """
    xd = as_array(lid_data, "lid_data", (1,))
    ym = as_array(lid_model, "lid_model", (1,))
    lab = np.asarray(labels, dtype=object).reshape(-1)
    if not (xd.shape == ym.shape == lab.shape):
        raise MemgeoError(f"lid_data {xd.shape}, lid_model {ym.shape} and labels {lab.shape} differ",
                          "pass one value and one label per point")
    fig = new_figure(6.4, 4.6)
    ax = fig.add_subplot()
    order = [k for k in MMH_COLORS if np.any(lab == k)] + [k for k in dict.fromkeys(lab.tolist()) if k not in MMH_COLORS]
    for k in order:
        m = lab == k
        ax.scatter(xd[m], ym[m], s=16, alpha=0.8, color=MMH_COLORS.get(k, "0.5"), label=f"{k} (n={int(m.sum())})",
                   zorder=3)
    if is_copy is not None:
        c = np.asarray(is_copy, dtype=bool).reshape(-1)
        if c.shape != xd.shape:
            raise MemgeoError(f"is_copy has {c.size} entries for {xd.size} points", "pass one bool per point")
        if c.any():
            ax.scatter(xd[c], ym[c], s=46, facecolors="none", edgecolors="black", linewidths=0.7,
                       label=f"copies (n={int(c.sum())})", zorder=4)
    ax.axhline(model_low, color="tab:red", linestyle="--", linewidth=1.1,
               label=f"LID$_{{model}}$ threshold {model_low:.3g}")
    ax.axvline(data_low, color="tab:purple", linestyle=":", linewidth=1.3,
               label=f"LID$_{{data}}$ threshold {data_low:.3g}")
    if np.nanmin(ym) < 0 if ym.size else False:
        ax.axhline(0.0, color="0.3", linewidth=0.8, zorder=1)
    ylabel = "LID$_{model}$ (FLIPD" + (f", $t_0$={t0:g})" if t0 is not None else ")")
    finish_axes(ax, "LID$_{data}$ (local PCA on the training set), dimensions", ylabel + ", dimensions", title,
                legend={"fontsize": 7, "loc": "best"})
    return fig


def copy_pairs_grid(
    generated: np.ndarray,
    matches: np.ndarray,
    titles: Sequence[str] | None = None,
    match_titles: Sequence[str] | None = None,
    ncols: int = 6,
    title: str | None = None,
) -> Figure:
    """Each generated image beside its nearest training image (the one it may copy).

    Parameters
    ----------
    generated, matches : np.ndarray, shape (B, C, H, W) or (B, H, W)
        Generations and their nearest training images, in [-1, 1].
    titles, match_titles : sequence of str, length B, optional
        Captions above each generation and each match.
    ncols : int
        Pairs per row (each pair takes two image columns).
    title : str, optional

    Returns
    -------
    Figure
        ``2 B`` image axes ordered generation, match, generation, match, ...
    """
    g = as_array(generated, "generated", (3, 4))
    m = as_array(matches, "matches", (3, 4))
    if g.shape != m.shape:
        raise MemgeoError(f"generated {g.shape} and matches {m.shape} differ", "pass one training match per image")
    b = g.shape[0]
    both = np.stack([g, m], axis=1).reshape((2 * b,) + g.shape[1:])
    t = None
    if titles is not None or match_titles is not None:
        ta = list(titles) if titles is not None else ["generated"] * b
        tb = list(match_titles) if match_titles is not None else ["training match"] * b
        if len(ta) != b or len(tb) != b:
            raise MemgeoError("titles need one entry per pair", "pass B titles")
        t = [x for pair in zip(ta, tb) for x in pair]
    return image_grid(both, titles=t, ncols=2 * max(1, min(ncols, b)), title=title)


# --------------------------------------------------------------------------------------------
# 2-D toy fields
# --------------------------------------------------------------------------------------------


def field_plot_2d(
    grid_x: np.ndarray,
    grid_y: np.ndarray,
    log_density: np.ndarray | None,
    score_u: np.ndarray,
    score_v: np.ndarray,
    points: np.ndarray,
    duplicate_point: np.ndarray | None = None,
    samples: np.ndarray | None = None,
    title: str | None = None,
    max_arrows: int = 25,
    points_label: str | None = None,
) -> Figure:
    """Learned density and score field of a 2-D model, with the training data and generated samples on top.

    Grids follow ``np.meshgrid(grid_x, grid_y)`` ("xy" indexing): entry ``[i, j]`` is at
    ``(grid_x[j], grid_y[i])``.

    Parameters
    ----------
    grid_x : np.ndarray, shape (Gx,)
    grid_y : np.ndarray, shape (Gy,)
    log_density : np.ndarray, shape (Gy, Gx), optional
        Log density on the grid, drawn as filled contours with a colorbar; ``None`` skips it.
    score_u, score_v : np.ndarray, shape (Gy, Gx)
        x and y components of the score; drawn as unit-length arrows (direction only, since
        magnitudes span orders of magnitude near the data), thinned to at most
        ``max_arrows`` per axis.
    points : np.ndarray, shape (N, 2)
        Training points.
    duplicate_point : np.ndarray, shape (2,), optional
        The duplicated (memorization-prone) training point, marked with a big star.
    samples : np.ndarray, shape (M, 2), optional
        Generated samples.
    title : str, optional
    max_arrows : int
        Arrows per axis at most.
    points_label : str, optional
        Legend text of the training points (default ``"training points (n=N)"``); pass the count the
        run logs when ``points`` holds only the distinct rows of a training set with duplicates.

    Returns
    -------
    Figure
        A main axes (contour set if ``log_density`` is given, one quiver, one scatter each for
        points / duplicate / samples when given) plus a colorbar axes when ``log_density`` is given.
    """
    gx = as_array(grid_x, "grid_x", (1,))
    gy = as_array(grid_y, "grid_y", (1,))
    shape = (gy.shape[0], gx.shape[0])
    u = as_array(score_u, "score_u", (2,))
    v = as_array(score_v, "score_v", (2,))
    for arr, name in ((u, "score_u"), (v, "score_v")):
        if arr.shape != shape:
            raise MemgeoError(f"{name} has shape {arr.shape} but the grid is {shape} (len(grid_y), len(grid_x))",
                              "evaluate the score on np.meshgrid(grid_x, grid_y)")
    pts = as_array(points, "points", (2,))
    if pts.shape[1] != 2:
        raise MemgeoError(f"points has shape {pts.shape}", "pass 2-D points of shape (N, 2)")

    fig = new_figure(6.2, 5.4)
    ax = fig.add_subplot()
    xx, yy = np.meshgrid(gx, gy)
    if log_density is not None:
        lp = as_array(log_density, "log_density", (2,))
        if lp.shape != shape:
            raise MemgeoError(f"log_density has shape {lp.shape} but the grid is {shape}",
                              "evaluate it on np.meshgrid(grid_x, grid_y)")
        finite = lp[np.isfinite(lp)]
        if finite.size:
            # Far from narrow modes log p plunges to huge negative values; flooring at a low
            # percentile keeps the color range on the structure near the data.
            floor = float(np.percentile(finite, 2.0))
            top = float(finite.max())
            lp_plot = np.clip(np.nan_to_num(lp, nan=floor, neginf=floor, posinf=top), floor, top)
            levels = np.linspace(floor, top if top > floor else floor + 1.0, 25)
            cs = ax.contourf(xx, yy, lp_plot, levels=levels, cmap="viridis")
            fig.colorbar(cs, ax=ax, label="log density")

    norm = np.hypot(u, v)
    with np.errstate(invalid="ignore", divide="ignore"):
        uu = np.where(norm > 0, u / norm, 0.0)
        vv = np.where(norm > 0, v / norm, 0.0)
    sy = max(1, -(-shape[0] // max_arrows))
    sx = max(1, -(-shape[1] // max_arrows))
    ax.quiver(xx[::sy, ::sx], yy[::sy, ::sx], np.nan_to_num(uu[::sy, ::sx]), np.nan_to_num(vv[::sy, ::sx]),
              color="white" if log_density is not None else "0.3", alpha=0.8, pivot="mid",
              angles="xy", scale_units="width", scale=max_arrows * 1.4, width=0.003)
    # Training dots small and faded, generated samples drawn above them (zorder) so neither hides the other.
    ax.scatter(pts[:, 0], pts[:, 1], s=9, c="tab:red", edgecolors="none", alpha=0.55,
               label=points_label or f"training points (n={len(pts)})", zorder=3)
    if duplicate_point is not None:
        dup = as_array(duplicate_point, "duplicate_point", (1,))
        if dup.shape != (2,):
            raise MemgeoError(f"duplicate_point has shape {dup.shape}", "pass one 2-D point of shape (2,)")
        ax.scatter([dup[0]], [dup[1]], s=380, marker="*", c="gold", edgecolors="black", linewidths=1.2,
                   label="duplicated point", zorder=5, alpha=0.8)
    if samples is not None:
        smp = as_array(samples, "samples", (2,))
        if smp.shape[1] != 2:
            raise MemgeoError(f"samples has shape {smp.shape}", "pass 2-D samples of shape (M, 2)")
        ax.scatter(smp[:, 0], smp[:, 1], s=14, marker="o", c="white", edgecolors="black", linewidths=0.6,
                   label=f"generated samples (n={len(smp)})", zorder=6)
    ax.set_xlim(float(gx.min()), float(gx.max()))
    ax.set_ylim(float(gy.min()), float(gy.max()))
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    # Below the axes, so the legend never hides data or the star.
    # One entry per line: long labels (counts) side by side would squeeze the axes.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1, frameon=False,
              markerscale=0.7)
    if title:
        ax.set_title(title)
    return fig


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def _figure_bytes(fig: Figure, fmt: str, dpi: int) -> bytes:
    buf = io.BytesIO()
    # savefig picks the Agg (or pdf/svg) printer for the format, whatever canvas the figure has.
    fig.savefig(buf, format=fmt, dpi=dpi, facecolor="white")
    return buf.getvalue()


def close_figure(fig: Figure) -> None:
    """Close ``fig`` the way pyplot would: unregister it from pyplot if pyplot manages it.

    Figures made by this module are not registered anywhere and are freed by garbage collection;
    this matters for figures the caller made with pyplot. Pyplot is only touched when something
    else already imported it, so this module never imports pyplot (or selects a backend) itself.
    The figure's contents are kept, as with ``plt.close``.
    """
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close(fig)  # no-op for figures that pyplot does not manage


def figure_to_png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """Render ``fig`` to PNG bytes (starting with the PNG signature); the figure stays open."""
    return _figure_bytes(fig, "png", dpi)


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically and close it.

    The format comes from the suffix (``.png``, ``.pdf``, ``.svg``; PNG when there is none).
    The figure is closed even if rendering fails, so loops that save many figures do not leak.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in ("png", "pdf", "svg"):
        close_figure(fig)
        raise MemgeoError(f"cannot save a figure as {path.name!r}", "use a .png, .pdf or .svg file name")
    try:
        data = _figure_bytes(fig, fmt, dpi)
    finally:
        close_figure(fig)
    return atomic_write_bytes(path, data)
