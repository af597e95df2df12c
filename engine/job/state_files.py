"""Every file a job leaves for the next, written and read in one place: a texture or edit job's
texture state (state.pt), a generate job's NeRF state (stage1.pt) and refined-mesh state
(stage2.pt, with the frame its export was written in). docs/job-protocol.md describes them.

A state is a dict of tensors, numbers, strings, lists and dicts saved with `torch.save`, and it
is read back with `torch.load(weights_only=True)` only: a state file may come from anyone (a
job folder sent to a remote engine), and a full unpickler would run whatever code it names.
Each state says its `kind` and `version`; a state of another kind or version, without the
entries its kind needs, or whose tensors do not fit the model they are loaded into, is refused
as bad input (exit 2) with a message saying which file and why.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Iterator, Self

import torch

from ..errors import BadInputError, first_line
from ..files import atomic_write_bytes
from .paths import open_inside

TEXTURE_STATE = "state.pt"
NERF_STATE = "stage1.pt"
REFINED_MESH_STATE = "stage2.pt"
TEXTURE_KIND = "texture"
STAGE1_KIND = "generate-stage1"
STAGE2_KIND = "generate-stage2"
STATE_VERSIONS = {TEXTURE_KIND: 1, STAGE1_KIND: 1, STAGE2_KIND: 1}
# The entries each kind needs, and their types (the rest of a state is checked where it is used).
_GENERATE_ENTRIES = {"step": int, "complete": bool, "model": dict, "optimizer": dict, "generator": torch.Tensor,
                     "settings": dict}
REQUIRED_ENTRIES: dict[str, dict[str, type]] = {
    TEXTURE_KIND: {"field": dict, "field_config": dict, "normalization": dict},
    STAGE1_KIND: _GENERATE_ENTRIES,
    STAGE2_KIND: {**_GENERATE_ENTRIES, "placement": dict, "normalization": dict},
}
RERUN_HINT = "Run the job that wrote it again with this engine."


class SavedState:
    """A state file: its dataclass fields are its entries, written in field order (an entry that is
    None is left out). `optional` names the entries a state may lack or carry in another type,
    with the value that stands for them; the others are checked by `check_state`."""

    kind: ClassVar[str]
    file_name: ClassVar[str]
    optional: ClassVar[dict[str, tuple[type, Any]]] = {}

    def save(self, folder: Path) -> str:
        entries = {entry.name: getattr(self, entry.name) for entry in fields(self)}
        write_state(Path(folder) / self.file_name, self.kind,
                    {name: value for name, value in entries.items() if value is not None})
        return self.file_name

    @classmethod
    def load(cls, folder: str | Path, name: str | None = None) -> Self | None:
        state = read_state(folder, name or cls.file_name, cls.kind)
        if state is None:
            return None
        values = {}
        for entry in fields(cls):
            value = state.get(entry.name)
            if entry.name in cls.optional:
                wanted, stand_in = cls.optional[entry.name]
                value = value if isinstance(value, wanted) else stand_in
            values[entry.name] = value
        return cls(**values)


@dataclass
class TextureState(SavedState):
    """A texture field on a fixed mesh (state.pt): what an edit job continues. Written by the
    texture and edit jobs, and by generate and geometry edits for their refined albedo.

    `material` is the field's: "albedo" (3 channels: base colour) or "pbr" (5: base colour,
    roughness, metallic). Left out, it is the one the job's settings name, and albedo where they
    name none (generate's refined albedo, and every state written before PBR materials).
    """

    kind: ClassVar[str] = TEXTURE_KIND
    file_name: ClassVar[str] = TEXTURE_STATE
    optional: ClassVar[dict[str, tuple[type, Any]]] = {"settings": (dict, {}), "material": (str, None)}
    field: dict  # the TextureField's parameters
    field_config: dict  # its HashGridConfig
    normalization: dict  # Normalization: the user's frame -> the unit box the field lives in
    settings: dict  # the job's settings, for an edit's defaults
    material: str | None = None

    def __post_init__(self) -> None:
        if self.material is None:
            named = self.settings.get("material")
            self.material = named if isinstance(named, str) else "albedo"


@dataclass
class StageState(SavedState):
    """A generate stage's state after `step` steps: its model, optimizer and generator, and the
    stage's settings; `complete` once the stage ran all its steps."""

    optional: ClassVar[dict[str, tuple[type, Any]]] = {"prompt": (str, "")}
    step: int
    complete: bool
    prompt: str
    model: dict
    optimizer: dict
    generator: torch.Tensor
    settings: dict  # the stage's config: it sizes the model when the state is loaded


@dataclass
class NerfState(StageState):
    """Generate's stage 1 (stage1.pt): the NeRF. Resumed, or read by a stage-2-only run."""

    kind: ClassVar[str] = STAGE1_KIND
    file_name: ClassVar[str] = NERF_STATE


@dataclass
class RefinedMeshState(StageState):
    """Generate's stage 2 (stage2.pt): the refinable mesh (base positions, offsets, albedo field)
    and its frames: `placement` (NeRF -> world), `normalization` (world -> unit box) and, once a
    geometry edit exported it, `export_normalization` (the unit box -> the exported asset's frame,
    on the ground). Resumed, or continued by a geometry edit."""

    kind: ClassVar[str] = STAGE2_KIND
    file_name: ClassVar[str] = REFINED_MESH_STATE
    optional: ClassVar[dict[str, tuple[type, Any]]] = {**StageState.optional, "export_normalization": (dict, None)}
    placement: dict
    normalization: dict
    export_normalization: dict | None = None


def write_state(path: Path, kind: str, entries: dict[str, Any]) -> None:
    """Write a state of `kind` (its version added) to `path`, atomically."""
    buffer = io.BytesIO()
    torch.save({**entries, "kind": kind, "version": STATE_VERSIONS[kind]}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_state(folder: str | Path, name: str | Path, kind: str) -> dict | None:
    """The state `name` inside `folder` (None when there is none), checked to be of `kind`, or a
    BadInputError: outside the folder or through a link, unreadable, holding anything but plain
    data, of another kind or version, or lacking an entry its kind needs."""
    path = Path(folder) / name
    handle = open_inside(folder, name, f"The saved state {name}")
    if handle is None:
        return None
    with handle:
        try:
            state = torch.load(handle, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            if refused is None:  # not a state at all: a damaged file
                raise BadInputError(f"{path} cannot be read (not a saved state, or damaged).",
                                    "The file is damaged or from another program. " + RERUN_HINT) from error
            raise BadInputError(f"{path} holds an object a saved state may not carry ({refused.group(1)}); "
                                "it was not written by this engine, or by an older one, and is not loaded.",
                                RERUN_HINT) from error
        except Exception as error:  # noqa: BLE001 - any unreadable state is bad input
            raise BadInputError(f"{path} cannot be read: {first_line(error)}.",
                                "The file is damaged or from another program. " + RERUN_HINT) from error
    check_state(state, kind, path)
    return state


def check_state(state: Any, kind: str, path: Path) -> None:
    """Refuse a loaded state that is not a `kind` state of this engine's version with its entries."""
    if not isinstance(state, dict) or not isinstance(state.get("kind"), str):
        raise BadInputError(f"{path} is not an engine state (it names no 'kind').", RERUN_HINT)
    if state["kind"] != kind:
        raise BadInputError(f"{path} holds a {state['kind']!r} state where a {kind!r} state belongs.",
                            f"Pass the {kind!r} state of a job of that kind.")
    # Texture states before versioning had this layout: they are version 1.
    version = state.get("version", 1 if kind == TEXTURE_KIND else None)
    if version != STATE_VERSIONS[kind]:
        raise BadInputError(f"{path} is a version {version!r} {kind!r} state; this engine reads version "
                            f"{STATE_VERSIONS[kind]}.", RERUN_HINT)
    for entry, entry_type in REQUIRED_ENTRIES[kind].items():
        value = state.get(entry)
        if not isinstance(value, entry_type) or (entry_type is int and isinstance(value, bool)):
            raise BadInputError(f"{path} lacks a usable {entry!r} (a {kind!r} state needs it as "
                                f"{entry_type.__name__}).", RERUN_HINT)
    if "step" in REQUIRED_ENTRIES[kind] and state["step"] < 0:
        raise BadInputError(f"{path} has a negative step ({state['step']}).", RERUN_HINT)


@contextlib.contextmanager
def applying_state(path: Path) -> Iterator[None]:
    """Around loading a state's entries into a model, optimizer or generator, and reading its
    frames: a tensor of the wrong shape or type, or a missing or malformed entry, is bad input."""
    try:
        yield
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        raise BadInputError(f"{path} does not fit this job ({type(error).__name__}: {first_line(error)}).",
                            RERUN_HINT) from error
