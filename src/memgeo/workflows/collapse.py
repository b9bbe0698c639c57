"""``memgeo collapse``: recursive-training simulations with theory overlays, one output folder each.

Analytic families (:class:`CollapseConfig`, :func:`run_collapse`) write

* ``summary.csv``: one row per generation (and schedule) with ``generation``, ``n_t``, and for each
  metric X ``mean_X``, ``se_X``, ``median_X``, ``q05_X``, ``q95_X`` and ``theory_mean_X`` /
  ``theory_sd_X`` (blank where no closed form exists; ``theory_mean_log_var`` is always a column);
* ``runs.csv``, only with ``per_run_csv`` (``--per-run-csv``; about 21 MB for 2000 runs x 100
  generations): tidy per-run data (schedule, run, generation, one column per metric);
  ``runs.parquet`` as well when pyarrow is installed;
* ``metrics.json``, fan charts (``fan_*.png``), a schedule comparison when several schedules are
  given, and ``report.html``.

The neural experiment (:class:`NeuralCollapseConfig`, :func:`run_neural_collapse`, the config-file
form of the command) retrains the MLP diffusion model on its own samples and writes
``generations.csv``, ``metrics.json``, figures and ``report.html``.
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
from memgeo.errors import MemgeoError, check_choice, check_fits_in_memory
from memgeo.io import atomic_write_bytes, atomic_write_text, write_csv, write_json
from memgeo.report import Report, glossary, metric_label
from memgeo.report.collapse_plots import fan_chart, lines_plot, metric_panels
from memgeo.workflows.common import figure_to_report, run_command, say, start_run

__all__ = ["CollapseConfig", "NeuralCollapseConfig", "run_collapse", "run_neural_collapse", "summary_rows"]


class CollapseConfig(BaseModel):
    """A simulation of analytic families (see :mod:`memgeo.collapse`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

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
    per_run_csv: bool = False  # runs.csv is large (runs x generations rows): opt-in
    seed: int = 0

    @field_validator("schedule", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(s.strip() for s in v.split(",") if s.strip())
        return v

    def validate_choices(self) -> None:
        """Names checked against the registries (one clear message each) before anything is written."""
        FAMILIES.get(self.family)
        check_choice(self.estimator, ESTIMATORS, "estimator")
        check_choice(self.loop, LOOPS, "loop")
        if not self.schedule:
            raise MemgeoError("no schedule given", "pass e.g. --schedule constant or constant,power:2")
        if self.fresh_weight != "optimal" and not 0 < self.fresh_weight <= 1:
            raise MemgeoError(f"fresh weight {self.fresh_weight} is outside (0, 1]", "e.g. --fresh-weight 0.618")
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
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(table), sink)
    atomic_write_bytes(out / "runs.parquet", sink.getvalue().to_pybytes())
    return [*written, "runs.parquet"]


#: float64 copies of a run's data a simulation step holds (samples, refit, evaluation draws), and the
#: per-generation metrics kept per run.
SIM_COPIES = 4
METRICS_PER_GENERATION = 32


def check_collapse_size(cfg: CollapseConfig, sizes: list[int]) -> None:
    """Refuse up front a simulation whose (runs, samples, dim) arrays cannot fit in memory."""
    width = cfg.categories if cfg.family == "categorical" else cfg.dim
    held = sum(sizes) if cfg.loop.startswith("accumulate") else max(sizes)
    per_run = 8.0 * (SIM_COPIES * (held + cfg.n_eval + (cfg.fresh_n or cfg.n)) * width
                     + METRICS_PER_GENERATION * (cfg.generations + 1))
    check_fits_in_memory(cfg.runs * per_run, f"--runs {cfg.runs} x {cfg.generations} generations of up to {held} "
                         f"samples in {width} dimension(s)", "use fewer --runs (or generations, or a smaller --n)")


@run_command
def run_collapse(cfg: CollapseConfig, out: str | Path) -> dict[str, Any]:
    """Simulate every schedule of ``cfg``, write the outputs listed in the module docstring."""
    cfg.validate_choices()
    family = build_family(cfg)
    check_loop(family, cfg.loop)
    check_collapse_size(cfg, [cfg.n])  # before the schedules allocate (generations,) arrays
    schedules = [parse_schedule(s, cfg.n) for s in cfg.schedule]
    for s in schedules:  # every size problem before the output folder exists
        sizes = s.sizes(cfg.generations, minimum=family.min_samples)
        if hasattr(family, "check_sizes"):
            family.check_sizes(sizes)
        check_collapse_size(cfg, [int(v) for v in sizes])
    if cfg.loop == "fresh" and cfg.fresh_n is not None and cfg.fresh_n < family.min_samples:
        raise MemgeoError(f"--fresh-n {cfg.fresh_n} is below the {family.min_samples} samples a fit needs",
                          "raise --fresh-n")
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
    main = "gini_simpson" if cfg.family == "categorical" else "mean_sq_dist" if cfg.mean_only else "log_var"
    report.add_verdict(_collapse_verdict(cfg, hists, theories), warn=False)
    report.add_glossary(glossary(["gen", "n_t", "sigma2_hat", "trace_ratio", "norm"]))
    report.add_text(
        "Generation 0 is the true distribution; generation 1 is fitted on n_{1} real samples; later generations "
        f"follow the **{cfg.loop}** loop. Fan charts show the median and the 50 % / 90 % bands over runs; the "
        "dashed red line is the exact theory where one exists (see docs/collapse.md).", heading="Setup")
    for name, h in hists.items():
        th = theories[name].get(main)
        fig = fan_chart(h.generations, h.metrics[main], theory_mean=None if th is None else th[0],
                        theory_sd=None if th is None else th[1], ylabel=metric_label(main),
                        title=f"{cfg.family}, {cfg.estimator}, {cfg.loop}, schedule {name}")
        safe = name.replace(":", "_")
        figure_to_report(report, fig, out / f"fan_{main}_{safe}.png", heading=f"Fan chart ({name})",
                         caption=f"{metric_label(main)} of {cfg.runs} runs per generation.")
    if len(hists) > 1:
        gens = next(iter(hists.values())).generations
        means = {k: _stats(h.metrics[main])["mean"] for k, h in hists.items()}
        ses = {k: _stats(h.metrics[main])["se"] for k, h in hists.items()}
        theo = {k: theories[k][main][0] for k in hists if main in theories[k]}
        caption = ("Mean over runs (± 2 se) per schedule, theory dashed. Collapse continues while Σ 1/n_{t} "
                   "(plus Σ c n_{t}^{−β} for a biased estimator) keeps growing.")
        fig = lines_plot(gens, means, se=ses, theory=theo, ylabel=f"mean {metric_label(main)}",
                         title=f"Schedules compared ({cfg.estimator} estimator)")
        figure_to_report(report, fig, out / f"schedules_{main}.png", caption=caption, heading="Schedules compared")
        # log-log view of the loss since generation 0: slope 1 (constant), log t (linear), flat (converging sums)
        loss = {k: m[0] - m[1:] for k, m in means.items()}
        fig = lines_plot(gens[1:], loss, theory={k: t[0] - t[1:] for k, t in theo.items()}, logx=True, logy=True,
                         ylabel=f"loss of {metric_label(main)} since gen. 0", title="Same, as a loss on log-log axes")
        figure_to_report(report, fig, out / f"schedules_{main}_loss.png",
                         caption="A straight line of slope 1 keeps collapsing at a constant rate; a curve that "
                                 "bends flat has a finite total loss.")
    first = next(iter(hists.values()))
    others = [k for k in first.metrics if k != main]
    if others:
        panels = {m: {k: _stats(h.metrics[m])["mean"] for k, h in hists.items()} for m in others}
        se = {m: {k: _stats(h.metrics[m])["se"] for k, h in hists.items()} for m in others}
        theo = {m: {k: theories[k][m][0] for k in hists if m in theories[k]} for m in others}
        figure_to_report(report, metric_panels(first.generations, panels, se=se, theory=theo,
                                               labels={m: metric_label(m) for m in others}),
                         out / "metrics.png", heading="All metrics",
                         caption="Mean over runs (± 2 se, shaded) of every metric per generation (x: generation); "
                                 "dashed: the closed-form theory where one exists.")
    rows = []
    for metric in first.metrics:
        row: dict[str, Any] = {"metric": metric_label(metric)}
        for sched, entry in final.items():
            row[f"{sched}: simulated"] = f"{entry[f'mean_{metric}']:.4g} ± {entry[f'se_{metric}']:.2g}"
            th = entry.get(f"theory_mean_{metric}")
            row[f"{sched}: theory"] = "" if th is None else f"{th:.4g}"
        rows.append(row)
    report.add_table(rows, heading=f"Last generation ({first.generations[-1]})", drop_constant=True,
                     csv="summary.csv", note="Mean ± standard error over runs; every generation, quantiles and "
                                             "z-scores are in summary.csv and metrics.json.")
    report.add_json(cfg, heading="Config")


def _collapse_verdict(cfg: CollapseConfig, hists: dict[str, History], theories: dict[str, dict]) -> str:
    """Plain-language drift / diversity findings at the last generation, one bullet per schedule."""
    lines = []
    for name, h in hists.items():
        t = int(h.generations[-1])
        parts = []
        for metric, kind in (("trace_ratio", "diversity"), ("gini_simpson", "diversity"), ("surviving", "diversity"),
                             ("mean_sq_dist", "drift"), ("log_var", "spread")):
            if metric not in h.metrics:
                continue
            m = _stats(h.metrics[metric])["mean"]
            th = theories[name].get(metric)
            theory = "" if th is None else f", theory {float(th[0][-1]):.3g}"
            parts.append(f"{kind}: {metric_label(metric)} {float(m[0]):.3g} → {float(m[-1]):.3g}{theory}")
        div = next((k for k in ("trace_ratio", "gini_simpson", "surviving") if k in h.metrics), None)
        word = ""
        if div is not None:
            m = _stats(h.metrics[div])["mean"]
            kept = float(m[-1]) / float(m[0]) if m[0] else float("nan")
            word = (f"**{name}: diversity falls to {100 * kept:.0f} % after {t} generations**" if kept < 0.95
                    else f"**{name}: diversity is kept ({100 * kept:.0f} %) after {t} generations**")
        else:
            word = f"**{name}, after {t} generations**"
        lines.append(f"- {word} ({cfg.family}, {cfg.loop} loop, {cfg.runs} runs): " + "; ".join(parts) + ".")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# neural experiment: the MLP diffusion model retrained on its own samples
# ------------------------------------------------------------------------------------------------


class NeuralCollapseConfig(BaseModel):
    """Config file form of the neural experiment (``memgeo collapse --config FILE.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Literal["mlp_diffusion"] = "mlp_diffusion"
    dataset: Literal["mixture2d", "digits"] = "mixture2d"
    loops: tuple[Literal["replace", "accumulate"], ...] = ("replace", "accumulate")
    generations: int = Field(5, ge=1, le=50)
    n: int = Field(1000, ge=10)
    n_heldout: int = Field(500, ge=10)
    hidden: int = Field(128, ge=8)
    depth: int = Field(2, ge=1)
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    sample_steps: int = Field(50, ge=1)
    clip: float | None = Field(None, gt=0, description="clamp x0 predictions to [-clip, clip]; default 1.5 "
                                                       "for mixture2d (tames MLP extrapolation), 1 for digits")
    n_eval: int = Field(500, ge=10)
    n_geometry: int = Field(32, ge=1)
    sharpness_t: float = Field(0.05, gt=0, le=1)
    lid_t0: float = Field(0.05, gt=0, le=1)
    seed: int = 0


_NEURAL_PANELS = ("trace_ratio", "energy", "recall", "precision", "copy_rate_own", "copy_rate_real", "sharpness",
                  "lid", "mean_norm_dist")


@run_command
def run_neural_collapse(cfg: NeuralCollapseConfig, out: str | Path) -> dict[str, Any]:
    """Run every loop of ``cfg``; write generations.csv, metrics.json, figures and report.html."""
    import torch

    from memgeo.collapse.neural import load_real, recursive_diffusion
    from memgeo.models import MLPConfig, TrainConfig
    from memgeo.report.collapse_plots import point_clouds

    if not cfg.loops:
        raise MemgeoError("no loop given", "set loops to e.g. [\"replace\", \"accumulate\"]")
    real, heldout = load_real(cfg.dataset, cfg.n, cfg.n_heldout, cfg.seed)  # validates sizes before writing
    out = start_run(out, cfg, cfg.seed)
    clip = cfg.clip if cfg.clip is not None else (1.5 if cfg.dataset == "mixture2d" else 1.0)
    mcfg = MLPConfig(data_shape=tuple(real.shape[1:]), hidden=cfg.hidden, depth=cfg.depth)
    tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, lr_warmup=min(100, cfg.steps),
                       log_every=max(1, cfg.steps // 4), checkpoint_every=cfg.steps)
    records: list[dict[str, Any]] = []
    clouds: dict[str, list[np.ndarray]] = {}
    for loop in cfg.loops:
        say(f"{loop}: {cfg.generations} generations of the MLP diffusion model on {cfg.dataset} (n = {cfg.n})")
        clouds[loop] = [real[:500].reshape(min(500, cfg.n), -1).numpy()]

        def keep(rec: dict, x: torch.Tensor, loop: str = loop) -> None:
            say(f"  {loop} generation {rec['generation']}: trace ratio {rec['trace_ratio']:.3f}, energy "
                f"{rec['energy']:.4f}, copy rate {rec['copy_rate_own']:.3f}, LID {rec['lid']:.2f}")
            clouds[loop].append(x[:500].reshape(min(500, x.shape[0]), -1).numpy())

        records += recursive_diffusion(real, heldout, loop, cfg.generations, model_config=mcfg, train_config=tcfg,
                                       sample_steps=cfg.sample_steps, n_eval=cfg.n_eval, n_geometry=cfg.n_geometry,
                                       sharpness_t=cfg.sharpness_t, lid_t0=cfg.lid_t0, clip=(-clip, clip),
                                       seed=cfg.seed, on_generation=keep)
    write_csv(out / "generations.csv", records)
    final = {}
    for loop in cfg.loops:
        recs = [r for r in records if r["loop"] == loop]
        final[loop] = {k: [r.get(k) for r in recs] for k in ("trace_ratio", "energy", "copy_rate_own", "sharpness",
                                                             "lid", "recall")}
    metrics = {"final": final, "clip": clip, "seconds": sum(r["seconds"] for r in records)}
    write_json(out / "metrics.json", metrics)
    report = Report(f"Model collapse: MLP diffusion on {cfg.dataset}",
                    f"loops {', '.join(cfg.loops)}; {cfg.generations} generations; n = {cfg.n}; seed {cfg.seed}")
    report.add_text("Generation 0 is the real training set; each later generation is a freshly trained MLP "
                    "diffusion model. Metrics use held-out real data; copy rate counts samples closer than 1/3 "
                    "of the second-nearest distance to a training point (own = that generation's training set).",
                    heading="Setup")
    verdict = []
    for loop in cfg.loops:
        tr, cp = final[loop]["trace_ratio"], final[loop]["copy_rate_own"]
        verdict.append(f"- **{loop}: variance kept tr Σ̂_{{t}} / tr Σ_{{0}} = {tr[-1]:.3g} after {cfg.generations} "
                       f"generations** ({tr[0]:.3g} at generation 0); copy rate of its own training set "
                       f"{'n/a' if cp[-1] is None else f'{cp[-1]:.3g}'}.")
    report.add_verdict("\n".join(verdict))
    report.add_glossary(glossary(["gen", "trace_ratio", "W", "copy_rate", "sharpness", "lid"]))
    gens = np.arange(cfg.generations + 1)
    panels = {m: {loop: np.array([np.nan if r.get(m) is None else r[m] for r in records if r["loop"] == loop])
                  for loop in cfg.loops} for m in _NEURAL_PANELS}
    figure_to_report(report, metric_panels(gens, panels, labels={m: metric_label(m) for m in _NEURAL_PANELS}),
                     out / "neural_metrics.png", heading="Metrics per generation",
                     caption="One panel per metric (x: generation, 0 = the real data), one line per loop.")
    for loop in cfg.loops:
        if real[0].numel() == 2:
            fig = point_clouds(clouds[loop], [f"gen {g}" for g in gens], title=f"{loop}: samples per generation")
            figure_to_report(report, fig, out / f"samples_{loop}.png", heading=f"Samples ({loop})")
        else:
            imgs = np.concatenate([c[:8].reshape(-1, *real.shape[1:]) for c in clouds[loop]])
            report.add_images(imgs, ncols=8, heading=f"Samples ({loop})", caption="one row per generation (0 = real)")
    keep = ["loop", "generation", *[m for m in _NEURAL_PANELS if m != "mean_norm_dist"]]
    report.add_table([{k: r.get(k) for k in keep} for r in records], heading="All generations", csv="generations.csv",
                     labels={m: metric_label(m) for m in _NEURAL_PANELS}, note="All columns: generations.csv.")
    report.add_json(cfg, heading="Config")
    report.write(out / "report.html")
    say(f"wrote {out / 'report.html'}")
    return metrics
