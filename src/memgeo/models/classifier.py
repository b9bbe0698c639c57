"""A small digit classifier, trained in-repo, to measure whether generations show their prompt's class.

An MLP (``depth`` SiLU layers of width ``hidden``) on flattened images (B, C, H, W) in [-1, 1],
trained with AdamW, a cosine learning rate and Gaussian input noise (so slightly imperfect
generations are still read correctly) on a seeded train/held-out split. It is a fidelity meter for
mitigations, not a research object: :func:`train_classifier` reports the held-out accuracy so its
error bar is known.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from memgeo.errors import MemgeoError, check_finite
from memgeo.models.checkpoint import load_configured_module, pydantic_config_parser, save_tensors

CLASSIFIER_FILE = "classifier.safetensors"
CONFIG_KEY = "classifier_config"


class ClassifierConfig(BaseModel):
    """Architecture and training settings of :class:`DigitClassifier`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_shape: tuple[int, ...]
    num_classes: int = Field(10, ge=2)
    hidden: int = Field(256, ge=8)
    depth: int = Field(2, ge=1)
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    noise: float = Field(0.1, ge=0)  # Gaussian input noise during training: robustness to imperfect samples
    holdout: float = Field(0.2, gt=0, lt=1)
    seed: int = 0


class DigitClassifier(nn.Module):
    """MLP classifier, x (B, *data_shape) -> logits (B, num_classes)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        d = 1
        for s in config.data_shape:
            d *= s
        layers: list[nn.Module] = []
        width = d
        for _ in range(config.depth):
            layers += [nn.Linear(width, config.hidden), nn.SiLU()]
            width = config.hidden
        layers.append(nn.Linear(width, config.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != tuple(self.config.data_shape):
            raise MemgeoError(f"classifier input has per-sample shape {tuple(x.shape[1:])}, expected "
                              f"{tuple(self.config.data_shape)}", "pass images of the training shape")
        return self.net(x.reshape(x.shape[0], -1).to(self.net[0].weight.dtype))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted classes, (B, *data_shape) -> (B,) int64."""
        return self(x).argmax(dim=1)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Fraction of ``x`` predicted as ``y``."""
        return float((self.predict(x) == y.to(torch.long)).float().mean())


@dataclass
class ClassifierResult:
    """A trained classifier with its held-out accuracy."""

    model: DigitClassifier
    train_accuracy: float
    holdout_accuracy: float
    n_train: int
    n_holdout: int
    seconds: float

    def summary(self) -> dict:
        return {"train_accuracy": self.train_accuracy, "holdout_accuracy": self.holdout_accuracy,
                "n_train": self.n_train, "n_holdout": self.n_holdout, "seconds": self.seconds}


def train_classifier(x: torch.Tensor, y: torch.Tensor, config: ClassifierConfig | None = None) -> ClassifierResult:
    """Train on a random (1 - holdout) share of (x, y) and measure accuracy on the rest.

    Parameters
    ----------
    x : Tensor, shape (N, *data_shape)
        Images (distinct ones: duplicates would leak into the held-out split).
    y : Tensor, shape (N,)
        Integer classes in [0, num_classes).
    """
    config = config or ClassifierConfig(data_shape=tuple(x.shape[1:]), num_classes=int(y.max()) + 1)
    check_finite(x, "classifier training images")
    if y.shape != (x.shape[0],) or int(y.min()) < 0 or int(y.max()) >= config.num_classes:
        raise MemgeoError(f"labels must be (N,) integers in [0, {config.num_classes})", "fix the labels")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(x.shape[0], generator=gen)
    n_hold = max(1, round(config.holdout * x.shape[0]))
    hold, tr = perm[:n_hold], perm[n_hold:]
    x = x.float()
    y = y.long()
    torch.manual_seed(config.seed)
    model = DigitClassifier(config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, (len(tr) + config.batch_size - 1) // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs * steps_per_epoch)
    model.train()
    for _ in range(config.epochs):
        order = tr[torch.randperm(len(tr), generator=gen)]
        for i in range(0, len(order), config.batch_size):
            idx = order[i: i + config.batch_size]
            xb = x[idx] + config.noise * torch.randn(x[idx].shape, generator=gen)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval().requires_grad_(False)
    return ClassifierResult(model=model, train_accuracy=model.accuracy(x[tr], y[tr]),
                            holdout_accuracy=model.accuracy(x[hold], y[hold]), n_train=len(tr), n_holdout=n_hold,
                            seconds=time.perf_counter() - t0)


def save_classifier(model: DigitClassifier, folder: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Atomically write ``classifier.safetensors`` (weights + config) into ``folder``."""
    path = Path(folder) / CLASSIFIER_FILE
    save_tensors(path, dict(model.state_dict()), {**(extra_metadata or {}), CONFIG_KEY: model.config.model_dump_json()})
    return path


def load_classifier(folder: str | Path) -> DigitClassifier:
    """Load a classifier saved by :func:`save_classifier` (eval mode, no parameter gradients)."""
    return load_configured_module(folder, CLASSIFIER_FILE, CONFIG_KEY,
                                  pydantic_config_parser(ClassifierConfig, "classifier"), DigitClassifier,
                                  ("is not a memgeo classifier", "train one with train_classifier"))


__all__ = ["ClassifierConfig", "ClassifierResult", "DigitClassifier", "load_classifier", "save_classifier",
           "train_classifier"]
