"""Stage 2's fast VAE encoder (engine/prior/vae_encoding.py) gives the plain encoder's latents and gradients."""

from __future__ import annotations

import pytest
import torch

from engine.config import PriorConfig
from engine.prior.load import load_prior
from engine.prior.fast.vae_encoding import FastVaeEncoder


def test_off_cuda_it_is_the_plain_call(tiny_stable_diffusion):
    sd, _ = tiny_stable_diffusion
    prior = load_prior(PriorConfig(model=str(sd), controlnets=(), half_precision=False), torch.device("cpu"))
    encoder = FastVaeEncoder(prior)
    assert not encoder.enabled
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(encoder.encode(images), prior.images_to_model_input(images), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nhwc_encoder_matches_the_plain_one_with_gradients(tiny_stable_diffusion):
    sd, _ = tiny_stable_diffusion
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # layouts take other kernels
    try:
        prior = load_prior(PriorConfig(model=str(sd), controlnets=(), half_precision=False), torch.device("cuda"))
        base = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).cuda()
        results = []
        for fast in (False, True):
            images = base.clone().requires_grad_(True)
            if fast:
                encoder = FastVaeEncoder(prior)
                assert encoder.enabled
                latents = encoder.encode(images)
            else:
                latents = prior.images_to_model_input(images)
            (latents * torch.linspace(-1, 1, latents.numel(), device="cuda").view_as(latents)).sum().backward()
            results.append((latents.detach(), images.grad))
        torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-3, atol=1e-5)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
