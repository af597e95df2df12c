"""Swapping a module's method for a while, the one mechanism behind the step's faster kernels.

The texture and generate steps run diffusers' networks with some layers computed differently
(Triton kernels, NHWC outputs, overlapped ControlNets). Rather than subclassing diffusers, each
layer instance gets its replacement as an instance attribute, which shadows the class's method,
for the duration of a `with` block; afterwards the instance is exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

_ABSENT = object()


@contextmanager
def replaced_methods(replacements: Iterable[tuple[object, str, Callable]]) -> Iterator[None]:
    """Set `instance.<name> = function` for each (instance, name, function) while active."""
    replacements = list(replacements)
    previous = [(instance, name, instance.__dict__.get(name, _ABSENT)) for instance, name, _ in replacements]
    for instance, name, function in replacements:
        setattr(instance, name, function)
    try:
        yield
    finally:
        for instance, name, value in reversed(previous):
            delattr(instance, name)
            if value is not _ABSENT:
                setattr(instance, name, value)
