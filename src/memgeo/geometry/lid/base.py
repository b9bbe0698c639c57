"""The contract every local-intrinsic-dimension estimator follows, and the shared registry.

Two kinds of estimators, each with its own abstract base class and one fixed signature (as
scikit-dimension separates its global and local estimators), so that callers branch on
``isinstance`` and never inspect signatures:

* :class:`ModelLIDEstimator` (LID_model): ``estimate(model, x, cond=None) -> (B,)`` reads the LID
  of the model's learned distribution at the points x, e.g. :class:`~memgeo.geometry.lid.FLIPD`
  (diffusion models) or :class:`~memgeo.geometry.lid.GeneratorLID` (decoders / generators);
* :class:`DataLIDEstimator` (LID_data): ``fit(reference) -> self`` once, then
  ``estimate(x) -> (M,)`` reads the LID of a data set around query points, e.g. local PCA.
  Estimators that can leave an in-sample query's own copy out of its neighbourhood set
  ``supports_exclude_self = True`` and accept ``estimate(x, exclude_self=True)``.

``needs_model`` is kept as a class attribute derived from the base (``True`` for model-based,
``False`` for data-based) for code written against the earlier single base class.

Hyper-parameters go in ``__init__`` and nothing expensive happens there. To add an estimator,
subclass one of the two bases, give it a unique ``name`` and decorate it with :func:`register`
(``LID_ESTIMATORS.register``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from memgeo.errors import Registry


class LIDEstimator(ABC):
    """Common root of both kinds; subclass :class:`ModelLIDEstimator` or :class:`DataLIDEstimator`.

    Attributes
    ----------
    name : str
        Registry name.
    needs_model : bool
        ``True`` for model-based estimators, ``False`` for data-based ones (derived from the base).
    """

    name: ClassVar[str] = ""
    needs_model: ClassVar[bool]

    def params(self) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__`` (for configs and reports)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and not k.endswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class ModelLIDEstimator(LIDEstimator):
    """Base of estimators of LID_model: the dimension of a model's learned distribution at points."""

    needs_model: ClassVar[bool] = True

    @abstractmethod
    def estimate(self, model: Any, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """LID of ``model``'s distribution at each point.

        Parameters
        ----------
        model : DiffusionModel or Generator
            The model whose learned distribution is measured.
        x : Tensor, shape (B, *data_shape)
            Points (clean data or samples).
        cond : Tensor, shape (B,), optional
            Conditions (class labels / prompt embeddings) for conditional models.

        Returns
        -------
        Tensor, shape (B,), float64
        """


class DataLIDEstimator(LIDEstimator):
    """Base of estimators of LID_data: the dimension of a reference data set around query points."""

    needs_model: ClassVar[bool] = False
    #: Whether ``estimate`` accepts ``exclude_self=True`` (leave an in-sample query's own copy out).
    supports_exclude_self: ClassVar[bool] = False

    @abstractmethod
    def fit(self, reference: Any) -> DataLIDEstimator:
        """Attach the reference points (N, ...) and return ``self``."""

    @abstractmethod
    def estimate(self, x: Any) -> torch.Tensor:
        """LID of the reference data around each query point.

        Parameters
        ----------
        x : Tensor or ndarray, shape (M, ...)
            Query points of the reference's shape.

        Returns
        -------
        Tensor, shape (M,), float64
        """


#: Every LID estimator by ``name`` (model-based and data-based).
LID_ESTIMATORS: Registry[type[LIDEstimator]] = Registry("LID estimator")

#: Class decorator adding an estimator to :data:`LID_ESTIMATORS` under ``cls.name``.
register = LID_ESTIMATORS.register


def get_lid_estimator(name: str, **params: Any) -> LIDEstimator:
    """Instantiate a registered estimator by name with hyper-parameters."""
    return LID_ESTIMATORS.build(name, **params)
