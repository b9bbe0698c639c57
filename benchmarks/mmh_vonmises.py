"""Manifold-memorization audit on the von Mises circle with an atom (Ross et al.'s toy).

Training data: 1,000 points on the unit circle (von Mises angles, LID 1), one atom repeated 100
times at the centre (LID 0) and 5 single isolated points. An unconditional MLP is trained, 1,000
samples are drawn, each is assigned to the atom / an isolated point / the circle by distance
(< 0.05), and the MMH audit labels them with FLIPD at several t0 and local PCA (k = 20) on the
training set.

Usage::

    .venv/bin/python benchmarks/mmh_vonmises.py [--steps 4000] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from memgeo.data import von_mises_with_atom
from memgeo.geometry.lid import FLIPD, LocalPCA
from memgeo.memorization.mmh import MMH_LABELS, MMHThresholds, mmh_audit
from memgeo.models import MLPConfig, TrainConfig, sample_ddim, train
from memgeo.workflows.lid_runs import reference_typical_lid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--t0", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = von_mises_with_atom(seed=0)
    res = train(MLPConfig(data_shape=(2,), hidden=256, depth=3),
                TrainConfig(steps=args.steps, batch_size=256, lr=1e-3, log_every=1000), ds.x, None, None, progress=False)
    x0 = sample_ddim(res.model, torch.randn(args.n_samples, 2, generator=torch.Generator().manual_seed(1)), steps=100).x0
    atom = torch.as_tensor(ds.x[ds.meta["atom_rows"][0]], dtype=torch.float32)
    iso = torch.as_tensor(ds.meta["isolated"], dtype=torch.float32)
    where = np.where((x0 - atom).norm(dim=1) < 0.05, "atom",
                     np.where(torch.cdist(x0, iso).min(1).values < 0.05, "isolated",
                              np.where((x0.norm(dim=1) - 1).abs() < 0.05, "circle", "other")))
    lpca = LocalPCA(k=20).fit(ds.x)
    lid_data = lpca.estimate(x0).numpy()
    typical = reference_typical_lid(lpca, ds.x)
    out = {"steps": args.steps, "typical_lid_data": typical,
           "samples_per_region": {k: int((where == k).sum()) for k in ("atom", "isolated", "circle", "other")},
           "by_t0": {}}
    for t0 in args.t0:
        lid_model = FLIPD(t0=t0).estimate(res.model, x0).numpy()
        audit = mmh_audit(lid_model, lid_data, MMHThresholds(typical=typical))
        out["by_t0"][str(t0)] = {
            "threshold": audit.model_low,
            "labels": {k: {lab: int(((audit.label == lab) & (where == k)).sum()) for lab in MMH_LABELS}
                       for k in ("atom", "isolated", "circle", "other")},
            "mean_lid_model": {k: float(lid_model[where == k].mean()) for k in ("atom", "circle") if (where == k).any()}}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
