"""The MLP diffusion model of :mod:`memgeo.models` retrained on its own samples.

Generation 0 is the real training set. Generation 1 is a model trained on it; generation t >= 2 is
trained on ``n`` samples of generation t - 1 (``replace``) or on the real set plus every synthetic
batch so far (``accumulate``). Each generation's samples are measured against held-out real data
(covariance trace, energy distance, kNN precision / recall) and for memorization: copy rate
(:func:`memgeo.memorization.label_copies` against the generation's own training set and against
the real set), sharpness (:func:`memgeo.geometry.sharpness_spectrum`) and LID
(:class:`memgeo.geometry.lid.FLIPD`) of generated samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from memgeo.collapse.metrics import energy_distance, knn_precision_recall
from memgeo.data import load_digits, make_toy2d
from memgeo.errors import MemgeoError, check_choice
from memgeo.geometry import sharpness_spectrum
from memgeo.geometry.lid import FLIPD
from memgeo.memorization import label_copies
from memgeo.models import MLPConfig, TrainConfig, sample_ddim, train

__all__ = ["NEURAL_DATASETS", "NEURAL_LOOPS", "load_real", "recursive_diffusion", "sample_metrics_torch"]

NEURAL_DATASETS = ("mixture2d", "digits")
NEURAL_LOOPS = ("replace", "accumulate")


def load_real(dataset: str, n_train: int, n_heldout: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, heldout) real data: the 4-blob 2-D mixture of :func:`memgeo.data.make_toy2d` (no duplicated
    point) or a random split of the 8x8 digits (1797 images, so n_train + n_heldout <= 1797)."""
    check_choice(dataset, NEURAL_DATASETS, "dataset")
    if dataset == "mixture2d":
        x = make_toy2d(n=n_train + n_heldout, n_duplicates=0, seed=seed).x
    else:
        full = load_digits().x
        if n_train + n_heldout > full.shape[0]:
            raise MemgeoError(f"digits has {full.shape[0]} images, fewer than n_train + n_heldout = "
                              f"{n_train + n_heldout}", "lower n or n_heldout")
        x = full[torch.randperm(full.shape[0], generator=torch.Generator().manual_seed(seed))]
    return x[:n_train], x[n_train:n_train + n_heldout]


def sample_metrics_torch(samples: torch.Tensor, heldout: torch.Tensor, trace0: float) -> dict[str, float]:
    """Distribution metrics of generated ``samples`` (m, ...) against held-out real data (k, ...)."""
    x = samples.reshape(samples.shape[0], -1).double().numpy()
    y = heldout.reshape(heldout.shape[0], -1).double().numpy()
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    evals = np.clip(np.linalg.eigvalsh(cov), 1e-12, None)
    prec, rec = knn_precision_recall(y[None], x[None], k=5)
    return {"trace": float(np.trace(cov)), "trace_ratio": float(np.trace(cov)) / trace0,
            "mean_log_eig": float(np.log(evals).mean()), "mean_norm_dist": float(np.linalg.norm(x.mean(0) - y.mean(0))),
            "energy": float(energy_distance(x[None], y[None])[0]), "precision": float(prec[0]), "recall": float(rec[0])}


def _geometry(model, x: torch.Tensor, sharpness_t: float, lid_t0: float) -> dict[str, float]:
    sharp = sharpness_spectrum(model, x, sharpness_t)
    lid = FLIPD(t0=lid_t0).estimate(model, x)
    return {"sharpness": float(sharp.sharpness.mean()), "n_flat": float(sharp.n_flat.float().mean()),
            "lid": float(lid.mean())}


def recursive_diffusion(real: torch.Tensor, heldout: torch.Tensor, loop: str = "replace", generations: int = 5,
                        *, model_config: MLPConfig | None = None, train_config: TrainConfig | None = None,
                        sample_steps: int = 50, n_eval: int = 500, n_geometry: int = 32,
                        sharpness_t: float = 0.05, lid_t0: float = 0.05, clip: tuple[float, float] | None = None,
                        seed: int = 0, progress: bool = False,
                        on_generation: Callable[[dict, torch.Tensor], None] | None = None) -> list[dict]:
    """Retrain the MLP diffusion model on its own samples for ``generations`` generations.

    Parameters
    ----------
    real : Tensor (n, *data_shape)
        Real training set; every synthetic training batch has the same size n.
    heldout : Tensor (k, *data_shape)
        Real data never trained on (the reference of the distribution metrics).
    loop : {"replace", "accumulate"}
    model_config, train_config : optional
        Defaults: MLP of width 128, depth 2; 2000 steps, batch 256, lr 2e-3.
    n_eval : int
        Samples drawn per generation for the metrics (at least n are drawn: they are the next
        generation's training batch).
    n_geometry : int
        Samples whose sharpness spectrum and FLIPD are computed.
    on_generation : callable(record, samples), optional
        Called after each generation (e.g. to save the samples).

    Returns
    -------
    list of dict
        One record per generation 0..T: loop, generation, train_size, seconds and the metrics.
    """
    check_choice(loop, NEURAL_LOOPS, "neural loop")
    if generations < 1 or n_geometry < 1 or n_eval < 10:
        raise MemgeoError("need generations >= 1, n_geometry >= 1 and n_eval >= 10", "raise them")
    n = real.shape[0]
    shape = tuple(real.shape[1:])
    mcfg = model_config or MLPConfig(data_shape=shape, hidden=128, depth=2)
    tcfg = train_config or TrainConfig(steps=2000, batch_size=256, lr=2e-3, lr_warmup=100, log_every=500)
    if tuple(mcfg.data_shape) != shape:
        raise MemgeoError(f"model data_shape {mcfg.data_shape} differs from the data's {shape}", "fix the config")
    flat = real.reshape(n, -1).double()
    trace0 = float(torch.trace(torch.atleast_2d(torch.cov(flat.T))))
    records = [{"loop": loop, "generation": 0, "train_size": n, "seconds": 0.0,
                **sample_metrics_torch(real, heldout, trace0)}]
    gen = torch.Generator().manual_seed(seed)
    pool, batch = real, real
    for t in range(1, generations + 1):
        t0 = time.perf_counter()
        train_set = batch if loop == "replace" else pool
        res = train(mcfg, tcfg.model_copy(update={"seed": seed + t}), train_set,
                    progress=f"collapse: training generation {t}" if progress else False)
        model = res.model
        m = max(n, n_eval)
        x = sample_ddim(model, torch.randn((m, *shape), generator=gen), steps=sample_steps, clip=clip).x0.detach()
        rec = {"loop": loop, "generation": t, "train_size": int(train_set.shape[0]),
               "final_loss": float(res.log[-1]["loss"]) if res.log else None}
        rec.update(sample_metrics_torch(x[:n_eval], heldout, trace0))
        rec["copy_rate_own"] = float(label_copies(x[:n_eval], train_set).summary()["copy_rate"])
        rec["copy_rate_real"] = float(label_copies(x[:n_eval], real).summary()["copy_rate"])
        rec.update(_geometry(model, x[:n_geometry], sharpness_t, lid_t0))
        rec["seconds"] = time.perf_counter() - t0
        records.append(rec)
        if on_generation is not None:
            on_generation(rec, x)
        batch = x[:n]
        pool = torch.cat([pool, batch])
    return records
