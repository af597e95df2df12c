"""Silhouette antialiasing with gradients for vertex positions (after Laine et al. 2020, nvdiffrast).

A rasterized image is piecewise constant in the vertex positions: moving a silhouette edge
changes which pixels a triangle covers, and that has no gradient. Mesh refinement needs it,
or the optimiser can repaint a shape but never move its outline. Here, for every pair of
neighbouring pixels (left-right and top-bottom) covered by different triangles, or one by
none, the silhouette edge of the nearer pixel's triangle that the segment between the two
pixel centres crosses is found (steep edges by left-right pairs, flat ones by top-bottom
pairs); where it crosses at fraction `a` from the nearer centre, the
farther pixel takes (a - 1/2) of the nearer pixel's colour when a > 1/2, and the nearer pixel
(1/2 - a) of the farther one's when a < 1/2. The image is unchanged where no silhouette edge
lies between pixel centres, and a's dependence on the projected corners carries the gradient.

An edge is a silhouette edge in a view when it is a boundary edge or its two faces turn
opposite ways on screen. Works on any backend's `Rasterized` output; plain PyTorch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gbuffer import GBuffer


def edge_neighbours(triangles: Tensor) -> Tensor:
    """(F, 3) the face across edge k = (corner k, corner k+1) of each face, -1 on a boundary
    (and where more than two faces share an edge, an arbitrary one of the others)."""
    count = triangles.shape[0]
    starts, ends = triangles, triangles.roll(-1, dims=1)
    keys = torch.stack([torch.minimum(starts, ends), torch.maximum(starts, ends)], dim=-1).reshape(-1, 2)
    _, edge_id = torch.unique(keys, dim=0, return_inverse=True)
    slot = torch.arange(count * 3, device=triangles.device)
    order = torch.argsort(edge_id, stable=True)
    sorted_edges = edge_id[order]
    same_as_next = torch.zeros_like(sorted_edges, dtype=torch.bool)
    same_as_next[:-1] = sorted_edges[1:] == sorted_edges[:-1]
    partner = torch.full_like(slot, -1)
    first, second = order[:-1][same_as_next[:-1]], order[1:][same_as_next[:-1]]
    partner[first], partner[second] = second, first
    return torch.where(partner >= 0, torch.div(partner, 3, rounding_mode="floor"), partner).reshape(count, 3)


def antialias(image: Tensor, view: GBuffer, neighbours: Tensor | None = None) -> Tensor:
    """(B, H, W, C) image rendered from `view` (shaded, background included) -> the same image with
    its silhouettes antialiased, differentiable in the image and in the view's vertex positions.
    neighbours: `edge_neighbours(view.triangles)`, to reuse across steps on a fixed topology."""
    if view.clip is None or view.triangles is None:
        raise ValueError("antialias needs a GBuffer from render_gbuffer (it keeps clip positions and triangles)")
    batch, height, width, channels = image.shape
    triangles = view.triangles
    if neighbours is None:
        neighbours = edge_neighbours(triangles)
    # Screen positions in pixels, centres at (i + 0.5, j + 0.5), row 0 at the top.
    w = view.clip[..., 3:].clamp_min(1e-8)
    screen = torch.stack([(view.clip[..., 0] / w[..., 0] + 1) * (0.5 * width),
                          (1 - view.clip[..., 1] / w[..., 0]) * (0.5 * height)], dim=-1)  # (B, V, 2)
    with torch.no_grad():
        corners = screen[:, triangles]  # (B, F, 3, 2)
        first, second = corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0]
        facing = (first[..., 0] * second[..., 1] - first[..., 1] * second[..., 0]) > 0  # (B, F)

    ids = view.triangle_id
    far = torch.where(ids >= 0, view.depth, torch.full_like(view.depth, torch.inf))
    flat_image = image.reshape(-1, channels)
    delta = torch.zeros_like(flat_image)
    rows = torch.arange(height, device=ids.device).view(1, height, 1).expand(batch, height, width)
    cols = torch.arange(width, device=ids.device).view(1, 1, width).expand(batch, height, width)
    views = torch.arange(batch, device=ids.device).view(batch, 1, 1).expand(batch, height, width)
    for step_row, step_col in ((0, 1), (1, 0)):
        cut = (slice(None), slice(0, height - step_row), slice(0, width - step_col))
        ahead = (slice(None), slice(step_row, height), slice(step_col, width))
        ids_a, ids_b = ids[cut], ids[ahead]
        pair = ids_a != ids_b
        a_in_front = far[cut] <= far[ahead]
        near_id = torch.where(a_in_front, ids_a, ids_b)[pair]
        b = views[cut][pair]
        row_a, col_a = rows[cut][pair], cols[cut][pair]
        row_b, col_b = row_a + step_row, col_a + step_col
        front = a_in_front[pair]
        near_row, near_col = torch.where(front, row_a, row_b), torch.where(front, col_a, col_b)
        far_row, far_col = torch.where(front, row_b, row_a), torch.where(front, col_b, col_a)
        near_centre = torch.stack([near_col, near_row], dim=-1).to(screen.dtype) + 0.5
        far_centre = torch.stack([far_col, far_row], dim=-1).to(screen.dtype) + 0.5
        tri_corners = screen[b[:, None], triangles[near_id]]  # (K, 3, 2), with gradient
        alpha = torch.zeros(near_id.shape[0], dtype=screen.dtype, device=screen.device)
        found = torch.zeros(near_id.shape[0], dtype=torch.bool, device=screen.device)
        for k in range(3):
            start, end = tri_corners[:, k], tri_corners[:, (k + 1) % 3]
            edge = end - start
            d_near = edge[:, 0] * (near_centre[:, 1] - start[:, 1]) - edge[:, 1] * (near_centre[:, 0] - start[:, 0])
            d_far = edge[:, 0] * (far_centre[:, 1] - start[:, 1]) - edge[:, 1] * (far_centre[:, 0] - start[:, 0])
            with torch.no_grad():
                other = neighbours[near_id, k]
                silhouette = (other < 0) | (facing[b, other.clamp_min(0)] != facing[b, near_id])
                # Each edge is handled by the pairs across it (left-right for steep edges, top-bottom
                # for flat ones) so that no coverage is counted twice.
                steep = edge[:, 1].abs() >= edge[:, 0].abs()
                crossing = (d_near * d_far < 0) & silhouette & (steep if step_col else ~steep) & ~found
            fraction = d_near / torch.where(crossing, d_near - d_far, torch.ones_like(d_near))
            alpha = torch.where(crossing, fraction, alpha)
            found = found | crossing
        if not bool(found.any()):
            continue
        alpha = alpha[found].clamp(0.0, 1.0)
        near_flat = ((b * height + near_row) * width + near_col)[found]
        far_flat = ((b * height + far_row) * width + far_col)[found]
        near_colour, far_colour = flat_image[near_flat], flat_image[far_flat]
        into_far = (alpha - 0.5).clamp_min(0.0)[:, None]
        short_of_far = (0.5 - alpha).clamp_min(0.0)[:, None]
        delta = delta.index_add(0, far_flat, into_far * (near_colour - far_colour))
        delta = delta.index_add(0, near_flat, short_of_far * (far_colour - near_colour))
    return (flat_image + delta).reshape(batch, height, width, channels)
