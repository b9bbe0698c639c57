"""memgeo: measure, explain and prevent memorization in generative models.

Layers, importing only downwards::

    errors/io -> data -> models -> geometry -> memorization -> report -> workflows -> cli

Sub-packages are imported lazily by the user (``import memgeo.geometry``) so that
``import memgeo`` stays cheap.
"""

from memgeo.errors import MemgeoError

__version__ = "0.1.0"

__all__ = ["MemgeoError", "__version__"]
