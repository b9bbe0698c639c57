"""Synthetic data with a known local intrinsic dimension (LID) at every point.

Every generator returns a :class:`~memgeo.data.dataset.Dataset` whose rows are grouped into
sub-manifolds ("components") and whose ``meta`` holds the ground truth:

- ``meta["lid"]``: int64 tensor (N,), the true LID of each row;
- ``meta["component"]``: int64 tensor (N,), the component of each row (also stored as ``y``, so
  class-based tools work unchanged);
- ``meta["component_lid"]``: ``dict[int, int]``, component -> LID, for the components present.

``meta["lid"]`` and ``meta["component"]`` describe the rows of the data set they were made for.
:meth:`Dataset.subset` keeps ``meta`` as it is, so for a subset use :func:`true_lid`, which reads
the LID through ``y`` and ``component_lid`` and is therefore right for any selection of rows.

A point repeated ``k`` times (an "atom") has LID 0; its rows share one ``source_index`` so that
``is_duplicate`` marks them, as in :mod:`memgeo.data.toy`. Randomness is drawn in float64 on the
CPU from the seed and cast at the end, so float32 and float64 calls with one seed describe the
same points.

Generators
----------
- :func:`affine_mixture`: flat patches of given dimensions in R^ambient.
- :func:`squiggly_mixture`: curved (sinusoidal) patches of given dimensions in R^ambient.
- :func:`lollipop`: a disc (LID 2), a stick (LID 1) and an atom (LID 0).
- :func:`sphere`, :func:`torus`: closed manifolds.
- :func:`von_mises_with_atom`: a von Mises circle (LID 1), an atom and isolated points (LID 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral

import torch

from memgeo.data._rng import make_generator
from memgeo.data.dataset import Dataset
from memgeo.errors import MemgeoError, Registry, check_scalar

_F64 = torch.float64

#: Fixed 2-D geometry of :func:`lollipop` (before any embedding into a larger ambient space).
LOLLIPOP_DISC_RADIUS = 1.0
LOLLIPOP_STICK = ((math.sqrt(0.5), -math.sqrt(0.5)), (3 * math.sqrt(0.5), -3 * math.sqrt(0.5)))
LOLLIPOP_ATOM = (2.0, 2.0)


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------
def true_lid(dataset: Dataset) -> torch.Tensor:
    """The true LID of every row of a data set made here, or of any subset of one.

    Reads ``dataset.y`` (the component) through ``dataset.meta["component_lid"]``, so unlike
    ``meta["lid"]`` it stays correct after :meth:`Dataset.subset` or :meth:`Dataset.unique`.

    Returns
    -------
    torch.Tensor
        int64, shape (N,), on ``dataset.x``'s device.

    Raises
    ------
    MemgeoError
        If the data set has no labels or no ``component_lid`` (it was not made by this module).
    """
    table = dataset.meta.get("component_lid") if isinstance(dataset.meta, dict) else None
    if dataset.y is None or not isinstance(table, dict) or not table:
        raise MemgeoError(f"data set {dataset.name!r} carries no known LID (needs y and meta['component_lid'])",
                          "build it with a generator from memgeo.data.manifolds")
    y = dataset.y.cpu()
    missing = sorted(set(torch.unique(y).tolist()) - set(table))
    if missing:
        raise MemgeoError(f"components {missing} of {dataset.name!r} have no entry in meta['component_lid']",
                          "build the data set with a generator from memgeo.data.manifolds")
    lookup = torch.zeros(int(y.max()) + 1, dtype=torch.long)
    for comp, lid in table.items():
        if 0 <= comp < lookup.numel():
            lookup[comp] = int(lid)
    return lookup[y].to(dataset.x.device)


@dataclass(frozen=True, eq=False)
class SquigglyMap:
    """The embedding of one :func:`squiggly_mixture` component, ``R^d -> R^ambient``.

    ``f(u) = offset + tangent @ u + amplitude * normal @ sin(omega * (directions @ u) + phases)``

    ``tangent`` (ambient, d) and ``normal`` (ambient, m) together have orthonormal columns, so
    ``tangent.T @ f(u) = tangent.T @ offset + u``: ``f`` is injective, and its Jacobian
    ``tangent + amplitude * omega * normal @ diag(cos(.)) @ directions`` satisfies
    ``tangent.T @ J = I_d``. Every singular value of ``J`` is therefore >= 1 and ``J`` has rank
    ``d`` everywhere: ``f`` is an embedding (the graph of a smooth function, rotated) and the
    component has LID ``d`` at every point. Works on torch tensors with autograd.

    Attributes
    ----------
    offset : (ambient,) ; tangent : (ambient, d) ; normal : (ambient, m)
    directions : (m, d), unit rows ; phases : (m,) ; omega, amplitude : float
    """

    offset: torch.Tensor
    tangent: torch.Tensor
    normal: torch.Tensor
    directions: torch.Tensor
    phases: torch.Tensor
    omega: float
    amplitude: float

    @property
    def dim(self) -> int:
        """Latent (= intrinsic) dimension d."""
        return int(self.tangent.shape[1])

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """Map latent points ``u`` of shape (n, d) (or (d,)) to R^ambient, in ``u``'s dtype."""
        squeeze = u.ndim == 1
        u2 = u.reshape(1, -1) if squeeze else u
        if u2.ndim != 2 or u2.shape[1] != self.dim:
            raise MemgeoError(f"latent points have shape {tuple(u.shape)} but the map takes ({self.dim},) rows",
                              f"pass an (n, {self.dim}) tensor")
        p = {k: getattr(self, k).to(device=u.device, dtype=u.dtype)
             for k in ("offset", "tangent", "normal", "directions", "phases")}
        waves = torch.sin(self.omega * (u2 @ p["directions"].T) + p["phases"])
        out = p["offset"] + u2 @ p["tangent"].T + self.amplitude * (waves @ p["normal"].T)
        return out[0] if squeeze else out


# --------------------------------------------------------------------------------------------
# Mixtures of patches
# --------------------------------------------------------------------------------------------
def affine_mixture(
    dims: Sequence[int] = (2, 4, 8),
    ambient: int = 10,
    n_per: int | Sequence[int] = 1000,
    scale: float = 1.0,
    separation: float | None = None,
    distribution: str = "uniform",
    seed: int | torch.Generator = 0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Flat patches of dimensions ``dims`` in R^ambient, one per component, that do not overlap.

    Component ``k`` is ``origin_k + basis_k @ u`` with a random orthonormal ``basis_k``
    (ambient, d_k) and latent ``u`` either uniform on the cube [-scale/2, scale/2]^d_k
    (``distribution="uniform"``) or Gaussian N(0, scale^2 I) (``"gaussian"``). A component of
    dimension 0 is an atom: one point repeated ``n_per`` times (its rows share a source index).

    Placement: each patch's bounding ball (around its realized centroid, radius = its farthest
    point) is put on one random line through the origin, consecutive balls ``separation`` apart.
    Points of different components are thus at least ``separation`` apart, for either
    distribution, and the set of centroids is centred at the origin.

    Parameters
    ----------
    dims : sequence of int
        Intrinsic dimension of each component, each 0 <= d <= ambient; at least one.
    ambient : int
        Ambient dimension D >= max(dims), >= 1.
    n_per : int or sequence of int
        Points per component (>= 1), one number for all or one per component.
    scale : float
        Side of the cube (uniform) or standard deviation (gaussian) of the latent coordinates, > 0.
    separation : float or None
        Smallest gap between components (>= 0). ``None`` means ``scale``.
    distribution : {"uniform", "gaussian"}
        Law of the latent coordinates.
    seed : int or torch.Generator
    dtype : torch.dtype
        Floating dtype of ``x`` and of the float tensors in ``meta``.

    Returns
    -------
    Dataset
        ``x`` (sum(n_per), ambient), component ``k`` in one block of rows, in order. ``meta``:
        ``lid``, ``component``, ``component_lid``, ``dims``, ``bases`` (list of (ambient, d_k)),
        ``origins`` (K, ambient), ``latent`` (list of (n_k, d_k)), ``scale``, ``separation``,
        ``distribution``, ``rows`` (list of (start, stop)), ``seed``.

    Examples
    --------
    >>> ds = affine_mixture(dims=(10, 25, 50), ambient=100)  # the usual benchmark
    """
    dims = _check_dims(dims, ambient)
    counts = _check_n_per(n_per, len(dims))
    check_scalar(scale, "scale", float, min=0, include_min=False)
    gap = scale if separation is None else check_scalar(separation, "separation", float, min=0)
    if distribution not in ("uniform", "gaussian"):
        raise MemgeoError(f"unknown distribution {distribution!r}", "choose one of: uniform, gaussian")
    _check_dtype(dtype)
    gen = make_generator(seed)

    bases, latents, clouds = [], [], []
    for d, n in zip(dims, counts):
        basis = _orthonormal(ambient, d, gen)
        if distribution == "uniform":
            u = (torch.rand(n, d, generator=gen, dtype=_F64) - 0.5) * scale
        else:
            u = torch.randn(n, d, generator=gen, dtype=_F64) * scale
        bases.append(basis)
        latents.append(u)
        clouds.append(u @ basis.T)
    shifts = _place_on_line(clouds, gap, ambient, gen)
    x = torch.cat([c + s for c, s in zip(clouds, shifts)])

    meta = _component_meta(dims, counts)
    meta.update({
        "dims": dims,
        "bases": [b.to(dtype) for b in bases],
        "origins": torch.stack(shifts).to(dtype),
        "latent": [u.to(dtype) for u in latents],
        "scale": float(scale),
        "separation": float(gap),
        "distribution": distribution,
        "seed": _seed_value(seed),
    })
    return _finish(x, dims, counts, meta, "affine_mixture", dtype)


def squiggly_mixture(
    dims: Sequence[int] = (2, 4, 8),
    ambient: int = 10,
    n_per: int | Sequence[int] = 1000,
    frequency: float = 1.0,
    amplitude: float = 0.2,
    n_waves: int = 4,
    scale: float = 1.0,
    separation: float | None = None,
    seed: int | torch.Generator = 0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Curved patches of dimensions ``dims`` in R^ambient: flat cubes bent by sine waves.

    Component ``k`` draws latent ``u`` uniform on [-scale/2, scale/2]^d and maps it with a
    :class:`SquigglyMap`::

        f(u) = offset + T u + amplitude * scale * N sin(2 pi frequency / scale * (W u) + b)

    with ``[T N]`` a random (ambient, d + m) matrix with orthonormal columns, ``W`` (m, d) random
    unit rows, ``b`` random phases and ``m = min(n_waves, ambient - d)`` waves. Because ``T`` is
    orthogonal to ``N``, ``T^T f(u) = T^T offset + u``: ``f`` is an injective immersion whose
    Jacobian has rank ``d`` everywhere (all its singular values are >= 1), so the LID is exactly
    ``d``, while the image is curved (not contained in any d-dimensional affine subspace) when
    ``m >= 1`` and ``amplitude > 0``. With ``d == ambient`` there is no room to bend and the
    component is a flat full-dimensional cube; with ``d == 0`` it is an atom (one point repeated).

    The size of the bending: along a unit latent direction ``v`` each wave has curvature up to
    ``amplitude * (2 pi frequency)^2 * (w . v)^2 / scale``, so for a fixed number of waves a
    higher-dimensional patch is bent less per direction. With the defaults (seed 0), the share of
    a component's variance outside its best-fitting d-plane is about 20%, 16% and 4.5% for
    d = 2, 4, 8 in R^10 and 7%, 3% and 1.3% for d = 10, 25, 50 in R^100, while local PCA on 30
    neighbours (95% variance) still reads roughly d (2.0, 4.7, 7.8). Raise ``amplitude`` or
    ``frequency`` for harder, more strongly curved patches.

    Parameters
    ----------
    dims, ambient, n_per, scale, separation, seed, dtype
        As in :func:`affine_mixture` (latent law always uniform; placement identical).
    frequency : float
        Oscillations of each wave per ``scale`` of latent distance along its direction (>= 0).
    amplitude : float
        Wave amplitude in units of ``scale`` (>= 0; 0 gives flat patches).
    n_waves : int
        Maximum number of waves ``m`` per component (>= 0), capped at ``ambient - d``.

    Returns
    -------
    Dataset
        As :func:`affine_mixture`, with ``meta["maps"]`` (list of :class:`SquigglyMap`, already
        including the placement shift, so ``maps[k](latent[k])`` reproduces component ``k``),
        ``meta["latent"]``, ``frequency``, ``amplitude``, ``n_waves`` (per component) instead of
        ``bases``/``origins``/``distribution``.
    """
    dims = _check_dims(dims, ambient)
    counts = _check_n_per(n_per, len(dims))
    check_scalar(scale, "scale", float, min=0, include_min=False)
    check_scalar(frequency, "frequency", float, min=0)
    check_scalar(amplitude, "amplitude", float, min=0)
    check_scalar(n_waves, "n_waves", min=0)
    gap = scale if separation is None else check_scalar(separation, "separation", float, min=0)
    _check_dtype(dtype)
    gen = make_generator(seed)

    maps, latents, clouds = [], [], []
    for d, n in zip(dims, counts):
        m = min(n_waves, ambient - d) if d > 0 else 0
        q = _orthonormal(ambient, d + m, gen)
        w = torch.randn(m, d, generator=gen, dtype=_F64)
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)
        phases = 2 * math.pi * torch.rand(m, generator=gen, dtype=_F64)
        u = (torch.rand(n, d, generator=gen, dtype=_F64) - 0.5) * scale
        fmap = SquigglyMap(offset=torch.zeros(ambient, dtype=_F64), tangent=q[:, :d], normal=q[:, d:],
                           directions=w, phases=phases, omega=2 * math.pi * float(frequency) / scale,
                           amplitude=float(amplitude) * scale)
        maps.append(fmap)
        latents.append(u)
        clouds.append(fmap(u))
    shifts = _place_on_line(clouds, gap, ambient, gen)
    x = torch.cat([c + s for c, s in zip(clouds, shifts)])

    meta = _component_meta(dims, counts)
    meta.update({
        "dims": dims,
        "maps": [SquigglyMap(offset=s.to(dtype), tangent=f.tangent.to(dtype), normal=f.normal.to(dtype),
                             directions=f.directions.to(dtype), phases=f.phases.to(dtype), omega=f.omega,
                             amplitude=f.amplitude) for f, s in zip(maps, shifts)],
        "latent": [u.to(dtype) for u in latents],
        "scale": float(scale),
        "separation": float(gap),
        "frequency": float(frequency),
        "amplitude": float(amplitude),
        "n_waves": [int(f.normal.shape[1]) for f in maps],
        "seed": _seed_value(seed),
    })
    return _finish(x, dims, counts, meta, "squiggly_mixture", dtype)


# --------------------------------------------------------------------------------------------
# Fixed shapes
# --------------------------------------------------------------------------------------------
def lollipop(
    n_disc: int = 1000,
    n_stick: int = 500,
    n_atom: int = 50,
    ambient: int = 2,
    seed: int | torch.Generator = 0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """A lollipop: a disc (LID 2), a stick attached to it (LID 1) and a far-away atom (LID 0).

    In the plane: the disc is the unit disc at the origin, filled uniformly; the stick is the
    segment from the disc's boundary point (cos -45deg, sin -45deg) straight outwards to radius 3,
    filled uniformly; the atom is the point (2, 2) repeated ``n_atom`` times, 1.83 from the disc
    and 3 from the stick. For ``ambient > 2`` the plane is mapped into R^ambient by a random
    ``basis`` (ambient, 2) with orthonormal columns (distances are kept); for ``ambient == 2`` the
    basis is the identity.

    Parameters
    ----------
    n_disc, n_stick : int
        Points on the disc and on the stick (>= 1).
    n_atom : int
        Copies of the atom (>= 0; 0 leaves it out).
    ambient : int
        Ambient dimension (>= 2).
    seed : int or torch.Generator
    dtype : torch.dtype

    Returns
    -------
    Dataset
        Rows: disc, stick, atom. Components 0 (disc, LID 2), 1 (stick, LID 1), 2 (atom, LID 0).
        ``meta`` also holds ``basis``, ``plane`` (the 2-D points, (N, 2)), ``disc_radius``,
        ``stick`` (its two 2-D end points), ``atom`` (the 2-D atom) and ``seed``.
    """
    check_scalar(n_disc, "n_disc", min=1)
    check_scalar(n_stick, "n_stick", min=1)
    check_scalar(n_atom, "n_atom", min=0)
    check_scalar(ambient, "ambient", min=2)
    _check_dtype(dtype)
    gen = make_generator(seed)

    # Uniform on the disc: radius sqrt(U) makes the area density constant.
    r = LOLLIPOP_DISC_RADIUS * torch.rand(n_disc, generator=gen, dtype=_F64).sqrt()
    phi = 2 * math.pi * torch.rand(n_disc, generator=gen, dtype=_F64)
    disc = torch.stack([r * torch.cos(phi), r * torch.sin(phi)], dim=1)
    a, b = (torch.tensor(p, dtype=_F64) for p in LOLLIPOP_STICK)
    s = torch.rand(n_stick, 1, generator=gen, dtype=_F64)
    stick = a + s * (b - a)
    atom = torch.tensor(LOLLIPOP_ATOM, dtype=_F64).expand(n_atom, 2)
    plane = torch.cat([disc, stick, atom])
    basis = _embedding(ambient, 2, gen)

    comps = [(0, 2, n_disc, False), (1, 1, n_stick, False), (2, 0, n_atom, True)]
    meta = _blocks_meta(comps)
    meta.update({
        "basis": basis.to(dtype),
        "plane": plane.to(dtype),
        "disc_radius": LOLLIPOP_DISC_RADIUS,
        "stick": LOLLIPOP_STICK,
        "atom": LOLLIPOP_ATOM,
        "seed": _seed_value(seed),
    })
    return _finish_blocks(plane @ basis.T, comps, meta, "lollipop", dtype)


def sphere(
    n: int = 1000,
    dim: int = 2,
    ambient: int = 3,
    radius: float = 1.0,
    seed: int | torch.Generator = 0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Points uniform on the ``dim``-sphere of radius ``radius`` centred at the origin (LID ``dim``).

    The sphere lives in R^(dim + 1) (normalized Gaussians); for ``ambient > dim + 1`` it is mapped
    into R^ambient by a random ``basis`` (ambient, dim + 1) with orthonormal columns, so every
    point still has norm ``radius``.

    Parameters
    ----------
    n : int
        Number of points (>= 1).
    dim : int
        Sphere dimension (>= 1).
    ambient : int
        Ambient dimension (>= dim + 1).
    radius : float
        > 0.
    seed : int or torch.Generator
    dtype : torch.dtype

    Returns
    -------
    Dataset
        One component (0) of LID ``dim``. ``meta`` also holds ``basis``, ``radius``, ``dim``, ``seed``.
    """
    check_scalar(n, "n", min=1)
    check_scalar(dim, "dim", min=1)
    check_scalar(ambient, "ambient", min=1)
    if ambient < dim + 1:
        raise MemgeoError(f"a {dim}-sphere needs ambient >= {dim + 1}, got ambient={ambient}",
                          f"pass ambient={dim + 1} or more")
    check_scalar(radius, "radius", float, min=0, include_min=False)
    _check_dtype(dtype)
    gen = make_generator(seed)

    g = torch.randn(n, dim + 1, generator=gen, dtype=_F64)
    norms = g.norm(dim=1, keepdim=True)
    while bool((norms == 0).any()):  # probability zero, but never divide by it
        bad = (norms == 0).flatten()
        g[bad] = torch.randn(int(bad.sum()), dim + 1, generator=gen, dtype=_F64)
        norms = g.norm(dim=1, keepdim=True)
    pts = radius * g / norms
    basis = _embedding(ambient, dim + 1, gen)

    comps = [(0, dim, n, False)]
    meta = _blocks_meta(comps)
    meta.update({"basis": basis.to(dtype), "radius": float(radius), "dim": dim, "seed": _seed_value(seed)})
    return _finish_blocks(pts @ basis.T, comps, meta, "sphere", dtype)


def torus(
    n: int = 1000,
    ambient: int = 3,
    radii: tuple[float, float] = (1.0, 0.4),
    seed: int | torch.Generator = 0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Points uniform (by surface area) on a ring torus (LID 2).

    With ``radii = (R, r)``, ``R > r > 0``, the torus in R^3 is
    ``((R + r cos v) cos u, (R + r cos v) sin u, r sin v)`` and satisfies
    ``(sqrt(x^2 + y^2) - R)^2 + z^2 = r^2``. ``u`` is uniform; ``v`` is drawn by rejection with
    acceptance ``(R + r cos v) / (R + r)`` so the density is uniform in area, not in the angles.
    For ``ambient > 3`` the torus is mapped into R^ambient by a random ``basis`` (ambient, 3) with
    orthonormal columns (``basis.T @ x`` recovers the R^3 coordinates).

    Returns
    -------
    Dataset
        One component (0) of LID 2. ``meta`` also holds ``basis``, ``radii``, ``angles`` (N, 2) of
        (u, v), ``seed``.
    """
    check_scalar(n, "n", min=1)
    check_scalar(ambient, "ambient", min=3)
    try:
        big, small = (float(v) for v in radii)
    except (TypeError, ValueError) as exc:
        raise MemgeoError(f"radii must be two numbers (R, r), got {radii!r}", "pass e.g. radii=(1.0, 0.4)") from exc
    if not (math.isfinite(big) and math.isfinite(small) and big > small > 0):
        raise MemgeoError(f"radii must satisfy R > r > 0 for a ring torus, got {radii!r}",
                          "pass e.g. radii=(1.0, 0.4)")
    _check_dtype(dtype)
    gen = make_generator(seed)

    u = 2 * math.pi * torch.rand(n, generator=gen, dtype=_F64)
    v = torch.empty(0, dtype=_F64)
    while v.numel() < n:
        cand = 2 * math.pi * torch.rand(2 * n, generator=gen, dtype=_F64)
        keep = torch.rand(2 * n, generator=gen, dtype=_F64) * (big + small) <= big + small * torch.cos(cand)
        v = torch.cat([v, cand[keep]])
    v = v[:n]
    ring = big + small * torch.cos(v)
    pts = torch.stack([ring * torch.cos(u), ring * torch.sin(u), small * torch.sin(v)], dim=1)
    basis = _embedding(ambient, 3, gen)

    comps = [(0, 2, n, False)]
    meta = _blocks_meta(comps)
    meta.update({"basis": basis.to(dtype), "radii": (big, small), "angles": torch.stack([u, v], 1).to(dtype),
                 "seed": _seed_value(seed)})
    return _finish_blocks(pts @ basis.T, comps, meta, "torus", dtype)


def von_mises_with_atom(
    n_circle: int = 1000,
    kappa: float = 2.0,
    n_atom: int = 100,
    n_isolated: int = 5,
    mu: float = 0.0,
    atom: Sequence[float] = (0.0, 0.0),
    isolated_radius: float = 1.6,
    seed: int | torch.Generator = 0,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """The unit circle with von Mises distributed angles (LID 1), one atom and a few isolated points.

    - Circle (component 0, LID 1): ``(cos theta, sin theta)``, ``theta ~ VonMises(mu, kappa)``
      (sampled by Best & Fisher's rejection method; ``kappa = 0`` is uniform, ``kappa > 1e6`` uses
      the Gaussian limit N(mu, 1/kappa)).
    - Atom (component 1, LID 0): the point ``atom`` (default the circle's centre, 1 away from
      every circle point) repeated ``n_atom`` times; its rows share one source index.
    - Isolated points (component 2, LID 0): ``n_isolated`` single points on the circle of radius
      ``isolated_radius`` around the origin, evenly spaced in angle after one random rotation.
      A single training point has no neighbourhood in the data, so as a point of the training
      set its LID is 0: a model that reproduces it exactly has memorized it. (Their "true" LID is
      a statement about the finite training set, not about a smooth underlying density.)

    Parameters
    ----------
    n_circle : int
        Circle points (>= 1).
    kappa : float
        Concentration (>= 0).
    n_atom, n_isolated : int
        Atom copies and isolated points (>= 0 each; 0 leaves the component out).
    mu : float
        Mean angle of the circle points (radians).
    atom : 2 floats
        Where the atom sits; must be off the unit circle.
    isolated_radius : float
        Radius of the isolated points (> 0, != 1).
    seed : int or torch.Generator
    dtype : torch.dtype

    Returns
    -------
    Dataset
        ``x`` (n_circle + n_atom + n_isolated, 2); rows: circle, atom, isolated. ``meta`` also holds
        ``angles`` (circle angles), ``kappa``, ``mu``, ``atom``, ``isolated`` ((n_isolated, 2)),
        ``atom_rows`` and ``isolated_rows`` ((start, stop)), ``seed``.
    """
    check_scalar(n_circle, "n_circle", min=1)
    check_scalar(n_atom, "n_atom", min=0)
    check_scalar(n_isolated, "n_isolated", min=0)
    check_scalar(kappa, "kappa", float, min=0)
    check_scalar(mu, "mu", float, fix="pass a finite angle, e.g. mu=0.0")
    point = torch.as_tensor(atom, dtype=_F64).flatten()
    if point.numel() != 2 or not bool(torch.isfinite(point).all()):
        raise MemgeoError(f"atom must be 2 finite numbers, got {atom!r}", "pass e.g. atom=(0.0, 0.0)")
    if abs(float(point.norm()) - 1.0) < 1e-6:
        raise MemgeoError(f"atom {tuple(point.tolist())} lies on the unit circle",
                          "put it off the circle, e.g. atom=(0.0, 0.0)")
    check_scalar(isolated_radius, "isolated_radius", float, min=0, include_min=False)
    if abs(isolated_radius - 1.0) < 1e-6:
        raise MemgeoError("isolated_radius = 1 puts the isolated points on the circle", "pass e.g. isolated_radius=1.6")
    _check_dtype(dtype)
    gen = make_generator(seed)

    theta = _von_mises(n_circle, float(mu), float(kappa), gen)
    circle = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    start = 2 * math.pi * float(torch.rand(1, generator=gen, dtype=_F64))
    ang = start + 2 * math.pi * torch.arange(n_isolated, dtype=_F64) / max(n_isolated, 1)
    isolated = isolated_radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    x = torch.cat([circle, point.expand(n_atom, 2), isolated])

    comps = [(0, 1, n_circle, False), (1, 0, n_atom, True), (2, 0, n_isolated, False)]
    meta = _blocks_meta(comps)
    meta.update({
        "angles": theta.to(dtype),
        "kappa": float(kappa),
        "mu": float(mu),
        "atom": tuple(float(v) for v in point),
        "isolated": isolated.to(dtype),
        "atom_rows": (n_circle, n_circle + n_atom),
        "isolated_rows": (n_circle + n_atom, n_circle + n_atom + n_isolated),
        "seed": _seed_value(seed),
    })
    return _finish_blocks(x, comps, meta, "von_mises_atom", dtype)


#: Generators by name (all callable with defaults only).
MANIFOLD_DATASETS: Registry[Callable[..., Dataset]] = Registry("manifold data set", {
    "affine_mixture": affine_mixture,
    "squiggly_mixture": squiggly_mixture,
    "lollipop": lollipop,
    "sphere": sphere,
    "torus": torus,
    "von_mises_atom": von_mises_with_atom,
})


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------
def _von_mises(n: int, mu: float, kappa: float, gen: torch.Generator) -> torch.Tensor:
    """Von Mises samples in [-pi, pi) (Best & Fisher 1979 rejection, vectorized), float64."""
    if kappa < 1e-8:
        theta = 2 * math.pi * torch.rand(n, generator=gen, dtype=_F64)
    elif kappa > 1e6:
        # Beyond this the rejection step loses precision; the law is Gaussian up to O(1/kappa).
        theta = torch.randn(n, generator=gen, dtype=_F64) / math.sqrt(kappa)
    else:
        tau = 1.0 + math.sqrt(1.0 + 4.0 * kappa * kappa)
        # (tau - sqrt(2 tau)) / (2 kappa), rewritten to avoid cancellation at small kappa.
        rho = 2.0 * kappa / (tau + math.sqrt(2.0 * tau))
        r = (1.0 + rho * rho) / (2.0 * rho)
        out = torch.empty(0, dtype=_F64)
        while out.numel() < n:
            m = 2 * (n - out.numel()) + 16
            u1, u2, u3 = torch.rand(3, m, generator=gen, dtype=_F64)
            z = torch.cos(math.pi * u1)
            f = ((1.0 + r * z) / (r + z)).clamp(-1.0, 1.0)
            c = kappa * (r - f)
            ok = (c * (2.0 - c) - u2 > 0) | (torch.log(c / u2) + 1.0 - c >= 0)
            sign = torch.where(u3 > 0.5, 1.0, -1.0).to(_F64)
            out = torch.cat([out, (sign * torch.arccos(f))[ok]])
        theta = out[:n]
    return torch.remainder(theta + mu + math.pi, 2 * math.pi) - math.pi


def _orthonormal(ambient: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """A random (ambient, k) matrix with orthonormal columns (k may be 0)."""
    if k == 0:
        return torch.zeros(ambient, 0, dtype=_F64)
    q, rr = torch.linalg.qr(torch.randn(ambient, k, generator=gen, dtype=_F64))
    # Fix the signs so the result is Haar-distributed rather than biased by QR's convention.
    return q * torch.where(torch.diagonal(rr) < 0, -1.0, 1.0).to(_F64)


def _embedding(ambient: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Identity for ambient == k, else a random (ambient, k) orthonormal map."""
    return torch.eye(k, dtype=_F64) if ambient == k else _orthonormal(ambient, k, gen)


def _place_on_line(clouds: list[torch.Tensor], gap: float, ambient: int,
                   gen: torch.Generator) -> list[torch.Tensor]:
    """Shifts that put the clouds' bounding balls on one random line, consecutive balls ``gap`` apart."""
    direction = torch.randn(ambient, generator=gen, dtype=_F64)
    direction = direction / direction.norm().clamp_min(1e-300)
    centroids = [c.mean(0) for c in clouds]
    radii = [float((c - m).norm(dim=1).max()) for c, m in zip(clouds, centroids)]
    pos, positions = 0.0, []
    for k, r in enumerate(radii):
        if k:
            pos += radii[k - 1] + gap + r
        positions.append(pos)
    mid = sum(positions) / len(positions)
    return [(p - mid) * direction - m for p, m in zip(positions, centroids)]


def _component_meta(dims: list[int], counts: list[int]) -> dict:
    return _blocks_meta([(k, d, n, d == 0) for k, (d, n) in enumerate(zip(dims, counts))])


def _blocks_meta(comps: list[tuple[int, int, int, bool]]) -> dict:
    """``lid``, ``component``, ``component_lid``, ``rows`` for blocks (component, lid, n, is_atom)."""
    lid = torch.cat([torch.full((n,), d, dtype=torch.long) for _, d, n, _ in comps])
    comp = torch.cat([torch.full((n,), k, dtype=torch.long) for k, _, n, _ in comps])
    rows, start = [], 0
    for _, _, n, _ in comps:
        rows.append((start, start + n))
        start += n
    return {"lid": lid, "component": comp, "component_lid": {k: d for k, d, n, _ in comps if n > 0}, "rows": rows}


def _finish(x: torch.Tensor, dims: list[int], counts: list[int], meta: dict, name: str,
            dtype: torch.dtype) -> Dataset:
    comps = [(k, d, n, d == 0) for k, (d, n) in enumerate(zip(dims, counts))]
    return _finish_blocks(x, comps, meta, name, dtype)


def _finish_blocks(x: torch.Tensor, comps: list[tuple[int, int, int, bool]], meta: dict, name: str,
                   dtype: torch.dtype) -> Dataset:
    """Build the Dataset; the rows of an atom block all point at the block's first row."""
    source, start = [], 0
    for _, _, n, is_atom in comps:
        idx = torch.arange(start, start + n)
        source.append(torch.full((n,), start, dtype=torch.long) if is_atom and n > 0 else idx)
        start += n
    return Dataset(x=x.to(dtype), y=meta["component"].clone(), name=name, source_index=torch.cat(source), meta=meta)

def _check_dims(dims: Sequence[int], ambient: int) -> list[int]:
    check_scalar(ambient, "ambient", min=1)
    if hasattr(dims, "tolist") and not isinstance(dims, (str, bytes)):  # numpy array or tensor
        dims = dims.tolist()
        dims = [dims] if not isinstance(dims, list) else dims
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence) or len(dims) == 0:
        raise MemgeoError(f"dims must be a non-empty sequence of ints, got {dims!r}", "pass e.g. dims=(2, 4, 8)")
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, Integral) or d < 0:
            raise MemgeoError(f"dims must hold ints >= 0, got {dims!r}", "pass e.g. dims=(2, 4, 8)")
        if d > ambient:
            raise MemgeoError(f"dimension {d} in dims exceeds ambient={ambient}",
                              f"pass ambient >= {max(dims)} or smaller dims")
        out.append(int(d))
    return out


def _check_n_per(n_per: int | Sequence[int], k: int) -> list[int]:
    if isinstance(n_per, Integral) and not isinstance(n_per, bool):
        return [check_scalar(n_per, "n_per", min=1)] * k
    if isinstance(n_per, Sequence) and not isinstance(n_per, (str, bytes)) and len(n_per) == k:
        return [check_scalar(n, "n_per", min=1) for n in n_per]
    raise MemgeoError(f"n_per must be an int >= 1 or {k} such ints (one per component), got {n_per!r}",
                      "pass e.g. n_per=1000")
def _check_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise MemgeoError(f"dtype must be a floating torch dtype, got {dtype!r}", "pass e.g. dtype=torch.float32")


def _seed_value(seed: int | torch.Generator) -> int | None:
    return int(seed) if isinstance(seed, Integral) else None
