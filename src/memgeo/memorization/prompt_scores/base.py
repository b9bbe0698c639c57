"""The contract of a prompt-level memorization score, its result, the registry and shared helpers.

A score answers "does this prompt make the model copy a training image?" from a few network
evaluations at the start of sampling. Every score

* has its hyper-parameters in ``__init__`` (no work there) and a fixed sign: **higher means more
  likely memorized**, never flipped after looking at labels;
* is computed by ``compute(model, cond, x_T, sampling=..., cache=...) -> ScoreResult`` on encoded
  prompts ``cond`` (B, L, E) and initial noises ``x_T`` (B, n, *data_shape), one row of noise per
  generation; the value of a prompt is the mean over its n generations;
* reports its cost in network passes per prompt: forward evaluations plus derivative passes
  (a JVP tangent pass, a VJP backward pass; a double-VJP J v counts two), counted by the algorithm
  and checked against :class:`CountingPromptModel` in the tests.

To add a score, subclass :class:`PromptScore`, give it a unique ``name``, implement
:meth:`PromptScore.rows` and decorate it with :func:`register_prompt_score`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from memgeo.errors import MemgeoError, Registry, check_choice
from memgeo.models.base import DiffusionModel, as_time, model_dtype
from memgeo.models.counting import CountingModel
from memgeo.models.sampling import SamplingGrid, model_grid


class SamplingSettings(BaseModel):
    """The sampler the scores look at: guided DDIM with CFG weight ``guidance`` on the model's grid.

    "Step k" is the k-th network evaluation of that sampler: on a pipeline folder the scheduler's
    own ``timesteps[k]`` after ``set_timesteps(steps)`` (SD 1.x, 50 DDIM steps: 981, 961, ...), on
    memgeo's own models the uniform continuous grid from t = 1. An explicit ``t_max`` replaces the
    model's grid by memgeo's uniform grid from ``t_max`` to ``t_min`` (``--t-first``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(50, ge=1)
    guidance: float = 3.0
    t_max: float | None = Field(None, gt=0, le=1)
    t_min: float = Field(1e-3, gt=0, lt=1)
    clip: tuple[float, float] | None = None

    def grid(self, model: DiffusionModel) -> SamplingGrid:
        """The grid of this sampler on ``model`` (:func:`memgeo.models.sampling.model_grid`)."""
        return model_grid(model, self.steps, self.t_max, self.t_min)

    def first_time(self, model: DiffusionModel) -> float:
        """memgeo time of step one (the first network evaluation)."""
        return float(self.grid(model).ts[0])


@dataclass
class ScoreResult:
    """Values of one score for a batch of B prompts with n generations each.

    Attributes
    ----------
    name : str
        Registry name of the score (higher = more likely memorized).
    values : Tensor, shape (B,), float64
        Per-prompt score: the mean of ``per_generation`` over generations.
    per_generation : Tensor, shape (B, n), float64
    forward_evals : float
        Network forward evaluations per prompt (all n generations).
    derivative_passes : float
        JVP/VJP passes through the network per prompt.
    seconds : float
        Wall-clock time of the whole batch.
    extra : dict of str to Tensor (B, n)
        Side quantities (e.g. the count of flat directions), per generation.
    """

    name: str
    values: torch.Tensor
    per_generation: torch.Tensor
    forward_evals: float
    derivative_passes: float
    seconds: float
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def evals_per_prompt(self) -> float:
        """Network passes per prompt: forward evaluations plus derivative passes."""
        return self.forward_evals + self.derivative_passes

    @property
    def ms_per_prompt(self) -> float:
        return 1000.0 * self.seconds / max(int(self.values.shape[0]), 1)


@dataclass
class RowCost:
    """Cost of one generation (one row): forward evaluations and derivative passes."""

    forward: float
    derivative: float = 0.0


class PromptScore:
    """Base class of prompt-level scores; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    #: True when the score needs the finished generation x_0 (full sampling), not only step one.
    needs_sample: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__`` (for configs and reports)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    def rows(self, model: DiffusionModel, cond: torch.Tensor, x: torch.Tensor, sampling: SamplingSettings,
             cache: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], RowCost]:
        """Per-row values (R,), extra per-row quantities and the cost per row, for R = B * n rows."""
        raise NotImplementedError

    def compute(self, model: DiffusionModel, cond: torch.Tensor, x_T: torch.Tensor, *,
                sampling: SamplingSettings | None = None, cache: dict[str, Any] | None = None) -> ScoreResult:
        """Score B prompts.

        Parameters
        ----------
        model : PromptDiffusionModel
        cond : Tensor, shape (B, L, E)
            Encoded prompts (``model.encode(prompts)``).
        x_T : Tensor, shape (B, n, *data_shape) or (B, *data_shape)
            Initial noise of each generation (n = 1 in the second form).
        sampling : SamplingSettings, optional
        cache : dict, optional
            Shared between the scores of one batch (same cond and x_T): finished samples are
            generated once and reused (``cache["x0"]``).

        Returns
        -------
        ScoreResult
        """
        sampling = sampling or SamplingSettings()
        cache = {} if cache is None else cache
        x_rows, cond_rows, b, n = flatten_generations(model, cond, x_T)
        start = time.perf_counter()
        vals, extra, cost = self.rows(model, cond_rows, x_rows, sampling, cache)
        seconds = time.perf_counter() - start
        per_gen = vals.detach().double().reshape(b, n)
        if not torch.isfinite(per_gen).all():
            raise MemgeoError(f"score {self.name} produced NaN/inf values", "check the model and the sampling settings")
        return ScoreResult(name=self.name, values=per_gen.mean(1), per_generation=per_gen,
                           forward_evals=cost.forward * n, derivative_passes=cost.derivative * n, seconds=seconds,
                           extra={k: v.detach().double().reshape(b, n) for k, v in extra.items()})


#: Every prompt score by ``name``.
PROMPT_SCORES: Registry[type[PromptScore]] = Registry("prompt score")

#: Class decorator adding a score to :data:`PROMPT_SCORES` under ``cls.name``.
register_prompt_score = PROMPT_SCORES.register


def get_prompt_score(name: str, **params: Any) -> PromptScore:
    """Instantiate a registered prompt score by name with hyper-parameters."""
    return PROMPT_SCORES.build(name, **params)


def parse_score_names(text: str | Sequence[str]) -> list[str]:
    """``"wen,jeon"`` or a list -> validated, de-duplicated names in order."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not names:
        raise MemgeoError("no detection score was named", f"pass e.g. --scores {','.join(PROMPT_SCORES)}")
    for s in names:
        if s not in PROMPT_SCORES:
            raise MemgeoError(f"unknown prompt score {s!r}", f"choose from: {', '.join(PROMPT_SCORES)}")
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------------------------
# helpers shared by the scores
# --------------------------------------------------------------------------------------------


class CountingPromptModel(CountingModel):
    """:class:`CountingModel` for prompt models: also delegates the null condition and its checks."""

    def null_cond(self, cond: torch.Tensor) -> torch.Tensor:
        return self.inner.null_cond(cond)

    def check_cond(self, cond: torch.Tensor, batch: int) -> None:
        self.inner.check_cond(cond, batch)


def flatten_generations(model: DiffusionModel, cond: torch.Tensor, x_T: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(B, n, *shape) noise and (B, L, E) cond -> rows (B n, *shape), cond rows (B n, L, E), B, n."""
    shape = tuple(model.data_shape)
    if cond.ndim < 1:
        raise MemgeoError("cond has no batch dimension", "encode the prompts with model.encode(prompts)")
    b = cond.shape[0]
    if tuple(x_T.shape[1:]) == shape:
        x_T = x_T[:, None]
    if x_T.shape[0] != b or tuple(x_T.shape[2:]) != shape:
        raise MemgeoError(f"initial noise has shape {tuple(x_T.shape)}, expected ({b}, n, "
                          f"{', '.join(map(str, shape))})", "draw n noises per prompt (see generation_noise)")
    n = x_T.shape[1]
    model.check_cond(cond, b)
    return x_T.reshape((b * n,) + shape), cond.repeat_interleave(n, dim=0), b, n


def generation_noise(model: DiffusionModel, seeds: Sequence[int], n: int) -> torch.Tensor:
    """Initial noise of n generations per prompt, each prompt from its own seed: (B, n, *data_shape).

    Generation j of a prompt depends only on (seed, j): results do not change with batching or
    order, and the first generations of an n-generation run equal those of a shorter run.
    """
    if n < 1:
        raise MemgeoError(f"generations={n}", "use at least one generation per prompt")
    dtype = model_dtype(model)
    out = [torch.randn((n,) + tuple(model.data_shape), generator=torch.Generator().manual_seed(int(s)), dtype=dtype)
           for s in seeds]
    return torch.stack(out)


#: How a score reads a v-prediction or flow model: "eps" converts every output to the noise prediction
#: (memgeo's default for epsilon and v models), "native" uses the network's own output as the published
#: code does (docs/paper_conventions.md), "auto" is "native" for flow models and "eps" otherwise.
V_CONVENTIONS = ("auto", "eps", "native")


def resolve_convention(model: DiffusionModel, convention: str) -> str:
    """``"eps"`` or ``"native"`` for this model (see :data:`V_CONVENTIONS`)."""
    check_choice(convention, V_CONVENTIONS, "v convention")
    if convention == "auto":
        return "native" if model.prediction_type == "flow" else "eps"
    return convention


def check_eps_readable(model: DiffusionModel, t: float, convention: str,
                       fix: str = "use --v-convention native (the default for flow models)") -> None:
    """Refuse eps-based scores where eps carries no information about the prompt (flow models at sigma = 1)."""
    if convention == "eps" and model.prediction_type == "flow" and float(
            model.schedule.sqrt_alpha_bar(torch.tensor(t, dtype=torch.float64))) == 0.0:
        raise MemgeoError("at the first flow-matching step (sigma = 1) eps = x and the score is -x for every prompt, "
                          "so eps-based scores cannot see the prompt", fix)


def to_native(model: DiffusionModel, t: float, eps: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The network's own output from (eps, x0) at time t (linear, so it maps differences too), same shape.

    epsilon: eps; v_prediction: v = psi eps - sigma x0; flow: u = eps - x0; sample: x0.
    """
    kind = model.prediction_type
    if kind == "v_prediction":
        tt = torch.tensor(t, dtype=torch.float64)
        psi, sigma = float(model.schedule.sqrt_alpha_bar(tt)), float(model.schedule.sigma(tt))
        return psi * eps - sigma * x0
    if kind == "flow":
        return eps - x0
    if kind == "sample":
        return x0
    return eps


def eps_pair(model: DiffusionModel, x: torch.Tensor, t: float, cond: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps(x, t, c), eps(x, t, null)) in one batched call on 2R rows; 2 forward evaluations per row."""
    both = model.eps(torch.cat([x, x]), as_time(t, 2 * x.shape[0], x), torch.cat([cond, model.null_cond(cond)]))
    return both.chunk(2)


def flat_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row over all pixels, (R, ...) -> (R,)."""
    return v.reshape(v.shape[0], -1).norm(dim=1)


def sigma_at(model: DiffusionModel, t: float) -> float:
    return float(model.schedule.sigma(torch.tensor(t, dtype=torch.float64)))


def dense_score_jacobian(model: DiffusionModel, x: torch.Tensor, t: float, cond: torch.Tensor | None,
                         chunk_size: int = 32) -> torch.Tensor:
    """Per-row score Jacobians (R, D, D): ``vmap(jacrev)`` where the model allows it, else D batched VJPs.

    Some prompt models validate their inputs with data-dependent Python control flow, which vmap
    refuses; row i of every J is then read as J^T e_i with one reverse pass over the whole batch.
    """
    from memgeo.geometry.jacobian import ScoreJacobianOperator, score_jacobian

    try:
        return score_jacobian(model, x, t, cond, chunk_size=chunk_size)
    except RuntimeError as exc:
        if "vmap" not in str(exc):
            raise
    op = ScoreJacobianOperator(model, x, t, cond)
    r, d = op.x.shape
    eye = torch.eye(d, dtype=op.x.dtype, device=op.x.device)
    return torch.stack([op.rmatvec(eye[i].expand(r, d)) for i in range(d)], dim=1)
