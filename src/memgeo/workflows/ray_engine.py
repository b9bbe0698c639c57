"""``--engine ray``: the units of an :class:`~memgeo.workflows.items.ItemCommand` scored by Ray Data actors.

Imported only when a command is given ``--engine ray`` (the default install has no Ray; the
``[ray]`` extra brings it). The pipeline is::

    ray.data.from_items([{"unit": k}, ...])          one row (and one block) per unit to score
        .map_batches(ScoringActor, batch_size=1,      one unit per call; the actor's __init__ runs the
                     concurrency=workers, ...)        command's prepare (model loaded once per actor)
        .iter_batches()                               rows streamed back to the driver as units finish

A unit is the batch a plain run scores in one call, so an actor computes exactly what the plain run
computes and the rows are identical. Fault tolerance: actors are created with ``max_restarts`` and
``max_task_retries`` (:data:`RETRIES`), so a worker that dies (process killed, node lost) is
restarted, prepares again, and the unit it held is scored again; an exception raised by the
command itself is not retried (it would fail again) and ends the run with its message.

Testing hook: when the driver's environment has ``MEMGEO_RAY_FAIL_ONCE=PATH`` and the file PATH
exists, the first actor call that manages to rename it away kills its own process
(``os._exit(1)``), simulating a lost worker exactly once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from memgeo.errors import MemgeoError
from memgeo.workflows.items import ItemCommand, ItemRow, Plan, ScaleOptions, columns_to_rows, load_command, rows_to_columns

#: Restarts of a dead actor and retries of the unit it was scoring.
RETRIES = 3
FAIL_ONCE_ENV = "MEMGEO_RAY_FAIL_ONCE"


class ScoringActor:
    """Ray Data callable class: holds one prepared command (model loaded once) and scores units.

    Parameters
    ----------
    ref : str
        ``"module:attribute"`` of the :class:`ItemCommand`.
    config_json : str
        The plan's resolved config as JSON (``prepare`` of it gives the same units on every actor).
    fail_once : str, optional
        Path of the testing hook's marker file (module docstring).
    """

    def __init__(self, ref: str, config_json: str, fail_once: str | None = None) -> None:
        self.command = load_command(ref)
        self.plan = self.command.prepare(self.command.config.model_validate_json(config_json))
        self.fail_once = fail_once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        """``batch["unit"]``: unit indices -> columns ``unit``, ``id``, ``index``, ``data``, ``array``."""
        if self.fail_once:
            try:
                os.rename(self.fail_once, self.fail_once + ".taken")
            except OSError:
                pass
            else:
                os._exit(1)  # a lost worker, once
        rows: list[ItemRow] = []
        for k in batch["unit"].tolist():
            rows.extend(self.command.score_batch(self.plan, self.plan.units[int(k)]))
        return rows_to_columns(rows)


def _init(scale: ScaleOptions) -> tuple[Any, bool]:
    try:
        import ray
    except ImportError:
        raise MemgeoError("--engine ray needs Ray, which is not installed",
                          "pip install 'memgeo[ray]' (or use --engine local / --shard I/N)") from None
    if ray.is_initialized():
        return ray, False
    try:
        if scale.address:
            ray.init(address=scale.address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise MemgeoError(f"cannot start or reach Ray{' at ' + scale.address if scale.address else ''} ({first})",
                          "check --address (e.g. auto on a cluster node) or drop it for a local instance") from None
    return ray, True


def default_workers(ray: Any, scale: ScaleOptions, n_units: int) -> int:
    """``--workers``, else as many actors as the cluster has CPUs (or GPUs / ``--gpus-per-worker``), at most
    one per unit."""
    if scale.workers is not None:
        return max(1, min(scale.workers, n_units))
    res = ray.cluster_resources()
    have = res.get("GPU", 0.0) / scale.gpus_per_worker if scale.gpus_per_worker > 0 else res.get("CPU", 1.0)
    return max(1, min(int(have), n_units))


def score_units_ray(command: ItemCommand, plan: Plan, unit_ids: list[int], scale: ScaleOptions) -> Iterator[list[ItemRow]]:
    """Score ``plan.units[k]`` for ``k`` in ``unit_ids`` on Ray actors; yields rows as batches arrive (any order).

    Raises
    ------
    MemgeoError
        Ray missing or unreachable, or a unit's rows did not all come back.
    """
    ray, started = _init(scale)
    try:
        n = len(unit_ids)
        workers = default_workers(ray, scale, n)
        ds = ray.data.from_items([{"unit": int(k)} for k in unit_ids], override_num_blocks=n)
        ds = ds.map_batches(
            ScoringActor, fn_constructor_args=(command.ref, plan.cfg.model_dump_json(), os.environ.get(FAIL_ONCE_ENV)),
            batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
            num_gpus=scale.gpus_per_worker or None, max_restarts=RETRIES, max_task_retries=RETRIES)
        expected = {it.id for k in unit_ids for it in plan.units[k]}
        got: set[str] = set()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            cols = {key: batch[key].tolist() for key in ("id", "index", "data", "array")}
            rows = columns_to_rows(cols)
            got.update(r.id for r in rows)
            yield rows
        if got != expected:
            raise MemgeoError(f"Ray returned {len(got)} of {len(expected)} rows", "rerun; finished rows are kept")
    finally:
        if started:
            ray.shutdown()


__all__ = ["FAIL_ONCE_ENV", "RETRIES", "ScoringActor", "default_workers", "score_units_ray"]
