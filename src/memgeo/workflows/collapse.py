"""``memgeo collapse``: recursive-training simulations with theory overlays, one output folder each.

Analytic families (:class:`CollapseConfig`, :func:`run_collapse`) write

* ``summary.csv``: one row per generation (and schedule) with ``generation``, ``n_t``, and for each
  metric X ``mean_X``, ``se_X``, ``median_X``, ``q05_X``, ``q95_X`` and ``theory_mean_X`` /
  ``theory_sd_X`` (blank where no closed form exists; ``theory_mean_log_var`` is always a column);
* ``runs.csv``: tidy per-run data (schedule, run, generation, one column per metric);
  ``runs.parquet`` as well when pyarrow is installed;
* ``metrics.json``, fan charts (``fan_*.png``), a schedule comparison when several schedules are
  given, and ``report.html``.

The neural experiment (:class:`NeuralCollapseConfig`, :func:`run_neural_collapse`) lives in
:mod:`memgeo.workflows.collapse_neural`.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from memgeo.collapse.families import ESTIMATORS, FAMILIES, make_family
from memgeo.collapse.loops import LOOPS, History, check_loop, simulate
from memgeo.collapse.schedules import parse_schedule
from memgeo.collapse.theory import theory_curves
from memgeo.errors import MemgeoError, check_choice
from memgeo.io import atomic_write_text, write_csv, write_json
from memgeo.report import Report
from memgeo.report.collapse_plots import fan_chart, lines_plot, metric_panels
from memgeo.workflows.common import figure_to_report, say, start_run

__all__ = ["CollapseConfig", "run_collapse", "summary_rows"]


class CollapseConfig(BaseModel):
    """A simulation of analytic families (see :mod:`memgeo.collapse`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str = "gaussian"
    estimator: str = "mle"
    bias_c: float = Field(1.0, gt=0)
    bias_beta: float = Field(0.5, gt=0)
    dim: int = Field(1, ge=1, le=64)
    mean_only: bool = False
    loop: str = "replace"
    n: int = Field(100, ge=1)
    schedule: tuple[str, ...] = ("constant",)
    generations: int = Field(100, ge=1)
    runs: int = Field(2000, ge=1)
    real_share: float = Field(0.5, gt=0, le=1)
    fresh_weight: float | Literal["optimal"] = "optimal"
    fresh_n: int | None = Field(None, ge=1)
    components: int = Field(3, ge=1)
    categories: int = Field(10, ge=2)
    bandwidth: float | Literal["scaled"] = "scaled"
    n_eval: int = Field(256, ge=8)
    per_run_csv: bool = True
    seed: int = 0

    @field_validator("schedule", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(s.strip() for s in v.split(",") if s.strip())
        return v

    def validate_choices(self) -> None:
        """Names checked against the registries (one clear message each) before anything is written."""
        check_choice(self.family, tuple(FAMILIES), "family")
        check_choice(self.estimator, ESTIMATORS, "estimator")
        check_choice(self.loop, LOOPS, "loop")
        if not self.schedule:
            raise MemgeoError("no schedule given", "pass e.g. --schedule constant or constant,power:2")
        if self.family != "gaussian" and (self.estimator != "mle" or self.mean_only):
            raise MemgeoError(f"--estimator/--mean-only apply to the gaussian family, not {self.family}",
                              "drop them or use --family gaussian")


def build_family(cfg: CollapseConfig):
    """The :class:`~memgeo.collapse.families.Family` a config describes."""
    if cfg.family == "gaussian":
        mode = "data" if cfg.loop == "accumulate-subsample" else "stats"
        return make_family("gaussian", dim=cfg.dim, estimator=cfg.estimator, bias_c=cfg.bias_c,
                           bias_beta=cfg.bias_beta, mean_only=cfg.mean_only, mode=mode)
    if cfg.family == "mixture":
        return make_family("mixture", dim=cfg.dim, components=cfg.components, seed=cfg.seed)
    if cfg.family == "kde":
        return make_family("kde", dim=cfg.dim, bandwidth=cfg.bandwidth, components=cfg.components)
    if cfg.family == "empirical":
        return make_family("empirical", dim=cfg.dim, components=cfg.components)
    return make_family("categorical", categories=cfg.categories)


def _theory(cfg: CollapseConfig, family, hist: History) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    truth = family.truth(1)
    kw: dict[str, Any] = {}
    if cfg.family == "gaussian":
        kw = dict(trace0=float(np.trace(truth.cov[0])), log_var0=float(np.linalg.slogdet(truth.cov[0])[1]) / cfg.dim)
    elif cfg.family == "categorical":
        kw = dict(gini0=float(1 - (truth.probs[0] ** 2).sum()))
    return theory_curves(cfg.family, cfg.loop, hist.sizes, estimator=cfg.estimator, dim=cfg.dim,
                         mean_only=cfg.mean_only, weights=hist.weights, fresh_n=hist.info["fresh_n"],
                         bias_c=cfg.bias_c, bias_beta=cfg.bias_beta, **kw)


def _stats(v: np.ndarray) -> dict[str, np.ndarray]:
    """Per-generation summaries of (T+1, R) values; means over finite runs, quantiles over all."""
    finite = np.where(np.isfinite(v), v, np.nan)
    n_ok = np.isfinite(v).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(finite, axis=1) if n_ok.any() else np.full(v.shape[0], np.nan)
        sd = np.nanstd(finite, axis=1, ddof=1) if v.shape[1] > 1 else np.full(v.shape[0], np.nan)
        q = np.nanquantile(np.where(np.isnan(v), -np.inf, v), [0.05, 0.5, 0.95], axis=1)
    return {"mean": mean, "se": sd / np.sqrt(np.maximum(n_ok, 1)), "median": q[1], "q05": q[0], "q95": q[2]}


def summary_rows(hist: History, theory: dict[str, tuple[np.ndarray, np.ndarray | None]],
                 schedule: str) -> list[dict[str, Any]]:
    """One row per generation: mean/se/median/q05/q95 of every metric and the theory columns."""
    stats = {k: _stats(v) for k, v in hist.metrics.items()}
    rows = []
    for g in range(hist.sizes.size + 1):
        row: dict[str, Any] = {"schedule": schedule, "generation": g, "n_t": int(hist.sizes[g - 1]) if g else None,
                               "real_weight": float(hist.weights[g - 1]) if g else None}
        for name in ["log_var", *(k for k in hist.metrics if k != "log_var")]:
            st = stats.get(name)
            for s in ("mean", "se", "median", "q05", "q95"):
                row[f"{s}_{name}"] = None if st is None else float(st[s][g])
            mean_sd = theory.get(name)
            row[f"theory_mean_{name}"] = None if mean_sd is None else float(mean_sd[0][g])
            row[f"theory_sd_{name}"] = None if mean_sd is None or mean_sd[1] is None else float(mean_sd[1][g])
        rows.append(row)
    return rows


def _write_runs(out: Path, hists: dict[str, History]) -> list[str]:
    """Tidy per-run table: schedule, run, generation, one column per metric (CSV; parquet if possible)."""
    names = list(next(iter(hists.values())).metrics)
    blocks, frames = [], []
    header = "schedule,run,generation," + ",".join(names) + "\n"
    for sched, h in hists.items():
        t1, runs = h.metrics[names[0]].shape
        gen, run = np.meshgrid(np.arange(t1), np.arange(runs), indexing="ij")
        cols = np.stack([h.metrics[k] for k in names], axis=-1).reshape(-1, len(names))
        buf = io.StringIO()  # savetxt formats in C; 7 significant digits keep the file small
        np.savetxt(buf, np.column_stack([run.ravel(), gen.ravel(), cols]), fmt=["%d", "%d"] + ["%.7g"] * len(names),
                   delimiter=",")
        text = buf.getvalue().rstrip("\n")
        blocks.append(f"{sched}," + text.replace("\n", f"\n{sched},"))
        frames.append((sched, run.ravel(), gen.ravel(), cols))
    atomic_write_text(out / "runs.csv", header + "\n".join(blocks) + "\n")
    written = ["runs.csv"]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    table = {"schedule": [], "run": [], "generation": [], **{k: [] for k in names}}
    for sched, run, gen, cols in frames:
        table["schedule"] += [sched] * run.size
        table["run"] += run.tolist()
        table["generation"] += gen.tolist()
        for i, k in enumerate(names):
            table[k] += cols[:, i].tolist()
    pq.write_table(pa.table(table), out / "runs.parquet")
    return [*written, "runs.parquet"]


def run_collapse(cfg: CollapseConfig, out: str | Path) -> dict[str, Any]:
    """Simulate every schedule of ``cfg``, write the outputs listed in the module docstring."""
    cfg.validate_choices()
    family = build_family(cfg)
    check_loop(family, cfg.loop)
    schedules = [parse_schedule(s, cfg.n) for s in cfg.schedule]
    for s in schedules:  # every size problem before the output folder exists
        sizes = s.sizes(cfg.generations, minimum=family.min_samples)
        if hasattr(family, "check_sizes"):
            family.check_sizes(sizes)
    if len({s.name for s in schedules}) != len(schedules):
        raise MemgeoError(f"schedule list {list(cfg.schedule)} repeats a schedule", "list each once")
    out = start_run(out, cfg, cfg.seed)
    report = Report(f"Model collapse: {cfg.family} / {cfg.loop}",
                    f"{cfg.runs} runs, {cfg.generations} generations, n = {cfg.n}, seed {cfg.seed}")
    hists: dict[str, History] = {}
    theories: dict[str, dict] = {}
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    for k, sched in enumerate(schedules):
        say(f"simulating {cfg.runs} runs x {cfg.generations} generations ({cfg.family}, {cfg.loop}, {sched.name})")
        t0 = time.perf_counter()
        hist = simulate(family, cfg.loop, sched, cfg.generations, cfg.runs, n=cfg.n, seed=cfg.seed + k,
                        real_share=cfg.real_share, fresh_weight=cfg.fresh_weight, fresh_n=cfg.fresh_n,
                        n_eval=cfg.n_eval, progress=True)
        seconds[sched.name] = time.perf_counter() - t0
        hists[sched.name], theories[sched.name] = hist, _theory(cfg, family, hist)
        rows += summary_rows(hist, theories[sched.name], sched.name)
    write_csv(out / "summary.csv", rows)
    files = ["summary.csv"] + (_write_runs(out, hists) if cfg.per_run_csv else [])
    final = _final_metrics(hists, theories)
    metrics = {"seconds": seconds, "final": final, "files": files}
    write_json(out / "metrics.json", metrics)
    _build_report(report, out, cfg, hists, theories, final)
    report.write(out / "report.html")
    say(f"wrote {out / 'report.html'}")
    return metrics


def _final_metrics(hists: dict[str, History], theories: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Last generation per schedule: simulated mean +- se of each metric, theory and the z-score."""
    final: dict[str, dict[str, Any]] = {}
    for name, h in hists.items():
        entry: dict[str, Any] = {"n_T": int(h.sizes[-1])}
        for metric, v in h.metrics.items():
            st = _stats(v)
            entry[f"mean_{metric}"], entry[f"se_{metric}"] = float(st["mean"][-1]), float(st["se"][-1])
            if metric in theories[name]:
                th = float(theories[name][metric][0][-1])
                entry[f"theory_mean_{metric}"] = th
                se = float(st["se"][-1])
                entry[f"z_{metric}"] = (float(st["mean"][-1]) - th) / se if se > 0 else None
        final[name] = entry
    return final


def _build_report(report: Report, out: Path, cfg: CollapseConfig, hists: dict[str, History],
                  theories: dict[str, dict], final: dict[str, dict]) -> None:
    report.add_text(
        "Generation 0 is the true distribution; generation 1 is fitted on n_1 real samples; later generations "
        f"follow the **{cfg.loop}** loop. Fan charts show the median and the 50 % / 90 % bands over runs; the "
        "dashed red line is the exact theory where one exists (see docs/collapse.md).", heading="Setup")
    report.add_json(cfg, heading="Config")
    main = "gini_simpson" if cfg.family == "categorical" else "log_var"
    for name, h in hists.items():
        th = theories[name].get(main)
        fig = fan_chart(h.generations, h.metrics[main], theory_mean=None if th is None else th[0],
                        theory_sd=None if th is None else th[1], ylabel=main.replace("_", " "),
                        title=f"{cfg.family}, {cfg.estimator}, {cfg.loop}, schedule {name}")
        safe = name.replace(":", "_")
        figure_to_report(report, fig, out / f"fan_{main}_{safe}.png", heading=f"Fan chart ({name})",
                         caption=f"{main} of {cfg.runs} runs per generation.")
    if len(hists) > 1:
        gens = next(iter(hists.values())).generations
        means = {k: _stats(h.metrics[main])["mean"] for k, h in hists.items()}
        ses = {k: _stats(h.metrics[main])["se"] for k, h in hists.items()}
        theo = {k: theories[k][main][0] for k in hists if main in theories[k]}
        fig = lines_plot(gens, means, se=ses, theory=theo, ylabel=f"mean {main}",
                         title=f"Schedules compared ({cfg.estimator} estimator)")
        figure_to_report(report, fig, out / f"schedules_{main}.png", heading="Schedules compared",
                         caption="Mean over runs (+- 2 se) per schedule, theory dashed. Collapse continues while "
                                 "sum 1/n_t (plus sum c n_t^-beta for a biased estimator) keeps growing.")
    others = [k for k in next(iter(hists.values())).metrics if k != main]
    if others:
        gens = next(iter(hists.values())).generations
        panels = {m: {k: _stats(h.metrics[m])["mean"] for k, h in hists.items()} for m in others}
        se = {m: {k: _stats(h.metrics[m])["se"] for k, h in hists.items()} for m in others}
        figure_to_report(report, metric_panels(gens, panels, se=se), out / "metrics.png", heading="All metrics",
                         caption="Mean over runs (+- 2 se) of every metric per generation.")
    report.add_table([{"schedule": k, **v} for k, v in final.items()], heading="Last generation")
