"""What commands print: rounded human-readable sentences (full JSON with --json), and progress bars that
name their task and count it correctly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from memgeo.cli.output import auroc_text, num, plus_minus


def test_num_rounds_to_four_significant_digits():
    assert num(0.9998999099189271) == "0.9999"
    assert num(0.123456789) == "0.1235"
    assert num(12345.678) == "12346" and num(7) == "7" and num(True) == "True"
    assert num(None) == "n/a" and num(float("nan")) == "nan"
    assert num(1.23456e-7) == "1.235e-7"
    assert num(2 / 3, 2) == "0.67"


def test_plus_minus_rounds_both_to_the_errors_second_digit():
    assert plus_minus(-1.234567, 0.004321) == "-1.2346 ± 0.0043"
    assert plus_minus(12.3456, 1.5) == "12.3 ± 1.5"
    assert plus_minus(250.0, 34.0) == "250 ± 34"
    assert plus_minus(0.5, None) == "0.5" and plus_minus(None, 0.1) == "n/a"


def test_auroc_text_with_ci_and_with_a_reason():
    assert auroc_text({"auroc": 0.9998999, "ci_low": 0.99812, "ci_high": 1.0}) == "0.9999 [0.9981, 1]"
    assert auroc_text({"auroc": None, "reason": "one class only"}) == "n/a (one class only)"


def test_lid_prints_a_rounded_sentence_and_json_on_request(run_cli, tmp_path):
    rng = np.random.default_rng(0)
    flat = [np.concatenate([rng.normal(size=(m, 3)), np.zeros((m, 7))], axis=1) for m in (300, 1000)]  # 3-D in 10-D
    np.save(tmp_path / "p.npy", flat[0])
    np.save(tmp_path / "ref.npy", flat[1])
    base = ("lid", "--points", tmp_path / "p.npy", "--estimator", "mle", "--data", tmp_path / "ref.npy")
    code, stdout, err = run_cli(*base, "--out", tmp_path / "a")
    assert code == 0, err
    mean = json.loads((tmp_path / "a" / "lid.json").read_text())["mean"]
    line = stdout.strip()
    assert len(line.splitlines()) == 1 and line.startswith("LID (mle) of 300 points: mean ")
    shown = line.split("mean ")[1].split(";")[0]
    assert shown == f"{mean:.3g}" and len(shown.replace(".", "")) <= 3  # 3 significant digits, not 17
    assert 2.5 < float(shown) < 3.5
    code, stdout, err = run_cli(*base, "--json", "--out", tmp_path / "b")
    assert code == 0, err
    assert json.loads(stdout)["mean"] == pytest.approx(mean, rel=0, abs=0)  # same data, same estimate, full float


def test_collapse_bar_counts_every_generation(monkeypatch):
    """The issue: 100 generations read 0/99. One tick per fitted generation, total = generations."""
    import memgeo.collapse.loops as loops

    bars = []

    class Bar:
        def __init__(self, *args, total=None, desc=None, **kw):
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, k=1):
            self.n += k

        def close(self):
            self.closed = True

    monkeypatch.setattr(loops, "tqdm", Bar)
    from memgeo.collapse.families import make_family

    for generations in (1, 7):
        bars.clear()
        hist = loops.simulate(make_family("gaussian", dim=1), "replace", "constant", generations, 5, n=20, seed=0,
                              progress=True)
        assert hist.metrics["log_var"].shape[0] == generations + 1
        (bar,) = bars
        assert (bar.total, bar.n, bar.closed, bar.desc) == (generations, generations, True, "collapse: generations")


def test_training_bars_name_their_task(monkeypatch):
    """No two different trainings are both labelled 'training': the default and a named one differ."""
    import torch

    import memgeo.models.training as training
    from memgeo.models import MLPConfig, TrainConfig

    descs = []
    real_tqdm = training.tqdm

    def spy(*args, desc=None, **kw):
        descs.append(desc)
        return real_tqdm(*args, desc=desc, **kw)

    monkeypatch.setattr(training, "tqdm", spy)
    data = torch.randn(16, 2)
    cfg = TrainConfig(steps=2, batch_size=4, checkpoint_every=2, log_every=1)
    training.train(MLPConfig(data_shape=(2,), hidden=8, depth=1), cfg, data, progress=False)
    training.train(MLPConfig(data_shape=(2,), hidden=8, depth=1), cfg, data, progress="training 2-D toy model")
    assert descs == ["training diffusion model", "training 2-D toy model"]

