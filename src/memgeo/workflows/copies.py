"""``memgeo copies``: model-agnostic copy metrics on (train, held-out, generated) samples, with a report.

:func:`run_copies` resolves the three sample sets (``.npy`` files, memory-mapped; folders of
PNG/JPEG images, converted by the policy of :mod:`memgeo.data.images`; or, for the generations, a
memgeo checkpoint folder sampled ``n_gen`` times), maps them to one feature space
(:func:`memgeo.models.features.extract_features`, cached on disk by content hash), runs the copy
metrics of :mod:`memgeo.memorization.copy_metrics` with their bootstrap CIs and held-out baselines,
and writes into ``OUT``:

``copies.csv``
    One row per generated sample: ``index``, ``file`` (image folders), ``copy`` (the verdict of the
    primary criterion, d1/d2 when it is computed), ``n_criteria`` (how many local criteria flag the
    sample), the nearest training sample (``nearest_train_index``, ``nearest_train_file``,
    ``nearest_train_distance`` in normalized l2 ``||a - b|| / sqrt(D)`` of the feature space), then
    per metric its per-sample value (column named by :data:`PER_SAMPLE_COLUMNS`), the verdict
    ``<metric>_copy`` of every local criterion, and ``<metric>_train_index`` where the metric's own
    match differs from the l2 nearest one (cosine, tiled l2, clique).
``summary.json``
    Every metric's value, CI, baseline (with its CI), direction, options and details; the verdict
    lines; the inputs (path, kind, shape, sha256, bytes); the features used; the timings (seconds).
``report.html``
    The verdict first, the metrics table (value [CI] and the held-out baseline [CI] side by side),
    the flagged generations next to their training matches, the C_T per-cell z figure, histograms of
    the distance to the training set of generated and held-out samples, the notation.
``generated.npy``
    Only when ``gen`` is a checkpoint: the samples drawn.

Default metrics: every registered one that applies, i.e. ``tiled_l2`` only for image inputs in
pixel features (it needs the image shape) and ``cosine`` only in a learned feature space (its 0.5
threshold is calibrated for copy-detection features such as SSCD's, not for raw pixels).

Scale-out (``--shard I/N``, ``--engine ray``, ``memgeo merge``; :mod:`memgeo.workflows.items`): the items
are the generated samples (id ``gNNNNNN``), scored in units of :data:`UNIT_SIZE`. Per unit
(:func:`score_copies`) the generated samples' searches against the distinct training samples run: the
nearest ``k`` in normalized l2 (the largest ``k`` any metric asks), the cosine-space nearest (``cosine``)
and the tiled-l2 nearest (``tiled_l2``). :func:`finalize_copies` puts them into the
:class:`~memgeo.memorization.copy_metrics.CopyData` search cache and computes everything that needs all
samples at once (listed in its docstring): every global value, CI and baseline, the tables and the
report. A plain run is the same prepare / units / finalize in one process.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from memgeo.data.images import SampleSet, load_sample_set
from memgeo.errors import MemgeoError, check_choice, check_scalar
from memgeo.io import hash_file, write_csv, write_json, write_npy
from memgeo.memorization.copy_metrics import COPY_METRICS, CopyData, MetricResult
from memgeo.memorization.copy_metrics.local import tiled_train_nn
from memgeo.models.features import extract_features, feature_cache_dir, get_extractor
from memgeo.report import Report, copy_pairs_grid, glossary, score_histogram
from memgeo.report.plots import finish_axes, new_figure
from memgeo.workflows.common import check_out, figure_to_report, run_command, say
from memgeo.workflows.items import Item, ItemCommand, ItemRow, Plan, ScaleOptions, run_items, units_of

__all__ = ["BACKENDS", "COPIES_ITEMS", "CopiesConfig", "PER_SAMPLE_COLUMNS", "UNIT_SIZE", "finalize_copies",
           "prepare_copies", "run_copies", "score_copies"]

BACKENDS = ("auto", "torch", "faiss", "faiss-ivf", "faiss-hnsw")

#: copies.csv column of each metric's per-sample value (others use the metric's name).
PER_SAMPLE_COLUMNS = {
    "d1d2": "d1_over_d2", "nn_ratio": "nn_ratio", "dcr": "dcr_ratio", "cosine": "cosine_similarity",
    "tiled_l2": "tiled_l2_distance", "authenticity": "authentic", "datacopy_rate": "in_copying_ball",
    "clique": "clique_size", "ct": "ct_cell_z", "fld": "fld_o", "precision": "in_real_support",
    "density": "density",
}
#: Readable metric names for the report.
LABELS = {
    "d1d2": "d₁/d₂ < 1/3", "nn_ratio": "NN ratio (Carlini)", "dcr": "DCR below held-out 5 %",
    "cosine": "cosine similarity", "tiled_l2": "tiled ℓ²", "authenticity": "authenticity",
    "datacopy_rate": "data-copying rate", "clique": "clique attack", "ct": "C_T", "fld": "FLD",
    "precision": "precision", "recall": "recall", "density": "density", "coverage": "coverage",
}
#: How to read each metric's value, in a few words (the full sentence is in summary.json).
READS = {
    "authenticity": "lower = more copying", "ct": "below −2 = copying; above 2 = underfitting",
    "fld": "gap below −10 = copying", "precision": "fidelity; not a copy detector",
    "recall": "diversity; not a copy detector", "density": "about 1 ideal; not a copy detector",
    "coverage": "diversity; not a copy detector",
}
#: Glossary keys per metric.
_GLOSSARY_KEYS = {"d1d2": "d1d2", "nn_ratio": "nn_ratio", "dcr": "dcr", "cosine": "cosine", "tiled_l2": "tiled_l2",
                  "authenticity": "authenticity", "datacopy_rate": "datacopy_rate", "clique": "clique", "ct": "ct",
                  "fld": "fld", "precision": "prdc", "recall": "prdc", "density": "prdc", "coverage": "prdc"}
#: C_T below this (with its CI below 0) counts as data-copying; above its negative, as underfitting.
CT_LEVEL = 2.0
#: An FLD gap below this (with its CI below 0) counts as copying.
FLD_GAP_LEVEL = -10.0
#: Authenticity this far (or more) below the held-out baseline (CI below it too) counts as copying.
AUTH_DROP = 0.05


#: Keys of ``index_options`` (keyword arguments of :class:`memgeo.data.neighbors.NeighborIndex`).
INDEX_OPTIONS: tuple[str, ...] = ("nlist", "nprobe", "hnsw_m", "ef_search", "ef_construction", "block_size")


class CopiesConfig(BaseModel):
    """``memgeo copies``: copy metrics of generated samples against a training and a held-out set.

    Attributes
    ----------
    train, test : str
        ``.npy`` file (N, ...) or folder of PNG/JPEG images: the training set and a held-out set of
        the same distribution (never trained on).
    gen : str
        ``.npy`` file or image folder of generated samples, or a memgeo checkpoint folder (diffusion
        or generator family) sampled ``n_gen`` times.
    n_gen : int, optional
        Samples to draw from a checkpoint ``gen`` (only then).
    sample_steps : int
        DDIM steps when ``gen`` is a diffusion checkpoint.
    features : str
        ``pixels``, a registered extractor (``digits-ae``, ``mnist-ae``) or a local model file.
    feature_options : dict
        Options of a model-file extractor (``resize``, ``channels``, ``mean``, ``std``).
    metrics : tuple of str, optional
        Metric names; default every one that applies (module notes).
    options : dict of str to dict
        Per-metric options, e.g. ``{"d1d2": {"threshold": 0.25}}``.
    backend : str
        kNN backend: auto, torch, faiss (exact), faiss-ivf, faiss-hnsw (approximate).
    index_options : dict
        Options of an approximate index (``nlist``, ``nprobe`` for faiss-ivf; ``hnsw_m``, ``ef_search``,
        ``ef_construction`` for faiss-hnsw); ignored by the exact backends.
    n_boot, level, seed
        Bootstrap replicates (0: no CI), CI level, seed of every random choice.
    resample : str
        Resampling filter for image folders whose images are not at the training images' size.
    max_pairs : int
        Most generation / training-match pairs shown in the report.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    train: str
    test: str
    gen: str
    n_gen: int | None = Field(default=None, ge=1)
    sample_steps: int = Field(default=50, ge=1)
    features: str = "pixels"
    feature_options: dict[str, Any] = Field(default_factory=dict)
    metrics: tuple[str, ...] | None = None
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    backend: str = "auto"
    index_options: dict[str, Any] = Field(default_factory=dict)
    n_boot: int = Field(default=200, ge=0)
    level: float = Field(default=0.95, gt=0, lt=1)
    seed: int = Field(default=0, ge=0)
    resample: str = "bicubic"
    max_pairs: int = Field(default=24, ge=0)


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------
def _is_checkpoint(path: Path) -> bool:
    from memgeo.models.checkpoint import MODEL_FILE
    from memgeo.models.loading import INDEX_FILE

    return path.is_dir() and ((path / MODEL_FILE).is_file() or (path / INDEX_FILE).is_file())


def _sample_checkpoint(path: Path, n: int, steps: int, seed: int) -> np.ndarray:
    """(n, *data_shape) float32 samples of a memgeo checkpoint (diffusion: DDIM, unconditional)."""
    from memgeo.models import load
    from memgeo.models.base import model_dtype
    from memgeo.models.generators import Generator
    from memgeo.models.sampling import sample_ddim

    model = load(str(path))
    gen = torch.Generator().manual_seed(seed)
    if isinstance(model, Generator):
        x = model.sample(n, generator=gen).float().cpu()
        if getattr(getattr(model, "config", None), "decoder", None) == "bernoulli":
            x = 2.0 * x - 1.0  # the Bernoulli decoder's [0, 1] back to memgeo's [-1, 1]
    else:
        if getattr(model, "vae", None) is not None or getattr(model, "tokenizer", None) is not None:
            raise MemgeoError(f"--gen {path} is a prompt/latent pipeline", "sample images with `memgeo sample` "
                              "and pass --gen SAMPLES/images.npy")
        noise = torch.randn((n,) + tuple(int(s) for s in model.data_shape), generator=gen).to(model_dtype(model))
        x = sample_ddim(model, noise, steps=steps, clip=(-1.0, 1.0), generator=gen, progress="sampling").x0
        x = x.float().cpu()
    if not bool(torch.isfinite(x).all()):
        raise MemgeoError(f"sampling {path} produced NaN/inf values", "check the checkpoint")
    return x.numpy()


def _describe(s: SampleSet, spec: str) -> dict[str, Any]:
    """Provenance of one input: spec, kind, shape, and sha256 / bytes of what was read."""
    rec: dict[str, Any] = {"spec": spec, "kind": s.kind, "n": len(s), "shape": list(s.shape[1:])}
    path = Path(spec)
    if s.kind == "npy":
        rec.update(sha256=hash_file(path).hexdigest(), bytes=path.stat().st_size)
    elif s.kind == "folder":
        h = hashlib.sha256()
        size = 0
        for name in s.names or []:  # file names and bytes, in load order
            h.update(name.encode() + b"\0")
            hash_file(path / name, h)
            size += (path / name).stat().st_size
        rec.update(sha256=h.hexdigest(), bytes=size, n_files=len(s.names or []), **s.meta)
    else:
        arr = np.ascontiguousarray(s.x)
        rec.update(sha256=hashlib.sha256(arr.tobytes()).hexdigest(), bytes=int(arr.nbytes), **s.meta)
    return rec


def _metric_names(cfg: CopiesConfig, image_shape: tuple[int, ...] | None) -> list[str]:
    if cfg.metrics is None:
        return [n for n, cls in COPY_METRICS.items()
                if not (cls.needs_image_shape and image_shape is None) and not (n == "cosine" and cfg.features == "pixels")]
    names = list(dict.fromkeys(m.strip() for m in cfg.metrics if m.strip()))
    if not names:
        raise MemgeoError("--metrics is empty", f"choose from: {', '.join(COPY_METRICS.names())}")
    for n in names:
        COPY_METRICS.get(n)  # one-line error listing the choices
        if COPY_METRICS[n].needs_image_shape and image_shape is None:
            raise MemgeoError(f"metric {n!r} needs images in pixel features",
                              "pass image folders or (N, C, H, W) .npy files with --features pixels, or drop it")
    return names


# ------------------------------------------------------------------------------------------------
# the run, as work items (prepare / score_batch / finalize)
# ------------------------------------------------------------------------------------------------
#: Generated samples per unit of work: a multiple of the kNN searches' query chunk (1024) and of the tiled
#: search's (256), so a unit's search runs the same blocks as one search over every generated sample.
UNIT_SIZE = 1024


@dataclass
class _CopiesState:
    """What prepare resolved: the three sets, their features (in ``data``), the metrics and the searches
    ``score_copies`` runs per unit."""

    train: SampleSet
    test: SampleSet
    gen: SampleSet
    ext_id: str
    image_shape: tuple[int, ...] | None
    names: list[str]
    metrics: dict[str, Any]
    data: CopyData
    k_pre: int
    cosine: bool
    grids: tuple[int, ...]
    timings: dict[str, float]
    t_start: float


def prepare_copies(cfg: CopiesConfig) -> Plan:
    """Validate, load the three sets, map them to the feature space, build the metrics (options checked).

    Items are the generated samples (id ``gNNNNNN``: the generated sample's index), in units of
    :data:`UNIT_SIZE`. A checkpoint ``gen`` is sampled here (only in a plain run: split runs refuse it).

    Raises
    ------
    MemgeoError
        Missing or unreadable inputs, shapes that differ, unknown metrics / options / backend,
        a checkpoint ``gen`` without ``n_gen`` (or ``n_gen`` without a checkpoint).
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    check_choice(cfg.backend, BACKENDS, "kNN backend")
    check_choice(cfg.resample, ("bicubic", "area", "bilinear", "lanczos", "nearest"), "resampling filter")
    for name in cfg.options:
        COPY_METRICS.get(name)
    stray = sorted(set(cfg.index_options) - set(INDEX_OPTIONS))
    if stray:
        raise MemgeoError(f"unknown index option(s) {', '.join(stray)}", f"use {', '.join(INDEX_OPTIONS)}")
    # --- inputs ---------------------------------------------------------------------------------
    t = time.perf_counter()
    train = load_sample_set(cfg.train, name="--train", resample=cfg.resample)
    test = load_sample_set(cfg.test, like=train, name="--test", resample=cfg.resample)
    gen_path = Path(cfg.gen)
    if _is_checkpoint(gen_path):
        if cfg.n_gen is None:
            raise MemgeoError(f"--gen {gen_path} is a model checkpoint but no --n-gen was given",
                              "pass --n-gen N (how many samples to draw)")
        say(f"sampling {cfg.n_gen} generations from {gen_path}")
        drawn = _sample_checkpoint(gen_path, cfg.n_gen, cfg.sample_steps, cfg.seed)
        gen = load_sample_set(drawn, like=train, name="--gen")
        gen = SampleSet(gen.x, None, "checkpoint", str(gen_path), {"n": cfg.n_gen, "sample_steps": cfg.sample_steps})
    else:
        if cfg.n_gen is not None:
            raise MemgeoError("--n-gen is given but --gen is not a model checkpoint", "drop --n-gen")
        gen = load_sample_set(cfg.gen, like=train, name="--gen", resample=cfg.resample)
    timings["load"] = time.perf_counter() - t
    # --- features -------------------------------------------------------------------------------
    t = time.perf_counter()
    pixels = cfg.features == "pixels"
    ext = get_extractor(cfg.features, cache=feature_cache_dir(), **cfg.feature_options)
    if not pixels:
        say(f"features: {cfg.features}")
    feats = [extract_features(s.x, ext) for s in (train, test, gen)]
    timings["features"] = time.perf_counter() - t
    image_shape = tuple(int(v) for v in train.shape[1:]) if pixels and train.is_image else None
    names = _metric_names(cfg, image_shape)
    stray = sorted(set(cfg.options) - set(names))
    if stray:
        raise MemgeoError(f"options given for metric(s) not computed: {', '.join(stray)}",
                          "add them to --metrics or drop their options")
    metrics = {n: COPY_METRICS.build(n, **dict(cfg.options.get(n, {}))) for n in names}  # options checked here
    t = time.perf_counter()
    data = CopyData(feats[0], feats[1], feats[2], image_shape=image_shape, backend=cfg.backend,
                    index_options=cfg.index_options, n_boot=cfg.n_boot,
                    level=cfg.level, seed=cfg.seed)
    timings["prepare"] = time.perf_counter() - t
    # One search of the largest k any metric asks of gen -> train: the cache serves every smaller k.
    k_pre = max([min(m.criterion.n_neighbors(data.n_train_unique), data.n_train_unique)
                 for m in metrics.values() if hasattr(m, "criterion")] or [1])
    grids = tuple(sorted({int(m.grid) for n, m in metrics.items() if n == "tiled_l2"}))
    items = [Item(f"g{k:06d}", k) for k in range(data.n_gen)]
    state = _CopiesState(train, test, gen, ext.id, image_shape, names, metrics, data, k_pre, "cosine" in names, grids,
                         timings, t_start)
    return Plan(cfg, units_of(items, UNIT_SIZE), state, seed=cfg.seed)


def score_copies(plan: Plan, unit: list[Item]) -> list[ItemRow]:
    """The searches of one unit of generated samples against the distinct training samples.

    Per generated sample (``ItemRow.array``, float64, in this order): the ``k_pre`` nearest normalized-l2
    distances, their training indices, then (cosine metric) the cosine-space nearest distance and index,
    then per tiled-l2 grid the tiled nearest distance and index. Indices are into the original ``train``.
    The first row of the unit carries the unit's wall time (``data["seconds"]``).
    """
    st: _CopiesState = plan.payload
    t = time.perf_counter()
    view = st.data.with_gen_rows(np.array([it.index for it in unit]))
    parts = list(view.gen_train_nn(st.k_pre))
    if st.cosine:
        parts += list(view.gen_train_nn(1, space="cosine"))
    for grid in st.grids:
        d, i = tiled_train_nn(view, "gen", grid)
        parts += [d[:, None], i[:, None]]
    cols = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts], axis=1)
    seconds = time.perf_counter() - t
    return [ItemRow(it.id, it.index, {"seconds": seconds if j == 0 else 0.0}, cols[j].copy())
            for j, it in enumerate(unit)]


def _seed_searches(st: _CopiesState, rows: list[ItemRow]) -> None:
    """Put the per-unit searches of ``rows`` (item order) into ``st.data``'s cache, where the metrics look."""
    data, k = st.data, st.k_pre
    cols = np.stack([r.array for r in rows])
    d, i = np.ascontiguousarray(cols[:, :k]), np.ascontiguousarray(cols[:, k:2 * k].astype(np.int64))
    # CopyData's cache key of a gen -> train search (query, reference, exclude_self, space): see CopyData.knn
    data.cached(("knn", "gen", "train", False, "l2"), lambda: (d, i))
    c = 2 * k
    if st.cosine:
        dc, ic = np.ascontiguousarray(cols[:, c:c + 1]), np.ascontiguousarray(cols[:, c + 1:c + 2].astype(np.int64))
        data.cached(("knn", "gen", "train", False, "cosine"), lambda: (dc, ic))
        c += 2
    for grid in st.grids:
        dt, it = cols[:, c].copy(), cols[:, c + 1].astype(np.int64)
        data.cached(("tiled_train_nn", "gen", grid), lambda dt=dt, it=it: (dt, it))
        c += 2
    if not np.shares_memory(data.gen_train_nn(k)[0], d):
        say("note: the per-item searches were not reused (CopyData's cache changed); searching again")


def finalize_copies(plan: Plan, rows: list[ItemRow], out: Path) -> dict[str, Any]:
    """Every metric from the merged per-sample searches; copies.csv, summary.json, report.html (module notes).

    Computed here, from all generated samples at once: the held-out -> training searches (baselines,
    thresholds), training -> training (spacing, authenticity radii, data-copying), generated ->
    generated and the PRDC passes, the C_T partition, FLD, the clique attack, every global value,
    bootstrap CI and held-out baseline.
    """
    cfg: CopiesConfig = plan.cfg
    st: _CopiesState = plan.payload
    data, metrics, names, gen, train, test = st.data, st.metrics, st.names, st.gen, st.train, st.test
    timings = dict(st.timings)
    timings["knn_gen"] = float(sum(r.data.get("seconds", 0.0) for r in rows))
    if gen.kind == "checkpoint":
        write_npy(out / "generated.npy", np.asarray(gen.x, dtype=np.float32))
    _seed_searches(st, rows)
    t = time.perf_counter()
    say(f"nearest {st.k_pre} training samples of {data.n_test} held-out samples ({cfg.backend} index)")
    data.test_train_nn(st.k_pre)
    timings["knn_test"] = time.perf_counter() - t
    results: dict[str, MetricResult] = {}
    for n, metric in metrics.items():
        say(f"copy metric {n} ({data.n_gen} generated vs {data.n_train} training samples)")
        t = time.perf_counter()
        results[n] = metric.evaluate(data)
        timings[f"metric:{n}"] = time.perf_counter() - t
    t = time.perf_counter()
    d_gen, i_gen = data.gen_train_nn(1)
    d_test, _ = data.test_train_nn(1)
    nearest = (d_gen[:, 0], i_gen[:, 0])
    primary = next((n for n in ("d1d2", *names) if n in results and results[n].flagged is not None
                    and COPY_METRICS[n].kind == "local"), None)
    table = _rows(results, gen, train, nearest, primary)
    inputs = {"train": _describe(train, cfg.train), "test": _describe(test, cfg.test),
              "gen": _describe(gen, cfg.gen)}
    features = {"extractor": cfg.features, "id": st.ext_id, "dim": data.dim, "options": cfg.feature_options,
                "image_shape": list(st.image_shape) if st.image_shape else None}
    verdict, sees = _verdict(results, primary, data.n_gen)
    summary: dict[str, Any] = {
        "n_train": data.n_train, "n_train_distinct": data.n_train_unique, "n_test": data.n_test,
        "n_gen": data.n_gen, "dim": data.dim, "primary": primary,
        "n_copies": results[primary].n_flagged if primary else None,
        "copy_rate": results[primary].value if primary else None,
        "copy_rate_ci": [results[primary].ci_low, results[primary].ci_high] if primary else None,
        "copy_rate_baseline": results[primary].baseline if primary else None,
        "global_sees_copying": sees, "verdict": verdict,
        "metrics": {n: {**r.summary(), "kind": COPY_METRICS[n].kind, "options": dict(cfg.options.get(n, {}))}
                    for n, r in results.items()},
        "distance_to_train": {"median_gen": float(np.median(d_gen[:, 0])), "median_test": float(np.median(d_test[:, 0])),
                              "unit": "normalized l2 ||a - b|| / sqrt(D) in the feature space"},
        "backend": cfg.backend, "index_options": cfg.index_options, "n_boot": cfg.n_boot, "level": cfg.level,
        "seed": cfg.seed,
        "features": features, "inputs": inputs,
    }
    write_csv(out / "copies.csv", table)
    timings["tables"] = time.perf_counter() - t
    t = time.perf_counter()
    _report(out, cfg, summary, results, table, train, gen, d_gen[:, 0], d_test[:, 0])
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - st.t_start
    summary["timings"] = {k: round(v, 4) for k, v in timings.items()}
    write_json(out / "summary.json", summary)
    return summary


def _refuse_split_checkpoint() -> None:
    raise MemgeoError("a checkpoint --gen is sampled by the run itself, so the run cannot be split "
                      "(--shard / --engine ray)", "run it once without them (it saves generated.npy) and pass "
                                                  "--gen OUT/generated.npy")


def _check_split_copies(plan: Plan) -> None:
    if plan.payload.gen.kind == "checkpoint":
        _refuse_split_checkpoint()


COPIES_ITEMS = ItemCommand(name="copies", ref="memgeo.workflows.copies:COPIES_ITEMS", config=CopiesConfig,
                           prepare=prepare_copies, score_batch=score_copies, finalize=finalize_copies,
                           noun="generated samples", check_split=_check_split_copies)


@run_command
def run_copies(cfg: CopiesConfig, out: str | Path, *, scale: ScaleOptions | None = None) -> dict[str, Any]:
    """Copy metrics of ``cfg.gen`` against ``cfg.train`` with held-out baselines; writes the files of the module notes.

    ``scale``: ``--shard I/N`` / ``--engine ray`` (:mod:`memgeo.workflows.items`): the searches of the
    generated samples run per unit of :data:`UNIT_SIZE`, the rest in :func:`finalize_copies`.

    Returns
    -------
    dict
        The content of ``summary.json`` (a shard run: the shard's description).

    Raises
    ------
    MemgeoError
        Missing or unreadable inputs, shapes that differ, unknown metrics / options / backend,
        a checkpoint ``gen`` without ``n_gen`` (or ``n_gen`` without a checkpoint), a checkpoint ``gen``
        in a split run, before anything is written.
    """
    check_out(out)
    if scale is not None and scale.split and _is_checkpoint(Path(cfg.gen)):
        _refuse_split_checkpoint()  # before prepare samples the checkpoint
    return run_items(COPIES_ITEMS, prepare_copies(cfg), out, scale, progress=False)


def _rows(results: dict[str, MetricResult], gen: SampleSet, train: SampleSet,
          nearest: tuple[np.ndarray, np.ndarray], primary: str | None) -> list[dict[str, Any]]:
    """The rows of copies.csv (see the module notes); ``primary`` gives the ``copy`` column."""
    n = len(gen)
    local = [k for k, r in results.items() if COPY_METRICS[k].kind == "local" and r.flagged is not None]
    n_crit = np.sum([results[k].flagged for k in local], axis=0) if local else np.zeros(n, dtype=int)
    cols: dict[str, Any] = {"index": np.arange(n)}
    if gen.names is not None:
        cols["file"] = gen.names
    if primary is not None:
        cols["copy"] = results[primary].flagged
        cols["n_criteria"] = n_crit
    cols["nearest_train_index"] = nearest[1]
    if train.names is not None:
        cols["nearest_train_file"] = [train.names[i] for i in nearest[1]]
    cols["nearest_train_distance"] = nearest[0]
    for k, r in results.items():
        if r.per_sample is not None:
            cols[PER_SAMPLE_COLUMNS.get(k, k)] = r.per_sample
        if k in local:
            cols[f"{k}_copy"] = r.flagged
        if r.nearest_index is not None and r.per_sample is not None and not np.array_equal(r.nearest_index, nearest[1]):
            cols[f"{k}_train_index"] = r.nearest_index
    return [{c: _plain(v[j]) for c, v in cols.items()} for j in range(n)]


def _plain(v: Any) -> Any:
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


# ------------------------------------------------------------------------------------------------
# verdict and report
# ------------------------------------------------------------------------------------------------
def _f(x: Any, digits: int = 3) -> str:
    """A number for a reader (``digits`` significant digits; ``n/a`` for None/NaN)."""
    if x is None:
        return "n/a"
    v = float(x)
    if not np.isfinite(v):
        return "n/a"
    if v != 0 and (abs(v) >= 10 ** (digits + 2) or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def _pct(x: Any) -> str:
    return "n/a" if x is None or not np.isfinite(float(x)) else f"{100 * float(x):.3g} %"


def _ci(lo: Any, hi: Any, fmt: Any = _f) -> str:
    if lo is None or hi is None or not (np.isfinite(float(lo)) and np.isfinite(float(hi))):
        return "[no CI]"
    return f"[{fmt(lo)}, {fmt(hi)}]"


def _is_rate(name: str) -> bool:
    return COPY_METRICS[name].kind == "local" or name in ("datacopy_rate", "clique")


def _above(r: MetricResult) -> bool:
    """Whether a rate is above its held-out baseline beyond its CI."""
    return r.baseline is not None and np.isfinite(r.ci_low) and r.ci_low > r.baseline


def _verdict(results: dict[str, MetricResult], primary: str | None, n_gen: int) -> tuple[list[str], dict[str, Any]]:
    """Plain-language findings (Markdown-ish lines) and, per global test, whether it sees copying (None: n/a)."""
    lines: list[str] = []
    if primary is not None:
        r = results[primary]
        lab = LABELS.get(primary, primary)
        head = (f"{r.n_flagged} of {n_gen} generations ({_pct(r.value)}, 95 % CI {_ci(r.ci_low, r.ci_high, _pct)}) "
                f"copy a training sample by the {lab} criterion; the held-out baseline is {_pct(r.baseline)}")
        if _above(r):
            lines.append(f"**Copying: {head}.**")
        else:
            lines.append(f"**No copying beyond the held-out baseline: {head}.**")
    others = [(k, r) for k, r in results.items() if _is_rate(k) and k != primary]
    if others:
        lines.append("Other criteria (flagged generations, baseline): " + "; ".join(
            f"{LABELS.get(k, k)} {r.n_flagged} ({_pct(r.value)}, baseline {_pct(r.baseline)}"
            + (", above it" if _above(r) else "") + ")" for k, r in others) + ".")
    sees: dict[str, Any] = {}
    glob: list[str] = []
    if "ct" in results:
        r = results["ct"]
        ok = np.isfinite(r.value)
        copy = bool(ok and r.value < -CT_LEVEL and (not np.isfinite(r.ci_high) or r.ci_high < 0))
        sees["ct"] = copy if ok else None
        what = ("generations lie closer to the training set than held-out data do (data-copying)" if copy else
                "generations lie farther from the training set than held-out data (underfitting, not copying)"
                if ok and r.value > CT_LEVEL else "no data-copying seen" if ok else "undefined (too few samples per cell)")
        glob.append(f"C_{{T}} = {_f(r.value)} {_ci(r.ci_low, r.ci_high)} (held-out baseline {_f(r.baseline)}): {what}")
    if "authenticity" in results:
        r = results["authenticity"]
        copy = bool(r.baseline is not None and r.value < r.baseline - AUTH_DROP
                    and (not np.isfinite(r.ci_high) or r.ci_high < r.baseline))
        sees["authenticity"] = copy
        glob.append(f"authenticity {_pct(r.value)} {_ci(r.ci_low, r.ci_high, _pct)} vs held-out {_pct(r.baseline)}: "
                    + ("fewer authentic generations than new data (copying)" if copy else "no deficit"))
    if "fld" in results:
        r = results["fld"]
        gap, gci = r.extra.get("gap"), r.extra.get("gap_ci", [float("nan")] * 2)
        ok = gap is not None and np.isfinite(gap)
        copy = bool(ok and gap < FLD_GAP_LEVEL and (not np.isfinite(gci[1]) or gci[1] < 0))
        sees["fld"] = copy if ok else None
        glob.append(f"FLD gap {_f(gap)} {_ci(*gci)} (FLD {_f(r.value)}, held-out {_f(r.baseline)}): "
                    + ("the generations' density fits the training set far better than new data (copying)" if copy
                       else "no copying seen"))
    for k in ("datacopy_rate", "clique"):
        if k in results:
            sees[k] = _above(results[k])
    if glob:
        n_yes = sum(bool(v) for v in sees.values())
        n_def = sum(v is not None for v in sees.values())
        lines.append(f"Global tests: {n_yes} of {n_def} see copying. " + "; ".join(glob) + ".")
    return lines, sees


def _ct_figure(r: MetricResult) -> Any:
    """Bar chart of the C_T per-cell z-scores (used cells coloured, dropped ones grey)."""
    cells = r.extra.get("cells", [])
    fig = new_figure(6.5, 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(cells))
    z = np.array([c["z"] if c["z"] is not None and np.isfinite(c["z"]) else 0.0 for c in cells])
    used = np.array([c["used"] for c in cells], dtype=bool)
    ax.bar(x[used], z[used], color="tab:blue", label="cell used in C_T")
    if (~used).any():
        ax.bar(x[~used], z[~used], color="0.7", label="dropped (too few generations)")
    for level, style in ((-CT_LEVEL, "--"), (0.0, "-"), (CT_LEVEL, "--")):
        ax.axhline(level, color="0.3", linestyle=style, linewidth=0.8)
    ax.set_xticks(x, [f"{c['cell']}\n({c['n_gen']} gen.)" for c in cells], fontsize=8)
    finish_axes(ax, "k-means cell π (fitted on the training set), generations in it",
                r"$Z_\pi$ (Mann–Whitney z, no unit)", f"$C_T$ per-cell z; $C_T$ = {_f(r.value)}",
                legend={"fontsize": 8})
    return fig


def _report(out: Path, cfg: CopiesConfig, summary: dict[str, Any], results: dict[str, MetricResult],
            rows: list[dict[str, Any]], train: SampleSet, gen: SampleSet, d_gen: np.ndarray, d_test: np.ndarray) -> None:
    """report.html (sections in the module notes); figures also saved under OUT/figures."""
    report = Report("memgeo copies", subtitle=f"{summary['n_gen']} generated ({cfg.gen}) vs {summary['n_train']} "
                                              f"training ({cfg.train}), held-out {cfg.test}; features {cfg.features}")
    sees = summary["global_sees_copying"]
    rate_copy = summary["primary"] is not None and _above(results[summary["primary"]])
    report.add_verdict("\n".join(f"- {x}" for x in summary["verdict"]), warn=rate_copy or any(bool(v) for v in sees.values()))
    table = []
    for k, r in sorted(results.items(), key=lambda kv: COPY_METRICS[kv[0]].kind != "local"):
        rate = _is_rate(k) or k == "authenticity"
        fmt = _pct if rate else _f
        row = {"metric": LABELS.get(k, k), "kind": "per sample" if COPY_METRICS[k].kind == "local" else "global",
               "value [95 % CI]": f"{fmt(r.value)} {_ci(r.ci_low, r.ci_high, fmt)}",
               "held-out baseline [95 % CI]": f"{fmt(r.baseline)} {_ci(*r.extra.get('baseline_ci', [None, None]), fmt)}",
               "flagged": f"{r.n_flagged} of {summary['n_gen']}" if r.flagged is not None else "",
               "reads": READS.get(k, "higher = more copying")}
        if k == "fld":
            row["value [95 % CI]"] += f"; gap {_f(r.extra.get('gap'))} {_ci(*r.extra.get('gap_ci', [None, None]))}"
        table.append(row)
    report.add_table(table, heading="Metrics", max_rows=len(table),
                     note="Every value next to the same metric on held-out samples in place of the generations "
                          "(metrics that use the held-out set split it in halves). CIs: percentile bootstrap, "
                          f"{cfg.n_boot} replicates. Full details: summary.json.", csv="summary.json")
    # --- flagged generations next to their training matches ---------------------------------------
    primary = summary["primary"]
    n_crit = np.array([r.get("n_criteria", 0) for r in rows])
    flagged = np.flatnonzero(n_crit > 0)
    order = flagged[np.lexsort((d_gen[flagged], -n_crit[flagged]))]
    heading = "Flagged generations and their training matches"
    if order.size == 0:
        order = np.argsort(d_gen, kind="stable")[: min(8, len(rows))]
        note = "No generation is flagged by any per-sample criterion; shown: the closest generations to the training set."
    else:
        note = (f"{order.size} generations are flagged by at least one per-sample criterion"
                + (f"; the {min(order.size, cfg.max_pairs)} flagged by most criteria (then the closest) are shown"
                   if order.size > cfg.max_pairs else "") + ".")
    order = order[: cfg.max_pairs]
    if order.size and gen.is_image and train.is_image:
        idx = np.array([rows[j]["nearest_train_index"] for j in order])
        g_img = np.asarray(gen.x[order], dtype=np.float32)
        t_img = np.asarray(train.x[idx], dtype=np.float32)
        gt = [f"gen {j}" + (f" {rows[j]['file'][:12]}" if "file" in rows[j] else "") for j in order]
        mt = [f"train {i}, d={_f(rows[j]['nearest_train_distance'], 2)}" for i, j in zip(idx, order)]
        figure_to_report(report, copy_pairs_grid(g_img, t_img, titles=gt, match_titles=mt, ncols=4),
                         out / "figures" / "pairs.png", heading=heading,
                         caption=note + " Left of each pair: the generation (index in copies.csv); right: its "
                                        "nearest training sample with the normalized ℓ^{2} distance d. "
                                        + (f"Copy verdicts by {LABELS.get(primary, primary)} in copies.csv." if primary else ""))
    if order.size:
        keep = [c for c in ("index", "file", "copy", "n_criteria", "nearest_train_index", "nearest_train_file",
                            "nearest_train_distance", "d1_over_d2") if c in rows[0]]
        report.add_table([{c: rows[j][c] for c in keep} for j in order],
                         heading=None if gen.is_image and train.is_image else heading,
                         note=None if gen.is_image and train.is_image else note, csv="copies.csv",
                         max_rows=cfg.max_pairs)
    # --- C_T per cell, distances -------------------------------------------------------------------
    if "ct" in results and results["ct"].extra.get("cells"):
        r = results["ct"]
        figure_to_report(report, _ct_figure(r), out / "figures" / "ct_cells.png", heading="C_T per k-means cell",
                         caption=f"Z_{{π}} per k-means cell (k = {r.extra.get('k')}), with the number of generations "
                                 "in each cell. Below −2 (dashed): generations closer to the training set than held-out "
                                 f"samples in that cell. Dropped cells: {r.extra.get('dropped_cells')}.")
    figure_to_report(report, score_histogram({"generated": d_gen, "held-out": d_test},
                                             xlabel="distance to the nearest training sample, ‖a − b‖/√D "
                                                    f"({'pixel' if cfg.features == 'pixels' else 'feature'} units)",
                                             title="Distance to the training set", bins=40),
                     out / "figures" / "nn_distances.png", heading="Distance to the training set",
                     caption=f"Median: generated {_f(summary['distance_to_train']['median_gen'])}, held-out "
                             f"{_f(summary['distance_to_train']['median_test'])}. Copies pile up at 0; a generator "
                             "that never saw the training set matches the held-out histogram.")
    keys = ["held_out", "ci", "nl2"] + list(dict.fromkeys(_GLOSSARY_KEYS[k] for k in results if k in _GLOSSARY_KEYS))
    if "ct" in results:
        keys.append("ct_z")
    report.add_glossary(glossary(keys))
    report.add_text(
        "Per-sample criteria compare each generation with its nearest *distinct* training samples (exact duplicates "
        "in the training set are collapsed). Global tests: C_{T} sees copying below −2 (with its CI below 0); "
        f"authenticity when more than {AUTH_DROP:.0%} below the held-out baseline (CI below it); FLD when its gap "
        f"is below {FLD_GAP_LEVEL:g} (CI below 0); the data-copying rate and the clique attack when their CI lies "
        "above the held-out baseline. Precision, recall, density and coverage measure fidelity and diversity, not "
        "copying.", heading="Method")
    inp = summary["inputs"]
    report.add_table([{"set": k, "source": v["spec"], "kind": v["kind"], "samples": v["n"], "shape": v["shape"],
                       "sha256": v["sha256"][:16] + "…", "bytes": v["bytes"]} for k, v in inp.items()],
                     heading="Inputs", note=f"Features: {cfg.features} (dimension {summary['dim']}); kNN backend "
                                            f"{cfg.backend}. Full sha256 in summary.json.")
    report.add_json(cfg, heading="Resolved config")
    report.write(out / "report.html")
