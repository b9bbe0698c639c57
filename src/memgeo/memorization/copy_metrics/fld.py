"""Feature Likelihood Divergence (FLD) of Jiralerspong et al. (NeurIPS 2023), on the CPU and in chunks.

"Feature Likelihood Divergence: Evaluating the Generalization of Generative Models Using Samples"
(first circulated as the Feature Likelihood Score) scores a generated set by the likelihood it gives
to held-out data through a mixture of isotropic Gaussians centred on the generated samples,

    p(x) = (1 / G) sum_j N(x | g_j, s_j^2 I_D),

with one bandwidth ``s_j`` per generated sample fitted by maximum likelihood of the **training** set.
A generator that copies its training set gets tiny bandwidths on the copies: the training set becomes
very likely and the test set does not, so the *generalization gap* exposes copying, while a generator
that misses part of the distribution (or draws poor samples) leaves held-out points unlikely and
raises FLD itself.

Computed here, in the paper's units (negative log-likelihood per dimension, times 100):

- ``nll(x) = -log p(x) / D`` for every test and training point;
- ``FLD = 100 * (mean_test nll - C)`` where the constant ``C`` is the paper's reference: the mean
  test ``nll`` of the same kind of mixture centred on half of the training set (as many samples as
  generated, at most half) and fitted to the other half, so that an ideal generator scores about 0
  (``normalise=False`` reports ``100 * mean_test nll`` instead);
- ``gap = FLD_train - FLD_test = 100 * (mean_train nll - mean_test nll)``, far below 0 when the
  generator copies training samples (the paper's sign);
- per generated sample ``O_j = max_{x in train} log N(x | g_j, s_j^2 I) / D``, the paper's
  memorization score (higher = the sample's Gaussian sits on a training point).

Fitting. Features are first standardised with the test set's per-dimension mean and standard
deviation (as in the paper; ``standardize=False`` skips it). The bandwidths are fitted by EM on the
training set (closed-form M-step ``s_j^2 = sum_i r_ij ||x_i - g_j||^2 / (D sum_i r_ij)``), starting
from each sample's squared distance to its nearest training point. As in the authors' fit, one broad
*background* Gaussian at the training mean (weight ``background_weight``, its variance fitted too)
takes the training points that no generated sample explains, so that they do not inflate the
bandwidths of the nearest generated samples; the background is used only in the fit, never in the
likelihoods reported. Exact copies drive their bandwidth to 0 and the likelihood to infinity, so every
``s_j^2`` is kept at or above ``min_var`` (in units of the standardised features: 1e-6 by default).
The fit stops when the mean training log-likelihood per dimension gains less than ``tol`` or after
``max_iter`` EM steps.

Memory: every (points x generated) float64 matrix is built in row blocks of at most ``budget_mb``
MiB (the squared distances are kept between EM steps only when the whole matrix fits the budget), so
the peak memory (a few such blocks) does not grow with ``N x G``. Time is ``O(n_iter * N * G * D)``
(n_iter EM steps, each one pass over the blocks); for very large training sets pass a random subset.

The confidence interval of FLD resamples the test points (the fitted mixture fixed); that of the gap
(``extra["gap_ci"]``) resamples training and test points.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from memgeo.errors import MemgeoError, check_scalar
from memgeo.memorization.copy_metrics.base import COPY_METRICS, CopyData, CopyMetric, MetricResult

_LOG_2PI = math.log(2.0 * math.pi)


def _rows_per_block(n_cols: int, budget_bytes: int) -> int:
    """Rows of an (rows, n_cols) float64 block that fit ``budget_bytes`` (at least 1)."""
    return max(1, int(budget_bytes) // (8 * max(1, n_cols)))


def _sq_dist_blocks(points: torch.Tensor, centres: torch.Tensor, budget_bytes: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, D2)`` with ``D2[a, j] = ||points[rows][a] - centres[j]||^2`` (float64), block by block."""
    c_sq = (centres * centres).sum(dim=1)
    step = _rows_per_block(centres.shape[0], budget_bytes)
    for s in range(0, points.shape[0], step):
        x = points[s:s + step]
        d2 = (x * x).sum(dim=1, keepdim=True) + c_sq[None, :] - 2.0 * (x @ centres.T)
        yield slice(s, s + x.shape[0]), d2.clamp_min_(0.0)


def _as_f64(x: Any, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim != 2:
        raise MemgeoError(f"{name} has shape {tuple(t.shape)} but must be 2-D (n, D)", "flatten it to one row per point")
    return t.detach().to("cpu", torch.float64)


def _component_logpdf(d2: torch.Tensor, var: torch.Tensor, dim: int) -> torch.Tensor:
    """``log N(x | g_j, var_j I)`` from squared distances ``d2`` (rows, G)."""
    const = (-0.5 * dim * (_LOG_2PI + torch.log(var)))[None, :]
    return torch.addcmul(const, d2, (-0.5 / var)[None, :])


def fit_bandwidths(centres: Any, points: Any, *, min_var: float = 1e-6, background_weight: float = 0.5,
                   max_iter: int = 100, tol: float = 1e-6, budget_mb: float = 64.0) -> dict[str, Any]:
    """Maximum-likelihood bandwidths of an equal-weight isotropic Gaussian mixture with fixed centres (EM).

    Parameters
    ----------
    centres : array-like, shape (G, D)
        Component means (the generated samples).
    points : array-like, shape (N, D)
        The points whose likelihood is maximised (the training set).
    min_var : float, default 1e-6
        Lower bound of every variance ``s_j^2``.
    background_weight : float, default 0.5
        Weight of one extra Gaussian at the mean of ``points`` (variance fitted) used during the fit
        only; 0 fits the plain mixture.
    max_iter : int, default 100
        Most EM steps.
    tol : float, default 1e-6
        Stop when the mean log-likelihood per point and dimension gains less than this.
    budget_mb : float, default 64
        Largest (rows x G) float64 block, in MiB.

    Returns
    -------
    dict
        ``"var"`` (G,) float64 numpy array of fitted ``s_j^2``; ``"n_iter"``, ``"converged"``,
        ``"loglik"`` (mean log-likelihood per dimension of ``points`` under the fitting mixture, per
        step), ``"background_var"``.
    """
    c = _as_f64(centres, "centres")
    x = _as_f64(points, "points")
    g, dim = c.shape
    if x.shape[1] != dim:
        raise MemgeoError(f"points have dimension {x.shape[1]} but centres {dim}", "pass both in one feature space")
    budget = int(budget_mb * 2 ** 20)
    cache_all = x.shape[0] * g * 8 <= budget
    cached = list(_sq_dist_blocks(x, c, budget)) if cache_all else None

    def blocks() -> Iterator[tuple[slice, torch.Tensor]]:
        return iter(cached) if cached is not None else _sq_dist_blocks(x, c, budget)

    # Start: each variance from the squared distance to the nearest point to explain.
    nn_d2 = torch.full((g,), math.inf, dtype=torch.float64)
    for _, d2 in blocks():
        nn_d2 = torch.minimum(nn_d2, d2.min(dim=0).values)
    var = (nn_d2 / dim).clamp_min(min_var)
    mean = x.mean(dim=0)
    bg_d2 = ((x - mean) ** 2).sum(dim=1)
    bg_var = max(float(bg_d2.mean()) / dim, min_var)
    use_bg = background_weight > 0
    log_w = math.log((1.0 - background_weight) / g) if use_bg else -math.log(g)
    log_wb = math.log(background_weight) if use_bg else -math.inf

    trace: list[float] = []
    converged = False
    n_iter = 0
    for n_iter in range(1, int(max_iter) + 1):
        s_r = torch.zeros(g, dtype=torch.float64)
        s_rd = torch.zeros(g, dtype=torch.float64)
        sb_r = sb_rd = 0.0
        total = 0.0
        for rows, d2 in blocks():
            # One exp per entry: e = exp(lp - row max), lse = max + log(sum e (+ background)), r = e / sum.
            e = _component_logpdf(d2, var, dim).add_(log_w)
            mx = e.max(dim=1).values
            if use_bg:
                lb = -0.5 * bg_d2[rows] / bg_var - 0.5 * dim * (_LOG_2PI + math.log(bg_var)) + log_wb
                mx = torch.maximum(mx, lb)
            e.sub_(mx[:, None]).exp_()
            se = e.sum(dim=1)
            if use_bg:
                eb = torch.exp(lb - mx)
                se = se + eb
                rb = eb / se
                sb_r += float(rb.sum())
                sb_rd += float((rb * bg_d2[rows]).sum())
            e.div_(se[:, None])  # responsibilities r_ij
            s_r += e.sum(dim=0)
            s_rd += e.mul_(d2).sum(dim=0)
            total += float((mx + torch.log(se)).sum())
            del e
        trace.append(total / (x.shape[0] * dim))
        # M-step; a component no point is responsible for keeps its variance.
        has = s_r > 1e-300
        var = torch.where(has, s_rd / (dim * torch.where(has, s_r, torch.ones_like(s_r))), var).clamp_min(min_var)
        if use_bg and sb_r > 1e-300:
            bg_var = max(sb_rd / (dim * sb_r), min_var)
        if len(trace) > 1 and trace[-1] - trace[-2] < tol:
            converged = True
            break
    return {"var": var.numpy(), "n_iter": n_iter, "converged": converged, "loglik": trace, "background_var": bg_var}


def mixture_loglik(points: Any, centres: Any, var: Any, *, budget_mb: float = 64.0) -> np.ndarray:
    """``log p(x)`` of each point under ``(1 / G) sum_j N(x | centres_j, var_j I)``.

    Parameters
    ----------
    points : array-like, shape (N, D)
    centres : array-like, shape (G, D)
    var : array-like, shape (G,)
        Positive variances.
    budget_mb : float, default 64
        Largest (rows x G) float64 block, in MiB.

    Returns
    -------
    numpy.ndarray, shape (N,), float64
    """
    x, c = _as_f64(points, "points"), _as_f64(centres, "centres")
    v = torch.as_tensor(np.asarray(var, dtype=np.float64))
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for rows, d2 in _sq_dist_blocks(x, c, int(budget_mb * 2 ** 20)):
        out[rows] = torch.logsumexp(_component_logpdf(d2, v, c.shape[1]), dim=1) - math.log(c.shape[0])
    return out.numpy()


def max_component_loglik(points: Any, centres: Any, var: Any, *, budget_mb: float = 64.0) -> tuple[np.ndarray, np.ndarray]:
    """For each component j, ``max_i log N(points_i | centres_j, var_j I)`` and the maximising ``i``.

    Returns
    -------
    loglik : numpy.ndarray, shape (G,), float64
    index : numpy.ndarray, shape (G,), int64
    """
    x, c = _as_f64(points, "points"), _as_f64(centres, "centres")
    v = torch.as_tensor(np.asarray(var, dtype=np.float64))
    best = torch.full((c.shape[0],), math.inf, dtype=torch.float64)
    arg = torch.zeros(c.shape[0], dtype=torch.int64)
    for rows, d2 in _sq_dist_blocks(x, c, int(budget_mb * 2 ** 20)):
        m, i = d2.min(dim=0)
        better = m < best
        best = torch.where(better, m, best)
        arg = torch.where(better, i + rows.start, arg)
    return (-0.5 * best / v - 0.5 * c.shape[1] * (_LOG_2PI + torch.log(v))).numpy(), arg.numpy()


def standardizer(test: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (ddof 1) of ``test``; a zero deviation becomes 1."""
    t = _as_f64(test, "test").numpy()
    mean = t.mean(axis=0)
    std = t.std(axis=0, ddof=1) if t.shape[0] > 1 else np.ones(t.shape[1])
    return mean, np.where(std > 0, std, 1.0)


def fld_scores(train: Any, test: Any, gen: Any, *, standardize: bool = True, normalise: bool = True,
               min_var: float = 1e-6, background_weight: float = 0.5, max_iter: int = 100, tol: float = 1e-6,
               budget_mb: float = 64.0, seed: int = 0) -> dict[str, Any]:
    """FLD, its train/test generalization gap and the per-sample O_j (see the module docstring).

    Parameters
    ----------
    train : array-like, shape (N, D)
    test : array-like, shape (M, D)
    gen : array-like, shape (G, D)
    standardize : bool, default True
        Standardise all three with the test set's per-dimension mean and deviation.
    normalise : bool, default True
        Subtract the paper's reference constant ``C`` (a mixture on half the training set fitted to
        the other half); needs ``N >= 2``.
    min_var, background_weight, max_iter, tol, budget_mb
        As in :func:`fit_bandwidths`.
    seed : int, default 0
        Seed of the training-set split of the reference constant.

    Returns
    -------
    dict
        ``"fld"``, ``"fld_train"``, ``"gap"`` (floats), ``"nll_test"`` (M,), ``"nll_train"`` (N,),
        ``"reference_nll"`` (``C``, 0 when not normalised), ``"o"`` (G,) the O_j, ``"o_index"`` (G,)
        the training row attaining each O_j, ``"var"`` (G,) the fitted variances and ``"fit"``
        (iterations, convergence, trace).
    """
    tr, te, ge = _as_f64(train, "train"), _as_f64(test, "test"), _as_f64(gen, "gen")
    if standardize:
        mean, std = (torch.from_numpy(a) for a in standardizer(te))
        tr, te, ge = ((a - mean) / std for a in (tr, te, ge))
    dim = tr.shape[1]
    kw = {"min_var": min_var, "background_weight": background_weight, "max_iter": max_iter, "tol": tol,
          "budget_mb": budget_mb}
    fit = fit_bandwidths(ge, tr, **kw)
    var = fit["var"]
    nll_test = -mixture_loglik(te, ge, var, budget_mb=budget_mb) / dim
    nll_train = -mixture_loglik(tr, ge, var, budget_mb=budget_mb) / dim
    o, o_index = max_component_loglik(tr, ge, var, budget_mb=budget_mb)
    reference = 0.0
    if normalise:
        if tr.shape[0] < 2:
            raise MemgeoError("FLD's reference constant needs at least 2 training samples",
                              "pass more training samples or normalise=False")
        perm = torch.from_numpy(np.random.default_rng([seed, 7411]).permutation(tr.shape[0]))
        size = min(ge.shape[0], tr.shape[0] // 2)
        centres, rest = tr[perm[:size]], tr[perm[size:]]
        ref_var = fit_bandwidths(centres, rest, **kw)["var"]
        reference = float(np.mean(-mixture_loglik(te, centres, ref_var, budget_mb=budget_mb) / dim))
    fld = 100.0 * (float(nll_test.mean()) - reference)
    fld_train = 100.0 * (float(nll_train.mean()) - reference)
    return {"fld": fld, "fld_train": fld_train, "gap": fld_train - fld, "nll_test": nll_test, "nll_train": nll_train,
            "reference_nll": reference, "o": o / dim, "o_index": o_index, "var": var,
            "fit": {k: fit[k] for k in ("n_iter", "converged", "background_var")} | {"final_loglik": fit["loglik"][-1]}}


@COPY_METRICS.register
class FLDMetric(CopyMetric):
    """Feature Likelihood Divergence (Jiralerspong et al. 2023), with its generalization gap and O_j.

    Parameters
    ----------
    standardize : bool, default True
        Standardise features with the test set's per-dimension mean and deviation (as the paper).
    normalise : bool, default True
        Subtract the paper's reference constant (so an ideal generator scores about 0).
    min_var : float, default 1e-6
        Floor of the fitted variances (standardised units); bounds the likelihood of exact copies.
    background_weight : float, default 0.5
        Weight of the fit-only background Gaussian (0: none).
    max_iter : int, default 100
        Most EM steps of the bandwidth fit.
    tol : float, default 1e-6
        EM stopping tolerance (mean log-likelihood per dimension).
    budget_mb : float, default 64
        Largest float64 (points x generated) block held at once, in MiB.
    max_train : int or None, default 10000
        Most training rows used (fit, train likelihoods, O_j): beyond it a seeded random subsample of
        ``max_train`` rows (``None``: all). The EM fit costs ``O(iterations x rows x G x D)``, so a
        1,000,000-row training set is subsampled; a generated copy of a training row left out of the
        subsample is then not seen by the gap or by O_j. ``extra["n_train_used"]`` says how many.

    Notes
    -----
    ``value`` is FLD on the test set (lower = better; it rises with copying, missing modes and poor
    samples alike). The copy signal is ``extra["gap"]`` (``FLD_train - FLD_test``; far below 0 =
    copying) with ``extra["gap_ci"]``. ``per_sample`` is O_j (higher = more memorized),
    ``nearest_index`` the training row attaining it (the nearest one in the standardised space).
    """

    name: ClassVar[str] = "fld"
    kind: ClassVar[str] = "global"
    uses_test: ClassVar[bool] = True
    direction: ClassVar[str] = ("lower = better held-out likelihood (FLD rises with copying, missing modes and poor "
                                "samples alike); copying shows in extra['gap'] far below 0")

    def __init__(self, standardize: bool = True, normalise: bool = True, min_var: float = 1e-6,
                 background_weight: float = 0.5, max_iter: int = 100, tol: float = 1e-6, budget_mb: float = 64.0,
                 max_train: int | None = 10_000) -> None:
        for flag, nm in ((standardize, "standardize"), (normalise, "normalise")):
            if not isinstance(flag, (bool, np.bool_)):
                raise MemgeoError(f"{nm}={flag!r} must be True or False", f"pass {nm}=True or {nm}=False")
        self.standardize = bool(standardize)
        self.normalise = bool(normalise)
        self.min_var = check_scalar(min_var, "min_var", float, min=0, include_min=False, fix="pass e.g. min_var=1e-6")
        self.background_weight = check_scalar(background_weight, "background_weight", float, min=0, max=1,
                                              include_max=False, fix="pass background_weight in [0, 1), e.g. 0.5")
        self.max_iter = check_scalar(max_iter, "max_iter", min=1)
        self.tol = check_scalar(tol, "tol", float, min=0, fix="pass e.g. tol=1e-6")
        self.budget_mb = check_scalar(budget_mb, "budget_mb", float, min=0, include_min=False,
                                      fix="pass a memory budget in MiB, e.g. budget_mb=64")
        self.max_train = check_scalar(max_train, "max_train", min=2, allow_none=True,
                                      fix="pass max_train=10000 (or None for the whole training set)")

    def compute(self, data: CopyData) -> MetricResult:
        train, rows = data.train, None
        if self.max_train is not None and self.max_train < data.n_train:
            rows = np.sort(data.rng("fld/max_train").choice(data.n_train, size=self.max_train, replace=False))
            train = data.train[torch.from_numpy(rows)]
        res = fld_scores(train, data.test, data.gen, standardize=self.standardize, normalise=self.normalise,
                         min_var=self.min_var, background_weight=self.background_weight, max_iter=self.max_iter,
                         tol=self.tol, budget_mb=self.budget_mb, seed=data.seed)
        if rows is not None:
            res["o_index"] = rows[np.asarray(res["o_index"], dtype=np.int64)]
        lo = hi = float("nan")
        gap_ci = [float("nan"), float("nan")]
        if data.n_boot > 0:
            nll_te, nll_tr = res["nll_test"], res["nll_train"]
            idx = data.bootstrap_indices(nll_te.size, "fld/test")
            te_means = nll_te[idx].mean(axis=1)
            lo, hi = data.percentile_ci(100.0 * (te_means - res["reference_nll"]))
            rng = data.rng("bootstrap/fld/train")  # one replicate at a time: N can be large
            tr_means = np.array([nll_tr[rng.integers(0, nll_tr.size, nll_tr.size)].mean() for _ in range(data.n_boot)])
            gap_ci = list(data.percentile_ci(100.0 * (tr_means - te_means)))
        extra = {
            "fld_test": res["fld"], "fld_train": res["fld_train"], "gap": res["gap"], "gap_ci": gap_ci,
            "nll_test": float(res["nll_test"].mean()), "nll_train": float(res["nll_train"].mean()),
            "reference_nll": res["reference_nll"], "normalised": self.normalise, "standardized": self.standardize,
            "median_bandwidth": float(np.sqrt(np.median(res["var"]))),
            "n_at_min_var": int(np.count_nonzero(res["var"] <= self.min_var * (1 + 1e-12))),
            "fit": res["fit"], "min_var": self.min_var, "background_weight": self.background_weight,
            "max_train": self.max_train, "n_train_used": data.n_train if rows is None else int(rows.size),
            "train_subsampled": rows is not None,
        }
        return MetricResult(name=self.name, value=res["fld"], ci_low=lo, ci_high=hi, baseline=None,
                            per_sample=np.asarray(res["o"], dtype=np.float64), flagged=None,
                            nearest_index=np.asarray(res["o_index"], dtype=np.int64), direction=self.direction,
                            extra=extra)
