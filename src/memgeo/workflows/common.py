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
