"""The Triton GroupNorm (CUDA) computes PyTorch's GroupNorm, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.prior.fast.group_norm_triton import group_norm, triton_available, triton_group_norms

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and triton_available()),
                                reason="needs CUDA and Triton")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype,shape,groups", [
    (torch.float32, (1, 128, 96, 80), 32),  # rows longer than one chunk, a partial last chunk
    (torch.float32, (3, 64, 8, 8), 32),
    (torch.float32, (2, 320, 13, 11), 32),  # channels not a multiple of the NHWC channel block
    (torch.float16, (1, 128, 128, 128), 32),
    (torch.float16, (3, 320, 64, 64), 32),
    (torch.float16, (3, 2560, 8, 8), 32),
])
def test_matches_pytorch_group_norm(dtype, shape, groups, channels_last):
    generator = torch.Generator(device="cuda").manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(shape, device="cuda", generator=generator) * 3 + 2).to(dtype)
    x = x.contiguous(memory_format=memory_format).requires_grad_(True)
    weight = torch.randn(shape[1], device="cuda", generator=generator).to(dtype).requires_grad_(True)
    bias = torch.randn(shape[1], device="cuda", generator=generator).to(dtype).requires_grad_(True)
    upstream = torch.randn(shape, device="cuda", generator=generator).to(dtype).contiguous(memory_format=memory_format)
    ours = group_norm(x, groups, weight, bias, 1e-6)
    our_grads = torch.autograd.grad(ours, (x, weight, bias), upstream)
    theirs = F.group_norm(x, groups, weight, bias, 1e-6)
    their_grads = torch.autograd.grad(theirs, (x, weight, bias), upstream)
    assert ours.is_contiguous(memory_format=memory_format)  # the layout is kept
    tolerance = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, theirs, **tolerance)
    torch.testing.assert_close(our_grads[0], their_grads[0], **tolerance)
    # Parameter gradients sum over the batch and the image: compare relative to their size.
    for our_grad, their_grad in zip(our_grads[1:], their_grads[1:]):
        scale = their_grad.float().abs().max().item() + 1e-6
        torch.testing.assert_close(our_grad.float() / scale, their_grad.float() / scale, **tolerance)
    # Against float64, ours is as close as PyTorch's own kernel.
    exact = F.group_norm(x.double(), groups, weight.double(), bias.double(), 1e-6)
    assert (ours.double() - exact).norm() <= 1.5 * (theirs.double() - exact).norm() + 1e-6


def test_context_patches_and_restores_modules():
    norm = torch.nn.GroupNorm(4, 16).cuda()
    x = torch.randn(2, 16, 9, 9, device="cuda")
    with triton_group_norms(norm):
        assert "forward" in norm.__dict__
        patched = norm(x)
    assert "forward" not in norm.__dict__
    torch.testing.assert_close(patched, norm(x), rtol=1e-5, atol=1e-5)
