"""Geometry-only renders of the generate job (paper A.4: half of the renders show the shape alone):
stage 1's shaded surface and stage 2's camera-space normal map, on a ball seen from the front."""

from __future__ import annotations

import torch
import trimesh

from engine.nerf.renderer import GEOMETRY_ALBEDO, render_nerf, shade_geometry
from engine.pipelines.generate import build_nerf
from engine.pipelines.kit.refinement import render_mesh_geometry
from engine.config import GenerateJobConfig, NerfStageConfig
from engine.render.cameras import orbit_cameras
from engine.render.gbuffer import render_gbuffer
from engine.render.shading import sample_lighting

SIZE = 48
BACKGROUND = torch.tensor([[1.0, 0.0, 1.0]])  # magenta: no normal map pixel is this colour


def front_camera():
    return orbit_cameras(0.0, -90.0, 2.0, 40.0)


def ball_view():
    ball = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    positions = torch.tensor(ball.vertices, dtype=torch.float32)
    triangles = torch.tensor(ball.faces, dtype=torch.long)
    return render_gbuffer(positions, triangles, front_camera(), SIZE, backend="torch")


def test_the_paper_recipe_uses_shaded_renders_in_stage_1_and_normal_maps_in_stage_2():
    config = GenerateJobConfig(prompt="a toad", out="unused")
    assert (config.stage1.geometry_render, config.stage1.geometry_render_prob) == ("shaded", 0.5)
    assert config.stage1.geometry_render_start == 5000
    assert (config.stage2.geometry_render, config.stage2.geometry_render_prob) == ("normal_map", 0.5)


def test_stage2_normal_map_shows_the_surface_direction_in_camera_space():
    view = ball_view()
    image = render_mesh_geometry(view, "normal_map", None, BACKGROUND)[0]
    middle = SIZE // 2
    # Facing the camera: (0, 0, 1) -> (0.5, 0.5, 1).
    assert torch.allclose(image[middle, middle], torch.tensor([0.5, 0.5, 1.0]), atol=0.08)
    # Near the left rim the normal points left (red low); near the top it points up (green high).
    row = image[middle]
    left = int(torch.nonzero(view.mask[0, middle])[0]) + 1
    assert row[left, 0] < 0.2 and abs(float(row[left, 1]) - 0.5) < 0.15
    top = int(torch.nonzero(view.mask[0, :, middle])[0]) + 1
    assert image[top, middle, 1] > 0.8
    # Off the ball: the background, untouched.
    assert torch.equal(image[0, 0], BACKGROUND[0])


def test_stage2_shaded_render_is_grey_and_lit():
    view = ball_view()
    lighting = sample_lighting(front_camera(), torch.Generator().manual_seed(0))
    image = render_mesh_geometry(view, "shaded", lighting, BACKGROUND)[0]
    inside = image[view.mask[0]]
    assert torch.allclose(inside[:, 0], inside[:, 1]) and torch.allclose(inside[:, 1], inside[:, 2])
    assert float(inside[:, 0].max()) <= GEOMETRY_ALBEDO * (float(lighting.ambient) + float(lighting.diffuse)) + 1e-4
    assert float(inside[:, 0].max() - inside[:, 0].min()) > 0.1  # lit: brighter where it faces the light


def test_stage1_geometry_renders_of_the_initial_density_blob():
    stage = NerfStageConfig()
    stage.hash_grid.levels, stage.hash_grid.log2_table_size, stage.hash_grid.mlp_width = 4, 12, 16
    stage.samples_per_ray, stage.occupancy_resolution = 64, 16
    model = build_nerf(stage, 0, torch.device("cpu"))
    cameras = front_camera()
    with torch.no_grad():
        render = render_nerf(model, cameras, 32, None, True, stage.normal_eps, skip_empty=False)
        normal_map = shade_geometry(render, "normal_map", None, cameras, BACKGROUND)[0]
        lighting = sample_lighting(cameras, torch.Generator().manual_seed(0))
        shaded = shade_geometry(render, "shaded", lighting, cameras, BACKGROUND)[0]
    centre = normal_map[16, 16]
    assert float(render.opacity[0, 16, 16]) > 0.99
    assert centre[2] > 0.9 and abs(float(centre[0]) - 0.5) < 0.1 and abs(float(centre[1]) - 0.5) < 0.1
    grey = shaded[16, 16]  # the blob's edge lets a little magenta through even here
    assert float(grey.max() - grey.min()) < 0.01 and 0.1 < float(grey[1]) <= GEOMETRY_ALBEDO + 1e-4
