"""Score Jacobians of a diffusion model, dense and matrix-free.

The score Jacobian J(x) = d s(x, t) / dx is the Hessian of log p_t. All functions work on flattened
batches: x has shape (B, D) for the geometry layer and is reshaped to the model's data shape inside.
Three ways to touch J:

* dense: ``vmap(jacrev)`` over the batch, in chunks, giving (B, D, D);
* JVP (forward mode, ``torch.func.jvp``): J v for a batch of v in one call;
* VJP (reverse mode, ``torch.func.vjp``): J^T w. Forward mode fails through some layers (e.g.
  attention kernels in diffusers), so J v also has a reverse-only path: J v = d/dw <J^T w, v>,
  the VJP of the (linear in w) map w -> J^T w, i.e. a double backward.

:class:`ScoreJacobianOperator` caches the reverse-mode graph of a batch of points, so repeated
products (Lanczos, Hutchinson probes) cost a backward pass each and no forward, and it takes P
vectors per sample at once, (P, B, D), in one ``vmap``-ed pass over the shared graph.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

import torch
from torch.func import jacfwd, jacrev, jvp, linearize, vjp, vmap

from memgeo.errors import MemgeoError, check_choice, check_finite
from memgeo.models.base import DiffusionModel, as_time

_COUNT_LOCK = threading.Lock()  # sub-batch operators may run in parallel threads (lanczos_extreme workers)
Mode = Literal["jvp", "vjp", "linearize"]
MODES = ("jvp", "vjp", "linearize")


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


def _first(pullback: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    """A torch.func pullback returns a tuple (one cotangent per primal); keep the only one."""
    return lambda u: pullback(u)[0]


class ScoreJacobianOperator:
    """Matrix-free access to the per-sample score Jacobians of a batch, with the autograd graph cached.

    Products act on one D-vector per sample, a batch (B, D), or on P vectors per sample at once, a
    batch (P, B, D) (Hutchinson probes, Lanczos blocks): the P products share one graph of the B
    points and run as one ``vmap``-ed pass, falling back to a loop over P where a layer has no
    batching rule.

    Cost and caching (``cache=True``, the default). The first reverse-mode product runs the network
    forward once at the B points and keeps ``torch.func.vjp``'s pullback; every later J^T w reuses it
    (one backward pass, no forward). Reverse-only J v (``mode="vjp"``) is the VJP of the linear map
    w -> J^T w (a double backward), whose graph is built once on top of the cached pullback and
    reused too. ``mode="linearize"`` caches a forward-mode linearisation (``torch.func.linearize``)
    instead; tracing it costs about a hundred forwards (measured 0.71 s against 5.7 ms for one
    forward of the D = 784 MLP of ``benchmarks/kernels.py`` at B = 64), so it pays only for very many
    J v products through layers without double backward. Forward-mode ``mode="jvp"`` is not cached: each
    J v recomputes the primal (one forward plus its tangent). The network output at the points comes
    with the cached forward: :meth:`score` returns it without another forward. With ``cache=False``
    every product rebuilds its graph (one forward per product), the behaviour before caching.

    Memory. A cached graph holds the activations of the forward at the B points (about what a training
    step at batch B keeps for its backward); the double-backward graph of ``mode="vjp"`` holds the
    first backward's intermediates as well, roughly twice that. Both are freed by :meth:`close`, at the
    end of a ``with`` block, or when the operator is dropped.

    Parameters
    ----------
    model : DiffusionModel
    x : Tensor, shape (B, D) or (B, *data_shape)
    t : float or Tensor (B,)
    cond : Tensor (B,), optional
    mode : {"jvp", "vjp", "linearize"}
        How J v is computed: forward mode per call (``"jvp"``), reverse only on the cached graph
        (``"vjp"``, the fastest for repeated products and the one that works where forward-mode AD
        fails), or forward mode on a cached linearisation (``"linearize"``). J^T w always uses the
        cached reverse-mode pullback.
    cache : bool
        Keep the graphs between products (default). ``False`` rebuilds them on every product.

    Attributes
    ----------
    n_matvecs : int
        Network-derivative products performed so far, counted per vector: a (P, B, D) batch counts P.
    n_forwards : int
        Network forward passes run by the operator (graph builds, or one per product uncached).
        Both counters include the work of the operators made by :meth:`sub` / :meth:`restrict`
        (a product on a sub-batch counts one, like a product on the whole batch).
    """

    def __init__(self, model: DiffusionModel, x: torch.Tensor, t: torch.Tensor | float,
                 cond: torch.Tensor | None = None, mode: Mode = "jvp", *, cache: bool = True) -> None:
        check_choice(mode, MODES, "Jacobian product mode")
        self.model = model
        self.x = check_points(model, x).detach()
        self.t = as_time(t, self.x.shape[0], self.x)
        self.cond = cond
        self.mode: Mode = mode
        self.cache = bool(cache)
        self.f = flat_score_fn(model, self.t, cond)
        self.n_matvecs = 0
        self.n_forwards = 0
        self._parent: ScoreJacobianOperator | None = None
        self._value: torch.Tensor | None = None
        self._pullback: Callable | None = None
        self._pull_g: Callable | None = None
        self._lin: Callable | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        b, d = self.x.shape
        return b, d, d

    # ------------------------------------------------------------------ cache

    def _get_pullback(self) -> Callable:
        if self._pullback is None or not self.cache:
            self._count(forwards=1)
            value, pullback = vjp(self.f, self.x)
            if not self.cache:
                return pullback
            self._value, self._pullback = value.detach(), pullback
        return self._pullback

    def _get_pull_g(self) -> Callable:
        # g(w) = J^T w is linear in w with matrix J^T, so its VJP with cotangent v is J v.
        if self._pull_g is None or not self.cache:
            pullback = self._get_pullback()
            _, pull_g = vjp(lambda w: pullback(w)[0], torch.zeros_like(self.x))
            if not self.cache:
                return pull_g
            self._pull_g = pull_g
        return self._pull_g

    def _get_lin(self) -> Callable:
        if self._lin is None or not self.cache:
            self._count(forwards=2)  # torch.func.linearize evaluates the network twice: primal and traced jvp
            value, lin = linearize(self.f, self.x)
            if not self.cache:
                return lin
            self._value, self._lin = value.detach(), lin
        return self._lin

    def score(self) -> torch.Tensor:
        """The network's score at the points, (B, D): from the cached forward (run it if none yet)."""
        with torch.no_grad():
            if not self.cache:
                self._count(forwards=1)
                return self.f(self.x).detach()
            if self._value is None:
                if self.mode == "linearize":
                    self._get_lin()
                else:
                    self._get_pullback()
        assert self._value is not None
        return self._value

    def _count(self, matvecs: int = 0, forwards: int = 0) -> None:
        """Add to this operator's counters and to those of the operator it was restricted from."""
        with _COUNT_LOCK:
            op: ScoreJacobianOperator | None = self
            while op is not None:
                op.n_matvecs += matvecs
                op.n_forwards += forwards
                op = op._parent

    def sub(self, idx: torch.Tensor) -> "ScoreJacobianOperator":
        """The operator of the sub-batch ``x[idx]`` (with ``t[idx]``, ``cond[idx]``), same mode and caching.

        Parameters
        ----------
        idx : Tensor (b,), int64
            Indices into this operator's batch.

        Returns
        -------
        ScoreJacobianOperator
            A fresh operator on (b, D) vectors. Its first product builds its own graph (one forward at
            the b points); its counters start at 0 and its products and forwards are also added to
            this operator's counters.
        """
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.x.device)
        if idx.ndim != 1 or idx.numel() == 0:
            raise MemgeoError(f"sub-batch indices have shape {tuple(idx.shape)}", "pass a non-empty 1-D index tensor")
        if bool((idx < 0).any()) or bool((idx >= self.x.shape[0]).any()):
            raise MemgeoError(f"sub-batch indices out of range for a batch of {self.x.shape[0]}",
                              f"pass indices in [0, {self.x.shape[0] - 1}]")
        cond = None if self.cond is None else self.cond[idx.to(self.cond.device)]
        op = ScoreJacobianOperator(self.model, self.x[idx], self.t[idx], cond, self.mode, cache=self.cache)
        op._parent = self
        return op

    def restrict(self, idx: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``sub(idx).sym_matvec``: the symmetric-part product on the samples ``idx``, (b, D) -> (b, D).

        The ``restrict`` argument of :func:`memgeo.geometry.linalg.lanczos_extreme` when its matvec is
        :meth:`sym_matvec` (indices always into this operator's batch).
        """
        return self.sub(idx).sym_matvec

    def close(self) -> None:
        """Free the cached graphs and activations (the operator stays usable and rebuilds on demand)."""
        self._value = self._pullback = self._pull_g = self._lin = None

    def __enter__(self) -> "ScoreJacobianOperator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ products

    def _check(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape[-2:] != self.x.shape or v.ndim not in (2, 3):
            raise MemgeoError(f"vector batch has shape {tuple(v.shape)}, expected {tuple(self.x.shape)} "
                              f"or (P, {', '.join(map(str, self.x.shape))})",
                              "pass one D-vector per sample, or P of them stacked in front")
        return v.to(self.x.dtype)

    def _apply(self, make: Callable[[], Callable[[torch.Tensor], torch.Tensor]], v: torch.Tensor) -> torch.Tensor:
        """make()(.) on (B, D), or on every slice of (P, B, D) in one vmap-ed call (a loop where vmap fails).

        ``make`` builds (or fetches) the graph outside vmap, so a graph is never captured inside a
        transform that has ended by the time it is reused.
        """
        self._count(matvecs=1 if v.ndim == 2 else v.shape[0])
        # torch.func ignores an outer no_grad for its own transforms, but it stops ordinary autograd
        # from also recording a graph over trainable parameters.
        with torch.no_grad():
            fn = make()
            if v.ndim == 2:
                return fn(v).detach()
            try:
                return vmap(fn)(v).detach()
            except (RuntimeError, NotImplementedError):  # a layer without a batching rule
                return torch.stack([fn(vi) for vi in v]).detach()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """J v: (B, D) -> (B, D), or (P, B, D) -> (P, B, D) with the graph of the B points shared."""
        v = self._check(v)
        if self.mode == "vjp":
            return self._apply(lambda: _first(self._get_pull_g()), v)
        if self.mode == "linearize":
            return self._apply(self._get_lin, v)

        def make() -> Callable[[torch.Tensor], torch.Tensor]:
            self._count(forwards=1)  # forward mode recomputes the primal: one forward per call (shared by P)
            return lambda u: jvp(self.f, (self.x,), (u,))[1]

        return self._apply(make, v)

    def rmatvec(self, w: torch.Tensor) -> torch.Tensor:
        """J^T w: (B, D) -> (B, D), or (P, B, D) -> (P, B, D) with the graph of the B points shared."""
        w = self._check(w)
        return self._apply(lambda: _first(self._get_pullback()), w)

    def sym_matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Symmetric part ((J + J^T) / 2) v, same shapes as :meth:`matvec`; two products per vector."""
        return 0.5 * (self.matvec(v) + self.rmatvec(v))


def jacobian_asymmetry(jac: torch.Tensor) -> torch.Tensor:
    """||J - J^T||_F / ||J||_F per sample: (B, D, D) -> (B,). Zero for an exact (conservative) score."""
    num = torch.linalg.matrix_norm(jac - jac.transpose(-1, -2))
    return num / torch.linalg.matrix_norm(jac).clamp_min(torch.finfo(jac.dtype).tiny)
