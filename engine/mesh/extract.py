"""Density field -> a clean triangle mesh placed in Blender's world.

Used between the generate job's two stages (NeRF -> mesh refinement):
  1. sample the density on a regular grid over the NeRF's box (chunked, no autograd);
  2. optionally, a grey-scale morphological opening of the density (scipy.ndimage): parts
     thinner than about twice `opening_radius` (stalks, flaps) fade out of the field;
  3. marching cubes at the isosurface threshold (scikit-image), the grid padded with empty
     cells so every surface closes (watertight where the density allows it);
  4. drop floaters: keep the largest connected piece and every piece with at least
     `min_component_fraction` of its area;
  5. quadric decimation to a target triangle count (fast-simplification), without the
     zero-volume fins its edge collapses can leave (they break watertightness);
  6. outward winding (positive signed volume).

`placement` maps the NeRF frame to the world the asset is exported in: ground plane at
z = 0 under the object, centred on the origin in x and y, the largest side `size` metres.
The NeRF frame is already Blender's (Z up, front towards -Y: the generate job treats the
camera at azimuth -90 degrees, on -Y, as the front view), so placement never rotates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from ..errors import EngineError
from .types import TriangleMesh

DensityFn = Callable[[torch.Tensor], torch.Tensor]  # (N, 3) points -> (N,) density


@dataclass
class ExtractionReport:
    threshold: float
    grid_max: float
    raw_triangles: int
    components: int
    kept_components: int
    triangles: int
    watertight: bool
    warnings: list[str]


@dataclass
class Placement:
    """world = (nerf - center) * scale + offset, with no rotation (see module docstring)."""

    center: np.ndarray  # (3,) in the NeRF frame
    scale: float
    offset: np.ndarray  # (3,) in the world

    def apply(self, positions: np.ndarray) -> np.ndarray:
        return ((np.asarray(positions, np.float64) - self.center) * self.scale + self.offset).astype(np.float32)

    def invert(self, positions: np.ndarray) -> np.ndarray:
        return ((np.asarray(positions, np.float64) - self.offset) / self.scale + self.center).astype(np.float32)

    def to_dict(self) -> dict:
        return {"center": [float(v) for v in self.center], "scale": float(self.scale),
                "offset": [float(v) for v in self.offset]}

    @staticmethod
    def from_dict(data: dict) -> "Placement":
        return Placement(np.asarray(data["center"], np.float64), float(data["scale"]),
                         np.asarray(data["offset"], np.float64))


@torch.no_grad()
def sample_density_grid(density: DensityFn, bound: float, resolution: int, device: torch.device,
                        chunk: int = 1 << 18) -> np.ndarray:
    """(R, R, R) float32 densities at the cell corners of [-bound, bound]^3, indexed [x, y, z]."""
    axis = torch.linspace(-bound, bound, resolution, device=device)
    out = np.empty(resolution ** 3, dtype=np.float32)
    # One x-slab at a time keeps the point tensor small at 512^3.
    yz = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    slabs = max(1, chunk // yz.shape[0])
    for start in range(0, resolution, slabs):
        xs = axis[start:start + slabs]
        points = torch.cat([xs.repeat_interleave(yz.shape[0])[:, None], yz.repeat(xs.shape[0], 1)], dim=1)
        values = density(points).float().reshape(-1).cpu().numpy()
        out[start * yz.shape[0]:(start + xs.shape[0]) * yz.shape[0]] = values
    return out.reshape(resolution, resolution, resolution)


def marching_cubes(grid: np.ndarray, bound: float, level: float) -> TriangleMesh:
    """Isosurface of `grid` (values on [-bound, bound]^3 corners) where it crosses `level`.

    The grid is padded by one empty cell on every side so surfaces touching the box close.
    """
    from skimage.measure import marching_cubes as skimage_marching_cubes

    resolution = grid.shape[0]
    spacing = 2.0 * bound / (resolution - 1)
    padded = np.pad(grid, 1, mode="constant", constant_values=min(float(grid.min()), level - 1.0))
    vertices, faces, _normals, _values = skimage_marching_cubes(padded, level=level, spacing=(spacing,) * 3,
                                                                allow_degenerate=False)
    vertices = vertices - spacing - bound  # undo the padding and move to [-bound, bound]
    return TriangleMesh(vertices.astype(np.float32), faces.astype(np.int64))


def remove_floaters(mesh: TriangleMesh, min_component_fraction: float) -> tuple[TriangleMesh, int, int]:
    """Keep the largest connected piece (by area) and pieces with >= that fraction of its area.

    Returns (mesh, number of pieces, number kept). Unused vertices are dropped.
    """
    tm = trimesh.Trimesh(mesh.positions, mesh.triangles, process=False)
    labels = trimesh.graph.connected_component_labels(tm.face_adjacency, node_count=len(tm.faces))
    count = int(labels.max()) + 1 if labels.size else 0
    if count <= 1:
        return _compact(mesh.positions, mesh.triangles), count, count
    areas = np.bincount(labels, weights=tm.area_faces, minlength=count)
    keep_labels = np.nonzero(areas >= min_component_fraction * areas.max())[0]
    keep_faces = np.isin(labels, keep_labels)
    return _compact(mesh.positions, mesh.triangles[keep_faces]), count, int(keep_labels.size)


def decimate(mesh: TriangleMesh, target_triangles: int) -> TriangleMesh:
    """Quadric edge-collapse decimation to about `target_triangles` (no-op when already below)."""
    if mesh.num_triangles <= target_triangles:
        return mesh
    import fast_simplification

    points, faces = fast_simplification.simplify(np.asarray(mesh.positions, np.float32),
                                                  np.asarray(mesh.triangles, np.int64),
                                                  target_count=int(target_triangles))
    return _compact(points.astype(np.float32), drop_fins(faces.astype(np.int64)))


def drop_fins(triangles: np.ndarray) -> np.ndarray:
    """Without the faces that repeat another's three vertices (and without collapsed faces).

    Edge collapses can leave a fin: a face and its reversed twin, zero volume, glued to the
    surface along an edge that then has four faces, so a closed mesh stops being watertight.
    Both faces of the pair go; the surface around them is already closed.
    """
    triangles = triangles[(triangles[:, 0] != triangles[:, 1]) & (triangles[:, 1] != triangles[:, 2])
                          & (triangles[:, 2] != triangles[:, 0])]
    _, inverse, counts = np.unique(np.sort(triangles, axis=1), axis=0, return_inverse=True, return_counts=True)
    return triangles[counts[inverse.reshape(-1)] == 1]


def orient_outward(mesh: TriangleMesh) -> TriangleMesh:
    """Flip the winding if the signed volume is negative (marching cubes' winding is global)."""
    corners = mesh.positions.astype(np.float64)[mesh.triangles]
    signed_volume = np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6.0
    if signed_volume < 0:
        return TriangleMesh(mesh.positions, mesh.triangles[:, ::-1].copy(), mesh.corner_uvs)
    return mesh


def extract_mesh(density: DensityFn, bound: float, resolution: int, threshold: float, target_triangles: int,
                 min_component_fraction: float, device: torch.device, opening_radius: float = 0.0
                 ) -> tuple[TriangleMesh, ExtractionReport]:
    """The density field's isosurface as a clean mesh in the NeRF frame. opening_radius is in the
    NeRF frame's units (0: no opening)."""
    grid = sample_density_grid(density, bound, resolution, device)
    cells = int(round(opening_radius * (resolution - 1) / (2.0 * bound)))
    if cells > 0:
        grid = open_density(grid, cells)
    return mesh_from_grid(grid, bound, threshold, target_triangles, min_component_fraction)


def open_density(grid: np.ndarray, radius_cells: int) -> np.ndarray:
    """Grey-scale opening (erosion, then dilation) with a ball of `radius_cells`: every value becomes
    the largest minimum over the balls that contain it, so a part any ball of that radius cannot fit
    in loses its density, and the rest keeps its values."""
    from scipy import ndimage

    axis = np.arange(-radius_cells, radius_cells + 1)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    return ndimage.grey_opening(grid, footprint=x * x + y * y + z * z <= radius_cells * radius_cells)


def mesh_from_grid(grid: np.ndarray, bound: float, threshold: float, target_triangles: int,
                   min_component_fraction: float) -> tuple[TriangleMesh, ExtractionReport]:
    warnings: list[str] = []
    if not np.isfinite(grid).all():
        raise EngineError("The density field contains NaN or infinite values; the NeRF stage diverged.",
                          "Run again with another --seed, or fewer --steps1.")
    grid_max = float(grid.max())
    level = threshold
    if grid_max <= threshold:
        # A short or failed NeRF run may never reach the threshold; take the densest part instead.
        level = 0.5 * grid_max
        warnings.append(f"The density never reaches the isosurface threshold {threshold:g} (max {grid_max:.3g}); "
                        f"extracting at {level:.3g} instead.")
    if level <= float(grid.min()):
        raise EngineError("The NeRF stage produced no object (the density is empty).",
                          "Run stage 1 longer (--steps1), or try another --seed or prompt.")
    raw = marching_cubes(grid, bound, level)
    cleaned, components, kept = remove_floaters(raw, min_component_fraction)
    if kept < components:
        warnings.append(f"Removed {components - kept} floating piece(s) of {components}.")
    cleaned = orient_outward(decimate(cleaned, target_triangles))
    watertight = bool(trimesh.Trimesh(cleaned.positions, cleaned.triangles, process=False).is_watertight)
    report = ExtractionReport(threshold=float(level), grid_max=grid_max, raw_triangles=raw.num_triangles,
                              components=components, kept_components=kept, triangles=cleaned.num_triangles,
                              watertight=watertight, warnings=warnings)
    return cleaned, report


def fit_placement(positions: np.ndarray, size: float) -> Placement:
    """Ground at z = 0, centred on the origin in x and y, the largest side `size` long."""
    lo, hi = positions.min(axis=0).astype(np.float64), positions.max(axis=0).astype(np.float64)
    extent = float((hi - lo).max())
    scale = size / extent if extent > 0 else 1.0
    center = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    return Placement(center, scale, np.zeros(3))


def _compact(positions: np.ndarray, triangles: np.ndarray) -> TriangleMesh:
    """Drop vertices no triangle uses, renumbering the triangles."""
    used, inverse = np.unique(triangles.reshape(-1), return_inverse=True)
    return TriangleMesh(np.asarray(positions, np.float32)[used], inverse.reshape(-1, 3).astype(np.int64))
