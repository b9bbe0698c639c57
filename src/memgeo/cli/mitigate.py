"""`memgeo mitigate` (prompt-level mitigation): registers its command on :data:`memgeo.cli.app`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from memgeo.cli.common import (Address, Engine, GpusPerWorker, Out, PanelCommand, Shard, Workers, app, emit_shard,
                               load_config, scale_options)
from memgeo.cli.output import Json, emit, num
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


@app.command(cls=PanelCommand)
def mitigate(
    model: Annotated[str, typer.Option(help="Prompt model: caption checkpoint folder or diffusers pipeline folder.")],
    prompts: Annotated[str, typer.Option(help="Prompt file (.txt, .jsonl, .csv); .jsonl/.csv may carry "
                                              "memorized, label, train_index, seed.")],
    method: Annotated[str, typer.Option(help="Comma-separated methods: none, sail, wen_prompt, jain_delayed, "
                                             "han_noise (the baseline 'none' always runs). [default: none,sail]")] = None,
    params: Annotated[str, typer.Option(
        help='Hyper-parameters as JSON, e.g. \'{"sail": {"n_candidates": 4}}\'. [default: {} (each method\'s '
             'own, docs/mitigation.md)]')] = None,
    generations: Annotated[int, typer.Option(help="Generations per prompt. [default: 4]")] = None,
    steps: Annotated[int, typer.Option(help="DDIM sampling steps. [default: 50]")] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance weight. [default: 4.0]")] = None,
    train_data: Annotated[str, typer.Option(help="train_x.npy of the model, to label copies. [default: none (no "
                                                 "copy rates)]")] = None,
    classifier: Annotated[str, typer.Option(help="Digit classifier folder, for fidelity to the 'label' field. "
                                                 "[default: none]")] = None,
    criterion: Annotated[str, typer.Option(help="Copy criterion: ratio, calibrated, absolute. "
                                                "[default: ratio]")] = None,
    threshold: Annotated[float, typer.Option(help="Copy threshold. [default: the criterion's: 1/3 for ratio and "
                                                  "calibrated, 0.25 for absolute]")] = None,
    max_prompts: Annotated[int, typer.Option(help="Use only the first N prompts. [default: all]")] = None,
    dtype: Annotated[str, typer.Option(help="Precision of the network passes: float32, bfloat16 or float16 (the "
                                            "noise is drawn in float32 and cast). [default: float32]")] = None,
    config: Annotated[Path, typer.Option(help="MitigateConfig JSON; options given here override it. "
                                              "[default: none]")] = None,
    seed: Annotated[int, typer.Option(help="Base seed of the generations' noise. [default: 0]")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    shard: Shard = None,
    engine: Engine = None,
    address: Address = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
    json_out: Json = False,
    out: Out = Path("runs/mitigate"),
) -> None:
    """Sample each prompt with mitigation methods; copy rate, fidelity and cost per method (resumable).

    \b
    Example: memgeo mitigate --model runs/caption_model --prompts prompts.jsonl --method sail,wen_prompt --train-data train_x.npy --out runs/mitigate
    """
    from memgeo.workflows.mitigate import MitigateConfig, run_mitigate

    methods = None if method is None else tuple(m.strip() for m in method.split(",") if m.strip())
    cfg = load_config(config, MitigateConfig, dict(
        model=model, prompts=prompts, methods=methods, params=_params(params), generations=generations, steps=steps,
        guidance=guidance, train_data=train_data, classifier=classifier, criterion=criterion, threshold=threshold,
        max_prompts=max_prompts, seed=seed, dtype=dtype))
    summary = run_mitigate(cfg, out, progress=progress,
                           scale=scale_options(shard, engine, address, workers, gpus_per_worker))
    if emit_shard(json_out, summary):
        return
    keys = ("method", "copy_rate_memorized", "accuracy_all", "nfe_per_generation")
    emit(json_out, [{k: row[k] for k in keys} for row in summary["table"]],
         [f"{summary['n_prompts']} prompts x {summary['generations']} generations per method:"]
         + [_method_line(row) for row in summary["table"]] + [f"table in {out / 'results.csv'}"])


def _method_line(row: dict) -> str:
    """``  sail: copy rate on memorized prompts 0.125 (-87.5 % vs none), accuracy 0.95, 60 NFE per generation``."""
    line = f"  {row['method']}: copy rate on memorized prompts {num(row['copy_rate_memorized'], 3)}"
    if row["method"] != "none" and row.get("copy_reduction_memorized") is not None:
        line += f" ({num(-100 * row['copy_reduction_memorized'], 3)} % vs none)"
    if row.get("accuracy_all") is not None:
        line += f", accuracy {num(row['accuracy_all'], 3)}"
    return line + f", {num(row['nfe_per_generation'], 3)} network evaluations per generation"
