"""`memgeo detect`: prompt-level memorization scores for a prompt file, resumable, with a report.

Run folder layout::

    OUT/config.json, provenance.json
    OUT/prompts/000042.json   one record per finished prompt (written atomically, validated on restart)
    OUT/scores.csv            one row per prompt (score = mean over its generations)
    OUT/scores_per_generation.csv
    OUT/summary.json          AUROC [CI], TPR@1%FPR and cost per score (when labels are known)
    OUT/attribution.json, roc.png, histograms.png, cost_auroc.png, report.html

Resuming: prompts are processed in fixed chunks ``[k * batch, (k + 1) * batch)`` of the file order, and
every prompt's noise comes from its own seed (the file's ``seed`` field, else ``seed + index``). A
restarted run recomputes only chunks with a missing or invalid record, on exactly the same inputs
and batch composition, so the final results are identical to an uninterrupted run.

Reduced precision (``dtype``): the model is loaded in float16 or bfloat16 and every network pass
runs in it; the initial noise is still drawn in float32 from each seed and then cast, so the same
seeds give the same noise (up to rounding) in every dtype. A score whose operations the CPU does
not implement in that dtype stops the run with a one-line error naming the score
(docs/prompt_detection.md, "Reduced precision").
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from memgeo.data.prompt_sets import prompt_provenance, resolve_prompts
from memgeo.data.prompts import PromptEntry
from memgeo.data.registry import load_points
from memgeo.errors import MemgeoError, check_fits_in_memory
from memgeo.io import write_csv, write_json
from memgeo.memorization.attribution import token_attribution
from memgeo.memorization.copies import label_copies
from memgeo.memorization.evaluation import roc_curve
from memgeo.memorization.prompt_scores import (
    SamplingSettings,
    generated_samples,
    generation_noise,
    get_prompt_score,
    parse_score_names,
)
from memgeo.memorization.prompt_scores.presets import SEEDINGS, get_preset
from memgeo.models.base import model_dtype
from memgeo.models.loading import DTypeName, load, resolve_dtype
from memgeo.models.prompt import PromptDiffusionModel
from memgeo.report import Report, glossary
from memgeo.report.prompt_html import add_token_attribution
from memgeo.report.prompt_plots import cost_vs_auroc, detection_roc, score_histograms
from memgeo.workflows.common import (
    check_prompt_tokens,
    evaluate_or_reason,
    figure_to_report,
    previous_config,
    run_command,
)
from memgeo.workflows.items import Item, ItemCommand, ItemRow, Plan, RowCache, ScaleOptions, run_items, units_of

DEFAULT_SCORES = ("wen", "jeon", "jeon_vjp", "asthana", "hessian_diff", "sharpness")
# Side outputs whose sign is part of their definition (higher = memorized), evaluated as well.
SIGNED_EXTRAS = {"asthana": ("norm", "cosine")}


class DetectConfig(BaseModel):
    """Options of a detection run (saved as config.json)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: str
    prompts: str
    scores: tuple[str, ...] = DEFAULT_SCORES
    score_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    generations: int = Field(1, ge=1)
    seed: int = 0
    seeding: str = "per_prompt"
    preset: str | None = None
    sampling: SamplingSettings = SamplingSettings()
    labels_from_field: str | None = None
    train_data: str | None = None
    copy_criterion: str = "ratio"
    batch_prompts: int = Field(8, ge=1)
    attribution_score: str | None = "wen"
    attribution_max_prompts: int = Field(40, ge=0)
    dtype: DTypeName = "float32"

#: Bytes a generation holds while a chunk is scored (noise, samples, eps and Jacobian products, float32),
#: per value of the sample, and bytes of its row in the per-generation table.
CHUNK_COPIES = 16
ROW_BYTES = 2000


def check_clip(cfg: DetectConfig) -> None:
    """Refuse an empty or reversed clamp range (``--clip 1:-1``)."""
    clip = cfg.sampling.clip
    if clip is not None:
        lo, hi = (float(v) for v in clip)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise MemgeoError(f"--clip {lo:g}:{hi:g} is an empty or reversed range (LOW must be below HIGH)",
                              "pass --clip LOW:HIGH with LOW < HIGH, e.g. --clip -1:1")


def check_detect_size(cfg: DetectConfig, n_prompts: int, dim: int) -> None:
    """Refuse up front a run whose per-generation arrays and tables cannot fit in memory."""
    g = cfg.generations
    need = 4.0 * CHUNK_COPIES * min(cfg.batch_prompts, n_prompts) * g * dim + ROW_BYTES * float(n_prompts) * g
    check_fits_in_memory(need, f"{n_prompts} prompt(s) x --generations {g} (samples of {dim} values)",
                         "use fewer --generations (or fewer prompts per run)")


def preset_options(name: str, scores: tuple[str, ...] | list[str] | None = None) -> dict[str, Any]:
    """The :class:`DetectConfig` fields a paper preset sets (``scores``: those to configure; default the paper's).

    Returns a dict of dotted field names (``"sampling.steps"``, ``"score_params.wen"``, ...) to values,
    to be applied under any option given explicitly.
    """
    p = get_preset(name)
    chosen = tuple(scores) if scores else p.scores
    opts: dict[str, Any] = {"preset": p.name, "scores": list(chosen), "sampling.steps": p.steps,
                            "sampling.guidance": p.guidance, "sampling.t_max": None, "generations": p.generations,
                            "seeding": p.seeding, "seed": p.seed}
    for score, params in p.params_for(chosen).items():
        opts[f"score_params.{score}"] = params
    return opts


def prompt_seeds(cfg: DetectConfig, entries: list[PromptEntry]) -> list[int]:
    """Seed of each prompt's noise: "shared" gives every prompt ``cfg.seed`` (the same noise, as Jeon and
    Asthana do); "per_prompt" the file's ``seed`` field, else ``cfg.seed + i`` (as Wen does)."""
    if cfg.seeding not in SEEDINGS:
        raise MemgeoError(f"unknown seeding {cfg.seeding!r}", f"choose one of: {', '.join(SEEDINGS)}")
    if cfg.seeding == "shared":
        return [cfg.seed] * len(entries)
    return [e.seed if e.seed is not None else cfg.seed + i for i, e in enumerate(entries)]


def _label_of(entry: PromptEntry, field: str) -> int:
    """0/1 label of a prompt from its ``field`` (``memorized`` or any other 0/1/true/false field)."""
    if field == "memorized":
        value = entry.memorized
    else:
        raw = entry.extra.get(field)
        text = None if raw is None else str(raw).strip().lower()
        if text is not None and text not in _TRUE + _FALSE:
            raise MemgeoError(f"line {entry.line}: field {field!r} = {raw!r} is not 0/1", "use 0/1 or true/false")
        value = None if text is None else text in _TRUE
    if value is None:
        raise MemgeoError(f"line {entry.line} of the prompt file has no {field!r} field",
                          "add it to every prompt or drop --labels-from-field")
    return int(bool(value))


_TRUE = ("1", "1.0", "true", "yes")
_FALSE = ("0", "0.0", "false", "no")


def _config_key(cfg: DetectConfig) -> str:
    """Hash of everything a per-prompt record depends on (not the output-only options)."""
    skip = {"attribution_score", "attribution_max_prompts", "labels_from_field"}
    if cfg.dtype == "float32":  # the default keeps the key of runs made before the option existed
        skip.add("dtype")
    keep = cfg.model_dump(mode="json", exclude=skip)
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _load_train(path: str, model: PromptDiffusionModel) -> torch.Tensor:
    """Training images for copy labels: a points file (memgeo.data.load_points) in the model's sample space."""
    train = load_points(path)
    if int(np.prod(train.shape[1:])) != model.dim:
        raise MemgeoError(f"training data {path} has shape {tuple(train.shape)} but the model's samples have "
                          f"{model.dim} values", "pass training data in the model's sample space")
    return train


def _record_path(out: Path, index: int) -> Path:
    return out / "prompts" / f"{index:06d}.json"


def _read_record(path: Path, index: int, prompt: str, key: str, scores: tuple[str, ...]) -> dict[str, Any] | None:
    """The record if it is complete and belongs to this prompt and configuration, else None."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(rec, dict) and rec.get("index") == index and rec.get("prompt") == prompt
          and rec.get("config_key") == key and isinstance(rec.get("scores"), dict)
          and all(s in rec["scores"] for s in scores))
    return rec if ok else None


REDUCED_DTYPES = (torch.float16, torch.bfloat16)


def prompt_noise(model: PromptDiffusionModel, seeds: list[int], n: int) -> torch.Tensor:
    """Initial noise (B, n, *data_shape): :func:`generation_noise`, except that for a float16 or bfloat16
    model it is drawn in float32 and then cast, so the same seeds give the same noise in every dtype up to
    the rounding of the cast."""
    dtype = model_dtype(model)
    if dtype not in REDUCED_DTYPES:
        return generation_noise(model, seeds, n)
    return torch.stack([torch.randn((n,) + tuple(model.data_shape), dtype=torch.float32,
                                    generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(dtype)


def _compute_score(name: str, score: Any, model: PromptDiffusionModel, cond: torch.Tensor, x_T: torch.Tensor,
                   cfg: DetectConfig, cache: dict[str, Any]) -> Any:
    """``score.compute``; in reduced precision, an operation missing for that dtype is a one-line error."""
    if x_T.dtype not in REDUCED_DTYPES:
        return score.compute(model, cond, x_T, sampling=cfg.sampling, cache=cache)
    try:
        return score.compute(model, cond, x_T, sampling=cfg.sampling, cache=cache)
    except (TypeError, NotImplementedError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise MemgeoError(f"score {name} cannot run in {cfg.dtype} on {x_T.device.type} ({first})",
                          f"score it with --dtype float32 (a separate run), or drop {name} from --scores") from exc


def _compute_chunk(model: PromptDiffusionModel, cfg: DetectConfig, entries: list[PromptEntry], indices: list[int],
                   seeds: list[int], train: torch.Tensor | None, key: str) -> list[dict[str, Any]]:
    prompts = [e.prompt for e in entries]
    with torch.no_grad():
        cond = model.encode(prompts)
    x_T = prompt_noise(model, seeds, cfg.generations)
    cache: dict[str, Any] = {}
    results = {}
    for name in cfg.scores:
        score = get_prompt_score(name, **cfg.score_params.get(name, {}))
        results[name] = _compute_score(name, score, model, cond, x_T, cfg, cache)
    copies = None
    if train is not None:
        rows_cond = cond.repeat_interleave(cfg.generations, 0)
        rows_x = x_T.reshape((-1,) + tuple(model.data_shape))
        with torch.no_grad():
            x0 = generated_samples(model, rows_cond, rows_x, cfg.sampling, cache)
        lab = label_copies(x0.float(), train, cfg.copy_criterion)
        copies = {"is_copy": lab.is_copy.reshape(len(entries), -1), "d1": lab.d1.reshape(len(entries), -1),
                  "nn_index": lab.nn_index.reshape(len(entries), -1), "criterion": lab.criterion,
                  "threshold": lab.threshold}
    records = []
    for j, (idx, seed, entry) in enumerate(zip(indices, seeds, entries)):
        rec = {"index": idx, "prompt": entry.prompt, "seed": seed, "config_key": key,
               "fields": entry.extra, "scores": {}}
        for name, res in results.items():
            rec["scores"][name] = {
                "value": float(res.values[j]), "per_generation": res.per_generation[j].tolist(),
                "extra": {k: v[j].tolist() for k, v in res.extra.items()},
                "evals_per_prompt": res.evals_per_prompt, "forward_evals": res.forward_evals,
                "derivative_passes": res.derivative_passes, "ms_per_prompt": res.ms_per_prompt}
        if copies is not None:
            rec["copies"] = {"is_copy": [bool(v) for v in copies["is_copy"][j]],
                             "d1": [float(v) for v in copies["d1"][j]],
                             "nn_index": [int(v) for v in copies["nn_index"][j]],
                             "criterion": copies["criterion"], "threshold": copies["threshold"]}
        records.append(rec)
    return records


def _check_resume(out: Path, cfg: DetectConfig) -> None:
    old = previous_config(out)  # an unfinished run's in-progress config, else config.json
    if old is None or not (out / "prompts").is_dir():
        return
    try:
        previous = DetectConfig.model_validate(old)
    except (ValueError, OSError):
        return  # unreadable: records are validated one by one anyway
    if _config_key(previous) != _config_key(cfg):
        raise MemgeoError(f"{out} holds detection results of a different configuration",
                          "choose a new --out, or rerun with the same model, prompts, scores and options")


@dataclass
class _DetectState:
    """What scoring and finalizing a detection run need besides its config (the plan's payload)."""

    model: PromptDiffusionModel
    entries: list[PromptEntry]
    labels: np.ndarray | None
    seeds: list[int]
    train: torch.Tensor | None
    key: str


def prepare_detect(cfg: DetectConfig, model: PromptDiffusionModel | None = None) -> Plan:
    """Validate the options, load the model and list the prompts as work items (no file is written).

    Items are the prompts in file order, id ``pNNNNNN-sSEED`` (prompt index, noise seed); units are the
    fixed chunks ``[k * batch_prompts, (k + 1) * batch_prompts)``, the batches a plain run scores.
    """
    check_clip(cfg)
    scores = tuple(parse_score_names(list(cfg.scores)))
    cfg = cfg.model_copy(update={"scores": scores})
    for name in cfg.score_params:
        if name not in scores:
            raise MemgeoError(f"score_params names {name!r}, which is not among the scores", "drop it or add the score")
    for name in scores:
        get_prompt_score(name, **cfg.score_params.get(name, {}))  # validates options before any work
    entries = resolve_prompts(cfg.prompts, prefer="txt")
    if cfg.labels_from_field is None and entries and all("memorized" in e.extra for e in entries) \
            and not Path(cfg.prompts).is_file():  # a named benchmark set carries its labels
        cfg = cfg.model_copy(update={"labels_from_field": "memorized"})
    labels = None if cfg.labels_from_field is None else np.array([_label_of(e, cfg.labels_from_field) for e in entries])
    seeds = prompt_seeds(cfg, entries)
    dtype = resolve_dtype(cfg.dtype)
    if model is None:  # float32 (the default) keeps the stored dtype, float32 for checkpoints and pipelines
        model = load(cfg.model, dtype=None if cfg.dtype == "float32" else dtype)
    elif dtype in REDUCED_DTYPES and model_dtype(model) != dtype:  # a given model keeps its dtype otherwise
        model = copy.deepcopy(model).to(dtype)
    if not isinstance(model, PromptDiffusionModel):
        raise MemgeoError(f"{cfg.model} is not a prompt-conditioned model", "point --model at a caption or pipeline model")
    model.eval()
    check_detect_size(cfg, len(entries), model.dim)
    check_prompt_tokens(model, [e.prompt for e in entries])
    train = _load_train(cfg.train_data, model) if cfg.train_data else None
    if cfg.attribution_score is not None:
        get_prompt_score(cfg.attribution_score)
    items = [Item(f"p{i:06d}-s{seeds[i]}", i) for i in range(len(entries))]
    state = _DetectState(model, entries, labels, seeds, train, _config_key(cfg))
    return Plan(cfg, units_of(items, cfg.batch_prompts), state, cfg.seed, {"n_prompts": len(entries)})


def score_detect(plan: Plan, unit: list[Item]) -> list[ItemRow]:
    """The records of one chunk of prompts (pure: the same chunk gives the same records)."""
    st: _DetectState = plan.payload
    idx = [it.index for it in unit]
    recs = _compute_chunk(st.model, plan.cfg, [st.entries[i] for i in idx], idx, [st.seeds[i] for i in idx],
                          st.train, st.key)
    return [ItemRow(it.id, it.index, rec) for it, rec in zip(unit, recs)]


def _read_cached(out: Path, plan: Plan, unit: list[Item]) -> dict[str, ItemRow]:
    st: _DetectState = plan.payload
    found = {}
    for it in unit:
        rec = _read_record(_record_path(out, it.index), it.index, st.entries[it.index].prompt, st.key, plan.cfg.scores)
        if rec is not None:
            found[it.id] = ItemRow(it.id, it.index, rec)
    return found


def _write_cached(out: Path, plan: Plan, rows: list[ItemRow]) -> None:
    for r in rows:
        write_json(_record_path(out, r.index), r.data)


def finalize_detect(plan: Plan, rows: list[ItemRow], out: Path) -> dict[str, Any]:
    """scores.csv, scores_per_generation.csv, summary.json, attribution and report from the records in order."""
    st: _DetectState = plan.payload
    return _finish(Path(out), plan.cfg, st.model, st.entries, [r.data for r in rows], st.labels, st.seeds)


DETECT_ITEMS = ItemCommand(
    name="detect", ref="memgeo.workflows.detect:DETECT_ITEMS", config=DetectConfig, prepare=prepare_detect,
    score_batch=score_detect, finalize=finalize_detect, noun="prompts",
    before_start=lambda plan, out: _check_resume(Path(out), plan.cfg),
    cache=RowCache(read=_read_cached, write=_write_cached))


@run_command
def run_detect(cfg: DetectConfig, out: str | Path, *, model: PromptDiffusionModel | None = None,
               progress: bool = True, scale: ScaleOptions | None = None) -> dict[str, Any]:
    """Score every prompt of ``cfg.prompts`` (resuming finished ones), evaluate and write the report.

    Parameters
    ----------
    cfg : DetectConfig
    out : path
        Run folder; rerunning with the same folder and options resumes.
    model : PromptDiffusionModel, optional
        An already loaded model (API use); ``cfg.model`` is loaded otherwise (Ray actors always load it).
    scale : ScaleOptions, optional
        ``--shard I/N`` (one slice into ``out/shards/``; ``memgeo merge`` finishes) and/or
        ``--engine ray`` (:mod:`memgeo.workflows.items`).

    Returns
    -------
    dict
        summary.json's content (a shard run: the shard's summary).
    """
    plan = prepare_detect(cfg, model)
    return run_items(DETECT_ITEMS, plan, out, scale, progress=progress)


def _finish(out: Path, cfg: DetectConfig, model: PromptDiffusionModel, entries: list[PromptEntry],
            records: list[dict[str, Any]], labels: np.ndarray | None, seeds: list[int]) -> dict[str, Any]:
    n, g = len(records), cfg.generations
    rows, gen_rows = [], []
    for i, rec in enumerate(records):
        row = {"index": i, "prompt": rec["prompt"], "seed": rec["seed"]}
        if labels is not None:
            row["label"] = int(labels[i])
        if "copies" in rec:
            row["copy_rate"] = float(np.mean(rec["copies"]["is_copy"]))
        row.update({name: rec["scores"][name]["value"] for name in cfg.scores})
        rows.append(row)
        for j in range(g):
            grow = {"index": i, "generation": j, "prompt": rec["prompt"]}
            if labels is not None:
                grow["label"] = int(labels[i])
            if "copies" in rec:
                grow["is_copy"] = rec["copies"]["is_copy"][j]
                grow["nn_index"] = rec["copies"]["nn_index"][j]
            for name in cfg.scores:
                grow[name] = rec["scores"][name]["per_generation"][j]
                for k, v in rec["scores"][name]["extra"].items():
                    grow[f"{name}.{k}"] = v[j]
            gen_rows.append(grow)
    write_csv(out / "scores.csv", rows)
    write_csv(out / "scores_per_generation.csv", gen_rows)

    values = {name: np.array([r[name] for r in rows]) for name in cfg.scores}
    for name, parts in SIGNED_EXTRAS.items():
        if name in cfg.scores:
            for part in parts:
                values[f"{name}.{part}"] = np.array([np.mean(rec["scores"][name]["extra"][part]) for rec in records])
    table = []
    for name, v in values.items():
        base = name.split(".")[0]
        cost = np.mean([rec["scores"][base]["evals_per_prompt"] for rec in records])
        ms = np.mean([rec["scores"][base]["ms_per_prompt"] for rec in records])
        row = {"score": name, "evals_per_prompt": float(cost), "ms_per_prompt": float(ms)}
        if labels is not None:
            ev = evaluate_or_reason(v, labels, name, seed=cfg.seed)
            row.update({k: ev.get(k) for k in ("auroc", "ci_low", "ci_high", "tpr_at_1pct_fpr",
                                                "tpr_at_closest_1pct_fpr", "closest_fpr_used", "n_pos", "n_neg",
                                                "reason") if k in ev})
        table.append(row)
    grid = cfg.sampling.grid(model)
    summary: dict[str, Any] = {"n_prompts": n, "generations": g, "scores": list(cfg.scores),
                               "sampling": cfg.sampling, "preset": cfg.preset, "seeding": cfg.seeding,
                               "grid": {"source": grid.source, "first_t": float(grid.ts[0]),
                                        "first_timestep": None if grid.timesteps is None
                                        else float(grid.timesteps[0])},
                               "labels_from_field": cfg.labels_from_field,
                               "prompt_files": prompt_provenance(cfg.prompts, prefer="txt"), "table": table}
    copy_table = None
    if "copies" in records[0]:
        is_copy = np.array([c for rec in records for c in rec["copies"]["is_copy"]], dtype=int)
        summary["copies"] = {"criterion": records[0]["copies"]["criterion"],
                             "threshold": records[0]["copies"]["threshold"], "n_generations": int(is_copy.size),
                             "copy_rate": float(is_copy.mean())}
        copy_table = [{"score": name, **{k: v for k, v in evaluate_or_reason(
            np.array([gr[name] for gr in gen_rows]), is_copy, name, seed=cfg.seed).items() if k != "name"}}
            for name in cfg.scores]
        summary["copy_detection"] = copy_table
    attributions = _attribution(model, cfg, entries, seeds, labels)
    if attributions:
        write_json(out / "attribution.json", attributions)
    write_json(out / "summary.json", summary)
    _report(out, cfg, summary, values, labels, copy_table, attributions)
    return summary


def _attribution(model: PromptDiffusionModel, cfg: DetectConfig, entries: list[PromptEntry], seeds: list[int],
                 labels: np.ndarray | None) -> list[dict[str, Any]]:
    if cfg.attribution_score is None or cfg.attribution_max_prompts == 0:
        return []
    k = cfg.attribution_max_prompts
    if labels is None:
        chosen = list(range(min(k, len(entries))))
    else:  # memorized prompts first, then as many others, so that the display contrasts the two
        pos = [i for i in range(len(entries)) if labels[i]]
        neg = [i for i in range(len(entries)) if not labels[i]]
        n_pos = min(len(pos), max(k - len(neg), (k + 1) // 2))
        chosen = pos[:n_pos] + neg[: k - n_pos]
    out = []
    for start in range(0, len(chosen), cfg.batch_prompts):
        idx = chosen[start:start + cfg.batch_prompts]
        x_T = prompt_noise(model, [seeds[i] for i in idx], cfg.generations)
        res = token_attribution(model, [entries[i].prompt for i in idx], x_T, score=cfg.attribution_score,
                                params=cfg.score_params.get(cfg.attribution_score), sampling=cfg.sampling)
        for i, r in zip(idx, res):
            out.append({"index": i, **r.to_dict(), "label": None if labels is None else int(labels[i])})
    return out


def _report(out: Path, cfg: DetectConfig, summary: dict[str, Any], values: dict[str, np.ndarray],
            labels: np.ndarray | None, copy_table: list[dict[str, Any]] | None,
            attributions: list[dict[str, Any]]) -> None:
    rep = Report("memgeo detect: prompt-level memorization", subtitle=f"{cfg.model} · {cfg.prompts}")
    n = summary["n_prompts"]
    rated = [r for r in summary["table"] if r.get("auroc") is not None]
    if labels is None:
        rep.add_verdict(f"{n} prompts scored with {len(cfg.scores)} score(s); **no labels were given**, so no "
                        "accuracy can be stated. Rank prompts by a score (scores.csv, higher = more likely "
                        "memorized), or rerun with `--labels-from-field memorized` on a prompt file that marks "
                        "memorized prompts.", warn=True)
    elif not rated:
        reason = next((r.get("reason") for r in summary["table"] if r.get("reason")), "labels of one class only")
        rep.add_verdict(f"{n} prompts scored, but no AUROC is defined: {reason}.", warn=True)
    else:
        best = max(rated, key=lambda r: r["auroc"])
        n_pos, n_neg = int(labels.sum()), int(labels.size - labels.sum())
        lines = [f"**Best score: {best['score']}, AUROC {_auroc_ci(best)}**, finding "
                 f"{100 * best['tpr_at_1pct_fpr']:.0f} % of the {n_pos} memorized prompts at ≤ 1 % false positives "
                 f"among the {n_neg} others, at {best['evals_per_prompt']:.0f} network passes per prompt."]
        others = sorted((r for r in rated if r is not best), key=lambda r: -r["auroc"])[:3]
        if others:
            lines.append("Next: " + "; ".join(f"{r['score']} {_auroc_ci(r)}" for r in others) + ".")
        if "copies" in summary:
            c = summary["copies"]
            lines.append(f"{100 * c['copy_rate']:.0f} % of the {c['n_generations']} generations copy a training "
                         "image.")
        rep.add_verdict("\n".join(f"- {x}" for x in lines))
    rep.add_glossary(glossary(["t", "score", "auroc", "tpr", "copy", "norm"]))
    rep.add_text(
        f"{n} prompts, {cfg.generations} generation(s) each, DDIM with {cfg.sampling.steps} steps, "
        f"guidance {cfg.sampling.guidance}, first step at t = {summary['grid']['first_t']:.4g}"
        + (f" (the scheduler's timestep {summary['grid']['first_timestep']:g})"
           if summary["grid"]["first_timestep"] is not None else "")
        + (f", preset {cfg.preset}" if cfg.preset else "") + ". Every score is oriented so that "
        "**higher means more likely memorized**; labels are never flipped. Cost = network passes per prompt "
        "(forward evaluations + JVP/VJP passes).", heading="Run")
    table = [{**r, "auroc_ci": _auroc_ci(r)} if r.get("auroc") is not None else dict(r) for r in summary["table"]]
    cols = (["score", "auroc_ci", "tpr_at_1pct_fpr", "evals_per_prompt", "ms_per_prompt", "reason"]
            if labels is not None else ["score", "evals_per_prompt", "ms_per_prompt"])
    cols = [c for c in cols if any(r.get(c) is not None for r in table)]
    rep.add_table(table, heading="Detection scores", columns=cols, drop_constant=len(table) > 2, csv="scores.csv",
                  note="TPR@1%FPR is the strict value (FPR ≤ 1 %); the closest-to-1 % variant, the CI bounds and "
                       "the counts are in summary.json.")
    if labels is not None:
        curves = {}
        for name, v in values.items():
            row = next(r for r in summary["table"] if r["score"] == name)
            if row.get("auroc") is not None:
                fpr, tpr, _ = roc_curve(v, labels)
                curves[name] = (fpr, tpr, row["auroc"])
        if curves:
            figure_to_report(rep, detection_roc(curves, log_fpr=True), out / "roc.png", heading="ROC curves",
                             caption="Left: ROC curves. Right: the same with the false positive rate on a log axis, "
                                     "which separates curves that all hug the top-left corner; dotted: FPR = 1 %.")
            ok = [r for r in summary["table"] if r.get("auroc") is not None]
            figure_to_report(rep, cost_vs_auroc([r["score"] for r in ok], [r["evals_per_prompt"] for r in ok],
                                                [r["auroc"] for r in ok], [(r["ci_low"], r["ci_high"]) for r in ok]),
                             out / "cost_auroc.png", heading="Cost and accuracy",
                             caption="AUROC with its 95 % bootstrap interval against network passes per prompt "
                                     "(log scale); dashed: chance.")
    figure_to_report(rep, score_histograms(values, labels), out / "histograms.png", heading="Score distributions",
                     caption="Each panel: one score's values over prompts (x: score value, y: number of prompts)"
                             + ("; red: memorized prompts, blue: the others." if labels is not None else "."))
    if copy_table is not None:
        c = summary["copies"]
        rep.add_key_numbers([("copy criterion", c["criterion"]), ("threshold on d_{1}/d_{2}", c["threshold"]),
                             ("generations", c["n_generations"]), ("copy rate", c["copy_rate"])],
                            heading="Copies of the training data", csv="scores_per_generation.csv")
        rows = [{**r, "auroc_ci": _auroc_ci(r) if r.get("auroc") is not None else None} for r in copy_table]
        cols = [c for c in ["score", "auroc_ci", "tpr_at_1pct_fpr", "n_pos", "n_neg", "reason"]
                if any(r.get(c) is not None for r in rows)]
        rep.add_table(rows, columns=cols, drop_constant=len(rows) > 2)
    if attributions:
        add_token_attribution(rep, [{**a, "label": None if a["label"] is None else ("memorized" if a["label"] else "")}
                                    for a in attributions], heading="Token attribution",
                              note=f"Shading: ‖∂ {cfg.attribution_score} / ∂ token embedding‖, relative to the "
                                   "prompt's largest token.")
    rep.add_json(cfg, heading="Configuration")
    rep.write(out / "report.html")


def _auroc_ci(row: dict[str, Any]) -> str:
    """``"0.912 [0.85, 0.96]"`` from a row with auroc, ci_low, ci_high."""
    lo, hi = row.get("ci_low"), row.get("ci_high")
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    return f"{row['auroc']:.3f}{ci}"
