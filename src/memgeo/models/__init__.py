"""Diffusion models behind one interface: ``eps(x, t, cond)`` and ``score(x, t, cond)``.

* :class:`VPSchedule`: the noise schedule (continuous t in (0, 1], diffusers mapping);
* trainable nets :class:`MLPEps`, :class:`UNetEps` (configs :class:`MLPConfig`, :class:`UNetConfig`);
* exact references :class:`GaussianScore`, :class:`EmpiricalMixtureScore`;
* :func:`train`, :func:`load_model`, samplers :func:`sample_ddim` / :func:`sample_ddpm`;
* :func:`load_model_spec` resolves the strings the CLI accepts;
* prompt models (cond = encoded prompt (B, L, E)): :class:`CaptionDiffusionModel` (trainable,
  :func:`train_caption_model`), :class:`DiffusersPromptModel` (a diffusers pipeline folder),
  both loaded by :func:`load_prompt_model`; :class:`DigitClassifier` for fidelity checks.
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
from memgeo.models.pipeline import DiffusersPromptModel, build_tiny_pipeline
from memgeo.models.prompt import PromptDiffusionModel, TokenBatch, load_prompt_model
from memgeo.models.reference import EmpiricalMixtureScore, GaussianScore
from memgeo.models.sampling import (
    SAMPLERS,
    SampleResult,
    get_sampler,
    sample_ddim,
    sample_ddpm,
)
from memgeo.models.schedule import DiscreteSchedule, VPSchedule
from memgeo.models.spec import MODEL_SPECS, load_model_spec
from memgeo.models.training import TrainConfig, TrainResult, train

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
