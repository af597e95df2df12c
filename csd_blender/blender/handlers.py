"""App handlers. Closing a file or quitting Blender stops the local engine's jobs (and a model
download) but only detaches remote jobs: the server runs them on, and when the file is opened
again its remote jobs are listed for "Fetch finished remote jobs". Saving records the file's
path in its remote jobs, so they are found under the name the file is opened by."""

from __future__ import annotations

import atexit

import bpy
from bpy.app.handlers import persistent

from .. import preferences
from ..exchange import remote, remote_process
from ..exchange.queue import QUEUE
from ..preferences import EngineState, RemoteJobs
from . import preview

DETACHED = "kept on the server, since the file was closed."


def _remote_jobs():
    return [job for job in QUEUE.unfinished if job.remote is not None]


def _record_blend(path: str) -> None:
    for job in _remote_jobs():
        remote_process.set_blend(job.job_dir, path)


def _stop(reason: str, timeout: float) -> None:
    QUEUE.detach_remote(DETACHED)
    if QUEUE.busy:
        QUEUE.stop_all(reason, timeout=timeout)


@persistent
def _on_load_pre(*_args):
    _record_blend(bpy.data.filepath)  # still the file being closed
    _stop("Stopped because the file was closed; nothing was changed.", 5.0)
    preview.clear_overlay()
    RemoteJobs.records, RemoteJobs.states, RemoteJobs.check = [], {}, None


@persistent
def _on_load_post(*_args):
    list_remote_jobs()


@persistent
def _on_save_post(*_args):
    _record_blend(bpy.data.filepath)


def list_remote_jobs() -> None:
    """The open file's remote jobs not yet followed to their end, and (off the main thread) their status."""
    followed = {job.job_dir for job in QUEUE.unfinished}
    try:
        records = [r for r in remote_process.pending_records(preferences.remote_jobs_root(), bpy.data.filepath)
                   if r.job_dir not in followed]
    except OSError:
        records = []
    RemoteJobs.records, RemoteJobs.states, RemoteJobs.check = records, {}, None
    prefs = preferences.get()
    if not records or not preferences.is_remote(prefs) or not prefs.server_url.strip():
        return  # no network use while the server URL is empty (or the engine is local)
    token, online, loopback = preferences.read_token(), preferences.online_access(), prefs.allow_loopback_offline

    def config(server: str) -> remote.ServerConfig:
        return remote.server_config(server, token, online_access=online, allow_loopback=loopback)

    RemoteJobs.check = remote_process.BackgroundCall(lambda: remote_process.job_states(records, config)).start()


def _on_exit():
    try:
        _record_blend(bpy.data.filepath)
    except (AttributeError, ReferenceError, RuntimeError):  # Blender's data may already be freed at exit
        pass
    _stop("Blender is quitting.", 3.0)
    if EngineState.downloading():
        EngineState.download.stop()


HANDLERS = ((bpy.app.handlers.load_pre, _on_load_pre), (bpy.app.handlers.load_post, _on_load_post),
            (bpy.app.handlers.save_post, _on_save_post))


def register():
    for handlers, handler in HANDLERS:
        if handler not in handlers:
            handlers.append(handler)
    atexit.register(_on_exit)


def unregister():
    for handlers, handler in HANDLERS:
        if handler in handlers:
            handlers.remove(handler)
    atexit.unregister(_on_exit)
    _stop("The extension was disabled.", 3.0)
    if EngineState.downloading():
        EngineState.download.stop()
