"""Generator families: checkpoints (round trip, shape check), bit-identical resume, ``memgeo train --family``."""

from __future__ import annotations

import json

import pytest
import torch

from memgeo.errors import MemgeoError
from memgeo.models import load
from memgeo.models.checkpoint import STATE_FILE, load_tensors, save_tensors
from memgeo.models.families import (
    FAMILY_NAMES,
    family_of,
    get_family,
    load_generator,
    save_generator,
    train_generator,
)

SMALL = {
    "vae": {"hidden": (8,), "latent_dim": 2},
    "gsvae": {"hidden": (8,), "n_latent": 2, "n_categories": 3},
    "gan": {"hidden": 8, "depth": 1},
    "wgan-gp": {"hidden": 8, "depth": 1},
    "sd2015": {"hidden": (8,), "T": 4},
}


def _config(name, shape=(3,)):
    return get_family(name).make_config(shape, **SMALL[name])


def _data(n=40, shape=(3,)):
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(5))


def _states_equal(a, b):
    ta, tb = load_tensors(a / STATE_FILE), load_tensors(b / STATE_FILE)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_save_load_round_trip_same_outputs(name, tmp_path):
    fam = get_family(name)
    model = fam.model_cls(_config(name))
    with torch.no_grad():  # move away from the seeded initialisation, so a re-built model would differ
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    save_generator(model, tmp_path)
    for loaded in (load_generator(tmp_path), load(tmp_path)):
        assert type(loaded) is fam.model_cls and family_of(loaded).name == name
        assert loaded.config == model.config
        s1 = model.sample(5, generator=torch.Generator().manual_seed(3))
        s2 = loaded.sample(5, generator=torch.Generator().manual_seed(3))
        assert torch.equal(s1, s2)
        if model.has("decode"):
            z = model.prior_sample(4, torch.Generator().manual_seed(1))
            assert torch.equal(model.decode(z), loaded.decode(z))
        assert not any(p.requires_grad for p in loaded.parameters())
    fresh = fam.model_cls(_config(name))  # the perturbation really is in the file
    assert not torch.equal(fresh.sample(5, generator=torch.Generator().manual_seed(3)),
                           load(tmp_path).sample(5, generator=torch.Generator().manual_seed(3)))


def test_shape_check_refuses_bad_checkpoint_before_allocation(tmp_path):
    model = get_family("vae").model_cls(_config("vae"))
    path = tmp_path / "model.safetensors"
    huge = _config("vae").model_copy(update={"hidden": (10**9,)})  # would need ~10^10 floats if allocated
    save_tensors(path, dict(model.state_dict()), {"vae_config": huge.model_dump_json(), "generator_family": "vae"})
    with pytest.raises(MemgeoError, match="do not match its config"):
        load(tmp_path)
    save_tensors(path, dict(model.state_dict()), {"vae_config": "{\"data_shape\": []}"})
    with pytest.raises(MemgeoError, match="config in .* is invalid"):
        load_generator(tmp_path)


@pytest.mark.parametrize("name", ["vae", "gsvae", "gan", "wgan-gp", "sd2015"])
def test_resume_is_bit_identical(name, tmp_path):
    cfg, data = _config(name), _data()
    kw = dict(checkpoint_every=4, progress=False, batch=8, seed=7)
    full = train_generator(cfg, data, 12, tmp_path / "full", **kw)
    part = train_generator(cfg, data, 8, tmp_path / "part", **kw)
    assert part.steps_done == 8
    resumed = train_generator(cfg, data, 12, tmp_path / "part", **kw)
    assert resumed.resumed_from == 8 and resumed.steps_done == 4
    assert _states_equal(tmp_path / "full", tmp_path / "part")
    assert resumed.losses == full.losses and len(full.losses) == 12
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    # a resume with other settings is refused, and so is fewer steps than the checkpoint holds
    with pytest.raises(MemgeoError, match="other settings"):
        train_generator(cfg, data, 12, tmp_path / "part", **{**kw, "batch": 9})
    with pytest.raises(MemgeoError, match="beyond steps"):
        train_generator(cfg, data, 5, tmp_path / "part", **kw)


def test_train_generator_matches_the_family_trainers():
    """Independent references: train_vae / train_gan / train_sd2015 with the same seed give the same weights."""
    from memgeo.models.gan import train_gan
    from memgeo.models.sd2015 import train_sd2015
    from memgeo.models.vae import train_vae

    data = _data()
    for name in ("vae", "gsvae", "wgan-gp", "sd2015"):
        cfg = _config(name)
        ours = train_generator(cfg, data, 6, progress=False, batch=8, lr=1e-2, seed=3).model
        ref = get_family(name).model_cls(cfg)
        gen = torch.Generator().manual_seed(3)
        if name in ("vae", "gsvae"):
            train_vae(ref, data, steps=6, lr=1e-2, batch=8, generator=gen)
        elif name == "sd2015":
            train_sd2015(ref, data, steps=6, lr=1e-2, batch=8, generator=gen)
        else:
            train_gan(ref, data, 6, 8, generator=gen)
        for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
            assert torch.allclose(a, b, rtol=0, atol=1e-6), (name, k)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(MemgeoError, match="unknown generator family"):
        get_family("diffusion")
    with pytest.raises(MemgeoError, match="invalid vae config"):
        get_family("vae").make_config((3,), latent_dim=0)
    with pytest.raises(MemgeoError, match="data has shape"):
        train_generator(_config("vae"), _data(shape=(4,)), 3, progress=False)
    bern = get_family("vae").make_config((3,), hidden=(4,), decoder="bernoulli")
    with pytest.raises(MemgeoError, match="outside \\[0, 1\\]"):
        train_generator(bern, _data(), 3, progress=False)


@pytest.mark.parametrize("family", ["vae", "gsvae", "gan", "wgan-gp"])
def test_cli_train_family(family, run_cli, tmp_path):
    out = tmp_path / family
    code, stdout, stderr = run_cli("train", "--family", family, "--data", "digits", "--steps", "50", "--hidden", "32",
                                   "--depth", "1", "--batch-size", "32", "--out", out)
    assert code == 0, stderr
    assert "trained 50 steps" in stdout
    assert f"training {family}" in stderr  # the progress bar names its task
    model = load(out)
    assert type(model) is get_family(family).model_cls and family_of(model).name == family
    assert model.data_shape == (1, 8, 8)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["family"] == family and summary["steps"] == 50
    # rerun: nothing left to train
    code, stdout, _ = run_cli("train", "--family", family, "--data", "digits", "--steps", "50", "--hidden", "32",
                              "--depth", "1", "--batch-size", "32", "--out", out)
    assert code == 0 and "already at step 50" in stdout
    code, stdout, stderr = run_cli("sample", "--model", out, "--n", "6", "--out", tmp_path / f"s_{family}")
    assert code == 0, stderr
    import numpy as np

    samples = np.load(tmp_path / f"s_{family}" / "samples.npy")
    assert samples.shape == (6, 1, 8, 8) and np.isfinite(samples).all()


def test_cli_bernoulli_vae_rescales_data_and_errors(run_cli, tmp_path):
    out = tmp_path / "bern"
    code, stdout, stderr = run_cli("train", "--family", "vae", "--decoder", "bernoulli", "--steps", "20", "--hidden",
                                   "16", "--depth", "1", "--out", out)
    assert code == 0, stderr
    assert "rescaled from [-1, 1] to [0, 1]" in stderr
    assert json.loads((out / "summary.json").read_text())["data_scale"] == "[0, 1]"
    assert load(out).config.decoder == "bernoulli"
    code, stdout, stderr = run_cli("sample", "--model", out, "--n", "4", "--out", tmp_path / "s")
    import numpy as np

    s = np.load(tmp_path / "s" / "samples.npy")  # back in memgeo's [-1, 1]
    assert code == 0 and s.min() >= -1 and s.max() <= 1
    for args, words in ((("--family", "flow"), "family"), (("--family", "sd2015", "--latent-dim", "3"), "latent-dim")):
        code, stdout, stderr = run_cli("train", *args, "--steps", "5", "--out", tmp_path / "bad")
        assert code == 2 and words in stderr
        assert len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli("sample", "--model", out, "--cond", "3", "--out", tmp_path / "bad2")
    assert code == 2 and "unconditional" in stderr


def test_cli_sd2015_on_swissroll(run_cli, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"generator_options": {"T": 5}}))
    code, stdout, stderr = run_cli("train", "--family", "sd2015", "--data", "swissroll", "--steps", "10", "--hidden",
                                   "16", "--depth", "1", "--config", cfg, "--out", tmp_path / "sd")
    assert code == 0, stderr
    model = load(tmp_path / "sd")
    assert type(model).__name__ == "SD2015Diffusion" and model.T == 5 and model.data_shape == (2,)


def test_train_help_shows_family(run_cli):
    code, stdout, _ = run_cli("train", "--help")
    assert code == 0
    text = " ".join(stdout.split())
    assert "--family" in text and "[default: ddpm]" in text and "memgeo train --family wgan-gp" in text
