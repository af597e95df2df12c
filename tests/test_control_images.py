"""The ControlNet conditions of the texture job's views: canny on a normal map that keeps creases."""

from __future__ import annotations

import torch
import trimesh
from scipy import ndimage

from engine.pipelines.views import ViewPool
from engine.render.cameras import orbit_cameras
from engine.render.gbuffer import crease_corner_normals, face_normals, vertex_normals


def welded_cube() -> tuple[torch.Tensor, torch.Tensor]:
    box = trimesh.creation.box((1.0, 1.0, 1.0))  # 8 shared vertices: smooth normals round every edge
    return torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces, dtype=torch.long)


def sphere(subdivisions: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    # At 1: 80 faces, neighbours at most 22.5 degrees apart, so face normals would show the facets.
    ball = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.5)
    return torch.tensor(ball.vertices, dtype=torch.float32), torch.tensor(ball.faces, dtype=torch.long)


def interior_edge_pixels(positions: torch.Tensor, triangles: torch.Tensor) -> int:
    """Canny pixels well inside the object's silhouette, seen from above a corner."""
    cameras = orbit_cameras(30.0, 45.0, 3.0, 40.0)
    pool = ViewPool(positions, triangles, cameras, 128, with_control=True)
    view, control = pool.get(0)
    inside = ndimage.binary_erosion(view.mask[0].numpy(), iterations=6)
    return int((control["canny"][0, 0].numpy() > 0)[inside].sum())


def test_crease_normals_are_face_normals_on_a_cube_and_smooth_on_a_sphere() -> None:
    positions, triangles = welded_cube()
    corners = crease_corner_normals(positions, triangles, 30.0)
    flat = torch.nn.functional.normalize(face_normals(positions, triangles), dim=-1)
    assert torch.allclose(corners, flat[:, None, :].expand(-1, 3, -1), atol=1e-6)

    positions, triangles = sphere(subdivisions=3)
    corners = crease_corner_normals(positions, triangles, 30.0)
    assert torch.allclose(corners, vertex_normals(positions, triangles)[triangles], atol=1e-5)


def test_canny_sees_a_welded_cubes_inner_edges_but_no_sphere_facets() -> None:
    # Three faces of the cube are in view; the two creases between them run through the middle
    # of the silhouette. Smoothed vertex normals would blend them away; face normals everywhere
    # would draw the sphere's facets.
    assert interior_edge_pixels(*welded_cube()) > 60
    assert interior_edge_pixels(*sphere()) == 0


def test_canny_finds_steps_but_blurs_away_speckle() -> None:
    # A step of 80 grey levels between two halves is an edge; single pixels of the same height
    # are rasterisation noise, which the 5 x 5 blur before thresholding removes.
    from engine.pipelines.views import canny_edges

    image = torch.zeros(1, 64, 64, 3)
    image[:, :, 32:] = 80 / 255
    assert canny_edges(image).sum() > 0
    speckle = torch.zeros(1, 64, 64, 3)
    speckle[:, ::8, ::8] = 80 / 255
    assert canny_edges(speckle).sum() == 0
