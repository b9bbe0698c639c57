"""Seeded reference data for the copy-metric tests (issue 12 "Done when"); shared by C1 and C2.

- :func:`mixture_triple`: a 10-component Gaussian mixture in d dimensions (centres from N(0, 16 I),
  unit within-component variance), 2000 train, 1000 test and 1000 generated rows by default, with
  generators ``"fresh"`` (new draws), ``"copies"`` (training rows), ``"noisy_copies"`` (training rows
  moved by 0.1 x the median train nearest-neighbour distance in a uniformly random direction) and a
  ``copy_fraction`` that mixes copies into fresh draws; ``components`` restricts a fresh generator to
  some mixture components (mode dropping).
- :func:`brute_knn`: the reference kNN of the neighbour-search tests (all pairwise normalized
  distances in float64, ties by index).
- :func:`moons_triple`: sklearn's two moons (noise 0.2) with a KDE generator of bandwidth sigma
  (a uniformly chosen training point + N(0, sigma^2 I)).

All sets are float32 numpy arrays; every random draw comes from ``numpy.random.default_rng(seed)``.
Distances here are plain Euclidean (the noise size is relative, so the normalization of
``memgeo.data.neighbors`` does not matter).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

GENERATORS = ("fresh", "copies", "noisy_copies")


def brute_knn(q: np.ndarray, r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference kNN: all pairwise normalized distances in float64 from the differences, stable sort (ties by index)."""
    q = q.reshape(len(q), -1).astype(np.float64)
    r = r.reshape(len(r), -1).astype(np.float64)
    d = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).mean(axis=2))
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


@dataclass(frozen=True, eq=False)
class Triple:
    """A (train, test, gen) triple plus ground truth about the generator.

    Attributes
    ----------
    train, test, gen : numpy.ndarray, shapes (N, d), (M, d), (G, d), float32
    source : numpy.ndarray, shape (G,), int64
        Training row each generated row was copied from (exactly or with noise), -1 for fresh rows.
    component_gen : numpy.ndarray, shape (G,), int64
        Mixture component of each generated row (its source's for copies; -1 for moons).
    """

    train: np.ndarray
    test: np.ndarray
    gen: np.ndarray
    source: np.ndarray
    component_gen: np.ndarray

    @property
    def is_copy(self) -> np.ndarray:
        """(G,) bool: the generated row is a copy (exact or noisy) of a training row."""
        return self.source >= 0


def mixture_centres(d: int, rng: np.random.Generator, n_components: int = 10) -> np.ndarray:
    """(n_components, d) centres drawn from N(0, 16 I)."""
    return rng.normal(0.0, 4.0, size=(n_components, d))


def mixture_sample(centres: np.ndarray, n: int, rng: np.random.Generator,
                   components: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n draws of the equal-weight mixture (optionally only ``components``): (points (n, d), labels (n,))."""
    comps = np.arange(centres.shape[0]) if components is None else np.asarray(components)
    labels = rng.choice(comps, size=n)
    return centres[labels] + rng.normal(size=(n, centres.shape[1])), labels


def median_nn_distance(x: np.ndarray) -> float:
    """Median Euclidean distance of each row to its nearest other row."""
    d, _ = cKDTree(x).query(x, k=2)
    return float(np.median(d[:, 1]))


def mixture_triple(d: int = 16, generator: str = "fresh", *, copy_fraction: float = 1.0, seed: int = 0,
                   n_train: int = 2000, n_test: int = 1000, n_gen: int = 1000, noise: float = 0.1,
                   components: np.ndarray | None = None) -> Triple:
    """The Gaussian-mixture reference data.

    Parameters
    ----------
    d : int
        Dimension (the reference behaviours use 16 and 64).
    generator : {"fresh", "copies", "noisy_copies"}
        How the copied part of ``gen`` is made; "fresh" ignores ``copy_fraction``.
    copy_fraction : float
        Fraction of ``gen`` rows (rounded) that are (noisy) copies of distinct, uniformly chosen
        training rows; the rest are fresh draws. The copies come first.
    noise : float
        Noisy copies move by ``noise x median train NN distance`` in a uniform random direction.
    components : array of int, optional
        Fresh generated rows come only from these components.
    """
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {GENERATORS}")
    rng = np.random.default_rng(seed)
    centres = mixture_centres(d, rng)
    train, lab_train = mixture_sample(centres, n_train, rng)
    test, _ = mixture_sample(centres, n_test, rng)
    n_copy = 0 if generator == "fresh" else int(round(copy_fraction * n_gen))
    fresh, lab_fresh = mixture_sample(centres, n_gen - n_copy, rng, components)
    src = rng.choice(n_train, size=n_copy, replace=False)
    copies = train[src].copy()
    if generator == "noisy_copies" and n_copy:
        step = rng.normal(size=copies.shape)
        step /= np.linalg.norm(step, axis=1, keepdims=True)
        copies = copies + noise * median_nn_distance(train) * step
    gen = np.concatenate([copies, fresh])
    source = np.concatenate([src, np.full(n_gen - n_copy, -1)]).astype(np.int64)
    comp = np.concatenate([lab_train[src], lab_fresh]).astype(np.int64)
    return Triple(train.astype(np.float32), test.astype(np.float32), gen.astype(np.float32), source, comp)


def moons_triple(sigma: float, *, seed: int = 0, n_train: int = 2000, n_test: int = 1000,
                 n_gen: int = 1000, noise: float = 0.2) -> Triple:
    """Two moons (sklearn, ``noise``) with a KDE generator of bandwidth ``sigma``."""
    from sklearn.datasets import make_moons

    rng = np.random.default_rng(seed)
    train, _ = make_moons(n_train, noise=noise, random_state=int(rng.integers(2**31)))
    test, _ = make_moons(n_test, noise=noise, random_state=int(rng.integers(2**31)))
    src = rng.integers(0, n_train, size=n_gen)
    gen = train[src] + sigma * rng.normal(size=(n_gen, 2))
    return Triple(train.astype(np.float32), test.astype(np.float32), gen.astype(np.float32),
                  src.astype(np.int64), np.full(n_gen, -1, dtype=np.int64))
