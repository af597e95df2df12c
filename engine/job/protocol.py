"""job.json in, result.json out: the versioned contract with the add-on (docs/job-protocol.md)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import JobFileError
from .paths import inside_folder

# The devices a job may name (job.json's `device`, the CLI's --device).
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?")

PROTOCOL_VERSION = 1
TASKS = ("texture", "generate", "edit")
_KNOWN_KEYS = {"protocol", "task", "mesh", "source", "output", "settings", "region", "keep_texture"}
# The tasks that may keep to a region, and those that may name a texture to keep outside it.
REGION_TASKS = ("texture", "edit")
KEEP_TEXTURE_TASKS = ("texture",)
PROGRESS_LOG = "progress.jsonl"
# A job.json the add-on writes is a few kB and 4 levels deep (settings.extra_cameras[i].matrix_world);
# these bounds refuse crafted ones before they can exhaust memory or the parser's recursion.
MAX_JOB_FILE_BYTES = 1_000_000
MAX_JOB_DEPTH = 16


@dataclass
class JobSpec:
    task: str
    job_dir: Path
    output_dir: Path
    settings: dict[str, Any]
    mesh: Path | None = None
    source: Path | None = None
    region: Path | None = None  # a .npy of the faces a texture or edit job keeps to
    keep_texture: Path | None = None  # a texture job's image kept outside the region

    @property
    def cancel_path(self) -> Path:
        return self.job_dir / "cancel"

    def inside(self, path: str | Path, what: str) -> Path:
        """A file a job's settings name (relative to the job folder), as an absolute path checked
        to be inside the job folder and reached through no link."""
        return inside_folder(self.job_dir, path, what, JobFileError, "the job folder")


def _inside(job_dir: Path, relative: Any, key: str) -> Path:
    if not isinstance(relative, str) or not relative.strip():
        raise JobFileError(f"job.json: {key!r} must be a non-empty relative path.", "")
    if Path(relative).is_absolute():
        raise JobFileError(f"job.json: {key!r} is an absolute path ({relative}).",
                           "Paths in job.json must be relative to the job folder.")
    return inside_folder(job_dir, relative, f"job.json: {key!r}", JobFileError, "the job folder")


def progress_log_path(job_dir: Path) -> Path | None:
    """Where a job folder's progress events go: its progress.jsonl, unless that is a link (which
    read_job refuses) or there is no such folder."""
    path = Path(job_dir) / PROGRESS_LOG
    return path if Path(job_dir).is_dir() and not path.is_symlink() else None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_job_file(path: Path) -> Any:
    """job.json's content, within MAX_JOB_FILE_BYTES and MAX_JOB_DEPTH, strict JSON (no NaN or Infinity)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_JOB_FILE_BYTES + 1)
    except OSError as exc:
        raise JobFileError(f"job.json cannot be read: {exc}.", "Recreate the job from the add-on.") from exc
    if len(raw) > MAX_JOB_FILE_BYTES:
        raise JobFileError(f"job.json is larger than {MAX_JOB_FILE_BYTES:,} bytes.",
                           "A job file holds settings only; recreate the job from the add-on.")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise JobFileError("job.json is nested too deeply.", "Recreate the job from the add-on.") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise JobFileError(f"job.json is not valid JSON: {exc}.", "Recreate the job from the add-on.") from exc
    if _depth(data) > MAX_JOB_DEPTH:
        raise JobFileError(f"job.json is nested more than {MAX_JOB_DEPTH} levels deep.",
                           "Recreate the job from the add-on.")
    return data


def _depth(data: Any) -> int:
    """How many objects and lists deep `data` goes (without recursion: any depth is safe to measure)."""
    deepest, pending = 0, [(data, 1)]
    while pending:
        value, level = pending.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, level)
            pending.extend((item, level + 1) for item in (value.values() if isinstance(value, dict) else value))
    return deepest


def read_job(job_dir: str | Path) -> JobSpec:
    job_dir = Path(job_dir).resolve()
    path = inside_folder(job_dir, "job.json", "job.json", JobFileError)
    inside_folder(job_dir, PROGRESS_LOG, PROGRESS_LOG, JobFileError)
    if not path.is_file():
        raise JobFileError(f"No job.json in {job_dir}.", "Pass the folder the add-on wrote, containing job.json.")
    data = parse_job_file(path)
    if not isinstance(data, dict):
        raise JobFileError("job.json must hold a JSON object.", "")
    version = data.get("protocol")
    if not isinstance(version, int) or isinstance(version, bool):
        raise JobFileError("job.json has no integer 'protocol' version.", f"Add \"protocol\": {PROTOCOL_VERSION}.")
    if version > PROTOCOL_VERSION:
        raise JobFileError(f"job.json uses protocol {version}, newer than this engine's {PROTOCOL_VERSION}.",
                           "Update the engine (the add-on's 'Set up engine' button, or git pull).")
    if version < 1:
        raise JobFileError(f"job.json protocol {version} is not valid.", f"Use protocol {PROTOCOL_VERSION}.")
    unknown = set(data) - _KNOWN_KEYS
    if unknown:
        raise JobFileError(f"job.json has unknown keys: {', '.join(sorted(unknown))}.", "")
    task = data.get("task")
    if task not in TASKS:
        raise JobFileError(f"job.json task {task!r} is not one of {', '.join(TASKS)}.", "")
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise JobFileError("job.json 'settings' must be an object.", "")
    output_dir = _inside(job_dir, data.get("output", "out"), "output")
    spec = JobSpec(task=task, job_dir=job_dir, output_dir=output_dir, settings=settings)
    if task == "texture":
        spec.mesh = _inside(job_dir, data.get("mesh"), "mesh")
    if task == "edit":
        spec.source = _inside(job_dir, data.get("source"), "source")
    if "mesh" in data and spec.mesh is None:
        spec.mesh = _inside(job_dir, data["mesh"], "mesh")
    for key, tasks in (("region", REGION_TASKS), ("keep_texture", KEEP_TEXTURE_TASKS)):
        if key in data:
            if task not in tasks:
                raise JobFileError(f"job.json: {key!r} is for {' and '.join(tasks)} jobs, not {task} jobs.",
                                   f"Leave {key!r} out of this job.")
            setattr(spec, key, _inside(job_dir, data[key], key))
    if spec.keep_texture is not None and spec.region is None:
        raise JobFileError("job.json names a 'keep_texture' but no 'region'.",
                           "Add the region's file as 'region', or leave 'keep_texture' out.")
    return spec


def result_document(task: str, status: str, outputs: dict[str, str], settings: dict, timings: dict,
                    error: dict | None = None, extra: dict | None = None) -> dict:
    document = {"protocol": PROTOCOL_VERSION, "task": task, "status": status, "outputs": outputs,
                "settings": settings, "timings": {k: round(v, 3) for k, v in timings.items()}, "error": error}
    if extra:
        document.update(extra)
    return document


def write_result(output_dir: Path, document: dict) -> Path:
    from ..files import atomic_write_text

    path = output_dir / "result.json"
    atomic_write_text(path, json.dumps(document, indent=2, default=str))
    return path
