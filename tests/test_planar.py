"""Stage 2's planar-region regulariser (engine/refine/planar.py): which patches count as flat sides,
and that its loss flattens them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from engine.errors import BadInputError
from engine.mesh.extract import marching_cubes
from engine.refine.losses import face_adjacency
from engine.refine.planar import find_planar_regions, planar_loss
from engine.config import RefineStageConfig
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


@pytest.mark.parametrize("crease_deg", [0.0, 60.0])
@pytest.mark.parametrize("name", list(SHAPES))
def test_regions_are_the_flat_sides_only(name, crease_deg):
    make, count, share = SHAPES[name]
    mesh = make()
    positions, triangles, adjacency = tensors(mesh)
    regions = find_planar_regions(positions, triangles, adjacency, crease_deg=crease_deg)
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


def sdf_mesh(sdf, resolution: int = 48) -> trimesh.Trimesh:
    """The zero set of a signed distance on [-1, 1]^3, as the engine's extraction meshes a NeRF."""
    axis = np.linspace(-1.0, 1.0, resolution)
    extracted = marching_cubes(-sdf(*np.meshgrid(axis, axis, axis, indexing="ij")), 1.0, 0.0)
    mesh = trimesh.Trimesh(extracted.positions, extracted.triangles)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def rounded_box(x, y, z, radius=0.3):
    """A box whose four upright edges are rounded, as stage 1 leaves a cube."""
    corner = np.stack([abs(x) - 0.6 + radius, abs(y) - 0.6 + radius])
    across = np.linalg.norm(np.maximum(corner, 0.0), axis=0) + np.minimum(corner.max(0), 0.0) - radius
    return np.maximum(across, abs(z) - 0.6)


def chamfered_box(x, y, z):
    """A tall box with one upright edge cut off by a side 45 degrees from its neighbours."""
    return np.maximum.reduce([abs(x) - 0.6, abs(y) - 0.6, abs(z) - 0.9, (x + y - 0.75) / np.sqrt(2)])


def cut_ball(x, y, z):
    return np.maximum(np.sqrt(x * x + y * y + z * z) - 0.8, -z - 0.5)


def region_normals(regions) -> set[tuple[float, ...]]:
    return {tuple(np.round(normal, 1) + 0.0) for normal in regions.normals.tolist()}


def test_a_rounded_box_has_six_sides_that_meet_at_creases():
    """The sides of a box with rounded edges are found though their normals turn one way (about
    the upright axis) like a cylinder's wall: most of each side faces along its normal. With
    creases, the rounded edges are shared out between the sides they join."""
    mesh = sdf_mesh(rounded_box)
    positions, triangles, adjacency = tensors(mesh)
    areas = torch.tensor(mesh.area_faces)
    sides = {(1.0, 0.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, -1.0)}
    found = find_planar_regions(positions, triangles, adjacency, 30.0, 0.1)
    assert region_normals(found) == sides and found.share(areas) < 0.9
    creased = find_planar_regions(positions, triangles, adjacency, 30.0, 0.1, crease_deg=60.0)
    assert region_normals(creased) == sides and creased.share(areas) > 0.99
    # each rounded face goes to the side its normal is nearer
    normals = torch.tensor(mesh.face_normals, dtype=torch.float32)[creased.faces]
    nearest = (normals @ creased.normals.T).argmax(1)
    assert float((nearest == creased.region).float().mean()) > 0.95


def test_a_chamfer_between_two_sides_is_given_up_at_creases():
    mesh = sdf_mesh(chamfered_box)
    positions, triangles, adjacency = tensors(mesh)
    chamfer = (0.7, 0.7, 0.0)
    assert chamfer in region_normals(find_planar_regions(positions, triangles, adjacency, 30.0, 0.08))
    creased = find_planar_regions(positions, triangles, adjacency, 30.0, 0.08, crease_deg=60.0)
    assert creased.count == 6 and chamfer not in region_normals(creased)
    on_chamfer = torch.tensor(mesh.face_normals @ np.array(chamfer) > 0.95)
    assert bool(torch.isin(torch.nonzero(on_chamfer)[:, 0], creased.faces).all())  # shared out, not left free


def test_creases_leave_a_cut_ball_round():
    """A ball cut flat underneath: its flat base is a region, and the base does not grow up the
    ball's side (growth that meets no other region is undone)."""
    positions, triangles, adjacency = tensors(sdf_mesh(cut_ball))
    plain = find_planar_regions(positions, triangles, adjacency, 30.0, 0.1)
    creased = find_planar_regions(positions, triangles, adjacency, 30.0, 0.1, crease_deg=60.0)
    assert plain.count == creased.count == 1
    assert torch.equal(plain.faces.sort().values, creased.faces.sort().values)


def test_a_side_with_a_spike_is_still_a_side():
    """The faces of a spike on a box's top stray past the angle and leave a hole in its patch; the
    hole is small next to the top, so the top is still a region (a disc), spike included."""
    positions, triangles, adjacency = tensors(box())
    top = positions[:, 2] > 0.49
    centre = top & (positions[:, :2].norm(dim=1) < 0.06)
    positions[centre, 2] += 0.1
    regions = find_planar_regions(positions, triangles, adjacency)
    assert regions.count == 6
    spike = torch.nonzero(centre[triangles].any(1))[:, 0]
    assert bool(torch.isin(spike, regions.faces).all())


def test_an_open_flat_sheet_is_one_region():
    sheet = trimesh.creation.box().subdivide_to_size(0.1)
    sheet.update_faces(sheet.face_normals[:, 2] > 0.99)  # the top alone, an open square
    sheet.remove_unreferenced_vertices()
    positions, triangles, adjacency = tensors(sheet)
    regions = find_planar_regions(positions, triangles, adjacency, crease_deg=60.0)
    assert regions.count == 1 and len(regions.faces) == len(triangles)


def frustum(lean_deg: float) -> trimesh.Trimesh:
    """A box whose four sides lean in towards the bottom by lean_deg, as stage 1 leaves a cube."""
    mesh = box()
    below_top = 0.5 - mesh.vertices[:, 2]
    mesh.vertices[:, :2] *= (1.0 - 2.0 * np.tan(np.radians(lean_deg)) * below_top)[:, None]
    return mesh


def test_upright_stands_leaning_sides_up_and_lays_the_top_level():
    positions, triangles, adjacency = tensors(frustum(8.0))
    leaning = find_planar_regions(positions, triangles, adjacency, 30.0, 0.1, crease_deg=60.0)
    upright = find_planar_regions(positions, triangles, adjacency, 30.0, 0.1, crease_deg=60.0, upright_deg=12.0)
    assert leaning.count == upright.count == 6 and torch.equal(leaning.faces, upright.faces)
    sides = leaning.normals[:, 2].abs() < 0.5
    assert bool((leaning.normals[sides, 2] < -0.1).all())  # leaning out of plumb by 8 degrees
    assert torch.allclose(upright.normals[sides, 2], torch.zeros(4))
    assert torch.allclose(upright.normals[~sides].abs(), torch.tensor([0.0, 0.0, 1.0]).expand(2, 3))
    assert bool((upright.normals.norm(dim=-1) - 1).abs().max() < 1e-6)
    # The leaning sides are flat already; upright, the loss pulls them 8 degrees (|n - n'| = 0.14).
    assert float(planar_loss(positions, triangles, leaning)) < 1e-3
    assert float(planar_loss(positions, triangles, upright)) > 0.05


def test_upright_keeps_a_steep_lean():
    positions, triangles, adjacency = tensors(frustum(20.0))
    leaning = find_planar_regions(positions, triangles, adjacency, 30.0, 0.1, crease_deg=60.0)
    upright = find_planar_regions(positions, triangles, adjacency, 30.0, 0.1, crease_deg=60.0, upright_deg=12.0)
    sides = leaning.normals[:, 2].abs() < 0.5
    assert sides.sum() == 4 and torch.allclose(upright.normals[sides], leaning.normals[sides])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_regions_on_the_gpu_are_the_cpus():
    positions, triangles, adjacency = bulged_box()
    cpu = find_planar_regions(positions, triangles, adjacency, crease_deg=60.0)
    gpu = find_planar_regions(positions.cuda(), triangles.cuda(), adjacency.cuda(), crease_deg=60.0)
    assert gpu.count == cpu.count
    assert torch.equal(gpu.faces.cpu().sort().values, cpu.faces.sort().values)
    assert torch.allclose(gpu.normals.cpu(), cpu.normals, atol=1e-5)
    assert float(planar_loss(positions.cuda(), triangles.cuda(), gpu)) == pytest.approx(
        float(planar_loss(positions, triangles, cpu)), rel=1e-4)


@pytest.mark.parametrize("settings", [{"planar_weight": -1.0}, {"planar_angle_deg": 0.0}, {"planar_angle_deg": 95.0},
                                      {"planar_min_share": 1.5}, {"planar_every": 0}, {"planar_crease_deg": -1.0},
                                      {"planar_crease_deg": 90.0}, {"planar_upright_deg": -1.0},
                                      {"planar_upright_deg": 45.0}])
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
