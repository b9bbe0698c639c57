"""Pieces every run folder shares: resolved config, provenance, logging, safe evaluation."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from memgeo.errors import MemgeoError
from memgeo.io import provenance, write_json
from memgeo.memorization import evaluate_detector


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
