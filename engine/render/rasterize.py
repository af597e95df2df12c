"""Triangle rasterization: which triangle covers each pixel, and where inside it.

Two backends give the same `Rasterized`:
  "torch": our own vectorised rasterizer in plain PyTorch (CPU or CUDA). Per view, every
      triangle's pixel bounding box is enumerated in bounded-size chunks, coverage is an
      edge-function test, and a z-buffer (scatter_reduce amin on NDC depth, ties to the lowest
      triangle id) picks the visible triangle. Barycentrics are then recomputed for the
      visible triangles only, differentiably, from the clip-space positions.
  "nvdiffrast": NVIDIA's hardware-speed rasterizer, when it is installed.

Conventions: pixel centres at ((i + 0.5) / W, (j + 0.5) / H); image row 0 is the top (NDC y = +1);
triangles are two-sided; triangles with a corner behind the near plane are dropped (the engine's
cameras never get that close to the unit box).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import BadInputError, DeviceError

BACKENDS = ("auto", "torch", "nvdiffrast")
# Candidate (triangle, pixel) pairs tested at once; bounds the torch backend's memory (~100 bytes each).
CANDIDATE_BUDGET = 1 << 21
# Triangles set up at once (per-triangle float64 work); bounds memory for million-triangle meshes.
TRIANGLE_BLOCK = 1 << 18
# Coverage tolerance in barycentric units: pixel centres exactly on a shared edge must not fall
# through both triangles because of float32 rounding (the z-buffer resolves the double cover).
EDGE_TOLERANCE = 1e-6
# Twice the screen-space area (pixels^2) below which a triangle is edge-on and covers nothing.
MIN_DOUBLE_AREA = 1e-10


@dataclass
class Rasterized:
    """Per-pixel rasterization result, images (B, H, W, ...) with row 0 at the top.

    triangle_id: (B, H, W) int64, -1 where no triangle covers the pixel
    barycentric: (B, H, W, 3) perspective-correct weights of the triangle's corners (0 where empty)
    depth: (B, H, W) view-space depth along the view axis (clip w), 0 where empty
    nvdiffrast_raster: nvdiffrast's own (B, H, W, 4) output, row 0 at the bottom (its antialias
        needs it); None from the torch backend
    """

    triangle_id: Tensor
    barycentric: Tensor
    depth: Tensor
    nvdiffrast_raster: Tensor | None = None

    @property
    def mask(self) -> Tensor:
        return self.triangle_id >= 0


def nvdiffrast_available() -> bool:
    try:
        import nvdiffrast.torch  # noqa: F401
    except ImportError:
        return False
    return True


def rasterize(clip_positions: Tensor, triangles: Tensor, height: int, width: int, backend: str = "auto") -> Rasterized:
    """Rasterize (B, V, 4) clip-space vertices of the (F, 3) triangles into (B, height, width) images.

    backend "auto" uses nvdiffrast for CUDA tensors when it is installed, else "torch".
    """
    if backend not in BACKENDS:
        raise BadInputError(f"Unknown rasterizer backend {backend!r}.", f"Use one of {', '.join(BACKENDS)}.")
    if clip_positions.ndim != 3 or clip_positions.shape[-1] != 4:
        raise ValueError(f"clip_positions must be (B, V, 4), got {tuple(clip_positions.shape)}")
    if triangles.ndim != 2 or triangles.shape[-1] != 3:
        raise ValueError(f"triangles must be (F, 3), got {tuple(triangles.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    triangles = triangles.to(device=clip_positions.device, dtype=torch.long)
    if backend == "auto":
        backend = "nvdiffrast" if clip_positions.is_cuda and nvdiffrast_available() else "torch"
    if backend == "nvdiffrast":
        return _rasterize_nvdiffrast(clip_positions, triangles, height, width)
    return _rasterize_torch(clip_positions, triangles, height, width)


def rasterize_uv(corner_uvs: Tensor, height: int, width: int, backend: str = "auto") -> Rasterized:
    """Rasterize triangles laid out in UV space, (F, 3, 2) in [0, 1], into a (1, height, width) texture.

    Row 0 is v = 1 (the texture image's top). triangle_id indexes the F triangles and barycentric
    weights their 3 corners, so `interpolate` works with per-corner or per-vertex attributes.
    """
    if corner_uvs.ndim != 3 or corner_uvs.shape[1:] != (3, 2):
        raise ValueError(f"corner_uvs must be (F, 3, 2), got {tuple(corner_uvs.shape)}")
    uv = corner_uvs.reshape(-1, 2).to(torch.float32)
    clip = torch.cat([uv * 2.0 - 1.0, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], dim=-1)
    corners = torch.arange(uv.shape[0], device=uv.device).reshape(-1, 3)
    return rasterize(clip[None], corners, height, width, backend)


def interpolate(attribute: Tensor, rast: Rasterized, triangles: Tensor, per_corner: bool | None = None) -> Tensor:
    """Attribute values at each pixel, (B, H, W, C); zeros where no triangle covers the pixel.

    attribute: per vertex (V, C), (1, V, C) or (B, V, C), or per corner (F, 3, C). A 3-D attribute whose
    shape starts with (F, 3) is taken as per corner unless per_corner=False says otherwise.
    Differentiable w.r.t. the attribute and the barycentrics.
    """
    batch, height, width = rast.triangle_id.shape
    triangles = triangles.to(device=rast.triangle_id.device, dtype=torch.long)
    if per_corner is None:
        per_corner = attribute.ndim == 3 and attribute.shape[:2] == (triangles.shape[0], 3)
    flat_ids = rast.triangle_id.reshape(-1)
    covered = torch.nonzero(flat_ids >= 0).squeeze(1)
    face = flat_ids[covered]
    weights = rast.barycentric.reshape(-1, 3)[covered]
    if per_corner:
        corner_values = attribute[face]  # (K, 3, C)
    elif attribute.ndim == 2 or (attribute.ndim == 3 and attribute.shape[0] == 1):
        corner_values = attribute.reshape(-1, attribute.shape[-1])[triangles[face]]
    elif attribute.ndim == 3 and attribute.shape[0] == batch:
        view = torch.div(covered, height * width, rounding_mode="floor")
        corner_values = attribute[view[:, None], triangles[face]]
    else:
        raise ValueError(f"attribute of shape {tuple(attribute.shape)} is neither (V, C), (B, V, C) nor (F, 3, C)")
    values = (weights[:, :, None] * corner_values).sum(dim=1)
    out = torch.zeros(batch * height * width, values.shape[-1], dtype=values.dtype, device=values.device)
    return out.index_put((covered,), values).reshape(batch, height, width, -1)


def _pixel_ndc(pixel: Tensor, height: int, width: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """NDC (x, y) of flat pixel indices' centres; row 0 is NDC y = +1."""
    row = torch.div(pixel, width, rounding_mode="floor")
    col = pixel - row * width
    x = (2 * col + 1).to(dtype) / width - 1.0
    y = 1.0 - (2 * row + 1).to(dtype) / height
    return x, y


def _resolve_barycentrics(clip: Tensor, triangles: Tensor, triangle_id: Tensor, height: int, width: int
                          ) -> Rasterized:
    """Perspective-correct barycentrics and view depth of the given visible triangles, differentiably.

    Solved in homogeneous clip space: weights l with sum_i l_i (x_i - px w_i) = 0,
    sum_i l_i (y_i - py w_i) = 0 and sum_i l_i = 1, i.e. l is the normalised cross product of
    u = x - px w and v = y - py w over the three corners. No division by w is needed.
    """
    batch = clip.shape[0]
    flat_ids = triangle_id.reshape(-1)
    covered = torch.nonzero(flat_ids >= 0).squeeze(1)
    view = torch.div(covered, height * width, rounding_mode="floor")
    pixel = covered - view * (height * width)
    corners = clip[view[:, None], triangles[flat_ids[covered]]]  # (K, 3, 4)
    px, py = _pixel_ndc(pixel, height, width, clip.dtype)
    u = corners[..., 0] - px[:, None] * corners[..., 3]
    v = corners[..., 1] - py[:, None] * corners[..., 3]
    cross = torch.stack([u[:, 1] * v[:, 2] - u[:, 2] * v[:, 1],
                         u[:, 2] * v[:, 0] - u[:, 0] * v[:, 2],
                         u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]], dim=-1)
    weights = cross / cross.sum(dim=-1, keepdim=True)
    depth = (weights * corners[..., 3]).sum(dim=-1)
    total = batch * height * width
    barycentric = torch.zeros(total, 3, dtype=clip.dtype, device=clip.device).index_put((covered,), weights)
    depth_image = torch.zeros(total, dtype=clip.dtype, device=clip.device).index_put((covered,), depth)
    return Rasterized(triangle_id.reshape(batch, height, width),
                      barycentric.reshape(batch, height, width, 3), depth_image.reshape(batch, height, width))


def _rasterize_torch(clip: Tensor, triangles: Tensor, height: int, width: int) -> Rasterized:
    with torch.no_grad():
        ids = torch.stack([_visible_triangles(clip[b].detach(), triangles, height, width)
                           for b in range(clip.shape[0])])
    return _resolve_barycentrics(clip, triangles, ids, height, width)


def _visible_triangles(clip: Tensor, triangles: Tensor, height: int, width: int) -> Tensor:
    """(H * W,) id of the nearest triangle covering each pixel of one view, -1 where none."""
    device = clip.device
    clip64 = clip.to(torch.float64)
    w = clip64[:, 3]
    in_front = (w > 0) & (clip64[:, 2] >= -w)
    safe_w = torch.where(in_front, w, torch.ones_like(w))
    screen_x = (clip64[:, 0] / safe_w + 1.0) * (width / 2)
    screen_y = (1.0 - clip64[:, 1] / safe_w) * (height / 2)
    ndc_z = clip64[:, 2] / safe_w
    depth_buffer = torch.full((height * width,), torch.inf, dtype=torch.float32, device=device)
    id_buffer = torch.full((height * width,), -1, dtype=torch.long, device=device)
    for start in range(0, triangles.shape[0], TRIANGLE_BLOCK):
        block = triangles[start:start + TRIANGLE_BLOCK]
        setup = _setup_triangles(block, in_front, screen_x, screen_y, ndc_z, height, width)
        if setup is None:
            continue
        face_ids, coefficients, boxes = setup
        _rasterize_block(face_ids + start, coefficients, boxes, width, depth_buffer, id_buffer)
    return id_buffer


def _setup_triangles(block: Tensor, in_front: Tensor, screen_x: Tensor, screen_y: Tensor, ndc_z: Tensor,
                     height: int, width: int) -> tuple[Tensor, Tensor, Tensor] | None:
    """Per visible triangle: its index in the block, plane coefficients and pixel bounding box.

    coefficients (n, 9) float32: barycentrics b0, b1 and NDC depth as a * dx + b * dy + c, where
    (dx, dy) is the pixel's offset from the bounding box's first pixel (small numbers keep
    float32 accurate). boxes (n, 4) int64: first column, first row, box width, box height.
    """
    keep = in_front[block].all(dim=1)
    xs, ys = screen_x[block], screen_y[block]
    # Bounding box in pixel indices whose centres (i + 0.5) lie inside [min, max].
    x0 = torch.ceil(xs.min(dim=1).values - 0.5).clamp(0, width)
    x1 = torch.floor(xs.max(dim=1).values - 0.5).clamp(-1, width - 1)
    y0 = torch.ceil(ys.min(dim=1).values - 0.5).clamp(0, height)
    y1 = torch.floor(ys.max(dim=1).values - 0.5).clamp(-1, height - 1)
    keep &= (x1 >= x0) & (y1 >= y0)
    # Corners relative to the box's first pixel centre.
    rx = xs - (x0 + 0.5)[:, None]
    ry = ys - (y0 + 0.5)[:, None]
    double_area = (rx[:, 1] - rx[:, 0]) * (ry[:, 2] - ry[:, 0]) - (rx[:, 2] - rx[:, 0]) * (ry[:, 1] - ry[:, 0])
    keep &= double_area.abs() > MIN_DOUBLE_AREA
    face_ids = torch.nonzero(keep).squeeze(1)
    if face_ids.numel() == 0:
        return None
    rx, ry, zs, double_area = rx[face_ids], ry[face_ids], ndc_z[block[face_ids]], double_area[face_ids]
    # b0 is the edge function of edge (1, 2), b1 that of edge (2, 0), both over the signed area,
    # so they are positive inside whatever the winding (two-sided).
    a0 = (ry[:, 1] - ry[:, 2]) / double_area
    bb0 = (rx[:, 2] - rx[:, 1]) / double_area
    c0 = (rx[:, 1] * ry[:, 2] - rx[:, 2] * ry[:, 1]) / double_area
    a1 = (ry[:, 2] - ry[:, 0]) / double_area
    bb1 = (rx[:, 0] - rx[:, 2]) / double_area
    c1 = (rx[:, 2] * ry[:, 0] - rx[:, 0] * ry[:, 2]) / double_area
    dz0, dz1 = zs[:, 0] - zs[:, 2], zs[:, 1] - zs[:, 2]
    coefficients = torch.stack([a0, bb0, c0, a1, bb1, c1,
                                dz0 * a0 + dz1 * a1, dz0 * bb0 + dz1 * bb1, zs[:, 2] + dz0 * c0 + dz1 * c1], dim=1)
    x0, y0 = x0[face_ids].long(), y0[face_ids].long()
    boxes = torch.stack([x0, y0, x1[face_ids].long() - x0 + 1, y1[face_ids].long() - y0 + 1], dim=1)
    return face_ids, coefficients.to(torch.float32), boxes


def _rasterize_block(face_ids: Tensor, coefficients: Tensor, boxes: Tensor, width: int,
                     depth_buffer: Tensor, id_buffer: Tensor) -> None:
    """Test every pixel of every triangle's box, in chunks, and update the z-buffer in place."""
    device = face_ids.device
    counts = boxes[:, 2] * boxes[:, 3]
    ends = torch.cumsum(counts, dim=0)
    # Chunk boundaries: consecutive triangles whose boxes hold about CANDIDATE_BUDGET pixels together.
    total = int(ends[-1])
    marks = torch.arange(1, (total - 1) // CANDIDATE_BUDGET + 1, device=device) * CANDIDATE_BUDGET
    cuts = torch.searchsorted(ends, marks, right=True).tolist()
    bounds = sorted(set([0] + [c for c in cuts if 0 < c < face_ids.shape[0]] + [face_ids.shape[0]]))
    for first, last in zip(bounds[:-1], bounds[1:]):
        chunk_counts = counts[first:last]
        local = torch.repeat_interleave(torch.arange(last - first, device=device), chunk_counts)
        starts = ends[first:last] - chunk_counts
        box = boxes[first:last][local]
        offset = torch.arange(local.shape[0], device=device) - (starts - starts[0])[local]
        dy = torch.div(offset, box[:, 2], rounding_mode="floor")
        dx = offset - dy * box[:, 2]
        co = coefficients[first:last][local]
        fx, fy = dx.to(torch.float32), dy.to(torch.float32)
        b0 = co[:, 0] * fx + co[:, 1] * fy + co[:, 2]
        b1 = co[:, 3] * fx + co[:, 4] * fy + co[:, 5]
        z = co[:, 6] * fx + co[:, 7] * fy + co[:, 8]
        inside = ((b0 >= -EDGE_TOLERANCE) & (b1 >= -EDGE_TOLERANCE) & (b0 + b1 <= 1.0 + EDGE_TOLERANCE)
                  & (z <= 1.0))
        hit = torch.nonzero(inside).squeeze(1)
        if hit.numel() == 0:
            continue
        pixel = (box[hit, 1] + dy[hit]) * width + box[hit, 0] + dx[hit]
        z, face = z[hit], face_ids[first:last][local[hit]]
        previous = depth_buffer.clone()
        depth_buffer.scatter_reduce_(0, pixel, z, reduce="amin")
        # Pixels this chunk made nearer forget their old triangle; ties keep the lowest id.
        id_buffer[depth_buffer < previous] = torch.iinfo(torch.long).max
        winner = z == depth_buffer[pixel]
        id_buffer.scatter_reduce_(0, pixel[winner], face[winner], reduce="amin")


_NVDIFFRAST_CONTEXTS: dict[torch.device, object] = {}


def _rasterize_nvdiffrast(clip: Tensor, triangles: Tensor, height: int, width: int) -> Rasterized:
    try:
        import nvdiffrast.torch as dr
    except ImportError as error:
        raise DeviceError("The nvdiffrast rasterizer is not installed.",
                          "Install nvdiffrast (pip install git+https://github.com/NVlabs/nvdiffrast) "
                          "or use the 'torch' rasterizer backend.") from error
    if not clip.is_cuda:
        raise DeviceError("The nvdiffrast rasterizer needs CUDA tensors.", "Use the 'torch' backend on the CPU.")
    context = _NVDIFFRAST_CONTEXTS.get(clip.device)
    if context is None:
        context = dr.RasterizeCudaContext(device=clip.device)
        _NVDIFFRAST_CONTEXTS[clip.device] = context
    raw, _ = dr.rasterize(context, clip.to(torch.float32).contiguous(), triangles.to(torch.int32).contiguous(),
                          resolution=[height, width])
    rast = raw.flip(1)  # nvdiffrast's row 0 is the bottom (NDC y = -1)
    triangle_id = rast[..., 3].round().long() - 1
    mask = triangle_id >= 0
    u, v = rast[..., 0], rast[..., 1]
    barycentric = torch.stack([u, v, 1.0 - u - v], dim=-1) * mask[..., None]
    corner_w = clip[..., 3]
    view = torch.arange(clip.shape[0], device=clip.device)[:, None, None, None]
    w = corner_w[view, triangles[triangle_id.clamp_min(0)]]  # (B, H, W, 3)
    depth = (barycentric * w).sum(dim=-1)
    return Rasterized(triangle_id, barycentric, depth, raw)
