"""Prompt-level memorization detection on the memorized-caption digits benchmark.

Usage (what docs/prompt_detection.md reports)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prompt_detection.py --threads 1 \
        --run runs/caption_digits --json benchmarks/results/prompt_detection.json

The run folder is the one `memgeo` builds for issue 4 (part A): ``model/`` (caption-conditional
model), ``prompts_all.jsonl`` (fields prompt, memorized), ``train_x.npy``. Memorized prompts are the
unique captions of training images duplicated many times; generic prompts are shared captions.

Measured, for every prompt score at the FIRST sampling step with ONE generation per prompt
(the acceptance setting), then with ``--generations-more`` (default 4) generations, and Wen's score
averaged over longer step windows:

* AUROC with a stratified bootstrap 95% CI (labels = the prompt file's ``memorized``; every score has
  a fixed sign, higher = memorized, never flipped), TPR at FPR <= 1% (strict) and at the closest FPR;
* cost: network passes per prompt (forward + JVP/VJP passes, from the algorithm, checked by tests)
  and wall milliseconds per prompt (batch of ``--batch`` prompts, one warm-up batch untimed);
* the effect size d' = (mean memorized - mean generic) / pooled std, which still ranks scores once
  AUROC saturates at 1;
* context: the copy rate of the generations of each prompt group (d1/d2 < 1/3 on train_x.npy);
* copy detection (harder): memorized, generic and *partial* prompts (each memorized caption without
  its adjective, and its two unique words alone), ``--generations-more`` generations each on fresh
  seeds; every first-step score of each single generation against whether that generation is a copy.

Each prompt's noise comes from seed + its index, so every configuration sees the same noises.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import Contention, machine_facts, machine_line, markdown_table, write_json

from memgeo.data.prompts import load_prompts
from memgeo.memorization.copies import label_copies
from memgeo.memorization.evaluation import evaluate_detector
from memgeo.memorization.prompt_scores import (
    PROMPT_SCORES,
    SamplingSettings,
    generated_samples,
    generation_noise,
    get_prompt_score,
)
from memgeo.models.loading import load

SIGNED_EXTRAS = {"asthana": ("norm", "cosine")}


def score_all(model, prompts: list[str], seeds: list[int], name: str, params: dict[str, Any], generations: int,
              sampling: SamplingSettings, batch: int) -> tuple[np.ndarray, dict[str, np.ndarray], float, float]:
    """Values (P,), signed extras, passes per prompt and ms per prompt (warm-up batch excluded)."""
    score = get_prompt_score(name, **params)
    with torch.no_grad():
        cond_all = model.encode(prompts)
    x_all = generation_noise(model, seeds, generations)
    score.compute(model, cond_all[:2], x_all[:2], sampling=sampling)  # warm-up (torch.func tracing etc.)
    vals, extras, seconds, passes = [], {}, 0.0, None
    for s in range(0, len(prompts), batch):
        res = score.compute(model, cond_all[s:s + batch], x_all[s:s + batch], sampling=sampling)
        vals.append(res.values.numpy())
        for k in SIGNED_EXTRAS.get(name, ()):
            extras.setdefault(k, []).append(res.extra[k].mean(1).numpy())
        seconds += res.seconds
        passes = res.evals_per_prompt
    return (np.concatenate(vals), {k: np.concatenate(v) for k, v in extras.items()}, float(passes),
            1000.0 * seconds / len(prompts))


def effect_size(values: np.ndarray, labels: np.ndarray) -> float:
    """(mean positive - mean negative) / pooled standard deviation: how far apart the groups are,
    which AUROC (saturated at 1 once they do not overlap) no longer shows."""
    a, b = values[labels == 1], values[labels == 0]
    pooled = np.sqrt(0.5 * (a.var(ddof=1) + b.var(ddof=1)))
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else float("nan")


def row(name: str, values: np.ndarray, labels: np.ndarray, passes: float, ms: float, n_boot: int, **info) -> dict:
    ev = evaluate_detector(values, labels, name, n_boot=n_boot, seed=0)
    return {"score": name, **info, "effect_size": effect_size(values, labels), "auroc": ev.auroc, "ci_low": ev.ci_low, "ci_high": ev.ci_high,
            "tpr_at_1pct_fpr": ev.tpr_at_1pct_fpr, "tpr_at_closest_1pct_fpr": ev.tpr_at_closest_1pct_fpr,
            "closest_fpr_used": ev.closest_fpr_used, "n_pos": ev.n_pos, "n_neg": ev.n_neg,
            "passes_per_prompt": passes, "ms_per_prompt": ms}


def partial_prompts(prompt: str) -> list[str]:
    """Harder variants of a memorized caption "a <adj> <noun> shaped like a <digit>": without the adjective,
    and the two unique words alone. Whether they still copy is read from the generations."""
    w = prompt.split()
    return [" ".join([w[0]] + w[2:]), " ".join(w[1:3])] if len(w) >= 4 else []


def copy_detection(model, entries, labels, train, names, sampling, args) -> tuple[list[dict], dict]:
    """Per-generation detection of actual copies (d1/d2 < 1/3) over memorized, partial and generic prompts."""
    prompts = [e.prompt for e in entries]
    extra = [q for e, y in zip(entries, labels) if y == 1 for q in partial_prompts(e.prompt)]
    allp = prompts + extra
    group = np.array([("memorized" if y else "generic") for y in labels] + ["partial"] * len(extra))
    seeds = [args.seed + 10_000 + i for i in range(len(allp))]  # fresh noises, not those of the prompt-level runs
    n = args.generations_more
    with torch.no_grad():
        cond = model.encode(allp)
        x = generation_noise(model, seeds, n)
        x0 = generated_samples(model, cond.repeat_interleave(n, 0), x.reshape((-1,) + tuple(model.data_shape)),
                               sampling, {})
    is_copy = label_copies(x0.float(), train, "ratio").is_copy.astype(int)
    rate = {g: float(is_copy.reshape(len(allp), n)[group == g].mean()) for g in ("memorized", "partial", "generic")}
    print(f"copy detection: {len(allp)} prompts x {n} generations; copy rate per group {rate}", flush=True)
    out = []
    for name in names:
        score = get_prompt_score(name)
        vals = []
        for s in range(0, len(allp), args.batch):
            cache = {}
            if score.needs_sample:  # reuse the generations already sampled
                cache["x0"] = x0[s * n:(s + args.batch) * n]
            vals.append(score.compute(model, cond[s:s + args.batch], x[s:s + args.batch], sampling=sampling,
                                      cache=cache).per_generation.numpy().reshape(-1))
        v = np.concatenate(vals)
        r = row(name, v, is_copy, float("nan"), float("nan"), args.n_boot, generations=1, window="0:1",
                target="copy (per generation)")
        out.append(r)
        print(f"  {name:<14} copy AUROC {r['auroc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  "
              f"TPR@1% {r['tpr_at_1pct_fpr']:.2f}  d' {r['effect_size']:.2f}", flush=True)
    return out, {"n_prompts": len(allp), "n_partial": len(extra), "generations": n, "copy_rate": rate,
                 "n_copies": int(is_copy.sum()), "n_generations": int(is_copy.size)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/caption_digits")
    p.add_argument("--prompts", default=None, help="default: RUN/prompts_all.jsonl")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scores", default=",".join(PROMPT_SCORES))
    p.add_argument("--generations-more", type=int, default=4)
    p.add_argument("--wen-windows", default="0:5,0:10,0:25")
    p.add_argument("--steps", type=int, default=None, help="default: the run's sample_steps (else 50)")
    p.add_argument("--guidance", type=float, default=None, help="default: the run's guidance (else 3)")
    p.add_argument("--clip", type=float, nargs=2, default=(-1.0, 1.0), help="x0 clamp of the sampler (data range)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-copies", action="store_true", help="skip the copy-rate context")
    p.add_argument("--no-partial", action="store_true", help="skip the partial-prompt copy-detection experiment")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    if not (run / "model").exists():
        sys.exit(f"error: {run}/model does not exist; build the benchmark run first")
    run_cfg = {}
    if (run / "config.json").is_file():
        import json

        run_cfg = json.loads((run / "config.json").read_text())
    sampling = SamplingSettings(steps=args.steps or run_cfg.get("sample_steps", 50),
                                guidance=args.guidance if args.guidance is not None else run_cfg.get("guidance", 3.0),
                                clip=tuple(args.clip))
    model = load(run / "model")
    entries = load_prompts(args.prompts or run / "prompts_all.jsonl")
    prompts = [e.prompt for e in entries]
    labels = np.array([int(bool(e.memorized)) for e in entries])
    seeds = [args.seed + i for i in range(len(prompts))]
    names = [s for s in args.scores.split(",") if s]
    machine = machine_facts()
    contention = Contention()
    results: list[dict[str, Any]] = []

    def record(name, vals, extras, passes, ms, **info):
        results.append(row(name, vals, labels, passes, ms, args.n_boot, **info))
        for k, v in extras.items():
            results.append(row(f"{name}.{k}", v, labels, passes, ms, args.n_boot, **info))
        r = results[-1 - len(extras)]
        print(f"  {r['score']:<14} {info}  AUROC {r['auroc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  "
              f"TPR@1% {r['tpr_at_1pct_fpr']:.2f}  {passes:g} passes  {ms:.2f} ms/prompt", flush=True)

    for gens in (1, args.generations_more):
        print(f"first step, {gens} generation(s):", flush=True)
        for name in names:
            vals, extras, passes, ms = score_all(model, prompts, seeds, name, {}, gens, sampling, args.batch)
            record(name, vals, extras, passes, ms, generations=gens, window="0:1")
    for w in [w for w in args.wen_windows.split(",") if w]:
        a, b = (int(v) for v in w.split(":"))
        for gens in (1, args.generations_more):
            vals, extras, passes, ms = score_all(model, prompts, seeds, "wen", {"window": (a, b)}, gens, sampling,
                                                 args.batch)
            record("wen", vals, extras, passes, ms, generations=gens, window=w)

    copies, copy_results = None, []
    if not args.no_copies and (run / "train_x.npy").is_file():
        train = torch.as_tensor(np.load(run / "train_x.npy"), dtype=torch.float32)
        with torch.no_grad():
            cond = model.encode(prompts)
            x = generation_noise(model, seeds, args.generations_more).reshape((-1,) + tuple(model.data_shape))
            x0 = generated_samples(model, cond.repeat_interleave(args.generations_more, 0), x, sampling, {})
        lab = label_copies(x0.float(), train, "ratio")
        per_prompt = lab.is_copy.reshape(len(prompts), -1).mean(1)
        copies = {"criterion": lab.criterion, "threshold": lab.threshold, "generations": args.generations_more,
                  "copy_rate_memorized": float(per_prompt[labels == 1].mean()),
                  "copy_rate_generic": float(per_prompt[labels == 0].mean())}
        print(f"copy rate ({lab.criterion} < {lab.threshold}): memorized prompts {copies['copy_rate_memorized']:.2f}, "
              f"generic {copies['copy_rate_generic']:.2f}")
        if not args.no_partial:
            copy_results, copies["partial"] = copy_detection(model, entries, labels, train, names, sampling, args)
    cont = contention.stop()

    cols = [("score", "score"), ("window", "steps"), ("generations", "n"), ("effect_size", "d'"), ("auroc", "AUROC"), ("ci_low", "CI low"),
            ("ci_high", "CI high"), ("tpr_at_1pct_fpr", "TPR@1%FPR"), ("tpr_at_closest_1pct_fpr", "TPR@closest"),
            ("closest_fpr_used", "closest FPR"), ("passes_per_prompt", "passes/prompt"), ("ms_per_prompt", "ms/prompt")]
    print()
    print(machine_line(machine))
    print(f"{labels.sum()} memorized + {(1 - labels).sum()} generic prompts; sampling {sampling.model_dump()}; "
          f"other CPU load during the run: {cont['other_cpus']}")
    print(markdown_table(results, cols))
    if copy_results:
        print()
        print(markdown_table(copy_results, cols[:-2]))
    if args.json:
        write_json(args.json, {"command": " ".join(sys.argv), "machine": machine, "contention": cont,
                               "run": str(run), "run_config": run_cfg, "sampling": sampling.model_dump(),
                               "n_memorized": int(labels.sum()), "n_generic": int((1 - labels).sum()),
                               "copies": copies, "results": results, "copy_detection": copy_results, "time": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                            time.gmtime())})


if __name__ == "__main__":
    main()
