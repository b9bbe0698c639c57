"""The ``memgeo`` command line: a thin typer layer over :mod:`memgeo.workflows`.

Every command writes into one ``--out`` folder; bad input ends with a one-line ``error:`` message
(exit code 2) that names the problem and the fix.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from memgeo.cli.common import (Address, Engine, GpusPerWorker, Out, PanelCommand, Seed, Shard, Workers, app,
                               emit_shard, load_config, scale_options)
from memgeo.cli.output import Json, auroc_text, emit, num
from memgeo.errors import MemgeoError

MODEL_HELP = ("memgeo checkpoint folder (label, caption or generator model: vae, gsvae, gan, wgan-gp, sd2015), "
              "diffusers pipeline folder (SD 1.x/2.x, SDXL, SD3), empirical:DATA.npy or gaussian:MEAN.npy,COV.npy.")
PROMPT_RULE = ("Prompt models only. One prompt conditions every row; several are paired with the rows in order "
               "(row i gets prompt i: give exactly one per row); none means the empty prompt.")
Prompt = Annotated[list[str], typer.Option("--prompt", help="A prompt (repeat the option for several). " + PROMPT_RULE
                                            + " [default: none]")]
PromptFile = Annotated[Path, typer.Option("--prompt-file", help="Prompt file (.txt one per line, .jsonl, .csv) "
                                                                 "instead of --prompt; same pairing rule. "
                                                                 "[default: none]")]


def _prompt_options(prompt: list[str] | None, prompt_file: Path | None) -> dict[str, object]:
    return {"prompts": tuple(prompt) if prompt else None, "prompt_file": str(prompt_file) if prompt_file else None}


@app.command()
def demo(
    data: Annotated[str, typer.Option(help="digits (embedded) or mnist:PATH (IDX folder) / mnist (uses "
                                           "$MEMGEO_DATA). [default: digits]")] = None,
    memorize_class: Annotated[int, typer.Option(help="Class whose images are replaced by copies of one image. "
                                                     "[default: 9]")] = None,
    control_class: Annotated[int, typer.Option(help="Untouched class for comparison. [default: 3]")] = None,
    copies: Annotated[int, typer.Option(help="Number of copies put in. [default: the class size]")] = None,
    fraction: Annotated[float, typer.Option(help="Share of the class replaced by copies (1 = all). "
                                                 "[default: 1.0]")] = None,
    steps: Annotated[int, typer.Option(help="Training steps. [default: 4000]")] = None,
    n_samples: Annotated[int, typer.Option(help="Generations per class. [default: 100]")] = None,
    toy: Annotated[bool, typer.Option(help="Include the 2-D toy illustration (trains a second, 2-D model); "
                                           "--no-toy skips it. [default: toy]")] = None,
    config: Annotated[Path, typer.Option(help="DemoConfig JSON; options given here override it. "
                                              "[default: none]")] = None,
    seed: Annotated[int, typer.Option(help="Random seed. [default: 0]")] = None,
    json_out: Json = False,
    out: Out = Path("runs/demo"),
) -> None:
    """Train a digit model with one class memorized, detect copies by sharpness, write a report.

    OUT also gets the training set used (train_x.npy, train_labels.npy, train_duplicates.npy) and
    reproduce.sh: the memgeo sample / sharpness / lid / audit commands that recompute the headline
    numbers from OUT alone (also printed at the end and listed in metrics.json under "reproduce").

    \b
    Example: memgeo demo --out runs/demo
    """
    from memgeo.workflows.demo import DemoConfig, run_demo

    cfg = load_config(config, DemoConfig, {
        "data": data, "memorize_class": memorize_class, "control_class": control_class, "copies": copies,
        "fraction": fraction, "train.steps": steps, "n_samples": n_samples, "toy.enabled": toy, "seed": seed})
    metrics = run_demo(cfg, out)
    keys = ("copy_rate_memorized", "copy_rate_control", "auroc_sharpness", "auroc_sharpness_ci")
    ci = metrics["auroc_sharpness_ci"] or [None, None]
    auroc = auroc_text({"auroc": metrics["auroc_sharpness"], "ci_low": ci[0], "ci_high": ci[1]})
    emit(json_out, {k: metrics[k] for k in keys},
         f"copy rate {num(metrics['copy_rate_memorized'], 3)} in memorized class {cfg.memorize_class}, "
         f"{num(metrics['copy_rate_control'], 3)} in control class {cfg.control_class}; sharpness flags the "
         f"copies with AUROC [95 % CI] {auroc}; report: {out / 'report.html'}")


@app.command("train")
def train_cmd(
    data: Annotated[str, typer.Option(help="Data SPEC: digits, mnist[:PATH], toy2d, npy:FILE. "
                                           "[default: digits]")] = None,
    arch: Annotated[str, typer.Option(help="mlp or unet. [default: mlp]")] = None,
    conditional: Annotated[bool, typer.Option(help="Class-conditional (needs labels); --no-conditional for "
                                                   "unlabelled data. [default: conditional]")] = None,
    hidden: Annotated[int, typer.Option(help="MLP width. [default: 256]")] = None,
    depth: Annotated[int, typer.Option(help="MLP residual blocks. [default: 3]")] = None,
    prediction: Annotated[str, typer.Option(help="Network output: eps (noise) or x0 (clean data; better "
                                                 "Jacobians off the data manifold, see docs/design.md). "
                                                 "[default: eps]")] = None,
    memorize_class: Annotated[int, typer.Option(help="Replace this class by copies of one image. "
                                                     "[default: none]")] = None,
    copies: Annotated[int, typer.Option(help="Copies put in for --memorize-class. [default: the class "
                                             "size]")] = None,
    fraction: Annotated[float, typer.Option(help="Share of the class replaced. [default: 1.0]")] = None,
    steps: Annotated[int, typer.Option(help="Training steps. [default: 4000]")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size. [default: 256]")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate. [default: 0.001]")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints. [default: 1000]")] = None,
    config: Annotated[Path, typer.Option(help="TrainRunConfig JSON; options override it. [default: none]")] = None,
    seed: Annotated[int, typer.Option(help="Random seed. [default: 0]")] = None,
    family: Annotated[str, typer.Option(help="Model family: ddpm (denoising diffusion), sd2015 (Sohl-Dickstein "
                                             "et al. 2015 diffusion), vae, gsvae (Gumbel-Softmax VAE), gan, "
                                             "wgan-gp. All but ddpm are unconditional and use --hidden/--depth "
                                             "as their MLP width/layers. [default: ddpm]")] = None,
    latent_dim: Annotated[int, typer.Option(help="vae/gan/wgan-gp: latent dimension; gsvae: number of "
                                                 "categorical latents. [default: the family's]")] = None,
    decoder: Annotated[str, typer.Option(help="vae/gsvae likelihood: gaussian, or bernoulli (the data are "
                                              "rescaled from [-1, 1] to [0, 1]). [default: gaussian]")] = None,
    json_out: Json = False,
    out: Out = Path("runs/model"),
) -> None:
    """Train a model (diffusion by default, or another --family); OUT becomes a checkpoint folder (rerun to resume).

    \b
    Example: memgeo train --data digits --memorize-class 9 --steps 4000 --out runs/model
    Example: memgeo train --family wgan-gp --data digits --steps 2000 --out runs/wgan
    """
    from memgeo.workflows.commands import TrainRunConfig, run_train

    cfg = load_config(config, TrainRunConfig, {
        "data": data, "arch": arch, "conditional": conditional, "hidden": hidden, "depth": depth,
        "prediction": prediction, "memorize_class": memorize_class, "copies": copies, "fraction": fraction, "train.steps": steps,
        "train.batch_size": batch_size, "train.lr": lr, "train.checkpoint_every": checkpoint_every,
        "train.seed": seed, "family": family, "latent_dim": latent_dim, "decoder": decoder})
    summary = run_train(cfg, out)
    start = summary.get("resumed_from") or 0
    if start >= summary["steps"]:
        line = f"checkpoint already at step {start}, nothing to train; final loss {num(summary['final_loss'])}"
    else:
        done = f"steps {start + 1}-{summary['steps']}" if start else f"{summary['steps']} steps"
        line = (f"trained {done} on {summary['n_train']} rows in {num(summary['seconds'], 3)} s, final loss "
                f"{num(summary['final_loss'])}")
    line += f"; checkpoint and report in {out}"
    emit(json_out, summary, line)


@app.command()
def sample(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    n: Annotated[int, typer.Option(help="Number of samples.")] = 64,
    cond: Annotated[int, typer.Option(help="Class to condition on. [default: none (unconditional)]")] = None,
    prompt: Prompt = None,
    prompt_file: PromptFile = None,
    sampler: Annotated[str, typer.Option(help="ddim or ddpm.")] = "ddim",
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 100,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance weight.")] = 1.0,
    train_data: Annotated[str, typer.Option(help="Data SPEC of the training set, to label copies. "
                                                 "[default: none (no copy labels)]")] = None,
    seed: Seed = 0,
    json_out: Json = False,
    out: Out = Path("runs/samples"),
) -> None:
    """Generate samples from a model (and label copies of the training data).

    Writes samples.npy in the model's space (latents for a pipeline with a VAE, which also gets images.npy).

    \b
    Example: memgeo sample --model runs/model --n 100 --cond 9 --train-data digits --out runs/samples
    """
    from memgeo.workflows.commands import SampleRunConfig, run_sample

    cfg = load_config(None, SampleRunConfig, dict(model=model, n=n, cond=cond, sampler=sampler, steps=steps,
                                                   guidance=guidance, train_data=train_data, seed=seed,
                                                   **_prompt_options(prompt, prompt_file)))
    summary = run_sample(cfg, out)
    line = (f"{summary['n']} samples ({summary['network_evaluations']} network evaluations each) in "
            f"{out / 'samples.npy'}")
    if "copies" in summary:
        c = summary["copies"]
        line += f"; {c['n_copies']} of {c['n_samples']} copy a training example (copy rate {num(c['copy_rate'])})"
    emit(json_out, summary, line)


@app.command(cls=PanelCommand)
def sharpness(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    points: Annotated[Path, typer.Option(help=".npy file of points, (N, D) or (N, C, H, W).")],
    t: Annotated[float, typer.Option("--t", help="Diffusion time in (0, 1]; give exactly one of --t and "
                                                 "--sigma. [default: none]")] = None,
    sigma: Annotated[float, typer.Option("--sigma", help="Noise scale (instead of --t). [default: none]")] = None,
    cond: Annotated[int, typer.Option(help="Class for every point (conditional models). "
                                           "[default: none (unconditional)]")] = None,
    labels: Annotated[Path, typer.Option(help=".npy of one class per point (instead of --cond). "
                                              "[default: none]")] = None,
    prompt: Prompt = None,
    prompt_file: PromptFile = None,
    at: Annotated[str, typer.Option(help="scaled (psi_t x) or raw (x as given).")] = "scaled",
    shard: Shard = None,
    engine: Engine = None,
    address: Address = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
    json_out: Json = False,
    out: Out = Path("runs/sharpness"),
) -> None:
    """Hessian spectrum of log p_t (in units of sigma^2) at each point; writes sharpness.json.

    \b
    Example: memgeo sharpness --model runs/model --points runs/samples/samples.npy --t 0.1 --out runs/sharpness
    """
    from memgeo.workflows.commands import SharpnessRunConfig, run_sharpness

    cfg = load_config(None, SharpnessRunConfig, dict(model=model, points=str(points), t=t, sigma=sigma, cond=cond,
                                                      labels=str(labels) if labels else None, at=at,
                                                      **_prompt_options(prompt, prompt_file)))
    summary = run_sharpness(cfg, out, scale=scale_options(shard, engine, address, workers, gpus_per_worker))
    if emit_shard(json_out, summary):
        return
    emit(json_out, summary,
         f"sharpness of {summary['n_points']} points at t = {num(summary['t'])} (sigma = {num(summary['sigma'])}): "
         f"mean {num(summary['mean_sharpness'])}; on average {num(summary['mean_n_flat'], 3)} flat and "
         f"{num(summary['mean_n_positive'], 3)} positive directions; per point in {out / 'sharpness.json'}")


def _t0(value: str | None) -> float | str | None:
    if value is None or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise MemgeoError(f"--t0 {value!r} is neither a number nor 'auto'", "e.g. --t0 0.05") from None


@app.command(cls=PanelCommand)
def lid(
    points: Annotated[Path, typer.Option(help=".npy file of points, (N, D) or (N, C, H, W).")],
    estimator: Annotated[str, typer.Option(help="flipd, fpregress, normal_bundle (need a diffusion --model); "
                                                "generator_jacobian (a vae/gsvae/gan/wgan-gp --model: rank of the "
                                                "decoder Jacobian); cfdm, lpca, mle, twonn (need --data).")] = "flipd",
    model: Annotated[str, typer.Option(help="Model-based estimators: " + MODEL_HELP + " [default: none]")] = None,
    data: Annotated[str, typer.Option(help="Reference data, TRAIN.npy or a data SPEC (model-free estimators). "
                                           "[default: none]")] = None,
    t0: Annotated[str, typer.Option(help="Diffusion time of FLIPD-type estimators, or 'auto'. [default: the "
                                         "estimator's: 0.05 for flipd, 0.01 for normal_bundle]")] = None,
    trace: Annotated[str, typer.Option(help="exact, hutchinson or hutch++ (FLIPD). [default: exact]")] = None,
    n_probes: Annotated[int, typer.Option(help="Probe vectors of a stochastic trace. [default: 8]")] = None,
    k: Annotated[int, typer.Option(help="Neighbours of model-free estimators. [default: the estimator's: 50 for "
                                        "lpca and twonn, 20 for mle]")] = None,
    cond: Annotated[int, typer.Option(help="Class for every point (conditional models). "
                                           "[default: none (unconditional)]")] = None,
    prompt: Prompt = None,
    prompt_file: PromptFile = None,
    shard: Shard = None,
    engine: Engine = None,
    address: Address = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
    json_out: Json = False,
    out: Out = Path("runs/lid"),
) -> None:
    """Local intrinsic dimension of each point; writes lid.json (list `lid` in point order) and lid.csv.

    \b
    Example: memgeo lid --points runs/samples/samples.npy --estimator flipd --model runs/model --out runs/lid
    """
    from memgeo.workflows.lid_runs import LIDRunConfig, run_lid

    params = {"t0": _t0(t0), "trace": trace, "n_probes": n_probes, "k": k}
    cfg = load_config(None, LIDRunConfig, dict(points=str(points), estimator=estimator, model=model, data=data,
                                                params={a: b for a, b in params.items() if b is not None}, cond=cond,
                                                **_prompt_options(prompt, prompt_file)))
    summary = run_lid(cfg, out, scale=scale_options(shard, engine, address, workers, gpus_per_worker))
    if emit_shard(json_out, summary):
        return
    line = f"LID ({summary['estimator']}) of {summary['n_points']} points: mean {num(summary['mean'], 3)}"
    if summary.get("t0_used") is not None:
        line += f" at t0 = {num(summary['t0_used'])}"
    emit(json_out, summary, line + f"; per point in {out / 'lid.csv'}")


@app.command(cls=PanelCommand)
def audit(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    points: Annotated[Path, typer.Option(help=".npy of generated samples.")],
    train_data: Annotated[str, typer.Option(help="Training data (labels copies; default reference). "
                                                 "[default: none]")] = None,
    reference: Annotated[str, typer.Option(help="Data for LID_data if not the training data. "
                                                "[default: --train-data]")] = None,
    labels: Annotated[Path, typer.Option(help=".npy of one class per point (conditional models). "
                                              "[default: none]")] = None,
    cond: Annotated[int, typer.Option(help="Class for every point. [default: none (unconditional)]")] = None,
    prompt: Prompt = None,
    prompt_file: PromptFile = None,
    t0: Annotated[float, typer.Option(help="FLIPD time for LID_model (the demo's headline t).")] = 0.1,
    sharpness_t: Annotated[float, typer.Option(help="Time of the sharpness spectrum.")] = 0.1,
    lid_data: Annotated[str, typer.Option(help="Model-free LID_data estimator: lpca, mle, twonn, cfdm.")] = "lpca",
    model_low: Annotated[float, typer.Option(help="LID_model below this is memorized. [default: relative to the "
                                                  "reference's typical LID, see docs]")] = None,
    data_low: Annotated[float, typer.Option(help="LID_data below this makes it DD-Mem. [default: relative to the "
                                                 "reference's typical LID, see docs]")] = None,
    shard: Shard = None,
    engine: Engine = None,
    address: Address = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
    json_out: Json = False,
    out: Out = Path("runs/audit"),
) -> None:
    """Sharpness + LID_model (FLIPD) + LID_data + MMH labels (none / OD-Mem / DD-Mem) per sample.

    \b
    Example: memgeo audit --model runs/model --points runs/samples/samples.npy --train-data digits --out runs/audit
    """
    from memgeo.workflows.lid_runs import AuditConfig, run_audit

    cfg = load_config(None, AuditConfig, dict(
        model=model, points=str(points), train_data=train_data, reference=reference,
        labels=str(labels) if labels else None, cond=cond, t0=t0, sharpness_t=sharpness_t, lid_data=lid_data,
        model_low=model_low, data_low=data_low, **_prompt_options(prompt, prompt_file)))
    summary = run_audit(cfg, out, scale=scale_options(shard, engine, address, workers, gpus_per_worker))
    if emit_shard(json_out, summary):
        return
    emit(json_out, {k: v for k, v in summary.items() if k != "detection"}, _audit_lines(summary, out))


def _audit_lines(summary: dict, out: Path) -> list[str]:
    """MMH counts with their thresholds, then (with training data) copies and the AUROC of each score."""
    mmh = summary["mmh"]
    counts = ", ".join(f"{v} {k}" for k, v in mmh["counts"].items())
    lines = [f"audit of {summary['n']} samples: {counts} (memorized: LID_model < {num(mmh['model_low'], 3)}; "
             f"DD-Mem: also LID_data < {num(mmh['data_low'], 3)})"]
    if "copies" in summary:
        c = summary["copies"]
        det = summary["detection"]
        reasons = {v.get("reason") for v in det.values()}
        scores = (f"n/a for every score ({reasons.pop()})" if all(v.get("auroc") is None for v in det.values())
                  and len(reasons) == 1 else ", ".join(f"{k} {auroc_text(v)}" for k, v in det.items()))
        lines.append(f"{c['n_copies']} of {c['n_samples']} samples copy a training example; AUROC for copies: "
                     + scores)
    lines.append(f"per sample in {out / 'audit.csv'}")
    return lines


# Commands of later capabilities live in their own modules and register on `app` when imported.
from memgeo.cli import collapse as _collapse_commands  # noqa: E402,F401
from memgeo.cli import copies as _copies_commands  # noqa: E402,F401
from memgeo.cli import detect as _detect_commands  # noqa: E402,F401
from memgeo.cli import families as _families_commands  # noqa: E402,F401
from memgeo.cli import mitigate as _mitigate_commands  # noqa: E402,F401
from memgeo.cli import scale as _scale_commands  # noqa: E402,F401
from memgeo.cli import kfold as _kfold_commands  # noqa: E402,F401


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
