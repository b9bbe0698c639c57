"""Memorization injection: make chosen training samples occur many times.

Duplicated training samples are what diffusion models memorize first, so these functions build the
training sets for memorization experiments. Each returns a NEW :class:`Dataset`; copies carry the
``source_index`` of the sample they copy (so ``is_duplicate`` and ``unique()`` know them), and a
record of what was done is appended to ``meta["injections"]`` (the latest also in
``meta["injection"]``). Copies are appended after the kept rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from memgeo.data._rng import make_generator
from memgeo.data.dataset import Dataset, IndexLike
from memgeo.errors import MemgeoError, check_scalar


def duplicate_points(ds: Dataset, indices: IndexLike, copies: int) -> Dataset:
    """Repeat chosen rows so that each appears ``copies`` times in total.

    Parameters
    ----------
    ds : Dataset
        Data of N rows.
    indices : int sequence or int tensor
        Distinct row indices into ``ds`` (0 <= i < N).
    copies : int
        Total number of occurrences of each chosen row afterwards (>= 1; 1 changes nothing).

    Returns
    -------
    Dataset
        N + len(indices) * (copies - 1) rows: ``ds`` unchanged, followed by the extra copies
        (row ``indices[0]`` repeated ``copies - 1`` times, then ``indices[1]``, ...). The extra
        rows share the chosen rows' ``source_index`` and labels.
    """
    copies = check_scalar(copies, "copies", min=1)
    rows = _distinct_rows(ds, indices, "indices")
    extra = rows.repeat_interleave(copies - 1)
    record = {
        "kind": "duplicate_points",
        "rows": rows.tolist(),
        "source_indices": ds.source_index[rows].tolist(),
        "copies": copies,
        "added_rows": (ds.n, ds.n + int(extra.numel())),
    }
    return _assemble(ds, keep=torch.arange(ds.n, device=ds.x.device), copy_rows=extra, copy_label=None,
                     record=record, name_suffix="dup")


def replace_class_with_copies(
    ds: Dataset,
    cls: int,
    n_copies: int | None = None,
    fraction: float = 1.0,
    source_index: int | None = None,
    seed: int | torch.Generator = 0,
) -> Dataset:
    """Replace (part of) one class by copies of a single image: the class-level memorization set-up.

    Parameters
    ----------
    ds : Dataset
        Labelled data of N rows.
    cls : int
        The class to overwrite; must occur in ``ds.y``.
    n_copies : int or None
        How many copies of the source image to put in (>= 1). ``None``: as many as rows were
        replaced, so the class keeps its size.
    fraction : float
        Share of the class's M rows to replace, in (0, 1]: ``max(1, round(fraction * M))`` rows.
        The remaining originals stay unchanged.
    source_index : int or None
        Row of ``ds`` to copy. ``None``: a random member of the class (drawn with ``seed``). If it
        belongs to the class it always counts among the replaced rows, so the kept originals never
        include it and its group has exactly ``n_copies`` rows. A row from another class keeps its
        own row as well.
    seed : int or torch.Generator
        Randomness for the source (when not given) and the replaced rows.

    Returns
    -------
    Dataset
        Rows outside the replaced set in their original order, then the ``n_copies`` copies, labelled
        ``cls``. The record in ``meta["injection"]`` holds ``cls``, ``source_index`` (original sample
        index), ``source_row``, ``n_copies``, ``fraction``, ``n_replaced``, ``n_kept_originals`` and
        ``copy_rows`` (start, stop).

    Raises
    ------
    MemgeoError
        If ``ds`` has no labels, ``cls`` does not occur, ``fraction`` is outside (0, 1],
        ``n_copies < 1`` or ``source_index`` is out of range.
    """
    if ds.y is None:
        raise MemgeoError(f"data set {ds.name!r} has no labels, so class {cls!r} cannot be chosen",
                          "use a labelled data set or duplicate_points()")
    classes = torch.unique(ds.y).tolist()
    if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)) or int(cls) not in classes:
        raise MemgeoError(f"class {cls!r} does not occur in {ds.name!r}",
                          f"choose one of: {', '.join(map(str, classes))}")
    cls = int(cls)
    check_scalar(fraction, "fraction", float, min=0, include_min=False, max=1,
                 fix="pass e.g. fraction=0.5, or 1.0 to replace the whole class")
    gen = make_generator(seed)

    members = torch.nonzero(ds.y == cls).flatten().cpu()
    m = int(members.numel())
    if source_index is None:
        source_row = int(members[torch.randint(m, (1,), generator=gen)])
    else:
        source_row = check_scalar(source_index, "source_index", min=0, max=ds.n, include_max=False,
                                  fix=f"pass a row index in [0, {ds.n}) or None for a random member of class {cls}")

    n_replace = max(1, round(float(fraction) * m))
    # The source counts among the replaced rows when it is in the class, so no original of it survives
    # next to its copies; the rest of the replaced set is a seeded random draw.
    source_in_class = bool((members == source_row).any())
    others = members[members != source_row]
    pick = others[torch.randperm(int(others.numel()), generator=gen)[: n_replace - int(source_in_class)]]
    replaced = torch.cat([pick, torch.tensor([source_row])]) if source_in_class else pick
    n_copies = n_replace if n_copies is None else check_scalar(n_copies, "n_copies", min=1)

    keep_mask = torch.ones(ds.n, dtype=torch.bool)
    keep_mask[replaced] = False
    keep = torch.nonzero(keep_mask).flatten().to(ds.x.device)
    n_keep = int(keep.numel())
    record: dict[str, Any] = {
        "kind": "replace_class_with_copies",
        "cls": cls,
        "source_index": int(ds.source_index[source_row]),
        "source_row": source_row,
        "n_copies": n_copies,
        "fraction": float(fraction),
        "class_size_before": m,
        "n_replaced": n_replace,
        "n_kept_originals": m - n_replace,
        "copy_rows": (n_keep, n_keep + n_copies),
        "seed": int(seed) if isinstance(seed, (int, np.integer)) else None,
    }
    copy_rows = torch.full((n_copies,), source_row, dtype=torch.long, device=ds.x.device)
    return _assemble(ds, keep=keep, copy_rows=copy_rows, copy_label=cls, record=record, name_suffix=f"copies{cls}")


def _assemble(ds: Dataset, keep: torch.Tensor, copy_rows: torch.Tensor, copy_label: int | None,
              record: dict[str, Any], name_suffix: str) -> Dataset:
    """Rows ``keep`` of ``ds`` followed by copies of rows ``copy_rows``, with the record added to meta."""
    rows = torch.cat([keep, copy_rows])
    y = None
    if ds.y is not None:
        copy_y = ds.y[copy_rows] if copy_label is None else torch.full_like(copy_rows, copy_label)
        y = torch.cat([ds.y[keep], copy_y])
    meta = dict(ds.meta)
    meta.pop("copies", None)  # unique()'s per-row counts no longer match the new rows
    meta["injections"] = [*ds.meta.get("injections", []), record]
    meta["injection"] = record
    return Dataset(x=ds.x[rows], y=y, name=f"{ds.name}+{name_suffix}", source_index=ds.source_index[rows], meta=meta)


def _distinct_rows(ds: Dataset, indices: IndexLike, name: str) -> torch.Tensor:
    """Validate row indices (in range, integer, no repeats) and return them as an int64 tensor."""
    t = torch.as_tensor(np.asarray(indices) if isinstance(indices, (list, tuple, range)) else indices)
    if t.numel() == 0:
        raise MemgeoError(f"{name} is empty", "pass at least one row index")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.ndim > 1:
        raise MemgeoError(f"{name} must be a 1-D sequence of ints, got dtype {t.dtype} shape {tuple(t.shape)}",
                          "pass e.g. [0, 5, 7]")
    t = t.reshape(-1).long().to(ds.x.device)
    if int(t.min()) < 0 or int(t.max()) >= ds.n:
        raise MemgeoError(f"{name} out of range: got min {int(t.min())}, max {int(t.max())} for {ds.n} rows",
                          f"pass row indices in [0, {ds.n})")
    if torch.unique(t).numel() != t.numel():
        raise MemgeoError(f"{name} contains repeated rows", "list each row once and set copies instead")
    return t
