"""End-to-end runs that combine the layers below and write one output folder each.

The CLI (:mod:`memgeo.cli`) is a thin wrapper over these functions.
"""

from memgeo.workflows.demo import DemoConfig, ToyConfig, run_demo

__all__ = ["DemoConfig", "ToyConfig", "run_demo"]
