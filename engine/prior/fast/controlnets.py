"""The ControlNets of a latent prior computed faster for the texture step: the condition image
embedded once for the whole batch, and several ControlNets side by side on their own streams.
Both give the same values as the plain calls."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..base import DiffusionPrior
from .patching import replaced_methods


def prior_modules(prior: DiffusionPrior) -> list[torch.nn.Module]:
    return [m for m in (getattr(prior, "unet", None), getattr(prior, "vae", None),
                        *getattr(prior, "controlnets", {}).values()) if isinstance(m, torch.nn.Module)]


@contextmanager
def shared_controlnet_condition(prior: DiffusionPrior) -> Iterator[None]:
    """While active, each ControlNet embeds its condition image once per call, not once per prompt.

    predict_noise repeats one view's condition image for every prompt of the batch; the
    embedding (convolutions at render resolution) of identical images is identical, so the
    first copy's embedding is computed and broadcast over the batch. Only valid for calls
    whose batch repeats a single condition, as the static step's does.
    """
    modules = [net.controlnet_cond_embedding for net in getattr(prior, "controlnets", {}).values()
               if hasattr(net, "controlnet_cond_embedding")]

    def embed_first(embed):
        return lambda condition: embed(condition[:1]).expand(condition.shape[0], *([-1] * (condition.dim() - 1)))
    with replaced_methods((module, "forward", embed_first(module.forward)) for module in modules):
        yield


@contextmanager
def concurrent_controlnets(prior: DiffusionPrior, streams: list | None = None) -> Iterator[None]:
    """While active (CUDA), each ControlNet runs on its own stream, so their kernels overlap.

    At batch 3 the deep, low-resolution layers fill a fraction of the GPU, so two ControlNets
    side by side take less than one after the other. Each starts once the main stream's work so
    far is done; the last one's call returns only after the main stream waits for all of them,
    before predict_noise sums their residuals. Results are the same as one after the other.
    """
    nets = list(getattr(prior, "controlnets", {}).values())
    if len(nets) < 2 or not torch.cuda.is_available() or prior.device.type != "cuda":
        yield
        return
    streams = streams or [torch.cuda.Stream(prior.device) for _ in nets]
    replacements = []
    for position, (net, stream) in enumerate(zip(nets, streams)):
        def forward_on_stream(*args, run=net.forward, stream=stream, last=position == len(nets) - 1, **kwargs):
            main = torch.cuda.current_stream(prior.device)
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                result = run(*args, **kwargs)
            if last:
                for other in streams:
                    main.wait_stream(other)
            return result
        replacements.append((net, "forward", forward_on_stream))
    with replaced_methods(replacements):
        yield
