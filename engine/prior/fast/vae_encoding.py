"""A latent prior's VAE encoder with gradient, fast on a GPU (the generate job's stage 2).

The texture job captures its whole step in a CUDA graph (pipelines/texture_step.py); stage 2
of the generate job runs the encoder eagerly, with the same three speed-ups: NHWC weights
and activations with the channels-last Triton GroupNorm (prior/channels_last.py,
prior/group_norm_triton.py), the fused convolution biases (prior/elementwise_triton.py),
and the single-head 512-wide attention through SDPA's math kernels in half precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..base import DiffusionPrior
from .channels_last import nhwc_kernels, set_memory_format
from .group_norm_triton import triton_available


@contextmanager
def half_precision_math_attention() -> Iterator[None]:
    """SDPA's math kernels keep fp16/bf16 inputs in their precision (matmuls still accumulate in float32):
    the memory-efficient kernel PyTorch picks for the VAE's attention is slow in backward, and the
    math kernels by default upcast to float32 (SIMT GEMMs)."""
    previous = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
    torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(True)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(previous)


class FastVaeEncoder:
    """`encode(images)` = prior.images_to_model_input(images), NHWC with the kernels above on CUDA
    (where Triton imports), else the plain call."""

    def __init__(self, prior: DiffusionPrior):
        self.prior = prior
        self.vae = getattr(prior, "vae", None)
        self.enabled = self.vae is not None and prior.device.type == "cuda" and triton_available()
        if self.enabled:
            set_memory_format([self.vae], True)

    def encode(self, images: Tensor) -> Tensor:
        if not self.enabled:
            return self.prior.images_to_model_input(images)
        with nhwc_kernels(self.vae), half_precision_math_attention():
            return self.prior.images_to_model_input(images.contiguous(memory_format=torch.channels_last))
