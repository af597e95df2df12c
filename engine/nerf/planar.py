"""Stage 2's planar-region regulariser: big, nearly flat patches of the surface are made flat.

Why: a 32-px prior cannot see the difference between a box and a lumpy box (docs/benchmarks.md,
"What the bundled prior rewards"), and local normal consistency only smooths; so the bundled
prior's cubes stay pillows. Region finding in the manner of variational shape approximation
(Cohen-Steiner et al. 2004), kept deliberately conservative so curved shapes are left alone:

  1. among the face normals, take the direction that most area agrees with (within
     `angle_deg`), moved to the mean of the normals that agree with it (a few mean-shift steps);
  2. keep the largest connected patch of faces that agree with it; stop if it holds less than
     `min_share` of the surface area; take its faces out; keep it as a planar region if it is a
     disc (a torus's top band is a ring) and its normals do not turn about one axis only (a
     strip of a cylinder's or a cone's wall); repeat.

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
                        min_share: float = 0.06, max_patches: int = 32) -> PlanarRegions:
    """The surface's big nearly-flat patches (see the module docstring). adjacency: (P, 2) pairs
    of faces sharing an edge."""
    raw = face_normals(positions, triangles)
    areas = raw.norm(dim=-1)
    normals = raw / areas.clamp_min(1e-20)[:, None]
    weights = areas / areas.sum().clamp_min(1e-20)
    cos_limit = float(np.cos(np.radians(angle_deg)))
    free = torch.ones(len(normals), dtype=torch.bool, device=normals.device)
    directions = _candidate_directions(normals)
    agreement = ((directions @ normals.T) > cos_limit).to(normals.dtype)  # (candidates, faces)
    pairs, host_weights = adjacency.cpu().numpy(), weights.cpu().numpy()
    faces, region, region_normals = [], [], []
    for _ in range(max_patches):
        direction = _best_direction(normals, weights, free, agreement, directions, cos_limit)
        if direction is None:
            break
        agrees = free & (normals @ direction > cos_limit)
        patch = _largest_patch(agrees.cpu().numpy(), host_weights, pairs)
        patch = torch.as_tensor(patch, device=normals.device)
        if float(weights[patch].sum()) < min_share:
            break
        free[patch] = False
        normal = F.normalize((normals[patch] * weights[patch, None]).sum(0), dim=0)
        if _bends_one_way(normals[patch], weights[patch], normal) or not _is_disc(triangles[patch]):
            continue
        faces.append(patch)
        region.append(torch.full_like(patch, len(region_normals)))
        region_normals.append(normal)
    if not faces:
        empty = torch.zeros(0, dtype=torch.long, device=normals.device)
        return PlanarRegions(empty, empty, normals.new_zeros(0, 3))
    return PlanarRegions(torch.cat(faces), torch.cat(region), torch.stack(region_normals))


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
                    cos_limit: float) -> Tensor | None:
    """The candidate direction the most free area agrees with, refined by mean shift."""
    free_weights = weights * free
    if float(free_weights.sum()) <= 0.0:
        return None
    best = directions[int((agreement @ free_weights).argmax())]
    for _ in range(MEAN_SHIFT_STEPS):
        inside = ((normals @ best) > cos_limit).to(normals.dtype) * free_weights
        if float(inside.sum()) <= 0.0:
            break
        best = F.normalize((normals * inside[:, None]).sum(0), dim=0)
    return best


def _bends_one_way(normals: Tensor, weights: Tensor, normal: Tensor) -> bool:
    """Whether the patch's normals turn about one axis only, as on the wall of a cylinder or a cone
    (a strip that is curved, not flat): the spread of their components in the plane is long and
    thin. A bulging flat side spreads them both ways; a flat one hardly at all."""
    tangential = normals - (normals @ normal)[:, None] * normal
    spread = (tangential * weights[:, None]).T @ tangential / weights.sum().clamp_min(1e-20)
    small, large = torch.linalg.eigvalsh(spread.double())[-2:].tolist()
    return large > FLAT_SPREAD and small < ONE_WAY_RATIO * large


def _is_disc(triangles: Tensor) -> bool:
    """Whether the patch is one piece without holes (Euler characteristic 1), as a flat side is,
    unlike the band round the top of a torus, whose normals also agree but which is curved."""
    edges = torch.cat([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]).sort(dim=1).values
    keys = edges[:, 0] * (int(triangles.max()) + 1) + edges[:, 1]
    return len(torch.unique(triangles)) - len(torch.unique(keys)) + len(triangles) == 1


def _largest_patch(agrees: np.ndarray, weights: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Indices of the connected patch of agreeing faces with the most area."""
    chosen = np.flatnonzero(agrees)
    if len(chosen) == 0:
        return chosen
    local = np.full(len(agrees), -1)
    local[chosen] = np.arange(len(chosen))
    both = agrees[pairs[:, 0]] & agrees[pairs[:, 1]] if len(pairs) else np.zeros(0, dtype=bool)
    a, b = local[pairs[both, 0]], local[pairs[both, 1]]
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(chosen), len(chosen)))
    _, labels = connected_components(graph, directed=False)
    area = np.bincount(labels, weights=weights[chosen])
    return chosen[labels == int(area.argmax())]


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
