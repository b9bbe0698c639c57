"""Sharpness of the learned log-density: the spectrum of the symmetrized score Jacobian.

Jeon, Kim & No (ICML 2025): at memorized samples the Hessian of log p_t has only large negative
eigenvalues; generalizing samples keep near-zero or positive ones. For a point mass the Hessian is
-I / sigma_t^2, so eigenvalues are reported in units of sigma_t^2: lambda sigma^2 in [-1, ...],
-1 meaning "point mass in this direction", 0 meaning "flat" (a data manifold direction).

Summary statistics per sample (all computed from the same spectrum):

* ``n_positive``: eigenvalues with lambda sigma^2 > 0;
* ``n_flat``: eigenvalues with lambda sigma^2 > ``flat_threshold`` (default -1/2), i.e. directions
  in which the density is at most half as curved as a point mass;
* ``sharpness``: -mean(lambda sigma^2) = -sigma^2 tr(H) / D, 1 for a point mass, lower the more
  flat directions there are. Higher means "more memorized"; the sign is fixed, never flipped.

Dense or matrix-free (``method``). The full spectrum needs the dense Jacobian (``vmap(jacrev)``, D
batched products, then ``eigvalsh``). When only the k most negative (or largest) eigenvalues are asked
for (``k=...``), ``method="auto"`` switches to batched Lanczos on the cached score-Jacobian operator
for D >= :data:`LANCZOS_MIN_DIM`, the measured crossover (docs/design.md, "Dense or matrix-free").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memgeo.errors import MemgeoError, check_choice, check_scalar
from memgeo.geometry.jacobian import ScoreJacobianOperator, check_points, jacobian_asymmetry, score_jacobian
from memgeo.geometry.linalg import lanczos_extreme
from memgeo.models.base import DiffusionModel, as_time, expand_like

FLAT_THRESHOLD = -0.5
SPECTRUM_METHODS = ("auto", "dense", "lanczos")
LANCZOS_MIN_DIM = 512
"""``method="auto"`` with ``k`` eigenvalues uses Lanczos from this D on (dense below); all eigenvalues: dense.

Measured with benchmarks/kernels.py section x (docs/design.md, "Dense or matrix-free"): for the 5 most
negative eigenvalues at 1e-4 of MLP nets (B = 16), batched Lanczos costs as much as the full dense
spectrum near D = 450 and about half as much at D = 784 (dense: D batched products plus an O(D^3)
eigvalsh; Lanczos: 40-80 symmetric products whatever D). Nets whose dense ``vmap(jacrev)`` is costlier per
product (the UNet of docs/benchmarks.md section 1: ~560 forwards per sample at D = 784) cross over
lower, so the threshold is on the safe side for them."""


@dataclass
class SharpnessResult:
    """Per-sample spectra and their summaries.

    Attributes
    ----------
    t, sigma : Tensor, shape (B,)
        Diffusion time and noise scale of each evaluation.
    eigenvalues_sigma2 : Tensor, shape (B, D)
        Eigenvalues of (J + J^T)/2 times sigma^2, sorted ascending.
    asymmetry : Tensor, shape (B,)
        ||J - J^T||_F / ||J||_F (NaN when the spectrum came from Lanczos: it needs the dense J).
    flat_threshold : float
    method : str
        ``"dense"`` or ``"lanczos"`` (what ``"auto"`` chose).
    complete : bool
        True when ``eigenvalues_sigma2`` is the whole spectrum (B, D). With only k extreme eigenvalues
        (B, k) the counts and ``sharpness``, which need every eigenvalue, raise ``MemgeoError``.
    n_matvecs : int
        Batched symmetric products used by Lanczos (0 for dense).
    """

    t: torch.Tensor
    sigma: torch.Tensor
    eigenvalues_sigma2: torch.Tensor
    asymmetry: torch.Tensor
    flat_threshold: float = FLAT_THRESHOLD
    method: str = "dense"
    complete: bool = True
    n_matvecs: int = 0

    def _need_full(self, what: str) -> None:
        if not self.complete:
            raise MemgeoError(f"{what} needs the whole spectrum but only {self.eigenvalues_sigma2.shape[-1]} extreme "
                              "eigenvalues were computed", "call sharpness_spectrum with k=None (all eigenvalues)")

    @property
    def n_positive(self) -> torch.Tensor:
        """(B,) number of eigenvalues with lambda sigma^2 > 0."""
        self._need_full("n_positive")
        return (self.eigenvalues_sigma2 > 0).sum(-1)

    @property
    def n_flat(self) -> torch.Tensor:
        """(B,) number of eigenvalues with lambda sigma^2 > flat_threshold."""
        self._need_full("n_flat")
        return (self.eigenvalues_sigma2 > self.flat_threshold).sum(-1)

    @property
    def sharpness(self) -> torch.Tensor:
        """(B,) -mean(lambda sigma^2): 1 for a point mass; higher = sharper = more memorized."""
        self._need_full("sharpness")
        return -self.eigenvalues_sigma2.mean(-1)

    def to_records(self) -> list[dict]:
        """One JSON-ready dict per sample (eigenvalues as a list, sorted ascending).

        A partial spectrum (``complete=False``) gives only t, sigma, the eigenvalues and the method.
        """
        if not self.complete:
            return [{"t": float(self.t[i]), "sigma": float(self.sigma[i]),
                     "eigenvalues_sigma2": self.eigenvalues_sigma2[i].tolist(), "method": self.method}
                    for i in range(self.eigenvalues_sigma2.shape[0])]
        return [
            {"t": float(self.t[i]), "sigma": float(self.sigma[i]),
             "eigenvalues_sigma2": self.eigenvalues_sigma2[i].tolist(),
             "n_positive": int(self.n_positive[i]), "n_flat": int(self.n_flat[i]),
             "sharpness": float(self.sharpness[i]), "asymmetry": float(self.asymmetry[i])}
            for i in range(self.eigenvalues_sigma2.shape[0])
        ]

    def summary_rows(self) -> list[dict]:
        """Flat per-sample rows for CSV (no eigenvalue lists)."""
        return [{k: v for k, v in r.items() if k != "eigenvalues_sigma2"} for r in self.to_records()]


def resolve_time(model: DiffusionModel, t: float | None = None, sigma: float | None = None) -> float:
    """Exactly one of ``t`` (in (0, 1]) or ``sigma`` (noise scale) -> t."""
    if (t is None) == (sigma is None):
        raise MemgeoError("give exactly one of t and sigma", "pass --t T or --sigma S")
    if sigma is not None:
        return model.schedule.t_from_sigma(sigma)
    if not 0.0 < t <= 1.0:
        raise MemgeoError(f"t={t} is outside (0, 1]", "pick a diffusion time in (0, 1]")
    return float(t)


def spectrum_from_jacobian(jac: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D, D) Jacobians -> (sorted eigenvalues of the symmetric part times sigma^2 (B, D), asymmetry (B,))."""
    sym = 0.5 * (jac + jac.transpose(-1, -2))
    evals = torch.linalg.eigvalsh(sym)  # ascending
    return evals * (sigma**2)[:, None], jacobian_asymmetry(jac)


def resolve_spectrum_method(method: str, dim: int, k: int | None) -> str:
    """The documented auto rule: all eigenvalues -> dense; k extreme ones -> Lanczos from D >= LANCZOS_MIN_DIM."""
    check_choice(method, SPECTRUM_METHODS, "spectrum method")
    if method == "lanczos" and k is None:
        raise MemgeoError("Lanczos gives only extreme eigenvalues, but all were asked for (k=None)",
                          "pass k (e.g. k=5) or use method='dense'")
    if method != "auto":
        return method
    return "lanczos" if k is not None and dim >= LANCZOS_MIN_DIM else "dense"


def sharpness_spectrum(model: DiffusionModel, x: torch.Tensor, t: float | None = None, *,
                       sigma: float | None = None, cond: torch.Tensor | None = None, at: str = "scaled",
                       chunk_size: int = 32, flat_threshold: float = FLAT_THRESHOLD, k: int | None = None,
                       which: str = "smallest", method: str = "auto", tol: float = 1e-4, n_iter: int = 300,
                       seed: int = 0, workers: int = 1) -> SharpnessResult:
    """Hessian spectrum of log p_t at each point (all of it, or the k extreme eigenvalues), in units of sigma_t^2.

    Parameters
    ----------
    model : DiffusionModel
    x : Tensor, shape (B, D) or (B, *data_shape)
        Points, e.g. generated samples.
    t, sigma : float
        The noise level: exactly one of diffusion time t or noise scale sigma.
    cond : Tensor, shape (B,), optional
    at : {"scaled", "raw"}
        ``"scaled"`` evaluates at psi_t x, where a clean point sits after the forward process
        shrinks it (the convention of FLIPD); ``"raw"`` evaluates at x as given (e.g. a noisy
        point already at time t).
    chunk_size : int
        Samples per vectorized Jacobian call.
    k : int, optional
        Only the k most negative (``which="smallest"``) or largest (``"largest"``) eigenvalues; None
        (default) for the whole spectrum, which the counts and ``sharpness`` need.
    which : {"smallest", "largest"}
    method : {"auto", "dense", "lanczos"}
        ``"auto"``: dense for the whole spectrum or D < :data:`LANCZOS_MIN_DIM`, else Lanczos.
    tol, n_iter, seed
        Lanczos only: eigenvalue error bound relative to the spectral radius (``bound="gap"`` of
        :func:`memgeo.geometry.linalg.lanczos_extreme`), maximum Krylov dimension, start-vector seed.
        Samples leave the Lanczos batch as they converge (``restrict=ScoreJacobianOperator.restrict``).
    workers : int
        Lanczos only: sub-batches run in parallel CPU threads (``workers`` of
        :func:`~memgeo.geometry.linalg.lanczos_extreme`); e.g. ``torch.get_num_threads()`` on a
        multi-core CPU. Default 1.

    Returns
    -------
    SharpnessResult
        ``eigenvalues_sigma2`` of shape (B, D), or (B, k) with ``complete=False`` when k is given.
    """
    if at not in ("scaled", "raw"):
        raise MemgeoError(f"unknown evaluation point {at!r}", "use 'scaled' or 'raw'")
    check_choice(which, ("smallest", "largest"), "eigenvalue end")
    tt = resolve_time(model, t, sigma)
    xf = check_points(model, x)
    if k is not None:
        check_scalar(k, "k", int, min=1, max=xf.shape[1])
    chosen = resolve_spectrum_method(method, xf.shape[1], k)
    tvec = as_time(tt, xf.shape[0], xf)
    if at == "scaled":
        xf = expand_like(model.schedule.sqrt_alpha_bar(tvec), xf) * xf
    sig = model.schedule.sigma(tvec)
    if chosen == "lanczos":
        b, d = xf.shape
        gen = torch.Generator(device=xf.device).manual_seed(seed)
        with ScoreJacobianOperator(model, xf, tvec, cond, mode="vjp") as op:
            res = lanczos_extreme(op.sym_matvec, b, d, k=k, n_iter=n_iter, which=which, tol=tol,
                                  generator=gen, dtype=xf.dtype, device=xf.device, bound="gap",
                                  restrict=op.restrict, workers=workers)  # converged samples leave the batch
        evals = res.eigenvalues * (sig**2)[:, None].to(res.eigenvalues.dtype)
        nan = torch.full((b,), float("nan"), dtype=evals.dtype, device=evals.device)
        return SharpnessResult(t=tvec, sigma=sig, eigenvalues_sigma2=evals, asymmetry=nan,
                               flat_threshold=flat_threshold, method="lanczos", complete=False,
                               n_matvecs=res.n_matvecs)
    jac = score_jacobian(model, xf, tvec, cond, chunk_size=chunk_size)
    evals, asym = spectrum_from_jacobian(jac, sig)
    if k is not None:
        evals = evals[:, :k] if which == "smallest" else evals[:, -k:]
    return SharpnessResult(t=tvec, sigma=sig, eigenvalues_sigma2=evals, asymmetry=asym, flat_threshold=flat_threshold,
                           method="dense", complete=k is None)


def spectrum_along_trajectory(model: DiffusionModel, trajectory: torch.Tensor, ts: torch.Tensor,
                              cond: torch.Tensor | None = None, *, every: int = 1,
                              chunk_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectrum of the symmetrized score Jacobian at each point of sampling trajectories.

    Parameters
    ----------
    trajectory : Tensor, shape (T, B, *data_shape)
        x_t along the sampler, as returned with ``return_trajectory=True``.
    ts : Tensor, shape (T,)
        The time of each trajectory entry.
    every : int
        Use every ``every``-th time point (the last one is always kept).

    Returns
    -------
    ts_used : Tensor, shape (T',)
    eigenvalues_sigma2 : Tensor, shape (T', B, D)
        Evaluated at the raw x_t, sorted ascending.
    """
    if trajectory.shape[0] != ts.shape[0]:
        raise MemgeoError(f"trajectory has {trajectory.shape[0]} steps but ts has {ts.shape[0]}", "pass matching ts")
    if every < 1:
        raise MemgeoError(f"every={every}", "use every >= 1 (1 keeps every time point)")
    idx = list(range(0, ts.shape[0], every))
    if idx[-1] != ts.shape[0] - 1:
        idx.append(ts.shape[0] - 1)
    out = []
    for k in idx:
        res = sharpness_spectrum(model, trajectory[k], float(ts[k]), cond=cond, at="raw", chunk_size=chunk_size)
        out.append(res.eigenvalues_sigma2)
    return ts[idx], torch.stack(out)
