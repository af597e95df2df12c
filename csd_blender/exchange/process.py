"""Starting, following and stopping the engine process without ever blocking the caller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import protocol

# How long a cancelled engine gets to write its result before it is killed. Every phase answers a
# cancel within about 2 s (docs/job-protocol.md); the margin is for what runs to its end first:
# one native call (a model file read from a slow disk, a queue of GPU work) and the checkpoint a
# cancelled generate job saves. A kill leaves no result.json, so err on the long side.
CANCEL_GRACE_S = 30.0


def engine_process_env(engine_src: Path | None, extra: dict | None = None) -> dict:
    """The environment for the engine: its source on PYTHONPATH, unbuffered output.

    Blender's own Python variables are dropped so the engine's interpreter is not
    confused by them.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
    if engine_src:
        env["PYTHONPATH"] = str(engine_src)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONNOUSERSITE"] = "1"
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def _popen_kwargs() -> dict:
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}


class EngineProcess:
    """One ``python -m engine run JOB_DIR`` process, its output going to JOB_DIR/engine.log."""

    def __init__(self, python: str, job_dir: Path, engine_src: Path | None, env_extra: dict | None = None):
        self.python = str(python)
        self.job_dir = Path(job_dir)
        self.engine_src = engine_src
        self.env_extra = env_extra or {}
        self.log_path = self.job_dir / protocol.LOG_FILE
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.cancel_requested = False
        self._cancel_time: float | None = None
        self._killed = False
        self.started_at: float | None = None

    @property
    def command(self) -> list[str]:
        return [self.python, "-m", "engine", "run", str(self.job_dir)]

    def start(self) -> None:
        """Start the engine. Raises OSError (e.g. FileNotFoundError) when the Python cannot run."""
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command, cwd=str(self.job_dir), env=engine_process_env(self.engine_src, self.env_extra),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **_popen_kwargs())
        finally:
            log.close()
        self.started_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.poll() is None

    def poll(self) -> int | None:
        """The exit code once the process has ended, else None. Escalates a cancel that is not obeyed."""
        if self.proc is None:
            return self.returncode
        if self.returncode is None:
            self.returncode = self.proc.poll()
        if (self.returncode is None and self._cancel_time is not None and not self._killed
                and time.monotonic() - self._cancel_time > CANCEL_GRACE_S):
            self.kill()
        return self.returncode

    def cancel(self) -> None:
        """Ask the engine to stop: the cancel file, then SIGTERM (the engine writes a cancelled result)."""
        self.cancel_requested = True
        try:
            (self.job_dir / protocol.CANCEL_FILE).touch()
        except OSError:
            pass
        if self.proc is None or self.poll() is not None:
            return
        if self._cancel_time is None:
            self._cancel_time = time.monotonic()
        try:
            if sys.platform == "win32":
                self.proc.send_signal(signal.CTRL_BREAK_EVENT)
            else:
                self.proc.send_signal(signal.SIGTERM)
        except (OSError, ValueError):
            pass

    def kill(self) -> None:
        if self.proc is None:
            return
        self._killed = True
        try:
            if sys.platform != "win32":
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
        except (OSError, ProcessLookupError):
            try:
                self.proc.kill()
            except OSError:
                pass

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the process ends (background mode and shutdown only)."""
        return wait_for_exit(self.poll, timeout)


def wait_for_exit(poll, timeout: float | None) -> int | None:
    """Call `poll` until it gives an exit code, or None once `timeout` seconds have passed: the
    blocking wait of a local or a remote engine (background mode and shutdown only)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while (code := poll()) is None:
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return code
