"""Silhouette antialiasing with gradients for vertex positions (after Laine et al. 2020, nvdiffrast).

A rasterized image is piecewise constant in the vertex positions: moving a silhouette edge
changes which pixels a triangle covers, and that has no gradient. Mesh refinement needs it,
or the optimiser can repaint a shape but never move its outline. Here, for every pair of
neighbouring pixels (left-right and top-bottom) covered by different triangles, or one by
none, the silhouette edge of the nearer pixel's triangle that the segment between the two
pixel centres crosses is found (steep edges by left-right pairs, flat ones by top-bottom pairs).
Where it crosses at fraction `a` from the nearer centre, the farther pixel takes (a - 1/2) of the
nearer pixel's colour when a > 1/2, and the nearer pixel (1/2 - a) of the farther one's when
a < 1/2. The image is unchanged where no silhouette edge lies between pixel centres, and a's
dependence on the projected corners carries the gradient.

An edge is a silhouette edge in a view when it is a boundary edge or its two faces turn
opposite ways on screen. Plain PyTorch, for either rasterizer's output; a view rasterized by
nvdiffrast goes through nvdiffrast's own antialias instead (its CUDA kernel is much faster, and
tests/test_render.py checks that the two agree).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gbuffer import GBuffer


def edge_neighbours(triangles: Tensor) -> Tensor:
    """(F, 3) the face across edge k = (corner k, corner k+1) of each face, -1 on a boundary
    (and where more than two faces share an edge, an arbitrary one of the others)."""
    return edges_and_neighbours(triangles)[1]


def edges_and_neighbours(triangles: Tensor) -> tuple[Tensor, Tensor]:
    """The mesh's undirected edges (E, 2), each once, in lexicographic order, and `edge_neighbours`:
    both from one pass over the faces' edges."""
    count = triangles.shape[0]
    starts, ends = triangles, triangles.roll(-1, dims=1)
    keys = torch.stack([torch.minimum(starts, ends), torch.maximum(starts, ends)], dim=-1).reshape(-1, 2)
    edges, edge_id = torch.unique(keys, dim=0, return_inverse=True)
    slot = torch.arange(count * 3, device=triangles.device)
    order = torch.argsort(edge_id, stable=True)
    sorted_edges = edge_id[order]
    same_as_next = torch.zeros_like(sorted_edges, dtype=torch.bool)
    same_as_next[:-1] = sorted_edges[1:] == sorted_edges[:-1]
    partner = torch.full_like(slot, -1)
    first, second = order[:-1][same_as_next[:-1]], order[1:][same_as_next[:-1]]
    partner[first], partner[second] = second, first
    return edges, torch.where(partner >= 0, torch.div(partner, 3, rounding_mode="floor"), partner).reshape(count, 3)


def _next(values: Tensor, axis: int) -> Tensor:
    """The value one pixel right (axis 2) or down (axis 1) of each pixel; the last column or row
    repeats itself, which makes its pairs look covered by one triangle and so leaves them alone."""
    last = values.narrow(axis, values.shape[axis] - 1, 1)
    return torch.cat([values.narrow(axis, 1, values.shape[axis] - 1), last], dim=axis)


def antialias(image: Tensor, view: GBuffer, neighbours: Tensor | None = None) -> Tensor:
    """(B, H, W, C) image rendered from `view` (shaded, background included) -> the same image with
    its silhouettes antialiased, differentiable in the image and in the view's vertex positions.
    neighbours: `edge_neighbours(view.triangles)`, to reuse across steps on a fixed topology.

    The pairs to blend are found densely without gradients (both directions and all three edges at
    once); only they, a few per silhouette pixel, are then gathered with gradients. The one wait
    for the GPU is the count of those pairs; the gradients never scatter from every pixel."""
    if view.clip is None or view.triangles is None:
        raise ValueError("antialias needs a GBuffer from render_gbuffer (it keeps clip positions and triangles)")
    if view.nvdiffrast_raster is not None:
        return _nvdiffrast_antialias(image, view)
    batch, height, width, channels = image.shape
    triangles = view.triangles
    if neighbours is None:
        neighbours = edge_neighbours(triangles)
    # Screen positions in pixels, centres at (i + 0.5, j + 0.5), row 0 at the top.
    w = view.clip[..., 3].clamp_min(1e-8)
    screen = torch.stack([(view.clip[..., 0] / w + 1) * (0.5 * width),
                          (1 - view.clip[..., 1] / w) * (0.5 * height)], dim=-1)  # (B, V, 2)
    device = image.device
    with torch.no_grad():
        corners = screen[:, triangles]  # (B, F, 3, 2)
        first, second = corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0]
        facing = (first[..., 0] * second[..., 1] - first[..., 1] * second[..., 0]) > 0  # (B, F)
        ids = view.triangle_id
        far = torch.where(ids >= 0, view.depth, torch.full_like(view.depth, torch.inf))
        # Direction 0 pairs each pixel with its right neighbour, direction 1 with the one below: (2, B, H, W).
        ids_a, ids_b = ids.expand(2, -1, -1, -1), torch.stack([_next(ids, 2), _next(ids, 1)])
        a_in_front = far.expand(2, -1, -1, -1) <= torch.stack([_next(far, 2), _next(far, 1)])
        near_id = torch.where(a_in_front, ids_a, ids_b).clamp_min(0)
        rows = torch.arange(height, device=device, dtype=screen.dtype).view(height, 1).expand(height, width)
        cols = torch.arange(width, device=device, dtype=screen.dtype).view(1, width).expand(height, width)
        centre_a = (torch.stack([cols, rows], dim=-1) + 0.5).expand(2, batch, -1, -1, -1)
        step = torch.tensor([[1.0, 0.0], [0.0, 1.0]], device=device, dtype=screen.dtype).view(2, 1, 1, 1, 2)
        near_centre = torch.where(a_in_front[..., None], centre_a, centre_a + step)
        far_centre = torch.where(a_in_front[..., None], centre_a + step, centre_a)
        views = torch.arange(batch, device=device).view(1, batch, 1, 1)
        start = corners[views, near_id]  # (2, B, H, W, 3, 2)
        edge = start.roll(-1, dims=-2) - start
        d_near = _side(start, edge, near_centre[..., None, :])
        d_far = _side(start, edge, far_centre[..., None, :])
        other = neighbours[near_id]  # (2, B, H, W, 3): the face across each edge of the near triangle
        silhouette = (other < 0) | (facing[views[..., None], other.clamp_min(0)] != facing[views, near_id][..., None])
        # Each edge is handled by the pairs across it (left-right for steep edges, top-bottom for
        # flat ones), so that no coverage is counted twice; the first crossed edge of each pair wins.
        steep_wanted = torch.tensor([True, False], device=device).view(2, 1, 1, 1, 1)
        crossing = ((ids_a != ids_b)[..., None] & (d_near * d_far < 0) & silhouette
                    & ((edge[..., 1].abs() >= edge[..., 0].abs()) == steep_wanted))
        crossing = crossing & (crossing.cumsum(dim=-1) == 1)
        direction, b, row, col, k = torch.nonzero(crossing, as_tuple=True)
        front = a_in_front[direction, b, row, col]
        near, centre = near_id[direction, b, row, col], near_centre[direction, b, row, col]
        other_centre = far_centre[direction, b, row, col]
        pixel_a = (b * height + row) * width + col
        pixel_b = pixel_a + torch.where(direction == 0, 1, width)
    # With gradients, for the pairs found only.
    flat_screen = screen.reshape(-1, 2)
    count = screen.shape[1]
    edge_start = flat_screen.index_select(0, b * count + triangles[near, k])
    edge_end = flat_screen.index_select(0, b * count + triangles[near, (k + 1) % 3])
    edge_vector = edge_end - edge_start
    near_side, far_side = _side(edge_start, edge_vector, centre), _side(edge_start, edge_vector, other_centre)
    alpha = (near_side / (near_side - far_side)).clamp(0.0, 1.0)
    into_far, short_of_far = (alpha - 0.5).clamp_min(0.0), (0.5 - alpha).clamp_min(0.0)
    weight_a = torch.where(front, short_of_far, into_far)[:, None]
    weight_b = torch.where(front, into_far, short_of_far)[:, None]
    flat_image = image.reshape(-1, channels)
    colour_a, colour_b = flat_image.index_select(0, pixel_a), flat_image.index_select(0, pixel_b)
    delta = torch.zeros_like(flat_image).index_add(0, pixel_a, weight_a * (colour_b - colour_a))
    delta = delta.index_add(0, pixel_b, weight_b * (colour_a - colour_b))
    return (flat_image + delta).reshape(batch, height, width, channels)


def _side(start: Tensor, edge: Tensor, point: Tensor) -> Tensor:
    """Which side of the line through `start` along `edge` each point lies on (2D cross product)."""
    offset = point - start
    return edge[..., 0] * offset[..., 1] - edge[..., 1] * offset[..., 0]


def _nvdiffrast_antialias(image: Tensor, view: GBuffer) -> Tensor:
    import nvdiffrast.torch as dr

    # nvdiffrast's images have row 0 at the bottom.
    flipped = image.flip(1).to(torch.float32).contiguous()
    smoothed = dr.antialias(flipped, view.nvdiffrast_raster, view.clip.to(torch.float32).contiguous(),
                            view.triangles.to(torch.int32).contiguous())
    return smoothed.flip(1).to(image.dtype)
