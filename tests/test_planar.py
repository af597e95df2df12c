"""Stage 2's planar-region regulariser (engine/nerf/planar.py): which patches count as flat sides,
and that its loss flattens them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from engine.errors import BadInputError
from engine.nerf.losses import face_adjacency
from engine.nerf.planar import find_planar_regions, planar_loss
from engine.pipelines.generate_config import RefineStageConfig
from engine.render.antialias import edge_neighbours


def tensors(mesh: trimesh.Trimesh, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mesh = mesh.copy()
    mesh.vertices -= mesh.bounds.mean(0)
    mesh.vertices /= mesh.extents.max()
    positions = torch.tensor(mesh.vertices, dtype=torch.float32, device=device)
    triangles = torch.tensor(mesh.faces, dtype=torch.long, device=device)
    return positions, triangles, face_adjacency(edge_neighbours(triangles))


def box() -> trimesh.Trimesh:
    return trimesh.creation.box().subdivide_to_size(0.1)


SHAPES = {
    # name: (mesh, regions, share of the area in them)
    "box": (box, 6, 1.0),
    "sphere": (lambda: trimesh.creation.icosphere(4), 0, 0.0),
    "cylinder": (lambda: trimesh.creation.cylinder(0.5, 1.0, sections=64), 2, 1 / 3),  # the caps, not the wall
    "cone": (lambda: trimesh.creation.cone(0.5, 1.0, sections=64), 1, 0.309),  # the base
    "torus": (lambda: trimesh.creation.torus(0.35, 0.15), 0, 0.0),  # its top and bottom bands are rings
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_regions_are_the_flat_sides_only(name):
    make, count, share = SHAPES[name]
    mesh = make()
    positions, triangles, adjacency = tensors(mesh)
    regions = find_planar_regions(positions, triangles, adjacency)
    assert regions.count == count
    areas = torch.tensor(mesh.area_faces)
    assert regions.share(areas) == pytest.approx(share, abs=0.01)
    assert float(planar_loss(positions, triangles, regions)) < 1e-3  # flat sides already are flat


def bulged_box() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A box whose top is a shallow dome (at most ~9 degrees off flat)."""
    positions, triangles, adjacency = tensors(box())
    top = positions[:, 2] > 0.49
    radial = positions[:, 0] ** 2 + positions[:, 1] ** 2
    positions[top, 2] += 0.08 * (0.5 - radial[top])
    return positions, triangles, adjacency


def test_the_loss_flattens_a_bulging_side_and_leaves_a_sphere_alone():
    positions, triangles, adjacency = bulged_box()
    regions = find_planar_regions(positions, triangles, adjacency)
    assert regions.count == 6  # the dome is within 15 degrees of flat: still a side
    start = float(planar_loss(positions, triangles, regions))
    offsets = torch.zeros_like(positions, requires_grad=True)
    optimizer = torch.optim.Adam([offsets], lr=1e-3)
    for step in range(150):
        if step % 10 == 0:
            regions = find_planar_regions((positions + offsets).detach(), triangles, adjacency)
        loss = planar_loss(positions + offsets, triangles, regions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = positions + offsets.detach()
    top = positions[:, 2] > 0.495  # the top's vertices, its rim included
    assert start > 0.005
    assert float(planar_loss(moved, triangles, regions)) < 0.3 * start
    assert float(moved[top, 2].std()) < 0.3 * float(positions[top, 2].std())

    ball, ball_triangles, ball_adjacency = tensors(trimesh.creation.icosphere(3))
    ball.requires_grad_(True)
    regions = find_planar_regions(ball.detach(), ball_triangles, ball_adjacency)
    planar_loss(ball, ball_triangles, regions).backward()
    assert regions.count == 0 and float(ball.grad.abs().max()) == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_regions_on_the_gpu_are_the_cpus():
    positions, triangles, adjacency = bulged_box()
    cpu = find_planar_regions(positions, triangles, adjacency)
    gpu = find_planar_regions(positions.cuda(), triangles.cuda(), adjacency.cuda())
    assert gpu.count == cpu.count
    assert torch.equal(gpu.faces.cpu().sort().values, cpu.faces.sort().values)
    assert torch.allclose(gpu.normals.cpu(), cpu.normals, atol=1e-5)
    assert float(planar_loss(positions.cuda(), triangles.cuda(), gpu)) == pytest.approx(
        float(planar_loss(positions, triangles, cpu)), rel=1e-4)


@pytest.mark.parametrize("settings", [{"planar_weight": -1.0}, {"planar_angle_deg": 0.0}, {"planar_angle_deg": 95.0},
                                      {"planar_min_share": 1.5}, {"planar_every": 0}])
def test_bad_planar_settings_are_bad_input(settings):
    with pytest.raises(BadInputError):
        RefineStageConfig(**settings).validate()


def test_face_order_does_not_change_the_regions():
    """Region finding reads only the geometry: the same box with its faces shuffled gives the
    same regions (as sets of faces)."""
    positions, triangles, adjacency = bulged_box()
    order = torch.as_tensor(np.random.default_rng(0).permutation(len(triangles)))
    shuffled = triangles[order]
    plain = find_planar_regions(positions, triangles, adjacency)
    mixed = find_planar_regions(positions, shuffled, face_adjacency(edge_neighbours(shuffled)))
    assert mixed.count == plain.count
    assert torch.equal(order[mixed.faces].sort().values, plain.faces.sort().values)
