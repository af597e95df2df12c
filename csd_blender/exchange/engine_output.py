"""The one place that checks what the engine wrote before the add-on uses any of it.

The engine is another process (and, with a remote engine, another machine), so its files and
events are read as input from outside: every path stays inside the output folder and passes
through no link, JSON is bounded in size and nesting, numbers are finite and in range, text is
bounded and printable, and images and arrays are checked before Blender or numpy load them.
Whatever fails a check raises EngineOutputError, whose message says what was wrong; the
callers turn it into a failed job (nothing imported) or a progress field left as it was.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from pathlib import Path, PurePosixPath

# What the add-on accepts from the engine: limits far above what a working engine writes.
MAX_JSON_BYTES = 4 * 2 ** 20  # result.json: statuses, names and settings (the engine bounds its prompts)
MAX_JSON_DEPTH = 32  # result.json's settings nest about 4 deep
MAX_EVENT_BYTES = 64 * 2 ** 10  # one progress line
MAX_PROGRESS_READ_BYTES = 4 * 2 ** 20  # progress read in one poll, so a runaway log cannot fill memory
MAX_TEXT_CHARS = 2000  # a message, hint, stage or model name shown in the panel
MAX_PATH_CHARS = 1024
MAX_OUTPUTS = 64
MAX_STEPS = 10 ** 9
MAX_BYTES = 10 ** 15  # a download's size
MAX_SECONDS = 10 ** 9  # elapsed and ETA (about 30 years)
MAX_LOSS = 1e30
MAX_IMAGE_SIDE = 16384  # Blender's largest GPU texture on most cards
MAX_FILE_BYTES = 4 * 2 ** 30  # a GLB or an image loaded into Blender

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GLB_MAGIC = b"glTF"


class EngineOutputError(ValueError):
    """Something the engine wrote that the add-on refuses to use; the message says what."""


class UnsafePathError(EngineOutputError):
    """A path named by the engine is not a plain file name inside the folder it must stay in."""


# -- text and numbers --------------------------------------------------------------------------

def _printable(char: str) -> bool:
    return char in "\n\t" or not (ord(char) < 32 or 127 <= ord(char) < 160)


def clean_text(value, limit: int = MAX_TEXT_CHARS) -> str:
    """A string for the panel: control characters (NUL included) become spaces, long ones are cut."""
    if not isinstance(value, str):
        return ""
    text = "".join(char if _printable(char) else " " for char in value[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(value, low: float, high: float) -> float | int | None:
    """``value`` when it is a finite JSON number within [low, high], else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if low <= value <= high else None


def count(value, high: int) -> int | None:
    """A whole number within [0, high] (2.0 counts as 2), else None."""
    value = number(value, 0, high)
    return None if value is None or value != int(value) else int(value)


# -- paths ---------------------------------------------------------------------------------------

def relative_name(value) -> str:
    """A relative POSIX path the engine may name: no absolute path, drive, ``..``, backslash or control character."""
    if not isinstance(value, str) or not value:
        raise UnsafePathError(f"not a file name: {clean_text(repr(value), 80)}")
    shown = clean_text(repr(value), 120)
    if len(value) > MAX_PATH_CHARS:
        raise UnsafePathError(f"a file name longer than {MAX_PATH_CHARS} characters: {shown}")
    if any(not _printable(char) or char in "\n\t" for char in value):
        raise UnsafePathError(f"a file name with control characters: {shown}")
    path = PurePosixPath(value)
    if "\\" in value or path.is_absolute() or (len(value) > 1 and value[1] == ":"):
        raise UnsafePathError(f"an absolute path: {shown}")
    if ".." in path.parts:
        raise UnsafePathError(f"a path that leaves its folder: {shown}")
    return value


def _is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:  # not there (or a part of it is not a folder): nothing to follow
        return False


def _refuse_links(base: Path, relative: str) -> Path:
    """``base / relative``, refusing a link at any part of ``relative``."""
    current = base
    for part in PurePosixPath(relative).parts:
        current = current / part
        if _is_link(current):
            raise UnsafePathError(f"'{clean_text(relative, 120)}' passes through a link")
    return current


def output_folder(job_dir: Path, output: str) -> Path:
    """The job's output folder, refused when it is a link (files through it would come from elsewhere)."""
    try:
        return _refuse_links(Path(job_dir), relative_name(output))
    except UnsafePathError as exc:
        raise UnsafePathError(f"the output folder {exc}; the engine writes a real folder") from None


def resolve_inside(base: Path, relative) -> Path:
    """``base / relative`` after checking ``relative`` and refusing links anywhere from ``base`` down."""
    relative = relative_name(relative)
    base = Path(base)
    if _is_link(base):
        raise UnsafePathError(f"the output folder '{base.name}' is a link; the engine writes a real folder")
    target = _refuse_links(base, relative)
    if Path(os.path.realpath(base)) not in Path(os.path.realpath(target)).parents:
        raise UnsafePathError(f"'{clean_text(relative, 120)}' is outside the output folder")  # a folder moved under us
    return target


def recheck_inside(base: Path, path: Path) -> Path:
    """Check again, just before it is read, a path that ``resolve_inside(base, ...)`` returned."""
    try:
        relative = PurePosixPath(Path(path).relative_to(base)).as_posix()
    except ValueError:
        raise UnsafePathError(f"'{clean_text(str(path), 200)}' is outside the output folder") from None
    return resolve_inside(base, relative)


# -- files ---------------------------------------------------------------------------------------

def open_file(path: Path, what: str):
    """A regular file opened for reading without following a link; None when there is none."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if _is_link(path):
            raise UnsafePathError(f"{what} is a link") from None
        raise EngineOutputError(f"{what} could not be read ({exc.strerror})") from None
    handle = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        handle.close()
        raise EngineOutputError(f"{what} is not a file")
    return handle


def _read_bounded(path: Path, limit: int, what: str) -> bytes | None:
    """The first ``limit`` bytes of a file (None when there is none), refusing a longer file."""
    handle = open_file(path, what)
    if handle is None:
        return None
    with handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise EngineOutputError(f"{what} is more than the {limit} bytes accepted")
    return data


def _read_header(path: Path, size: int, what: str) -> bytes:
    """The first ``size`` bytes of a file the add-on will load, refusing one over MAX_FILE_BYTES."""
    handle = open_file(path, what)
    if handle is None:
        raise EngineOutputError(f"{what} is missing")
    with handle:
        length = os.fstat(handle.fileno()).st_size
        if length > MAX_FILE_BYTES:
            raise EngineOutputError(f"{what} is {length} bytes, more than the {MAX_FILE_BYTES} accepted")
        return handle.read(size).ljust(size, b"\0")


def _depth(value) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


def parse_json(data: bytes | str, what: str, max_depth: int = MAX_JSON_DEPTH):
    """Parsed JSON, refusing text that is not JSON and nesting over ``max_depth``.

    NaN and Infinity are parsed (Python's json writes them): each number is checked where it is used.
    """
    try:
        value = json.loads(data)
    except RecursionError:
        raise EngineOutputError(f"{what} nests lists or objects more than {max_depth} deep") from None
    except ValueError as exc:  # not JSON, not UTF-8, or an integer too long to convert
        raise EngineOutputError(f"{what} is not valid JSON ({clean_text(str(exc), 200)})") from None
    if _depth(value) > max_depth:
        raise EngineOutputError(f"{what} nests lists or objects more than {max_depth} deep")
    return value


def read_json_object(path: Path, what: str) -> dict | None:
    """A JSON object from a file the engine wrote; None when the file does not exist."""
    data = _read_bounded(path, MAX_JSON_BYTES, what)
    if data is None:
        return None
    value = parse_json(data, what)
    if not isinstance(value, dict):
        raise EngineOutputError(f"{what} is not a JSON object")
    return value


def parse_event(line: bytes) -> dict | None:
    """One progress line as an event, or None when it is not one (a reader never fails on a bad line)."""
    if len(line) > MAX_EVENT_BYTES:
        return None
    try:
        event = parse_json(line, "a progress line", max_depth=8)
    except EngineOutputError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


def result_outputs(out_dir: Path, raw) -> dict[str, Path]:
    """result.json's ``outputs`` as name -> path inside ``out_dir``, each existing file checked for its kind."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise EngineOutputError("result.json's outputs is not an object of names and files")
    if len(raw) > MAX_OUTPUTS:
        raise EngineOutputError(f"result.json names {len(raw)} outputs, more than the {MAX_OUTPUTS} accepted")
    outputs = {}
    for name, relative in raw.items():
        if clean_text(name, 64) != name or not name:
            raise EngineOutputError(f"result.json has an output named {clean_text(repr(name), 80)}")
        try:
            path = resolve_inside(out_dir, relative)
        except UnsafePathError as exc:
            raise UnsafePathError(f"result.json's output '{name}': {exc}") from None
        if path.is_file():
            check_file(path, f"the engine's '{name}' file")
            outputs[name] = path
        elif path.is_dir():
            outputs[name] = path
    return outputs


def image_size(path: Path, what: str) -> tuple[int, int]:
    """A PNG's width and height from its header, refusing other files and images too large to load."""
    head = _read_header(path, 24, what)
    if head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise EngineOutputError(f"{what} is not a PNG image")
    width, height = struct.unpack(">II", head[16:24])
    if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE):
        raise EngineOutputError(f"{what} is {width} x {height} pixels; at most {MAX_IMAGE_SIDE} a side is loaded")
    return width, height


def check_file(path: Path, what: str) -> None:
    """Files Blender will load are checked by kind: a PNG's size, a GLB's header; every file's byte count."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        image_size(path, what)
    elif suffix == ".glb":
        if _read_header(path, 4, what) != GLB_MAGIC:
            raise EngineOutputError(f"{what} is not a GLB model")
    else:
        _read_header(path, 0, what)


def read_corner_uvs(path: Path, faces: int):
    """Per-corner UVs (faces, 3, 2) as float32, checked for shape and finite values before they are read whole."""
    import numpy as np

    what = "the engine's UV layout (corner_uvs.npy)"
    _read_header(path, 0, what)
    try:
        array = np.load(str(path), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise EngineOutputError(f"{what} could not be read ({exc})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f" or array.shape != (faces, 3, 2):
        shape = getattr(array, "shape", None)
        raise EngineOutputError(f"{what} has shape {shape}, not ({faces}, 3, 2) floats for this mesh")
    uvs = np.array(array, dtype=np.float32)
    if not np.all(np.isfinite(uvs)):
        raise EngineOutputError(f"{what} has values that are not finite numbers")
    return uvs
