"""Diffusion models behind one interface: ``eps(x, t, cond)`` and ``score(x, t, cond)``.

* :class:`VPSchedule`: the noise schedule (continuous t in (0, 1], diffusers mapping);
* trainable nets :class:`MLPEps`, :class:`UNetEps` (configs :class:`MLPConfig`, :class:`UNetConfig`);
* exact references :class:`GaussianScore`, :class:`EmpiricalMixtureScore`;
* :func:`train`, :func:`load_model`, samplers :func:`sample_ddim` / :func:`sample_ddpm`;
* :func:`load` loads every kind of model the CLI accepts (:data:`MODEL_SPECS`): SPEC strings,
  memgeo checkpoints and diffusers pipeline folders (``load_model_spec`` and ``load_prompt_model``
  are its deprecated names);
* prompt models (cond = encoded prompt (B, L, E)): :class:`CaptionDiffusionModel` (trainable,
  :func:`train_caption_model`), :class:`DiffusersPromptModel` (a diffusers pipeline folder);
  :class:`DigitClassifier` for fidelity checks.
"""

from memgeo.models.base import NULL_CLASS, DiffusionModel, guided_eps, noise_difference
from memgeo.models.caption import (
    CaptionDiffusionModel,
    CaptionModelConfig,
    build_vocab,
    load_caption_model,
    save_caption_model,
    train_caption_model,
)
from memgeo.models.checkpoint import load_model, save_model
from memgeo.models.classifier import (
    ClassifierConfig,
    DigitClassifier,
    load_classifier,
    save_classifier,
    train_classifier,
)
from memgeo.models.nets import (
    MLPConfig,
    MLPEps,
    ModelConfig,
    UNetConfig,
    UNetEps,
    build_model,
)
from memgeo.models import prompt as _prompt
from memgeo.models.loading import MODEL_SPECS, load, load_model_spec, load_prompt_model
from memgeo.models.pipeline import DiffusersPromptModel, build_tiny_pipeline
from memgeo.models.prompt import PromptDiffusionModel, TokenBatch
from memgeo.models.reference import EmpiricalMixtureScore, GaussianScore
from memgeo.models.sampling import (
    SAMPLERS,
    SampleResult,
    get_sampler,
    sample_ddim,
    sample_ddpm,
)
from memgeo.models.schedule import DiscreteSchedule, VPSchedule
from memgeo.models.training import TrainConfig, TrainResult, train

# Deprecated import path `from memgeo.models.prompt import load_prompt_model`: bound here because
# prompt.py (the interface) must not import the loader, which imports its implementations.
_prompt.load_prompt_model = load_prompt_model

__all__ = [
    "MODEL_SPECS",
    "NULL_CLASS",
    "SAMPLERS",
    "CaptionDiffusionModel",
    "CaptionModelConfig",
    "ClassifierConfig",
    "DiffusersPromptModel",
    "DiffusionModel",
    "DigitClassifier",
    "DiscreteSchedule",
    "EmpiricalMixtureScore",
    "GaussianScore",
    "MLPConfig",
    "MLPEps",
    "ModelConfig",
    "PromptDiffusionModel",
    "SampleResult",
    "TokenBatch",
    "TrainConfig",
    "TrainResult",
    "UNetConfig",
    "UNetEps",
    "VPSchedule",
    "build_model",
    "build_tiny_pipeline",
    "build_vocab",
    "get_sampler",
    "guided_eps",
    "load",
    "load_caption_model",
    "load_classifier",
    "load_model",
    "load_model_spec",
    "load_prompt_model",
    "noise_difference",
    "sample_ddim",
    "sample_ddpm",
    "save_caption_model",
    "save_classifier",
    "save_model",
    "train",
    "train_caption_model",
    "train_classifier",
]
