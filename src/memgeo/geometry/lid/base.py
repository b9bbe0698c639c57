"""The contract every local-intrinsic-dimension estimator follows, and the shared registry.

Two kinds of estimators:

* model-based (``needs_model = True``): ``estimate(model, x, cond=None) -> (B,)`` reads the LID of
  the model's learned distribution at the points x (LID_model), e.g. :class:`~memgeo.geometry.lid.FLIPD`;
* data-based (``needs_model = False``): ``fit(reference)`` once, then ``estimate(x) -> (M,)`` reads
  the LID of a data set around query points (LID_data), e.g. local PCA.

Hyper-parameters go in ``__init__`` and nothing expensive happens there. To add an estimator,
subclass :class:`LIDEstimator`, give it a unique ``name`` and decorate it with :func:`register`
(``LID_ESTIMATORS.register``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from memgeo.errors import Registry


class LIDEstimator:
    """Base class. Subclasses set ``name`` and ``needs_model`` and implement ``estimate``."""

    name: ClassVar[str] = ""
    needs_model: ClassVar[bool] = True

    def params(self) -> dict[str, Any]:
        """Hyper-parameters as given to ``__init__`` (for configs and reports)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and not k.endswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


#: Every LID estimator by ``name`` (model-based and data-based).
LID_ESTIMATORS: Registry[type[LIDEstimator]] = Registry("LID estimator")

#: Class decorator adding an estimator to :data:`LID_ESTIMATORS` under ``cls.name``.
register = LID_ESTIMATORS.register


def get_lid_estimator(name: str, **params: Any) -> LIDEstimator:
    """Instantiate a registered estimator by name with hyper-parameters."""
    return LID_ESTIMATORS.build(name, **params)
