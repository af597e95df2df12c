"""Following an action's jobs: the queue ticked, the live preview updated, each result imported when it is ready.

The modal job operators call ``JobFollower.tick`` from their timer; background mode and scripts
call ``JobFollower.run``, which ticks until every job has finished.
"""

from __future__ import annotations

import time
import traceback

from . import preferences
from .blender import preview, result_import
from .exchange import queue as q
from .exchange.errors import UserError
from .exchange.queue import QUEUE, Job
from .exchange.requests import EditRequest, TextureRequest

SYNC_POLL_S = 0.05


def import_result(job: Job, context, prefs) -> str:
    """Bring one finished job's result into the scene; returns the message for the artist."""
    storage = prefs.image_storage if prefs else 'PACK'
    results = preferences.results_root()
    if job.task == "texture":
        return result_import.import_texture(job, storage, results)
    if job.task == "generate":
        return result_import.import_generated(job, context, results)
    if isinstance(job.request, EditRequest) and job.request.mode == "object":
        return result_import.import_edited_object(job, context, results)
    return result_import.import_texture(job, storage, results)


class JobFollower:
    """Follows one action's jobs through the queue and imports each result when it is ready."""

    def __init__(self, jobs: list[Job], notes: list[str] | None = None):
        self.jobs = jobs
        self.notes = list(notes or [])
        self.imported = 0
        ahead = QUEUE.unfinished
        if ahead:
            self.notes.append(f"Queued behind {len(ahead)} job(s); it starts when they finish.")
        for job in jobs:
            QUEUE.add(job)
        self._overlay_job = None

    @property
    def done(self) -> bool:
        return all(job.state in q.TERMINAL_STATES for job in self.jobs)

    def tick(self, context) -> bool:
        QUEUE.tick()
        imported_now = False
        for job in self.jobs:
            if job.state == q.ENDED:
                self._import(job, context)
                imported_now = True
        if imported_now:
            QUEUE.tick()  # start the next one right away
        self._preview()
        return self.done

    def _preview(self) -> None:
        prefs = preferences.get()
        active = QUEUE.active
        if active is None or active not in self.jobs:
            if self._overlay_job is not None:
                preview.clear_overlay()
                self._overlay_job = None
            return
        if self._overlay_job is not active and isinstance(active.request, TextureRequest):
            overlay = active.request.overlay
            preview.set_overlay_geometry(active.id, overlay.positions, overlay.triangles, overlay.corner_uvs)
            self._overlay_job = active
        preview.update_overlay(active, bool(prefs and prefs.viewport_preview))

    def _import(self, job: Job, context) -> None:
        outcome = job.outcome
        if outcome is None or not outcome.ok:
            message = outcome.message if outcome else "The engine ended without a result."
            job.finish(False, f"{job.describe()} failed: {message}", outcome.hint if outcome else "")
            QUEUE.record(job)
            return
        prefs = preferences.get(context)
        try:
            message = import_result(job, context, prefs)
        except UserError as exc:
            job.finish(False, f"{job.describe()}: {exc.message}", exc.hint)
        except Exception as exc:  # a bug of ours: the console gets the traceback, the artist a message
            traceback.print_exc()
            job.finish(False, f"{job.describe()}: the result could not be imported ({type(exc).__name__}: {exc}).",
                       "Your scene is unchanged. Turn on 'Keep job folders' and report the problem.")
        else:
            job.finish(True, message)
            self.imported += 1
        QUEUE.record(job)

    def cancel(self, reason: str = "Cancelled.") -> None:
        for job in self.jobs:
            job.cancel(reason)
            if job.state == q.CANCELLED:
                QUEUE.record(job)

    def abandon(self, reason: str) -> None:
        """Cancel and wait for the engines to exit: nobody will poll these jobs any more. Remote jobs
        are detached instead: the server runs them on, and a later session fetches their results."""
        QUEUE.detach_remote("kept on the server, since Blender ended the operation.", self.jobs)
        self.cancel(reason)
        for job in self.jobs:
            if job.state in q.ACTIVE_STATES:
                job.wait(3.0)
                if job.state in q.ACTIVE_STATES and job.process is not None:
                    job.process.kill()
                    job.wait(2.0)

    def run(self, context, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.tick(context):
            if deadline is not None and time.monotonic() > deadline:
                self.cancel("Timed out.")
                deadline = None
            time.sleep(SYNC_POLL_S)
        preview.clear_overlay()
