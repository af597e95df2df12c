"""Points spread uniformly over a mesh's surface, with their UVs: for fitting a field to colours."""

from __future__ import annotations

import torch

from .types import TriangleMesh


def sample_surface(mesh: TriangleMesh, count: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`count` points uniform over the surface by area: positions (N, 3) and UVs (N, 2) (None without UVs)."""
    positions = torch.as_tensor(mesh.positions, dtype=torch.float64)
    triangles = torch.as_tensor(mesh.triangles, dtype=torch.long)
    corners = positions[triangles]  # (F, 3, 3)
    areas = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]).norm(dim=-1)
    face = torch.multinomial(areas / areas.sum(), count, replacement=True, generator=generator)
    u, v = torch.rand(2, count, generator=generator, dtype=torch.float64)
    root = u.sqrt()  # uniform barycentrics: (1 - sqrt(u), sqrt(u)(1 - v), sqrt(u) v)
    weights = torch.stack([1.0 - root, root * (1.0 - v), root * v], dim=-1)[:, :, None]
    points = (corners[face] * weights).sum(dim=1)
    if mesh.corner_uvs is None:
        return points.float(), None
    uvs = (torch.as_tensor(mesh.corner_uvs, dtype=torch.float64)[face] * weights).sum(dim=1)
    return points.float(), uvs.float()
