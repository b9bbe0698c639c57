"""Per-sample cost of the sharpness spectrum: dense Jacobians vs matrix-free products vs Lanczos.

Usage (the defaults are what docs/benchmarks.md reports; about 3 minutes on 2 cores)::

    .venv/bin/python benchmarks/sharpness_cost.py --dims 64 784 --batch 16 --repeats 5 \
        --json benchmarks/results/sharpness_cost.json

Models (random weights: the cost of a derivative product does not depend on training):

* D = 64:  ``MLPEps`` on (1, 8, 8), hidden 256, depth 3, 10 classes;
* D = 784: ``MLPEps`` on (1, 28, 28), hidden 512, depth 3, 10 classes, and
  ``UNetEps(UNetConfig(channels=(32, 64, 64)))`` on (1, 28, 28), 10 classes.

Two tables are printed:

1. *Products*: wall time per sample of one score evaluation (the unit), one JVP, one VJP, one
   double-VJP (reverse-only J v) through ``ScoreJacobianOperator``, the same two reverse products
   with their autograd graphs cached (``CachedJacobianOperator`` below, not part of memgeo), and
   the dense Jacobian by ``score_jacobian(mode="rev")`` (``vmap(jacrev)``) / ``mode="fwd"``
   (``vmap(jacfwd)``) plus ``eigvalsh`` of its symmetric part, each at batch 1 and batched over B
   samples. "products / sample" counts Jacobian-vector products (a dense Jacobian is D of them);
   "x forward" divides by the time of one plain score evaluation at the same batch size.
2. *Top-k*: the k most negative (``--which SA``) eigenvalues of (J + J^T)/2 at one sample, by
   ``scipy.sparse.linalg.eigsh`` on a ``LinearOperator`` over ``sym_matvec`` (memgeo's operator in
   both product modes, and the cached operator), and, when installed, by ``hessian_eigenthings``
   Lanczos and deflated power iteration on the same operator, with the number of symmetric
   matvecs used and the maximum relative error of the k eigenvalues against the dense answer
   (float64 ``eigvalsh`` of the float32 Jacobian).

Timings are medians of ``--repeats`` runs after two untimed warm-up calls (dense Jacobians: one
warm-up, at most ``--dense-repeats`` runs; eigensolvers: no warm-up, at most ``--eig-repeats``),
with ``torch.set_num_threads(--threads)`` (default 2) and everything under ``torch.no_grad()`` with
the parameters frozen. ``--mmap-threshold`` raises glibc's M_MMAP_THRESHOLD (see the docs page).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from _common import (Contention, add_run_args, machine_line, markdown_table, median, start_run,
                     time_it, write_json)
from memgeo.geometry import ScoreJacobianOperator, flat_score_fn, score_jacobian
from memgeo.geometry.sharpness import spectrum_from_jacobian
from memgeo.models import DiffusionModel, MLPConfig, MLPEps, UNetConfig, UNetEps

NUM_CLASSES = 10
warnings.filterwarnings("ignore", category=FutureWarning)


class CachedJacobianOperator:
    """NOT part of memgeo: ``ScoreJacobianOperator(mode="vjp")`` with its autograd graphs built once.

    ``torch.func.vjp`` is called once at the fixed point x and its pullback (w -> J^T w) reused for
    every product; J v reuses, likewise, the pullback of the linear map w -> J^T w (the double-VJP
    graph). memgeo's operator rebuilds both (a forward pass, and for J v a backward too) on every
    call. Construction costs one forward and one backward and is timed as part of every eigensolver
    run below. Benchmarked to show the head-room for repeated products at one point (Lanczos).
    """

    def __init__(self, model: DiffusionModel, x: torch.Tensor, t: float, cond: torch.Tensor | None) -> None:
        from torch.func import vjp

        x = x.reshape(x.shape[0], -1).detach()
        f = flat_score_fn(model, torch.full((x.shape[0],), float(t)), cond)
        _, pullback = vjp(f, x)
        _, pull_g = vjp(lambda w: pullback(w)[0], torch.zeros_like(x))
        self._pullback, self._pull_g = pullback, pull_g
        self.n_matvecs = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.n_matvecs += 1
        return self._pull_g(v)[0]

    def rmatvec(self, w: torch.Tensor) -> torch.Tensor:
        self.n_matvecs += 1
        return self._pullback(w)[0]

    def sym_matvec(self, v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.matvec(v) + self.rmatvec(v))


@dataclass
class Spec:
    name: str
    dim: int
    build: Callable[[], DiffusionModel]
    dense_batch: int  # samples per batched dense-Jacobian timing (1 = batch-1 only)


def model_specs(args: argparse.Namespace) -> list[Spec]:
    specs = [
        Spec("MLP 8x8 (h256, d3)", 64,
             lambda: MLPEps(MLPConfig(data_shape=(1, 8, 8), hidden=256, depth=3, num_classes=NUM_CLASSES)),
             args.batch),
        Spec("MLP 28x28 (h512, d3)", 784,
             lambda: MLPEps(MLPConfig(data_shape=(1, 28, 28), hidden=512, depth=3, num_classes=NUM_CLASSES)),
             min(args.batch, args.dense_batch)),
        Spec("UNet 28x28 (32,64,64)", 784,
             lambda: UNetEps(UNetConfig(data_shape=(1, 28, 28), channels=(32, 64, 64), num_classes=NUM_CLASSES)),
             min(args.batch, args.unet_dense_batch)),
    ]
    return [s for s in specs if s.dim in args.dims and (not args.only or any(o.lower() in s.name.lower()
                                                                               for o in args.only))]


def points(model: DiffusionModel, n: int, t: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy points x_t = psi_t x0 + sigma_t eps with x0 ~ U(-1, 1), and labels 0..9 cyclically."""
    g = torch.Generator().manual_seed(seed)
    x0 = 2 * torch.rand(n, model.dim, generator=g) - 1
    tt = torch.tensor(t)
    x = model.schedule.sqrt_alpha_bar(tt) * x0 + model.schedule.sigma(tt) * torch.randn(n, model.dim, generator=g)
    return x, torch.arange(n) % NUM_CLASSES


# --------------------------------------------------------------------------------------------------
# Table 1: products and dense Jacobians
# --------------------------------------------------------------------------------------------------

def bench_products(spec: Spec, model: DiffusionModel, args: argparse.Namespace) -> tuple[list[dict], dict]:
    d, bsz, t, reps = spec.dim, args.batch, args.t, args.repeats
    x, c = points(model, bsz, t, args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    v = torch.randn(bsz, d, generator=g)
    rows: list[dict] = []
    extra: dict[str, Any] = {}

    def per_sample(fn_of_b: Callable[[int], Callable[[], Any]], b: int) -> float:
        return median(time_it(fn_of_b(b), reps)) / b

    def fwd(b: int) -> Callable[[], Any]:
        return lambda: model.score(x[:b].reshape((b,) + tuple(model.data_shape)), t, c[:b])

    def product(mode: str, kind: str) -> Callable[[int], Callable[[], Any]]:
        def make(b: int) -> Callable[[], Any]:
            op = ScoreJacobianOperator(model, x[:b], t, c[:b], mode=mode)
            return (lambda: op.matvec(v[:b])) if kind == "J v" else (lambda: op.rmatvec(v[:b]))
        return make

    fwd1, fwdb = per_sample(fwd, 1), per_sample(fwd, bsz)
    extra["forward_ms_b1"] = 1e3 * fwd1

    def add(method: str, products: int | None, s1: float | None, sb: float | None, b_used: int | None,
            note: str = "") -> None:
        rows.append({"model": spec.name, "D": d, "method": method, "products": products,
                     "ms_b1": None if s1 is None else 1e3 * s1,
                     "ms_bB": None if sb is None else 1e3 * sb, "B": b_used,
                     "x_fwd_b1": None if s1 is None else s1 / fwd1,
                     "x_fwd_bB": None if sb is None or b_used != bsz else sb / fwdb, "note": note})

    add("score forward (unit)", 0, fwd1, fwdb, bsz)
    for method, mode, kind in (("JVP: J v (forward mode)", "jvp", "J v"),
                               ("VJP: J^T w (reverse mode)", "jvp", "J^T w"),
                               ("double-VJP: J v (reverse only)", "vjp", "J v")):
        try:
            add(method, 1, per_sample(product(mode, kind), 1), per_sample(product(mode, kind), bsz), bsz)
        except Exception as e:  # noqa: BLE001 -- a failing AD mode is a result, not a crash
            add(method, 1, None, None, None, note=f"failed: {type(e).__name__}: {str(e)[:80]}")

    # Head-room: the same products with the autograd graphs cached (not in memgeo, see CachedJacobianOperator).
    setup = median(time_it(lambda: CachedJacobianOperator(model, x[:1], t, c[:1]), reps))
    for method, kind in (("J v, cached double-VJP graph (not in memgeo)", "J v"),
                         ("J^T w, cached pullback (not in memgeo)", "J^T w")):
        def cached(b: int, kind: str = kind) -> Callable[[], Any]:
            op = CachedJacobianOperator(model, x[:b], t, c[:b])
            return (lambda: op.matvec(v[:b])) if kind == "J v" else (lambda: op.rmatvec(v[:b]))
        try:
            add(method, 1, per_sample(cached, 1), per_sample(cached, bsz), bsz,
                note=f"plus a one-off setup of {1e3 * setup:.3g} ms at B=1")
        except Exception as e:  # noqa: BLE001
            add(method, 1, None, None, None, note=f"failed: {type(e).__name__}: {str(e)[:80]}")

    # Dense Jacobians: batch 1 and (when cheap enough) a batch of spec.dense_batch samples.
    jac_cache: dict[str, torch.Tensor] = {}
    for method, mode in (("dense vmap(jacrev)", "rev"), ("dense vmap(jacfwd)", "fwd")):
        def dense(b: int, mode: str = mode) -> Callable[[], Any]:
            def run() -> None:
                jac_cache[mode] = score_jacobian(model, x[:b], t, c[:b], chunk_size=max(b, 1), mode=mode)
                if b == 1:
                    jac_cache[mode + "1"] = jac_cache[mode]
            return run
        dreps = max(1, min(reps, args.dense_repeats))
        try:
            s1 = median(time_it(dense(1), dreps, warmup=1))
            sb = (median(time_it(dense(spec.dense_batch), dreps, warmup=1)) / spec.dense_batch
                  if spec.dense_batch > 1 else None)
            add(method, d, s1, sb, spec.dense_batch if sb is not None else None)
        except Exception as e:  # noqa: BLE001
            add(method, d, None, None, None, note=f"failed: {type(e).__name__}: {str(e)[:80]}")
    # Dense rev vs fwd agreement on the last batch both computed.
    if "rev" in jac_cache and "fwd" in jac_cache and jac_cache["rev"].shape == jac_cache["fwd"].shape:
        jr, jf = jac_cache["rev"], jac_cache["fwd"]
        extra["dense_rev_vs_fwd_max_rel"] = float((jr - jf).abs().max() / jr.abs().max())

    # eigvalsh of the symmetric part (what sharpness_spectrum does after the Jacobian).
    jac = jac_cache.get("rev")
    if jac is None:
        jac = score_jacobian(model, x[:spec.dense_batch], t, c[:spec.dense_batch], mode="rev")
    sig = model.schedule.sigma(torch.full((jac.shape[0],), t))
    s_eig = median(time_it(lambda: spectrum_from_jacobian(jac, sig), reps)) / jac.shape[0]
    add("eigvalsh of (J+J^T)/2 (+ asymmetry)", 0, s_eig, None, None)
    rev = next(r for r in rows if r["method"] == "dense vmap(jacrev)")
    if rev["ms_b1"] is not None:
        tot1 = rev["ms_b1"] / 1e3 + s_eig
        totb = rev["ms_bB"] / 1e3 + s_eig if rev["ms_bB"] is not None else None
        add("= full spectrum (jacrev + eigvalsh)", d, tot1, totb, rev["B"])
    extra["sample0"] = (x[:1], c[:1], jac_cache.get("rev1"))
    return rows, extra


# --------------------------------------------------------------------------------------------------
# Table 2: top-k extreme eigenvalues at one sample
# --------------------------------------------------------------------------------------------------

def reference_topk(evals: np.ndarray, k: int, which: str) -> np.ndarray:
    """k eigenvalues selected like ARPACK's ``which`` from an ascending spectrum, returned ascending."""
    if which == "SA":
        sel = evals[:k]
    elif which == "LA":
        sel = evals[-k:]
    else:  # LM
        sel = evals[np.argsort(-np.abs(evals))[:k]]
    return np.sort(sel)


def max_rel_err(found: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(np.sort(found) - ref) / np.abs(ref)))


def bench_topk(spec: Spec, model: DiffusionModel, args: argparse.Namespace, fast_mode: str,
               dense_ms: float | None, sample0: tuple) -> list[dict]:
    from scipy.sparse.linalg import LinearOperator, eigsh

    d, k, which, t = spec.dim, args.k, args.which, args.t
    x, c, jac = sample0  # the first sample of table 1 and its dense Jacobian (computed there)
    reps = max(1, min(args.repeats, args.eig_repeats))
    if jac is None:
        jac = score_jacobian(model, x, t, c, mode="rev")
    jac = jac[0].double()
    evals = torch.linalg.eigvalsh(0.5 * (jac + jac.T)).numpy()  # ascending
    v0 = np.random.default_rng(args.seed).standard_normal(d)
    rows: list[dict] = []
    ref = reference_topk(evals, k, which)
    base = {"model": spec.name, "D": d, "k": k}
    # Relative gap between the k-th and (k+1)-th extreme eigenvalue: what Krylov convergence hinges on.
    kth, next_ = (evals[k - 1], evals[k]) if which == "SA" else (evals[-k], evals[-k - 1])
    rows.append({**base, "method": "dense jacrev + eigvalsh (reference; time from the table above)",
                 "which": "all", "matvecs": None, "products": d, "ms": dense_ms, "max_rel_err": 0.0,
                 "converged": True, "topk": ref.tolist(),
                 "rel_gap_k": float(abs(next_ - kth) / (evals[-1] - evals[0])),
                 "note": f"gap(λ_k, λ_k+1) / spread = {abs(next_ - kth) / (evals[-1] - evals[0]):.1e}"})

    variants: list[tuple[str, Callable[[], Any]]] = [
        ("products via jvp", lambda: ScoreJacobianOperator(model, x, t, c, mode="jvp")),
        ("products via vjp", lambda: ScoreJacobianOperator(model, x, t, c, mode="vjp")),
        ("cached VJP graphs (not in memgeo; setup included)",
         lambda: CachedJacobianOperator(model, x, t, c)),
    ]
    for mode, make_op in variants:
        count = [0]
        holder: dict[str, Any] = {}

        def mv(vec: np.ndarray) -> np.ndarray:
            count[0] += 1
            vt = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float64).reshape(1, d)).float()
            return holder["op"].sym_matvec(vt).double().numpy().reshape(-1)

        lin = LinearOperator((d, d), matvec=mv, dtype=np.float64)
        found: list[np.ndarray] = []
        ok = [True]

        def run(make_op: Callable[[], Any] = make_op) -> None:
            count[0] = 0
            holder["op"] = make_op()  # timed: matters only for the cached variant
            try:
                w = eigsh(lin, k=k, which=which, tol=args.tol, v0=v0, maxiter=args.eigsh_maxiter,
                          return_eigenvectors=False)
            except Exception as e:  # noqa: BLE001  (ArpackNoConvergence)
                ok[0] = False
                w = getattr(e, "eigenvalues", np.full(k, np.nan))
            found.append(np.asarray(w))

        try:
            secs = time_it(run, reps, warmup=0)
            rows.append({**base, "method": f"scipy eigsh (ARPACK), {mode}", "which": which,
                         "matvecs": count[0], "products": holder["op"].n_matvecs, "ms": 1e3 * median(secs),
                         "ms_per_matvec": 1e3 * median(secs) / max(count[0], 1),
                         "max_rel_err": max_rel_err(found[-1], ref), "converged": ok[0],
                         "topk": np.sort(found[-1]).tolist()})
        except Exception as e:  # noqa: BLE001
            rows.append({**base, "method": f"scipy eigsh, {mode}", "which": which,
                         "note": f"failed: {type(e).__name__}: {str(e)[:80]}"})

    try:
        import hessian_eigenthings as he
    except ImportError:
        rows.append({**base, "method": "hessian-eigenthings", "note": "not installed"})
        return rows

    op = ScoreJacobianOperator(model, x, t, c, mode=fast_mode)
    he_op = he.LambdaOperator(lambda vec: op.sym_matvec(vec.reshape(1, d)).reshape(-1), size=d,
                              dtype=torch.float32)
    runs: list[tuple[str, str, Callable[[], Any]]] = []
    for iters in sorted({2 * k, min(args.he_iters, d - 1)}):
        label = f"hessian-eigenthings lanczos, max_iter={iters}" + (" (default 2k)" if iters == 2 * k else "")
        runs.append((label, which, lambda iters=iters: he.lanczos(he_op, k=k, which=which, max_iter=iters,
                                                                  reorthogonalize=True, seed=args.seed)))
    runs.append((f"hessian-eigenthings deflated power iteration, max_iter={args.he_power_iters}/pair", "LM",
                 lambda: he.deflated_power_iteration(he_op, k=k, max_iter=args.he_power_iters, tol=1e-4,
                                                     seed=args.seed)))
    for label, wh, fn in runs:
        res: list[Any] = []

        def run(fn: Callable[[], Any] = fn) -> None:
            op.n_matvecs = 0
            res.append(fn())

        secs = time_it(run, reps, warmup=0)
        r = res[-1]
        wref = reference_topk(evals, k, wh)
        rows.append({**base, "method": f"{label}, products via {fast_mode}", "which": wh,
                     "matvecs": op.n_matvecs // 2, "products": op.n_matvecs, "ms": 1e3 * median(secs),
                     "ms_per_matvec": 1e3 * median(secs) / max(op.n_matvecs // 2, 1),
                     "max_rel_err": max_rel_err(r.eigenvalues.double().numpy(), wref),
                     "converged": bool(r.converged.all()), "topk": np.sort(r.eigenvalues.numpy()).tolist()})
    return rows


# --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[64, 784], help="data dimensions to run (64, 784)")
    p.add_argument("--only", nargs="*", default=None, help="substring filter on model names, e.g. unet")
    p.add_argument("--batch", type=int, default=16, help="B for batched products (default 16)")
    p.add_argument("--dense-batch", type=int, default=8, help="B for batched dense Jacobians of the D=784 MLP")
    p.add_argument("--unet-dense-batch", type=int, default=1,
                   help="B for batched dense UNet Jacobians (1 = batch-1 timing only; ~10 s per sample)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement; the median is reported")
    p.add_argument("--eig-repeats", type=int, default=3, help="cap on repeats of the iterative eigensolvers")
    p.add_argument("--dense-repeats", type=int, default=3, help="cap on repeats of dense Jacobians (UNet: ~10 s)")
    p.add_argument("--t", type=float, default=0.1, help="diffusion time of the evaluation (default 0.1)")
    p.add_argument("--k", type=int, default=5, help="number of extreme eigenvalues")
    p.add_argument("--which", choices=["SA", "LA"], default="SA",
                   help="SA: most negative (sharpest) eigenvalues; LA: largest")
    p.add_argument("--tol", type=float, default=1e-6, help="eigsh relative tolerance (products are float32)")
    p.add_argument("--eigsh-maxiter", type=int, default=None, help="ARPACK restarts cap (default: scipy's)")
    p.add_argument("--he-iters", type=int, default=100, help="hessian-eigenthings Lanczos steps (besides 2k)")
    p.add_argument("--he-power-iters", type=int, default=20,
                   help="power iterations per eigenpair (default 20: k * 20 = the Lanczos budget)")
    add_run_args(p)
    args = p.parse_args(argv)

    machine = start_run(args)
    t_start = time.perf_counter()
    contention = Contention()
    prod_rows: list[dict] = []
    topk_rows: list[dict] = []
    extras: dict[str, Any] = {}
    with torch.no_grad():
        for spec in model_specs(args):
            torch.manual_seed(args.seed)
            per_model = Contention()
            model = spec.build().eval().requires_grad_(False)
            print(f"[{time.perf_counter() - t_start:6.1f}s] {spec.name}: products and dense Jacobians",
                  file=sys.stderr, flush=True)
            rows, extra = bench_products(spec, model, args)
            prod_rows += rows
            extras[spec.name] = extra
            jv = {r["method"].split(":")[0]: r["ms_b1"] for r in rows}
            fast = "jvp" if (jv.get("double-VJP") is None or (jv.get("JVP") is not None
                                                              and jv["JVP"] <= jv["double-VJP"])) else "vjp"
            extra["hessian_eigenthings_product_mode"] = fast
            print(f"[{time.perf_counter() - t_start:6.1f}s] {spec.name}: top-{args.k} eigenvalues",
                  file=sys.stderr, flush=True)
            full = next((r for r in rows if r["method"].startswith("= full spectrum")), None)
            topk_rows += bench_topk(spec, model, args, fast, full["ms_b1"] if full else None,
                                    extra.pop("sample0"))
            extra.update({f"{k}_this_model": v for k, v in per_model.stop().items()})
    total = time.perf_counter() - t_start
    machine["loadavg_at_end"] = os.getloadavg()
    machine["other_processes_cpus"] = contention.stop()["other_cpus"]

    print(f"## Sharpness spectrum cost per sample (t = {args.t}, B = {args.batch}, median of {args.repeats})\n")
    print(machine_line(machine) + "\n")
    print(markdown_table(prod_rows, [("model", "model"), ("D", "D"), ("method", "method"),
                                     ("products", "JVP/VJP products / sample"), ("ms_b1", "ms / sample, B=1"),
                                     ("x_fwd_b1", "× forward, B=1"), ("B", "batched B"),
                                     ("ms_bB", "ms / sample, batched"), ("x_fwd_bB", "× forward, batched"),
                                     ("note", "note")]))
    print(f"\n## Top-{args.k} eigenvalues of (J + J^T)/2 at one sample\n")
    print(markdown_table(topk_rows, [("model", "model"), ("D", "D"), ("method", "method"), ("which", "which"),
                                     ("matvecs", "sym matvecs"), ("products", "JVP/VJP products"),
                                     ("ms", "ms"), ("ms_per_matvec", "ms / sym matvec"),
                                     ("max_rel_err", "max rel err vs dense"),
                                     ("converged", "converged"), ("note", "note")]))
    print()
    for name, e in extras.items():
        print(f"- {name}: wall {e.get('wall_s_this_model', 0):.0f} s, other processes used "
              f"{e.get('other_cpus_this_model') or 0:.2f} CPUs; dense jacrev vs jacfwd max rel diff "
              f"{e.get('dense_rev_vs_fwd_max_rel', float('nan')):.1e}; hessian-eigenthings products via "
              f"{e.get('hessian_eigenthings_product_mode')}")
    print(f"\ntotal wall time {total:.0f} s; load average at end {machine['loadavg_at_end'][0]:.2f}; "
          f"other processes used {machine['other_processes_cpus'] or 0:.2f} CPUs on average")
    if args.json:
        write_json(args.json, {"benchmark": "sharpness_cost", "args": vars(args), "machine": machine,
                               "products": prod_rows, "topk": topk_rows, "extras": extras,
                               "total_seconds": total})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
