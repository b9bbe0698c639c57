"""Ground-truth copy labels: does a generated sample copy a training image?

All criteria share one form. For a generated sample x, let d_1 <= d_2 <= ... be its normalized
pixel l2 distances ``sqrt(mean((x - y)^2))`` to the images y of the **de-duplicated** training set
(exact duplicates collapsed to one image, see :func:`~memgeo.data.neighbors.unique_rows`).
Each criterion defines a positive *scale* s(x), and

    statistic(x) = d_1 / s(x),        x is a copy  iff  statistic(x) < threshold.

The criteria (``COPY_CRITERIA`` keys, also used by the CLI):

``"ratio"`` (default; Yoon et al. 2023, Gu et al. 2023)
    s = d_2, the distance to the second-nearest distinct training image. Default threshold 1/3:
    a copy is more than 3x closer to its nearest training image than to any other.
    De-duplication matters: with a duplicated training image, d_2 would be 0 for its copies.
``"calibrated"`` (Carlini et al. 2023, "Extracting training data from diffusion models")
    s = alpha * mean(d_1, ..., d_n) with alpha = 0.5 and n = 50 (the mean includes d_1; if the
    de-duplicated training set has fewer than n images, all are used). Default threshold 1/3, i.e.
    a copy iff d_1 < mean(d_1..d_50) / 6. Compared with ``"ratio"`` at the same threshold this is
    looser exactly when mean(d_1..d_50) > 2 d_2, which is the typical case when the training set
    holds clusters of near-duplicates (they make d_2 small and hide copies from ``"ratio"``, but
    barely move a 50-neighbour mean).
``"absolute"``
    s = the typical spacing of the training set, the median over distinct training images of the
    distance to their nearest *other* distinct training image (leave-one-out). Default threshold
    0.25: a copy is closer to a training image than a quarter of the usual gap between training
    images. The scale is the same for every sample.

Every statistic is a ratio of distances, so labels do not change when all images are scaled by
the same factor. When d_1 = s = 0 (not possible with distinct training images except through
underflow) the statistic is defined as 0, i.e. an exact copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from memgeo.errors import MemgeoError, Registry, check_scalar
from memgeo.data.neighbors import ArrayLike, as_points, first_occurrence, nearest_neighbors, unique_rows


class CopyCriterion:
    """Base class: ``statistic = d_1 / scale``; a sample is a copy iff ``statistic < threshold``.

    Parameters
    ----------
    threshold : float, optional
        Positive, finite; ``None`` uses the class's ``default_threshold``.

    Subclasses set ``name``, ``default_threshold`` and implement :meth:`n_neighbors` and
    :meth:`scale`. ``__init__`` only stores and checks the hyper-parameters.
    """

    name: ClassVar[str] = ""
    default_threshold: ClassVar[float] = 1.0 / 3.0

    def __init__(self, threshold: float | None = None) -> None:
        t = self.default_threshold if threshold is None else threshold
        self.threshold = check_scalar(t, "threshold", float, min=0, include_min=False,
                                      fix=f"pass e.g. threshold={self.default_threshold:g} for criterion {self.name!r}")

    def n_neighbors(self, n_unique: int) -> int:
        """How many nearest distinct training images the criterion needs (at least 2, for d_2)."""
        return 2

    def scale(self, distances: np.ndarray, train_unique: torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
        """Per-sample scale s(x).

        Parameters
        ----------
        distances : numpy.ndarray, shape (M, k)
            Sorted distances to the ``k = n_neighbors(U)`` nearest distinct training images.
        train_unique : torch.Tensor, shape (U, D)
            The de-duplicated training set.

        Returns
        -------
        scale : numpy.ndarray, shape (M,)
        details : dict
            Criterion-specific numbers worth reporting (e.g. the typical spacing).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold:g})"


class RatioCriterion(CopyCriterion):
    """d1/d2 criterion (Yoon et al. 2023; Gu et al. 2023): copy iff ``d_1 / d_2 < threshold``.

    d_1, d_2 are the distances to the nearest and second-nearest distinct training images.
    Default threshold 1/3.
    """

    name = "ratio"
    default_threshold = 1.0 / 3.0

    def scale(self, distances: np.ndarray, train_unique: torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
        return distances[:, 1].copy(), {}


class CalibratedCriterion(CopyCriterion):
    """Calibrated nearest-neighbour ratio (Carlini et al. 2023).

    Copy iff ``d_1 / (alpha * mean(d_1, ..., d_n)) < threshold``, the mean taken over the ``n``
    nearest distinct training images (including the nearest). Defaults ``alpha = 0.5``,
    ``n = 50``, threshold 1/3 (a copy iff d_1 < mean / 6); see the module docstring for when this
    is looser than ``"ratio"``. With fewer than ``n`` distinct training images all are used.

    Parameters
    ----------
    threshold : float, optional
        Default 1/3.
    n_mean : int, default 50
        Number of nearest distinct training images averaged.
    alpha : float, default 0.5
        Multiplier of the mean distance.
    """

    name = "calibrated"
    default_threshold = 1.0 / 3.0

    def __init__(self, threshold: float | None = None, n_mean: int = 50, alpha: float = 0.5) -> None:
        super().__init__(threshold)
        self.n_mean = check_scalar(n_mean, "n_mean", min=2, fix="use the paper's n_mean=50")
        self.alpha = check_scalar(alpha, "alpha", float, min=0, include_min=False, fix="use the paper's alpha=0.5")

    def n_neighbors(self, n_unique: int) -> int:
        return max(2, min(self.n_mean, n_unique))

    def scale(self, distances: np.ndarray, train_unique: torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
        return self.alpha * distances.mean(axis=1), {"alpha": self.alpha, "n_mean": distances.shape[1]}

    def __repr__(self) -> str:
        return f"CalibratedCriterion(threshold={self.threshold:g}, n_mean={self.n_mean}, alpha={self.alpha:g})"


class AbsoluteCriterion(CopyCriterion):
    """Absolute distance criterion: copy iff ``d_1 < threshold * spacing``.

    ``spacing`` is the median, over the distinct training images, of each one's distance to its
    nearest other distinct training image (leave-one-out). Default threshold 0.25.
    """

    name = "absolute"
    default_threshold = 0.25

    def scale(self, distances: np.ndarray, train_unique: torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
        spacing = typical_spacing(train_unique)
        return np.full(distances.shape[0], spacing), {"typical_spacing": spacing}


#: Copy criteria by name.
COPY_CRITERIA: Registry[type[CopyCriterion]] = Registry(
    "copy criterion", {c.name: c for c in (RatioCriterion, CalibratedCriterion, AbsoluteCriterion)})


def get_copy_criterion(name: str, threshold: float | None = None) -> CopyCriterion:
    """Build a criterion from its registry name (``"ratio"``, ``"calibrated"``, ``"absolute"``)."""
    return COPY_CRITERIA.get(name)(threshold)


def typical_spacing(train_unique: ArrayLike) -> float:
    """Median leave-one-out nearest-neighbour distance among distinct points.

    Parameters
    ----------
    train_unique : torch.Tensor or numpy.ndarray, shape (U, ...)
        Distinct points (U >= 2), e.g. the first output of ``unique_rows``.

    Returns
    -------
    float
        ``median_i min_{j != i} d(x_i, x_j)`` in normalized pixel l2.
    """
    pts = as_points(train_unique, "train_unique")
    if pts.shape[0] < 2:
        raise MemgeoError("typical spacing needs at least 2 distinct points", "pass a larger training set")
    d, idx = nearest_neighbors(pts, pts, k=2)
    own = torch.arange(pts.shape[0], device=idx.device)
    # Each point is normally its own first neighbour (distance exactly 0); skip it.
    loo = torch.where(idx[:, 0] == own, d[:, 1], d[:, 0])
    return float(np.median(loo.cpu().numpy()))


def copy_statistic(d1: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``d1 / scale`` per sample, with ``0 / 0 = 0`` (an exact copy whose scale underflowed) and ``d / 0 = inf``.

    Parameters
    ----------
    d1, scale : numpy.ndarray, shape (M,)
        Distance to the nearest distinct training image and the criterion's scale.

    Returns
    -------
    numpy.ndarray, shape (M,), float64
    """
    d1 = np.asarray(d1, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 0, d1 / np.where(scale > 0, scale, 1.0), np.where(d1 > 0, np.inf, 0.0))


@dataclass
class CopyLabels:
    """Per-sample copy labels from :func:`label_copies`.

    Attributes
    ----------
    d1, d2 : numpy.ndarray, shape (M,)
        Normalized pixel l2 distance to the nearest and second-nearest distinct training image.
    nn_index : numpy.ndarray, shape (M,), int64
        Index into the *original* (not de-duplicated) training array of the first occurrence of
        the nearest distinct training image.
    scale : numpy.ndarray, shape (M,)
        The criterion's scale s(x) (d_2, alpha * mean of n nearest, or the typical spacing).
    statistic : numpy.ndarray, shape (M,)
        ``d1 / scale``.
    is_copy : numpy.ndarray, shape (M,), bool
        ``statistic < threshold``.
    criterion : str
        Registry name of the criterion.
    threshold : float
        Threshold that was used.
    n_train, n_train_unique : int
        Size of the training set before and after de-duplication.
    details : dict
        Criterion-specific numbers (e.g. ``typical_spacing``, ``n_mean``).
    """

    d1: np.ndarray
    d2: np.ndarray
    nn_index: np.ndarray
    scale: np.ndarray
    statistic: np.ndarray
    is_copy: np.ndarray
    criterion: str
    threshold: float
    n_train: int
    n_train_unique: int
    details: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.is_copy.shape[0])

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat dict per sample (for CSV): sample, d1, d2, nn_index, scale, statistic, is_copy."""
        return [
            {
                "sample": i,
                "d1": float(self.d1[i]),
                "d2": float(self.d2[i]),
                "nn_index": int(self.nn_index[i]),
                "scale": float(self.scale[i]),
                "statistic": float(self.statistic[i]),
                "is_copy": bool(self.is_copy[i]),
            }
            for i in range(len(self))
        ]

    def summary(self) -> dict[str, Any]:
        """Copy rate and counts, with the criterion and threshold that produced them."""
        n = len(self)
        n_copies = int(self.is_copy.sum())
        return {
            "criterion": self.criterion,
            "threshold": self.threshold,
            "n_samples": n,
            "n_copies": n_copies,
            "copy_rate": n_copies / n if n else float("nan"),
            "n_train": self.n_train,
            "n_train_unique": self.n_train_unique,
            **self.details,
        }


def label_copies(
    generated: ArrayLike,
    train: ArrayLike,
    criterion: str | CopyCriterion = "ratio",
    threshold: float | None = None,
    *,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
) -> CopyLabels:
    """Label each generated sample as a copy of the training data or not.

    Parameters
    ----------
    generated : torch.Tensor or numpy.ndarray, shape (M, ...)
        Generated samples, same per-sample shape (after flattening) as ``train``.
    train : torch.Tensor or numpy.ndarray, shape (N, ...)
        Training set; exact duplicates are collapsed before any distance is taken.
    criterion : str or CopyCriterion, default "ratio"
        A ``COPY_CRITERIA`` name (``"ratio"``, ``"calibrated"``, ``"absolute"``; see the module
        docstring for their exact definitions) or a criterion instance.
    threshold : float, optional
        Overrides the criterion's default threshold (only with a criterion name).
    chunk_size : int, default 1024
        Passed to :func:`~memgeo.data.neighbors.nearest_neighbors`.
    device : str or torch.device, optional
        Where to compute distances.

    Returns
    -------
    CopyLabels
        Per-sample arrays of length M plus the criterion and threshold used.

    Raises
    ------
    MemgeoError
        Unknown criterion, bad threshold, empty ``generated``, fewer than 2 distinct training
        images, mismatched shapes or non-finite values.
    """
    if isinstance(criterion, CopyCriterion):
        if threshold is not None:
            raise MemgeoError(
                "threshold given together with a criterion instance",
                "set the threshold in the criterion's constructor or pass the criterion by name",
            )
        crit = criterion
    elif isinstance(criterion, str):
        crit = get_copy_criterion(criterion, threshold)
    else:
        raise MemgeoError(f"criterion must be a name or CopyCriterion, got {type(criterion).__name__}",
                          f"choose one of: {', '.join(COPY_CRITERIA)}")
    gen = as_points(generated, "generated")
    if gen.shape[0] == 0:
        raise MemgeoError("generated holds no samples", "pass at least one generated sample")
    uniq_np, inverse = unique_rows(train)
    n_train, n_unique = int(inverse.shape[0]), int(uniq_np.shape[0])
    if n_unique < 2:
        raise MemgeoError(
            f"training set has {n_unique} distinct image(s) ({n_train} before de-duplication)",
            "copy criteria need at least 2 distinct training images",
        )
    uniq = torch.from_numpy(uniq_np)
    dist, idx = nearest_neighbors(gen, uniq, k=crit.n_neighbors(n_unique), chunk_size=chunk_size, device=device)
    dist_np, idx_np = dist.cpu().numpy(), idx.cpu().numpy()
    scale, details = crit.scale(dist_np, uniq)
    d1 = dist_np[:, 0]
    stat = copy_statistic(d1, scale)
    return CopyLabels(
        d1=d1.copy(),
        d2=dist_np[:, 1].copy(),
        nn_index=first_occurrence(inverse)[idx_np[:, 0]],
        scale=np.asarray(scale, dtype=np.float64),
        statistic=stat,
        is_copy=stat < crit.threshold,
        criterion=crit.name,
        threshold=crit.threshold,
        n_train=n_train,
        n_train_unique=n_unique,
        details=details,
    )
