"""Geometric measures of a generated mesh's shape, beside the judge's learned verdict.

sphericity: 1 for a ball, 0.806 for a cube. flat_share: the share of the area on big flat sides,
0 for a ball and 1 for a cube. Both read a closed trimesh (merge UV-seam vertices first).
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


def load_closed_mesh(path):
    """An exported GLB / OBJ as one trimesh with the vertices glTF splits at UV seams merged."""
    import trimesh

    mesh = trimesh.load(path, force="mesh")
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    return mesh
