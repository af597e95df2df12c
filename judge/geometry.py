"""Geometric measures of a generated mesh's shape, beside the judge's learned verdict.

sphericity: 1 for a ball, 0.806 for a cube. flat_share: the share of the area on big flat sides,
0 for a ball and 1 for a cube. taper: the bottom's cross-section over the top's, 1 for a cube and
a ball. All read a closed trimesh (merge UV-seam vertices first).
"""

from __future__ import annotations

import numpy as np


def sphericity(mesh) -> float:
    """pi^(1/3) (6 V)^(2/3) / A: the area of the ball of the same volume over the mesh's area."""
    return float(np.pi ** (1 / 3) * (6 * abs(mesh.volume)) ** (2 / 3) / mesh.area)


def flat_share(mesh, tolerance_deg: float = 15.0, min_side_share: float = 0.08) -> float:
    """The area share of faces whose normal agrees within `tolerance_deg` with normals covering at
    least `min_side_share` of the area (a ball's 15-degree cap is 1.7% of it, a cube's side 16.7%)."""
    normals, areas = mesh.face_normals, mesh.area_faces / mesh.area
    agreeing = ((normals @ normals.T) > np.cos(np.radians(tolerance_deg))).astype(np.float32) @ areas
    return float(areas[agreeing > min_side_share].sum())


def taper(mesh, up_axis: int = 1) -> float:
    """The area of the convex hull of surface points at 10-20% of the height over that at 80-90%
    (up along `up_axis`: 1 for glTF's Y-up): below 1 for a shape narrowing towards its bottom."""
    import trimesh
    from scipy.spatial import ConvexHull

    points, _ = trimesh.sample.sample_surface(mesh, 20_000, seed=0)
    height = points[:, up_axis]
    across = np.delete(points, up_axis, axis=1)
    level = (height - height.min()) / max(float(np.ptp(height)), 1e-12)

    def section_area(low: float, high: float) -> float:
        ring = across[(level >= low) & (level <= high)]
        return float(ConvexHull(ring).volume) if len(ring) > 3 else 0.0  # a 2-D hull's volume is its area

    return section_area(0.1, 0.2) / max(section_area(0.8, 0.9), 1e-12)


def load_closed_mesh(path):
    """An exported GLB / OBJ as one trimesh with the vertices glTF splits at UV seams merged."""
    import trimesh

    mesh = trimesh.load(path, force="mesh")
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    return mesh
