"""Library functions behind ``memgeo lid`` and ``memgeo audit``.

Models are loaded by :func:`memgeo.models.load` (any kind); conditions come from
:func:`memgeo.workflows.commands.model_conditions` (class labels, or prompts for prompt models).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from memgeo.data import load_dataset, load_points
from memgeo.errors import MemgeoError
from memgeo.geometry import sharpness_spectrum
from memgeo.geometry.jacobian import check_points
from memgeo.geometry.lid import (
    LID_ESTIMATORS,
    DataLIDEstimator,
    LIDEstimator,
    GeneratorLID,
    ModelLIDEstimator,
    get_lid_estimator,
)
from memgeo.io import write_csv, write_json
from memgeo.memorization import label_copies
from memgeo.memorization.mmh import MMH_LABELS, MMHThresholds, mmh_audit
from memgeo.models import load
from memgeo.models.base import DiffusionModel, model_dtype
from memgeo.models.generators import Generator
from memgeo.models.sd2015_adapter import as_diffusion_model
from memgeo.report import Report, glossary, score_histogram
from memgeo.workflows.commands import model_conditions
from memgeo.workflows.common import (
    check_point_shape,
    evaluate_or_reason,
    figure_to_report,
    run_command,
    say,
)
from memgeo.workflows.items import Item, ItemCommand, ItemRow, Plan, ScaleOptions, run_items, units_of


class LIDRunConfig(BaseModel):
    """``memgeo lid``: one estimator on a points file, with a model (LID_model) or data (LID_data)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    points: str
    estimator: str = "flipd"
    model: str | None = None
    data: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    cond: int | None = None
    prompts: tuple[str, ...] = ()
    prompt_file: str | None = None
    #: Points estimated in one call (the work unit of plain, sharded and Ray runs alike).
    batch_points: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _source(self) -> "LIDRunConfig":
        if self.estimator not in LID_ESTIMATORS:
            raise MemgeoError(f"unknown LID estimator {self.estimator!r}",
                              f"choose one of: {', '.join(sorted(LID_ESTIMATORS))}")
        needs_model = issubclass(LID_ESTIMATORS[self.estimator], ModelLIDEstimator)
        if needs_model and self.model is None:
            raise MemgeoError(f"estimator {self.estimator!r} needs --model", "pass a checkpoint folder or model SPEC")
        if not needs_model and self.data is None:
            raise MemgeoError(f"estimator {self.estimator!r} is model-free and needs --data", "pass TRAIN.npy or a data SPEC")
        if not needs_model and (self.prompts or self.prompt_file):
            raise MemgeoError(f"estimator {self.estimator!r} is model-free: prompts condition nothing",
                              "drop --prompt/--prompt-file or use a model-based estimator")
        return self


def build_estimator(name: str, params: dict[str, Any]) -> LIDEstimator:
    """Instantiate ``name`` with those of ``params`` its ``__init__`` accepts (None values dropped)."""
    accepted = inspect.signature(LID_ESTIMATORS.get(name).__init__).parameters  # unknown name: MemgeoError
    unknown = [k for k, v in params.items() if v is not None and k not in accepted]
    if unknown:
        raise MemgeoError(f"estimator {name!r} has no option(s) {', '.join(unknown)}",
                          f"its options are: {', '.join(p for p in accepted if p != 'self')}")
    return get_lid_estimator(name, **{k: v for k, v in params.items() if v is not None})


def estimate_lid(estimator: LIDEstimator, points: torch.Tensor, *, model: DiffusionModel | None = None,
                 reference: torch.Tensor | None = None, cond: torch.Tensor | None = None) -> torch.Tensor:
    """Run a model-based estimator on ``model`` or fit a data-based one on ``reference``; (N,) float64."""
    if isinstance(estimator, ModelLIDEstimator):
        return estimator.estimate(model, points.to(model_dtype(model)), cond).double()
    return torch.as_tensor(estimator.fit(reference).estimate(points)).double()


def reference_typical_lid(estimator: LIDEstimator, reference: torch.Tensor, n: int = 500, seed: int = 0) -> float | None:
    """Median LID of the fitted data-based ``estimator`` at up to ``n`` random reference points.

    Queries are in-sample with the point itself left out of its neighbourhood where the estimator
    supports it (``exclude_self``); returns ``None`` for estimators that cannot leave it out (their
    in-sample value would read the point's own atom).
    """
    if not (isinstance(estimator, DataLIDEstimator) and estimator.supports_exclude_self):
        return None
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(reference.shape[0], generator=g)[:n]
    return float(torch.as_tensor(estimator.estimate(reference[idx], exclude_self=True)).median())


def _data_tensor(spec: str) -> torch.Tensor:
    return load_points(spec) if spec.endswith(".npy") else load_dataset(spec).x


def _generator_checks(model: Generator, est: LIDEstimator, cond: int | None, labels: str | None,
                      prompts: tuple[str, ...], prompt_file: str | None) -> None:
    """A generator checkpoint: unconditional, with ``decode``, measured by :class:`GeneratorLID` only."""
    if cond is not None or labels is not None or prompts or prompt_file:
        raise MemgeoError(f"{type(model).__name__} generators are unconditional but a condition was given",
                          "drop --cond/--labels/--prompt/--prompt-file")
    if not isinstance(est, GeneratorLID):
        raise MemgeoError(f"estimator {est.name!r} reads a diffusion model's score but the model is a "
                          f"{type(model).__name__} generator", "use --estimator generator_jacobian")
    if not model.has("decode"):
        raise MemgeoError(f"{type(model).__name__} has no decode, so no generator-Jacobian LID",
                          "use a vae, gsvae, gan or wgan-gp checkpoint (sd2015 is measured with flipd)")


def _finite(values: torch.Tensor) -> torch.Tensor:
    """+inf (a collapsed volume: infinite pushforward density) as the largest float64, for JSON and AUROC."""
    return torch.nan_to_num(values.double(), posinf=torch.finfo(torch.float64).max)


@dataclass
class _LIDState:
    estimator_params: dict[str, Any]
    model: Any
    points: torch.Tensor
    reference: torch.Tensor | None
    cond: torch.Tensor | None
    fitted: LIDEstimator | None  # a data-based estimator fitted once on the reference


def _whole_batch_lid(cfg: "LIDRunConfig") -> bool:
    """FLIPD-type ``t0="auto"`` picks one t0 from the LID-vs-t0 curve of all points at once."""
    return cfg.params.get("t0") == "auto"


def prepare_lid(cfg: "LIDRunConfig") -> Plan:
    """Validate, load model / reference / points; items are the points (``iNNNNNN``), units of ``batch_points``
    (all points in one unit for ``t0="auto"``). A data-based estimator is fitted here, once."""
    pts = load_points(cfg.points)
    est = build_estimator(cfg.estimator, cfg.params)
    # sd2015 has a score but no decoder: measured as a diffusion model (FLIPD) through its adapter
    model = as_diffusion_model(load(cfg.model)) if cfg.model else None
    reference = _data_tensor(cfg.data) if cfg.data else None
    if isinstance(model, Generator):  # vae, gsvae, gan, wgan-gp: LID_model from the generator Jacobian
        check_point_shape(model, pts)
        _generator_checks(model, est, cfg.cond, None, cfg.prompts, cfg.prompt_file)
    elif isinstance(est, GeneratorLID) and model is not None:
        raise MemgeoError(f"estimator 'generator_jacobian' needs a generator with decode, but {cfg.model} is a "
                          f"{type(model).__name__}", "use a vae/gsvae/gan/wgan-gp checkpoint or a diffusion estimator")
    elif model is not None:
        check_points(model, pts)
        check_point_shape(model, pts)
    elif reference is not None and reference.reshape(reference.shape[0], -1).shape[1] != pts.reshape(pts.shape[0], -1).shape[1]:
        raise MemgeoError("points and --data have different dimensions", "pass points of the data's dimension")
    cond = (model_conditions(model, pts.shape[0], cond=cfg.cond, prompts=cfg.prompts, prompt_file=cfg.prompt_file)[0]
            if model is not None and not isinstance(model, Generator) else None)
    fitted = est.fit(reference) if isinstance(est, DataLIDEstimator) else None
    items = [Item(f"i{k:06d}", k) for k in range(pts.shape[0])]
    size = len(items) if _whole_batch_lid(cfg) else cfg.batch_points
    return Plan(cfg, units_of(items, size), _LIDState(est.params(), model, pts, reference, cond, fitted))


def _check_split_lid(plan: Plan) -> None:
    if _whole_batch_lid(plan.cfg):
        raise MemgeoError("--t0 auto picks one t0 from all points together, so the run cannot be split "
                          "(--shard / --engine ray)", "pass the t0 (e.g. the t0_used of a plain auto run on a subset)")


def score_lid(plan: Plan, unit: list[Item]) -> list[ItemRow]:
    """LID of one unit of points (a fresh estimator per unit, seeded as configured)."""
    cfg: LIDRunConfig = plan.cfg
    st: _LIDState = plan.payload
    idx = torch.tensor([it.index for it in unit])
    pts = st.points[idx]
    if st.fitted is not None:
        est: LIDEstimator = st.fitted
        lid = torch.as_tensor(est.estimate(pts)).double()
    else:
        est = build_estimator(cfg.estimator, cfg.params)
        lid = estimate_lid(est, pts, model=st.model, reference=st.reference,
                           cond=None if st.cond is None else st.cond[idx])
    data: list[dict[str, Any]] = [{"lid": float(v), "t0_used": getattr(est, "t0_", None)} for v in lid]
    res = getattr(est, "result_", None)
    if res is not None and hasattr(res, "ci_low") and res.ci_low.shape[0] == 1:
        for d, lo, hi in zip(data, res.ci_low[0].tolist(), res.ci_high[0].tolist()):
            d.update(ci_low=lo, ci_high=hi)
    if isinstance(est, GeneratorLID):
        for d, ld, rec in zip(data, _finite(est.result_.log_density).tolist(), est.result_.reconstruction_error.tolist()):
            d.update(latent_source=est.result_.latent_source, pushforward_log_density=ld, reconstruction_error=rec)
    return [ItemRow(it.id, it.index, d) for it, d in zip(unit, data)]


def finalize_lid(plan: Plan, rows: list[ItemRow], out: Path) -> dict[str, Any]:
    """lid.json, lid.csv and the report from the rows in point order."""
    cfg: LIDRunConfig = plan.cfg
    say(f"LID ({cfg.estimator}) of {len(rows)} points")
    lid = torch.tensor([r.data["lid"] for r in rows], dtype=torch.float64)
    result = {"estimator": cfg.estimator, "params": plan.payload.estimator_params, "lid": lid.tolist(),
              "n_points": int(lid.numel()), "mean": float(lid.mean()), "t0_used": rows[0].data["t0_used"]}
    if "ci_low" in rows[0].data:
        result["ci_low"], result["ci_high"] = [r.data["ci_low"] for r in rows], [r.data["ci_high"] for r in rows]
    if "latent_source" in rows[0].data:
        result["latent_source"] = rows[0].data["latent_source"]
        result["pushforward_log_density"] = [r.data["pushforward_log_density"] for r in rows]
        result["reconstruction_error"] = [r.data["reconstruction_error"] for r in rows]
    write_json(out / "lid.json", result)
    write_csv(out / "lid.csv", [{"index": i, "lid": float(v)} for i, v in enumerate(lid)])
    _lid_report(out, cfg, result, lid.numpy())
    return {k: v for k, v in result.items() if k not in ("lid", "ci_low", "ci_high")}


LID_ITEMS = ItemCommand(name="lid", ref="memgeo.workflows.lid_runs:LID_ITEMS", config=LIDRunConfig,
                        prepare=prepare_lid, score_batch=score_lid, finalize=finalize_lid, noun="points",
                        check_split=_check_split_lid)


@run_command
def run_lid(cfg: LIDRunConfig, out: str | Path, *, scale: ScaleOptions | None = None) -> dict[str, Any]:
    """Write ``lid.json`` (``lid``: list in point order, plus estimator, params, t0 used) and ``lid.csv``.

    Points are estimated in units of ``cfg.batch_points`` (one unit for ``t0="auto"``), the same in a
    plain run, a shard (``--shard I/N``) and on Ray (``--engine ray``): :mod:`memgeo.workflows.items`.
    """
    return run_items(LID_ITEMS, prepare_lid(cfg), out, scale, progress=False)


class AuditConfig(BaseModel):
    """``memgeo audit``: sharpness, LID_model, LID_data and MMH labels of generated samples."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    model: str
    points: str
    train_data: str | None = None
    reference: str | None = None
    labels: str | None = None
    cond: int | None = None
    prompts: tuple[str, ...] = ()
    prompt_file: str | None = None
    # 0.1, the demo's headline noise level: at t0 = 0.05 the demo's MLP does not yet resolve a copy as
    # a point (FLIPD reads about 3 for eps- and 8 for x0-networks instead of 0; docs/benchmarks.md).
    t0: float = 0.1
    sharpness_t: float = 0.1
    lid_data: str = "lpca"
    lid_data_params: dict[str, Any] = Field(default_factory=dict)
    model_low: float | None = None
    data_low: float | None = None
    #: Samples scored in one call (the work unit of plain, sharded and Ray runs alike).
    batch_points: int = Field(256, ge=1)


@dataclass
class _AuditState:
    model: Any
    points: torch.Tensor
    is_gen: bool
    ref_spec: str
    reference: torch.Tensor
    data_est: DataLIDEstimator  # fitted on the reference
    cond: torch.Tensor | None
    row_prompts: list[str] | None
    train_x: torch.Tensor | None


def prepare_audit(cfg: "AuditConfig") -> Plan:
    """Validate, load model / points / data, fit LID_data's estimator on the reference once; items are the
    points (``iNNNNNN``) in units of ``batch_points``."""
    data_est = build_estimator(cfg.lid_data, cfg.lid_data_params)  # a bad name fails before the model loads
    if not isinstance(data_est, DataLIDEstimator):
        raise MemgeoError(f"--lid-data {cfg.lid_data!r} needs a model", "use a model-free estimator (lpca, mle, twonn, cfdm)")
    model = as_diffusion_model(load(cfg.model))  # sd2015: FLIPD and dense sharpness through its score
    pts = load_points(cfg.points)
    is_gen = isinstance(model, Generator)
    if is_gen:
        _generator_checks(model, GeneratorLID(), cfg.cond, cfg.labels, cfg.prompts, cfg.prompt_file)
    else:
        check_points(model, pts)
    check_point_shape(model, pts)
    ref_spec = cfg.reference or cfg.train_data
    if ref_spec is None:
        raise MemgeoError("audit needs data for LID_data", "pass --train-data and/or --reference")
    reference = _data_tensor(ref_spec)
    cond, row_prompts = (None, None) if is_gen else model_conditions(
        model, pts.shape[0], cond=cfg.cond, labels=cfg.labels, prompts=cfg.prompts, prompt_file=cfg.prompt_file)
    train_x = _data_tensor(cfg.train_data) if cfg.train_data else None
    for what, data in (("--reference" if cfg.reference else "--train-data", reference), ("--train-data", train_x)):
        if data is not None and data[0].numel() != pts[0].numel():
            raise MemgeoError(f"{what} has points of shape {tuple(data.shape[1:])} but --points have "
                              f"{tuple(pts.shape[1:])}", "pass data of the samples' dimension")
    data_est.fit(reference)
    items = [Item(f"i{k:06d}", k) for k in range(pts.shape[0])]
    state = _AuditState(model, pts, is_gen, ref_spec, reference, data_est, cond, row_prompts, train_x)
    return Plan(cfg, units_of(items, cfg.batch_points), state)


def score_audit(plan: Plan, unit: list[Item]) -> list[ItemRow]:
    """Sharpness (or pushforward density), LID_model and LID_data of one unit of points."""
    cfg: AuditConfig = plan.cfg
    st: _AuditState = plan.payload
    idx = torch.tensor([it.index for it in unit])
    pts = st.points[idx]
    x = pts.to(model_dtype(st.model))
    cond = None if st.cond is None else st.cond[idx]
    if st.is_gen:  # LID_model = rank of J_G(z); the pushforward log-density stands in for sharpness
        gen_est = GeneratorLID()
        lid_model = estimate_lid(gen_est, x, model=st.model)
        sharp_score = _finite(gen_est.result_.log_density)
        n_flat = gen_est.result_.singular_values.shape[1] - lid_model.long()  # collapsed latent directions
    else:
        sharp = sharpness_spectrum(st.model, x, cfg.sharpness_t, cond=cond)
        sharp_score, n_flat = sharp.sharpness, sharp.n_flat
        lid_model = estimate_lid(get_lid_estimator("flipd", t0=cfg.t0), x, model=st.model, cond=cond)
    lid_data = torch.as_tensor(st.data_est.estimate(pts)).double()
    return [ItemRow(it.id, it.index, {"sharpness": float(sharp_score[j]), "n_flat": int(n_flat[j]),
                                      "lid_model": float(lid_model[j]), "lid_data": float(lid_data[j])})
            for j, it in enumerate(unit)]


def finalize_audit(plan: Plan, rows: list[ItemRow], out: Path) -> dict[str, Any]:
    """MMH labels (thresholds from all points), copies, detection AUROCs, audit.json / audit.csv and report."""
    cfg: AuditConfig = plan.cfg
    st: _AuditState = plan.payload
    is_gen = st.is_gen
    say(f"audit of {len(rows)} samples: " + ("generator-Jacobian LID and pushforward density" if is_gen
                                             else f"sharpness, FLIPD(t0={cfg.t0})") + f", LID_data ({cfg.lid_data})")
    sharp_score = np.array([r.data["sharpness"] for r in rows], dtype=float)
    lid_model = torch.tensor([r.data["lid_model"] for r in rows], dtype=torch.float64)
    lid_data = torch.tensor([r.data["lid_data"] for r in rows], dtype=torch.float64)
    typical = reference_typical_lid(st.data_est, st.reference)
    audit = mmh_audit(lid_model, lid_data, MMHThresholds(model_low=cfg.model_low, data_low=cfg.data_low,
                                                         typical=typical))
    out_rows = [{"index": i, **({} if st.row_prompts is None else {"prompt": st.row_prompts[i]}),
                 "sharpness": float(sharp_score[i]), "n_flat": int(rows[i].data["n_flat"]), **r}
                for i, r in enumerate(audit.to_rows())]
    summary: dict[str, Any] = {"n": len(out_rows), "mmh": audit.summary(), "t0": cfg.t0,
                               "sharpness_t": cfg.sharpness_t, "lid_data_estimator": cfg.lid_data,
                               "reference_typical_lid": typical,
                               "lid_model_estimator": "generator_jacobian" if is_gen else "flipd",
                               "sharpness_kind": "pushforward_log_density" if is_gen else "score_jacobian"}
    is_copy = None
    if cfg.train_data:
        copies = label_copies(st.points, st.train_x)
        is_copy = copies.is_copy
        for r, c in zip(out_rows, copies.to_rows()):
            r.update({"is_copy": c["is_copy"], "d1": c["d1"], "d2": c["d2"]})
        summary["copies"] = copies.summary()
        summary["detection"] = {
            "sharpness": evaluate_or_reason(sharp_score, is_copy, "sharpness"),
            "-lid_model": evaluate_or_reason(-audit.lid_model, is_copy, "-lid_model"),
            "deficit": evaluate_or_reason(audit.deficit, is_copy, "deficit")}
        summary["labels_of_copies"] = {k: int(((audit.label == k) & is_copy).sum()) for k in MMH_LABELS}
    write_json(out / "audit.json", {**summary, "samples": out_rows})
    write_csv(out / "audit.csv", out_rows)
    _audit_report(out, cfg, st.ref_spec, audit, out_rows, summary, is_copy)
    return summary


AUDIT_ITEMS = ItemCommand(name="audit", ref="memgeo.workflows.lid_runs:AUDIT_ITEMS", config=AuditConfig,
                          prepare=prepare_audit, score_batch=score_audit, finalize=finalize_audit, noun="samples")


@run_command
def run_audit(cfg: AuditConfig, out: str | Path, *, scale: ScaleOptions | None = None) -> dict[str, Any]:
    """Per sample: copy label (with ``train_data``), sharpness, FLIPD, LID_data on the reference
    (default: the training data), MMH label. Writes ``audit.json``, ``audit.csv``, figures, report.

    A generator checkpoint (vae, gsvae, gan, wgan-gp) is measured by :class:`GeneratorLID` instead:
    LID_model is the rank of J_G(z) and the ``sharpness`` column holds the pushforward log-density
    (``summary["sharpness_kind"]`` says which). An sd2015 checkpoint is wrapped in
    :class:`~memgeo.models.sd2015_adapter.SD2015ScoreModel` and audited like a diffusion model.

    Per-sample quantities are computed in units of ``cfg.batch_points`` (the same in a plain run, a
    shard and on Ray); the MMH thresholds, copies and AUROCs use all samples (``finalize``)."""
    return run_items(AUDIT_ITEMS, prepare_audit(cfg), out, scale, progress=False)


# ------------------------------------------------------------------------------------------------
# reports
# ------------------------------------------------------------------------------------------------


def _lid_report(out: Path, cfg: LIDRunConfig, result: dict[str, Any], lid: np.ndarray) -> None:
    """report.html of `memgeo lid`: verdict (n, median, range, negatives), notation, histogram."""
    report = Report("memgeo lid", subtitle=f"{cfg.estimator} on {cfg.points}")
    n_neg = int(np.sum(lid < 0))
    what = "LID_{model}" if issubclass(LID_ESTIMATORS[cfg.estimator], ModelLIDEstimator) else "LID_{data}"
    q05, med, q95 = (float(v) for v in np.quantile(lid, [0.05, 0.5, 0.95]))
    line = (f"**{what} of {lid.size} points ({cfg.estimator}): median {med:.2f}**, 5–95 % range "
            f"[{q05:.2f}, {q95:.2f}], mean {float(np.mean(lid)):.2f}"
            + (f", estimated at t_{{0}} = {result['t0_used']:.3g}" if result.get("t0_used") is not None else "") + ".")
    if n_neg:
        line += (f" {n_neg} values are below 0 (lowest {float(lid.min()):.2f}): a dimension cannot be negative, "
                 "so there the estimate is inaccurate (FLIPD's network score, or too few neighbours); read them as 0.")
    report.add_verdict(line, warn=bool(n_neg))
    report.add_glossary(glossary(["lid", "lid_model" if what == "LID_{model}" else "lid_data", "t0", "D"]))
    report.add_key_numbers([("estimator", cfg.estimator), ("points", result["n_points"]), ("median", med),
                            ("mean", result["mean"]), ("5 % quantile", q05), ("95 % quantile", q95),
                            ("values below 0", n_neg)]
                           + ([("t_{0} used", result["t0_used"])] if result.get("t0_used") is not None else []),
                           heading="Summary", csv="lid.csv")
    figure_to_report(report, score_histogram({"points": lid}, xlabel="LID estimate (dimensions)",
                                             title="LID estimates", density=False),
                     out / "figures" / "lid_hist.png", heading="Distribution",
                     caption="Number of points per LID value; per-point values in lid.csv.")
    report.add_json(cfg, heading="Resolved config")
    report.write(out / "report.html")


def _audit_report(out: Path, cfg: AuditConfig, ref_spec: str, audit: Any, rows: list[dict[str, Any]],
                  summary: dict[str, Any], is_copy: np.ndarray | None) -> None:
    """report.html of `memgeo audit`: verdict (MMH counts with thresholds), notation, scatter, trimmed table."""
    from memgeo.report import mmh_scatter
    from memgeo.workflows.demo_report import NEGATIVE_LID_CAPTION, fmt_auroc

    report = Report("memgeo audit", subtitle=f"{cfg.model} on {cfg.points}")
    counts = audit.counts()
    n = len(rows)
    lines = [f"**Of {n} samples, {counts['DD-Mem']} are DD-Mem, {counts['OD-Mem']} OD-Mem and {counts['none']} not "
             f"memorized** (memorized: LID_{{model}} < {audit.model_low:.3g}; DD-Mem: also LID_{{data}} < "
             f"{audit.data_low:.3g})."]
    if is_copy is not None:
        lc = summary["labels_of_copies"]
        det = summary["detection"]
        n_copy = int(is_copy.sum())
        if 0 < n_copy < n:
            lines.append(f"{n_copy} samples copy a training image; of them {lc['DD-Mem']} are DD-Mem, "
                         f"{lc['OD-Mem']} OD-Mem, {lc['none']} none.")
            lines.append(f"Copies are flagged by sharpness with AUROC {fmt_auroc(det['sharpness'])} and by "
                         f"−LID_{{model}} with AUROC {fmt_auroc(det['-lid_model'])}.")
        else:
            lines.append(f"{'No' if n_copy == 0 else 'Every'} sample copies a training image, so no detection "
                         "AUROC is defined.")
    report.add_verdict("\n".join(f"- {x}" for x in lines))
    report.add_glossary(glossary(["lid", "lid_model", "lid_data", "t0", "mmh", "sharpness", "lambda", "copy",
                                  "auroc"]))
    is_gen = summary.get("lid_model_estimator") == "generator_jacobian"
    model_text = (f"LID_{{model}} = numerical rank of the generator Jacobian J_G(z) at each sample's latent; "
                  f"LID_{{data}} = {cfg.lid_data} on {ref_spec}; the sharpness column is the pushforward "
                  "log-density log p(z) - 1/2 log det(J^T J) (largest float where the volume collapses)"
                  if is_gen else f"LID_{{model}} = FLIPD at t_{{0}} = {cfg.t0:g}; LID_{{data}} = {cfg.lid_data} on "
                  f"{ref_spec}; sharpness at t = {cfg.sharpness_t:g}")
    report.add_text(
        f"{model_text}. A sample is memorized when LID_{{model}} < {audit.model_low:.3g}; DD-Mem if also "
        f"LID_{{data}} < {audit.data_low:.3g}, else OD-Mem (see memgeo.memorization.mmh).", heading="Method")
    lid_model = np.asarray(audit.lid_model, dtype=float)
    n_neg = int(np.sum(lid_model < 0))
    neg = (f" {n_neg} of {n} LID_{{model}} values are below 0 (lowest {float(lid_model.min()):.2f}). "
           + NEGATIVE_LID_CAPTION) if n_neg else ""
    figure_to_report(report, mmh_scatter(audit.lid_data, lid_model, audit.label, audit.model_low, audit.data_low,
                                         is_copy=is_copy, t0=None if is_gen else cfg.t0,
                                         title="LID$_{model}$ against LID$_{data}$"),
                     out / "figures" / "lid_scatter.png", heading="LID model against LID data",
                     caption="Colour: MMH label" + ("; black rings: copies" if is_copy is not None else "")
                             + f". Dashed: LID_{{model}} threshold {audit.model_low:.3g} (memorized below); dotted: "
                               f"LID_{{data}} threshold {audit.data_low:.3g} (DD-Mem to its left).{neg}")
    groups = np.asarray(audit.label, dtype=object)
    figure_to_report(report, score_histogram({str(k): lid_model[groups == k] for k in dict.fromkeys(groups.tolist())},
                                             xlabel="LID$_{model}$ (" + ("generator Jacobian" if is_gen else "FLIPD") + "), dimensions",
                                             title="LID$_{model}$ by MMH label"),
                     out / "figures" / "lid_model_hist.png")
    keep = ["index", "prompt", "mmh_label", "lid_model", "lid_data", "sharpness", "is_copy"]
    report.add_table([{k: r.get(k) for k in keep if k in r} for r in rows], heading="Per sample", max_rows=30,
                     csv="audit.csv", note="Trimmed to the label and its inputs; all columns are in audit.csv.")
    report.add_json(cfg, heading="Resolved config")
    report.write(out / "report.html")
