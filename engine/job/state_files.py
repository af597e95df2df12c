"""Every saved state of a job, written and read in one place: a texture or edit job's state.pt,
a generate job's stage1.pt and stage2.pt.

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
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import BadInputError
from ..files import atomic_write_bytes
from .paths import open_inside

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
            raise BadInputError(f"{path} cannot be read: {_first_line(error)}.",
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
        raise BadInputError(f"{path} does not fit this job ({type(error).__name__}: {_first_line(error)}).",
                            RERUN_HINT) from error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__
