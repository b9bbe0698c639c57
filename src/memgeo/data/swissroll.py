"""The 2-D swiss roll of Sohl-Dickstein et al. (ICML 2015, "Deep Unsupervised Learning using
Nonequilibrium Thermodynamics"), the toy on which the 2015 diffusion probabilistic model is shown.

The roll is the planar spiral ``r(u) = u (cos u, sin u)`` with the angle ``u`` drawn uniformly in
``[1.5 pi, 4.5 pi]`` (the usual swiss-roll parametrisation, one and a half turns), seen from the
side that shows the spiral. Scaling: every coordinate is divided by :data:`SWISS_ROLL_SCALE`
``= 4.5 pi``, the largest radius, so noiseless points lie in the unit disk at radius
``u / (4.5 pi)`` in ``[1/3, 1]``; each coordinate then has a standard deviation of about 0.5, a
good match for the N(0, I) end of the forward diffusion.
"""

from __future__ import annotations

import math

import torch

from memgeo.data._rng import make_generator
from memgeo.errors import check_scalar

#: The divisor applied to the raw spiral (its largest radius, 4.5 pi).
SWISS_ROLL_SCALE: float = 4.5 * math.pi
#: Range of the spiral angle u (raw radius), before scaling.
SWISS_ROLL_ANGLE: tuple[float, float] = (1.5 * math.pi, 4.5 * math.pi)


def make_swiss_roll_2d(n: int = 1000, noise: float = 0.0, seed: int | torch.Generator = 0,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Points on the 2-D swiss roll spiral, scaled into the unit disk.

    ``u ~ Uniform(1.5 pi, 4.5 pi)``, ``x = (u cos u, u sin u) + noise * N(0, I)``, then
    ``x / (4.5 pi)``. ``noise`` is the standard deviation in the raw (unscaled) units, as in the
    usual swiss-roll generators, so it becomes ``noise / (4.5 pi)`` after scaling. With
    ``noise = 0`` the data lie exactly on a 1-D curve (local intrinsic dimension 1 in R^2).
    Randomness is drawn in float64 on the CPU from ``seed`` (the angles first, then the noise), so
    the same seed gives the same points for every dtype.

    Parameters
    ----------
    n : int
        Number of points (>= 1).
    noise : float, default 0.0
        Standard deviation of the isotropic Gaussian noise, raw units (>= 0).
    seed : int or torch.Generator
    dtype : torch.dtype

    Returns
    -------
    Tensor, shape (n, 2)
    """
    n = check_scalar(n, "n", int, min=1)
    noise = check_scalar(noise, "noise", float, min=0.0)
    g = make_generator(seed)
    lo, hi = SWISS_ROLL_ANGLE
    u = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    x = torch.stack([u * torch.cos(u), u * torch.sin(u)], dim=1)
    if noise > 0:
        x = x + noise * torch.randn((n, 2), generator=g, dtype=torch.float64)
    return (x / SWISS_ROLL_SCALE).to(dtype)
