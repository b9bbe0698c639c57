"""MNIST-format (IDX) files read from disk; memgeo never downloads anything.

IDX layout: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32 per
dimension, then the values in C order (big-endian for multi-byte types). Files may be gzipped;
that is detected from the gzip magic bytes, because downloaded copies are often renamed.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from memgeo.data.dataset import Dataset
from memgeo.errors import MemgeoError, check_scalar

#: IDX dtype codes and the numpy dtypes (big-endian) they stand for.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: Environment variable naming the data folder used when no path is given.
DATA_ENV = "MEMGEO_DATA"

SPLITS = ("train", "t10k")
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file, gzipped or not.

    Parameters
    ----------
    path : str or path-like
        The file. Gzip compression is recognized from its first two bytes (1f 8b), not its name.

    Returns
    -------
    numpy.ndarray
        Shape as stored in the header, e.g. (N, 28, 28) uint8 for images or (N,) uint8 for labels;
        multi-byte types are converted to native byte order.

    Raises
    ------
    MemgeoError
        If the file is missing or unreadable, is a broken gzip stream, has a bad magic number or
        dtype code, or its payload is shorter or longer than the header says.
    """
    path = Path(path)
    if not path.is_file():
        raise MemgeoError(f"IDX file {str(path)!r} does not exist",
                          "check the path (MNIST files look like t10k-images-idx3-ubyte.gz)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MemgeoError(f"cannot read IDX file {str(path)!r}: {exc.strerror or exc}",
                          "check the file's permissions") from exc
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise MemgeoError(f"IDX file {str(path)!r} is a truncated or corrupt gzip stream ({exc})",
                              "download or copy the file again") from exc

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise MemgeoError(f"{str(path)!r} is not an IDX file (bad magic number {raw[:4].hex() or 'empty file'})",
                          "pass an MNIST-format file such as t10k-images-idx3-ubyte[.gz]")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise MemgeoError(f"IDX file {str(path)!r} has unknown dtype code 0x{code:02x}",
                          f"valid codes are {', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}; the file may be corrupt")
    if ndim == 0:
        raise MemgeoError(f"IDX file {str(path)!r} declares 0 dimensions", "the file is corrupt; copy it again")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise MemgeoError(f"IDX file {str(path)!r} is truncated inside its header", "download or copy the file again")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a corrupt header cannot overflow
    payload = len(raw) - header_len
    if payload != expected:
        what = "truncated" if payload < expected else "longer than its header says"
        raise MemgeoError(
            f"IDX file {str(path)!r} is {what}: header shape {shape} needs {expected} bytes of data, found {payload}",
            "download or copy the file again",
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    # Native byte order (torch rejects big-endian arrays) and a writable copy detached from `raw`.
    return arr.astype(dtype.newbyteorder("="), copy=True)


def load_mnist(path: str | os.PathLike[str] | None = None, split: str = "t10k", limit: int | None = None) -> Dataset:
    """Load an MNIST-format split (MNIST, Fashion-MNIST, KMNIST, ...) from IDX files on disk.

    Parameters
    ----------
    path : str, path-like or None
        A folder holding ``{split}-images-idx3-ubyte[.gz]`` and ``{split}-labels-idx1-ubyte[.gz]``
        (directly or in a ``mnist/`` subfolder), or the images file itself, in which case the
        labels file is looked up beside it. ``None`` uses the folder in the environment variable
        ``MEMGEO_DATA``.
    split : {"t10k", "train"}
        Which split's files to look for in a folder (``"test"`` is accepted for ``"t10k"``).
    limit : int or None
        Keep only the first ``limit`` images.

    Returns
    -------
    Dataset
        ``x`` float32, shape (N, 1, H, W) (H = W = 28 for MNIST), uint8 pixels mapped to [-1, 1]
        by ``x / 127.5 - 1``; ``y`` int64, shape (N,); ``name`` is ``"mnist"`` (or ``"mnist-train"``).

    Raises
    ------
    MemgeoError
        If no path is given and ``MEMGEO_DATA`` is unset, files are missing or malformed, or the
        image and label counts differ.
    """
    if split == "test":
        split = "t10k"
    if split not in SPLITS:
        raise MemgeoError(f"unknown MNIST split {split!r}", f"choose one of: {', '.join(SPLITS)}")
    check_scalar(limit, "limit", min=1, allow_none=True)

    images_path, labels_path = _locate(path, split)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise MemgeoError(f"{str(images_path)!r} holds {images.dtype} data of shape {images.shape}, "
                          "not uint8 images (N, H, W)",
                          "pass an images file (…-images-idx3-ubyte)")
    if labels.ndim != 1:
        raise MemgeoError(f"{str(labels_path)!r} holds data of shape {labels.shape}, not labels (N,)",
                          "pass a labels file (…-labels-idx1-ubyte)")
    if len(images) != len(labels):
        raise MemgeoError(f"{str(images_path)!r} has {len(images)} images but "
                          f"{str(labels_path)!r} has {len(labels)} labels",
                          "use the images and labels files of the same split")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]

    x = torch.from_numpy(images).unsqueeze(1).float() / 127.5 - 1.0
    y = torch.from_numpy(labels.astype(np.int64))
    name = "mnist" if split == "t10k" else f"mnist-{split}"
    return Dataset(x=x, y=y, name=name, meta={
        "images_file": str(images_path), "labels_file": str(labels_path), "split": split,
        "scaling": "x / 127.5 - 1", "limit": limit,
    })


def _locate(path: str | os.PathLike[str] | None, split: str) -> tuple[Path, Path]:
    """Resolve ``load_mnist``'s ``path`` argument to (images file, labels file)."""
    if path is None:
        env = os.environ.get(DATA_ENV, "").strip()
        if not env:
            raise MemgeoError("no MNIST location given",
                              f"pass a path to the folder with the IDX files "
                              f"or set the environment variable {DATA_ENV}")
        root = Path(env).expanduser()
        if not root.is_dir():
            raise MemgeoError(f"{DATA_ENV}={env!r} is not a folder",
                              f"point {DATA_ENV} at the folder holding the MNIST files")
        # MEMGEO_DATA may be a general data folder with one subfolder per data set.
        folders = [root, root / "mnist"]
    else:
        root = Path(path).expanduser()
        if root.is_file():
            return root, _labels_beside(root, split)
        if not root.is_dir():
            raise MemgeoError(f"MNIST path {str(root)!r} does not exist",
                              "pass the folder holding the IDX files or the images file")
        folders = [root, root / "mnist"]

    images_names = [f"{split}-images-idx3-ubyte", f"{split}-images.idx3-ubyte"]
    labels_names = [f"{split}-labels-idx1-ubyte", f"{split}-labels.idx1-ubyte"]
    for folder in folders:
        images = _first_existing(folder, images_names)
        if images is not None:
            labels = _first_existing(folder, labels_names)
            if labels is None:
                raise MemgeoError(f"found {str(images)!r} but no {labels_names[0]}[.gz] beside it",
                                  "put the labels file of the same split in that folder")
            return images, labels
    raise MemgeoError(
        f"no {images_names[0]}[.gz] in {' or '.join(repr(str(f)) for f in folders)}",
        "pass the folder that holds the MNIST IDX files (or the images file itself)",
    )


def _first_existing(folder: Path, stems: list[str]) -> Path | None:
    """The first of ``stem`` or ``stem.gz`` (for each stem in order) that is a file in ``folder``."""
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _labels_beside(images: Path, split: str) -> Path:
    """The labels file next to a directly given images file."""
    name = images.name
    candidates: list[str] = []
    for img_tag, lbl_tag in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if img_tag in name:
            stem = name.replace(img_tag, lbl_tag)
            stem = stem[:-3] if stem.endswith(".gz") else stem
            candidates.append(stem)
    candidates.append(f"{split}-labels-idx1-ubyte")  # fall back on the split's standard name
    found = _first_existing(images.parent, candidates)
    if found is None:
        raise MemgeoError(f"no labels file beside {str(images)!r} (looked for {candidates[0]}[.gz])",
                          "put the matching …-labels-idx1-ubyte[.gz] file in the same folder")
    return found
