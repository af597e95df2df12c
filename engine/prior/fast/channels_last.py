"""Running a diffusers network NHWC (channels-last) end to end on a GPU.

cuDNN computes half-precision convolutions in NHWC: NCHW tensors are converted before and
after every one, the largest single cost of the texture step once its kernels are fused
into a CUDA graph. With NHWC weights (`set_memory_format`) activations follow, except where
the network itself forces NCHW: PyTorch's CUDA GroupNorm (use prior/group_norm_triton.py's),
and Transformer2DModel's output, which it copies into NCHW before the residual add
(`nhwc_transformer_outputs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor

from .elementwise_triton import fused_elementwise
from .group_norm_triton import triton_group_norms
from .patching import replaced_methods


def set_memory_format(modules: list[torch.nn.Module], channels_last: bool) -> None:
    """Lay out the 4-D weights NHWC (or back to NCHW); a convolution with NHWC weights gives NHWC outputs."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for module in modules:
        module.to(memory_format=memory_format)


def _transformer_blocks(modules: tuple[torch.nn.Module, ...]) -> list[torch.nn.Module]:
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return [m for module in modules if module is not None for m in module.modules()
            if isinstance(m, Transformer2DModel) and getattr(m, "is_input_continuous", False)]


@contextmanager
def nhwc_transformer_outputs(*modules: torch.nn.Module) -> Iterator[None]:
    """While active, Transformer2DModel blocks inside `modules` return their output in the layout the
    (batch, height * width, channels) tokens already have, NHWC, instead of copying it into NCHW."""
    def output(block: torch.nn.Module):
        def nhwc_output(hidden_states: Tensor, residual: Tensor, batch_size: int, height: int, width: int,
                        inner_dim: int) -> Tensor:
            if block.use_linear_projection:
                hidden_states = block.proj_out(hidden_states).reshape(batch_size, height, width, inner_dim)
                return hidden_states.permute(0, 3, 1, 2) + residual
            tokens = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
            return block.proj_out(tokens) + residual
        return nhwc_output
    with replaced_methods((block, "_get_output_for_continuous_inputs", output(block))
                          for block in _transformer_blocks(modules)):
        yield


@contextmanager
def nhwc_kernels(*modules: torch.nn.Module) -> Iterator[None]:
    """While active, `modules` (with NHWC weights) keep NHWC end to end: the channels-last Triton
    GroupNorm, transformer outputs left NHWC, and the fused conv-bias and GEGLU kernels."""
    with ExitStack() as stack:
        stack.enter_context(triton_group_norms(*modules))
        stack.enter_context(nhwc_transformer_outputs(*modules))
        stack.enter_context(fused_elementwise(*modules))
        yield
