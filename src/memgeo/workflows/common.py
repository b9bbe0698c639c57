"""Pieces every run folder shares: resolved config, provenance, logging, safe evaluation."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from memgeo.errors import MemgeoError
from memgeo.models.base import NULL_CLASS, DiffusionModel
from memgeo.io import provenance, write_json
from memgeo.memorization import evaluate_detector
from memgeo.report import Report, save_figure


def say(msg: str) -> None:
    """One progress line on stderr (stdout stays free for machine-readable output)."""
    print(f"[memgeo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_run(out: str | Path, config: Any, seed: int | None, **extra: Any) -> Path:
    """Create the output folder and write ``config.json`` (resolved) and ``provenance.json``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MemgeoError(f"--out {out} exists and is not a folder", "choose a folder path")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    write_json(out / "provenance.json", provenance(seed, **extra))
    return out


def evaluate_or_reason(scores: np.ndarray, labels: np.ndarray, name: str, seed: int = 0) -> dict[str, Any]:
    """Detection metrics as a dict, or ``{"auroc": None, "reason": ...}`` when undefined (one class only)."""
    try:
        return evaluate_detector(scores, labels, name, seed=seed).to_dict()
    except MemgeoError as exc:
        return {"name": name, "auroc": None, "reason": exc.problem, "n_pos": int(np.sum(labels)),
                "n_neg": int(np.size(labels) - np.sum(labels))}


def prefixed(d: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{prefix + key: value}`` for flat per-sample CSV columns."""
    return {f"{prefix}{k}": v for k, v in d.items()}


def figure_to_report(report: Report, fig: Figure, path: Path, *, caption: str | None = None,
                     heading: str | None = None) -> Path:
    """Save ``fig`` as a PNG at ``path`` (atomically) and embed the same image in ``report``."""
    save_figure(fig, path)
    report.add_figure(path.read_bytes(), caption=caption, heading=heading)
    return path


def masked_mean(values: torch.Tensor | np.ndarray, mask: np.ndarray) -> float | None:
    """Mean of ``values[mask]`` as a float, or ``None`` when the mask selects nothing."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return float(v[mask].astype(float).mean())


def point_conditions(model: DiffusionModel, n: int, cond: int | None = None,
                     labels: str | None = None) -> torch.Tensor | None:
    """The (n,) condition tensor for ``--cond C`` (one class for all points) or ``--labels FILE.npy``
    (one class per point), validated against the model; ``None`` when neither is given."""
    if cond is not None and labels is not None:
        raise MemgeoError("give at most one of --cond and --labels", "drop one")
    if cond is None and labels is None:
        return None
    if model.num_classes is None:
        raise MemgeoError("a condition was given but the model is unconditional", "drop --cond / --labels")
    if labels is not None:
        p = Path(labels)
        if not p.is_file():
            raise MemgeoError(f"labels file {p} does not exist", "check --labels")
        try:
            values = torch.as_tensor(np.load(p, allow_pickle=False))
        except (ValueError, OSError) as exc:
            raise MemgeoError(f"labels file {p} is not a readable .npy array ({exc})", "save it with numpy.save") from exc
        if values.shape != (n,):
            raise MemgeoError(f"labels file {p} has shape {tuple(values.shape)}, expected ({n},)",
                              "give one label per point")
        if values.is_floating_point() and not torch.equal(values, values.round()):
            raise MemgeoError(f"labels file {p} holds non-integer values", "save class indices")
    else:
        values = torch.full((n,), int(cond))
    values = values.long()
    bad = (values < 0) & (values != NULL_CLASS) | (values >= model.num_classes)
    if bool(bad.any()):
        raise MemgeoError(f"condition {int(values[bad][0])} is not a class of the model (0..{model.num_classes - 1})",
                          "pick valid classes")
    return values
