"""Following the engine's progress events (progress.jsonl, or a command's output) as they are appended.

Every field is checked through engine_output before it is kept: a number that is not finite or
out of range, or a preview path that is not a plain name inside the output folder, leaves the
field as it was and adds a note to ``JobProgress.refusals`` for the job's report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .engine_output import (MAX_BYTES, MAX_EVENT_BYTES, MAX_LOSS, MAX_PROGRESS_READ_BYTES, MAX_SECONDS, MAX_STEPS,
                            EngineOutputError, clean_text, count, number, open_file, parse_event, relative_name)

MAX_REFUSALS = 5


class JsonlTail:
    """Reads the complete lines appended to a JSON-lines file since the last call.

    A line the engine is still writing (no newline yet) is left for the next call, and a line
    that is not a valid event (or is longer than MAX_EVENT_BYTES) is skipped, so a reader never
    fails on a partial or hostile write. At most MAX_PROGRESS_READ_BYTES are read per call; a
    file that is a link is not read, and ``refusal`` says why.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._offset = 0
        self._pending = b""
        self._skipping = False  # inside a line already over MAX_EVENT_BYTES: drop it up to its newline
        self.refusal = ""

    def read(self) -> list[dict]:
        try:
            handle = open_file(self.path, self.path.name)
        except EngineOutputError as exc:
            self.refusal = str(exc)
            return []
        if handle is None:
            return []
        with handle:
            handle.seek(self._offset)
            chunk = handle.read(MAX_PROGRESS_READ_BYTES)
        if not chunk:
            return []
        self._offset += len(chunk)
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()  # the unfinished tail ("" after a trailing newline)
        if self._skipping and lines:
            lines.pop(0)
            self._skipping = False
        if len(self._pending) > MAX_EVENT_BYTES:
            self._pending, self._skipping = b"", True
        events = []
        for raw in lines:
            event = parse_event(raw.strip()) if raw.strip() else None
            if event is not None:
                events.append(event)
        return events


DOWNLOADING = "downloading model"


@dataclass
class JobProgress:
    """What the panel shows about a running job (or model download), folded from the engine's events."""

    stage: str = "waiting"
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    device: str = ""
    preview_texture: str | None = None  # relative to the output folder
    preview_view: str | None = None
    preview_serial: int = 0  # bumps on every new preview
    finished_status: str | None = None
    finished: dict = field(default_factory=dict)  # the finished event's fields
    error: dict | None = None
    events: int = 0
    log: list = field(default_factory=list)
    # A model download (events download_plan and download), while stage is DOWNLOADING.
    download_model: str = ""
    download_file: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    refusals: list = field(default_factory=list)  # what the engine sent that was not used, briefly

    @property
    def fraction(self) -> float:
        if self.stage == DOWNLOADING:
            return max(0.0, min(1.0, self.bytes_done / self.bytes_total)) if self.bytes_total > 0 else 0.0
        if self.total_steps <= 0:
            return 0.0
        return max(0.0, min(1.0, self.step / self.total_steps))

    def download_text(self) -> str:
        """e.g. "Downloading owner/model: 1.20 GB / 2.58 GB"."""
        return (f"Downloading {self.download_model}: {format_bytes(self.bytes_done)} / "
                f"{format_bytes(self.bytes_total)}")

    def refuse(self, note: str) -> None:
        """Remember (a few of) the things the engine sent that were not used, for the job's report."""
        if note and note not in self.refusals and len(self.refusals) < MAX_REFUSALS:
            self.refusals.append(note)

    def _steps(self, event: dict, key: str, current: int) -> int:
        if key not in event:
            return current
        value = count(event[key], MAX_STEPS)
        if value is None:
            self.refuse(f"a '{clean_text(event.get('event'), 40)}' event with {key} "
                        f"{clean_text(repr(event[key]), 40)}, not a step count")
            return current
        return value

    def _preview_name(self, event: dict, key: str) -> str | None:
        if not isinstance(event.get(key), str):
            return None
        try:
            return relative_name(event[key])
        except EngineOutputError as exc:
            self.refuse(f"a preview {key} that is {exc}")
            return None

    def apply(self, event: dict) -> None:
        self.events += 1
        kind = event.get("event")
        time_s = number(event.get("time"), 0, MAX_SECONDS)
        if time_s is not None:
            self.elapsed_s = max(self.elapsed_s, float(time_s))
        if kind == "started":
            self.stage = "starting"
            self.total_steps = self._steps(event, "total_steps", self.total_steps)
            self.device = clean_text(event.get("device"), 80)
        elif kind == "stage":
            self.stage = clean_text(event.get("name"), 80) or self.stage
        elif kind == "step":
            self.stage = "optimising" if self.stage in ("waiting", "starting") else self.stage
            self.step = self._steps(event, "step", self.step)
            self.total_steps = self._steps(event, "total_steps", self.total_steps)
            if "loss" in event:  # a loss that is not a finite number (a diverged run) is shown as none
                self.loss = number(event["loss"], -MAX_LOSS, MAX_LOSS)
            elapsed = number(event.get("elapsed_s"), 0, MAX_SECONDS)
            if elapsed is not None:
                self.elapsed_s = max(self.elapsed_s, float(elapsed))
            self.eta_s = number(event.get("eta_s"), 0, MAX_SECONDS) if "eta_s" in event else self.eta_s
        elif kind == "preview":
            texture, view = self._preview_name(event, "path"), self._preview_name(event, "view")
            if texture is not None or view is not None:
                self.preview_texture = texture if texture is not None else self.preview_texture
                self.preview_view = view if view is not None else self.preview_view
                self.preview_serial += 1
        elif kind == "download_plan":
            self.stage = DOWNLOADING
            self.download_model = clean_text(event.get("model"), 200)
            self.bytes_total = count(event.get("fetch_bytes"), MAX_BYTES) or 0
            self.bytes_done = 0
        elif kind == "download":
            self.stage = DOWNLOADING
            self.download_model = clean_text(event.get("model"), 200) or self.download_model
            self.download_file = clean_text(event.get("file"), 200)
            self.bytes_done = _or(count(event.get("bytes_done"), MAX_BYTES), self.bytes_done)
            self.bytes_total = _or(count(event.get("bytes_total"), MAX_BYTES), self.bytes_total)
        elif kind == "finished":
            self.finished_status = clean_text(event.get("status"), 20)
            self.finished = _scalars(event)
            self.stage = "finished"
        elif kind == "error":
            self.error = {"kind": clean_text(event.get("kind"), 40), "message": clean_text(event.get("message")),
                          "hint": clean_text(event.get("hint")), "exit_code": count(event.get("exit_code"), 255)}

    def apply_all(self, events: list[dict]) -> None:
        for event in events:
            self.apply(event)


def _or(value, default):
    return default if value is None else value


def _scalars(event: dict) -> dict:
    """An event's text, finite numbers and flags, checked; ``size_bytes`` only as a byte count."""
    fields = {}
    for key, value in list(event.items())[:64]:
        if not isinstance(key, str):
            continue
        if isinstance(value, (str, bool)):
            fields[key] = clean_text(value) if isinstance(value, str) else value
        elif number(value, -MAX_BYTES, MAX_BYTES) is not None:
            fields[key] = value
    if "size_bytes" in fields and count(fields["size_bytes"], MAX_BYTES) is None:
        del fields["size_bytes"]
    return fields


def format_bytes(size: int) -> str:
    """A size as people read it, in the engine's (and the Hugging Face Hub's) decimal units."""
    for unit, scale in (("GB", 10 ** 9), ("MB", 10 ** 6), ("kB", 10 ** 3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
