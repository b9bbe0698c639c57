"""Model SPEC strings shared by the CLI and configs.

* ``PATH`` (a folder with ``model.safetensors``, or the file itself): a trained memgeo checkpoint;
* ``empirical:DATA.npy``: the exact score of the Gaussian-smoothed points in DATA.npy (N, D);
* ``gaussian:MEAN.npy,COV.npy``: the analytic score of N(mean, cov).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from memgeo.errors import MemgeoError, check_finite
from memgeo.models.base import DiffusionModel
from memgeo.models.checkpoint import MODEL_FILE, load_model
from memgeo.models.reference import EmpiricalMixtureScore, GaussianScore

MODEL_SPECS = ("PATH (checkpoint folder)", "empirical:DATA.npy", "gaussian:MEAN.npy,COV.npy")


def _load_array(path: str, what: str) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        raise MemgeoError(f"{what} file {p} does not exist", "check the path in the model SPEC")
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise MemgeoError(f"{what} file {p} is not a readable .npy array ({exc})", "save it with numpy.save") from exc
    t = torch.as_tensor(np.asarray(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32))
    check_finite(t, f"{what} file {p}")
    return t


def load_model_spec(spec: str, device: str | torch.device = "cpu") -> DiffusionModel:
    """Resolve a model SPEC string (see module docstring) to a :class:`DiffusionModel`."""
    if spec.startswith("empirical:"):
        data = _load_array(spec.split(":", 1)[1], "empirical data")
        if data.ndim != 2:
            raise MemgeoError(f"empirical data must be (N, D), got shape {tuple(data.shape)}", "reshape to one point per row")
        return EmpiricalMixtureScore(data).to(device)
    if spec.startswith("gaussian:"):
        parts = spec.split(":", 1)[1].split(",")
        if len(parts) != 2:
            raise MemgeoError(f"bad gaussian SPEC {spec!r}", "use gaussian:MEAN.npy,COV.npy")
        return GaussianScore(_load_array(parts[0], "mean"), _load_array(parts[1], "covariance")).to(device)
    p = Path(spec)
    if p.is_dir() or p.suffix == ".safetensors":
        if p.is_dir() and not (p / MODEL_FILE).exists():
            raise MemgeoError(f"folder {p} has no {MODEL_FILE}", "point --model at a memgeo checkpoint folder")
        return load_model(p, device)
    if ":" in spec:
        raise MemgeoError(f"unknown model SPEC kind {spec.split(':', 1)[0]!r}", f"use one of: {', '.join(MODEL_SPECS)}")
    raise MemgeoError(f"model {spec!r} is neither a checkpoint folder nor a known SPEC",
                      f"use one of: {', '.join(MODEL_SPECS)}")
