"""Reporting layer: figures and a self-contained HTML report from plain numpy arrays and dicts.

This layer sits above ``memorization`` in the import order but deliberately imports none of
``memgeo.data``, ``memgeo.models``, ``memgeo.geometry`` or ``memgeo.memorization``: callers pass
arrays and dicts, so reports can be rebuilt from saved results without loading any model.
Figures are rendered with matplotlib's Agg canvas without importing pyplot or switching the
global backend.
"""

from memgeo.report.glossary import GLOSSARY, glossary, metric_label
from memgeo.report.html import Report, format_value
from memgeo.report.plots import (
    FLAT_THRESHOLD,
    MMH_COLORS,
    PNG_SIGNATURE,
    POINT_MASS_VALUE,
    close_figure,
    copy_pairs_grid,
    field_plot_2d,
    figure_to_png_bytes,
    image_grid,
    mmh_scatter,
    roc_plot,
    save_figure,
    scatter_plot,
    score_histogram,
    spectra_plot,
    trajectory_spectrum_plot,
)

__all__ = [
    "FLAT_THRESHOLD",
    "GLOSSARY",
    "MMH_COLORS",
    "PNG_SIGNATURE",
    "POINT_MASS_VALUE",
    "Report",
    "close_figure",
    "copy_pairs_grid",
    "field_plot_2d",
    "figure_to_png_bytes",
    "format_value",
    "glossary",
    "image_grid",
    "metric_label",
    "mmh_scatter",
    "roc_plot",
    "save_figure",
    "scatter_plot",
    "score_histogram",
    "spectra_plot",
    "trajectory_spectrum_plot",
]
