"""Every trainable generator family in one place: configs, models, train steps, checkpoints, resume.

=============  ========================================  ==============================  ======================
family         config                                    model                           one training step
=============  ========================================  ==============================  ======================
``vae``        :class:`~memgeo.models.vae.VAEConfig`     :class:`~memgeo.models.vae.VAE` Adam on -ELBO
``gsvae``      :class:`~memgeo.models.vae.GumbelVAEConfig`  ``GumbelSoftmaxVAE``         Adam on relaxed -ELBO
``gan``        :class:`~memgeo.models.gan.GANConfig`     :class:`~memgeo.models.gan.GAN` 1 D step + 1 G step
``wgan-gp``    ``GANConfig(kind="wgan-gp")``             ``GAN``                         n_critic + 1 G step
``sd2015``     ``SD2015Config``                          ``SD2015Diffusion``             its variational bound
=============  ========================================  ==============================  ======================

(``ddpm``, today's denoising diffusion, is trained by :func:`memgeo.models.training.train`.)
``sd2015`` is imported only when it is used.

A generator checkpoint folder holds ``model.safetensors`` (weights; the config JSON in the metadata
under ``"<family>_config"``, plus ``generator_family`` and ``step``) and ``state.safetensors``
(weights, optimizer moments, the data RNG state and the step), so that :func:`train_generator`
resumes bit-identically: a run interrupted after any checkpoint and resumed ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from tqdm.auto import tqdm

from memgeo.errors import MemgeoError, check_finite, check_scalar
from memgeo.io import write_json
from memgeo.models.checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    check_weight_shapes,
    load_tensors,
    read_metadata,
    save_tensors,
)
from memgeo.models.generators import Generator

#: Family names :func:`get_family` knows (``ddpm`` is not here: it is :func:`memgeo.models.train`).
FAMILY_NAMES: tuple[str, ...] = ("vae", "gsvae", "gan", "wgan-gp", "sd2015")
#: Metadata key naming the family of a generator checkpoint.
FAMILY_KEY = "generator_family"

Optimizers = dict[str, torch.optim.Optimizer]
StepFn = Callable[[Any, Optimizers, torch.Tensor, int, torch.Generator, int], float]


def config_key(name: str) -> str:
    """The metadata key holding a family's config JSON, e.g. ``"vae_config"``."""
    return f"{name}_config"


#: Metadata keys of generator checkpoints, one per family.
CONFIG_KEYS: dict[str, str] = {config_key(n): n for n in FAMILY_NAMES}


@dataclass(frozen=True)
class Family:
    """What memgeo knows about one generator family.

    Attributes
    ----------
    name : str
        The family name (``--family``).
    config_cls : type
        Its pydantic config class.
    model_cls : type
        Its :class:`~memgeo.models.generators.Generator` subclass, built as ``model_cls(config)``.
    make_optimizers : callable(model, lr) -> dict of str to Optimizer
        The optimisers of a fresh run (``lr`` is ignored where the config fixes it, as for GANs).
    step : callable(model, optimizers, data, batch, generator, step) -> float
        One training step on ``data (N, *data_shape)``, drawing all randomness from ``generator``;
        returns the step's loss.
    fixed : dict
        Config fields that the family name fixes (e.g. ``kind="wgan-gp"``).
    """

    name: str
    config_cls: type[BaseModel]
    model_cls: type[Generator]
    make_optimizers: Callable[[Any, float], Optimizers]
    step: StepFn
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def config_key(self) -> str:
        """Metadata key of this family's config."""
        return config_key(self.name)

    def make_config(self, data_shape: tuple[int, ...], **fields: Any) -> BaseModel:
        """A validated config for data of shape ``data_shape`` (family-fixed fields filled in).

        Raises
        ------
        MemgeoError
            If a field is unknown or invalid.
        """
        try:
            return self.config_cls.model_validate({**fields, "data_shape": tuple(data_shape), **self.fixed})
        except ValidationError as exc:
            first = str(exc).splitlines()[0:3]
            raise MemgeoError(f"invalid {self.name} config ({' '.join(s.strip() for s in first)})",
                              f"check the {self.name} options (fields of {self.config_cls.__name__})") from exc


# --- train steps -------------------------------------------------------------------------------------
def _adam(model: Any, lr: float) -> Optimizers:
    return {"adam": torch.optim.Adam(model.parameters(), lr=lr)}


def _vae_step(model: Any, opts: Optimizers, data: torch.Tensor, batch: int, gen: torch.Generator,
              step: int) -> float:
    """One Adam step on the minibatch negative ELBO (as :func:`~memgeo.models.vae.train_vae`)."""
    from memgeo.models.vae import GumbelSoftmaxVAE

    if isinstance(model, GumbelSoftmaxVAE):
        model.set_step(step)  # temperature schedule
    idx = torch.randint(data.shape[0], (min(batch, data.shape[0]),), generator=gen)
    loss = -model.elbo(data[idx], generator=gen).mean()
    opt = opts["adam"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _gan_optimizers(model: Any, lr: float) -> Optimizers:
    cfg = model.config  # lr and betas of the paper, in the config
    return {"generator": torch.optim.Adam(model.generator_net.parameters(), lr=cfg.lr, betas=cfg.betas),
            "critic": torch.optim.Adam(model.discriminator.parameters(), lr=cfg.lr, betas=cfg.betas)}


def _gan_step(model: Any, opts: Optimizers, data: torch.Tensor, batch: int, gen: torch.Generator,
              step: int) -> float:
    """One generator step with its ``n_critic`` critic steps (:func:`~memgeo.models.gan.train_gan`)."""
    from memgeo.models.gan import train_gan

    return train_gan(model, data, 1, batch, generator=gen, optimizers=opts).generator_loss[-1]


def _sd2015_family() -> Family:
    try:
        from memgeo.models import sd2015
    except ImportError as exc:
        raise MemgeoError("the sd2015 family is not available in this memgeo",
                          "use one of: vae, gsvae, gan, wgan-gp (or ddpm)") from exc
    return Family("sd2015", sd2015.SD2015Config, sd2015.SD2015Diffusion, _adam, _sd2015_step)


def _sd2015_step(model: Any, opts: Optimizers, data: torch.Tensor, batch: int, gen: torch.Generator,
                 step: int) -> float:
    """One Adam step on the 2015 model's negative variational bound -K (as ``train_sd2015``)."""
    idx = torch.randint(data.shape[0], (min(batch, data.shape[0]),), generator=gen)
    loss = -model.bound(data[idx], generator=gen).mean()
    opt = opts["adam"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def get_family(name: str) -> Family:
    """The :class:`Family` called ``name`` (one of :data:`FAMILY_NAMES`).

    Raises
    ------
    MemgeoError
        For an unknown name.
    """
    if name in ("vae", "gsvae"):
        from memgeo.models.vae import VAE, GumbelSoftmaxVAE, GumbelVAEConfig, VAEConfig

        if name == "vae":
            return Family("vae", VAEConfig, VAE, _adam, _vae_step)
        return Family("gsvae", GumbelVAEConfig, GumbelSoftmaxVAE, _adam, _vae_step)
    if name in ("gan", "wgan-gp"):
        from memgeo.models.gan import GAN, GANConfig

        return Family(name, GANConfig, GAN, _gan_optimizers, _gan_step, fixed={"kind": name})
    if name == "sd2015":
        return _sd2015_family()
    raise MemgeoError(f"unknown generator family {name!r}", f"use one of: {', '.join(FAMILY_NAMES)} (or ddpm)")


def family_of(model_or_config: Any) -> Family:
    """The family of a generator model or config (a GAN config's ``kind`` picks gan / wgan-gp)."""
    cfg = getattr(model_or_config, "config", model_or_config)
    kind = getattr(cfg, "kind", None)
    if kind in ("gan", "wgan-gp"):
        return get_family(kind)
    for name in FAMILY_NAMES:
        if name in ("gan", "wgan-gp"):
            continue
        try:
            fam = get_family(name)
        except MemgeoError:
            continue
        if type(cfg) is fam.config_cls:
            return fam
    raise MemgeoError(f"{type(cfg).__name__} is not the config of a known generator family",
                      f"build the model from one of the families: {', '.join(FAMILY_NAMES)}")


# --- inference checkpoints ---------------------------------------------------------------------------
def save_generator(model: Generator, folder: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``folder/model.safetensors``: the weights, with the config JSON under ``"<family>_config"``.

    Parameters
    ----------
    model : Generator
        A model of one of the families (built as ``model_cls(config)``).
    folder : path
    extra_metadata : dict of str, optional

    Returns
    -------
    Path
        The file written.
    """
    fam = family_of(model)
    path = Path(folder) / MODEL_FILE
    meta = {fam.config_key: model.config.model_dump_json(), FAMILY_KEY: fam.name, **(extra_metadata or {})}
    save_tensors(path, dict(model.state_dict()), meta)
    return path


def generator_family_in(meta: dict[str, str]) -> str | None:
    """The family named by a checkpoint's metadata, or ``None`` when it is not a generator checkpoint."""
    for key, name in CONFIG_KEYS.items():
        if key in meta:
            return name
    return None


def load_generator(folder: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Load a generator saved by :func:`save_generator` (a folder or its ``model.safetensors``).

    The stored tensor shapes are compared with those the config makes before anything is allocated.

    Returns
    -------
    Generator
        In eval mode without parameter gradients.

    Raises
    ------
    MemgeoError
        Missing or corrupt file, no generator config, invalid config, or weights that do not match it.
    """
    path = Path(folder)
    if path.is_dir():
        path = path / MODEL_FILE
    meta = read_metadata(path)
    name = generator_family_in(meta)
    if name is None:
        raise MemgeoError(f"{path} has no generator config in its metadata",
                          "point at a folder written by memgeo train --family vae|gsvae|gan|wgan-gp|sd2015")
    fam = get_family(name)
    try:
        config = fam.config_cls.model_validate_json(meta[fam.config_key])
    except (ValidationError, MemgeoError) as exc:
        first = str(exc).splitlines()[0]
        raise MemgeoError(f"{name} config in {path} is invalid ({first})", "re-train or restore the checkpoint") from exc
    check_weight_shapes(fam.model_cls, config, path)  # before the real module is allocated
    model = fam.model_cls(config)
    try:
        model.load_state_dict(load_tensors(path), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise MemgeoError(f"weights in {path} do not match its config ({first})", "re-train; the file was altered") from exc
    if hasattr(model, "set_step") and meta.get("step", "").isdigit():
        model.set_step(int(meta["step"]))  # Gumbel-Softmax temperature where training stopped
    return model.to(device).eval().requires_grad_(False)


# --- resumable training ------------------------------------------------------------------------------
@dataclass
class GeneratorTrainResult:
    """Outcome of :func:`train_generator`.

    Attributes
    ----------
    model : Generator
        The trained model (eval mode).
    losses : list of float
        Loss of every step since step 0 (restored from the checkpoint after a resume).
    steps_done : int
        Steps run by this call.
    resumed_from : int
        Step the run resumed from (0 for a fresh run).
    seconds : float
        Wall time of this call.
    """

    model: Generator
    losses: list[float] = field(default_factory=list)
    steps_done: int = 0
    resumed_from: int = 0
    seconds: float = 0.0


def _state_tensors(model: Generator, opts: Optimizers, gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {f"net.{k}": v for k, v in model.state_dict().items()}
    for name, opt in opts.items():
        for pid, st in opt.state_dict()["state"].items():
            for key, val in st.items():
                out[f"opt.{name}.{pid}.{key}"] = val if isinstance(val, torch.Tensor) else torch.tensor(val)
    out["rng"] = gen.get_state()
    return out


def _restore(tensors: dict[str, torch.Tensor], model: Generator, opts: Optimizers, gen: torch.Generator) -> None:
    model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    for name, opt in opts.items():
        sd = opt.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        prefix = f"opt.{name}."
        for k, v in tensors.items():
            if k.startswith(prefix):
                pid, key = k[len(prefix):].split(".", 1)
                state.setdefault(int(pid), {})[key] = v
        sd["state"] = state
        opt.load_state_dict(sd)
    gen.set_state(tensors["rng"])


def train_generator(config: BaseModel, data: torch.Tensor, steps: int, out: str | Path | None = None,
                    checkpoint_every: int = 1000, progress: bool | str = True, *, batch: int = 128,
                    lr: float = 1e-3, seed: int = 0, resume: bool = True) -> GeneratorTrainResult:
    """Train a generator of any family, with checkpoints and a bit-identical resume.

    Parameters
    ----------
    config : BaseModel
        A family config (:func:`family_of` finds the family), e.g. ``VAEConfig(data_shape=(64,))``.
    data : Tensor, shape (N, *data_shape)
        Training data (a Bernoulli VAE needs values in [0, 1]).
    steps : int
        Total steps (generator steps for GANs); a resumed run continues up to it.
    out : path, optional
        Checkpoint folder: every ``checkpoint_every`` steps and at the end it receives
        ``model.safetensors``, ``state.safetensors`` and ``train_log.json``.
    checkpoint_every : int
    progress : bool or str
        Progress bar; a str names it (default ``"training <family>"``).
    batch : int
        Minibatch size.
    lr : float
        Adam learning rate (VAEs, sd2015; GANs use the lr and betas in their config).
    seed : int
        Seed of the data RNG (minibatches, latents, noise).
    resume : bool
        Continue from ``out/state.safetensors`` when it exists; all settings except ``steps`` must match.

    Returns
    -------
    GeneratorTrainResult

    Raises
    ------
    MemgeoError
        Bad settings or data, a checkpoint of other settings, or a diverged loss.
    """
    fam = family_of(config)
    steps = check_scalar(steps, "steps", int, min=1)
    checkpoint_every = check_scalar(checkpoint_every, "checkpoint_every", int, min=1)
    batch = check_scalar(batch, "batch", int, min=1)
    lr = check_scalar(lr, "lr", float, min=0.0, include_min=False)
    shape = tuple(getattr(config, "data_shape"))
    if data.ndim < 2 or tuple(data.shape[1:]) != shape or data.shape[0] < 1:
        raise MemgeoError(f"data has shape {tuple(data.shape)} but the {fam.name} config says (N, *{shape})",
                          "make the config's data_shape match the data")
    check_finite(data, "training data")
    model = fam.model_cls(config)
    p = next(model.parameters())
    data = data.to(device=p.device, dtype=p.dtype)
    if hasattr(model, "_check_data"):
        model._check_data(data)  # e.g. a Bernoulli VAE refuses data outside [0, 1]
    opts = fam.make_optimizers(model, lr)
    gen = torch.Generator().manual_seed(int(seed))
    settings = json.dumps({"batch": batch, "lr": lr, "seed": int(seed)})
    meta = {fam.config_key: config.model_dump_json(), FAMILY_KEY: fam.name, "train_settings": settings}
    losses: list[float] = []
    start = 0
    folder = Path(out) if out is not None else None
    if folder is not None and resume and (folder / STATE_FILE).exists():
        old = read_metadata(folder / STATE_FILE)
        if any(old.get(k) != v for k, v in meta.items()):
            raise MemgeoError(f"{folder} holds a checkpoint trained with other settings",
                              "use a new --out folder or the same settings to resume")
        start = int(old.get("step", "0"))
        if start > steps:
            raise MemgeoError(f"{folder} holds a checkpoint at step {start}, beyond steps={steps}",
                              f"pass steps >= {start} or use a new --out folder")
        _restore(load_tensors(folder / STATE_FILE), model, opts, gen)
        log_file = folder / "train_log.json"
        if log_file.exists():
            losses = [float(r["loss"]) for r in json.loads(log_file.read_text())][:start]

    def checkpoint(done: int) -> None:
        if folder is None:
            return
        step_meta = {**meta, "step": str(done)}
        save_generator(model, folder, step_meta)
        save_tensors(folder / STATE_FILE, _state_tensors(model, opts, gen), step_meta)
        write_json(folder / "train_log.json", [{"step": i + 1, "loss": v} for i, v in enumerate(losses)])

    t0 = time.perf_counter()
    model.train()
    desc = progress if isinstance(progress, str) else f"training {fam.name}"
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, desc=desc)
    for step in bar:
        loss = fam.step(model, opts, data, batch, gen, step)
        if not torch.isfinite(torch.tensor(loss)):
            raise MemgeoError(f"{fam.name} training diverged at step {step} (loss {loss})", "lower the learning rate")
        losses.append(loss)
        done = step + 1
        if done % 50 == 0:
            bar.set_postfix(loss=f"{loss:.4f}")
        if done % checkpoint_every == 0 or done == steps:
            checkpoint(done)
    model.eval()
    return GeneratorTrainResult(model=model, losses=losses, steps_done=steps - start, resumed_from=start,
                                seconds=time.perf_counter() - t0)


__all__ = ["CONFIG_KEYS", "FAMILY_KEY", "FAMILY_NAMES", "Family", "GeneratorTrainResult", "config_key",
           "family_of", "generator_family_in", "get_family", "load_generator", "save_generator",
           "train_generator"]
