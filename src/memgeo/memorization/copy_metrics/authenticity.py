"""Authenticity of generated samples (Alaa et al. 2022, "How faithful is your synthetic data?"), correctly indexed.

Definition (Alaa et al. 2022, Sec. 3): a generated sample x_j with nearest training sample
x_{i*} is *authentic* iff

    d(x_j, x_{i*}) > d(x_{i*}, its nearest OTHER training sample),

i.e. the generation lies outside the ball that the nearest training point's own nearest-neighbour
distance defines around it. An exact copy has ``d(x_j, x_{i*}) = 0`` and is therefore never
authentic: exact copies give exactly 0 % authentic. Here "other" means another *distinct* training
sample (exact duplicates are collapsed first, so a duplicated image does not get radius 0), and
distances are normalized l2.

A known bug of the public implementations (the authors' repository and the synthcity library) is
in the indexing of the training-to-training search: a training point's distance to *itself* (0) is
counted as its nearest neighbour, and the radius of the wrong training point is then compared,
so that exact copies are partly reported as "authentic" (issue 12 measured about 25 %). Here the
radius is each training point's distance to its nearest other distinct training point, looked up
for the generation's own nearest training point.

For fresh samples of the training distribution the authentic fraction is not 100 %: about 67 % for
the 16-dimensional and 78 % for the 64-dimensional Gaussian-mixture reference data of issue 12
(it grows with dimension). It is read against the held-out baseline (test samples as generator).

Cost: one search of the generated samples against the training set (shared with the other metrics)
and one of the at most G distinct training rows they matched (:meth:`CopyData.train_nn_other`), so
``O((G + min(G, N)) N D)``: no training-set-wide ``N x N`` search. The value is exactly the one of
the definition.
"""

from __future__ import annotations

import numpy as np

from memgeo.memorization.copy_metrics.base import COPY_METRICS, CopyData, CopyMetric, MetricResult


@COPY_METRICS.register
class AuthenticityMetric(CopyMetric):
    """Fraction of authentic generated samples (Alaa et al. 2022), the correct definition.

    ``per_sample`` is 1.0 for an authentic generation and 0.0 otherwise; ``flagged`` = not authentic;
    ``nearest_index`` = the nearest training sample i*. ``extra["radius_ratio"]`` summarises
    ``d(x_j, x_i*) / r_i*`` (median).
    """

    name = "authenticity"
    kind = "global"
    uses_test = False
    direction = "lower = more copying (fraction of generated samples that are authentic)"

    def compute(self, data: CopyData) -> MetricResult:
        d, idx = data.gen_train_nn(1)
        d, idx = d[:, 0], idx[:, 0]
        # Nearest OTHER distinct training row of each generation's own nearest training row, searched
        # for those rows only (at most G of them, not all N).
        r = data.train_nn_other(idx, 1)[0][:, 0]
        authentic = d > r
        lo, hi = data.bootstrap_mean_ci(authentic.astype(np.float64), self.name)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(r > 0, d / np.where(r > 0, r, 1.0), np.inf)
        return MetricResult(name=self.name, value=float(authentic.mean()), ci_low=lo, ci_high=hi, baseline=None,
                            per_sample=authentic.astype(np.float64), flagged=~authentic, nearest_index=idx,
                            direction=self.direction,
                            extra={"median_radius_ratio": float(np.median(ratio))})
