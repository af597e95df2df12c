"""What runs on the Ray cluster: one task per job attempt, and the hub actor it reports to.

The task carries the job folder (a zip) to whichever machine Ray picks, runs the engine there
as `python -m engine run` (the add-on's own entry, so every guarantee of docs/job-protocol.md
holds), and sends back over the hub what the engine writes: events, previews, and each
checkpoint's files. It returns the exit code and the output folder, zipped. The hub lives beside
the server's process; the server drains it into the job store and posts cancels there.

A worker that dies is retried by Ray (`max_retries`); the new attempt asks the hub for the
job's latest checkpoint and resumes from it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

import ray

from .archives import folder_files, pack_files, unpack_archive

REPORT_EVERY_S = 0.5
CANCEL_GRACE_S = 30.0
RESUMABLE_TASKS = ("generate",)


@ray.remote(num_cpus=0, max_restarts=-1)
class JobHub:
    """Mailbox between the server and its running tasks: what tasks report waits here until the
    server drains it; cancels and checkpoints wait here for the tasks."""

    def __init__(self):
        self._reports: list[dict] = []
        self._cancels: set[str] = set()
        self._begun: set[str] = set()  # jobs a task has begun an attempt of
        self._checkpoints: dict[str, dict[str, bytes]] = {}
        self._attempts: dict[str, int] = {}
        self._retry_reasons: dict[str, str] = {}

    def seed(self, job_id: str, attempts: int, checkpoint: dict[str, bytes] | None, reason: str) -> None:
        """A job the server (re)submits: attempts made so far, the checkpoint to resume from, and
        why it runs again (when it has run before)."""
        self._attempts[job_id] = attempts
        self._retry_reasons[job_id] = reason
        if checkpoint:
            self._checkpoints[job_id] = checkpoint

    def begin(self, job_id: str) -> tuple[int, dict[str, bytes] | None, bool]:
        """A task starts an attempt: its number, the checkpoint to resume from, whether it is cancelled."""
        attempt = self._attempts.get(job_id, 0) + 1
        self._attempts[job_id] = attempt
        self._begun.add(job_id)
        reason = self._retry_reasons.pop(job_id, "the worker running it stopped")
        events = [{"event": "retry", "attempt": attempt, "reason": reason}] if attempt > 1 else []
        self._reports.append({"job_id": job_id, "attempt": attempt, "events": events, "previews": {},
                              "checkpoint": None})
        return attempt, self._checkpoints.get(job_id), job_id in self._cancels

    def report(self, job_id: str, attempt: int, events: list[dict], previews: dict[str, bytes],
               checkpoint: dict[str, bytes] | None) -> bool:
        """A task's news; answers whether the job is to be cancelled."""
        if checkpoint:
            self._checkpoints[job_id] = checkpoint
        self._reports.append({"job_id": job_id, "attempt": attempt, "events": events, "previews": previews,
                              "checkpoint": checkpoint})
        return job_id in self._cancels

    def cancel(self, job_id: str) -> bool:
        """Tell the job's tasks to stop; answers whether one has begun (else it waits in Ray's queue).
        A task that begins after this sees the cancel before it starts the engine."""
        self._cancels.add(job_id)
        return job_id in self._begun

    def forget(self, job_id: str) -> None:
        self._cancels.discard(job_id)
        self._begun.discard(job_id)
        self._checkpoints.pop(job_id, None)
        self._attempts.pop(job_id, None)
        self._retry_reasons.pop(job_id, None)

    def drain(self) -> list[dict]:
        reports, self._reports = self._reports, []
        return reports


def _die_with_parent() -> None:
    """In the engine's child process (Linux): a worker killed outright takes its engine with it
    (SIGTERM: the engine still writes its cancelled result), so no orphan holds the GPU."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _EventTail:
    """New complete lines of the engine's progress.jsonl."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        events = []
        for line in data[:end].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


def _read_inside(folder: Path, relative) -> bytes | None:
    """A file an event names in the output folder; one in the run's partial folder is looked for
    where the swap put it too (a short run may have published before this read its event)."""
    if not isinstance(relative, str):
        return None
    name = PurePosixPath(relative)
    if name.is_absolute() or ".." in name.parts:
        return None
    candidates = [name]
    if len(name.parts) > 1 and name.parts[0].startswith(".partial-"):
        candidates.append(PurePosixPath(*name.parts[1:]))
    for candidate in candidates:
        path = folder / candidate.as_posix()
        try:
            if path.is_file() and not path.is_symlink():
                return path.read_bytes()
        except OSError:
            continue
    return None


def _prepare(job_zip: bytes, job_dir: Path, checkpoint: dict[str, bytes] | None) -> Path:
    """Unpack the job; with a checkpoint, lay its files out as a killed run's partial folder and
    ask the engine to resume (docs/job-protocol.md: "Resume and edit"). Returns the output folder."""
    import io

    from ..job.protocol import read_job

    unpack_archive(io.BytesIO(job_zip), job_dir)
    spec = read_job(job_dir)
    if checkpoint and spec.task in RESUMABLE_TASKS:
        partial = spec.output_dir / ".partial-0"
        partial.mkdir(parents=True)
        for name, data in checkpoint.items():
            (partial / PurePosixPath(name).name).write_bytes(data)
        document = json.loads((job_dir / "job.json").read_text("utf-8"))
        document["settings"]["resume"] = True
        (job_dir / "job.json").write_text(json.dumps(document), "utf-8")
    return spec.output_dir


def _engine_env(env: dict[str, str]) -> dict[str, str]:
    import engine

    merged = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(engine.__file__).resolve().parent.parent),
                                                         os.environ.get("PYTHONPATH", "")]))
    return merged


@ray.remote(max_retries=1, retry_exceptions=False)
def run_job_attempt(job_id: str, job_zip: bytes, hub, env: dict[str, str]) -> dict:
    """One attempt at a job on this worker: {"exit_code": int, "outputs": zip of the output folder}."""
    attempt, checkpoint, cancelled = ray.get(hub.begin.remote(job_id))
    # A killed attempt leaves its folder (nothing of it ran to clean up): the next attempt of the
    # job on this machine removes it.
    for stale in Path(tempfile.gettempdir()).glob(f"csd-job-{job_id}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"csd-job-{job_id}-") as temp:
        job_dir = Path(temp) / "job"
        out = _prepare(job_zip, job_dir, checkpoint)
        tail = _EventTail(job_dir / "progress.jsonl")
        if cancelled:
            (job_dir / "cancel").touch()
        with open(job_dir / "engine.log", "ab") as log:
            # An empty working folder: a model named by a relative path never resolves into the job's files.
            (Path(temp) / "cwd").mkdir()
            process = subprocess.Popen([sys.executable, "-m", "engine", "run", str(job_dir)], cwd=str(Path(temp) / "cwd"),
                                       env=_engine_env(env), stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
                                       if sys.platform.startswith("linux") else None)
        cancel_sent = None
        while True:
            code = process.poll()
            events = tail.read()
            previews, saved = {}, None
            for event in events:
                if event.get("event") == "preview":
                    for key in ("path", "view"):
                        data = _read_inside(out, event.get(key))
                        if data is not None:
                            previews[event[key]] = data
                elif event.get("event") == "finished" and event.get("result"):
                    event["result"] = "result.json"  # the worker's own folder means nothing to the server's clients
                elif event.get("event") == "checkpoint":
                    saved = {PurePosixPath(name).name: data for name in event.get("files", [])
                             if (data := _read_inside(out, name)) is not None}
            try:
                cancel = ray.get(hub.report.remote(job_id, attempt, events, previews, saved))
            except ray.exceptions.RayError:
                cancel = False  # the hub restarts; the events of this round are lost, the job goes on
            if cancel and cancel_sent is None and code is None:
                (job_dir / "cancel").touch()
                process.send_signal(signal.SIGTERM)
                cancel_sent = time.monotonic()
            if cancel_sent is not None and code is None and time.monotonic() - cancel_sent > CANCEL_GRACE_S:
                process.kill()
            if code is not None:
                break
            time.sleep(REPORT_EVERY_S)
        published = [(path, name) for path, name in folder_files(out) if not name.startswith(".")]
        outputs = pack_files(published) if (out / "result.json").is_file() else None
        return {"exit_code": code, "outputs": outputs, "attempt": attempt}
