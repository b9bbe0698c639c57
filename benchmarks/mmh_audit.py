"""Manifold-memorization audit on a model that memorizes by overfitting (expected: OD-Mem).

An unconditional MLP is trained for long on a tiny subset of the 8x8 digits (no duplicates), so it
reproduces its training images. Those images lie on the digits manifold, so LID_data measured on
the FULL digits set stays high while LID_model collapses: the audit should call its copies OD-Mem
(the DD-Mem case, duplicated training images, is part of the digits demo: `memgeo demo`).

Usage::

    .venv/bin/python benchmarks/mmh_audit.py --out runs/mmh_overfit [--n-train 20] [--steps 4000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from memgeo.data import load_digits
from memgeo.geometry import sharpness_spectrum
from memgeo.geometry.lid import FLIPD, LocalPCA
from memgeo.memorization import evaluate_detector, label_copies
from memgeo.memorization.mmh import MMH_LABELS, MMHThresholds, mmh_audit
from memgeo.models import MLPConfig, TrainConfig, sample_ddim, train
from memgeo.workflows.lid_runs import reference_typical_lid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/mmh_overfit"))
    ap.add_argument("--n-train", type=int, default=20)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--n-samples", type=int, default=200)
    ap.add_argument("--t0", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    full = load_digits()
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(full.n, generator=g)[: args.n_train]
    tiny = full.x[idx]
    res = train(MLPConfig(data_shape=(1, 8, 8), hidden=256, depth=3),
                TrainConfig(steps=args.steps, batch_size=min(256, 8 * args.n_train), lr=1e-3, seed=args.seed,
                            checkpoint_every=1000, log_every=500), tiny, None, args.out / "model", progress=True)
    x0 = sample_ddim(res.model, torch.randn(args.n_samples, 1, 8, 8, generator=g), steps=100, clip=(-1.0, 1.0)).x0
    copies = label_copies(x0, tiny)  # copies of the tiny training set
    lid_model = FLIPD(t0=args.t0).estimate(res.model, x0).numpy()
    lpca = LocalPCA().fit(full.x)  # the data distribution: all digits
    lid_data = lpca.estimate(x0).numpy()
    typical = reference_typical_lid(lpca, full.x, seed=args.seed)
    audit = mmh_audit(lid_model, lid_data, MMHThresholds(typical=typical))
    sharp = sharpness_spectrum(res.model, x0, args.t0).sharpness.numpy()
    is_copy = copies.is_copy
    out = {
        "n_train": args.n_train, "steps": args.steps, "t0": args.t0, "final_loss": res.log[-1]["loss"],
        "copy_rate": float(is_copy.mean()), "typical_lid_data": typical,
        "thresholds": {"model_low": audit.model_low, "data_low": audit.data_low},
        "labels_of_copies": {k: int(((audit.label == k) & is_copy).sum()) for k in MMH_LABELS},
        "labels_of_non_copies": {k: int(((audit.label == k) & ~is_copy).sum()) for k in MMH_LABELS},
        "mean_lid_model_copies": float(lid_model[is_copy].mean()) if is_copy.any() else None,
        "mean_lid_data_copies": float(lid_data[is_copy].mean()) if is_copy.any() else None,
        "seconds": time.perf_counter() - t_start,
    }
    if 0 < is_copy.sum() < len(is_copy):
        out["auroc_sharpness"] = evaluate_detector(sharp, is_copy, "sharpness").auroc
        out["auroc_lid_model"] = evaluate_detector(-lid_model, is_copy, "-lid_model").auroc
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mmh_overfit.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
