"""Ray vs single process for ``memgeo detect`` on a local Ray instance, and the projected scaling to 8 and 64 GPUs.

Measures, on a tiny random-weight caption model (the pipeline of tests/test_ray_engine.py, wider):

* the single-process run's pieces: ``prepare`` (load the model; L), scoring every unit (N items;
  per-item cost c = scoring time / N) and ``finalize`` (F);
* whole plain runs and whole Ray runs (``--engine ray --workers W`` on a local instance started with
  ``num_cpus = W``; the start S timed separately) at N and N/4 prompts. A straight line through the
  two sizes splits each engine's wall time into a fixed part A (model load, actor start, finalize)
  and a per-item part B: T(N) = A + B N;
* the Ray overhead: Ray wall - plain wall (seconds and per item), and the per-item Ray overhead per
  actor o = B_ray W - c (dispatch, Arrow conversion, result transfer; W actors share the work).

Projection model (stated, not measured on GPUs): with G actors (one GPU each) and N items,

    T(G) = S + A_ray + N (c + o) / G

for the measured c and for a given per-item device cost (``--item-ms``, e.g. a U-Net's): actors load
their model in parallel (inside A_ray), the driver's prepare and finalize are serial (inside A_ray).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_overhead.py --prompts 64 --workers 2 \
        --json benchmarks/results/ray_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import Contention, fmt, machine_facts, machine_line, markdown_table, write_json

WORDS = ["photo", "digit", "zebra", "quokka", "one", "two", "three", "four", "red", "blue", "cat", "dog"]


def _assets(root: Path, n_prompts: int, seed: int) -> Path:
    from memgeo.models.caption import CaptionDiffusionModel, CaptionModelConfig, build_vocab, save_caption_model

    rng = np.random.default_rng(seed)
    prompts = [" ".join(["a"] + list(rng.choice(WORDS, 3))) for _ in range(n_prompts)]
    torch.manual_seed(seed)
    cfg = CaptionModelConfig(data_shape=(1, 8, 8), vocab=build_vocab(prompts), hidden=128, depth=2, embed_dim=32,
                             heads=2, max_length=8)
    save_caption_model(CaptionDiffusionModel(cfg).eval(), root / "model")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p, "memorized": int("photo" in p)}) + "\n"
                                                for p in prompts))
    return root


def _cfg(root: Path, args: argparse.Namespace):
    from memgeo.memorization.prompt_scores import SamplingSettings
    from memgeo.workflows.detect import DetectConfig

    return DetectConfig(model=str(root / "model"), prompts=str(root / "prompts.jsonl"), scores=tuple(args.scores.split(",")),
                        generations=args.generations, batch_prompts=args.batch, attribution_score=None,
                        labels_from_field="memorized", sampling=SamplingSettings(steps=args.steps))


def project(n: int, c: float, o: float, s: float, load: float, fin: float, g: int) -> float:
    """T(G) of the module docstring, in seconds."""
    return s + load + n * (c + o) / g + fin


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--batch", type=int, default=4, help="prompts per unit (detect --batch)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--scores", default="wen,jeon,sharpness")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--item-ms", type=float, default=500.0,
                   help="a per-item cost to project as well (ms per prompt on one GPU, e.g. a real U-Net)")
    p.add_argument("--project-items", type=int, default=4000, help="items of the projection (1,000 prompts x 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    import ray

    from memgeo.workflows.detect import DETECT_ITEMS, prepare_detect, run_detect
    from memgeo.workflows.items import ScaleOptions

    machine = machine_facts()
    busy = Contention()
    with tempfile.TemporaryDirectory() as tmp:
        root = _assets(Path(tmp), args.prompts, args.seed)
        lines = (root / "prompts.jsonl").read_text().splitlines(keepends=True)
        small = args.prompts // 4
        (root / "small.jsonl").write_text("".join(lines[:small]))
        cfg = _cfg(root, args)
        cfg_small = cfg.model_copy(update={"prompts": str(root / "small.jsonl")})
        # pieces of the single-process run (after a warm-up plan, so imports are not counted as load)
        prepare_detect(cfg)
        t = time.perf_counter()
        plan = prepare_detect(cfg)
        load = time.perf_counter() - t
        t = time.perf_counter()
        rows = [r for unit in plan.units for r in DETECT_ITEMS.score_batch(plan, unit)]
        score = time.perf_counter() - t
        n = len(rows)
        t = time.perf_counter()
        DETECT_ITEMS.finalize(plan, [r.normalized() for r in rows], Path(tmp) / "fin")
        fin = time.perf_counter() - t
        walls: dict[tuple[str, int], float] = {}
        for c_, k in ((cfg, n), (cfg_small, small)):
            t = time.perf_counter()
            run_detect(c_, Path(tmp) / f"plain{k}", progress=False)
            walls["plain", k] = time.perf_counter() - t
        t = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        start = time.perf_counter() - t
        for c_, k in ((cfg, n), (cfg_small, small)):
            t = time.perf_counter()
            run_detect(c_, Path(tmp) / f"ray{k}", progress=False, scale=ScaleOptions(engine="ray", workers=args.workers))
            walls["ray", k] = time.perf_counter() - t
        ray.shutdown()
        same = all((Path(tmp) / f"plain{k}" / "scores_per_generation.csv").read_text()
                   == (Path(tmp) / f"ray{k}" / "scores_per_generation.csv").read_text() for k in (n, small))
    other = busy.stop()
    c = score / n
    fit = {}
    for eng in ("plain", "ray"):
        b_ = (walls[eng, n] - walls[eng, small]) / (n - small)
        fit[eng] = {"A_s": walls[eng, n] - b_ * n, "B_s_per_item": b_}
    o = max(0.0, fit["ray"]["B_s_per_item"] * args.workers - c)
    a_ray = fit["ray"]["A_s"]
    overhead = walls["ray", n] - walls["plain", n]
    res = {"machine": machine, "contention": other, "args": vars(args), "n_items": n, "n_small": small,
           "units": len(plan.units), "prepare_s": load, "score_s": score, "per_item_s": c, "finalize_s": fin,
           "walls_s": {f"{e}_{k}": v for (e, k), v in walls.items()}, "fit": fit, "ray_start_s": start,
           "ray_overhead_s": overhead, "ray_overhead_per_item_s": overhead / n, "o_per_item_s": o, "rows_identical": same}
    rows_md = [{"what": "single process: prepare (model load)", "s": load},
               {"what": f"single process: score {n} prompts ({len(plan.units)} units of {args.batch})", "s": score},
               {"what": "single process: finalize (CSV, JSON, report)", "s": fin},
               {"what": f"ray.init(num_cpus={args.workers})", "s": start}]
    for k in (small, n):
        rows_md += [{"what": f"whole run, {k} prompts: single process", "s": walls["plain", k]},
                    {"what": f"whole run, {k} prompts: Ray, {args.workers} actors", "s": walls["ray", k]}]
    rows_md += [{"what": f"Ray overhead at {n} prompts (Ray - single process)", "s": overhead},
                {"what": "  per prompt", "s": overhead / n}]
    print(markdown_table(rows_md, [("what", "what"), ("s", "seconds")]))
    print(f"\nfit T(N) = A + B N: single process A = {fmt(fit['plain']['A_s'])} s, B = "
          f"{fmt(fit['plain']['B_s_per_item'] * 1e3)} ms; Ray ({args.workers} actors) A = {fmt(a_ray)} s, "
          f"B = {fmt(fit['ray']['B_s_per_item'] * 1e3)} ms. Per-item cost c = {fmt(c * 1e3)} ms; per-item Ray "
          f"overhead per actor o = B_ray W - c = {fmt(o * 1e3)} ms. Rows identical: {same}.")
    proj = []
    for label, ci in (("measured tiny model", c), (f"{args.item_ms:g} ms per item (given)", args.item_ms / 1e3)):
        t1 = project(args.project_items, ci, o, start, a_ray, 0.0, 1)
        for g in (1, 8, 64):
            tg = project(args.project_items, ci, o, start, a_ray, 0.0, g)
            proj.append({"cost": label, "gpus": g, "seconds": tg, "speedup": t1 / tg, "efficiency": t1 / tg / g})
    res["projection"] = proj
    print(f"\nProjection for {args.project_items} items, T(G) = S + A_ray + N (c + o) / G:\n")
    print(markdown_table(proj, [("cost", "per-item cost"), ("gpus", "GPUs"), ("seconds", "T (s)"),
                                ("speedup", "speed-up vs 1"), ("efficiency", "efficiency")]))
    print("\n" + machine_line(machine) + f" Other processes used {fmt(other.get('other_cpus'))} CPUs on average.")
    if args.json:
        write_json(args.json, res)


if __name__ == "__main__":
    sys.exit(main())
