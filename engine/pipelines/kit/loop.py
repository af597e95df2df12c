"""The one optimisation loop every stage runs (texture, edit, generate's two stages, geometry edits).

What a stage does in one step (its renders, losses and random draws, in its own order) stays in
the stage's `step` function; the loop owns what they share: the stage event and its timing, a cancel check before each step, the
divergence check, a step event after each (about 100 in all), a checkpoint every
`checkpoint_every` steps, at the end and on a cancel, and a preview every `preview_every` steps
but the last.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...errors import Cancelled, EngineError
from ...job.runner import JobContext



def seeded_generator(seed: int) -> torch.Generator:
    """The job's generator (every draw a step makes comes from it), with torch's global seed set
    too, for the few layers that draw from it (their initial weights)."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)

@dataclass
class LoopPlan:
    """Which steps a stage runs and how they are numbered in the progress events: steps
    `start`..`steps` (0-based, `start` > 0 when resumed) as global steps `offset + done` of `total`
    (generate counts its two stages as one run)."""

    steps: int
    start: int = 0
    offset: int = 0
    total: int | None = None  # None: `steps`
    preview_every: int = 0  # 0: never
    checkpoint_every: int = 0  # 0: only at the end and on a cancel
    label: str = "optimising"  # the stage event before the first step
    timer: str | None = "optimise_s"  # the timing it is counted in (None: the caller's)
    name: str = ""  # e.g. "stage 1", for the divergence message
    diverged_hint: str = "Try a lower --lr or another --seed."


def run_loop(plan: LoopPlan, step: Callable[[int], torch.Tensor | float], context: JobContext,
             preview: Callable[[int], None] | None = None, checkpoint: Callable[[int], None] | None = None
             ) -> float:
    """Run `step(i)` for each step i of the plan; it takes one optimiser step and returns its loss.
    `preview(global_step)` writes a preview; `checkpoint(done)` saves the stage's state after
    `done` steps. Returns the last loss (0.0 when no step ran)."""
    context.reporter.stage(plan.label)
    if plan.timer is None:
        return _steps(plan, step, context, preview, checkpoint)
    with context.timed(plan.timer):
        return _steps(plan, step, context, preview, checkpoint)


def _steps(plan: LoopPlan, step: Callable[[int], torch.Tensor | float], context: JobContext,
           preview: Callable[[int], None] | None, checkpoint: Callable[[int], None] | None) -> float:
    total = plan.total if plan.total is not None else plan.steps
    every = max(1, total // 100)
    loss_value, done = 0.0, plan.start
    try:
        for index in range(plan.start, plan.steps):
            context.cancel.check()
            loss_value = float(step(index))
            if not math.isfinite(loss_value):
                where = f" in {plan.name}" if plan.name else ""
                raise EngineError(f"The optimisation diverged{where} (the loss became {loss_value} at step "
                                  f"{index + 1}).", plan.diverged_hint)
            done = index + 1
            context.reporter.step(plan.offset + done, total, loss_value, every=every)
            if checkpoint is not None and plan.checkpoint_every and done % plan.checkpoint_every == 0 \
                    and done < plan.steps:
                checkpoint(done)
            if preview is not None and plan.preview_every and done % plan.preview_every == 0 and done < plan.steps:
                preview(plan.offset + done)
    except Cancelled:
        if checkpoint is not None:
            with context.cancel.critical():
                checkpoint(done)
        raise
    if checkpoint is not None:
        checkpoint(plan.steps)
    return loss_value
