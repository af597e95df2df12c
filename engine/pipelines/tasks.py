"""The task table: which pipeline runs a job of each task, for the CLI's subcommands and
`engine run JOB_DIR` alike. Each entry imports its pipeline when it runs (inside run_pipeline,
so a failing import, like bad settings, still ends in a result.json), and the CLI imports no
PyTorch until a job runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the runner imports PyTorch
    from ..job.runner import JobContext


def run_texture(config, context: JobContext) -> dict[str, str]:
    from .texture import run_texture as texture

    return texture(config, context)


def run_generate(config, context: JobContext) -> dict[str, str]:
    from .generate import run_generate as generate

    return generate(config, context)


def run_edit(config, context: JobContext) -> dict[str, str]:
    """An edit job: its texture on a fixed mesh, or with `edit_geometry` a generated asset's surface too."""
    if config.edit_geometry:
        from .edit_geometry import run_edit_geometry as edit
    else:
        from .edit_texture import run_edit_texture as edit
    return edit(config, context)


TASKS: dict[str, Callable[..., dict[str, str]]] = {"texture": run_texture, "generate": run_generate,
                                                    "edit": run_edit}
