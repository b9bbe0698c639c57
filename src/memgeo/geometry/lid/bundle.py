"""Normal-bundle LID (Stanczuk et al., 2023): the rank of scores of nearby noised copies.

Close to a d-dimensional manifold and at small sigma, the score points back to the manifold, so
scores of K noised copies of x span the (D - d)-dimensional normal space; their singular values
split into D - d large ones (normal) and d small ones (tangent). LID = D - normal rank. Two rules
find the normal rank from the singular values s_i of the centred (K, D) bundle:

* ``"gap"`` (Stanczuk et al.): the largest gap of log s_i. It needs a gap, so it can only return
  1 ... D - 1: an atom (all directions normal) or full-dimensional data (none) has no gap.
* ``"threshold"`` (default): v_i = sigma^2 s_i^2 / (K - 1) is the variance of sigma times the score
  along singular direction i. Along a normal direction sigma * score is minus the added unit-variance
  noise, so v_i = 1; along a tangent direction with data variance lambda it is
  (sigma^2 / (psi^2 lambda + sigma^2))^2, near 0. With finitely many copies the normal v_i scatter
  like the eigenvalues of a sample covariance of unit-variance noise, down to the Marchenko-Pastur
  edge (1 - sqrt(q))^2 with q = D / (K - 1); directions with v_i above half that edge count as normal.
  Both 0 and D are reachable. Needs K > D + 1 copies.

Cost: K forwards per point (DESIGN suggests K = 4D), no derivatives.
"""

from __future__ import annotations

import torch

from memgeo.errors import MemgeoError, check_choice
from memgeo.geometry.jacobian import check_points
from memgeo.geometry.lid.base import ModelLIDEstimator, register
from memgeo.models.base import DiffusionModel, as_time, model_dtype


@register
class NormalBundle(ModelLIDEstimator):
    """LID from the singular values of a bundle of scores.

    Parameters
    ----------
    t0 : float
        Diffusion time of the noised copies (small: the manifold must look flat at sigma(t0)).
    n_copies : int or None
        K noised copies per point; ``None`` means 4 D.
    rule : {"threshold", "gap"}
        How the normal rank is read from the singular values (see the module docstring).
    seed : int
    chunk_size : int
        Points per batched score evaluation (each contributes K rows).
    """

    name = "normal_bundle"

    def __init__(self, t0: float = 0.01, n_copies: int | None = None, rule: str = "threshold", seed: int = 0,
                 chunk_size: int = 8) -> None:
        self.t0 = t0
        self.n_copies = n_copies
        self.rule = rule
        self.seed = seed
        self.chunk_size = chunk_size

    def estimate(self, model: DiffusionModel, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """LID estimates (B,) float64; ``singular_values_`` (B, min(K, D)) are kept for inspection."""
        if not 0 < self.t0 <= 1:
            raise MemgeoError(f"t0={self.t0} is outside (0, 1]", "pass a small diffusion time, e.g. 0.01")
        check_choice(self.rule, ("threshold", "gap"), "normal-bundle rule")
        xf = check_points(model, x).to(model_dtype(model))
        b, d = xf.shape
        k = self.n_copies or 4 * d
        if k < 2 or (self.rule == "threshold" and k <= d + 1):
            raise MemgeoError(f"n_copies={k} for D={d} (the threshold rule needs more than D + 1)",
                              "use more noised copies (default 4 D) or rule='gap'")
        gen = torch.Generator(device=xf.device).manual_seed(self.seed)
        sch = model.schedule
        psi = float(sch.sqrt_alpha_bar(torch.tensor(self.t0, dtype=torch.float64)))
        sigma = float(sch.sigma(torch.tensor(self.t0, dtype=torch.float64)))
        svals = []
        for s in range(0, b, self.chunk_size):
            xs = xf[s:s + self.chunk_size]
            m = xs.shape[0]
            noisy = psi * xs[:, None, :] + sigma * torch.randn((m, k, d), generator=gen, dtype=xs.dtype,
                                                                  device=xs.device)
            c = None if cond is None else cond[s:s + m].repeat_interleave(k)
            with torch.no_grad():
                flat = noisy.reshape(m * k, d)
                sc = model.score(flat.reshape((m * k,) + tuple(model.data_shape)), as_time(self.t0, m * k, flat), c)
            bundle = sc.reshape(m, k, d).double()
            # Centre over the copies: the mean score has a tangent component (the pull towards the
            # data's centre along the manifold) that would otherwise count as one more normal direction.
            svals.append(torch.linalg.svdvals(bundle - bundle.mean(1, keepdim=True)))
        sv = torch.cat(svals)  # (B, min(K, D)), descending
        self.singular_values_ = sv
        if self.rule == "threshold":
            normalised_var = sigma ** 2 * sv ** 2 / (k - 1)
            cut = 0.5 * (1.0 - (d / (k - 1)) ** 0.5) ** 2
            return (d - (normalised_var > cut).sum(1)).double()
        logsv = sv.clamp_min(torch.finfo(torch.float64).tiny).log()
        gaps = logsv[:, :-1] - logsv[:, 1:]  # gap after the j-th largest value
        normal_rank = gaps.argmax(1) + 1
        return (d - normal_rank).double()
