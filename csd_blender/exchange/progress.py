"""Following the engine's progress events (progress.jsonl, or a command's output) as they are appended."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class JsonlTail:
    """Reads the complete lines appended to a JSON-lines file since the last call.

    A line the engine is still writing (no newline yet) is left for the next call, and a
    line that is not valid JSON is skipped, so a reader never fails on a partial write.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._offset = 0
        self._pending = b""

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        if not chunk:
            return []
        self._offset += len(chunk)
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()  # the unfinished tail ("" after a trailing newline)
        events = []
        for raw in lines:
            raw = raw.strip()
            if not raw:
                continue
            try:
                event = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(event, dict) and "event" in event:
                events.append(event)
        return events


def _number(value, default=None):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


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

    def apply(self, event: dict) -> None:
        self.events += 1
        kind = event.get("event")
        time_s = _number(event.get("time"))
        if time_s is not None:
            self.elapsed_s = max(self.elapsed_s, float(time_s))
        if kind == "started":
            self.stage = "starting"
            self.total_steps = int(_number(event.get("total_steps"), self.total_steps) or 0)
            self.device = str(event.get("device") or "")
        elif kind == "stage":
            self.stage = str(event.get("name") or self.stage)
        elif kind == "step":
            self.stage = "optimising" if self.stage in ("waiting", "starting") else self.stage
            self.step = int(_number(event.get("step"), self.step) or 0)
            self.total_steps = int(_number(event.get("total_steps"), self.total_steps) or 0)
            self.loss = _number(event.get("loss"), self.loss)
            elapsed = _number(event.get("elapsed_s"))
            if elapsed is not None:
                self.elapsed_s = max(self.elapsed_s, float(elapsed))
            self.eta_s = _number(event.get("eta_s"), self.eta_s)
        elif kind == "preview":
            if isinstance(event.get("path"), str):
                self.preview_texture = event["path"]
            if isinstance(event.get("view"), str):
                self.preview_view = event["view"]
            self.preview_serial += 1
        elif kind == "download_plan":
            self.stage = DOWNLOADING
            self.download_model = str(event.get("model") or "")
            self.bytes_total = int(_number(event.get("fetch_bytes"), 0) or 0)
            self.bytes_done = 0
        elif kind == "download":
            self.stage = DOWNLOADING
            self.download_model = str(event.get("model") or self.download_model)
            self.download_file = str(event.get("file") or "")
            self.bytes_done = int(_number(event.get("bytes_done"), self.bytes_done) or 0)
            self.bytes_total = int(_number(event.get("bytes_total"), self.bytes_total) or 0)
        elif kind == "finished":
            self.finished_status = str(event.get("status") or "")
            self.finished = dict(event)
            self.stage = "finished"
        elif kind == "error":
            self.error = {k: event.get(k) for k in ("kind", "message", "hint", "exit_code")}

    def apply_all(self, events: list[dict]) -> None:
        for event in events:
            self.apply(event)


def format_bytes(count: int) -> str:
    """A size as people read it, in the engine's (and the Hugging Face Hub's) decimal units."""
    for unit, scale in (("GB", 10 ** 9), ("MB", 10 ** 6), ("kB", 10 ** 3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
