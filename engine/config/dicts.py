"""Settings to and from plain JSON data: result.json and saved runs (to_dict), job.json and presets
(update_from_dict)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from ..errors import BadInputError
from .checks import setting_type


def to_dict(config: Any) -> dict:
    """Settings as plain JSON-able data, for result.json."""
    return dataclasses.asdict(config)


def update_from_dict(config: Any, data: dict, where: str = "settings") -> Any:
    """Overlay a JSON object on a (nested) config dataclass, rejecting unknown keys and values
    whose type differs from the setting's (a pair stays a pair of numbers, a count an integer)."""
    if not isinstance(data, dict):
        raise BadInputError(f"{where} must be an object.", "")
    fields = {f.name for f in dataclasses.fields(config)}
    for key, value in data.items():
        if key not in fields:
            raise BadInputError(f"Unknown setting {where}.{key}.", f"Known settings: {', '.join(sorted(fields))}.")
        name, current = f"{where}.{key}", getattr(config, key)
        if dataclasses.is_dataclass(current):
            update_from_dict(current, value, name)
        else:
            setattr(config, key, _typed_value(name, value, current, setting_type(type(config), key)[0]))
    return config


def _typed_value(name: str, value: Any, current: Any, declared: Any) -> Any:
    """`value` as the type of the setting now holding `current` (declared as `declared`, under any `| None`)."""
    if current is None:  # an optional setting left open: its declared type says what it takes
        if value is None:
            return None
        if typing.get_origin(declared) is Literal:
            declared = type(typing.get_args(declared)[0])
        for kind, example in ((int, 0), (float, 0.0), (str, "")):
            if declared is kind:
                return _typed_value(name, value, example, kind)
        raise BadInputError(f"{name} has the wrong type ({type(value).__name__}).", "")
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            raise BadInputError(f"{name} must be a list.", "")
        if current and all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in current):
            if len(value) != len(current):
                raise BadInputError(f"{name} must be a list of {len(current)} numbers, got {len(value)} items.", "")
            return tuple(_typed_value(f"{name}[{index}]", item, 0.0, float) for index, item in enumerate(value))
        if not all(isinstance(item, str) for item in value):
            raise BadInputError(f"{name} must be a list of names.", "")
        return tuple(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise BadInputError(f"{name} must be true or false.", "")
        return value
    if isinstance(current, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BadInputError(f"{name} must be a number.", "")
        try:
            return float(value)
        except OverflowError as exc:  # an integer too large for a float
            raise BadInputError(f"{name} = {value} is too large.", "") from exc
    if isinstance(current, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadInputError(f"{name} must be an integer.", "")
        return value
    if isinstance(value, type(current)):
        return value
    raise BadInputError(f"{name} has the wrong type ({type(value).__name__}).", "")
