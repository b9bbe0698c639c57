"""Diffusion models behind one interface: ``eps(x, t, cond)`` and ``score(x, t, cond)``.

* :class:`VPSchedule`: the noise schedule (continuous t in (0, 1], diffusers mapping);
* trainable nets :class:`MLPEps`, :class:`UNetEps` (configs :class:`MLPConfig`, :class:`UNetConfig`);
* exact references :class:`GaussianScore`, :class:`EmpiricalMixtureScore`;
* :func:`train`, :func:`load_model`, samplers :func:`sample_ddim` / :func:`sample_ddpm`;
* :func:`load_model_spec` resolves the strings the CLI accepts.
"""

from memgeo.models.base import NULL_CLASS, DiffusionModel, guided_eps
from memgeo.models.checkpoint import load_model, save_model
from memgeo.models.nets import MLPConfig, MLPEps, ModelConfig, UNetConfig, UNetEps, build_model
from memgeo.models.reference import EmpiricalMixtureScore, GaussianScore
from memgeo.models.sampling import SAMPLERS, SampleResult, get_sampler, sample_ddim, sample_ddpm
from memgeo.models.schedule import VPSchedule
from memgeo.models.spec import MODEL_SPECS, load_model_spec
from memgeo.models.training import TrainConfig, TrainResult, train

__all__ = ["NULL_CLASS", "DiffusionModel", "EmpiricalMixtureScore", "GaussianScore", "MLPConfig", "MLPEps",
           "MODEL_SPECS", "ModelConfig", "SAMPLERS", "SampleResult", "TrainConfig", "TrainResult", "UNetConfig",
           "UNetEps", "VPSchedule", "build_model", "get_sampler", "guided_eps", "load_model", "load_model_spec",
           "sample_ddim", "sample_ddpm", "save_model", "train"]
