"""Geometry kernels at their cost floor: side-by-side timings in one run, at each thread count.

Usage (what docs/benchmarks.md section 10 reports; about 10 minutes on 2 cores)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/kernels.py --threads-list 1 2 \
        --json benchmarks/results/kernels.json

Model: ``MLPEps`` on (1, 28, 28), hidden 512, depth 3, 10 classes (the D = 784 MLP of
``sharpness_cost.py``), random weights, B = 64 noisy points x_t = psi_t x0 + sigma_t eps at t = 0.1.
Every section runs at every ``--threads-list`` entry (``torch.set_num_threads``), all methods of a
section back to back, so their ratio is measured under the same load. Times are wall-clock
(``time.perf_counter``) and CPU (``time.process_time``, all threads of this process), each the
minimum over repeats (per-sample loops: each sample's minimum over ``--eig-repeats`` passes), since
other jobs on a shared machine only ever add time.

(a) The 5 most negative eigenvalues of (J + J^T)/2 at every one of the B points, at equal accuracy
    (max relative error <= ``--rel`` on every sample against float64 ``eigvalsh`` of the dense
    float32 Jacobian): memgeo's batched ``lanczos_extreme`` over all B samples at once (one cached
    ``ScoreJacobianOperator(mode="vjp")``; bounds "residual" and "gap", and the headline: "gap" with
    ``restrict=op.restrict``, which drops converged samples from the batch, and at T > 1 threads
    ``workers=T``, the batch split over T threads with one intra-op thread each; at T > 1 the same
    without workers, on T intra-op threads, is a row too) against per-sample
    ``scipy.sparse.linalg.eigsh`` on the same cached operator at B = 1 (``tol`` = the loosest of
    ``--scipy-tols`` and ``--rel`` that reaches ``--rel`` on a calibration subset; also on today's
    uncached operator for a subset), at T > 1 also scipy with the samples spread over T processes
    of one thread each (the cores used the same way as memgeo's workers), and per-sample
    hessian-eigenthings ``lanczos`` (``max_iter`` = the smallest of a ladder that reaches ``--rel``
    on the calibration subset). Per-sample = total / B. memgeo's headline and scipy's per-sample
    pass alternate in ``--rounds`` paired rounds, whose ratios are reported too (min-max): a busy
    period of a shared machine then slows both sides of a round.
(b) FLIPD (t0 = 0.05, Hutchinson) with k probes against the time of 1 + k score forwards at B;
    also today's cost (an uncached product per probe, one probe per call).
(c) Jeon's first-step score (``jeon``: J v by forward mode; ``jeon_vjp``: one J^T v) on a tiny
    random caption model against the stacked cond/null forward (2 forwards per row).
(d) Cached against uncached (today's) products at B: J^T w, J v (double VJP) and 30 symmetric
    products (a Lanczos-sized run) at one set of points, graph build included in the cached run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from _common import machine_facts, machine_line, markdown_table, set_mmap_threshold, write_json
from memgeo.geometry import ScoreJacobianOperator, lanczos_extreme, score_jacobian
from memgeo.geometry.lid import FLIPD
from memgeo.geometry.trace import estimate_trace
from memgeo.models import MLPConfig, MLPEps

warnings.filterwarnings("ignore", category=FutureWarning)
NUM_CLASSES = 10


def clock(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, float, Any]:
    """(minimum wall s, minimum CPU s, last result) of ``repeats`` calls after ``warmup`` untimed ones.

    The minimum, not the median: on a shared machine other jobs only ever add time.
    """
    out = None
    for _ in range(warmup):
        out = fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), out


def per_sample_min(passes: list[list[tuple[float, float]]]) -> tuple[float, float]:
    """(wall, CPU) seconds summed over samples, each sample's minimum over the passes of a per-sample loop."""
    n = len(passes[0])
    return (sum(min(p[i][0] for p in passes) for i in range(n)), sum(min(p[i][1] for p in passes) for i in range(n)))


def build_mlp(seed: int) -> MLPEps:
    torch.manual_seed(seed)
    return MLPEps(MLPConfig(data_shape=(1, 28, 28), hidden=512, depth=3, num_classes=NUM_CLASSES)).eval() \
        .requires_grad_(False)


def points(model, n: int, t: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = 2 * torch.rand(n, model.dim, generator=g) - 1
    tt = torch.tensor(t)
    x = model.schedule.sqrt_alpha_bar(tt) * x0 + model.schedule.sigma(tt) * torch.randn(n, model.dim, generator=g)
    return x, torch.arange(n) % NUM_CLASSES


def rel_err(found: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(np.sort(found) - np.sort(ref)) / np.abs(ref)))


# ------------------------------------------------------------------------------------------------- (a)

def eigsh_one(model, x, c, i: int, t: float, k: int, tol: float, v0: np.ndarray, cache: bool = True
              ) -> tuple[np.ndarray, int]:
    """scipy ``eigsh`` (ARPACK) on sample i alone: its k smallest eigenvalues (ascending) and the matvec count."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    d = x.shape[1]
    count = [0]
    with ScoreJacobianOperator(model, x[i:i + 1], t, c[i:i + 1], mode="vjp", cache=cache) as op:
        def mv(vec: np.ndarray) -> np.ndarray:
            count[0] += 1
            vt = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float64).reshape(1, d)).float()
            return op.sym_matvec(vt).double().numpy().reshape(-1)

        w = eigsh(LinearOperator((d, d), matvec=mv, dtype=np.float64), k=k, which="SA", tol=tol, v0=v0,
                  return_eigenvectors=False)
    return np.sort(w), count[0]


_WORKER: dict[str, Any] = {}


def _scipy_worker_init(seed: int, batch: int, t: float) -> None:
    """Process-pool initializer: one intra-op thread, the same model and points as the parent (same seeds)."""
    torch.set_num_threads(1)
    model = build_mlp(seed)
    _WORKER["model"] = model
    _WORKER["x"], _WORKER["c"] = points(model, batch, t, seed)


def _scipy_worker_run(job: tuple[list[int], float, int, float, np.ndarray]) -> tuple[list[np.ndarray], float, int]:
    """Per-sample eigsh on the samples ``job[0]`` in this worker; (eigenvalues, CPU seconds, matvecs)."""
    idx, t, k, tol, v0 = job
    c0 = time.process_time()
    found, total = [], 0
    with torch.no_grad():
        for i in idx:
            w, n = eigsh_one(_WORKER["model"], _WORKER["x"], _WORKER["c"], i, t, k, tol, v0)
            found.append(w)
            total += n
    return found, time.process_time() - c0, total


def section_a(model, x, c, args, threads: int) -> list[dict]:
    b, d, k, t = x.shape[0], model.dim, args.k, args.t
    jac = score_jacobian(model, x, t, c, chunk_size=8).double()
    ref = torch.linalg.eigvalsh(0.5 * (jac + jac.transpose(1, 2)))[:, :k].numpy()  # (B, k) ascending
    del jac
    rows: list[dict] = []
    base = {"threads": threads, "B": b, "D": d, "k": k}

    # memgeo: one batched Lanczos over all B samples, graph built inside the timed call.
    # restrict=True: converged samples are frozen and dropped (op.restrict rebuilds the graph on the rest);
    # workers > 1: the batch split over that many threads with one intra-op thread each.
    def memgeo_run(bound: str, restrict: bool, workers: int = 1):
        gen = torch.Generator().manual_seed(args.seed)
        with ScoreJacobianOperator(model, x, t, c, mode="vjp") as op:
            res = lanczos_extreme(op.sym_matvec, b, d, k=k, n_iter=args.n_iter, which="smallest", tol=args.rel,
                                  generator=gen, bound=bound, restrict=op.restrict if restrict else None,
                                  workers=workers)
        return res

    def memgeo_row(label: str, wall: float, cpu: float, res) -> dict:
        errs = [rel_err(res.eigenvalues[i].double().numpy(), ref[i]) for i in range(b)]
        return {**base, "method": f"memgeo lanczos_extreme, batched over B, {label} (cached vjp operator)",
                "samples": b, "matvecs": f"{res.n_matvecs} batched, {res.sample_matvecs / b:.1f} per sample",
                "wall_ms": 1e3 * wall / b, "cpu_ms": 1e3 * cpu / b, "max_rel_err": max(errs),
                "n_bad": sum(e > args.rel for e in errs), "ok": max(errs) <= args.rel}

    for bound, restrict in (("residual", False), ("gap", False)):
        wall, cpu, res = clock(lambda bound=bound, restrict=restrict: memgeo_run(bound, restrict), args.repeats)
        rows.append(memgeo_row(f"bound={bound!r}", wall, cpu, res))
    # The headline configuration: gap bound, converged samples dropped, and at T > 1 threads the batch
    # split over T threads. Timed in rounds interleaved with scipy's per-sample passes (below), so each
    # round's ratio is measured under the same load.
    headline = "bound='gap', converged samples dropped (restrict=op.restrict)"
    workers = threads if threads > 1 else 1
    if workers > 1:
        wall, cpu, res = clock(lambda: memgeo_run("gap", True), args.repeats)
        rows.append(memgeo_row(headline + f", {threads} intra-op threads", wall, cpu, res))
        headline += f", batch split over workers={workers} threads"
    memgeo_run("gap", True, workers)  # warm-up

    v0 = np.random.default_rng(args.seed).standard_normal(d)

    def scipy_run(n: int, cache: bool, tol: float, per_sample: list | None = None) -> tuple[list[np.ndarray], int]:
        found, total = [], 0
        for i in range(n):
            w0, c0 = time.perf_counter(), time.process_time()
            w, count = eigsh_one(model, x, c, i, t, k, tol, v0, cache)
            found.append(w)
            total += count
            if per_sample is not None:
                per_sample.append((time.perf_counter() - w0, time.process_time() - c0))
        return found, total

    n_cal = min(args.he_calibration, b)
    tol = args.rel  # the loosest ARPACK tol of the ladder that reaches the accuracy on the calibration samples
    for cand in sorted(set(args.scipy_tols) | {args.rel}, reverse=True):
        if max(rel_err(f, ref[i]) for i, f in enumerate(scipy_run(n_cal, True, cand)[0])) <= args.rel:
            tol = cand
            break

    # Paired rounds: memgeo's headline run (twice, the faster kept) then one scipy pass over all B samples.
    mem_rounds, sci_passes, res = [], [], None
    for _ in range(args.rounds):
        best = None
        for _ in range(2):
            w0, c0 = time.perf_counter(), time.process_time()
            res = memgeo_run("gap", True, workers)
            tm = (time.perf_counter() - w0, time.process_time() - c0)
            best = tm if best is None or tm[0] < best[0] else best
        mem_rounds.append(best)
        sci_passes.append([])
        found, total = scipy_run(b, True, tol, sci_passes[-1])
    mem_wall, mem_cpu = min(r[0] for r in mem_rounds) / b, min(r[1] for r in mem_rounds) / b
    rows.append(memgeo_row(headline, mem_wall * b, mem_cpu * b, res))
    paired = [sum(p[0] for p in ps) / mr[0] for ps, mr in zip(sci_passes, mem_rounds)]
    paired_cpu = [sum(p[1] for p in ps) / mr[1] for ps, mr in zip(sci_passes, mem_rounds)]
    wall, cpu = per_sample_min(sci_passes)
    err = max(rel_err(found[i], ref[i]) for i in range(b))
    rows.append({**base, "method": f"scipy eigsh (ARPACK) per sample, tol={tol:g}, cached vjp operator", "samples": b,
                 "matvecs": f"{total / b:.0f} / sample", "wall_ms": 1e3 * wall / b, "cpu_ms": 1e3 * cpu / b,
                 "max_rel_err": err, "ok": err <= args.rel, "x_wall": (wall / b) / mem_wall,
                 "x_cpu": (cpu / b) / mem_cpu, "x_wall_rounds": paired, "x_cpu_rounds": paired_cpu,
                 "x_rounds": f"{min(paired):.1f}-{max(paired):.1f} / {min(paired_cpu):.1f}-{max(paired_cpu):.1f}"})

    if threads > 1:  # scipy given the same cores: samples spread over T processes, one thread each
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        chunks = [ch.tolist() for ch in torch.arange(b).tensor_split(threads)]
        with ProcessPoolExecutor(threads, mp_context=mp.get_context("spawn"), initializer=_scipy_worker_init,
                                 initargs=(args.seed, b, t)) as pool:
            list(pool.map(_scipy_worker_run, [([ch[0]], t, k, tol, v0) for ch in chunks]))  # start + warm up
            passes = []
            for _ in range(args.rounds):
                w0 = time.perf_counter()
                outs = list(pool.map(_scipy_worker_run, [(ch, t, k, tol, v0) for ch in chunks]))
                passes.append((time.perf_counter() - w0, sum(o[1] for o in outs), outs))
        wall, cpu, outs = min(passes, key=lambda p: p[0])
        found = [w for o in outs for w in o[0]]
        err = max(rel_err(found[i], ref[i]) for i in range(b))
        rows.append({**base, "method": f"scipy eigsh (ARPACK) per sample, tol={tol:g}, samples spread over "
                                       f"{threads} processes with 1 thread each (cached vjp operator)",
                     "samples": b, "matvecs": f"{sum(o[2] for o in outs) / b:.0f} / sample",
                     "wall_ms": 1e3 * wall / b, "cpu_ms": 1e3 * cpu / b, "max_rel_err": err, "ok": err <= args.rel,
                     "x_wall": (wall / b) / mem_wall, "x_cpu": (cpu / b) / mem_cpu})

    n = min(args.uncached_samples, b)
    if n > 0:
        passes = []
        for _ in range(args.eig_repeats):
            passes.append([])
            found, total = scipy_run(n, False, tol, passes[-1])
        wall, cpu = per_sample_min(passes)
        err = max(rel_err(found[i], ref[i]) for i in range(n))
        rows.append({**base, "method": f"scipy eigsh (ARPACK) per sample, tol={tol:g}, today's uncached operator",
                     "samples": n, "matvecs": f"{total / n:.0f} / sample", "wall_ms": 1e3 * wall / n,
                     "cpu_ms": 1e3 * cpu / n, "max_rel_err": err, "ok": err <= args.rel,
                     "x_wall": (wall / n) / mem_wall, "x_cpu": (cpu / n) / mem_cpu})

    try:
        import hessian_eigenthings as he
    except ImportError:
        rows.append({**base, "method": "hessian-eigenthings (not installed)"})
        return rows

    def he_run(n: int, iters: int, per_sample: list | None = None) -> list[np.ndarray]:
        out = []
        for i in range(n):
            w0, c0 = time.perf_counter(), time.process_time()
            with ScoreJacobianOperator(model, x[i:i + 1], t, c[i:i + 1], mode="vjp") as op:
                he_op = he.LambdaOperator(lambda vec, op=op: op.sym_matvec(vec.reshape(1, d)).reshape(-1), size=d,
                                          dtype=torch.float32)
                r = he.lanczos(he_op, k=k, which="SA", max_iter=iters, reorthogonalize=True, seed=args.seed)
            out.append(np.sort(r.eigenvalues.double().numpy()))
            if per_sample is not None:
                per_sample.append((time.perf_counter() - w0, time.process_time() - c0))
        return out

    iters = None
    for m in args.he_ladder:  # the smallest max_iter reaching the accuracy on the calibration samples
        if max(rel_err(f, ref[i]) for i, f in enumerate(he_run(n_cal, min(m, d - 1)))) <= args.rel:
            iters = min(m, d - 1)
            break
    iters = iters or min(args.he_ladder[-1], d - 1)
    passes = []
    for _ in range(args.eig_repeats):
        passes.append([])
        found = he_run(b, iters, passes[-1])
    wall, cpu = per_sample_min(passes)
    err = max(rel_err(found[i], ref[i]) for i in range(b))
    rows.append({**base, "method": f"hessian-eigenthings lanczos per sample, max_iter={iters} (cached vjp operator)",
                 "samples": b, "matvecs": f"{iters} / sample", "wall_ms": 1e3 * wall / b, "cpu_ms": 1e3 * cpu / b,
                 "max_rel_err": err, "ok": err <= args.rel, "x_wall": (wall / b) / mem_wall,
                 "x_cpu": (cpu / b) / mem_cpu})
    return rows


# ------------------------------------------------------------------------------------------------- (b)

def section_b(model, x, c, args, threads: int) -> list[dict]:
    b, d = x.shape
    shape = (b,) + tuple(model.data_shape)
    xs = x.reshape(shape)
    t0 = 0.05
    fwd_wall, fwd_cpu, _ = clock(lambda: model.score(xs, t0, c), args.repeats * 3, warmup=2)
    rows = []
    for k in args.probes:
        est = FLIPD(t0=t0, trace="hutchinson", n_probes=k, seed=args.seed)
        wall, cpu, _ = clock(lambda est=est: est.estimate(model, x, cond=c), args.repeats)

        def today(k=k):  # one forward for ||s||^2 plus an uncached product per probe, one probe per call
            y = model.schedule.sqrt_alpha_bar(torch.tensor(t0)) * x
            with torch.no_grad():
                model.score(y.reshape(shape), t0, c)
            op = ScoreJacobianOperator(model, y, t0, c, mode="vjp", cache=False)
            return estimate_trace(op.rmatvec, b, d, method="hutchinson", n_probes=k,
                                  generator=torch.Generator().manual_seed(args.seed))

        wall_u, cpu_u, _ = clock(today, args.repeats)
        rows.append({"threads": threads, "B": b, "D": d, "k": k, "forward_ms": 1e3 * fwd_wall,
                     "flipd_ms": 1e3 * wall, "flipd_cpu_ms": 1e3 * cpu,
                     "x_1pk_fwd": wall / ((1 + k) * fwd_wall), "x_1pk_fwd_cpu": cpu / ((1 + k) * fwd_cpu),
                     "today_ms": 1e3 * wall_u, "today_x_1pk_fwd": wall_u / ((1 + k) * fwd_wall),
                     "ok": wall / ((1 + k) * fwd_wall) <= 1.5})
    return rows


# ------------------------------------------------------------------------------------------------- (c)

def section_c(args, threads: int) -> list[dict]:
    from memgeo.memorization.prompt_scores.base import SamplingSettings, eps_pair, generation_noise
    from memgeo.models.caption import CaptionDiffusionModel, CaptionModelConfig, build_vocab

    captions = [f"a photo of digit {w}" for w in ("zero", "one", "two", "three", "four", "five", "six", "seven")]
    torch.manual_seed(args.seed)
    model = CaptionDiffusionModel(CaptionModelConfig(data_shape=(1, 8, 8), vocab=build_vocab(captions), max_length=8,
                                                     embed_dim=32, heads=2, hidden=128, depth=3, time_dim=32))
    model = model.eval().requires_grad_(False)
    rows = []
    sampling = SamplingSettings(steps=50)
    t = sampling.first_time(model)
    for r in args.prompts:
        prompts = [captions[i % len(captions)] for i in range(r)]
        cond = model.encode(prompts)
        x = generation_noise(model, range(r), 1)
        with torch.no_grad():
            f_wall, f_cpu, _ = clock(lambda: eps_pair(model, x[:, 0], t, cond), args.repeats * 3, warmup=2)
        rows += _jeon_rows(model, cond, x, sampling, r, f_wall, f_cpu, args, threads)
    return rows


def _jeon_rows(model, cond, x, sampling, r, f_wall, f_cpu, args, threads) -> list[dict]:
    from memgeo.memorization.prompt_scores import get_prompt_score

    rows = []
    for name in ("jeon", "jeon_vjp"):
        score = get_prompt_score(name)
        wall, cpu, res = clock(lambda score=score: score.compute(model, cond, x, sampling=sampling), args.repeats)
        rows.append({"threads": threads, "prompts": r, "D": model.dim, "score": name,
                     "two_forwards_ms": 1e3 * f_wall, "score_ms": 1e3 * wall, "x_2fwd": wall / f_wall,
                     "x_2fwd_cpu": cpu / f_cpu, "forward_evals": res.forward_evals,
                     "derivative_passes": res.derivative_passes})
    return rows


# ------------------------------------------------------------------------------------------------- (d)

def section_d(model, x, c, args, threads: int) -> list[dict]:
    b, d = x.shape
    t = args.t
    g = torch.Generator().manual_seed(args.seed + 1)
    v = torch.randn(b, d, generator=g)
    rows = []
    for label, call in (("J^T w (reverse mode)", lambda op: op.rmatvec(v)),
                        ("J v (double VJP, reverse only)", lambda op: op.matvec(v))):
        ops = {cache: ScoreJacobianOperator(model, x, t, c, mode="vjp", cache=cache) for cache in (True, False)}
        call(ops[True])  # build the cached graphs once (the setup is timed in the Lanczos-sized row below)
        times = {}
        for cache in (True, False):
            times[cache] = clock(lambda cache=cache: call(ops[cache]), args.repeats * 3, warmup=2)[:2]
        torch.testing.assert_close(call(ops[True]), call(ops[False]), rtol=1e-4, atol=1e-4)
        rows.append({"threads": threads, "B": b, "product": label, "cached_ms": 1e3 * times[True][0],
                     "uncached_ms": 1e3 * times[False][0], "ratio": times[False][0] / times[True][0],
                     "ratio_cpu": times[False][1] / times[True][1]})

    n = 30

    def run(cache: bool):
        with ScoreJacobianOperator(model, x, t, c, mode="vjp", cache=cache) as op:
            w = v
            for _ in range(n):
                w = op.sym_matvec(w)
                w = w / w.norm(dim=1, keepdim=True)
        return w

    tc = clock(lambda: run(True), args.repeats)
    tu = clock(lambda: run(False), args.repeats)
    rows.append({"threads": threads, "B": b, "product": f"{n} symmetric products, graph build included",
                 "cached_ms": 1e3 * tc[0], "uncached_ms": 1e3 * tu[0], "ratio": tu[0] / tc[0],
                 "ratio_cpu": tu[1] / tc[1]})
    return rows


# ------------------------------------------------------------------------------------------------- (x)

def section_x(args, threads: int) -> list[dict]:
    """Dense vs matrix-free crossover in D for the two auto rules (MLP h512 d3 on (1, s, s))."""
    from memgeo.geometry import sharpness_spectrum

    rows = []
    for side in args.cross_sides:
        torch.manual_seed(args.seed)
        model = MLPEps(MLPConfig(data_shape=(1, side, side), hidden=512, depth=3, num_classes=NUM_CLASSES))
        model = model.eval().requires_grad_(False)
        b = args.cross_batch
        x, c = points(model, b, args.t, args.seed)
        d = model.dim
        fwd = clock(lambda: model.score(x.reshape((b, 1, side, side)), args.t, c), args.repeats * 3, warmup=2)[0]
        dense = clock(lambda: sharpness_spectrum(model, x, args.t, cond=c, at="raw", chunk_size=b, method="dense"),
                      args.repeats)[0]
        lz_wall, _, lz = clock(lambda: sharpness_spectrum(model, x, args.t, cond=c, at="raw", k=args.k,
                                                          method="lanczos", tol=args.rel), args.repeats)
        ex = clock(lambda: FLIPD(t0=0.05, trace="exact", chunk_size=b).estimate(model, x, cond=c), args.repeats)[0]
        hu = clock(lambda: FLIPD(t0=0.05, trace="hutchinson", n_probes=8).estimate(model, x, cond=c), args.repeats)[0]
        rows.append({"threads": threads, "D": d, "B": b, "forward_ms": 1e3 * fwd / b,
                     "dense_ms": 1e3 * dense / b, "lanczos_ms": 1e3 * lz_wall / b, "lanczos_matvecs": lz.n_matvecs,
                     "dense_over_lanczos": dense / lz_wall, "exact_ms": 1e3 * ex / b, "hutch8_ms": 1e3 * hu / b,
                     "exact_over_hutch8": ex / hu})
    return rows


# -------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads-list", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sections", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d", "x"],
                   help="x: the dense vs matrix-free crossover in D behind the auto rules (not in the default)")
    p.add_argument("--cross-sides", type=int, nargs="+", default=[8, 16, 20, 24, 28],
                   help="section x: image sides s of the (1, s, s) MLPs (D = s^2)")
    p.add_argument("--cross-batch", type=int, default=16, help="section x: B")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--t", type=float, default=0.1)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--rel", type=float, default=1e-4, help="relative eigenvalue accuracy on every sample")
    p.add_argument("--n-iter", type=int, default=300, help="maximum Krylov dimension of memgeo's Lanczos")
    p.add_argument("--uncached-samples", type=int, default=8, help="samples for scipy on the uncached operator")
    p.add_argument("--he-ladder", type=int, nargs="+", default=[60, 80, 100, 130, 160, 200, 300])
    p.add_argument("--he-calibration", type=int, default=4,
                   help="samples used to pick hessian-eigenthings max_iter and the scipy tol")
    p.add_argument("--scipy-tols", type=float, nargs="+", default=[1e-2, 1e-3],
                   help="looser ARPACK tols tried (on the calibration samples) before --rel")
    p.add_argument("--probes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--prompts", type=int, nargs="+", default=[32, 256], help="prompts (rows) of section (c)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (the minimum is reported)")
    p.add_argument("--eig-repeats", type=int, default=2,
                   help="passes of the per-sample hessian-eigenthings and uncached scipy loops (each sample's "
                        "minimum is used)")
    p.add_argument("--rounds", type=int, default=3,
                   help="section (a): paired rounds of memgeo's headline run and one scipy pass over all B")
    p.add_argument("--mmap-threshold", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    set_mmap_threshold(args.mmap_threshold)

    load_start = os.getloadavg()
    t_start = time.perf_counter()
    model = build_mlp(args.seed)
    x, c = points(model, args.batch, args.t, args.seed)
    out: dict[str, list[dict]] = {s: [] for s in args.sections}
    loads = []
    with torch.no_grad():
        for threads in args.threads_list:
            torch.set_num_threads(threads)
            for s in args.sections:
                print(f"[{time.perf_counter() - t_start:6.1f}s] section {s} at {threads} thread(s), "
                      f"load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
                loads.append(os.getloadavg()[0])
                if s == "a":
                    out[s] += section_a(model, x, c, args, threads)
                elif s == "b":
                    out[s] += section_b(model, x, c, args, threads)
                elif s == "c":
                    out[s] += section_c(args, threads)
                elif s == "x":
                    out[s] += section_x(args, threads)
                else:
                    out[s] += section_d(model, x, c, args, threads)
    total = time.perf_counter() - t_start
    machine = machine_facts()
    machine["loadavg_at_start"] = load_start
    machine["loadavg_at_end"] = os.getloadavg()
    print("## Geometry kernels (benchmarks/kernels.py)\n")
    print(machine_line(machine))
    print(f"\nload average (1 min) at start {load_start[0]:.2f}, during the sections "
          f"{min(loads):.2f}-{max(loads):.2f}, at end {machine['loadavg_at_end'][0]:.2f}; total {total:.0f} s\n")
    tables = {
        "a": [("threads", "threads"), ("method", "method"), ("samples", "samples"), ("matvecs", "sym matvecs"),
              ("wall_ms", "wall ms / sample"), ("cpu_ms", "CPU ms / sample"), ("x_wall", "× memgeo (wall)"),
              ("x_cpu", "× memgeo (CPU)"), ("x_rounds", "× memgeo per paired round, wall / CPU"),
              ("max_rel_err", "max rel err"), ("n_bad", "samples over tol"),
              ("ok", f"≤ {args.rel:g}")],
        "b": [("threads", "threads"), ("k", "probes k"), ("forward_ms", "1 forward ms"), ("flipd_ms", "FLIPD ms"),
              ("x_1pk_fwd", "× (1+k) forwards"), ("x_1pk_fwd_cpu", "× (1+k) forwards, CPU"),
              ("today_ms", "uncached ms"), ("today_x_1pk_fwd", "uncached × (1+k) fwd"), ("ok", "≤ 1.5")],
        "c": [("threads", "threads"), ("score", "score"), ("prompts", "prompts"), ("two_forwards_ms", "2 forwards ms"),
              ("score_ms", "score ms"), ("x_2fwd", "× 2 forwards"), ("x_2fwd_cpu", "× 2 forwards, CPU"),
              ("forward_evals", "forward evals / row"), ("derivative_passes", "derivative passes / row")],
        "d": [("threads", "threads"), ("product", "product (B = 64)"), ("cached_ms", "cached ms"),
              ("uncached_ms", "uncached ms"), ("ratio", "uncached / cached"), ("ratio_cpu", "ratio, CPU")],
        "x": [("threads", "threads"), ("D", "D"), ("B", "B"), ("forward_ms", "forward ms / sample"),
              ("dense_ms", "full spectrum ms / sample"), ("lanczos_ms", f"Lanczos {args.k} smallest ms / sample"),
              ("lanczos_matvecs", "Lanczos matvecs"), ("dense_over_lanczos", "dense / Lanczos"),
              ("exact_ms", "FLIPD exact ms / sample"), ("hutch8_ms", "FLIPD Hutchinson k=8 ms / sample"),
              ("exact_over_hutch8", "exact / Hutchinson")],
    }
    titles = {"a": "(a) 5 most negative eigenvalues of (J + J^T)/2, equal accuracy",
              "b": "(b) FLIPD with k Hutchinson probes vs 1 + k forwards (B = 64, t0 = 0.05)",
              "c": "(c) Jeon's first-step score vs 2 forwards (tiny random caption model)",
              "d": "(d) cached vs uncached products",
              "x": "(x) dense vs matrix-free crossover (MLP h512 d3 on (1, s, s))"}
    for s in args.sections:
        print(f"### {titles[s]}\n")
        print(markdown_table(out[s], tables[s]) + "\n")
    if args.json:
        write_json(args.json, {"benchmark": "kernels", "args": vars(args), "machine": machine, "results": out,
                               "total_seconds": total})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
