"""Two element-wise steps of the diffusion networks as single Triton kernels (CUDA), when Triton imports.

Both replace PyTorch kernels that cannot vectorise, measured in the texture step's profile
(docs/benchmarks.md):
  conv_bias   a convolution's bias. cuDNN's PyTorch path adds it after the convolution as a
              broadcast (1, C, 1, 1) add, which on an NHWC output runs PyTorch's generic strided
              kernel: ~300 such adds a step. Here: the convolution without bias, then one
              vectorised pass, out[..., c] = conv[..., c] + bias[c] over the NHWC memory.
  geglu       diffusers' GEGLU, h * gelu(g) with (h, g) the two halves of one projection: chunk()
              makes both halves strided, so PyTorch runs two strided kernels and writes the gelu
              in between. Here: one pass reading the projection, writing the product (no-grad only).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from .patching import replaced_methods

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

BLOCK = 1024


def triton_available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _channel_bias_kernel(x_ptr, bias_ptr, y_ptr, numel, channels, BLOCK_SIZE: tl.constexpr):
        """y = x + bias[c] over an NHWC (channel-minor) tensor."""
        index = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        valid = index < numel
        x = tl.load(x_ptr + index, mask=valid, other=0.0).to(tl.float32)
        bias = tl.load(bias_ptr + index % channels, mask=valid, other=0.0).to(tl.float32)
        tl.store(y_ptr + index, (x + bias).to(y_ptr.dtype.element_ty), mask=valid)

    @triton.jit
    def _geglu_kernel(projection_ptr, out_ptr, numel, width, BLOCK_SIZE: tl.constexpr):
        """out[r, j] = h * gelu(g), h = projection[r, j], g = projection[r, width + j] (exact, erf gelu)."""
        index = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        valid = index < numel
        source = (index // width) * (2 * width) + index % width
        h = tl.load(projection_ptr + source, mask=valid, other=0.0).to(tl.float32)
        g = tl.load(projection_ptr + source + width, mask=valid, other=0.0).to(tl.float32)
        gelu = 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))
        tl.store(out_ptr + index, (h * gelu).to(out_ptr.dtype.element_ty), mask=valid)


def _nhwc(x: Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


class _ChannelBias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor) -> Tensor:
        y = torch.empty_like(x)
        _channel_bias_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, bias, y, x.numel(), x.shape[1], BLOCK_SIZE=BLOCK)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad_bias = grad.sum((0, 2, 3)) if ctx.needs_input_grad[1] else None
        return grad, grad_bias


def add_channel_bias(x: Tensor, bias: Tensor) -> Tensor:
    """x + bias.view(1, C, 1, 1) for an NHWC CUDA tensor x."""
    return _ChannelBias.apply(x, bias)


def geglu(projection: Tensor) -> Tensor:
    """h * gelu(g) for the halves (h, g) of a contiguous (..., 2 D) CUDA tensor (no autograd)."""
    width = projection.shape[-1] // 2
    out = projection.new_empty(*projection.shape[:-1], width)
    _geglu_kernel[(triton.cdiv(out.numel(), BLOCK),)](projection, out, out.numel(), width, BLOCK_SIZE=BLOCK)
    return out


@contextmanager
def fused_elementwise(*modules: torch.nn.Module) -> Iterator[None]:
    """While active, every nn.Conv2d with a bias and every diffusers GEGLU inside `modules` use the
    kernels above where they apply (NHWC CUDA outputs; GEGLU without autograd), else their own forward."""
    if triton is None:
        yield
        return
    from diffusers.models.activations import GEGLU

    replacements = []
    for module in (m for root in modules if root is not None for m in root.modules()):
        if isinstance(module, torch.nn.Conv2d) and module.bias is not None and module.padding_mode == "zeros":
            def conv_forward(x: Tensor, conv=module, original=module.forward) -> Tensor:
                if not (x.is_cuda and _nhwc(x)):
                    return original(x)
                y = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
                return add_channel_bias(y, conv.bias) if _nhwc(y) else y + conv.bias.view(1, -1, 1, 1)
            replacements.append((module, "forward", conv_forward))
        elif isinstance(module, GEGLU):
            def geglu_forward(hidden_states: Tensor, *args, layer=module, original=module.forward, **kwargs) -> Tensor:
                if args or kwargs:
                    return original(hidden_states, *args, **kwargs)
                projection = layer.proj(hidden_states)
                if not projection.is_cuda or not projection.is_contiguous() or (
                        torch.is_grad_enabled() and projection.requires_grad):
                    hidden, gate = projection.chunk(2, dim=-1)
                    return hidden * layer.gelu(gate)
                return geglu(projection)
            replacements.append((module, "forward", geglu_forward))
    with replaced_methods(replacements):
        yield
