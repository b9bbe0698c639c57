"""`memgeo copies` end to end: PNG folders, the digits demo's generations, files, report, bad inputs, reruns.

Known answers: generations that are byte-identical copies of given training PNGs must be flagged, with
those training images as matches, and held-out digits must not; on a tiny digits demo the d1/d2
column must reproduce the demo's own copy labels (``samples.csv``), computed by a different code path
(:func:`memgeo.memorization.label_copies`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

COPIES = [3, 77, 150, 402, 555, 618, 700, 871, 905, 999]  # training rows copied into the generations
N_FRESH = 30


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _png_folder(folder: Path, images: np.ndarray, prefix: str) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im, mode="L").save(folder / f"{prefix}{i:04d}.png")


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, single_thread):
    """train (1000 digits), held-out (400 others), gen = 10 training copies + 30 unseen digits, as PNGs."""
    from memgeo.data import load_dataset

    x = load_dataset("digits").x.numpy()[:, 0]
    u8 = np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8)
    root = tmp_path_factory.mktemp("pngs")
    _png_folder(root / "train", u8[:1000], "t")
    _png_folder(root / "test", u8[1000:1400], "h")
    _png_folder(root / "gen", np.concatenate([u8[COPIES], u8[1400:1400 + N_FRESH]]), "g")
    return root


@pytest.fixture(scope="module")
def png_run(pngs, tmp_path_factory):
    from memgeo.workflows.copies import CopiesConfig, run_copies

    out = tmp_path_factory.mktemp("png_run") / "copies"
    cfg = CopiesConfig(train=str(pngs / "train"), test=str(pngs / "test"), gen=str(pngs / "gen"), n_boot=50)
    return out, run_copies(cfg, out)


def test_png_folders_flag_exactly_the_copies_with_their_training_images(png_run):
    out, summary = png_run
    rows = _csv(out / "copies.csv")
    assert len(rows) == len(COPIES) + N_FRESH
    flagged = [int(r["index"]) for r in rows if r["copy"] == "True"]
    assert flagged == list(range(len(COPIES)))
    for r, i in zip(rows, COPIES):
        assert int(r["nearest_train_index"]) == i and r["nearest_train_file"] == f"t{i:04d}.png"
        assert float(r["nearest_train_distance"]) == 0.0 and r["file"] == f"g{int(r['index']):04d}.png"
    # Every exact-match criterion flags the same 10 and nothing else; exact copies are never authentic.
    for crit in ("d1d2", "nn_ratio", "tiled_l2"):
        assert [int(r["index"]) for r in rows if r[f"{crit}_copy"] == "True"] == flagged, crit
    assert all(float(r["authentic"]) == 0.0 for r in rows[: len(COPIES)])
    m = summary["metrics"]
    assert summary["primary"] == "d1d2" and summary["n_copies"] == 10 and summary["copy_rate"] == 0.25
    assert m["d1d2"]["baseline"] == 0.0 and m["d1d2"]["ci_low"] <= 0.25 <= m["d1d2"]["ci_high"]
    assert "cosine" not in m  # not in pixel space by default
    assert {"tiled_l2", "ct", "fld", "authenticity", "datacopy_rate", "clique"} <= set(m)


def test_files_summary_and_report_sections(png_run, pngs):
    out, summary = png_run
    assert {p.name for p in out.iterdir()} == {"copies.csv", "summary.json", "report.html", "config.json",
                                               "provenance.json", "figures"}
    assert {p.name for p in (out / "figures").iterdir()} == {"pairs.png", "ct_cells.png", "nn_distances.png"}
    saved = json.loads((out / "summary.json").read_text())
    assert saved["n_copies"] == 10 and set(saved["timings"]) >= {"load", "features", "total", "metric:d1d2"}
    # Folder hash: file names and bytes in load order, recomputed here.
    h = hashlib.sha256()
    for p in sorted((pngs / "gen").iterdir()):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    assert saved["inputs"]["gen"]["sha256"] == h.hexdigest() and saved["inputs"]["gen"]["n"] == 40
    assert saved["features"]["extractor"] == "pixels" and saved["features"]["dim"] == 64
    html = (out / "report.html").read_text()
    verdict = html[html.index('id="verdict"'):html.index("</section>")]
    assert "Copying: 10 of 40 generations" in verdict and "held-out baseline is 0 %" in verdict
    for heading in ("Metrics", "Flagged generations and their training matches", "C_T per k-means cell",
                    "Distance to the training set", "Notation"):
        assert f">{heading}</h2>" in html, heading
    assert "held-out baseline [95 % CI]" in html and "Meehan et al. (2020)" in html


def test_rerun_gives_the_same_files_and_a_held_lock_refuses(png_run, pngs, run_cli):
    out, summary = png_run
    before = (out / "copies.csv").read_bytes()
    code, stdout, err = run_cli("copies", "--train", pngs / "train", "--test", pngs / "test", "--gen", pngs / "gen",
                                "--n-boot", "50", "--json", "--out", out)
    assert code == 0, err
    short = json.loads(stdout.strip().splitlines()[-1])
    assert short["n_copies"] == 10 and short["metrics"]["d1d2"]["baseline"] == 0.0
    assert (out / "copies.csv").read_bytes() == before
    again = json.loads((out / "summary.json").read_text())
    assert {k: v for k, v in again.items() if k != "timings"} == \
        json.loads(json.dumps({k: v for k, v in summary.items() if k != "timings"}))
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".memgeo.lock").write_text(f"{other.pid}\n")
        code, _, err = run_cli("copies", "--train", pngs / "train", "--test", pngs / "test", "--gen", pngs / "gen",
                               "--metrics", "d1d2", "--out", out)
        assert code == 2 and f"being written by process {other.pid}" in err
        assert (out / "copies.csv").read_bytes() == before
    finally:
        other.kill()
        other.wait()
        (out / ".memgeo.lock").unlink(missing_ok=True)


# --- the digits demo ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory, single_thread):
    """A tiny digits demo (x0 network, 800 steps) whose duplicated 9 is already copied by most generations."""
    from memgeo.data import load_dataset
    from memgeo.models import TrainConfig
    from memgeo.workflows import DemoConfig, ToyConfig, run_demo

    root = tmp_path_factory.mktemp("demo")
    run_demo(DemoConfig(train=TrainConfig(steps=800, batch_size=128, lr=1e-2, checkpoint_every=10_000, log_every=200),
                        hidden=64, depth=1, prediction="x0", n_samples=8, sample_steps=10, sharpness_t=(0.1,),
                        headline_t=0.1, trajectory_every=5, toy=ToyConfig(enabled=False)), root / "demo")
    ds = load_dataset("digits")
    np.save(root / "nines.npy", ds.x[ds.y == 9].numpy())  # the original 9s: replaced, so never trained on
    return root


def test_demo_generations_agree_with_the_demo_copy_labels(demo, run_cli):
    d = demo / "demo"
    out = demo / "copies"
    code, stdout, err = run_cli("copies", "--train", d / "train_x.npy", "--test", demo / "nines.npy",
                                "--gen", d / "samples.npy", "--metrics", "d1d2,dcr,authenticity", "--n-boot", "20",
                                "--out", out)
    assert code == 0, err
    ours, theirs = _csv(out / "copies.csv"), _csv(d / "samples.csv")
    assert len(ours) == len(theirs) == 16
    np.testing.assert_allclose([float(r["d1_over_d2"]) for r in ours], [float(r["statistic"]) for r in theirs],
                               rtol=1e-9, atol=1e-12)
    assert [r["copy"] for r in ours] == [r["is_copy"] for r in theirs]
    assert [r["nearest_train_index"] for r in ours] == [r["nn_index"] for r in theirs]
    n_demo = sum(r["is_copy"] == "True" for r in theirs)
    assert n_demo >= 1 and f"{n_demo} of 16 generations copy" in stdout


def test_checkpoint_gen_is_sampled_and_saved(demo, run_cli):
    out = demo / "from_model"
    args = ("copies", "--train", demo / "demo" / "train_x.npy", "--test", demo / "nines.npy", "--gen",
            demo / "demo" / "model", "--n-gen", "6", "--sample-steps", "5", "--metrics", "d1d2", "--n-boot", "0")
    code, _, err = run_cli(*args, "--out", out)
    assert code == 0, err
    x = np.load(out / "generated.npy")
    assert x.shape == (6, 1, 8, 8) and np.isfinite(x).all() and np.abs(x).max() <= 1.0
    assert len(_csv(out / "copies.csv")) == 6
    s = json.loads((out / "summary.json").read_text())
    assert s["inputs"]["gen"]["kind"] == "checkpoint" and s["inputs"]["gen"]["sha256"] == \
        hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
    code, _, err = run_cli(*args, "--out", demo / "from_model_2")  # same seed: same samples
    assert code == 0, err
    np.testing.assert_array_equal(np.load(demo / "from_model_2" / "generated.npy"), x)


# --- bad input: one line, exit 2, nothing written ------------------------------------------------------
@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("arrays")
    for name, shape in (("train", (60, 5)), ("test", (20, 5)), ("gen", (10, 5)), ("gen7", (10, 7))):
        np.save(root / f"{name}.npy", rng.normal(size=shape).astype(np.float32))
    return root


@pytest.mark.parametrize("extra,needle", [
    (("--gen", "{root}/gen7.npy"), "--gen samples have shape (7,)"),
    (("--gen", "{root}/missing.npy"), "does not exist"),
    (("--metrics", "d1d2,nope"), "unknown copy metric 'nope'"),
    (("--metrics", "tiled_l2"), "needs images in pixel features"),
    (("--options", "{{not json"), "--options is not valid JSON"),
    (("--options", '{{"ct": {{"k": 3}}}}', "--metrics", "d1d2"), "options given for metric(s) not computed: ct"),
    (("--options", '{{"d1d2": {{"threshold": -1}}}}'), "threshold"),
    (("--backend", "annoy"), "unknown kNN backend 'annoy'"),
    (("--backend", "faiss-ivf", "--index-options", '{{"nprobes": 4}}'), "unknown index option(s) nprobes"),
    (("--n-gen", "5"), "--gen is not a model checkpoint"),
    (("--n-boot", "-1"), "invalid option n_boot"),
    (("--features", "no-such-extractor"), "unknown feature extractor"),
])
def test_bad_input_is_one_line_and_writes_nothing(arrays, run_cli, tmp_path, extra, needle):
    out = tmp_path / "out"
    base = {"--train": f"{arrays}/train.npy", "--test": f"{arrays}/test.npy", "--gen": f"{arrays}/gen.npy"}
    args = [a.format(root=arrays) for a in extra]
    for k, v in base.items():
        if k not in args:
            args += [k, v]
    code, _, err = run_cli("copies", *args, "--out", out)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("[memgeo")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert not out.exists()


def test_checkpoint_without_n_gen_is_refused(demo, run_cli, tmp_path):
    code, _, err = run_cli("copies", "--train", demo / "demo" / "train_x.npy", "--test", demo / "nines.npy",
                           "--gen", demo / "demo" / "model", "--out", tmp_path / "o")
    assert code == 2 and "no --n-gen was given" in err and not (tmp_path / "o").exists()


def test_help_lists_defaults_and_an_example(run_cli):
    code, stdout, _ = run_cli("copies", "--help")
    assert code == 0
    text = " ".join(stdout.split())
    for piece in ("[default: pixels]", "[default: 200]", "[default: auto]", "Example: memgeo copies --train",
                  "faiss-hnsw", "--n-gen"):
        assert piece in text, piece


def test_index_options_reach_the_approximate_index(arrays, run_cli, tmp_path):
    """--index-options sets the IVF index: with every cell visited (nprobe = nlist) IVF is exact, so its
    copies.csv equals the exact backend's, and the options are recorded in summary.json."""
    base = ["--train", f"{arrays}/train.npy", "--test", f"{arrays}/test.npy", "--gen", f"{arrays}/gen.npy",
            "--metrics", "d1d2,authenticity", "--n-boot", "0"]
    code, _, err = run_cli("copies", *base, "--backend", "faiss", "--out", tmp_path / "exact")
    assert code == 0, err
    code, _, err = run_cli("copies", *base, "--backend", "faiss-ivf", "--index-options", '{"nlist": 4, "nprobe": 4}',
                           "--out", tmp_path / "ivf")
    assert code == 0, err
    assert _csv(tmp_path / "ivf" / "copies.csv") == _csv(tmp_path / "exact" / "copies.csv")
    summary = json.loads((tmp_path / "ivf" / "summary.json").read_text())
    assert summary["backend"] == "faiss-ivf" and summary["index_options"] == {"nlist": 4, "nprobe": 4}
