"""Audit commands as work items: one ``prepare`` / ``score_batch`` / ``finalize`` per command, run whole,
as one shard of N (``--shard I/N``) or on Ray Data (``--engine ray``), and ``merge`` of the shards.

Every audit command that supports scale-out is an :class:`ItemCommand`:

* ``prepare(cfg) -> Plan``: validate the options, load the model and inputs once, and list the
  work as *units*: consecutive lists of :class:`Item` (deterministic id, output position). A unit
  is the batch a plain run scores in one call (e.g. ``detect``'s ``--batch`` prompts), so every
  engine scores the same batches on the same inputs and the rows are identical bit for bit;
* ``score_batch(plan, unit) -> list[ItemRow]``: pure given the plan (no file is written);
* ``finalize(plan, rows, out) -> summary``: the command's CSV / JSON / report from all rows, in
  item order (called inside :func:`~memgeo.workflows.common.start_run`'s run folder).

A plain run is prepare + score every unit + finalize (:func:`run_items`). With ``--shard I/N`` the
units are cut into N contiguous, nearly equal ranges (shard I of N gets units
``[I * U // N, (I + 1) * U // N)``), and the rows go to ``OUT/shards/part-I-of-N.parquet``
(written atomically; the command, its resolved config and the config hash are in the file's
metadata). Rerunning a finished shard with the same config is a no-op; a shard run into a folder
holding shards of another config is refused. :func:`merge_shards` (``memgeo merge DIR...``) checks
that all N shards of one config are there with every item exactly once and runs ``finalize``: the
same files as a plain run.

Plugging in a command (``memgeo copies``, the K-fold score, ...): build an :class:`ItemCommand` at
module level in its workflow module and name it in :data:`COMMANDS` with :func:`register_command`
(``register_command("copies", "memgeo.workflows.copies:COPIES_ITEMS")``), then call
:func:`run_items` from its ``run_*`` function with the :class:`ScaleOptions` the CLI parsed
(:func:`memgeo.cli.common.scale_options`). Ray actors and ``merge`` find the command by that
reference, so it must be importable on every worker.

Nothing here imports Ray: :mod:`memgeo.workflows.ray_engine` is imported only for ``engine="ray"``.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel
from tqdm.auto import tqdm

from memgeo.errors import MemgeoError
from memgeo.io import _to_jsonable, atomic_write_bytes, make_folder
from memgeo.workflows.common import check_out, run_command, say, start_run

SHARD_DIR = "shards"
_SHARD_NAME = re.compile(r"^part-(\d+)-of-(\d+)\.parquet$")
META_PREFIX = b"memgeo."


# ------------------------------------------------------------------------------------------ data types
@dataclass(frozen=True)
class Item:
    """One unit of work: ``id`` is deterministic (e.g. ``p000003-s1234``: prompt 3, seed 1234) and
    ``index`` its position in the command's output order (0-based, unique)."""

    id: str
    index: int


@dataclass
class ItemRow:
    """What ``score_batch`` returns for one item: JSON-able ``data`` and an optional array (e.g. images)."""

    id: str
    index: int
    data: dict[str, Any]
    array: np.ndarray | None = None

    def normalized(self) -> "ItemRow":
        """The row after a JSON round trip of ``data`` (what a Parquet shard gives back), so rows of every
        engine compare equal; floats survive it exactly, NaN and +-inf included."""
        return ItemRow(self.id, int(self.index), json.loads(json.dumps(_to_jsonable(self.data, finite=False))),
                       None if self.array is None else np.ascontiguousarray(self.array))


@dataclass
class Plan:
    """A prepared command: resolved config, units of items and whatever ``score_batch`` and ``finalize``
    need (``payload``: model, prompts, points, ...)."""

    cfg: BaseModel
    units: list[list[Item]]
    payload: Any = None
    seed: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def items(self) -> list[Item]:
        return [it for unit in self.units for it in unit]


@dataclass(frozen=True)
class RowCache:
    """A command's own per-item files in a plain run's folder (resume below the shard level).

    ``read(out, plan, unit)`` returns the finished rows of the unit by item id (possibly none);
    ``write(out, plan, rows)`` stores freshly scored rows (each file atomically)."""

    read: Callable[[Path, Plan, list[Item]], dict[str, ItemRow]]
    write: Callable[[Path, Plan, list[ItemRow]], None]


@dataclass(frozen=True)
class ItemCommand:
    """An audit command split into prepare / score_batch / finalize (module docstring).

    Parameters
    ----------
    name : str
        The command (``"detect"``); shard files and ``merge`` record it.
    ref : str
        ``"module:attribute"`` of this object, for Ray actors and ``merge``.
    config : type of BaseModel
        Its config class (rebuilt from a shard's metadata by ``merge``).
    prepare, score_batch, finalize
        The three pieces.
    noun : str
        What an item is, for progress bars and messages (``"prompts"``).
    before_start : callable, optional
        ``(plan, out)``: refusals that depend on the output folder (e.g. a resume with other settings).
    cache : RowCache, optional
        Per-item files of a plain run (and of shard runs into the same folder).
    check_split : callable, optional
        ``(plan)``: refuse options whose result depends on all items at once when the run is split.
    """

    name: str
    ref: str
    config: type[BaseModel]
    prepare: Callable[[Any], Plan]
    score_batch: Callable[[Plan, list[Item]], list[ItemRow]]
    finalize: Callable[[Plan, list[ItemRow], Path], dict[str, Any]]
    noun: str = "items"
    before_start: Callable[[Plan, Path], None] | None = None
    cache: RowCache | None = None
    check_split: Callable[[Plan], None] | None = None


#: Commands with work items: name -> ``"module:attribute"`` of their :class:`ItemCommand`.
COMMANDS: dict[str, str] = {
    "detect": "memgeo.workflows.detect:DETECT_ITEMS",
    "lid": "memgeo.workflows.lid_runs:LID_ITEMS",
    "sharpness": "memgeo.workflows.commands:SHARPNESS_ITEMS",
    "audit": "memgeo.workflows.lid_runs:AUDIT_ITEMS",
    "mitigate": "memgeo.workflows.mitigate:MITIGATE_ITEMS",
    "copies": "memgeo.workflows.copies:COPIES_ITEMS",
    "kfold": "memgeo.workflows.kfold_runs:KFOLD_ITEMS",
}


#: Engines other than "local": name -> ``"module:function"`` of ``(command, plan, unit_ids, scale) -> iterator of
#: row lists``. Named by reference so that nothing imports an engine (Ray) unless it is asked for.
ENGINES: dict[str, str] = {"ray": "memgeo.workflows.ray_engine:score_units_ray"}


def _engine(name: str) -> Callable[..., Iterable[list["ItemRow"]]]:
    module, attr = ENGINES[name].split(":", 1)
    return getattr(importlib.import_module(module), attr)


def register_command(name: str, ref: str) -> None:
    """Make the :class:`ItemCommand` at ``ref`` (``"module:attribute"``) available as ``name``."""
    COMMANDS[name] = ref


def load_command(ref_or_name: str) -> ItemCommand:
    """The :class:`ItemCommand` named in :data:`COMMANDS` or at ``"module:attribute"``."""
    ref = COMMANDS.get(ref_or_name, ref_or_name)
    if ":" not in ref:
        raise MemgeoError(f"unknown command {ref_or_name!r} in a shard file",
                          f"shards come from one of: {', '.join(COMMANDS)}")
    module, attr = ref.split(":", 1)
    return getattr(importlib.import_module(module), attr)


# ----------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class ScaleOptions:
    """The "Scale-out" options of an audit command.

    ``shard``: ``(I, N)`` with 0 <= I < N (``--shard I/N``, I 0-based like ``SLURM_ARRAY_TASK_ID``);
    ``engine``: ``"local"`` (this process) or ``"ray"``; ``address``, ``workers``, ``gpus_per_worker``
    are Ray's (cluster address, actors, GPUs per actor).
    """

    shard: tuple[int, int] | None = None
    engine: Literal["local", "ray"] = "local"
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0

    @property
    def split(self) -> bool:
        """Whether the items are scored in pieces that ``finalize`` does not see together in one process."""
        return self.shard is not None or self.engine == "ray"


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)``, with 0 <= I < N.

    Raises
    ------
    MemgeoError
        Not two integers with 0 <= I < N.
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if m is None:
        raise MemgeoError(f"--shard {text!r} is not I/N", "e.g. --shard 0/4 (I counts from 0, like SLURM_ARRAY_TASK_ID)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or i >= n:
        raise MemgeoError(f"--shard {i}/{n}: I must be in 0..N-1 and N >= 1",
                          f"use --shard 0/{max(n, 1)} to --shard {max(n, 1) - 1}/{max(n, 1)}")
    return i, n


def scale_options(shard: str | None = None, engine: str | None = None, address: str | None = None,
                  workers: int | None = None, gpus_per_worker: float | None = None) -> ScaleOptions:
    """Validated :class:`ScaleOptions` from the command-line values (``None``: not given)."""
    engine = (engine or "local").lower()
    if engine not in ("local", "ray"):
        raise MemgeoError(f"--engine {engine!r} is not local or ray", "use --engine local (default) or --engine ray")
    if engine != "ray":
        given = [o for o, v in (("--address", address), ("--workers", workers), ("--gpus-per-worker", gpus_per_worker))
                 if v is not None]
        if given:
            raise MemgeoError(f"{', '.join(given)} only apply to --engine ray", "add --engine ray or drop them")
    if workers is not None and workers < 1:
        raise MemgeoError(f"--workers {workers} is below 1", "pass --workers 1 or more")
    if gpus_per_worker is not None and not (0 <= gpus_per_worker <= 64):
        raise MemgeoError(f"--gpus-per-worker {gpus_per_worker} is not in [0, 64]", "e.g. --gpus-per-worker 1")
    return ScaleOptions(shard=parse_shard(shard) if shard is not None else None, engine=engine,  # type: ignore[arg-type]
                        address=address, workers=workers, gpus_per_worker=float(gpus_per_worker or 0.0))


def config_hash(cfg: BaseModel) -> str:
    """16 hex digits of SHA-256 over the config's canonical JSON: equal configs, equal hashes."""
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def split_units(n_units: int, i: int, n: int) -> range:
    """Unit indices of shard ``i`` of ``n``: contiguous, sizes differ by at most one, all shards cover all."""
    return range(n_units * i // n, n_units * (i + 1) // n)


def units_of(items: Sequence[Item], size: int) -> list[list[Item]]:
    """Consecutive units of ``size`` items (the last may be shorter)."""
    size = max(1, int(size))
    return [list(items[k:k + size]) for k in range(0, len(items), size)]


# -------------------------------------------------------------------------------------- Parquet I/O
def shard_path(out: str | Path, i: int, n: int) -> Path:
    return Path(out) / SHARD_DIR / f"part-{i}-of-{n}.parquet"


def _pa() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - the scale/ray/test extras bring it
        raise MemgeoError("shard files need pyarrow, which is not installed",
                          "pip install 'memgeo[scale]' (or pyarrow)") from None
    return pa, pq


def _array_bytes(a: np.ndarray | None) -> bytes | None:
    if a is None:
        return None
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def _bytes_array(b: Any) -> np.ndarray | None:
    """The array of ``.npy`` bytes; anything else (``None``, or the NaN a numpy batch makes of a null) is none."""
    if not isinstance(b, (bytes, bytearray, memoryview)):
        return None
    return np.load(io.BytesIO(bytes(b)), allow_pickle=False)


def rows_to_columns(rows: Iterable[ItemRow]) -> dict[str, list[Any]]:
    """Columns ``id``, ``index``, ``data`` (JSON text) and ``array`` (``.npy`` bytes or null)."""
    cols: dict[str, list[Any]] = {"id": [], "index": [], "data": [], "array": []}
    for r in rows:
        cols["id"].append(r.id)
        cols["index"].append(int(r.index))
        cols["data"].append(json.dumps(_to_jsonable(r.data, finite=False)))
        cols["array"].append(_array_bytes(r.array))
    return cols


def columns_to_rows(cols: dict[str, Sequence[Any]]) -> list[ItemRow]:
    """Inverse of :func:`rows_to_columns`."""
    return [ItemRow(str(i), int(k), json.loads(d), _bytes_array(a))
            for i, k, d, a in zip(cols["id"], cols["index"], cols["data"], cols["array"])]


def write_shard(path: Path, command: ItemCommand, plan: Plan, rows: list[ItemRow], i: int, n: int) -> Path:
    """Write one shard's rows atomically, with the command, config and its hash in the file metadata."""
    pa, pq = _pa()
    schema = pa.schema([("id", pa.string()), ("index", pa.int64()), ("data", pa.string()), ("array", pa.binary())])
    meta = {"command": command.name, "ref": command.ref, "config": plan.cfg.model_dump_json(),
            "config_hash": config_hash(plan.cfg), "shard": f"{i}/{n}", "n_items": str(len(plan.items)),
            "n_units": str(len(plan.units)), "seed": json.dumps(plan.seed),
            "provenance": json.dumps(_to_jsonable(plan.provenance))}
    table = pa.table(rows_to_columns(rows), schema=schema).replace_schema_metadata(
        {META_PREFIX + k.encode(): v.encode() for k, v in meta.items()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_shard_meta(path: Path) -> dict[str, str]:
    """The ``memgeo.*`` metadata of a shard file (without reading its rows)."""
    _, pq = _pa()
    try:
        raw = pq.read_schema(path).metadata or {}
    except (OSError, ValueError) as exc:
        raise MemgeoError(f"cannot read shard file {path} ({str(exc).splitlines()[0][:120]})",
                          "delete it and rerun that shard") from None
    meta = {k[len(META_PREFIX):].decode(): v.decode() for k, v in raw.items() if k.startswith(META_PREFIX)}
    if not {"command", "config", "config_hash", "shard"} <= set(meta):
        raise MemgeoError(f"{path} is not a memgeo shard file (no memgeo metadata)", "remove it from the shards folder")
    return meta


def read_shard_rows(path: Path) -> list[ItemRow]:
    _, pq = _pa()
    try:
        cols = pq.read_table(path).to_pydict()
    except (OSError, ValueError) as exc:
        raise MemgeoError(f"cannot read shard file {path} ({str(exc).splitlines()[0][:120]})",
                          "delete it and rerun that shard") from None
    return columns_to_rows(cols)


def _shard_files(folder: Path) -> list[tuple[Path, int, int]]:
    """``(path, I, N)`` of every ``part-I-of-N.parquet`` in ``folder`` (or its ``shards/``)."""
    found = []
    for base in (folder / SHARD_DIR, folder):
        if base.is_dir():
            for p in sorted(base.iterdir()):
                m = _SHARD_NAME.match(p.name)
                if m:
                    found.append((p, int(m.group(1)), int(m.group(2))))
            if found:
                break
    return found


# -------------------------------------------------------------------------------------------- runs
def _score_units(command: ItemCommand, plan: Plan, unit_ids: list[int], out: Path | None, scale: ScaleOptions,
                 progress: bool) -> dict[str, ItemRow]:
    """Rows of the given units, by id: cached rows of a plain run's files first, the rest scored by the engine
    (fresh rows are written to the cache as they arrive, so an interrupted run resumes)."""
    rows: dict[str, ItemRow] = {}
    todo: list[int] = []
    cache = command.cache if out is not None else None
    for k in unit_ids:
        found = cache.read(out, plan, plan.units[k]) if cache is not None else {}
        rows.update(found)
        if len(found) < len(plan.units[k]):
            todo.append(k)
    n_total = sum(len(plan.units[k]) for k in unit_ids)
    if len(rows):
        say(f"resuming: {len(rows)} of {n_total} {command.noun} already scored in {out}")
    bar = tqdm(total=n_total, initial=len(rows), desc=f"scoring {command.noun}", disable=not progress)

    def take(fresh: list[ItemRow]) -> None:
        new = [r.normalized() for r in fresh if r.id not in rows]  # a finished row stays as it was written
        if cache is not None and new:
            cache.write(out, plan, new)
        for r in new:
            rows[r.id] = r
        bar.update(len(new))

    t0 = time.perf_counter()
    if scale.engine != "local" and todo:
        for fresh in _engine(scale.engine)(command, plan, todo, scale):
            take(fresh)
    else:
        for k in todo:
            take(command.score_batch(plan, plan.units[k]))
    bar.close()
    if todo:
        say(f"scored {sum(len(plan.units[k]) for k in todo)} {command.noun} in {time.perf_counter() - t0:.1f} s"
            + (" on Ray" if scale.engine == "ray" else ""))
    return rows


def _in_order(plan: Plan, unit_ids: Iterable[int], rows: dict[str, ItemRow]) -> list[ItemRow]:
    return [rows[it.id] for k in unit_ids for it in plan.units[k]]


def run_items(command: ItemCommand, plan: Plan, out: str | Path, scale: ScaleOptions | None = None, *,
              progress: bool = True) -> dict[str, Any]:
    """Run a prepared command: whole (plain run: finalize writes the usual outputs) or one shard.

    Call it inside a :func:`~memgeo.workflows.common.run_command` function, after ``prepare``.

    Returns
    -------
    dict
        ``finalize``'s summary; for a shard run ``{"command", "shard", "n_items", "path", "skipped"}``.
    """
    scale = scale or ScaleOptions()
    out = Path(out)
    if scale.split and command.check_split is not None:
        command.check_split(plan)
    if command.before_start is not None:
        command.before_start(plan, out)
    if scale.shard is None:
        start_run(out, plan.cfg, plan.seed, **plan.provenance)
        all_units = list(range(len(plan.units)))
        rows = _score_units(command, plan, all_units, out, scale, progress)
        return command.finalize(plan, _in_order(plan, all_units, rows), out)
    i, n = scale.shard
    out = check_out(out)
    path = shard_path(out, i, n)
    mine = config_hash(plan.cfg)
    for other, oi, on in _shard_files(out):
        meta = read_shard_meta(other)
        if meta["config_hash"] != mine or meta["command"] != command.name:
            raise MemgeoError(f"{other.parent} holds shards of another {meta['command']} configuration (config "
                              f"{meta['config_hash']}, this run {mine})", "rerun with the same options or choose another --out")
    units = list(split_units(len(plan.units), i, n))
    n_items = sum(len(plan.units[k]) for k in units)
    if path.is_file():
        say(f"shard {i}/{n} is already finished in {path}: nothing to do")
        return {"command": command.name, "shard": f"{i}/{n}", "n_items": n_items, "path": str(path), "skipped": True}
    make_folder(out)
    say(f"{command.name} shard {i}/{n}: {n_items} of {len(plan.items)} {command.noun} -> {path}")
    rows = _score_units(command, plan, units, out, scale, progress)
    write_shard(path, command, plan, _in_order(plan, units, rows), i, n)
    return {"command": command.name, "shard": f"{i}/{n}", "n_items": n_items, "path": str(path), "skipped": False}


def _check_merge(found: list[tuple[Path, int, int, dict[str, str]]], dirs: Sequence[Path]) -> tuple[int, dict[str, str]]:
    where = ", ".join(str(d) for d in dirs)
    if not found:
        raise MemgeoError(f"no shard files (shards/part-I-of-N.parquet) in {where}",
                          "run the command with --shard I/N --out DIR first")
    first = found[0]
    for path, _, _, meta in found[1:]:
        if (meta["command"], meta["config_hash"]) != (first[3]["command"], first[3]["config_hash"]):
            raise MemgeoError(f"shards of different runs: {first[0].name} ({first[3]['command']}, config "
                              f"{first[3]['config_hash']}) and {path} ({meta['command']}, config {meta['config_hash']})",
                              "merge the shards of one configuration only (move the others away)")
    counts = sorted({n for _, _, n, _ in found})
    if len(counts) > 1:
        raise MemgeoError(f"shards cut in different ways: of {' and of '.join(map(str, counts))}",
                          "keep the shards of one --shard I/N split only")
    n = counts[0]
    seen: dict[int, Path] = {}
    for path, i, _, _ in found:
        if i in seen:
            raise MemgeoError(f"shard {i}/{n} found twice: {seen[i]} and {path}", "keep one of them")
        seen[i] = path
    missing = [i for i in range(n) if i not in seen]
    if missing:
        listed = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
        raise MemgeoError(f"{len(missing)} of {n} shards are missing in {where}: {listed}",
                          f"run them (e.g. --shard {missing[0]}/{n}) and merge again")
    return n, first[3]


@run_command
def merge_shards(dirs: Sequence[str | Path], out: str | Path | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Check the shards in ``dirs`` and write the same outputs as a plain run into ``out`` (default: the first dir).

    Completeness: every shard 0..N-1 of one split, one command and one config hash, exactly once;
    together they hold every item of the prepared command exactly once. Each problem is a one-line
    :class:`MemgeoError` (the missing shards are named).

    Returns
    -------
    dict
        The command's summary, plus ``"merged": {"command", "shards", "n_items"}``.
    """
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise MemgeoError("no folder to merge", "pass the --out folder(s) of the shard runs")
    for d in dirs:
        if not d.is_dir():
            raise MemgeoError(f"{d} is not a folder", "pass the --out folder(s) of the shard runs")
    found = [(p, i, n, read_shard_meta(p)) for d in dirs for p, i, n in _shard_files(d)]
    n, meta = _check_merge(found, dirs)
    command = load_command(meta["command"])
    cfg = command.config.model_validate_json(meta["config"])
    say(f"merging {n} shard(s) of {command.name} (config {meta['config_hash']})")
    plan = command.prepare(cfg)
    if config_hash(plan.cfg) != meta["config_hash"]:
        raise MemgeoError(f"the shards' config no longer resolves to itself (hash {config_hash(plan.cfg)} vs "
                          f"{meta['config_hash']}): an input file changed since they ran", "rerun the shards")
    rows: dict[str, ItemRow] = {}
    origin: dict[str, int] = {}
    for path, i, _, _ in sorted(found, key=lambda f: f[1]):
        for r in read_shard_rows(path):
            if r.id in rows:
                raise MemgeoError(f"item {r.id} appears in shards {origin[r.id]}/{n} and {i}/{n}",
                                  "rerun those shards into a clean folder")
            rows[r.id] = r
            origin[r.id] = i
    expected = [it.id for it in plan.items]
    lost = [x for x in expected if x not in rows]
    extra = sorted(set(rows) - set(expected))
    if lost or extra:
        what = (f"{len(lost)} {command.noun} missing (first {lost[0]})" if lost else "") + \
               ("; " if lost and extra else "") + (f"{len(extra)} unknown ids (first {extra[0]})" if extra else "")
        raise MemgeoError(f"the shards do not cover the run's {len(expected)} {command.noun}: {what}",
                          "rerun the shards that held them (same options) and merge again")
    target = Path(out) if out is not None else dirs[0]
    start_run(target, plan.cfg, plan.seed, **plan.provenance, merged_shards=n)
    summary = command.finalize(plan, [rows[x] for x in expected], target)
    return {**summary, "merged": {"command": command.name, "shards": n, "n_items": len(expected)}}


__all__ = ["COMMANDS", "ENGINES", "Item", "ItemCommand", "ItemRow", "Plan", "RowCache", "ScaleOptions", "config_hash",
           "load_command", "merge_shards", "parse_shard", "read_shard_meta", "read_shard_rows", "register_command",
           "run_items", "scale_options", "shard_path", "split_units", "units_of", "write_shard"]
