"""Jobs and the queue that runs them one at a time.

A Job goes QUEUED -> RUNNING -> ENDED (the engine exited; ``outcome`` says how) ->
DONE or FAILED once its owner has imported the result (or given up), or CANCELLED at
any point; a remote job the session stops following without cancelling it is DETACHED (the
server runs it on; a later session fetches it). Only one engine runs at a time; the rest wait
their turn.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from . import job_folder, protocol, remote_process
from .process import EngineProcess
from .progress import JobProgress, JsonlTail
from .requests import JobRequest
from .result import Outcome, interpret

QUEUED = "queued"
RUNNING = "running"
CANCELLING = "cancelling"
ENDED = "ended"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
DETACHED = "detached"

TASK_NAMES = {"texture": "Texture", "generate": "Generate", "edit": "Edit"}

ACTIVE_STATES = (RUNNING, CANCELLING)
TERMINAL_STATES = (DONE, FAILED, CANCELLED, DETACHED)

_ids = itertools.count(1)


@dataclass
class Report:
    """The last thing the panel tells the artist about a job."""

    level: str  # "INFO", "WARNING" or "ERROR"
    message: str
    hint: str = ""
    job_dir: str = ""


class Job:
    def __init__(self, task: str, label: str, job_dir: Path, python: str, engine_src: Path | None,
                 env_extra: dict | None = None, keep_dir: bool = False, request: JobRequest | None = None,
                 remote: remote_process.RemoteTarget | None = None):
        self.id = next(_ids)
        self.task = task
        self.label = label
        self.job_dir = Path(job_dir)
        self.python = python
        self.engine_src = engine_src
        self.env_extra = env_extra or {}
        self.keep_dir = keep_dir
        self.request = request  # what the import needs; None for a job followed without importing
        self.remote = remote  # the server it runs on; None: the engine on this computer
        self.owner = None  # the operator that imports the result
        self.state = QUEUED
        self.progress = JobProgress()
        self.outcome: Outcome | None = None
        self.process: EngineProcess | remote_process.RemoteEngineProcess | None = None
        self.tail = JsonlTail(self.job_dir / protocol.PROGRESS_FILE)
        self.created_at = time.monotonic()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.report: Report | None = None

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.task} {self.label!r} {self.state}>"

    @property
    def output_dir(self) -> Path:
        return self.job_dir / protocol.OUTPUT_DIR

    @property
    def elapsed_s(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        return max(end - self.started_at, self.progress.elapsed_s)

    @property
    def eta_s(self) -> float | None:
        if self.progress.eta_s is not None:
            return self.progress.eta_s
        p = self.progress
        if p.step > 0 and p.total_steps > 0:
            return self.elapsed_s / p.step * (p.total_steps - p.step)
        return None

    def start(self) -> None:
        self.started_at = time.monotonic()
        if self.remote is not None:
            self.process = remote_process.RemoteEngineProcess(self.job_dir, self.remote, self.label)
        else:
            self.process = EngineProcess(self.python, self.job_dir, self.engine_src, self.env_extra)
        try:
            self.process.start()
        except OSError as exc:
            hint = ("Check free disk space and permissions." if self.remote is not None else
                    "Check the engine Python in the add-on's preferences, or click 'Set up engine'.")
            self._end(Outcome("error", "no_engine", f"The engine could not be started: {exc}.", hint))
            return
        self.state = RUNNING

    def poll(self) -> None:
        if self.state not in ACTIVE_STATES or self.process is None:
            return
        self._read_progress()
        code = self.process.poll()
        if code is None:
            return
        self._read_progress()
        if self.process.cancel_requested:
            # Cancel wins even when the engine managed to finish first: the artist asked to stop.
            self._end(Outcome("cancelled", "cancelled", "Cancelled.", "", code))
            return
        self._end(interpret(self.job_dir, code, cancel_requested=False,
                            log_path=self.process.log_path, last_error_event=self.progress.error))

    def _read_progress(self) -> None:
        self.progress.apply_all(self.tail.read())
        self.progress.refuse(self.tail.refusal)

    def _end(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.ended_at = time.monotonic()
        if outcome.status == "cancelled":
            self.finish_cancelled(outcome.message)
        else:
            self.state = ENDED

    def cancel(self, reason: str = "Cancelled.") -> None:
        """Stop this job, whatever it is doing; safe to call at any moment and repeatedly."""
        if self.state == QUEUED:
            self.outcome = Outcome("cancelled", "cancelled", reason)
            self.finish_cancelled(reason)
        elif self.state == RUNNING and self.process is not None:
            self.state = CANCELLING
            self._cancel_reason = reason
            self.process.cancel()
        elif self.state == ENDED:
            self.outcome = Outcome("cancelled", "cancelled", reason)
            self.finish_cancelled(reason)

    def finish_cancelled(self, reason: str) -> None:
        reason = getattr(self, "_cancel_reason", None) or reason
        self.state = CANCELLED
        self.report = Report("INFO", f"{self.describe()}: {reason}".rstrip(), "Your scene is unchanged.")
        self.cleanup(success=False, failed=False)

    def finish(self, ok: bool, message: str, hint: str = "", level: str | None = None) -> None:
        """Called by the owner after importing (ok) or giving up (not ok)."""
        self.state = DONE if ok else FAILED
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        keep_note = ""
        if not ok and self.job_dir.exists():
            keep_note = str(self.job_dir)
        if self.progress.refusals:
            ignored = f"The engine also sent progress that was ignored: {'; '.join(self.progress.refusals)}."
            hint = f"{hint} {ignored}".strip()
        self.report = Report(level or ("INFO" if ok else "ERROR"), message, hint, keep_note)
        self.cleanup(success=ok, failed=not ok)

    def detach(self, reason: str) -> bool:
        """Stop following a remote job without cancelling it (the file or Blender is closing): the server
        runs it on, and its folder keeps what a later session needs to fetch the result."""
        if self.remote is None or self.state not in (RUNNING, ENDED) or self.process is None:
            return False
        self.process.detach()
        self.state = DETACHED
        self.report = Report("INFO", f"{self.describe()}: {reason}",
                             "Open the file again and click 'Fetch finished remote jobs' to import its result.")
        return True

    def cleanup(self, success: bool, failed: bool) -> None:
        """Remove the job folder after success or cancel unless kept; a failed one stays for its log."""
        if self.remote is not None and (self.keep_dir or failed):
            remote_process.settle(self.job_dir)  # followed to its end: no later session offers to fetch it
        if self.keep_dir or failed:
            return
        job_folder.remove_tree(self.job_dir)

    def describe(self) -> str:
        return f"{TASK_NAMES.get(self.task, self.task)} '{self.label}'"

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> None:
        """Poll until the engine has ended (background mode)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state in ACTIVE_STATES:
            self.poll()
            if self.state not in ACTIVE_STATES:
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(interval)


class JobQueue:
    """All jobs of this Blender session; at most one engine runs at a time."""

    def __init__(self):
        self.jobs: list[Job] = []
        self.last_report: Report | None = None

    def add(self, job: Job) -> Job:
        self.jobs.append(job)
        return job

    @property
    def active(self) -> Job | None:
        for job in self.jobs:
            if job.state in ACTIVE_STATES:
                return job
        return None

    @property
    def waiting(self) -> list[Job]:
        return [job for job in self.jobs if job.state == QUEUED]

    @property
    def unfinished(self) -> list[Job]:
        return [job for job in self.jobs if job.state not in TERMINAL_STATES]

    @property
    def busy(self) -> bool:
        return bool(self.unfinished)

    def tick(self) -> None:
        """Poll the running engine, and start the next job when none runs."""
        active = self.active
        if active is not None:
            active.poll()
            if active.state in ACTIVE_STATES:
                return
        # An ended job waits for its owner's import before the next engine starts, so results
        # land in the order they were asked for.
        if any(job.state == ENDED for job in self.jobs):
            return
        for job in self.jobs:
            if job.state == QUEUED:
                job.start()
                if job.state in ACTIVE_STATES:
                    job.poll()
                break
        self._collect()

    def set_report(self, level: str, message: str, hint: str = "") -> None:
        self.last_report = Report(level, message, hint)

    def record(self, job: Job) -> None:
        if job.report is not None:
            self.last_report = job.report

    def _collect(self) -> None:
        for job in self.jobs:
            if job.state in TERMINAL_STATES:
                self.record(job)
        # keep the finished history short
        finished = [job for job in self.jobs if job.state in TERMINAL_STATES]
        for job in finished[:-20]:
            self.jobs.remove(job)

    def cancel_all(self, reason: str = "Cancelled.") -> None:
        for job in list(self.jobs):
            if job.state not in TERMINAL_STATES:
                job.cancel(reason)
                if job.state == CANCELLED:
                    self.record(job)

    def detach_remote(self, reason: str, jobs: list[Job] | None = None) -> None:
        """Detach the remote jobs the servers run (of ``jobs``, default all): closing must not cancel them."""
        for job in list(self.jobs if jobs is None else jobs):
            if job.detach(reason):
                self.record(job)

    def stop_all(self, reason: str, timeout: float = 5.0) -> None:
        """Cancel everything and wait for the engines to exit (file closed, Blender quitting)."""
        self.cancel_all(reason)
        deadline = time.monotonic() + timeout
        for job in list(self.jobs):
            if job.state in ACTIVE_STATES:
                job.wait(max(0.0, deadline - time.monotonic()))
                if job.state in ACTIVE_STATES and job.process is not None:
                    job.process.kill()
                    job.process.wait(2.0)
                    job.poll()
            if job.state == ENDED:
                job.cancel(reason)
            if job.state in ACTIVE_STATES:  # would not die: forget it
                job.state = CANCELLED
            self.record(job)


QUEUE = JobQueue()
