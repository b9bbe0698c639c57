"""`memgeo families`: the duplicated-9 experiment across generative families (ddpm, sd2015, vae, gsvae, gan,
wgan-gp), on a tiny quick run.

Tiny step counts on a 400-row subsample: the check is the experiment's plumbing (files, table
columns, AUROC where copies exist and a reason where not, verdict sentences), plus two closed-form
facts of its scores: the +inf (collapsed Jacobian) log-density ranks above every finite one, and the
gsvae prior constant is -n_latent log K.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from memgeo.workflows.families_demo import (
    DIFFUSION_FAMILIES,
    EXPERIMENT_FAMILIES,
    KFOLD_FAMILIES,
    NO_LIKELIHOOD,
    TABLE_COLUMNS,
    FamiliesDemoConfig,
    _finite_scores,
    _geometry,
    run_families_demo,
)

TINY = dict(steps={"ddpm": 30, "sd2015": 10, "vae": 30, "gsvae": 30, "gan": 30, "wgan-gp": 10}, n_samples=40,
            subsample=400, hidden=32, sd2015_hidden=16, sd2015_T=8, kfold_rows=60,
            kfold_steps={"ddpm": 20, "sd2015": 10, "vae": 20, "gsvae": 20}, kfold_iw=4, kfold_bound_steps=20)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fam") / "run"
    return out, run_families_demo(FamiliesDemoConfig(**TINY), out)


def test_files_table_and_verdict(tiny_run):
    out, summary = tiny_run
    for name in ("summary.json", "families.csv", "generations.csv", "report.html"):
        assert (out / name).is_file()
    with open(out / "families.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == TABLE_COLUMNS
    assert [r["family"] for r in rows] == list(EXPERIMENT_FAMILIES)
    saved = json.loads((out / "summary.json").read_text())
    assert len(saved["verdict"]) == len(EXPERIMENT_FAMILIES)
    html = (out / "report.html").read_text()
    for fam, row, sentence in zip(EXPERIMENT_FAMILIES, saved["families"], saved["verdict"]):
        assert sentence.startswith(f"**{fam}**")
        # the diffusions are scored by sharpness / FLIPD, the latent generators by their Jacobian
        assert row["geometric_score"].startswith("sharpness" if fam in DIFFUSION_FAMILIES else "pushforward")
        assert row["lid_model_estimator"] == ("FLIPD" if fam in DIFFUSION_FAMILIES else "rank of J_G(z)")
        assert (row["latent"] is None) == (fam in DIFFUSION_FAMILIES)
        assert ("copies the duplicated 9" in sentence) == row["memorizes"]
        gens = [g for g in csv.DictReader((out / "generations.csv").open()) if g["family"] == fam]
        n_src = sum(g["copy_of_source"] == "True" for g in gens)
        assert row["n_copies_of_source"] == n_src and row["memorizes"] == (n_src >= 5)
        assert ("does not memorize" in sentence) == (not row["memorizes"])
        assert (out / "figures" / f"samples_{fam}.png").is_file()
        assert fam in html
        # AUROC where both copies and non-copies exist, a stated reason where not.
        n_copies, n = row["n_copies"], row["n_generations"]
        if 0 < n_copies < n:
            assert row["auroc_score"] is not None and 0.0 <= row["auroc_score"] <= 1.0
            assert row["auroc_score_ci_low"] <= row["auroc_score"] <= row["auroc_score_ci_high"]
        else:
            assert row["auroc_score"] is None
            assert "only" in row["auroc_reason"] and "not computed" in sentence
        mmh_total = sum(row[f"mmh_{g}_{k}"] for g in ("copies", "non_copies") for k in ("none", "OD-Mem", "DD-Mem"))
        assert mmh_total == n
        assert row["train_s"] >= 0
    # The verdict comes first in the report, before the table.
    assert html.index("does not") < html.index("Per family") or html.index("copies the") < html.index("Per family")


def test_table_matches_generations(tiny_run):
    """The table's copy counts and AUROC agree with an independent recomputation from generations.csv."""
    out, summary = tiny_run
    from memgeo.memorization.evaluation import auroc

    with open(out / "generations.csv", newline="") as f:
        gens = list(csv.DictReader(f))
    for row in summary["families"]:
        g = [r for r in gens if r["family"] == row["family"]]
        labels = np.array([r["is_copy"] == "True" for r in g])
        assert int(labels.sum()) == row["n_copies"]
        if 0 < labels.sum() < len(labels):
            scores = _finite_scores(np.array([float(r["score"]) for r in g]))
            assert row["auroc_score"] == pytest.approx(auroc(scores, labels))


def test_finite_scores_keep_ranks():
    v = np.array([1.0, math.inf, -2.0, 5.0])
    f = _finite_scores(v)
    assert np.all(np.isfinite(f)) and f[1] == 6.0
    assert list(np.argsort(f)) == [2, 0, 3, 1]


def test_linear_vae_geometry_closed_form():
    """A VAE whose decoder is linear, x = A z + b: every singular value is A's and the log-density is
    log N(z; 0, I) - sum log s_i(A); the gsvae constant is -n_latent log K."""
    from memgeo.models.families import get_family

    cfg = FamiliesDemoConfig(latent_dim=3, hidden=8, depth=1)
    model = get_family("vae").model_cls(cfg.family_config("vae", (6,)))
    a = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    b = torch.randn(6)
    model.decode = lambda z: z @ a.T + b  # type: ignore[method-assign]
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    logp, lid = _geometry(model, "vae", z)
    s = torch.linalg.svdvals(a.double())
    expect = (-0.5 * (z.double() ** 2).sum(1) - 1.5 * math.log(2 * math.pi) - torch.log(s).sum()).numpy()
    np.testing.assert_allclose(logp, expect, rtol=1e-4, atol=1e-4)
    assert np.all(lid == 3)


def test_auroc_where_a_generator_copies(tmp_path, monkeypatch):
    """A stand-in 'trained' VAE that maps z[0] > 0 onto the duplicated 9 (scale 1e-3: a copy, dense)
    and z[0] <= 0 onto a wide linear sheet (no copy): copies exist, the AUROC is computed and is 1."""
    import memgeo.workflows.families_demo as fd
    from memgeo.models.families import GeneratorTrainResult

    real = fd.train_generator

    def fake(config, data, steps, out=None, **kw):
        res = real(config, data, 1, out, **kw)
        model = res.model
        src = data[(data.shape[0] - 1)].reshape(-1)  # injected copies are appended last
        a = torch.randn(src.numel(), model.latent_dim, generator=torch.Generator().manual_seed(3))

        def decode(z):
            lin = z @ a.T
            w = (z[:, :1] > 0).to(z.dtype)
            return (w * (src + 1e-3 * lin) + (1 - w) * lin).reshape(z.shape[0], *model.data_shape)

        model.decode = decode  # type: ignore[method-assign]
        return GeneratorTrainResult(model=model, losses=res.losses, steps_done=1)

    monkeypatch.setattr(fd, "train_generator", fake)
    cfg = FamiliesDemoConfig(families=("vae",), n_samples=60, subsample=400, hidden=16, latent_dim=4)
    s = run_families_demo(cfg, tmp_path / "run")
    row = s["families"][0]
    assert 0 < row["n_copies"] < row["n_generations"]
    assert row["copy_rate_memorized"] == 1.0 and row["memorizes"]
    assert row["auroc_score"] == pytest.approx(1.0)
    assert row["separates"] and "separates copies" in s["verdict"][0]


@pytest.mark.parametrize("family", KFOLD_FAMILIES)
def test_kfold_summary_matches_rows(tiny_run, family):
    """Every family with a likelihood or bound gets a K-fold summary that agrees with an independent
    recomputation from its kfold.csv rows: k = 2, one repeat gives exactly one in-fold and one out-of-fold
    model per row, so score = log_p_in - log_p_out; the duplicated/rest means and the isolated row (largest
    nearest-neighbour distance) follow from the rows."""
    out, summary = tiny_run
    kf = summary["kfold"][family]
    assert kf["family"] == family and kf["rows"] == 60 and kf["k"] == 2 and kf["repeats"] == 1
    with open(out / "kfold.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["family"] == family]
    assert len(rows) == 60
    score = np.array([float(r["score"]) for r in rows])
    assert np.all(np.isfinite(score))
    np.testing.assert_allclose(score, [float(r["log_p_in"]) - float(r["log_p_out"]) for r in rows], atol=1e-9)
    dup = np.array([r["is_duplicated"] == "True" for r in rows])
    start, stop = summary["injection"]["copy_rows"]
    assert np.array_equal(dup, [start <= int(r["row"]) < stop for r in rows])
    assert kf["duplicated"]["n"] == int(dup.sum()) and kf["rest"]["n"] == int((~dup).sum())
    if dup.any():
        assert kf["duplicated"]["mean"] == pytest.approx(score[dup].mean())
    assert kf["rest"]["mean"] == pytest.approx(score[~dup].mean())
    # One repeat: the fold-balanced mean is the mean of the two held-out folds' mean scores.
    fold = np.array([int(r["fold"]) for r in rows])
    assert set(fold.tolist()) == {0, 1}
    assert kf["rest"]["balanced_mean"] == pytest.approx(np.mean([score[~dup & (fold == j)].mean() for j in (0, 1)
                                                                 if (~dup & (fold == j)).any()]))
    nn = np.array([float(r["nn_distance"]) for r in rows])
    assert kf["isolated"]["row"] == int(rows[int(np.argmax(nn))]["row"])
    row = next(r for r in summary["families"] if r["family"] == family)
    assert row["kfold_duplicated_balanced_mean"] == pytest.approx(kf["duplicated"]["balanced_mean"])
    assert row["kfold_rest_balanced_mean"] == pytest.approx(kf["rest"]["balanced_mean"])
    assert "K-fold" in (out / "report.html").read_text()


def test_kfold_missing_says_why_for_gans(tiny_run):
    """GAN and WGAN-GP have no likelihood: no K-fold numbers, and the table says so."""
    out, summary = tiny_run
    for row in summary["families"]:
        if row["family"] in KFOLD_FAMILIES:
            assert row["kfold_note"] == ""
        else:
            assert row["family"] not in summary["kfold"]
            assert summary["kfold_missing"][row["family"]] == NO_LIKELIHOOD == row["kfold_note"]
            assert row["kfold_duplicated_balanced_mean"] is None
    assert "no likelihood" in (out / "report.html").read_text()


def test_kfold_duplicates_score_zero_with_a_deterministic_model(tmp_path, monkeypatch):
    """Closed form: a 'model' whose log-likelihood is a fixed function of x (it ignores which rows it was
    trained on) scores exactly 0 everywhere, so the workflow's in/out bookkeeping adds nothing of its own."""
    import memgeo.workflows.families_demo as fd
    from memgeo.models.families import GeneratorTrainResult

    real = fd.train_generator

    def fake(config, data, steps, out=None, **kw):
        res = real(config, data, 1, out, **kw)
        model = res.model
        model.iw_bound = lambda x, k, generator=None: -(x.reshape(x.shape[0], -1) ** 2).sum(1)  # type: ignore
        return GeneratorTrainResult(model=model, losses=res.losses, steps_done=1)

    monkeypatch.setattr(fd, "train_generator", fake)
    cfg = FamiliesDemoConfig(families=("vae",), n_samples=20, subsample=400, hidden=16, latent_dim=4,
                             kfold_rows=40, kfold_iw=2)
    s = run_families_demo(cfg, tmp_path / "run")
    assert s["kfold"]["vae"]["rest"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert s["kfold"]["vae"]["isolated"]["score"] == pytest.approx(0.0, abs=1e-12)


def test_cli_steps_option(tmp_path):
    """`memgeo families --steps vae=7` trains the vae 7 steps (others keep their defaults); a malformed
    item is refused with a MemgeoError naming it."""
    from typer.testing import CliRunner

    from memgeo.cli import app
    from memgeo.errors import MemgeoError
    from memgeo.workflows.families_demo import DEFAULT_STEPS

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"subsample": 400, "hidden": 16, "n_samples": 20, "kfold_rows": 0}))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["families", "--family", "vae", "--steps", "vae=7", "--latent-dim", "3",
                                   "--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "summary.json").read_text())
    assert saved["families"][0]["steps"] == 7 and saved["kfold"] == {}
    conf = json.loads((out / "config.json").read_text())
    assert conf["latent_dim"] == 3 and conf["steps"]["gan"] == DEFAULT_STEPS["gan"]
    bad = CliRunner().invoke(app, ["families", "--steps", "vae=x", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0
    assert isinstance(bad.exception, MemgeoError) or "vae=x" in bad.output
