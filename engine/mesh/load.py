"""Read the meshes users bring: OBJ, glTF/GLB, PLY and the job folder's mesh.npz.

Positions come back unchanged, in the file's own frame, with the name of that frame's up
axis; `Normalization` maps them into the engine's Z-up unit box and back.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import trimesh
from PIL import Image

from ..errors import BadInputError
from .types import TriangleMesh

TRIMESH_FORMATS = (".obj", ".glb", ".gltf", ".ply")
SUPPORTED_FORMATS = TRIMESH_FORMATS + (".npz",)
UP_AXES = ("Y", "Z")
# write_obj puts this comment at the top of its OBJ files, whose positions stay in the user's
# frame (often Blender's Z-up); reading it back keeps that frame instead of assuming Y-up.
OBJ_UP_AXIS_COMMENT = "# up_axis "
_OBJ_HEADER_LINES = 20

# The largest base-colour texture read from a mesh file: 16,384 x 16,384 pixels (268 M; 805 MB
# decoded). Pillow's own decompression-bomb guard (89 M pixels, about 9,500 x 9,500) would make
# the mesh reader drop a bigger texture without a word; this limit replaces it only while a mesh
# file is read, and a texture over it is refused with a message naming it.
MAX_TEXTURE_SIDE = 16_384
MAX_TEXTURE_PIXELS = MAX_TEXTURE_SIDE ** 2

_EXPORT_HINT = "Export the object from Blender as .obj, .glb or .ply (File > Export) and try again."


def load_mesh(path: str | Path, up_axis: str | None = None) -> tuple[TriangleMesh, str]:
    """The mesh in `path` and the up axis ("Y" or "Z") of the frame its positions are in.

    `up_axis`, when given, overrides what the file implies: Y for .obj/.glb/.gltf/.ply (glTF's
    rule, and what most OBJ exporters write; an OBJ from write_obj says its own), Z for
    mesh.npz unless its `up_axis` array says otherwise.
    mesh.npz comes back vertex for vertex. Other formats merge all their parts (node
    transforms applied), triangulate polygons and weld exactly coinciding vertices; UVs are
    kept per corner, and dropped unless every part has them.
    """
    mesh, _texture, file_up_axis = _load(path, up_axis, want_texture=False)
    return mesh, file_up_axis


def load_textured_mesh(path: str | Path, up_axis: str | None = None) -> tuple[TriangleMesh, np.ndarray | None, str]:
    """Like `load_mesh`, plus the base-colour texture as uint8 (H, W, 3) when the file has one.

    The texture comes from an OBJ's MTL `map_Kd` or a glTF material's `baseColorTexture`.
    It is None when the file has no texture or no UVs to place it with.
    """
    return _load(path, up_axis, want_texture=True)


def _load(path: str | Path, up_axis: str | None, want_texture: bool) -> tuple[TriangleMesh, np.ndarray | None, str]:
    path = Path(path)
    chosen_up_axis = _check_up_axis(up_axis) if up_axis is not None else None
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_FORMATS:
        raise BadInputError(f"Cannot read {path.name}: unsupported mesh format {suffix or '(no extension)'!r}.",
                            f"Use one of {', '.join(SUPPORTED_FORMATS)}. {_EXPORT_HINT}")
    if not path.is_file():
        raise BadInputError(f"Mesh file not found: {path}.", "Check the path; it is relative to the current folder.")
    if suffix == ".npz":
        mesh, file_up_axis = _load_npz(path)
        return mesh, None, chosen_up_axis or file_up_axis
    mesh, texture = _load_with_trimesh(path, want_texture)
    file_up_axis = _obj_up_axis_comment(path) if suffix == ".obj" else None
    return mesh, texture, chosen_up_axis or file_up_axis or "Y"


def _check_up_axis(value: str) -> str:
    normalized = str(value).strip().upper()
    if normalized not in UP_AXES:
        raise BadInputError(f"Unknown up axis {value!r}.", "Use \"Z\" (Blender) or \"Y\" (glTF, most OBJ files).")
    return normalized


def _load_npz(path: Path) -> tuple[TriangleMesh, str]:
    hint = "mesh.npz needs float32 positions (V, 3) and int triangles (F, 3); see docs/job-protocol.md."
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise BadInputError(f"Cannot read {path.name}: not a valid .npz archive ({_describe(error)}).", hint) from error
    for name in ("positions", "triangles"):
        if name not in arrays:
            raise BadInputError(f"{path.name} has no {name!r} array.", hint)
    positions, triangles = arrays["positions"], arrays["triangles"]
    if positions.ndim != 2 or positions.shape[1] != 3 or not np.issubdtype(positions.dtype, np.number):
        raise BadInputError(f"{path.name}: positions must be a number array of shape (V, 3), got {positions.shape}.", hint)
    if triangles.ndim != 2 or triangles.shape[1] != 3 or not np.issubdtype(triangles.dtype, np.integer):
        raise BadInputError(f"{path.name}: triangles must be an integer array of shape (F, 3), "
                            f"got {triangles.dtype} {triangles.shape}.", hint)
    corner_uvs = arrays.get("corner_uvs")
    if corner_uvs is not None:
        if corner_uvs.shape != (triangles.shape[0], 3, 2) or not np.issubdtype(corner_uvs.dtype, np.number):
            raise BadInputError(f"{path.name}: corner_uvs must have shape (F, 3, 2) = ({triangles.shape[0]}, 3, 2), "
                                f"got {corner_uvs.shape}.", hint)
        corner_uvs = corner_uvs.astype(np.float32)
    up_axis = _check_up_axis(_array_text(arrays["up_axis"])) if "up_axis" in arrays else "Z"
    mesh = TriangleMesh(positions.astype(np.float32), triangles.astype(np.int64), corner_uvs)
    return mesh, up_axis


def _array_text(array: np.ndarray) -> str:
    """A 0-d or 1-element string array as text, whether numpy stored it as str or bytes."""
    value = array.reshape(-1)[0].item() if array.size == 1 else array
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _load_with_trimesh(path: Path, want_texture: bool) -> tuple[TriangleMesh, np.ndarray | None]:
    try:
        # process=False keeps faces as written (no merging, no reordering, no dropped faces;
        # validate_mesh decides what to drop). maintain_order is left off: with it trimesh 5
        # loses the UVs of OBJ files that have UV seams.
        with _texture_size_limit() as refused:
            scene = trimesh.load_scene(str(path), process=False)
        # Bakes every node's transform into copies of its geometry, so instanced parts land in place.
        parts = [part for part in scene.dump() if isinstance(part, trimesh.Trimesh) and len(part.faces) > 0]
    except Exception as error:  # noqa: BLE001 - any parser failure on a user's file is a bad input
        raise BadInputError(f"Cannot read {path.name}: not a valid {path.suffix.lower()} file ({_describe(error)}).",
                            f"The file may be damaged or not a mesh. {_EXPORT_HINT}") from error
    if want_texture:
        _refuse_large_texture(refused)
    if not parts:
        raise BadInputError(f"{path.name} has no faces (only vertices, lines or nothing).",
                            "Export a mesh object with faces (not only points, curves or empty objects).")
    return _merge_parts(parts, want_texture)


class _RefusedImages(logging.Handler):
    """Notes the images Pillow refused as too large: trimesh logs (at debug level) and skips them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            self.count += 1


@contextlib.contextmanager
def _texture_size_limit() -> Iterator[_RefusedImages]:
    """Pillow's guard at MAX_TEXTURE_PIXELS (any image over it refused, not only those over twice
    it) for this read only, counting the images it refuses (_refuse_large_texture says so)."""
    logger = logging.getLogger("trimesh")
    refused, previous_level, previous_limit = _RefusedImages(), logger.level, Image.MAX_IMAGE_PIXELS
    logger.addHandler(refused)
    logger.setLevel(logging.DEBUG)
    Image.MAX_IMAGE_PIXELS = MAX_TEXTURE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield refused
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
        logger.setLevel(previous_level)
        logger.removeHandler(refused)


def _refuse_large_texture(refused: _RefusedImages) -> None:
    if refused.count:
        raise BadInputError(f"The mesh has a texture larger than {MAX_TEXTURE_SIDE:,} x {MAX_TEXTURE_SIDE:,} "
                            "pixels, the most the engine reads.",
                            f"Scale the texture down to at most {MAX_TEXTURE_SIDE:,} pixels a side in Blender "
                            "(Image > Resize) and export again.")


def _merge_parts(parts: list[trimesh.Trimesh], want_texture: bool) -> tuple[TriangleMesh, np.ndarray | None]:
    positions, triangles, uvs, textures = [], [], [], []
    offset = 0
    for part in parts:
        faces = np.asarray(part.faces, dtype=np.int64)
        positions.append(np.asarray(part.vertices, dtype=np.float32))
        triangles.append(faces + offset)
        offset += len(part.vertices)
        part_uv = _vertex_uvs(part)
        uvs.append(None if part_uv is None else part_uv[faces])
        if want_texture:
            textures.append(_base_color_image(part))
    # UVs only mean something if every part has them; otherwise the whole mesh is re-unwrapped.
    corner_uvs = np.concatenate(uvs).astype(np.float32) if all(uv is not None for uv in uvs) else None
    # OBJ and glTF readers split a vertex wherever its corners differ in UV or normal. UVs are
    # per corner here, so weld exactly coinciding positions back: normals then stay smooth
    # across UV seams, as they are in Blender.
    welded, welded_index = np.unique(np.concatenate(positions), axis=0, return_inverse=True)
    mesh = TriangleMesh(welded, welded_index.reshape(-1)[np.concatenate(triangles)], corner_uvs)
    texture = _single_texture(textures) if want_texture and corner_uvs is not None else None
    return mesh, texture


def _vertex_uvs(part: trimesh.Trimesh) -> np.ndarray | None:
    uv = getattr(part.visual, "uv", None)
    if uv is None:
        return None
    uv = np.asarray(uv, dtype=np.float64)
    if uv.ndim != 2 or uv.shape != (len(part.vertices), 2):
        return None
    return uv


def _base_color_image(part: trimesh.Trimesh) -> Image.Image | None:
    material = getattr(part.visual, "material", None)
    if material is None:
        return None
    # PBRMaterial (glTF) keeps baseColorTexture; SimpleMaterial (OBJ map_Kd) keeps image.
    image = getattr(material, "baseColorTexture", None)
    if image is None:
        image = getattr(material, "image", None)
    return image if isinstance(image, Image.Image) else None


def _single_texture(images: list[Image.Image | None]) -> np.ndarray | None:
    """One texture for the whole mesh; several different ones cannot share one UV atlas."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images if image is not None]
    if not arrays:
        return None
    if len(arrays) < len(images):
        raise BadInputError("Only some parts of the mesh have a base-colour texture.",
                            "Join the objects and bake them to one texture in Blender, or texture the mesh first.")
    first = arrays[0]
    if any(other.shape != first.shape or not np.array_equal(other, first) for other in arrays[1:]):
        raise BadInputError(f"The mesh uses {len(arrays)} different textures; editing needs a single texture atlas.",
                            "Join the objects and bake them to one texture in Blender, or texture the mesh first.")
    return first


def _obj_up_axis_comment(path: Path) -> str | None:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for _ in range(_OBJ_HEADER_LINES):
            line = handle.readline()
            if line.startswith(OBJ_UP_AXIS_COMMENT):
                value = line[len(OBJ_UP_AXIS_COMMENT):].strip().upper()
                return value if value in UP_AXES else None
    return None


def _describe(error: Exception) -> str:
    """The exception's type and the first line of its message, short enough for one line."""
    lines = str(error).strip().splitlines()
    message = lines[0].rstrip(".")[:200] if lines else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
