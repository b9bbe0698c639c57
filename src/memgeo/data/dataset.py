"""The :class:`Dataset` container: samples as one tensor plus the bookkeeping memorization needs.

Memorization experiments need to know, for every training row, which original sample it is a copy
of. That is kept in ``source_index``; ``is_duplicate`` is derived from it and checked, so the two
can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from memgeo.errors import MemgeoError, check_finite, check_ndim

IndexLike = torch.Tensor | np.ndarray | list[int] | tuple[int, ...] | range | slice


def duplicate_mask(source_index: torch.Tensor) -> torch.Tensor:
    """Mark rows whose source occurs more than once.

    Parameters
    ----------
    source_index : torch.Tensor
        int64, shape (N,).

    Returns
    -------
    torch.Tensor
        bool, shape (N,): True for every member of a group of rows sharing one source index.
    """
    _, inverse, counts = torch.unique(source_index, return_inverse=True, return_counts=True)
    return counts[inverse] > 1


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Samples plus labels and duplicate bookkeeping.

    Instances are frozen: every operation (``subset``, ``unique``, the injection functions in
    :mod:`memgeo.data.inject`) returns a new ``Dataset``. Tensors are not copied defensively, so do
    not modify them in place.

    Parameters
    ----------
    x : torch.Tensor
        Floating point (float32 by default; float64 is kept for closed-form tests), shape
        (N, C, H, W) for images scaled to [-1, 1] or (N, D) for vectors. Must be finite.
    y : torch.Tensor or None
        int64 class labels, shape (N,). Other integer dtypes are converted.
    name : str
        Short name used in reports and file names.
    source_index : torch.Tensor or None
        int64, shape (N,): for every row, the index of the original (pre-injection) sample it is a
        copy of. ``None`` means the identity ``arange(N)`` (no copies).
    is_duplicate : torch.Tensor or None
        bool, shape (N,): True for every row whose source occurs more than once in this data set
        (all members of a duplicated group, including the kept original). ``None`` derives it from
        ``source_index``; a given value must equal that derivation.
    meta : dict
        Free-form description, e.g. which class was memorized and how many copies were put in.
        Row ranges stored here refer to the data set they were recorded for, not to its subsets.

    Raises
    ------
    MemgeoError
        On NaN/inf in ``x``, a wrong dtype, shape or length of any field.
    """

    x: torch.Tensor
    y: torch.Tensor | None = None
    name: str = "dataset"
    source_index: torch.Tensor | None = None
    is_duplicate: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The dataclass is frozen, so normalized values are written with object.__setattr__.
        set_ = object.__setattr__
        x = self.x
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise MemgeoError(f"Dataset x must be a torch.Tensor, got {type(x).__name__}",
                              "convert it with torch.as_tensor(x, dtype=torch.float32)")
        check_ndim(x, "Dataset x", (2, 4))
        if not x.is_floating_point():
            # Refuse rather than cast: integer images (0..255) would silently land outside [-1, 1].
            raise MemgeoError(f"Dataset x has dtype {x.dtype} but must be floating point",
                              "scale it to [-1, 1] and convert it with .float()")
        n = x.shape[0]
        if n == 0 or x[0].numel() == 0:
            raise MemgeoError(f"Dataset x has shape {tuple(x.shape)} and holds no data",
                              "pass at least one sample with at least one feature")
        if not bool(torch.isfinite(x).all()):
            # Cheap test in torch first; check_finite then builds the message (float() for bfloat16,
            # which numpy cannot hold).
            check_finite(x.float(), "Dataset x")
        set_(self, "x", x)

        if self.y is not None:
            set_(self, "y", _as_index_vector(self.y, n, "Dataset y", x.device))

        if self.source_index is None:
            src = torch.arange(n, device=x.device)
        else:
            src = _as_index_vector(self.source_index, n, "Dataset source_index", x.device)
            if n and int(src.min()) < 0:
                raise MemgeoError("Dataset source_index has negative entries",
                                  "use indices >= 0 into the original data set")
        set_(self, "source_index", src)

        derived = duplicate_mask(src)
        if self.is_duplicate is None:
            set_(self, "is_duplicate", derived)
        else:
            dup = torch.as_tensor(self.is_duplicate, device=x.device)
            if dup.dtype != torch.bool or tuple(dup.shape) != (n,):
                raise MemgeoError(
                    f"Dataset is_duplicate has dtype {dup.dtype} and shape {tuple(dup.shape)}",
                    f"pass a bool tensor of shape ({n},) or None to derive it from source_index",
                )
            if not torch.equal(dup, derived):
                raise MemgeoError(
                    f"Dataset is_duplicate disagrees with source_index on {int((dup != derived).sum())} row(s)",
                    "pass is_duplicate=None to derive it from source_index",
                )
            set_(self, "is_duplicate", dup)

        if not isinstance(self.meta, dict):
            raise MemgeoError(f"Dataset meta must be a dict, got {type(self.meta).__name__}", "pass a dict or omit it")
        # A shallow copy so that editing one data set's meta never changes another's.
        set_(self, "meta", dict(self.meta))

    # ------------------------------------------------------------------ shape
    @property
    def n(self) -> int:
        """Number of rows N (copies included)."""
        return int(self.x.shape[0])

    def __len__(self) -> int:
        return self.n

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Per-sample shape, e.g. ``(1, 28, 28)`` or ``(D,)``."""
        return tuple(int(s) for s in self.x.shape[1:])

    @property
    def dim(self) -> int:
        """Flattened per-sample dimension D = prod(data_shape)."""
        return int(np.prod(self.data_shape))

    @property
    def n_sources(self) -> int:
        """Number of distinct source samples (rows of :meth:`unique`)."""
        return int(torch.unique(self.source_index).numel())

    def flat(self) -> torch.Tensor:
        """The samples as vectors, shape (N, D) (a view when ``x`` is contiguous)."""
        return self.x.reshape(self.n, -1)

    # ------------------------------------------------------------ selection
    def subset(self, idx: IndexLike) -> Dataset:
        """Rows ``idx`` as a new data set; ``source_index`` keeps pointing at the original samples.

        Parameters
        ----------
        idx : int sequence, int/bool tensor or array, range or slice
            Row indices in [-N, N) or a bool mask of shape (N,).

        Returns
        -------
        Dataset
            With ``is_duplicate`` recomputed: a group cut down to one row is no longer a duplicate.
        """
        rows = self._rows(idx)
        return Dataset(
            x=self.x[rows],
            y=None if self.y is None else self.y[rows],
            name=self.name,
            source_index=self.source_index[rows],
            meta=self.meta,
        )

    def unique(self) -> Dataset:
        """The de-duplicated data set: the first row of every distinct ``source_index``, in row order.

        ``meta["copies"]`` holds, per kept row, how many rows of ``self`` shared its source, so the
        formerly duplicated samples stay identifiable (``meta["copies"] > 1``).
        """
        src = self.source_index
        uniq, inverse, counts = torch.unique(src, return_inverse=True, return_counts=True)
        # First occurrence of each group: the smallest row index mapping to it.
        first = torch.full((uniq.numel(),), self.n, dtype=torch.long, device=src.device)
        first.scatter_reduce_(0, inverse, torch.arange(self.n, device=src.device), reduce="amin")
        order = torch.argsort(first)
        rows = first[order]
        out = self.subset(rows)
        out.meta["copies"] = counts[order].cpu()
        return out

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every tensor field on ``device`` (tensors inside ``meta`` are left as they are)."""
        return Dataset(
            x=self.x.to(device),
            y=None if self.y is None else self.y.to(device),
            name=self.name,
            source_index=self.source_index.to(device),
            is_duplicate=self.is_duplicate.to(device),
            meta=self.meta,
        )

    def __repr__(self) -> str:
        # The dataclass default would print whole tensors.
        return (f"Dataset(name={self.name!r}, n={self.n}, data_shape={self.data_shape}, "
                f"labels={self.y is not None}, duplicate_rows={int(self.is_duplicate.sum())}, "
                f"dtype={self.x.dtype}, device={self.x.device})")

    def _rows(self, idx: IndexLike) -> torch.Tensor:
        """Validate ``idx`` and turn it into an int64 tensor of non-negative row indices."""
        n = self.n
        if isinstance(idx, slice):
            return torch.arange(n, device=self.x.device)[idx]
        t = torch.as_tensor(np.asarray(idx) if isinstance(idx, (list, tuple, range)) else idx)
        if t.dtype == torch.bool:
            if tuple(t.shape) != (n,):
                raise MemgeoError(f"bool mask has shape {tuple(t.shape)} but the data set has {n} rows",
                                  f"pass a mask of shape ({n},)")
            return torch.nonzero(t.to(self.x.device)).flatten()
        if t.numel() == 0:
            raise MemgeoError("row selection is empty", "select at least one row")
        if t.is_floating_point() or t.is_complex() or t.ndim > 1:
            raise MemgeoError(f"row indices must be a 1-D integer sequence, got dtype {t.dtype} shape {tuple(t.shape)}",
                              "pass a list or tensor of ints")
        t = t.reshape(-1).long()
        if t.numel() and (int(t.min()) < -n or int(t.max()) >= n):
            raise MemgeoError(f"row index out of range [{-n}, {n}) (got min {int(t.min())}, max {int(t.max())})",
                              f"use indices into the {n} rows of {self.name!r}")
        return (t % n).to(self.x.device)


def _as_index_vector(v: Any, n: int, name: str, device: torch.device) -> torch.Tensor:
    """Check that ``v`` is an integer vector of length ``n`` and return it as int64 on ``device``."""
    t = torch.as_tensor(v)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise MemgeoError(f"{name} has dtype {t.dtype} but must be an integer type", "convert it with .long()")
    if tuple(t.shape) != (n,):
        raise MemgeoError(f"{name} has shape {tuple(t.shape)} but x has {n} rows",
                          f"pass one entry per row, shape ({n},)")
    return t.to(device=device, dtype=torch.long)
