"""One error type for bad input, the validators that raise it, and the one string-registry type.

Every message is a single line that names the problem and then the fix, so that the CLI can
print it as is (``error: <problem>; <fix>``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from numbers import Integral, Real
from typing import Any, TypeVar, overload

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


class OutputWriteError(MemgeoError, OSError):
    """An output could not be written (disk full, read-only, permission): a :class:`MemgeoError` for the
    CLI's one-line message and still an :class:`OSError` (with ``errno``) for code that catches those."""

    def __init__(self, problem: str, fix: str | None = None, errno: int | None = None) -> None:
        MemgeoError.__init__(self, problem, fix)
        self.errno = errno  # type: ignore[misc]


def _bounds_text(kind: type, low: float | None, high: float | None, include_min: bool, include_max: bool) -> str:
    """``"an integer >= 1"``, ``"a finite number in (0, 1]"`` and the like."""
    what = "an integer" if kind is int else "a finite number"
    if low is not None and high is not None:
        return f"{what} in {'[' if include_min else '('}{low}, {high}{']' if include_max else ')'}"
    if low is not None:
        return f"{what} {'>=' if include_min else '>'} {low}"
    if high is not None:
        return f"{what} {'<=' if include_max else '<'} {high}"
    return what


@overload
def check_scalar(value: Any, name: str, kind: type[int] = ..., *, min: float | None = ..., max: float | None = ...,
                 include_min: bool = ..., include_max: bool = ..., allow_none: bool = ..., fix: str | None = ...
                 ) -> int: ...
@overload
def check_scalar(value: Any, name: str, kind: type[float], *, min: float | None = ..., max: float | None = ...,
                 include_min: bool = ..., include_max: bool = ..., allow_none: bool = ..., fix: str | None = ...
                 ) -> float: ...
def check_scalar(value: Any, name: str, kind: type = int, *, min: float | None = None,  # noqa: A002
                 max: float | None = None, include_min: bool = True, include_max: bool = True,  # noqa: A002
                 allow_none: bool = False, fix: str | None = None) -> Any:
    """Check that a parameter is a scalar of the right kind within bounds, and return it converted.

    In the spirit of scikit-learn's ``check_scalar``: one helper for every integer count and every
    positive/bounded real hyper-parameter, so that all of them refuse the same bad values with the
    same kind of message.

    Parameters
    ----------
    value : object
        The value to check.
    name : str
        The parameter's name, used in the message (``"{name}={value!r} must be ..."``).
    kind : {int, float}, default int
        ``int`` accepts any integral number (Python or NumPy integers) and returns an ``int``;
        ``float`` accepts any real number (ints included) that is finite and returns a ``float``.
        ``bool`` is neither.
    min, max : float, optional
        Bounds; ``None`` means unbounded on that side.
    include_min, include_max : bool, default True
        Whether each bound itself is allowed (``include_min=False`` with ``min=0`` means ``> 0``).
    allow_none : bool, default False
        Accept ``None`` and return it unchanged.
    fix : str, optional
        The fix to print; default ``"pass {name} as <what it must be>"``.

    Returns
    -------
    int or float or None
        ``value`` converted to ``kind`` (``None`` only when ``allow_none``).

    Raises
    ------
    MemgeoError
        Naming the parameter, the value, what it must be and the fix.
    """
    if kind not in (int, float):
        raise TypeError(f"check_scalar kind must be int or float, got {kind!r}")
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, Integral if kind is int else Real)
    if ok:
        value_k = kind(value)
        ok = (kind is int or math.isfinite(value_k)) and not (
            (min is not None and (value_k < min if include_min else value_k <= min))
            or (max is not None and (value_k > max if include_max else value_k >= max)))
    if ok:
        return value_k
    want = _bounds_text(kind, min, max, include_min, include_max) + (" or None" if allow_none else "")
    raise MemgeoError(f"{name}={value!r} must be {want}", fix or f"pass {name} as {want}")


def check_finite(x: torch.Tensor | np.ndarray, name: str) -> None:
    """Raise :class:`MemgeoError` if ``x`` holds NaN or inf, saying how many and where first."""
    if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # numpy has no bfloat16; float32 holds every float16/bfloat16 value exactly
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

_MISSING: Any = object()


class Registry(Mapping[str, T]):
    """A string registry: names -> classes (or functions), filled by a ``register`` decorator.

    One type for every "choose by name" set in memgeo (samplers, LID estimators, prompt scores,
    mitigations, copy criteria, collapse families, manifold data sets). It is a read-only
    :class:`~collections.abc.Mapping`, so ``name in REGISTRY``, ``REGISTRY[name]``, iteration (in
    registration order), ``len`` and ``.items()`` work as on a dict; the added methods raise
    :class:`MemgeoError` with the choices instead of ``KeyError`` / ``TypeError``.

    Parameters
    ----------
    kind : str
        What an entry is, for messages (e.g. ``"LID estimator"``: "unknown LID estimator 'x'").
    entries : mapping of str to T, optional
        Initial entries, in order.

    Examples
    --------
    >>> SCORES = Registry("score")
    >>> @SCORES.register
    ... class Norm:
    ...     name = "norm"
    ...     def __init__(self, p=2): self.p = p
    >>> SCORES.build("norm", p=1).p
    1
    """

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = dict(entries or {})

    # --- registration -------------------------------------------------------------------------
    def register(self, obj: Any = None, /, *, name: str | None = None) -> Any:
        """Add an entry; usable as ``@reg.register``, ``@reg.register("name")`` or ``reg.register(obj, name=...)``.

        Without a name the entry's ``name`` attribute is used (``TypeError`` if it has none). A
        name registered again is replaced. Returns the entry (or a decorator returning it).
        """
        if isinstance(obj, str):
            name, obj = obj, None
        if obj is None:
            return lambda entry: self.register(entry, name=name)
        key = name if name is not None else getattr(obj, "name", "")
        if not isinstance(key, str) or not key:
            raise TypeError(f"{getattr(obj, '__name__', obj)!r} has no name to register it under")
        self._entries[key] = obj
        return obj

    # --- lookup -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def get(self, name: str, default: Any = _MISSING) -> T:  # type: ignore[override]
        """The entry registered as ``name``; an unknown name raises :class:`MemgeoError` listing the
        choices, unless a ``default`` is given (then returned, as :meth:`dict.get`)."""
        if name in self._entries:
            return self._entries[name]
        if default is not _MISSING:
            return default
        raise MemgeoError(f"unknown {self.kind} {name!r}", f"choose one of: {', '.join(self.names())}")

    def build(self, name: str, /, **params: Any) -> Any:
        """``self.get(name)(**params)``; parameters the entry does not take raise :class:`MemgeoError`.

        The message names the offending parameter(s) and points to the entry's docstring.
        """
        factory = self.get(name)
        try:
            return factory(**params)  # type: ignore[operator]
        except TypeError as exc:
            bad = _unaccepted(factory, params)
            raise MemgeoError(
                f"bad options for {self.kind} {name!r}: invalid parameters {bad or sorted(params)} ({exc})",
                f"see the docstring of {getattr(factory, '__qualname__', factory)!r} for what it takes",
            ) from exc

    # --- Mapping --------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


def _unaccepted(factory: Any, params: Mapping[str, Any]) -> list[str]:
    """The keys of ``params`` that ``factory``'s signature has no parameter for (empty if it takes ``**kwargs``)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return []
    return sorted(k for k in params if k not in sig.parameters)


# --- resources and option values ------------------------------------------------------------------
def available_memory() -> int | None:
    """Bytes of memory this process can still allocate: ``MemAvailable`` (Linux), else physical memory.

    Returns ``None`` when neither can be read (the size checks then pass).
    """
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def format_bytes(n: float) -> str:
    """``1.5 GB`` style size (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"  # pragma: no cover


def check_fits_in_memory(n_bytes: float, what: str, fix: str, *, share: float = 0.8) -> None:
    """Raise :class:`MemgeoError` when ``n_bytes`` exceed ``share`` of :func:`available_memory`.

    Called before a run allocates its large arrays, so an impossible size is refused in a line
    (with the estimate) instead of allocating until the process is killed.

    Parameters
    ----------
    n_bytes : float
        Estimated peak size of the arrays.
    what : str
        What needs it, e.g. ``"--n 1000000000 samples of shape (1, 8, 8)"``.
    fix : str
        What to do instead, e.g. ``"sample fewer (--n) in several runs"``.
    """
    free = available_memory()
    if free is not None and n_bytes > share * free:
        raise MemgeoError(f"{what} need about {format_bytes(n_bytes)} of memory but only {format_bytes(free)} is "
                          "available", fix)


def check_option_values(values: Any, where: str = "option") -> None:
    """Refuse NaN/inf numbers and text that is not valid Unicode anywhere in nested options.

    Walks dicts and lists (as built from command-line options and JSON configs); every float
    must be finite and every string encodable as UTF-8 (a command-line argument with bytes that
    are not UTF-8 arrives as lone surrogates).

    Raises
    ------
    MemgeoError
        Naming the option (dotted path) and the bad value.
    """
    def walk(value: Any, path: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
        elif isinstance(value, float) and not math.isfinite(value):
            raise MemgeoError(f"{where} {path or 'value'}={value!r} is not a finite number",
                              f"pass {path or 'it'} as a finite number")
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                shown = value.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
                raise MemgeoError(f"{where} {path or 'value'}={shown!r} holds bytes that are not UTF-8",
                                  "pass text as UTF-8") from None

    walk(values, "")
