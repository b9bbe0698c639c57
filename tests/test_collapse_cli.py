"""`memgeo collapse` end to end on tiny runs: files, summary columns, theory columns, errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.special import psi

from memgeo.errors import MemgeoError
from memgeo.workflows.collapse import CollapseConfig, run_collapse


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_cli_gaussian_replace_writes_summary_with_theory(run_cli, tmp_path):
    out = tmp_path / "g"
    code, stdout, err = run_cli("collapse", "--family", "gaussian", "--estimator", "mle", "--loop", "replace",
                                "--n", "100", "--schedule", "constant", "--generations", "20", "--runs", "300",
                                "--per-run-csv", "--json", "--out", out)
    assert code == 0, err
    for name in ("summary.csv", "runs.csv", "report.html", "config.json", "provenance.json", "metrics.json",
                 "fan_log_var_constant.png"):
        assert (out / name).is_file(), name
    rows = _rows(out / "summary.csv")
    assert len(rows) == 21 and [int(r["generation"]) for r in rows] == list(range(21))
    assert {"generation", "mean_log_var", "se_log_var", "theory_mean_log_var"} <= set(rows[0])
    assert float(rows[20]["theory_mean_log_var"]) == pytest.approx(20 * (psi(49.5) + np.log(2 / 100)))
    z = [(float(r["mean_log_var"]) - float(r["theory_mean_log_var"])) / float(r["se_log_var"]) for r in rows[1:]]
    assert max(abs(v) for v in z) < 4
    runs = _rows(out / "runs.csv")
    assert len(runs) == 300 * 21 and {"schedule", "run", "generation", "log_var"} <= set(runs[0])
    final = json.loads(stdout)["final"]["constant"]
    assert final["mean_log_var"] == pytest.approx(float(rows[20]["mean_log_var"]))
    html = (out / "report.html").read_text()
    assert "Fan chart" in html and "data:image/png;base64," in html


def test_cli_theory_column_blank_without_closed_form_and_schedule_figure(run_cli, tmp_path):
    out = tmp_path / "acc"
    code, _, err = run_cli("collapse", "--loop", "accumulate", "--n", "20", "--schedule", "constant,power:2",
                           "--generations", "5", "--runs", "50", "--no-per-run-csv", "--out", out)
    assert code == 0, err
    rows = _rows(out / "summary.csv")
    assert len(rows) == 12 and {r["schedule"] for r in rows} == {"constant", "power:2"}
    assert all(r["theory_mean_log_var"] == "" for r in rows)
    assert (out / "schedules_log_var.png").is_file() and not (out / "runs.csv").exists()


def test_per_run_csv_is_opt_in_and_stdout_is_a_rounded_sentence(run_cli, tmp_path):
    out = tmp_path / "default"
    code, stdout, err = run_cli("collapse", "--n", "50", "--generations", "4", "--runs", "30", "--out", out)
    assert code == 0, err
    assert (out / "summary.csv").is_file() and not (out / "runs.csv").exists()
    assert json.loads((out / "metrics.json").read_text())["files"] == ["summary.csv"]
    first = stdout.strip().splitlines()[0]
    assert first.startswith("constant: generation 4 (n_T = 50): mean log_var ") and "±" in first
    mean = float(_rows(out / "summary.csv")[4]["mean_log_var"])
    shown, se = (float(v) for v in first.split("mean log_var ")[1].split(";")[0].split(" ± "))
    assert abs(shown - mean) <= 0.51 * 10 ** -len(str(se).split(".")[1])  # rounded to se's 2nd digit, not cut


def test_cli_other_families_and_loops(run_cli, tmp_path):
    code, _, err = run_cli("collapse", "--family", "categorical", "--categories", "5", "--n", "20",
                           "--generations", "10", "--runs", "200", "--out", tmp_path / "cat")
    assert code == 0, err
    rows = _rows(tmp_path / "cat" / "summary.csv")
    assert rows[10]["theory_mean_gini_simpson"] != "" and rows[10]["mean_log_var"] == ""
    assert float(rows[10]["theory_mean_gini_simpson"]) == pytest.approx(0.8 * (1 - 1 / 20) ** 10)
    code, _, err = run_cli("collapse", "--family", "kde", "--bandwidth", "0.3", "--n", "30", "--generations", "3",
                           "--runs", "4", "--out", tmp_path / "kde")
    assert code == 0, err
    code, _, err = run_cli("collapse", "--mean-only", "--loop", "fresh", "--fresh-weight", "optimal",
                           "--fresh-n", "50", "--n", "50", "--generations", "5", "--runs", "100",
                           "--out", tmp_path / "fresh")
    assert code == 0, err
    rows = _rows(tmp_path / "fresh" / "summary.csv")
    assert float(rows[2]["real_weight"]) == pytest.approx((np.sqrt(5) - 1) / 2)
    assert rows[5]["theory_mean_mean_sq_dist"] != ""


@pytest.mark.parametrize("args,message", [
    (("--family", "gan"), "unknown family"),
    (("--loop", "recycle"), "unknown loop"),
    (("--schedule", "cubic"), "unknown schedule"),
    (("--estimator", "biased", "--bias-c", "5", "--n", "4"), "relative bias"),
    (("--fresh-weight", "heavy", "--loop", "fresh"), "fresh-weight"),
    (("--family", "mixture", "--loop", "fresh"), "cannot"),
    (("--runs", "0",), "invalid option runs"),
    (("--loop", "fresh", "--fresh-weight", "1.5"), "fresh weight"),
    (("--loop", "fresh", "--fresh-n", "1"), "fresh-n 1"),
])
def test_cli_bad_input_exits_2_before_writing(run_cli, tmp_path, args, message):
    out = tmp_path / "bad"
    code, _, err = run_cli("collapse", *args, "--generations", "2", "--out", out)
    assert code == 2
    assert message in err
    assert not out.exists()


def test_workflow_config_round_trip_and_errors(tmp_path):
    cfg = CollapseConfig(schedule="constant, linear", runs=20, generations=3, n=10, per_run_csv=False)
    assert cfg.schedule == ("constant", "linear")
    metrics = run_collapse(cfg, tmp_path / "w")
    saved = json.loads((tmp_path / "w" / "config.json").read_text())
    assert CollapseConfig.model_validate(saved) == cfg
    assert set(metrics["final"]) == {"constant", "linear"}
    with pytest.raises(MemgeoError, match="repeats"):
        run_collapse(CollapseConfig(schedule="constant,constant", runs=2, generations=2), tmp_path / "w2")
    with pytest.raises(MemgeoError, match="gaussian family"):
        run_collapse(CollapseConfig(family="categorical", estimator="unbiased"), tmp_path / "w3")
    assert not (tmp_path / "w2").exists() and not (tmp_path / "w3").exists()


def test_cli_analytic_config_file_with_override(run_cli, tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"family": "gaussian", "estimator": "unbiased", "runs": 50, "generations": 3,
                                "n": 20, "schedule": ["constant", "power:2"], "per_run_csv": False}))
    code, _, err = run_cli("collapse", "--config", path, "--runs", "40", "--out", tmp_path / "o")
    assert code == 0, err
    saved = json.loads((tmp_path / "o" / "config.json").read_text())
    assert saved["runs"] == 40 and saved["estimator"] == "unbiased" and saved["schedule"] == ["constant", "power:2"]
    code, _, err = run_cli("collapse", "--config", tmp_path / "missing.json", "--out", tmp_path / "o2")
    assert code == 2 and "does not exist" in err


def test_collapse_plots_handle_collapsed_runs_and_bad_shapes():
    from memgeo.report.collapse_plots import fan_chart, lines_plot, metric_panels, point_clouds

    gens = np.arange(4)
    vals = np.array([[0.0, 0.0, 0.0], [-1.0, -0.5, -np.inf], [-2.0, -1.0, -np.inf], [-3.0, np.nan, -np.inf]])
    fig = fan_chart(gens, vals, theory_mean=-gens * 1.0, theory_sd=np.sqrt(gens))
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "theory mean" in labels and "median" in labels
    median = [line for line in ax.get_lines() if line.get_label() == "median"][0].get_ydata()
    np.testing.assert_allclose(median, [0.0, -1.0, -2.0, np.nan])  # -inf runs pull the median, not the mean
    with pytest.raises(MemgeoError, match="rows"):
        fan_chart(gens, vals[:3])
    with pytest.raises(MemgeoError, match="generations"):
        lines_plot(gens, {"a": np.zeros(3)})
    fig = lines_plot(gens[1:], {"a": np.array([1.0, 2.0, 4.0])}, logx=True, logy=True)
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"
    assert len(metric_panels(gens, {"m1": {"a": np.zeros(4)}, "m2": {"a": np.ones(4)}}).axes) == 2
    with pytest.raises(MemgeoError, match="2-D points"):
        point_clouds([np.zeros((5, 3))])
