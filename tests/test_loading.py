"""One loader for every model kind (memgeo.models.load) and the CLI commands on prompt models.

Dispatch: each kind of ``--model`` (SPEC strings, label and caption checkpoints, pipeline folders by
``_class_name``) yields the right class with the stored weights; classifiers and unknown pipelines
are refused. CLI: sharpness, FLIPD and audit on a tiny caption checkpoint and a tiny pipeline folder
with ``--prompt`` agree with spectra and traces computed here from dense autograd Jacobians, with
each prompt encoded on its own (so the row-wise pairing of points and prompts is checked too).
"""

from __future__ import annotations

import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from memgeo.errors import MemgeoError
from memgeo.models import (
    MODEL_SPECS,
    CaptionDiffusionModel,
    CaptionModelConfig,
    ClassifierConfig,
    DiffusersPromptModel,
    DigitClassifier,
    EmpiricalMixtureScore,
    GaussianScore,
    MLPConfig,
    MLPEps,
    build_model,
    build_tiny_pipeline,
    build_vocab,
    load,
    save_caption_model,
    save_classifier,
    save_model,
)
from memgeo.models.loading import load_model_spec, load_prompt_model, pipeline_adapter, resolve_dtype

pytestmark = pytest.mark.usefixtures("single_thread")

CAPTIONS = ["a red one", "a blue two", "the zebra kite seven"]
PROMPTS = ["a red one", "the zebra kite seven"]


# --- tiny models on disk -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("loading")
    torch.manual_seed(0)
    label = build_model(MLPConfig(data_shape=(3,), hidden=16, depth=1, time_dim=8, num_classes=2)).eval()
    save_model(label, d / "label")
    cap = CaptionDiffusionModel(CaptionModelConfig(data_shape=(1, 4, 4), vocab=build_vocab(CAPTIONS), max_length=6,
                                                   embed_dim=16, heads=2, hidden=32, depth=2, time_dim=16)).eval()
    save_caption_model(cap, d / "caption")
    save_classifier(DigitClassifier(ClassifierConfig(data_shape=(1, 4, 4), hidden=16, depth=1)), d / "classifier")
    build_tiny_pipeline(d / "pipe", seed=0)
    pts = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    np.save(d / "cap_points.npy", pts.numpy())
    np.save(d / "pipe_points.npy", torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)).numpy())
    np.save(d / "ref.npy", torch.randn(40, 16, generator=torch.Generator().manual_seed(3)).numpy())
    np.save(d / "pipe_ref.npy", torch.randn(40, 64, generator=torch.Generator().manual_seed(5)).numpy())
    np.save(d / "data.npy", torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).numpy())
    np.save(d / "mean.npy", np.zeros(3))
    np.save(d / "cov.npy", np.diag([1.0, 0.5, 0.0]))
    np.save(d / "label_points.npy", np.zeros((2, 3), dtype=np.float32))
    (d / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return types.SimpleNamespace(dir=d, label=label, caption=cap)


def _same_eps(a, b, x, cond=None):
    with torch.no_grad():
        return torch.allclose(a.eps(x, 0.4, cond), b.eps(x, 0.4, cond), atol=1e-6)


# --- dispatch ------------------------------------------------------------------------------------------
def test_spec_strings_and_dtype(files):
    emp = load(f"empirical:{files.dir / 'data.npy'}")
    assert isinstance(emp, EmpiricalMixtureScore) and emp.points.dtype == torch.float64
    assert load(f"empirical:{files.dir / 'data.npy'}", dtype="float32").points.dtype == torch.float32
    gauss = load(f"gaussian:{files.dir / 'mean.npy'},{files.dir / 'cov.npy'}", dtype=torch.float64)
    assert isinstance(gauss, GaussianScore)
    # The analytic score of N(0, diag(1, .5, 0)) at t: -(x) / (psi^2 var + sigma^2) per coordinate.
    x, t = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64), 0.3
    ab = float(gauss.schedule.alpha_bar(torch.tensor(t, dtype=torch.float64)))
    want = -x / (ab * torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64) + 1 - ab)
    torch.testing.assert_close(gauss.score(x, t), want, rtol=1e-10, atol=1e-10)


def test_memgeo_checkpoints_by_metadata(files):
    label = load(files.dir / "label")
    assert isinstance(label, MLPEps) and _same_eps(label, files.label, torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))
    assert isinstance(load(str(files.dir / "label" / "model.safetensors")), MLPEps)
    cap = load(files.dir / "caption")
    assert isinstance(cap, CaptionDiffusionModel) and not any(p.requires_grad for p in cap.parameters())
    cond = files.caption.encode(PROMPTS)
    assert _same_eps(cap, files.caption, torch.randn(2, 1, 4, 4), cond)
    assert load(files.dir / "caption", dtype="float64").tok_emb.weight.dtype == torch.float64
    for target in (files.dir / "classifier", files.dir / "classifier" / "classifier.safetensors"):
        with pytest.raises(MemgeoError, match="classifier, not a diffusion model"):
            load(target)


def test_pipeline_folders_by_class_name(files, tmp_path, monkeypatch):
    pipe = load(files.dir / "pipe")
    assert isinstance(pipe, DiffusersPromptModel) and pipe.data_shape == (1, 8, 8)
    assert isinstance(load(files.dir / "pipe" / "model_index.json", dtype="float64"), DiffusersPromptModel)
    assert next(load(files.dir / "pipe", dtype=torch.float64).unet.parameters()).dtype == torch.float64

    def variant(name: str, **extra) -> object:
        folder = tmp_path / name
        folder.mkdir()
        for comp in ("unet", "text_encoder", "tokenizer", "scheduler"):
            (folder / comp).symlink_to(files.dir / "pipe" / comp)
        index = json.loads((files.dir / "pipe" / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": name, **extra}))
        return folder

    # Another class name with exactly Stable Diffusion's components is loaded as one.
    assert isinstance(load(variant("StableDiffusionImg2ImgPipeline")), DiffusersPromptModel)
    with pytest.raises(MemgeoError, match="StableDiffusionXLPipeline") as err:
        load(variant("KandinskyPipeline", prior=["diffusers", "PriorTransformer"]))
    assert "not supported" in str(err.value)

    # SDXL and SD3 go to their adapters (stand-ins here), with device, dtype and attention passed on.
    calls = []
    for module, cls in (("memgeo.models.pipeline_sdxl", "DiffusersSDXLModel"),
                        ("memgeo.models.pipeline_flow", "DiffusersFlowModel")):
        fake = types.ModuleType(module)
        fake_cls = type(cls, (), {"from_folder": classmethod(lambda c, folder, **kw: calls.append((c.__name__, folder, kw)) or c)})
        setattr(fake, cls, fake_cls)
        monkeypatch.setitem(sys.modules, module, fake)
    sdxl = variant("StableDiffusionXLPipeline")
    assert load(sdxl, dtype="bfloat16").__name__ == "DiffusersSDXLModel"
    assert load(variant("StableDiffusion3Pipeline"), fused_attention=True).__name__ == "DiffusersFlowModel"
    assert calls[0] == ("DiffusersSDXLModel", sdxl, {"device": "cpu", "fused_attention": False, "dtype": torch.bfloat16})
    assert calls[1][0] == "DiffusersFlowModel" and calls[1][2] == {"device": "cpu", "fused_attention": True}


@pytest.mark.parametrize("kind", ["sdxl", "sd3"])
def test_real_sdxl_and_sd3_folders(kind, files, run_cli, tmp_path):
    """The tiny SDXL / SD3 folders load as their adapters, in the dtype asked, and run the CLI with a prompt."""
    if kind == "sdxl":
        from memgeo.models.pipeline_sdxl import DiffusersSDXLModel as cls
        from memgeo.models.pipeline_sdxl import build_tiny_sdxl_pipeline as build
    else:
        from memgeo.models.pipeline_flow import DiffusersFlowModel as cls
        from memgeo.models.pipeline_flow import build_tiny_flow_pipeline as build
    folder = build(tmp_path / kind)
    model = load(folder)
    assert type(model) is cls and model.data_shape == (1, 8, 8)
    assert {p.dtype for p in load(folder, dtype="float64").parameters()} == {torch.float64}
    pts = files.dir / "pipe_points.npy"
    want, _ = _reference(model, torch.as_tensor(np.load(pts)), [PROMPTS[0]] * 2, 0.3)
    code, _, err = run_cli("sharpness", "--model", folder, "--points", pts, "--t", "0.3", "--prompt", PROMPTS[0],
                           "--out", tmp_path / "s")
    assert code == 0, err
    got = json.loads((tmp_path / "s" / "sharpness.json").read_text())["points"]
    torch.testing.assert_close(torch.tensor([p["eigenvalues_sigma2"] for p in got], dtype=torch.float64), want,
                               rtol=1e-3, atol=1e-4)


def test_pipeline_adapter_rules():
    sd = {"unet": ["diffusers", "U"], "text_encoder": ["transformers", "T"], "tokenizer": ["transformers", "K"],
          "scheduler": ["diffusers", "S"], "vae": [None, None], "safety_checker": ["x", "y"]}
    assert pipeline_adapter({"_class_name": "MyPipeline", **sd}) == ("memgeo.models.pipeline", "DiffusersPromptModel")
    with pytest.raises(MemgeoError, match="not supported"):
        pipeline_adapter({"_class_name": "MyPipeline", **sd, "text_encoder_2": ["transformers", "T"]})
    with pytest.raises(MemgeoError, match="not supported"):
        pipeline_adapter({"_class_name": "MyPipeline", "unet": ["diffusers", "U"], "scheduler": ["diffusers", "S"]})
    assert pipeline_adapter({"_class_name": "StableDiffusion3Pipeline"})[1] == "DiffusersFlowModel"


def test_errors_and_deprecated_names(files, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad_index").mkdir()
    (tmp_path / "bad_index" / "model_index.json").write_text("{not json")
    cases = {str(tmp_path / "empty"): "neither a memgeo checkpoint nor a diffusers pipeline",
             str(tmp_path / "nowhere"): "does not exist",
             "hologram:x.npy": "unknown model SPEC kind",
             str(tmp_path / "bad_index"): "not readable JSON",
             str(files.dir / "cap_points.npy"): "neither a checkpoint folder"}
    for spec, msg in cases.items():
        with pytest.raises(MemgeoError, match=msg):
            load(spec)
    for bad in ("float8", torch.int64, "half precision"):
        with pytest.raises(MemgeoError, match="dtype"):
            load(files.dir / "label", dtype=bad)
    assert resolve_dtype("torch.float16") is torch.float16 and resolve_dtype(None) is None
    assert len(MODEL_SPECS) == 4 and any("pipeline" in k for k in MODEL_SPECS)
    with pytest.warns(DeprecationWarning):
        assert isinstance(load_model_spec(str(files.dir / "label")), MLPEps)
    with pytest.warns(DeprecationWarning):
        assert isinstance(load_prompt_model(files.dir / "caption"), CaptionDiffusionModel)
    with pytest.warns(DeprecationWarning), pytest.raises(MemgeoError, match="not a prompt-conditioned model"):
        load_prompt_model(files.dir / "label")
    from memgeo.models.prompt import load_prompt_model as old_path  # the old import path still works

    assert old_path is load_prompt_model


# --- the CLI on prompt models ---------------------------------------------------------------------------
def _reference(model, points: torch.Tensor, prompts: list[str], t: float):
    """Per point, its own prompt encoded alone: (Hessian spectra * sigma^2 (B, D), FLIPD (B,)) at t."""
    tt = torch.tensor(t, dtype=torch.float64)
    psi, sigma = float(model.schedule.sqrt_alpha_bar(tt)), float(model.schedule.sigma(tt))
    spectra, flipd = [], []
    for x, prompt in zip(points, prompts):
        with torch.no_grad():
            cond = model.encode([prompt])
        y = (psi * x).reshape(1, -1)

        def score(z, cond=cond):
            return model.score(z.reshape(1, *model.data_shape), t, cond).reshape(-1)

        jac = torch.autograd.functional.jacobian(score, y[0]).double()
        spectra.append(torch.linalg.eigvalsh(0.5 * (jac + jac.T)) * sigma**2)
        s = score(y[0]).detach().double()
        flipd.append(y.shape[1] + sigma**2 * (torch.trace(jac) + (s * s).sum()))
    return torch.stack(spectra), torch.stack(flipd)


@pytest.mark.parametrize("kind", ["caption", "pipe"])
def test_sharpness_lid_audit_on_prompt_models(kind, files, run_cli, tmp_path):
    model = load(files.dir / kind)
    pts_file = files.dir / f"{'cap' if kind == 'caption' else 'pipe'}_points.npy"
    pts = torch.as_tensor(np.load(pts_file))
    prompt_args = ["--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]
    want_spec, want_lid = _reference(model, pts, PROMPTS, 0.1)
    _, lid_one = _reference(model, pts, [PROMPTS[0]] * 2, 0.1)
    assert not torch.allclose(want_lid, lid_one, atol=1e-3)  # the prompt matters, so pairing is tested

    code, _, err = run_cli("sharpness", "--model", files.dir / kind, "--points", pts_file, "--t", "0.1",
                           *prompt_args, "--out", tmp_path / "s")
    assert code == 0, err
    got = json.loads((tmp_path / "s" / "sharpness.json").read_text())["points"]
    torch.testing.assert_close(torch.tensor([p["eigenvalues_sigma2"] for p in got], dtype=torch.float64), want_spec,
                               rtol=1e-3, atol=1e-4)
    assert json.loads((tmp_path / "s" / "config.json").read_text())["prompts"] == PROMPTS

    code, _, err = run_cli("lid", "--estimator", "flipd", "--model", files.dir / kind, "--points", pts_file,
                           "--t0", "0.1", "--trace", "exact", "--prompt-file", files.dir / "prompts.txt",
                           "--out", tmp_path / "l")
    assert code == 0, err
    torch.testing.assert_close(torch.tensor(json.loads((tmp_path / "l" / "lid.json").read_text())["lid"],
                                            dtype=torch.float64), want_lid, rtol=1e-4, atol=1e-3)

    # One prompt for every point.
    code, _, err = run_cli("audit", "--model", files.dir / kind, "--points", pts_file, "--reference",
                           files.dir / ("ref.npy" if kind == "caption" else "pipe_ref.npy"), "--t0", "0.1",
                           "--sharpness-t", "0.1", "--prompt", PROMPTS[0], "--lid-data", "mle", "--out", tmp_path / "a")
    assert code == 0, err
    rows = json.loads((tmp_path / "a" / "audit.json").read_text())["samples"]
    assert [r["prompt"] for r in rows] == [PROMPTS[0]] * 2
    torch.testing.assert_close(torch.tensor([r["lid_model"] for r in rows], dtype=torch.float64), lid_one,
                               rtol=1e-4, atol=1e-3)


def test_caption_checkpoint_lid_and_sample_pair_prompts_by_row(files, run_cli, tmp_path):
    """Matrix-free paths (no vmap): FLIPD with a full-rank Hutch++ sketch (k = D = 16, exact trace) and sampling."""
    model, pts_file = load(files.dir / "caption"), files.dir / "cap_points.npy"
    _, want_lid = _reference(model, torch.as_tensor(np.load(pts_file)), PROMPTS, 0.1)
    _, lid_one = _reference(model, torch.as_tensor(np.load(pts_file)), [PROMPTS[0]] * 2, 0.1)
    assert not torch.allclose(want_lid, lid_one, atol=1e-3)  # the prompt matters, so pairing is tested
    code, _, err = run_cli("lid", "--model", files.dir / "caption", "--points", pts_file, "--t0", "0.1",
                           "--trace", "hutch++", "--n-probes", "48", "--prompt-file", files.dir / "prompts.txt",
                           "--out", tmp_path / "l")
    assert code == 0, err
    torch.testing.assert_close(torch.tensor(json.loads((tmp_path / "l" / "lid.json").read_text())["lid"],
                                            dtype=torch.float64), want_lid, rtol=1e-4, atol=1e-3)

    from memgeo.models import get_sampler

    code, _, err = run_cli("sample", "--model", files.dir / "caption", "--n", "2", "--steps", "3", "--guidance", "2",
                           "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seed", "5", "--out", tmp_path / "s")
    assert code == 0, err
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn((2, 1, 4, 4), generator=gen)
    with torch.no_grad():  # each prompt encoded on its own
        cond = torch.cat([model.encode([PROMPTS[0]]), model.encode([PROMPTS[1]])])
        want = get_sampler("ddim")(model, noise, steps=3, cond=cond, guidance=2.0, clip=(-1.0, 1.0), generator=gen).x0
    np.testing.assert_allclose(np.load(tmp_path / "s" / "samples.npy"), want.numpy(), atol=1e-5)
    rows = (tmp_path / "s" / "samples.csv").read_text().splitlines()
    assert PROMPTS[0] in rows[1] and PROMPTS[1] in rows[2]


def test_sample_on_a_latent_pipeline(run_cli, tmp_path):
    from memgeo.models import get_sampler

    folder = build_tiny_pipeline(tmp_path / "latent", seed=1, latent=True)
    prompts = ["a photo of a cat", "the red dog on a mat"]
    code, _, err = run_cli("sample", "--model", folder, "--n", "2", "--steps", "2", "--prompt", prompts[0],
                           "--prompt", prompts[1], "--seed", "3", "--out", tmp_path / "o")
    assert code == 0, err
    latents, images = np.load(tmp_path / "o" / "samples.npy"), np.load(tmp_path / "o" / "images.npy")
    assert latents.shape == (2, 4, 8, 8) and images.shape == (2, 1, 16, 16)
    model = load(folder)
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn((2, 4, 8, 8), generator=gen)
    with torch.no_grad():
        cond = torch.cat([model.encode([p]) for p in prompts])
        want = get_sampler("ddim")(model, noise, steps=2, cond=cond, generator=gen).x0
        swapped = get_sampler("ddim")(model, noise, steps=2, cond=cond.flip(0)).x0
        decoded = model.decode(torch.as_tensor(latents)).clamp(-1, 1)
    assert not torch.allclose(want, swapped, atol=1e-3)  # the prompt matters, so the pairing is tested
    np.testing.assert_allclose(latents, want.numpy(), atol=1e-4)
    np.testing.assert_allclose(images, decoded.numpy(), atol=1e-4)


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_cli_errors_are_one_line(files, run_cli, tmp_path):
    cap, pts = files.dir / "caption", files.dir / "cap_points.npy"
    cases = [
        (("sharpness", "--model", files.dir / "label", "--points", files.dir / "label_points.npy", "--t", "0.1",
          "--prompt", "a"),
         ("not conditioned on prompts",)),
        (("sharpness", "--model", cap, "--points", pts, "--t", "0.1", "--cond", "1"), ("class labels",)),
        (("sharpness", "--model", cap, "--points", pts, "--t", "0.1", "--prompt", "a", "--prompt", "b", "--prompt", "c"),
         ("3 prompts for 2 rows",)),
        (("lid", "--model", cap, "--points", pts, "--prompt", "a", "--prompt-file", files.dir / "prompts.txt"),
         ("both --prompt and --prompt-file",)),
        (("lid", "--estimator", "mle", "--data", files.dir / "ref.npy", "--points", pts, "--prompt", "a"),
         ("model-free",)),
        (("audit", "--model", files.dir / "classifier", "--points", pts, "--reference", files.dir / "ref.npy"),
         ("classifier",)),
        (("sample", "--model", cap, "--n", "3", "--prompt-file", files.dir / "prompts.txt"), ("2 prompts for 3 rows",)),
        (("sample", "--model", cap, "--prompt-file", tmp_path / "none.txt"), ("does not exist",)),
    ]
    for i, (args, needles) in enumerate(cases):
        code, _, err = run_cli(*args, "--out", tmp_path / f"o{i}")
        _one_line_error(code, err, *needles)
        assert not (tmp_path / f"o{i}").exists()


def test_incomplete_pipeline_folder(files, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(files.dir / "pipe", broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(MemgeoError, match="lacks text_encoder"):
        load(broken)
