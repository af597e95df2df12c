"""Geometry buffers: per-pixel surface position, normal and depth of a mesh seen by cameras.

The texture field is queried at the G-buffer's positions; the normals shade the albedo and,
as images, feed ControlNet (canny edges of the normal map) and previews; the depth image
feeds the depth ControlNet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
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

    def normal_image(self, normal: Tensor | None = None) -> Tensor:
        """(B, H, W, 3) camera-space normals (default: the shading normals) mapped to [0, 1] RGB
        (x right, y up, z towards the camera, so surfaces facing the camera are blue); background 0."""
        normal = self.normal if normal is None else normal
        world_to_camera_rotation = self.cameras.c2w[:, :3, :3].transpose(1, 2).to(normal.dtype)
        camera_normal = torch.einsum("bij,bhwj->bhwi", world_to_camera_rotation, normal)
        return (camera_normal * 0.5 + 0.5) * self.mask[..., None]

    def corner_normal_map(self, positions: Tensor, triangles: Tensor, corner_normals: Tensor) -> Tensor:
        """(B, H, W, 3) unit normals interpolated from per-corner normals (F, 3, 3), facing the camera.

        The barycentrics are recovered from the surface position, which lies on its triangle, so
        no second rasterisation is needed."""
        face = self.triangle_id.clamp_min(0)
        corners = positions[triangles.to(positions.device, torch.long)[face]]  # (B, H, W, 3 corners, 3)
        a, b, c = corners.unbind(dim=-2)
        e1, e2, p = b - a, c - a, self.position.to(a.dtype) - a
        d11, d12, d22 = (e1 * e1).sum(-1), (e1 * e2).sum(-1), (e2 * e2).sum(-1)
        p1, p2 = (p * e1).sum(-1), (p * e2).sum(-1)
        denominator = (d11 * d22 - d12 * d12).clamp_min(1e-20)
        w1, w2 = (d22 * p1 - d12 * p2) / denominator, (d11 * p2 - d12 * p1) / denominator
        weights = torch.stack([1.0 - w1 - w2, w1, w2], dim=-1)[..., None]
        normal = torch.nn.functional.normalize((weights * corner_normals[face]).sum(dim=-2), dim=-1)
        to_camera = self.cameras.camera_positions[:, None, None, :].to(a.dtype) - self.position.to(a.dtype)
        facing = torch.where((torch.linalg.cross(e1, e2) * to_camera).sum(-1, keepdim=True) < 0, -1.0, 1.0)
        return normal * facing * self.mask[..., None]

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


def crease_corner_normals(positions: Tensor, triangles: Tensor, crease_deg: float) -> Tensor:
    """(F, 3, 3) unit per-corner normals that are smooth across edges flatter than crease_deg and
    sharp across the others, as Blender's "smooth by angle": the corners around a vertex fall into
    fans split at sharp edges, and each fan shares the area-weighted normal of its faces.
    Vertices at the same position count as one, so a welded cube and one split along UV seams
    get the same sharp edges."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _, welded = torch.unique(positions, dim=0, return_inverse=True)
    area_normals = face_normals(positions, triangles)
    unit = torch.nn.functional.normalize(area_normals, dim=-1).cpu().numpy()
    corner_vertex = welded[triangles].cpu().numpy()  # (F, 3)
    face_count = corner_vertex.shape[0]
    # Each face edge (corner k to corner k+1) keyed by its two welded vertices, in sorted order.
    faces = np.repeat(np.arange(face_count), 3)
    first = np.tile(np.arange(3), face_count)
    second = (first + 1) % 3
    a, b = corner_vertex[faces, first], corner_vertex[faces, second]
    keys = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    same_edge = np.all(keys[order[1:]] == keys[order[:-1]], axis=1)
    left, right = order[:-1][same_edge], order[1:][same_edge]  # face edges that meet (chained if > 2)
    smooth = (unit[faces[left]] * unit[faces[right]]).sum(-1) >= math.cos(math.radians(crease_deg))
    left, right = left[smooth], right[smooth]
    # Across a smooth edge, the corners at each of its two vertices belong to one fan.
    corner = faces * 3  # corner index of (face, k) is 3 * face + k
    links = []
    for end_left, end_right in ((first, second), (second, first)):
        vertex = corner_vertex[faces[left], end_left[left]]
        right_k = np.where(corner_vertex[faces[right], first[right]] == vertex, first[right], second[right])
        links.append((corner[left] + end_left[left], corner[right] + right_k))
    rows = np.concatenate([link[0] for link in links])
    cols = np.concatenate([link[1] for link in links])
    graph = coo_matrix((np.ones(rows.shape[0]), (rows, cols)), shape=(3 * face_count, 3 * face_count))
    _, fan = connected_components(graph, directed=False)
    fan = torch.from_numpy(fan).to(positions.device)
    sums = torch.zeros(int(fan.max()) + 1, 3, dtype=positions.dtype, device=positions.device)
    sums.index_add_(0, fan, area_normals.repeat_interleave(3, dim=0))
    return torch.nn.functional.normalize(sums[fan], dim=-1).reshape(-1, 3, 3)


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
