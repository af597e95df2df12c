"""Shading of rendered albedo: a random directional light near the camera, and backgrounds.

Random soft lighting during optimisation (as in threestudio's texture setup) discourages the
diffusion prior from painting shadows and highlights into the albedo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Cameras

# The texture job's light (and sample_lighting's default): ambient strength uniform in this range;
# diffuse is 1 - ambient, so a surface facing the light shows exactly its albedo.
AMBIENT_RANGE = (0.5, 0.7)
# Standard deviation of the random offset added to the unit camera direction to place the light.
LIGHT_DIRECTION_JITTER = 0.4


@dataclass
class Lighting:
    """direction (B, 3) unit vector from the surface towards the light; ambient, diffuse (B,)."""

    direction: Tensor
    ambient: Tensor
    diffuse: Tensor


def sample_lighting(cameras: Cameras, generator: torch.Generator,
                    ambient_range: tuple[float, float] = AMBIENT_RANGE,
                    jitter_std: float = LIGHT_DIRECTION_JITTER) -> Lighting:
    """One light per camera: the camera's direction from the origin plus a normal offset of
    standard deviation jitter_std, normalised; ambient uniform in ambient_range, diffuse 1 - ambient.

    The same random draws whatever the settings. They happen on the generator's device; the
    result is on the cameras' device.
    """
    count = len(cameras)
    jitter = torch.randn(count, 3, generator=generator, device=generator.device).to(cameras.device)
    ambient = ambient_range[0] + (ambient_range[1] - ambient_range[0]) * torch.rand(
        count, generator=generator, device=generator.device).to(cameras.device)
    towards_camera = torch.nn.functional.normalize(cameras.camera_positions, dim=-1)
    direction = torch.nn.functional.normalize(towards_camera + jitter_std * jitter, dim=-1)
    return Lighting(direction, ambient, 1.0 - ambient)


def shade(albedo: Tensor, normal: Tensor, mask: Tensor, lighting: Lighting | None, background: Tensor) -> Tensor:
    """(B, H, W, 3) image: albedo * (ambient + diffuse * max(0, n.l)) on the mask, background elsewhere.

    lighting None renders the albedo unlit; background is (B, 3) solid colours or (B, H, W, 3).
    Differentiable w.r.t. albedo (and background).
    """
    if lighting is None:
        lit = albedo
    else:
        direction = lighting.direction.to(normal.dtype)[:, None, None, :]
        cosine = (normal * direction).sum(dim=-1, keepdim=True).clamp_min(0.0)
        lit = albedo * (lighting.ambient[:, None, None, None] + lighting.diffuse[:, None, None, None] * cosine)
    if background.ndim == 2:
        background = background[:, None, None, :]
    return torch.where(mask[..., None], lit, background.to(lit.dtype).expand_as(lit))


def sample_backgrounds(n: int, generator: torch.Generator, device: torch.device | str) -> Tensor:
    """(n, 3) random solid colours in [0, 1], drawn on the generator's device and moved to `device`."""
    return torch.rand(n, 3, generator=generator, device=generator.device).to(device)
