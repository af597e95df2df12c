"""Which models are on this machine, and downloading one, through the engine's `models` commands
(docs/job-protocol.md, "Models on this machine"), followed without ever blocking Blender."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .engine_env import BackgroundCommand
from .process import engine_process_env
from .progress import JobProgress, JsonlTail, format_bytes

# How long a cancelled download gets to stop before it is killed (files fetched so far are kept).
CANCEL_GRACE_S = 10.0


def is_hub_id(model: str) -> bool:
    """An "owner/name" Hugging Face id, not a folder on this machine."""
    return (model.count("/") == 1 and not model.startswith((".", "/", "~"))
            and not os.path.exists(os.path.expanduser(model)))


@dataclass(frozen=True)
class ModelRow:
    """One model as the preferences show it, from `python -m engine models list`."""

    model: str
    role: str  # the preference it is set in ("texture", "depth ControlNet", ...), or "" for other models
    use: str  # what the engine uses it for
    local: bool
    complete: bool
    size: str  # on disk, e.g. "2.58 GB"
    missing: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        if self.complete:
            return f"on this machine, {self.size}"
        if self.local:
            return f"partly downloaded ({', '.join(self.missing)} missing), {self.size}"
        return "not downloaded"

    @property
    def downloadable(self) -> bool:
        return not self.complete and is_hub_id(self.model)

    def text(self) -> str:
        return f"{self.role or self.use}: {self.model} ({self.state})"


def model_rows(report: dict | None) -> list[ModelRow]:
    """The models set in the preferences (by role), then the other models found on this machine."""
    if not report:
        return []
    entries = {entry.get("model"): entry for entry in report.get("models") or [] if isinstance(entry, dict)}

    def row(model: str, role: str) -> ModelRow:
        entry = entries.get(model, {})
        return ModelRow(model, role, str(entry.get("use", "")), bool(entry.get("local")), bool(entry.get("complete")),
                        str(entry.get("size", "")), tuple(entry.get("missing") or ()))

    roles = report.get("roles") or {}
    rows = [row(model, role) for role, model in roles.items() if model]
    rows += [row(model, "") for model, entry in entries.items()
             if model not in roles.values() and entry.get("local")]
    return rows


class ModelDownload:
    """`python -m engine models download MODEL --allow-download`, its output in a log file that
    `poll` reads; the engine's events fill `progress` as they come."""

    def __init__(self, python: str, model: str, engine_src: Path | None, env_extra: dict | None,
                 log_path: Path, cache_dir: str = ""):
        argv = [str(python), "-m", "engine", "models", "download", model, "--allow-download"]
        if cache_dir:
            argv += ["--cache-dir", cache_dir]
        # The artist asked for this download (with Blender's online access on): HF_HUB_OFFLINE, which
        # keeps jobs offline while "Download missing models" is off, does not apply to it.
        self.model = model
        # cwd: the log's folder, so `-m engine` cannot pick up an "engine" folder from wherever Blender was started.
        self.command = BackgroundCommand(argv, log_path, cwd=Path(log_path).parent,
                                         env=engine_process_env(engine_src, {**(env_extra or {}), "HF_HUB_OFFLINE": None}))
        self.progress = JobProgress()
        self.tail = JsonlTail(log_path)
        self.returncode: int | None = None
        self.cancelled = False
        self._cancel_time: float | None = None

    def start(self) -> None:
        """Start the engine; raises OSError when its Python cannot run."""
        self.command.log_path.unlink(missing_ok=True)
        self.command.start()

    @property
    def done(self) -> bool:
        return self.returncode is not None

    def poll(self) -> bool:
        """Read the new events; True once the engine has exited. A cancel not obeyed is escalated."""
        if self.done:
            return True
        self.progress.apply_all(self.tail.read())
        code = self.command.poll()
        if code is None:
            if self._cancel_time is not None and time.monotonic() - self._cancel_time > CANCEL_GRACE_S:
                self.command.kill()
            return False
        self.progress.apply_all(self.tail.read())
        self.returncode = code
        return True

    def cancel(self) -> None:
        """Ask the engine to stop (SIGTERM: it ends the download cleanly, keeping finished files)."""
        if self.done or self.cancelled:
            return
        self.cancelled = True
        self._cancel_time = time.monotonic()
        self.command.terminate()

    def stop(self, timeout: float = 3.0) -> None:
        """Cancel and wait for the engine to exit, killing it after `timeout` (nobody will poll it any more)."""
        self.cancel()
        deadline = time.monotonic() + timeout
        while not self.poll() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.done:
            self.command.kill()
            while not self.poll():  # a killed process is gone within moments
                time.sleep(0.05)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.progress.finished_status == "ok"

    @property
    def fraction(self) -> float:
        return self.progress.fraction

    def status_text(self) -> str:
        if self.cancelled:
            return "Cancelling..."
        if self.progress.bytes_total:
            return self.progress.download_text()
        return f"Looking up {self.model}..."

    def outcome(self) -> tuple[str, str, str]:
        """(level "INFO" or "ERROR", message, hint) for the artist, once done."""
        progress = self.progress
        if self.ok:
            size = progress.finished.get("size_bytes")
            size_text = f" ({format_bytes(size)} on disk)" if isinstance(size, int) else ""
            return "INFO", f"{self.model} is on this machine{size_text}.", ""
        if self.cancelled or progress.finished_status == "cancelled":
            return "INFO", f"The download of {self.model} was cancelled.", \
                "Files already fetched are kept: downloading it again goes on from there."
        if progress.error:
            return "ERROR", f"Downloading {self.model} failed: {progress.error.get('message')}", \
                str(progress.error.get("hint") or "")
        tail = " ".join(self.command.output().strip().splitlines()[-2:])
        return "ERROR", f"The engine stopped (exit code {self.returncode}) while downloading {self.model}.", tail
