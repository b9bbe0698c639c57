"""`memgeo collapse` (model-collapse simulator): registers its command on :data:`memgeo.cli.app`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from memgeo.cli.common import Out, app, load_config
from memgeo.cli.output import Json, emit, num, plus_minus
from memgeo.errors import MemgeoError


def _weight(value: str | None) -> float | str | None:
    if value is None or value == "optimal":
        return value
    try:
        return float(value)
    except ValueError:
        raise MemgeoError(f"--fresh-weight {value!r} is neither a number nor 'optimal'", "e.g. 0.618") from None


def _bandwidth(value: str | None) -> float | str | None:
    if value is None or value == "scaled":
        return value
    try:
        return float(value)
    except ValueError:
        raise MemgeoError(f"--bandwidth {value!r} is neither a number nor 'scaled'", "e.g. 0.2") from None


def _is_neural(path: Path | None) -> bool:
    if path is None or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("family") == "mlp_diffusion"
    except (json.JSONDecodeError, AttributeError):
        return False


@app.command()
def collapse(
    family: Annotated[str, typer.Option(help="gaussian, mixture (EM), kde, empirical or categorical. "
                                             "[default: gaussian]")] = None,
    estimator: Annotated[str, typer.Option(help="Gaussian covariance estimator: mle, unbiased or biased. "
                                                "[default: mle]")] = None,
    bias_c: Annotated[float, typer.Option(help="biased estimator: relative bias -c n^-beta, this c. "
                                               "[default: 1.0]")] = None,
    bias_beta: Annotated[float, typer.Option(help="biased estimator: the beta of -c n^-beta. [default: 0.5]")] = None,
    dim: Annotated[int, typer.Option(help="Dimension of the continuous families. [default: 1]")] = None,
    mean_only: Annotated[bool, typer.Option(help="Gaussian: refit the mean only (covariance known). "
                                                 "[default: no-mean-only]")] = None,
    loop: Annotated[str, typer.Option(help="replace, accumulate, accumulate-subsample, real-share or fresh. "
                                           "[default: replace]")] = None,
    n: Annotated[int, typer.Option("--n", help="Base sample size n_1 of the schedule. [default: 100]")] = None,
    schedule: Annotated[str, typer.Option(help="constant, linear, power:P, or several separated by commas. "
                                               "[default: constant]")] = None,
    generations: Annotated[int, typer.Option(help="Generations after the true distribution. [default: 100; "
                                                  "neural config: 5]")] = None,
    runs: Annotated[int, typer.Option(help="Independent runs (vectorized). [default: 2000]")] = None,
    real_share: Annotated[float, typer.Option(help="real-share loop: weight lambda of the fixed real data. "
                                                   "[default: 0.5]")] = None,
    fresh_weight: Annotated[str, typer.Option(help="fresh loop: weight w of fresh real data, or 'optimal'. "
                                                   "[default: optimal]")] = None,
    fresh_n: Annotated[int, typer.Option(help="fresh loop: real samples per generation. [default: n_1]")] = None,
    components: Annotated[int, typer.Option(help="Mixture components (truth of mixture/kde/empirical). "
                                                 "[default: 3]")] = None,
    categories: Annotated[int, typer.Option(help="Categorical family: number of categories. [default: 10]")] = None,
    bandwidth: Annotated[str, typer.Option(help="kde: a kernel std, or 'scaled' (Scott factor x data std). "
                                                "[default: scaled]")] = None,
    per_run_csv: Annotated[bool, typer.Option(help="Also write runs.csv (and runs.parquet with pyarrow): every "
                                                   "run's metrics per generation, about 21 MB for 2000 runs x 100 "
                                                   "generations. summary.csv is always written. "
                                                   "[default: no-per-run-csv]")] = None,
    config: Annotated[Path, typer.Option(help="JSON config: CollapseConfig, or NeuralCollapseConfig "
                                              "(family mlp_diffusion) for the neural experiment. Options given "
                                              "here override it. [default: none]")] = None,
    seed: Annotated[int, typer.Option(help="Random seed. [default: 0]")] = None,
    json_out: Json = False,
    out: Out = Path("runs/collapse"),
) -> None:
    """Recursive training on synthetic data: simulate, compare with theory, write summary.csv and a report.

    \b
    Example: memgeo collapse --family gaussian --loop accumulate --schedule constant,power:2 --out runs/collapse
    """
    if _is_neural(config):
        from memgeo.workflows.collapse import NeuralCollapseConfig, run_neural_collapse

        cfg = load_config(config, NeuralCollapseConfig, {"seed": seed, "generations": generations, "n": n})
        final = run_neural_collapse(cfg, out)["final"]
        emit(json_out, final, [_neural_line(loop, values) for loop, values in final.items()]
             + [f"report: {out / 'report.html'}"])
        return
    from memgeo.workflows.collapse import CollapseConfig, run_collapse

    cfg = load_config(config, CollapseConfig, {
        "family": family, "estimator": estimator, "bias_c": bias_c, "bias_beta": bias_beta, "dim": dim,
        "mean_only": mean_only, "loop": loop, "n": n, "schedule": schedule, "generations": generations,
        "runs": runs, "real_share": real_share, "fresh_weight": _weight(fresh_weight), "fresh_n": fresh_n,
        "components": components, "categories": categories, "bandwidth": _bandwidth(bandwidth),
        "per_run_csv": per_run_csv, "seed": seed})
    metrics = run_collapse(cfg, out)
    main = "gini_simpson" if cfg.family == "categorical" else "mean_sq_dist" if cfg.mean_only else "log_var"
    lines = [_final_line(name, entry, main, cfg.generations) for name, entry in metrics["final"].items()]
    emit(json_out, {"final": metrics["final"], "seconds": metrics["seconds"]},
         lines + [f"files: {', '.join(metrics['files'])}, report.html in {out}"])


def _final_line(schedule: str, entry: dict, metric: str, generations: int) -> str:
    """``constant: generation 100 (n_T = 100): mean log_var -4.98 ± 0.02; theory -5.0 (z = 0.9)``."""
    line = (f"{schedule}: generation {generations} (n_T = {entry['n_T']}): mean {metric} "
            f"{plus_minus(entry.get(f'mean_{metric}'), entry.get(f'se_{metric}'))}")
    if entry.get(f"theory_mean_{metric}") is not None:
        line += f"; theory {num(entry[f'theory_mean_{metric}'])}"
        if entry.get(f"z_{metric}") is not None:
            line += f" (z = {num(entry[f'z_{metric}'], 2)})"
    return line


def _neural_line(loop: str, values: dict[str, list]) -> str:
    """``replace: trace ratio 1 -> 0.83, copy rate 0 -> 0.1, ...`` (generation 0 -> the last)."""
    parts = [f"{key.replace('_', ' ')} {num(v[0], 3)} -> {num(v[-1], 3)}" for key, v in values.items()
             if v and v[-1] is not None]
    return f"{loop} (generation 0 -> {len(next(iter(values.values()))) - 1}): " + ", ".join(parts)
