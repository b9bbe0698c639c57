"""``memgeo mitigate``: sample every prompt with each mitigation method and measure copying and fidelity.

Output folder::

    config.json, provenance.json   resolved settings (a rerun with other settings is refused)
    records/<method>/NNNNN.json    one finished prompt: seeds, cost, seconds, diagnostics (written last)
    records/<method>/NNNNN.npy     its generations as images, (G, C, H, W) (latents are decoded)
    generations.csv                one row per generation: copy label, nearest training image, class
    results.json, results.csv      one row per method: copy rates, accuracy, cost (and the baseline deltas)
    report.html                    the table, the trade-off plot and method-by-prompt grids

Resumable: a prompt's record is written atomically after its generations, so a run killed halfway
keeps every finished prompt and a rerun with the same options only generates the missing ones.
Every generation's noise comes from its own seed (``seed + prompt_index * generations + g``, or the
prompt file's ``seed`` field in place of ``seed + prompt_index * generations``), so results do not
depend on where a run was interrupted, and every method starts from the same noises as the baseline.

Reduced precision (``dtype`` float16 or bfloat16): the model is loaded in that dtype, the noise is
drawn in float32 from the seeds and then cast, and the images are saved in float32. The methods
that optimise with Adam (SAIL, han_noise, wen_prompt) keep the iterate and the Adam moments in
float32 (master weights) and evaluate the model in its dtype; in the model's own dtype the step
underflowed (1e-8 is 0 in float16: NaN or no movement). A method that uses an operation the CPU
lacks, or returns non-finite samples, stops with a one-line error.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from memgeo.data.prompts import PromptEntry, load_prompts
from memgeo.data.registry import load_points
from memgeo.errors import MemgeoError, check_fits_in_memory
from memgeo.io import write_csv, write_json, write_npy
from memgeo.memorization.copies import COPY_CRITERIA, label_copies
from memgeo.memorization.mitigation import MITIGATIONS, Mitigation, get_mitigation
from memgeo.models.base import model_dtype
from memgeo.models.loading import DTypeName, load
from memgeo.models.prompt import PromptDiffusionModel
from memgeo.report import Report, glossary
from memgeo.report.mitigation_plots import method_grid, tradeoff_plot
from memgeo.workflows.common import (
    check_prompt_tokens,
    figure_to_report,
    previous_config,
    run_command,
    say,
)
from memgeo.workflows.items import Item, ItemCommand, ItemRow, Plan, RowCache, ScaleOptions, run_items

BASELINE = "none"


class MitigateConfig(BaseModel):
    """Settings of :func:`run_mitigate`."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: str
    prompts: str
    methods: tuple[str, ...] = ("none", "sail")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="hyper-parameters per method")
    generations: int = Field(4, ge=1)
    steps: int = Field(50, ge=1)
    guidance: float = Field(4.0, ge=0)
    clip: float | None = Field(1.0, gt=0, description="clamp x0 predictions to [-clip, clip]; None: no clamp")
    train_data: str | None = None
    classifier: str | None = None
    criterion: str = "ratio"
    threshold: float | None = None
    max_prompts: int | None = Field(None, ge=1)
    seed: int = 0
    grid_prompts: int = Field(8, ge=0)
    dtype: DTypeName = "float32"


def _methods(cfg: MitigateConfig) -> dict[str, Mitigation]:
    names = list(dict.fromkeys((BASELINE,) + tuple(cfg.methods)))  # the baseline always runs, first
    for name in names:
        if name not in MITIGATIONS:
            raise MemgeoError(f"unknown mitigation method {name!r}", f"choose from: {', '.join(MITIGATIONS)}")
    extra = set(cfg.params) - set(names)
    if extra:
        raise MemgeoError(f"parameters given for methods not run: {', '.join(sorted(extra))}",
                          "add them to --method or drop their parameters")
    return {name: get_mitigation(name, **cfg.params.get(name, {})) for name in names}


def is_latent(model: PromptDiffusionModel) -> bool:
    """Whether the model samples VAE latents (a diffusers latent pipeline) that must be decoded to images."""
    return getattr(model, "vae", None) is not None and hasattr(model, "decode")


def image_shape(model: PromptDiffusionModel) -> tuple[int, ...]:
    """Per-sample shape of the generated images (decoded when the model works in a latent space)."""
    if not is_latent(model):
        return tuple(model.data_shape)
    with torch.no_grad():
        return tuple(model.decode(torch.zeros(1, *model.data_shape, dtype=model_dtype(model))).shape[1:])


def _load_inputs(cfg: MitigateConfig) -> tuple[PromptDiffusionModel, list[PromptEntry], np.ndarray | None, Any]:
    if cfg.criterion not in COPY_CRITERIA:
        raise MemgeoError(f"unknown copy criterion {cfg.criterion!r}", f"choose from: {', '.join(COPY_CRITERIA)}")
    prompts = load_prompts(cfg.prompts)
    if cfg.max_prompts is not None:
        prompts = prompts[: cfg.max_prompts]
    # float32 (the default) keeps the stored dtype, float32 for checkpoints and pipelines
    model = load(cfg.model, dtype=None if cfg.dtype == "float32" else cfg.dtype)
    if not isinstance(model, PromptDiffusionModel):
        raise MemgeoError(f"{cfg.model} is not a prompt-conditioned model",
                          "point --model at a caption checkpoint or a diffusers pipeline folder")
    check_fits_in_memory(4.0 * GENERATION_COPIES * cfg.generations * model.dim,
                         f"--generations {cfg.generations} per prompt (samples of {model.dim} values)",
                         "use fewer --generations")
    check_prompt_tokens(model, [p.prompt for p in prompts])
    train = None
    if cfg.train_data is not None:
        train = load_points(cfg.train_data).numpy()
        if tuple(train.shape[1:]) != image_shape(model):
            raise MemgeoError(f"training data has per-image shape {tuple(train.shape[1:])} but the model makes "
                              f"{image_shape(model)}", "pass the model's own training images")
    classifier = None
    if cfg.classifier is not None:
        from memgeo.models.classifier import load_classifier

        if not Path(cfg.classifier).exists():
            raise MemgeoError(f"classifier {cfg.classifier} does not exist", "check --classifier")
        classifier = load_classifier(cfg.classifier)
        if any(p.label is None for p in prompts):
            raise MemgeoError("a classifier was given but some prompts have no 'label' field",
                              "add the intended class as 'label' to every prompt (.jsonl/.csv)")
    return model, prompts, train, classifier


#: Copies of one prompt's (generations, *data_shape) float32 batch a method holds at its peak.
GENERATION_COPIES = 16


def _check_resume(out: Path, cfg: MitigateConfig) -> None:
    """Refuse to mix results of different settings in one folder (an unfinished run's config counts)."""
    previous = previous_config(out)
    if previous is not None:
        if isinstance(previous, dict):
            previous.setdefault("dtype", "float32")  # runs made before the option existed
        now = json.loads(cfg.model_dump_json())
        if previous != now:
            diff = sorted(k for k in set(previous) | set(now) if previous.get(k) != now.get(k))
            raise MemgeoError(f"{out} holds a run with other settings ({', '.join(diff)} differ)",
                              "rerun with the same options to resume, or choose a new --out")


def prompt_seed(cfg: MitigateConfig, index: int, entry: PromptEntry) -> int:
    """First seed of a prompt's generations (generation g uses this + g)."""
    return entry.seed if entry.seed is not None else cfg.seed + index * cfg.generations


def _generate_prompt(method: Mitigation, model: PromptDiffusionModel, cfg: MitigateConfig, index: int,
                     entry: PromptEntry) -> tuple[np.ndarray, dict[str, Any]]:
    base = prompt_seed(cfg, index, entry)
    seeds = [base + g for g in range(cfg.generations)]
    noise = torch.stack([torch.randn(model.data_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    with torch.no_grad():
        cond = model.encode([entry.prompt]).expand(cfg.generations, -1, -1).clone()
    clip = None if cfg.clip is None else (-cfg.clip, cfg.clip)
    latent = is_latent(model)
    t0 = time.perf_counter()
    # Latents have no fixed range: clamp the decoded images instead of the x0 predictions.
    try:
        res = method.generate(model, cond, noise.to(cond.dtype), steps=cfg.steps, guidance=cfg.guidance,
                              generator=torch.Generator().manual_seed(base + 2 ** 31), clip=None if latent else clip)
    except (TypeError, NotImplementedError, RuntimeError) as exc:
        if cfg.dtype not in ("float16", "bfloat16"):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise MemgeoError(f"method {method.name} cannot run in {cfg.dtype} on {noise.device.type} ({first})",
                          f"run it with --dtype float32, or drop {method.name} from --method") from exc
    images = res.samples.detach()
    if not torch.isfinite(images).all():
        raise MemgeoError(f"method {method.name} produced NaN/inf samples for prompt {index} in {cfg.dtype}",
                          "run it with --dtype float32" if cfg.dtype in ("float16", "bfloat16")
                          else "lower --guidance or the method's step sizes in --params")
    if latent:
        with torch.no_grad():
            images = model.decode(images)
        if clip is not None:
            images = images.clamp(*clip)
    seconds = time.perf_counter() - t0
    record = {"index": index, "prompt": entry.prompt, "memorized": entry.memorized, "label": entry.label,
              "train_index": entry.extra.get("train_index"), "seeds": seeds, "nfe": res.nfe.tolist(),
              "nbe": res.nbe.tolist(), "seconds": seconds,
              "diagnostics": {k: np.asarray(v, dtype=float).tolist() for k, v in res.diagnostics.items()}}
    return images.cpu().float().numpy(), record


def _rate(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def _summaries(rows: list[dict], names: list[str]) -> list[dict]:
    table = []
    for name in names:
        mine = [r for r in rows if r["method"] == name]
        row: dict[str, Any] = {"method": name, "n_generations": len(mine)}
        for group, sel in (("memorized", [r for r in mine if r["memorized"] is True]),
                           ("generic", [r for r in mine if r["memorized"] is False]), ("all", mine)):
            row[f"copy_rate_{group}"] = _rate(sel, "is_copy")
            row[f"accuracy_{group}"] = _rate(sel, "correct_class")
        mem = [r for r in mine if r["memorized"] is True]
        row["copies_own_image_memorized"] = _rate(mem, "copies_own_image")
        stats = [r["statistic"] for r in mem if r.get("statistic") is not None]
        # How far from the copy threshold the memorized prompts' generations land (d1/d2 for "ratio").
        row["median_statistic_memorized"] = float(np.median(stats)) if stats else None
        row["nfe_per_generation"] = _rate(mine, "nfe")
        row["nbe_per_generation"] = _rate(mine, "nbe")
        row["seconds_per_generation"] = _rate(mine, "seconds")
        table.append(row)
    base = table[0]
    for row in table:  # deltas against the baseline (same prompts, same seeds)
        b, r = base["copy_rate_memorized"], row["copy_rate_memorized"]
        row["copy_reduction_memorized"] = None if b in (None, 0) or r is None else 1 - r / b
        b, r = base["accuracy_all"], row["accuracy_all"]
        row["accuracy_drop_points"] = None if b is None or r is None else 100 * (b - r)
    return table


@dataclass
class _MitigateState:
    methods: dict[str, Mitigation]
    model: PromptDiffusionModel
    prompts: list[PromptEntry]
    train: np.ndarray | None
    classifier: Any


def prepare_mitigate(cfg: MitigateConfig) -> Plan:
    """Validate, load model / prompts / training data / classifier; one item per (method, prompt), id
    ``METHOD/pNNNNNN-sSEED`` (SEED: the prompt's first noise seed), method-major; each item is its own unit."""
    methods = _methods(cfg)
    model, prompts, train, classifier = _load_inputs(cfg)
    n = len(prompts)
    items = [Item(f"{name}/p{i:06d}-s{prompt_seed(cfg, i, e)}", m * n + i)
             for m, name in enumerate(methods) for i, e in enumerate(prompts)]
    return Plan(cfg, [[it] for it in items], _MitigateState(methods, model, prompts, train, classifier), cfg.seed,
                {"n_prompts": n})


def _where(plan: Plan, item: Item) -> tuple[str, int]:
    st: _MitigateState = plan.payload
    n = len(st.prompts)
    return list(st.methods)[item.index // n], item.index % n


def score_mitigate(plan: Plan, unit: list[Item]) -> list[ItemRow]:
    """Generate one prompt's generations with one method: the record as data, the images as the array."""
    st: _MitigateState = plan.payload
    rows = []
    for it in unit:
        name, i = _where(plan, it)
        x, record = _generate_prompt(st.methods[name], st.model, plan.cfg, i, st.prompts[i])
        rows.append(ItemRow(it.id, it.index, record, x))
    return rows


def _record_paths(out: Path, name: str, i: int) -> tuple[Path, Path]:
    folder = out / "records" / name
    return folder / f"{i:05d}.json", folder / f"{i:05d}.npy"


def _read_cached(out: Path, plan: Plan, unit: list[Item]) -> dict[str, ItemRow]:
    found = {}
    for it in unit:
        rec_path, npy_path = _record_paths(out, *_where(plan, it))
        if rec_path.is_file() and npy_path.is_file():
            found[it.id] = ItemRow(it.id, it.index, json.loads(rec_path.read_text()), np.load(npy_path))
    return found


def _write_cached(out: Path, plan: Plan, rows: list[ItemRow]) -> None:
    for r in rows:
        rec_path, npy_path = _record_paths(out, *_where(plan, Item(r.id, r.index)))
        write_npy(npy_path, r.array)
        write_json(rec_path, r.data)  # last: its presence marks the prompt as finished


def _before_start(plan: Plan, out: Path) -> None:
    _check_resume(Path(out), plan.cfg)
    st: _MitigateState = plan.payload
    for name in st.methods:
        done = sum(all(p.is_file() for p in _record_paths(Path(out), name, i)) for i in range(len(st.prompts)))
        if done:
            say(f"{name}: resumed, {done} of {len(st.prompts)} prompts were already finished")


def finalize_mitigate(plan: Plan, rows: list[ItemRow], out: Path) -> dict[str, Any]:
    """Copy labels, classes, generations.csv, results.json / results.csv and the report from all rows."""
    cfg: MitigateConfig = plan.cfg
    st: _MitigateState = plan.payload
    names, prompts = list(st.methods), st.prompts
    samples: dict[str, list[np.ndarray]] = {name: [] for name in names}
    records: dict[str, list[dict]] = {name: [] for name in names}
    for r in rows:
        name, i = _where(plan, Item(r.id, r.index))
        if r.data["prompt"] != prompts[i].prompt:  # same settings, but the prompt file was edited in between
            raise MemgeoError(f"record {name}/{i:05d} was generated for {r.data['prompt']!r}, but prompt {i} "
                              f"is now {prompts[i].prompt!r}", "choose a new --out for the edited prompt file")
        records[name].append(r.data)
        samples[name].append(r.array)
    rows_out = _label(cfg, names, prompts, samples, records, st.train, st.classifier)
    table = _summaries(rows_out, names)
    write_csv(out / "generations.csv", rows_out)
    write_csv(out / "results.csv", table)
    summary = {"methods": {n: {"summary": st.methods[n].summary, "params": st.methods[n].params()} for n in names},
               "table": table, "n_prompts": len(prompts), "generations": cfg.generations, "steps": cfg.steps,
               "guidance": cfg.guidance,
               "copy_criterion": None if st.train is None else {"name": cfg.criterion,
                                                                "threshold": rows_out[0]["threshold"]}}
    write_json(out / "results.json", summary)
    _report(out, cfg, summary, names, prompts, samples, rows_out)
    return summary


MITIGATE_ITEMS = ItemCommand(
    name="mitigate", ref="memgeo.workflows.mitigate:MITIGATE_ITEMS", config=MitigateConfig, prepare=prepare_mitigate,
    score_batch=score_mitigate, finalize=finalize_mitigate, noun="prompt generations", before_start=_before_start,
    cache=RowCache(read=_read_cached, write=_write_cached))


@run_command
def run_mitigate(cfg: MitigateConfig, out: str | Path, *, progress: bool = True,
                 scale: ScaleOptions | None = None) -> dict[str, Any]:
    """Generate with every method, label copies and classes, write results and report; returns the summary.

    ``scale``: ``--shard I/N`` / ``--engine ray`` over the (method, prompt) items (:mod:`memgeo.workflows.items`).
    """
    plan = prepare_mitigate(cfg)
    if scale is None or scale.shard is None:
        methods = ", ".join(plan.payload.methods)
        say(f"mitigate: {len(plan.payload.prompts)} prompts x {cfg.generations} generations, methods {methods} -> {out}")
    return run_items(MITIGATE_ITEMS, plan, out, scale, progress=progress)


def _label(cfg: MitigateConfig, names: list[str], prompts: list[PromptEntry], samples: dict[str, list[np.ndarray]],
           records: dict[str, list[dict]], train: np.ndarray | None, classifier: Any) -> list[dict]:
    rows: list[dict] = []
    for name in names:
        x = np.concatenate(samples[name])
        copies = label_copies(x, train, cfg.criterion, cfg.threshold) if train is not None else None
        pred = classifier.predict(torch.from_numpy(x)).numpy() if classifier is not None else None
        m = 0
        for rec in records[name]:
            for g, seed in enumerate(rec["seeds"]):
                row = {"method": name, "prompt_index": rec["index"], "prompt": rec["prompt"],
                       "memorized": rec["memorized"], "label": rec["label"], "seed": seed, "nfe": rec["nfe"][g],
                       "nbe": rec["nbe"][g], "seconds": rec["seconds"] / len(rec["seeds"])}
                if copies is not None:
                    own = rec["train_index"]
                    row.update(is_copy=bool(copies.is_copy[m]), statistic=float(copies.statistic[m]),
                               d1=float(copies.d1[m]), d2=float(copies.d2[m]),
                               nn_index=int(copies.nn_index[m]), threshold=copies.threshold,
                               copies_own_image=None if own is None else bool(
                                   copies.is_copy[m] and int(copies.nn_index[m]) == int(own)))
                if pred is not None:
                    row.update(predicted=int(pred[m]), correct_class=bool(pred[m] == rec["label"]))
                row.update({f"diag_{k}": v[g] for k, v in rec["diagnostics"].items()})
                rows.append(row)
                m += 1
    return rows


def _report(out: Path, cfg: MitigateConfig, summary: dict, names: list[str], prompts: list[PromptEntry],
            samples: dict[str, list[np.ndarray]], rows: list[dict]) -> None:
    report = Report("memgeo mitigate", subtitle=f"{cfg.model} | {cfg.prompts}")
    table = summary["table"]
    pct = (lambda v: "n/a" if v is None else f"{100 * v:.0f} %")
    base = table[0]
    n_mem = sum(p.memorized is True for p in prompts)
    if base["copy_rate_memorized"] is None:
        report.add_verdict(f"{len(prompts)} prompts generated with {len(names)} method(s); copy rates need "
                           "`--train-data` (the model's training images) and prompts marked memorized, so none is "
                           "stated.", warn=True)
    else:
        lines = [f"Without mitigation **{pct(base['copy_rate_memorized'])}** of the generations for the {n_mem} "
                 "memorized prompts copy a training image."]
        for r in table[1:]:
            acc = ("" if r["accuracy_drop_points"] is None
                   else f", class accuracy +{-r['accuracy_drop_points']:.0f} points" if r["accuracy_drop_points"] < 0
                   else f", class accuracy −{r['accuracy_drop_points']:.0f} points")
            lines.append(f"**{r['method']}: {pct(r['copy_rate_memorized'])}** copies "
                         f"({pct(base['copy_rate_memorized'])} → {pct(r['copy_rate_memorized'])}{acc}, "
                         f"{r['nfe_per_generation']:.0f} NFE per generation).")
        report.add_verdict("\n".join(f"- {x}" for x in lines))
    report.add_glossary(glossary(["copy_rate", "copy", "d1", "nfe"]))
    cols = ["method", "copy_rate_memorized", "copy_reduction_memorized", "accuracy_all", "accuracy_drop_points",
            "median_statistic_memorized", "copy_rate_generic", "nfe_per_generation", "nbe_per_generation",
            "seconds_per_generation"]
    cols = [c for c in cols if any(r.get(c) is not None for r in table)]
    report.add_table(table, heading="Methods", columns=cols, drop_constant=len(table) > 2, csv="results.csv",
                     note="Per-generation labels: generations.csv.")
    report.add_text(
        "Copy rate: share of generations labelled copies of a training image "
        f"(criterion {cfg.criterion}; the median d_{{1}}/d_{{2}} of the memorized prompts' generations shows how far "
        "below the threshold they land); class accuracy: the digit classifier's agreement with the prompt's intended "
        f"class. Same prompts and seeds for every method; {cfg.generations} generations per prompt, "
        f"{cfg.steps} DDIM steps, guidance {cfg.guidance}. NFE/NBE: forward/backward network evaluations per "
        "generation (counted), seconds: wall time per generation.", heading="How to read it")
    cr = np.array([np.nan if r["copy_rate_memorized"] is None else r["copy_rate_memorized"] for r in table])
    acc = np.array([np.nan if r["accuracy_all"] is None else r["accuracy_all"] for r in table])
    if np.isfinite(cr).any() and np.isfinite(acc).any():
        fig = tradeoff_plot(names, cr, acc, np.array([r["nfe_per_generation"] for r in table]))
        figure_to_report(report, fig, out / "tradeoff.png", heading="Copying against fidelity",
                         caption="Each method's copy rate on memorized prompts (x, lower is better) against the "
                                 "classifier's accuracy on the intended class (y, higher is better).")
    by_key = {(r["method"], r["prompt_index"], r["seed"]): r for r in rows}
    for flag, label in ((True, "memorized"), (False, "generic"), (None, "unlabelled")):
        idx = [i for i, p in enumerate(prompts) if p.memorized is flag][: cfg.grid_prompts]
        if not idx:
            continue
        imgs = np.stack([np.stack([samples[n][i][0] for i in idx]) for n in names])
        seeds = [prompt_seed(cfg, i, prompts[i]) for i in idx]
        hl = np.array([[bool(by_key[(n, i, s)].get("is_copy", False)) for i, s in zip(idx, seeds)] for n in names])
        fig = method_grid(imgs, names, hl, title=f"{label} prompts, first generation (copies in red)")
        figure_to_report(report, fig, out / f"grid_{label}.png", heading=f"Samples: {label} prompts",
                         caption="One row per method, one column per prompt, same seed in each column; a red "
                                 "border marks a copy of a training image.")
    report.add_json(summary["methods"], heading="Method parameters")
    report.add_json(json.loads(cfg.model_dump_json()), heading="Config")
    report.write(out / "report.html")
