"""Runs a manifest's jobs (docs/remote.md, "Batch") and collects their outputs under one folder.

Locally or on a Ray cluster the jobs go through the server's own job store and Ray dispatcher in
this process (no HTTP; the store's folder is the batch's scratch space), with `--server` through
the server's API. Either way each job runs as `python -m engine run` on its job folder, as the
add-on's jobs do. As many jobs are in flight at once as there are job slots (GPUs, else CPUs), each
followed by its own thread: a failed job is submitted once more, and never stops the others.

    DIR/NAME/            a finished job's output folder (result.json and its files), swapped in whole
    DIR/NAME/batch-job.json   the job as it ran (job.json) and the hash of its inputs
    DIR/summary.json     every job's status, attempts, time, outputs and error
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..errors import BadInputError, Cancelled, EngineError, OutputError, first_line
from ..files import atomic_write_text
from ..job.progress import CancelToken
from .manifest import BatchRow, read_manifest

SUMMARY_FILE = "summary.json"
BATCH_FILE = "batch-job.json"
RESULT_FILE = "result.json"
JOBS_DIR = ".batch-jobs"  # the local job store's folder under --out, unless --jobs-dir
ATTEMPTS = 2  # a failed job is submitted once more
POLL_S = 0.25
MAX_SLOTS = 64  # threads following jobs at once, whatever the cluster's size
MAX_SMALL_JSON = 1 << 20  # result.json and batch-job.json are a few kB
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    manifest: Path
    out: Path
    ray_address: str | None = None  # None: Ray on this machine
    server: str | None = None  # a server's URL: the jobs run there
    token_file: Path | None = None
    jobs_dir: Path | None = None  # the local job store (default DIR/.batch-jobs)
    models_dir: Path | None = None  # local diffusers folders below it may be named (as a server's --models-dir)

    def check(self) -> None:
        if self.server is None and self.token_file is not None:
            raise BadInputError("--token-file goes with --server.", "Give the server's URL with --server.")
        if self.server is not None and (self.ray_address, self.jobs_dir, self.models_dir) != (None, None, None):
            raise BadInputError("--server runs the jobs on the server; --ray-address, --jobs-dir and --models-dir are "
                                "for running them from this machine.", "Leave out either --server or the others.")


@dataclasses.dataclass
class Attempt:
    """How one submission of a job ended: the engine's status, its error, and its outputs (zipped) when ok."""

    status: str
    error: dict | None = None
    outputs: bytes | None = None


@dataclasses.dataclass
class JobSummary:
    """A job's line in the table and summary.json."""

    name: str
    task: str
    status: str = "cancelled"  # ok, error or cancelled; a job the batch never got to stays cancelled
    skipped: bool = False  # its outputs were on disk already
    attempts: int = 0
    wall_s: float = 0.0
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)  # result.json's, as paths under --out
    error: dict | None = None

    def to_dict(self) -> dict:
        document = dataclasses.asdict(self)
        del document["name"]
        document["wall_s"] = round(self.wall_s, 2)
        return document


class Backend(Protocol):
    description: str  # where the jobs run, for people
    slots: int  # jobs it runs at once

    def attempt(self, archive: bytes, label: str, on_step: Callable[[int, int], None]) -> Attempt:
        """Submit a job folder (zipped) and wait for its end."""

    def cancel(self) -> None:
        """Ask every job in flight to stop (each attempt then ends cancelled)."""

    def close(self) -> None:
        """Stop waiting: attempts in flight return cancelled at once."""


def _cancelled(message: str) -> Attempt:
    return Attempt("cancelled", {"kind": "cancelled", "message": message, "hint": "", "exit_code": 130})


class LocalBackend:
    """The server's job store and Ray dispatcher in this process: Ray on this machine, or a cluster."""

    def __init__(self, jobs_dir: Path, ray_address: str | None, models_dir: Path | None):
        from ..server.admission import ModelPolicy
        from ..server.dispatch import RayDispatcher, RaySettings
        from ..server.store import JobStore

        self.store = JobStore(jobs_dir, policy=ModelPolicy(models_dir))
        self._end_leftovers()
        self.dispatcher = RayDispatcher(self.store, RaySettings(address=ray_address))
        try:
            self.dispatcher.start()
        except Cancelled:
            self.dispatcher.stop()
            raise
        except Exception as error:  # noqa: BLE001 - Ray's failures have many types; each means the same here
            raise EngineError(f"Ray could not start{'' if ray_address is None else f' at {ray_address}'}: "
                              f"{first_line(error)}.",
                              "Check the address (ray status on the head machine)." if ray_address
                              else "Check that Ray is installed (requirements-server.txt).") from error
        resources = self.dispatcher.resources()
        slot = resources["job_slot"]
        self.slots = max(1, min(MAX_SLOTS, resources["gpus"] if slot == "GPU" else resources["cpus"]))
        where = "on this machine" if ray_address is None else f"at {ray_address}"
        self.description = f"Ray {where}, {self.slots} job{'s' if self.slots > 1 else ''} at once (one {slot} each)"
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()

    def _end_leftovers(self) -> None:
        """A batch that was killed left its jobs in the store, which a new dispatcher would run
        again for nobody: they end here, and go."""
        for record in self.store.list():
            if not record.finished:
                self.store.finish(record.id, 130, None, _cancelled("Left by an interrupted batch.").error,
                                  status="cancelled")
            self.store.delete(record.id)

    def attempt(self, archive: bytes, label: str, on_step: Callable[[int, int], None]) -> Attempt:
        from ..server.store import JobNotFinished

        try:
            record = self.store.accept(io.BytesIO(archive), label)
        except EngineError as error:  # refused before it was queued: the engine's own checks of job.json
            return Attempt("error", error.to_dict())
        with self._lock:
            self._in_flight.add(record.id)
        self.dispatcher.wake()
        try:
            while not record.finished:
                if self._closed.wait(POLL_S):
                    return _cancelled("The batch stopped waiting for it.")
                record = self.store.get(record.id)
                on_step(record.progress.get("step", 0), record.progress.get("total_steps", 0))
            return Attempt(record.status, record.error,
                           self.store.outputs_archive(record.id).read_bytes() if record.status == "ok" else None)
        finally:
            with self._lock:
                self._in_flight.discard(record.id)
            try:
                self.store.delete(record.id)  # its outputs are in DIR/NAME now, its error in the summary
            except JobNotFinished:
                pass

    def cancel(self) -> None:
        with self._lock:
            in_flight = list(self._in_flight)
        for job_id in in_flight:
            self.store.request_cancel(job_id)
        self.dispatcher.wake()

    def close(self) -> None:
        self._closed.set()
        self.dispatcher.stop()


class ServerBackend:
    """A server's HTTP API (engine/server/client.py)."""

    def __init__(self, client):
        self.client = client
        info = client.server_info()  # a wrong URL or token fails here, before any job
        ray = info.get("ray") if isinstance(info.get("ray"), dict) else {}
        slot = ray.get("job_slot", "CPU")
        count = ray.get("gpus" if slot == "GPU" else "cpus")
        self.slots = max(1, min(MAX_SLOTS, count if isinstance(count, int) else 1))
        self.description = (f"the server at {client.url} (engine {info.get('engine_version', '?')}), "
                            f"{self.slots} job{'s' if self.slots > 1 else ''} at once")
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()

    def attempt(self, archive: bytes, label: str, on_step: Callable[[int, int], None]) -> Attempt:
        from ..server.client import ServerError

        try:
            job_id = self.client.submit(archive, label)["id"]
        except ServerError as error:  # refused (the engine's checks of job.json), or the server is gone
            return Attempt("error", error.to_dict())
        with self._lock:
            self._in_flight.add(job_id)
        try:
            for _number, event in self.client.events(job_id):
                if self._closed.is_set():
                    return _cancelled("The batch stopped waiting for it.")
                if event.get("event") in ("started", "step"):
                    on_step(event.get("step", 0), event.get("total_steps", 0))
            record = self.client.job(job_id)
            return Attempt(record["status"], record.get("error"),
                           self.client.outputs(job_id) if record["status"] == "ok" else None)
        except ServerError as error:
            return Attempt("error", error.to_dict())
        finally:
            with self._lock:
                self._in_flight.discard(job_id)

    def cancel(self) -> None:
        from ..server.client import ServerError

        with self._lock:
            in_flight = list(self._in_flight)
        for job_id in in_flight:
            try:
                self.client.cancel(job_id)
            except ServerError:
                pass  # a server that cannot be reached cannot be told; the summary says cancelled all the same

    def close(self) -> None:
        self._closed.set()


class _Progress:
    """Each job's steps, for the bars; written by the jobs' threads, read by the main one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._steps: dict[str, tuple[int, int]] = {}
        self.done = 0

    def step(self, name: str, step, total) -> None:
        if isinstance(step, int) and isinstance(total, int):
            with self._lock:
                self._steps[name] = (step, total)

    def finish(self, name: str) -> None:
        with self._lock:
            self.done += 1
            total = self._steps.get(name, (0, 0))[1]
            self._steps[name] = (total, total)

    def totals(self) -> tuple[int, int, int]:
        """Jobs ended, steps made, steps of the jobs that have started."""
        with self._lock:
            return (self.done, sum(step for step, _ in self._steps.values()),
                    sum(total for _, total in self._steps.values()))


class _Bars:
    """The progress bars on stderr (a terminal only) and the lines written between them."""

    def __init__(self, jobs: int):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.jobs = tqdm(total=jobs, desc="jobs ", unit="job", file=sys.stderr, disable=None, position=0)
        self.steps = tqdm(total=0, desc="steps", unit="step", file=sys.stderr, disable=None, position=1)

    def show(self, progress: _Progress) -> None:
        done, steps, total = progress.totals()
        self.jobs.n, self.steps.n, self.steps.total = done, steps, total
        self.jobs.refresh()
        self.steps.refresh()

    def write(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        self.steps.close()
        self.jobs.close()


def run_batch(options: BatchOptions) -> int:
    """Run the manifest's jobs; 0 when every job is ok (or was already), 1 when one failed, 130 on Ctrl-C."""
    # SIGINT and SIGTERM raise Cancelled in this thread (one held since start-up too): the first
    # cancels the jobs in flight, a second stops waiting for them.
    cancel = CancelToken()
    cancel.install_signal_handlers()
    try:
        cancel.check()
        return _run_batch(options)
    finally:
        cancel.restore_signal_handlers()


def _run_batch(options: BatchOptions) -> int:
    options.check()
    client = _client(options)
    rows = read_manifest(options.manifest)
    out = Path(options.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"Cannot create the output folder {out}: {error.strerror or error}.",
                          "Choose another --out.") from error
    started = time.monotonic()
    summaries = {row.name: JobSummary(row.name, row.task) for row in rows}
    todo = []
    for row in rows:
        try:
            input_hash = row.inputs.input_hash()
        except OSError as error:
            summaries[row.name] = JobSummary(row.name, row.task, "error", error=BadInputError(
                f"Row {row.number}'s files cannot be read: {error}.", "Check the row's mesh or source.").to_dict())
            continue
        done = _done_already(out / row.name, input_hash)
        if done is not None:
            summaries[row.name] = JobSummary(row.name, row.task, "ok", skipped=True, outputs=done)
        else:
            todo.append((row, input_hash))
    skipped = sum(summary.skipped for summary in summaries.values())
    print(f"batch: {len(rows)} job{'s' if len(rows) > 1 else ''} in {options.manifest}, "
          f"{skipped} skipped (done already), {len(todo)} to run", file=sys.stderr, flush=True)
    description, interrupted = None, False
    if todo:
        backend = (ServerBackend(client) if client is not None
                   else LocalBackend(options.jobs_dir or out / JOBS_DIR, options.ray_address, options.models_dir))
        description = backend.description
        print(f"batch: running on {description}", file=sys.stderr, flush=True)
        try:
            interrupted = _run_all(todo, backend, out, summaries, options.manifest)
        finally:
            backend.close()
    _write_summary(out, options.manifest, description, time.monotonic() - started, summaries)
    _print_table(out, summaries)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if all(summary.status == "ok" for summary in summaries.values()) else EXIT_FAILED


def _client(options: BatchOptions):
    """The server's client (--server), checked before anything else is done; None to run from here."""
    if options.server is None:
        return None
    from ..server.client import ServerClient, server_url
    from ..server.serve import read_token

    return ServerClient(server_url(options.server), read_token(options.token_file) if options.token_file else None)


def _run_all(todo: list[tuple[BatchRow, str]], backend: Backend, out: Path, summaries: dict[str, JobSummary],
             manifest: Path) -> bool:
    """Run the rows, `backend.slots` at a time; whether Ctrl-C stopped them."""
    queue = deque(todo)
    queue_lock = threading.Lock()
    stop = threading.Event()
    progress = _Progress()
    bars = _Bars(len(todo))

    def worker() -> None:
        while not stop.is_set():
            with queue_lock:
                if not queue:
                    return
                row, input_hash = queue.popleft()
            try:
                summaries[row.name] = _run_row(row, input_hash, backend, out, manifest, progress, bars, stop)
            except Exception as error:  # noqa: BLE001 - a bug with one job must not stop the others
                summaries[row.name] = JobSummary(row.name, row.task, "error", error=EngineError(
                    f"The batch failed on this job: {type(error).__name__}: {first_line(error)}.",
                    "Report this problem; the other jobs went on.").to_dict())
            progress.finish(row.name)

    # Daemon threads: after a second Ctrl-C the batch leaves at once, whatever a thread is waiting on.
    threads = [threading.Thread(target=worker, name=f"batch-{index}", daemon=True)
               for index in range(min(backend.slots, len(todo)))]
    for thread in threads:
        thread.start()
    try:
        try:
            _wait(threads, bars, progress)
        except Cancelled:
            stop.set()
            bars.write("batch: cancelling the jobs in flight (Ctrl-C again to stop waiting for them)")
            backend.cancel()
            try:
                _wait(threads, bars, progress)
            except Cancelled:
                pass
            return True
    finally:
        bars.close()
    return False


def _wait(threads: list[threading.Thread], bars: _Bars, progress: _Progress) -> None:
    while any(thread.is_alive() for thread in threads):
        bars.show(progress)
        time.sleep(POLL_S)
    bars.show(progress)


def _run_row(row: BatchRow, input_hash: str, backend: Backend, out: Path, manifest: Path, progress: _Progress,
             bars: _Bars, stop: threading.Event) -> JobSummary:
    summary = JobSummary(row.name, row.task)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="csd-batch-") as temp:
        try:
            archive = _pack(row.inputs.write(Path(temp) / "job"))
        except OSError as error:
            summary.status = "error"
            summary.error = BadInputError(f"The job folder cannot be written: {error}.",
                                          "Check that the row's files are readable and the temporary "
                                          "folder has space.").to_dict()
            return summary
    for number in range(1, ATTEMPTS + 1):
        if stop.is_set():
            break
        summary.attempts = number
        progress.step(row.name, 0, 0)
        attempt = backend.attempt(archive, row.name, lambda step, total: progress.step(row.name, step, total))
        summary.status, summary.error = attempt.status, attempt.error
        if attempt.status == "ok":
            record = {"name": row.name, "task": row.task, "input_hash": input_hash, "attempts": number,
                      "manifest": str(Path(manifest).resolve()), "row": row.number, "job": row.inputs.document}
            try:
                summary.outputs = _publish(out / row.name, attempt.outputs or b"", record)
            except EngineError as error:  # the job is fine; writing it out is not, and would fail again
                summary.status, summary.error = "error", error.to_dict()
            break
        if number < ATTEMPTS and not stop.is_set():
            bars.write(f"batch: {row.name} {attempt.status} ({_error_text(attempt.error)}); trying once more")
    summary.wall_s = time.monotonic() - started
    line = f"{summary.status} in {summary.wall_s:.1f} s" + (
        f": {_error_text(summary.error)}" if summary.status != "ok" else f" -> {out / row.name}")
    bars.write(f"batch: {row.name} {line}")
    return summary


def _pack(folder: Path) -> bytes:
    from ..server.archives import pack_folder

    return pack_folder(folder)


def _publish(folder: Path, archive: bytes, record: dict) -> dict[str, str]:
    """Swap the job's output folder in as DIR/NAME (engine/job/outputs.py: one whole set, locked),
    with batch-job.json beside its files; result.json's outputs as paths under DIR."""
    from ..job.outputs import OutputFolder
    from ..server.archives import ArchiveError, unpack_archive

    target = OutputFolder(folder)
    partial = target.open()
    try:
        partial.rmdir()  # unpack_archive makes its own folder
        unpack_archive(io.BytesIO(archive), partial)
        result = _read_small_json(partial / RESULT_FILE) or {}
        atomic_write_text(partial / BATCH_FILE, json.dumps(record, indent=2, ensure_ascii=False))
        target.publish()
    except ArchiveError as error:
        raise OutputError(f"The outputs of {folder.name} cannot be unpacked: {error.message}",
                          "Run the batch again.") from error
    except OSError as error:
        raise OutputError(f"Cannot write {folder}: {error.strerror or error}.",
                          "Check that --out is writable and has free space.") from error
    finally:
        target.close()
    return _outputs_under(folder.name, result)


def _outputs_under(name: str, result: dict) -> dict[str, str]:
    outputs = result.get("outputs")
    if not isinstance(outputs, dict):
        return {}
    return {key: f"{name}/{value}" for key, value in outputs.items() if isinstance(value, str)}


def _read_small_json(path: Path) -> dict | None:
    try:
        with open(path, "rb") as handle:
            document = json.loads(handle.read(MAX_SMALL_JSON))
    except (OSError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _done_already(folder: Path, input_hash: str) -> dict[str, str] | None:
    """The outputs of DIR/NAME when it holds this very job's finished set (result.json ok, same input hash)."""
    result = _read_small_json(folder / RESULT_FILE)
    record = _read_small_json(folder / BATCH_FILE)
    if result is None or record is None or result.get("status") != "ok" or record.get("input_hash") != input_hash:
        return None
    return _outputs_under(folder.name, result)


def _error_text(error: dict | None) -> str:
    if not isinstance(error, dict):
        return "no error given"
    return f"{error.get('kind', 'error')}: {str(error.get('message', '')).strip()}"


def _write_summary(out: Path, manifest: Path, ran_on: str | None, wall_s: float,
                   summaries: dict[str, JobSummary]) -> None:
    statuses = [summary.status for summary in summaries.values()]
    document = {"manifest": str(Path(manifest).resolve()), "out": str(out.resolve()), "ran_on": ran_on,
                "wall_s": round(wall_s, 2), "ok": statuses.count("ok"), "error": statuses.count("error"),
                "cancelled": statuses.count("cancelled"),
                "jobs": {name: summary.to_dict() for name, summary in summaries.items()}}
    atomic_write_text(out / SUMMARY_FILE, json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def _print_table(out: Path, summaries: dict[str, JobSummary]) -> None:
    rows = [("job", "task", "status", "attempts", "time", "error")]
    for summary in summaries.values():
        status = "skipped" if summary.skipped else summary.status
        error = "" if summary.error is None or summary.status == "ok" else _error_text(summary.error)
        wall = "" if summary.skipped else f"{summary.wall_s:.1f} s"
        rows.append((summary.name, summary.task, status, str(summary.attempts), wall,
                     error.splitlines()[0][:160] if error else ""))
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)) + "  " + row[5]
             for row in rows]
    statuses = [summary.status for summary in summaries.values()]
    skipped = sum(summary.skipped for summary in summaries.values())
    lines.append(f"{statuses.count('ok')} ok ({skipped} skipped), {statuses.count('error')} failed, "
                 f"{statuses.count('cancelled')} cancelled; summary in {out / SUMMARY_FILE}")
    print("\n".join(line.rstrip() for line in lines), file=sys.stderr, flush=True)
