"""The server's jobs on disk: the one owner of `--jobs-dir`, so that a restarted server finds every
job as it was (docs/remote.md). Every write is atomic; every method is safe from any thread.

    JOBS_DIR/ID/record.json    the JobRecord
    JOBS_DIR/ID/job/           the job folder as uploaded (and admitted)
    JOBS_DIR/ID/events.jsonl   the engine's events and the server's own, one per line
    JOBS_DIR/ID/previews/      preview files, by the path their event gives
    JOBS_DIR/ID/checkpoint/    the latest files a resumed run continues (a generate job's states)
    JOBS_DIR/ID/out/           the finished output folder
    JOBS_DIR/ID/outputs.zip    the same, zipped, as the worker sent it (what GET .../outputs serves)
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import secrets
import shutil
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from ..errors import EngineError
from ..files import atomic_write_bytes, atomic_write_text
from .admission import ModelPolicy, admit_job
from .archives import ArchiveError, ArchiveLimits, pack_files, folder_files, unpack_archive

QUEUED, RUNNING = "queued", "running"
FINISHED = ("ok", "error", "cancelled")
# What travels to a worker of a job folder: never what an earlier run left in it.
RUN_LEFTOVERS = ("out", "progress.jsonl", "cancel", ".out.lock", "engine.log")
MAX_LABEL_CHARS = 200
OUTPUTS_ARCHIVE = "outputs.zip"


class JobNotFound(EngineError):
    kind = "not_found"


class JobNotFinished(EngineError):
    kind = "not_finished"


@dataclasses.dataclass
class JobRecord:
    id: str
    task: str
    label: str
    created: float
    status: str = QUEUED
    exit_code: int | None = None
    error: dict | None = None
    attempt: int = 0
    cancel_requested: bool = False
    started: float | None = None
    ended: float | None = None
    progress: dict = dataclasses.field(default_factory=dict)
    events: int = 0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> JobRecord:
        names = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def _progress_from(event: dict, progress: dict) -> None:
    kind = event.get("event")
    if kind == "stage":
        progress["stage"] = event.get("name")
    elif kind == "step":
        for key in ("step", "total_steps", "eta_s", "loss"):
            if key in event:
                progress[key] = event[key]
    elif kind == "started" and "total_steps" in event:
        progress["total_steps"] = event["total_steps"]


def plain_relative(path: Any) -> PurePosixPath | None:
    """`path` if it is a plain relative path that stays below its folder, else None."""
    if not isinstance(path, str) or "\\" in path or "\x00" in path or len(path) > 500:
        return None
    name = PurePosixPath(path)
    if name.is_absolute() or not name.parts or any(part in ("..", "", ".") for part in name.parts):
        return None
    return name


def preview_name(path: Any) -> PurePosixPath | None:
    """A preview event's path, if it is a plain relative PNG path (the only files kept of a run's previews)."""
    name = plain_relative(path)
    return name if name is not None and name.suffix.lower() == ".png" else None


class JobStore:
    def __init__(self, root: Path, limits: ArchiveLimits = ArchiveLimits(), policy: ModelPolicy = ModelPolicy()):
        self.root = Path(root).resolve()
        self.limits, self.policy = limits, policy
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".uploads").mkdir(exist_ok=True)
        self._lock = threading.RLock()
        self._records: dict[str, JobRecord] = {}
        for folder in sorted(self.root.iterdir()):
            record = self._read_record(folder)
            if record is not None:
                self._records[record.id] = record
        for leftover in (self.root / ".uploads").iterdir():
            leftover.unlink(missing_ok=True)

    # -- reading --------------------------------------------------------------------------------

    def _read_record(self, folder: Path) -> JobRecord | None:
        try:
            return JobRecord.from_dict(json.loads((folder / "record.json").read_text("utf-8")))
        except (OSError, ValueError, TypeError):
            return None  # not a job folder, or one whose acceptance never finished

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                raise JobNotFound(f"There is no job {job_id!r} on this server.", "GET /v1/jobs lists the jobs.")
            return dataclasses.replace(record, progress=dict(record.progress))

    def list(self) -> list[JobRecord]:
        with self._lock:
            return sorted((self.get(job_id) for job_id in self._records), key=lambda r: r.created, reverse=True)

    def unfinished(self) -> list[JobRecord]:
        return sorted((record for record in self.list() if not record.finished), key=lambda r: r.created)

    def folder(self, job_id: str) -> Path:
        self.get(job_id)
        return self.root / job_id

    def events_after(self, job_id: str, after: int) -> list[tuple[int, str]]:
        """(number, JSON line) of the job's events after the first `after` (numbered from 1)."""
        path = self.folder(job_id) / "events.jsonl"
        with self._lock:
            try:
                lines = path.read_text("utf-8").splitlines()
            except FileNotFoundError:
                return []
        return [(index, line) for index, line in enumerate(lines, start=1) if index > after]

    def preview_file(self, job_id: str, path: str) -> Path:
        name = preview_name(path)
        file = self.folder(job_id) / "previews" / name.as_posix() if name is not None else None
        if file is None or not file.is_file():
            raise JobNotFound(f"Job {job_id} has no preview {path!r}.", "Use a path a preview event named.")
        return file

    def job_archive(self, job_id: str) -> bytes:
        return pack_files(folder_files(self.folder(job_id) / "job", skip=RUN_LEFTOVERS))

    def checkpoint(self, job_id: str) -> dict[str, bytes] | None:
        folder = self.folder(job_id) / "checkpoint"
        if not folder.is_dir():
            return None
        return {name: path.read_bytes() for path, name in folder_files(folder)} or None

    def outputs_archive(self, job_id: str) -> Path:
        """The finished job's output folder as the worker zipped it (an empty zip when it left none)."""
        record = self.get(job_id)
        path = self.root / job_id / OUTPUTS_ARCHIVE
        if not record.finished:
            raise JobNotFinished(f"Job {job_id} is {record.status}; its outputs come when it has finished.",
                                 "Follow its events, or cancel it.")
        if not path.is_file():
            atomic_write_bytes(path, pack_files([]))
        return path

    # -- writing --------------------------------------------------------------------------------

    def upload_path(self) -> Path:
        """A fresh file for an upload streaming in (removed by accept, or at the next start)."""
        return self.root / ".uploads" / secrets.token_hex(8)

    def accept(self, upload: Path | BinaryIO, label: str = "") -> JobRecord:
        """Unpack and admit an uploaded job folder; the new job is queued. Raises ArchiveError or
        the engine's own error, leaving nothing behind."""
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        folder = self.root / job_id
        try:
            unpack_archive(upload, folder / "job", self.limits)
            task = admit_job(folder / "job", self.policy)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        label = "".join(ch for ch in str(label) if ch.isprintable())[:MAX_LABEL_CHARS]
        record = JobRecord(id=job_id, task=task, label=label, created=time.time())
        with self._lock:
            self._records[job_id] = record
            self._save(record)
            position = sum(1 for other in self._records.values() if not other.finished)
        self.append_events(job_id, [{"event": "queued", "position": position}])
        return self.get(job_id)

    def _save(self, record: JobRecord) -> None:
        atomic_write_text(self.root / record.id / "record.json", json.dumps(record.to_dict(), indent=1))

    def _update(self, job_id: str, **changes) -> JobRecord:
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                raise JobNotFound(f"There is no job {job_id!r} on this server.", "")
            for key, value in changes.items():
                setattr(record, key, value)
            self._save(record)
            return record

    def append_events(self, job_id: str, events: list[dict]) -> None:
        if not events:
            return
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                return
            text = "".join(json.dumps(event, separators=(",", ":")) + "\n" for event in events)
            with open(self.root / job_id / "events.jsonl", "a", encoding="utf-8") as handle:
                handle.write(text)
            for event in events:
                _progress_from(event, record.progress)
            record.events += len(events)
            self._save(record)

    def save_preview(self, job_id: str, path: str, data: bytes) -> None:
        name = preview_name(path)
        if name is None or len(data) > 64 << 20:
            return
        target = self.folder(job_id) / "previews" / name.as_posix()
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)

    def save_checkpoint(self, job_id: str, files: dict[str, bytes]) -> None:
        """Replace the job's checkpoint with `files` as one set (a crash keeps the older set)."""
        folder = self.folder(job_id)
        incoming = folder / f"checkpoint.new-{os.getpid()}"
        shutil.rmtree(incoming, ignore_errors=True)
        for path, data in files.items():
            name = plain_relative(path)
            if name is None:
                continue
            target = incoming / name.as_posix()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        with self._lock:
            retired = folder / f"checkpoint.old-{os.getpid()}"
            if (folder / "checkpoint").exists():
                os.rename(folder / "checkpoint", retired)
            os.rename(incoming, folder / "checkpoint")
            shutil.rmtree(retired, ignore_errors=True)

    def mark_running(self, job_id: str, attempt: int) -> None:
        record = self.get(job_id)
        if record.finished:
            return
        self._update(job_id, status=RUNNING, attempt=attempt, started=record.started or time.time())

    def request_cancel(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record.finished:
            return record
        return self._update(job_id, cancel_requested=True)

    def finish(self, job_id: str, exit_code: int, outputs: bytes | None, error: dict | None = None,
               status: str = "error") -> None:
        """The job has ended: its outputs (the engine's output folder, zipped) become `out/`, and
        the record takes result.json's status. Without outputs (the worker died, or the job was
        cancelled before it started) `status` and `error` say how it ended."""
        folder = self.folder(job_id)
        if outputs is not None:
            incoming = folder / f"out.new-{os.getpid()}"
            shutil.rmtree(incoming, ignore_errors=True)
            try:
                unpack_archive(io.BytesIO(outputs), incoming, self.limits)
                result = json.loads((incoming / "result.json").read_text("utf-8"))
                status, error = result.get("status", "error"), result.get("error") or error
            except (ArchiveError, OSError, ValueError) as problem:
                status = "error"
                error = error or {"kind": "engine_error", "message": f"The job's outputs cannot be read: {problem}.",
                                  "hint": "", "exit_code": exit_code}
            else:
                shutil.rmtree(folder / "out", ignore_errors=True)
                os.rename(incoming, folder / "out")
                # Served as it came: every download of a large output set costs no packing.
                atomic_write_bytes(folder / OUTPUTS_ARCHIVE, outputs)
            shutil.rmtree(incoming, ignore_errors=True)
        if status not in FINISHED:
            status = "error"
        if status == "ok":
            error = None
        self._update(job_id, status=status, exit_code=exit_code, error=error, ended=time.time())

    def delete(self, job_id: str) -> None:
        record = self.get(job_id)
        if not record.finished:
            raise JobNotFinished(f"Job {job_id} is {record.status}.", "Cancel it first, then delete it.")
        with self._lock:
            self._records.pop(job_id, None)
            # The record goes first: a crash mid-removal leaves a folder the next start ignores.
            (self.root / job_id / "record.json").unlink(missing_ok=True)
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def purge(self, keep_days: float) -> list[str]:
        """Delete finished jobs that ended more than `keep_days` ago (0: keep them all)."""
        if keep_days <= 0:
            return []
        limit = time.time() - keep_days * 86400
        old = [record.id for record in self.list() if record.finished and (record.ended or 0) < limit]
        for job_id in old:
            self.delete(job_id)
        return old
