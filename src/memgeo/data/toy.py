"""Toy data sets with known ground truth: a smooth part that a model should generalize on, plus one
point repeated many times that it should memorize.

Both generators put the smooth rows first and the repeated point last; ``meta`` records where the
copies are and what the geometry is, so sharpness and LID tests can compare against exact values.
Randomness is drawn in float64 on the CPU from the seed, then cast, so a float32 and a float64 call
with the same seed describe the same points.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from memgeo.data._rng import make_generator
from memgeo.data.dataset import Dataset
from memgeo.errors import MemgeoError, check_scalar

#: Centres of the four broad Gaussians of :func:`make_toy2d`. Their common std is TOY2D_STD.
TOY2D_CENTERS: tuple[tuple[float, float], ...] = ((-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5))
TOY2D_STD = 0.15


def make_toy2d(
    n: int = 2000,
    n_duplicates: int = 200,
    duplicate_point: Sequence[float] = (0.0, 0.0),
    seed: int | torch.Generator = 0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Four broad Gaussian blobs in roughly [-1, 1]^2 plus one point repeated ``n_duplicates`` times.

    The blobs sit at (+-0.5, +-0.5) with std 0.15, so each is a 2-D, smoothly filled region that a
    small diffusion model learns as a density. The default repeated point, the origin, lies 4.7
    standard deviations from every blob centre: its neighbourhood holds essentially no other data,
    so a model can only reproduce it by memorizing it.

    Parameters
    ----------
    n : int
        Number of distinct blob points (>= 1).
    n_duplicates : int
        How many rows hold the repeated point (>= 0; with 0 or 1 nothing is duplicated).
    duplicate_point : sequence of 2 floats
        Where the repeated point sits.
    seed : int or torch.Generator
        Randomness for the blob points.
    dtype : torch.dtype
        Floating dtype of ``x``.

    Returns
    -------
    Dataset
        ``x`` shape (n + n_duplicates, 2). ``y`` int64: blob index 0..3, and 4 for the repeated
        point. Rows ``n .. n + n_duplicates - 1`` are the copies, all with ``source_index == n``.
        ``meta`` holds ``duplicate_point``, ``duplicate_rows`` (start, stop), ``duplicate_source_index``,
        ``centers`` and ``std``.
    """
    check_scalar(n, "n", min=1)
    check_scalar(n_duplicates, "n_duplicates", min=0)
    point = torch.as_tensor(duplicate_point, dtype=torch.float64).flatten()
    if point.numel() != 2 or not torch.isfinite(point).all():
        raise MemgeoError(f"duplicate_point must be 2 finite numbers, got {duplicate_point!r}", "pass e.g. (0.0, 0.0)")
    gen = make_generator(seed)

    centers = torch.tensor(TOY2D_CENTERS, dtype=torch.float64)
    comp = torch.randint(len(TOY2D_CENTERS), (n,), generator=gen)
    blobs = centers[comp] + TOY2D_STD * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    x = torch.cat([blobs, point.expand(n_duplicates, 2)]).to(dtype)
    y = torch.cat([comp, torch.full((n_duplicates,), len(TOY2D_CENTERS))])
    # The copies all point at one source (row n), which is what marks them as duplicates.
    source = torch.cat([torch.arange(n), torch.full((n_duplicates,), n)])
    return Dataset(x=x, y=y, name="toy2d", source_index=source, meta={
        "duplicate_point": tuple(float(v) for v in point),
        "duplicate_rows": (n, n + n_duplicates),
        "duplicate_source_index": n,
        "n_duplicates": n_duplicates,
        "centers": TOY2D_CENTERS,
        "std": TOY2D_STD,
        "seed": seed if isinstance(seed, int) else None,
    })


def make_patch_with_duplicate(
    n_patch: int = 4000,
    dim: int = 64,
    patch_dim: int = 2,
    n_duplicates: int = 200,
    seed: int | torch.Generator = 0,
    scale: float = 1.0,
    distance: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Points filling a flat ``patch_dim``-dimensional square in R^dim, plus one repeated off-patch point.

    The patch is ``origin + basis @ u`` with ``u`` uniform on [-scale/2, scale/2]^patch_dim and a
    random orthonormal ``basis``. Neighbouring patch points are about
    ``spacing = scale * n_patch ** (-1 / patch_dim)`` apart (0.016 for the defaults), so for noise
    levels between the spacing and the patch width the smoothed density looks like a
    ``patch_dim``-dimensional manifold: about ``patch_dim`` Hessian eigenvalues are near zero there,
    while at the repeated point all of them are about ``-1 / sigma^2``.

    Parameters
    ----------
    n_patch : int
        Number of distinct patch points (>= 1).
    dim : int
        Ambient dimension D (>= 2).
    patch_dim : int
        Patch dimension k, 1 <= k < D.
    n_duplicates : int
        Rows holding the off-patch point (>= 0).
    seed : int or torch.Generator
        Randomness for the basis, origin and patch points.
    scale : float
        Side length of the square patch (> 0).
    distance : float
        Distance of the repeated point from the patch (>= 0). It sits straight above the patch
        centre, so this is its distance both to the affine plane and to the bounded patch.
    dtype : torch.dtype
        Floating dtype of ``x`` and of the tensors in ``meta``.

    Returns
    -------
    Dataset
        ``x`` shape (n_patch + n_duplicates, dim); ``y`` int64, 0 on the patch and 1 for the repeated
        point; copies in rows ``n_patch ..``, all with ``source_index == n_patch``. ``meta`` holds
        ``basis`` (dim, patch_dim), ``origin`` (dim,), ``normal`` (dim,), ``duplicate_point`` (dim,),
        ``duplicate_rows``, ``duplicate_source_index``, ``scale``, ``distance``, ``spacing``.
    """
    check_scalar(n_patch, "n_patch", min=1)
    check_scalar(dim, "dim", min=2)
    check_scalar(n_duplicates, "n_duplicates", min=0)
    check_scalar(patch_dim, "patch_dim", min=1, max=dim, include_max=False,
                 fix=f"pass 1 <= patch_dim < dim={dim}: the patch needs a direction and the off-patch point a normal")
    check_scalar(scale, "scale", float, min=0, include_min=False)
    check_scalar(distance, "distance", float, min=0)
    gen = make_generator(seed)

    # One QR gives the patch basis and, in its last column, a unit normal orthogonal to it.
    q, _ = torch.linalg.qr(torch.randn(dim, patch_dim + 1, generator=gen, dtype=torch.float64))
    basis, normal = q[:, :patch_dim], q[:, patch_dim]
    # An affine, not linear, patch: its centre is a random point at norm 0.5.
    origin = torch.randn(dim, generator=gen, dtype=torch.float64)
    origin = 0.5 * origin / origin.norm()
    coords = (torch.rand(n_patch, patch_dim, generator=gen, dtype=torch.float64) - 0.5) * scale
    patch = origin + coords @ basis.T
    point = origin + distance * normal

    x = torch.cat([patch, point.expand(n_duplicates, dim)]).to(dtype)
    y = torch.cat([torch.zeros(n_patch, dtype=torch.long), torch.ones(n_duplicates, dtype=torch.long)])
    source = torch.cat([torch.arange(n_patch), torch.full((n_duplicates,), n_patch)])
    return Dataset(x=x, y=y, name="patch", source_index=source, meta={
        "basis": basis.to(dtype),
        "origin": origin.to(dtype),
        "normal": normal.to(dtype),
        "duplicate_point": point.to(dtype),
        "duplicate_rows": (n_patch, n_patch + n_duplicates),
        "duplicate_source_index": n_patch,
        "n_duplicates": n_duplicates,
        "patch_dim": patch_dim,
        "scale": float(scale),
        "distance": float(distance),
        "spacing": float(scale) * n_patch ** (-1.0 / patch_dim),
        "seed": seed if isinstance(seed, int) else None,
    })
