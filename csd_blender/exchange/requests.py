"""What each job asks for, as the add-on remembers it until the result comes back.

The job folder holds what the engine needs (job.json, mesh.npz, an edit's source); a request
holds what the import needs: which object the result goes back onto and how.
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
