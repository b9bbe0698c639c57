"""End-to-end runs that combine the layers below and write one output folder each.

* :mod:`~memgeo.workflows.demo` (+ ``demo_report``, ``toy``): the digits memorization demo;
* :mod:`~memgeo.workflows.commands`: ``train``, ``sample`` and ``sharpness`` runs.

The CLI (:mod:`memgeo.cli`) is a thin wrapper over these functions.
"""

from memgeo.workflows.demo import DemoConfig, run_demo
from memgeo.workflows.toy import ToyConfig

__all__ = ["DemoConfig", "ToyConfig", "run_demo"]
