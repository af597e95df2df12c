"""Regions: a texture or edit job that changes only some faces of an object and keeps the rest
texel for texel (docs/job-protocol.md, "Regions").

What the two jobs share, in the order they use it:
- `read_region`: the region file, checked at the edge (face indices or a per-face bool mask of the
  job's mesh, in its input order); every refusal says what is wrong and what to do;
- `KeptMaps`: what lies outside the region, in the mesh's UV layout (the kept texture, or an edit
  source's maps; roughness and metallic default to the matte start of a PBR field where nothing is kept);
- `RegionBlend`: the blend weight of a surface point, the share the new texture gets there: 0 outside
  the region and on its border, 1 beyond the band, linear in between. The band lies inside the region
  and is the wider of `feather_texels` texels (at the point's face's texel density in the kept
  texture) and `feather_distance` in the unit box, so the weight is
  min(1, d / max(feather_texels * texel_size, feather_distance)) with d the straight-line distance to
  the nearest border edge (an edge between a region face and a kept face): the contract's
  min(1, texel distance / feather_texels, surface distance / feather_distance), measured in 3-D so
  that UV seams inside the region make no band;
- `RegionLayers`: per view pixel, that weight and the kept maps' values, so a render shows the kept
  texture outside the region and the field inside (the field's share of each pixel is its weight);
- `favour_region_views`: the pool's views that see the region;
- `fit_field_to_texture`: a field regressed to a texture (a region texture job's to the kept texture,
  so the optimisation starts from what was there, and the state it saves holds the whole texture
  for an edit to continue).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.spatial import cKDTree
from torch import Tensor

from ...errors import BadInputError, first_line
from ...field.texture_field import START_METALLIC, START_ROUGHNESS, TextureField, fit_field
from ...files import to_uint8
from ...job.paths import file_inside
from ...mesh.load import MAX_TEXTURE_SIDE
from ...mesh.sampling import sample_surface
from ...mesh.types import TriangleMesh
from ...bake.region import RegionTexels, region_texels
from ...render.cameras import Cameras
from ...render.gbuffer import GBuffer
from ..views import RegionLayer, ViewPool
from .sources import EditSource

REGION_HINT = ("Make the region from this mesh's faces: a .npy of face indices (0-based, in the mesh's "
               "triangle order) or of one bool per face.")
# Fitting a field to a texture: surface samples drawn once, a batch of them per step.
FIT_SAMPLES = 1 << 18
# A region job keeps at least this many views (the best ones) when fewer see enough of the region.
MIN_REGION_VIEWS = 8
# Border edges are sampled this many times per band width for the nearest-edge search; the
# distance is then measured exactly to the edges of the nearest samples.
BORDER_SAMPLES_PER_BAND = 8
NEAREST_BORDER_SAMPLES = 4
MAX_BORDER_SAMPLES = 1 << 21
# A region file holds at most one int64 per face of the largest mesh the engine takes (2M faces):
# a larger file is refused before it is read into memory.
MAX_REGION_BYTES = 1 << 26


# --- The region file ----------------------------------------------------------------------------

def read_region(path: str | Path, input_faces: int, kept_triangles: np.ndarray, allow_whole_mesh: bool
                ) -> np.ndarray:
    """The region file at `path` as a bool mask over the prepared mesh's triangles (`kept_triangles`:
    the input index of each; degenerate input faces were dropped), or a BadInputError saying why not."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_REGION_BYTES + 1)
        if len(raw) > MAX_REGION_BYTES:
            raise BadInputError(f"The region file {path.name} is larger than {MAX_REGION_BYTES:,} bytes.", REGION_HINT)
        data = np.load(io.BytesIO(raw), allow_pickle=False)
    except FileNotFoundError as error:
        raise BadInputError(f"The region file {path} does not exist.", REGION_HINT) from error
    except (OSError, ValueError, EOFError) as error:
        raise BadInputError(f"The region file {path.name} is not a .npy array ({first_line(error)}).",
                            REGION_HINT) from error
    if not isinstance(data, np.ndarray) or data.ndim != 1:
        raise BadInputError(f"The region file {path.name} must hold a 1-D array, not one of shape "
                            f"{getattr(data, 'shape', '?')}.", REGION_HINT)
    if data.dtype == np.bool_:
        if data.shape[0] != input_faces:
            raise BadInputError(f"The region was made for a mesh with {data.shape[0]:,} faces; this mesh has "
                                f"{input_faces:,}.", "Make the region again from this mesh.")
        mask = data
    elif np.issubdtype(data.dtype, np.integer):
        if data.size and int(data.min()) < 0:
            raise BadInputError(f"The region names face {int(data.min())}; faces are numbered from 0.", REGION_HINT)
        if data.size and int(data.max()) >= input_faces:
            raise BadInputError(f"The region was made for a mesh with at least {int(data.max()) + 1:,} faces (it "
                                f"names face {int(data.max()):,}); this mesh has {input_faces:,}.",
                                "Make the region again from this mesh.")
        mask = np.zeros(input_faces, dtype=bool)
        mask[data.astype(np.int64)] = True
    else:
        raise BadInputError(f"The region file {path.name} holds {data.dtype} values, not face indices or bools.",
                            REGION_HINT)
    if not mask.any():
        raise BadInputError("The region selects no face.", "Select at least one face for the region.")
    if mask.all() and not allow_whole_mesh:
        raise BadInputError("The region selects every face of the mesh; nothing would be kept.",
                            "Run the job without a region to change the whole object, or set "
                            "region_allow_whole_mesh to true.")
    faces = mask[np.asarray(kept_triangles, dtype=np.int64)]
    if not faces.any():
        raise BadInputError("The region selects only degenerate faces (zero area), which the engine drops.",
                            "Select faces with area for the region.")
    return faces


# --- What is kept --------------------------------------------------------------------------------

@dataclass
class KeptMaps:
    """What a region job keeps outside the region: uint8 maps in the mesh's UV layout, row 0 at v = 1.
    roughness and metallic are None where nothing is kept of them (an albedo source)."""

    base_colour: np.ndarray  # (H, W, 3)
    roughness: np.ndarray | None = None  # (H, W)
    metallic: np.ndarray | None = None  # (H, W)

    @property
    def shape(self) -> tuple[int, int]:
        return self.base_colour.shape[0], self.base_colour.shape[1]

    def channels(self, channels: int) -> np.ndarray:
        """(H, W, channels) uint8, as a field of that many channels bakes: base colour, then for a
        PBR field roughness and metallic, a matte non-metal (the PBR field's start) where none is kept."""
        if channels == 3:
            return self.base_colour
        matte = [self.roughness, self.metallic]
        for index, start in enumerate((START_ROUGHNESS, START_METALLIC)):
            if matte[index] is None:
                matte[index] = np.full(self.shape, to_uint8(np.float32(start)), dtype=np.uint8)
        return np.concatenate([self.base_colour, np.stack(matte, axis=-1)], axis=-1)


def read_kept_image(path: str | Path, what: str, mode: str = "RGB") -> np.ndarray:
    """An image kept outside a region, as uint8 (H, W, 3) ("RGB") or (H, W) ("L")."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{what} {path} does not exist.", "Give the image file of the texture to keep.")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_TEXTURE_SIDE ** 2
    try:
        with Image.open(path) as image:
            if max(image.size) > MAX_TEXTURE_SIDE:
                raise BadInputError(f"{what} {path.name} is {image.size[0]} x {image.size[1]} pixels, more than "
                                    f"{MAX_TEXTURE_SIDE:,} a side.", "Scale it down in Blender (Image > Resize).")
            return np.asarray(image.convert(mode), dtype=np.uint8).copy()
    except (OSError, Image.DecompressionBombError, ValueError) as error:
        raise BadInputError(f"{what} {path.name} cannot be read as an image ({first_line(error)}).",
                            "Give a PNG or JPEG image.") from error
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def keep_texture_for(mesh_path: str | Path, keep_texture: str | None, mesh_texture: np.ndarray | None,
                     has_uvs: bool) -> KeptMaps:
    """A texture job's kept maps: the --keep-texture image, else the mesh file's own texture; a
    BadInputError when there is none, or no UVs to place it with."""
    if not has_uvs:
        raise BadInputError(f"{Path(mesh_path).name} has no usable UV layout, so no texture can be kept outside the "
                            "region.", "Unwrap the object in Blender (UV > Smart UV Project), texture it, and run "
                                       "the region job on that.")
    if keep_texture is not None:
        return KeptMaps(read_kept_image(keep_texture, "The texture to keep"))
    if mesh_texture is None:
        raise BadInputError(f"{Path(mesh_path).name} has no texture to keep outside the region.",
                            "Give the texture to keep (--keep-texture IMAGE, in the mesh's UV layout), or texture "
                            "the whole object first.")
    return KeptMaps(np.ascontiguousarray(mesh_texture[..., :3]))


def source_kept_maps(source: EditSource) -> KeptMaps:
    """An edit's kept maps: a mesh file's own texture, or the source job's texture.png and, for a PBR
    source, the roughness and metallic of its orm.png (G and B)."""
    if source.texture is not None:
        return KeptMaps(np.ascontiguousarray(source.texture[..., :3]))
    hint = "Pass the source job's output folder unchanged."
    texture = file_inside(source.path, "texture.png", "The source's texture.png")
    if texture is None:
        raise BadInputError(f"{source.path} has no texture.png to keep outside the region.", hint)
    kept = KeptMaps(read_kept_image(texture, "The source's texture"))
    orm = file_inside(source.path, "orm.png", "The source's orm.png")
    if source.material == "pbr" and orm is not None:
        packed = read_kept_image(orm, "The source's ORM map")
        if packed.shape[:2] != kept.shape:
            raise BadInputError(f"{source.path}'s orm.png is not the size of its texture.png.", hint)
        kept = KeptMaps(kept.base_colour, np.ascontiguousarray(packed[..., 1]), np.ascontiguousarray(packed[..., 2]))
    return kept


# --- Blend weights ---------------------------------------------------------------------------------

def _welded_edges(positions: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each face's three edges as sorted pairs of welded vertices (vertices at one position count as
    one, so a mesh split along UV seams has the same edges): (F * 3, 2), and the face of each."""
    _, welded = np.unique(positions, axis=0, return_inverse=True)
    corners = welded.reshape(-1)[triangles]
    edges = np.stack([corners, np.roll(corners, -1, axis=1)], axis=-1).reshape(-1, 2)
    return np.sort(edges, axis=1), np.repeat(np.arange(triangles.shape[0]), 3)


def border_segments(mesh_unit: TriangleMesh, faces: np.ndarray) -> np.ndarray:
    """(S, 2, 3) the edges between a region face and a kept face, in the unit box."""
    positions, triangles = np.asarray(mesh_unit.positions), np.asarray(mesh_unit.triangles, dtype=np.int64)
    edges, edge_face = _welded_edges(positions, triangles)
    keys, inverse = np.unique(edges, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    in_region = np.bincount(inverse, weights=faces[edge_face].astype(np.float64), minlength=len(keys))
    kept = np.bincount(inverse, weights=(~faces[edge_face]).astype(np.float64), minlength=len(keys))
    border = (in_region > 0) & (kept > 0)
    # An edge's endpoints: those of any face edge with its key.
    any_face_edge = np.zeros(len(keys), dtype=np.int64)
    any_face_edge[inverse] = np.arange(len(inverse))
    corner_index = any_face_edge[border]
    face, k = corner_index // 3, corner_index % 3
    start = positions[triangles[face, k]]
    end = positions[triangles[face, (k + 1) % 3]]
    return np.stack([start, end], axis=1).astype(np.float64)


def texel_sizes(mesh_unit: TriangleMesh, texture_shape: tuple[int, int]) -> np.ndarray:
    """(F,) the unit-box length of one texel of a (H, W) texture on each face (its UV density);
    faces with no UV area take the median of the others."""
    corners = np.asarray(mesh_unit.positions, dtype=np.float64)[np.asarray(mesh_unit.triangles)]
    area = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    uv = np.asarray(mesh_unit.corner_uvs, dtype=np.float64) * np.array([texture_shape[1], texture_shape[0]])
    uv_edges = uv[:, 1:] - uv[:, :1]
    uv_area = np.abs(uv_edges[:, 0, 0] * uv_edges[:, 1, 1] - uv_edges[:, 0, 1] * uv_edges[:, 1, 0])
    usable = uv_area > 1e-12
    sizes = np.zeros(len(area))
    sizes[usable] = np.sqrt(area[usable] / uv_area[usable])
    sizes[~usable] = np.median(sizes[usable]) if usable.any() else 0.0
    return sizes


def _point_segment_distances(points: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """(N, K) distances from N points to their K segments (N, K, 2, 3)."""
    start, direction = segments[..., 0, :], segments[..., 1, :] - segments[..., 0, :]
    length_sq = np.maximum((direction ** 2).sum(-1), 1e-30)
    t = np.clip(((points[:, None, :] - start) * direction).sum(-1) / length_sq, 0.0, 1.0)
    return np.linalg.norm(points[:, None, :] - (start + t[..., None] * direction), axis=-1)


@dataclass
class RegionBlend:
    """The new texture's share of each surface point of a region job (module docstring)."""

    faces: np.ndarray  # (F,) bool: the region's faces among the prepared mesh's triangles
    band: np.ndarray  # (F,) the band's width on each face, in the unit box (0: no band)
    segments: np.ndarray  # (S, 2, 3) border edges
    samples: cKDTree | None  # points along the border edges (None: no border or no band)
    sample_segment: np.ndarray  # (P,) the segment of each sample
    feather_texels: int
    feather_distance: float

    @staticmethod
    def build(mesh_unit: TriangleMesh, faces: np.ndarray, texture_shape: tuple[int, int], feather_texels: int,
              feather_distance: float) -> "RegionBlend":
        band = np.maximum(feather_texels * texel_sizes(mesh_unit, texture_shape), feather_distance)
        band[~faces] = 0.0
        segments = border_segments(mesh_unit, faces)
        widths = band[faces]
        tree, sample_segment = None, np.zeros(0, dtype=np.int64)
        if len(segments) and widths.max() > 0:
            spacing = widths[widths > 0].min() / BORDER_SAMPLES_PER_BAND
            lengths = np.linalg.norm(segments[:, 1] - segments[:, 0], axis=1)
            spacing = max(spacing, lengths.sum() / MAX_BORDER_SAMPLES)
            counts = np.ceil(lengths / spacing).astype(np.int64) + 1  # both ends, and at most `spacing` apart
            sample_segment = np.repeat(np.arange(len(segments)), counts)
            first = np.repeat(np.cumsum(counts) - counts, counts)
            t = (np.arange(counts.sum()) - first) / np.repeat(np.maximum(counts - 1, 1), counts)
            start, end = segments[sample_segment, 0], segments[sample_segment, 1]
            points = start + t[:, None] * (end - start)
            tree = cKDTree(points)
        return RegionBlend(faces, band, segments, tree, sample_segment, feather_texels, feather_distance)

    @property
    def count(self) -> int:
        return int(self.faces.sum())

    def weights(self, points: Tensor, faces: Tensor) -> Tensor:
        """(N,) in [0, 1]: the new texture's share at surface points (N, 3) (unit box) on `faces` (N,)."""
        face_np = faces.detach().cpu().numpy().astype(np.int64)
        weight = self.faces[face_np].astype(np.float64)
        inside = np.flatnonzero(weight > 0)
        band = self.band[face_np[inside]]
        feathered = inside[band > 0]
        if self.samples is not None and feathered.size:
            point_np = points.detach().cpu().numpy().astype(np.float64)[feathered]
            k = min(NEAREST_BORDER_SAMPLES, len(self.sample_segment))
            _, nearest = self.samples.query(point_np, k=k)
            nearest = nearest.reshape(len(point_np), k)
            distance = _point_segment_distances(point_np, self.segments[self.sample_segment[nearest]]).min(axis=1)
            weight[feathered] = np.minimum(1.0, distance / self.band[face_np[feathered]])
        return torch.from_numpy(weight).to(device=points.device, dtype=torch.float32)

    def summary(self) -> dict:
        """What the job's summary event says of the region."""
        return {"faces": self.count, "feather_texels": self.feather_texels,
                "feather_distance": self.feather_distance}


# --- The views ---------------------------------------------------------------------------------------

def surface_uvs(view: GBuffer, positions: Tensor, triangles: Tensor, corner_uvs: Tensor) -> Tensor:
    """(N, 2) UVs at a view's visible pixels (row-major, as view.position[view.mask]): the corner UVs
    weighted by the barycentrics of each pixel's surface point in its triangle."""
    face = view.triangle_id[view.mask]
    corners = positions[triangles[face]].double()
    a, b, c = corners.unbind(dim=1)
    e1, e2, p = b - a, c - a, view.position[view.mask].double() - a
    d11, d12, d22 = (e1 * e1).sum(-1), (e1 * e2).sum(-1), (e2 * e2).sum(-1)
    p1, p2 = (p * e1).sum(-1), (p * e2).sum(-1)
    denominator = (d11 * d22 - d12 * d12).clamp_min(1e-30)
    w1, w2 = (d22 * p1 - d12 * p2) / denominator, (d11 * p2 - d12 * p1) / denominator
    weights = torch.stack([1.0 - w1 - w2, w1, w2], dim=-1)[..., None]
    return (corner_uvs[face].double() * weights).sum(dim=1).float()


def sample_texture(texture: np.ndarray, uvs: Tensor) -> Tensor:
    """Bilinear values (N, C) in [0, 1] of a uint8 (H, W, C) image at UVs (v up: row 0 is v = 1)."""
    image = torch.tensor(texture).float().div(255.0).permute(2, 0, 1)[None]
    grid = torch.stack([uvs[:, 0] * 2.0 - 1.0, 1.0 - uvs[:, 1] * 2.0], dim=-1)[None, :, None, :]
    values = F.grid_sample(image, grid.to(image.dtype).cpu(), mode="bilinear", padding_mode="border",
                           align_corners=False)
    return values[0, :, :, 0].T.contiguous()


class RegionLayers:
    """Makes a view's RegionLayer (ViewPool's `region`): the blend weight and the kept values at
    each visible pixel, computed once per view (the geometry and the kept maps never change)."""

    def __init__(self, blend: RegionBlend, kept: np.ndarray, mesh_unit: TriangleMesh, device: torch.device):
        self.blend, self.kept = blend, kept
        self.positions = torch.as_tensor(mesh_unit.positions, dtype=torch.float32, device=device)
        self.triangles = torch.as_tensor(mesh_unit.triangles, dtype=torch.long, device=device)
        self.corner_uvs = torch.as_tensor(mesh_unit.corner_uvs, dtype=torch.float32, device=device)

    def __call__(self, view: GBuffer) -> RegionLayer:
        mask = view.mask
        device = view.position.device
        weight = torch.zeros(*mask.shape, 1, device=device)
        kept = torch.zeros(*mask.shape, self.kept.shape[-1], device=device)
        if mask.any():
            weight[mask] = self.blend.weights(view.position[mask], view.triangle_id[mask])[:, None]
            uvs = surface_uvs(view, self.positions, self.triangles, self.corner_uvs)
            kept[mask] = sample_texture(self.kept, uvs).to(device)
        return RegionLayer(weight, kept)


@dataclass
class JobViews:
    """A texture or edit job's view pool, with what its region (if any) adds to it."""

    views: ViewPool
    cameras: Cameras
    texels: RegionTexels | None = None  # the region's texels and blend weights, for previews and the bake
    view_share: float | None = None  # the share of the pool whose views see the region


def job_views(positions: Tensor, triangles: Tensor, cameras: Cameras, render_size: int, with_control: bool,
              channels: int, blend: RegionBlend | None, kept: KeptMaps | None, mesh_unit: TriangleMesh,
              min_share: float, device: torch.device) -> JobViews:
    """The views rasterised once, on first use; with a region, the kept texture drawn outside it and
    only the views that see it."""
    if blend is None:
        return JobViews(ViewPool(positions, triangles, cameras, render_size, with_control=with_control), cameras)
    kept_values = kept.channels(channels)
    views = ViewPool(positions, triangles, cameras, render_size, with_control=with_control,
                     region=RegionLayers(blend, kept_values, mesh_unit, device))
    views, view_share = favour_region_views(views, blend.faces, min_share)
    texels = region_texels(mesh_unit, blend.faces, kept_values, blend.weights, device)
    return JobViews(views, views.cameras, texels, view_share)


def favour_region_views(views: ViewPool, faces: np.ndarray, min_share: float) -> tuple[ViewPool, float]:
    """The pool's views in which the region covers at least `min_share` of the object's pixels (at
    least MIN_REGION_VIEWS: the best ones when fewer reach it); and the share of the pool kept.
    A region no view sees is refused."""
    region = torch.as_tensor(faces, device=views.positions.device)
    shares = []
    for index in range(len(views)):
        view, _ = views.get(index)
        visible = int(view.mask.sum())
        shares.append(float(region[view.triangle_id[view.mask]].sum()) / visible if visible else 0.0)
    shares_np = np.asarray(shares)
    if not (shares_np > 0).any():
        raise BadInputError("No camera view sees the region (it may be hidden inside the object).",
                            "Select faces on the outside of the object, or add a camera that sees them.")
    chosen = np.flatnonzero(shares_np >= min_share)
    if len(chosen) < min(MIN_REGION_VIEWS, len(views)):
        best = np.argsort(-shares_np, kind="stable")[:MIN_REGION_VIEWS]
        chosen = np.sort(best[shares_np[best] > 0])
    return views.subset([int(index) for index in chosen]), len(chosen) / len(views)


# --- Fitting a field to a texture -------------------------------------------------------------------

def fit_field_to_texture(field: TextureField, mesh_unit: TriangleMesh, texture: np.ndarray, steps: int,
                         generator: torch.Generator, device: torch.device, cancel) -> float:
    """Regress the field, at points spread over the surface by area, to the texture's colour there
    (looked up through the UVs, bilinearly). Returns the RMSE on the last batch."""
    points, uvs = sample_surface(mesh_unit, FIT_SAMPLES, generator)
    colours = sample_texture(np.ascontiguousarray(texture[..., :3]), uvs)
    return fit_field(field, points.to(device), colours.to(device), steps, generator, cancel)
