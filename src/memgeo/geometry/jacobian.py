"""Score Jacobians of a diffusion model, dense and matrix-free.

The score Jacobian J(x) = d s(x, t) / dx is the Hessian of log p_t. All functions work on flattened
batches: x has shape (B, D) for the geometry layer and is reshaped to the model's data shape inside.
Three ways to touch J:

* dense: ``vmap(jacrev)`` over the batch, in chunks, giving (B, D, D);
* JVP (forward mode, ``torch.func.jvp``): J v for a batch of v in one call;
* VJP (reverse mode, ``torch.func.vjp``): J^T w. Forward mode fails through some layers (e.g.
  attention kernels in diffusers), so J v also has a reverse-only path: J v = d/dw <J^T w, v>,
  the VJP of the (linear in w) map w -> J^T w, i.e. a double backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.func import jacfwd, jacrev, jvp, vjp, vmap

from memgeo.errors import MemgeoError, check_choice, check_finite
from memgeo.models.base import DiffusionModel, as_time

Mode = Literal["jvp", "vjp"]


def flat_score_fn(model: DiffusionModel, t: torch.Tensor | float, cond: torch.Tensor | None = None,
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The score at fixed (t, cond) as a function of flattened points, (B, D) -> (B, D)."""
    shape = tuple(model.data_shape)

    def f(xf: torch.Tensor) -> torch.Tensor:
        b = xf.shape[0]
        return model.score(xf.reshape((b,) + shape), as_time(t, b, xf), cond).reshape(b, -1)

    return f


def check_points(model: DiffusionModel, x: torch.Tensor, name: str = "points") -> torch.Tensor:
    """Validate and flatten points for ``model``: (B, *data_shape) or (B, D) -> (B, D)."""
    if x.ndim < 2:
        raise MemgeoError(f"{name} has shape {tuple(x.shape)}", "pass a batch (B, D) with one point per row")
    check_finite(x, name)
    xf = x.reshape(x.shape[0], -1)
    if xf.shape[1] != model.dim:
        raise MemgeoError(f"{name} have dimension {xf.shape[1]} but the model expects {model.dim}",
                          "pass points with the model's data dimension")
    return xf


def score_jacobian(model: DiffusionModel, x: torch.Tensor, t: torch.Tensor | float,
                   cond: torch.Tensor | None = None, *, chunk_size: int = 32,
                   mode: Literal["rev", "fwd"] = "rev") -> torch.Tensor:
    """Dense per-sample score Jacobians.

    Parameters
    ----------
    model : DiffusionModel
    x : Tensor, shape (B, D) or (B, *data_shape)
    t : float or Tensor of shape (B,)
    cond : Tensor, shape (B,), optional
    chunk_size : int
        Samples per ``vmap`` call; memory grows as chunk_size * D^2.
    mode : {"rev", "fwd"}
        ``jacrev`` (D VJPs, works everywhere) or ``jacfwd`` (D JVPs).

    Returns
    -------
    Tensor, shape (B, D, D)
        J[b, i, j] = d s_i / d x_j at x[b].
    """
    xf = check_points(model, x)
    b = xf.shape[0]
    tt = as_time(t, b, xf)
    shape = tuple(model.data_shape)
    has_cond = cond is not None

    def single(xi: torch.Tensor, ti: torch.Tensor, ci: torch.Tensor | None) -> torch.Tensor:
        c = ci[None] if has_cond else None
        return model.score(xi.reshape((1,) + shape), ti[None], c).reshape(-1)

    jac = jacrev if mode == "rev" else jacfwd
    # torch.func ignores an outer no_grad for its own transforms but it stops ordinary autograd from
    # also recording a graph over trainable parameters, which costs time and memory for nothing.
    per_sample = vmap(jac(single), in_dims=(0, 0, 0 if has_cond else None))
    out = []
    with torch.no_grad():
        for s in range(0, b, chunk_size):
            e = min(s + chunk_size, b)
            out.append(per_sample(xf[s:e], tt[s:e], cond[s:e] if has_cond else None).detach())
    return torch.cat(out)


class ScoreJacobianOperator:
    """Matrix-free access to the per-sample score Jacobians of a batch.

    Every product acts on a batch of vectors (B, D), one vector per sample, and costs one
    network forward plus one forward- or reverse-mode pass (double backward for reverse-only J v).

    Parameters
    ----------
    model : DiffusionModel
    x : Tensor, shape (B, D) or (B, *data_shape)
    t : float or Tensor (B,)
    cond : Tensor (B,), optional
    mode : {"jvp", "vjp"}
        How J v is computed: forward mode (``"jvp"``) or reverse only (``"vjp"``, works where
        forward-mode AD fails). J^T w always uses reverse mode.

    Attributes
    ----------
    n_matvecs : int
        Number of network-derivative products performed so far (cost accounting).
    """

    def __init__(self, model: DiffusionModel, x: torch.Tensor, t: torch.Tensor | float,
                 cond: torch.Tensor | None = None, mode: Mode = "jvp") -> None:
        check_choice(mode, ("jvp", "vjp"), "Jacobian product mode")
        self.model = model
        self.x = check_points(model, x).detach()
        self.t = as_time(t, self.x.shape[0], self.x)
        self.cond = cond
        self.mode: Mode = mode
        self.f = flat_score_fn(model, self.t, cond)
        self.n_matvecs = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        b, d = self.x.shape
        return b, d, d

    def _check(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != self.x.shape:
            raise MemgeoError(f"vector batch has shape {tuple(v.shape)}, expected {tuple(self.x.shape)}",
                              "pass one D-vector per sample")
        return v.to(self.x.dtype)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """J v, shape (B, D)."""
        v = self._check(v)
        self.n_matvecs += 1
        with torch.no_grad():
            if self.mode == "jvp":
                return jvp(self.f, (self.x,), (v,))[1].detach()
            return self._jv_by_double_vjp(v)

    def rmatvec(self, w: torch.Tensor) -> torch.Tensor:
        """J^T w, shape (B, D)."""
        w = self._check(w)
        self.n_matvecs += 1
        with torch.no_grad():
            _, pullback = vjp(self.f, self.x)
            return pullback(w)[0].detach()

    def sym_matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Symmetric part ((J + J^T) / 2) v, shape (B, D); two products."""
        return 0.5 * (self.matvec(v) + self.rmatvec(v))

    def _jv_by_double_vjp(self, v: torch.Tensor) -> torch.Tensor:
        # g(w) = J^T w is linear in w with matrix J^T, so its VJP with cotangent v is J v.
        x = self.x

        def g(w: torch.Tensor) -> torch.Tensor:
            _, pullback = vjp(self.f, x)
            return pullback(w)[0]

        _, pull_g = vjp(g, torch.zeros_like(x))
        return pull_g(v)[0].detach()


def jacobian_asymmetry(jac: torch.Tensor) -> torch.Tensor:
    """||J - J^T||_F / ||J||_F per sample: (B, D, D) -> (B,). Zero for an exact (conservative) score."""
    num = torch.linalg.matrix_norm(jac - jac.transpose(-1, -2))
    return num / torch.linalg.matrix_norm(jac).clamp_min(torch.finfo(jac.dtype).tiny)
