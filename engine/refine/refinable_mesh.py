"""Stage 2's model: the extracted mesh with learnable vertex offsets and an albedo field on
its surface (the texture job's TextureField), rendered by rasterisation.

Gradients reach the vertices through the differentiable barycentrics: the surface point of
each pixel (where the albedo field is queried) and the interpolated normals (shading and
normal renders) are functions of the vertex positions. The outline moves only through
`antialias` (engine/render/antialias.py), applied to the finished image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..config import HashGridConfig
from ..field.texture_field import TextureField
from ..render.antialias import antialias, edges_and_neighbours
from ..render.cameras import Cameras
from ..render.gbuffer import GBuffer, render_gbuffer
from .losses import face_adjacency, laplacian_loss, normal_consistency


class RefinableMesh(torch.nn.Module):
    """positions = base + offsets, in the engine's unit box [-0.5, 0.5]^3."""

    def __init__(self, base_positions: np.ndarray, triangles: np.ndarray, hash_grid: HashGridConfig, seed: int = 0):
        super().__init__()
        self.register_buffer("base", torch.as_tensor(base_positions, dtype=torch.float32))
        self.register_buffer("triangles", torch.as_tensor(triangles, dtype=torch.long))
        edges, neighbours = edges_and_neighbours(self.triangles)
        # Derived from the triangles, so not in the saved state.
        self.register_buffer("edge_neighbours", neighbours, persistent=False)
        # Derived too, but saved: stage2.pt files written before carry them, and load strictly.
        self.register_buffer("adjacency", face_adjacency(self.edge_neighbours))
        self.register_buffer("edges", edges)
        self.offsets = torch.nn.Parameter(torch.zeros_like(self.base))
        self.texture = TextureField(hash_grid, seed=seed)

    def positions(self) -> Tensor:
        return self.base + self.offsets

    def antialias(self, image: Tensor, view: GBuffer) -> Tensor:
        """`image` (B, H, W, C), rendered from `view` of this mesh, with gradients at its silhouettes."""
        return antialias(image, view, self.edge_neighbours)

    def render(self, cameras: Cameras, size: int) -> tuple[GBuffer, Tensor]:
        """G-buffers of the current surface and its albedo (B, H, W, 3) (zero off the mask)."""
        view = render_gbuffer(self.positions(), self.triangles, cameras, size)
        albedo = torch.zeros(*view.mask.shape, 3, device=view.position.device)
        albedo = albedo.index_put(torch.nonzero(view.mask, as_tuple=True), self.texture(view.position[view.mask]))
        return view, albedo

    def normal_consistency(self, form: str = "cosine") -> Tensor:
        return normal_consistency(self.positions(), self.triangles, self.adjacency, form)

    def mean_edge_length(self) -> float:
        """Of the base mesh, in unit-box units."""
        if self.edges.numel() == 0:
            return 0.0
        return float((self.base[self.edges[:, 0]] - self.base[self.edges[:, 1]]).norm(dim=-1).mean())

    def laplacian(self) -> Tensor:
        return laplacian_loss(self.positions(), self.edges)
