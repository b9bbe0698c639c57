"""Neighbour search at scale for the copy metrics: time and peak memory of exact and approximate kNN.

10,000 queries of dimension 784 against 100,000 and 1,000,000 training vectors (uniform random
float32, written once to ``.npy`` files under ``--data-dir`` and searched as memory maps), with
``memgeo.data.neighbors.NeighborIndex``:

- ``faiss``: exact, faiss brute force (``IndexFlatL2``'s kernel) per reference block + float64 re-ranking;
- ``torch``: exact, ``torch.cdist`` per (query chunk, reference block) tile + the same re-ranking;
- ``ivf``: approximate, faiss ``IndexIVFFlat`` (default nlist = 4 sqrt(N), nprobe = max(16, nlist / 64));
- ``hnsw``: approximate, faiss ``IndexHNSWFlat`` (M = 32, efSearch = 64, efConstruction = 64), only
  for N <= ``--hnsw-max-n`` (its single-threaded build grows too slow beyond).

Each (N, method) runs in its own child process so that ``ru_maxrss`` (peak resident memory, the whole
process) and ``tracemalloc`` (peak of Python/numpy allocations; torch's and faiss's own buffers are not
seen by it) belong to that method alone. The memory-mapped reference is read block by block and its
pages are released after each block, so they do not count in the resident memory. Recall@k of an
approximate method is the share of its k returned neighbours whose (exact) distance is at most the
exact k-th nearest distance, averaged over all queries; the exact methods are checked to return
identical neighbours.

Modes used for docs/benchmarks.md sections 11 and 11b (one thread):

- ``--mnist``: instead of uniform vectors, data with real neighbour structure built from the 10,000
  MNIST test images (:func:`make_mnist`: sub-pixel shifts + pixel noise; generations of which a known
  10 % are exact training rows);
- ``--ivf-sweep``: recall@1/@10 of IVF against exact search per ``nprobe`` (:func:`ivf_sweep`);
- ``--e2e``: ``memgeo copies`` end to end, time, peak RSS, stage seconds, rates, and for an approximate
  backend its recall@1 and verdict agreement with the exact run (:func:`e2e`);
- ``--rerank-bench``: the exact re-ranking step alone (:func:`rerank_bench`).

Without a mode: the search benchmark on uniform vectors described above::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/copies_scale.py --threads 1 \\
        --json runs/copies_scale/search.json --markdown runs/copies_scale/table.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

METHODS = {"faiss": {"backend": "faiss"}, "torch": {"backend": "torch"}, "ivf": {"backend": "faiss-ivf"},
           "hnsw": {"backend": "faiss-hnsw"}}


def make_data(path: Path, n: int, dim: int, seed: int) -> Path:
    """Uniform [0, 1) float32 (n, dim) written block by block to a .npy file (reused if it exists)."""
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == (n, dim) and arr.dtype == np.float32:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    rng = np.random.default_rng(seed)
    for s in range(0, n, 50_000):
        out[s:s + 50_000] = rng.random((min(50_000, n - s), dim), dtype=np.float32)
    out.flush()
    del out
    os.replace(tmp, path)
    return path


# --- perturbed-MNIST data (real neighbour structure) ---------------------------------------------
MNIST_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


def _perturb(base: np.ndarray, which: np.ndarray, rng: np.random.Generator, shift: float, noise: float) -> np.ndarray:
    """(n, 784) float32: images ``base[which]`` shifted by (dx, dy) ~ U[-shift, shift]^2 pixels (bilinear,
    background kept), mapped to [-1, 1], plus N(0, noise^2) pixel noise (not clipped)."""
    import torch
    import torch.nn.functional as F

    n = which.size
    x = torch.from_numpy(base[which]).float().div_(255.0).unsqueeze(1)  # (n, 1, 28, 28) in [0, 1]
    d = torch.from_numpy(rng.uniform(-shift, shift, size=(n, 2))).float()
    theta = torch.zeros((n, 2, 3))
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = -d * (2.0 / 28.0)  # translation in grid units (align_corners=False)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = y.reshape(n, 784).numpy() * 2.0 - 1.0
    y += noise * rng.standard_normal((n, 784), dtype=np.float32)
    return y.astype(np.float32, copy=False)


def make_mnist(data_dir: Path, n: int, n_gen: int, n_test: int, copy_share: float, shift: float, noise: float,
               seed: int) -> dict[str, Path]:
    """Training, generated and held-out sets built from the 10,000 real MNIST test images (files reused).

    - train (n, 784): row i is a perturbation (:func:`_perturb`) of image ``i % 10000``, seed ``(seed, 1)``;
    - gen (n_gen, 784): ``round(copy_share * n_gen)`` exact training rows (uniform without replacement; their
      gen positions and training indices in ``gen_truth``), the rest fresh perturbations of random images;
    - held-out (n_test, 784): fresh perturbations of random images (another stream).

    Written as ``.npy`` under ``data_dir`` (memory-mapped, block by block); never committed.
    """
    from memgeo.data.mnist import read_idx

    data_dir.mkdir(parents=True, exist_ok=True)
    tag = f"s{shift:g}_n{noise:g}_seed{seed}"
    paths = {"train": data_dir / f"mnist_train_{n}_{tag}.npy",
             "gen": data_dir / f"mnist_gen_{n_gen}_for_{n}_{tag}.npy",
             "truth": data_dir / f"mnist_gen_truth_{n_gen}_for_{n}_{tag}.npz",
             "test": data_dir / f"mnist_heldout_{n_test}_{tag}.npy"}
    if all(p.is_file() for p in paths.values()):
        return paths
    base = read_idx(MNIST_IMAGES)  # (10000, 28, 28) uint8
    nb = base.shape[0]
    if not paths["train"].is_file():
        tmp = paths["train"].with_suffix(".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, 784))
        rng = np.random.default_rng([seed, 1])
        for s in range(0, n, 50_000):
            rows = np.arange(s, min(n, s + 50_000))
            out[s:s + rows.size] = _perturb(base, rows % nb, rng, shift, noise)
        out.flush()
        del out
        os.replace(tmp, paths["train"])
    train = np.load(paths["train"], mmap_mode="r")
    rng = np.random.default_rng([seed, 2, n])
    n_copy = int(round(copy_share * n_gen))
    pos = np.sort(rng.choice(n_gen, size=n_copy, replace=False))
    src = rng.choice(n, size=n_copy, replace=False)
    fresh = np.setdiff1d(np.arange(n_gen), pos)
    frng = np.random.default_rng([seed, 3])  # the fresh generations do not depend on n
    gen = np.empty((n_gen, 784), dtype=np.float32)
    gen[fresh] = _perturb(base, frng.integers(0, nb, fresh.size), frng, shift, noise)
    gen[pos] = np.asarray(train[np.sort(src)])[np.argsort(np.argsort(src))]
    np.save(paths["gen"], gen)
    np.savez(paths["truth"], gen_index=pos, train_index=src)
    if not paths["test"].is_file():
        trng = np.random.default_rng([seed, 4])
        np.save(paths["test"], _perturb(base, trng.integers(0, nb, n_test), trng, shift, noise))
    return paths


def ivf_sweep(args: argparse.Namespace) -> None:
    """``--ivf-sweep``: recall@1/@10 of IVF (nlist = round(4 sqrt N)) against exact search, per nprobe.

    Queries: ``--sweep-queries`` generated rows drawn with the seed (the same rows for every nprobe),
    k = 10; exact neighbours from the exact faiss index. Prints and saves one row per (N, nprobe), and the
    index's build time.
    """
    import torch

    from memgeo.data.neighbors import NeighborIndex

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for n in [int(s) for s in args.sizes.split(",")]:
        paths = make_mnist(Path(args.data_dir), n, args.queries, args.e2e_test, args.copy_share, args.shift,
                           args.noise, args.seed)
        gen = np.load(paths["gen"])
        q = gen[np.sort(np.random.default_rng(args.seed).choice(len(gen), args.sweep_queries, replace=False))]
        ref = np.load(paths["train"], mmap_mode="r")
        t0 = time.perf_counter()
        d_ex, _ = NeighborIndex(ref, backend="faiss").search(q, 10)
        t_exact = time.perf_counter() - t0
        nlist = int(round(4 * np.sqrt(n)))
        t0 = time.perf_counter()
        index = NeighborIndex(ref, backend="faiss-ivf", nlist=nlist, nprobe=1, seed=args.seed)
        build = time.perf_counter() - t0
        for nprobe in [int(v) for v in args.nprobes.split(",")]:
            index.nprobe = index._index.nprobe = min(nprobe, nlist)
            t0 = time.perf_counter()
            d_a, _ = index.search(q, 10)
            search = time.perf_counter() - t0
            row = {"n": n, "nlist": nlist, "nprobe": nprobe, "queries": len(q), "build_s": build,
                   "search_s": search, "exact_search_s": t_exact,
                   "recall1": recall(d_a.numpy(), d_ex.numpy(), 1), "recall10": recall(d_a.numpy(), d_ex.numpy(), 10)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.json:
            sys.path.insert(0, str(Path(__file__).parent))
            from _common import machine_facts, write_json

            write_json(args.json, {"args": vars(args), "machine": machine_facts(), "rows": rows})


def rerank_bench(args: argparse.Namespace) -> None:
    """``--rerank-bench``: seconds of the exact float64 re-ranking (``_exact_distances``) of 1,024 queries x
    58 candidates (k = 50 + 8) of dimension 784 in an 85,000-row block, with the difference tensor in
    slices of 2**24 (before) and 2**18 (now) float64 elements; best of 5; the results are checked equal."""
    import torch

    from memgeo.data import neighbors as nbr

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    blk = torch.from_numpy(rng.standard_normal((85_000, 784), dtype=np.float32))
    q = torch.from_numpy(rng.standard_normal((1024, 784), dtype=np.float32)).double()
    cand = torch.from_numpy(rng.integers(0, 85_000, (1024, 58)))
    saved, res, outs = nbr._REFINE_BUDGET, {}, []
    try:
        for budget in (1 << 24, 1 << 18):
            nbr._REFINE_BUDGET = budget
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                outs.append(nbr._exact_distances(q, blk, cand))
                times.append(time.perf_counter() - t0)
            res[f"budget_2^{budget.bit_length() - 1}_s"] = min(times)
    finally:
        nbr._REFINE_BUDGET = saved
    res["identical"] = all(torch.equal(outs[0], o) for o in outs)
    print(json.dumps(res))


def child(args: argparse.Namespace) -> None:
    """One (N, method) measurement; prints one JSON line."""
    import torch

    from memgeo.data.neighbors import NeighborIndex

    torch.set_num_threads(args.threads)
    queries = np.load(args.queries_path)
    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    t0 = time.perf_counter()
    index = NeighborIndex(args.reference, **METHODS[args.method])
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    dist, idx = index.search(queries, args.k)
    search = time.perf_counter() - t0
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.save(args.out_prefix + "_d.npy", dist.numpy())
    np.save(args.out_prefix + "_i.npy", idx.numpy())
    extra = {}
    if args.method == "ivf":
        extra = {"nlist": index.nlist, "nprobe": index.nprobe}
    elif args.method == "hnsw":
        extra = {"M": index.hnsw_m, "ef_search": index.ef_search, "ef_construction": index.ef_construction}
    print(json.dumps({"build_s": build, "search_s": search, "tracemalloc_peak_mb": py_peak / 2**20,
                      "rss_before_mb": rss_base, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "block_size": index.block_size, **extra}))


def recall(d_approx: np.ndarray, d_exact: np.ndarray, k: int) -> float:
    """Share of the first k returned neighbours within the exact k-th distance (ties count as found)."""
    found = (d_approx[:, :k] <= d_exact[:, k - 1:k]).sum(axis=1)
    return float(np.minimum(found, k).sum() / (d_exact.shape[0] * k))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100000,1000000", help="training set sizes N, comma-separated")
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--methods", default="faiss,torch,ivf,hnsw")
    p.add_argument("--hnsw-max-n", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="runs/copies_scale")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    # --e2e: time `memgeo copies` end to end instead of the neighbour search alone (see e2e())
    p.add_argument("--e2e", action="store_true", help="time `memgeo copies` end to end (see e2e())")
    p.add_argument("--e2e-backends", default="faiss,faiss-ivf", help="--backend values of memgeo copies")
    p.add_argument("--e2e-metrics", default="d1d2,nn_ratio,dcr,authenticity")
    p.add_argument("--e2e-test", type=int, default=1000, help="held-out rows (drawn like the training set)")
    p.add_argument("--n-boot", type=int, default=200)
    # --mnist: perturbed real MNIST digits instead of uniform vectors (see make_mnist())
    p.add_argument("--mnist", action="store_true", help="data from the MNIST test images (see make_mnist())")
    p.add_argument("--copy-share", type=float, default=0.1, help="share of generations that are training rows")
    p.add_argument("--shift", type=float, default=1.5, help="largest shift in pixels")
    p.add_argument("--noise", type=float, default=0.1, help="pixel noise standard deviation ([-1, 1] scale)")
    p.add_argument("--ivf-sweep", action="store_true", help="recall of IVF per nprobe (see ivf_sweep())")
    p.add_argument("--nprobes", default="1,2,4,8,16,32,64")
    p.add_argument("--sweep-queries", type=int, default=1000)
    p.add_argument("--rerank-bench", action="store_true", help="time the exact re-ranking (see rerank_bench())")
    # internal: one measurement in a child process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--reference", help=argparse.SUPPRESS)
    p.add_argument("--out-prefix", help=argparse.SUPPRESS)
    p.add_argument("--queries-path", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.rerank_bench:
        rerank_bench(args)
        return
    if args.ivf_sweep:
        ivf_sweep(args)
        return
    if args.e2e:
        e2e(args)
        return
    data = Path(args.data_dir)
    qpath = make_data(data / f"queries_{args.queries}x{args.dim}.npy", args.queries, args.dim, args.seed + 1)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows: list[dict[str, Any]] = []
    for n in [int(s) for s in args.sizes.split(",")]:
        t0 = time.perf_counter()
        rpath = make_data(data / f"train_{n}x{args.dim}.npy", n, args.dim, args.seed)
        print(f"[copies_scale] data N={n}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        exact_d = exact_i = None
        for method in args.methods.split(","):
            if method == "hnsw" and n > args.hnsw_max_n:
                rows.append({"n": n, "method": method, "note": f"skipped: N > --hnsw-max-n {args.hnsw_max_n}"})
                continue
            prefix = str(data / f"result_{method}_{n}")
            cmd = [sys.executable, __file__, "--child", "--method", method, "--reference", str(rpath),
                   "--queries-path", str(qpath), "--k", str(args.k), "--threads", str(args.threads),
                   "--out-prefix", prefix]
            print(f"[copies_scale] N={n} {method} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise SystemExit(f"{method} N={n} failed:\n{res.stderr[-3000:]}")
            row = {"n": n, "method": method, **json.loads(res.stdout.strip().splitlines()[-1]),
                   "wall_s": time.perf_counter() - t0}
            d, i = np.load(prefix + "_d.npy"), np.load(prefix + "_i.npy")
            if method in ("faiss", "torch"):
                if exact_d is None:
                    exact_d, exact_i = d, i
                else:
                    row["same_as_exact"] = bool(np.array_equal(i, exact_i) and np.array_equal(d, exact_d))
                row["recall1"], row["recall10"] = 1.0, 1.0
            elif exact_d is not None:
                row["recall1"], row["recall10"] = recall(d, exact_d, 1), recall(d, exact_d, min(10, args.k))
            rows.append(row)
            print(f"[copies_scale]   {json.dumps(row)}", file=sys.stderr, flush=True)
            save(rows, args)  # after every row: a long run leaves what it measured so far
    print(markdown(rows, args))
    save(rows, args)


def save(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    table = markdown(rows, args)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        sys.path.insert(0, str(Path(__file__).parent))
        from _common import machine_facts, write_json

        write_json(args.json, {"args": {k: v for k, v in vars(args).items() if k not in ("child",)},
                               "machine": machine_facts(), "rows": rows})


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = ("| N train | method | build s | search s | peak RSS MB (before) | tracemalloc peak MB | recall@1 | "
            "recall@10 | notes |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['n']:,} | {r['method']} | — | — | — | — | — | — | {r['note']} |")
            continue
        notes = []
        if "nlist" in r:
            notes.append(f"nlist {r['nlist']}, nprobe {r['nprobe']}")
        if "M" in r:
            notes.append(f"M {r['M']}, efSearch {r['ef_search']}, efConstruction {r['ef_construction']}")
        if "same_as_exact" in r:
            notes.append("identical to faiss exact" if r["same_as_exact"] else "DIFFERS from faiss exact")
        notes.append(f"block {r['block_size']:,} rows")
        lines.append(f"| {r['n']:,} | {r['method']} | {r['build_s']:.1f} | {r['search_s']:.1f} | "
                     f"{r['maxrss_mb']:.0f} ({r['rss_before_mb']:.0f}) | {r['tracemalloc_peak_mb']:.0f} | "
                     f"{r.get('recall1', float('nan')):.3f} | {r.get('recall10', float('nan')):.3f} | {'; '.join(notes)} |")
    lines.append("")
    lines.append(f"{args.queries:,} queries, dimension {args.dim}, k = {args.k}, {args.threads} thread(s).")
    return "\n".join(lines)


def e2e(args: argparse.Namespace) -> None:
    """``--e2e``: `memgeo copies` end to end, one child process per (N, backend), wall time and peak RSS.

    The generations are the ``--queries`` file, the training set the ``train_N`` file of the search
    benchmark and the held-out set ``--e2e-test`` rows drawn the same way (uniform, another seed), all
    passed as memory-mapped ``.npy`` files; metrics ``--e2e-metrics`` (default the local ones that
    scale: d1d2, nn_ratio, dcr, authenticity), ``--n-boot`` bootstrap replicates. Peak RSS is the
    child's ``ru_maxrss`` (``resource.getrusage(RUSAGE_CHILDREN)`` in a fresh wrapper process per
    run); the per-stage seconds come from the run's ``summary.json`` (``timings``).

    Run (docs/benchmarks.md section 11b)::

        OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/copies_scale.py --e2e --sizes 100000 \\
            --json benchmarks/results/copies_e2e.json
    """
    data = Path(args.data_dir)
    if not args.mnist:
        qpath = make_data(data / f"queries_{args.queries}x{args.dim}.npy", args.queries, args.dim, args.seed + 1)
        tpath = make_data(data / f"heldout_{args.e2e_test}x{args.dim}.npy", args.e2e_test, args.dim, args.seed + 2)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    memgeo = str(Path(sys.executable).with_name("memgeo"))
    rows: list[dict[str, Any]] = []
    for n in [int(s) for s in args.sizes.split(",")]:
        truth = None
        if args.mnist:
            paths = make_mnist(data, n, args.queries, args.e2e_test, args.copy_share, args.shift, args.noise, args.seed)
            rpath, qpath, tpath = paths["train"], paths["gen"], paths["test"]
            truth = np.load(paths["truth"])
        else:
            rpath = make_data(data / f"train_{n}x{args.dim}.npy", n, args.dim, args.seed)
        exact_csv: dict[str, Any] | None = None
        for backend in args.e2e_backends.split(","):
            out = data / "e2e" / f"{backend}_{n}"
            cmd = [memgeo, "copies", "--train", str(rpath), "--test", str(tpath), "--gen", str(qpath),
                   "--metrics", args.e2e_metrics, "--backend", backend, "--n-boot", str(args.n_boot),
                   "--seed", str(args.seed), "--json", "--out", str(out)]
            print(f"[copies_scale e2e] N={n} {backend}: {' '.join(cmd)}", file=sys.stderr, flush=True)
            # A fresh wrapper per run, so that its RUSAGE_CHILDREN peak is this run's alone.
            wrap = [sys.executable, "-c", "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
                    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"]
            t0 = time.perf_counter()
            res = subprocess.run(wrap + cmd, env=env, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
            peak = int(res.stderr.strip().splitlines()[-1]) if res.stderr.strip() else None
            if res.returncode != 0:
                raise SystemExit(f"memgeo copies N={n} {backend} failed:\n{res.stderr[-3000:]}")
            summary = json.loads((out / "summary.json").read_text())
            row = {"n": n, "backend": backend, "n_gen": summary["n_gen"], "n_test": summary["n_test"],
                   "wall_s": wall, "maxrss_mb": peak / 1024 if peak else None,
                   "timings": summary["timings"], "command": " ".join(["memgeo", *cmd[1:]]),
                   "rates": {k: {f: m.get(f) for f in ("value", "baseline", "n_flagged", "ci_low", "ci_high")}
                             for k, m in summary["metrics"].items()},
                   "details": {k: {f: m[f] for f in ("train_spacing", "spacing_rows", "spacing_subsampled")
                                   if f in m} for k, m in summary["metrics"].items()}}
            csv = _read_copies_csv(out / "copies.csv")
            if truth is not None:  # which generations each local criterion flags vs the known copies
                is_copy = np.zeros(summary["n_gen"], dtype=bool)
                is_copy[truth["gen_index"]] = True
                row["truth"] = {"n_copies": int(is_copy.sum()),
                                "nearest_is_source": float(np.mean(csv["nearest_train_index"][truth["gen_index"]]
                                                                   == truth["train_index"]))}
                for k in summary["metrics"]:
                    if f"{k}_copy" in csv:
                        f = csv[f"{k}_copy"]
                        row["truth"][k] = {"flagged_copies": int((f & is_copy).sum()),
                                           "flagged_fresh": int((f & ~is_copy).sum())}
            if backend in ("faiss", "torch", "auto") and exact_csv is None:
                exact_csv = csv
            elif exact_csv is not None:  # an approximate index against the exact run's copies.csv
                row["recall1_nearest"] = float(np.mean(csv["nearest_train_distance"]
                                                       <= exact_csv["nearest_train_distance"]))
                row["agreement"] = {k: float(np.mean(csv[f"{k}_copy"] == exact_csv[f"{k}_copy"]))
                                    for k in summary["metrics"] if f"{k}_copy" in csv}
                if "authentic" in csv:
                    row["agreement"]["authenticity"] = float(np.mean(csv["authentic"] == exact_csv["authentic"]))
            rows.append(row)
            print(f"[copies_scale e2e]   {json.dumps(row)}", file=sys.stderr, flush=True)
            if args.json:
                sys.path.insert(0, str(Path(__file__).parent))
                from _common import machine_facts, write_json

                write_json(args.json, {"args": vars(args), "machine": machine_facts(), "rows": rows})
    for r in rows:
        print(json.dumps(r))


def _read_copies_csv(path: Path) -> dict[str, np.ndarray]:
    """The columns of a copies.csv as arrays (booleans for the ``*_copy`` columns)."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, np.ndarray] = {}
    for col in rows[0]:
        vals = [r[col] for r in rows]
        if col.endswith("_copy") or col == "copy":
            out[col] = np.array([v in ("True", "true", "1") for v in vals])
        else:
            try:
                out[col] = np.array([float(v) for v in vals])
            except ValueError:
                out[col] = np.array(vals)
    if "nearest_train_index" in out:
        out["nearest_train_index"] = out["nearest_train_index"].astype(np.int64)
    return out


if __name__ == "__main__":
    main()
