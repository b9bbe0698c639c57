"""A diffusers text-to-image pipeline folder as a prompt model (tiny random pipeline, no network)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from pydantic import ValidationError

from memgeo.errors import MemgeoError
from memgeo.geometry.jacobian import ScoreJacobianOperator
from memgeo.models.base import guided_eps
from memgeo.models.pipeline import DiffusersPromptModel, build_tiny_pipeline
from memgeo.models.loading import load
from memgeo.models.sampling import sample_ddim
from memgeo.models.schedule import DiscreteSchedule, VPSchedule

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["a photo of a cat", "the red dog on a mat"]


@pytest.fixture(scope="module")
def pixel_folder(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "pixel", seed=0)


@pytest.fixture(scope="module")
def pixel(pixel_folder):
    return load(pixel_folder)


@pytest.fixture(scope="module")
def latent(tmp_path_factory):
    return load(build_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "latent", seed=1, latent=True))


def test_folder_layout_and_dispatch(pixel_folder, pixel):
    index = json.loads((pixel_folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == [None, None]
    assert isinstance(pixel, DiffusersPromptModel)
    assert pixel.data_shape == (1, 8, 8) and pixel.vae is None
    assert not any(p.requires_grad for p in pixel.parameters())


def test_tokenize_and_encode_match_clip(pixel):
    tb = pixel.tokenize(PROMPTS + [""])
    assert tb.ids.shape == (3, 16) and tb.mask.shape == (3, 16)
    assert tb.tokens[0] == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", "<|endoftext|>"]
    assert tb.tokens[2] == ["<|startoftext|>", "<|endoftext|>"]
    cond = pixel.encode(PROMPTS + [""])
    assert cond.shape == (3, 16, 32)
    # The split path (token embeddings -> encoder) equals the text encoder called on the ids.
    ref = pixel.text_encoder(tb.ids).last_hidden_state
    assert torch.allclose(cond, ref, atol=1e-5)
    assert torch.allclose(pixel.null_embedding(), cond[2:], atol=1e-6)
    with pytest.raises(MemgeoError, match="one string"):
        pixel.tokenize("a cat")


def test_schedule_matches_scheduler_and_unet_timesteps(pixel, pixel_folder):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_pretrained(pixel_folder / "scheduler")
    T = sched.config.num_train_timesteps
    ts = torch.arange(1, T + 1, dtype=torch.float64) / T
    assert torch.allclose(pixel.schedule.alpha_bar(ts), sched.alphas_cumprod.double(), rtol=1e-6)
    # At t = (k + 1) / T the model calls the UNet at integer timestep k.
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = pixel.encode(PROMPTS)
    for k in (0, 499, 999):
        ref = pixel.unet(x, torch.tensor([k, k]), encoder_hidden_states=cond).sample
        assert torch.allclose(pixel.eps(x, (k + 1) / T, cond), ref, atol=1e-5)


def test_eps_null_guidance_and_sampling(pixel):
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = pixel.encode(PROMPTS)
    e_c, e_u = pixel.eps(x, 0.6, cond), pixel.eps(x, 0.6, None)
    assert torch.allclose(e_u, pixel.eps(x, 0.6, pixel.null_cond(cond)), atol=1e-6)
    assert not torch.allclose(e_c, e_u)
    assert torch.allclose(guided_eps(pixel, x, 0.6, cond, 5.0), e_u + 5.0 * (e_c - e_u), atol=1e-4)
    out = sample_ddim(pixel, x, steps=3, cond=cond, guidance=3.0)
    assert out.x0.shape == x.shape and torch.isfinite(out.x0).all()
    with pytest.raises(MemgeoError, match="prompt condition has shape"):
        pixel.eps(x, 0.6, cond[:, :4])


def test_vjp_jvp_and_finite_differences_agree(pixel, pixel_folder):
    """J^T w by reverse mode (the geometry's fallback) against central differences of <w, score>."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 64, generator=g)
    w, v = torch.randn(2, 64, generator=g), torch.randn(2, 64, generator=g)
    cond = pixel.encode(PROMPTS)
    op = ScoreJacobianOperator(pixel, x, 0.5, cond, mode="vjp")
    jtw = op.rmatvec(w)
    h = 1e-2
    score = lambda z: pixel.score(z.reshape(2, 1, 8, 8), 0.5, cond).reshape(2, 64)
    fd = ((score(x + h * v) - score(x - h * v)) * w).sum(1) / (2 * h)
    assert torch.allclose((jtw * v).sum(1), fd, rtol=2e-2, atol=1e-3)
    jv = op.matvec(v)  # J v through the double-VJP fallback
    assert torch.allclose((jv * w).sum(1), (jtw * v).sum(1), rtol=1e-3, atol=1e-4)
    jv_fwd = ScoreJacobianOperator(pixel, x, 0.5, cond, mode="jvp").matvec(v)  # math attention kernel: JVP works
    assert torch.allclose(jv_fwd, jv, rtol=1e-3, atol=1e-4)
    fused = DiffusersPromptModel.from_folder(pixel_folder, fused_attention=True)
    assert torch.allclose(ScoreJacobianOperator(fused, x, 0.5, cond, mode="vjp").rmatvec(w), jtw, atol=1e-4)
    with pytest.raises((NotImplementedError, RuntimeError)):  # CPU fused kernels: no forward-mode AD
        ScoreJacobianOperator(fused, x, 0.5, cond, mode="jvp").matvec(v)


def test_prediction_types(pixel):
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    cond = pixel.encode(PROMPTS[:1])
    raw = pixel.eps(x, 0.4, cond)  # epsilon model: the UNet output itself
    t = torch.tensor([0.4])
    psi, sigma = pixel.schedule.sqrt_alpha_bar(t), pixel.schedule.sigma(t)
    try:
        pixel.prediction_type = "v_prediction"
        assert torch.allclose(pixel.eps(x, 0.4, cond), psi * raw + sigma * x, atol=1e-6)
        pixel.prediction_type = "sample"
        assert torch.allclose(pixel.eps(x, 0.4, cond), (x - psi * raw) / sigma, atol=1e-5)
    finally:
        pixel.prediction_type = "epsilon"


def test_latent_pipeline_decode_encode(latent):
    assert latent.data_shape == (4, 8, 8)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    images = latent.decode(z)
    assert images.shape == (2, 1, 16, 16)
    assert latent.encode_images(images).shape == (2, 4, 8, 8)
    assert latent.eps(z, 0.3, latent.encode(PROMPTS)).shape == z.shape


def test_pixel_pipeline_has_no_decode(pixel):
    with pytest.raises(MemgeoError, match="no VAE"):
        pixel.decode(torch.zeros(1, 1, 8, 8))


def test_incomplete_folder_is_rejected(pixel_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(pixel_folder, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(MemgeoError, match="lacks unet"):
        load(broken)


def test_discrete_schedule_matches_vp_and_inverts():
    vp = VPSchedule()
    d = DiscreteSchedule.from_scheduler(vp.to_diffusers("ddpm"))
    t = torch.linspace(0.001, 1.0, 101, dtype=torch.float64)
    assert torch.allclose(d.alpha_bar(t), vp.alpha_bar(t), atol=2e-3)
    assert torch.all(d.sigma(t)[1:] > d.sigma(t)[:-1])
    for s in (0.02, 0.3, 0.9, 0.99):
        assert abs(float(d.sigma(torch.tensor(d.t_from_sigma(s), dtype=torch.float64))) - s) < 1e-9
    with pytest.raises(MemgeoError, match="outside"):
        d.t_from_sigma(1.0)
    with pytest.raises(ValidationError, match="non-increasing"):
        DiscreteSchedule(alphas_cumprod=(0.5, 0.9))
