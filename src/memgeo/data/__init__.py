"""Data sets as tensors plus duplicate bookkeeping.

- :class:`Dataset`: samples ``x`` (N, C, H, W) in [-1, 1] or (N, D), labels, and for every row the
  original sample it copies (``source_index``, ``is_duplicate``, ``unique()``).
- Loaders: :func:`load_digits` (embedded), :func:`load_mnist` / :func:`read_idx` (IDX files on disk).
- Ground-truth toys: :func:`make_toy2d`, :func:`make_patch_with_duplicate`.
- Memorization injection: :func:`duplicate_points`, :func:`replace_class_with_copies`.
- By name: :func:`load_dataset` with :data:`DATASETS`; :func:`load_points` for ``.npy`` point files.
- Prompts: :func:`make_caption_benchmark` (memorized-caption digits), :func:`load_prompts` / :func:`write_prompts`.
"""

from memgeo.data.captions import (
    BenchmarkPrompt,
    CaptionBenchmark,
    make_caption_benchmark,
)
from memgeo.data.dataset import Dataset
from memgeo.data.digits import load_digits
from memgeo.data.inject import duplicate_points, replace_class_with_copies
from memgeo.data.manifolds import (
    MANIFOLD_DATASETS,
    affine_mixture,
    lollipop,
    sphere,
    squiggly_mixture,
    torus,
    true_lid,
    von_mises_with_atom,
)
from memgeo.data.mnist import DATA_ENV, load_mnist, read_idx
from memgeo.data.prompts import PromptEntry, load_prompts, write_prompts
from memgeo.data.registry import DATASETS, load_dataset, load_points
from memgeo.data.toy import make_patch_with_duplicate, make_toy2d

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "MANIFOLD_DATASETS",
    "BenchmarkPrompt",
    "CaptionBenchmark",
    "Dataset",
    "PromptEntry",
    "affine_mixture",
    "duplicate_points",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_points",
    "load_prompts",
    "lollipop",
    "make_caption_benchmark",
    "make_patch_with_duplicate",
    "make_toy2d",
    "read_idx",
    "replace_class_with_copies",
    "sphere",
    "squiggly_mixture",
    "torus",
    "true_lid",
    "von_mises_with_atom",
    "write_prompts",
]
