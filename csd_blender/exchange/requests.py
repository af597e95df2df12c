"""What each job asks for, as the add-on remembers it until the result comes back.

The job folder holds what the engine needs (job.json, mesh.npz, an edit's source); a request
holds what the import needs: which object the result goes back onto and how. A remote job keeps
its request in its job folder (request_to_dict), so a later session can import its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class ObjectRef:
    """A Blender object, found again by its session id (survives renames), else by its name."""

    name: str
    uid: int | None
    counts: dict[str, int]  # the mesh's vertex/loop/polygon counts when the job was made


@dataclass(frozen=True)
class MeshOverlay:
    """The exported mesh for the viewport's live preview (world space, mesh.npz's triangle order)."""

    positions: np.ndarray  # (V, 3)
    triangles: np.ndarray  # (F, 3)
    corner_uvs: np.ndarray | None  # (F, 3, 2); None until the engine's own UV layout arrives


@dataclass(frozen=True)
class TextureRequest:
    target: ObjectRef
    prompt: str
    uv_map: str | None  # the UV map the texture is made for; None when the engine unwraps
    needs_uvs: bool  # the engine makes a new UV layout, added to the object on import
    tri_loops: np.ndarray  # (F, 3) loop index of each triangle corner, to put new UVs back
    overlay: MeshOverlay


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    location: tuple[float, float, float]  # where the new asset goes (the 3D cursor)


@dataclass(frozen=True)
class EditRequest:
    target: ObjectRef
    prompt: str  # the target prompt
    uv_map: str | None
    mode: Literal["material", "object"]  # a new texture on the object, or a new object (geometry edit)
    source_task: Literal["texture", "generate"]  # what made the edited result


JobRequest = TextureRequest | GenerateRequest | EditRequest


# -- kept on disk, for a remote job whose result is fetched in a later session ------------------------
# JSON for the values, named arrays for an .npz (read with allow_pickle=False): nothing that can run code.

def _ref_to_dict(ref: ObjectRef) -> dict:
    # The session id is left out: it means nothing in another session (the object is found by name).
    return {"name": ref.name, "counts": dict(ref.counts)}


def _ref_from_dict(data) -> ObjectRef:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError("the object reference has no name")
    counts = data.get("counts")
    if not isinstance(counts, dict) or not all(isinstance(k, str) and type(v) is int for k, v in counts.items()):
        raise ValueError("the object reference's mesh counts are not whole numbers")
    return ObjectRef(data["name"], None, dict(counts))


def request_to_dict(request: JobRequest) -> tuple[dict, dict[str, np.ndarray]]:
    """A request as JSON values and named arrays (see request_from_dict)."""
    if isinstance(request, TextureRequest):
        arrays = {"tri_loops": request.tri_loops, "positions": request.overlay.positions,
                  "triangles": request.overlay.triangles}
        if request.overlay.corner_uvs is not None:
            arrays["corner_uvs"] = request.overlay.corner_uvs
        return {"kind": "texture", "target": _ref_to_dict(request.target), "prompt": request.prompt,
                "uv_map": request.uv_map, "needs_uvs": request.needs_uvs}, arrays
    if isinstance(request, GenerateRequest):
        return {"kind": "generate", "prompt": request.prompt, "location": list(request.location)}, {}
    if isinstance(request, EditRequest):
        return {"kind": "edit", "target": _ref_to_dict(request.target), "prompt": request.prompt,
                "uv_map": request.uv_map, "mode": request.mode, "source_task": request.source_task}, {}
    raise TypeError(f"not a job request: {type(request).__name__}")


def _text(data: dict, key: str, optional: bool = False) -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{key}' is not text")
    return value


def _array(arrays, key: str, dtype_kind: str, shape_tail: tuple[int, ...]):
    import numpy as np

    if key not in arrays:
        raise ValueError(f"the array '{key}' is missing")
    array = np.asarray(arrays[key])
    if array.dtype.kind not in dtype_kind or array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        raise ValueError(f"the array '{key}' has shape {array.shape} and type {array.dtype}")
    return array


def request_from_dict(data, arrays) -> JobRequest:
    """The request request_to_dict wrote; ValueError saying what is wrong with a damaged one."""
    if not isinstance(data, dict):
        raise ValueError("the request is not an object")
    kind = data.get("kind")
    if kind == "texture":
        tri_loops = _array(arrays, "tri_loops", "iu", (3,))
        positions = _array(arrays, "positions", "f", (3,))
        triangles = _array(arrays, "triangles", "iu", (3,))
        corner_uvs = _array(arrays, "corner_uvs", "f", (3, 2)) if "corner_uvs" in arrays else None
        if len(triangles) != len(tri_loops) or (corner_uvs is not None and len(corner_uvs) != len(triangles)):
            raise ValueError("the request's arrays do not describe one mesh")
        if not isinstance(data.get("needs_uvs"), bool):
            raise ValueError("'needs_uvs' is not true or false")
        return TextureRequest(_ref_from_dict(data.get("target")), _text(data, "prompt"),
                              _text(data, "uv_map", optional=True), data["needs_uvs"], tri_loops,
                              MeshOverlay(positions, triangles, corner_uvs))
    if kind == "generate":
        location = data.get("location")
        if (not isinstance(location, list) or len(location) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in location)):
            raise ValueError("'location' is not three numbers")
        return GenerateRequest(_text(data, "prompt"), (float(location[0]), float(location[1]), float(location[2])))
    if kind == "edit":
        mode, source_task = data.get("mode"), data.get("source_task")
        if mode not in ("material", "object") or source_task not in ("texture", "generate"):
            raise ValueError("the edit's mode or source task is not one the add-on makes")
        return EditRequest(_ref_from_dict(data.get("target")), _text(data, "prompt"),
                           _text(data, "uv_map", optional=True), mode, source_task)
    raise ValueError(f"unknown request kind {kind!r}")
