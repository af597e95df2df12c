"""The engine's noising and its v-to-noise conversion equal the schedulers' own (diffusers'
add_noise and get_velocity), for the priors loaded from each family's real folder layout."""

from __future__ import annotations

import json

import pytest
import torch

from engine.config import PriorConfig
from engine.prior.load import load_prior

TIMESTEPS = [0, 1, 20, 250, 500, 750, 980, 999]


@pytest.fixture(scope="module")
def loaded(model_folders):
    """family -> (engine prior, the folder's scheduler as its own class loads it)."""
    import diffusers

    cache = {}

    def load(family: str):
        if family not in cache:
            folder = getattr(model_folders, family)
            scheduler_class = json.loads((folder / "model_index.json").read_text())["scheduler"][1]
            scheduler = getattr(diffusers, scheduler_class).from_pretrained(folder, subfolder="scheduler")
            prior = load_prior(PriorConfig(model=str(folder), controlnets=(), half_precision=False),
                               torch.device("cpu"))
            cache[family] = prior, scheduler
        return cache[family]
    return load


def sample(channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (len(TIMESTEPS), channels, 8, 8)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


@pytest.mark.parametrize("family", ["sd15", "sd2_base", "sd2_v", "deepfloyd_if"])
def test_noising_equals_the_schedulers_add_noise(loaded, family):
    prior, scheduler = loaded(family)
    assert prior.prediction_type == scheduler.config.prediction_type
    x0, noise = sample(3 if prior.pixel_space else 4, seed=1)
    timesteps = torch.tensor(TIMESTEPS)
    torch.testing.assert_close(prior.add_noise(x0, noise, timesteps), scheduler.add_noise(x0, noise, timesteps),
                               rtol=1e-5, atol=1e-6)


def test_sdxl_noising_equals_the_euler_schedulers_scaled_input(loaded):
    """SDXL's Euler scheduler noises as x_0 + sigma eps and scales the UNet's input by
    1 / sqrt(sigma^2 + 1): the engine's sqrt(a) x_0 + sqrt(1 - a) eps must be that input."""
    prior, scheduler = loaded("sdxl")
    assert prior.prediction_type == scheduler.config.prediction_type == "epsilon"
    x0, noise = sample(4, seed=2)
    for row, timestep in enumerate(TIMESTEPS):
        euler = type(scheduler).from_config(scheduler.config)  # fresh: it remembers the step it scaled for
        t = torch.tensor([float(timestep)])
        reference = euler.scale_model_input(euler.add_noise(x0[row:row + 1], noise[row:row + 1], t), t)
        engine = prior.add_noise(x0[row:row + 1], noise[row:row + 1], torch.tensor([timestep]))
        torch.testing.assert_close(engine, reference, rtol=1e-5, atol=1e-6, msg=f"t={timestep}")


@pytest.mark.parametrize("scheduler_class", ["DDIMScheduler", "DDPMScheduler"])
def test_v_prediction_to_noise_inverts_get_velocity(loaded, scheduler_class):
    import diffusers

    prior, folder_scheduler = loaded("sd2_v")
    assert prior.prediction_type == "v_prediction"
    scheduler = getattr(diffusers, scheduler_class).from_config(folder_scheduler.config)
    x0, noise = sample(4, seed=3)
    timesteps = torch.tensor(TIMESTEPS)
    noisy = scheduler.add_noise(x0, noise, timesteps)
    velocity = scheduler.get_velocity(x0, noise, timesteps)
    torch.testing.assert_close(prior.noise_from_prediction(velocity, noisy, timesteps), noise, rtol=1e-5, atol=1e-5)


def test_epsilon_prediction_is_the_noise_itself(loaded):
    prior, _ = loaded("sd2_base")
    prediction, noisy = sample(4, seed=4)
    assert torch.equal(prior.noise_from_prediction(prediction, noisy, torch.tensor(TIMESTEPS)), prediction)
