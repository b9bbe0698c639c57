"""The memorized-caption digits benchmark: train the caption model and write runs/caption_digits/.

Usage (the defaults are the committed benchmark; a few minutes on one core)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/caption_model.py --threads 1 --out runs/caption_digits \
        --json benchmarks/results/caption_model.json

Builds the benchmark data (40 digits with unique captions x 15 copies, every other digit with one of
4 generic captions of its class), trains the caption-conditional diffusion model and the digit
classifier, samples ``--generations`` images per prompt (DDIM ``--sample-steps``, CFG
``--guidance``) and labels copies with memgeo's d1/d2 < 1/3 criterion on the de-duplicated training
set. The folder is what ``memgeo detect`` / ``memgeo mitigate`` benchmarks read; ``READY`` is written
last. Training resumes from ``OUT/model`` when the settings match.
"""

from __future__ import annotations

import argparse
import sys

from _common import add_run_args, start_run, write_json

from memgeo.workflows.caption_bench import (
    DEFAULT_OUT,
    CaptionBenchConfig,
    run_caption_bench,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(p)
    d = CaptionBenchConfig()
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--mnist", default=None, help="MNIST IDX folder (default: the embedded 8x8 digits)")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--memorized", type=int, default=d.n_memorized, help="P, prompts with a unique caption")
    p.add_argument("--copies", type=int, default=d.copies, help="K, copies of each memorized image")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--depth", type=int, default=d.depth)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--guidance", type=float, default=d.guidance)
    p.add_argument("--sample-steps", type=int, default=d.sample_steps)
    p.add_argument("--generations", type=int, default=d.generations)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    machine = start_run(args)
    cfg = CaptionBenchConfig(n_memorized=args.memorized, copies=args.copies, mnist=args.mnist,
                             max_images=args.max_images, hidden=args.hidden, depth=args.depth, steps=args.steps,
                             batch_size=args.batch_size, lr=args.lr,
                             guidance=args.guidance, sample_steps=args.sample_steps, generations=args.generations,
                             seed=args.seed)
    summary = run_caption_bench(cfg, args.out, progress=not args.no_progress)
    c = summary["copy"]
    print(f"copy rate (d1/d2 < 1/3): memorized prompts {c['memorized']['copy_rate']:.3f} "
          f"(own image {c['memorized']['copies_own_image_rate']:.3f}), generic prompts {c['generic']['copy_rate']:.3f}")
    print(f"class accuracy of generations: memorized {c['memorized']['class_accuracy']:.3f}, "
          f"generic {c['generic']['class_accuracy']:.3f}; classifier held-out "
          f"{summary['classifier']['holdout_accuracy']:.3f}")
    for r in summary["guidance_sweep"]:
        print(f"guidance {r['guidance']:>4}: copy rate memorized {r['copy_rate_memorized']:.3f}, "
              f"generic {r['copy_rate_generic']:.3f}; class accuracy memorized {r['class_accuracy_memorized']:.3f}, "
              f"generic {r['class_accuracy_generic']:.3f}")
    print(f"train {summary['timings']['train_model_s']:.0f} s, evaluate {summary['timings']['evaluate_s']:.0f} s")
    if args.json:
        write_json(args.json, {"machine": machine, "command": " ".join(sys.argv), **summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
