"""Density sharpness of likelihood models: the Hessian of a per-sample log-density in x.

For a model with an (exact or bounded) log-likelihood log p(x) (a VAE's importance-weighted bound,
a Gumbel-Softmax VAE's exact log-likelihood, a kernel density), the curvature of log p around a
point says how concentrated the learned distribution is there: a memorized training point is a
narrow peak (large negative eigenvalues in every direction), a point on a well-learned manifold is
curved only across it. This is the likelihood-model analogue of the diffusion sharpness of
:mod:`memgeo.geometry.sharpness` (which reads the Hessian of log p_t through the score Jacobian).

* :func:`log_density_hessian`: the dense (B, D, D) Hessian by ``torch.func`` (forward-over-reverse,
  D forward passes of a gradient per sample), for small D;
* :func:`density_sharpness`: -scale * mean eigenvalue of the symmetrised Hessian
  = -scale * tr(H) / D. For an isotropic Gaussian of variance v it is scale / v, so with
  ``scale`` = a reference variance (e.g. the data's per-coordinate variance, or sigma_t^2 to compare
  with diffusion sharpness) it reads 1 for a Gaussian bump of that variance, more for narrower
  peaks, 0 for a flat density. Higher means "more concentrated"; the sign is never flipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.func import hessian, vmap

from memgeo.errors import MemgeoError, check_choice, check_finite, check_scalar

LogProbFn = Callable[[torch.Tensor], torch.Tensor]


def _check_x(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise MemgeoError(f"points have shape {got}", "pass a non-empty batch (B, *data_shape)")
    if not x.is_floating_point():
        raise MemgeoError(f"points have dtype {x.dtype}", "pass floating-point points")
    check_finite(x, "points")
    return x.detach()


def log_density_hessian(log_prob: LogProbFn, x: torch.Tensor, chunk_size: int | None = None,
                        randomness: Literal["error", "same", "different"] = "error") -> torch.Tensor:
    """Dense Hessian of a per-sample log-density with respect to the point, H[b] = d^2 log p / dx^2 at x[b].

    Parameters
    ----------
    log_prob : callable
        (n, *data_shape) -> (n,), one independent log-density per row (e.g. ``model.log_prob`` or
        ``lambda x: model.iw_bound(x, k)``); differentiable twice in x.
    x : Tensor, shape (B, *data_shape)
        Points; the data axes are flattened, D = prod(data_shape).
    chunk_size : int, optional
        Points per ``vmap`` call (memory grows as chunk_size * D^2); all at once by default.
    randomness : {"error", "same", "different"}
        ``torch.func.vmap``'s handling of random draws inside ``log_prob`` (a stochastic bound):
        ``"error"`` refuses them, ``"same"`` shares one draw across the batch, ``"different"``
        draws per point. A stochastic bound's Hessian is the Hessian of that one draw.

    Returns
    -------
    Tensor, shape (B, D, D)
        Per-point Hessians in x's dtype (symmetric up to round-off).

    Notes
    -----
    Cost per point: D forward-mode passes through the gradient of ``log_prob`` (``jacfwd`` over
    ``jacrev``); meant for small D (toys, 8x8 digits).
    """
    x = _check_x(x)
    check_choice(randomness, ("error", "same", "different"), "vmap randomness")
    b = x.shape[0]
    shape = tuple(x.shape[1:])
    d = x[0].numel()
    chunk = check_scalar(chunk_size, "chunk_size", min=1, allow_none=True) or b

    def single(xi: torch.Tensor) -> torch.Tensor:
        out = log_prob(xi.reshape((1,) + shape))
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MemgeoError(f"log_prob returned {got} for one point",
                              "make log_prob map (n, *data_shape) points to (n,) log-densities")
        return out.reshape(())

    per_point = vmap(hessian(single), randomness=randomness)
    flat = x.reshape(b, d)
    out = []
    with torch.no_grad():  # torch.func still differentiates; no graph over the model's parameters
        for s in range(0, b, chunk):
            out.append(per_point(flat[s:s + chunk]).detach())
    hess = torch.cat(out)
    check_finite(hess, "log-density Hessian")
    return hess


def density_sharpness(log_prob: LogProbFn | None, x: torch.Tensor, scale: float = 1.0, *,
                      hess: torch.Tensor | None = None, chunk_size: int | None = None,
                      randomness: Literal["error", "same", "different"] = "error") -> torch.Tensor:
    """Density sharpness: -scale times the mean eigenvalue of the symmetrised log-density Hessian.

    sharpness(x) = -scale * mean_i lambda_i((H + H^T)/2) = -scale * tr(H) / D.

    Parameters
    ----------
    log_prob : callable or None
        (n, *data_shape) -> (n,); may be None when ``hess`` is given.
    x : Tensor, shape (B, *data_shape)
    scale : float, default 1.0
        Reference variance that makes the value dimensionless: an isotropic Gaussian of variance
        v has sharpness scale / v (1 when v = scale). With 1.0 the unit is 1 / (data unit)^2.
    hess : Tensor, shape (B, D, D), optional
        A precomputed :func:`log_density_hessian` (skips the Hessian).
    chunk_size, randomness
        As in :func:`log_density_hessian`.

    Returns
    -------
    Tensor, shape (B,), float64
        Higher means a more concentrated (memorization-like) density around x; 0 for a flat one,
        negative where log p is convex (between modes).
    """
    x = _check_x(x)
    scale = check_scalar(scale, "scale", float, min=0.0, include_min=False)
    b, d = x.shape[0], x[0].numel()
    if hess is None:
        if log_prob is None:
            raise MemgeoError("density_sharpness got neither log_prob nor hess", "pass one of them")
        hess = log_density_hessian(log_prob, x, chunk_size=chunk_size, randomness=randomness)
    elif not isinstance(hess, torch.Tensor) or hess.shape != (b, d, d):
        got = tuple(hess.shape) if isinstance(hess, torch.Tensor) else type(hess).__name__
        raise MemgeoError(f"hess has shape {got}, expected ({b}, {d}, {d})",
                          "pass the (B, D, D) Hessians from log_density_hessian for these points")
    h = hess.double()
    sym = 0.5 * (h + h.transpose(1, 2))
    # mean eigenvalue of the symmetric part = its trace / D (no eigendecomposition needed)
    return -scale * torch.diagonal(sym, dim1=1, dim2=2).sum(1) / d


__all__ = ["density_sharpness", "log_density_hessian"]
