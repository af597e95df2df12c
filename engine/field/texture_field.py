"""The optimised texture: a material as a function of surface position in the unit box.

values(p) = sigmoid(MLP(hash_encoding(p + 0.5))). A 3-D field (rather than a UV image) lets
optimisation ignore UV seams and distortion; the result is baked into the mesh's UV layout.

An "albedo" field has 3 channels: the base colour, sRGB-encoded as a texture stores it. A "pbr"
field has 5: the same base colour, then perceptual roughness and metallic (glTF's
metallic-roughness material, linear data; engine/render/pbr.py shades it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import HashGridConfig
from .hashgrid import make_hash_grid

BASE_COLOUR_CHANNELS = 3
MATERIAL_CHANNELS = {"albedo": 3, "pbr": 5}
# A PBR field starts as a matte dielectric everywhere (the look an albedo job renders), so the
# prior has to ask for gloss or metal to get it. Not 0 and not 1: the sigmoid stays steep enough to move.
START_ROUGHNESS = 0.7
START_METALLIC = 0.05
FIT_BATCH = 1 << 14
FIT_LEARNING_RATE = 1e-2


class TextureField(torch.nn.Module):
    """(N, 3) points in the unit box [-0.5, 0.5]^3 -> (N, channels) values in (0, 1): base colour
    (sRGB-encoded) for channels = 3, then roughness and metallic for channels = 5.

    Deterministic given the seed: the hash table and the MLP are initialised from it, and a
    5-channel field's base colour starts exactly as the 3-channel field of the same seed.
    use_tcnn picks tiny-cuda-nn's CUDA hash grid when it is installed (same layout and
    initial values as ours); the MLP is always plain PyTorch.
    """

    def __init__(self, config: HashGridConfig, seed: int = 0, use_tcnn: bool = False,
                 channels: int = BASE_COLOUR_CHANNELS):
        super().__init__()
        if channels not in MATERIAL_CHANNELS.values():
            raise ValueError(f"a texture field has 3 (albedo) or 5 (pbr) channels, not {channels}")
        self.field_config = config
        self.channels = channels
        self.encoding = make_hash_grid(config, n_input_dims=3, prefer_tcnn=use_tcnn, seed=seed)
        generator = torch.Generator().manual_seed(seed + 1)  # not the table's stream
        layers: list[torch.nn.Module] = []
        width_in = self.encoding.output_dim
        for _ in range(config.mlp_hidden_layers):
            layers += [_linear(width_in, config.mlp_width, generator), torch.nn.ReLU()]
            width_in = config.mlp_width
        output = _linear(width_in, BASE_COLOUR_CHANNELS, generator)
        layers.append(output if channels == BASE_COLOUR_CHANNELS else _with_material_rows(output))
        self.mlp = torch.nn.Sequential(*layers)

    @property
    def material(self) -> str:
        return "albedo" if self.channels == BASE_COLOUR_CHANNELS else "pbr"

    def forward(self, points: Tensor) -> Tensor:
        unit = (points + 0.5).clamp(0.0, 1.0)
        return torch.sigmoid(self.mlp(self.encoding(unit)))

    def load_any_material(self, state: dict[str, Tensor]) -> None:
        """Load a saved field of either material into this one: the encoding, the hidden layers and
        the base colour as saved; roughness and metallic as saved when the state has them, else as
        this field starts (matte). A state that does not fit otherwise raises load_state_dict's error."""
        own = self.state_dict()
        adapted = dict(state)
        for name in (f"mlp.{len(self.mlp) - 1}.weight", f"mlp.{len(self.mlp) - 1}.bias"):
            saved = state.get(name)
            if (isinstance(saved, Tensor) and saved.ndim == own[name].ndim and saved.shape[1:] == own[name].shape[1:]
                    and saved.shape[0] in MATERIAL_CHANNELS.values() and saved.shape[0] != own[name].shape[0]):
                merged = own[name].clone()
                rows = min(saved.shape[0], merged.shape[0])
                merged[:rows] = saved[:rows]
                adapted[name] = merged
        self.load_state_dict(adapted)


def _linear(width_in: int, width_out: int, generator: torch.Generator) -> torch.nn.Linear:
    """nn.Linear with PyTorch's default initialisation bounds, drawn from our generator."""
    with torch.random.fork_rng(devices=[]):  # the default initialisation must not advance the global RNG
        layer = torch.nn.Linear(width_in, width_out)
    bound = 1.0 / math.sqrt(width_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def _with_material_rows(base_colour: torch.nn.Linear) -> torch.nn.Linear:
    """The base-colour output layer plus roughness and metallic rows that output START_ROUGHNESS
    and START_METALLIC everywhere: zero weights (Adam moves them on the first step) and the
    biases whose sigmoid those are."""
    with torch.random.fork_rng(devices=[]):
        layer = torch.nn.Linear(base_colour.in_features, base_colour.out_features + 2)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:BASE_COLOUR_CHANNELS] = base_colour.weight
        layer.bias[:BASE_COLOUR_CHANNELS] = base_colour.bias
        layer.bias[BASE_COLOUR_CHANNELS:] = torch.logit(torch.tensor([START_ROUGHNESS, START_METALLIC]))
    return layer


def fit_field(field: TextureField, points: Tensor, colours: Tensor, steps: int, generator: torch.Generator,
              cancel=None) -> float:
    """Regress the field to base `colours` (N, 3) at surface `points` (N, 3), Adam on random batches;
    a PBR field's roughness and metallic to their matte start (a colour says nothing about them).
    Returns the RMSE on the last batch."""
    if field.channels > BASE_COLOUR_CHANNELS:
        matte = colours.new_tensor([START_ROUGHNESS, START_METALLIC]).expand(colours.shape[0], 2)
        colours = torch.cat([colours, matte], dim=-1)
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
    """The field's values at many points (e.g. every texel when baking) without autograd, chunk by chunk."""
    with torch.no_grad():
        if points.shape[0] == 0:
            return points.new_zeros(0, field.channels)
        return torch.cat([field(points[start:start + chunk]) for start in range(0, points.shape[0], chunk)])
