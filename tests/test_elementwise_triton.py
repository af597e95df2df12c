"""The Triton convolution-bias and GEGLU kernels (CUDA) compute what PyTorch computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.prior.fast.elementwise_triton import add_channel_bias, fused_elementwise, geglu, triton_available

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and triton_available()),
                                reason="needs CUDA and Triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_channel_bias_and_its_gradients(dtype):
    generator = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(3, 320, 17, 9, device="cuda", generator=generator).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    bias = torch.randn(320, device="cuda", generator=generator).to(dtype).requires_grad_(True)
    ours = add_channel_bias(x, bias)
    theirs = x + bias.view(1, -1, 1, 1)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    upstream = torch.randn_like(theirs)
    for our_grad, their_grad in zip(torch.autograd.grad(ours, (x, bias), upstream),
                                    torch.autograd.grad(theirs, (x, bias), upstream)):
        torch.testing.assert_close(our_grad, their_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_geglu_matches_pytorch(dtype):
    projection = torch.randn(3, 4096, 2 * 1280, device="cuda").to(dtype)
    hidden, gate = projection.chunk(2, dim=-1)
    tolerance = dict(rtol=2e-3, atol=2e-3) if dtype == torch.float16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(geglu(projection), hidden * F.gelu(gate), **tolerance)


def test_patched_unet_gives_the_same_noise_prediction():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=16,
                                attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).cuda().eval()
    unet.to(memory_format=torch.channels_last)
    sample = torch.randn(3, 4, 8, 8, device="cuda").contiguous(memory_format=torch.channels_last)
    timesteps, text = torch.tensor([10, 500, 990], device="cuda"), torch.randn(3, 5, 16, device="cuda")
    with torch.no_grad():
        reference = unet(sample, timesteps, encoder_hidden_states=text).sample
        with fused_elementwise(unet):
            patched = [m for m in unet.modules() if "forward" in m.__dict__]
            fused = unet(sample, timesteps, encoder_hidden_states=text).sample
    assert any(isinstance(m, torch.nn.Conv2d) for m in patched) and any(type(m).__name__ == "GEGLU" for m in patched)
    assert not any("forward" in m.__dict__ for m in unet.modules())
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-5)
