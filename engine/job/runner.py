"""Runs one pipeline with the protocol's guarantees: progress events, cancellation, a
result.json for every outcome, and a documented exit code instead of a traceback."""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..errors import BadInputError, Cancelled, DeviceError, EngineError, OutOfMemoryError
from .outputs import RESULT_FILE, OutputFolder
from .progress import CancelToken, ProgressReporter
from .protocol import DEVICE_PATTERN, result_document, write_result


@dataclass
class JobContext:
    # Where the pipeline writes: the run's partial folder, swapped in as `folder.path` at its end.
    output_dir: Path
    reporter: ProgressReporter
    cancel: CancelToken
    device: torch.device
    folder: OutputFolder
    timings: dict[str, float] = field(default_factory=dict)
    # Files written so far (name -> path relative to output_dir); kept for partial results.
    outputs: dict[str, str] = field(default_factory=dict)
    # Top-level result.json entries a pipeline adds (a region job's "region").
    result_extra: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - start

    def live_path(self, name: str) -> str:
        """`name` (relative to output_dir) as a path relative to the published folder, for events
        that point at a file while the run is still writing (previews)."""
        return (self.output_dir / name).relative_to(self.folder.path).as_posix()

    def carry_over(self, *names: str) -> None:
        """A resumed run: start from these files of the previous attempt (see OutputFolder.carry_over)."""
        self.folder.carry_over(names)


def select_device(name: str) -> torch.device:
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        raise BadInputError(f"Unknown device {name!r}.", "Use auto, cpu, cuda or cuda:N (N a GPU number).")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"CUDA was requested but PyTorch {torch.__version__} sees no CUDA GPU.",
                          "Use --device cpu (or auto), or install a CUDA build of PyTorch and a GPU driver.")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"{name} does not exist: this machine has {torch.cuda.device_count()} GPU(s).",
                          "Use --device cuda or cuda:0.")
    return device


def run_pipeline(task: str, settings: dict, output_dir: Path, device_name: str,
                 pipeline: Callable[[JobContext], dict[str, str]], reporter: ProgressReporter,
                 cancel: CancelToken) -> int:
    """Run `pipeline` and publish its outputs with result.json as one set in output_dir (when the
    folder can be locked and written: engine/job/outputs.py); return the exit code."""
    start = time.monotonic()
    context: JobContext | None = None
    status, error, code = "ok", None, 0
    folder = OutputFolder(output_dir)
    cancel.install_signal_handlers()
    try:
        partial = folder.open()
        device = select_device(device_name)
        context = JobContext(output_dir=partial, reporter=reporter, cancel=cancel, device=device,
                             folder=folder)
        reporter.emit("started", task=task, device=str(device))
        context.outputs.update(pipeline(context))
    except Cancelled as exc:
        status, error, code = "cancelled", exc.to_dict(), exc.exit_code
    except EngineError as exc:
        status, error, code = "error", exc.to_dict(), exc.exit_code
    except torch.OutOfMemoryError:
        exc = OutOfMemoryError("The GPU ran out of memory.",
                               "Use a smaller --render-size (e.g. 256) or --texture-size, or close other GPU programs.")
        status, error, code = "error", exc.to_dict(), exc.exit_code
    except MemoryError:
        exc = OutOfMemoryError("The computer ran out of memory.", "Use a smaller --render-size or --texture-size.")
        status, error, code = "error", exc.to_dict(), exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the last line of defence: report, never a raw traceback
        where = traceback.extract_tb(exc.__traceback__)[-1]
        wrapped = EngineError(f"Unexpected {type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno}).",
                              "This is a bug in the engine; please report it with the job folder.")
        status, error, code = "error", wrapped.to_dict(), wrapped.exit_code
    finally:
        cancel.restore_signal_handlers()
    timings = dict(context.timings) if context else {}
    timings["total_s"] = time.monotonic() - start
    outputs = dict(context.outputs) if context else {}
    extra = dict(context.result_extra) if context else {}
    if "texture" in outputs:
        # Which maps the texture set has (docs/job-protocol.md): a PBR set packs roughness and metallic in orm.png.
        extra["material"] = "pbr" if "orm" in outputs else "albedo"
    if context is not None and context.device.type == "cuda":
        # What the job needed of the GPU: the number to compare with the card's memory.
        extra["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(context.device) / 2 ** 30, 3)
    if error is not None:
        reporter.emit("error", **error)
        print(f"error: {error['message']}", file=sys.stderr)
        if error.get("hint"):
            print(f"hint: {error['hint']}", file=sys.stderr)
    result = None
    if folder.is_open and error is not None and not outputs and folder.holds_finished_set():
        # A run that failed before it wrote anything (bad input, a missing model, the edit that
        # would overwrite its own source) leaves a finished run's set exactly as it was.
        reporter.emit("warning", message=f"The earlier results in {folder.path} were kept as they were.")
        folder.close()
    if folder.is_open:
        try:
            write_result(folder.partial, result_document(task, status, outputs, settings, timings, error, extra))
            folder.publish()
            result = str(folder.path / RESULT_FILE)
        except (OSError, EngineError):
            pass  # the earlier set stays whole; the events and the exit code tell what happened
        finally:
            folder.close()
    reporter.emit("finished", status=status, result=result)
    return code
