"""`memgeo detect` (prompt-level memorization scores): registers its command on :data:`memgeo.cli.app`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from memgeo.cli import Out, load_config, app


@app.command()
def detect(
    model: Annotated[str, typer.Option(help="Caption-model checkpoint or diffusers pipeline folder.")],
    prompts: Annotated[Path, typer.Option(help="Prompt file: .txt (one per line), .jsonl or .csv.")],
    scores: Annotated[str, typer.Option(help="Comma-separated: wen, jeon, jeon_vjp, asthana, hessian_diff, "
                                             "sharpness, flipd_cond, flipd_uncond.")] = None,
    generations: Annotated[int, typer.Option(help="Generations (initial noises) per prompt.")] = None,
    labels_from_field: Annotated[str, typer.Option(help="Prompt-file field holding 0/1 memorized labels "
                                                        "(enables AUROC).")] = None,
    train_data: Annotated[Path, typer.Option(help="train_x.npy: label copies of the generations (full sampling).")] = None,
    steps: Annotated[int, typer.Option(help="DDIM sampling steps (Wen windows, FLIPD, copies).")] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance weight of the sampler.")] = None,
    clip: Annotated[str, typer.Option(help="Clamp the sampler's x0 prediction to LOW:HIGH (e.g. -1:1 for "
                                           "pixel models); default none.")] = None,
    wen_window: Annotated[str, typer.Option(help="Steps START:END averaged by wen (default 0:1, the first).")] = None,
    batch: Annotated[int, typer.Option(help="Prompts per batch (also the resume granularity).")] = None,
    attribution: Annotated[str, typer.Option(help="Score for token attribution ('none' to skip).")] = None,
    config: Annotated[Path, typer.Option(help="DetectConfig JSON; options given here override it.")] = None,
    seed: Annotated[int, typer.Option(help="Base seed: prompt i uses its file's seed field, else seed + i.")] = None,
    out: Out = Path("runs/detect"),
) -> None:
    """Prompt-level memorization scores per prompt (resumable), AUROC table, token attribution, report."""
    from memgeo.errors import MemgeoError
    from memgeo.workflows.detect import DetectConfig, run_detect

    clip_range = None
    if clip is not None and clip.lower() != "none":
        try:
            lo, hi = (float(v) for v in clip.split(":"))
        except ValueError:
            raise MemgeoError(f"--clip {clip!r} is not LOW:HIGH", "e.g. --clip -1:1") from None
        clip_range = [lo, hi]
    window = None
    if wen_window is not None:
        try:
            a, b = (int(v) for v in wen_window.split(":"))
        except ValueError:
            raise MemgeoError(f"--wen-window {wen_window!r} is not START:END", "e.g. --wen-window 0:5") from None
        window = {"window": [a, b]}
    overrides = {
        "model": model, "prompts": str(prompts), "generations": generations,
        "labels_from_field": labels_from_field, "train_data": str(train_data) if train_data else None,
        "sampling.steps": steps, "sampling.clip": clip_range, "sampling.guidance": guidance, "batch_prompts": batch, "seed": seed,
        "scores": [s.strip() for s in scores.split(",") if s.strip()] if scores is not None else None,
        "score_params.wen": window,
    }
    cfg = load_config(config, DetectConfig, overrides)
    if attribution is not None:
        cfg = cfg.model_copy(update={"attribution_score": None if attribution.lower() == "none" else attribution})
    summary = run_detect(cfg, out)
    brief = {r["score"]: {k: r.get(k) for k in ("auroc", "tpr_at_1pct_fpr", "evals_per_prompt")}
             for r in summary["table"]}
    typer.echo(json.dumps({"n_prompts": summary["n_prompts"], "scores": brief}))
