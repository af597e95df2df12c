"""Progress events (JSON lines) and cancellation, shared by every pipeline and model download.

Each event goes to stdout as one JSON line and, for jobs started by the add-on, is appended
to JOB_DIR/progress.jsonl. When stderr is a terminal a human progress bar is drawn there.
SIGINT, SIGTERM or a `cancel` file in the job folder stop the job: the signal handler raises
`Cancelled` at once (within the current tensor operation), except inside short `critical()`
sections, which raise it as they end. A signal during start-up is held until a job's token
takes it up (`hold_cancel_requests`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import Cancelled

# About when this process started (this module is among the first the engine imports): files
# older than this belong to earlier runs.
PROCESS_START = time.time()


class ProgressReporter:
    def __init__(self, jsonl_path: Path | None = None, to_stdout: bool = True, human: bool | None = None):
        self.jsonl_path = jsonl_path
        self._log_mode = "w"  # each run starts a fresh log; its later events are appended
        self.to_stdout = to_stdout
        self.human = sys.stderr.isatty() if human is None else human
        self.start_time = time.monotonic()
        self._optimise_start: float | None = None
        self._first_step = 0
        self._last_step_event = 0.0
        self._last_download_event = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.start_time

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(self.elapsed(), 3), **fields}
        line = json.dumps(record)
        if self.to_stdout:
            print(line, flush=True)
        if self.jsonl_path is not None:
            with open(self.jsonl_path, self._log_mode, encoding="utf-8") as handle:
                handle.write(line + "\n")
            self._log_mode = "a"
        if self.human and event == "stage":
            sys.stderr.write(f"\n{fields.get('name', '')}...\n")

    def warnings(self, messages) -> None:
        """One warning event per message (a mesh's repairs, the ControlNets a prior picked, ...)."""
        for message in messages:
            self.emit("warning", message=message)

    def stage(self, name: str) -> None:
        self.emit("stage", name=name)

    def step(self, step: int, total: int, loss: float, every: int = 1) -> None:
        """Report step `step` (1-based) of `total`; the ETA comes from the optimisation's own pace."""
        now = time.monotonic()
        if self._optimise_start is None:
            self._optimise_start, self._first_step = now, step - 1
        done = step - self._first_step
        rate = (now - self._optimise_start) / max(done, 1)
        eta = rate * (total - step)
        # Every `every` steps, and at least once a second so a follower never waits long.
        if step % every == 0 or step == total or now - self._last_step_event > 1.0:
            self._last_step_event = now
            self.emit("step", step=step, total_steps=total, loss=round(float(loss), 6),
                      elapsed_s=round(self.elapsed(), 2), eta_s=round(eta, 2))
        if self.human:
            width = 30
            filled = int(width * step / total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {step}/{total} "
                             f"loss {loss:.4f} eta {eta:5.0f}s")
            sys.stderr.flush()
            if step == total:
                sys.stderr.write("\n")


    def download_plan(self, model: str, files: int, total_bytes: int, fetch_files: int, fetch_bytes: int) -> None:
        """Before a download starts: what the engine needs of `model` and how much of it is still to fetch."""
        self.emit("download_plan", model=model, files=files, total_bytes=total_bytes, fetch_files=fetch_files,
                  fetch_bytes=fetch_bytes)
        # Always said, terminal or not: a download can take long and costs disk.
        sys.stderr.write(f"{model}: downloading {fetch_files} of the {files} files the engine loads, "
                         f"{format_bytes(fetch_bytes)} (all of them: {format_bytes(total_bytes)})\n")
        sys.stderr.flush()

    def download(self, model: str, file: str, file_bytes_done: int, file_bytes: int, bytes_done: int,
                 bytes_total: int, force: bool = False) -> None:
        """Bytes fetched of one file and of the whole download; events at most twice a second unless `force`."""
        now = time.monotonic()
        if force or now - self._last_download_event >= 0.5:
            self._last_download_event = now
            self.emit("download", model=model, file=file, file_bytes_done=file_bytes_done, file_bytes=file_bytes,
                      bytes_done=bytes_done, bytes_total=bytes_total)
        if self.human:
            width = 30
            filled = int(width * bytes_done / bytes_total) if bytes_total else width
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {format_bytes(bytes_done)} / "
                             f"{format_bytes(bytes_total)} {file[-40:]:<40}")
            if bytes_done >= bytes_total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def format_bytes(count: int) -> str:
    """A size as people read it (decimal units, as the Hugging Face Hub shows them)."""
    for unit, scale in (("GB", 10 ** 9), ("MB", 10 ** 6), ("kB", 10 ** 3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"


# A cancel that came while the engine was starting, before any CancelToken had its handlers in place.
_held_cancel = False


def hold_cancel_requests() -> None:
    """From the engine's first line on, SIGINT/SIGTERM are recorded instead of ending the process with
    a traceback and no result; the next CancelToken to install its handlers takes the request up."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _hold_cancel)


def _hold_cancel(signum, frame) -> None:
    global _held_cancel
    _held_cancel = True


class CancelToken:
    """Set by SIGINT/SIGTERM or by a cancel file; pipelines call `check()` between steps."""

    def __init__(self, cancel_file: Path | None = None):
        self.cancel_file = cancel_file
        # A cancel file older than this process was left by an earlier run (one killed, or cancelled
        # after it ended): it does not cancel this run. One written or rewritten since still does.
        self._stale_cancel = _signature(cancel_file) if _written_before_start(cancel_file) else None
        self.requested = False
        self._critical_depth = 0
        self._previous_handlers: dict[int, Any] = {}

    def install_signal_handlers(self) -> None:
        """From now on a signal cancels; one held since start-up makes the next `check()` cancel."""
        global _held_cancel
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
        if _held_cancel:
            _held_cancel = False
            self.requested = True

    def restore_signal_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum, frame) -> None:
        self.requested = True
        if self._critical_depth == 0:
            raise Cancelled()

    def check(self) -> None:
        if not self.requested and self.cancel_file is not None and self.cancel_file.exists() \
                and _signature(self.cancel_file) != self._stale_cancel:
            self.requested = True
        if self.requested:
            raise Cancelled()

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """Finish the enclosed writes even if a signal arrives; a cancel that came meanwhile is raised
        as the outermost section ends. Keep these sections short: a cancel waits for them."""
        self._critical_depth += 1
        try:
            yield
        finally:
            self._critical_depth -= 1
        if self._critical_depth == 0 and self.requested:
            raise Cancelled()


def _signature(path: Path | None) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except (AttributeError, OSError):
        return None
    return status.st_ino, status.st_mtime_ns


def _written_before_start(path: Path | None) -> bool:
    try:
        return path.stat().st_mtime < PROCESS_START
    except (AttributeError, OSError):
        return False
