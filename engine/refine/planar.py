"""Stage 2's planar-region regulariser: big, nearly flat patches of the surface are made flat.

Why: a 32-px prior cannot see the difference between a box and a lumpy box (docs/benchmarks.md,
"What the bundled prior rewards"), and local normal consistency only smooths; so the bundled
prior's cubes stay pillows. Region finding in the manner of variational shape approximation
(Cohen-Steiner et al. 2004), kept deliberately conservative so curved shapes are left alone:

  1. among the face normals, take the direction that most area agrees with within half of
     `angle_deg`, moved to the mean of the normals that agree with it (a few mean-shift steps);
  2. keep the largest connected patch of faces within `angle_deg` of it, with the small pieces it
     encloses (bumps); stop if it holds less than `min_share` of the surface area; take its faces
     out; keep it as a planar region if it is a disc (a torus's top band is a ring) and is not a
     strip of a cylinder's or a cone's wall (normals turning evenly about one axis); repeat;
  3. where `crease_deg` is set, make neighbouring regions meet at creases (`_meet_at_creases`);
  4. where `upright_deg` is set, regions leaning less than it from upright or from level are
     made exactly so (`_upright`).

A ball has no such patch big enough (a 15-degree cap is 1.7% of it, a 30-degree one 6.7%), so the
flat sides of a box, the caps of a cylinder and the base of a cone are found, and nothing on a
ball, a torus or those walls (tests/test_planar.py). The loss then turns
each region's faces towards the region's normal, |n_face - n_region| weighted by area, which
flattens the patch without fixing where its plane lies: the prior still moves the side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from ..render.gbuffer import face_normals

CANDIDATES = 256  # face normals tried as region directions
SPHERE_DIRECTIONS = 128  # ... and directions spread over the sphere
MEAN_SHIFT_STEPS = 3
FLAT_SPREAD = np.radians(3.0) ** 2  # normals within ~3 degrees: flat whichever way they spread
ONE_WAY_RATIO = 0.2
HOLE_SHARE = 0.25  # the most area a hole in a patch may have next to the patch, to be filled
FACING_SHARE = 0.5  # a wall strip has a third of its area within a third of the angle; a flat side most


@dataclass
class PlanarRegions:
    """Faces of the planar regions found (indices into the triangles) and each one's region."""

    faces: Tensor  # (N,) long
    region: Tensor  # (N,) long, index into normals
    normals: Tensor  # (R, 3) unit normals of the regions

    @property
    def count(self) -> int:
        return int(self.normals.shape[0])

    def share(self, areas: Tensor) -> float:
        """The share of the surface area inside the regions."""
        return float(areas[self.faces].sum() / areas.sum().clamp_min(1e-12))


@torch.no_grad()
def find_planar_regions(positions: Tensor, triangles: Tensor, adjacency: Tensor, angle_deg: float = 15.0,
                        min_share: float = 0.06, crease_deg: float = 0.0, upright_deg: float = 0.0,
                        max_patches: int = 32) -> PlanarRegions:
    """The surface's big nearly-flat patches (see the module docstring), met at creases of at least
    `crease_deg` and set upright or level within `upright_deg` where these are not 0. positions in
    the engine's Z-up frame; adjacency: (P, 2) pairs of faces sharing an edge."""
    raw = face_normals(positions, triangles)
    areas = raw.norm(dim=-1)
    normals = raw / areas.clamp_min(1e-20)[:, None]
    weights = areas / areas.sum().clamp_min(1e-20)
    cos_limit = float(np.cos(np.radians(angle_deg)))
    # Directions are sought with half the angle: with the whole angle, the direction between two
    # sides 45 degrees apart (a box side and a chamfer) takes in both, and the patch is neither.
    cos_seek = float(np.cos(np.radians(angle_deg / 2)))
    free = torch.ones(len(normals), dtype=torch.bool, device=normals.device)
    free_host = np.ones(len(normals), dtype=bool)  # the same, for the patch search on the host
    directions = _candidate_directions(normals)
    agreement = ((directions @ normals.T) > cos_seek).to(normals.dtype)  # (candidates, faces)
    pairs, host_weights = adjacency.cpu().numpy(), weights.cpu().numpy()
    faces, region, region_normals = [], [], []
    for _ in range(max_patches):
        direction = _best_direction(normals, weights, free, agreement, directions, cos_seek)
        if direction is None:
            break
        agrees = free & (normals @ direction > cos_limit)
        patch = _largest_patch(agrees.cpu().numpy(), host_weights, pairs)
        filled = _with_small_holes(patch, free_host, host_weights, pairs)
        if host_weights[filled].sum() < min_share:
            break
        free_host[filled] = False
        patch, filled = (torch.as_tensor(index, device=normals.device) for index in (patch, filled))
        free[filled] = False
        normal = F.normalize((normals[patch] * weights[patch, None]).sum(0), dim=0)
        if _is_a_wall_strip(normals[patch], weights[patch], normal, angle_deg) or not _is_disc(triangles[filled]):
            continue
        faces.append(filled)
        region.append(torch.full_like(filled, len(region_normals)))
        region_normals.append(normal)
    if not faces:
        empty = torch.zeros(0, dtype=torch.long, device=normals.device)
        return PlanarRegions(empty, empty, normals.new_zeros(0, 3))
    regions = PlanarRegions(torch.cat(faces), torch.cat(region), torch.stack(region_normals))
    if crease_deg:
        regions = _meet_at_creases(regions, normals, host_weights, pairs, crease_deg)
    if upright_deg:
        regions = _upright(regions, upright_deg)
    return regions


def _upright(regions: PlanarRegions, upright_deg: float) -> PlanarRegions:
    """Regions whose normal is within `upright_deg` of level (a side) or of vertical (a top or a
    bottom) turned exactly so. Stage 1 sees an object's lower half least, and its sides come out
    leaning in towards the bottom; the loss alone would flatten them as they lean."""
    normals = regions.normals.clone()
    up = normals[:, 2]
    side = up.abs() < np.sin(np.radians(upright_deg))
    normals[side, 2] = 0.0
    level = up.abs() > np.cos(np.radians(upright_deg))
    normals[level] = F.pad(torch.sign(up[level])[:, None], (2, 0))
    return PlanarRegions(regions.faces, regions.region, F.normalize(normals, dim=-1))


def _candidate_directions(normals: Tensor) -> Tensor:
    """Normals of evenly strided faces (extraction writes neighbouring faces together, so a stride
    covers every side) and a Fibonacci sphere of directions (small sides a stride misses)."""
    stride = max(1, len(normals) // CANDIDATES)
    index = torch.arange(SPHERE_DIRECTIONS, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * index / SPHERE_DIRECTIONS
    angle = torch.pi * (1.0 + 5.0 ** 0.5) * index
    ring = (1.0 - z ** 2).sqrt()
    sphere = torch.stack([ring * angle.cos(), ring * angle.sin(), z], dim=-1).to(normals)
    return torch.cat([normals[::stride], sphere])


def _best_direction(normals: Tensor, weights: Tensor, free: Tensor, agreement: Tensor, directions: Tensor,
                    cos_seek: float) -> Tensor | None:
    """The candidate direction the most free area agrees with, refined by mean shift."""
    free_weights = weights * free
    if float(free_weights.sum()) <= 0.0:
        return None
    best = directions[int((agreement @ free_weights).argmax())]
    for _ in range(MEAN_SHIFT_STEPS):
        inside = ((normals @ best) > cos_seek).to(normals.dtype) * free_weights
        if float(inside.sum()) <= 0.0:
            break
        best = F.normalize((normals * inside[:, None]).sum(0), dim=0)
    return best


def _is_a_wall_strip(normals: Tensor, weights: Tensor, normal: Tensor, angle_deg: float) -> bool:
    """Whether the patch is a strip of a cylinder's or a cone's wall: its normals turn about one
    axis only (the spread of their components in the plane is long and thin; a bulging flat side
    spreads them both ways, a flat one hardly at all), and evenly over the angle, unlike a flat side
    whose edges are rounded, which turns one way too but mostly faces along its normal."""
    tangential = normals - (normals @ normal)[:, None] * normal
    spread = (tangential * weights[:, None]).T @ tangential / weights.sum().clamp_min(1e-20)
    small, large = torch.linalg.eigvalsh(spread.double())[-2:].tolist()
    if large <= FLAT_SPREAD or small >= ONE_WAY_RATIO * large:
        return False
    facing = weights[normals @ normal > np.cos(np.radians(angle_deg / 3))].sum() / weights.sum().clamp_min(1e-20)
    return float(facing) < FACING_SHARE


def _is_disc(triangles: Tensor) -> bool:
    """Whether the patch is one piece without holes (Euler characteristic 1), as a flat side is,
    unlike the band round the top of a torus, whose normals also agree but which is curved."""
    edges = torch.cat([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]).sort(dim=1).values
    keys = edges[:, 0] * (int(triangles.max()) + 1) + edges[:, 1]
    return len(torch.unique(triangles)) - len(torch.unique(keys)) + len(triangles) == 1


def _with_small_holes(patch: np.ndarray, free: np.ndarray, weights: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The patch with the free pieces it encloses that are small next to it (bumps on a side whose
    normals stray past the angle): a lumpy side is still a disc to flatten, while a torus's top
    band encloses nothing (the rest of the torus is one piece)."""
    outside = np.ones(len(free), dtype=bool)
    outside[patch] = False
    if not outside.any():  # an open surface that is all one patch
        return patch
    labels = _patches(outside, pairs)
    area = np.bincount(labels[outside], weights=weights[outside])
    enclosed = np.ones(len(area), dtype=bool)
    enclosed[int(area.argmax())] = False  # the rest of the surface
    enclosed &= area < HOLE_SHARE * weights[patch].sum()
    enclosed[np.unique(labels[outside & ~free])] = False  # no faces of other regions
    holes = np.flatnonzero(outside & enclosed[np.maximum(labels, 0)])
    return np.concatenate([patch, holes])


def _largest_patch(agrees: np.ndarray, weights: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Indices of the connected patch of agreeing faces with the most area."""
    chosen = np.flatnonzero(agrees)
    if len(chosen) == 0:
        return chosen
    labels = _patches(agrees, pairs)[chosen]
    return chosen[labels == int(np.bincount(labels, weights=weights[chosen]).argmax())]


def planar_loss(positions: Tensor, triangles: Tensor, regions: PlanarRegions) -> Tensor:
    """Area-weighted mean of |n_face - n_region| over the regions' faces (0 if there are none)."""
    if regions.count == 0:
        return positions.sum() * 0.0
    raw = face_normals(positions, triangles[regions.faces])
    areas = raw.norm(dim=-1)
    normals = raw / areas.clamp_min(1e-20)[:, None]
    # clamped: the distance's gradient is infinite where a face already lies in its plane
    distance = (normals - regions.normals[regions.region]).pow(2).sum(-1).clamp_min(1e-8).sqrt()
    return (distance * areas.detach()).sum() / areas.detach().sum().clamp_min(1e-20)


def _meet_at_creases(regions: PlanarRegions, normals: Tensor, weights: np.ndarray, pairs: np.ndarray,
                     crease_deg: float) -> PlanarRegions:
    """Regions made to meet at creases of at least `crease_deg`, as a box's sides do.

    A rounded box's round edges are left between its side regions, and the big ones become
    regions of their own (a chamfer at 45 degrees): the box comes out with five or six sides. So,
    until no two neighbouring regions are closer than `crease_deg`, the smallest of a too-close
    pair is given up; and the faces left between regions are shared out (`_grow`), each to the
    nearest region within `crease_deg` that reaches it over such faces, so that neighbouring
    sides are pulled to a crease. Growth that meets no other region is undone: a ball flattened
    at its bottom keeps its round sides."""
    cos_crease = float(np.cos(np.radians(crease_deg)))
    region_normals = regions.normals.cpu().double().numpy()
    alignment = normals.cpu().double().numpy() @ region_normals.T  # (faces, regions)
    core = np.full(len(alignment), -1)
    core[regions.faces.cpu().numpy()] = regions.region.cpu().numpy()
    keep = np.arange(len(region_normals))  # indices into region_normals of the regions still kept
    while True:
        owner = _grow(core, alignment[:, keep], pairs, cos_crease)
        meet = _meeting(owner, pairs)
        a, b = owner[pairs[meet, 0]], owner[pairs[meet, 1]]
        close = np.einsum("pk,pk->p", region_normals[keep[a]], region_normals[keep[b]]) > cos_crease
        if not close.any():
            break
        too_close = np.unique(np.concatenate([a[close], b[close]]))
        area = np.bincount(core[core >= 0], weights=weights[core >= 0], minlength=len(keep))
        given_up = too_close[int(area[too_close].argmin())]
        core[core == given_up] = -1
        core[core > given_up] -= 1
        keep = np.delete(keep, given_up)
    faces = np.flatnonzero(owner >= 0)
    device = regions.normals.device
    return PlanarRegions(torch.as_tensor(faces, device=device), torch.as_tensor(owner[faces], device=device),
                         regions.normals[torch.as_tensor(keep, device=device)])


def _grow(core: np.ndarray, alignment: np.ndarray, pairs: np.ndarray, cos_crease: float) -> np.ndarray:
    """Each face's region (-1: none): the regions' own faces, and the free faces each given to the
    nearest region (by normal; alignment: (faces, regions) cosines) that reaches it over free faces
    within `cos_crease` of it; kept only where the grown faces meet another region's."""
    free = core < 0
    owner, best = core.copy(), np.full(len(core), -np.inf)
    for r in range(alignment.shape[1]):
        eligible = free & (alignment[:, r] > cos_crease)
        labels = _patches(eligible, pairs)
        touches_r = (core[pairs[:, 0]] == r) & eligible[pairs[:, 1]]
        touches_r_back = (core[pairs[:, 1]] == r) & eligible[pairs[:, 0]]
        reached_labels = np.unique(np.concatenate([labels[pairs[touches_r, 1]], labels[pairs[touches_r_back, 0]]]))
        reached = eligible & np.isin(labels, reached_labels)
        nearer = reached & (alignment[:, r] > best)
        owner[nearer], best[nearer] = r, alignment[nearer, r]
    grown = free & (owner >= 0)
    labels = _patches(grown, pairs, owner)
    a, b = pairs[:, 0], pairs[:, 1]
    meets = _meeting(owner, pairs)
    met = np.unique(np.concatenate([labels[a[meets & grown[a]]], labels[b[meets & grown[b]]]]))
    owner[grown & ~np.isin(labels, met)] = -1
    return owner


def _meeting(owner: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Which face pairs join two different regions."""
    a, b = owner[pairs[:, 0]], owner[pairs[:, 1]]
    return (a >= 0) & (b >= 0) & (a != b)


def _patches(chosen: np.ndarray, pairs: np.ndarray, owner: np.ndarray | None = None) -> np.ndarray:
    """Connected-patch labels of the chosen faces (-1 elsewhere), patches not crossing between
    owners where `owner` is given."""
    labels = np.full(len(chosen), -1)
    index = np.flatnonzero(chosen)
    if len(index) == 0:
        return labels
    local = np.full(len(chosen), -1)
    local[index] = np.arange(len(index))
    both = chosen[pairs[:, 0]] & chosen[pairs[:, 1]]
    if owner is not None:
        both &= owner[pairs[:, 0]] == owner[pairs[:, 1]]
    a, b = local[pairs[both, 0]], local[pairs[both, 1]]
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(index), len(index)))
    labels[index] = connected_components(graph, directed=False)[1]
    return labels
