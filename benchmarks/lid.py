"""Local intrinsic dimension (LID): accuracy and cost of memgeo's estimators on synthetic manifolds.

Usage (each set trains one MLP, about 1-3 minutes on 2 cores; run sets one at a time with --only)::

    .venv/bin/python benchmarks/lid.py --threads 1 --only affine10_r100 --json benchmarks/results/lid.json

(``--threads 1`` when another process holds a core: with 2 threads under contention training was
~15x slower on the 2-core VM.)

``--json`` updates the file: the sets run now replace their entries, the others are kept, so a
sequence of ``--only`` runs builds one JSON.

Per set: the data (true LID per point) are generated with ``--n-per`` points per component plus
``--n-eval`` extra points drawn with them; ``--n-eval`` random rows are held out as query points
and the rest is the training set. An unconditional ``MLPEps`` (hidden = next power of two >=
max(D, 128) unless ``--hidden``, depth 3, ``--prediction eps|x0``) is trained with ``memgeo.models.train`` (EMA weights are used). Estimators on
the held-out points:

* FLIPD, exact trace (dense score Jacobian), at the fixed ``--t0`` and at ``t0="auto"`` (the
  plateau of the batch-mean LID-vs-t0 curve on the default 16-point grid); the curve is reported
  per component;
* FLIPD, Hutchinson (``--probes`` Rademacher probes) at the t0 that "auto" chose;
* FPRegress (default window 0.005-0.1, 8 scales, exact trace);
* NormalBundle (K = 4D noised copies at t0 = 0.01) with the threshold and the largest-gap rule,
  only where D <= 100;
* CFDM on the training set (t0 = 0.05), and the model-free LocalPCA / MLE / TwoNN
  (scikit-dimension, default k) on the training set through one shared KNNIndex, with the held-out
  points as out-of-sample queries.

Scaling: with ``--unit-spread`` (default on) the affine and squiggly latents are uniform on a cube of
side sqrt(12), i.e. unit standard deviation per tangent direction (separation between components =
side). The lollipop keeps its fixed geometry (unit disc, stick to radius 3, atom at (2, 2)).

Cost: ``memgeo.models.counting.CountingModel`` counts batched ``eps`` calls. A ``vmap(jacrev)`` call
counts as one batched call but does one forward and D reverse passes per point, so the table
reports per point "forward evals" and "JVP/VJP products" from the algorithm (checked against the
counter's batched-call count, also reported) and the wall time per point.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import Contention, fmt, machine_facts, machine_line, markdown_table, write_json
from memgeo.data.manifolds import affine_mixture, lollipop, squiggly_mixture, true_lid
from memgeo.geometry.lid import CFDM, FLIPD, MLE, FPRegress, KNNIndex, LocalPCA, NormalBundle, TwoNN
from memgeo.memorization.lid_metrics import concordance_index, lid_mae, per_component_summary
from memgeo.models import MLPConfig, TrainConfig, train
from memgeo.models.counting import CountingModel

UNIT_SIDE = math.sqrt(12.0)  # side of a uniform cube with unit std per coordinate

SETS = {
    "affine10_r100": dict(kind="affine", dims=(10,), ambient=100),
    "affine248_r10": dict(kind="affine", dims=(2, 4, 8), ambient=10),
    "affine102550_r100": dict(kind="affine", dims=(10, 25, 50), ambient=100),
    "squiggly248_r10": dict(kind="squiggly", dims=(2, 4, 8), ambient=10),
    "lollipop_r2": dict(kind="lollipop", dims=(2, 1, 0), ambient=2),
}


def make_data(key: str, args: argparse.Namespace):
    s = SETS[key]
    scale = UNIT_SIDE if args.unit_spread else 1.0
    n_per = args.n_per
    if s["kind"] == "affine":
        n_single = n_per if len(s["dims"]) > 1 else 2 * n_per
        extra = -(-args.n_eval // len(s["dims"]))
        return affine_mixture(s["dims"], s["ambient"], n_single + extra, scale=scale, seed=args.seed)
    if s["kind"] == "squiggly":
        extra = -(-args.n_eval // len(s["dims"]))
        return squiggly_mixture(s["dims"], s["ambient"], n_per + extra, scale=scale, seed=args.seed)
    # lollipop: 2:1 disc:stick plus a 50-copy atom, and held-out points in the same proportions
    return lollipop(n_disc=int(1.3 * n_per), n_stick=int(0.65 * n_per), n_atom=100, seed=args.seed)


def per_point_cost(name: str, d: int, n_t: int, probes: int) -> tuple[int, int]:
    """(forward evals, JVP/VJP products) per point, from the algorithm."""
    if name in ("flipd_exact_fixed",):
        return 1, d
    if name in ("flipd_exact_auto", "fpregress"):
        return n_t, n_t * d
    if name == "flipd_hutchinson":
        return 1, probes
    if name == "normal_bundle":
        return 4 * d, 0
    return 0, 0


def summarize(name: str, est: torch.Tensor, lid: torch.Tensor, comp: torch.Tensor, secs: float, n: int,
              fwd: int | None, prods: int | None, calls: int | None, extra: dict | None = None) -> dict[str, Any]:
    e = est.double().cpu().numpy()
    t = lid.cpu().numpy()
    row = {
        "estimator": name, "mae": lid_mae(e, t),
        "concordance": concordance_index(e, t) if len(np.unique(t)) >= 2 else None,
        "mean": float(np.mean(e)),
        "components": per_component_summary(e, t, comp),
        "ms_per_point": 1e3 * secs / n, "fwd_per_point": fwd, "prods_per_point": prods, "batched_calls": calls,
    }
    if extra:
        row.update(extra)
    return row


def run_set(key: str, args: argparse.Namespace) -> dict[str, Any]:
    ds = make_data(key, args)
    x_all = ds.x.float()
    lid_all = true_lid(ds)
    comp_all = ds.y
    g = torch.Generator().manual_seed(args.seed + 1)
    perm = torch.randperm(x_all.shape[0], generator=g)
    ev, tr = perm[:args.n_eval], perm[args.n_eval:]
    x_tr, x_ev, lid_ev, comp_ev = x_all[tr], x_all[ev], lid_all[ev], comp_all[ev]
    n, d = x_tr.shape
    hidden = args.hidden or max(128, 1 << (max(d, 128) - 1).bit_length())
    mcfg = MLPConfig(data_shape=(d,), hidden=hidden, depth=args.depth, prediction=args.prediction)
    steps = args.steps if args.steps else (args.steps_d100 if d >= 100 else args.steps_small)
    tcfg = TrainConfig(steps=steps, batch_size=args.batch, lr=args.lr, seed=args.seed, checkpoint_every=steps,
                       log_every=max(1, steps // 10))
    t0 = time.perf_counter()
    res = train(mcfg, tcfg, x_tr, progress=False)
    train_s = time.perf_counter() - t0
    final_loss = res.log[-1].get("loss") if res.log else None
    print(f"  trained {key}: N={n} D={d} hidden={hidden} steps={steps} in {train_s:.0f}s, "
          f"final loss {final_loss}", file=sys.stderr, flush=True)
    model = CountingModel(res.model.eval().requires_grad_(False))
    m = x_ev.shape[0]
    rows: list[dict[str, Any]] = []

    def timed(fn):
        model.reset()
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t, model.calls

    # FLIPD exact, fixed t0
    fl = FLIPD(t0=args.t0, trace="exact")
    est, secs, calls = timed(lambda: fl.estimate(model, x_ev))
    fwd, pr = per_point_cost("flipd_exact_fixed", d, 1, args.probes)
    rows.append(summarize(f"FLIPD exact, t0={args.t0}", est, lid_ev, comp_ev, secs, m, fwd, pr, calls,
                          {"t0": args.t0}))
    # FLIPD exact, auto
    fa = FLIPD(t0="auto", trace="exact")
    est, secs, calls = timed(lambda: fa.estimate(model, x_ev))
    n_t = fa.curve_.t0.numel()
    fwd, pr = per_point_cost("flipd_exact_auto", d, n_t, args.probes)
    t_auto = fa.t0_
    rows.append(summarize(f"FLIPD exact, t0=auto ({t_auto:.3g})", est, lid_ev, comp_ev, secs, m, fwd, pr, calls,
                          {"t0": t_auto}))
    curve = fa.curve_
    comps = sorted(set(comp_ev.tolist()))
    curve_rows = []
    for i, tv in enumerate(curve.t0.tolist()):
        r = {"t0": tv, "sigma": float(curve.sigma[i]), "all": float(curve.lid[i].mean())}
        for c in comps:
            r[f"c{c}"] = float(curve.lid[i][comp_ev == c].mean())
        curve_rows.append(r)
    # FLIPD Hutchinson at the auto t0
    fh = FLIPD(t0=t_auto, trace="hutchinson", n_probes=args.probes, seed=args.seed)
    est, secs, calls = timed(lambda: fh.estimate(model, x_ev))
    ci_w = float((fh.result_.ci_high - fh.result_.ci_low).mean())
    fwd, pr = per_point_cost("flipd_hutchinson", d, 1, args.probes)
    rows.append(summarize(f"FLIPD Hutchinson k={args.probes}, t0={t_auto:.3g}", est, lid_ev, comp_ev, secs, m,
                          fwd, pr, calls, {"t0": t_auto, "mean_ci_width": ci_w}))
    # FPRegress
    fp = FPRegress()
    est, secs, calls = timed(lambda: fp.estimate(model, x_ev))
    fwd, pr = per_point_cost("fpregress", d, fp.n_scales, args.probes)
    rows.append(summarize("FPRegress (0.005-0.1, 8 scales)", est, lid_ev, comp_ev, secs, m, fwd, pr, calls))
    # Normal bundle
    if d <= 100:
        for rule in ("threshold", "gap"):
            nb = NormalBundle(t0=0.01, rule=rule, seed=args.seed)
            est, secs, calls = timed(lambda: nb.estimate(model, x_ev))
            fwd, pr = per_point_cost("normal_bundle", d, 1, args.probes)
            rows.append(summarize(f"NormalBundle {rule} (K=4D, t0=0.01)", est, lid_ev, comp_ev, secs, m, fwd, pr,
                                  calls))
    # data-based
    t = time.perf_counter()
    cf = CFDM(t0=0.05).fit(x_tr)
    est = cf.estimate(x_ev)
    rows.append(summarize("CFDM (train data, t0=0.05)", est, lid_ev, comp_ev, time.perf_counter() - t, m,
                          None, None, None))
    index = KNNIndex(x_tr)
    for est_cls, label in ((LocalPCA, "lpca"), (MLE, "mle"), (TwoNN, "twonn")):
        t = time.perf_counter()
        e = est_cls().fit(index=index)
        est = e.estimate(x_ev)
        rows.append(summarize(f"{label} (skdim, k={e.k})", est, lid_ev, comp_ev, time.perf_counter() - t, m,
                              None, None, None))
    return {
        "set": key, "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in SETS[key].items()},
        "n_train": n, "n_eval": m, "ambient": d, "hidden": hidden, "train_steps": steps, "batch": args.batch,
        "lr": args.lr, "train_seconds": train_s, "final_loss": final_loss,
        "unit_spread": args.unit_spread, "rows": rows, "auto_t0": t_auto, "curve": curve_rows,
        "true_lid_by_component": {int(c): int(lid_ev[comp_ev == c][0]) for c in comps},
    }


def print_set(r: dict[str, Any]) -> None:
    comps = sorted(r["true_lid_by_component"])
    print(f"\n### {r['set']}: true LID {[r['true_lid_by_component'][c] for c in comps]} in R^{r['ambient']}\n")
    print(f"N_train={r['n_train']}, {r['n_eval']} held-out queries; MLP hidden {r['hidden']}, depth "
          f"{r['args']['depth']}, prediction {r['args']['prediction']}, "
          f"{r['train_steps']} steps, batch {r['batch']}, lr {r['lr']}, trained in {r['train_seconds']:.0f} s "
          f"(final loss {fmt(r['final_loss'])}).\n")
    rows = []
    for row in r["rows"]:
        out = {k: row[k] for k in ("estimator", "mae", "concordance", "ms_per_point", "fwd_per_point",
                                    "prods_per_point", "batched_calls")}
        for c in row["components"]:
            out[f"c{c['component']}"] = c["mean"]
        rows.append(out)
    cols = [("estimator", "estimator"), ("mae", "MAE"), ("concordance", "C-index")]
    cols += [(f"c{c}", f"mean (d={r['true_lid_by_component'][c]})") for c in comps]
    cols += [("ms_per_point", "ms/point"), ("fwd_per_point", "forward evals/pt"),
             ("prods_per_point", "JVP/VJP products/pt"), ("batched_calls", "batched eps calls")]
    print(markdown_table(rows, cols))
    print(f"\nFLIPD (exact) per-component mean vs t0 (auto chose t0 = {r['auto_t0']:.3g}):\n")
    cols = [("t0", "t0"), ("sigma", "sigma")] + [(f"c{c}", f"d={r['true_lid_by_component'][c]}") for c in comps]
    print(markdown_table(r["curve"], cols))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--n-per", type=int, default=1000, help="training points per component (2x for one component)")
    p.add_argument("--n-eval", type=int, default=300, help="held-out query points")
    p.add_argument("--steps", type=int, default=0, help="training steps for every set (0: per-D defaults)")
    p.add_argument("--steps-d100", type=int, default=5000)
    p.add_argument("--steps-small", type=int, default=5000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=0, help="MLP width (0: next power of two >= max(D, 128))")
    p.add_argument("--depth", type=int, default=3, help="residual blocks of the MLP")
    p.add_argument("--prediction", choices=["eps", "x0"], default="eps", help="network output parametrisation")
    p.add_argument("--t0", type=float, default=0.05, help="fixed t0 of FLIPD")
    p.add_argument("--probes", type=int, default=8)
    p.add_argument("--no-unit-spread", dest="unit_spread", action="store_false")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="", help="suffix added to the set keys in the JSON (variants)")
    p.add_argument("--json", default=None, help="update this JSON file with the sets run")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    machine = machine_facts()
    cont = Contention()
    t_start = time.perf_counter()
    results = []
    for key in args.only:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {key}", file=sys.stderr, flush=True)
        c = Contention()
        r = run_set(key, args)
        r["other_cpus"] = c.stop()["other_cpus"]
        r["args"] = vars(args)
        results.append(r)
        print_set(r)
    total = time.perf_counter() - t_start
    print(f"\n{machine_line(machine)}\ntotal wall time {total:.0f} s; other processes used "
          f"{cont.stop()['other_cpus'] or 0:.2f} CPUs on average")
    if args.json:
        path = Path(args.json)
        payload = json.loads(path.read_text()) if path.exists() else {"benchmark": "lid", "sets": {}}
        payload["machine"] = machine
        for r in results:
            payload["sets"][r["set"] + args.tag] = r
        write_json(path, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
