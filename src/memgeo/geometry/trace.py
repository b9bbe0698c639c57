"""Matrix-free trace estimation with confidence intervals, batched over samples.

Every estimator sees the operator only through ``matvec``, which maps a batch of vectors
(B, D), one per sample, to (A_b v_b)_b, shape (B, D). One call is one "matvec" in the cost
accounting, whatever B is: the B samples always advance together, so there is no Python loop over
samples, only over probes.

Methods
-------
* ``"exact"``: tr(A_b) = sum_i e_i^T A_b e_i with D unit vectors (D matvecs). No variance.
* ``"hutchinson"``: tr(A) = E[v^T A v] for probes with E[v v^T] = I (Rademacher or Gaussian).
  The per-probe values are i.i.d., so a Student-t interval over them is the natural CI. One probe
  is allowed: its value is an unbiased estimate, but with a single value there is no sample
  variance, so no interval can be formed; the result then says so (``note``, ``has_interval``) and
  its interval is the whole line (-inf, inf), which JSON output writes as null.
  Rademacher probes have variance 2 sum_{i != j} A_ij^2 against 2 ||A||_F^2 for Gaussian ones,
  so they are much better when the diagonal dominates (the FLIPD case, see DESIGN section 3).
* ``"hutch++"`` (Meyer, Musco, Musco & Woodruff 2021): spend a third of the budget on a sketch
  A S, take an orthonormal basis Q of it, compute tr(Q^T A Q) exactly (another third) and run
  Hutchinson on the deflated operator (I - QQ^T) A (I - QQ^T) with the last third. The top of the
  spectrum, which dominates Hutchinson's variance for decaying spectra, is removed exactly; the CI
  comes from the residual probe values only, because the exact part is deterministic given Q.
* ``"auto"``: ``"exact"`` when D <= n_probes (the exact trace then costs no more matvecs than the
  probes and has no variance), else ``"hutchinson"``. Callers that know a cheaper dense route
  (FLIPD's ``vmap(jacrev)``) apply their own rule first (docs/design.md, "Dense or matrix-free").

Batched probes: with ``batched=True`` the matvec also accepts a stack (P, B, D) of P vectors per
sample and all probes of a stage go in one call (``ScoreJacobianOperator`` products do this with
one shared graph of the B points); the estimates are identical to the one-probe-per-call loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy import stats

from memgeo.errors import MemgeoError, check_choice, check_scalar

TRACE_METHODS = ("exact", "hutchinson", "hutch++")
TRACE_CHOICES = ("auto",) + TRACE_METHODS
EXACT_CHUNK = 64  # unit vectors per batched call of the exact trace (memory: EXACT_CHUNK * B * D)
PROBES = ("rademacher", "gaussian")

Matvec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TraceEstimate:
    """Per-sample trace estimates.

    Attributes
    ----------
    mean : Tensor, shape (B,)
        Estimate of tr(A_b) for each sample b.
    ci_low, ci_high : Tensor, shape (B,)
        Ends of the two-sided ``level`` confidence interval (both equal ``mean`` for ``"exact"``).
    n_matvecs : int
        Batched operator applications used; each acts on all B samples at once.
    method : str
        One of :data:`TRACE_METHODS` (``"auto"`` is resolved).
    level : float
        Confidence level of the interval, e.g. 0.95.
    note : str
        Empty, or why there is no interval (one Hutchinson probe: no sample variance).
    """

    mean: torch.Tensor
    ci_low: torch.Tensor
    ci_high: torch.Tensor
    n_matvecs: int
    method: str
    level: float
    note: str = ""

    @property
    def has_interval(self) -> bool:
        """False when the interval is (-inf, inf) because a single probe gives no sample variance."""
        return bool(torch.isfinite(self.ci_low).all() and torch.isfinite(self.ci_high).all())

    @property
    def half_width(self) -> torch.Tensor:
        """(B,) half the width of the confidence interval."""
        return 0.5 * (self.ci_high - self.ci_low)


def draw_probes(batch: int, dim: int, probe: str = "rademacher", *, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Random probe vectors with E[v v^T] = I, shape (B, D).

    Parameters
    ----------
    batch, dim : int
        Number of samples B and dimension D.
    probe : {"rademacher", "gaussian"}
        Rademacher entries are +-1 with equal probability; Gaussian entries are N(0, 1).
    generator : torch.Generator, optional
        Source of randomness. Probes are drawn on the generator's device and then moved to
        ``device``, so a CPU generator gives the same probes on every device.
    dtype : torch.dtype
    device : torch.device or str, optional

    Returns
    -------
    Tensor, shape (B, D)
    """
    check_choice(probe, PROBES, "probe distribution")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if probe == "rademacher":
        v = torch.randint(0, 2, (batch, dim), generator=generator, device=gen_device).to(dtype) * 2 - 1
    else:
        v = torch.randn((batch, dim), generator=generator, device=gen_device, dtype=dtype)
    return v.to(device=device if device is not None else gen_device)


def _apply(matvec: Matvec, v: torch.Tensor) -> torch.Tensor:
    """Call ``matvec`` and check that it kept the (B, D) (or (P, B, D)) shape, casting back to v's dtype."""
    out = matvec(v)
    if not isinstance(out, torch.Tensor) or out.shape != v.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MemgeoError(f"matvec returned {got} for a vector batch of shape {tuple(v.shape)}",
                          "make matvec map (B, D) to (B, D), one vector per sample (with batched=True, "
                          "(P, B, D) to (P, B, D))")
    return out.to(dtype=v.dtype, device=v.device)


def _apply_many(matvec: Matvec, vs: torch.Tensor, batched: bool) -> torch.Tensor:
    """A v for a stack of vector batches (P, B, D): one call if ``batched``, else one call per slice."""
    if batched:
        return _apply(matvec, vs)
    return torch.stack([_apply(matvec, v) for v in vs])


def _draw_many(n: int, batch: int, dim: int, probe: str, generator, dtype, device) -> torch.Tensor:
    """n probe batches stacked (n, B, D), drawn in the same order as n calls of :func:`draw_probes`."""
    return torch.stack([draw_probes(batch, dim, probe, generator=generator, dtype=dtype, device=device)
                        for _ in range(n)])


def _t_interval(values: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and Student-t interval over the first axis of ``values`` (n, B) -> three (B,) tensors."""
    n = values.shape[0]
    mean = values.mean(0)
    if n < 2:  # one value: no sample variance, so the only honest interval is the whole line
        inf = torch.full_like(mean, float("inf"))
        return mean, -inf, inf
    se = values.std(0, unbiased=True) / n ** 0.5
    q = float(stats.t.ppf(0.5 + level / 2, df=n - 1))
    return mean, mean - q * se, mean + q * se


NO_VARIANCE_NOTE = ("1 probe: no sample variance, so no confidence interval (ci is (-inf, inf)); "
                    "use 2 or more probes for an interval")


def estimate_trace(matvec: Matvec, batch: int, dim: int, *, method: str = "hutchinson", n_probes: int = 16,
                   probe: str = "rademacher", level: float = 0.95, generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32, device=None, batched: bool = False) -> TraceEstimate:
    """Estimate tr(A_b) for a batch of implicit D x D operators.

    Parameters
    ----------
    matvec : callable
        Maps a vector batch V of shape (B, D) to (A_b V[b])_b of shape (B, D). ``A_b`` need not be
        symmetric. With ``batched=True`` it must also map a stack (P, B, D) slice by slice.
    batch : int
        Number of samples B.
    dim : int
        Dimension D of every operator.
    method : {"auto", "exact", "hutchinson", "hutch++"}
        See the module docstring.
    n_probes : int
        Matvec budget of the stochastic methods. For ``"hutchinson"`` it is the number of probes
        (>= 1; with 1 there is no interval, see ``TraceEstimate.note``). For ``"hutch++"`` it is the total number of matvecs (>= 4): ``k = n_probes // 3``
        sketch matvecs, ``k`` for the exact part and ``n_probes - 2k`` residual probes.
        Ignored by ``"exact"``.
    probe : {"rademacher", "gaussian"}
        Distribution of the probe (and Hutch++ sketch) vectors.
    level : float
        Confidence level of the interval, in (0, 1).
    generator : torch.Generator, optional
        Seeded generator for reproducible probes.
    dtype : torch.dtype
        Dtype of the probe vectors and of the results.
    device : torch.device or str, optional
        Device of the probe vectors (default: the generator's device, else CPU).
    batched : bool
        Send all probes of a stage to ``matvec`` in one call as (P, B, D) (exact: chunks of
        :data:`EXACT_CHUNK` unit vectors). Same probes, same estimates; fewer, larger calls.

    Returns
    -------
    TraceEstimate
        ``mean``, ``ci_low``, ``ci_high`` of shape (B,), and the matvec count.

    Raises
    ------
    MemgeoError
        Unknown ``method`` or ``probe``, a budget too small for the method, a ``level`` outside
        (0, 1), non-positive sizes, or a ``matvec`` that does not return (B, D).
    """
    check_choice(method, TRACE_CHOICES, "trace method")
    check_choice(probe, PROBES, "probe distribution")
    check_scalar(batch, "batch", min=1)
    check_scalar(dim, "dim", min=1)
    if method == "auto":
        method = "exact" if dim <= n_probes else "hutchinson"
    check_scalar(level, "level", float, min=0, max=1, include_min=False, include_max=False)
    if device is None and generator is not None:
        device = generator.device

    if method == "exact":
        total = torch.zeros(batch, dtype=dtype, device=device)
        step = EXACT_CHUNK if batched else 1
        for s in range(0, dim, step):
            idx = torch.arange(s, min(s + step, dim), device=device)
            e = torch.zeros(idx.numel(), batch, dim, dtype=dtype, device=device)
            e[torch.arange(idx.numel(), device=device), :, idx] = 1
            out = _apply_many(matvec, e, batched)
            total = total + out[torch.arange(idx.numel(), device=device), :, idx].sum(0)
        return TraceEstimate(total, total.clone(), total.clone(), dim, method, float(level))

    if method == "hutchinson":
        check_scalar(n_probes, "n_probes", min=1)
        v = _draw_many(n_probes, batch, dim, probe, generator, dtype, device)
        values = (v * _apply_many(matvec, v, batched)).sum(2)  # (n_probes, B)
        mean, lo, hi = _t_interval(values, level)
        return TraceEstimate(mean, lo, hi, n_probes, method, float(level), NO_VARIANCE_NOTE if n_probes < 2 else "")

    # Hutch++. At least 2 residual probes are needed for a variance, hence the budget of 4.
    check_scalar(n_probes, "n_probes", min=4)
    k = n_probes // 3 if n_probes >= 6 else 1
    n_res = n_probes - 2 * k
    # Sketch: A S for k probe columns, stacked as (B, D, k).
    sketch = _apply_many(matvec, _draw_many(k, batch, dim, probe, generator, dtype, device), batched)
    sketch = sketch.permute(1, 2, 0)
    # Householder QR keeps Q orthonormal even when A S is rank deficient (e.g. low-rank A).
    q = torch.linalg.qr(sketch, mode="reduced").Q  # (B, D, k)
    qs = q.permute(2, 0, 1).contiguous()  # (k, B, D)
    exact_part = (qs * _apply_many(matvec, qs, batched)).sum((0, 2))
    g = _draw_many(n_res, batch, dim, probe, generator, dtype, device)
    # h = (I - Q Q^T) g; then h^T A h = g^T (I - QQ^T) A (I - QQ^T) g, one matvec per probe.
    h = g - torch.einsum("bdk,pbk->pbd", q, torch.einsum("bdk,pbd->pbk", q, g))
    values = (h * _apply_many(matvec, h, batched)).sum(2)
    mean, lo, hi = _t_interval(values, level)
    return TraceEstimate(exact_part + mean, exact_part + lo, exact_part + hi, 2 * k + n_res, method, float(level))
