"""Bounds declared on the settings' fields, and the one validator that checks them.

A setting's bound is declared once, in its field's metadata (`number`, `integer`, `count`, `text`,
`pattern`, `check` below); a setting typed `Literal[...]` may take only those values, one typed
`X | None` may also be None. `check_settings` walks a settings dataclass and its nested parts,
naming each setting by its path (`stage1.guidance.w1`), then asks each part for the rules that
tie settings together (`Settings.check_relations`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from ..errors import BadInputError

# Bounds on what a job may ask for (docs/job-protocol.md, "Bounds"): far above any useful value,
# low enough that no setting makes a job run for days, fill memory or bloat result.json.
MAX_STEPS = 100_000  # the paper's longest schedule is 10,000 steps
MAX_PROMPT_CHARS = 2_000  # text encoders read 77 tokens (a few hundred characters)
MAX_SEED = 2 ** 32 - 1  # what every random generator the engine seeds accepts
MAX_LEARNING_RATE = 1.0
MAX_GUIDANCE_WEIGHT = 1_000.0  # |w1|, |w2|, cfg_scale (the SDS default is 100)
MAX_NAME_CHARS = 4_096  # a model id, folder or cache path
MAX_EXTRA_CAMERAS = 64
MAX_VIEW_POOL = 1_024
# The largest loss weight, density scale or threshold a job may set (the released ones are at most 10,000).
MAX_WEIGHT = 1e6


def _plain_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Number:
    """A number (or each number of a pair) from `low` to `high`; `above`/`below` leave that end out."""

    low: float
    high: float
    whole: bool = False  # an integer
    above: bool = False
    below: bool = False
    hint: str = ""

    def check(self, name: str, value: Any) -> None:
        for item in value if isinstance(value, tuple) else (value,):
            if not self._holds(item):
                raise BadInputError(f"{name} must be {self._describe()}, got {value!r}.", self.hint)

    def _holds(self, item: Any) -> bool:
        if not _plain_number(item) or (self.whole and not isinstance(item, int)):
            return False
        low_ok = self.low < item if self.above else self.low <= item
        high_ok = item < self.high if self.below else item <= self.high
        return low_ok and high_ok

    def _describe(self) -> str:
        if self.whole:
            return f"an integer between {self.low:,} and {self.high:,}"
        if self.above and self.low == 0 and not self.below:
            return f"a number above 0 and at most {self.high:g}"
        if self.low == 0 and self.below and not self.above:
            return f"0 (off) or a number below {self.high:g}"
        low = f"above {self.low:g}" if self.above else f"from {self.low:g}"
        high = f"below {self.high:g}" if self.below else f"to {self.high:g}"
        return f"a number {low} {high}"


@dataclass(frozen=True)
class Text:
    """Text of at most `limit` characters; `empty_hint` set: it may not be blank either."""

    limit: int
    empty_hint: str | None = None

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, str):
            raise BadInputError(f"{name} must be text, got {type(value).__name__}.", "")
        if self.empty_hint is not None and not value.strip():
            raise BadInputError(f"The {name.rsplit('.', 1)[-1].replace('_', ' ')} is empty.", self.empty_hint)
        if len(value) > self.limit:
            raise BadInputError(f"{name} is {len(value):,} characters long; at most {self.limit:,} are allowed.",
                                "Text encoders read only the first 77 tokens (a few hundred characters): "
                                "shorten it." if "prompt" in name else "Use a shorter name or path.")


@dataclass(frozen=True)
class Pattern:
    """Text matching `pattern` whole."""

    pattern: re.Pattern
    hint: str

    def check(self, name: str, value: Any) -> None:
        if not isinstance(value, str) or not self.pattern.fullmatch(value):
            raise BadInputError(f"Unknown {name} {value!r}.", self.hint)


@dataclass(frozen=True)
class Custom:
    """A setting with a structure of its own (a list of cameras), checked by `function(name, value)`."""

    function: Callable[[str, Any], None]

    def check(self, name: str, value: Any) -> None:
        self.function(name, value)


def _bounded(default: Any, bound: Any) -> Any:
    """A dataclass field with `bound` in its metadata; `default` MISSING: a setting without a default."""
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={"bound": bound})
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"bound": bound})
    return dataclasses.field(default=default, metadata={"bound": bound})


def number(default: Any, low: float, high: float, *, above: bool = False, below: bool = False, hint: str = "") -> Any:
    return _bounded(default, Number(low, high, above=above, below=below, hint=hint))


def integer(default: Any, low: int, high: int) -> Any:
    return _bounded(default, Number(low, high, whole=True))


def count(default: Any, low: int = 0) -> Any:
    """A number of steps (or steps between events): an integer from `low` to MAX_STEPS."""
    return integer(default, low, MAX_STEPS)


def probability(default: float) -> Any:
    return number(default, 0.0, 1.0)


def weight(default: Any) -> Any:
    """A loss weight or scale (or a start and end pair of them)."""
    return number(default, 0.0, MAX_WEIGHT)


def learning_rate_setting(default: float) -> Any:
    return number(default, 0.0, MAX_LEARNING_RATE, above=True)


def text(default: Any, limit: int, empty_hint: str | None = None) -> Any:
    return _bounded(default, Text(limit, empty_hint))


def pattern(default: str, compiled: re.Pattern, hint: str) -> Any:
    return _bounded(default, Pattern(compiled, hint))


def custom(default: Any, function: Callable[[str, Any], None]) -> Any:
    return _bounded(default, Custom(function))


class Settings:
    """Base of every settings dataclass: `validate` checks the declared bounds, then the relations."""

    def validate(self) -> None:
        check_settings(self)

    def check_relations(self, where: str) -> None:
        """Rules between settings (a range's low end below its high end); `where` prefixes their names."""


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(hint: Any) -> tuple[Any, bool]:
    """The type under `X | None`, and whether None is allowed."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return (args[0] if len(args) == 1 else hint), len(args) < len(typing.get_args(hint))
    return hint, False


def setting_type(cls: type, name: str) -> tuple[Any, bool]:
    """A setting's declared type (under any `| None`) and whether it may be None."""
    return _optional(_hints(cls)[name])


def check_settings(config: Settings, where: str = "") -> None:
    for item in dataclasses.fields(config):
        name, value = f"{where}{item.name}", getattr(config, item.name)
        if isinstance(value, Settings):
            check_settings(value, f"{name}.")
            continue
        hint, may_be_none = setting_type(type(config), item.name)
        if value is None:
            if may_be_none:
                continue
            raise BadInputError(f"{name} must be given.", "")
        if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            choices = ", ".join(str(choice) for choice in typing.get_args(hint))
            raise BadInputError(f"{name} must be one of {choices}, got {value!r}.", "")
        if typing.get_origin(hint) is tuple and Ellipsis not in typing.get_args(hint) and (
                not isinstance(value, tuple) or len(value) != len(typing.get_args(hint))):
            raise BadInputError(f"{name} must be a list of {len(typing.get_args(hint))} numbers, got {value!r}.", "")
        bound = item.metadata.get("bound")
        if bound is not None:
            bound.check(name, value)
    config.check_relations(where)


def check_setting(config: Settings, name: str) -> None:
    """One setting's declared bound, checked on its own (a setting filled in late)."""
    bound = next(item for item in dataclasses.fields(config) if item.name == name).metadata["bound"]
    bound.check(name, getattr(config, name))


def check_range(name: str, value: tuple[float, float], hint: str = "Give (low, high) with low <= high.") -> None:
    """A (low, high) pair of numbers whose ends are in order."""
    low, high = value
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise BadInputError(f"{name}={value} is not a range.", hint)


def _finite_number(value: Any) -> bool:
    return _plain_number(value) and math.isfinite(value)


def check_extra_cameras(name: str, cameras: Any) -> None:
    """The caller's cameras: each {"matrix_world": 4 rows of 4 finite numbers, "fovy_deg": 1..170}."""
    if not isinstance(cameras, list) or len(cameras) > MAX_EXTRA_CAMERAS:
        raise BadInputError(f"{name} must be a list of at most {MAX_EXTRA_CAMERAS} cameras.", "")
    for index, camera in enumerate(cameras):
        where = f"{name}[{index}]"
        if not isinstance(camera, dict) or set(camera) - {"matrix_world", "fovy_deg"}:
            raise BadInputError(f"{where} must be an object with matrix_world and fovy_deg.", "")
        matrix = camera.get("matrix_world")
        if not (isinstance(matrix, list) and len(matrix) == 4
                and all(isinstance(row, list) and len(row) == 4 and all(_finite_number(v) for v in row)
                        for row in matrix)):
            raise BadInputError(f"{where}.matrix_world must be 4 rows of 4 finite numbers.",
                                "Give the camera's 4 x 4 camera-to-world matrix.")
        fovy = camera.get("fovy_deg", 40.0)
        if not (_finite_number(fovy) and 1.0 <= fovy <= 170.0):
            raise BadInputError(f"{where}.fovy_deg must be between 1 and 170 degrees, got {fovy!r}.", "")
