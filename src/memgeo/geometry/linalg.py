"""Batched Krylov methods for per-sample operators: Lanczos, Arnoldi, stochastic Lanczos quadrature.

Every function sees the operators only through ``matvec``, mapping a vector batch (B, D), one vector
per sample, to (A_b v_b)_b, shape (B, D). All B samples advance together: the Krylov bases are
(B, D, m) tensors and the projected matrices are (B, m, m), so the only Python loop is over
Krylov steps. One call of ``matvec`` is one matvec in the cost accounting. For the score Jacobian,
pass ``ScoreJacobianOperator.sym_matvec`` (the symmetric part) to the symmetric methods and
``ScoreJacobianOperator.matvec`` to :func:`arnoldi_eigs`.

Numerics
--------
* Full reorthogonalization (classical Gram-Schmidt, repeated once where the first pass cancelled
  more than 1 - 1/sqrt(2) of the vector: the DGKS "twice is enough" rule) against the whole basis at
  every step. It prevents the ghost copies of converged Ritz values that plain Lanczos produces. It
  costs O(B D m) per step and is memory-bound: the basis is stored (B, m, D) so each pass is one
  contiguous ``bmm``; at B = 64, D = 784, m = 90 one pass reads 18 MB, about 1.5 ms on one core.
* Breakdown: when the new residual vanishes for a sample (its Krylov space is invariant, e.g. an
  operator -I/sigma^2 + low rank), that sample continues with a fresh random vector orthogonal to
  its basis and a zero coupling coefficient. The projected matrix becomes block diagonal, each block
  exact, so all samples can keep advancing in lockstep and repeated eigenvalues are found once per
  restart (single-vector Krylov methods otherwise see each eigenvalue only once).
* The small projected eigenproblems are solved in float64 whatever the operator dtype: they are
  cheap and this removes one source of rounding from the Ritz values.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import torch

from memgeo.errors import MemgeoError, check_choice, check_scalar
from memgeo.geometry.trace import PROBES, _apply, draw_probes

Matvec = Callable[[torch.Tensor], torch.Tensor]
WHICH = ("both", "smallest", "largest")


@dataclass
class LanczosResult:
    """Extreme Ritz values of symmetric per-sample operators.

    Attributes
    ----------
    eigenvalues : Tensor, shape (B, k) or (B, 2k)
        Ritz values sorted ascending. ``which="smallest"``: the k smallest; ``"largest"``: the k
        largest; ``"both"``: the k smallest followed by the k largest, shape (B, 2k).
    residual_bounds : Tensor, shape like ``eigenvalues``
        |beta_m s_{m,i}| = ||A y_i - theta_i y_i|| for the unit Ritz vector y_i. For symmetric A some
        eigenvalue lies within this distance of theta_i (and within residual^2 / gap once the Ritz
        value is isolated).
    n_matvecs : int
        Batched operator applications used (equals the Krylov dimension m reached; with ``workers``,
        summed over the sub-batches).
    which : str
    eigenvectors : Tensor, shape (B, D, k) or (B, D, 2k), optional
        Unit Ritz vectors matching ``eigenvalues`` (only with ``return_vectors=True``).
    n_steps : Tensor (B,), int64, optional
        Krylov dimension at which each sample's Ritz values were taken: ``n_matvecs`` for every
        sample without ``restrict``; with it, the check at which the sample met the stopping bound.
    sample_matvecs : int
        Per-sample operator products computed: the sum over operator calls of the batch size of the
        call (B * n_matvecs without ``restrict``; less once converged samples are dropped).
    """

    eigenvalues: torch.Tensor
    residual_bounds: torch.Tensor
    n_matvecs: int
    which: str
    eigenvectors: torch.Tensor | None = None
    n_steps: torch.Tensor | None = None
    sample_matvecs: int = 0


@dataclass
class ArnoldiResult:
    """Ritz values of non-symmetric per-sample operators at both ends of the real axis.

    Attributes
    ----------
    largest_real : Tensor, complex, shape (B, k)
        The k Ritz values of largest real part, sorted by decreasing real part (for equal real part,
        the one with positive imaginary part first).
    smallest_real : Tensor, complex, shape (B, k)
        The k Ritz values of smallest real part, sorted by increasing real part. May overlap
        ``largest_real`` when 2k exceeds the Krylov dimension.
    residual_largest, residual_smallest : Tensor, shape (B, k)
        |h_{m+1,m} y_{m,i}| = ||A x_i - theta_i x_i|| for the unit Ritz vectors x_i = V_m y_i. For
        non-normal A the eigenvalue error can exceed this by the eigenvector condition number.
    n_matvecs : int
        Batched operator applications used.
    """

    largest_real: torch.Tensor
    smallest_real: torch.Tensor
    residual_largest: torch.Tensor
    residual_smallest: torch.Tensor
    n_matvecs: int


class SLQDensity(NamedTuple):
    """Spectral density from stochastic Lanczos quadrature; unpacks as ``grid, density, nodes, weights``.

    Attributes
    ----------
    grid : Tensor, shape (G,)
        Evaluation points (eigenvalue axis).
    density : Tensor, shape (B, G)
        Gaussian-smoothed density of the eigenvalue distribution (1/D) sum_i delta(lambda - lambda_i);
        integrates to ~1 over a grid that covers the nodes with a few bandwidths to spare.
    nodes : Tensor, shape (B, n_probes * m)
        Ritz values of every probe's Lanczos run (quadrature nodes).
    weights : Tensor, shape (B, n_probes * m)
        Squared first components of the Ritz vectors divided by ``n_probes``; each row sums to 1.
    """

    grid: torch.Tensor
    density: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor

    @property
    def n_matvecs(self) -> int:
        """Batched operator applications used: one per node."""
        return int(self.nodes.shape[1])

    @property
    def mean(self) -> torch.Tensor:
        """(B,) quadrature estimate of tr(A)/D, sum of nodes * weights."""
        return (self.nodes * self.weights).sum(1)


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove the span of ``basis`` (B, j, D), rows orthonormal, from ``w`` (B, D) by CGS applied twice.

    Returns the orthogonalized vectors (B, D) and the total coefficients (B, j). The basis is stored
    row-wise, so that its first j rows are one contiguous block and the two products are plain
    ``bmm`` calls (a strided (B, D, j) slice was measured 4x slower than a network product at j = 90).
    Both products put the basis on the right, (B, 1, D) x (B, D, j) and (B, 1, j) x (B, j, D): the
    coefficient product written as (B, j, D) x (B, D, 1) takes a batched matrix-vector path that was
    measured 15x slower on one CPU thread (2.5 ms against 0.17 ms at B = 64, j = 45, D = 784).
    """
    coef = torch.zeros(basis.shape[0], basis.shape[1], dtype=w.dtype, device=w.device)
    for p in range(2):
        before = w.norm(dim=1)
        c = torch.bmm(w.unsqueeze(1), basis.transpose(1, 2)).squeeze(1)
        w = w - torch.bmm(c.unsqueeze(1), basis).squeeze(1)
        coef = coef + c
        # DGKS criterion: a second pass is needed only where the first one cancelled much of w
        # (||w|| fell below 1/sqrt(2) of its value); in Lanczos the recurrence has already removed
        # nearly everything, so the second pass (half the cost, memory-bound) is usually skipped.
        if p == 0 and not bool((w.norm(dim=1) < 0.7071 * before).any()):
            break
    return w, coef


def _next_vector(w: torch.Tensor, norm: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalize ``w`` into the next basis vector, restarting samples whose residual vanished.

    Returns the next vectors (B, D) and the coupling coefficients (B,) to store (0 where restarted).
    """
    # 1000 eps relative to the operator scale: after two reorthogonalizations an exhausted Krylov
    # space leaves a residual of a few eps, while a genuine one is orders of magnitude larger.
    tiny = 1e3 * torch.finfo(w.dtype).eps * scale.clamp_min(torch.finfo(w.dtype).tiny)
    broke = norm <= tiny
    if not bool(broke.any()):
        return w / norm[:, None], norm
    fresh = draw_probes(w.shape[0], w.shape[1], "gaussian", generator=generator, dtype=w.dtype, device=w.device)
    fresh, _ = _orthogonalize(fresh, basis)
    fresh = fresh / fresh.norm(dim=1, keepdim=True)
    nxt = torch.where(broke[:, None], fresh, w / norm.clamp_min(torch.finfo(w.dtype).tiny)[:, None])
    return nxt, torch.where(broke, torch.zeros_like(norm), norm)


def _start_vector(batch: int, dim: int, probe: str, generator, dtype, device) -> torch.Tensor:
    v = draw_probes(batch, dim, probe, generator=generator, dtype=dtype, device=device)
    return v / v.norm(dim=1, keepdim=True)


def _tridiag(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """(B, m) diagonal and (B, m-1) off-diagonal -> dense symmetric (B, m, m) in float64."""
    a = alpha.double()
    t = torch.diag_embed(a)
    if beta.shape[1] > 0:
        off = torch.diag_embed(beta.double(), offset=1)
        t = t + off + off.transpose(1, 2)
    return t


def _lanczos_step(matvec: Matvec, q: torch.Tensor, j: int, basis: torch.Tensor, alpha: torch.Tensor,
                  beta: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step j of batched Lanczos from the unit vectors q (B, D): stores q in ``basis[:, j]`` and the
    diagonal entry in ``alpha[:, j]`` and the residual norm in ``beta[:, j]`` (in place); returns the
    residual w (B, D), its norm (B,) and the running operator scale (B,)."""
    basis[:, j] = q
    w = _apply(matvec, q)
    a = (q * w).sum(1)
    alpha[:, j] = a
    # The three-term recurrence first, then a full reorthogonalization that also cleans it up.
    w = w - a[:, None] * q
    if j > 0:
        w = w - beta[:, j - 1, None] * basis[:, j - 1]
    w, _ = _orthogonalize(w, basis[:, : j + 1])
    nrm = w.norm(dim=1)
    beta[:, j] = nrm
    return w, nrm, torch.maximum(scale, torch.maximum(a.abs(), nrm))


def _lanczos(matvec: Matvec, q0: torch.Tensor, m: int, generator: torch.Generator | None,
             stop: Callable[[torch.Tensor, torch.Tensor], bool] | None = None, check_every: int = 5,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Batched Lanczos with full reorthogonalization.

    Parameters
    ----------
    q0 : Tensor, shape (B, D)
        Unit start vectors.
    m : int
        Maximum Krylov dimension (<= D).
    stop : callable, optional
        ``stop(alpha (B, j), beta (B, j))`` called every ``check_every`` steps; the last column of
        beta is the current residual norm. Returning True ends the iteration.

    Returns
    -------
    alpha : (B, j), beta : (B, j), basis : (B, j, D) (row i is the i-th Lanczos vector), j
        beta[:, :j-1] are the off-diagonals of T (0 where a sample restarted) and beta[:, j-1] is
        the norm of the final residual, which gives the Ritz residual bounds.
    """
    b, d = q0.shape
    basis = q0.new_empty(b, m, d)  # only rows [:j+1] are ever read
    alpha = q0.new_zeros(b, m)
    beta = q0.new_zeros(b, m)
    scale = q0.new_zeros(b)
    q = q0
    j = 0
    for j in range(m):
        w, nrm, scale = _lanczos_step(matvec, q, j, basis, alpha, beta, scale)
        if stop is not None and (j + 1) % check_every == 0 and stop(alpha[:, : j + 1], beta[:, : j + 1]):
            break
        if j + 1 < m:
            q, beta[:, j] = _next_vector(w, nrm, basis[:, : j + 1], scale, generator)
    n = j + 1
    return alpha[:, :n], beta[:, :n], basis[:, :n], n


def _ritz(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ritz values (B, j) ascending, eigenvectors of T (B, j, j) and residual bounds (B, j), float64."""
    theta, s = torch.linalg.eigh(_tridiag(alpha, beta[:, :-1]))
    res = (beta[:, -1:].double() * s[:, -1, :]).abs()
    return theta, s, res


def _select(which: str, k: int, j: int) -> torch.Tensor:
    """Indices of the requested Ritz values among j ascending ones."""
    if which == "smallest":
        return torch.arange(k)
    if which == "largest":
        return torch.arange(j - k, j)
    return torch.cat([torch.arange(k), torch.arange(j - k, j)])


class _RitzEnds(NamedTuple):
    """The selected Ritz pairs of a check: values (b, n), residual bounds (b, n), distance to the nearest
    other Ritz value (b, n), the sample's |theta|_max (b, 1), eigenvectors of T (b, j, n); all float64."""

    theta: torch.Tensor
    res: torch.Tensor
    gap: torch.Tensor
    radius: torch.Tensor
    vecs: torch.Tensor


def _ritz_ends(alpha: torch.Tensor, beta: torch.Tensor, which: str, k: int) -> _RitzEnds:
    """The k extreme Ritz pairs (``which`` end(s)) of each sample's tridiagonal and what the bounds need.

    One batched float64 ``eigh`` of the (b, j, j) tridiagonals. (Solving only for the wanted pairs,
    per sample with LAPACK bisection and inverse iteration through scipy, was measured no faster at
    B = 64, j <= 90: about 100 ms per Lanczos run either way, the per-call overhead eating the gain.)
    """
    theta, s, res = _ritz(alpha, beta)
    idx = _select(which, k, alpha.shape[1])
    diff = theta.diff(dim=1)
    inf = torch.full_like(theta[:, :1], float("inf"))
    gap = torch.minimum(torch.cat([inf, diff], 1), torch.cat([diff, inf], 1))
    return _RitzEnds(theta[:, idx], res[:, idx], gap[:, idx], theta.abs().amax(1, keepdim=True), s[:, :, idx])


def _meets_bound(ends: _RitzEnds, tol: float, bound: str) -> torch.Tensor:
    """(b,) bool: every selected Ritz value's error bound is below ``tol`` times the sample's |theta|_max."""
    tiny = torch.finfo(torch.float64).tiny
    err = ends.res
    if bound == "gap":
        err = torch.minimum(ends.res, ends.res * ends.res / ends.gap.clamp_min(tiny))
    return (err <= tol * ends.radius.clamp_min(tiny)).all(1)


#: Restrict the operator once at least this fraction of the samples still in the batch has converged.
RESTRICT_FRACTION = 0.25
#: With ``restrict``, a sample is frozen once its bound holds at FREEZE_FACTOR * tol (see _lanczos_active).
FREEZE_FACTOR = 0.1


def _lanczos_active(matvec: Matvec, restrict: Callable[[torch.Tensor], Matvec], q0: torch.Tensor, m: int,
                    generator: torch.Generator | None, which: str, k: int, tol: float, bound: str,
                    check_every: int, first_check: int, return_vectors: bool,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, int, int]:
    """Batched Lanczos that freezes each sample when it converges and drops frozen samples from the batch.

    Same recurrence, reorthogonalization and restarts as :func:`_lanczos`, on the rows still in the
    batch. At every check (every ``check_every`` steps from ``first_check`` on, and at step m) the
    samples whose selected Ritz values meet the bound at ``FREEZE_FACTOR * tol`` are frozen (at step
    m: all the rest): their Ritz values, residual bounds and (optionally) vectors are taken at that
    check. The factor 0.1 is the safety margin that the lockstep run gets implicitly (a sample keeps
    iterating after it first meets the bound until the slowest one does): no Krylov bound can see an
    eigenvalue whose eigenvector is still nearly orthogonal to the Krylov space, and a Ritz value that
    settled on the (k+1)-th eigenvalue while the k-th is undiscovered meets the ``"gap"`` bound (its
    Ritz gap overestimates the true one). Measured on the D = 784 MLP of ``benchmarks/kernels.py``
    (B = 64, k = 5, tol 1e-4, 2 point sets x 2 start seeds): freezing at tol left 1-3 samples per run
    with such a miss (errors up to 1e-2); at tol / 10 none (max error 3e-5), for about 4 more
    products per sample.

    Frozen rows keep riding along (their products are wasted) until at least ``RESTRICT_FRACTION``
    of the current batch is frozen; then the working arrays are compacted to the live rows and
    ``restrict(global indices of the live samples)`` supplies the matvec for them. Rebuilding an
    operator costs about one product of the new batch (a forward plus the first graph build); a
    quarter of the batch's products pays that back within about four steps.

    Returns
    -------
    theta (B, n_sel) float64, res (B, n_sel) float64, vecs (B, D, n_sel) or None, n_steps (B,),
    operator calls, per-sample products (sum of call batch sizes).
    """
    b0, d = q0.shape
    n_sel = 2 * k if which == "both" else k
    out_theta = torch.zeros(b0, n_sel, dtype=torch.float64, device=q0.device)
    out_res = torch.zeros_like(out_theta)
    out_vecs = q0.new_zeros(b0, d, n_sel) if return_vectors else None
    n_steps = torch.zeros(b0, dtype=torch.long)
    act = torch.arange(b0)  # global sample index of each working row
    live = torch.ones(b0, dtype=torch.bool)  # working rows not frozen yet
    basis = q0.new_empty(b0, m, d)  # only rows [:j+1] are ever read
    alpha = q0.new_zeros(b0, m)
    beta = q0.new_zeros(b0, m)
    scale = q0.new_zeros(b0)
    q, mv = q0, matvec
    calls = rows = 0
    for j in range(m):
        calls += 1
        rows += q.shape[0]
        w, nrm, scale = _lanczos_step(mv, q, j, basis, alpha, beta, scale)
        last = j + 1 == m
        if last or (tol > 0 and j + 1 >= first_check and (j + 1) % check_every == 0):
            cand = live.nonzero().squeeze(1)
            ends = _ritz_ends(alpha[cand, : j + 1], beta[cand, : j + 1], which, k)
            if last:
                conv = torch.ones(len(cand), dtype=torch.bool)
            else:
                conv = _meets_bound(ends, FREEZE_FACTOR * tol, bound).cpu()
            if bool(conv.any()):
                done = cand[conv]
                glob = act[done]
                out_theta[glob.to(out_theta.device)] = ends.theta[conv]
                out_res[glob.to(out_res.device)] = ends.res[conv]
                n_steps[glob] = j + 1
                if out_vecs is not None:
                    sv = ends.vecs[conv].to(basis.dtype)
                    out_vecs[glob.to(out_vecs.device)] = torch.einsum("bjd,bji->bdi", basis[done, : j + 1], sv)
                live[done] = False
            n_live = int(live.sum())
            if n_live == 0:
                break
            if live.numel() - n_live >= RESTRICT_FRACTION * live.numel():
                keep = live.nonzero().squeeze(1)
                new_basis = basis.new_empty(n_live, m, d)
                new_basis[:, : j + 1] = basis[keep, : j + 1]
                basis = new_basis
                alpha, beta, scale, w, nrm = alpha[keep], beta[keep], scale[keep], w[keep], nrm[keep]
                act = act[keep]
                live = torch.ones(n_live, dtype=torch.bool)
                mv = restrict(act.clone())
        if j + 1 < m:
            q, beta[:, j] = _next_vector(w, nrm, basis[:, : j + 1], scale, generator)
    return out_theta, out_res, out_vecs, n_steps, calls, rows


def _check_sizes(batch: int, dim: int, n_iter: int) -> int:
    check_scalar(batch, "batch", min=1)
    check_scalar(dim, "dim", min=1)
    check_scalar(n_iter, "n_iter", min=1)
    return min(n_iter, dim)


def lanczos_extreme(matvec: Matvec, batch: int, dim: int, k: int = 5, n_iter: int = 60, which: str = "both", *,
                    tol: float = 1e-5, check_every: int = 5, return_vectors: bool = False,
                    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                    device=None, bound: str = "residual",
                    restrict: Callable[[torch.Tensor], Matvec] | None = None, workers: int = 1) -> LanczosResult:
    """Extreme eigenvalues of symmetric per-sample operators by batched Lanczos.

    Parameters
    ----------
    matvec : callable
        (B, D) -> (B, D), v_b -> A_b v_b with every A_b symmetric (e.g.
        ``ScoreJacobianOperator.sym_matvec``). Non-symmetric input gives meaningless results.
    batch, dim : int
        B and D.
    k : int
        Number of eigenvalues wanted at each requested end.
    n_iter : int
        Maximum Krylov dimension (= maximum matvecs); capped at D, where the result is exact.
    which : {"both", "smallest", "largest"}
        ``"both"`` returns the k smallest and the k largest from one run, shape (B, 2k).
    tol : float
        Stop early once every requested Ritz value of every sample has a residual bound below
        ``tol * max_i |theta_i|`` (relative to that sample's spectral radius estimate). Checked every
        ``check_every`` steps; set ``tol=0`` to always run ``n_iter`` steps.
    check_every : int
        Steps between convergence checks (each costs one small batched ``eigh``).
    bound : {"residual", "gap"}
        What ``tol`` bounds. ``"residual"`` (the ARPACK criterion): the residual r_i = ||A y_i - theta_i y_i||,
        itself a bound on the eigenvalue error. ``"gap"``: the a-posteriori eigenvalue error bound
        min(r_i, r_i^2 / gap_i), gap_i the distance from theta_i to the nearest other Ritz value (an
        estimate of its gap to the rest of the spectrum; Parlett, The Symmetric Eigenvalue Problem,
        ch. 11). It stops much earlier for isolated eigenvalues at the same eigenvalue accuracy
        (residual^2 / gap is the actual error once a Ritz value has settled), and is no looser than
        ``"residual"`` for clustered ones.
    return_vectors : bool
        Also return the Ritz vectors, shape (B, D, k or 2k).
    generator : torch.Generator, optional
        For the Gaussian start vectors (and restarts after breakdown).
    dtype, device
        Of the Krylov basis.
    restrict : callable, optional
        ``restrict(idx)``, idx (b,) int64 the indices (into the original batch, ascending) of the
        samples still running, returns a matvec on their vectors, (b, D) -> (b, D) (e.g.
        ``ScoreJacobianOperator.restrict``). With it, each sample is frozen at the first check where
        its requested Ritz values meet the bound at tol / 10 (``FREEZE_FACTOR``, a margin against
        eigenvalues not yet discovered; values, bounds and vectors taken there; its step count in
        ``n_steps``), and once at least a quarter (``RESTRICT_FRACTION``) of the samples
        still in the batch are frozen they are dropped and the rest continue on ``restrict``'s matvec,
        so converged samples stop costing products. Without it (default) all samples run until the
        slowest converges and the values are taken at that last step, as before.
    workers : int
        With ``restrict``: split the batch into this many contiguous sub-batches, each run on its own
        Python thread with ``restrict(its indices)`` as matvec and one intra-op torch thread (the
        process-wide ``torch.set_num_threads`` is set to 1 during the call and restored after). On a
        multi-core CPU this replaces intra-op parallelism (every small elementwise op split over cores)
        by sample parallelism; measured on 2 cores (``benchmarks/kernels.py`` (a)) it cuts CPU time
        and wall time against ``torch.set_num_threads(2)``. Each sub-batch gets the start vectors it
        would have had in one batch and its own restart generator seeded from ``generator``, so the
        result does not depend on thread timing. Default 1 (one batch). Not for GPU operators.

    Returns
    -------
    LanczosResult

    Raises
    ------
    MemgeoError
        Unknown ``which``; k < 1; more Ritz values requested than the Krylov dimension provides
        (k > min(n_iter, D), or 2k > min(n_iter, D) for ``"both"``); bad sizes or matvec output;
        ``workers > 1`` without ``restrict``.
    """
    check_choice(which, WHICH, "Ritz value selection")
    check_scalar(workers, "workers", int, min=1)
    if workers > 1 and restrict is None:
        raise MemgeoError(f"workers={workers} needs restrict (the matvec of a sub-batch)",
                          "pass restrict=op.restrict, or workers=1")
    check_choice(bound, ("residual", "gap"), "Lanczos stopping bound")
    m = _check_sizes(batch, dim, n_iter)
    check_scalar(k, "k", min=1)
    check_scalar(check_every, "check_every", min=1)
    need = 2 * k if which == "both" else k
    if need > m:
        raise MemgeoError(f"{need} Ritz values requested but the Krylov dimension is only min(n_iter, D) = {m}",
                          "lower k or raise n_iter (at most D)")
    if device is None and generator is not None:
        device = generator.device
    q0 = _start_vector(batch, dim, "gaussian", generator, dtype, device)
    if restrict is not None and min(workers, batch) > 1:
        return _lanczos_workers(restrict, q0, m, generator, which, k, tol, bound, check_every, need,
                                return_vectors, min(workers, batch), dtype)
    if restrict is not None:
        theta, res, vecs, steps, calls, rows = _lanczos_active(
            matvec, restrict, q0, m, generator, which, k, tol, bound, check_every, need, return_vectors)
        return LanczosResult(theta.to(dtype), res.to(dtype), calls, which, vecs, steps, rows)

    # Samples that met the criterion once are not checked again (their Ritz values only improve),
    # so each check solves the small eigenproblems of the samples still running only.
    pending = torch.ones(batch, dtype=torch.bool)

    def stop(alpha: torch.Tensor, beta: torch.Tensor) -> bool:
        j = alpha.shape[1]
        if j < need or tol <= 0:
            return False
        rows = pending.nonzero().squeeze(1).to(alpha.device)
        pending[rows.cpu()] = ~_meets_bound(_ritz_ends(alpha[rows], beta[rows], which, k), tol, bound).cpu()
        return not bool(pending.any())

    alpha, beta, basis, n = _lanczos(matvec, q0, m, generator, stop, check_every)
    theta, s, res = _ritz(alpha, beta)
    idx = _select(which, k, n)
    vecs = None
    if return_vectors:
        vecs = torch.einsum("bjd,bji->bdi", basis, s[:, :, idx].to(basis.dtype))
    return LanczosResult(theta[:, idx].to(dtype), res[:, idx].to(dtype), n, which, vecs,
                         torch.full((batch,), n, dtype=torch.long), batch * n)


def _lanczos_workers(restrict: Callable[[torch.Tensor], Matvec], q0: torch.Tensor, m: int,
                     generator: torch.Generator | None, which: str, k: int, tol: float, bound: str, check_every: int,
                     first_check: int, return_vectors: bool, workers: int, dtype: torch.dtype) -> LanczosResult:
    """:func:`_lanczos_active` on ``workers`` contiguous sub-batches in parallel threads, one intra-op thread each."""
    chunks = torch.arange(q0.shape[0]).tensor_split(workers)  # none empty: the caller caps workers at B
    # One restart generator per sub-batch, seeded from the caller's: results do not depend on thread timing.
    seeds = torch.randint(0, 2**62, (len(chunks),), generator=generator).tolist() if generator is not None \
        else [None] * len(chunks)
    grad = torch.is_grad_enabled()

    def run(i: int) -> tuple:
        idx = chunks[i]
        gen = None
        if seeds[i] is not None:
            gen = torch.Generator(device=q0.device).manual_seed(int(seeds[i]))
        with torch.set_grad_enabled(grad):  # grad mode is thread-local
            return _lanczos_active(restrict(idx), lambda loc: restrict(idx[loc.to(idx.device)]), q0[idx.to(q0.device)],
                                   m, gen, which, k, tol, bound, check_every, first_check, return_vectors)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(len(chunks), thread_name_prefix="memgeo-lanczos") as pool:
            outs = list(pool.map(run, range(len(chunks))))
    finally:
        torch.set_num_threads(threads)
    theta = torch.cat([o[0] for o in outs])
    res = torch.cat([o[1] for o in outs])
    vecs = torch.cat([o[2] for o in outs]) if return_vectors else None
    steps = torch.cat([o[3] for o in outs])
    return LanczosResult(theta.to(dtype), res.to(dtype), sum(o[4] for o in outs), which, vecs, steps,
                         sum(o[5] for o in outs))


def _arnoldi(matvec: Matvec, q0: torch.Tensor, m: int, generator: torch.Generator | None,
             stop: Callable[[torch.Tensor], bool] | None = None, check_every: int = 5,
             ) -> tuple[torch.Tensor, int]:
    """Batched Arnoldi with reorthogonalization; returns the Hessenberg (B, j+1, j) and j."""
    b, d = q0.shape
    basis = q0.new_zeros(b, m, d)
    h = q0.new_zeros(b, m + 1, m)
    scale = q0.new_zeros(b)
    q = q0
    j = 0
    for j in range(m):
        basis[:, j] = q
        w = _apply(matvec, q)
        w, coef = _orthogonalize(w, basis[:, : j + 1])
        nrm = w.norm(dim=1)
        h[:, : j + 1, j] = coef
        h[:, j + 1, j] = nrm
        scale = torch.maximum(scale, torch.maximum(coef.abs().amax(1), nrm))
        if stop is not None and (j + 1) % check_every == 0 and stop(h[:, : j + 2, : j + 1]):
            break
        if j + 1 < m:
            q, h[:, j + 1, j] = _next_vector(w, nrm, basis[:, : j + 1], scale, generator)
    n = j + 1
    return h[:, : n + 1, :n], n


def _ritz_general(h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ritz values of largest / smallest real part and their residual bounds from (B, j+1, j)."""
    j = h.shape[2]
    hm = h[:, :j, :].double()
    theta, y = torch.linalg.eig(hm)  # y columns have unit 2-norm
    res = (h[:, j, j - 1].double()[:, None] * y[:, -1, :].abs())
    # Order by real part with a stable secondary key on the imaginary part, so conjugate pairs come
    # out in a fixed order (+imag first among the largest).
    by_imag = torch.argsort(-theta.imag, dim=1, stable=True)
    theta, res = theta.gather(1, by_imag), res.gather(1, by_imag)
    order = torch.argsort(-theta.real, dim=1, stable=True)
    theta, res = theta.gather(1, order), res.gather(1, order)
    kk = min(k, j)
    largest, res_l = theta[:, :kk], res[:, :kk]
    smallest, res_s = theta.flip(1)[:, :kk], res.flip(1)[:, :kk]
    return largest, smallest, res_l, res_s


def arnoldi_eigs(matvec: Matvec, batch: int, dim: int, k: int = 5, n_iter: int = 60, *, tol: float = 1e-5,
                 check_every: int = 5, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, device=None) -> ArnoldiResult:
    """Eigenvalues of largest and smallest real part of non-symmetric per-sample operators.

    Batched Arnoldi with full reorthogonalization; the eigenvalues of the Hessenberg matrix
    (B, m, m) come from ``torch.linalg.eig`` (complex). Use it for the raw score Jacobian J, whose
    asymmetry ``||J - J^T||_F / ||J||_F`` measures how far a trained network is from a true score.

    Parameters
    ----------
    matvec : callable
        (B, D) -> (B, D), v_b -> A_b v_b (e.g. ``ScoreJacobianOperator.matvec``).
    batch, dim : int
        B and D.
    k : int
        Number of Ritz values returned at each end of the real axis.
    n_iter : int
        Maximum Krylov dimension (= maximum matvecs), capped at D.
    tol : float
        Stop early once all 2k returned Ritz values of every sample have residual bound below
        ``tol * max |theta|``; checked every ``check_every`` steps; 0 disables early stopping.
    generator, dtype, device
        Start vectors (Gaussian) and basis dtype/device.

    Returns
    -------
    ArnoldiResult
        Complex Ritz values of shape (B, k): ``largest_real`` (decreasing real part) and
        ``smallest_real`` (increasing real part).

    Raises
    ------
    MemgeoError
        k < 1 or k > min(n_iter, D); bad sizes or matvec output.
    """
    m = _check_sizes(batch, dim, n_iter)
    check_scalar(k, "k", min=1)
    check_scalar(check_every, "check_every", min=1)
    if k > m:
        raise MemgeoError(f"{k} Ritz values requested but the Krylov dimension is only min(n_iter, D) = {m}",
                          "lower k or raise n_iter (at most D)")
    if device is None and generator is not None:
        device = generator.device
    q0 = _start_vector(batch, dim, "gaussian", generator, dtype, device)

    def stop(h: torch.Tensor) -> bool:
        if h.shape[2] < 2 * k or tol <= 0:
            return False
        lg, sm, rl, rs = _ritz_general(h, k)
        radius = torch.maximum(lg.abs().amax(1), sm.abs().amax(1)).clamp_min(torch.finfo(torch.float64).tiny)
        return bool((torch.maximum(rl.amax(1), rs.amax(1)) <= tol * radius).all())

    h, n = _arnoldi(matvec, q0, m, generator, stop, check_every)
    lg, sm, rl, rs = _ritz_general(h, k)
    cdt = torch.complex64 if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.complex128
    return ArnoldiResult(lg.to(cdt), sm.to(cdt), rl.to(dtype), rs.to(dtype), n)


def slq_density(matvec: Matvec, batch: int, dim: int, n_probes: int = 8, n_iter: int = 40, *,
                grid: torch.Tensor | int | None = None, bandwidth: float | None = None, probe: str = "rademacher",
                generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                device=None, batched: bool = False) -> SLQDensity:
    """Spectral density of symmetric per-sample operators by stochastic Lanczos quadrature.

    For a unit start vector q, m Lanczos steps give T = S diag(theta) S^T and the Gauss quadrature
    q^T f(A) q ~ sum_j S_{0j}^2 f(theta_j). Averaging over random q with E[q q^T] = I/D turns this
    into (1/D) tr f(A) = integral of f against the eigenvalue density, so the Ritz values (nodes)
    with weights S_{0j}^2 / n_probes form a discrete density that is then smoothed with a Gaussian
    kernel.

    Parameters
    ----------
    matvec : callable
        (B, D) -> (B, D) for symmetric A_b.
    batch, dim : int
        B and D.
    n_probes : int
        Independent start vectors per sample (>= 1).
    n_iter : int
        Lanczos steps per probe, capped at D; total matvecs n_probes * min(n_iter, D).
    grid : Tensor (G,) or int, optional
        Evaluation points, or their number (default 512), spread over
        [min node - 4 bandwidth, max node + 4 bandwidth] across the whole batch so that every
        density integrates to ~1 on the shared grid.
    bandwidth : float, optional
        Standard deviation of the Gaussian kernel. Default: (max node - min node) / m across the
        batch, about the node spacing of one Lanczos run, which smooths the discrete quadrature
        into a curve without hiding structure at the scale Lanczos can resolve.
    probe : {"rademacher", "gaussian"}
        Start vector distribution before normalization to unit length.
    generator, dtype, device
        Randomness, basis dtype and device.
    batched : bool
        Run the probes together: one Lanczos over P * B rows whose ``matvec`` receives (P, B, D)
        stacks (e.g. ``ScoreJacobianOperator.sym_matvec``, one shared graph), m calls instead of
        P * m. Same start vectors and nodes as the per-probe loop (up to restarts after breakdown,
        which then draw in another order).

    Returns
    -------
    SLQDensity
        ``(grid (G,), density (B, G), nodes (B, n_probes*m), weights (B, n_probes*m))``.
    """
    check_choice(probe, PROBES, "probe distribution")
    m = _check_sizes(batch, dim, n_iter)
    check_scalar(n_probes, "n_probes", min=1)
    if bandwidth is not None and not float(bandwidth) > 0:
        raise MemgeoError(f"bandwidth must be positive, got {bandwidth!r}", "pass bandwidth > 0 or leave it None")
    if device is None and generator is not None:
        device = generator.device
    nodes, weights = [], []
    if batched:  # all probes advance as one Lanczos over P * B rows; the matvec sees (P, B, D)
        q0 = torch.cat([_start_vector(batch, dim, probe, generator, dtype, device) for _ in range(n_probes)])

        def stacked(v: torch.Tensor) -> torch.Tensor:
            return _apply(matvec, v.reshape(n_probes, batch, dim)).reshape(n_probes * batch, dim)

        alpha, beta, _, _ = _lanczos(stacked, q0, m, generator)
        theta, s, _ = _ritz(alpha, beta)
        nodes = list(theta.reshape(n_probes, batch, -1))
        weights = list((s[:, 0, :] ** 2 / n_probes).reshape(n_probes, batch, -1))
    else:
        for _ in range(n_probes):
            q0 = _start_vector(batch, dim, probe, generator, dtype, device)
            alpha, beta, _, _ = _lanczos(matvec, q0, m, generator)
            theta, s, _ = _ritz(alpha, beta)
            nodes.append(theta)
            weights.append(s[:, 0, :] ** 2 / n_probes)
    node = torch.cat(nodes, 1)
    weight = torch.cat(weights, 1)
    lo, hi = float(node.min()), float(node.max())
    if bandwidth is None:
        bandwidth = (hi - lo) / m if hi > lo else max(abs(hi), 1.0) * 1e-3
    bw = float(bandwidth)
    if grid is None or isinstance(grid, int):
        g_n = 512 if grid is None else grid
        check_scalar(g_n, "grid size", min=2)
        grid_t = torch.linspace(lo - 4 * bw, hi + 4 * bw, g_n, dtype=torch.float64, device=node.device)
    else:
        grid_t = torch.as_tensor(grid, dtype=torch.float64, device=node.device)
        if grid_t.ndim != 1 or grid_t.numel() < 2:
            raise MemgeoError(f"grid has shape {tuple(grid_t.shape)}", "pass a 1-D grid with at least 2 points")
    z = (grid_t[None, None, :] - node[:, :, None]) / bw  # (B, n_nodes, G)
    kern = torch.exp(-0.5 * z * z) / (bw * (2 * torch.pi) ** 0.5)
    density = torch.einsum("bn,bng->bg", weight, kern)
    return SLQDensity(grid_t.to(dtype), density.to(dtype), node.to(dtype), weight.to(dtype))
