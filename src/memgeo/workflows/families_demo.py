"""The duplicated-9 / control-3 experiment of the demo, repeated for every generative family.

Every "9" of the digits training set is replaced by copies of one "9" (the demo's injection) and
each family is trained on the same rows:

* ``ddpm``: memgeo's own diffusion model exactly as `memgeo demo` trains it (class-conditional MLP,
  :func:`memgeo.workflows.demo.train_demo_model`); half its generations are conditioned on the
  memorized class and half on the control class, sampled as the demo does
  (:func:`memgeo.workflows.demo.sample_class`). Geometric score: the demo's sharpness at its
  headline t; LID_model: FLIPD at t0 = t.
* ``sd2015``: the 2015 diffusion trained on its variational bound (unconditional), sampled
  ancestrally; score and LID_model as for ddpm, through
  :class:`~memgeo.models.sd2015_adapter.SD2015ScoreModel`.
* ``vae``, ``gsvae``, ``gan``, ``wgan-gp`` (unconditional latent generators): generations
  x = G(z) from prior latents z; geometric score: the pushforward log-density
  log p_G(x) = log p(z) - sum_i log s_i(J_G(z)) (higher = denser = predicted copy); LID_model: the
  numerical rank of J_G(z) (:func:`memgeo.geometry.generator.generator_lid`). For the
  Gumbel-Softmax VAE the prior is uniform over one-hot codes, so log p(z) is one constant and the
  score reduces to the decoder's local volume contraction -sum_i log s_i at the one-hot code.

Each generation is labelled copy / non-copy (d1/d2 < 1/3 against the de-duplicated training set).
A generation's class is that of its nearest training image (for every family, ddpm included): the
copy rate of the memorized class is measured on generations whose nearest neighbour is a 9, that of
the control class on those whose nearest neighbour is a 3. LID_data is local PCA of each
generation's neighbourhood in the training set, and MMH labels follow
:func:`memgeo.memorization.mmh.mmh_audit` with the demo's typical-LID thresholds.

The K-fold likelihood memorization score (van den Burg & Williams) runs for every family with a
likelihood or bound: vae and gsvae (importance-weighted bound), sd2015 (its importance-weighted
variational bound) and ddpm (the discrete-time DDPM bound of
:func:`memgeo.models.ddpm_bound.ddpm_variational_bound`); GANs have none.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from memgeo.data import load_dataset, replace_class_with_copies
from memgeo.errors import MemgeoError
from memgeo.geometry import sharpness_spectrum
from memgeo.geometry.generator import generator_lid, generator_singular_values, pushforward_log_density
from memgeo.geometry.lid import get_lid_estimator
from memgeo.io import write_csv, write_json
from memgeo.memorization import label_copies
from memgeo.memorization.mmh import MMH_LABELS, MMHThresholds, mmh_audit
from memgeo.models.base import model_dtype
from memgeo.models.ddpm_bound import ddpm_variational_bound
from memgeo.models.families import get_family, save_generator, train_generator
from memgeo.report import Report
from memgeo.report.plots import image_grid
from memgeo.workflows.common import evaluate_or_reason, figure_to_report, masked_mean, run_command, say, start_run
from memgeo.workflows.demo import AUDIT_T, DemoConfig, sample_class, sample_seeds, train_demo_model
from memgeo.workflows.lid_runs import build_estimator, estimate_lid, reference_typical_lid

#: Families this experiment trains, in table order.
EXPERIMENT_FAMILIES: tuple[str, ...] = ("ddpm", "sd2015", "vae", "gsvae", "gan", "wgan-gp")
#: Diffusion families: geometric score = sharpness at t, LID_model = FLIPD.
DIFFUSION_FAMILIES: tuple[str, ...] = ("ddpm", "sd2015")
#: Families with a likelihood or bound, on which the K-fold score runs.
KFOLD_FAMILIES: tuple[str, ...] = ("ddpm", "sd2015", "vae", "gsvae")
#: Steps per family of the default run (GANs: generator steps; ddpm: the demo's 4,000).
DEFAULT_STEPS: dict[str, int] = {"ddpm": 4000, "sd2015": 2000, "vae": 20000, "gsvae": 5000, "gan": 10000,
                                 "wgan-gp": 3000}
#: Latent size per latent family of the default run (gsvae: categorical latents), the memorization regime.
DEFAULT_LATENT: dict[str, int] = {"vae": 2, "gsvae": 1, "gan": 2, "wgan-gp": 2}
#: Copies of the duplicated image in the default run: twice the digits' 180 nines (the vae copies it in 23 of
#: 200 generations with 360, 6 with 180, measured at latent 2 and 20,000 steps).
DEFAULT_COPIES: int | None = 360
#: Steps of each K-fold training per family.
DEFAULT_KFOLD_STEPS: dict[str, int] = {"ddpm": 2000, "sd2015": 1000, "vae": 2000, "gsvae": 2000}
#: AUROC at or above which (with a CI lower end above 0.5) a score "separates" copies.
SEPARATES_AUROC = 0.75
#: Generations that copy the duplicated image at or above which a family "copies the duplicated image"
#: (2.5 % of the default 200; the control class's copy rate is reported beside it, 0 in every measured run).
MEMORIZES_MIN_COPIES = 5
#: Why the K-fold score is missing for a family (no likelihood or bound).
NO_LIKELIHOOD = "no likelihood: a GAN defines no density, so no K-fold likelihood score"
#: Columns of families.csv, in order.
TABLE_COLUMNS: tuple[str, ...] = (
    "family", "steps", "latent", "train_s", "final_loss", "n_generations", "n_copies", "n_nearest_memorized",
    "n_nearest_control", "copy_rate_memorized", "copy_rate_control", "copy_rate_of_source", "n_copies_of_source",
    "geometric_score", "auroc_score", "auroc_score_ci_low", "auroc_score_ci_high", "auroc_reason",
    "lid_model_estimator", "auroc_neg_lid_model", "lid_model_copies", "lid_model_non_copies", "lid_data_copies",
    "lid_data_non_copies", "mmh_copies_none", "mmh_copies_OD-Mem", "mmh_copies_DD-Mem", "mmh_non_copies_none",
    "mmh_non_copies_OD-Mem", "mmh_non_copies_DD-Mem", "kfold_duplicated_balanced_mean", "kfold_rest_balanced_mean",
    "kfold_note", "memorizes", "separates")
#: The geometric score and LID_model estimator of each kind of family.
SCORE_NAME = {"diffusion": "sharpness", "latent": "pushforward log-density"}
LID_NAME = {"diffusion": "FLIPD", "latent": "rank of J_G(z)"}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _f3(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _report_row(r: dict[str, Any]) -> dict[str, str]:
    """The reader's view of one :data:`TABLE_COLUMNS` row: readable headers, rates and CI together."""
    if r.get("auroc_score") is None:
        auroc = f"not defined ({r.get('auroc_reason') or 'no copies'})"
    else:
        lo, hi = r.get("auroc_score_ci_low"), r.get("auroc_score_ci_high")
        auroc = f"{r['auroc_score']:.3f} [{_f3(lo)}, {_f3(hi)}]"
    if r.get("kfold_duplicated_balanced_mean") is None:
        kf = r.get("kfold_note") or "not run"
    else:
        kf = f"{_fmt(r['kfold_duplicated_balanced_mean'])} / {_fmt(r.get('kfold_rest_balanced_mean'))}"
    return {
        "family": str(r["family"]) + (f" (latent {r['latent']})" if r.get("latent") else ""),
        "steps (training s)": f"{r['steps']} ({_fmt(r['train_s'])} s)",
        "copies / generations": f"{r['n_copies']} / {r['n_generations']}",
        "copy rate 9 / 3": f"{_fmt(r.get('copy_rate_memorized'))} / {_fmt(r.get('copy_rate_control'))}",
        "geometric score: AUROC [95 % CI]": f"{r['geometric_score']}: {auroc}",
        "LID_model copies / others": (f"{r['lid_model_estimator']}: {_fmt(r.get('lid_model_copies'))} / "
                                      f"{_fmt(r.get('lid_model_non_copies'))}"),
        "MMH of copies (none / OD / DD)": (f"{r.get('mmh_copies_none', 0)} / {r.get('mmh_copies_OD-Mem', 0)} / "
                                           f"{r.get('mmh_copies_DD-Mem', 0)}"),
        "K-fold score, duplicated / rest (nats)": kf,
    }


class FamiliesDemoConfig(BaseModel):
    """Settings of :func:`run_families_demo`, saved as ``config.json`` in its output folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str = "digits"
    memorize_class: int = 9
    control_class: int = 3
    copies: int | None = Field(DEFAULT_COPIES, ge=1, description="copies of the duplicated image (None: the class size)")
    families: tuple[str, ...] = EXPERIMENT_FAMILIES
    steps: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_STEPS),
                                  description="steps per family (GANs: generator steps)")
    latent_dim: int | None = Field(None, ge=1, description="latent size of every latent family (gsvae: categorical "
                                                           "latents); default: DEFAULT_LATENT per family")
    latent_dims: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_LATENT),
                                        description="latent size per latent family (when latent_dim is None)")
    n_categories: int = Field(10, ge=2, description="categories per gsvae latent")
    hidden: int = Field(256, ge=8, description="MLP width of the latent families (ddpm: the demo's)")
    depth: int = Field(2, ge=1)
    sd2015_T: int = Field(40, ge=2, description="diffusion steps of sd2015")
    sd2015_hidden: int = Field(128, ge=8, description="MLP width of sd2015's reverse kernel (its default; 2 layers)")
    n_critic: int = Field(5, ge=1, description="critic steps per generator step of wgan-gp")
    batch: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    n_samples: int = Field(200, ge=2)
    diffusion_t: float = Field(AUDIT_T, gt=0, le=1, description="t of the diffusion families' sharpness and FLIPD t0")
    subsample: int | None = Field(None, ge=20, description="keep this many random rows of the data before the "
                                                           "injection (quick runs); default all")
    kfold_rows: int = Field(300, ge=0, description="rows of the training set (random, so they include "
                                                   "duplicated 9s) on which the K-fold score runs; 0: not run")
    kfold_k: int = Field(2, ge=2, description="folds of the K-fold score")
    kfold_repeats: int = Field(1, ge=1, description="repeats of the K-fold score")
    kfold_steps: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_KFOLD_STEPS),
                                        description="steps of each K-fold training per family")
    kfold_iw: int = Field(64, ge=1, description="importance samples of the vae/gsvae/sd2015 iw_bound")
    kfold_bound_steps: int = Field(200, ge=2, description="grid steps of ddpm's discrete-time bound")
    seed: int = 0

    @field_validator("families")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [f for f in v if f not in EXPERIMENT_FAMILIES]
        if bad or not v:
            raise ValueError(f"families {bad or '(none)'} not in {EXPERIMENT_FAMILIES}")
        return v

    def steps_of(self, family: str) -> int:
        """Steps of ``family`` (:data:`DEFAULT_STEPS` where ``steps`` has none)."""
        return int(self.steps.get(family, DEFAULT_STEPS[family]))

    def latent_of(self, family: str) -> int | None:
        """Latent size of a latent family (``None`` for the diffusions, whose latent is x_T)."""
        if family in DIFFUSION_FAMILIES:
            return None
        return int(self.latent_dim if self.latent_dim is not None
                   else self.latent_dims.get(family, DEFAULT_LATENT[family]))

    def kfold_steps_of(self, family: str) -> int:
        """Steps of each K-fold training of ``family``."""
        return int(self.kfold_steps.get(family, DEFAULT_KFOLD_STEPS[family]))

    def demo_config(self) -> DemoConfig:
        """The `memgeo demo` settings of the ddpm family (its defaults; seed, classes, steps and samples from here)."""
        demo = DemoConfig()
        return DemoConfig(memorize_class=self.memorize_class, control_class=self.control_class, seed=self.seed,
                          n_samples=max(1, self.n_samples // 2),
                          train=demo.train.model_copy(update={"steps": self.steps_of("ddpm")}))

    def family_config(self, family: str, data_shape: tuple[int, ...]) -> BaseModel:
        """The model config of a :mod:`memgeo.models.families` family for data of shape ``data_shape``."""
        latent = self.latent_of(family)
        if family == "vae":
            fields: dict[str, Any] = dict(latent_dim=latent, hidden=(self.hidden,) * self.depth)
        elif family == "gsvae":
            fields = dict(n_latent=latent, n_categories=self.n_categories, hidden=(self.hidden,) * self.depth)
        elif family == "sd2015":
            fields = dict(T=self.sd2015_T, hidden=(self.sd2015_hidden,) * self.depth)
        elif family in ("gan", "wgan-gp"):
            fields = dict(latent_dim=latent, hidden=self.hidden, depth=self.depth)
            if family == "wgan-gp":
                fields["n_critic"] = self.n_critic
        else:
            raise MemgeoError(f"{family} is not a generator family", "ddpm is trained by train_demo_model")
        return get_family(family).make_config(data_shape, seed=self.seed, **fields)


def _finite_scores(v: np.ndarray) -> np.ndarray:
    """+inf (collapsed Jacobian: infinite density) -> one above the largest finite value; ranks kept."""
    v = np.asarray(v, dtype=np.float64).copy()
    fin = np.isfinite(v)
    top = float(v[fin].max()) + 1.0 if fin.any() else 0.0
    v[np.isposinf(v)] = top
    v[np.isneginf(v)] = (float(v[fin].min()) - 1.0) if fin.any() else -1.0
    return v


def _rate(mask_copy: np.ndarray, group: np.ndarray) -> float | None:
    return float(mask_copy[group].mean()) if group.any() else None


def _geometry(model: Any, family: str, z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(log-density (n,), LID_model (n,)) at latents ``z (n, d)`` of the generator ``model``."""
    s = generator_singular_values(model.decode, z)
    lid = generator_lid(s).numpy().astype(np.float64)
    if family == "gsvae":  # uniform prior over one-hot codes: log p(z) is one constant
        const = -model.n_latent * math.log(model.n_categories)

        def prior(zz: torch.Tensor) -> torch.Tensor:
            return torch.full((zz.shape[0],), const, dtype=zz.dtype)
    else:
        prior = model.prior_log_prob
    logp = pushforward_log_density(model.decode, z, prior, singular_values=s)
    return logp.double().numpy(), lid


def _diffusion_geometry(model: Any, x: torch.Tensor, t: float, cond: torch.Tensor | None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(sharpness at t (n,), FLIPD LID_model at t0 = t (n,)) of a diffusion model at ``x (n, *shape)``."""
    sharp = sharpness_spectrum(model, x, t, cond=cond).sharpness.double().numpy()
    lid = estimate_lid(get_lid_estimator("flipd", t0=t), x, model=model, cond=cond).numpy()
    return sharp, lid


@dataclass
class _Trained:
    """One family trained and sampled: generations ``x (n, *shape)`` and their geometry."""

    x: torch.Tensor
    score: np.ndarray
    lid_model: np.ndarray
    steps: int
    train_s: float
    final_loss: float | None


def _train_and_sample(family: str, cfg: FamiliesDemoConfig, train_x: torch.Tensor, train_y: torch.Tensor,
                      n_classes: int, out: Path) -> _Trained:
    """Train ``family`` on the injected rows, draw ``cfg.n_samples`` generations, score them."""
    steps = cfg.steps_of(family)
    folder = out / "models" / family
    say(f"{family}: training {steps} steps on {train_x.shape[0]} rows")
    t0 = time.perf_counter()
    if family == "ddpm":  # exactly as `memgeo demo`: class-conditional, its sampler and seeds
        demo = cfg.demo_config()
        tr = train_demo_model(demo, train_x, train_y, n_classes, folder, progress=False)
        train_s = time.perf_counter() - t0
        model = tr.model
        parts = [sample_class(model, demo, c, s) for c, s in sample_seeds(demo).items()]
        x = torch.cat([p.x0 for p in parts]).to(train_x.dtype)
        cond = torch.cat([torch.full((demo.n_samples,), c, dtype=torch.long) for c in sample_seeds(demo)])
        score, lid = _diffusion_geometry(model, x.to(model_dtype(model)), cfg.diffusion_t, cond)
        return _Trained(x, score, lid, steps, train_s, float(tr.log[-1]["loss"]) if tr.log else None)
    res = train_generator(cfg.family_config(family, tuple(train_x.shape[1:])), train_x, steps, folder,
                          checkpoint_every=max(steps, 1), progress=False, batch=cfg.batch, lr=cfg.lr, seed=cfg.seed,
                          resume=False)
    train_s = time.perf_counter() - t0
    model = res.model
    save_generator(model, folder)
    loss = float(res.losses[-1]) if res.losses else None
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if family == "sd2015":
        from memgeo.models.sd2015_adapter import SD2015ScoreModel

        # the mean of the last reverse kernel: the model's sample without its final N(0, sigma_1^2) noise
        x = model.sample(cfg.n_samples, generator=gen, final_noise=False).clamp(-1.0, 1.0)
        score, lid = _diffusion_geometry(SD2015ScoreModel(model), x, cfg.diffusion_t, None)
        return _Trained(x, score, lid, steps, train_s, loss)
    with torch.no_grad():
        z = model.prior_sample(cfg.n_samples, generator=gen)
        x = model.decode(z).clamp(-1.0, 1.0)
    logp, lid = _geometry(model, family, z)
    return _Trained(x, logp, lid, steps, train_s, loss)


def _auroc_text(det: dict[str, Any]) -> str:
    if det.get("auroc") is None:
        return f"not computed ({det.get('reason')})"
    return f"{det['auroc']:.3f} [{det.get('ci_low', float('nan')):.3f}, {det.get('ci_high', float('nan')):.3f}]"


def _f2(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _verdict(row: dict[str, Any], det: dict[str, Any], cfg: FamiliesDemoConfig) -> str:
    m, c = cfg.memorize_class, cfg.control_class
    rates = (f"copy rate {_f2(row['copy_rate_memorized'])} of generations nearest a {m} "
             f"(n = {row['n_nearest_memorized']}) vs {_f2(row['copy_rate_control'])} nearest a {c} "
             f"(n = {row['n_nearest_control']})")
    n_src = row.get("n_copies_of_source", 0)
    head = (f"**{row['family']}** copies the duplicated {m} in {n_src} of {row['n_generations']} generations"
            if row["memorizes"] else f"**{row['family']}** does not memorize the duplicated {m}: {n_src} of "
            f"{row['n_generations']} generations copy it ({MEMORIZES_MIN_COPIES} needed)")
    score = row["geometric_score"]
    if det.get("auroc") is None:
        sep = f"the {score} AUROC is not computed: {det.get('reason')}"
    elif row["separates"]:
        sep = f"its {score} separates copies from non-copies (AUROC {_auroc_text(det)})"
    elif det["auroc"] <= 1.0 - SEPARATES_AUROC and det.get("ci_high") is not None and det["ci_high"] < 0.5:
        sep = (f"its {score} separates copies from non-copies in reverse: copies score lower "
               f"(AUROC {_auroc_text(det)})")
    else:
        sep = f"its {score} does not separate copies from non-copies (AUROC {_auroc_text(det)})"
    return f"{head}; {rates}; {sep}."


def kfold_model_fns(family: str, cfg: FamiliesDemoConfig, sub: torch.Tensor, sub_y: torch.Tensor, n_classes: int
                     ) -> tuple[Callable[[np.ndarray], Any], Callable[[Any, np.ndarray], np.ndarray], str]:
    """``fit(idx) -> model``, ``log_lik(model, idx) -> (m,)`` and a description of the bound, for one family."""
    steps = cfg.kfold_steps_of(family)
    if family == "ddpm":
        demo = cfg.demo_config()

        def fit(idx: np.ndarray) -> Any:
            i = torch.as_tensor(idx)
            return train_demo_model(demo, sub[i], sub_y[i], n_classes, None, steps=steps, progress=False).model

        def log_lik(model: Any, idx: np.ndarray) -> np.ndarray:
            i = torch.as_tensor(idx)
            gen = torch.Generator().manual_seed(cfg.seed + 11)
            return ddpm_variational_bound(model, sub[i], sub_y[i], n_steps=cfg.kfold_bound_steps,
                                          generator=gen).numpy()

        return fit, log_lik, (f"log p(x | class) = the discrete-time DDPM bound ({cfg.kfold_bound_steps} "
                              "geometric steps, one draw)")
    model_cfg = cfg.family_config(family, tuple(sub.shape[1:]))

    def fit_gen(idx: np.ndarray) -> Any:
        return train_generator(model_cfg, sub[torch.as_tensor(idx)], steps, None, progress=False, batch=cfg.batch,
                               lr=cfg.lr, seed=cfg.seed, resume=False).model

    def log_lik_gen(model: Any, idx: np.ndarray) -> np.ndarray:
        gen = torch.Generator().manual_seed(cfg.seed + 11)
        with torch.no_grad():
            return model.iw_bound(sub[torch.as_tensor(idx)], cfg.kfold_iw, generator=gen).double().numpy()

    what = "variational bound" if family == "sd2015" else "bound"
    return fit_gen, log_lik_gen, f"log p(x) = importance-weighted {what} with {cfg.kfold_iw} samples"


def _run_kfold(family: str, cfg: FamiliesDemoConfig, train_x: torch.Tensor, train_y: torch.Tensor,
               copy_rows: tuple[int, int], n_classes: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """K-fold likelihood memorization score (van den Burg & Williams) of one family on a random subsample.

    ``cfg.kfold_rows`` random rows of ``train_x (N, *shape)`` (so about the injected fraction of them are
    copies of the duplicated image, rows ``copy_rows[0] .. copy_rows[1] - 1``) get
    :func:`memgeo.memorization.kfold.kfold_memorization_score` with ``kfold_k`` folds and ``kfold_repeats``
    repeats; each fold's model trains ``kfold_steps_of(family)`` steps on the other folds, and log p(x) is
    the family's bound (:func:`kfold_model_fns`), drawn with a fixed torch generator.

    Returns
    -------
    (summary dict, per-row dicts)
        Summary: family, settings, ``train_s``, mean / median / fold-balanced mean score of duplicated
        rows and of the rest, the most isolated row (largest nearest-neighbour distance in the subsample)
        and the top-scoring row.
    """
    from memgeo.memorization.kfold import kfold_memorization_score

    n_all = train_x.shape[0]
    n = min(cfg.kfold_rows, n_all)
    rows = torch.sort(torch.randperm(n_all, generator=torch.Generator().manual_seed(cfg.seed + 7))[:n]).values
    sub, sub_y = train_x[rows], train_y[rows]
    is_dup = ((rows >= copy_rows[0]) & (rows < copy_rows[1])).numpy()
    steps = cfg.kfold_steps_of(family)
    say(f"{family} K-fold score: k={cfg.kfold_k}, repeats={cfg.kfold_repeats}, {n} rows ({int(is_dup.sum())} "
        f"duplicated), {steps} steps per fold")
    fit, log_lik, bound = kfold_model_fns(family, cfg, sub, sub_y, n_classes)
    t0 = time.perf_counter()
    ms = kfold_memorization_score(n, fit, log_lik, k=cfg.kfold_k, repeats=cfg.kfold_repeats, seed=cfg.seed)
    train_s = time.perf_counter() - t0
    flat = sub.reshape(n, -1).double()
    dist = torch.cdist(flat, flat)
    dist.fill_diagonal_(math.inf)
    nn_d = dist.min(1).values.numpy()
    iso = int(np.argmax(nn_d))
    top = int(np.argmax(ms.scores))
    sc = ms.scores

    def stat(mask: np.ndarray) -> dict[str, Any]:
        # fold-balanced mean: mean over (repeat, held-out fold) groups of the group's mean score. For
        # identical rows the two models' difference enters with opposite signs in the two folds, so it
        # cancels here but not in the plain mean when the copies split unevenly across folds.
        groups = [mask & (ms.folds[r] == j) for r in range(ms.repeats) for j in range(ms.k)]
        gm = [float(sc[g].mean()) for g in groups if g.any()]
        return {"n": int(mask.sum()), "mean": float(sc[mask].mean()) if mask.any() else None,
                "median": float(np.median(sc[mask])) if mask.any() else None,
                "balanced_mean": float(np.mean(gm)) if gm else None,
                "mean_abs": float(np.abs(sc[mask]).mean()) if mask.any() else None}

    summ = {"family": family, "rows": n, "k": cfg.kfold_k, "repeats": cfg.kfold_repeats, "steps": steps,
            "bound": bound, "train_s": round(train_s, 1),
            "duplicated": stat(is_dup), "rest": stat(~is_dup),
            "isolated": {"row": int(rows[iso]), "nn_distance": float(nn_d[iso]), "score": float(sc[iso]),
                         "is_duplicated": bool(is_dup[iso]), "rank_fraction": float((sc < sc[iso]).mean())},
            "top": {"row": int(rows[top]), "score": float(sc[top]), "is_duplicated": bool(is_dup[top]),
                    "nn_distance": float(nn_d[top])}}
    per_row = [{"family": family, "row": int(rows[i]), "fold": int(ms.folds[0][i]), "is_duplicated": bool(is_dup[i]),
                "nn_distance": float(nn_d[i]),
                "score": float(sc[i]), "log_p_in": float(ms.log_p_in[i]), "log_p_out": float(ms.log_p_out[i])}
               for i in range(n)]
    say(f"{family} K-fold: fold-balanced mean score {_f2(summ['duplicated']['balanced_mean'])} (duplicated, "
        f"n={summ['duplicated']['n']}) vs {_f2(summ['rest']['balanced_mean'])} (rest) in {train_s:.0f} s")
    return summ, per_row


def _kfold_text(kfolds: dict[str, dict[str, Any]], missing: dict[str, str], cfg: FamiliesDemoConfig) -> str:
    """The K-fold section's paragraph: settings, one sentence per family, and how to read a duplicated row."""
    if not kfolds:
        return "Not run: " + "; ".join(f"{f}: {why}" for f, why in missing.items()) + "."
    any_kf = next(iter(kfolds.values()))
    parts = [f"K-fold likelihood memorization score (van den Burg & Williams; k = {any_kf['k']}, "
             f"{any_kf['repeats']} repeat(s), the same {any_kf['rows']} random training rows for every family).\n"]
    for fam, kf in kfolds.items():
        d, r, iso = kf["duplicated"], kf["rest"], kf["isolated"]
        parts.append(f"- **{fam}** ({kf['bound']}; {kf['steps']} steps per fold, {kf['train_s']:.0f} s): fold-balanced "
                     f"mean {_f2(d['balanced_mean'])} nats over the {d['n']} copies of the duplicated "
                     f"{cfg.memorize_class} (mean |score| {_f2(d['mean_abs'])}) vs {_f2(r['balanced_mean'])} over the "
                     f"other {r['n']} rows (median {_f2(r['median'])}); the most isolated row scores "
                     f"{iso['score']:.2f} (above {100 * iso['rank_fraction']:.0f}% of rows).")
    for fam, why in missing.items():
        parts.append(f"- **{fam}**: {why}.")
    parts.append("\nA duplicated row's identical copies sit in the other fold, so the held-out model has seen the same "
                 "image: its expected score is 0 whatever the model memorizes. With one model per fold, a single "
                 "row's score still carries the difference between the two models' log p of that image (mean "
                 "|score|), with opposite signs in the two folds; only the fold-balanced mean cancels it.")
    return "\n".join(parts)


def _row(family: str, cfg: FamiliesDemoConfig, tr: _Trained, is_copy: np.ndarray, nn_cls: np.ndarray,
         of_source: np.ndarray, det: dict[str, Any], det_lid: dict[str, Any], lid_data: np.ndarray, audit: Any
         ) -> dict[str, Any]:
    kind = "diffusion" if family in DIFFUSION_FAMILIES else "latent"
    near_m, near_c = nn_cls == cfg.memorize_class, nn_cls == cfg.control_class
    row: dict[str, Any] = {
        "family": family, "steps": tr.steps, "latent": cfg.latent_of(family), "train_s": round(tr.train_s, 1),
        "final_loss": tr.final_loss, "n_generations": int(tr.x.shape[0]), "n_copies": int(is_copy.sum()),
        "n_nearest_memorized": int(near_m.sum()), "n_nearest_control": int(near_c.sum()),
        "copy_rate_memorized": _rate(is_copy, near_m), "copy_rate_control": _rate(is_copy, near_c),
        "copy_rate_of_source": float(of_source.mean()),
        "geometric_score": SCORE_NAME[kind] + (f" at t = {cfg.diffusion_t:g}" if kind == "diffusion" else ""),
        "auroc_score": det.get("auroc"), "auroc_score_ci_low": det.get("ci_low"),
        "auroc_score_ci_high": det.get("ci_high"), "auroc_reason": det.get("reason", ""),
        "lid_model_estimator": LID_NAME[kind], "auroc_neg_lid_model": det_lid.get("auroc"),
        "lid_model_copies": masked_mean(tr.lid_model, is_copy),
        "lid_model_non_copies": masked_mean(tr.lid_model, ~is_copy),
        "lid_data_copies": masked_mean(lid_data, is_copy), "lid_data_non_copies": masked_mean(lid_data, ~is_copy),
    }
    for g, mask in (("copies", is_copy), ("non_copies", ~is_copy)):
        for k in MMH_LABELS:
            row[f"mmh_{g}_{k}"] = int(((audit.label == k) & mask).sum())
    row["n_copies_of_source"] = int(of_source.sum())
    row["memorizes"] = row["n_copies_of_source"] >= MEMORIZES_MIN_COPIES
    row["separates"] = bool(det.get("auroc") is not None and det["auroc"] >= SEPARATES_AUROC
                            and (det.get("ci_low") is None or det["ci_low"] > 0.5))
    return row


def _run_family(family: str, cfg: FamiliesDemoConfig, train_x: torch.Tensor, train_y: torch.Tensor,
                source: torch.Tensor, typical: float | None, lpca: Any, n_classes: int, out: Path
                ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any], torch.Tensor, np.ndarray]:
    """Train, sample, label and score one family; (table row, per-generation rows, detection, x, is_copy)."""
    tr = _train_and_sample(family, cfg, train_x, train_y, n_classes, out)
    x = tr.x
    copies = label_copies(x, train_x)
    is_copy = copies.is_copy
    nn_cls = train_y[torch.as_tensor(copies.nn_index)].numpy()
    d_src = (x.reshape(x.shape[0], -1) - source.reshape(1, -1)).pow(2).mean(1).sqrt().numpy()
    of_source = is_copy & (d_src <= copies.d1 + 1e-6)
    score_name = "sharpness" if family in DIFFUSION_FAMILIES else "log-density"
    det = evaluate_or_reason(_finite_scores(tr.score), is_copy, score_name, cfg.seed)
    det_lid = evaluate_or_reason(-tr.lid_model, is_copy, "-LID_model", cfg.seed)
    lid_data = estimate_lid(lpca, x, reference=train_x).numpy()
    audit = mmh_audit(tr.lid_model, lid_data, MMHThresholds(typical=typical))
    row = _row(family, cfg, tr, is_copy, nn_cls, of_source, det, det_lid, lid_data, audit)
    gens = [{"family": family, "sample": i, "nearest_class": int(nn_cls[i]), "is_copy": bool(is_copy[i]),
             "copy_of_source": bool(of_source[i]), "d1": float(copies.d1[i]), "d2": float(copies.d2[i]),
             "score": float(tr.score[i]), "lid_model": float(tr.lid_model[i]), "lid_data": float(lid_data[i]),
             "mmh_label": str(audit.label[i])} for i in range(x.shape[0])]
    say(f"{family}: {tr.train_s:.0f} s, {row['n_copies']} copies of {row['n_generations']}; "
        f"AUROC({row['geometric_score']}) {_auroc_text(det)}")
    return row, gens, {"score": det, "neg_lid_model": det_lid,
                       "mmh_thresholds": {"model_low": audit.model_low, "data_low": audit.data_low}}, x, is_copy


@run_command
def run_families_demo(cfg: FamiliesDemoConfig, out: str | Path) -> dict[str, Any]:
    """Run the cross-family experiment; writes ``summary.json``, ``families.csv``, ``generations.csv``,
    ``kfold.csv``, ``models/<family>/`` (checkpoints), ``figures/samples_<family>.png`` and ``report.html``.

    Returns
    -------
    dict
        The summary also saved as ``summary.json``: ``families`` (one table row per family, the
        columns of :data:`TABLE_COLUMNS`), ``detection`` per family, ``verdict`` (list of sentences),
        ``kfold`` (family -> K-fold summary of :func:`_run_kfold`; families with a likelihood only),
        ``kfold_missing`` (family -> why there is no K-fold score), ``kfold_note`` (a paragraph),
        ``timings_s``.
    """
    t_start = time.perf_counter()
    ds = load_dataset(cfg.data)
    if ds.y is None:
        raise MemgeoError(f"data {cfg.data!r} has no class labels", "use a labelled data set (digits, mnist)")
    for c in (cfg.memorize_class, cfg.control_class):
        if c not in set(ds.y.unique().tolist()):
            raise MemgeoError(f"class {c} is not in {cfg.data!r}", f"choose one of {sorted(set(ds.y.tolist()))}")
    n_classes = int(ds.y.max()) + 1
    if cfg.subsample is not None and cfg.subsample < ds.n:
        keep = torch.randperm(ds.n, generator=torch.Generator().manual_seed(cfg.seed))[: cfg.subsample]
        ds = ds.subset(torch.sort(keep).values)
    out = start_run(out, cfg, cfg.seed)
    train_ds = replace_class_with_copies(ds, cfg.memorize_class, n_copies=cfg.copies, seed=cfg.seed)
    inj = train_ds.meta["injection"]
    train_x, train_y = train_ds.x.float(), train_ds.y.long()
    source = train_x[inj["copy_rows"][0]]
    say(f"data {cfg.data}: {train_ds.n} rows; class {cfg.memorize_class} -> {inj.get('n_copies')} copies of one image")
    lpca = build_estimator("lpca", {})
    estimate_lid(lpca, train_x[:2], reference=train_x)  # fits lpca on the training set
    typical = reference_typical_lid(lpca, train_x)

    report = Report("memgeo families: memorization across generative families",
                    subtitle=f"{cfg.data}; every {cfg.memorize_class} replaced by {inj.get('n_copies')} copies of "
                             f"one image, {cfg.control_class} as control")
    rows, gens, detection, verdict = [], [], {}, []
    timings: dict[str, float] = {}
    grids = {}
    for family in cfg.families:
        t0 = time.perf_counter()
        row, g, det, x, is_copy = _run_family(family, cfg, train_x, train_y, source, typical, lpca, n_classes, out)
        timings[family] = time.perf_counter() - t0
        rows.append(row)
        gens += g
        detection[family] = det
        grids[family] = (x, is_copy)

    kfold: dict[str, dict[str, Any]] = {}
    kfold_missing: dict[str, str] = {}
    kfold_rows: list[dict[str, Any]] = []
    for family in cfg.families:
        if family not in KFOLD_FAMILIES:
            kfold_missing[family] = NO_LIKELIHOOD
        elif cfg.kfold_rows < 2 * cfg.kfold_k:
            kfold_missing[family] = "not run (kfold_rows < 2 k)"
        else:
            t0 = time.perf_counter()
            kfold[family], per_row = _run_kfold(family, cfg, train_x, train_y, tuple(inj["copy_rows"]), n_classes)
            kfold_rows += per_row
            timings[f"kfold_{family}"] = time.perf_counter() - t0
    for row in rows:
        kf = kfold.get(row["family"])
        row["kfold_duplicated_balanced_mean"] = kf["duplicated"]["balanced_mean"] if kf else None
        row["kfold_rest_balanced_mean"] = kf["rest"]["balanced_mean"] if kf else None
        row["kfold_note"] = "" if kf else kfold_missing.get(row["family"], "")
        verdict.append(_verdict(row, detection[row["family"]]["score"], cfg))
    write_csv(out / "families.csv", [{c: r.get(c) for c in TABLE_COLUMNS} for r in rows])
    write_csv(out / "generations.csv", gens)
    if kfold_rows:
        write_csv(out / "kfold.csv", kfold_rows)
    kfold_note = _kfold_text(kfold, kfold_missing, cfg)
    for v in verdict:
        report.add_verdict(v, warn="does not" in v or "not computed" in v)
    report.add_text(
        "A generation is a **copy** when d₁/d₂ < 1/3 against the de-duplicated training set. A generation counts "
        f"for class {cfg.memorize_class} or {cfg.control_class} by the class of its nearest training image. "
        f"**ddpm** is `memgeo demo`'s class-conditional model: half its generations are conditioned on "
        f"{cfg.memorize_class}, half on {cfg.control_class}; every other family is unconditional. "
        f"**Sharpness** (ddpm, sd2015) is the demo's −mean(λσ²) of the Hessian of log p_{{t}} at t = {cfg.diffusion_t:g} "
        "(sd2015 through its score adapter); **LID_{model}** there is FLIPD at t₀ = t. For the latent families the "
        "score is the **pushforward log-density** at the generation's own latent, log p(z) − Σᵢ log sᵢ(J_{G}(z)) "
        "(higher = denser = predicted copy; +∞ where the Jacobian collapses, ranked above every finite value; for "
        "gsvae log p(z) is constant, uniform one-hot prior), and **LID_{model}** is the numerical rank of J_{G}(z) "
        "(sᵢ > 10⁻³ s_{max}). **LID_{data}** is local PCA in the training set; MMH labels as in `memgeo audit`.",
        heading="How to read this")
    report.add_table([_report_row(r) for r in rows], heading="Per family", csv="families.csv",
                     note="Rates are over the generations nearest a training 9 / 3; K-fold: fold-balanced mean score "
                          "of the duplicated rows / of the rest; every column is in families.csv.")
    report.add_text(kfold_note, heading="K-fold likelihood memorization score")
    if kfold:
        report.add_table([{"family": fam, "rows": g, "n": kf[g]["n"], "mean_score": kf[g]["mean"],
                           "median_score": kf[g]["median"], "fold_balanced_mean": kf[g]["balanced_mean"],
                           "mean_abs_score": kf[g]["mean_abs"]}
                          for fam, kf in kfold.items() for g in ("duplicated", "rest")]
                         + [{"family": fam, "rows": "no likelihood", "n": None, "mean_score": None,
                             "median_score": None, "fold_balanced_mean": None, "mean_abs_score": None}
                            for fam, why in kfold_missing.items() if why == NO_LIKELIHOOD],
                         heading="K-fold score by group", csv="kfold.csv",
                         labels={"family": "family", "rows": "rows", "n": "n", "mean_score": "mean score (nats)",
                                 "median_score": "median score (nats)",
                                 "fold_balanced_mean": "fold-balanced mean (nats)",
                                 "mean_abs_score": "mean |score| (nats)"})
    for family, (x, is_copy) in grids.items():
        k = min(32, x.shape[0])
        fig = image_grid(x[:k].numpy(), highlight=is_copy[:k], ncols=8,
                         title=f"{family}: first {k} generations (red: copies)")
        figure_to_report(report, fig, out / "figures" / f"samples_{family}.png", heading=f"Samples: {family}")
    timings["total_s"] = time.perf_counter() - t_start
    summary: dict[str, Any] = {"families": rows, "detection": detection, "verdict": verdict, "injection": inj,
                               "n_train": int(train_ds.n), "typical_lid_data": typical, "kfold": kfold,
                               "kfold_missing": kfold_missing, "kfold_note": kfold_note, "timings_s": timings}
    write_json(out / "summary.json", summary)
    report.add_json(cfg, heading="Resolved config")
    report.add_json(timings, heading="Timings (s)")
    report.write(out / "report.html")
    say(f"wrote {out / 'report.html'} in {timings['total_s']:.0f} s")
    return summary
