"""Cost per prompt of every detection score on each pipeline family, and the drift of reduced precision.

Usage (what docs/benchmarks.md reports)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prompt_families.py --threads 1 \
        --json benchmarks/results/prompt_families.json --md benchmarks/results/prompt_families.md

Part 1, cost. For each family, a tiny random-weight model built from config (no download):

* ``sd1_eps``: Stable Diffusion 1.x layout (UNet + CLIP text encoder), SD 1.4's DDIM scheduler, epsilon;
* ``sd2_v``: the same with ``prediction_type="v_prediction"`` (SD 2.x-style);
* ``sdxl``: SDXL layout (two text encoders, pooled embedding, time ids; Euler scheduler);
* ``sd3_flow``: SD3 layout (MMDiT transformer, FlowMatchEuler, velocity);
* ``caption``: memgeo's own caption-conditional model (:class:`CaptionDiffusionModel`, default width).

every first-step score scores ``--prompts`` prompts (one generation each, one batch, after an untimed
warm-up batch of two prompts) with the 50-step sampler of the model's grid and guidance 7.5; FLIPD
(cond and uncond, which sample to the end first) scores ``--flipd-prompts`` of them. Recorded per
prompt: forward evaluations, derivative (JVP/VJP) passes and wall milliseconds. The networks are tiny,
so the ms compare the scores' overheads on one family, not the cost on a real checkpoint; the pass
counts carry over to real checkpoints unchanged.

Part 2, reduced precision (skip with ``--skip-drift``). On ``sd1_eps`` and ``sd2_v`` the model is loaded
in bfloat16 and float16 (noise drawn in float32 from the same seeds and cast, as ``memgeo detect
--dtype`` does) and every first-step score is compared with float32: per prompt the relative
difference |v - v32| / |v32| (median and max over prompts) and the largest difference in units of the
float32 values' largest magnitude and of their spread over the prompts (> 1 could reorder prompts). Whether Jeon's JVP ran or fell
back to the double VJP is read from the score's ``vjp_fallback`` output. A score that cannot run in
that dtype on the CPU is recorded with its error. SAIL's final samples (the same noises and
generator seeds) are compared by ||x - x32|| / ||x32|| per prompt, next to plain sampling's ("none"), so the
part of the drift due to the sampler alone is visible; SAIL in float16 is refused by ``memgeo mitigate``
(its Adam state underflows), and so is not measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import Contention, machine_facts, machine_line, write_json

from memgeo.memorization.mitigation import get_mitigation
from memgeo.memorization.prompt_scores import SamplingSettings, generation_noise, get_prompt_score
from memgeo.models.loading import load
from memgeo.workflows.detect import prompt_noise

FIRST_STEP = ("wen", "jeon", "jeon_vjp", "asthana", "hessian_diff", "sharpness")
FLIPD = ("flipd_cond", "flipd_uncond")
FAMILIES = ("sd1_eps", "sd2_v", "sdxl", "sd3_flow", "caption")
DRIFT_FAMILIES = ("sd1_eps", "sd2_v")
PROMPTS = ["a photo of a cat", "the red dog on the mat", "a blue digit seven", "a cat", "a red kite in the sky",
           "the zebra and the dog", "a photo of the mat", "seven blue cats on a red mat", "a dog", "a sky"]


def build_family(name: str, folder: Path) -> Path:
    """Write the tiny model of ``name`` to ``folder`` and return what :func:`load` takes."""
    if name in ("sd1_eps", "sd2_v"):
        from diffusers import DDIMScheduler

        from memgeo.models.pipeline import build_tiny_pipeline

        return build_tiny_pipeline(folder, seed=2, scheduler=DDIMScheduler(
            num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
            steps_offset=1, clip_sample=False, set_alpha_to_one=False,
            prediction_type="epsilon" if name == "sd1_eps" else "v_prediction"))
    if name == "sdxl":
        from memgeo.models.pipeline_sdxl import build_tiny_sdxl_pipeline

        return build_tiny_sdxl_pipeline(folder, seed=2)
    if name == "sd3_flow":
        from memgeo.models.pipeline_flow import build_tiny_flow_pipeline

        return build_tiny_flow_pipeline(folder, seed=2)
    if name == "caption":
        from memgeo.models.caption import CaptionDiffusionModel, CaptionModelConfig, build_vocab, save_caption_model

        torch.manual_seed(2)
        model = CaptionDiffusionModel(CaptionModelConfig(data_shape=(1, 8, 8), vocab=build_vocab(PROMPTS))).eval()
        save_caption_model(model, folder)
        return folder
    raise ValueError(f"unknown family {name!r}")


def _score_row(res: Any) -> dict[str, Any]:
    row = {"forward": res.forward_evals, "derivative": res.derivative_passes, "passes": res.evals_per_prompt,
           "ms_per_prompt": res.ms_per_prompt}
    if "vjp_fallback" in res.extra:
        row["vjp_fallback"] = bool(res.extra["vjp_fallback"].max() > 0)
    return row


def cost_of_family(name: str, path: Path, n: int, n_flipd: int, sampling: SamplingSettings) -> dict[str, Any]:
    """Passes and ms per prompt of every score on one family."""
    model = load(path).eval()
    prompts = PROMPTS[:n]
    with torch.no_grad():
        cond = model.encode(prompts)
    x_T = generation_noise(model, list(range(n)), 1)
    grid = sampling.grid(model)
    out: dict[str, Any] = {"model_class": type(model).__name__, "prediction_type": model.prediction_type,
                           "data_shape": list(model.data_shape),
                           "parameters": sum(p.numel() for p in model.parameters()),
                           "first_t": float(grid.ts[0]), "scores": {}}
    for score_name in FIRST_STEP + FLIPD:
        k = n if score_name in FIRST_STEP else n_flipd
        score = get_prompt_score(score_name)
        score.compute(model, cond[:min(2, k)], x_T[:min(2, k)], sampling=sampling)  # warm-up, untimed
        res = score.compute(model, cond[:k], x_T[:k], sampling=sampling)
        out["scores"][score_name] = {**_score_row(res), "n_prompts": k}
        print(f"  {name:9s} {score_name:13s} {res.forward_evals:g}+{res.derivative_passes:g} passes, "
              f"{res.ms_per_prompt:.1f} ms/prompt", flush=True)
    return out


def _rel(v: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    return ((v - ref).abs() / ref.abs().clamp_min(1e-12)).numpy()


def drift_of_family(name: str, path: Path, n: int, sampling: SamplingSettings, sail_steps: int
                    ) -> list[dict[str, Any]]:
    """Reduced-precision drift of every first-step score and of SAIL's samples against float32."""
    prompts = PROMPTS[:n]
    ref: dict[str, torch.Tensor] = {}
    rows: list[dict[str, Any]] = []
    for dtype in ("float32", "bfloat16", "float16"):
        model = load(path, dtype=None if dtype == "float32" else dtype).eval()
        with torch.no_grad():
            cond = model.encode(prompts)
        x_T = prompt_noise(model, list(range(n)), 1)
        for score_name in FIRST_STEP:
            row: dict[str, Any] = {"family": name, "dtype": dtype, "what": score_name}
            try:
                res = get_prompt_score(score_name).compute(model, cond, x_T, sampling=sampling)
            except (TypeError, NotImplementedError, RuntimeError) as exc:
                row["error"] = str(exc).strip().splitlines()[0][:120]
                if dtype != "float32":
                    rows.append(row)
                continue
            if "vjp_fallback" in res.extra:
                row["jvp"] = "fell back to VJP" if bool(res.extra["vjp_fallback"].max() > 0) else "ran"
            if dtype == "float32":
                ref[score_name] = res.values
                continue
            rel = _rel(res.values, ref[score_name])
            spread = float(ref[score_name].std())
            diff = float((res.values - ref[score_name]).abs().max())
            row.update(rel_median=float(np.median(rel)), rel_max=float(rel.max()),
                       max_diff_over_max=diff / float(ref[score_name].abs().max()),
                       max_diff_over_spread=diff / spread, differs=bool((res.values != ref[score_name]).any()))
            rows.append(row)
        for method in ("none", "sail"):
            what = f"{method}_samples"
            row = {"family": name, "dtype": dtype, "what": what}
            res = get_mitigation(method).generate(model, cond, x_T[:, 0], steps=sail_steps,
                                                  guidance=sampling.guidance,
                                                  generator=torch.Generator().manual_seed(2 ** 31))
            x = res.samples.detach().double().reshape(n, -1)
            if dtype == "float32":
                ref[what] = x
                continue
            rel = ((x - ref[what]).norm(dim=1) / ref[what].norm(dim=1)).numpy()
            row.update(rel_median=float(np.median(rel)), rel_max=float(rel.max()), differs=True)
            if method == "sail":
                row["noise_shift"] = float(np.mean(res.diagnostics["noise_shift"]))
            rows.append(row)
        print(f"  drift {name} {dtype} done", flush=True)
    return rows


def _ms(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def cost_table(families: dict[str, Any]) -> str:
    """Rows = scores, columns = families; a cell is "forward+derivative passes · ms per prompt"."""
    names = list(families)
    head = "| score | " + " | ".join(names) + " |"
    sep = "|---|" + "|".join("---" for _ in names) + "|"
    body = []
    for score_name in FIRST_STEP + FLIPD:
        cells = []
        for fam in names:
            r = families[fam]["scores"][score_name]
            cells.append(f"{r['forward']:g}+{r['derivative']:g} · {_ms(r['ms_per_prompt'])} ms"
                         + (" (VJP fallback)" if r.get("vjp_fallback") else ""))
        body.append(f"| {score_name} | " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def drift_table(rows: list[dict[str, Any]]) -> str:
    head = ("| family | dtype | score / output | relative difference, median | max | max diff / max abs float32 "
            "| max diff / float32 spread | Jeon's JVP |")
    sep = "|---|---|---|---|---|---|---|---|"
    body = []
    for r in rows:
        if "error" in r:
            body.append(f"| {r['family']} | {r['dtype']} | {r['what']} | fails: {r['error']} | | | | |")
            continue
        spread, top = r.get("max_diff_over_spread"), r.get("max_diff_over_max")
        body.append(f"| {r['family']} | {r['dtype']} | {r['what']} | {r['rel_median']:.2%} | {r['rel_max']:.2%} | "
                    f"{'—' if top is None else f'{top:.3f}'} | {'—' if spread is None else f'{spread:.2f}'} | "
                    f"{r.get('jvp', '—')} |")
    return "\n".join([head, sep, *body])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompts", type=int, default=8, help="prompts per family for the first-step scores")
    p.add_argument("--flipd-prompts", type=int, default=2, help="prompts per family for FLIPD (full sampling)")
    p.add_argument("--drift-prompts", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--sail-steps", type=int, default=50, help="sampling steps of SAIL in the drift part")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--skip-drift", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None, help="write the markdown tables here")
    args = p.parse_args(argv)
    if not 1 <= args.prompts <= len(PROMPTS) or not 1 <= args.drift_prompts <= len(PROMPTS):
        p.error(f"--prompts and --drift-prompts must be in 1..{len(PROMPTS)}")
    torch.set_num_threads(args.threads)
    machine = machine_facts()
    sampling = SamplingSettings(steps=args.steps, guidance=args.guidance)
    families: dict[str, Any] = {}
    drift: list[dict[str, Any]] = []
    contention = Contention()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name in [f.strip() for f in args.families.split(",") if f.strip()]:
            paths[name] = build_family(name, Path(tmp) / name)
            families[name] = cost_of_family(name, paths[name], args.prompts, args.flipd_prompts, sampling)
        if not args.skip_drift:
            for name in DRIFT_FAMILIES:
                path = paths.get(name) or build_family(name, Path(tmp) / name)
                drift += drift_of_family(name, path, args.drift_prompts, sampling, args.sail_steps)
    load_info = contention.stop()
    md = ["Cost per prompt: forward evaluations + derivative (JVP/VJP) passes · wall ms per prompt "
          f"({args.prompts} prompts in one batch for the first-step scores, {args.flipd_prompts} for FLIPD; "
          f"{args.steps}-step sampler of each model's grid, guidance {args.guidance}).", "",
          cost_table(families), "", machine_line(machine),
          f"Other processes used {load_info['other_cpus']:.2f} CPUs on average during the run."
          if load_info.get("other_cpus") is not None else ""]
    if drift:
        md += ["", f"Reduced precision against float32 ({args.drift_prompts} prompts, SAIL with {args.sail_steps} "
               "steps):", "", drift_table(drift)]
    text = "\n".join(md)
    print(text)
    payload = {"machine": machine, "command": " ".join(["python", "benchmarks/prompt_families.py", *sys.argv[1:]]),
               "settings": vars(args), "contention": load_info, "families": families, "drift": drift,
               "markdown": text}
    if args.json:
        write_json(args.json, payload)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(text + "\n")


if __name__ == "__main__":
    main()
