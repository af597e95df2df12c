"""The engine's set-up and checks: the check before every job, and the preferences' buttons
(set up the engine, check it, download a model, test the connection to a remote server), each a
modal operator that never blocks Blender.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import NamedTuple

import bpy

from . import preferences
from .blender import preview
from .exchange import engine_env
from .exchange import models as models_mod
from .exchange import progress as progress_mod
from .exchange import remote, remote_process
from .exchange.errors import UserError
from .exchange.process import engine_process_env
from .exchange.queue import QUEUE

DOWNLOAD_POLL_S = 0.25
DOWNLOAD_SYNC_POLL_S = 0.05


class EngineLaunch(NamedTuple):
    """How to start the engine: its Python, its source folder (on PYTHONPATH), extra environment."""

    python: str
    source: Path
    env: dict


def engine_launch(prefs) -> EngineLaunch:
    """How to start the engine, or a UserError saying what to fix."""
    if prefs is None:
        raise UserError("The extension's preferences are not available.", "Re-enable the extension.")
    python = preferences.engine_python(prefs)
    engine_env.quick_check(python)
    source = preferences.engine_source(prefs)
    if source is None:
        raise UserError("The engine's source code is missing from the extension.",
                        "Reinstall the extension, or set 'Engine source' in the preferences.")
    return EngineLaunch(str(python), source, preferences.engine_env_extra(prefs))


def remote_server(prefs) -> remote.ServerConfig:
    """The check before a remote job: a server URL the network rules allow (no engine Python is needed
    here). Whether the server answers is found out by the job's own thread, never on this one."""
    if prefs is None:
        raise UserError("The extension's preferences are not available.", "Re-enable the extension.")
    config = preferences.server_config(prefs)
    config.check_network()
    return config


def _requirements_file() -> Path | None:
    for path in (engine_env.REQUIREMENTS, engine_env.PACKAGE_DIR.parent / "requirements-engine.txt"):
        if path.is_file():
            return path
    return None


class CSD_OT_setup_engine(bpy.types.Operator):
    """Create a Python environment for the engine in the extension's folder and install its packages (downloads several GB)"""

    bl_idname = "csd.setup_engine"
    bl_label = "Set up engine"
    bl_options = {'INTERNAL'}

    def _begin(self, context):
        state = preferences.EngineState
        state.setup_error = state.setup_message = ""
        if not preferences.online_access():
            state.setup_error = ("Online access is off, so nothing was downloaded. Allow it in Preferences > System > "
                                 "Network, or set an existing engine Python.")
            self.report({'ERROR'}, state.setup_error)
            return None
        requirements = _requirements_file()
        if requirements is None:
            state.setup_error = "requirements-engine.txt is missing from the extension: reinstall it."
            self.report({'ERROR'}, state.setup_error)
            return None
        plan = engine_env.SetupPlan(preferences.default_venv(), requirements, base_python=sys.executable)
        state.setup = plan
        return plan

    def _end(self, plan):
        state = preferences.EngineState
        engine_env.forget_checks()
        if plan.error:
            state.setup_error = f"Set-up failed: {plan.error} Log: {plan.log_path}"
            self.report({'ERROR'}, state.setup_error)
            return {'CANCELLED'}
        state.setup_message = f"Engine set up in {plan.venv_dir}"
        self.report({'INFO'}, state.setup_message)
        return {'FINISHED'}

    def execute(self, context):
        plan = self._begin(context)
        if plan is None:
            return {'CANCELLED'}
        while not plan.poll():
            time.sleep(0.2)
        return self._end(plan)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        plan = self._begin(context)
        if plan is None:
            return {'CANCELLED'}
        self._plan = plan
        self._timer = context.window_manager.event_timer_add(0.5, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        if event.type != 'TIMER' or event.timer is not self._timer:
            return {'PASS_THROUGH'}
        preview.redraw_panels(context)
        if not self._plan.poll():
            return {'RUNNING_MODAL'}
        context.window_manager.event_timer_remove(self._timer)
        return self._end(self._plan)

    def cancel(self, context):
        self._plan.cancel()


class CSD_OT_setup_engine_cancel(bpy.types.Operator):
    """Stop setting up the engine"""

    bl_idname = "csd.setup_engine_cancel"
    bl_label = "Stop Set-up"
    bl_options = {'INTERNAL'}

    def execute(self, context):
        plan = preferences.EngineState.setup
        if plan is not None:
            plan.cancel()
        return {'FINISHED'}


class CSD_OT_check_engine(bpy.types.Operator):
    """Report the engine's Python, PyTorch version, device, and which models are on this machine"""

    bl_idname = "csd.check_engine"
    bl_label = "Check engine"
    bl_options = {'INTERNAL'}

    def _begin(self, context):
        state = preferences.EngineState
        prefs = preferences.get(context)
        state.check_lines = []
        state.check_rows = []
        state.check_ok = None
        try:
            python = preferences.engine_python(prefs)
        except UserError as exc:
            state.check_lines = [exc.message, exc.hint]
            state.check_ok = False
            self.report({'ERROR'}, exc.message)
            return None
        if not python.exists():
            state.check_lines = [f"The engine Python was not found: {python}"]
            state.check_ok = False
            self.report({'ERROR'}, state.check_lines[0])
            return None
        pd = preferences.as_dict(prefs)
        models = {"texture": pd["texture_model"], "generate": pd["generate_model"],
                  "generate stage 2": pd["generate_refine_model"], "edit": pd["edit_model"]}
        if pd["controlnet_depth"]:
            models["depth ControlNet"] = pd["controlnet_depth"]
        if pd["controlnet_canny"]:
            models["canny ControlNet"] = pd["controlnet_canny"]
        log = preferences.user_dir() / "check-engine.log"
        try:
            log.unlink()
        except OSError:
            pass
        # cwd: the log's folder, so the engine found is the one on PYTHONPATH, not an "engine" folder
        # wherever Blender was started.
        cmd = engine_env.BackgroundCommand(engine_env.check_command(python, models), log, cwd=log.parent,
                                           env=engine_process_env(preferences.engine_source(prefs),
                                                        preferences.engine_env_extra(prefs)))
        try:
            cmd.start()
        except OSError as exc:
            state.check_lines = [f"The engine Python could not be started: {exc}"]
            state.check_ok = False
            return None
        state.check_running = True
        self._started = time.monotonic()
        return cmd

    def _end(self, cmd):
        state = preferences.EngineState
        state.check_running = False
        report = engine_env.parse_check_output(cmd.output())
        state.check_lines = engine_env.summarize_check(report)
        state.check_rows = models_mod.model_rows(report)
        state.check_ok = bool(report and report.get("torch") and report.get("engine"))
        self.report({'INFO'} if state.check_ok else {'WARNING'},
                    " | ".join(state.check_lines + [row.text() for row in state.check_rows]))
        preview.redraw_panels()
        return {'FINISHED'}

    def execute(self, context):
        cmd = self._begin(context)
        if cmd is None:
            return {'CANCELLED'}
        deadline = time.monotonic() + 120
        while cmd.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        cmd.terminate()
        return self._end(cmd)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        cmd = self._begin(context)
        if cmd is None:
            return {'CANCELLED'}
        self._cmd = cmd
        self._timer = context.window_manager.event_timer_add(0.3, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        if event.type != 'TIMER' or event.timer is not self._timer:
            return {'PASS_THROUGH'}
        if self._cmd.poll() is None and time.monotonic() - self._started < 120:
            return {'RUNNING_MODAL'}
        self._cmd.terminate()
        context.window_manager.event_timer_remove(self._timer)
        return self._end(self._cmd)

    def cancel(self, context):
        self._cmd.terminate()
        preferences.EngineState.check_running = False


class CSD_OT_download_model(bpy.types.Operator):
    """Download only the files the engine loads of this model, with a progress bar (needs online access)"""

    bl_idname = "csd.download_model"
    bl_label = "Download Model"
    bl_options = {'INTERNAL'}

    model: bpy.props.StringProperty(name="Model", description="Hugging Face id (owner/name)")

    def _fail(self, message: str, hint: str = ""):
        state = preferences.EngineState
        state.download_level, state.download_message, state.download_hint = "ERROR", message, hint
        QUEUE.set_report("ERROR", message, hint)
        self.report({'ERROR'}, f"{message} {hint}".strip())
        preview.redraw_panels()
        return None

    def _begin(self, context):
        state = preferences.EngineState
        if state.downloading():
            return self._fail(f"{state.download.model} is still downloading.", "Wait for it, or cancel it.")
        if not preferences.online_access():
            return self._fail("Online access is off, so nothing was downloaded.",
                              "Allow it in Preferences > System > Network, then click Download again.")
        if not models_mod.is_hub_id(self.model):
            return self._fail(f"{self.model!r} is not a Hugging Face id (owner/name).",
                              "Only hub models can be downloaded; a folder or 'bundled' is already here.")
        prefs = preferences.get(context)
        try:
            python, source, env = engine_launch(prefs)
        except UserError as exc:
            return self._fail(exc.message, exc.hint)
        download = models_mod.ModelDownload(python, self.model, source, env, preferences.user_dir() / "download.log",
                                            cache_dir=preferences.as_dict(prefs)["cache_dir"])
        try:
            download.start()
        except OSError as exc:
            return self._fail(f"The engine could not be started: {exc}.",
                              "Check the engine Python in the add-on's preferences, or click 'Set up engine'.")
        state.download, state.download_level, state.download_message, state.download_hint = download, "", "", ""
        preview.redraw_panels(context)
        return download

    def _end(self, download):
        state = preferences.EngineState
        level, message, hint = download.outcome()
        state.download_level, state.download_message, state.download_hint = level, message, hint
        if download.ok:
            size = download.progress.finished.get("size_bytes", 0)
            state.check_rows = [dataclasses.replace(row, local=True, complete=True, missing=(),
                                                    size=progress_mod.format_bytes(size))
                                if row.model == download.model else row for row in state.check_rows]
        QUEUE.set_report(level, message, hint)
        self.report({level}, f"{message} {hint}".strip() if level == "ERROR" else message)
        preview.redraw_panels()
        return {'FINISHED'} if download.ok else {'CANCELLED'}

    def execute(self, context):
        download = self._begin(context)
        if download is None:
            return {'CANCELLED'}
        while not download.poll():
            time.sleep(DOWNLOAD_SYNC_POLL_S)
        return self._end(download)

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        download = self._begin(context)
        if download is None:
            return {'CANCELLED'}
        self._download = download
        self._timer = context.window_manager.event_timer_add(DOWNLOAD_POLL_S, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        if event.type != 'TIMER' or event.timer is not self._timer:
            return {'PASS_THROUGH'}
        done = self._download.poll()
        preview.redraw_panels(context)
        if not done:
            return {'RUNNING_MODAL'}
        context.window_manager.event_timer_remove(self._timer)
        return self._end(self._download)

    def cancel(self, context):
        # Blender ends modal operators when a file is loaded or the window closes: nobody will poll
        # the engine after this, so it is stopped now.
        self._download.stop()
        try:
            context.window_manager.event_timer_remove(self._timer)
        except Exception:
            pass


class CSD_OT_download_model_cancel(bpy.types.Operator):
    """Stop the model download (files already fetched are kept, and the next download goes on from them)"""

    bl_idname = "csd.download_model_cancel"
    bl_label = "Cancel Download"
    bl_options = {'INTERNAL'}

    def execute(self, context):
        if preferences.EngineState.downloading():
            preferences.EngineState.download.cancel()
        preview.redraw_panels(context)
        return {'FINISHED'}


class CSD_OT_test_connection(bpy.types.Operator):
    """Ask the remote server for its engine version, GPUs and models (Blender stays responsive)"""

    bl_idname = "csd.test_connection"
    bl_label = "Test connection"
    bl_options = {'INTERNAL'}

    def _begin(self, context):
        state = preferences.EngineState
        state.connection_ok, state.connection_lines = None, []
        try:
            config = remote_server(preferences.get(context))
        except UserError as exc:
            state.connection_ok, state.connection_lines = False, [exc.message, exc.hint]
            self.report({'ERROR'}, exc.text())
            return None
        state.connection_url = config.url
        state.connection = remote_process.BackgroundCall(lambda: remote.RemoteClient(config).server_info()).start()
        return state.connection

    def _end(self, call):
        state = preferences.EngineState
        state.connection = None
        error = call.error
        if error is None:
            try:
                remote.check_protocol(call.result)
            except UserError as exc:
                error = exc
        if isinstance(error, UserError):
            state.connection_ok, state.connection_lines = False, [error.message, error.hint]
        elif isinstance(error, remote.ConnectionLost):
            state.connection_ok = False
            state.connection_lines = [f"The server could not be reached: {error}.", remote.UNREACHABLE_HINT]
        elif error is not None:
            state.connection_ok, state.connection_lines = False, [f"The test failed: {type(error).__name__}: {error}"]
        else:
            state.connection_ok = True
            state.server_models = remote.server_models(call.result)
            state.connection_lines = [f"Connected to {state.connection_url}"] + remote.describe_server(call.result)
        self.report({'INFO'} if state.connection_ok else {'ERROR'}, " | ".join(state.connection_lines))
        preview.redraw_panels()
        return {'FINISHED'} if state.connection_ok else {'CANCELLED'}

    def execute(self, context):
        call = self._begin(context)
        if call is None:
            return {'CANCELLED'}
        call.wait()
        return self._end(call)

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        call = self._begin(context)
        if call is None:
            return {'CANCELLED'}
        self._call = call
        self._timer = context.window_manager.event_timer_add(0.2, window=context.window)
        context.window_manager.modal_handler_add(self)
        preview.redraw_panels(context)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        if event.type != 'TIMER' or event.timer is not self._timer:
            return {'PASS_THROUGH'}
        if not self._call.done:
            return {'RUNNING_MODAL'}
        context.window_manager.event_timer_remove(self._timer)
        return self._end(self._call)

    def cancel(self, context):
        # The request ends on its own (its timeouts); nobody reads its answer.
        preferences.EngineState.connection = None
        try:
            context.window_manager.event_timer_remove(self._timer)
        except Exception:
            pass


classes = (CSD_OT_setup_engine, CSD_OT_setup_engine_cancel, CSD_OT_check_engine, CSD_OT_download_model,
           CSD_OT_download_model_cancel, CSD_OT_test_connection)


register, unregister = bpy.utils.register_classes_factory(classes)
