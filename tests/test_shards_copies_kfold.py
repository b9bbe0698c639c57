"""``memgeo copies`` and ``memgeo kfold`` as work items: merged shards give the files of a plain run.

copies: 2,100 generated samples are 3 units of 1,024; the merged copies.csv and summary.json equal the
plain run's (all but the timings), and the merge reuses the shards' searches instead of searching again.
kfold: 2 folds x 2 repeats = 4 trainings over 3 shards; the merged kfold.csv equals the plain run's, and
both equal :func:`memgeo.memorization.kfold.kfold_memorization_score` run sequentially on the same
training and bound functions (an independent code path).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from memgeo.workflows.items import ScaleOptions, merge_shards, shard_path

pytestmark = pytest.mark.usefixtures("single_thread")

COPY_METRICS = "d1d2,nn_ratio,dcr,cosine,tiled_l2,authenticity,ct,precision"


def _csv(path: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(fh)]


def _summary(path: Path) -> dict:
    s = json.loads((path / "summary.json").read_text())
    s.pop("timings")
    return s


# --- copies ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """train (600 x 1 x 4 x 4), held-out (300), gen = 2,100 samples of which every 7th copies a training image."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("copies_sets")
    train = rng.uniform(-1, 1, (600, 1, 4, 4)).astype(np.float32)
    gen = rng.uniform(-1, 1, (2100, 1, 4, 4)).astype(np.float32)
    gen[::7] = train[rng.integers(0, 600, size=gen[::7].shape[0])]
    np.save(root / "train.npy", train)
    np.save(root / "test.npy", rng.uniform(-1, 1, (300, 1, 4, 4)).astype(np.float32))
    np.save(root / "gen.npy", gen)
    return root


def _copies_cfg(sets: Path):
    from memgeo.workflows.copies import CopiesConfig

    return CopiesConfig(train=str(sets / "train.npy"), test=str(sets / "test.npy"), gen=str(sets / "gen.npy"),
                        metrics=tuple(COPY_METRICS.split(",")), n_boot=20)


@pytest.fixture(scope="module")
def copies_plain(sets, tmp_path_factory):
    from memgeo.workflows.copies import run_copies

    out = tmp_path_factory.mktemp("copies_plain") / "run"
    run_copies(_copies_cfg(sets), out)
    return out


def test_copies_shards_merge_to_the_plain_run(sets, copies_plain, tmp_path, monkeypatch):
    from memgeo.memorization.copy_metrics import CopyData
    from memgeo.workflows.copies import UNIT_SIZE, run_copies

    out = tmp_path / "sh"
    cfg = _copies_cfg(sets)
    for i in (2, 0, 1):  # 3 units (1024, 1024, 52) over 3 shards, in any order
        res = run_copies(cfg, out, scale=ScaleOptions(shard=(i, 3)))
        assert res["n_items"] == (UNIT_SIZE if i < 2 else 2100 - 2 * UNIT_SIZE) and shard_path(out, i, 3).is_file()
    searched: list[tuple[str, str, str]] = []
    original = CopyData._search

    def spy(self, query, ref, k, exclude_self, space):
        searched.append((query, ref, space))
        return original(self, query, ref, k, exclude_self, space)

    monkeypatch.setattr(CopyData, "_search", spy)
    merged = merge_shards([out])
    assert merged["merged"] == {"command": "copies", "shards": 3, "n_items": 2100}
    # the merge searched nothing of the generated samples against the training set: the shards did
    assert ("test", "train", "l2") in searched and not [s for s in searched if s[:2] == ("gen", "train")]
    assert _csv(out / "copies.csv") == _csv(copies_plain / "copies.csv")
    assert _summary(out) == _summary(copies_plain)
    s = _summary(copies_plain)
    assert s["n_gen"] == 2100 and s["metrics"]["d1d2"]["n_flagged"] == 300  # every 7th: exact copies
    rows = _csv(copies_plain / "copies.csv")
    assert [int(r["index"]) for r in rows if r["copy"] == "True"] == list(range(0, 2100, 7))
    assert (out / "report.html").is_file()


def test_copies_checkpoint_gen_cannot_be_split(sets, tmp_path, run_cli):
    from memgeo.models.checkpoint import MODEL_FILE

    ckpt = tmp_path / "model"
    ckpt.mkdir()
    (ckpt / MODEL_FILE).write_bytes(b"")
    code, _, err = run_cli("copies", "--train", sets / "train.npy", "--test", sets / "test.npy", "--gen", ckpt,
                           "--n-gen", "5", "--out", tmp_path / "o", "--shard", "0/2")
    assert code == 2 and "cannot be split" in err and not (tmp_path / "o").exists()


def test_copies_cli_shard_line_and_merge(sets, copies_plain, tmp_path, run_cli):
    args = ["copies", "--train", sets / "train.npy", "--test", sets / "test.npy", "--gen", sets / "gen.npy",
            "--metrics", COPY_METRICS, "--n-boot", "20", "--out", tmp_path / "c"]
    for i in range(2):
        code, stdout, err = run_cli(*args, "--shard", f"{i}/2")
        assert code == 0 and f"shard {i}/2" in stdout, err
    code, _, err = run_cli("merge", tmp_path / "c")
    assert code == 0, err
    assert _csv(tmp_path / "c" / "copies.csv") == _csv(copies_plain / "copies.csv")


# --- kfold -------------------------------------------------------------------------------------------
def _kfold_cfg():
    from memgeo.workflows.kfold_runs import KFoldConfig

    return KFoldConfig(family="vae", data="digits", rows=30, folds=2, repeats=2, steps=20, hidden=32, depth=1, iw=8,
                       seed=3)


@pytest.fixture(scope="module")
def kfold_plain(tmp_path_factory):
    from memgeo.workflows.kfold_runs import run_kfold

    out = tmp_path_factory.mktemp("kfold_plain") / "run"
    return out, run_kfold(_kfold_cfg(), out)


def test_kfold_equals_the_library_estimator(kfold_plain):
    """The command's scores = kfold_memorization_score on the same fit / bound, training m seeded seed + m."""
    from memgeo.memorization.kfold import kfold_memorization_score
    from memgeo.workflows.kfold_runs import _model_fns, prepare_kfold, training_seed

    out, summary = kfold_plain
    cfg = _kfold_cfg()
    plan = prepare_kfold(cfg)
    calls = []

    def fit(idx):
        seed = training_seed(cfg, len(calls))
        calls.append(seed)
        f, ll, _ = _model_fns(cfg, plan.payload, seed)
        return ll, f(idx)

    ms = kfold_memorization_score(30, fit, lambda m, idx: m[0](m[1], idx), k=2, repeats=2, seed=3)
    rows = _csv(out / "kfold.csv")
    assert calls == [3, 4, 5, 6] and len(rows) == 30 and summary["n_trainings"] == 4
    np.testing.assert_array_equal([float(r["score"]) for r in rows], ms.scores)
    np.testing.assert_array_equal([float(r["log_p_out"]) for r in rows], ms.log_p_out)
    assert [int(r["fold_r1"]) for r in rows] == ms.folds[1].tolist()
    assert [int(r["n_in"]) for r in rows] == [2] * 30 and [int(r["n_out"]) for r in rows] == [2] * 30
    assert [int(r["row"]) for r in rows] == sorted(int(r["row"]) for r in rows)  # subset in data order
    top = max(rows, key=lambda r: float(r["score"]))
    assert int(top["rank"]) == 1 and summary["top"][0]["index"] == int(top["index"])
    assert summary["verdict"][0].startswith("**") and (out / "report.html").is_file()


def test_kfold_shards_merge_to_the_plain_run(kfold_plain, tmp_path, run_cli):
    out, _ = kfold_plain
    args = ["kfold", "--family", "vae", "--data", "digits", "--rows", "30", "--folds", "2", "--repeats", "2",
            "--steps", "20", "--iw", "8", "--seed", "3"]
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"hidden": 32, "depth": 1}))
    for i in (1, 2, 0):  # 4 trainings over 3 shards: 1, 1, 2
        code, stdout, err = run_cli(*args, "--config", cfg_file, "--out", tmp_path / "sh", "--shard", f"{i}/3")
        assert code == 0 and f"shard {i}/3" in stdout, err
    code, _, err = run_cli("merge", tmp_path / "sh")
    assert code == 0, err
    assert _csv(tmp_path / "sh" / "kfold.csv") == _csv(out / "kfold.csv")
    assert _csv(tmp_path / "sh" / "trainings.csv", ("seconds",)) == _csv(out / "trainings.csv", ("seconds",))
    assert _summary(tmp_path / "sh") == _summary(out)


def test_kfold_refuses_a_gan_and_too_many_folds(run_cli, tmp_path):
    code, _, err = run_cli("kfold", "--family", "gan", "--out", tmp_path / "g")
    assert code == 2 and "no likelihood" in err and not (tmp_path / "g").exists()
    code, _, err = run_cli("kfold", "--family", "vae", "--rows", "5", "--folds", "3", "--out", tmp_path / "f")
    assert code == 2 and "cannot be split into 3 folds" in err and not (tmp_path / "f").exists()
