"""``--engine ray`` on a local 2-CPU Ray instance: rows equal the single-process run's, also after a worker dies.

The only module of the suite that starts Ray (once, module fixture); skipped when Ray is not installed.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from memgeo.models.caption import CaptionDiffusionModel, CaptionModelConfig, build_vocab, save_caption_model

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.timeout(300)]

CAPTIONS = ["a photo of zebra", "a photo of quokka", "a digit one", "a digit two", "a digit three", "a digit four"]


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray")
    torch.manual_seed(0)
    cfg = CaptionModelConfig(data_shape=(1, 4, 4), vocab=build_vocab(CAPTIONS), hidden=32, depth=1, embed_dim=16,
                             heads=2, max_length=8)
    save_caption_model(CaptionDiffusionModel(cfg).eval(), folder / "model")
    lines = [{"prompt": p, "memorized": int("photo" in p)} for p in CAPTIONS]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    np.save(folder / "train_x.npy", np.random.default_rng(0).uniform(-1, 1, (20, 1, 4, 4)).astype(np.float32))
    return folder


def _cfg(assets: Path):
    from memgeo.memorization.prompt_scores import SamplingSettings
    from memgeo.workflows.detect import DetectConfig

    return DetectConfig(model=str(assets / "model"), prompts=str(assets / "prompts.jsonl"), scores=("wen", "jeon"),
                        generations=2, batch_prompts=2, labels_from_field="memorized", attribution_score=None,
                        train_data=str(assets / "train_x.npy"), sampling=SamplingSettings(steps=3, clip=(-1.0, 1.0)))


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def plain(assets, tmp_path_factory):
    from memgeo.workflows.detect import run_detect

    out = tmp_path_factory.mktemp("plain") / "run"
    run_detect(_cfg(assets), out, progress=False)
    return out


def _same_rows(a: Path, b: Path) -> None:
    for name in ("scores.csv", "scores_per_generation.csv"):
        assert _csv(a / name) == _csv(b / name), name
    for i in range(len(CAPTIONS)):  # the per-prompt records, every score's per-generation value included
        ra = json.loads((a / "prompts" / f"{i:06d}.json").read_text())
        rb = json.loads((b / "prompts" / f"{i:06d}.json").read_text())
        for rec in (ra, rb):
            for s in rec["scores"].values():
                s.pop("ms_per_prompt")
        assert ra == rb


def test_ray_rows_equal_the_single_process_run(local_ray, assets, plain, tmp_path):
    from memgeo.workflows.detect import run_detect
    from memgeo.workflows.items import ScaleOptions

    run_detect(_cfg(assets), tmp_path / "ray", progress=False, scale=ScaleOptions(engine="ray", workers=2))
    _same_rows(plain, tmp_path / "ray")


def test_a_worker_killed_mid_job_is_retried_with_identical_rows(local_ray, assets, plain, tmp_path, monkeypatch):
    from memgeo.workflows.detect import run_detect
    from memgeo.workflows.items import ScaleOptions
    from memgeo.workflows.ray_engine import FAIL_ONCE_ENV

    marker = tmp_path / "kill-one-worker"
    marker.write_text("armed")
    monkeypatch.setenv(FAIL_ONCE_ENV, str(marker))
    # one actor: it dies on its first unit, is restarted (prepare again) and scores every unit
    run_detect(_cfg(assets), tmp_path / "ray", progress=False, scale=ScaleOptions(engine="ray", workers=1))
    assert not marker.exists() and Path(str(marker) + ".taken").exists()  # a worker did die (os._exit(1))
    _same_rows(plain, tmp_path / "ray")


@pytest.mark.slow
def test_ray_shard_then_merge(local_ray, assets, plain, tmp_path):
    """A shard scored on Ray and one in-process merge to the plain run's rows."""
    from memgeo.workflows.detect import run_detect
    from memgeo.workflows.items import ScaleOptions, merge_shards

    out = tmp_path / "mixed"
    run_detect(_cfg(assets), out, progress=False, scale=ScaleOptions(shard=(0, 2), engine="ray", workers=1))
    run_detect(_cfg(assets), out, progress=False, scale=ScaleOptions(shard=(1, 2)))
    merge_shards([out], progress=False)
    for name in ("scores.csv", "scores_per_generation.csv"):
        assert _csv(out / name) == _csv(plain / name)


def test_ray_is_not_imported_by_the_rest(local_ray):
    """Sanity of the import boundary: the engine module is the only memgeo module that imports ray."""
    import memgeo

    root = Path(memgeo.__file__).parent
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if any(line.strip().startswith(("import ray", "from ray")) for line in p.read_text().splitlines())
                   or "import ray\n" in p.read_text())
    assert users == [os.path.join("workflows", "ray_engine.py")]


def test_kfold_trainings_on_ray_equal_the_plain_run(local_ray, tmp_path):
    """memgeo kfold: each (repeat, fold) training is one Ray task; the scores equal a single-process run's."""
    from memgeo.workflows.items import ScaleOptions
    from memgeo.workflows.kfold_runs import KFoldConfig, run_kfold

    cfg = KFoldConfig(family="vae", data="digits", rows=24, folds=2, repeats=2, steps=15, hidden=32, depth=1, iw=8,
                      seed=5)
    run_kfold(cfg, tmp_path / "plain")
    run_kfold(cfg, tmp_path / "ray", scale=ScaleOptions(engine="ray", workers=2))
    assert _csv(tmp_path / "ray" / "kfold.csv") == _csv(tmp_path / "plain" / "kfold.csv")
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(_csv(tmp_path / "ray" / "trainings.csv")) == drop(_csv(tmp_path / "plain" / "trainings.csv"))
    assert len(_csv(tmp_path / "plain" / "trainings.csv")) == 4
