"""Geometry of generators x = G(z): decoder Jacobians, their singular values, the model's local
intrinsic dimension and the log-density of the pushforward on the generated manifold.

Everything works on a plain callable ``decode(z) -> (n, *data_shape)`` that maps a batch of latents
z (n, d) to a batch of data points, one independent output per latent (a VAE decoder mean, a GAN
generator; it must be deterministic, i.e. in eval mode, and must not mix samples as train-mode batch
norm does). The data axis is flattened, so J_G(z) has shape (D, d) with D = prod(data_shape).

* dense: ``vmap`` of ``jacfwd`` / ``jacrev`` over the batch, giving (n, D, d);
* matrix-free: :class:`DecoderJacobianOperator`, J v by forward mode (``torch.func.jvp``) or by a
  double backward, and J^T w by reverse mode (``torch.func.vjp``);
* spectrum: the singular values of each J_G(z), their numerical rank (LID_model, the dimension of
  the generated manifold near G(z)) and log p(z) - 1/2 log det(J^T J), the density of x = G(z) with
  respect to the d-dimensional volume on the image manifold.

Where many latents map to almost the same image the local volume sqrt(det J^T J) collapses, the
pushforward density peaks and the numerical rank drops: the generator analogue of sharpness.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch.func import jacfwd, jacrev, jvp, vjp, vmap

from memgeo.errors import MemgeoError, check_choice, check_finite, check_scalar

DecodeFn = Callable[[torch.Tensor], torch.Tensor]
JacMode = Literal["auto", "fwd", "rev"]

#: Default relative threshold of :func:`generator_lid`: singular values above
#: ``LID_RTOL * s_max`` count towards the numerical rank. See :func:`generator_lid` for why.
LID_RTOL = 1e-3


def _check_latents(z: torch.Tensor, name: str = "latents") -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise MemgeoError(f"{name} is a {type(z).__name__}, not a tensor", "pass a torch.Tensor of shape (n, d)")
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise MemgeoError(f"{name} have shape {tuple(z.shape)}",
                          "pass a non-empty batch (n, d) with one latent vector per row")
    if not z.is_floating_point():
        raise MemgeoError(f"{name} have dtype {z.dtype}", "pass floating-point latents")
    check_finite(z, name)
    return z.detach()


def _flat_decode(decode: DecodeFn) -> DecodeFn:
    """``decode`` with its data axes flattened: (n, d) -> (n, D)."""

    def f(z: torch.Tensor) -> torch.Tensor:
        x = decode(z)
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[0] != z.shape[0]:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise MemgeoError(f"decode returned {got} for {z.shape[0]} latents",
                              "make decode map (n, d) latents to (n, *data_shape) points")
        return x.reshape(z.shape[0], -1)

    return f


def _output_dim(decode: DecodeFn, z: torch.Tensor) -> int:
    with torch.no_grad():
        return int(_flat_decode(decode)(z[:1]).shape[1])


def decoder_jacobian(decode: DecodeFn, z: torch.Tensor, chunk_size: int | None = None,
                     mode: JacMode = "auto") -> torch.Tensor:
    """Dense per-sample Jacobians of a generator, J[b] = dG/dz at z[b].

    Parameters
    ----------
    decode : callable
        (n, d) -> (n, *data_shape), one independent output per latent.
    z : Tensor, shape (n, d)
        Latents.
    chunk_size : int, optional
        Latents per ``vmap`` call (memory grows as chunk_size * D * d); all at once by default.
    mode : {"auto", "fwd", "rev"}
        ``"fwd"`` builds each Jacobian from d forward-mode products (``jacfwd``), ``"rev"`` from D
        reverse-mode products (``jacrev``). ``"auto"`` picks the one with fewer products: ``jacfwd``
        when d < D (the usual generator: small latent, large image), ``jacrev`` otherwise. Use
        ``"rev"`` for networks with layers that have no forward-mode rule.

    Returns
    -------
    Tensor, shape (n, D, d)
        J[b, i, j] = d x_i / d z_j at z[b], data axes flattened (D = prod(data_shape)).
    """
    z = _check_latents(z)
    check_choice(mode, ("auto", "fwd", "rev"), "Jacobian mode")
    n, d = z.shape
    chunk = check_scalar(chunk_size, "chunk_size", min=1, allow_none=True) or n
    if mode == "auto":
        mode = "fwd" if d < _output_dim(decode, z) else "rev"
    flat = _flat_decode(decode)

    def single(zi: torch.Tensor) -> torch.Tensor:
        return flat(zi[None])[0]

    per_sample = vmap((jacfwd if mode == "fwd" else jacrev)(single))
    out = []
    # torch.func differentiates through an outer no_grad; it only stops autograd from also
    # recording a graph over the decoder's parameters.
    with torch.no_grad():
        for s in range(0, n, chunk):
            out.append(per_sample(z[s:s + chunk]).detach())
    return torch.cat(out)


class DecoderJacobianOperator:
    """Matrix-free access to the per-sample generator Jacobians J_G(z[b]) of a batch.

    Each product acts on a batch of vectors, one per latent, and costs one decoder forward plus
    one forward- or reverse-mode pass (two reverse passes for J v with ``mode="vjp"``).

    Parameters
    ----------
    decode : callable
        (n, d) -> (n, *data_shape), one independent output per latent.
    z : Tensor, shape (n, d)
        Latents at which the Jacobians are taken.
    mode : {"jvp", "vjp"}
        How J v is computed: forward mode (``"jvp"``) or reverse only (``"vjp"``: J v is the VJP of
        the map w -> J^T w, which is linear in w with matrix J^T), for decoders whose layers have no
        forward-mode rule. J^T w always uses reverse mode.

    Attributes
    ----------
    n_matvecs : int
        Number of Jacobian products performed so far (cost accounting).
    shape : tuple of int
        (n, D, d).
    """

    def __init__(self, decode: DecodeFn, z: torch.Tensor, mode: Literal["jvp", "vjp"] = "jvp") -> None:
        check_choice(mode, ("jvp", "vjp"), "Jacobian product mode")
        self.z = _check_latents(z)
        self.decode = decode
        self.f = _flat_decode(decode)
        self.mode = mode
        with torch.no_grad():
            self.x = self.f(self.z).detach()
        self.n_matvecs = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.z.shape[0], self.x.shape[1], self.z.shape[1]

    def _check(self, v: torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor:
        if not isinstance(v, torch.Tensor) or v.shape != like.shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise MemgeoError(f"{what} batch has shape {got}, expected {tuple(like.shape)}",
                              f"pass one {what} per latent")
        return v.to(dtype=like.dtype, device=like.device)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """J v for a batch of latent-space vectors: (n, d) -> (n, D)."""
        v = self._check(v, self.z, "latent-space vector")
        self.n_matvecs += 1
        with torch.no_grad():
            if self.mode == "jvp":
                return jvp(self.f, (self.z,), (v,))[1].detach()
            z = self.z

            def jt(w: torch.Tensor) -> torch.Tensor:
                return vjp(self.f, z)[1](w)[0]

            return vjp(jt, torch.zeros_like(self.x))[1](v)[0].detach()

    def rmatvec(self, w: torch.Tensor) -> torch.Tensor:
        """J^T w for a batch of data-space vectors: (n, D) -> (n, d)."""
        w = self._check(w.reshape(w.shape[0], -1) if isinstance(w, torch.Tensor) and w.ndim > 1 else w,
                        self.x, "data-space vector")
        self.n_matvecs += 1
        with torch.no_grad():
            return vjp(self.f, self.z)[1](w)[0].detach()

    def gram_matvec(self, v: torch.Tensor) -> torch.Tensor:
        """J^T J v, the pulled-back metric applied to latent vectors: (n, d) -> (n, d); two products."""
        return self.rmatvec(self.matvec(v))


def generator_singular_values(decode: DecodeFn, z: torch.Tensor, chunk_size: int | None = None,
                              mode: JacMode = "auto") -> torch.Tensor:
    """Singular values of each generator Jacobian J_G(z[b]), descending.

    Parameters
    ----------
    decode, z, chunk_size, mode
        As in :func:`decoder_jacobian`.

    Returns
    -------
    Tensor, shape (n, min(D, d))
        Singular values of each (D, d) Jacobian in descending order, dtype of the Jacobian
        (the SVD itself is done in float64).
    """
    jac = decoder_jacobian(decode, z, chunk_size=chunk_size, mode=mode)
    return torch.linalg.svdvals(jac.double()).to(jac.dtype)


def _check_singular_values(s: torch.Tensor) -> torch.Tensor:
    if not isinstance(s, torch.Tensor) or s.ndim != 2 or s.shape[1] == 0:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise MemgeoError(f"singular values have shape {got}",
                          "pass a (n, k) tensor as returned by generator_singular_values")
    check_finite(s, "singular values")
    if bool((s < 0).any()):
        raise MemgeoError("singular values contain negative entries",
                          "pass singular values as returned by generator_singular_values")
    return s


def generator_lid(singular_values: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """LID_model: the numerical rank of each generator Jacobian.

    rank = #{i : s_i > rtol * s_max}, the dimension of the generated manifold near G(z).

    Parameters
    ----------
    singular_values : Tensor, shape (n, k)
        Per-sample singular values (any order), e.g. from :func:`generator_singular_values`.
    rtol : float, optional
        Relative threshold in [0, 1); default :data:`LID_RTOL` = 1e-3.

    Returns
    -------
    Tensor, shape (n,), int64
        Numerical rank per sample (0 where all singular values are 0).

    Notes
    -----
    Why a fixed 1e-3 and not NumPy's ``matrix_rank`` rule (rtol = eps * max(D, d)): on generators
    whose Jacobian has an exact, known rank r (a smooth MLP behind a rank-r linear bottleneck, float32,
    d up to 16, D up to 64; see tests/test_generator_geometry.py) both rules return r: the round-off
    singular values sit at <= 2.4e-7 * s_max and the live ones at >= 6e-2 * s_max, so 1e-3 has
    orders of magnitude of margin on both sides. The rules differ on directions that the generator
    shrinks to between about 1e-6 and 1e-3 of its strongest direction: the eps rule counts them, 1e-3
    does not. Memorization is exactly that near-collapse (many latents mapped to almost one image),
    and a trained generator produces it without making singular values exactly zero, so the
    round-off-only rule would report LID_model = d almost everywhere. 1e-3 (a direction changing the
    image by less than 0.1% of the strongest one is flat) is also independent of dtype and size. Pass
    ``rtol=torch.finfo(dtype).eps * max(D, d)`` for the strict round-off rank.
    """
    s = _check_singular_values(singular_values)
    rtol = LID_RTOL if rtol is None else check_scalar(rtol, "rtol", float, min=0.0, max=1.0, include_max=False)
    smax = s.max(dim=1, keepdim=True).values
    return (s > rtol * smax).sum(dim=1).to(torch.int64)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I_d) per row: (n, d) -> (n,)."""
    return -0.5 * (z * z).sum(dim=1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


def pushforward_log_density(decode: DecodeFn, z: torch.Tensor,
                            prior_log_prob: Callable[[torch.Tensor], torch.Tensor] = standard_normal_log_prob,
                            *, singular_values: torch.Tensor | None = None, collapse_rtol: float | None = None,
                            chunk_size: int | None = None, mode: JacMode = "auto") -> torch.Tensor:
    """Log-density of x = G(z) on the generated manifold, w.r.t. its d-dimensional volume.

    log p_G(x) = log p(z) - 1/2 log det(J^T J) = log p(z) - sum_i log s_i (area formula, for an
    injective G near z), where s_1 >= ... >= s_d are the singular values of J = J_G(z).

    Parameters
    ----------
    decode : callable
        (n, d) -> (n, *data_shape).
    z : Tensor, shape (n, d)
        Latents.
    prior_log_prob : callable
        (n, d) -> (n,), log p(z) of the latent prior; default the standard normal.
    singular_values : Tensor, shape (n, d), optional
        Precomputed singular values of the Jacobians (skips the Jacobian).
    collapse_rtol : float, optional
        The volume counts as collapsed where s_min <= collapse_rtol * s_max. Default
        ``torch.finfo(dtype).eps * max(D, d)`` with the Jacobian's (or the given singular values')
        dtype, NumPy's ``matrix_rank`` rule: below it s_min is round-off and log s_min is noise.
    chunk_size, mode
        As in :func:`decoder_jacobian`.

    Returns
    -------
    Tensor, shape (n,)
        The log-density, in z's dtype (computed in float64). ``+inf`` where J has no full column
        rank: when D < d, or where s_min is zero or below the collapse threshold, the local volume
        is zero and the density on the d-dimensional volume is infinite (the limit of the formula).
    """
    z = _check_latents(z)
    n, d = z.shape
    if singular_values is None:
        jac = decoder_jacobian(decode, z, chunk_size=chunk_size, mode=mode)
        big_d = jac.shape[1]
        s = torch.linalg.svdvals(jac.double())
        eps = torch.finfo(jac.dtype).eps
    else:
        s = _check_singular_values(singular_values)
        if s.shape[0] != n:
            raise MemgeoError(f"{s.shape[0]} rows of singular values for {n} latents",
                              "pass one row of singular values per latent")
        big_d = _output_dim(decode, z)
        eps = torch.finfo(s.dtype).eps
        s = s.double()
    if s.shape[1] != min(big_d, d):
        raise MemgeoError(f"{s.shape[1]} singular values per latent, expected min(D, d) = {min(big_d, d)}",
                          "pass the singular values of the (D, d) decoder Jacobians")
    tol = eps * max(big_d, d) if collapse_rtol is None else check_scalar(
        collapse_rtol, "collapse_rtol", float, min=0.0, max=1.0, include_max=False)
    with torch.no_grad():
        log_pz = prior_log_prob(z)
    if not isinstance(log_pz, torch.Tensor) or log_pz.shape != (n,):
        got = tuple(log_pz.shape) if isinstance(log_pz, torch.Tensor) else type(log_pz).__name__
        raise MemgeoError(f"prior_log_prob returned {got} for {n} latents",
                          "make prior_log_prob map (n, d) latents to (n,) log-densities")
    out = log_pz.detach().double() - torch.log(s).sum(dim=1)
    if big_d < d:
        collapsed = torch.ones(n, dtype=torch.bool, device=s.device)
    else:
        smax, smin = s.max(dim=1).values, s.min(dim=1).values
        collapsed = (smin <= tol * smax) | (smax == 0)
    out = torch.where(collapsed, torch.full_like(out, math.inf), out)
    return out.to(z.dtype)
