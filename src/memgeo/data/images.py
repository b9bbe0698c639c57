"""Sample sets from anywhere: folders of images, ``.npy`` files (memory-mapped), arrays, tensors, generators.

Image folder policy (:func:`load_image_folder`), explicit so that two folders always end up comparable:

- **Files**: every ``*.png``, ``*.jpg`` and ``*.jpeg`` (any case) directly in the folder (not in
  sub-folders), in sorted order of their file names (Python string order, so ``img10`` comes before
  ``img2``: zero-pad the numbers if the order matters). Other files (and hidden ``.`` files) are ignored.
- **Colour mode**: each image is converted to ``"L"`` (1 channel) or ``"RGB"`` (3 channels), chosen
  by ``mode``; default the mode of ``like`` (the training set: C = 1 -> ``"L"``, C = 3 -> ``"RGB"``),
  else that of the first image (grey-level modes ``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F`` -> ``"L"``,
  anything else -> ``"RGB"``). Conversions are PIL's ``Image.convert``: RGB -> L is the ITU-R 601-2
  luma ``L = 0.299 R + 0.587 G + 0.114 B``, L -> RGB repeats the grey level, an alpha channel is
  dropped (not composited), palette images are expanded. 16/32-bit integer grey images are scaled
  from [0, 65535]; 32-bit float (``F``) ones are read as [0, 1] when their maximum is <= 1, else as 0..255.
- **Size**: each image is resized to ``size = (H, W)`` without keeping its aspect ratio (a square
  target stretches a non-square image); default the size of ``like`` (H, W of the training images),
  else that of the first image. ``resample="bicubic"`` (default, PIL ``BICUBIC``) or ``"area"``
  (PIL ``BOX``: each output pixel is the area-weighted mean of the input pixels it covers, the
  right choice for strong down-sampling), ``"bilinear"``, ``"lanczos"`` or ``"nearest"``. Images
  already at the target size are not resampled.
- **Values**: 8-bit levels v in 0..255 become ``v / 127.5 - 1`` in [-1, 1], float32, so that a
  folder written from memgeo's [-1, 1] images reads back to within half a level (1/255).

Returns ``(images (N, C, H, W) float32, names)`` with the file names (not paths) in load order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memgeo.errors import MemgeoError, check_choice, check_scalar

__all__ = ["IMAGE_SUFFIXES", "RESAMPLING", "SampleSet", "image_mode_of", "list_images", "load_image_folder",
           "load_sample_set"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RESAMPLING = ("bicubic", "area", "bilinear", "lanczos", "nearest")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "La")


def list_images(folder: str | os.PathLike[str], name: str = "image folder") -> list[Path]:
    """The PNG/JPEG files directly in ``folder``, sorted by file name.

    Raises
    ------
    MemgeoError
        ``folder`` is missing, not a folder, or holds no PNG/JPEG file.
    """
    path = Path(folder)
    if not path.exists():
        raise MemgeoError(f"{name} {path} does not exist", "check the path")
    if not path.is_dir():
        raise MemgeoError(f"{name} {path} is not a folder", "pass a folder of PNG/JPEG images or a .npy file")
    files = sorted((p for p in path.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.name)
    if not files:
        raise MemgeoError(f"{name} {path} holds no PNG/JPEG image",
                          f"put image files ending in {', '.join(IMAGE_SUFFIXES)} directly in the folder")
    return files


def image_mode_of(pil_mode: str) -> str:
    """``"L"`` for PIL's grey-level modes (``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``), ``"RGB"`` otherwise."""
    return "L" if pil_mode in _GREY_MODES else "RGB"


def _like_policy(like: Any) -> tuple[str, tuple[int, int]]:
    """(mode, (H, W)) of an image batch ``like`` of shape (N, C, H, W) with C in {1, 3}."""
    shape = tuple(int(s) for s in getattr(like, "shape", ()))
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise MemgeoError(f"like has shape {shape}, not images (N, C, H, W) with C = 1 or 3",
                          "pass the training images as like, or give mode and size explicitly")
    return ("L" if shape[1] == 1 else "RGB"), (shape[2], shape[3])


def _open(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MemgeoError(f"cannot read image {path} ({type(exc).__name__}: {exc})",
                          "remove the file or replace it with a valid PNG/JPEG") from exc
    return img


def _to_array(img: Any, mode: str, size: tuple[int, int], resample: str) -> np.ndarray:
    """One PIL image -> float32 (C, H, W) in [-1, 1] following the module's policy."""
    from PIL import Image

    filters = {"bicubic": Image.Resampling.BICUBIC, "area": Image.Resampling.BOX,
               "bilinear": Image.Resampling.BILINEAR, "lanczos": Image.Resampling.LANCZOS,
               "nearest": Image.Resampling.NEAREST}
    h, w = size
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit grey: PIL's convert("L") would clip; scale from [0, 65535] to 8-bit levels as float.
        levels = np.asarray(img, dtype=np.float64)
        if img.mode != "F":
            levels = levels / 65535.0 * 255.0
        elif levels.size and levels.max() <= 1.0:
            levels = levels * 255.0
        grey = Image.fromarray(np.clip(levels, 0, 255).astype(np.float32))
        if grey.size != (w, h):
            grey = grey.resize((w, h), filters[resample])
        arr = np.clip(np.asarray(grey, dtype=np.float32), 0, 255)[None]
        if mode == "RGB":
            arr = np.repeat(arr, 3, axis=0)
    else:
        conv = img.convert(mode)
        if conv.size != (w, h):
            conv = conv.resize((w, h), filters[resample])
        arr = np.asarray(conv, dtype=np.float32)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return (arr / np.float32(127.5) - np.float32(1.0)).astype(np.float32)


def load_image_folder(folder: str | os.PathLike[str], *, mode: str | None = None,
                      size: int | Sequence[int] | None = None, resample: str = "bicubic",
                      like: Any = None, name: str = "image folder") -> tuple[np.ndarray, list[str]]:
    """Load a folder of PNG/JPEG images of any sizes and modes into one array, by the module's policy.

    Parameters
    ----------
    folder : path
        Folder with the images directly in it.
    mode : {"L", "RGB"}, optional
        Target colour mode; default ``like``'s (C = 1 -> L, 3 -> RGB), else the first image's.
    size : int or (int, int), optional
        Target (H, W) (an int means square); default ``like``'s (H, W), else the first image's.
    resample : {"bicubic", "area", "bilinear", "lanczos", "nearest"}, default "bicubic"
        PIL filter used when an image is not already at the target size.
    like : array or tensor, shape (N, C, H, W), optional
        Images (e.g. the training set) whose mode and size are the defaults.
    name : str
        How to name the folder in error messages (e.g. ``"--gen"``).

    Returns
    -------
    images : numpy.ndarray, shape (N, C, H, W), float32
        Values in [-1, 1] (``v / 127.5 - 1`` for 8-bit levels v).
    names : list of str
        File names in load (sorted) order.

    Raises
    ------
    MemgeoError
        Missing/empty folder, unreadable image, bad ``mode``/``size``/``resample``, or ``like`` that
        is not an image batch when a default must come from it.
    """
    check_choice(resample, RESAMPLING, "resampling filter")
    if mode is not None:
        check_choice(mode, ("L", "RGB"), "image mode")
    if size is not None:
        hw = (size, size) if isinstance(size, (int, np.integer)) and not isinstance(size, bool) else tuple(size)
        if len(hw) != 2:
            raise MemgeoError(f"size={size!r} is not (H, W)", "pass size as an int or a pair (H, W)")
        size = (check_scalar(hw[0], "size H", min=1), check_scalar(hw[1], "size W", min=1))
    files = list_images(folder, name)
    if like is not None and (mode is None or size is None):
        like_mode, like_size = _like_policy(like)
        mode = mode or like_mode
        size = size or like_size
    first = _open(files[0])
    mode = mode or image_mode_of(first.mode)
    size = size or (first.size[1], first.size[0])
    out = np.empty((len(files), 1 if mode == "L" else 3, size[0], size[1]), dtype=np.float32)
    for i, path in enumerate(files):
        img = first if i == 0 else _open(path)
        out[i] = _to_array(img, mode, size, resample)
        img.close()
    return out, [p.name for p in files]


@dataclass
class SampleSet:
    """A resolved set of samples.

    Attributes
    ----------
    x : numpy.ndarray, shape (N, ...)
        The samples (a read-only memory map for ``.npy`` input; float32 (N, C, H, W) in [-1, 1] for
        image folders; as given for arrays; float32 from generators).
    names : list of str or None
        File names for image folders, else ``None``.
    kind : {"npy", "folder", "array", "generator"}
        Where the samples came from.
    source : str
        The path, or a short description.
    """

    x: np.ndarray
    names: list[str] | None = None
    kind: str = "array"
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`x`."""
        return tuple(int(s) for s in self.x.shape)

    @property
    def is_image(self) -> bool:
        """Whether the samples are images (N, C, H, W) with C in {1, 3}."""
        return self.x.ndim == 4 and self.x.shape[1] in (1, 3)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self.x, dtype=dtype)


def as_sample_array(x: Any, name: str) -> np.ndarray:
    """A tensor or array-like of samples as a real-valued numpy array (half precision widened to float32)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        x = t.numpy()
    arr = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise MemgeoError(f"{name} has non-numeric dtype {arr.dtype}", "pass real-valued samples")
    if arr.ndim == 0:
        raise MemgeoError(f"{name} is a scalar (0-D)", "pass a batch of samples with shape (N, ...)")
    return arr


def load_sample_set(spec: Any, *, like: Any = None, name: str = "samples", n: int | None = None,
                    mode: str | None = None, size: int | Sequence[int] | None = None,
                    resample: str = "bicubic") -> SampleSet:
    """Resolve one sample set (train, held-out or generated) from any supported input.

    Parameters
    ----------
    spec : path, numpy.ndarray, torch.Tensor, SampleSet or callable
        - a path to a ``.npy`` file: opened memory-mapped (``numpy.load(mmap_mode="r")``), not loaded;
        - a path to a folder of PNG/JPEG images: :func:`load_image_folder` (policy in the module notes);
        - an array or tensor of shape (N, ...) (tensors are moved to the CPU as numpy);
        - a generator callable ``f(n) -> samples`` (array or tensor with ``n`` rows), called once with ``n``.
    like : array, tensor or SampleSet, shape (N, ...), optional
        The reference set (normally train): image folders take their default mode and size from it
        (when it holds images), and every input must have its per-sample shape.
    name : str, default "samples"
        How to name this input in messages (e.g. ``"--gen"``).
    n : int, optional
        Number of samples to draw; required for a callable, ignored otherwise.
    mode, size, resample
        Image-folder options (see :func:`load_image_folder`).

    Returns
    -------
    SampleSet

    Raises
    ------
    MemgeoError
        Unsupported input type, missing file, a callable without ``n`` or returning the wrong number
        of samples, non-numeric data, no samples, or a per-sample shape different from ``like``'s.
    """
    like_x = like.x if isinstance(like, SampleSet) else like
    if isinstance(spec, SampleSet):
        out = spec
    elif isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if path.is_dir():
            like_images = like_x if like_x is not None and len(getattr(like_x, "shape", ())) == 4 \
                and like_x.shape[1] in (1, 3) else None
            x, names = load_image_folder(path, mode=mode, size=size, resample=resample, like=like_images, name=name)
            out = SampleSet(x, names, "folder", str(path),
                            {"mode": "L" if x.shape[1] == 1 else "RGB", "size": list(x.shape[2:]), "resample": resample})
        elif path.suffix.lower() == ".npy":
            from memgeo.data.neighbors import load_reference

            load_reference(path, name)  # the one-line errors for missing/unreadable files
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            out = SampleSet(as_sample_array(arr, name), None, "npy", str(path))
        elif not path.exists():
            raise MemgeoError(f"{name} {path} does not exist", "pass a .npy file or a folder of PNG/JPEG images")
        else:
            raise MemgeoError(f"{name} {path} is neither a .npy file nor a folder",
                              "pass a .npy file (numpy.save) or a folder of PNG/JPEG images")
    elif isinstance(spec, (np.ndarray, torch.Tensor)):
        out = SampleSet(as_sample_array(spec, name), None, "array", f"{type(spec).__name__} {tuple(spec.shape)}")
    elif callable(spec):
        if n is None:
            raise MemgeoError(f"{name} is a generator callable but no number of samples was given",
                              "pass n (how many samples to draw)")
        n = check_scalar(n, "n", min=1)
        try:
            drawn = spec(n)
        except MemgeoError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's callable: report it in one line
            raise MemgeoError(f"{name} generator failed: {type(exc).__name__}: {exc}",
                              "check that the callable takes n and returns an array of n samples") from exc
        arr = as_sample_array(drawn, name)
        if arr.shape[0] != n:
            raise MemgeoError(f"{name} generator returned {arr.shape[0]} samples for n={n}",
                              "make the callable return exactly n samples (first axis)")
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        out = SampleSet(arr, None, "generator", getattr(spec, "__qualname__", type(spec).__name__), {"n": n})
    else:
        raise MemgeoError(f"{name} is a {type(spec).__name__}",
                          "pass a path to a .npy file or an image folder, an array/tensor, or a callable f(n)")
    if len(out) == 0:
        raise MemgeoError(f"{name} holds no samples", "pass at least one sample")
    if like_x is not None:
        want = tuple(int(s) for s in like_x.shape[1:])
        if out.shape[1:] != want:
            raise MemgeoError(f"{name} samples have shape {out.shape[1:]} but the reference set's have {want}",
                              "pass samples of the training set's shape (image folders are resized to it)")
    return out
