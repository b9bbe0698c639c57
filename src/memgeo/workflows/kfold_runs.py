"""``memgeo kfold``: the K-fold likelihood memorization score of one generative family, as work items.

The score of van den Burg & Williams (2021) (:mod:`memgeo.memorization.kfold`) needs ``K x L``
independent trainings: in repeat ``l`` the ``n`` training points are split into ``K`` folds
(:func:`~memgeo.memorization.kfold.kfold_assignments`, seeded by ``seed``) and model ``(l, j)`` is
trained on every fold but ``j``, then evaluated on all ``n`` points. Here each training is one work
item (:mod:`memgeo.workflows.items`):

* item id ``rLLL-fJJJ`` (repeat ``l``, fold ``j``), index ``l * K + j`` (the row of the
  log-likelihood table); one item per unit, so a shard or a Ray task is one or more whole trainings;
* the training of item ``m`` uses seed ``seed + m`` (model initialisation, minibatches, noise, and the
  bound's own draws), so every training is reproducible on its own, on any worker;
* ``score_batch`` trains the fold model and returns ``log p(x_i)`` of all ``n`` points
  (``ItemRow.array``, float64, shape (n,)): the family's training and bound are those of
  ``memgeo families`` (:func:`memgeo.workflows.families_demo.kfold_model_fns`: the demo's DDPM and its
  discrete-time bound; the importance-weighted bound of vae / gsvae / sd2015);
* ``finalize`` = :func:`~memgeo.memorization.kfold.scores_from_log_likelihoods` of the table, then the
  files below.

On Ray (``--engine ray``) every training is one Ray Data task on an actor, retried on another actor
when its worker is lost; with ``--shard I/N`` a SLURM array runs the trainings in slices and
``memgeo merge`` scores them.

Files in ``OUT``:

``kfold.csv``
    One row per training point: ``index`` (0..n-1), ``row`` (its row in ``--data``), ``label``
    (the data's class, when it has labels), ``fold_r<l>`` (its held-out fold in repeat l), ``score``
    (M_i, nats), ``log_p_in`` / ``log_p_out`` (the two log-mean-exp terms), ``n_in`` / ``n_out``,
    ``rank`` (1 = highest score), ``stands_out`` (score above the bulk's robust upper limit).
``trainings.csv``
    One row per training: id, repeat, fold, seed, points trained on / held out, mean log-likelihood
    of both, their gap, and the wall time (``seconds``).
``summary.json``, ``report.html``
    Settings, the bound used, score statistics with a bootstrap CI of the mean, the points that stand
    out, the verdict; the report adds the score histogram and the top-scoring points.

"Stands out": ``M_i > median(M) + 3 x 1.4826 x MAD(M)`` (a robust 3-sigma rule on the score
distribution; no label is used). The score is in nats: ``M_i = 2.3`` means ``x_i`` is about 10 times
likelier under the models trained on it than under those that were not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from memgeo.errors import MemgeoError
from memgeo.io import write_csv, write_json
from memgeo.report import Report
from memgeo.report.plots import image_grid, score_histogram
from memgeo.workflows.common import check_out, figure_to_report, run_command, say
from memgeo.workflows.items import Item, ItemCommand, ItemRow, Plan, ScaleOptions, run_items

__all__ = ["KFOLD_ITEMS", "KFoldConfig", "OUTLIER_MADS", "finalize_kfold", "prepare_kfold", "run_kfold",
           "score_kfold", "training_seed"]

#: "Stands out": a score above median + OUTLIER_MADS x 1.4826 x MAD of all scores.
OUTLIER_MADS = 3.0
#: Bootstrap replicates of the CI of the mean score (resampling points).
N_BOOT = 1000


class KFoldConfig(BaseModel):
    """``memgeo kfold``: the K-fold likelihood memorization score of one family on one data set.

    Attributes
    ----------
    family : str
        A family with a likelihood or bound: ddpm, sd2015, vae, gsvae.
    data : str
        Data set spec (:func:`memgeo.data.load_dataset`: ``digits``, ``mnist``, ``npy:PATH``, ...).
    rows : int, optional
        Score a random subset of this many rows (seeded by ``seed``); default all rows.
    folds, repeats : int
        K and L of the paper (``folds = 2, repeats = 1``: two trainings, the cheap setting).
    steps : int, optional
        Steps of each training; default the family's K-fold default of ``memgeo families``.
    latent_dim, hidden, depth, n_categories, sd2015_T, sd2015_hidden, batch, lr
        Model and optimiser settings, as in ``memgeo families``.
    iw : int
        Importance samples of the vae / gsvae / sd2015 bound.
    bound_steps : int
        Grid steps of the ddpm bound.
    seed : int
        Seed of the row subset and the fold assignment; training ``m`` uses ``seed + m``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    family: str
    data: str = "digits"
    rows: int | None = Field(default=None, ge=4)
    folds: int = Field(default=2, ge=2)
    repeats: int = Field(default=1, ge=1)
    steps: int | None = Field(default=None, ge=1)
    latent_dim: int | None = Field(default=None, ge=1)
    hidden: int = Field(default=256, ge=8)
    depth: int = Field(default=2, ge=1)
    n_categories: int = Field(default=10, ge=2)
    sd2015_T: int = Field(default=40, ge=2)
    sd2015_hidden: int = Field(default=128, ge=8)
    batch: int = Field(default=128, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    iw: int = Field(default=64, ge=1)
    bound_steps: int = Field(default=200, ge=2)
    seed: int = Field(default=0, ge=0)


@dataclass
class _KFoldState:
    x: torch.Tensor          # (n, *shape) float32, the scored rows
    y: torch.Tensor          # (n,) int64 class labels (zeros without labels)
    has_labels: bool
    n_classes: int
    rows: np.ndarray         # (n,) row of each point in the data set
    folds: np.ndarray        # (repeats, n) fold of each point per repeat
    steps: int
    bound: str
    t_start: float
    n_all: int = 0           # rows of the data set


def training_seed(cfg: KFoldConfig, index: int) -> int:
    """Seed of training ``index`` (``repeat * folds + fold``): ``seed + index``."""
    return int(cfg.seed) + int(index)


def _families_config(cfg: KFoldConfig, steps: int, seed: int) -> Any:
    """The ``memgeo families`` settings whose K-fold training and bound this run reuses."""
    from memgeo.workflows.families_demo import FamiliesDemoConfig

    return FamiliesDemoConfig(data=cfg.data, families=(cfg.family,), kfold_steps={cfg.family: steps},
                              kfold_k=cfg.folds, kfold_repeats=cfg.repeats, kfold_iw=cfg.iw,
                              kfold_bound_steps=cfg.bound_steps, latent_dim=cfg.latent_dim, hidden=cfg.hidden,
                              depth=cfg.depth, n_categories=cfg.n_categories, sd2015_T=cfg.sd2015_T,
                              sd2015_hidden=cfg.sd2015_hidden, batch=cfg.batch, lr=cfg.lr, seed=seed)


def _model_fns(cfg: KFoldConfig, st: _KFoldState, seed: int) -> tuple[Any, Any, str]:
    from memgeo.workflows.families_demo import kfold_model_fns

    return kfold_model_fns(cfg.family, _families_config(cfg, st.steps, seed), st.x, st.y, st.n_classes)


def prepare_kfold(cfg: KFoldConfig) -> Plan:
    """Validate, load the data (and the row subset), assign the folds; items are the ``folds x repeats`` trainings.

    Raises
    ------
    MemgeoError
        A family without a likelihood, an unknown data set, more folds than rows.
    """
    from memgeo.data import load_dataset
    from memgeo.memorization.kfold import kfold_assignments
    from memgeo.workflows.families_demo import DEFAULT_KFOLD_STEPS, KFOLD_FAMILIES, NO_LIKELIHOOD

    t_start = time.perf_counter()
    if cfg.family not in KFOLD_FAMILIES:
        if cfg.family in ("gan", "wgan-gp"):
            raise MemgeoError(f"--family {cfg.family}: {NO_LIKELIHOOD}", f"choose one of: {', '.join(KFOLD_FAMILIES)}")
        raise MemgeoError(f"unknown --family {cfg.family!r}", f"choose one of: {', '.join(KFOLD_FAMILIES)}")
    ds = load_dataset(cfg.data)
    n_all = int(ds.x.shape[0])
    if cfg.rows is not None and cfg.rows < n_all:
        rows = torch.sort(torch.randperm(n_all, generator=torch.Generator().manual_seed(cfg.seed))[: cfg.rows]).values
    else:
        rows = torch.arange(n_all)
    n = int(rows.numel())
    if n < 2 * cfg.folds:
        raise MemgeoError(f"{n} rows cannot be split into {cfg.folds} folds of at least 2 points",
                          f"use --folds {max(2, n // 2)} or fewer, or more --rows")
    x = ds.x[rows].float()
    has_labels = ds.y is not None
    y = ds.y[rows].long() if has_labels else torch.zeros(n, dtype=torch.long)
    n_classes = int(ds.y.max()) + 1 if has_labels else 1
    steps = int(cfg.steps if cfg.steps is not None else DEFAULT_KFOLD_STEPS[cfg.family])
    folds = kfold_assignments(n, cfg.folds, cfg.repeats, cfg.seed)
    st = _KFoldState(x, y, has_labels, n_classes, rows.numpy().astype(np.int64), folds, steps, "", t_start, n_all)
    st.bound = _model_fns(cfg, st, cfg.seed)[2]  # builds the closures only (the family config is checked here)
    items = [Item(f"r{r:03d}-f{j:03d}", r * cfg.folds + j) for r in range(cfg.repeats) for j in range(cfg.folds)]
    return Plan(cfg, [[it] for it in items], st, seed=cfg.seed)


def score_kfold(plan: Plan, unit: list[Item]) -> list[ItemRow]:
    """Train the fold model of each item and evaluate ``log p(x_i)`` of all n points (``ItemRow.array``, (n,))."""
    from memgeo.memorization.kfold import fold_log_likelihoods

    cfg: KFoldConfig = plan.cfg
    st: _KFoldState = plan.payload
    out = []
    for it in unit:
        r, j = divmod(it.index, cfg.folds)
        seed = training_seed(cfg, it.index)
        t = time.perf_counter()
        fit, log_lik, _ = _model_fns(cfg, st, seed)
        seen, ll = fold_log_likelihoods(st.folds, r, j, fit, log_lik)
        out.append(ItemRow(it.id, it.index, {"repeat": r, "fold": j, "seed": seed, "n_train": int(seen.sum()),
                                             "seconds": time.perf_counter() - t}, ll))
    return out


def _stands_out_limit(scores: np.ndarray) -> float:
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return float("nan")
    med = float(np.median(finite))
    return med + OUTLIER_MADS * 1.4826 * float(np.median(np.abs(finite - med)))


def finalize_kfold(plan: Plan, rows: list[ItemRow], out: Path) -> dict[str, Any]:
    """The scores from the per-training log-likelihood rows; kfold.csv, trainings.csv, summary.json, report."""
    from memgeo.memorization.kfold import scores_from_log_likelihoods

    cfg: KFoldConfig = plan.cfg
    st: _KFoldState = plan.payload
    t = time.perf_counter()
    n = int(st.x.shape[0])
    ll = np.stack([np.asarray(r.array, dtype=np.float64) for r in rows])
    seen = np.stack([st.folds[r.data["repeat"]] != r.data["fold"] for r in rows])
    scores, log_p_in, log_p_out, n_in, n_out = scores_from_log_likelihoods(ll, seen)
    limit = _stands_out_limit(scores)
    out_mask = np.isfinite(scores) & (scores > limit)
    order = np.argsort(-np.where(np.isfinite(scores), scores, -np.inf), kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    table = []
    for i in range(n):
        row: dict[str, Any] = {"index": i, "row": int(st.rows[i])}
        if st.has_labels:
            row["label"] = int(st.y[i])
        row.update({f"fold_r{r}": int(st.folds[r, i]) for r in range(cfg.repeats)})
        row.update(score=float(scores[i]), log_p_in=float(log_p_in[i]), log_p_out=float(log_p_out[i]),
                   n_in=int(n_in[i]), n_out=int(n_out[i]), rank=int(rank[i]), stands_out=bool(out_mask[i]))
        table.append(row)
    trainings = []
    for r, lrow, s in zip(rows, ll, seen):
        trainings.append({"id": r.id, "repeat": r.data["repeat"], "fold": r.data["fold"], "seed": r.data["seed"],
                          "n_trained_on": int(s.sum()), "n_held_out": int((~s).sum()),
                          "mean_ll_trained_on": float(lrow[s].mean()), "mean_ll_held_out": float(lrow[~s].mean()),
                          "gap": float(lrow[s].mean() - lrow[~s].mean()), "seconds": round(float(r.data["seconds"]), 3)})
    finite = scores[np.isfinite(scores)]
    rng = np.random.default_rng([cfg.seed, 20211206])
    boot = finite[rng.integers(0, finite.size, size=(N_BOOT, finite.size))].mean(axis=1) if finite.size else np.array([])
    mean_ci = [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))] if boot.size else [None, None]

    def point(i: int) -> dict[str, Any]:
        return {k: table[i][k] for k in ("index", "row", "label", "score", "log_p_in", "log_p_out") if k in table[i]}

    summary: dict[str, Any] = {
        "family": cfg.family, "data": cfg.data, "n": n, "n_data_rows": st.n_all, "folds": cfg.folds, "repeats": cfg.repeats,
        "n_trainings": len(rows), "steps": st.steps, "bound": st.bound,
        "seeds": f"folds: seed {cfg.seed}; training m (repeat * folds + fold): seed {cfg.seed} + m",
        "score": {"unit": "nats", "mean": float(finite.mean()) if finite.size else None, "mean_ci": mean_ci,
                  "ci_level": 0.95, "median": float(np.median(finite)) if finite.size else None,
                  "q05": float(np.quantile(finite, 0.05)) if finite.size else None,
                  "q95": float(np.quantile(finite, 0.95)) if finite.size else None,
                  "max": float(finite.max()) if finite.size else None, "n_not_finite": int(n - finite.size)},
        "stands_out_rule": f"score > median + {OUTLIER_MADS:g} x 1.4826 x MAD", "stands_out_limit": limit,
        "n_stand_out": int(out_mask.sum()),
        "stand_out": [point(int(i)) for i in order if out_mask[i]][:50],
        "top": [point(int(i)) for i in order[:10]],
        "mean_gap": float(np.mean([tr["gap"] for tr in trainings])),
    }
    summary["verdict"] = _verdict(summary)
    write_csv(out / "kfold.csv", table)
    write_csv(out / "trainings.csv", trainings)
    _report(out, cfg, st, summary, scores, order, trainings)
    summary["timings"] = {"trainings_s": round(float(sum(r.data["seconds"] for r in rows)), 3),
                          "finalize_s": round(time.perf_counter() - t, 3),
                          "total_s": round(time.perf_counter() - st.t_start, 3)}
    write_json(out / "summary.json", summary)
    return summary


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(float(v)) else f"{float(v):.{digits}g}"


def _verdict(s: dict[str, Any]) -> list[str]:
    sc = s["score"]
    k, n = s["n_stand_out"], s["n"]
    lines = []
    if k:
        top = s["top"][0]
        lines.append(f"**{k} of {n} training points stand out as memorized**: their score is above the bulk's "
                     f"robust upper limit {_f(s['stands_out_limit'])} nats (median + {OUTLIER_MADS:g} x 1.4826 x MAD); "
                     f"the highest, row {top['row']}, scores {_f(top['score'])} nats (about "
                     f"{_f(np.exp(min(top['score'], 700)))} times likelier when trained on).")
    else:
        lines.append(f"**No training point stands out as memorized**: no score is above the bulk's robust upper "
                     f"limit {_f(s['stands_out_limit'])} nats (median + {OUTLIER_MADS:g} x 1.4826 x MAD).")
    lines.append(f"Mean score {_f(sc['mean'])} nats (95 % CI {_f(sc['mean_ci'][0])} to {_f(sc['mean_ci'][1])}, "
                 f"bootstrap over points), median {_f(sc['median'])}; 0 means a point is as likely held out as "
                 f"trained on. {s['family']}, {s['folds']} folds x {s['repeats']} repeat(s), {s['steps']} steps per "
                 f"training; {s['bound']}.")
    return lines


def _report(out: Path, cfg: KFoldConfig, st: _KFoldState, summary: dict[str, Any], scores: np.ndarray,
            order: np.ndarray, trainings: list[dict[str, Any]]) -> None:
    report = Report("memgeo kfold", subtitle=f"K-fold likelihood memorization score of {cfg.family} on {cfg.data} "
                                             f"({summary['n']} points, {cfg.folds} folds x {cfg.repeats} repeats)")
    report.add_verdict("\n".join(f"- {x}" for x in summary["verdict"]), warn=summary["n_stand_out"] > 0)
    figure_to_report(report, score_histogram({"training points": scores},
                                             xlabel="memorization score M_i (nats)", title="K-fold memorization score",
                                             bins=30, density=False),
                     out / "figures" / "scores.png", heading="Score distribution",
                     caption=f"M_i = log-mean-exp of log p(x_i) over the models trained on x_i minus that over the "
                             f"models that held it out. Robust upper limit of the bulk: {_f(summary['stands_out_limit'])} "
                             "nats; 0: no effect of training on x_i.")
    top = [int(i) for i in order[: min(16, len(order))]]
    if st.x.dim() in (3, 4) and top:
        figure_to_report(report, image_grid(st.x[top].numpy(), titles=[f"row {st.rows[i]}: {scores[i]:.2f}" for i in top],
                                            ncols=8),
                         out / "figures" / "top_points.png", heading="Top-scoring training points",
                         caption="The training points with the highest scores (data row: M_i in nats).")
    report.add_table(summary["top"], heading="Top-scoring points" if st.x.dim() not in (3, 4) else None,
                     note="Full table: kfold.csv.", csv="kfold.csv", max_rows=10)
    report.add_table(trainings, heading="Trainings", max_rows=len(trainings), csv="trainings.csv",
                     note="gap: mean log-likelihood of the points a model was trained on minus that of the points "
                          "it held out (nats), i.e. the generalisation gap of that model.")
    report.add_text("van den Burg & Williams (2021): every point is held out of one model per repeat and trained on "
                    "by the others; the score compares the two averaged densities (log-mean-exp, the paper's "
                    "estimator). Each training is one work item with its own seed, so a sharded or Ray run gives "
                    "the same numbers.", heading="Method")
    report.add_json(cfg, heading="Resolved config")
    report.write(out / "report.html")


KFOLD_ITEMS = ItemCommand(name="kfold", ref="memgeo.workflows.kfold_runs:KFOLD_ITEMS", config=KFoldConfig,
                          prepare=prepare_kfold, score_batch=score_kfold, finalize=finalize_kfold, noun="trainings")


@run_command
def run_kfold(cfg: KFoldConfig, out: str | Path, *, scale: ScaleOptions | None = None) -> dict[str, Any]:
    """K-fold memorization score of ``cfg.family`` on ``cfg.data``; writes the files of the module notes.

    ``scale``: ``--shard I/N`` / ``--engine ray`` (:mod:`memgeo.workflows.items`): one item per training.

    Returns
    -------
    dict
        The content of ``summary.json`` (a shard run: the shard's description).
    """
    check_out(out)
    return run_items(KFOLD_ITEMS, prepare_kfold(cfg), out, scale, progress=False)
