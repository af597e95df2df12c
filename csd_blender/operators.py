"""The panel's actions. Each runs its jobs through the queue and imports the results in one undo step.

In the UI an action is a modal operator whose timer follows the engine, so Blender never
blocks; in background mode (``blender -b``, where timers never fire) and when called from a
script (``bpy.ops.csd.texture_selected()``) the same code runs synchronously.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path

import bpy
from bpy.props import IntProperty

from . import preferences
from .blender import mesh_export, preview, result_import
from .blender.mesh_export import UserError
from .exchange import engine_env
from .exchange import jobs as jobs_mod
from .exchange import models as models_mod
from .exchange import progress as progress_mod
from .exchange import protocol
from .exchange import queue as q
from .exchange import settings as settings_mod
from .exchange.queue import QUEUE, Job, Report

POLL_INTERVAL_S = 0.25
SYNC_POLL_S = 0.05


def set_report(level: str, message: str, hint: str = "", job_dir: str = "") -> None:
    QUEUE.last_report = Report(level, message, hint, job_dir)


def redraw(context=None) -> None:
    preview.tag_redraw(('VIEW_3D', 'STATUSBAR', 'PREFERENCES'), context)


# -- building jobs -----------------------------------------------------------------------------

def engine_launch(prefs):
    """(python, engine source, environment) for the engine, or a UserError saying what to fix."""
    if prefs is None:
        raise UserError("The extension's preferences are not available.", "Re-enable the extension.")
    try:
        python = preferences.engine_python(prefs)
        engine_env.quick_check(python)
    except engine_env.EngineUnavailable as exc:
        raise UserError(exc.message, exc.hint) from None
    source = preferences.engine_source(prefs)
    if source is None:
        raise UserError("The engine's source code is missing from the extension.",
                        "Reinstall the extension, or set 'Engine source' in the preferences.")
    return str(python), source, preferences.engine_env_extra(prefs)


def require_prompt(text: str, what: str = "prompt") -> str:
    if not text or not text.strip():
        raise UserError(f"The {what} is empty.", "Describe what you want, e.g. 'a wooden chair with carved legs'.")
    return text.strip()


def _new_job_dir(task: str, label: str) -> Path:
    try:
        root = preferences.jobs_root()
        if not QUEUE.busy:  # failed jobs keep their folders (and logs) for a while: the newest ten
            jobs_mod.prune_job_dirs(root, keep=10)
        return jobs_mod.create_job_dir(root, task, label)
    except OSError as exc:
        raise UserError(f"The job folder could not be created: {exc}.", "Check free disk space and permissions.") from None


def _job(task, label, job_dir, launch, prefs, payload) -> Job:
    python, source, env = launch
    return Job(task, label, job_dir, python, source, env, keep_dir=prefs.keep_job_folders, payload=payload)


def _object_ref(obj) -> dict:
    return {"object_name": obj.name, "object_uid": getattr(obj, "session_uid", None)}


def prepare_texture(context):
    scene = context.scene.csd
    prefs = preferences.get(context)
    require_prompt(scene.prompt)
    selected = list(context.selected_objects)
    if not selected:
        raise UserError("Nothing is selected.", "Select one or more mesh objects, then click Texture Selected.")
    meshes = [o for o in selected if o.type == 'MESH']
    others = [o for o in selected if o.type != 'MESH']
    if not meshes:
        first = others[0]
        raise UserError(f"No mesh is selected: '{first.name}' is {mesh_export.describe_type(first)}.",
                        "Select one or more mesh objects.")
    for obj in meshes:
        mesh_export.check_mesh_object(obj)
    launch = engine_launch(prefs)
    depsgraph = context.evaluated_depsgraph_get()
    exports = [(obj, mesh_export.export_evaluated_mesh(obj, depsgraph)) for obj in meshes]
    for obj, ex in exports:
        if (scene.reunwrap or ex.corner_uvs is None) and not ex.same_topology:
            raise UserError(f"'{obj.name}' has no UV map and its modifiers change its faces, so a new UV layout "
                            "could not be put back on it.",
                            "Add a UV map first (UV > Smart UV Project), or apply the modifiers.")
    cameras = mesh_export.scene_cameras(context.scene) if scene.use_scene_cameras else None
    settings = settings_mod.texture_settings(scene.as_dict(), preferences.as_dict(prefs), cameras)
    jobs = []
    try:
        for obj, ex in exports:
            job_dir = _new_job_dir("texture", obj.name)
            try:
                jobs_mod.write_mesh_npz(job_dir / protocol.MESH_FILE, ex.positions, ex.triangles, ex.corner_uvs)
                jobs_mod.write_job(job_dir, "texture", settings, mesh=protocol.MESH_FILE)
            except OSError as exc:
                jobs_mod.remove_tree(job_dir)
                raise UserError(f"The job folder could not be written: {exc}.", "Check free disk space.") from None
            needs_uvs = bool(scene.reunwrap or ex.corner_uvs is None)
            payload = dict(_object_ref(obj), prompt=settings["prompt"], uv_map=None if needs_uvs else ex.uv_map,
                           needs_uvs=needs_uvs, tri_loops=ex.tri_loops, counts=ex.counts,
                           overlay=(ex.positions, ex.triangles, None if needs_uvs else ex.corner_uvs))
            jobs.append(_job("texture", obj.name, job_dir, launch, prefs, payload))
    except BaseException:
        for job in jobs:
            jobs_mod.remove_tree(job.job_dir)
        raise
    notes = []
    if others:
        names = ", ".join(f"'{o.name}'" for o in others[:3]) + (" ..." if len(others) > 3 else "")
        notes.append(f"Skipped {len(others)} object(s) that are not meshes: {names}.")
    if len(jobs) > 1:
        notes.append(f"Texturing {len(jobs)} objects one after another.")
    return jobs, notes


def prepare_generate(context):
    scene = context.scene.csd
    prefs = preferences.get(context)
    prompt = require_prompt(scene.prompt)
    launch = engine_launch(prefs)
    settings = settings_mod.generate_settings(scene.as_dict(), preferences.as_dict(prefs))
    job_dir = _new_job_dir("generate", prompt)
    try:
        jobs_mod.write_job(job_dir, "generate", settings)
    except OSError as exc:
        jobs_mod.remove_tree(job_dir)
        raise UserError(f"The job folder could not be written: {exc}.", "Check free disk space.") from None
    payload = {"prompt": prompt, "location": tuple(context.scene.cursor.location)}
    return [_job("generate", result_import.short(prompt, 30), job_dir, launch, prefs, payload)], []


def _image_texture_uv(obj) -> str | None:
    """The UV map an object's image texture uses, when it has one (None when it has no image texture)."""
    mesh = obj.data
    for slot in obj.material_slots:
        mat = slot.material
        if mat is None or mat.node_tree is None:
            continue
        images = [n for n in mat.node_tree.nodes if n.type == 'TEX_IMAGE' and n.image is not None]
        if not images:
            continue
        uv_nodes = [n for n in mat.node_tree.nodes if n.type == 'UVMAP' and n.uv_map in mesh.uv_layers]
        if uv_nodes:
            return uv_nodes[0].uv_map
        for layer in mesh.uv_layers:
            if layer.active_render:
                return layer.name
        return mesh.uv_layers.active.name if mesh.uv_layers.active else None
    return None


def prepare_edit(context):
    scene = context.scene.csd
    prefs = preferences.get(context)
    obj = context.active_object
    if obj is None or not obj.select_get():
        raise UserError("No object is selected to edit.",
                        "Select an object textured or generated by CSD, or any mesh with an image texture.")
    if obj.type != 'MESH':
        raise UserError(f"'{obj.name}' is {mesh_export.describe_type(obj)}, not a mesh.", "Select a textured mesh.")
    mesh_export.check_mesh_object(obj)
    target = require_prompt(scene.target_prompt, "target prompt")
    require_prompt(scene.edit_prompt, "edit prompt")
    stored = obj.get(result_import.PROP_RESULT)
    source_task = obj.get(result_import.PROP_TASK) or "texture"
    uv_map = obj.get(result_import.PROP_UV_MAP)
    ours = bool(stored) and Path(str(stored)).is_dir()
    texture_uv = None if ours else _image_texture_uv(obj)
    if not ours and texture_uv is None:
        raise UserError(f"'{obj.name}' has no texture to edit.",
                        "Texture it first (Texture Selected), or pick an object made by Generate Asset "
                        "or one with an image texture and a UV map.")
    launch = engine_launch(prefs)
    job_dir = _new_job_dir("edit", obj.name)
    try:
        if ours:
            jobs_mod.link_or_copy_tree(Path(str(stored)), job_dir / "source")
            source = "source"
        else:
            source_task = "texture"
            uv_map = texture_uv
            mesh_export.export_glb(obj, str(job_dir / "source.glb"), context)
            source = "source.glb"
        mode = "object" if (source_task == "generate" and scene.edit_geometry) else "material"
        settings = settings_mod.edit_settings(scene.as_dict(), preferences.as_dict(prefs))
        if mode == "material":
            settings.pop("edit_geometry", None)
        jobs_mod.write_job(job_dir, "edit", settings, source=source)
    except UserError:
        jobs_mod.remove_tree(job_dir)
        raise
    except (OSError, RuntimeError) as exc:
        jobs_mod.remove_tree(job_dir)
        raise UserError(f"The edit job could not be prepared: {exc}.", "Check free disk space.") from None
    if mode == "material" and (not uv_map or uv_map not in obj.data.uv_layers):
        jobs_mod.remove_tree(job_dir)
        raise UserError(f"'{obj.name}' lost the UV map its texture uses.", "Texture it again, then edit.")
    counts = {"vertices": len(obj.data.vertices), "loops": len(obj.data.loops), "polygons": len(obj.data.polygons)}
    payload = dict(_object_ref(obj), prompt=target, uv_map=uv_map, needs_uvs=False, mode=mode,
                   source_task=source_task, counts=counts)
    return [_job("edit", obj.name, job_dir, launch, prefs, payload)], []


# -- running jobs ------------------------------------------------------------------------------

def _import_job(job, context, prefs) -> str:
    storage = prefs.image_storage if prefs else 'PACK'
    results = preferences.results_root()
    if job.task == "texture":
        return result_import.import_texture(job, storage, results)
    if job.task == "generate":
        return result_import.import_generated(job, context, results)
    if job.payload.get("mode") == "object":
        return result_import.import_edited_object(job, context, results)
    return result_import.import_texture(job, storage, results)


class Driver:
    """Follows one action's jobs through the queue and imports each result when it is ready.

    The modal operator calls ``tick`` from its timer; background mode calls ``run``.
    """

    def __init__(self, jobs: list, notes: list | None = None):
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
        if self._overlay_job is not active and "overlay" in active.payload:
            positions, triangles, uvs = active.payload["overlay"]
            preview.set_overlay_geometry(active.id, positions, triangles, uvs)
            self._overlay_job = active
        preview.update_overlay(active, bool(prefs and prefs.viewport_preview))

    def _import(self, job, context) -> None:
        outcome = job.outcome
        if outcome is None or not outcome.ok:
            message = outcome.message if outcome else "The engine ended without a result."
            job.finish(False, f"{job.describe()} failed: {message}", outcome.hint if outcome else "")
            QUEUE.record(job)
            return
        prefs = preferences.get(context)
        try:
            message = _import_job(job, context, prefs)
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

    def run(self, context, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.tick(context):
            if deadline is not None and time.monotonic() > deadline:
                self.cancel("Timed out.")
                deadline = None
            time.sleep(SYNC_POLL_S)
        preview.clear_overlay()


class _JobOperator:
    bl_options = {'REGISTER', 'UNDO'}

    def prepare(self, context):
        raise NotImplementedError

    def execute(self, context):
        return self._start(context, modal=False)

    def invoke(self, context, event):
        return self._start(context, modal=not bpy.app.background and context.window is not None)

    def _start(self, context, modal: bool):
        try:
            jobs, notes = self.prepare(context)
        except UserError as exc:
            set_report("ERROR", exc.message, exc.hint)
            self.report({'ERROR'}, exc.text())
            redraw(context)
            return {'CANCELLED'}
        driver = Driver(jobs, notes)
        for note in driver.notes:
            self.report({'INFO'}, note)
        set_report("INFO", " ".join(driver.notes) if driver.notes else f"{jobs[0].describe()} started.")
        if not modal:
            driver.run(context)
            return self._finish(driver)
        self._driver = driver
        wm = context.window_manager
        self._timer = wm.event_timer_add(POLL_INTERVAL_S, window=context.window)
        wm.modal_handler_add(self)
        driver.tick(context)
        redraw(context)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        if event.type != 'TIMER' or event.timer is not self._timer:
            return {'PASS_THROUGH'}
        done = self._driver.tick(context)
        redraw(context)
        if not done:
            return {'RUNNING_MODAL'}
        context.window_manager.event_timer_remove(self._timer)
        preview.clear_overlay()
        return self._finish(self._driver)

    def cancel(self, context):
        # Blender ends modal operators when a file is loaded or the window closes.
        self._driver.cancel("Stopped because Blender ended the operation; nothing was changed.")
        for job in self._driver.jobs:  # nobody will poll these any more: wait for the engine to exit
            if job.state in q.ACTIVE_STATES:
                job.wait(3.0)
                if job.state in q.ACTIVE_STATES and job.process is not None:
                    job.process.kill()
                    job.wait(2.0)
        try:
            context.window_manager.event_timer_remove(self._timer)
        except Exception:
            pass
        preview.clear_overlay()

    def _finish(self, driver):
        for job in driver.jobs:
            report = job.report
            if report is None:
                continue
            level = report.level if report.level in ('INFO', 'WARNING', 'ERROR') else 'INFO'
            self.report({level}, report.message + (f" {report.hint}" if report.hint and level != 'INFO' else ""))
        redraw()
        return {'FINISHED'} if driver.imported else {'CANCELLED'}


class CSD_OT_texture_selected(_JobOperator, bpy.types.Operator):
    """Texture the selected mesh objects from the prompt (each gets a new material; earlier ones are kept)"""

    bl_idname = "csd.texture_selected"
    bl_label = "Texture Selected"

    def prepare(self, context):
        return prepare_texture(context)


class CSD_OT_generate_asset(_JobOperator, bpy.types.Operator):
    """Generate a new textured 3D asset from the prompt, placed at the 3D cursor"""

    bl_idname = "csd.generate_asset"
    bl_label = "Generate Asset"

    def prepare(self, context):
        return prepare_generate(context)


class CSD_OT_apply_edit(_JobOperator, bpy.types.Operator):
    """Edit the active object's texture toward the target prompt and away from the edit prompt (a new revision; the original stays)"""

    bl_idname = "csd.apply_edit"
    bl_label = "Apply Edit"

    def prepare(self, context):
        return prepare_edit(context)


class CSD_OT_cancel(bpy.types.Operator):
    """Stop the running job and the ones waiting (your scene stays as it was)"""

    bl_idname = "csd.cancel"
    bl_label = "Cancel"
    bl_options = {'INTERNAL'}

    job_id: IntProperty(name="Job", default=0, description="The job to cancel; 0: all of them")

    def execute(self, context):
        if self.job_id:
            for job in QUEUE.jobs:
                if job.id == self.job_id:
                    job.cancel("Cancelled.")
                    QUEUE.record(job)
        else:
            QUEUE.cancel_all("Cancelled.")
        redraw(context)
        return {'FINISHED'}


class CSD_OT_dismiss_report(bpy.types.Operator):
    """Hide this message"""

    bl_idname = "csd.dismiss_report"
    bl_label = "Dismiss"
    bl_options = {'INTERNAL'}

    def execute(self, context):
        QUEUE.last_report = None
        redraw(context)
        return {'FINISHED'}


class CSD_OT_open_folder(bpy.types.Operator):
    """Open the job folder (inputs, engine log, outputs) in the file browser"""

    bl_idname = "csd.open_folder"
    bl_label = "Open Job Folder"
    bl_options = {'INTERNAL'}

    path: bpy.props.StringProperty(subtype='DIR_PATH')

    def execute(self, context):
        if not self.path or not Path(self.path).exists():
            self.report({'WARNING'}, "The folder no longer exists.")
            return {'CANCELLED'}
        bpy.ops.wm.path_open(filepath=self.path)
        return {'FINISHED'}


# -- engine set-up and check -----------------------------------------------------------------

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
        import sys
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
        redraw(context)
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
        except engine_env.EngineUnavailable as exc:
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
        from .exchange.process import engine_env as make_env
        log = preferences.user_dir() / "check-engine.log"
        try:
            log.unlink()
        except OSError:
            pass
        # cwd: the log's folder, so the engine found is the one on PYTHONPATH, not an "engine" folder
        # wherever Blender was started.
        cmd = engine_env.BackgroundCommand(engine_env.check_command(python, models), log, cwd=log.parent,
                                           env=make_env(preferences.engine_source(prefs),
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
        redraw()
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
        set_report("ERROR", message, hint)
        self.report({'ERROR'}, f"{message} {hint}".strip())
        redraw()
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
        redraw(context)
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
        set_report(level, message, hint)
        self.report({level}, f"{message} {hint}".strip() if level == "ERROR" else message)
        redraw()
        return {'FINISHED'} if download.ok else {'CANCELLED'}

    def execute(self, context):
        download = self._begin(context)
        if download is None:
            return {'CANCELLED'}
        while not download.poll():
            time.sleep(SYNC_POLL_S)
        return self._end(download)

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        download = self._begin(context)
        if download is None:
            return {'CANCELLED'}
        self._download = download
        self._timer = context.window_manager.event_timer_add(POLL_INTERVAL_S, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        if event.type != 'TIMER' or event.timer is not self._timer:
            return {'PASS_THROUGH'}
        done = self._download.poll()
        redraw(context)
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
        redraw(context)
        return {'FINISHED'}


classes = (CSD_OT_texture_selected, CSD_OT_generate_asset, CSD_OT_apply_edit, CSD_OT_cancel,
           CSD_OT_dismiss_report, CSD_OT_open_folder, CSD_OT_setup_engine, CSD_OT_setup_engine_cancel,
           CSD_OT_check_engine, CSD_OT_download_model, CSD_OT_download_model_cancel)


register, unregister = bpy.utils.register_classes_factory(classes)
