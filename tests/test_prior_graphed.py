"""CUDA-graph replay of a prior's noise prediction (engine/prior/graphed.py) gives the eager call's results."""

from __future__ import annotations

import pytest
import torch

from engine.config import PriorConfig
from engine.prior.fast.graphed import GraphedNoisePrediction, use_cuda_graphs
from engine.prior.load import load_prior


@pytest.fixture
def exact_float32():
    """No TF32: NHWC and NCHW convolutions take different cuDNN kernels, equal only up to TF32 rounding."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_off_cuda_it_changes_nothing(tiny_pixel_prior):
    prior = load_prior(PriorConfig(model=str(tiny_pixel_prior), half_precision=False), torch.device("cpu"))
    use_cuda_graphs(prior)
    assert "predict_noise" not in prior.__dict__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_replays_match_eager_calls_for_each_shape(tiny_pixel_prior, exact_float32):
    device = torch.device("cuda")
    prior = load_prior(PriorConfig(model=str(tiny_pixel_prior), half_precision=False), device)
    embeddings = prior.encode_prompts(["a red ball", "", "blurry", "a blue box", "a cube"])
    graphed = GraphedNoisePrediction(prior, prior.predict_noise)
    generator = torch.Generator(device="cuda").manual_seed(0)
    size = prior.resolution
    for _ in range(3):
        for batch in (3, 5):  # two input shapes, replayed alternately with new values each call
            noisy = torch.randn(batch, 3, size, size, device=device, generator=generator)
            timesteps = torch.randint(20, 980, (batch,), device=device, generator=generator)
            with torch.no_grad():
                replayed = graphed(noisy, timesteps, embeddings[:batch])
                eager = prior.predict_noise(noisy, timesteps, embeddings[:batch])
            # The graph runs the Triton GroupNorm, the eager call PyTorch's: equal up to rounding.
            torch.testing.assert_close(replayed, eager, rtol=1e-3, atol=1e-4)
    assert graphed.failure is None, graphed.failure
    assert len(graphed.captured) == 2
    use_cuda_graphs(prior)
    assert isinstance(prior.predict_noise, GraphedNoisePrediction)
    use_cuda_graphs(prior, False)
    assert "predict_noise" not in prior.__dict__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nhwc_replays_match_nchw_replays(tiny_pixel_prior, exact_float32):
    device = torch.device("cuda")
    prior = load_prior(PriorConfig(model=str(tiny_pixel_prior), half_precision=False), device)
    embeddings = prior.encode_prompts(["a red ball", "", "blurry"])
    generator = torch.Generator(device="cuda").manual_seed(0)
    noisy = torch.randn(3, 3, prior.resolution, prior.resolution, device=device, generator=generator)
    timesteps = torch.randint(20, 980, (3,), device=device, generator=generator)
    outputs = {}
    for channels_last in (False, True):
        use_cuda_graphs(prior, channels_last=channels_last)
        assert prior.predict_noise.failure is None, prior.predict_noise.failure
        with torch.no_grad():
            outputs[channels_last] = prior.predict_noise(noisy, timesteps, embeddings)
        assert prior.predict_noise.failure is None, prior.predict_noise.failure
    torch.testing.assert_close(outputs[True], outputs[False], rtol=1e-3, atol=1e-4)
    use_cuda_graphs(prior, False)
    assert prior.unet.conv_in.weight.is_contiguous()  # NCHW weights again for the eager call
