"""Per-generation sample sizes n_t (t = 1..T): constant, linear, power t^p, or any callable.

Generation t is fitted on n_t samples (drawn from generation t - 1, or from the pool of a loop).
Whether the variance collapses depends on the schedule through sums such as sum_t 1/n_t (see
:mod:`memgeo.collapse.theory`), so the schedule is a first-class object with a name and a spec
string that the CLI and configs share: ``"constant"``, ``"linear"``, ``"power:1.5"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from memgeo.errors import MemgeoError

__all__ = ["SCHEDULE_KINDS", "Schedule", "parse_schedule"]

#: Names accepted by :func:`parse_schedule` (``power`` takes its exponent as ``power:P``).
SCHEDULE_KINDS = ("constant", "linear", "power", "callable")


@dataclass(frozen=True)
class Schedule:
    """A sample-size schedule n_t = f(t) for generations t = 1, 2, ...

    Parameters
    ----------
    kind : {"constant", "linear", "power", "callable"}
        ``constant``: n_t = n; ``linear``: n_t = n t; ``power``: n_t = ceil(n t^p);
        ``callable``: n_t = fn(t).
    n : int
        Base size (n_1 for constant, linear and power).
    p : float
        Exponent of ``power`` (ignored otherwise).
    fn : callable(int) -> int, optional
        The size function of ``callable``.
    """

    kind: str
    n: int = 100
    p: float = 1.0
    fn: Callable[[int], int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise MemgeoError(f"unknown schedule {self.kind!r}", f"choose one of: {', '.join(SCHEDULE_KINDS)}")
        if self.kind == "callable":
            if not callable(self.fn):
                raise MemgeoError("schedule 'callable' needs a function fn(t) -> n_t", "pass fn=")
        elif int(self.n) < 1:
            raise MemgeoError(f"schedule base size n={self.n} is below 1", "pass n >= 2")
        if self.kind == "power" and not (math.isfinite(self.p) and self.p >= 0):
            raise MemgeoError(f"power schedule exponent p={self.p} is not a finite number >= 0", "e.g. power:1.5")

    @property
    def name(self) -> str:
        """Spec string (``power:1.5``) that :func:`parse_schedule` turns back into this schedule."""
        if self.kind == "power":
            return f"power:{self.p:g}"
        return self.kind

    def sizes(self, generations: int, minimum: int = 2) -> np.ndarray:
        """n_t for t = 1..generations, shape (generations,), int64.

        Raises :class:`MemgeoError` if a size falls below ``minimum`` (a variance needs 2 points,
        a d-dimensional covariance d + 1) or overflows int64.
        """
        if int(generations) < 1:
            raise MemgeoError(f"generations={generations}", "run at least one generation")
        t = np.arange(1, int(generations) + 1, dtype=np.float64)
        if self.kind == "constant":
            out = np.full_like(t, float(self.n))
        elif self.kind == "linear":
            out = float(self.n) * t
        elif self.kind == "power":
            out = np.ceil(float(self.n) * t ** float(self.p))
        else:
            out = np.asarray([float(self.fn(int(s))) for s in t])
        if not np.all(np.isfinite(out)) or out.max() >= 2.0**62:
            raise MemgeoError(f"schedule {self.name} grows past int64 within {generations} generations",
                              "use fewer generations or a smaller base n")
        if np.any(out != np.round(out)):
            raise MemgeoError(f"schedule {self.name} returned non-integer sizes", "return whole numbers from fn")
        sizes = out.astype(np.int64)
        if sizes.min() < minimum:
            t_bad = int(np.argmin(sizes)) + 1
            raise MemgeoError(f"schedule {self.name} gives n_{t_bad}={int(sizes.min())} samples, fewer than the "
                              f"{minimum} this model needs", f"use n >= {minimum}")
        return sizes


def parse_schedule(spec: str | Schedule | Callable[[int], int], n: int = 100) -> Schedule:
    """``"constant"``, ``"linear"``, ``"power:P"`` (or a Schedule, or a callable) -> :class:`Schedule`."""
    if isinstance(spec, Schedule):
        return spec
    if callable(spec):
        return Schedule("callable", n=n, fn=spec)
    text = str(spec).strip().lower()
    kind, _, arg = text.partition(":")
    if kind == "power":
        try:
            p = float(arg)
        except ValueError:
            raise MemgeoError(f"schedule {spec!r} has no valid exponent", "write e.g. power:1.5") from None
        return Schedule("power", n=n, p=p)
    if arg:
        raise MemgeoError(f"schedule {spec!r} takes no argument", "write constant, linear or power:P")
    if kind == "callable":
        raise MemgeoError("a 'callable' schedule cannot be given as text", "pass a Python function in the API")
    return Schedule(kind, n=n)
