"""App handlers: a file being closed stops its jobs; quitting Blender stops the engine (jobs and a
model download)."""

from __future__ import annotations

import atexit

import bpy
from bpy.app.handlers import persistent

from ..exchange.queue import QUEUE
from ..preferences import EngineState
from . import preview


@persistent
def _on_load_pre(*_args):
    if QUEUE.busy:
        QUEUE.stop_all("Stopped because the file was closed; nothing was changed.")
    preview.clear_overlay()


def _on_exit():
    if QUEUE.busy:
        QUEUE.stop_all("Blender is quitting.", timeout=3.0)
    if EngineState.downloading():
        EngineState.download.stop()


def register():
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)
    atexit.register(_on_exit)


def unregister():
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    atexit.unregister(_on_exit)
    if QUEUE.busy:
        QUEUE.stop_all("The extension was disabled.", timeout=3.0)
    if EngineState.downloading():
        EngineState.download.stop()
