"""Reading what the engine left in the job folder, and turning failures into advice."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from . import protocol
from .engine_output import EngineOutputError, clean_text, output_folder, read_json_object, resolve_inside, \
    result_outputs

# What to do, per kind of failure; the engine's own hint (when it gives one) comes first.
ADVICE = {
    "engine_error": "The engine hit a bug. Try again; if it keeps happening, turn on "
                    "'Keep job folders' in the preferences and report the job folder.",
    "bad_input": "Check the prompt and the settings, and that the mesh has faces.",
    "model_not_found": "Download the model: in the add-on's preferences click 'Check engine', then its Download "
                       "button (needs online access, Preferences > System > Network); or choose the bundled model "
                       "or a local folder there.",
    "device": "Set the device to Auto or CPU in the add-on's preferences, or check the GPU driver.",
    "out_of_memory": "The GPU ran out of memory: choose the Draft quality or a smaller render size "
                     "(Advanced), close other GPU programs, or set the device to CPU.",
    "output": "The job folder could not be written: check free disk space and permissions.",
    "job_file": "The engine does not understand this job: update the extension and its engine together.",
    "cancelled": "",
    "crashed": "The engine process stopped unexpectedly. Try again; if it keeps happening, check the "
               "engine log and the engine Python in the preferences.",
    "no_torch": "The engine Python has no PyTorch: click 'Set up engine' in the add-on's preferences, "
                "or choose a Python with the engine's requirements installed.",
    "no_engine": "Set the engine Python in the add-on's preferences, or click 'Set up engine'.",
    "no_result": "The engine finished without a usable result. Try again with 'Keep job folders' on "
                 "and look at the engine log.",
    "bad_output": "Your scene is unchanged. The extension and the engine may not match: update both; if it "
                  "keeps happening, turn on 'Keep job folders' in the preferences and report the job folder.",
}

# result.json's "material": what its maps are (docs/job-protocol.md). A result without one comes
# from an engine older than PBR materials, whose results are all albedo.
Material = Literal["albedo", "pbr"]
MATERIALS: tuple[str, ...] = get_args(Material)


@dataclass
class Outcome:
    """How a job ended, as the add-on reports it."""

    status: str  # "ok", "cancelled" or "error"
    kind: str = ""
    message: str = ""
    hint: str = ""
    exit_code: int | None = None
    outputs: dict = field(default_factory=dict)  # name -> absolute Path inside the output folder
    result: dict = field(default_factory=dict)
    material: Material = "albedo"  # one of MATERIALS: a base colour alone, or with roughness and metallic maps

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def text(self) -> str:
        return self.message + (f" {self.hint}" if self.hint else "")


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "did not report how it ended"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was stopped by {name}"
    return f"exited with code {returncode}"


def _log_tail(log_path: Path | None, limit: int = 4000) -> str:
    if not log_path:
        return ""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def read_result(job_dir: Path, output: str = protocol.OUTPUT_DIR) -> dict | None:
    """result.json, or None when the engine wrote none; EngineOutputError when it cannot be used."""
    out_dir = output_folder(job_dir, output)
    return read_json_object(resolve_inside(out_dir, protocol.RESULT_FILE), "result.json")


def result_material(result: dict) -> Material:
    """result.json's "material", refusing one this add-on cannot import."""
    material = result.get("material", "albedo")
    if material not in MATERIALS:
        raise EngineOutputError(f"result.json's material is {clean_text(repr(material), 60)}, "
                                f"not one of {', '.join(MATERIALS)}")
    return material


def _refused(exc: EngineOutputError, returncode: int | None) -> Outcome:
    return Outcome("error", "bad_output", f"The engine's output was refused: {exc}.", ADVICE["bad_output"],
                   returncode)


def interpret(job_dir: Path, returncode: int | None, *, cancel_requested: bool = False,
              output: str = protocol.OUTPUT_DIR, log_path: Path | None = None,
              last_error_event: dict | None = None) -> Outcome:
    """Combine the exit code, result.json and the engine log into an Outcome."""
    job_dir = Path(job_dir)
    refusal = None
    try:
        result = read_result(job_dir, output)
    except EngineOutputError as exc:
        result, refusal = None, exc
    status = result.get("status") if result else None

    if cancel_requested and (status in (None, "cancelled") or returncode == protocol.EXIT_CANCELLED
                             or (returncode is not None and returncode < 0)):
        return Outcome("cancelled", "cancelled", "Cancelled.", "", returncode, result=result or {})
    if refusal is not None:
        return _refused(refusal, returncode)

    if status == "ok" and returncode in (0, None):
        try:
            outputs = result_outputs(output_folder(job_dir, output), result.get("outputs"))
            material = result_material(result)
        except EngineOutputError as exc:
            return _refused(exc, returncode)
        return Outcome("ok", "", "Done.", "", returncode, outputs=outputs, result=result, material=material)

    if status == "cancelled" or returncode == protocol.EXIT_CANCELLED:
        return Outcome("cancelled", "cancelled", "The engine was stopped before it finished.", "",
                       returncode, result=result or {})

    error = (result or {}).get("error") if result else None
    if not isinstance(error, dict):
        error = last_error_event if isinstance(last_error_event, dict) else None
    if isinstance(error, dict) and clean_text(error.get("message")).strip():
        kind = clean_text(error.get("kind"), 40) or protocol.EXIT_KINDS.get(returncode or 1, "engine_error")
        hint = clean_text(error.get("hint")) or ADVICE.get(kind, "")
        if kind == "out_of_memory" and ADVICE["out_of_memory"] not in hint:
            hint = (hint + " " + ADVICE["out_of_memory"]).strip()
        return Outcome("error", kind, clean_text(error["message"]).strip(), hint, returncode, result=result or {})

    log = _log_tail(log_path)
    if "No module named 'torch'" in log or 'No module named "torch"' in log:
        return Outcome("error", "no_torch", "The engine Python cannot import PyTorch.", ADVICE["no_torch"],
                       returncode)
    if "No module named engine" in log or "No module named 'engine'" in log:
        return Outcome("error", "no_engine", "The engine's source code was not found by its Python.",
                       "Reinstall the extension, or fix 'Engine source' in the preferences.", returncode)
    kind = protocol.EXIT_KINDS.get(returncode) if returncode and returncode > 0 else None
    if kind and kind != "engine_error":
        return Outcome("error", kind, f"The engine {_describe_exit(returncode)} ({kind.replace('_', ' ')}).",
                       ADVICE.get(kind, ""), returncode)
    if returncode == 0:
        return Outcome("error", "no_result", "The engine finished but wrote no result.", ADVICE["no_result"],
                       returncode)
    where = f" The engine log is in {log_path}." if log_path else ""
    return Outcome("error", "crashed", f"The engine {_describe_exit(returncode)} before finishing.",
                   ADVICE["crashed"] + where, returncode)
