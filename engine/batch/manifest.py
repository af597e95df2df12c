"""The batch manifest: one job per row, CSV or JSON lines (docs/remote.md, "Batch").

Every row is checked before anything runs, and every problem is reported at once, naming the
row and the column. A good row becomes the job folder the add-on would write (job.json, protocol
1, with the mesh or the edit's source copied in), described by `JobInputs`; its input hash tells
a later run whether the job is still the one whose outputs are on disk.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import BadInputError
from ..job.protocol import PROTOCOL_VERSION, TASKS

COLUMNS = ("name", "task", "mesh", "source", "prompt", "target_prompt", "edit_prompt", "settings")
PROMPTS_OF = {"texture": ("prompt",), "generate": ("prompt",), "edit": ("target_prompt", "edit_prompt")}
MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".npz")
# Paths the batch chooses for a job (the mesh, the source, the output), never the row's settings.
PATH_SETTINGS = ("mesh", "source", "out", "output")
# Names of DIR's own files, which no job's folder may take.
RESERVED_NAMES = ("summary.json",)
NAME_PATTERN = re.compile(r"\w[\w.-]*")
MAX_NAME_CHARS = 100
MAX_PROBLEMS_SHOWN = 20
MAX_COMPANION_FILE_BYTES = 64 << 20  # an .mtl or .gltf file is text of a few kB to MB
INPUT_DIR = "input"  # where a job folder keeps the row's mesh (and the files it names)
SOURCE_DIR = "source"  # an edit's source folder, where the add-on puts it
HASH_CHUNK = 1 << 20
MANIFEST_HINT = ("Columns: " + ", ".join(COLUMNS) + "; relative paths are taken from the manifest's folder "
                 "(docs/remote.md, \"Batch\").")


@dataclass(frozen=True)
class JobInputs:
    """A job folder before it is written: job.json and the files copied in (path in the folder, file)."""

    document: dict[str, Any]
    files: tuple[tuple[str, Path], ...]

    def job_json(self) -> bytes:
        # Sorted keys: the same job gives the same bytes, so the same hash, whatever the row's key order.
        return json.dumps(self.document, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"

    def input_hash(self) -> str:
        """sha256 over every file of the job folder (job.json included), by its path in the folder."""
        digest = hashlib.sha256()
        entries = sorted([("job.json", None), *self.files], key=lambda entry: entry[0])
        for name, path in entries:
            digest.update(name.encode("utf-8") + b"\0")
            if path is None:
                data = self.job_json()
                digest.update(len(data).to_bytes(8, "little") + data)
                continue
            digest.update(path.stat().st_size.to_bytes(8, "little"))
            with open(path, "rb") as handle:
                while chunk := handle.read(HASH_CHUNK):
                    digest.update(chunk)
        return "sha256:" + digest.hexdigest()

    def write(self, folder: Path) -> Path:
        """Write the job folder (created; its parent must exist)."""
        folder.mkdir()
        (folder / "job.json").write_bytes(self.job_json())
        for name, path in self.files:
            target = folder.joinpath(*PurePosixPath(name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        return folder


@dataclass(frozen=True)
class BatchRow:
    number: int  # the row's number among the manifest's jobs, from 1
    line: int  # where the row ends in the manifest file, from 1
    name: str  # its output folder under the batch's --out
    task: str
    inputs: JobInputs


class _Problems:
    """Every problem of a manifest, each naming its row and column, raised together at the end."""

    def __init__(self, manifest: Path):
        self.manifest, self.found = manifest, []

    def add(self, line: int, number: int | None, column: str | None, message: str) -> None:
        where = f"line {line}" + (f" (row {number})" if number is not None else "")
        self.found.append(f"{where}{f', column {column!r}' if column else ''}: {message}")

    def raise_any(self) -> None:
        if not self.found:
            return
        shown = self.found[:MAX_PROBLEMS_SHOWN]
        more = len(self.found) - len(shown)
        raise BadInputError(f"The manifest {self.manifest} has {len(self.found)} problem"
                            f"{'s' if len(self.found) > 1 else ''}:\n  " + "\n  ".join(shown)
                            + (f"\n  ... and {more} more" if more else ""), MANIFEST_HINT)


def read_manifest(path: Path) -> list[BatchRow]:
    """The manifest's rows as jobs, once every row is good; else BadInputError naming each problem."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise BadInputError(f"The manifest {path} must be a .csv or a .jsonl file.", MANIFEST_HINT)
    try:
        text = path.read_text("utf-8-sig")  # -sig: a spreadsheet's byte-order mark is not part of the header
    except FileNotFoundError:
        raise BadInputError(f"There is no manifest {path}.", "Check the path.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"The manifest {path} cannot be read: {error}.", "Save it as UTF-8 text.") from error
    problems = _Problems(path)
    records = _csv_records(text, problems) if path.suffix.lower() == ".csv" else _jsonl_records(text, problems)
    rows, names = [], {}
    for number, (line, record) in enumerate(records, start=1):
        row = _row(number, line, record, path.parent.resolve(), problems)
        if row is None:
            continue
        key = row.name.casefold()
        if key in names:
            problems.add(line, number, "name", f"{row.name!r} is also the name of row {names[key]}; "
                                               "each job needs its own output folder.")
        names.setdefault(key, number)
        rows.append(row)
    if not records and not problems.found:
        problems.add(1, None, None, "the manifest has no rows")
    problems.raise_any()
    return rows


def _csv_records(text: str, problems: _Problems) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = [cell.strip() for cell in next(reader)]
    except StopIteration:
        return []
    except csv.Error as error:
        problems.add(1, None, None, f"the header cannot be read as CSV ({error})")
        return []
    unknown = [cell for cell in header if cell not in COLUMNS]
    if unknown:
        problems.add(1, None, None, f"unknown column{'s' if len(unknown) > 1 else ''} "
                                    f"{', '.join(repr(cell) for cell in unknown)}")
    doubled = sorted({cell for cell in header if header.count(cell) > 1})
    if doubled:
        problems.add(1, None, None, f"column{'s' if len(doubled) > 1 else ''} {', '.join(map(repr, doubled))} "
                                    "appear more than once")
    if "task" not in header:
        problems.add(1, None, None, "there is no 'task' column")
    if problems.found:
        return []
    records = []
    try:
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(header):
                problems.add(reader.line_num, len(records) + 1, None,
                             f"{len(cells)} cells, more than the header's {len(header)} columns")
            # A short row leaves its last columns empty, as spreadsheets write them.
            cells_of = zip(header, cells, strict=False)
            records.append((reader.line_num, {key: cell.strip() for key, cell in cells_of if cell.strip()}))
    except csv.Error as error:
        problems.add(reader.line_num, len(records) + 1, None, f"not readable as CSV ({error})")
    return records


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _jsonl_records(text: str, problems: _Problems) -> list[tuple[int, dict[str, Any]]]:
    records = []
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        number = len(records) + 1
        try:
            record = json.loads(content, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as error:
            problems.add(line, number, None, f"not a JSON object ({error})")
            record = None
        if record is not None and not isinstance(record, dict):
            problems.add(line, number, None, f"a JSON {type(record).__name__}, not an object")
            record = None
        if record is not None:
            unknown = [key for key in record if key not in COLUMNS]
            if unknown:
                problems.add(line, number, None, f"unknown key{'s' if len(unknown) > 1 else ''} "
                                                 f"{', '.join(map(repr, unknown))}")
            record = {key: value for key, value in record.items() if key in COLUMNS and value not in (None, "")}
        records.append((line, record or {}))
    return records


def _row(number: int, line: int, record: dict[str, Any], base: Path, problems: _Problems) -> BatchRow | None:
    """One record as a job, or None after adding its problems."""
    before = len(problems.found)

    def problem(column: str | None, message: str) -> None:
        problems.add(line, number, column, message)

    for column, value in record.items():
        if column != "settings" and not isinstance(value, str):
            problem(column, f"must be text, not {type(value).__name__}")
    if len(problems.found) > before:
        return None
    task = record.get("task")
    if task is None:
        problem("task", f"missing; one of {', '.join(TASKS)}")
    elif task not in TASKS:
        problem("task", f"{task!r} is not one of {', '.join(TASKS)}")
    if task not in TASKS:
        return None  # what else the row needs depends on its task
    # Bad settings are reported; the row's other columns are still checked, to report them all at once.
    settings = _settings(record.get("settings"), problem) or {}

    article = "an" if task[0] in "aeiou" else "a"
    for column in ("prompt", "target_prompt", "edit_prompt"):
        if column in record and column not in PROMPTS_OF[task]:
            problem(column, f"{article} {task} job takes {' and '.join(PROMPTS_OF[task])}, not {column}")
        elif column in record and column in settings:
            problem(column, "given twice, as the column and in settings; keep one")
        elif column in record:
            settings[column] = record[column]
    for column in PROMPTS_OF[task]:
        if column not in settings:
            problem(column, f"{article} {task} job needs {column} (the column, or in settings)")
    for key in PATH_SETTINGS:
        if key in settings:
            problem("settings", f"may not hold {key!r}: the mesh and source are columns, and the output "
                                "folder is --out/NAME")

    document: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "task": task, "output": "out", "settings": settings}
    files: list[tuple[str, Path]] = []
    stem = task
    for column in ("mesh", "source"):
        wanted = (task == "texture") if column == "mesh" else (task == "edit")
        if column in record and not wanted:
            problem(column, f"{article} {task} job takes no {column}")
        elif wanted and column not in record:
            what = "a mesh file" if column == "mesh" else "an earlier job's output folder or a textured mesh"
            problem(column, f"{article} {task} job needs its {column}: {what}")
        elif wanted:
            found = _input_files(base, record[column], column, problem)
            if found is not None:
                document[column], more = found
                files.extend(more)
                stem = Path(record[column]).stem or task
    name = record.get("name") or f"{number:03d}-{_slug(stem)}"
    _check_name(name, problem)
    if len(problems.found) > before:
        return None
    return BatchRow(number, line, name, task, JobInputs(document, tuple(files)))


def _settings(value: Any, problem) -> dict | None:
    if value is None:
        return {}
    if isinstance(value, str):  # a CSV cell
        try:
            value = json.loads(value, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as error:
            problem("settings", f"not valid JSON ({error}); write an object such as {{\"steps\": 800, \"seed\": 3}}")
            return None
    if not isinstance(value, dict):
        problem("settings", f"must be a JSON object such as {{\"steps\": 800}}, not a {type(value).__name__}")
        return None
    return dict(value)


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", text).strip("-.")[:60] or "job"


def _check_name(name: str, problem) -> None:
    if len(name) > MAX_NAME_CHARS:
        problem("name", f"longer than {MAX_NAME_CHARS} characters")
    elif not NAME_PATTERN.fullmatch(name) or name.endswith("."):
        problem("name", f"{name!r} is not a folder name: use letters, digits, '-', '_' and '.', starting with a "
                        "letter or digit")
    elif name.casefold() in RESERVED_NAMES:
        problem("name", f"{name!r} is taken by the batch's own file in --out")


def _input_files(base: Path, given: str, column: str, problem) -> tuple[str, list[tuple[str, Path]]] | None:
    """The path job.json names for the row's mesh or source, and the files copied in for it."""
    path = Path(os.path.abspath(base / Path(given).expanduser()))  # an absolute `given` stays as it is
    if column == "source" and path.is_dir():
        if not (path / "result.json").is_file():
            problem(column, f"{path} has no result.json: it is not a finished job's output folder")
            return None
        files = [(f"{SOURCE_DIR}/{name}", file) for file, name in _folder_files(path)]
        return SOURCE_DIR, files
    if not path.is_file():
        problem(column, f"{path} does not exist" if not path.exists() else f"{path} is not a file")
        return None
    if path.suffix.lower() not in MESH_SUFFIXES:
        problem(column, f"{path.name} is not a mesh file ({', '.join(MESH_SUFFIXES)})")
        return None
    named = f"{INPUT_DIR}/{path.name}"
    return named, [(named, path)] + [(f"{INPUT_DIR}/{name}", path.parent / name) for name in _companions(path)]


def _folder_files(folder: Path) -> list[tuple[Path, str]]:
    """The plain files of an output folder, without what a run keeps hidden (partial sets, locks)."""
    from ..server.archives import folder_files

    return [(file, name) for file, name in folder_files(folder) if not any(part.startswith(".")
                                                                           for part in name.split("/"))]


def _companions(mesh: Path) -> list[str]:
    """The files an OBJ (its material libraries and their textures) or a glTF (its buffers and
    images) names, as paths below the mesh's folder: the engine reads them from there only."""
    names: list[str] = []
    if mesh.suffix.lower() == ".obj":
        for library in _lines_naming(mesh, ("mtllib",)):
            names.append(library)
            names.extend(_lines_naming(mesh.parent / library, ("map_", "bump", "disp", "decal", "refl", "norm")))
    elif mesh.suffix.lower() == ".gltf":
        try:
            document = json.loads(_read_small(mesh))
            uris = [item.get("uri") for key in ("buffers", "images") for item in document.get(key, [])]
        except (OSError, ValueError, AttributeError, TypeError, RecursionError):
            return []  # the engine's own reader says what is wrong with the file
        names = [urllib.parse.unquote(uri) for uri in uris if isinstance(uri, str) and not uri.startswith("data:")]
    found = []
    for name in dict.fromkeys(names):
        relative = PurePosixPath(name.replace("\\", "/"))
        target = mesh.parent.joinpath(*relative.parts)
        if (not relative.is_absolute() and ".." not in relative.parts and target.is_file()
                and not target.is_symlink()):
            found.append(relative.as_posix())
    return found


def _lines_naming(path: Path, keywords: tuple[str, ...]) -> list[str]:
    """The file names lines starting with one of `keywords` give (the last word; options come first)."""
    try:
        text = _read_small(path).decode("utf-8", "replace")
    except OSError:
        return []
    names = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].lower().startswith(keywords):
            names.append(words[-1])
    return names


def _read_small(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(MAX_COMPANION_FILE_BYTES)
