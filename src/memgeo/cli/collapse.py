"""`memgeo collapse` (model-collapse simulator): registers its command on :data:`memgeo.cli.app`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from memgeo.cli.common import Out, app, load_config
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
    family: Annotated[str, typer.Option(help="gaussian, mixture (EM), kde, empirical or categorical.")] = None,
    estimator: Annotated[str, typer.Option(help="Gaussian covariance estimator: mle, unbiased or biased.")] = None,
    bias_c: Annotated[float, typer.Option(help="biased estimator: relative bias -c n^-beta, this c.")] = None,
    bias_beta: Annotated[float, typer.Option(help="biased estimator: the beta of -c n^-beta.")] = None,
    dim: Annotated[int, typer.Option(help="Dimension of the continuous families.")] = None,
    mean_only: Annotated[bool, typer.Option(help="Gaussian: refit the mean only (covariance known).")] = None,
    loop: Annotated[str, typer.Option(help="replace, accumulate, accumulate-subsample, real-share or fresh.")] = None,
    n: Annotated[int, typer.Option("--n", help="Base sample size n_1 of the schedule.")] = None,
    schedule: Annotated[str, typer.Option(help="constant, linear, power:P, or several separated by commas.")] = None,
    generations: Annotated[int, typer.Option(help="Generations after the true distribution.")] = None,
    runs: Annotated[int, typer.Option(help="Independent runs (vectorized).")] = None,
    real_share: Annotated[float, typer.Option(help="real-share loop: weight lambda of the fixed real data.")] = None,
    fresh_weight: Annotated[str, typer.Option(help="fresh loop: weight w of fresh real data, or 'optimal'.")] = None,
    fresh_n: Annotated[int, typer.Option(help="fresh loop: real samples per generation (default n_1).")] = None,
    components: Annotated[int, typer.Option(help="Mixture components (truth of mixture/kde/empirical).")] = None,
    categories: Annotated[int, typer.Option(help="Categorical family: number of categories.")] = None,
    bandwidth: Annotated[str, typer.Option(help="kde: a kernel std, or 'scaled' (Scott factor x data std).")] = None,
    per_run_csv: Annotated[bool, typer.Option(help="Write runs.csv with every run's metrics.")] = None,
    config: Annotated[Path, typer.Option(help="JSON config: CollapseConfig, or NeuralCollapseConfig "
                                              "(family mlp_diffusion) for the neural experiment.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = None,
    out: Out = Path("runs/collapse"),
) -> None:
    """Recursive training on synthetic data: simulate, compare with theory, write summary.csv and a report."""
    if _is_neural(config):
        from memgeo.workflows.collapse import NeuralCollapseConfig, run_neural_collapse

        cfg = load_config(config, NeuralCollapseConfig, {"seed": seed, "generations": generations, "n": n})
        typer.echo(json.dumps(run_neural_collapse(cfg, out)["final"]))
        return
    from memgeo.workflows.collapse import CollapseConfig, run_collapse

    cfg = load_config(config, CollapseConfig, {
        "family": family, "estimator": estimator, "bias_c": bias_c, "bias_beta": bias_beta, "dim": dim,
        "mean_only": mean_only, "loop": loop, "n": n, "schedule": schedule, "generations": generations,
        "runs": runs, "real_share": real_share, "fresh_weight": _weight(fresh_weight), "fresh_n": fresh_n,
        "components": components, "categories": categories, "bandwidth": _bandwidth(bandwidth),
        "per_run_csv": per_run_csv, "seed": seed})
    metrics = run_collapse(cfg, out)
    typer.echo(json.dumps({"final": metrics["final"], "seconds": metrics["seconds"]}))
