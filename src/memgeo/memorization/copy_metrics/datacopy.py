"""Point-wise data-copying rate of Bhattacharjee, Dasgupta & Chaudhuri (2023).

Reference: R. Bhattacharjee, S. Dasgupta, K. Chaudhuri, "Data-copying in generative models: a formal
framework", ICML 2023 (PMLR 202:2364-2396, arXiv:2302.13181).

Definition (paraphrased). Let p be the data distribution, q the generator's and S the training
set; fix lambda > 1 and gamma > 0. q *copies* a training point x in S if there is a ball B = B(x, r)
around it with small data mass, ``p(B) <= gamma``, that q over-represents by a factor lambda,
``q(B) >= lambda * p(B)``. The *copying region* C_q(lambda, gamma) is the union of the largest such
balls over the training points, and the *data-copying rate* is ``cr_q(lambda, gamma) = q(C_q)``, the
probability that a generated sample falls in a copying ball. Unlike the global C_T test of Meehan
et al. (2020) this is local: heavy copying of a few training points cannot be cancelled by
under-fitting elsewhere.

Estimator (the paper's plug-in scheme). q(B) is estimated by the fraction of one sample T of
generations inside B; the copying balls chosen with T are then applied to an independent sample U of
generations, and the rate is the fraction of U inside some ball. p(B) cannot be counted in a tiny
ball, so, as in the paper, it is extrapolated under a regularity (smoothness) assumption from the
training set's own neighbour distances:

    p(B(x_i, r)) ~= (b / n) * (r / r_b(x_i)) ** d,

with r_b(x_i) the distance from x_i to its b-th nearest other distinct training point, n the
number of distinct training points and d an intrinsic dimension (by default the Levina-Bickel
maximum-likelihood estimate from the same b neighbours, combined over points as
``1 / mean(1 / d_i)``). For every training point the ball radius r_i is the largest distance t_j to
one of its ``k_max`` nearest T-generations with ``p(B(x_i, t_j)) <= gamma`` and
``j / |T| >= lambda * p(B(x_i, t_j))`` (no ball if none qualifies).

Per-sample verdicts. To give every generation a verdict, the generations are split by a seeded
permutation into two halves that take turns as T and U (two-fold cross-fitting): a generation is
flagged when it lies in a copying ball chosen from the *other* half. Because of this split a
training point copied once only is not detected (the other half holds no generation near it):
the rate measures *repeated* over-representation of training points, which is what the
definition asks for; single exact copies are caught by the local metrics (``"d1d2"`` ...).
"""

from __future__ import annotations

import numpy as np
import torch

from memgeo.data.neighbors import nearest_neighbors
from memgeo.errors import MemgeoError, check_scalar
from memgeo.memorization.copy_metrics.base import COPY_METRICS, CopyData, CopyMetric, MetricResult, rate_result


def levina_bickel_dimension(knn_distances: np.ndarray) -> float:
    """Levina-Bickel MLE of the intrinsic dimension from (n, k) ascending neighbour distances (k >= 2).

    Per point ``m_i = (k - 1) / sum_{j < k} log(T_k / T_j)``; combined as ``1 / mean(1 / m_i)``
    (MacKay & Ghahramani's correction). Zero distances are skipped.
    """
    t = np.asarray(knn_distances, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] < 2:
        raise MemgeoError("the dimension estimate needs at least 2 neighbour distances per point",
                          "pass b >= 2")
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(t[:, -1:] / t[:, :-1])
    logs = np.where(np.isfinite(logs), logs, 0.0)
    inv = logs.sum(axis=1) / (t.shape[1] - 1)  # 1 / m_i
    inv = inv[inv > 0]
    if inv.size == 0:
        raise MemgeoError("the training set's neighbour distances are degenerate (all equal or 0)",
                          "pass dim= explicitly")
    return float(1.0 / inv.mean())


@COPY_METRICS.register
class DataCopyRateMetric(CopyMetric):
    """Point-wise data-copying rate cr_q(lambda, gamma) of Bhattacharjee et al. (2023).

    Parameters
    ----------
    lam : float, default 20.0
        lambda > 1: how much more mass than the data distribution a ball must receive.
    gamma : float, default 0.01
        In (0, 1]: the largest data mass p(B) of a copying ball.
    b : int, default 20
        Neighbour rank of the regularity radius r_b (and of the dimension estimate).
    dim : float, optional
        Intrinsic dimension of the extrapolation; default the Levina-Bickel estimate.
    k_max : int, default 64
        Candidate radii per training point: distances to its k_max nearest generations of T.

    ``per_sample`` is 1.0 for a generation inside a copying ball (of the other half) and 0.0
    otherwise; ``nearest_index`` is the nearest training sample (a flagged generation may lie in the
    ball of a neighbour of it; ``extra["n_flagged_with_ball_at_nearest"]`` counts the flagged ones whose
    ball is centred at their nearest training sample).
    """

    name = "datacopy_rate"
    kind = "global"
    uses_test = False

    def __init__(self, lam: float = 20.0, gamma: float = 0.01, b: int = 20, dim: float | None = None,
                 k_max: int = 64) -> None:
        self.lam = check_scalar(lam, "lam", float, min=1, include_min=False, fix="pass lam=20 (lambda > 1)")
        self.gamma = check_scalar(gamma, "gamma", float, min=0, max=1, include_min=False, fix="pass gamma=0.01")
        self.b = check_scalar(b, "b", min=2, fix="pass b=20")
        self.dim = check_scalar(dim, "dim", float, min=0, include_min=False, allow_none=True)
        self.k_max = check_scalar(k_max, "k_max", min=1, fix="pass k_max=64")

    def compute(self, data: CopyData) -> MetricResult:
        n = data.n_train_unique
        if n < 3:
            raise MemgeoError(f"train has {n} distinct samples", "the data-copying rate needs at least 3")
        if data.n_gen < 2:
            raise MemgeoError("the data-copying rate needs at least 2 generated samples",
                              "pass more generations (they are split in two halves)")
        b = min(self.b, n - 1)
        tt, _ = data.train_train_nn(b)
        tt = tt[data.train_first]  # (n, b) per distinct training row
        r_b = tt[:, -1]
        dim = self.dim if self.dim is not None else levina_bickel_dimension(tt)
        perm = data.rng(f"{self.name}/split").permutation(data.n_gen)
        halves = [np.sort(perm[: data.n_gen // 2]), np.sort(perm[data.n_gen // 2:])]
        flagged = np.zeros(data.n_gen, dtype=bool)
        centre = np.full(data.n_gen, -1, dtype=np.int64)
        n_balls = []
        for t_rows, u_rows in ((halves[0], halves[1]), (halves[1], halves[0])):
            radii = self._radii(data, t_rows, r_b, b, dim)
            n_balls.append(int(np.count_nonzero(radii >= 0)))
            f, c = _inside_balls(data.train_unique, radii, data.gen[torch.from_numpy(u_rows)], data.dim)
            flagged[u_rows] = f
            centre[u_rows] = c
        _, nn = data.gen_train_nn(1)
        res = rate_result(self, data, flagged.astype(np.float64), flagged, nn[:, 0],
                          {"lam": self.lam, "gamma": self.gamma, "b": b, "dim": dim, "k_max": self.k_max,
                           "n_copying_balls": n_balls,
                           "n_flagged_with_ball_at_nearest": int(np.count_nonzero(
                               flagged & (data.train_first[np.maximum(centre, 0)] == nn[:, 0])))})
        return res

    def _radii(self, data: CopyData, t_rows: np.ndarray, r_b: np.ndarray, b: int, dim: float) -> np.ndarray:
        """Largest qualifying ball radius per distinct training point from generations ``t_rows`` (-1: none)."""
        n, m = data.n_train_unique, t_rows.shape[0]
        k = min(self.k_max, m)
        d, _ = nearest_neighbors(data.train_unique, data.gen[torch.from_numpy(t_rows)], k=k, chunk_size=data.chunk_size,
                                 backend=data.backend)
        d = d.cpu().numpy()
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            ratio = np.where(r_b[:, None] > 0, d / np.where(r_b[:, None] > 0, r_b[:, None], 1.0), np.inf)
            p_hat = (b / n) * np.power(ratio, dim)
        # j / m with j counting every T point at distance <= t_j (ties share the largest count).
        counts = np.arange(1, k + 1, dtype=np.float64)[None, :].repeat(n, axis=0)
        for col in range(k - 2, -1, -1):
            same = d[:, col] == d[:, col + 1]
            counts[same, col] = counts[same, col + 1]
        ok = (p_hat <= self.gamma) & (counts / m >= self.lam * p_hat)
        last = np.where(ok.any(axis=1), k - 1 - np.argmax(ok[:, ::-1], axis=1), -1)
        return np.where(last >= 0, d[np.arange(n), np.maximum(last, 0)], -1.0)


def _inside_balls(centres: torch.Tensor, radii: np.ndarray, points: torch.Tensor, dim: int,
                  chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Which points lie in a closed ball ``B(centres[i], radii[i])`` (radii < 0: no ball); exact float64.

    Returns ``(inside (P,) bool, centre (P,) int64)``: the nearest centre among the balls that hold
    the point (-1 when outside every ball).
    """
    inside = np.zeros(points.shape[0], dtype=bool)
    best = np.full(points.shape[0], np.inf)
    which = np.full(points.shape[0], -1, dtype=np.int64)
    active = np.flatnonzero(radii >= 0)
    if active.size == 0 or points.shape[0] == 0:
        return inside, which
    p64 = points.double()
    scale = np.sqrt(dim)
    for s in range(0, active.size, chunk):
        ids = active[s:s + chunk]
        c64 = centres[torch.from_numpy(ids)].double()
        dist = torch.cdist(c64, p64, compute_mode="donot_use_mm_for_euclid_dist").numpy() / scale  # (c, P)
        r = radii[ids][:, None]
        rel = np.where(dist <= r, dist, np.inf)
        col_best = rel.min(axis=0)
        arg = ids[rel.argmin(axis=0)]
        better = col_best < best
        best[better] = col_best[better]
        which[better] = arg[better]
    inside = np.isfinite(best)
    return inside, which
