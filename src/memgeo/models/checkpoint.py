"""Safetensors checkpoints that carry their own config.

A checkpoint folder holds
``model.safetensors``  inference weights (the EMA copy) with the model config in the metadata, and
``state.safetensors``  everything needed to resume training (raw weights, optimizer moments, RNG
                       state, step) with the training config in the metadata.
Both are written atomically, so an interrupted run leaves the previous complete checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, TypeAdapter, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from memgeo.errors import MemgeoError
from memgeo.io import atomic_write_bytes
from memgeo.models.base import DiffusionModel
from memgeo.models.nets import ModelConfig, build_model

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
FORMAT = "memgeo-checkpoint-1"

_config_adapter: TypeAdapter[Any] = TypeAdapter(ModelConfig)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomically save a flat dict of tensors with string metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata={"format": FORMAT, **metadata}))


def read_metadata(path: Path) -> dict[str, str]:
    """Metadata of a safetensors file, with clear errors for missing or corrupt files."""
    from safetensors import safe_open

    if not path.is_file():
        raise MemgeoError(f"checkpoint file {path} does not exist", "train a model first or fix the path")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise MemgeoError(f"checkpoint file {path} is corrupt or not safetensors ({exc})", "re-train or restore it") from exc


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load all tensors of a safetensors file (CPU)."""
    read_metadata(path)  # gives the clear error first
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MemgeoError(f"checkpoint file {path} is corrupt ({exc})", "re-train or restore it") from exc


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, read from its header (no data loaded)."""
    from safetensors import safe_open

    read_metadata(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(int(d) for d in fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise MemgeoError(f"checkpoint file {path} is corrupt ({exc})", "re-train or restore it") from exc


def check_weight_shapes(build: Callable[[Any], torch.nn.Module], config: Any, path: Path) -> None:
    """Compare the tensors in ``path`` with those ``build(config)`` would have, without allocating them.

    The module is built on PyTorch's ``meta`` device (shapes only), so a config that claims an
    enormous width is refused by the mismatch with the stored weights instead of being allocated.

    Raises
    ------
    MemgeoError
        Missing, unexpected or differently shaped tensors, naming the first few.
    """
    try:
        with torch.device("meta"):
            skeleton = build(config)
    except Exception:  # noqa: BLE001 - a builder that cannot run on meta is checked after loading instead
        return
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    stored = tensor_shapes(path)
    problems = [f"{k} missing" for k in expected if k not in stored]
    problems += [f"{k} unexpected" for k in stored if k not in expected]
    problems += [f"{k} is {stored[k]} but the config makes {v}" for k, v in expected.items()
                 if k in stored and stored[k] != v]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise MemgeoError(f"weights in {path} do not match its config ({'; '.join(problems[:3])}{more})",
                          "re-train or restore the checkpoint; its metadata or weights were altered")


def parse_model_config(text: str, source: str) -> ModelConfig:
    """Parse a model config from JSON text, naming ``source`` on failure."""
    try:
        return _config_adapter.validate_python(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise MemgeoError(f"model config in {source} is invalid ({first})", "re-train or restore the checkpoint") from exc


def save_model(model: DiffusionModel, folder: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``model.safetensors`` (weights + config) into ``folder``; returns the file path."""
    folder = Path(folder)
    path = folder / MODEL_FILE
    meta = {"model_config": model.config.model_dump_json(), **(extra_metadata or {})}
    save_tensors(path, dict(model.state_dict()), meta)
    return path


def load_configured_module(folder: str | Path, file_name: str, config_key: str,
                           parse_config: Callable[[str, str], Any], build: Callable[[Any], torch.nn.Module],
                           missing: tuple[str, str]) -> torch.nn.Module:
    """Load any module saved as weights + JSON config under ``config_key`` in the safetensors metadata.

    Shared by diffusion models, caption models and classifiers: ``parse_config(text, source)`` turns
    the JSON into a config (raising :class:`MemgeoError`), ``build(config)`` makes the module, and
    ``missing`` is the (problem, fix) pair reported when the file has no such config. The module is
    returned in eval mode without parameter gradients.
    """
    path = Path(folder)
    if path.is_dir():
        path = path / file_name
    meta = read_metadata(path)
    if config_key not in meta:
        raise MemgeoError(f"{path} {missing[0]}", missing[1])
    config = parse_config(meta[config_key], str(path))
    check_weight_shapes(build, config, path)  # before the real module is allocated
    module = build(config)
    tensors = load_tensors(path)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise MemgeoError(f"weights in {path} do not match its config ({first})", "re-train; the file was altered") from exc
    # Inference only: without requires_grad the geometry's torch.func transforms do not also
    # record a graph over the parameters (about 3x faster and lighter, see docs/benchmarks.md).
    return module.eval().requires_grad_(False)


def pydantic_config_parser(cls: type[BaseModel], what: str) -> Callable[[str, str], Any]:
    """A ``parse_config`` for :func:`load_configured_module` validating JSON text into ``cls``."""
    def parse(text: str, source: str) -> Any:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            first = str(exc).splitlines()[0]
            raise MemgeoError(f"{what} config in {source} is invalid ({first})", "re-train or restore the checkpoint") from exc
    return parse


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> DiffusionModel:
    """Load a trained model from a checkpoint folder (or a ``model.safetensors`` path).

    Raises
    ------
    MemgeoError
        If the file is missing or corrupt, or its weights do not match its config.
    """
    model = load_configured_module(folder, MODEL_FILE, "model_config", parse_model_config, build_model,
                                   ("has no memgeo model config in its metadata", "is it a memgeo checkpoint?"))
    return model.to(device)
