"""Bake a region job's maps: the kept maps texel for texel outside the region, and inside it the field
blended with them by the region's weights (engine/pipelines/kit/regions.py).

A texel belongs to the face whose UV triangle covers its centre (as in bake_texture). The region's
texels are those of its faces, plus the padding texels whose nearest covered texel is one of
them: bake_texture's seam padding, so that filtering at the region's UV edges mixes only its own
values. Every other texel, covered or padding, is the kept map's, bit for bit.
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
from .bake import QUERY_CHUNK, BakeResult, FieldQuery

# The blend weight (N,) of surface points (N, 3) on faces (N,).
BlendWeights = Callable[[Tensor, Tensor], Tensor]


@dataclass
class RegionTexels:
    """The texels a region job bakes, found once (a preview and the final bake reuse them)."""

    kept: np.ndarray  # (H, W, C) uint8: the kept maps, one channel per field output
    covered: np.ndarray  # (H, W) bool: texels inside some UV triangle
    rows: np.ndarray  # (N,) the region's covered texels
    columns: np.ndarray
    points: Tensor  # (N, 3) their surface points (unit box)
    weights: Tensor  # (N, 1) the field's share of each
    padding: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # padding texels (rows, columns) and their source


def region_texels(mesh_unit: TriangleMesh, faces: np.ndarray, kept: np.ndarray, weights: BlendWeights,
                  device: torch.device | str = "cpu") -> RegionTexels:
    """The texels of the region's `faces` (F,) bool in a texture laid out like `kept` (H, W, C) uint8."""
    if mesh_unit.corner_uvs is None:
        raise ValueError("region_texels needs a mesh with corner_uvs")
    device = torch.device(device)
    height, width = kept.shape[:2]
    positions = torch.as_tensor(mesh_unit.positions, dtype=torch.float32, device=device)
    triangles = torch.as_tensor(mesh_unit.triangles, dtype=torch.long, device=device)
    with torch.no_grad():
        rast = rasterize_uv(torch.as_tensor(mesh_unit.corner_uvs, dtype=torch.float32, device=device), height, width)
        triangle_id = rast.triangle_id[0]
        covered = rast.mask[0]
        surface = interpolate(positions, rast, triangles)[0]
    covered_np = covered.cpu().numpy()
    triangle_np = triangle_id.cpu().numpy()
    in_region = covered_np & np.asarray(faces)[np.clip(triangle_np, 0, None)]
    if not in_region.any():
        raise BadInputError(f"The region's faces cover no texel of the {width} x {height} texture kept outside it.",
                            "Select larger faces, or keep a larger texture.")
    rows, columns = np.nonzero(in_region)
    rows_t, columns_t = torch.from_numpy(rows).to(device), torch.from_numpy(columns).to(device)
    points = surface[rows_t, columns_t]
    texel_weights = weights(points, triangle_id[rows_t, columns_t]).to(device).reshape(-1, 1)
    nearest = ndimage.distance_transform_edt(~covered_np, return_distances=False, return_indices=True)
    source_rows, source_columns = nearest[0], nearest[1]
    from_region = ~covered_np & in_region[source_rows, source_columns]
    padding = (*np.nonzero(from_region), source_rows[from_region], source_columns[from_region])
    return RegionTexels(kept, covered_np, rows, columns, points, texel_weights, padding)


def bake_region(texels: RegionTexels, query: FieldQuery, cancel: CancelToken | None = None) -> BakeResult:
    """The kept maps with the region's texels blended: weight * field + (1 - weight) * kept, then
    the region's padding texels copied from their nearest region texel."""
    values = []
    with torch.no_grad():
        for chunk in texels.points.split(QUERY_CHUNK):
            if cancel is not None:
                cancel.check()
            values.append(query(chunk).float().clamp(0.0, 1.0))
        field = torch.cat(values)
        kept = torch.from_numpy(texels.kept[texels.rows, texels.columns]).to(field.device).float() / 255.0
        mixed = (texels.weights * field + (1.0 - texels.weights) * kept).cpu().numpy()
    blended = to_uint8(mixed)
    # Where the field has no share, the kept texel as it was (no round trip through floats).
    untouched = (texels.weights[:, 0] <= 0).cpu().numpy()
    blended[untouched] = texels.kept[texels.rows[untouched], texels.columns[untouched]]
    image = texels.kept.copy()
    image[texels.rows, texels.columns] = blended
    pad_rows, pad_columns, source_rows, source_columns = texels.padding
    image[pad_rows, pad_columns] = image[source_rows, source_columns]
    return BakeResult(image, texels.covered)
