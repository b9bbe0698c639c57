"""One error type for bad input, and small validators that raise it.

Every message is a single line that names the problem and then the fix, so that the CLI can
print it as is (``error: <problem>; <fix>``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch


class MemgeoError(ValueError):
    """Bad input or state that the user can fix.

    Parameters
    ----------
    problem : str
        What is wrong, naming the offending file, argument or value.
    fix : str, optional
        What to do about it.
    """

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}; {fix}")


def check_finite(x: torch.Tensor | np.ndarray, name: str) -> None:
    """Raise :class:`MemgeoError` if ``x`` holds NaN or inf, saying how many and where first."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if not np.issubdtype(arr.dtype, np.number):
        raise MemgeoError(f"{name} has non-numeric dtype {arr.dtype}", "pass a float array")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), arr.shape)
        raise MemgeoError(
            f"{name} contains {int(bad.sum())} NaN/inf value(s) (first at index {tuple(int(i) for i in first)})",
            "remove or impute non-finite entries",
        )


def check_ndim(x: torch.Tensor | np.ndarray, name: str, ndims: Sequence[int]) -> None:
    """Raise :class:`MemgeoError` unless ``x.ndim`` is one of ``ndims``."""
    if x.ndim not in tuple(ndims):
        want = " or ".join(f"{d}-D" for d in ndims)
        raise MemgeoError(
            f"{name} has shape {tuple(x.shape)} ({x.ndim}-D) but must be {want}",
            "reshape it, e.g. to (N, D) with one point per row",
        )


def check_dim(actual: int, expected: int, name: str) -> None:
    """Raise :class:`MemgeoError` if a flattened dimension ``actual`` differs from ``expected``."""
    if actual != expected:
        raise MemgeoError(
            f"{name} has dimension {actual} but the model expects {expected}",
            "pass points with the model's data dimension",
        )


def check_choice(value: str, choices: Sequence[str], name: str) -> None:
    """Raise :class:`MemgeoError` if ``value`` is not one of ``choices``."""
    if value not in choices:
        raise MemgeoError(f"unknown {name} {value!r}", f"choose one of: {', '.join(choices)}")


T = TypeVar("T")


def build_registered(registry: Mapping[str, Callable[..., T]], name: str, kind: str, params: Mapping[str, Any]) -> T:
    """``registry[name](**params)`` for the string registries (estimators, scores, mitigations).

    An unknown ``name`` or hyper-parameters the class does not take raise :class:`MemgeoError`
    naming ``kind`` (e.g. "LID estimator") and the choices.
    """
    check_choice(name, sorted(registry), kind)
    try:
        return registry[name](**params)
    except TypeError as exc:
        raise MemgeoError(f"bad options for {kind} {name!r}: invalid parameters {sorted(params)} ({exc})",
                          f"see the docstring of {registry[name].__qualname__}") from exc
