"""`memgeo mitigate` end to end on a tiny random caption model: outputs, resume after a crash, errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import memgeo.workflows.mitigate as wf
from memgeo.data.prompts import write_prompts
from memgeo.models.caption import CaptionDiffusionModel, CaptionModelConfig, build_vocab, save_caption_model
from memgeo.models.classifier import ClassifierConfig, DigitClassifier, save_classifier

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = [{"prompt": "a photo of digit three number 17", "memorized": 1, "label": 3, "train_index": 0},
           {"prompt": "a digit three", "memorized": 0, "label": 3},
           {"prompt": "a photo of digit five number 4", "memorized": 1, "label": 5, "train_index": 1},
           {"prompt": "a digit five", "memorized": 0, "label": 5}]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mitigate_assets")
    torch.manual_seed(0)
    shape = (1, 4, 4)
    model = CaptionDiffusionModel(CaptionModelConfig(
        data_shape=shape, vocab=build_vocab([p["prompt"] for p in PROMPTS]), max_length=10, embed_dim=8, heads=1,
        hidden=16, depth=1, time_dim=8))
    save_caption_model(model, root / "model")
    save_classifier(DigitClassifier(ClassifierConfig(data_shape=shape, num_classes=10, hidden=8, depth=1)),
                    root / "classifier")
    np.save(root / "train_x.npy", np.random.default_rng(0).uniform(-1, 1, (12, *shape)).astype(np.float32))
    write_prompts(root / "prompts.jsonl", PROMPTS)
    write_prompts(root / "plain.txt", [p["prompt"] for p in PROMPTS])
    return root


def args(assets, out, *extra):
    return ("mitigate", "--model", assets / "model", "--prompts", assets / "prompts.jsonl", "--method",
            "sail,jain_delayed", "--params", '{"sail": {"n_candidates": 2, "opt_steps": 2}}', "--generations", "2",
            "--steps", "4", "--guidance", "3", "--train-data", assets / "train_x.npy", "--classifier",
            assets / "classifier", "--no-progress", "--out", out, *extra)


def read_rows(path):
    with open(path) as fh:
        return [{k: v for k, v in r.items() if k not in ("seconds",)} for r in csv.DictReader(fh)]


def test_cli_end_to_end(assets, tmp_path, run_cli):
    code, stdout, err = run_cli(*args(assets, tmp_path / "run", "--json"))
    assert code == 0, err
    table = json.loads(stdout)
    assert [r["method"] for r in table] == ["none", "sail", "jain_delayed"]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = read_rows(tmp_path / "run" / "generations.csv")
    assert len(rows) == 3 * len(PROMPTS) * 2
    by = {r["method"]: r for r in res["table"]}
    # Per-method numbers are the means of the per-generation rows.
    sail_rows = [r for r in rows if r["method"] == "sail"]
    assert by["sail"]["nfe_per_generation"] == np.mean([float(r["nfe"]) for r in sail_rows])
    assert by["sail"]["nfe_per_generation"] == 4 * 2 + 4 * 2 + 4 + 2 * 5
    assert by["none"]["nfe_per_generation"] == 2 * 5
    mem = [r for r in rows if r["method"] == "none" and r["memorized"] == "True"]
    assert by["none"]["copy_rate_memorized"] == np.mean([r["is_copy"] == "True" for r in mem])
    assert by["none"]["accuracy_all"] == np.mean([r["correct_class"] == "True" for r in rows if r["method"] == "none"])
    assert by["none"]["accuracy_drop_points"] == 0
    stats = [float(r["statistic"]) for r in mem]
    assert by["none"]["median_statistic_memorized"] == pytest.approx(np.median(stats))
    assert res["methods"]["sail"]["params"]["n_candidates"] == 2
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Methods" in html and "data:image/png;base64" in html
    # the baseline equals sampling from the seeds directly: same noise for every method
    sail_rec = json.loads((tmp_path / "run" / "records" / "sail" / "00000.json").read_text())
    none_rec = json.loads((tmp_path / "run" / "records" / "none" / "00000.json").read_text())
    assert sail_rec["seeds"] == none_rec["seeds"] == [0, 1]


def test_crash_and_resume_gives_same_results(assets, tmp_path, run_cli, monkeypatch):
    code, _, err = run_cli(*args(assets, tmp_path / "clean"))
    assert code == 0, err
    original = wf._generate_prompt
    calls = {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # halfway through the second method
            raise RuntimeError("simulated crash")
        return original(*a, **k)

    monkeypatch.setattr(wf, "_generate_prompt", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(*args(assets, tmp_path / "crash"))
    finished = sorted(p.name for p in (tmp_path / "crash" / "records").rglob("*.json"))
    assert len(finished) == 5 and not (tmp_path / "crash" / "results.json").exists()

    counted = {"n": 0}

    def counting(*a, **k):
        counted["n"] += 1
        return original(*a, **k)

    monkeypatch.setattr(wf, "_generate_prompt", counting)
    code, _, err = run_cli(*args(assets, tmp_path / "crash"))
    assert code == 0, err
    assert counted["n"] == 3 * len(PROMPTS) - 5 and "resumed" in err
    assert read_rows(tmp_path / "crash" / "generations.csv") == read_rows(tmp_path / "clean" / "generations.csv")


def test_resume_with_other_settings_is_refused(assets, tmp_path, run_cli):
    assert run_cli(*args(assets, tmp_path / "r"))[0] == 0
    code, _, err = run_cli(*args(assets, tmp_path / "r", "--seed", "5"))
    assert code == 2 and "other settings" in err and "seed" in err


@pytest.mark.parametrize("extra,message", [
    (("--method", "nope"), "unknown mitigation method"),
    (("--params", "{bad"), "not valid JSON"),
    (("--params", '{"han_noise": {"iters": 2}}'), "not run"),
    (("--params", '{"sail": {"bogus": 1}}'), "invalid parameters"),
    (("--prompts", "PLAIN"), "no 'label' field"),
    (("--criterion", "nope"), "unknown copy criterion"),
])
def test_bad_input_fails_before_creating_output(assets, tmp_path, run_cli, extra, message):
    extra = tuple(str(assets / "plain.txt") if e == "PLAIN" else e for e in extra)
    code, _, err = run_cli(*args(assets, tmp_path / "bad", *extra))
    assert code == 2 and message in err, err
    assert not (tmp_path / "bad").exists()


def test_without_train_data_or_classifier(assets, tmp_path):
    cfg = wf.MitigateConfig(model=str(assets / "model"), prompts=str(assets / "plain.txt"), methods=("han_noise",),
                            params={"han_noise": {"iters": 1}}, generations=1, steps=2)
    summary = wf.run_mitigate(cfg, tmp_path / "plain", progress=False)
    assert [r["method"] for r in summary["table"]] == ["none", "han_noise"]
    assert summary["table"][1]["copy_rate_memorized"] is None and summary["copy_criterion"] is None
    assert (tmp_path / "plain" / "report.html").is_file()


def test_edited_prompt_file_is_detected_on_resume(assets, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a digit three\na digit five\n")
    cfg = wf.MitigateConfig(model=str(assets / "model"), prompts=str(prompts), methods=("none",), generations=1,
                            steps=2)
    wf.run_mitigate(cfg, tmp_path / "run", progress=False)
    prompts.write_text("a digit three\na digit seven\n")
    with pytest.raises(wf.MemgeoError, match="edited prompt file"):
        wf.run_mitigate(cfg, tmp_path / "run", progress=False)


def test_latent_pipeline_folder_is_decoded(tmp_path, run_cli):
    """A tiny diffusers latent pipeline: methods run in latent space, records hold decoded images."""
    from memgeo.models.pipeline import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp_path / "pipe", latent=True)
    (tmp_path / "p.txt").write_text("a photo of a cat\na red dog on the mat\n")
    params = '{"sail": {"opt_steps": 1}, "wen_prompt": {"opt_steps": 1}}'
    code, stdout, err = run_cli("mitigate", "--model", folder, "--prompts", tmp_path / "p.txt", "--method",
                                "sail,wen_prompt", "--params", params, "--generations", "1", "--steps", "2",
                                "--no-progress", "--json", "--out", tmp_path / "run")
    assert code == 0, err
    x = np.load(tmp_path / "run" / "records" / "sail" / "00001.npy")
    assert x.shape == (1, 1, 16, 16) and np.isfinite(x).all() and np.abs(x).max() <= 1.0
    assert [r["method"] for r in json.loads(stdout)] == ["none", "sail", "wen_prompt"]


def test_plots_one_entry_per_method():
    from memgeo.errors import MemgeoError
    from memgeo.report.mitigation_plots import method_grid, tradeoff_plot

    fig = tradeoff_plot(["none", "sail", "x"], np.array([0.9, 0.3, np.nan]), np.array([1.0, 0.98, 0.5]),
                        np.array([102, 150, 100]))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["none (102 NFE)", "sail (150 NFE)"]  # NaN rows are left out
    grid = method_grid(np.zeros((2, 3, 1, 4, 4)), ["none", "sail"], np.array([[1, 0, 0], [0, 0, 1]], bool))
    assert len(grid.axes) == 6 and grid.axes[3].get_title() == "sail"
    with pytest.raises(MemgeoError):
        method_grid(np.zeros((2, 3, 1, 4, 4)), ["none"])
