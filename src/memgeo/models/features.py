"""Feature spaces for sample-based metrics: pixels, memgeo's own small autoencoders, user models on disk.

One entry point, :func:`extract_features`, maps samples (N, ...) to features (N, F) float32 with an
extractor chosen by name (:data:`FEATURE_EXTRACTORS`), by path, or as an instance, and caches the
result on disk.

Extractors
----------
``"pixels"`` (default)
    The flattened samples themselves (no copy, no cache: a memory map stays a memory map).
``"digits-ae"`` / ``"mnist-ae"``
    The encoder of a small MLP autoencoder trained in-repo, deterministically (fixed seed, CPU,
    float32), on scikit-learn's 8x8 digits (embedded; 64 -> 128 -> 16 codes, ~4 s on one core) or on
    MNIST (needs the IDX files, see :func:`memgeo.data.load_mnist`; 784 -> 256 -> 32 codes, the
    first 20,000 training images). Weights are saved as safetensors in the cache folder
    (``<cache>/models/<name>-v1.safetensors``) on first use and reused afterwards; the extractor's
    :attr:`~FeatureExtractor.id` includes the hash of those weights.
a path to a local file
    :class:`TorchModelFeatures`: a TorchScript file (``torch.jit.save``) or an ``nn.Module`` saved
    whole (``torch.save(model)``; unpickling runs code, so only load files you trust). Nothing is
    downloaded. Inputs in memgeo's [-1, 1] are optionally resized (``resize=(H, W)``, bicubic with
    anti-aliasing), grey images repeated to ``channels=3``, and normalised: ``x01 = (x + 1) / 2``,
    then ``(x01 - mean) / std`` per channel when ``mean``/``std`` are given (e.g. ImageNet's
    ``(0.485, 0.456, 0.406)``/``(0.229, 0.224, 0.225)`` for SSCD or DINOv2 models); the model's
    output (first element of a tuple) is flattened per sample.

Cache
-----
Features are stored as ``<cache>/features/<key>.npy`` with ``key = sha256(extractor id, dtype, shape,
the input's bytes)``, written atomically; ``<cache>`` is ``$MEMGEO_CACHE`` if set, else
``~/.cache/memgeo``. Any change of the input's content or of the extractor (weights, options) gives a
new key. A cache file that cannot be read is recomputed and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from memgeo.data.images import as_sample_array
from memgeo.errors import MemgeoError, Registry, check_scalar
from memgeo.io import atomic_write_bytes, hash_file, write_npy

__all__ = ["CACHE_ENV", "FEATURE_EXTRACTORS", "AutoencoderFeatures", "FeatureExtractor", "PixelFeatures",
           "TorchModelFeatures", "extract_features", "feature_cache_dir", "get_extractor"]

CACHE_ENV = "MEMGEO_CACHE"
_HASH_CHUNK = 1 << 26  # bytes hashed at once


def feature_cache_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache`` if given, else ``$MEMGEO_CACHE``, else ``~/.cache/memgeo``."""
    if cache is not None:
        return Path(cache)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "memgeo"


class FeatureExtractor:
    """Maps samples (N, ...) to features (N, F) float32.

    Subclasses set :attr:`name` and implement :meth:`embed` on a batch tensor; :meth:`__call__`
    feeds batches of ``batch_size`` rows (read one at a time from a memory map) and stacks them.

    Attributes
    ----------
    name : str
        Registry name.
    batch_size : int
        Samples embedded at once.
    """

    name: str = ""
    batch_size: int = 1024

    @property
    def id(self) -> str:
        """A string that changes whenever the features would (name, version, weights, options)."""
        return self.name

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features of one batch.

        Parameters
        ----------
        x : torch.Tensor, shape (B, ...), float32
            Samples as given (images (B, C, H, W) in [-1, 1], or vectors).

        Returns
        -------
        torch.Tensor, shape (B, F)
        """
        raise NotImplementedError

    def __call__(self, x: Any) -> np.ndarray:
        """Features of all samples.

        Parameters
        ----------
        x : numpy.ndarray or torch.Tensor, shape (N, ...)

        Returns
        -------
        numpy.ndarray, shape (N, F), float32
        """
        arr = _as_samples(x)
        outs = []
        with torch.no_grad():
            for s in range(0, arr.shape[0], self.batch_size):
                batch = torch.from_numpy(np.array(arr[s:s + self.batch_size], dtype=np.float32))
                out = self.embed(batch)
                outs.append(out.detach().reshape(out.shape[0], -1).to(torch.float32).cpu().numpy())
        if not outs:
            return np.zeros((0, 0), np.float32)
        feats = np.concatenate(outs)
        if not np.isfinite(feats).all():
            raise MemgeoError(f"feature extractor {self.id} produced NaN/inf features",
                              "check the extractor's input range and options")
        return feats

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"


FEATURE_EXTRACTORS: Registry[Any] = Registry("feature extractor")


def _as_samples(x: Any) -> np.ndarray:
    """Samples as a numpy array: a tensor, an array, or anything with the array in ``.x`` (a SampleSet)."""
    return as_sample_array(x if isinstance(x, (torch.Tensor, np.ndarray)) else getattr(x, "x", x), "samples")


@FEATURE_EXTRACTORS.register
class PixelFeatures(FeatureExtractor):
    """The flattened samples (the default feature space)."""

    name = "pixels"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    def __call__(self, x: Any) -> np.ndarray:
        """``x`` reshaped to (N, D) without copying when it is float32/float64 (a memory map stays one);
        other dtypes become float32."""
        arr = _as_samples(x)
        flat = arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:], dtype=np.int64)))
        return flat if flat.dtype in (np.float32, np.float64) else flat.astype(np.float32)


# --------------------------------------------------------------------------- in-repo autoencoders


class _MLPAutoencoder(nn.Module):
    def __init__(self, dim: int, hidden: int, code: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, code))
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.SiLU(), nn.Linear(hidden, dim), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


_AE_SPECS: dict[str, dict[str, Any]] = {
    "digits-ae": {"shape": (1, 8, 8), "hidden": 128, "code": 16, "epochs": 50, "batch": 64, "lr": 3e-3},
    "mnist-ae": {"shape": (1, 28, 28), "hidden": 256, "code": 32, "epochs": 8, "batch": 128, "lr": 1e-3,
                 "limit": 20_000},
}
_AE_VERSION = "v1"


def _ae_training_data(name: str) -> torch.Tensor:
    if name == "digits-ae":
        from memgeo.data import load_digits

        return load_digits().x.reshape(-1, 64).float()
    from memgeo.data import load_mnist

    return load_mnist(split="train", limit=_AE_SPECS[name]["limit"]).x.reshape(-1, 784).float()


def _train_autoencoder(name: str, seed: int = 0) -> _MLPAutoencoder:
    """Deterministic training: fixed seed, fixed data order, full-batch epochs of shuffled mini-batches."""
    spec = _AE_SPECS[name]
    data = _ae_training_data(name)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _MLPAutoencoder(data.shape[1], spec["hidden"], spec["code"])
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    for _ in range(spec["epochs"]):
        perm = torch.randperm(data.shape[0], generator=gen)
        for s in range(0, data.shape[0], spec["batch"]):
            batch = data[perm[s:s + spec["batch"]]]
            loss = torch.mean((model(batch) - batch) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


class AutoencoderFeatures(FeatureExtractor):
    """Codes of memgeo's small in-repo autoencoder (see the module notes); trained once, then cached.

    Parameters
    ----------
    cache : path, optional
        Cache folder for the weights (default :func:`feature_cache_dir`).
    retrain : bool, default False
        Train again even if cached weights exist (and overwrite them).
    """

    name = "digits-ae"

    def __init__(self, cache: str | os.PathLike[str] | None = None, retrain: bool = False) -> None:
        spec = _AE_SPECS[self.name]
        self.data_shape: tuple[int, ...] = spec["shape"]
        self.dim = int(np.prod(self.data_shape))
        path = feature_cache_dir(cache) / "models" / f"{self.name}-{_AE_VERSION}.safetensors"
        model = None if retrain else _load_ae(path, self.dim, spec)
        if model is None:
            model = _train_autoencoder(self.name)
            from safetensors.torch import save

            tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            atomic_write_bytes(path, save(tensors, metadata={"extractor": self.name, "version": _AE_VERSION}))
        self.model = model
        self.weights_path = path
        # Hash of the weights themselves (the safetensors header's key order is not stable across writes).
        h = hashlib.sha256()
        for key, value in sorted(model.state_dict().items()):
            h.update(key.encode() + b"\0" + value.detach().contiguous().numpy().tobytes())
        self._weights_sha = h.hexdigest()[:16]

    @property
    def id(self) -> str:
        return f"{self.name}:{_AE_VERSION}:{self._weights_sha}"

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise MemgeoError(f"{self.name} takes samples of shape {self.data_shape} ({self.dim} values) but got "
                              f"{tuple(x.shape[1:])}", "pass images of that size (image folders: size=...) "
                              "or choose another feature extractor")
        return flat

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encoder(self._flat(x))

    def reconstruct(self, x: Any) -> np.ndarray:
        """Decoder(encoder(x)), shape (N, *data_shape), float32, in [-1, 1]."""
        arr = torch.from_numpy(np.array(_as_samples(x), dtype=np.float32))
        with torch.no_grad():
            return self.model(self._flat(arr)).reshape(-1, *self.data_shape).numpy()


def _load_ae(path: Path, dim: int, spec: dict[str, Any]) -> _MLPAutoencoder | None:
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        model = _MLPAutoencoder(dim, spec["hidden"], spec["code"])
        model.load_state_dict(state)
    except Exception:  # noqa: BLE001 - a corrupt or foreign cache file is retrained and overwritten
        return None
    return model.eval()


@FEATURE_EXTRACTORS.register
class DigitsAutoencoderFeatures(AutoencoderFeatures):
    """16-D codes of an MLP autoencoder trained on scikit-learn's 8x8 digits (samples (N, 1, 8, 8))."""

    name = "digits-ae"


@FEATURE_EXTRACTORS.register
class MNISTAutoencoderFeatures(AutoencoderFeatures):
    """32-D codes of an MLP autoencoder trained on 20,000 MNIST training images (samples (N, 1, 28, 28));
    needs the MNIST IDX files (``$MEMGEO_DATA``)."""

    name = "mnist-ae"


# --------------------------------------------------------------------------- user models on disk


class TorchModelFeatures(FeatureExtractor):
    """A user's feature model from a local file: TorchScript, or an ``nn.Module`` saved whole.

    Parameters
    ----------
    path : path
        The model file. Tried first with ``torch.jit.load``, then ``torch.load(weights_only=False)``
        (a pickled module: only load files you trust).
    resize : int or (int, int), optional
        Resize inputs to (H, W) (bicubic, anti-aliased) before the model; default: as given.
    channels : {1, 3}, optional
        Repeat grey inputs to 3 channels (``3``) or average RGB to grey (``1``); default: as given.
    mean, std : sequence of float, optional
        Per-channel normalisation of ``x01 = (x + 1) / 2`` (both or neither); without them the model
        gets ``x`` in [-1, 1] unchanged.
    batch_size : int, default 64
    """

    name = "path"

    def __init__(self, path: str | os.PathLike[str], *, resize: int | Sequence[int] | None = None,
                 channels: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, batch_size: int = 64) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MemgeoError(f"feature model file {self.path} does not exist",
                              "pass a local TorchScript or torch.save(model) file (nothing is downloaded)")
        self.batch_size = check_scalar(batch_size, "batch_size", min=1)
        if resize is not None:
            hw = (resize, resize) if isinstance(resize, int) else tuple(resize)
            if len(hw) != 2:
                raise MemgeoError(f"resize={resize!r} is not (H, W)", "pass resize as an int or a pair (H, W)")
            resize = (check_scalar(hw[0], "resize H", min=1), check_scalar(hw[1], "resize W", min=1))
        self.resize = resize
        if channels not in (None, 1, 3):
            raise MemgeoError(f"channels={channels!r} must be 1 or 3", "pass channels=1, channels=3 or leave it unset")
        self.channels = channels
        if (mean is None) != (std is None):
            raise MemgeoError("only one of mean and std given", "pass both (per-channel) or neither")
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]
        if self.std is not None and (len(self.std) != len(self.mean or []) or any(not v > 0 or not math.isfinite(v)
                                                                                   for v in self.std)):
            raise MemgeoError(f"std={std!r} must be positive, one value per mean value", "pass matching mean and std")
        self.model = _load_module(self.path)
        self._sha = hash_file(self.path).hexdigest()[:16]

    @property
    def id(self) -> str:
        opts = json.dumps({"resize": self.resize, "channels": self.channels, "mean": self.mean, "std": self.std},
                          sort_keys=True)
        return f"path:{self._sha}:{opts}"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is not None or self.resize is not None or self.mean is not None:
            if x.ndim != 4:
                raise MemgeoError(f"resize/channels/mean need images (N, C, H, W), got shape {tuple(x.shape)}",
                                  "pass image samples or drop those options")
        if self.channels == 3 and x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        elif self.channels == 1 and x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        if self.resize is not None and tuple(x.shape[2:]) != self.resize:
            x = torch.nn.functional.interpolate(x, size=self.resize, mode="bicubic", antialias=True, align_corners=False)
        if self.mean is not None and self.std is not None:
            if len(self.mean) != x.shape[1]:
                raise MemgeoError(f"mean has {len(self.mean)} values but the images have {x.shape[1]} channels",
                                  "pass one mean/std value per channel (or set channels)")
            m = torch.tensor(self.mean).reshape(1, -1, 1, 1)
            s = torch.tensor(self.std).reshape(1, -1, 1, 1)
            x = ((x + 1) / 2 - m) / s
        try:
            out = self.model(x)
        except Exception as exc:  # noqa: BLE001 - the user's model: one line with the cause
            raise MemgeoError(f"feature model {self.path} failed on input of shape {tuple(x.shape)} "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                              "check resize/channels/mean/std against what the model expects") from exc
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise MemgeoError(f"feature model {self.path} returned a {type(out).__name__}, not a tensor",
                              "wrap the model so that it returns a (N, F) tensor")
        return out.reshape(out.shape[0], -1)


def _load_module(path: Path) -> Any:
    """TorchScript first, then a whole pickled ``nn.Module``; CPU, eval mode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript; it still loads
            return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError):
        pass
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise MemgeoError(f"cannot load feature model {path} ({type(exc).__name__}: {exc})",
                          "save it with torch.jit.save(torch.jit.script(model)) or torch.save(model)") from exc
    if not isinstance(obj, nn.Module):
        raise MemgeoError(f"feature model {path} holds a {type(obj).__name__}, not a model",
                          "save the whole module (torch.save(model)) or a TorchScript file, not a state dict")
    return obj.eval()


# --------------------------------------------------------------------------- resolving and caching


def get_extractor(spec: str | os.PathLike[str] | FeatureExtractor, *, cache: str | os.PathLike[str] | None = None,
                  **options: Any) -> FeatureExtractor:
    """A feature extractor from a registry name, a path to a model file, or an instance (returned as is).

    Parameters
    ----------
    spec : str, path or FeatureExtractor
        ``"pixels"``, ``"digits-ae"``, ``"mnist-ae"`` or a local model file.
    cache : path, optional
        Cache folder for the in-repo autoencoders' weights.
    **options
        For a path: :class:`TorchModelFeatures` options (``resize``, ``channels``, ``mean``, ``std``, ...).

    Raises
    ------
    MemgeoError
        An unknown name that is not an existing file, or bad options.
    """
    if isinstance(spec, FeatureExtractor):
        return spec
    if isinstance(spec, str) and spec in FEATURE_EXTRACTORS:
        cls = FEATURE_EXTRACTORS[spec]
        if issubclass(cls, AutoencoderFeatures):
            options = {"cache": cache, **options}
        return FEATURE_EXTRACTORS.build(spec, **options)
    if isinstance(spec, (str, os.PathLike)) and Path(spec).is_file():
        return TorchModelFeatures(spec, **options)
    raise MemgeoError(f"unknown feature extractor {str(spec)!r} (not a name and not an existing file)",
                      f"choose one of: {', '.join(FEATURE_EXTRACTORS.names())}, or pass a path to a local "
                      "TorchScript / torch.save(model) file")


def content_hash(x: Any, extra: str = "") -> str:
    """sha256 of ``extra``, the dtype, the shape and the bytes of ``x`` (read in chunks of rows)."""
    arr = _as_samples(x)
    h = hashlib.sha256()
    h.update(f"{extra}\0{arr.dtype.str}\0{arr.shape}\0".encode())
    row_bytes = max(1, arr.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
    step = max(1, _HASH_CHUNK // row_bytes)
    for s in range(0, arr.shape[0], step):
        h.update(np.ascontiguousarray(arr[s:s + step]).data)
    return h.hexdigest()


def extract_features(x: Any, extractor: str | os.PathLike[str] | FeatureExtractor = "pixels", *,
                     cache: bool | str | os.PathLike[str] = True, **options: Any) -> np.ndarray:
    """Features of samples ``x``, cached on disk by content hash.

    Parameters
    ----------
    x : numpy.ndarray (memory-mapped or not), torch.Tensor or SampleSet, shape (N, ...)
        The samples.
    extractor : str, path or FeatureExtractor, default "pixels"
        See :func:`get_extractor`.
    cache : bool or path, default True
        ``True``: the default cache folder (:func:`feature_cache_dir`); a path: that folder;
        ``False``: neither read nor write features (autoencoder weights still use the default folder).
        ``"pixels"`` is never cached (it is a view of ``x``).
    **options
        Extractor options (see :func:`get_extractor`).

    Returns
    -------
    numpy.ndarray, shape (N, F)
        float32 (``"pixels"``: ``x``'s float dtype, reshaped without copying).

    Raises
    ------
    MemgeoError
        Unknown extractor, inputs it cannot take, non-numeric samples.
    """
    folder = None if cache is False else feature_cache_dir(None if cache is True else cache)
    ext = get_extractor(extractor, cache=folder, **options)
    if isinstance(ext, PixelFeatures):
        return ext(x)
    if folder is None:
        return ext(x)
    key = content_hash(x, ext.id)
    path = folder / "features" / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            pass  # unreadable: recompute and overwrite
    feats = ext(x)
    write_npy(path, feats)
    return feats
