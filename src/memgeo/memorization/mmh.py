"""The manifold memorization hypothesis (Ross, Kamkari et al., 2024) as a per-sample classifier.

A well-fitted model memorizes x when the dimension of its learned manifold at x, LID_model(x), is
abnormally small. Comparing with the dimension of the data there, LID_data(x), says why:

* **DD-Mem** (data-driven): LID_data(x) is small too; the data itself is degenerate at x
  (duplicates, atoms). Only changing the data fixes it.
* **OD-Mem** (overfitting-driven): LID_data(x) is not small; the model collapsed a region that the
  data spreads out. Better training / regularization fixes it.
* **none**: LID_model(x) is not small.

Rule, with thresholds in LID units (both are reported with every audit):

    memorized  iff  LID_model(x) < model_low
    DD-Mem     iff  memorized and LID_data(x) <  data_low
    OD-Mem     iff  memorized and LID_data(x) >= data_low

Default thresholds are relative to the data: ``rel * typical`` for both (rel = 0.25), i.e. "less
than a quarter of the typical dimension", where ``typical`` is the median LID of the reference data
itself when the caller measured it (recommended: memorized samples then cannot drag the scale
down) and otherwise the median LID_data over the audited points; pass absolute values to override. ``deficit = LID_data - LID_model`` is reported as a continuous score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from memgeo.errors import MemgeoError

MMH_LABELS = ("none", "OD-Mem", "DD-Mem")


@dataclass(frozen=True)
class MMHThresholds:
    """Thresholds of the MMH rule; ``None`` means ``rel * typical`` (see module docstring)."""

    model_low: float | None = None
    data_low: float | None = None
    rel: float = 0.25
    typical: float | None = None

    def resolve(self, lid_data: np.ndarray) -> tuple[float, float]:
        """Absolute (model_low, data_low) for these LID_data values."""
        if not 0 < self.rel < 1:
            raise MemgeoError(f"rel={self.rel} is outside (0, 1)", "pass a fraction such as 0.25")
        base = self.rel * (float(np.median(lid_data)) if self.typical is None else float(self.typical))
        return (base if self.model_low is None else float(self.model_low),
                base if self.data_low is None else float(self.data_low))


@dataclass
class MMHAudit:
    """Per-sample audit result.

    Attributes
    ----------
    lid_model, lid_data, deficit : ndarray, shape (N,)
    label : ndarray of str, shape (N,)
        One of :data:`MMH_LABELS` per sample.
    model_low, data_low : float
        The thresholds used.
    """

    lid_model: np.ndarray
    lid_data: np.ndarray
    deficit: np.ndarray
    label: np.ndarray
    model_low: float
    data_low: float

    def counts(self) -> dict[str, int]:
        """Number of samples per label (all labels present, zeros included)."""
        return {k: int((self.label == k).sum()) for k in MMH_LABELS}

    def to_rows(self) -> list[dict]:
        """One dict per sample for CSV."""
        return [{"lid_model": float(self.lid_model[i]), "lid_data": float(self.lid_data[i]),
                 "deficit": float(self.deficit[i]), "mmh_label": str(self.label[i])} for i in range(len(self.label))]

    def summary(self) -> dict:
        return {"counts": self.counts(), "model_low": self.model_low, "data_low": self.data_low,
                "mean_lid_model": float(self.lid_model.mean()), "mean_lid_data": float(self.lid_data.mean())}


def _as_array(v: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    a = a.astype(np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise MemgeoError(f"{name} contains NaN/inf", "check the LID estimates")
    return a


def mmh_audit(lid_model: torch.Tensor | np.ndarray, lid_data: torch.Tensor | np.ndarray,
              thresholds: MMHThresholds | None = None) -> MMHAudit:
    """Label every sample none / OD-Mem / DD-Mem from its two LID estimates (see module docstring).

    Parameters
    ----------
    lid_model : array, shape (N,)
        LID of the model's learned distribution at each sample (e.g. FLIPD).
    lid_data : array, shape (N,)
        LID of the data around each sample (model-free estimate, or known for synthetic data).
    """
    m = _as_array(lid_model, "lid_model")
    d = _as_array(lid_data, "lid_data")
    if m.shape != d.shape or m.size == 0:
        raise MemgeoError(f"lid_model has {m.size} values and lid_data {d.size}", "pass one of each per sample")
    model_low, data_low = (thresholds or MMHThresholds()).resolve(d)
    memorized = m < model_low
    label = np.where(memorized, np.where(d < data_low, "DD-Mem", "OD-Mem"), "none")
    return MMHAudit(lid_model=m, lid_data=d, deficit=d - m, label=label, model_low=model_low, data_low=data_low)
