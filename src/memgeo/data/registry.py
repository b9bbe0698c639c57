"""Data sets by name: one string spec shared by the API, the CLI and configs.

Specs::

    digits           scikit-learn's 8x8 digits (embedded)
    mnist            MNIST t10k from the folder in $MEMGEO_DATA
    mnist:PATH       MNIST t10k from PATH (folder or images file)
    toy2d            four Gaussian blobs plus one duplicated point (2-D)
    swissroll        the 2-D swiss roll of Sohl-Dickstein et al. (2015), 1000 points (seed 0)
    patch            flat 2-D patch in R^64 plus one duplicated off-patch point
    npy:PATH         an array saved with numpy.save, shape (N, D) or (N, C, H, W)
    PATH.npy         the same, written as a bare path
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from memgeo.data.dataset import Dataset
from memgeo.data.digits import load_digits
from memgeo.data.mnist import load_mnist
from memgeo.data.swissroll import make_swiss_roll_2d
from memgeo.data.toy import make_patch_with_duplicate, make_toy2d
from memgeo.errors import MemgeoError, check_finite, check_ndim
from memgeo.io import native_order

#: Names accepted by :func:`load_dataset` (``mnist`` and ``npy`` also take ``:PATH``).
DATASETS: tuple[str, ...] = ("digits", "mnist", "toy2d", "swissroll", "patch", "npy")

#: Largest magnitude a point coordinate may have: squared distances and network activations of larger
#: values overflow float32 (e.g. 1e30 squared is inf), so such files are refused, not silently turned to NaN.
MAX_ABS_VALUE = 1e8

_SPEC_HELP = "digits, mnist, mnist:PATH, toy2d, swissroll, patch, npy:PATH, or a path ending in .npy"


def load_dataset(spec: str) -> Dataset:
    """Load a data set from its spec string (see the module docstring for the forms).

    Parameters
    ----------
    spec : str
        E.g. ``"digits"``, ``"mnist:/data/mnist"``, ``"npy:points.npy"``.

    Returns
    -------
    Dataset
        Generators (``toy2d``, ``swissroll``, ``patch``) are built with their default arguments and seed 0.

    Raises
    ------
    MemgeoError
        For an unknown spec (listing the valid ones) or whatever the loader rejects.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise MemgeoError(f"dataset spec must be a non-empty string, got {spec!r}", f"choose one of: {_SPEC_HELP}")
    spec = spec.strip()
    head, sep, arg = spec.partition(":")
    name = head.lower()
    if name == "digits" and not sep:
        return load_digits()
    if name == "mnist":
        if sep and not arg:
            raise MemgeoError("dataset spec 'mnist:' has an empty path",
                              "write mnist:PATH, or plain mnist to use $MEMGEO_DATA")
        return load_mnist(arg or None)
    if name == "toy2d" and not sep:
        return make_toy2d()
    if name == "swissroll" and not sep:
        return Dataset(x=make_swiss_roll_2d(), name="swissroll", meta={"source": "Sohl-Dickstein et al. 2015"})
    if name == "patch" and not sep:
        return make_patch_with_duplicate()
    if name == "npy" and sep:
        return _npy_dataset(arg)
    if spec.lower().endswith(".npy"):
        return _npy_dataset(spec)
    raise MemgeoError(f"unknown dataset {spec!r}", f"choose one of: {_SPEC_HELP}")


def load_points(path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Read points from a ``.npy`` file.

    Parameters
    ----------
    path : str or path-like
        A file written by ``numpy.save``; pickled (object) arrays are refused.
    dtype : torch.dtype
        Floating dtype of the result.

    Returns
    -------
    torch.Tensor
        Shape (N, D) or (N, C, H, W), N >= 1, all finite.

    Raises
    ------
    MemgeoError
        If the file is missing, not a readable ``.npy`` file, not numeric, has NaN/inf or values
        beyond :data:`MAX_ABS_VALUE` in magnitude, holds no points or has a number of dimensions
        other than 2 or 4. Big-endian files are converted to the machine's byte order.
    """
    path = Path(path).expanduser()
    fix_format = "save the points with numpy.save(path, array) as an (N, D) or (N, C, H, W) array"
    if not path.is_file():
        raise MemgeoError(f"points file {str(path)!r} does not exist", "check the path")
    if path.suffix.lower() != ".npy":
        raise MemgeoError(f"points file {str(path)!r} is not a .npy file", fix_format)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # numpy's ways of saying "bad header/short data/pickled"
        raise MemgeoError(f"cannot read {str(path)!r} as a .npy array ({exc})", fix_format) from exc
    if not isinstance(arr, np.ndarray):  # np.load also opens .npz archives whatever the suffix
        raise MemgeoError(f"{str(path)!r} is an .npz archive, not a single .npy array", fix_format)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise MemgeoError(f"{str(path)!r} holds {arr.dtype} values, not real numbers", fix_format)
    if arr.dtype == np.float16 or arr.dtype.itemsize > 8:  # half is widened; long double has no torch dtype
        arr = arr.astype(np.float64 if arr.dtype.itemsize > 8 else np.float32)
    check_ndim(arr, f"points in {str(path)!r}", (2, 4))
    if arr.shape[0] == 0 or arr[0].size == 0:
        raise MemgeoError(f"{str(path)!r} holds an empty array of shape {arr.shape}", fix_format)
    check_finite(arr, f"points in {str(path)!r}")
    arr = native_order(arr)  # big-endian files load as well
    check_magnitude(arr, f"points in {str(path)!r}")
    return torch.from_numpy(np.ascontiguousarray(arr)).to(dtype)


def check_magnitude(arr: np.ndarray, name: str, limit: float = MAX_ABS_VALUE) -> None:
    """Refuse values beyond ``limit`` in magnitude (they overflow float32 geometry); see :data:`MAX_ABS_VALUE`."""
    peak = float(np.max(np.abs(arr))) if arr.size else 0.0
    if peak > limit:
        raise MemgeoError(f"{name} reach |x| = {peak:.3g}, beyond the {limit:.0e} memgeo accepts (squared distances "
                          "and network activations would overflow float32)",
                          "rescale the data, e.g. to [-1, 1] as the models are trained on")


def _npy_dataset(path: str) -> Dataset:
    if not path:
        raise MemgeoError("dataset spec 'npy:' has an empty path", "write npy:PATH")
    x = load_points(path)
    return Dataset(x=x, name=Path(path).stem, meta={"file": str(Path(path).expanduser())})
