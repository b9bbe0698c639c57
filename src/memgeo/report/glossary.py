"""The notation every memgeo report may use, in proper math symbols, and readable column names.

:data:`GLOSSARY` maps a short key to ``(symbol, meaning)``; :func:`glossary` picks entries for one
report in the order given. Text may use ``X_{sub}`` and ``X^{sup}``, which :class:`~memgeo.report.Report`
renders as HTML sub- and superscripts. :data:`COLUMN_LABELS` gives table headers a reader can parse
(``tpr_at_1pct_fpr`` -> ``TPR@1%FPR``); the CSV files keep the raw names.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["COLUMN_LABELS", "GLOSSARY", "METRIC_LABELS", "glossary", "metric_label"]

GLOSSARY: dict[str, tuple[str, str]] = {
    "x": ("x, x_{0}", "a sample (image or point); x_{0} is a generation, the end of sampling"),
    "D": ("D", "number of values in one sample (the data dimension, e.g. 64 for 8×8 digits)"),
    "t": ("t", "diffusion time: t = 0 is clean data, t = 1 is pure noise"),
    "sigma": ("σ = σ(t)", "standard deviation of the noise at time t; the noised sample is x_{t} = ψ(t) x + σ(t) ε"),
    "eps": ("ε", "standard Gaussian noise, ε ~ N(0, I)"),
    "score": ("s(x, t)", "the score ∇_{x} log p_{t}(x) given by the trained network"),
    "lambda": ("λσ^{2}", "eigenvalues λ of the Hessian ∇^{2} log p_{t}, in units of 1/σ^{2}: −1 in every direction "
                          "for a point mass (a memorized image), ≈ 0 along a data manifold"),
    "sharpness": ("sharpness", "−mean(λσ^{2}) over all D directions: 1 at a point mass, near 0 on a smooth manifold; "
                               "higher = more likely a copy"),
    "n_flat": ("n_{flat}", "number of directions with λσ^{2} > −½ (directions the sample can still move along)"),
    "norm": ("‖·‖", "Euclidean (ℓ^{2}) length of a vector"),
    "copy": ("copy", "a generation whose nearest training image is much closer than the second nearest: "
                     "d_{1}/d_{2} below the threshold (criterion “ratio”)"),
    "d1": ("d_{1}, d_{2}", "distance from a generation to its nearest and second-nearest training image"),
    "auroc": ("AUROC [CI]", "area under the ROC curve: the chance that a random positive scores above a random "
                            "negative (0.5 = chance, 1 = perfect), with its 95 % bootstrap interval"),
    "tpr": ("TPR@1%FPR", "share of positives flagged when at most 1 % of negatives are flagged"),
    "lid": ("LID", "local intrinsic dimension: the number of directions along which the distribution spreads "
                   "near a point (between 0 and D)"),
    "lid_model": ("LID_{model}", "LID of the model's learned distribution, measured by FLIPD = D + σ^{2}(tr ∇s + "
                                 "‖s‖^{2}) at time t_{0}; a difference of two large terms, so it can fall below 0 "
                                 "where the network's score is inaccurate"),
    "lid_data": ("LID_{data}", "LID of the training data around the point (local PCA of its nearest training "
                               "neighbours)"),
    "t0": ("t_{0}", "diffusion time at which FLIPD evaluates the score"),
    "mmh": ("DD-Mem, OD-Mem", "memorized (LID_{model} below its threshold) where the data itself is degenerate "
                              "(DD-Mem: LID_{data} also small, e.g. duplicates) or where the model collapsed spread-"
                              "out data (OD-Mem); “none” = not memorized"),
    "nfe": ("NFE, NBE", "forward and backward (gradient) network evaluations per generation"),
    "copy_rate": ("copy rate", "share of generations labelled copies of a training image"),
    "n_t": ("n_{t}", "number of samples drawn to fit generation t"),
    "gen": ("generation", "one round of fitting a model to the previous round's samples (0 = the real data)"),
    "sigma2_hat": ("σ̂^{2}_{t}", "variance fitted at generation t (the true variance is σ^{2}_{0})"),
    "trace_ratio": ("tr Σ̂_{t} / tr Σ_{0}", "total variance of generation t relative to the real data "
                                           "(1 = no loss of diversity)"),
    "W": ("energy distance", "distance between the generated and the held-out real distribution (0 = same)"),
    # copy metrics on (train, held-out, generated) samples (`memgeo copies`)
    "held_out": ("held-out baseline", "the same metric with held-out test samples (never trained on) in place of "
                                      "the generations: what a generator that never saw the training set scores"),
    "nl2": ("d(a, b)", "normalized ℓ^{2} distance ‖a − b‖ / √D between two samples in the chosen feature space"),
    "d1d2": ("d_{1}/d_{2}", "distance to the nearest distinct training sample over the distance to the second "
                            "nearest; a copy when below the threshold (default 1/3)"),
    "nn_ratio": ("NN ratio", "d_{1} / (α · mean of the n nearest training distances) (Carlini et al. 2023; α = "
                             "0.5, n = 50); a copy when below 1/3"),
    "dcr": ("DCR", "distance to the closest training record over the training set's typical nearest-neighbour "
                   "spacing; a copy when below the 5 % quantile of the held-out samples' own ratios"),
    "cosine": ("cosine", "cosine similarity to the most similar training sample; a copy above 0.5 (Somepalli et "
                         "al. 2023, meaningful in a copy-detection feature space such as SSCD's)"),
    "tiled_l2": ("tiled ℓ^{2}", "images cut into 4 × 4 tiles; the largest tile distance to the nearest training "
                                "image (Carlini et al. 2023); a copy below 1/3 of the held-out median"),
    "ct": ("C_{T}", "Meehan et al. (2020): per k-means cell, the Mann–Whitney z of generated vs held-out distances "
                    "to the training set, averaged; ≪ 0 (below −2) = generations closer to the training set than "
                    "new data (data-copying), about 0 = none"),
    "ct_z": ("Z_{π}", "the C_{T} z-score of one cell π; cells with too few generations are dropped"),
    "authenticity": ("authenticity", "share of generations farther from their nearest training sample than that "
                                     "sample is from its own nearest other training sample (Alaa et al. 2022); "
                                     "exact copies are never authentic; read against the held-out baseline"),
    "fld": ("FLD, FLD gap", "feature likelihood divergence (Jiralerspong et al. 2023) of a kernel density on the "
                            "generations; the gap FLD_{train} − FLD_{test} far below 0 = the density fits the "
                            "training set better than new data (copying)"),
    "datacopy_rate": ("data-copying rate", "share of generations inside a training ball that receives λ = 20 "
                                           "times more generated than real mass (Bhattacharjee et al. 2023)"),
    "clique": ("clique", "generations in a group of ≥ 10 mutually near-identical generations (Carlini et al. 2023's "
                         "extraction attack); the group's training match is the candidate extracted image"),
    "prdc": ("precision, recall, density, coverage", "k-nearest-neighbour-ball fidelity and diversity scores "
                                                     "(Kynkäänniemi et al. 2019, Naeem et al. 2020); not copy "
                                                     "detectors: copies of the training set score well on all four"),
    "ci": ("[CI]", "95 % percentile bootstrap interval over the generated (and held-out) samples"),
}

#: Table headers for raw column names (anything not listed keeps its name).
COLUMN_LABELS: dict[str, str] = {
    "auroc": "AUROC", "auroc_ci": "AUROC [95 % CI]", "ci_low": "CI low", "ci_high": "CI high",
    "tpr_at_1pct_fpr": "TPR@1%FPR", "tpr_at_closest_1pct_fpr": "TPR at FPR≈1%",
    "closest_fpr_used": "that FPR", "evals_per_prompt": "passes / prompt", "ms_per_prompt": "ms / prompt",
    "n_pos": "positives", "n_neg": "negatives", "copy_rate_memorized": "copy rate (memorized prompts)",
    "copy_reduction_memorized": "copies removed", "accuracy_all": "class accuracy",
    "accuracy_drop_points": "accuracy drop (points)", "copy_rate_generic": "copy rate (other prompts)",
    "nfe_per_generation": "NFE", "nbe_per_generation": "NBE", "seconds_per_generation": "s / generation",
    "median_statistic_memorized": "median d₁/d₂ (memorized)", "lid_model": "LID model", "lid_data": "LID data",
    "mmh_label": "MMH label", "is_copy": "copy?", "n_flat": "n flat", "deficit": "LID deficit",
}

#: Readable names (with units or symbols) of per-generation metrics in collapse reports.
METRIC_LABELS: dict[str, str] = {
    "log_var": "log σ̂² (log variance)", "var": "σ̂² (variance)", "mean": "μ̂ (mean)", "abs_mean": "|μ̂| (mean drift)",
    "mean_sq": "‖μ̂‖² (squared mean drift)", "trace_ratio": "tr Σ̂ₜ / tr Σ₀ (variance kept)",
    "log_det": "log det Σ̂ₜ", "energy": "energy distance to real", "recall": "recall (coverage of real)",
    "precision": "precision (realism)", "copy_rate_own": "copy rate (own training set)",
    "copy_rate_real": "copy rate (real data)", "sharpness": "sharpness −mean(λσ²)", "lid": "LID (FLIPD)",
    "mean_norm_dist": "mean ‖x‖ distance", "kl": "KL(real ‖ fitted)", "entropy": "entropy (nats)",
    "n_distinct": "distinct values", "n_support": "categories still present", "tv": "total variation to real",
    "w2": "W₂ distance to real", "log_bandwidth": "log bandwidth", "logdet_ratio": "log det Σ̂ₜ − log det Σ₀",
    "mean_sq_dist": "‖μ̂ₜ − μ₀‖² (mean drift)", "mu_dist2_plus_trace": "‖μ̂ₜ − μ₀‖² + tr Σ̂ₜ (second moment)",
    "nll_real": "NLL of real data (nats)", "tail_mass": "real mass beyond 3σ̂ (tail)",
    "gini_simpson": "Gini–Simpson diversity 1 − Σ p²", "surviving": "categories still present",
}


def glossary(keys: Iterable[str]) -> dict[str, str]:
    """``{symbol: meaning}`` for the given :data:`GLOSSARY` keys, in that order (unknown keys are skipped)."""
    return {GLOSSARY[k][0]: GLOSSARY[k][1] for k in keys if k in GLOSSARY}


def metric_label(name: str) -> str:
    """The readable name of a collapse metric (``"log_var"`` -> ``"log σ̂² (log variance)"``), else ``name``
    with underscores as spaces."""
    return METRIC_LABELS.get(name, name.replace("_", " "))
