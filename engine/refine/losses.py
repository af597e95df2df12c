"""Stage 2's regularisers of the refinable mesh: normal consistency between adjacent faces and a
uniform Laplacian on the vertices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..render.gbuffer import face_normals


def face_adjacency(neighbours: Tensor) -> Tensor:
    """(P, 2) pairs of faces sharing an edge, each pair once, from `edge_neighbours(triangles)`
    (engine/render/antialias.py): the face across each edge of each face."""
    faces = torch.arange(neighbours.shape[0], device=neighbours.device)[:, None].expand_as(neighbours)
    first = neighbours > faces  # also drops boundary edges (-1)
    return torch.stack([faces[first], neighbours[first]], dim=-1)


# |n1 - n2| of a 29-degree bend, where the "robust" form stops growing linearly. At 0.25 (14 degrees)
# it creased the bundled prior's spheres; at 0.5 they stay rounder and its cubes as flat (docs/benchmarks.md).
ROBUST_SCALE = 0.5


def normal_consistency(positions: Tensor, triangles: Tensor, adjacency: Tensor, form: str = "cosine") -> Tensor:
    """Mean over adjacent face pairs of 1 - cos(angle between their normals) ("cosine", the
    released code's), of |n1 - n2| = sqrt(2 (1 - cos)) ("angle", ~ the angle itself), or of
    log(1 + |n1 - n2| / ROBUST_SCALE) ("robust").

    1 - cos ~ angle^2 / 2 makes many slight bends cheaper than one sharp one, so it rounds edges;
    the angle form costs a bend in proportion to its angle, so it keeps flat sides and sharp edges;
    the robust form grows slower than the angle, so one sharp edge costs less than the same turn
    spread over a rounded one: it flattens slight bends and sharpens strong ones.
    """
    if adjacency.numel() == 0:
        return positions.sum() * 0.0
    normals = F.normalize(face_normals(positions, triangles), dim=-1, eps=1e-12)
    one_minus_cos = 1.0 - (normals[adjacency[:, 0]] * normals[adjacency[:, 1]]).sum(-1)
    if form in ("angle", "robust"):
        # clamped: the square root's gradient is infinite on a flat pair
        distance = (2.0 * one_minus_cos).clamp_min(1e-8).sqrt()
        return distance.mean() if form == "angle" else torch.log1p(distance / ROBUST_SCALE).mean()
    return one_minus_cos.mean()


def laplacian_loss(positions: Tensor, edges: Tensor) -> Tensor:
    """Mean squared distance of each vertex from the mean of its neighbours."""
    if edges.numel() == 0:
        return positions.sum() * 0.0
    count = positions.shape[0]
    sums = torch.zeros_like(positions).index_add(0, edges[:, 0], positions[edges[:, 1]])
    sums = sums.index_add(0, edges[:, 1], positions[edges[:, 0]])
    degree = torch.zeros(count, device=positions.device).index_add(
        0, edges.reshape(-1), torch.ones(edges.numel(), device=positions.device))
    offsets = positions - sums / degree.clamp_min(1.0)[:, None]
    return (offsets ** 2).sum(-1).mean()
