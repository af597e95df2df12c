"""Where a job may read and write: inside one folder, never through a link.

A job folder may come from anyone (the remote engine accepts them from the network), so a
link inside it, or a path with `..`, could make the engine read a file elsewhere (and copy it
into the outputs) or write one. Every file the engine opens for a job goes through
`inside_folder`: the path is made absolute under the folder, each part below the folder must
not be a link, and the result must lie in the folder. The folder itself (the job folder, or a
folder the user names on the command line) is taken as the user gave it, links included.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from ..errors import BadInputError, EngineError

LINK_HINT = "Copy the file into the folder instead of linking to it; a job reads and writes only inside its folder."


def inside_folder(folder: str | Path, path: str | Path, what: str,
                  error: type[EngineError] = BadInputError, folder_name: str = "its folder") -> Path:
    """`path` (relative to `folder`, or absolute) as an absolute path inside `folder`, or `error`
    when it leads outside the folder or any part of it below the folder is a link. The file
    need not exist."""
    root = Path(folder).resolve()
    candidate = Path(os.path.abspath(root / path))  # abspath: `..` folded without following links
    try:
        parts = candidate.relative_to(root).parts
    except ValueError:
        raise error(f"{what} points outside {folder_name} {root} ({path}).",
                    "Keep every file of a job inside its folder.") from None
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise error(f"{what} is a link ({current} -> {os.readlink(current)}); the engine does not follow links "
                        "out of a job's folders.", LINK_HINT)
    return candidate


def file_inside(folder: str | Path, name: str | Path, what: str,
                error: type[EngineError] = BadInputError) -> Path | None:
    """`inside_folder`, for a file that may be missing: None when there is no such file."""
    path = inside_folder(folder, name, what, error)
    return path if path.is_file() else None


def open_inside(folder: str | Path, name: str | Path, what: str,
                error: type[EngineError] = BadInputError) -> BinaryIO | None:
    """A file inside `folder` opened for reading (None when there is no such file), without
    following a link even if one appeared after the check."""
    path = file_inside(folder, name, what, error)
    if path is None:
        return None
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as exc:
        raise error(f"Cannot read {what} ({path}): {exc.strerror or exc}.", LINK_HINT) from exc
    return os.fdopen(descriptor, "rb")


def read_bytes_inside(folder: str | Path, name: str | Path, what: str,
                      error: type[EngineError] = BadInputError) -> bytes | None:
    """The bytes of a file inside `folder`, as `open_inside` opens it; None when it does not exist."""
    handle = open_inside(folder, name, what, error)
    if handle is None:
        return None
    with handle:
        return handle.read()
