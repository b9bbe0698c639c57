"""A transparent wrapper that counts network evaluations, so costs are measured, not assumed."""

from __future__ import annotations

import torch

from memgeo.models.base import DiffusionModel


class CountingModel(DiffusionModel):
    """Delegates to ``model`` and counts calls to :meth:`eps`.

    Attributes
    ----------
    calls : int
        Number of (batched) noise-predictor calls, including those traced by torch.func
        transforms (a ``vmap(jacrev)`` counts one call: one batched forward plus the reverse passes).
    rows : int
        Sum of the batch sizes seen outside vmap (under vmap a call reports its per-sample shape).
    """

    def __init__(self, model: DiffusionModel) -> None:
        super().__init__()
        self.inner = model
        self.schedule = model.schedule
        self.data_shape = tuple(model.data_shape)
        self.num_classes = model.num_classes
        self.prediction_type = model.prediction_type
        self.calls = 0
        self.rows = 0

    def eps(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        self.rows += int(x.shape[0])
        return self.inner.eps(x, t, cond)

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if type(self.inner).denoise is DiffusionModel.denoise:
            return super().denoise(x, t, cond)  # through self.eps, counted there
        self.calls += 1
        self.rows += int(x.shape[0])
        return self.inner.denoise(x, t, cond)

    def native_output(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None
                      ) -> torch.Tensor:
        self.calls += 1
        self.rows += int(x.shape[0])
        return self.inner.native_output(x, t, cond)

    def sampling_grid(self, steps: int):
        return self.inner.sampling_grid(steps)

    def reset(self) -> None:
        """Zero the counters."""
        self.calls = 0
        self.rows = 0
