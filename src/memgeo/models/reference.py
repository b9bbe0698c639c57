"""Exact scores that need no training: ground truth for the geometry layer.

* :class:`GaussianScore`: data N(mu, Sigma) with Sigma possibly singular (a flat manifold). Then
  p_t = N(psi mu, psi^2 Sigma + sigma^2 I) and the score Jacobian is exactly -Sigma_t^{-1}.
* :class:`EmpiricalMixtureScore`: data = the training points themselves, so
  p_t = mean_i N(psi x_i, sigma^2 I). Its score is what a network that perfectly minimizes the
  denoising loss on the training set learns: the "perfect memorizer".
"""

from __future__ import annotations

import torch

from memgeo.errors import MemgeoError, check_finite
from memgeo.models.base import NULL_CLASS, DiffusionModel, as_time, expand_like
from memgeo.models.schedule import VPSchedule


class GaussianScore(DiffusionModel):
    """Analytic score of a (possibly degenerate) Gaussian under the VP forward process.

    Parameters
    ----------
    mean : Tensor, shape (D,)
    cov : Tensor, shape (D, D)
        Symmetric positive semi-definite; zero eigenvalues (normal directions) are allowed.
    schedule : VPSchedule, optional
    """

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor, schedule: VPSchedule | None = None) -> None:
        super().__init__()
        mean = torch.as_tensor(mean)
        cov = torch.as_tensor(cov, dtype=mean.dtype)
        if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
            raise MemgeoError(f"mean {tuple(mean.shape)} / cov {tuple(cov.shape)} shapes disagree", "pass (D,) and (D, D)")
        check_finite(cov, "cov")
        if not torch.allclose(cov, cov.T, atol=1e-6 * float(cov.abs().max().clamp_min(1.0))):
            raise MemgeoError("cov is not symmetric", "pass a symmetric covariance, e.g. (C + C.T) / 2")
        evals, evecs = torch.linalg.eigh(cov)
        if float(evals.min()) < -1e-6 * float(evals.abs().max().clamp_min(1.0)):
            raise MemgeoError(f"cov has a negative eigenvalue {float(evals.min()):.3g}", "pass a PSD covariance")
        self.schedule = schedule or VPSchedule()
        self.data_shape = (mean.shape[0],)
        self.register_buffer("mean", mean)
        self.register_buffer("cov_evals", evals.clamp_min(0.0))
        self.register_buffer("cov_evecs", evecs)

    def score(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """-Sigma_t^{-1} (x - psi mu), Sigma_t = psi^2 Sigma + sigma^2 I; x (B, D) -> (B, D)."""
        self.check_input(x)
        tt = as_time(t, x.shape[0], x)
        ab = expand_like(self.schedule.alpha_bar(tt), x)
        psi = ab.sqrt()
        s2 = 1.0 - ab
        r = (x - psi * self.mean) @ self.cov_evecs  # coordinates in the eigenbasis
        return -(r / (ab * self.cov_evals + s2)) @ self.cov_evecs.T

    def cov_t(self, t: float) -> torch.Tensor:
        """Marginal covariance Sigma_t = psi^2 Sigma + sigma^2 I, shape (D, D)."""
        ab = self.schedule.alpha_bar(torch.tensor(t, dtype=self.mean.dtype))
        d = ab * self.cov_evals + (1 - ab)
        return (self.cov_evecs * d) @ self.cov_evecs.T


class EmpiricalMixtureScore(DiffusionModel):
    """Closed-form score of the Gaussian-smoothed training set.

    score(x, t) = (sum_i w_i psi x_i - x) / sigma^2, w = softmax_i(-||x - psi x_i||^2 / (2 sigma^2)),
    restricted to the training points of class ``cond`` when labels are given.

    Parameters
    ----------
    data : Tensor, shape (N, *data_shape)
        Training points; duplicates are kept (they are what makes a point memorized).
    labels : Tensor, shape (N,), optional
        Class of every training point, enabling class-conditional scores.
    schedule : VPSchedule, optional
    """

    def __init__(self, data: torch.Tensor, labels: torch.Tensor | None = None,
                 schedule: VPSchedule | None = None) -> None:
        super().__init__()
        data = torch.as_tensor(data)
        if data.ndim < 2 or data.shape[0] == 0:
            raise MemgeoError(f"training data has shape {tuple(data.shape)}", "pass an (N, D) array with N >= 1")
        check_finite(data, "training data")
        self.schedule = schedule or VPSchedule()
        self.data_shape = tuple(data.shape[1:])
        flat = data.reshape(data.shape[0], -1)
        self.register_buffer("points", flat)
        self.register_buffer("sq_norms", (flat * flat).sum(1))
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (data.shape[0],):
                raise MemgeoError("labels must have one entry per training point", "pass (N,) labels")
            self.num_classes = int(labels.max()) + 1
            self.register_buffer("labels", labels)
        else:
            self.labels = None

    def posterior_weights(self, x: torch.Tensor, t: torch.Tensor | float,
                          cond: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior over training points given x_t, shape (B, N)."""
        self.check_input(x, cond)
        xf = x.reshape(x.shape[0], -1)
        tt = as_time(t, x.shape[0], x)
        ab = self.schedule.alpha_bar(tt)[:, None]
        s2 = 1.0 - ab
        # ||x - psi x_i||^2 expanded so that it stays vmap/jvp friendly (no cdist backward quirks).
        sq = (xf * xf).sum(1, keepdim=True) - 2 * ab.sqrt() * (xf @ self.points.T) + ab * self.sq_norms[None]
        logits = -sq / (2 * s2)
        if cond is not None and self.labels is not None:
            allowed = (self.labels[None, :] == cond[:, None]) | (cond[:, None] == NULL_CLASS)
            logits = logits.masked_fill(~allowed, float("-inf"))
        return torch.softmax(logits, dim=1)

    def score(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Exact score, shape (B, *data_shape)."""
        w = self.posterior_weights(x, t, cond)
        tt = as_time(t, x.shape[0], x)
        ab = self.schedule.alpha_bar(tt)[:, None]
        xf = x.reshape(x.shape[0], -1)
        s = (ab.sqrt() * (w @ self.points) - xf) / (1.0 - ab)
        return s.reshape(x.shape)
