"""Golden tests: memgeo's one sampler core reproduces diffusers' own pipelines, latents to 1e-5.

On a tiny SD-shaped pipeline folder, ``StableDiffusionPipeline(prompt, latents=x_T,
output_type="latent")`` and ``memgeo.models.sampling.sample`` on the model's grid (the scheduler's
own timesteps) start from the same unit Gaussian latents and must end at the same latents, for the
schedulers as configured in the folder: DDIM with SD 1.4's ``steps_offset=1`` (eps and v), DDPM
(ancestral, same generator) and Euler (eps).
"""

from __future__ import annotations

import pytest
import torch

from memgeo.models.pipeline import DiffusersPromptModel, build_tiny_pipeline
from memgeo.models.sampling import model_grid, sample

SD = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)


def _schedulers():
    from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

    return {
        "ddim": lambda: DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False),
        "ddim_v": lambda: DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False,
                                        prediction_type="v_prediction"),
        "ddim_trailing": lambda: DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=True,
                                               timestep_spacing="trailing"),
        "ddpm": lambda: DDPMScheduler(**SD, clip_sample=False),
        "euler": lambda: EulerDiscreteScheduler(**SD, timestep_spacing="leading"),
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    return {name: build_tiny_pipeline(root / name, seed=3, scheduler=make()) for name, make in _schedulers().items()}


def _pipeline(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None, vae=None,
                                                   feature_extractor=None, image_encoder=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(_schedulers()))
def test_sampler_reproduces_pipeline_latents(folders, name, dtype):
    """float64 to 1e-5 (diffusers keeps alphas_cumprod and sigmas in float32, so its step coefficients carry
    float32 rounding even on float64 latents: measured differences up to 5e-6); float32 to 1e-4 (3e-5 seen)."""
    folder = folders[name]
    pipe = _pipeline(folder).to(dtype=dtype)
    model = DiffusersPromptModel.from_folder(folder).to(dtype)
    prompts = ["a photo of a cat", "the red dog on the mat"]
    steps, guidance = 10, 7.5
    x_T = torch.randn((2,) + model.data_shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    h = model.data_shape[1] * pipe.vae_scale_factor  # the pipeline divides height by this
    with torch.no_grad():
        ref = pipe(prompts, height=h, width=h, num_inference_steps=steps, guidance_scale=guidance,
                   latents=x_T.clone(), output_type="latent", generator=torch.Generator().manual_seed(7)).images
        grid = model_grid(model, steps)
        ours = sample(model, x_T.clone(), grid=grid, cond=model.encode(prompts), guidance=guidance,
                      generator=torch.Generator().manual_seed(7)).x0
    # Euler's latents live in VE coordinates (x / psi); at its final sigma 0 both are the clean sample.
    assert grid.final_denoise is False and grid.steps == steps
    tol = 1e-5 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


def test_grid_is_the_schedulers_own(folders):
    model = DiffusersPromptModel.from_folder(folders["ddim"])
    grid = model_grid(model, 50)
    assert grid.timesteps[0] == 981 and grid.timesteps[-1] == 1
    assert abs(float(grid.ts[0]) - 0.982) < 1e-12  # timestep 981 is memgeo time (981 + 1) / 1000
    sch = model.schedule
    ab = float(sch.alpha_bar(grid.ts[0]))
    assert abs(ab - float(model.scheduler.alphas_cumprod[981])) < 1e-7
    # an explicit first time gives memgeo's uniform continuous grid instead
    uni = model_grid(model, 50, t_max=1.0)
    assert uni.final_denoise and float(uni.ts[0]) == 1.0
