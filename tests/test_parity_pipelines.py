"""The engine's priors predict the same noise as diffusers' own pipelines, on the same weights
(tiny random models in each family's real folder layout, tests/model_folders.py).

Each reference is the real pipeline loaded from the same folder and run for two inference steps
from fixed latents, with a hook on its UNet recording every call: the noisy input as the UNet saw
it (after the scheduler's input scaling), the timestep, and the UNet's output. The engine then
predicts noise for the same input and timestep for [prompt, "", negative prompt]; classifier-free
guidance batches are [unconditional, prompt], run once with no negative prompt (the "" row; SDXL's
zero embeddings) and once with the negative prompt."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from engine.config import PriorConfig
from engine.prior.base import ControlImages
from engine.prior.load import load_prior

# Capitals: CLIP's tokenizer and IFPipeline's text preprocessing both lowercase prompts.
PROMPT = "A Red wooden chair"
NEGATIVE = "oversaturated color, ugly, tiling, low quality, noisy"
CONTROL_SCALE = 0.7
TOLERANCE = 1e-5  # largest difference over the reference's largest magnitude (float32)


@dataclass
class UnetCall:
    sample: torch.Tensor  # (2, C, H, W): [unconditional or negative, prompt]
    timestep: torch.Tensor
    output: torch.Tensor


def run_pipeline(pipeline, **call) -> list[UnetCall]:
    """The pipeline's UNet calls during a two-step run."""
    calls: list[UnetCall] = []

    def record(module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        calls.append(UnetCall(sample.detach().clone(), torch.as_tensor(timestep).detach().clone(),
                              output[0].detach().clone()))

    hook = pipeline.unet.register_forward_hook(record, with_kwargs=True)
    try:
        pipeline(num_inference_steps=2, guidance_scale=7.5, **call)
    finally:
        hook.remove()
    assert calls
    return calls


def engine_predictions(prior, call: UnetCall, control: ControlImages | None = None) -> torch.Tensor:
    """The engine's noise for [PROMPT, "", NEGATIVE] at the pipeline call's input and timestep."""
    assert torch.equal(call.sample[0], call.sample[1])  # CFG runs both halves on one input
    noisy = call.sample[:1].repeat(3, 1, 1, 1)
    timesteps = call.timestep.reshape(-1)[:1].round().long().repeat(3)
    with torch.no_grad():
        return prior.predict_noise(noisy, timesteps, prior.encode_prompts([PROMPT, "", NEGATIVE]), control).float()


def assert_same(engine: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    assert engine.shape == reference.shape, what
    error = ((engine - reference).abs().max() / reference.abs().max()).item()
    assert error < TOLERANCE, f"{what}: relative difference {error:.2e}"


def compare(prior, without_negative: list[UnetCall], with_negative: list[UnetCall], to_noise=lambda call, x: x,
            control: ControlImages | None = None, channels: int | None = None) -> None:
    """Every recorded call of both runs against the engine's rows: the run without a negative
    prompt gives [empty prompt, prompt], the other [negative prompt, prompt]. `to_noise` turns
    the pipeline's UNet output into noise (v-prediction), `channels` keeps the noise channels
    (IF's learned variance)."""
    for calls, unconditional_row in ((without_negative, 1), (with_negative, 2)):
        for call in calls:
            engine = engine_predictions(prior, call, control)
            reference = to_noise(call, call.output)[:, :channels]
            where = f"at t={call.timestep.item():g}"
            assert_same(engine[0:1], reference[1:], f"prompt {where}")
            name = ("empty prompt", "negative prompt")[unconditional_row - 1]
            assert_same(engine[unconditional_row:unconditional_row + 1], reference[:1], f"{name} {where}")


def load_engine_prior(folder, controlnets: dict | None = None):
    config = PriorConfig(model=str(folder), controlnets=tuple(controlnets or ()),
                         controlnet_models={name: str(path) for name, path in (controlnets or {}).items()},
                         half_precision=False)
    return load_prior(config, torch.device("cpu"))


def latents(pipeline, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, pipeline.unet.config.in_channels, size, size, generator=generator)


def control_images(size: int) -> dict[str, torch.Tensor]:
    """A depth-like ramp and a canny-like edge image, (1, 3, size, size) in [0, 1]."""
    ramp = torch.linspace(0.0, 1.0, size).view(1, 1, 1, size).expand(1, 3, size, size)
    edges = torch.zeros(1, 3, size, size)
    edges[..., size // 4, :] = 1.0
    edges[..., :, size // 3] = 1.0
    return {"depth": ramp.contiguous(), "canny": edges}


def both_runs(pipeline, **call) -> tuple[list[UnetCall], list[UnetCall]]:
    """The pipeline's UNet calls without a negative prompt and with NEGATIVE."""
    return (run_pipeline(pipeline, prompt=PROMPT, **call),
            run_pipeline(pipeline, prompt=PROMPT, negative_prompt=NEGATIVE, **call))


# ---------------------------------------------------------------------------------------- Stable Diffusion

@pytest.mark.parametrize("family", ["sd15", "sd2_base", "sd2_v"])
def test_stable_diffusion_matches_its_pipeline(model_folders, family):
    from diffusers import StableDiffusionPipeline

    folder = getattr(model_folders, family)
    pipeline = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
    size = pipeline.unet.config.sample_size
    prior = load_engine_prior(folder)
    assert prior.resolution == size * pipeline.vae_scale_factor
    runs = both_runs(pipeline, latents=latents(pipeline, size), output_type="latent")
    if pipeline.scheduler.config.prediction_type == "v_prediction":
        compare(prior, *runs, to_noise=lambda call, v: scheduler_noise(pipeline.scheduler, call, v))
    else:
        compare(prior, *runs)


def scheduler_noise(scheduler, call: UnetCall, v: torch.Tensor) -> torch.Tensor:
    """The noise a v-prediction output stands for, by the scheduler's own step: its predicted
    x_0 and the noisy input give eps = (x_t - sqrt(a) x_0) / sqrt(1 - a). In float64: at small t
    this cancels most of x_t, which in float32 would leave rounding near the tolerance."""
    timestep = int(call.timestep)
    sample, v = call.sample.double(), v.double()
    x0 = torch.cat([scheduler.step(v[i:i + 1], timestep, sample[i:i + 1]).pred_original_sample
                    for i in range(v.shape[0])])
    abar = scheduler.alphas_cumprod[timestep].double()
    return ((sample - abar.sqrt() * x0) / (1 - abar).sqrt()).float()


def test_stable_diffusion_with_both_controlnets_matches_its_pipeline(model_folders):
    from diffusers import ControlNetModel, MultiControlNetModel, StableDiffusionControlNetPipeline

    names = ("depth", "canny")
    nets = [ControlNetModel.from_pretrained(model_folders.sd15_controlnets[name]) for name in names]
    pipeline = StableDiffusionControlNetPipeline.from_pretrained(
        model_folders.sd15, controlnet=MultiControlNetModel(nets), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    size = pipeline.unet.config.sample_size
    images = control_images(size * pipeline.vae_scale_factor)
    prior = load_engine_prior(model_folders.sd15, {name: model_folders.sd15_controlnets[name] for name in names})
    runs = both_runs(pipeline, image=[images[name] for name in names], latents=latents(pipeline, size),
                     controlnet_conditioning_scale=[CONTROL_SCALE] * len(names), output_type="latent")
    compare(prior, *runs, control=ControlImages(images, CONTROL_SCALE))


# ---------------------------------------------------------------------------------------- SDXL

def test_sdxl_matches_its_pipeline(model_folders):
    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline.from_pretrained(model_folders.sdxl, add_watermarker=False)
    size = pipeline.unet.config.sample_size
    prior = load_engine_prior(model_folders.sdxl)
    assert prior.resolution == size * pipeline.vae_scale_factor
    # No negative prompt: SDXL's unconditional row is zero embeddings (force_zeros_for_empty_prompt).
    compare(prior, *both_runs(pipeline, latents=latents(pipeline, size), output_type="latent"))


def test_sdxl_with_a_controlnet_matches_its_pipeline(model_folders):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    pipeline = StableDiffusionXLControlNetPipeline.from_pretrained(
        model_folders.sdxl, controlnet=ControlNetModel.from_pretrained(model_folders.sdxl_controlnet),
        add_watermarker=False)
    size = pipeline.unet.config.sample_size
    depth = control_images(size * pipeline.vae_scale_factor)["depth"]
    prior = load_engine_prior(model_folders.sdxl, {"depth": model_folders.sdxl_controlnet})
    runs = both_runs(pipeline, image=depth, latents=latents(pipeline, size),
                     controlnet_conditioning_scale=CONTROL_SCALE, output_type="latent")
    compare(prior, *runs, control=ControlImages({"depth": depth}, CONTROL_SCALE))


# ---------------------------------------------------------------------------------------- DeepFloyd IF

def test_deepfloyd_if_matches_its_pipeline(model_folders):
    from diffusers import IFPipeline

    pipeline = IFPipeline.from_pretrained(model_folders.deepfloyd_if, safety_checker=None, feature_extractor=None,
                                          watermarker=None, requires_safety_checker=False)
    prior = load_engine_prior(model_folders.deepfloyd_if)
    assert prior.resolution == pipeline.unet.config.sample_size
    runs = both_runs(pipeline, output_type="pt")
    # The UNet outputs noise and a learned variance; the noise is the first three channels.
    compare(prior, *runs, channels=3)
