"""An SDXL pipeline folder as a prompt model, checked against diffusers' own StableDiffusionXLPipeline.

Tiny random-weight folders (no network); the reference for every quantity is the pipeline's own
code path (``encode_prompt``, ``_get_add_time_ids``, the UNet with ``added_cond_kwargs``, ``__call__``).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from memgeo.errors import MemgeoError
from memgeo.models.pipeline import build_tiny_pipeline
from memgeo.models.pipeline_sdxl import DiffusersSDXLModel, build_tiny_sdxl_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["a photo of a cat", "the red dog on a mat"]
T = 1000


def _pipeline(folder, latent: bool):
    from diffusers import StableDiffusionXLPipeline

    extra = {} if latent else {"vae": None}  # SDXL's vae is not an optional component: pass None for pixel space
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _time_ids(pipe, batch: int) -> torch.Tensor:
    size = pipe.default_sample_size * pipe.vae_scale_factor
    ids = pipe._get_add_time_ids((size, size), (0, 0), (size, size), dtype=torch.float32,
                                 text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    return ids.repeat(batch, 1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("sdxl") / "pixel", seed=0)


@pytest.fixture(scope="module")
def model(folder):
    return DiffusersSDXLModel.from_folder(folder)


@pytest.fixture(scope="module")
def pipe(folder):
    return _pipeline(folder, latent=False)


def test_folders_load_in_diffusers_pipeline(folder, pipe, model, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    assert isinstance(pipe, StableDiffusionXLPipeline) and pipe.config.force_zeros_for_empty_prompt
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"
    latent = build_tiny_sdxl_pipeline(tmp_path / "latent", seed=1, latent=True)
    lpipe = StableDiffusionXLPipeline.from_pretrained(latent, local_files_only=True)  # plain load, with its VAE
    assert lpipe.vae is not None and lpipe.vae_scale_factor == 2
    lmodel = DiffusersSDXLModel.from_folder(latent)
    assert lmodel.data_shape == (4, 8, 8) and lmodel.add_time_ids.tolist() == [[16, 16, 0, 0, 16, 16]]
    assert model.data_shape == (1, 8, 8) and model.add_time_ids.tolist() == [[64, 64, 0, 0, 64, 64]]
    assert not any(p.requires_grad for p in model.parameters())
    # The two tokenizers differ only in padding; the rewrite of the ids is tokenizer_2's own output.
    batch = PROMPTS + ["", "a photo of the red dog on the blue mat three seven cat"]  # the last one is truncated
    ids_2 = pipe.tokenizer_2(batch, padding="max_length", max_length=16, truncation=True,
                             return_tensors="pt").input_ids
    ids = model.tokenize(batch).ids
    assert not torch.equal(ids, ids_2) and torch.equal(model.ids_for_tokenizer_2(ids), ids_2)


def test_encode_and_eps_match_the_pipeline(model, pipe):
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    pe, npe, pooled, npooled = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True)
    cond = model.encode(PROMPTS)
    assert cond.shape == (2, 17, 80)
    tokens, pooled_m = model.unpack(cond)
    assert torch.allclose(tokens, pe, atol=1e-5) and torch.allclose(pooled_m, pooled, atol=1e-5)
    assert torch.all(cond[:, -1, 16:] == 0)  # the pooled row's padding
    assert torch.all(model.null_cond(cond) == 0) and torch.all(npe == 0) and torch.all(npooled == 0)
    added = {"time_ids": _time_ids(pipe, 2)}
    for k in (0, 420, 999):
        tk = torch.tensor([k, k])
        with torch.no_grad():
            ref_c = pipe.unet(x, tk, encoder_hidden_states=pe,
                              added_cond_kwargs={**added, "text_embeds": pooled}).sample
            ref_u = pipe.unet(x, tk, encoder_hidden_states=npe,
                              added_cond_kwargs={**added, "text_embeds": npooled}).sample
            e_c, e_u = model.eps(x, (k + 1) / T, cond), model.eps(x, (k + 1) / T, None)
        assert torch.allclose(e_c, ref_c, atol=1e-5) and torch.allclose(e_u, ref_u, atol=1e-5)
        assert not torch.allclose(e_c, e_u, atol=1e-3)


def test_null_prompt_without_force_zeros_and_v_prediction(tmp_path):
    folder = build_tiny_sdxl_pipeline(tmp_path / "v", seed=2, prediction_type="v_prediction",
                                      force_zeros_for_empty_prompt=False)
    model, pipe = DiffusersSDXLModel.from_folder(folder), _pipeline(folder, latent=False)
    assert model.prediction_type == "v_prediction" and not model.force_zeros_for_empty_prompt
    pe, npe, pooled, npooled = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True)
    null = model.null_cond(model.encode(PROMPTS))
    n_tokens, n_pooled = model.unpack(null)
    assert torch.abs(npe).max() > 0.1  # the encoding of "", not zeros
    assert torch.allclose(n_tokens, npe, atol=1e-5) and torch.allclose(n_pooled, npooled, atol=1e-5)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ab = pipe.scheduler.alphas_cumprod
    k = 600
    with torch.no_grad():
        for emb, pool, cond in ((pe, pooled, model.encode(PROMPTS)), (npe, npooled, None)):
            v = pipe.unet(x, torch.tensor([k, k]), encoder_hidden_states=emb,
                          added_cond_kwargs={"text_embeds": pool, "time_ids": _time_ids(pipe, 2)}).sample
            ref = ab[k].sqrt() * v + (1 - ab[k]).sqrt() * x  # eps from v = psi eps - sigma x0
            assert torch.allclose(model.native_output(x, (k + 1) / T, cond), v, atol=1e-5)
            assert torch.allclose(model.eps(x, (k + 1) / T, cond), ref, atol=1e-5)


def test_score_is_minus_eps_over_sigma(model, pipe):
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    cond = model.encode(PROMPTS)
    k = 250
    sigma = float((1 - pipe.scheduler.alphas_cumprod[k]).sqrt())
    with torch.no_grad():
        assert torch.allclose(model.score(x, (k + 1) / T, cond), -model.eps(x, (k + 1) / T, cond) / sigma,
                              rtol=1e-5, atol=1e-6)
    with pytest.raises(MemgeoError, match="prompt condition has shape"):
        model.eps(x, 0.5, cond[:, :-1])  # the unpacked tokens alone are not a condition


def test_forward_mode_jvp_matches_double_vjp(model):
    g = torch.Generator().manual_seed(4)
    x, v = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    tb = model.tokenize(PROMPTS)
    emb = model.token_embeddings(tb.ids)
    e_dir = torch.randn(emb.shape, generator=g)

    def f(x_, emb_):  # text path and denoiser together
        return model.eps(x_, 0.5, model.encode_embeddings(emb_, tb.mask))

    out, jv = torch.func.jvp(f, (x, emb), (v, e_dir))
    # J v by double VJP: u -> <J^T u, v> is linear in u, its gradient is J v.
    xr, er = x.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    y = f(xr, er)
    u = torch.zeros_like(y, requires_grad=True)
    gx, ge = torch.autograd.grad(y, (xr, er), u, create_graph=True)
    (jv_rev,) = torch.autograd.grad((gx * v).sum() + (ge * e_dir).sum(), u)
    assert torch.allclose(out, y.detach(), atol=1e-6)
    assert torch.allclose(jv, jv_rev, rtol=1e-4, atol=1e-5)
    assert jv.abs().max() > 1e-3


def test_broken_folders_are_rejected(folder, tmp_path):
    def copy(name):
        dst = tmp_path / name
        shutil.copytree(folder, dst)
        return dst

    no_te2 = copy("no_te2")
    shutil.rmtree(no_te2 / "text_encoder_2")
    with pytest.raises(MemgeoError, match="lacks text_encoder_2"):
        DiffusersSDXLModel.from_folder(no_te2)
    garbage = copy("garbage_unet")
    (garbage / "unet" / "config.json").write_text("{ this is not json")
    with pytest.raises(MemgeoError, match="cannot load unet/"):
        DiffusersSDXLModel.from_folder(garbage)
    wrong = copy("wrong_unet")
    cfg = json.loads((wrong / "unet" / "config.json").read_text())
    (wrong / "unet" / "config.json").write_text(json.dumps({**cfg, "block_out_channels": [8, 16]}))
    with pytest.raises(MemgeoError, match="cannot load unet/"):  # weights do not fit the config
        DiffusersSDXLModel.from_folder(wrong)
    unprojected = copy("unprojected")  # a CLIPTextModel where the projection model belongs
    shutil.rmtree(unprojected / "text_encoder_2")
    shutil.copytree(unprojected / "text_encoder", unprojected / "text_encoder_2")
    with pytest.raises(MemgeoError, match="text_encoder_2"):
        DiffusersSDXLModel.from_folder(unprojected)
    junk = copy("junk_weights")
    (junk / "text_encoder_2" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MemgeoError, match="cannot load text_encoder_2/"):
        DiffusersSDXLModel.from_folder(junk)
    no_tok = copy("no_tokenizer_2")
    for f in (no_tok / "tokenizer_2").iterdir():
        f.unlink()
    with pytest.raises(MemgeoError, match="tokenizer_2/ .* holds no tokenizer files"):
        DiffusersSDXLModel.from_folder(no_tok)
    sd = copy("sd_unet")  # a Stable Diffusion 1.x UNet has no text_time embedding
    shutil.rmtree(sd / "unet")
    shutil.copytree(build_tiny_pipeline(tmp_path / "sd") / "unet", sd / "unet")
    with pytest.raises(MemgeoError, match="not an SDXL pipeline"):
        DiffusersSDXLModel.from_folder(sd)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_sampler_reproduces_pipeline_latents(folder, scheduler, dtype):
    """memgeo's sampler core vs ``StableDiffusionXLPipeline(..., output_type="latent")``: same x_T, 10 steps,
    guidance 5 (zero null prompt). DDIM with ``steps_offset=1`` (from the folder's config), or the folder's
    own Euler scheduler. float64: the same mathematics (1e-10); float32: rounding only (1e-4; guidance 5
    and the x0 extrapolation amplify the ~1e-6 differences between two UNet calls).
    """
    from diffusers import DDIMScheduler

    from memgeo.models.pipeline import scheduler_grid
    from memgeo.models.sampling import model_grid, sample

    pipe = _pipeline(folder, latent=False).to(dtype=dtype)
    model = DiffusersSDXLModel.from_folder(folder, dtype=dtype)
    if scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        assert pipe.scheduler.config.steps_offset == 1 and not pipe.scheduler.config.clip_sample
        grid = scheduler_grid(pipe.scheduler, model.schedule, 10)
        assert grid.timesteps.tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    else:
        assert type(model.scheduler).__name__ == "EulerDiscreteScheduler"
        grid = model_grid(model, 10)
    x_T = torch.randn((2,) + model.data_shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    with torch.no_grad():
        ours = sample(model, x_T.clone(), grid=grid, cond=model.encode(PROMPTS), guidance=5.0).x0
        ref = pipe(PROMPTS, num_inference_steps=10, guidance_scale=5.0, latents=x_T.clone(),
                   output_type="latent").images
        assert ref.dtype == dtype and (ref - x_T).abs().max() > 0.1
        # Both dtypes: agreement to 1e-5 (atol and rtol; the latents reach |x| ~ 30 here).
        tol = 1e-5 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
        if scheduler == "ddim" and dtype == torch.float64:
            # diffusers' DDIM takes its step coefficients from float32 alphas_cumprod (~1e-6 here); in
            # float64 the two samplers are the same mathematics.
            pipe.scheduler.alphas_cumprod = pipe.scheduler.alphas_cumprod.double()
            pipe.scheduler.final_alpha_cumprod = pipe.scheduler.final_alpha_cumprod.double()
            ref = pipe(PROMPTS, num_inference_steps=10, guidance_scale=5.0, latents=x_T.clone(),
                       output_type="latent").images
            torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
