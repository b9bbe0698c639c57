"""`memgeo mitigate` (prompt-level mitigation): registers its command on :data:`memgeo.cli.app`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from memgeo.cli.common import Out, app, load_config
from memgeo.errors import MemgeoError


def _params(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MemgeoError(f"--params is not valid JSON ({exc.msg})",
                          'pass e.g. --params \'{"sail": {"n_candidates": 4}}\'') from exc
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise MemgeoError("--params must map method names to objects of hyper-parameters",
                          'pass e.g. --params \'{"sail": {"n_candidates": 4}}\'')
    return value


@app.command()
def mitigate(
    model: Annotated[str, typer.Option(help="Prompt model: caption checkpoint folder or diffusers pipeline folder.")],
    prompts: Annotated[str, typer.Option(help="Prompt file (.txt, .jsonl, .csv); .jsonl/.csv may carry "
                                              "memorized, label, train_index, seed.")],
    method: Annotated[str, typer.Option(help="Comma-separated methods: none, sail, wen_prompt, jain_delayed, "
                                             "han_noise (the baseline 'none' always runs).")] = None,
    params: Annotated[str, typer.Option(
        help='Hyper-parameters as JSON, e.g. \'{"sail": {"n_candidates": 4}}\'.')] = None,
    generations: Annotated[int, typer.Option(help="Generations per prompt.")] = None,
    steps: Annotated[int, typer.Option(help="DDIM sampling steps.")] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance weight.")] = None,
    train_data: Annotated[str, typer.Option(help="train_x.npy of the model, to label copies.")] = None,
    classifier: Annotated[str, typer.Option(help="Digit classifier folder, for fidelity to the 'label' field.")] = None,
    criterion: Annotated[str, typer.Option(help="Copy criterion: ratio, calibrated, absolute.")] = None,
    threshold: Annotated[float, typer.Option(help="Copy threshold (default: the criterion's).")] = None,
    max_prompts: Annotated[int, typer.Option(help="Use only the first N prompts.")] = None,
    dtype: Annotated[str, typer.Option(help="Precision of the network passes: float32, bfloat16 or float16 (the "
                                            "noise is drawn in float32 and cast). [default: float32]")] = None,
    config: Annotated[Path, typer.Option(help="MitigateConfig JSON; options given here override it.")] = None,
    seed: Annotated[int, typer.Option(help="Base seed of the generations' noise.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    out: Out = Path("runs/mitigate"),
) -> None:
    """Sample each prompt with mitigation methods; copy rate, fidelity and cost per method (resumable)."""
    from memgeo.workflows.mitigate import MitigateConfig, run_mitigate

    methods = None if method is None else tuple(m.strip() for m in method.split(",") if m.strip())
    cfg = load_config(config, MitigateConfig, dict(
        model=model, prompts=prompts, methods=methods, params=_params(params), generations=generations, steps=steps,
        guidance=guidance, train_data=train_data, classifier=classifier, criterion=criterion, threshold=threshold,
        max_prompts=max_prompts, seed=seed, dtype=dtype))
    summary = run_mitigate(cfg, out, progress=progress)
    keys = ("method", "copy_rate_memorized", "accuracy_all", "nfe_per_generation")
    typer.echo(json.dumps([{k: row[k] for k in keys} for row in summary["table"]]))
