"""Tests for memgeo.report: figure contents, PNG output, and the self-contained HTML report."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.colors
import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.quiver import Quiver

from memgeo.errors import MemgeoError
from memgeo.report import (
    PNG_SIGNATURE,
    Report,
    field_plot_2d,
    figure_to_png_bytes,
    format_value,
    image_grid,
    roc_plot,
    save_figure,
    scatter_plot,
    score_histogram,
    spectra_plot,
    trajectory_spectrum_plot,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _field_inputs(rng: np.random.Generator, g: int = 12):
    grid = np.linspace(-2, 2, g)
    xx, yy = np.meshgrid(grid, grid)
    pts = rng.normal(size=(5, 2))
    logp = -(xx**2 + yy**2)
    return grid, grid, logp, -xx, -yy, pts


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (5, 3, 8, 8), (5, 8, 8)])
def test_image_grid_one_axes_per_image_and_red_highlight(rng, shape):
    imgs = rng.uniform(-1, 1, size=shape)
    highlight = np.array([False, True, False, False, True])
    fig = image_grid(imgs, titles=[f"s{i}" for i in range(5)], highlight=highlight, ncols=3, title="grid")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5  # unused grid cells are removed
    red = [ax.spines["top"].get_visible() and ax.spines["top"].get_edgecolor()[:3] == (1.0, 0.0, 0.0)
           for ax in fig.axes]
    assert red == highlight.tolist()
    # [-1, 1] is mapped to [0, 1] for display
    data = fig.axes[0].images[0].get_array()
    assert data.min() >= 0.0 and data.max() <= 1.0


def test_image_grid_rejects_bad_channels(rng):
    with pytest.raises(MemgeoError):
        image_grid(rng.uniform(-1, 1, size=(2, 2, 8, 8)))
    with pytest.raises(MemgeoError):
        image_grid(rng.uniform(-1, 1, size=(2, 8, 8)), highlight=[True])


def test_spectra_plot_one_line_per_sample_plus_reference_lines(rng):
    eigs = {"memorized": -1 + 0.01 * rng.normal(size=(4, 10)), "generalized": rng.uniform(-1, 0, (7, 10))}
    fig = spectra_plot(eigs, title="spectra")
    (ax,) = fig.axes
    assert len(ax.lines) == 4 + 7 + 3
    ref = sorted(line.get_ydata()[0] for line in ax.lines[-3:])
    assert ref == [-1.0, -0.5, 0.0]
    # sorted largest first
    y = np.asarray(ax.lines[4].get_ydata())
    assert np.all(np.diff(y) <= 0)
    # one legend entry per group plus the reference lines
    assert len(ax.get_legend().get_texts()) == 2 + 3


def test_score_histogram_one_patch_per_group_and_drops_nonfinite(rng):
    fig = score_histogram({"a": rng.normal(size=50), "b": np.r_[rng.normal(size=20), np.nan]}, "score", "h")
    (ax,) = fig.axes
    assert len(ax.patches) == 2
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "1 non-finite dropped" in labels[1]


def test_roc_plot_lines_and_auroc_legend():
    f = np.linspace(0, 1, 11)
    fig = roc_plot({"sharp": (f, np.sqrt(f), 0.8766), "other": (f, f, None)}, "roc")
    (ax,) = fig.axes
    assert len(ax.lines) == 3  # 2 curves + diagonal
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "AUROC=0.877" in labels[0] and "n/a" in labels[1]


def test_trajectory_spectrum_plot_panels_and_flat_count(rng):
    ts = np.linspace(1, 0, 9)
    d = 6
    eigs = {"a": rng.uniform(-1, 0, (9, d)), "b": rng.uniform(-1, 0, (9, d)), "c": rng.uniform(-1, 0, (9, d))}
    fig = trajectory_spectrum_plot(ts, eigs, title="traj", ncols=2)
    assert len(fig.axes) == 2 * 3  # main + twin per sample
    main, twin = fig.axes[0], fig.axes[-3]  # subplots come first, twins after
    assert len(main.lines) == d + 3
    assert main.get_xlim()[0] > main.get_xlim()[1]  # t decreasing left to right
    assert len(twin.lines) == 1
    np.testing.assert_array_equal(twin.lines[0].get_ydata(), (eigs["a"] > -0.5).sum(axis=1))
    with pytest.raises(MemgeoError):
        trajectory_spectrum_plot(ts, {"bad": np.zeros((5, d))})


def test_field_plot_2d_artists(rng):
    gx, gy, logp, u, v, pts = _field_inputs(rng)
    fig = field_plot_2d(gx, gy, logp, u, v, pts, duplicate_point=pts[0], samples=rng.normal(size=(7, 2)), title="f")
    assert len(fig.axes) == 2  # main + colorbar
    ax = fig.axes[0]
    assert sum(isinstance(c, Quiver) for c in ax.collections) == 1
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in scatters] == [5, 1, 7]  # points, duplicate star, samples
    # without density and extras: no colorbar, only the training points
    fig2 = field_plot_2d(gx, gy, None, u, v, pts, None, None)
    assert len(fig2.axes) == 1
    assert sum(isinstance(c, PathCollection) for c in fig2.axes[0].collections) == 1


def test_field_plot_2d_arrows_are_unit_length(rng):
    gx, gy, logp, u, v, pts = _field_inputs(rng)
    fig = field_plot_2d(gx, gy, logp, 100 * u, 100 * v, pts)
    q = next(c for c in fig.axes[0].collections if isinstance(c, Quiver))
    norms = np.hypot(q.U, q.V)
    assert np.allclose(norms[norms > 0], 1.0)


def test_scatter_plot_groups(rng):
    fig = scatter_plot(rng.normal(size=9), rng.normal(size=9), ["a", "b", "a"] * 3, "x", "y", "s")
    (ax,) = fig.axes
    assert len(ax.collections) == 2
    assert scatter_plot(np.arange(3.0), np.arange(3.0), None).axes[0].get_legend() is None


def test_png_bytes_and_atomic_save(tmp_path, rng):
    png = figure_to_png_bytes(spectra_plot({"g": rng.normal(size=(2, 4))}, "t"))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    out = save_figure(scatter_plot(np.arange(3.0), np.arange(3.0), None), tmp_path / "sub" / "fig.png")
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["fig.png"]  # no temp file left
    with pytest.raises(MemgeoError):
        save_figure(scatter_plot(np.arange(3.0), np.arange(3.0), None), tmp_path / "fig.bmp")
    assert not list(tmp_path.glob("*.tmp"))


def test_no_global_matplotlib_state_and_no_lower_layer_imports():
    # A fresh interpreter: importing and using memgeo.report must not import pyplot, switch the
    # backend, or pull in the model/geometry layers.
    code = (
        # dict.__getitem__ reads the raw setting: rcParams['backend'] would itself resolve the
        # backend and import pyplot.
        "import sys, matplotlib; before = dict.__getitem__(matplotlib.rcParams, 'backend');"
        "import numpy as np, memgeo.report as r;"
        "r.figure_to_png_bytes(r.spectra_plot({'a': np.zeros((2, 3))}));"
        "assert dict.__getitem__(matplotlib.rcParams, 'backend') == before;"
        "bad = [m for m in ('matplotlib.pyplot', 'memgeo.models', 'memgeo.geometry', 'memgeo.data',"
        " 'memgeo.memorization') if m in sys.modules];"
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------
# HTML report
# ---------------------------------------------------------------------------------------------


def _full_report(rng: np.random.Generator) -> Report:
    rep = Report("memgeo <run>", subtitle="demo")
    rep.add_text("Intro with <script>alert('x')</script> and **bold** and `a<b`\n\n- one\n- two", heading="Intro")
    rep.add_metrics({"auroc": 0.912345, "n": 1000, "tiny": 1.5e-7, "nested": {"k": np.float32(2.5)}}, "Metrics")
    rep.add_table([{"i": i, "score": float(i) / 3, "name": f"<n{i}>"} for i in range(60)], "Samples", max_rows=10)
    rep.add_figure(spectra_plot({"g": rng.normal(size=(2, 4))}, "spec"), caption="spectra", heading="Spectra")
    rep.add_figure(figure_to_png_bytes(scatter_plot(np.arange(3.0), np.arange(3.0), None)), caption="png bytes")
    rep.add_images(rng.uniform(-1, 1, (3, 1, 6, 6)), highlight=[True, False, False], heading="Copies")
    rep.add_json({"seed": 0, "arr": np.arange(3), "note": "</pre><script>"}, "Config")
    return rep


def test_report_html_is_self_contained_and_escaped(tmp_path, rng):
    rep = _full_report(rng)
    out = rep.write(tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # atomic: no temp file left
    assert text.startswith("<!DOCTYPE html>")

    # figures embedded as base64 PNG data URIs that decode to PNGs
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == 3
    assert all(base64.b64decode(u).startswith(PNG_SIGNATURE) for u in uris)

    # user text is escaped; the only <script> is none at all
    assert "<script" not in text.lower()
    assert "&lt;script&gt;" in text
    assert "<strong>bold</strong>" in text and "<code>a&lt;b</code>" in text
    assert "&lt;n3&gt;" in text

    # no external resources
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, flags=re.I)
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text.lower()

    # sections in insertion order with a table of contents
    assert rep.headings == ["Intro", "Metrics", "Samples", "Spectra", "Copies", "Config"]
    toc = re.findall(r'<a href="#([^"]+)">', text)
    assert len(toc) == 6
    positions = [text.index(f'id="{a}"') for a in toc]
    assert positions == sorted(positions)

    # metrics formatting, table truncation, JSON in <details>
    assert ">0.9123<" in text and ">1.500e-07<" in text and "nested.k" in text
    assert "Showing 10 of 60 rows." in text
    assert "<details>" in text and "&quot;seed&quot;: 0" in text


def test_report_rejects_non_png_bytes():
    with pytest.raises(MemgeoError):
        Report("x").add_figure(b"GIF89a not a png")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.912345, "0.9123"), (3, "3"), (True, "true"), (float("nan"), "nan"), (1e-9, "1.000e-09"),
     (np.float64(2.0), "2"), (None, ""), ([1, 2.5], "[1, 2.5]"), (np.zeros((10, 10)), "array(10, 10) float64")],
)
def test_format_value(value, expected):
    assert format_value(value) == expected


def test_written_html_round_trip_path(tmp_path):
    p = Report("empty").write(tmp_path / "a" / "r.html")
    assert isinstance(p, Path) and p.exists()
    assert "<nav" not in p.read_text()  # no headings: no table of contents


# ---------------------------------------------------------------------------------------------
# verdict, glossary, trimmed tables, zoomed ROC, MMH scatter, copy pairs
# ---------------------------------------------------------------------------------------------


def test_verdict_renders_before_contents_and_sections():
    rep = Report("r")
    rep.add_text("body", heading="First section")
    rep.add_verdict("- **97 of 100** copy image #455")
    rep.add_glossary({"LID_{model}": "dimension of the model, σ^{2} scaled"})
    text = rep.render()
    v, toc, sec = text.index('class="verdict"'), text.index('<nav class="toc"'), text.index("First section</h2>")
    assert v < toc < sec
    assert "<strong>97 of 100</strong>" in text
    assert "LID<sub>model</sub>" in text and "σ<sup>2</sup>" in text
    assert rep.headings == ["First section", "Notation"]  # the verdict is not a numbered section


def test_add_table_drops_constant_columns_and_links_the_csv():
    rows = [{"score": "a", "auroc": 0.9, "n_pos": 5}, {"score": "b", "auroc": 0.7, "n_pos": 5}]
    text = Report("t").add_table(rows, drop_constant=True, csv="scores.csv").render()
    head = re.search(r"<thead>(.*?)</thead>", text).group(1)
    assert "AUROC" in head and "positives" not in head  # readable header; the constant column is gone
    assert "Same in every row: positives = 5." in text
    assert '<a class="csv" href="scores.csv">full data: scores.csv</a>' in text
    # one row: nothing is "constant"
    single = Report("t").add_table(rows[:1], drop_constant=True).render()
    assert "positives" in re.search(r"<thead>(.*?)</thead>", single).group(1)


def test_roc_plot_log_fpr_panel_steps_through_the_curve():
    fpr = np.array([0.0, 0.001, 0.01, 0.5, 1.0])
    tpr = np.array([0.0, 0.4, 0.9, 0.95, 1.0])
    fig = roc_plot({"s": (fpr, tpr, 0.97)}, log_fpr=True)
    assert len(fig.axes) == 2
    zoom = fig.axes[1]
    assert zoom.get_xscale() == "log" and zoom.get_xlim()[0] == pytest.approx(0.001)
    x, y = zoom.lines[0].get_data()
    # at FPR 0.005 the best threshold reaches TPR 0.4, at FPR 0.02 it reaches 0.9 (step ROC)
    assert y[np.searchsorted(x, 0.005)] == 0.4 and y[np.searchsorted(x, 0.02)] == 0.9


def test_mmh_scatter_colours_by_label_and_draws_both_thresholds():
    from memgeo.report import MMH_COLORS, mmh_scatter

    labels = np.array(["none", "DD-Mem", "DD-Mem", "OD-Mem"])
    fig = mmh_scatter(np.array([10.0, 1.0, 2.0, 9.0]), np.array([8.0, -0.5, 0.5, 1.0]), labels, 2.5, 3.0,
                      is_copy=np.array([False, True, True, False]))
    (ax,) = fig.axes
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[:3] == ["none (n=1)", "OD-Mem (n=1)", "DD-Mem (n=2)"] and "copies (n=2)" in texts
    colours = [tuple(c.get_facecolor()[0]) for c in ax.collections[:3]]
    assert colours == [matplotlib.colors.to_rgba(MMH_COLORS[k], 0.8) for k in ("none", "OD-Mem", "DD-Mem")]
    ys = sorted(line.get_ydata()[0] for line in ax.lines if line.get_ydata()[0] == line.get_ydata()[1])
    xs = [line.get_xdata()[0] for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1]]
    assert 2.5 in ys and 0.0 in ys and xs == [3.0]  # LID_model threshold, zero line (a value < 0), LID_data threshold


def test_copy_pairs_grid_puts_each_match_beside_its_generation(rng):
    from memgeo.report import copy_pairs_grid

    gen = rng.uniform(-1, 1, (3, 1, 4, 4))
    match = -gen
    fig = copy_pairs_grid(gen, match, ["g0", "g1", "g2"], ["m0", "m1", "m2"], ncols=2)
    assert [ax.get_title() for ax in fig.axes] == ["g0", "m0", "g1", "m1", "g2", "m2"]
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), (match[0, 0] + 1) / 2)
