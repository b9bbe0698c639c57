"""Recursive-training loops, all R runs at once (no Python loop over runs).

Generation 0 is the true distribution. Generation 1 is fitted on n_1 real samples (the real data
set). Generation t >= 2 is fitted on:

* ``replace``: n_t samples of generation t - 1;
* ``accumulate``: the pool of everything so far -- the real set plus n_2, ..., n_t synthetic samples,
  batch s drawn from generation s - 1;
* ``accumulate-subsample``: n_t points drawn without replacement from that pool (fixed budget);
* ``real-share``: the fixed real set with weight lambda plus n_t samples of generation t - 1 with
  weight 1 - lambda (Bertrand et al.: a fixed share of real data);
* ``fresh``: ``fresh_n`` new real samples with weight w plus n_t samples of generation t - 1 with
  weight 1 - w (He, Xu & Cheng); ``w="optimal"`` solves w^2 + k w - k = 0 with k = fresh_n / n_t.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from memgeo.collapse.families import Family
from memgeo.collapse.metrics import make_metrics
from memgeo.collapse.params import MixtureParams
from memgeo.collapse.schedules import Schedule, parse_schedule
from memgeo.collapse.theory import optimal_fresh_weight
from memgeo.errors import MemgeoError, check_choice

__all__ = ["LOOPS", "History", "check_loop", "simulate"]

LOOPS = ("replace", "accumulate", "accumulate-subsample", "real-share", "fresh")


@dataclass
class History:
    """What :func:`simulate` recorded.

    Attributes
    ----------
    sizes : ndarray (T,)
        n_t of generations 1..T.
    metrics : dict of name -> ndarray (T+1, R)
        Per generation (row 0 = the true distribution) and run.
    weights : ndarray (T,)
        Weight of the real batch in each fit (1 for generation 1; nan where the loop has none).
    final : params of generation T
    """

    sizes: np.ndarray
    metrics: dict[str, np.ndarray]
    weights: np.ndarray
    final: object = None
    info: dict = field(default_factory=dict)

    @property
    def generations(self) -> np.ndarray:
        return np.arange(self.sizes.size + 1)


def check_loop(family: Family, loop: str) -> None:
    """Raise :class:`MemgeoError` unless ``family`` can run ``loop``."""
    check_choice(loop, LOOPS, "loop")
    if loop == "accumulate-subsample" and not family.supports_subsample:
        raise MemgeoError(f"family {family.name} cannot subsample a pool in this mode", "use mode='data'")
    if loop in ("real-share", "fresh") and not family.supports_shares:
        raise MemgeoError(f"loop {loop} weights real against synthetic data; family {family.name} cannot",
                          "use loop replace, accumulate or accumulate-subsample")


def simulate(family: Family, loop: str = "replace", schedule: Schedule | str = "constant", generations: int = 100,
             runs: int = 1000, *, n: int = 100, seed: int | np.random.Generator = 0, real_share: float = 0.5,
             fresh_weight: float | str = 0.5, fresh_n: int | None = None,
             metrics: Callable[[object], dict[str, np.ndarray]] | None = None, n_eval: int = 256,
             progress: bool = False) -> History:
    """Run ``runs`` independent recursive-training chains of ``generations`` generations.

    Parameters
    ----------
    family : Family
        E.g. ``GaussianFamily(estimator="mle")``.
    loop : {"replace", "accumulate", "accumulate-subsample", "real-share", "fresh"}
    schedule : Schedule or spec string
        Sizes n_t; a string (``"constant"``, ``"linear"``, ``"power:2"``) uses base size ``n``.
    real_share : float in (0, 1]
        lambda of ``real-share``.
    fresh_weight : float in (0, 1] or "optimal"
        w of ``fresh``.
    fresh_n : int, optional
        Fresh real samples per generation of ``fresh`` (default n_1).
    metrics : callable(params) -> dict of (R,) arrays, optional
        Default :func:`memgeo.collapse.metrics.make_metrics` (sample-based ones draw ``n_eval`` points).
    seed : int or numpy Generator

    Returns
    -------
    History
    """
    check_choice(loop, LOOPS, "loop")
    sched = parse_schedule(schedule, n)
    sizes = sched.sizes(generations, minimum=family.min_samples)
    if hasattr(family, "check_sizes"):
        family.check_sizes(sizes)
    if int(runs) < 1:
        raise MemgeoError(f"runs={runs}", "use at least one run")
    check_loop(family, loop)
    if loop == "real-share" and not 0 < real_share <= 1:
        raise MemgeoError(f"real share {real_share} is outside (0, 1]", "e.g. --real-share 0.5")
    if loop == "fresh" and fresh_weight != "optimal" and not (
            isinstance(fresh_weight, (int, float)) and 0 < fresh_weight <= 1):
        raise MemgeoError(f"fresh weight {fresh_weight!r} is neither 'optimal' nor in (0, 1]", "e.g. 0.618")
    f_n = int(sizes[0] if fresh_n is None else fresh_n)
    if loop == "fresh" and f_n < family.min_samples:
        raise MemgeoError(f"fresh_n={f_n} is below the {family.min_samples} samples a fit needs", "raise --fresh-n")

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    runs = int(runs)
    truth = family.truth(runs)
    if metrics is None:
        heldout = truth.draw(n_eval, rng) if isinstance(truth, MixtureParams) else None  # closed forms need none
        metrics = make_metrics(truth, rng, heldout, n_eval)
    rows: dict[str, list[np.ndarray]] = {}

    n_recorded = 0

    def record(params) -> None:
        nonlocal n_recorded
        values = metrics(params)
        for key in [*values, *(k for k in rows if k not in values)]:  # undefined in a generation -> nan
            fill = np.full(runs, np.nan)
            rows.setdefault(key, [fill] * n_recorded).append(np.asarray(values.get(key, fill), dtype=np.float64))
        n_recorded += 1

    weights = np.full(sizes.size, np.nan)
    record(truth)
    real = family.draw(truth, int(sizes[0]), rng)
    params, pool = family.fit([real]), real
    weights[0] = 1.0
    record(params)
    # one tick per fitted generation (1 .. T): generation 1 above, the rest in the loop
    bar = tqdm(total=int(sizes.size), disable=not progress, desc="collapse: generations", leave=False)
    bar.update(1)
    for t in range(1, sizes.size):
        n_t = int(sizes[t])
        synth = family.draw(params, n_t, rng)
        if loop == "replace":
            params = family.fit([synth])
        elif loop == "accumulate":
            pool = family.merge(pool, synth)
            params = family.fit([pool])
        elif loop == "accumulate-subsample":
            pool = family.merge(pool, synth)
            params = family.fit([family.subsample(pool, n_t, rng)])
        elif loop == "real-share":
            weights[t] = real_share
            params = family.fit([real, synth], [real_share, 1.0 - real_share])
        else:  # fresh
            w = float(optimal_fresh_weight(f_n / n_t)) if fresh_weight == "optimal" else float(fresh_weight)
            weights[t] = w
            params = family.fit([family.draw(truth, f_n, rng), synth], [w, 1.0 - w])
        record(params)
        bar.update(1)
    bar.close()
    out = {k: np.stack(v) for k, v in rows.items()}
    return History(sizes=sizes, metrics=out, weights=weights, final=params,
                   info={"loop": loop, "schedule": sched.name, "family": family.name, "runs": runs, "fresh_n": f_n})
