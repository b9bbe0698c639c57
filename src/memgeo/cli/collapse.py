"""`memgeo collapse` (model-collapse simulator): registers its command on :data:`memgeo.cli.app`."""

from __future__ import annotations

from memgeo.cli import app  # noqa: F401
