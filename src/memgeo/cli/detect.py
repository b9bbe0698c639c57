"""`memgeo detect` (prompt-level memorization scores): registers its command on :data:`memgeo.cli.app`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from memgeo.cli.common import (Address, Engine, GpusPerWorker, Out, PanelCommand, Shard, Workers, app, emit_shard,
                               load_config, scale_options)
from memgeo.cli.output import Json, auroc_text, emit, num


@app.command(cls=PanelCommand)
def detect(
    model: Annotated[str, typer.Option(help="Caption-model checkpoint or diffusers pipeline folder (SD 1.x/2.x, "
                                            "SDXL, SD3).")],
    prompts: Annotated[str, typer.Option(help="Prompt file (.txt one per line, .jsonl or .csv) or a benchmark set: "
                                              "sd1, sd2, rv, rv_full (memorized + non-memorized lists from "
                                              "$MEMGEO_DATA/prompts, or NAME:FOLDER); sets label themselves.")],
    preset: Annotated[str, typer.Option(help="A paper's published detection settings: wen2024, jeon2025, "
                                             "asthana2026 (docs/paper_conventions.md). Explicit options win. "
                                             "[default: none]")] = None,
    scores: Annotated[str, typer.Option(help="Comma-separated: wen, jeon, jeon_vjp, asthana, hessian_diff, "
                                             "sharpness, flipd_cond, flipd_uncond. [default: all first-step scores; "
                                             "with --preset, the paper's own]")] = None,
    generations: Annotated[int, typer.Option(help="Generations (initial noises) per prompt. [default: 1]")] = None,
    labels_from_field: Annotated[str, typer.Option(help="Prompt-file field holding 0/1 memorized labels "
                                                        "(enables AUROC). [default: none; benchmark sets label "
                                                        "themselves]")] = None,
    train_data: Annotated[Path, typer.Option(help="train_x.npy: label copies of the generations (full sampling). "
                                                  "[default: none]")] = None,
    steps: Annotated[int, typer.Option(help="Sampling steps: pipeline folders use their scheduler's timesteps for "
                                            "this many steps (SD 1.x, 50: 981, 961, ...). [default: 50]")] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance weight of the sampler. [default: 3]")] = None,
    t_first: Annotated[float, typer.Option(help="Evaluate step one at this memgeo time in (0, 1] on a uniform grid "
                                                "instead of the model's own grid (e.g. 1.0). [default: the model's "
                                                "grid]")] = None,
    step_window: Annotated[str, typer.Option("--step-window", "--wen-window",
                                             help="Steps START:END averaged by wen; 0:50 averages all 50 steps "
                                                  "(Wen et al.'s notebook). [default: 0:1, the first]")] = None,
    jeon_steps: Annotated[int, typer.Option(help="jeon/jeon_vjp: average over the first K steps. [default: 1]")] = None,
    gamma: Annotated[float, typer.Option(help="asthana: weight of the cosine term (paper: 2 on SD 1.4, 0.1 on "
                                              "SD 2.0). [default: 1; asthana2026: 2]")] = None,
    low_step: Annotated[int, typer.Option(help="asthana: read the cosine at the grid's timesteps[K] (-3: the "
                                               "third-last, as the paper). [default: t = 0.02; asthana2026: -3]")] = None,
    v_convention: Annotated[str, typer.Option(help="v-prediction / flow models: eps (convert every output to the noise "
                                                   "prediction) or native (the published code's formulas on the raw "
                                                   "output). [default: auto = native for flow, else eps; presets: "
                                                   "native]")] = None,
    seeding: Annotated[str, typer.Option(help="per_prompt (prompt i: seed + i) or shared (the same noise for every "
                                              "prompt). [default: per_prompt]")] = None,
    clip: Annotated[str, typer.Option(help="Clamp the sampler's x0 prediction to LOW:HIGH (e.g. -1:1 for "
                                           "pixel models). [default: none]")] = None,
    batch: Annotated[int, typer.Option(help="Prompts per batch (also the resume granularity). [default: 8]")] = None,
    attribution: Annotated[str, typer.Option(help="Score for token attribution ('none' to skip). [default: wen]")] = None,
    dtype: Annotated[str, typer.Option(help="Precision of the network passes: float32, bfloat16 or float16 (the "
                                            "noise is drawn in float32 and cast; a score the CPU cannot run in "
                                            "that dtype stops with an error). [default: float32]")] = None,
    config: Annotated[Path, typer.Option(help="DetectConfig JSON; options given here override it. "
                                              "[default: none]")] = None,
    seed: Annotated[int, typer.Option(help="Base seed: prompt i uses its file's seed field, else seed + i "
                                           "(shared seeding: every prompt uses seed). [default: 0]")] = None,
    shard: Shard = None,
    engine: Engine = None,
    address: Address = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
    json_out: Json = False,
    out: Out = Path("runs/detect"),
) -> None:
    """Prompt-level memorization scores per prompt (resumable), AUROC table, token attribution, report.

    \b
    Example: memgeo detect --model SD_FOLDER --prompts sd1 --preset jeon2025 --out runs/sd1_jeon
    """
    from memgeo.errors import MemgeoError
    from memgeo.workflows.detect import DetectConfig, preset_options, run_detect

    clip_range = None
    if clip is not None and clip.lower() != "none":
        try:
            lo, hi = (float(v) for v in clip.split(":"))
        except ValueError:
            raise MemgeoError(f"--clip {clip!r} is not LOW:HIGH", "e.g. --clip -1:1") from None
        clip_range = [lo, hi]
    score_list = [s.strip() for s in scores.split(",") if s.strip()] if scores is not None else None
    overrides: dict = preset_options(preset, score_list) if preset is not None else {}
    params: dict[str, dict] = {k.split(".", 1)[1]: dict(v) for k, v in overrides.items()
                               if k.startswith("score_params.")}
    overrides = {k: v for k, v in overrides.items() if not k.startswith("score_params.")}

    def set_param(score: str, key: str, value) -> None:
        params.setdefault(score, {})[key] = value

    if step_window is not None:
        try:
            a, b = (int(v) for v in step_window.split(":"))
        except ValueError:
            raise MemgeoError(f"--step-window {step_window!r} is not START:END", "e.g. --step-window 0:5") from None
        set_param("wen", "window", [a, b])
    if jeon_steps is not None:
        set_param("jeon", "n_steps", jeon_steps)
        set_param("jeon_vjp", "n_steps", jeon_steps)
    if gamma is not None:
        set_param("asthana", "gamma", gamma)
    if low_step is not None:
        set_param("asthana", "low_step", low_step)
        set_param("asthana", "t_low", None)
    if v_convention is not None:
        for name in ("wen", "jeon", "jeon_vjp", "asthana"):
            set_param(name, "convention", v_convention)
    explicit = {
        "model": model, "prompts": prompts, "generations": generations,
        "labels_from_field": labels_from_field, "train_data": str(train_data) if train_data else None,
        "sampling.steps": steps, "sampling.clip": clip_range, "sampling.guidance": guidance,
        "sampling.t_max": t_first, "batch_prompts": batch, "seed": seed, "seeding": seeding, "scores": score_list,
        "dtype": dtype,
    }
    overrides.update({k: v for k, v in explicit.items() if v is not None})
    cfg = load_config(config, DetectConfig, overrides)
    chosen = set(cfg.scores)
    # options for scores that are not run are dropped, not errors (e.g. --gamma without asthana in a preset run)
    merged = {**cfg.score_params, **{k: {**cfg.score_params.get(k, {}), **v} for k, v in params.items()}}
    cfg = cfg.model_copy(update={"score_params": {k: v for k, v in merged.items() if k in chosen}})
    if attribution is not None:
        cfg = cfg.model_copy(update={"attribution_score": None if attribution.lower() == "none" else attribution})
    summary = run_detect(cfg, out, scale=scale_options(shard, engine, address, workers, gpus_per_worker))
    if emit_shard(json_out, summary):
        return
    brief = {r["score"]: {k: r.get(k) for k in ("auroc", "tpr_at_1pct_fpr", "evals_per_prompt")}
             for r in summary["table"]}
    emit(json_out, {"n_prompts": summary["n_prompts"], "scores": brief}, _detect_lines(summary, out))


def _detect_lines(summary: dict, out: Path) -> list[str]:
    """One line per score: AUROC [95 % CI] and TPR at 1 % FPR when labelled, else its cost only."""
    labelled = any("auroc" in r for r in summary["table"])
    head = f"{summary['n_prompts']} prompts scored ({summary['generations']} generation(s) each)"
    lines = [head + (": AUROC memorized vs not [95 % CI]" if labelled else " (no labels: no AUROC)")]
    for r in summary["table"]:
        cost = f"{num(r['evals_per_prompt'], 3)} network evaluations per prompt"
        if labelled:
            lines.append(f"  {r['score']}: {auroc_text(r)}; TPR at 1 % FPR {num(r.get('tpr_at_1pct_fpr'), 3)}; {cost}")
        else:
            lines.append(f"  {r['score']}: {cost}")
    if "copies" in summary:
        c = summary["copies"]
        lines.append(f"copy rate of the {c['n_generations']} generations: {num(c['copy_rate'])}")
    lines.append(f"per prompt in {out / 'scores.csv'}")
    return lines
