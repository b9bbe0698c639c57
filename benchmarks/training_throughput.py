"""Training and sampling throughput of memgeo's models on this machine.

Usage (the defaults are what docs/benchmarks.md reports; about 1.5 minutes on 2 cores)::

    .venv/bin/python benchmarks/training_throughput.py --json benchmarks/results/training_throughput.json

For each model, ``memgeo.models.train`` (no ``out_dir``, progress off) runs ``--warmup`` steps plus
the measured steps on synthetic data (uniform in [-1, 1], 10 classes: throughput does not depend on
the data). ``train`` logs every ``--chunk`` steps; the wall time between consecutive logs gives one
steps/s measurement per chunk, and the table reports the median over the chunks after the warm-up
(robust to other processes on the machine) and the overall rate. The step includes everything
``train`` does: batch draw, forward, backward, gradient clipping, AdamW, EMA update, ``loss.item()``.

Sampling: DDIM with ``--sample-steps`` steps (``--sample-steps`` + 1 network evaluations, guidance 1,
clip to [-1, 1]) on a batch of ``--sample-batch`` (UNet: ``--unet-sample-batch``) class labels with
the trained (EMA) model; images/s is the batch size over the median of ``--sample-repeats`` runs.

Models (all class-conditional with 10 classes, as in the demo):

* MLP 8x8:   MLPEps (1, 8, 8), hidden 256, depth 3, batch 256;
* MLP 28x28: MLPEps (1, 28, 28), hidden 512, depth 3, batch 128;
* UNet 28x28: UNetEps channels (32, 64, 64), batch 64.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from _common import (Contention, add_run_args, machine_line, markdown_table, median, start_run,
                     time_it, write_json)
from memgeo.models import MLPConfig, ModelConfig, TrainConfig, UNetConfig, sample_ddim, train

NUM_CLASSES = 10


@dataclass
class Spec:
    key: str
    name: str
    config: ModelConfig
    batch: int
    steps: int
    sample_batch: int


def specs(args: argparse.Namespace) -> list[Spec]:
    out = [
        Spec("mlp64", "MLP 8x8 (h256, d3)",
             MLPConfig(data_shape=(1, 8, 8), hidden=256, depth=3, num_classes=NUM_CLASSES), 256,
             args.mlp_steps, args.sample_batch),
        Spec("mlp784", "MLP 28x28 (h512, d3)",
             MLPConfig(data_shape=(1, 28, 28), hidden=512, depth=3, num_classes=NUM_CLASSES), 128,
             args.mlp_steps, args.sample_batch),
        Spec("unet", "UNet 28x28 (32,64,64)",
             UNetConfig(data_shape=(1, 28, 28), channels=(32, 64, 64), num_classes=NUM_CLASSES), 64,
             args.unet_steps, args.unet_sample_batch),
    ]
    return [s for s in out if s.key in args.models]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bench_one(spec: Spec, args: argparse.Namespace) -> dict[str, Any]:
    g = torch.Generator().manual_seed(args.seed)
    shape = tuple(spec.config.data_shape)
    data = 2 * torch.rand((args.n_data,) + shape, generator=g) - 1
    labels = torch.arange(args.n_data) % NUM_CLASSES
    chunk = args.chunk
    warm = -(-args.warmup // chunk) * chunk  # round up to a whole chunk
    total = warm + -(-spec.steps // chunk) * chunk
    cfg = TrainConfig(steps=total, batch_size=spec.batch, log_every=chunk, checkpoint_every=total,
                      lr_warmup=10, seed=args.seed)

    chunk_rates: list[float] = []
    overall: list[float] = []
    wall: list[float] = []
    model = None
    for _ in range(args.repeats):
        stamps: list[tuple[int, float]] = []
        t0 = time.perf_counter()
        res = train(spec.config, cfg, data, labels, progress=False,
                    on_log=lambda e: stamps.append((e["step"], time.perf_counter())))
        wall.append(time.perf_counter() - t0)
        model = res.model
        after = [(s, t) for s, t in stamps if s >= warm]
        for (s0, t0_), (s1, t1) in zip(after, after[1:]):
            chunk_rates.append((s1 - s0) / (t1 - t0_))
        overall.append((after[-1][0] - after[0][0]) / (after[-1][1] - after[0][1]))

    assert model is not None
    sps = median(chunk_rates)
    cond = torch.arange(spec.sample_batch) % NUM_CLASSES
    noise = torch.randn((spec.sample_batch,) + shape, generator=torch.Generator().manual_seed(args.seed + 1))

    def sample() -> None:
        sample_ddim(model, noise, steps=args.sample_steps, cond=cond, guidance=1.0, clip=(-1.0, 1.0))

    s_secs = median(time_it(sample, args.sample_repeats, warmup=1))
    return {
        "model": spec.name, "params": n_params(model), "batch": spec.batch,
        "measured_steps": total - warm, "warmup_steps": warm, "repeats": args.repeats,
        "steps_per_s": sps, "samples_per_s": sps * spec.batch, "ms_per_step": 1e3 / sps,
        "steps_per_s_overall": median(overall), "chunk_rate_min": min(chunk_rates), "chunk_rate_max": max(chunk_rates),
        "train_call_wall_s": median(wall),
        "sample_batch": spec.sample_batch, "sample_steps": args.sample_steps,
        "net_evals": args.sample_steps + 1, "sample_s": s_secs, "images_per_s": spec.sample_batch / s_secs,
        "ms_per_eval": 1e3 * s_secs / (args.sample_steps + 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mlp64", "mlp784", "unet"], choices=["mlp64", "mlp784", "unet"])
    p.add_argument("--mlp-steps", type=int, default=200, help="measured steps for the MLPs")
    p.add_argument("--unet-steps", type=int, default=50, help="measured steps for the UNet (~0.5-1 s each)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (rounded up to a chunk)")
    p.add_argument("--chunk", type=int, default=10, help="steps per timing chunk (train's log_every)")
    p.add_argument("--repeats", type=int, default=1, help="train() runs per model; chunks of all runs pooled")
    p.add_argument("--n-data", type=int, default=2048, help="synthetic training rows")
    p.add_argument("--sample-steps", type=int, default=100, help="DDIM steps")
    p.add_argument("--sample-batch", type=int, default=200, help="images per DDIM call for the MLPs")
    p.add_argument("--unet-sample-batch", type=int, default=32, help="images per DDIM call for the UNet")
    p.add_argument("--sample-repeats", type=int, default=3)
    add_run_args(p)
    args = p.parse_args(argv)

    machine = start_run(args)
    t_start = time.perf_counter()
    contention = Contention()
    rows = []
    for spec in specs(args):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {spec.name}", file=sys.stderr, flush=True)
        per_model = Contention()
        rows.append(bench_one(spec, args))
        rows[-1]["other_cpus"] = per_model.stop()["other_cpus"]
    total = time.perf_counter() - t_start
    machine["loadavg_at_end"] = os.getloadavg()
    machine["other_processes_cpus"] = contention.stop()["other_cpus"]

    print(f"## Training throughput (memgeo.models.train, median over {args.chunk}-step chunks)\n")
    print(machine_line(machine) + "\n")
    print(markdown_table(rows, [("model", "model"), ("params", "parameters"), ("batch", "batch"),
                                ("measured_steps", "measured steps"), ("steps_per_s", "steps/s"),
                                ("samples_per_s", "samples/s"), ("ms_per_step", "ms/step"),
                                ("steps_per_s_overall", "steps/s (overall)"),
                                ("other_cpus", "other processes' CPUs")]))
    print(f"\n## Sampling throughput (DDIM {args.sample_steps} steps, guidance 1, median of "
          f"{args.sample_repeats})\n")
    print(markdown_table(rows, [("model", "model"), ("sample_batch", "batch"), ("net_evals", "network evals"),
                                ("sample_s", "s / batch"), ("images_per_s", "images/s"),
                                ("ms_per_eval", "ms / batched eval")]))
    print(f"\ntotal wall time {total:.0f} s; load average at end {machine['loadavg_at_end'][0]:.2f}; "
          f"other processes used {machine['other_processes_cpus'] or 0:.2f} CPUs on average")
    if args.json:
        write_json(args.json, {"benchmark": "training_throughput", "args": vars(args), "machine": machine,
                               "rows": rows, "total_seconds": total})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
