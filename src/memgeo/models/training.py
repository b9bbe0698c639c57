"""Denoising score matching training with checkpoints and resume.

Loss: E_{x0, t ~ U(t_min, 1), eps} || eps_theta(psi_t x0 + sigma_t eps, t, c) - eps ||^2 with the label
replaced by the null condition with probability ``cond_drop`` (classifier-free guidance).
The EMA of the weights is what :func:`memgeo.models.checkpoint.load_model` returns.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from memgeo.errors import MemgeoError, check_finite
from memgeo.io import write_csv, write_json
from memgeo.models.base import NULL_CLASS, DiffusionModel, expand_like
from memgeo.models.checkpoint import (
    STATE_FILE,
    load_tensors,
    read_metadata,
    save_model,
    save_tensors,
)
from memgeo.models.nets import ModelConfig, build_model


class TrainConfig(BaseModel):
    """Optimisation settings (saved with the checkpoint)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(20_000, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_warmup: int = Field(200, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    cond_drop: float = Field(0.1, ge=0, le=1)
    t_min: float = Field(1e-3, gt=0, lt=1)
    seed: int = 0
    checkpoint_every: int = Field(2_000, ge=1)
    log_every: int = Field(100, ge=1)


@dataclass
class TrainResult:
    """The EMA model and the loss log."""

    model: DiffusionModel
    log: list[dict] = field(default_factory=list)
    steps_done: int = 0
    resumed_from: int = 0
    seconds: float = 0.0


def _without_steps(train_config_json: str | None) -> dict | None:
    """A saved TrainConfig JSON as a dict without ``steps`` (the one setting a resume may change)."""
    if train_config_json is None:
        return None
    try:
        cfg = json.loads(train_config_json)
    except json.JSONDecodeError:
        return None
    if isinstance(cfg, dict):
        cfg.pop("steps", None)
    return cfg


def _state_tensors(net: DiffusionModel, ema: DiffusionModel, opt: torch.optim.Optimizer,
                   gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {f"net.{k}": v for k, v in net.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    for pid, st in opt.state_dict()["state"].items():
        for key, val in st.items():
            out[f"opt.{pid}.{key}"] = val if isinstance(val, torch.Tensor) else torch.tensor(val)
    out["rng"] = gen.get_state()
    return out


def _restore(tensors: dict[str, torch.Tensor], net: DiffusionModel, ema: DiffusionModel,
             opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    sd["state"] = state
    opt.load_state_dict(sd)
    gen.set_state(tensors["rng"])


def train(model_config: ModelConfig, train_config: TrainConfig, data: torch.Tensor,
          labels: torch.Tensor | None = None, out_dir: str | Path | None = None, *, progress: bool | str = True,
          resume: bool = True, extra_metadata: dict[str, str] | None = None,
          on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Train a noise predictor by denoising score matching.

    Parameters
    ----------
    model_config : MLPConfig or UNetConfig
    train_config : TrainConfig
    data : Tensor, shape (N, *data_shape)
        Training set (duplicates included: they are the memorization we study).
    labels : Tensor, shape (N,), optional
        Class labels; required iff ``model_config.num_classes`` is set.
    out_dir : path, optional
        Checkpoint folder. Every ``checkpoint_every`` steps and at the end it receives
        ``model.safetensors`` (EMA weights), ``state.safetensors`` (resume state) and ``train_log.csv``.
    progress : bool or str
        Show a progress bar; a str names its task (default ``"training diffusion model"``).
    resume : bool
        Continue from ``out_dir/state.safetensors`` when it exists and its configs match (all settings
        except ``steps``, which may be raised to extend a finished run).

    Returns
    -------
    TrainResult
        ``model`` holds the EMA weights in eval mode.
    """
    cfg = train_config
    if tuple(data.shape[1:]) != tuple(model_config.data_shape):
        raise MemgeoError(f"data has per-sample shape {tuple(data.shape[1:])} but the model config says "
                          f"{tuple(model_config.data_shape)}", "make the config match the data")
    check_finite(data, "training data")
    if (labels is None) != (model_config.num_classes is None):
        raise MemgeoError("labels must be given exactly when the model is class-conditional",
                          "pass labels with num_classes, or neither")
    if labels is not None and (labels.shape != (data.shape[0],) or int(labels.min()) < 0
                               or int(labels.max()) >= model_config.num_classes):
        raise MemgeoError(f"labels must be (N,) integers in [0, {model_config.num_classes})", "fix the labels")

    torch.manual_seed(cfg.seed)
    net = build_model(model_config)

    def label_cond(module: DiffusionModel, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        if labels is None:
            return None
        cond = labels[idx].clone()
        drop = torch.rand(idx.shape[0], generator=gen) < cfg.cond_drop
        cond[drop] = NULL_CLASS
        return cond

    meta = {"model_config": model_config.model_dump_json(), **(extra_metadata or {})}
    return fit(net, cfg, data, label_cond, out_dir, meta=meta, config_keys=("model_config",),
               save_inference=save_model, progress=progress, resume=resume, on_log=on_log)


def fit(net: DiffusionModel, cfg: TrainConfig, data: torch.Tensor,
        cond_fn: Callable[[DiffusionModel, torch.Tensor, torch.Generator], torch.Tensor | None],
        out_dir: str | Path | None, *, meta: dict[str, str], config_keys: tuple[str, ...],
        save_inference: Callable[[DiffusionModel, Path, dict[str, str]], object],
        progress: bool | str = True, resume: bool = True,
        on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """The denoising score matching loop shared by :func:`train` and the caption model's trainer.

    Parameters
    ----------
    net : DiffusionModel
        Freshly built network (seeded by the caller); trained in place, its EMA copy is returned.
    data : Tensor, shape (N, *data_shape)
    cond_fn : callable(module, idx, generator) -> cond or None
        The condition batch for training rows ``idx`` (B,), condition dropout included; called with
        the network being trained so that a learned condition encoder receives gradients. It may
        draw from ``generator`` (after the step's indices, times and noise).
    meta : dict of str
        Checkpoint metadata; ``train_config`` is added. The keys in ``config_keys`` (and the
        training config, except ``steps``) must match a saved state for a resume.
    save_inference : callable(ema, folder, metadata)
        Writes the inference checkpoint (e.g. :func:`~memgeo.models.checkpoint.save_model`).
    """
    data = data.to(dtype=next(net.parameters()).dtype)  # e.g. float64 points for a float32 net
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    meta = {**meta, "train_config": cfg.model_dump_json()}
    log: list[dict] = []
    start = 0
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and resume and (out / STATE_FILE).exists():
        state_meta = read_metadata(out / STATE_FILE)
        # Every setting must match except ``steps``: a finished run may be extended to more steps.
        if (any(state_meta.get(k) != meta[k] for k in config_keys)
                or _without_steps(state_meta.get("train_config")) != _without_steps(meta["train_config"])):
            raise MemgeoError(f"{out} holds a checkpoint trained with a different config",
                              "use a new --out folder or the same settings to resume")
        start = int(state_meta["step"])
        if start > cfg.steps:
            raise MemgeoError(f"{out} holds a checkpoint at step {start}, beyond steps={cfg.steps}",
                              f"pass steps >= {start} or use a new --out folder")
        _restore(load_tensors(out / STATE_FILE), net, ema, opt, gen)
        log_file = out / "train_log.json"
        if log_file.exists():
            log = json.loads(log_file.read_text())

    n = data.shape[0]
    sch = net.schedule
    t0 = time.perf_counter()

    def checkpoint(step: int) -> None:
        if out is None:
            return
        step_meta = {**meta, "step": str(step)}
        save_inference(ema, out, step_meta)
        save_tensors(out / STATE_FILE, _state_tensors(net, ema, opt, gen), step_meta)
        write_csv(out / "train_log.csv", log)
        write_json(out / "train_log.json", log)

    net.train()
    running, n_running = 0.0, 0  # n_running: losses summed since the last log entry (fewer after a resume)
    desc = progress if isinstance(progress, str) else "training diffusion model"
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc=desc)
    for step in bar:
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        x0 = data[idx]
        t = cfg.t_min + (1 - cfg.t_min) * torch.rand(cfg.batch_size, generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        ab = expand_like(sch.alpha_bar(t), x0)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        cond = cond_fn(net, idx, gen)
        loss = torch.mean((net.eps(xt, t, cond) - noise) ** 2)
        if not torch.isfinite(loss):
            raise MemgeoError(f"training diverged at step {step} (loss {float(loss)})", "lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.lr_warmup, 1))
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pn, 1 - decay)
        running += loss.item()
        n_running += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            entry = {"step": done, "loss": running / n_running, "seconds": time.perf_counter() - t0}
            log.append(entry)
            running, n_running = 0.0, 0
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
            if on_log is not None:
                on_log(entry)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            checkpoint(done)
    ema.eval()
    return TrainResult(model=ema, log=log, steps_done=cfg.steps - start, resumed_from=start,
                       seconds=time.perf_counter() - t0)
