"""A prior's noise prediction replayed from CUDA graphs, one graph per input shape (CUDA only).

The eager diffusion UNet is launch-bound at score distillation's batch sizes
(shared/reference/gpu-baseline.md): one call is thousands of small kernel launches. The
generate job's prior inputs change every step but their shapes repeat (one shape per prompt
count and batch), so the call is captured once per shape and then replayed: the inputs are
copied into the graph's buffers, the graph replays, the output is copied out. The GroupNorms
inside run the Triton statistics kernels while capturing (prior/group_norm_triton.py).

With `channels_last` (the default where Triton imports) the UNet runs NHWC end to end, as the
texture step's does (prior/channels_last.py): NHWC weights and input, the channels-last
GroupNorm, transformer outputs left NHWC and the fused bias / GEGLU kernels
(prior/elementwise_triton.py). cuDNN computes half-precision convolutions in NHWC, so an NCHW
UNet pays two layout conversions around every convolution.

The texture job does not use this: it captures its whole step (pipelines/texture_step.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ...errors import first_line
from ..base import ControlImages, DiffusionPrior
from .channels_last import nhwc_kernels, set_memory_format
from .group_norm_triton import triton_available, triton_group_norms

WARMUP_CALLS = 2  # on a side stream before capture: lazy cuBLAS/cuDNN handles and workspaces
MAX_GRAPHS = 6  # input shapes kept; a job uses one to three


@dataclass
class _CapturedCall:
    graph: torch.cuda.CUDAGraph
    noisy: Tensor
    timesteps: Tensor
    embeddings: Tensor
    output: Tensor


def _signature(*tensors: Tensor) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)


class GraphedNoisePrediction:
    """Callable like `prior.predict_noise`; calls with ControlNet inputs, or on a CPU, run eagerly."""

    def __init__(self, prior: DiffusionPrior, predict: Callable[..., Tensor], channels_last: bool = True):
        self.prior, self.predict = prior, predict
        unet = getattr(prior, "unet", None)
        # PyTorch's own GroupNorm turns NHWC back into NCHW, so NHWC pays only with the Triton one.
        self.channels_last = channels_last and unet is not None and triton_available()
        if self.channels_last:
            set_memory_format([unet], True)
        self.pool = torch.cuda.graph_pool_handle()  # one memory pool for every captured shape
        self.captured: dict[tuple, _CapturedCall] = {}
        self.failure: str | None = None  # why capture failed; every later call then runs eagerly

    def __call__(self, noisy: Tensor, timesteps: Tensor, embeddings: Tensor,
                 control: ControlImages | None = None) -> Tensor:
        if control is not None or not noisy.is_cuda or torch.is_grad_enabled() or self.failure:
            return self.predict(noisy, timesteps, embeddings, control)
        key = _signature(noisy, timesteps, embeddings)
        call = self.captured.get(key)
        if call is None:
            if len(self.captured) >= MAX_GRAPHS:
                return self.predict(noisy, timesteps, embeddings, control)
            try:
                call = self.captured[key] = self._capture(noisy, timesteps, embeddings)
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as exc:  # an operation that cannot be captured: stay correct, run eagerly
                torch.cuda.synchronize(noisy.device)
                self.failure = first_line(exc)
                return self.predict(noisy, timesteps, embeddings, control)
        call.noisy.copy_(noisy)
        call.timesteps.copy_(timesteps)
        call.embeddings.copy_(embeddings)
        call.graph.replay()
        return call.output.clone()

    def _capture(self, noisy: Tensor, timesteps: Tensor, embeddings: Tensor) -> _CapturedCall:
        layout = torch.channels_last if self.channels_last and noisy.dim() == 4 else torch.contiguous_format
        static = [noisy.clone(memory_format=layout), timesteps.clone(), embeddings.clone()]
        device = noisy.device
        unet = getattr(self.prior, "unet", None)
        with nhwc_kernels(unet) if self.channels_last else triton_group_norms(unet):
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_CALLS):
                    self.predict(*static)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                output = self.predict(*static)
        return _CapturedCall(graph, *static, output)


def use_cuda_graphs(prior: DiffusionPrior, enabled: bool = True, channels_last: bool = True) -> None:
    """Route the prior's no-grad noise predictions through CUDA graphs (no-op off CUDA), NHWC where
    it can, or (enabled=False) back to the plain eager call with NCHW weights."""
    current = prior.predict_noise
    if isinstance(current, GraphedNoisePrediction):
        if enabled and current.channels_last == (channels_last and triton_available()):
            return
        del prior.predict_noise  # the instance attribute that shadows the class's method
        if current.channels_last:
            set_memory_format([prior.unet], False)
    if enabled and prior.device.type == "cuda":
        prior.predict_noise = GraphedNoisePrediction(prior, prior.predict_noise, channels_last)
