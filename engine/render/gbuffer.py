"""Geometry buffers: per-pixel surface position, normal and depth of a mesh seen by cameras.

The texture field is queried at the G-buffer's positions; the normals shade the albedo and,
as images, feed ControlNet (canny edges of the normal map) and previews; the depth image
feeds the depth ControlNet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cameras import Cameras, world_to_clip
from .rasterize import Rasterized, interpolate, rasterize

# Depth images map the object's far side to this value rather than 0, so that it stays
# distinguishable from the background (0), as in MiDaS-style ControlNet depth maps.
DEPTH_IMAGE_FAR_VALUE = 0.2


@dataclass
class GBuffer:
    """position (B, H, W, 3) in the unit box; normal (B, H, W, 3) unit world-space shading normal
    facing the camera; depth (B, H, W) view depth (0 where empty); mask (B, H, W) bool;
    triangle_id (B, H, W) int64 (-1 where empty); cameras the views they were rendered from;
    clip (B, V, 4) the corners' clip positions, triangles (F, 3) and, from nvdiffrast, its raster
    output: for `antialias`.
    """

    position: Tensor
    normal: Tensor
    depth: Tensor
    mask: Tensor
    triangle_id: Tensor
    cameras: Cameras
    clip: Tensor | None = None
    triangles: Tensor | None = None
    nvdiffrast_raster: Tensor | None = None

    def normal_image(self) -> Tensor:
        """(B, H, W, 3) camera-space normals mapped to [0, 1] RGB (x right, y up, z towards the
        camera, so surfaces facing the camera are blue); background 0."""
        world_to_camera_rotation = self.cameras.c2w[:, :3, :3].transpose(1, 2).to(self.normal.dtype)
        camera_normal = torch.einsum("bij,bhwj->bhwi", world_to_camera_rotation, self.normal)
        return (camera_normal * 0.5 + 0.5) * self.mask[..., None]

    def depth_image(self) -> Tensor:
        """(B, H, W, 1) depth map in [0, 1] like ControlNet's: near is bright, the object spans
        [DEPTH_IMAGE_FAR_VALUE, 1] in inverse depth per view, background 0."""
        inverse = torch.where(self.mask, 1.0 / self.depth.clamp_min(1e-8), torch.zeros_like(self.depth))
        nearest = inverse.flatten(1).max(dim=1).values
        farthest = torch.where(self.mask, inverse, torch.full_like(inverse, torch.inf)).flatten(1).min(dim=1).values
        span = (nearest - farthest).clamp_min(1e-8)
        relative = (inverse - farthest[:, None, None]) / span[:, None, None]
        image = DEPTH_IMAGE_FAR_VALUE + (1.0 - DEPTH_IMAGE_FAR_VALUE) * relative
        return torch.where(self.mask, image.clamp(0.0, 1.0), torch.zeros_like(image))[..., None]


def face_normals(positions: Tensor, triangles: Tensor) -> Tensor:
    """(F, 3) unnormalised face normals (length = twice the area), right-handed winding."""
    corners = positions[triangles]
    return torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])


def vertex_normals(positions: Tensor, triangles: Tensor) -> Tensor:
    """(V, 3) unit area-weighted vertex normals.

    Vertices at the same position (meshes split along UV seams) share one normal, so shading
    has no seams there.
    """
    unique_positions, welded = torch.unique(positions, dim=0, return_inverse=True)
    sums = torch.zeros_like(unique_positions)
    area_normals = face_normals(positions, triangles)
    sums.index_add_(0, welded[triangles].reshape(-1), area_normals.repeat_interleave(3, dim=0))
    return torch.nn.functional.normalize(sums[welded], dim=-1)


def render_gbuffer(positions: Tensor, triangles: Tensor, cameras: Cameras, size: int, backend: str = "auto",
                   smooth_normals: bool = True) -> GBuffer:
    """Rasterize the mesh ((V, 3) unit-box positions, (F, 3) triangles) into size x size G-buffers.

    Normals are flipped per face to face the camera (meshes are rendered two-sided); with
    smooth_normals the area-weighted vertex normals are interpolated, else face normals are used.
    """
    device = positions.device
    triangles = triangles.to(device=device, dtype=torch.long)
    cameras = cameras.to(device)
    homogeneous = torch.cat([positions, torch.ones_like(positions[:, :1])], dim=-1)
    clip = torch.einsum("bij,vj->bvi", world_to_clip(cameras).to(positions.dtype), homogeneous)
    rast: Rasterized = rasterize(clip, triangles, size, size, backend)
    mask = rast.mask
    position = interpolate(positions, rast, triangles)

    flat_normals = torch.nn.functional.normalize(face_normals(positions, triangles), dim=-1)
    # A per-corner attribute that is the same at all three corners interpolates to itself.
    pixel_face_normal = torch.nn.functional.normalize(
        interpolate(flat_normals[:, None, :].expand(-1, 3, -1), rast, triangles, per_corner=True), dim=-1)
    to_camera = cameras.camera_positions[:, None, None, :].to(positions.dtype) - position
    facing = torch.where((pixel_face_normal * to_camera).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    normal = pixel_face_normal
    if smooth_normals:
        smooth = interpolate(vertex_normals(positions, triangles), rast, triangles)
        length = smooth.norm(dim=-1, keepdim=True)
        # Where neighbouring normals cancel out (e.g. thin two-sided sheets), keep the face normal.
        normal = torch.where(length > 1e-6, smooth / length.clamp_min(1e-6), pixel_face_normal)
    normal = normal * facing * mask[..., None]
    return GBuffer(position, normal, rast.depth, mask, rast.triangle_id, cameras, clip, triangles,
                   rast.nvdiffrast_raster)
