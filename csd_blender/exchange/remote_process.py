"""A job on a remote engine server, followed like the local engine process (docs/remote.md).

RemoteEngineProcess has EngineProcess's interface (start, poll, cancel, kill, wait, running,
returncode, cancel_requested, log_path), so the queue, the progress display, the previews and
the import do not know where the engine runs. A background thread sends the job folder, follows
the server's event stream into JOB_DIR/progress.jsonl (what the local engine writes), fetches
each preview into JOB_DIR/out/ before its event is written, and at the end unpacks the outputs
into JOB_DIR/out/. The thread never touches bpy: everything it needs is read on the main
thread first (ServerConfig), and it talks to the main thread only through files and attributes.

A remote job's folder also keeps what a later session needs to import its result, should
Blender be closed before the job ends: remote.json (server, job id) and the request
(request.json, request.npz; never a pickle), with the .blend it belongs to.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from . import job_folder, protocol
from .process import wait_for_exit
from .engine_output import EngineOutputError, clean_text, read_json_object, relative_name, resolve_inside
from .errors import UserError
from .progress import JobProgress, format_bytes
from .remote import (REMOTE_FILE, REQUEST_ARRAYS, REQUEST_FILE, UNREACHABLE_HINT, UPLOAD_FILE, ConnectionLost,
                     RemoteClient, RemoteError, ServerConfig, check_protocol, pack_job, unpack_outputs)
from .requests import JobRequest, request_from_dict, request_to_dict

# Reconnecting after a lost connection: 1 s, 2 s, 4 s ... at most 30 s apart, for as long as it takes
# (the job runs on regardless; the panel says the connection is lost).
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
# After a cancel the server stops the engine within seconds (every phase answers within about 2 s);
# one that does not say so within this long is no longer followed.
CANCEL_GRACE_S = 30.0
CANCEL_TRIES = 5
CONNECTION_LOST = "connection lost, retrying"
ENDED_STATUSES = ("ok", "error", "cancelled")
DEFAULT_CODES = {"ok": 0, "cancelled": protocol.EXIT_CANCELLED, "error": protocol.EXIT_ENGINE_ERROR}
JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# What returncode says when following stopped without the server's word (kill()): the local kill's code.
STOPPED = -9
OUTPUTS_ZIP = "outputs.zip"
UNPACKING_DIR = ".out-remote"


@dataclass(frozen=True)
class RemoteTarget:
    """Where a job runs: the server, and the job's id there when it was sent in an earlier session."""

    config: ServerConfig
    job_id: str | None = None


class RemoteEngineProcess:
    """One job on a server, followed on a background thread (see the module's docstring)."""

    def __init__(self, job_dir: Path, target: RemoteTarget, label: str = ""):
        self.job_dir = Path(job_dir)
        self.target = target
        self.label = label
        self.log_path = self.job_dir / protocol.LOG_FILE
        self.returncode: int | None = None
        self.cancel_requested = False
        self.job_id: str | None = target.job_id
        self.started_at: float | None = None
        self.connection_lost = False
        self._stop = threading.Event()  # detach() or kill(): stop following, leave the server's job alone
        self._cancel = threading.Event()
        self._cancel_time: float | None = None
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._mirror = JobProgress()  # the progress the events make, to put the stage back after a lost connection
        self._after = 0  # the number of the last event written
        self._fetch_previews = True

    # -- EngineProcess's interface ------------------------------------------------------------------

    def start(self) -> None:
        """Start following on a background thread; returns at once. OSError when the job folder cannot be written."""
        # progress.jsonl starts afresh, as each local engine run starts its own (a fetch replays every event).
        (self.job_dir / protocol.PROGRESS_FILE).write_bytes(b"")
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"csd-remote-{self.job_dir.name}", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self.poll() is None

    def poll(self) -> int | None:
        """The job's exit code once it has ended on the server (0 ok, 130 cancelled), else None."""
        if (self.returncode is None and self._cancel_time is not None
                and time.monotonic() - self._cancel_time > CANCEL_GRACE_S):
            self._log(f"The server did not end the job within {CANCEL_GRACE_S:.0f} s of the cancel; "
                      "it is no longer followed.")
            self._stop.set()
            self.returncode = protocol.EXIT_CANCELLED
        return self.returncode

    def cancel(self) -> None:
        """Ask the server to stop the job (it writes a cancelled result); never blocks."""
        self.cancel_requested = True
        if self._cancel.is_set() or self.returncode is not None:
            return
        self._cancel.set()
        self._cancel_time = time.monotonic()
        if self.job_id is not None:  # else the thread cancels it as soon as the server has accepted it
            self._send_cancel_async()

    def kill(self) -> None:
        """Stop following at once (the server's job is left to the cancel already sent)."""
        self._stop.set()
        if self.returncode is None:
            self.returncode = protocol.EXIT_CANCELLED if self.cancel_requested else STOPPED

    def detach(self) -> None:
        """Stop following and leave the job running on the server: a later session fetches its result."""
        self._stop.set()
        self._log("No longer followed (the file or Blender was closed); the job stays on the server for a "
                  "later fetch.")

    def wait(self, timeout: float | None = None) -> int | None:
        return wait_for_exit(self.poll, timeout)

    # -- the background thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            client = RemoteClient(self.target.config)
            if self.job_id is None:
                if self._cancel.is_set():  # cancelled before anything was sent
                    self.returncode = protocol.EXIT_CANCELLED
                    return
                self._submit(client)
            else:
                self._attach(client)
            job = self._follow(client)
            if job is None:  # detached or killed
                return
            status = job.get("status")
            if not self.cancel_requested:
                self._fetch_outputs(client, status)
            code = job.get("exit_code")
            self._log(f"The job ended on the server: {status}, exit code {code}.")
            self.returncode = (code if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 255
                               else DEFAULT_CODES.get(status, protocol.EXIT_ENGINE_ERROR))
        except UserError as exc:  # RemoteError, NetworkBlocked, our disk
            self._fail(getattr(exc, "kind", "") or "remote", exc.message, exc.hint)
        except EngineOutputError as exc:
            self._fail("bad_output", f"The server's outputs were refused: {exc}.",
                       "Your scene is unchanged. The server and the extension may not match: update both.")
        except Exception as exc:  # a bug of ours: the log gets the traceback, the artist a message
            self._log(traceback.format_exc())
            self._fail("engine_error", f"Following the remote job failed ({type(exc).__name__}: {exc}).",
                       f"Your scene is unchanged. The log is in {self.log_path}.")

    def _submit(self, client: RemoteClient) -> None:
        self._stage("sending the job to the server")
        archive = pack_job(self.job_dir, self.job_dir / UPLOAD_FILE)
        try:
            size = archive.stat().st_size
            # The server answers a wrong token or a too large upload before it reads the body, which
            # the sender sees as a broken pipe: ask first, so the artist reads the server's reason.
            info = client.server_info()
            check_protocol(info)
            limit = info.get("max_upload_bytes")
            if isinstance(limit, int) and not isinstance(limit, bool) and size > limit:
                raise RemoteError(f"The job is {format_bytes(size)} zipped, more than the server accepts "
                                  f"({format_bytes(limit)}).",
                                  "Texture a simpler mesh, or start the server with a larger --max-upload-mb.",
                                  kind="too_large")
            job = client.submit(archive, self.label)
        except ConnectionLost as exc:
            raise RemoteError(f"The job could not be sent to the server: {exc}.", UNREACHABLE_HINT,
                              kind="unreachable") from None
        finally:
            archive.unlink(missing_ok=True)
        job_id = job["id"]
        if not JOB_ID.fullmatch(job_id):
            raise RemoteError(f"The server named the job {clean_text(job_id, 80)!r}, not an id the add-on accepts.",
                              "Update the server and the extension together.", kind="bad_answer")
        self.job_id = job_id
        job_folder.write_json_atomic(self.job_dir / REMOTE_FILE,
                                     {"server": self.target.config.url, "job_id": job_id, "settled": False})
        self._log(f"Sent {size} bytes to {self.target.config.url}: job {job_id}.")
        if self._cancel.is_set():
            self._send_cancel_async()

    def _attach(self, client: RemoteClient) -> None:
        """A job sent in an earlier session: when it has already ended, its previews are not fetched."""
        self._log(f"Following job {self.job_id} on {self.target.config.url} again.")
        job = self._retrying(lambda: client.job(self.job_id))
        if job is not None and job.get("status") in ENDED_STATUSES:
            self._fetch_previews = False

    def _follow(self, client: RemoteClient) -> dict | None:
        """Write the job's events into progress.jsonl until the job has ended; returns its JOB (None if stopped)."""
        delay = RETRY_FIRST_S
        while not self._stop.is_set():
            try:
                stream = client.events(self.job_id, self._after)
                if self.connection_lost:
                    self._reconnected()
                delay = RETRY_FIRST_S
                for number, event in stream:
                    if self._stop.is_set():
                        stream.close()
                        return None
                    self._handle(client, event)
                    self._after = number if number is not None else self._after + 1
                job = client.job(self.job_id)  # the stream ends with the job, or with the server going away
                if job.get("status") in ENDED_STATUSES:
                    return job
            except ConnectionLost as exc:
                self._lost(exc)
            if self._stop.wait(delay):
                return None
            delay = min(delay * 2, RETRY_MAX_S)
        return None

    def _handle(self, client: RemoteClient, event: dict) -> None:
        kind = event.get("event")
        if kind == "preview" and self._fetch_previews:
            for key in ("path", "view"):  # fetched before the event is written, so the panel finds them
                if isinstance(event.get(key), str):
                    self._fetch_preview(client, event[key])
        self._write(event)
        if kind == "queued" and isinstance(event.get("position"), int):
            self._stage(f"queued on the server (position {event['position']})")
        elif kind == "retry":
            attempt = event.get("attempt")
            self._stage(f"restarted on the server{f' (attempt {attempt})' if isinstance(attempt, int) else ''}")

    def _fetch_preview(self, client: RemoteClient, path: str) -> None:
        out = self.job_dir / protocol.OUTPUT_DIR
        try:
            name = relative_name(path)
            target = out.joinpath(*PurePosixPath(name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            resolve_inside(out, name)  # no link on the way
            client.preview(self.job_id, name, target)
        except (EngineOutputError, RemoteError, OSError) as exc:  # a preview is never worth failing a job for
            self._log(f"Preview {clean_text(path, 200)} not fetched: {exc}")

    def _fetch_outputs(self, client: RemoteClient, status) -> None:
        """The finished job's output folder, unpacked after its checks in place of JOB_DIR/out."""
        self._stage("fetching the result")
        archive = self.job_dir / OUTPUTS_ZIP
        unpacking = self.job_dir / UNPACKING_DIR
        try:
            if self._retrying(lambda: client.outputs(self.job_id, archive)) is None:
                return
            job_folder.remove_tree(unpacking)
            unpack_outputs(archive, unpacking)
        except (RemoteError, EngineOutputError) as exc:
            if status == "ok":
                raise
            # A failed job's message is in its events already: its outputs are a courtesy.
            self._log(f"The outputs of the {status} job were not fetched: {exc}")
            return
        finally:
            archive.unlink(missing_ok=True)
        out = self.job_dir / protocol.OUTPUT_DIR
        job_folder.remove_tree(out)  # the previews fetched while it ran; the set replaces them, as locally
        os.replace(unpacking, out)

    def _retrying(self, call: Callable):
        """``call()`` until it gets through (None once stopped), the panel saying the connection is lost."""
        delay = RETRY_FIRST_S
        while not self._stop.is_set():
            try:
                result = call()
            except ConnectionLost as exc:
                self._lost(exc)
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if self.connection_lost:
                self._reconnected()
            return result
        return None

    def _send_cancel_async(self) -> None:
        threading.Thread(target=self._send_cancel, name=f"csd-remote-cancel-{self.job_id}", daemon=True).start()

    def _send_cancel(self) -> None:
        try:
            client = RemoteClient(self.target.config)
        except UserError as exc:
            self._log(f"The cancel was not sent: {exc.text()}")
            return
        delay = RETRY_FIRST_S
        for _ in range(CANCEL_TRIES):
            if self.returncode is not None or self._stop.is_set():
                return
            try:
                client.cancel(self.job_id)
                self._log("Cancel sent to the server.")
                return
            except RemoteError as exc:
                self._log(f"The server refused the cancel: {exc.text()}")
                return
            except ConnectionLost as exc:
                self._log(f"The cancel could not be sent ({exc}); trying again.")
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, RETRY_MAX_S)

    # -- what the main thread reads: progress.jsonl and engine.log ------------------------------------

    def _write(self, event: dict, mirrored: bool = True) -> None:
        if self._stop.is_set():  # detached: the job folder is left for a later session's fetch
            return
        if mirrored:
            self._mirror.apply(event)
        line = json.dumps(event, ensure_ascii=False) + "\n"
        with self._write_lock, open(self.job_dir / protocol.PROGRESS_FILE, "a", encoding="utf-8") as handle:
            handle.write(line)

    def _stage(self, name: str) -> None:
        self._write({"event": "stage", "name": name, "time": self._mirror.elapsed_s})

    def _lost(self, exc: Exception) -> None:
        if not self.connection_lost:
            self.connection_lost = True
            self._log(f"Connection lost: {exc}")
            # Not mirrored: the stage the events made is the one to put back on reconnection.
            self._write({"event": "stage", "name": CONNECTION_LOST, "time": self._mirror.elapsed_s}, mirrored=False)

    def _reconnected(self) -> None:
        self.connection_lost = False
        self._log("Connection back.")
        self._write({"event": "stage", "name": self._mirror.stage, "time": self._mirror.elapsed_s}, mirrored=False)

    def _fail(self, kind: str, message: str, hint: str) -> None:
        """End with an error the job's report shows (the events' error, as an engine would write it)."""
        self._log(f"Failed: {message} {hint}".rstrip())
        self._write({"event": "error", "kind": kind, "message": message, "hint": hint,
                     "exit_code": protocol.EXIT_ENGINE_ERROR})
        self._write({"event": "finished", "status": "error"})
        self.returncode = protocol.EXIT_ENGINE_ERROR

    def _log(self, text: str) -> None:
        try:
            with self._write_lock, open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        except OSError:
            pass


# -- what a later session needs: the records kept in a remote job's folder ------------------------------

@dataclass(frozen=True)
class RemoteRecord:
    """A remote job as its folder remembers it."""

    job_dir: Path
    server: str
    job_id: str
    task: str
    label: str
    blend: str  # the .blend the result goes into ("" for a file never saved)
    settled: bool  # followed to its end (imported, failed or cancelled): nothing left to fetch


def save_request(job_dir: Path, task: str, label: str, blend: str, request: JobRequest) -> None:
    """Keep what the import needs beside the job: request.json (values) and request.npz (arrays)."""
    import numpy as np

    values, arrays = request_to_dict(request)
    job_dir = Path(job_dir)
    if arrays:
        tmp = job_dir / (REQUEST_ARRAYS + ".tmp.npz")
        np.savez(tmp, **{key: np.asarray(value) for key, value in arrays.items()})
        os.replace(tmp, job_dir / REQUEST_ARRAYS)
    job_folder.write_json_atomic(job_dir / REQUEST_FILE,
                                 {"task": task, "label": label, "blend": blend, "request": values})


def _same_blend(a: str, b: str) -> bool:
    return bool(a) and bool(b) and os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def set_blend(job_dir: Path, blend: str) -> None:
    """Record the .blend a job's result belongs to (the file was saved under a new name, or first saved)."""
    if not blend:  # a file closed unsaved keeps the path it was sent from
        return
    path = Path(job_dir) / REQUEST_FILE
    try:
        data = read_json_object(path, REQUEST_FILE)
        if data is not None and not _same_blend(str(data.get("blend") or ""), blend):
            data["blend"] = blend
            job_folder.write_json_atomic(path, data)
    except (EngineOutputError, OSError):
        pass


def settle(job_dir: Path) -> None:
    """Mark a kept remote job as followed to its end, so no later session offers to fetch it."""
    path = Path(job_dir) / REMOTE_FILE
    try:
        data = read_json_object(path, REMOTE_FILE)
        if data is not None:
            data["settled"] = True
            job_folder.write_json_atomic(path, data)
    except (EngineOutputError, OSError):
        pass


def read_record(job_dir: Path) -> RemoteRecord | None:
    """The record of a job the server accepted, or None (not sent, or the files are damaged)."""
    job_dir = Path(job_dir)
    try:
        remote = read_json_object(job_dir / REMOTE_FILE, REMOTE_FILE)
        request = read_json_object(job_dir / REQUEST_FILE, REQUEST_FILE)
    except (EngineOutputError, OSError):
        return None
    if not remote or not request:
        return None
    job_id, server, task = remote.get("job_id"), remote.get("server"), request.get("task")
    if not (isinstance(job_id, str) and JOB_ID.fullmatch(job_id) and isinstance(server, str)
            and task in protocol.TASKS):
        return None
    return RemoteRecord(job_dir, server, job_id, task, clean_text(request.get("label"), 200),
                        str(request.get("blend") or ""), bool(remote.get("settled")))


def load_request(job_dir: Path) -> JobRequest:
    """The request save_request kept; a UserError naming the folder when it is damaged."""
    import numpy as np

    job_dir = Path(job_dir)
    try:
        data = read_json_object(job_dir / REQUEST_FILE, REQUEST_FILE) or {}
        arrays = {}
        if (job_dir / REQUEST_ARRAYS).is_file():
            loaded = np.load(job_dir / REQUEST_ARRAYS, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError(f"{REQUEST_ARRAYS} is not an .npz archive")
            with loaded:
                arrays = {key: loaded[key] for key in loaded.files}
        return request_from_dict(data.get("request"), arrays)
    except (EngineOutputError, OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"The record of the remote job in {job_dir} is damaged ({exc}).",
                        "Its result cannot be imported; the job's folder can be deleted.") from None


def pending_records(root: Path, blend: str) -> list[RemoteRecord]:
    """The remote jobs of this .blend not yet followed to their end, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    records = (read_record(path) for path in sorted(root.iterdir()) if path.is_dir())
    return [r for r in records if r is not None and not r.settled and _same_blend(r.blend, blend)]


def prune(root: Path, keep: int = 10, busy: set[Path] | frozenset = frozenset(), max_age_days: float = 30.0) -> None:
    """Remove remote job folders nobody will fetch: settled or never accepted ones beyond the newest
    ``keep``, and any older than ``max_age_days`` (the server has deleted its job long before)."""
    root = Path(root)
    if not root.is_dir():
        return
    now = time.time()
    folders = sorted((p for p in root.iterdir() if p.is_dir() and p not in busy),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for index, path in enumerate(folders):
        record = read_record(path)
        done = record is None or record.settled
        if (done and index >= keep) or now - path.stat().st_mtime > max_age_days * 86400:
            job_folder.remove_tree(path)


# -- one request off the main thread, for the preferences and the panel --------------------------------

class BackgroundCall:
    """``call()`` on a daemon thread (it must not touch bpy); the main thread polls ``done``."""

    def __init__(self, call: Callable):
        self._call = call
        self.result = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="csd-remote-call", daemon=True)

    def start(self) -> BackgroundCall:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self._call()
        except Exception as exc:  # handed to the main thread, which says what happened
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.done


def job_states(records: list[RemoteRecord], make_config: Callable[[str], ServerConfig]) -> dict[str, str]:
    """Each record's job status on its server ("running", "ok", ...), or why it is not known."""
    states = {}
    for record in records:
        try:
            job = RemoteClient(make_config(record.server)).job(record.job_id)
            states[record.job_id] = clean_text(str(job.get("status")), 20)
        except UserError as exc:
            states[record.job_id] = exc.message
        except ConnectionLost as exc:
            states[record.job_id] = f"server not reachable ({exc})"
    return states
