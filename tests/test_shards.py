"""Work items, ``--shard I/N`` and ``memgeo merge``: merged shards give the rows of a plain run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memgeo.errors import MemgeoError
from memgeo.workflows.items import (ItemRow, columns_to_rows, parse_shard, read_shard_meta, rows_to_columns,
                                    scale_options, shard_path, split_units)
from prompt_toys import write_caption_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = ["a photo of zebra", "a photo of quokka", "a digit one", "a digit two", "a digit three", "a digit four",
            "a photo of one", "a digit zebra"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A random-weight caption model, a labelled prompt file, training images, and points for lid/sharpness."""
    folder = tmp_path_factory.mktemp("shards")
    write_caption_checkpoint(folder, CAPTIONS)
    rng = np.random.default_rng(1)
    d = 3
    np.save(folder / "mean.npy", np.zeros(d))
    np.save(folder / "cov.npy", np.diag([1.0, 0.5, 1e-4]))
    np.save(folder / "points.npy", rng.normal(size=(11, d)).astype(np.float32))
    np.save(folder / "ref.npy", rng.normal(size=(200, d)).astype(np.float32))
    return folder


def _detect(assets: Path, out: Path, *extra: str) -> list[str]:
    return ["detect", "--model", assets / "model", "--prompts", assets / "prompts.jsonl", "--out", out, "--steps", "3",
            "--batch", "2", "--clip", "-1:1", "--scores", "wen,jeon,sharpness", "--generations", "2",
            "--labels-from-field", "memorized", "--train-data", assets / "train_x.npy", "--attribution", "none", *extra]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _no_timing(summary: dict) -> dict:
    """summary.json without the measured wall times (the only values that differ between runs)."""
    return {**summary, "table": [{k: v for k, v in r.items() if k != "ms_per_prompt"} for r in summary["table"]]}


def test_parse_shard_and_split():
    assert parse_shard("0/4") == (0, 4) and parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("4/4", "1", "a/b", "-1/3", "0/0"):
        with pytest.raises(MemgeoError):
            parse_shard(bad)
    for n_units in (0, 1, 5, 17):
        for n in (1, 3, 8):
            covered = [k for i in range(n) for k in split_units(n_units, i, n)]
            assert covered == list(range(n_units))  # contiguous, disjoint, complete
            sizes = [len(split_units(n_units, i, n)) for i in range(n)]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(MemgeoError, match="only apply to --engine ray"):
        scale_options(workers=2)
    assert scale_options("1/2", "ray", workers=2).split


def test_item_rows_keep_non_finite_values_through_the_shard_round_trip():
    """An estimator may return +inf (MLE with tied neighbour distances) or NaN: the rows a shard or Ray
    gives back must hold the same floats, not nulls that finalize cannot turn into a tensor."""
    row = ItemRow("i000000", 0, {"lid": float("inf"), "low": -np.inf, "gap": np.float32("nan"), "v": [1.5, np.inf]})
    for back in (row.normalized(), columns_to_rows(rows_to_columns([row]))[0]):
        assert back.data["lid"] == float("inf") and back.data["low"] == float("-inf")
        assert np.isnan(back.data["gap"]) and back.data["v"] == [1.5, float("inf")]


def test_detect_shards_merge_to_the_plain_run(run_cli, assets, tmp_path):
    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    code, _, err = run_cli(*_detect(assets, plain))
    assert code == 0, err
    for i in (2, 0):  # any order; 8 prompts in 4 chunks of 2 over 3 shards: 1, 1, 2 chunks
        code, stdout, err = run_cli(*_detect(assets, sharded, "--shard", f"{i}/3"))
        assert code == 0, err
        assert f"shard {i}/3" in stdout and shard_path(sharded, i, 3).is_file()
    code, _, err = run_cli("merge", sharded)  # shard 1 missing: named in one line
    assert code == 2 and "1 of 3 shards are missing" in err and ": 1" in err and "--shard 1/3" in err
    assert not (sharded / "scores.csv").exists()
    code, _, err = run_cli(*_detect(assets, sharded, "--shard", "1/3"))
    assert code == 0, err
    meta = read_shard_meta(shard_path(sharded, 1, 3))
    assert meta["command"] == "detect" and meta["shard"] == "1/3" and len(meta["config_hash"]) == 16
    code, stdout, err = run_cli("merge", sharded, "--json")
    assert code == 0, err
    assert json.loads(stdout)["merged"] == {"command": "detect", "shards": 3, "n_items": 8}
    for name in ("scores.csv", "scores_per_generation.csv"):
        assert _csv(sharded / name) == _csv(plain / name), name
    assert _no_timing(json.loads((sharded / "summary.json").read_text())) == \
        _no_timing(json.loads((plain / "summary.json").read_text()))
    assert (sharded / "report.html").is_file() and (sharded / "config.json").is_file()
    assert json.loads((sharded / "config.json").read_text()) == json.loads((plain / "config.json").read_text())


def test_finished_shard_is_a_noop_and_other_config_is_refused(run_cli, assets, tmp_path):
    out = tmp_path / "s"
    code, _, err = run_cli(*_detect(assets, out, "--shard", "0/2"))
    assert code == 0, err
    path = shard_path(out, 0, 2)
    before = path.stat().st_mtime_ns, path.read_bytes()
    code, stdout, err = run_cli(*_detect(assets, out, "--shard", "0/2"))
    assert code == 0 and "already finished" in stdout
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before
    code, _, err = run_cli(*_detect(assets, out, "--shard", "1/2", "--seed", "7"))
    assert code == 2 and "another detect configuration" in err and len(err.strip().splitlines()) == 1
    assert not shard_path(out, 1, 2).exists()


def test_merge_refuses_mixed_splits_duplicates_and_foreign_configs(run_cli, assets, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(*_detect(assets, a, "--shard", "0/2"))[0] == 0
    assert run_cli(*_detect(assets, b, "--shard", "1/2"))[0] == 0
    assert run_cli(*_detect(assets, b, "--shard", "0/2"))[0] == 0
    code, _, err = run_cli("merge", a, b, "--out", tmp_path / "m")
    assert code == 2 and "found twice" in err
    c = tmp_path / "c"
    assert run_cli(*_detect(assets, c, "--shard", "1/3"))[0] == 0
    code, _, err = run_cli("merge", a, c, "--out", tmp_path / "m")
    assert code == 2 and "different ways" in err
    d = tmp_path / "d"
    assert run_cli(*_detect(assets, d, "--shard", "1/2", "--seed", "9"))[0] == 0
    code, _, err = run_cli("merge", a, d, "--out", tmp_path / "m")
    assert code == 2 and "different runs" in err
    code, _, err = run_cli("merge", tmp_path / "m0")
    assert code == 2 and "not a folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("merge", tmp_path / "empty")
    assert code == 2 and "no shard files" in err
    # two folders holding the two halves merge into a third
    code, _, err = run_cli("merge", a, tmp_path / "b" / "shards" / "part-1-of-2.parquet", "--out", tmp_path / "m")
    assert code == 2  # a file is not a folder
    e = tmp_path / "e"
    assert run_cli(*_detect(assets, e, "--shard", "1/2"))[0] == 0
    code, _, err = run_cli("merge", a, e, "--out", tmp_path / "m")
    assert code == 0, err
    assert (tmp_path / "m" / "scores.csv").is_file()


def _point_run(command: str, assets: Path, **extra):
    """(run function, config) of lid / sharpness / audit on the 3-D Gaussian, with units of 3 points."""
    from memgeo.workflows.commands import SharpnessRunConfig, run_sharpness
    from memgeo.workflows.lid_runs import AuditConfig, LIDRunConfig, run_audit, run_lid

    model = f"gaussian:{assets / 'mean.npy'},{assets / 'cov.npy'}"
    pts = str(assets / "points.npy")
    if command == "lid":
        return run_lid, LIDRunConfig(model=model, points=pts, estimator="flipd",
                                     params={"t0": 0.05, "trace": "hutchinson", "n_probes": 2}, batch_points=3, **extra)
    if command == "sharpness":
        return run_sharpness, SharpnessRunConfig(model=model, points=pts, t=0.1, chunk_size=3, **extra)
    return run_audit, AuditConfig(model=model, points=pts, train_data=str(assets / "ref.npy"), batch_points=3, **extra)


@pytest.mark.parametrize("command,files", [("lid", ("lid.csv", "lid.json")),
                                           ("sharpness", ("sharpness.csv", "sharpness.json")),
                                           ("audit", ("audit.csv", "audit.json"))])
def test_point_commands_shard_and_merge(assets, tmp_path, command, files):
    """11 points in 4 units of 3 over 3 shards; the merged files equal the plain run's (a stochastic trace
    included: its probes are drawn per unit, the same unit in every engine)."""
    from memgeo.workflows.items import ScaleOptions, merge_shards

    run, cfg = _point_run(command, assets)
    run(cfg, tmp_path / "plain")
    for i in (1, 0, 2):
        assert run(cfg, tmp_path / "sh", scale=ScaleOptions(shard=(i, 3)))["n_items"] in (3, 5)
    merged = merge_shards([tmp_path / "sh"])
    assert merged["merged"] == {"command": command, "shards": 3, "n_items": 11}
    csv_name, json_name = files
    assert _csv(tmp_path / "sh" / csv_name) == _csv(tmp_path / "plain" / csv_name)
    assert json.loads((tmp_path / "sh" / json_name).read_text()) == json.loads((tmp_path / "plain" / json_name).read_text())


def test_lid_auto_t0_cannot_be_split(run_cli, assets, tmp_path):
    model = f"gaussian:{assets / 'mean.npy'},{assets / 'cov.npy'}"
    code, _, err = run_cli("lid", "--model", model, "--points", assets / "points.npy", "--t0", "auto",
                           "--out", tmp_path / "a", "--shard", "0/2")
    assert code == 2 and "auto" in err and not shard_path(tmp_path / "a", 0, 2).exists()


def test_importing_the_cli_and_a_plain_detect_leave_ray_out(assets, tmp_path):
    code = ("import sys\nfrom memgeo.cli import main\nassert 'ray' not in sys.modules, 'import'\n"
            f"sys.argv = ['memgeo'] + {[str(a) for a in _detect(assets, tmp_path / 'p')]!r}\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\nassert not bad, bad\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_mitigate_shards_merge_to_the_plain_run(run_cli, assets, tmp_path):
    """(method, prompt) items over 2 shards; generations.csv equals the plain run's but for wall times."""
    def rows(path: Path) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in _csv(path)]

    lines = [{"prompt": p, "memorized": int("photo" in p)} for p in CAPTIONS[:3]]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = ["mitigate", "--model", assets / "model", "--prompts", tmp_path / "p.jsonl", "--method", "jain_delayed",
            "--generations", "2", "--steps", "3", "--train-data", assets / "train_x.npy", "--no-progress"]
    assert run_cli(*args, "--out", tmp_path / "plain")[0] == 0
    for i in range(2):
        code, _, err = run_cli(*args, "--out", tmp_path / "sh", "--shard", f"{i}/2")
        assert code == 0, err
    code, _, err = run_cli("merge", tmp_path / "sh", "--out", tmp_path / "merged")
    assert code == 0, err
    assert rows(tmp_path / "merged" / "generations.csv") == rows(tmp_path / "plain" / "generations.csv")
    assert len(rows(tmp_path / "plain" / "generations.csv")) == 2 * 3 * 2  # methods x prompts x generations
