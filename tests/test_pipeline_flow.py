"""An SD3-style flow-matching pipeline as a prompt model, against diffusers' own pipeline (tiny, no network)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from memgeo.errors import MemgeoError
from memgeo.models.pipeline_flow import (DiffusersFlowModel, FlowMatchSchedule, build_tiny_flow_pipeline,
                                         is_flow_pipeline)
from memgeo.models.sampling import sample

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["a photo of a cat", "the red dog on a mat"]
NO_T5 = dict(text_encoder_3=None, tokenizer_3=None, vae=None)  # components absent from the pixel folder


@pytest.fixture(scope="module")
def pixel_folder(tmp_path_factory):
    return build_tiny_flow_pipeline(tmp_path_factory.mktemp("flow") / "pixel", seed=0)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    return build_tiny_flow_pipeline(tmp_path_factory.mktemp("flow") / "t5", seed=1, latent=True, with_t5=True)


@pytest.fixture(scope="module")
def pixel(pixel_folder):
    return DiffusersFlowModel.from_folder(pixel_folder)


@pytest.fixture(scope="module")
def pixel_pipe(pixel_folder):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(pixel_folder, **NO_T5)


def _pipe(folder, with_t5):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(folder, **({} if with_t5 else NO_T5))


def test_folder_loads_in_diffusers_and_memgeo(pixel_folder, t5_folder, pixel, pixel_pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    assert json.loads((pixel_folder / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    assert isinstance(pixel_pipe.transformer, SD3Transformer2DModel)
    assert isinstance(pixel_pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pixel_pipe.text_encoder_3 is None and pixel_pipe.vae is None
    t5_pipe = _pipe(t5_folder, True)
    assert t5_pipe.text_encoder_3 is not None and t5_pipe.vae is not None
    assert is_flow_pipeline(pixel_folder) and is_flow_pipeline(t5_folder)
    assert pixel.prediction_type == "flow" and pixel.data_shape == (1, 8, 8)
    assert not any(p.requires_grad for p in pixel.parameters())
    # cond = CLIP (16) + T5 zeros (256) + the pooled row, width joint_attention_dim = 96.
    assert pixel.null_embedding().shape == (1, 16 + 256 + 1, 96)


@pytest.mark.parametrize("with_t5", [False, True])
def test_encode_and_velocity_match_the_pipeline(with_t5, pixel_folder, t5_folder, pixel, pixel_pipe):
    folder = t5_folder if with_t5 else pixel_folder
    model = DiffusersFlowModel.from_folder(folder) if with_t5 else pixel
    pipe = _pipe(folder, True) if with_t5 else pixel_pipe
    with torch.no_grad():
        pe, ne, pp, npool = pipe.encode_prompt(PROMPTS, None, None, device="cpu", do_classifier_free_guidance=True)
        cond = model.encode(PROMPTS)
        null = model.null_cond(cond)
        for packed, (emb, pooled) in ((cond, (pe, pp)), (null, (ne, npool))):
            got_emb, got_pooled = model.unpack(packed)
            assert torch.allclose(got_emb, emb, atol=1e-5) and torch.allclose(got_pooled, pooled, atol=1e-5)
            assert torch.all(packed[:, -1, pooled.shape[-1]:] == 0)  # the pooled row is zero-padded
        assert not torch.allclose(cond, null)
        g = torch.Generator().manual_seed(0)
        x_fm = torch.randn(2, *model.data_shape, generator=g)
        for s in (1.0, 0.6, 0.05):
            x_vp = x_fm / FlowMatchSchedule.norm(torch.tensor(s))
            for packed, (emb, pooled) in ((cond, (pe, pp)), (None, (ne, npool))):
                ref = pipe.transformer(hidden_states=x_fm, timestep=torch.full((2,), s * 1000.0),
                                       encoder_hidden_states=emb, pooled_projections=pooled).sample
                assert torch.allclose(model.native_output(x_vp, s, packed), ref, atol=1e-5)
    if with_t5:
        tb = model.tokenize(PROMPTS[:1])
        assert tb.ids.shape == (1, 16 + 256)
        assert tb.tokens[0][-6:] == ["\u2581a", "\u2581photo", "\u2581of", "\u2581a", "\u2581cat", "</s>"]


def test_schedule_closed_forms():
    sch = FlowMatchSchedule()
    s = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    n = torch.sqrt((1 - s) ** 2 + s ** 2)
    assert torch.allclose(sch.sqrt_alpha_bar(s), (1 - s) / n, atol=1e-15)
    assert torch.allclose(sch.sigma(s), s / n, atol=1e-15)
    assert torch.allclose(sch.alpha_bar(s) + sch.sigma(s) ** 2, torch.ones_like(s), atol=1e-12)
    assert float(sch.sigma(1.0)) == 1.0 and float(sch.sqrt_alpha_bar(1.0)) == 0.0
    assert float(sch.log_alpha_bar(torch.tensor(1.0))) == -math.inf
    assert torch.allclose(sch.timestep(s), s * 1000)
    for t in (1e-4, 0.3, 0.5, 0.97, 1.0):
        assert abs(sch.t_from_sigma(float(sch.sigma(torch.tensor(t, dtype=torch.float64)))) - t) < 1e-12
    t = torch.tensor([0.2, 0.7, 0.999], dtype=torch.float64, requires_grad=True)
    (ds,) = torch.autograd.grad(sch.sigma(t).sum(), t)  # d/dt [t / n(t)] = (1 - t) / n^3
    assert torch.allclose(ds, ((1 - t) / ((1 - t) ** 2 + t ** 2) ** 1.5).detach(), atol=1e-12)
    with pytest.raises(MemgeoError, match="outside"):
        sch.t_from_sigma(0.0)


def test_eps_x0_score_identities(pixel):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, generator=g)
    cond = pixel.encode(PROMPTS)
    with torch.no_grad():
        for s in (0.8, 0.3):
            u = pixel.native_output(x, s, cond)
            eps, x0 = pixel.denoise(x, s, cond)
            n = math.sqrt((1 - s) ** 2 + s ** 2)
            x_fm = n * x
            assert torch.allclose(x_fm, (1 - s) * x0 + s * eps, atol=1e-5)  # the flow interpolation
            assert torch.allclose(eps - x0, u, atol=1e-5)  # the velocity
            assert torch.allclose(x, ((1 - s) / n) * x0 + (s / n) * eps, atol=1e-5)  # VP: psi x0 + sigma eps
            assert torch.allclose(pixel.eps(x, s, cond), eps, atol=1e-6)
            assert torch.allclose(pixel.score(x, s, cond), -eps / (s / n), atol=1e-4)
        # s = 1: eps = x whatever the prompt; x0 (from u) is finite and depends on it.
        e_c, x0_c = pixel.denoise(x, 1.0, cond)
        e_u, x0_u = pixel.denoise(x, 1.0, None)
        assert torch.equal(e_c, x) and torch.equal(e_u, x)
        assert torch.isfinite(x0_c).all() and not torch.allclose(x0_c, x0_u)


def test_vp_ddim_step_is_the_euler_flow_step(pixel, pixel_folder):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(pixel_folder / "scheduler")
    sched.set_timesteps(8)
    sch = pixel.schedule
    cond = pixel.encode(PROMPTS)
    x_fm = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for k in (0, 3, 7):  # the first step (s = 1, psi = 0), a middle one and the last (to s' = 0)
            sched._step_index = None
            t, s = float(sched.sigmas[k]), float(sched.sigmas[k + 1])
            x_vp = x_fm / sch.norm(torch.tensor(t))
            u = pixel.native_output(x_vp, t, cond)
            ref = sched.step(u, sched.timesteps[k], x_fm).prev_sample
            eps, x0 = pixel.denoise(x_vp, t, cond)
            st = torch.tensor(s, dtype=torch.float64)
            x_next = float(sch.sqrt_alpha_bar(st)) * x0 + float(sch.sigma(st)) * eps
            assert torch.allclose(float(sch.norm(st)) * x_next, ref, atol=1e-5)


def _vp_loop(model, x, cond, steps, guidance):
    """Deterministic DDIM in VP coordinates over the model's own grid, guidance on (eps, x0)."""
    grid = model.sampling_grid(steps)
    sch = model.schedule
    null = model.null_cond(cond)
    for k in range(steps):
        t, s = float(grid.ts[k]), grid.ts[k + 1]
        both_eps, both_x0 = model.denoise(torch.cat([x, x]), t, torch.cat([cond, null]))
        (e_c, e_u), (x0_c, x0_u) = both_eps.chunk(2), both_x0.chunk(2)
        eps, x0 = e_u + guidance * (e_c - e_u), x0_u + guidance * (x0_c - x0_u)
        x = float(sch.sqrt_alpha_bar(s)) * x0 + float(sch.sigma(s)) * eps
    return x


@pytest.mark.parametrize("dynamic", [False, True])
def test_guided_vp_loop_reproduces_the_pipeline(dynamic, pixel, pixel_pipe, pixel_folder):
    from diffusers import FlowMatchEulerDiscreteScheduler

    model, pipe = pixel, pixel_pipe
    if dynamic:  # resolution-dependent shifting: the grid must follow the pipeline's mu
        model = DiffusersFlowModel.from_folder(pixel_folder)
        model.scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler.config,
                                                                      use_dynamic_shifting=True)
        pipe = _pipe(pixel_folder, False)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler.config)
    steps = 8 if not dynamic else 3
    x1 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))  # s = 1: x_vp = x_fm
    with torch.no_grad():
        ref = pipe(prompt=PROMPTS, num_inference_steps=steps, guidance_scale=4.0, latents=x1.clone(),
                   output_type="latent").images
        grid = model.sampling_grid(steps)
        assert torch.allclose(grid.ts, pipe.scheduler.sigmas.double()) and float(grid.ts[-1]) == 0.0
        assert torch.equal(grid.timesteps, pipe.scheduler.timesteps.double())
        assert grid.eta == 0.0 and grid.final_denoise is False and float(grid.ts[0]) == 1.0
        if not dynamic:  # SD3's shift = 3 bends the uniform grid
            assert not torch.allclose(grid.ts[:-1], torch.linspace(1.0, 1 / steps, steps, dtype=torch.float64))
        cond = model.encode(PROMPTS)
        out = _vp_loop(model, x1, cond, steps, 4.0)
        core = sample(model, x1, steps=steps, cond=cond, guidance=4.0).x0  # memgeo's sampler core on the same grid
    assert float((out - ref).abs().max()) < 1e-5  # s' = 0 at the end: x_vp = x_fm
    assert float((core - ref).abs().max()) < 1e-5
    assert float((ref - x1).abs().max()) > 0.1


def test_jvp_through_eps_and_token_gradients(pixel_folder):
    model = DiffusersFlowModel.from_folder(pixel_folder, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    w = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    cond = model.encode(PROMPTS)
    f = lambda z: model.eps(z, 0.4, cond)
    _, jv = torch.func.jvp(f, (x,), (v,))
    h = 1e-5
    fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
    assert torch.allclose(jv, fd, rtol=1e-6, atol=1e-7)
    _, vjp = torch.func.vjp(f, x)
    assert torch.allclose((jv * w).sum(), (vjp(w)[0] * v).sum(), rtol=1e-10)
    # Gradients reach both CLIP halves of the token embeddings (B, L, 32 + 48).
    tb = model.tokenize(PROMPTS)
    emb = model.token_embeddings(tb.ids).requires_grad_(True)
    assert emb.shape == (2, 16, 80)
    x0 = model.denoise(x, 1.0, model.encode_embeddings(emb, tb.mask))[1]  # the first step carries the prompt
    (grad,) = torch.autograd.grad((x0 * w).sum(), emb)
    real = tb.mask[0]
    assert grad[0, real, :32].abs().sum() > 0 and grad[0, real, 32:].abs().sum() > 0


def test_latent_folder_decode_encode(t5_folder):
    model = DiffusersFlowModel.from_folder(t5_folder)
    assert model.data_shape == (4, 8, 8)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        images = model.decode(z)
        assert images.shape == (1, 1, 16, 16)
        ref = model.vae.decode(z / 1.5 + 0.1).sample  # SD3's scaling_factor / shift_factor of the tiny VAE
        assert torch.allclose(images, ref, atol=1e-6)
        assert model.encode_images(images).shape == (1, 4, 8, 8)


def test_broken_folders_raise(pixel_folder, tmp_path):
    with pytest.raises(MemgeoError, match="no model_index.json"):
        DiffusersFlowModel.from_folder(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(pixel_folder, broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(MemgeoError, match="lacks transformer"):
        DiffusersFlowModel.from_folder(broken)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(pixel_folder, corrupt)
    (corrupt / "transformer" / "config.json").write_text("{not json")
    with pytest.raises(MemgeoError, match="cannot load the flow pipeline"):
        DiffusersFlowModel.from_folder(corrupt)
    assert not is_flow_pipeline(tmp_path)
