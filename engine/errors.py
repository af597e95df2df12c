"""Errors the engine reports to users: one line of what happened, one of what to do.

Every failure a user can cause or meet ends in an `EngineError`. The CLI prints
`error: <message>` and `hint: <hint>`, writes result.json with status "error",
and exits with the class's documented code (docs/job-protocol.md lists them).
"""

from __future__ import annotations


class EngineError(Exception):
    exit_code = 1
    kind = "engine_error"

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "hint": self.hint, "exit_code": self.exit_code}


class BadInputError(EngineError):
    """The mesh, prompt or settings cannot be used."""

    exit_code = 2
    kind = "bad_input"


class ModelNotFoundError(EngineError):
    """A diffusion model could not be found locally and may not be downloaded."""

    exit_code = 3
    kind = "model_not_found"


class DeviceError(EngineError):
    """The requested compute device does not exist on this machine."""

    exit_code = 4
    kind = "device"


class OutOfMemoryError(EngineError):
    exit_code = 5
    kind = "out_of_memory"


class OutputError(EngineError):
    """The output folder cannot be written."""

    exit_code = 6
    kind = "output"


class JobFileError(EngineError):
    """job.json is missing, malformed, from a newer protocol, or points outside its folder."""

    exit_code = 7
    kind = "job_file"


class Cancelled(EngineError):
    """The user asked the engine to stop (SIGINT/SIGTERM or the add-on's Cancel)."""

    exit_code = 130
    kind = "cancelled"

    def __init__(self, message: str = "Cancelled by the user.", hint: str = ""):
        super().__init__(message, hint)



def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (at most 200 characters), or its type's name
    when it has none: what a user-facing message quotes of a library's error."""
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


EXIT_CODES = {cls.exit_code: cls.kind for cls in
              (EngineError, BadInputError, ModelNotFoundError, DeviceError, OutOfMemoryError,
               OutputError, JobFileError, Cancelled)}
