"""Library functions behind ``memgeo train``, ``memgeo sample`` and ``memgeo sharpness``.

Each takes a frozen, validated config and an output folder, writes results (JSON + CSV), figures,
``config.json``, ``provenance.json`` and a self-contained ``report.html``, and returns a summary.
Models are loaded by :func:`memgeo.models.load` (any kind); :func:`model_conditions` turns the
condition options (class labels or prompts) into the ``cond`` tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from memgeo.data import load_dataset, load_points, load_prompts, replace_class_with_copies
from memgeo.errors import MemgeoError
from memgeo.geometry import sharpness_spectrum
from memgeo.geometry.jacobian import check_points
from memgeo.geometry.sharpness import SharpnessResult, resolve_time
from memgeo.io import write_csv, write_json, write_npy
from memgeo.memorization import label_copies
from memgeo.models import MLPConfig, TrainConfig, UNetConfig, get_sampler, load, train
from memgeo.models.base import DiffusionModel, model_dtype
from memgeo.models.prompt import PromptDiffusionModel
from memgeo.report import Report, image_grid, scatter_plot, spectra_plot
from memgeo.errors import check_fits_in_memory
from memgeo.workflows.common import (
    check_point_shape,
    check_prompt_tokens,
    figure_to_report,
    point_conditions,
    run_command,
    say,
    start_run,
)
from memgeo.workflows.items import Item, ItemCommand, ItemRow, Plan, ScaleOptions, run_items, units_of


# ------------------------------------------------------------------------------------------- conditions
ENCODE_BATCH = 64


def read_prompt_options(prompts: tuple[str, ...] | list[str] | None, prompt_file: str | None) -> list[str] | None:
    """The prompts given by ``--prompt`` (repeatable) or ``--prompt-file``; ``None`` when neither."""
    if prompts and prompt_file:
        raise MemgeoError("both --prompt and --prompt-file were given", "use one of them")
    if prompt_file:
        return [entry.prompt for entry in load_prompts(prompt_file)]
    return list(prompts) if prompts else None


def encode_prompts(model: PromptDiffusionModel, prompts: list[str]) -> torch.Tensor:
    """Conditions (len(prompts), L, E) in the model's dtype; each distinct prompt is encoded once."""
    unique = list(dict.fromkeys(prompts))
    with torch.no_grad():
        enc = torch.cat([model.encode(unique[i:i + ENCODE_BATCH]) for i in range(0, len(unique), ENCODE_BATCH)])
    where = {p: i for i, p in enumerate(unique)}
    return enc[torch.tensor([where[p] for p in prompts])].to(model_dtype(model))


def model_conditions(model: DiffusionModel, n: int, *, cond: int | None = None, labels: str | None = None,
                     prompts: tuple[str, ...] | list[str] | None = None,
                     prompt_file: str | None = None) -> tuple[torch.Tensor | None, list[str] | None]:
    """The condition of ``n`` rows from the command's options, validated against the model.

    Label models: ``--cond`` / ``--labels`` as :func:`~memgeo.workflows.common.point_conditions`,
    a (n,) tensor. Prompt models: a (n, L, E) tensor from ``--prompt`` (repeatable) or
    ``--prompt-file``: one prompt conditions every row; several are paired with the rows in order
    (row i gets prompt i, so exactly n are needed); none is the empty prompt. Returns ``(cond, row_prompts)``: ``row_prompts`` is the prompt of each row (``None``
    for label models or when no prompt was given, both meaning ``cond=None`` is the null condition).
    """
    given = read_prompt_options(prompts, prompt_file)
    if not isinstance(model, PromptDiffusionModel):
        if given is not None:
            raise MemgeoError(f"--prompt/--prompt-file given but {type(model).__name__} is not conditioned on prompts",
                              "drop them (use --cond/--labels for class labels) or pass a prompt model")
        return point_conditions(model, n, cond, labels), None
    if cond is not None or labels is not None:
        raise MemgeoError("--cond/--labels are class labels but the model is conditioned on prompts",
                          "pass --prompt TEXT or --prompt-file FILE instead")
    if given is None:
        return None, None
    check_prompt_tokens(model, given)
    if len(given) == 1:
        row_prompts = given * n
    elif len(given) == n:
        row_prompts = given
    else:
        raise MemgeoError(f"{len(given)} prompts for {n} rows",
                          "give one prompt for all rows or exactly one per row (row i gets prompt i)")
    return encode_prompts(model, row_prompts), row_prompts


# ------------------------------------------------------------------------------------------------ train
class TrainRunConfig(BaseModel):
    """``memgeo train``: data, optional memorization injection, architecture and optimisation."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    data: str = "digits"
    arch: Literal["mlp", "unet"] = "mlp"
    conditional: bool = True
    hidden: int = Field(256, ge=8)
    depth: int = Field(3, ge=1)
    prediction: Literal["eps", "x0"] = "eps"
    unet_channels: tuple[int, ...] = (32, 64, 64)
    memorize_class: int | None = None
    copies: int | None = Field(None, ge=1)
    fraction: float = Field(1.0, gt=0, le=1)
    train: TrainConfig = TrainConfig(steps=4000, checkpoint_every=1000)
    preview_samples: int = Field(16, ge=0)
    family: Literal["ddpm", "vae", "gsvae", "gan", "wgan-gp", "sd2015"] = "ddpm"
    latent_dim: int | None = Field(None, ge=1)
    decoder: Literal["gaussian", "bernoulli"] = "gaussian"
    generator_options: dict[str, Any] = Field(default_factory=dict)


#: ``TrainRunConfig.family`` values trained by :func:`memgeo.models.families.train_generator`.
GENERATOR_FAMILIES = ("vae", "gsvae", "gan", "wgan-gp", "sd2015")


def generator_config(cfg: TrainRunConfig, data_shape: tuple[int, ...]) -> Any:
    """The family config of a generator run.

    ``hidden`` and ``depth`` give the MLP widths of every family (``depth`` hidden layers of width
    ``hidden``); ``latent_dim`` is the Gaussian latent size (vae, gan, wgan-gp) or the number of
    categorical latents (gsvae), the family default when ``None``; ``decoder`` is the VAE likelihood;
    ``generator_options`` sets any other config field (e.g. ``{"n_categories": 10}``, ``{"n_critic": 5}``).
    ``train.seed`` seeds the weights.
    """
    from memgeo.models.families import get_family

    fam = get_family(cfg.family)
    fields: dict[str, Any] = {"seed": cfg.train.seed}
    if cfg.family in ("vae", "gsvae"):
        fields.update(hidden=(cfg.hidden,) * cfg.depth, decoder=cfg.decoder)
        if cfg.latent_dim is not None:
            fields["latent_dim" if cfg.family == "vae" else "n_latent"] = cfg.latent_dim
    elif cfg.family in ("gan", "wgan-gp"):
        fields.update(hidden=cfg.hidden, depth=cfg.depth)
        if cfg.latent_dim is not None:
            fields["latent_dim"] = cfg.latent_dim
    else:  # sd2015: its latent is x_T, of the data's dimension
        fields["hidden"] = (cfg.hidden,) * cfg.depth
    if cfg.family == "sd2015" and cfg.latent_dim is not None:
        raise MemgeoError(f"--latent-dim does not apply to family {cfg.family!r}", "drop --latent-dim")
    return fam.make_config(data_shape, **{**fields, **cfg.generator_options})


def _run_train_generator(cfg: TrainRunConfig, ds: Any, out: str | Path) -> dict[str, Any]:
    """``run_train`` for the families other than ddpm (unconditional; labels are not used)."""
    from memgeo.models.families import train_generator

    x = ds.x
    scale = "[-1, 1]"
    if cfg.family in ("vae", "gsvae") and cfg.decoder == "bernoulli":
        x = ((x + 1.0) / 2.0).clamp(0.0, 1.0)  # memgeo data lie in [-1, 1]; a Bernoulli decoder needs [0, 1]
        scale = "[0, 1]"
    gcfg = generator_config(cfg, tuple(ds.data_shape))  # bad options fail before the folder is made
    out = start_run(out, cfg, cfg.train.seed, data_rows=ds.n)
    say(f"training {cfg.family} on {cfg.data} ({ds.n} rows, shape {ds.data_shape}, data in {scale}) for "
        f"{cfg.train.steps} steps -> {out}")
    if scale == "[0, 1]":
        say("the Bernoulli decoder models the data rescaled from [-1, 1] to [0, 1] by (x + 1) / 2; its samples "
            "are in [0, 1]")
    res = train_generator(gcfg, x, cfg.train.steps, out, checkpoint_every=cfg.train.checkpoint_every,
                          progress=f"training {cfg.family}", batch=cfg.train.batch_size, lr=cfg.train.lr,
                          seed=cfg.train.seed)
    tail = res.losses[-min(len(res.losses), 50):]
    summary = {"family": cfg.family, "steps": cfg.train.steps, "resumed_from": res.resumed_from,
               "seconds": res.seconds, "final_loss": sum(tail) / len(tail) if tail else None, "n_train": ds.n,
               "steps_per_s": res.steps_done / res.seconds if res.seconds > 0 else None, "data_scale": scale}
    report = Report("memgeo train", subtitle=f"{cfg.family} on {cfg.data}")
    report.add_metrics(summary, heading="Training")
    if res.losses:
        steps = np.arange(1, len(res.losses) + 1)
        losses = np.asarray(res.losses)
        loss_name = "generator loss" if cfg.family in ("gan", "wgan-gp") else "training loss"
        fig = scatter_plot(steps, losses, xlabel="step", ylabel=loss_name, title="Training loss",
                           logy=bool((losses > 0).all()))
        figure_to_report(report, fig, out / "figures" / "loss.png", heading="Loss")
    if cfg.preview_samples and len(ds.data_shape) == 3:
        gen = torch.Generator().manual_seed(cfg.train.seed)
        x0 = res.model.sample(cfg.preview_samples, generator=gen).float()
        if scale == "[0, 1]":
            x0 = 2.0 * x0 - 1.0
        figure_to_report(report, image_grid(x0.clamp(-1, 1).numpy(), title="Preview samples"),
                         out / "figures" / "preview.png", heading="Preview samples")
    write_json(out / "summary.json", summary)
    report.add_json(cfg, heading="Resolved config")
    report.write(out / "report.html")
    return summary


@run_command
def run_train(cfg: TrainRunConfig, out: str | Path) -> dict[str, Any]:
    """Train a model into ``out`` (a checkpoint folder usable as ``--model``); resumes if interrupted.

    ``family="ddpm"`` (default) trains a denoising diffusion model; the other families
    (:data:`GENERATOR_FAMILIES`) train an unconditional generator with
    :func:`memgeo.models.families.train_generator` (a Bernoulli VAE sees the data rescaled to [0, 1]).
    """
    ds = load_dataset(cfg.data)
    if cfg.memorize_class is not None:
        ds = replace_class_with_copies(ds, cfg.memorize_class, n_copies=cfg.copies, fraction=cfg.fraction,
                                       seed=cfg.train.seed)
    if cfg.family != "ddpm":
        return _run_train_generator(cfg, ds, out)
    if cfg.conditional and ds.y is None:
        raise MemgeoError(f"data {cfg.data!r} has no labels for a conditional model",
                          "pass --no-conditional (or conditional: false in --config) to train an unconditional model")
    n_classes = int(ds.y.max()) + 1 if cfg.conditional else None
    if cfg.arch == "mlp":
        model_cfg = MLPConfig(data_shape=ds.data_shape, hidden=cfg.hidden, depth=cfg.depth, num_classes=n_classes,
                                prediction=cfg.prediction)
    else:
        if len(ds.data_shape) != 3:
            raise MemgeoError(f"the UNet needs images (C, H, W), data has shape {ds.data_shape}", "use --arch mlp")
        model_cfg = UNetConfig(data_shape=ds.data_shape, channels=cfg.unet_channels, num_classes=n_classes,
                               prediction=cfg.prediction)
    out = start_run(out, cfg, cfg.train.seed, data_rows=ds.n)
    say(f"training {cfg.arch} on {cfg.data} ({ds.n} rows, shape {ds.data_shape}) for {cfg.train.steps} steps -> {out}")
    res = train(model_cfg, cfg.train, ds.x, ds.y if cfg.conditional else None, out)
    report = Report("memgeo train", subtitle=f"{cfg.arch} on {cfg.data}")
    summary = {"steps": cfg.train.steps, "resumed_from": res.resumed_from, "seconds": res.seconds,
               "final_loss": res.log[-1]["loss"] if res.log else None, "n_train": ds.n,
               "steps_per_s": res.steps_done / res.seconds if res.seconds > 0 else None}
    report.add_metrics(summary, heading="Training")
    if res.log:
        fig = scatter_plot(np.array([r["step"] for r in res.log]), np.array([r["loss"] for r in res.log]),
                           xlabel="step", ylabel="denoising loss", title="Training loss", logy=True)
        figure_to_report(report, fig, out / "figures" / "loss.png", heading="Loss")
    if cfg.preview_samples:
        gen = torch.Generator().manual_seed(cfg.train.seed)
        k = cfg.preview_samples
        cond = (torch.arange(k) % n_classes) if n_classes else None
        x0 = get_sampler("ddim")(res.model, torch.randn((k,) + tuple(ds.data_shape), generator=gen), steps=50,
                                 cond=cond).x0
        if len(ds.data_shape) == 3:
            figure_to_report(report, image_grid(x0.clamp(-1, 1).numpy(), title="Preview samples"),
                             out / "figures" / "preview.png", heading="Preview samples")
    write_json(out / "summary.json", summary)
    report.add_json(cfg, heading="Resolved config")
    report.write(out / "report.html")
    return summary


# ----------------------------------------------------------------------------------------------- sample
class SampleRunConfig(BaseModel):
    """``memgeo sample``: how many generations, of which class or prompt(s), with which sampler."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: str
    n: int = Field(64, ge=1)
    cond: int | None = None
    prompts: tuple[str, ...] = ()
    prompt_file: str | None = None
    sampler: str = "ddim"
    steps: int = Field(100, ge=1)
    guidance: float = 1.0
    clip: bool = True
    train_data: str | None = None
    copy_criterion: str = "ratio"
    seed: int = 0


DECODE_BATCH = 16


def decode_latents(model: DiffusionModel, latents: torch.Tensor) -> torch.Tensor | None:
    """Images (B, C, H, W) in [-1, 1] decoded by the model's VAE, or ``None`` when it has none."""
    if getattr(model, "vae", None) is None or not hasattr(model, "decode"):
        return None
    with torch.no_grad():
        parts = [model.decode(latents[i:i + DECODE_BATCH]) for i in range(0, latents.shape[0], DECODE_BATCH)]
    return torch.cat(parts).clamp(-1, 1).float().cpu()


def _generator_family(model: Any) -> str | None:
    """The family name of a loaded generator checkpoint (vae, gan, ...), ``None`` for a diffusion model."""
    from memgeo.models.families import family_of
    from memgeo.models.generators import Generator

    return family_of(model).name if isinstance(model, Generator) else None


#: Copies of the (n, *data_shape) float32 batch a sampler holds at its peak (noise, x_t, eps, x0, output).
SAMPLE_COPIES = 6


@run_command
def run_sample(cfg: SampleRunConfig, out: str | Path) -> dict[str, Any]:
    """Generate samples and, with ``train_data``, label copies.

    Writes ``samples.npy`` (n, *data_shape): the model's own space, latents for a pipeline with a
    VAE, which also gets ``images.npy`` (n, C, H, W) in [-1, 1] (the decoded latents; copies are
    then labelled on the images). Samples are clipped to [-1, 1] at every step (``clip``) only in
    pixel space. ``samples.csv`` has one row per sample (with its prompt for prompt models).
    """
    model = load(cfg.model, fused_attention=True)  # sampling needs no second-order gradients
    family = _generator_family(model)
    sampler = get_sampler(cfg.sampler) if family is None else None
    shape = tuple(int(v) for v in model.data_shape)
    check_fits_in_memory(SAMPLE_COPIES * 4.0 * cfg.n * float(np.prod(shape)),
                         f"--n {cfg.n} samples of shape {shape}", "sample fewer (--n) per run, in several runs")
    if family is not None:
        if cfg.cond is not None or cfg.prompts or cfg.prompt_file:
            raise MemgeoError(f"a {family} generator is unconditional but --cond/--prompt was given",
                              "drop --cond / --prompt / --prompt-file")
        cond, row_prompts = None, None
    else:
        cond, row_prompts = model_conditions(model, cfg.n, cond=cfg.cond, prompts=cfg.prompts,
                                             prompt_file=cfg.prompt_file)
    latent = getattr(model, "vae", None) is not None
    train_ds = load_dataset(cfg.train_data) if cfg.train_data else None  # refused before anything is written
    dim = int(np.prod(shape))
    if train_ds is not None and not latent and int(np.prod(train_ds.x.shape[1:])) != dim:
        raise MemgeoError(f"--train-data {cfg.train_data} has points of shape {tuple(train_ds.x.shape[1:])} but the "
                          f"model makes {shape}", "pass the model's own training data")
    out = start_run(out, cfg, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if family is None:
        say(f"sampling {cfg.n} with {cfg.sampler} ({cfg.steps} steps)")
        noise = torch.randn((cfg.n,) + tuple(model.data_shape), generator=gen).to(model_dtype(model))
        res = sampler(model, noise, steps=cfg.steps, cond=cond, guidance=cfg.guidance,
                      clip=(-1.0, 1.0) if cfg.clip and not latent else None, generator=gen, progress=True)
        x0 = res.x0.float().cpu()
    else:  # a generator draws its samples itself (--sampler, --steps, --guidance do not apply)
        say(f"sampling {cfg.n} from the {family} generator")
        x0 = model.sample(cfg.n, generator=gen).float().cpu()
        if getattr(model.config, "decoder", None) == "bernoulli":
            x0 = 2.0 * x0 - 1.0  # back from the Bernoulli decoder's [0, 1] to memgeo's [-1, 1]
    bad = int((~torch.isfinite(x0.reshape(cfg.n, -1))).any(1).sum())
    if bad:
        raise MemgeoError(f"sampling produced {bad} of {cfg.n} samples with NaN/inf values",
                          "lower --guidance, use more --steps, or check the model")
    write_npy(out / "samples.npy", x0.numpy())
    images = decode_latents(model, res.x0) if latent else x0
    if latent:
        write_npy(out / "images.npy", images.numpy())
    rows: list[dict[str, Any]] = [{"sample": i, "cond": cfg.cond} if row_prompts is None else
                                  {"sample": i, "prompt": row_prompts[i]} for i in range(cfg.n)]
    summary: dict[str, Any] = {"n": cfg.n, "network_evaluations": cfg.steps + 1 if family is None else 1,
                               "latent": latent}
    if family is not None:
        summary["family"] = family
    report = Report("memgeo sample", subtitle=cfg.model)
    is_copy = None
    if train_ds is not None:
        labels = label_copies(images, train_ds.x, criterion=cfg.copy_criterion)
        is_copy = labels.is_copy
        rows = [{**r, **{k: v for k, v in lr.items() if k != "sample"}} for r, lr in zip(rows, labels.to_rows())]
        summary["copies"] = labels.summary()
    write_csv(out / "samples.csv", rows)
    write_json(out / "summary.json", summary)
    report.add_metrics(summary, heading="Summary")
    if images.ndim == 4 and images.shape[1] in (1, 3):
        figure_to_report(report, image_grid(images[:64].numpy(), highlight=None if is_copy is None else is_copy[:64],
                                            title="Samples" + (" (red: copy)" if is_copy is not None else "")),
                         out / "figures" / "samples.png", heading="Samples")
    report.add_table(rows, heading="Per-sample")
    report.add_json(cfg, heading="Resolved config")
    report.write(out / "report.html")
    return summary


# -------------------------------------------------------------------------------------------- sharpness
class SharpnessRunConfig(BaseModel):
    """``memgeo sharpness``: model SPEC, points file and noise level (exactly one of t, sigma).

    Both exclusive pairs (t / sigma, cond / labels) and the prompts are checked where they are used,
    by :func:`resolve_time` and :func:`model_conditions`, before the output folder is created.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: str
    points: str
    t: float | None = None
    sigma: float | None = None
    cond: int | None = None
    labels: str | None = None
    prompts: tuple[str, ...] = ()
    prompt_file: str | None = None
    at: Literal["scaled", "raw"] = "scaled"
    chunk_size: int = Field(32, ge=1)


@dataclass
class _SharpnessState:
    model: DiffusionModel
    t: float
    points: torch.Tensor
    cond: torch.Tensor | None


def prepare_sharpness(cfg: SharpnessRunConfig) -> Plan:
    """Validate, load the model and points; items are the points (id ``iNNNNNN``), units of ``chunk_size``."""
    model = load(cfg.model)
    t = resolve_time(model, cfg.t, cfg.sigma)
    pts = load_points(cfg.points)
    check_points(model, pts)  # wrong dimension fails here, before the output folder exists
    check_point_shape(model, pts)
    cond, _ = model_conditions(model, pts.shape[0], cond=cfg.cond, labels=cfg.labels, prompts=cfg.prompts,
                               prompt_file=cfg.prompt_file)
    items = [Item(f"i{k:06d}", k) for k in range(pts.shape[0])]
    return Plan(cfg, units_of(items, cfg.chunk_size), _SharpnessState(model, t, pts, cond))


def score_sharpness(plan: Plan, unit: list[Item]) -> list[ItemRow]:
    """Spectra of one chunk of points: the eigenvalues as the row's array, t, sigma, asymmetry as data."""
    st: _SharpnessState = plan.payload
    idx = torch.tensor([it.index for it in unit])
    res = sharpness_spectrum(st.model, st.points[idx].to(model_dtype(st.model)), st.t,
                             cond=None if st.cond is None else st.cond[idx], at=plan.cfg.at,
                             chunk_size=plan.cfg.chunk_size)
    return [ItemRow(it.id, it.index, {"t": float(res.t[j]), "sigma": float(res.sigma[j]),
                                      "asymmetry": float(res.asymmetry[j]), "flat_threshold": res.flat_threshold},
                    res.eigenvalues_sigma2[j].detach().cpu().numpy())
            for j, it in enumerate(unit)]


def finalize_sharpness(plan: Plan, rows: list[ItemRow], out: Path) -> dict[str, Any]:
    """sharpness.json, sharpness.csv and the report from the rows in point order."""
    cfg: SharpnessRunConfig = plan.cfg
    eig = torch.from_numpy(np.stack([r.array for r in rows]))
    res = SharpnessResult(t=torch.tensor([r.data["t"] for r in rows], dtype=eig.dtype),
                          sigma=torch.tensor([r.data["sigma"] for r in rows], dtype=eig.dtype), eigenvalues_sigma2=eig,
                          asymmetry=torch.tensor([r.data["asymmetry"] for r in rows], dtype=eig.dtype),
                          flat_threshold=rows[0].data["flat_threshold"])
    t = plan.payload.t
    say(f"sharpness of {len(rows)} points at t={t:.4f} with {cfg.model}")
    records = [{"index": i, **r} for i, r in enumerate(res.to_records())]
    result = {"model": cfg.model, "points": records, "t": t, "sigma": float(res.sigma[0]),
              "flat_threshold": res.flat_threshold, "evaluated_at": cfg.at, "n_points": len(records)}
    write_json(out / "sharpness.json", result)
    write_csv(out / "sharpness.csv", [{"index": i, **r} for i, r in enumerate(res.summary_rows())])
    summary = {"n_points": len(records), "t": t, "sigma": float(res.sigma[0]),
               "mean_sharpness": float(res.sharpness.mean()), "mean_n_flat": float(res.n_flat.float().mean()),
               "mean_n_positive": float(res.n_positive.float().mean()), "mean_asymmetry": float(res.asymmetry.mean())}
    report = Report("memgeo sharpness", subtitle=f"{cfg.model} at t={t:.4f} (sigma={float(res.sigma[0]):.4f})")
    report.add_metrics(summary, heading="Summary")
    figure_to_report(report, spectra_plot({"points": res.eigenvalues_sigma2.numpy()},
                                          title="Hessian spectra (lambda sigma^2)"),
                     out / "figures" / "spectra.png", heading="Spectra")
    report.add_table(res.summary_rows(), heading="Per point")
    report.add_json(cfg, heading="Resolved config")
    report.write(out / "report.html")
    return summary


SHARPNESS_ITEMS = ItemCommand(name="sharpness", ref="memgeo.workflows.commands:SHARPNESS_ITEMS",
                              config=SharpnessRunConfig, prepare=prepare_sharpness, score_batch=score_sharpness,
                              finalize=finalize_sharpness, noun="points")


@run_command
def run_sharpness(cfg: SharpnessRunConfig, out: str | Path, *, scale: ScaleOptions | None = None) -> dict[str, Any]:
    """Hessian spectra at the given points; writes ``sharpness.json`` and ``sharpness.csv``.

    ``sharpness.json`` holds ``t``, ``sigma``, ``flat_threshold`` and ``points``: per point (in file
    order) ``eigenvalues_sigma2`` (sorted ascending), ``n_positive``, ``n_flat``, ``sharpness`` and
    ``asymmetry``. ``scale``: ``--shard I/N`` / ``--engine ray`` (:mod:`memgeo.workflows.items`).
    """
    return run_items(SHARPNESS_ITEMS, prepare_sharpness(cfg), out, scale, progress=False)
