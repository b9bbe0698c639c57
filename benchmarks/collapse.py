"""Model collapse: simulator speed, theory checks, and the MLP diffusion model retrained on its own samples.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/collapse.py speed --threads 1 --json benchmarks/results/collapse_speed.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/collapse.py neural --threads 1 --out runs/collapse_neural \
        --json benchmarks/results/collapse_neural.json

``speed``: wall time of 10,000 runs x 100 generations of the 1-D Gaussian (replace loop, MLE, n = 100)
through :func:`memgeo.collapse.simulate` -- with every closed-form metric recorded each generation
(log-variance, trace, W2, KL, held-out NLL, tail mass, ...) and with the log-variance alone -- plus
a 2-D run, median of ``--repeats``; then the acceptance checks against theory (z-scores of simulated
means) and the schedule comparison.

``neural``: the MLP diffusion model on the 4-blob 2-D mixture (``memgeo collapse --config`` form),
replace and accumulate loops with fixed n, per generation covariance trace ratio, energy distance to
held-out real data, kNN precision/recall, copy rate, sharpness and FLIPD LID of generated samples.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import Contention, add_run_args, markdown_table, median, start_run, write_json
from scipy.special import psi

from memgeo.collapse import (CategoricalFamily, GaussianFamily, accumulate_mean_sq_dist, expected_log_var,
                             gini_simpson_replace, simulate)


def _z(values: np.ndarray, expected: float) -> float:
    return float((values.mean() - expected) / (values.std(ddof=1) / np.sqrt(values.size)))


def speed(args: argparse.Namespace) -> dict:
    rows = []
    cases = [("1-D, all closed-form metrics", 1, None), ("1-D, log-variance only", 1, "log_var"),
             ("2-D, all closed-form metrics", 2, None)]
    for label, dim, only in cases:
        fam = GaussianFamily(dim=dim)
        metrics = (lambda p: {"log_var": np.log(p.cov[:, 0, 0])}) if only else None
        times = []
        for r in range(args.repeats):
            cont = Contention()
            t0 = time.perf_counter()
            hist = simulate(fam, "replace", "constant", 100, 10_000, n=100, seed=args.seed + r, metrics=metrics)
            times.append(time.perf_counter() - t0)
            other = cont.stop()["other_cpus"]
        rows.append({"case": label, "runs": 10_000, "generations": 100, "median_s": median(times),
                     "min_s": min(times), "max_s": max(times), "other_cpus_last": other,
                     "final_mean_log_var": float(hist.metrics["log_var"][-1].mean())})
    print("## Speed: 10,000 runs x 100 generations, Gaussian replace loop, MLE, n = 100\n")
    print(markdown_table(rows, [("case", "case"), ("median_s", "median s"), ("min_s", "min s"), ("max_s", "max s"),
                                ("other_cpus_last", "other CPUs busy"), ("final_mean_log_var", "mean log var, t=100")]))

    checks = []
    hist = simulate(GaussianFamily(), "replace", "constant", 100, 10_000, n=100, seed=args.seed)
    th = 100 * (psi(49.5) + np.log(2 / 100))
    lv = hist.metrics["log_var"][100]
    checks.append({"check": "E log sigma_100^2, replace MLE n=100", "simulated": float(lv.mean()),
                   "se": float(lv.std(ddof=1) / 100), "theory": float(th), "z": _z(lv, th)})
    mart = hist.metrics["mu_dist2_plus_trace"]
    zs = [_z(mart[t], 1.0) for t in range(1, 101)]
    checks.append({"check": "E[(mu_t-mu_0)^2 + sigma_t^2], worst |z| over t=1..100", "simulated":
                   float(mart[100].mean()), "se": float(mart[100].std(ddof=1) / 100), "theory": 1.0,
                   "z": float(max(zs, key=abs))})
    acc = simulate(GaussianFamily(mean_only=True), "accumulate", "constant", 100, 10_000, n=100, seed=args.seed)
    d = 100 * acc.metrics["mean_sq_dist"][100]
    th = float(100 * accumulate_mean_sq_dist([100] * 100)[-1])
    checks.append({"check": "accumulate mean-only: n E(mu_100 - mu_0)^2 (pi^2/6 = 1.645 as T -> inf)",
                   "simulated": float(d.mean()), "se": float(d.std(ddof=1) / 100), "theory": th, "z": _z(d, th)})
    cat = simulate(CategoricalFamily(10), "replace", "constant", 50, 10_000, n=50, seed=args.seed)
    g = cat.metrics["gini_simpson"][50]
    th = float(gini_simpson_replace([50] * 50, 0.9)[-1])
    checks.append({"check": "Gini-Simpson after 50 generations, K=10, n=50: 0.9 (1-1/50)^50", "simulated":
                   float(g.mean()), "se": float(g.std(ddof=1) / 100), "theory": th, "z": _z(g, th)})
    print("\n## Theory checks (10,000 runs)\n")
    print(markdown_table(checks, [("check", "quantity"), ("simulated", "simulated mean"), ("se", "MC se"),
                                  ("theory", "exact"), ("z", "z")]))

    sched_rows = []
    for est, spec in [("unbiased", "constant"), ("unbiased", "linear"), ("unbiased", "power:1.5"),
                      ("unbiased", "power:2"), ("biased", "power:1.5"), ("biased", "power:2.5")]:
        h = simulate(GaussianFamily(estimator=est), "replace", spec, 64, 20_000, n=4, seed=args.seed)
        lv = h.metrics["log_var"]
        mean, _ = expected_log_var(h.sizes, est)
        early, late = lv[2] - lv[4], lv[32] - lv[64]
        sched_rows.append({"estimator": est if est == "unbiased" else "biased (-n^-1/2)", "schedule": spec,
                           "mean_log_var_64": float(lv[64].mean()), "theory_64": float(mean[64]),
                           "loss_2_4": float(early.mean()), "loss_32_64": float(late.mean()),
                           "ratio": float(late.mean() / early.mean())})
    print("\n## Schedules (replace, n_t = 4 t^p, 20,000 runs): log-variance lost per doubling of t\n")
    print(markdown_table(sched_rows, [("estimator", "estimator"), ("schedule", "schedule"),
                                      ("mean_log_var_64", "mean log var t=64"), ("theory_64", "theory"),
                                      ("loss_2_4", "loss t=2..4"), ("loss_32_64", "loss t=32..64"),
                                      ("ratio", "ratio late/early")]))
    return {"speed": rows, "theory_checks": checks, "schedules": sched_rows}


def neural(args: argparse.Namespace) -> dict:
    from memgeo.workflows.collapse import NeuralCollapseConfig, run_neural_collapse

    cfg = NeuralCollapseConfig(dataset=args.dataset, generations=args.generations, n=args.n, steps=args.steps,
                               hidden=args.hidden, depth=args.depth, seed=args.seed, n_eval=args.n_eval,
                               n_geometry=args.n_geometry, n_heldout=args.n_heldout)
    t0 = time.perf_counter()
    run_neural_collapse(cfg, args.out)
    seconds = time.perf_counter() - t0
    import csv

    with open(Path(args.out) / "generations.csv") as fh:
        rows = [{k: (float(v) if k not in ("loop",) and v != "" else (v or None)) for k, v in r.items()}
                for r in csv.DictReader(fh)]
    for r in rows:
        r["generation"] = int(r["generation"])
    print(f"## MLP diffusion on {args.dataset}: {args.generations} generations, n = {args.n}, {args.steps} steps each\n")
    print(markdown_table(rows, [("loop", "loop"), ("generation", "gen"), ("train_size", "train size"),
                                ("trace_ratio", "trace ratio"), ("energy", "energy dist."),
                                ("precision", "precision"), ("recall", "recall"), ("copy_rate_own", "copy rate (own)"),
                                ("copy_rate_real", "copy rate (real)"), ("sharpness", "sharpness"), ("lid", "LID"),
                                ("seconds", "s")]))
    return {"config": cfg.model_dump(), "generations": rows, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["speed", "neural"])
    add_run_args(ap)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/collapse_neural"))
    ap.add_argument("--dataset", default="mixture2d")
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--n-eval", type=int, default=500, help="generated samples per generation for the metrics")
    ap.add_argument("--n-heldout", type=int, default=500)
    ap.add_argument("--n-geometry", type=int, default=32, help="samples whose sharpness and LID are computed")
    args = ap.parse_args()
    machine = start_run(args)
    result = speed(args) if args.what == "speed" else neural(args)
    if args.json:
        write_json(args.json, {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}, **result})


if __name__ == "__main__":
    main()
