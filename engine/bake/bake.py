"""Bake a field (colour, or colour and material) into a UV texture, then pad every texel outside
the UV islands.

Each texel inside a UV triangle gets the field's values at the surface point it maps to.
Every other texel takes the values of the nearest covered texel, so the texture has no
background colour anywhere: bilinear filtering across an island's edge and every mip level
only ever mix values of the surface itself, and UV seams stay invisible. All channels are
padded alike, so maps split from one bake (engine/bake/maps.py) line up texel for texel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from ..errors import BadInputError
from ..files import to_uint8
from ..job.progress import CancelToken
from ..mesh.types import TriangleMesh
from ..render.rasterize import interpolate, rasterize_uv

# Surface points sent to the field at once: bounds memory on small GPUs and CPUs.
QUERY_CHUNK = 1 << 18

FieldQuery = Callable[[Tensor], Tensor]


@dataclass
class BakeResult:
    """image: (size, size, C) uint8, one channel per field output, row 0 is v = 1.
    covered: (size, size) bool, texels inside UV triangles (the rest are padding)."""

    image: np.ndarray
    covered: np.ndarray

    @property
    def coverage(self) -> float:
        """Fraction of the texture's texels inside UV triangles."""
        return float(self.covered.mean())


def bake_texture(mesh_unit: TriangleMesh, query: FieldQuery, size: int,
                 device: torch.device | str = "cpu", supersample: int = 1,
                 cancel: CancelToken | None = None) -> BakeResult:
    """Bake `query` ((N, 3) unit-box points -> (N, C) values in [0, 1]) into a size x size texture.

    With supersample s, s x s samples per texel are averaged over the part of the texel that a
    triangle covers, which anti-aliases the field and fills texels an island only partly covers.
    `cancel` is checked between chunks of field queries (a large texture takes seconds of them).
    """
    if mesh_unit.corner_uvs is None:
        raise ValueError("bake_texture needs a mesh with corner_uvs (run ensure_uvs first)")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    device = torch.device(device)
    samples = size * supersample
    positions = torch.as_tensor(mesh_unit.positions, dtype=torch.float32, device=device)
    triangles = torch.as_tensor(mesh_unit.triangles, dtype=torch.long, device=device)
    corner_uvs = torch.as_tensor(mesh_unit.corner_uvs, dtype=torch.float32, device=device)
    with torch.no_grad():
        rast = rasterize_uv(corner_uvs, samples, samples)
        sample_covered = rast.mask[0]
        points = interpolate(positions, rast, triangles)[0][sample_covered]
        values = torch.cat([_query_chunk(query, chunk, cancel)
                            for chunk in points.split(QUERY_CHUNK)]).clamp(0.0, 1.0)
        channels = values.shape[1]
        sample_values = torch.zeros(samples, samples, channels, dtype=torch.float32, device=device)
        sample_values[sample_covered] = values
        # Box-filter each texel's covered samples; a texel is covered if any of its samples is.
        sums = sample_values.reshape(size, supersample, size, supersample, channels).sum(dim=(1, 3))
        counts = sample_covered.reshape(size, supersample, size, supersample).sum(dim=(1, 3))
        covered = counts > 0
        image = sums / counts.clamp_min(1)[..., None]
    covered_np = covered.cpu().numpy()
    if not covered_np.any():
        raise BadInputError(f"The UV layout covers no texel of a {size} x {size} texture.",
                            "Re-unwrap the mesh (--reunwrap) or use a larger texture size.")
    padded = pad_texture(image.cpu().numpy(), covered_np)
    return BakeResult(to_uint8(padded), covered_np)


def _query_chunk(query: FieldQuery, points: Tensor, cancel: CancelToken | None) -> Tensor:
    if cancel is not None:
        cancel.check()
    return query(points).float()


def pad_texture(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every texel where `covered` is False gets the values of the nearest covered texel.

    image: (H, W, C); covered: (H, W) bool. Returned unchanged if no texel is covered.
    """
    if covered.all() or not covered.any():
        return image.copy()
    # Euclidean distance transform of the empty texels, keeping for each the index of the
    # nearest zero, i.e. the nearest covered texel.
    nearest = ndimage.distance_transform_edt(~covered, return_distances=False, return_indices=True)
    return image[nearest[0], nearest[1]]
