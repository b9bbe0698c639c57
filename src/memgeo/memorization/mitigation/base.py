"""Shared pieces of the prompt-level mitigations: the result type, cost tally and a guided DDIM loop.

A mitigation changes *how* a prompt model is sampled so that memorized prompts stop reproducing
their training image: it may change the initial noise (SAIL, Han), the encoded prompt (Wen) or the
guidance schedule (Jain). Every method is a small class with its hyper-parameters in ``__init__``
and one entry point, :meth:`Mitigation.generate`, which returns a :class:`MitigationResult`.

Cost is counted, not assumed: every network call a method makes goes through
:meth:`CostTally.eps_pair`, which adds the rows it evaluated to the per-generation tally
(``nfe``: forward evaluations of one sample; ``nbe``: backward passes through one sample).
A classifier-free guided step costs 2 forward evaluations (conditional + unconditional).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from memgeo.errors import MemgeoError
from memgeo.memorization.prompt_scores.base import to_native
from memgeo.models.base import DiffusionModel, denoise_pair
from memgeo.models.sampling import model_grid, sample


@dataclass
class MitigationResult:
    """Output of :meth:`Mitigation.generate` for a batch of B generations.

    Attributes
    ----------
    samples : Tensor, shape (B, *data_shape)
        Final generations (the denoised prediction at the last time, as :func:`sample_ddim`).
    noise : Tensor, shape (B, *data_shape)
        The initial noise x_T actually sampled from (after any selection or optimisation).
    nfe : numpy.ndarray, shape (B,)
        Network forward evaluations spent on each generation (one evaluation = one sample through
        the noise predictor; a guided step is 2).
    nbe : numpy.ndarray, shape (B,)
        Backward passes (vector-Jacobian products through the network) spent on each generation.
    diagnostics : dict of str to numpy.ndarray, each shape (B,)
        Method-specific per-generation numbers (objective before/after, switch step, ...).
    """

    samples: torch.Tensor
    noise: torch.Tensor
    nfe: np.ndarray
    nbe: np.ndarray
    diagnostics: dict[str, np.ndarray] = field(default_factory=dict)


class CostTally:
    """Per-generation counters of forward and backward network evaluations for a batch of B."""

    def __init__(self, batch: int) -> None:
        self.nfe = np.zeros(batch, dtype=np.int64)
        self.nbe = np.zeros(batch, dtype=np.int64)

    def eps_pair(self, model: DiffusionModel, x: torch.Tensor, t: float, cond: torch.Tensor,
                 rows: torch.Tensor | np.ndarray | None = None, backward: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps_c, eps_u), each (b, *data_shape), in one batched call on the stacked 2b rows.

        ``rows`` are the batch indices (into the tally) of the b rows of ``x``; ``None`` means all.
        ``backward=True`` records that the caller will back-propagate through this call.
        """
        e_c, e_u, _, _ = self.denoise_pair(model, x, t, cond, rows, backward)
        return e_c, e_u

    def denoise_pair(self, model: DiffusionModel, x: torch.Tensor, t: float, cond: torch.Tensor,
                     rows: torch.Tensor | np.ndarray | None = None, backward: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(eps_c, eps_u, x0_c, x0_u) from one batched call; counted as :meth:`eps_pair`."""
        self.count(rows, 2, backward)
        return denoise_pair(model, x, t, cond)

    def count(self, rows: torch.Tensor | np.ndarray | None, evals: int, backward: bool = False) -> None:
        """Add ``evals`` forward (and, with ``backward``, as many backward) evaluations to ``rows``."""
        idx = np.arange(self.nfe.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        np.add.at(self.nfe, idx, evals)
        if backward:
            np.add.at(self.nbe, idx, evals)

    def noise_difference(self, model: DiffusionModel, x: torch.Tensor, t: float, cond: torch.Tensor,
                         rows: torch.Tensor | np.ndarray | None = None, backward: bool = False) -> torch.Tensor:
        """The prompt's effect on the prediction, shape (b, *data_shape); counted as :meth:`eps_pair`.

        d_eps = eps_c - eps_u, except on flow-matching models, where eps = x for every prompt at the
        first step (sigma = 1): there the velocity difference d_u (the native output) is used.
        """
        e_c, e_u, x0_c, x0_u = self.denoise_pair(model, x, t, cond, rows, backward)
        if model.prediction_type == "flow":
            return to_native(model, t, e_c - e_u, x0_c - x0_u)
        return e_c - e_u


def first_time(model: DiffusionModel, steps: int) -> float:
    """memgeo time of the first sampling step on the model's grid (a pipeline's ``scheduler.timesteps[0]``)."""
    return float(model_grid(model, int(steps)).ts[0])


def sample_evals(model: DiffusionModel, steps: int, guidance: float) -> int:
    """Forward evaluations per generation of plain guided sampling on the model's grid."""
    return (1 if guidance in (0.0, 1.0) else 2) * model_grid(model, int(steps)).evaluations


def row_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row of a (B, ...) tensor, shape (B,)."""
    return v.flatten(1).norm(dim=1)


@torch.no_grad()
def sample_guided(model: DiffusionModel, x: torch.Tensor, cond: torch.Tensor, tally: CostTally, *, steps: int,
                  guidance: float, switch_step: np.ndarray | None = None, pre_guidance: float = 0.0,
                  clip: tuple[float, float] | None = None,
                  update_switch: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
                  ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Deterministic DDIM with per-row guidance ``pre_guidance`` before ``switch_step`` and ``guidance`` after.

    The sampler core (:func:`memgeo.models.sampling.sample`) on the model's grid with both branches
    evaluated at every step (2 forward evaluations per row and step), so that the guidance norm
    ||eps_c - eps_u|| is recorded along the trajectory; the per-row weight is a guidance function.

    Parameters
    ----------
    x : Tensor, shape (B, *data_shape)
        Initial noise at the grid's first time.
    cond : Tensor, shape (B, L, E)
    switch_step : numpy.ndarray of int, shape (B,), optional
        Row b uses ``pre_guidance`` at steps k < switch_step[b] and ``guidance`` from then on;
        ``None`` means guidance everywhere.
    update_switch : callable(k, norms, switch), optional
        Called at step k after the norms of that step are recorded (``norms`` is (B, E), filled up
        to column k); may change ``switch`` (B,) in place to decide the switch online.

    Returns
    -------
    samples : Tensor, shape (B, *data_shape)
    norms : numpy.ndarray, shape (B, E)
        ||eps_c - eps_u|| at every network evaluation (E = steps, plus the final denoise on memgeo's grid).
    switch : numpy.ndarray of int, shape (B,)
        The switch steps used (``E`` or more: guidance never switched on).
    """
    b = x.shape[0]
    grid = model_grid(model, int(steps))
    switch = np.zeros(b, dtype=np.int64) if switch_step is None else np.array(switch_step, dtype=np.int64)
    norms = np.zeros((b, grid.evaluations))

    def weight(info: dict[str, Any]) -> torch.Tensor:
        k = info["step"]
        norms[:, k] = row_norm(info["eps_cond"] - info["eps_uncond"]).double().cpu().numpy()
        if update_switch is not None:
            update_switch(k, norms, switch)
        return torch.as_tensor(np.where(k >= switch, guidance, pre_guidance), dtype=x.dtype, device=x.device)

    res = sample(model, x, grid=grid, cond=cond, guidance=weight, both=True, clip=clip,
                 callback=lambda info: tally.count(None, info["forward_evals"]))
    return res.x0, norms, switch


class Mitigation:
    """Base class of mitigation methods; subclasses set ``name``, ``summary`` and implement :meth:`generate`.

    ``__init__`` only stores and checks hyper-parameters (no work); :meth:`params` returns them
    for configs and reports.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def params(self) -> dict[str, Any]:
        """Hyper-parameters as a JSON-able dict."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def generate(self, model: DiffusionModel, cond: torch.Tensor, x_T: torch.Tensor, *, steps: int = 50,
                 guidance: float = 3.0, generator: torch.Generator | None = None,
                 clip: tuple[float, float] | None = None) -> MitigationResult:
        """Generate one sample per row of ``cond`` starting from (or near) ``x_T``.

        Parameters
        ----------
        model : PromptDiffusionModel (any DiffusionModel with a ``null_cond``)
        cond : Tensor, shape (B, L, E)
            Encoded prompts, one per generation.
        x_T : Tensor, shape (B, *data_shape)
            Standard Gaussian initial noise (the baseline's; methods may replace it).
        steps : int
            Sampling steps on the model's grid (memgeo's models: DDIM from t = 1 to 1e-3; pipeline folders:
            the scheduler's ``timesteps``). First-step objectives are evaluated at the grid's first time.
        guidance : float
            Classifier-free guidance weight of the sampling phase.
        generator : torch.Generator, optional
            Randomness a method needs beyond ``x_T`` (extra candidate noises).
        clip : (low, high), optional
            Clamp the x0 prediction at every sampling step (the data range).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def check_inputs(model: DiffusionModel, cond: torch.Tensor, x_T: torch.Tensor, steps: int) -> None:
    """Shared validation of :meth:`Mitigation.generate` arguments."""
    if x_T.ndim < 2 or cond.shape[0] != x_T.shape[0]:
        raise MemgeoError(f"cond has {cond.shape[0]} rows but x_T has shape {tuple(x_T.shape)}",
                          "pass one initial noise per prompt row, shape (B, *data_shape)")
    model.check_input(x_T, cond)
    if int(steps) < 1:
        raise MemgeoError(f"steps={steps}", "use at least one sampling step")


def start_first_step(model: DiffusionModel, cond: torch.Tensor, x_T: torch.Tensor,
                     steps: int) -> tuple[float, CostTally]:
    """Prologue of the first-step methods: :func:`check_inputs`, then ``(first_time, CostTally(B))``."""
    check_inputs(model, cond, x_T, steps)
    return first_time(model, steps), CostTally(x_T.shape[0])


def adam_minimise_rows(start: torch.Tensor, loss_rows: Callable[[torch.Tensor, np.ndarray], torch.Tensor], *,
                       iters: int, lr: float, target: float | None = None, betas: tuple[float, float] = (0.9, 0.999),
                       eps: float = 1e-8) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Minimise an independent loss per row with Adam, stopping each row once its loss <= ``target``.

    Only rows still running are evaluated (``loss_rows(params_of_those_rows, their_indices)`` must
    return their (b,) losses, differentiable), so early-stopped rows cost nothing more. The Adam
    moments are per element, exactly as :class:`torch.optim.Adam` on that row alone. For float16 /
    bfloat16 inputs the iterate and moments are kept in float32 (master weights), as mixed-precision
    training does; the loss is evaluated in the input's dtype.

    Parameters
    ----------
    start : Tensor, shape (B, ...)
    iters : int
        Maximum number of Adam updates per row.

    Returns
    -------
    params : Tensor, shape (B, ...)
        The final iterate of every row (detached).
    loss_first, loss_last : numpy.ndarray, shape (B,)
        Loss at the start and the last loss evaluated (before the last update if the row ran out
        of iterations; at the stopping point if it reached ``target``).
    updates : numpy.ndarray of int, shape (B,)
        Adam updates applied to each row (each preceded by one loss evaluation; one more
        evaluation checks the last iterate, so a row costs ``updates + 1`` loss evaluations).
    backprops : numpy.ndarray of int, shape (B,)
        Backward passes each row took part in (equal to ``updates`` except for rows that stopped
        in a sub-batch where others went on).
    """
    # Mixed precision: the iterate and the moments live in float32 when the model runs in float16 or
    # bfloat16 (where eps = 1e-8 and small steps underflow); the loss sees the iterate in the model's dtype.
    work = torch.float32 if start.dtype in (torch.float16, torch.bfloat16) else start.dtype
    p = start.detach().clone().to(work)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    b = p.shape[0]
    updates = np.zeros(b, dtype=np.int64)
    first = np.full(b, np.nan)
    last = np.full(b, np.nan)
    active = np.ones(b, dtype=bool)
    backprops = np.zeros(b, dtype=np.int64)
    for _ in range(iters + 1):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        sel = torch.as_tensor(idx)
        with torch.enable_grad():
            q = p[sel].to(start.dtype, copy=True).requires_grad_(True)
            loss = loss_rows(q, idx)
            values = loss.detach().double().cpu().numpy()
            first[idx] = np.where(np.isnan(first[idx]), values, first[idx])
            last[idx] = values
            done = (values <= target) if target is not None else np.zeros(idx.size, dtype=bool)
            done |= updates[idx] >= iters
            if done.all():
                active[idx] = False
                break
            (grad,) = torch.autograd.grad(loss.sum(), q)
            backprops[idx] += 1  # the backward pass runs through every row of the sub-batch
        go = torch.as_tensor(~done)
        g = grad[go].to(work)
        rows = sel[go]
        updates[idx[~done]] += 1
        m[rows] = betas[0] * m[rows] + (1 - betas[0]) * g
        v[rows] = betas[1] * v[rows] + (1 - betas[1]) * g * g
        n = torch.as_tensor(updates[idx[~done]], dtype=p.dtype).reshape((-1,) + (1,) * (p.ndim - 1))
        m_hat = m[rows] / (1 - betas[0] ** n)
        v_hat = v[rows] / (1 - betas[1] ** n)
        p[rows] = p[rows] - lr * m_hat / (v_hat.sqrt() + eps)
        active[idx[done]] = False
    return p.detach().to(start.dtype), first, last, updates, backprops
