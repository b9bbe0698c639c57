"""One loader for every model the command line and the workflows accept: :func:`load`.

``load(spec_or_folder)`` looks at what it is given and returns a :class:`DiffusionModel`:

========================================  ==========================================================
``empirical:DATA.npy``                    :class:`EmpiricalMixtureScore`, exact score of the points (N, D)
``gaussian:MEAN.npy,COV.npy``             :class:`GaussianScore`, analytic score of N(mean, cov)
memgeo checkpoint folder, or its          by the config key in the safetensors metadata: a label
``model.safetensors``                     diffusion net (:func:`load_model`), a caption model
                                          (:func:`load_caption_model`) or a generator of any family
                                          (``<family>_config``: :func:`load_generator`, a
                                          :class:`~memgeo.models.generators.Generator`); a
                                          classifier is refused
diffusers pipeline folder, or its         by ``_class_name``: Stable Diffusion 1.x/2.x-style
``model_index.json``                      (unet + text_encoder + tokenizer + scheduler)
                                          -> :class:`DiffusersPromptModel`; ``StableDiffusionXLPipeline``
                                          -> ``DiffusersSDXLModel``; ``StableDiffusion3Pipeline``
                                          -> ``DiffusersFlowModel``
========================================  ==========================================================

The pipeline adapters are imported only when a pipeline folder is loaded (they pull in diffusers
and transformers). :func:`load_model_spec` and :func:`load_prompt_model` are the deprecated names of
the two loaders this one replaced.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import AfterValidator

from memgeo.errors import MemgeoError, check_finite
from memgeo.models.base import DiffusionModel
from memgeo.models.caption import CONFIG_KEY as CAPTION_KEY
from memgeo.models.caption import load_caption_model
from memgeo.models.checkpoint import MODEL_FILE, load_model, read_metadata
from memgeo.models.classifier import CLASSIFIER_FILE
from memgeo.models.classifier import CONFIG_KEY as CLASSIFIER_KEY
from memgeo.models.families import generator_family_in, load_generator
from memgeo.models.generators import Generator
from memgeo.models.prompt import PromptDiffusionModel
from memgeo.models.reference import EmpiricalMixtureScore, GaussianScore

MODEL_SPECS = (
    "PATH (memgeo checkpoint folder: label or caption model, or a vae/gsvae/gan/wgan-gp/sd2015 generator)",
    "PATH (diffusers pipeline folder: Stable Diffusion 1.x/2.x, SDXL or SD3)",
    "empirical:DATA.npy",
    "gaussian:MEAN.npy,COV.npy",
)
"""The kinds of ``--model`` value :func:`load` accepts, for help texts and error messages."""

INDEX_FILE = "model_index.json"
LABEL_CONFIG_KEY = "model_config"

# Pipelines of the Stable Diffusion 1.x/2.x layout: these components, plus any of the optional ones.
SD_COMPONENTS = frozenset({"unet", "text_encoder", "tokenizer", "scheduler"})
SD_OPTIONAL = frozenset({"vae", "safety_checker", "feature_extractor", "image_encoder"})
# _class_name -> (module, class) of the adapters with their own layout.
PIPELINE_CLASSES = {
    "StableDiffusionPipeline": ("memgeo.models.pipeline", "DiffusersPromptModel"),
    "StableDiffusionXLPipeline": ("memgeo.models.pipeline_sdxl", "DiffusersSDXLModel"),
    "StableDiffusion3Pipeline": ("memgeo.models.pipeline_flow", "DiffusersFlowModel"),
}
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _kinds() -> str:
    return "; ".join(MODEL_SPECS)


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``None`` (keep the stored dtype), a name in :data:`DTYPES` or one of those torch dtypes."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name not in DTYPES:
            raise MemgeoError(f"unknown dtype {dtype!r}", f"use one of: {', '.join(DTYPES)}")
        return DTYPES[name]
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    raise MemgeoError(f"dtype {dtype!r} is not a supported floating dtype", f"use one of: {', '.join(DTYPES)}")


def dtype_name(value: str) -> str:
    """Validate a dtype name for configs: ``"float32"``, ``"bfloat16"``, ... (``"torch.float16"`` accepted)."""
    return str(resolve_dtype(value)).removeprefix("torch.")


#: A config field holding a dtype name, validated and normalised by :func:`dtype_name`.
DTypeName = Annotated[str, AfterValidator(dtype_name)]


# --- SPEC strings ----------------------------------------------------------------------------------
def _load_array(path: str, what: str) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        raise MemgeoError(f"{what} file {p} does not exist", "check the path in the model SPEC")
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise MemgeoError(f"{what} file {p} is not a readable .npy array ({exc})", "save it with numpy.save") from exc
    if not isinstance(arr, np.ndarray) or not (np.issubdtype(arr.dtype, np.integer)
                                               or np.issubdtype(arr.dtype, np.floating)):
        raise MemgeoError(f"{what} file {p} does not hold real numbers", "save a float array with numpy.save")
    t = torch.as_tensor(np.asarray(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32))
    check_finite(t, f"{what} file {p}")
    return t


def _load_reference(spec: str) -> DiffusionModel:
    kind, _, rest = spec.partition(":")
    if kind == "empirical":
        data = _load_array(rest, "empirical data")
        if data.ndim != 2:
            raise MemgeoError(f"empirical data must be (N, D), got shape {tuple(data.shape)}", "reshape to one point per row")
        return EmpiricalMixtureScore(data)
    parts = rest.split(",")
    if len(parts) != 2:
        raise MemgeoError(f"bad gaussian SPEC {spec!r}", "use gaussian:MEAN.npy,COV.npy")
    return GaussianScore(_load_array(parts[0], "mean"), _load_array(parts[1], "covariance"))


# --- memgeo checkpoints ----------------------------------------------------------------------------
def _load_checkpoint(path: Path) -> DiffusionModel | Generator:
    """A memgeo ``.safetensors`` file, by the config key in its metadata."""
    meta = read_metadata(path)  # missing or corrupt file: a clear MemgeoError
    if LABEL_CONFIG_KEY in meta:
        return load_model(path)
    if CAPTION_KEY in meta:
        return load_caption_model(path)
    if generator_family_in(meta) is not None:
        return load_generator(path)
    if CLASSIFIER_KEY in meta:
        raise MemgeoError(f"{path} is a digit classifier, not a diffusion model",
                          "point --model at a diffusion model checkpoint or pipeline folder")
    raise MemgeoError(f"{path} has no memgeo model config in its metadata (is it a memgeo checkpoint?)",
                      "point --model at a folder written by memgeo train or train_caption_model")


# --- diffusers pipeline folders --------------------------------------------------------------------
def _read_index(folder: Path) -> dict:
    path = folder / INDEX_FILE
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MemgeoError(f"{path} is not readable JSON ({str(exc).splitlines()[0]})",
                          "restore the pipeline folder (save_pretrained writes it)") from exc
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise MemgeoError(f"{path} has no _class_name", "restore the pipeline folder (save_pretrained writes it)")
    return index


def pipeline_adapter(index: dict) -> tuple[str, str]:
    """(module, class) of the memgeo adapter for a ``model_index.json`` dict.

    Known ``_class_name`` values map through :data:`PIPELINE_CLASSES`; any other pipeline whose
    non-empty components are exactly Stable Diffusion's (:data:`SD_COMPONENTS`, plus optional
    :data:`SD_OPTIONAL`) is loaded as a Stable Diffusion pipeline.
    """
    name = index["_class_name"]
    if name in PIPELINE_CLASSES:
        return PIPELINE_CLASSES[name]
    components = {k for k, v in index.items()
                  if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is not None}
    if SD_COMPONENTS <= components and not components - SD_COMPONENTS - SD_OPTIONAL:
        return PIPELINE_CLASSES["StableDiffusionPipeline"]
    raise MemgeoError(f"pipeline class {name!r} is not supported",
                      f"use one of: {', '.join(PIPELINE_CLASSES)} (or a pipeline with unet, text_encoder, tokenizer "
                      "and scheduler only)")


def _load_pipeline(folder: Path, device: str | torch.device, dtype: torch.dtype | None,
                   fused_attention: bool) -> DiffusionModel:
    module_name, _ = pipeline_adapter(_read_index(folder))
    # Imported here, not at the top: the adapters pull in diffusers and transformers.
    if module_name == "memgeo.models.pipeline":
        from memgeo.models.pipeline import DiffusersPromptModel as adapter
    elif module_name == "memgeo.models.pipeline_sdxl":
        from memgeo.models.pipeline_sdxl import DiffusersSDXLModel as adapter
    else:
        from memgeo.models.pipeline_flow import DiffusersFlowModel as adapter
    kwargs = {} if dtype is None else {"dtype": dtype}
    return adapter.from_folder(folder, device=device, fused_attention=fused_attention, **kwargs)


# --- the loader ------------------------------------------------------------------------------------
def load(spec_or_folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
         *, fused_attention: bool = False) -> DiffusionModel | Generator:
    """Load any model memgeo knows, dispatching on what ``spec_or_folder`` is (see the module table).

    Parameters
    ----------
    spec_or_folder : str or Path
        A SPEC string (``empirical:...``, ``gaussian:...``), a folder (memgeo checkpoint or diffusers
        pipeline) or a file inside one (``model.safetensors``, ``model_index.json``).
    device : str or torch.device
    dtype : torch.dtype, str or None
        ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"float64"`` or the torch dtype; ``None`` keeps
        the stored dtype (float32 for checkpoints and pipelines, the file's for SPEC arrays).
    fused_attention : bool
        Pipelines only: fused attention kernels (faster, first-order gradients only); see
        :class:`~memgeo.models.pipeline.DiffusersPromptModel`.

    Returns
    -------
    DiffusionModel or Generator
        In eval mode without parameter gradients (SPEC references have no parameters); a generator
        checkpoint (``memgeo train --family vae|gsvae|gan|wgan-gp|sd2015``) gives its family's
        :class:`~memgeo.models.generators.Generator`.

    Raises
    ------
    MemgeoError
        Unknown SPEC kind, missing or unreadable files, a classifier checkpoint, an unsupported
        pipeline class or a bad ``dtype``.
    """
    dt = resolve_dtype(dtype)
    text = str(spec_or_folder)
    p = Path(spec_or_folder)
    if isinstance(spec_or_folder, str) and text.split(":", 1)[0] in ("empirical", "gaussian"):
        model = _load_reference(text)
    elif p.is_dir() and (p / INDEX_FILE).is_file():
        return _load_pipeline(p, device, dt, fused_attention)
    elif p.is_file() and p.name == INDEX_FILE:
        return _load_pipeline(p.parent, device, dt, fused_attention)
    elif p.is_dir():
        if (p / MODEL_FILE).is_file():
            model = _load_checkpoint(p / MODEL_FILE)
        elif (p / CLASSIFIER_FILE).is_file():
            raise MemgeoError(f"{p} holds a digit classifier, not a diffusion model",
                              "point --model at a diffusion model checkpoint or pipeline folder")
        else:
            raise MemgeoError(f"folder {p} has no {MODEL_FILE} or {INDEX_FILE}: it is neither a memgeo checkpoint "
                              "nor a diffusers pipeline folder", f"--model takes: {_kinds()}")
    elif p.suffix == ".safetensors":
        model = _load_checkpoint(p)  # a missing file: "does not exist"
    elif ":" in text and not p.exists():
        raise MemgeoError(f"unknown model SPEC kind {text.split(':', 1)[0]!r}", f"use one of: {_kinds()}")
    elif not p.exists():
        raise MemgeoError(f"model {text!r} does not exist and is neither a checkpoint folder nor a known SPEC",
                          f"use one of: {_kinds()}")
    else:
        raise MemgeoError(f"model file {p} is neither a checkpoint folder nor a known SPEC", f"use one of: {_kinds()}")
    return model.to(device=device, dtype=dt) if dt is not None else model.to(device)


# --- deprecated names ------------------------------------------------------------------------------
def load_model_spec(spec: str, device: str | torch.device = "cpu") -> DiffusionModel:
    """Deprecated: use :func:`load` (same result for every SPEC it accepted)."""
    warnings.warn("load_model_spec is deprecated; use memgeo.models.load", DeprecationWarning, stacklevel=2)
    return load(spec, device)


def load_prompt_model(path: str | Path, device: str | torch.device = "cpu") -> PromptDiffusionModel:
    """Deprecated: use :func:`load`; this one also checks that the model is a prompt model."""
    warnings.warn("load_prompt_model is deprecated; use memgeo.models.load", DeprecationWarning, stacklevel=2)
    model = load(path, device)
    if not isinstance(model, PromptDiffusionModel):
        raise MemgeoError(f"{path} is a {type(model).__name__}, not a prompt-conditioned model",
                          "pass a caption checkpoint or a diffusers pipeline folder")
    return model


__all__ = ["DTYPES", "MODEL_SPECS", "PIPELINE_CLASSES", "load", "load_model_spec", "load_prompt_model",
           "pipeline_adapter", "resolve_dtype"]
