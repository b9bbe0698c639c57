"""The ``memgeo`` command line: a thin typer layer over :mod:`memgeo.workflows`.

Every command writes into one ``--out`` folder; bad input ends with a one-line ``error:`` message
(exit code 2) that names the problem and the fix.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from memgeo.cli.common import Out, Seed, app, load_config
from memgeo.errors import MemgeoError

MODEL_HELP = ("memgeo checkpoint folder (label or caption model), diffusers pipeline folder (SD 1.x/2.x, SDXL, "
              "SD3), empirical:DATA.npy or gaussian:MEAN.npy,COV.npy.")
PROMPT_RULE = ("Prompt models only. One prompt conditions every row; several are paired with the rows in order "
               "(row i gets prompt i: give exactly one per row); none means the empty prompt.")
Prompt = Annotated[list[str], typer.Option("--prompt", help="A prompt (repeat the option for several). " + PROMPT_RULE)]
PromptFile = Annotated[Path, typer.Option("--prompt-file", help="Prompt file (.txt one per line, .jsonl, .csv) "
                                                                 "instead of --prompt; same pairing rule.")]


def _prompt_options(prompt: list[str] | None, prompt_file: Path | None) -> dict[str, object]:
    return {"prompts": tuple(prompt) if prompt else None, "prompt_file": str(prompt_file) if prompt_file else None}


@app.command()
def demo(
    data: Annotated[str, typer.Option(help="digits (embedded) or mnist:PATH (IDX folder) / mnist (uses $MEMGEO_DATA).")] = None,
    memorize_class: Annotated[int, typer.Option(help="Class whose images are replaced by copies of one image.")] = None,
    control_class: Annotated[int, typer.Option(help="Untouched class for comparison.")] = None,
    copies: Annotated[int, typer.Option(help="Number of copies put in (default: the class size).")] = None,
    fraction: Annotated[float, typer.Option(help="Share of the class replaced by copies (1 = all).")] = None,
    steps: Annotated[int, typer.Option(help="Training steps.")] = None,
    n_samples: Annotated[int, typer.Option(help="Generations per class.")] = None,
    toy: Annotated[bool, typer.Option(help="Include the 2-D toy illustration.")] = None,
    config: Annotated[Path, typer.Option(help="DemoConfig JSON; options given here override it.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = None,
    out: Out = Path("runs/demo"),
) -> None:
    """Train a digit model with one class memorized, detect copies by sharpness, write a report."""
    from memgeo.workflows.demo import DemoConfig, run_demo

    cfg = load_config(config, DemoConfig, {
        "data": data, "memorize_class": memorize_class, "control_class": control_class, "copies": copies,
        "fraction": fraction, "train.steps": steps, "n_samples": n_samples, "toy.enabled": toy, "seed": seed})
    metrics = run_demo(cfg, out)
    keys = ("copy_rate_memorized", "copy_rate_control", "auroc_sharpness", "auroc_sharpness_ci")
    typer.echo(json.dumps({k: metrics[k] for k in keys}))


@app.command("train")
def train_cmd(
    data: Annotated[str, typer.Option(help="Data SPEC: digits, mnist[:PATH], toy2d, npy:FILE.")] = None,
    arch: Annotated[str, typer.Option(help="mlp or unet.")] = None,
    conditional: Annotated[bool, typer.Option(help="Class-conditional (needs labels).")] = None,
    hidden: Annotated[int, typer.Option(help="MLP width.")] = None,
    depth: Annotated[int, typer.Option(help="MLP residual blocks.")] = None,
    prediction: Annotated[str, typer.Option(help="Network output: eps (noise) or x0 (clean data; better "
                                                 "Jacobians off the data manifold, see docs/design.md).")] = None,
    memorize_class: Annotated[int, typer.Option(help="Replace this class by copies of one image.")] = None,
    copies: Annotated[int, typer.Option(help="Copies put in for --memorize-class.")] = None,
    fraction: Annotated[float, typer.Option(help="Share of the class replaced.")] = None,
    steps: Annotated[int, typer.Option(help="Training steps.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = None,
    config: Annotated[Path, typer.Option(help="TrainRunConfig JSON; options override it.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = None,
    out: Out = Path("runs/model"),
) -> None:
    """Train a diffusion model; OUT becomes a checkpoint folder (rerun to resume)."""
    from memgeo.workflows.commands import TrainRunConfig, run_train

    cfg = load_config(config, TrainRunConfig, {
        "data": data, "arch": arch, "conditional": conditional, "hidden": hidden, "depth": depth,
        "prediction": prediction, "memorize_class": memorize_class, "copies": copies, "fraction": fraction, "train.steps": steps,
        "train.batch_size": batch_size, "train.lr": lr, "train.checkpoint_every": checkpoint_every,
        "train.seed": seed})
    typer.echo(json.dumps(run_train(cfg, out)))


@app.command()
def sample(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    n: Annotated[int, typer.Option(help="Number of samples.")] = 64,
    cond: Annotated[int, typer.Option(help="Class to condition on (default: unconditional).")] = None,
    prompt: Prompt = None,
    prompt_file: PromptFile = None,
    sampler: Annotated[str, typer.Option(help="ddim or ddpm.")] = "ddim",
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 100,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance weight.")] = 1.0,
    train_data: Annotated[str, typer.Option(help="Data SPEC of the training set, to label copies.")] = None,
    seed: Seed = 0,
    out: Out = Path("runs/samples"),
) -> None:
    """Generate samples from a model (and label copies of the training data).

    Writes samples.npy in the model's space (latents for a pipeline with a VAE, which also gets images.npy).
    """
    from memgeo.workflows.commands import SampleRunConfig, run_sample

    cfg = load_config(None, SampleRunConfig, dict(model=model, n=n, cond=cond, sampler=sampler, steps=steps,
                                                   guidance=guidance, train_data=train_data, seed=seed,
                                                   **_prompt_options(prompt, prompt_file)))
    typer.echo(json.dumps(run_sample(cfg, out)))


@app.command()
def sharpness(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    points: Annotated[Path, typer.Option(help=".npy file of points, (N, D) or (N, C, H, W).")],
    t: Annotated[float, typer.Option("--t", help="Diffusion time in (0, 1].")] = None,
    sigma: Annotated[float, typer.Option("--sigma", help="Noise scale (instead of --t).")] = None,
    cond: Annotated[int, typer.Option(help="Class for every point (conditional models).")] = None,
    labels: Annotated[Path, typer.Option(help=".npy of one class per point (instead of --cond).")] = None,
    prompt: Prompt = None,
    prompt_file: PromptFile = None,
    at: Annotated[str, typer.Option(help="scaled (psi_t x, default) or raw (x as given).")] = "scaled",
    out: Out = Path("runs/sharpness"),
) -> None:
    """Hessian spectrum of log p_t (in units of sigma^2) at each point; writes sharpness.json."""
    from memgeo.workflows.commands import SharpnessRunConfig, run_sharpness

    cfg = load_config(None, SharpnessRunConfig, dict(model=model, points=str(points), t=t, sigma=sigma, cond=cond,
                                                      labels=str(labels) if labels else None, at=at,
                                                      **_prompt_options(prompt, prompt_file)))
    typer.echo(json.dumps(run_sharpness(cfg, out)))


def _t0(value: str | None) -> float | str | None:
    if value is None or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise MemgeoError(f"--t0 {value!r} is neither a number nor 'auto'", "e.g. --t0 0.05") from None


@app.command()
def lid(
    points: Annotated[Path, typer.Option(help=".npy file of points, (N, D) or (N, C, H, W).")],
    estimator: Annotated[str, typer.Option(help="flipd, fpregress, normal_bundle (need --model); cfdm, lpca, mle, "
                                                "twonn (need --data).")] = "flipd",
    model: Annotated[str, typer.Option(help="Model-based estimators: " + MODEL_HELP)] = None,
    data: Annotated[str, typer.Option(help="Reference data, TRAIN.npy or a data SPEC (model-free estimators).")] = None,
    t0: Annotated[str, typer.Option(help="Diffusion time of FLIPD-type estimators, or 'auto'.")] = None,
    trace: Annotated[str, typer.Option(help="exact, hutchinson or hutch++ (FLIPD).")] = None,
    n_probes: Annotated[int, typer.Option(help="Probe vectors of a stochastic trace.")] = None,
    k: Annotated[int, typer.Option(help="Neighbours of model-free estimators.")] = None,
    cond: Annotated[int, typer.Option(help="Class for every point (conditional models).")] = None,
    prompt: Prompt = None,
    prompt_file: PromptFile = None,
    out: Out = Path("runs/lid"),
) -> None:
    """Local intrinsic dimension of each point; writes lid.json (list `lid` in point order) and lid.csv."""
    from memgeo.workflows.lid_runs import LIDRunConfig, run_lid

    params = {"t0": _t0(t0), "trace": trace, "n_probes": n_probes, "k": k}
    cfg = load_config(None, LIDRunConfig, dict(points=str(points), estimator=estimator, model=model, data=data,
                                                params={a: b for a, b in params.items() if b is not None}, cond=cond,
                                                **_prompt_options(prompt, prompt_file)))
    typer.echo(json.dumps(run_lid(cfg, out)))


@app.command()
def audit(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    points: Annotated[Path, typer.Option(help=".npy of generated samples.")],
    train_data: Annotated[str, typer.Option(help="Training data (labels copies; default reference).")] = None,
    reference: Annotated[str, typer.Option(help="Data for LID_data if not the training data.")] = None,
    labels: Annotated[Path, typer.Option(help=".npy of one class per point (conditional models).")] = None,
    cond: Annotated[int, typer.Option(help="Class for every point.")] = None,
    prompt: Prompt = None,
    prompt_file: PromptFile = None,
    t0: Annotated[float, typer.Option(help="FLIPD time for LID_model.")] = 0.05,
    sharpness_t: Annotated[float, typer.Option(help="Time of the sharpness spectrum.")] = 0.1,
    lid_data: Annotated[str, typer.Option(help="Model-free LID_data estimator: lpca, mle, twonn, cfdm.")] = "lpca",
    model_low: Annotated[float, typer.Option(help="LID_model below this is memorized (default: relative).")] = None,
    data_low: Annotated[float, typer.Option(help="LID_data below this makes it DD-Mem (default: relative).")] = None,
    out: Out = Path("runs/audit"),
) -> None:
    """Sharpness + LID_model (FLIPD) + LID_data + MMH labels (none / OD-Mem / DD-Mem) per sample."""
    from memgeo.workflows.lid_runs import AuditConfig, run_audit

    cfg = load_config(None, AuditConfig, dict(
        model=model, points=str(points), train_data=train_data, reference=reference,
        labels=str(labels) if labels else None, cond=cond, t0=t0, sharpness_t=sharpness_t, lid_data=lid_data,
        model_low=model_low, data_low=data_low, **_prompt_options(prompt, prompt_file)))
    summary = run_audit(cfg, out)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "detection"}))


# Commands of later capabilities live in their own modules and register on `app` when imported.
from memgeo.cli import collapse as _collapse_commands  # noqa: E402,F401
from memgeo.cli import detect as _detect_commands  # noqa: E402,F401
from memgeo.cli import mitigate as _mitigate_commands  # noqa: E402,F401


def main() -> None:
    """Console entry point: run the app, turning :class:`MemgeoError` into a one-line error (exit 2).

    Usage errors (unknown option, missing value) are reported by click itself, also with exit 2.
    """
    try:
        app()
    except MemgeoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
