"""Seed handling shared by the random data generators."""

from __future__ import annotations

from numbers import Integral

import torch

from memgeo.errors import MemgeoError


def make_generator(seed: int | torch.Generator) -> torch.Generator:
    """Return a CPU ``torch.Generator``: ``seed`` itself if it already is one, else a fresh one seeded with it.

    Generators are always CPU ones so that a given seed gives the same data on every machine;
    callers move the finished tensors to their device afterwards.
    """
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, Integral):
        raise MemgeoError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}",
                          "pass an integer seed such as seed=0")
    return torch.Generator().manual_seed(int(seed))
