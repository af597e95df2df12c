"""The add-on's one error for the artist: what happened and what to do, shown as a message, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the artist can fix (a selection, a setting, the engine's set-up)."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def text(self) -> str:
        return self.message + (f" {self.hint}" if self.hint else "")
