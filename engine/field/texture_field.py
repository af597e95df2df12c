"""The optimised texture: albedo as a function of surface position in the unit box.

albedo(p) = sigmoid(MLP(hash_encoding(p + 0.5))). A 3-D field (rather than a UV image) lets
optimisation ignore UV seams and distortion; the result is baked into the mesh's UV texture.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import HashGridConfig
from .hashgrid import make_hash_grid

ALBEDO_CHANNELS = 3
FIT_BATCH = 1 << 14
FIT_LEARNING_RATE = 1e-2


class TextureField(torch.nn.Module):
    """(N, 3) points in the unit box [-0.5, 0.5]^3 -> (N, 3) albedo in (0, 1).

    Deterministic given the seed: the hash table and the MLP are initialised from it.
    use_tcnn picks tiny-cuda-nn's CUDA hash grid when it is installed (same layout and
    initial values as ours); the MLP is always plain PyTorch.
    """

    def __init__(self, config: HashGridConfig, seed: int = 0, use_tcnn: bool = False):
        super().__init__()
        self.field_config = config
        self.encoding = make_hash_grid(config, n_input_dims=3, prefer_tcnn=use_tcnn, seed=seed)
        generator = torch.Generator().manual_seed(seed + 1)  # not the table's stream
        layers: list[torch.nn.Module] = []
        width_in = self.encoding.output_dim
        for _ in range(config.mlp_hidden_layers):
            layers += [_linear(width_in, config.mlp_width, generator), torch.nn.ReLU()]
            width_in = config.mlp_width
        layers.append(_linear(width_in, ALBEDO_CHANNELS, generator))
        self.mlp = torch.nn.Sequential(*layers)

    def forward(self, points: Tensor) -> Tensor:
        unit = (points + 0.5).clamp(0.0, 1.0)
        return torch.sigmoid(self.mlp(self.encoding(unit)))


def _linear(width_in: int, width_out: int, generator: torch.Generator) -> torch.nn.Linear:
    """nn.Linear with PyTorch's default initialisation bounds, drawn from our generator."""
    with torch.random.fork_rng(devices=[]):  # the default initialisation must not advance the global RNG
        layer = torch.nn.Linear(width_in, width_out)
    bound = 1.0 / math.sqrt(width_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def fit_field(field: TextureField, points: Tensor, colours: Tensor, steps: int, generator: torch.Generator,
              cancel=None) -> float:
    """Regress the field to `colours` (N, 3) at surface `points` (N, 3), Adam on random batches.
    Returns the RMSE on the last batch."""
    optimizer = torch.optim.Adam(field.parameters(), lr=FIT_LEARNING_RATE, eps=1e-15)
    mse = torch.zeros(())
    for _ in range(steps):
        if cancel is not None:
            cancel.check()
        batch = torch.randint(points.shape[0], (min(FIT_BATCH, points.shape[0]),), generator=generator)
        batch = batch.to(points.device)
        mse = torch.nn.functional.mse_loss(field(points[batch]), colours[batch])
        optimizer.zero_grad(set_to_none=True)
        mse.backward()
        optimizer.step()
    return float(mse.detach().sqrt())


def query_in_chunks(field: TextureField, points: Tensor, chunk: int = 2 ** 18) -> Tensor:
    """Albedo at many points (e.g. every texel when baking) without autograd, chunk by chunk."""
    with torch.no_grad():
        if points.shape[0] == 0:
            return points.new_zeros(0, ALBEDO_CHANNELS)
        return torch.cat([field(points[start:start + chunk]) for start in range(0, points.shape[0], chunk)])
