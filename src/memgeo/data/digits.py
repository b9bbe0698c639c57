"""scikit-learn's 8x8 handwritten digits: the embedded default data set (no download needed)."""

from __future__ import annotations

import numpy as np
import torch

from memgeo.data.dataset import Dataset


def load_digits() -> Dataset:
    """Load the 1797 8x8 digits bundled with scikit-learn.

    Returns
    -------
    Dataset
        ``x`` float32, shape (1797, 1, 8, 8), pixel values 0..16 mapped to [-1, 1] by ``x / 8 - 1``;
        ``y`` int64, shape (1797,), digit labels 0..9; ``name`` is ``"digits"``.
    """
    # Imported here so that `import memgeo.data` does not pay for scikit-learn's import time.
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # (1797, 8, 8), values 0..16
    x = torch.from_numpy(images / 8.0 - 1.0).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return Dataset(x=x, y=y, name="digits",
                   meta={"source": "sklearn.datasets.load_digits", "scaling": "x / 8 - 1", "raw_range": (0, 16)})
