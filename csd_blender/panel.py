"""View3D > Sidebar > CSD, and the job's progress in the status bar."""

from __future__ import annotations

import textwrap

import bpy

from . import preferences
from .blender import preview
from .exchange import queue as q
from .exchange.errors import UserError
from .exchange.progress import DOWNLOADING, format_duration
from .exchange.queue import QUEUE
from .exchange.settings import BUNDLED


def _wrapped(layout, text: str, icon: str = 'NONE', width: int = 42) -> None:
    lines = textwrap.wrap(text, width) or [""]
    col = layout.column(align=True)
    for index, line in enumerate(lines):
        col.label(text=line, icon=icon if index == 0 else 'BLANK1' if icon != 'NONE' else 'NONE')


def _panel_width_chars(context) -> int:
    region = context.region
    width = region.width if region is not None else 300
    return max(20, int(width / 7.5))


def progress_text(job) -> str:
    p = job.progress
    if job.state == q.QUEUED:
        return "Waiting"
    if job.state == q.CANCELLING:
        return "Cancelling..."
    if p.stage == DOWNLOADING:
        return p.download_text()
    if p.total_steps and p.step:
        return f"Step {p.step}/{p.total_steps}  {format_duration(job.elapsed_s)}  ETA {format_duration(job.eta_s)}"
    return f"{p.stage.capitalize()}  {format_duration(job.elapsed_s)}"


def draw_jobs(layout):
    jobs = QUEUE.unfinished
    if not jobs:
        return
    box = layout.box()
    active = QUEUE.active or jobs[0]
    row = box.row()
    row.label(text=active.describe(), icon='SORTTIME')
    row.operator("csd.cancel", text="Cancel All" if len(jobs) > 1 else "Cancel", icon='CANCEL').job_id = 0
    box.progress(factor=active.progress.fraction, type='BAR', text=progress_text(active))
    if active.progress.stage not in ("waiting", "starting", "optimising", "finished", DOWNLOADING):
        box.label(text=active.progress.stage.capitalize())
    icon = preview.thumbnail_icon(active)
    if icon:
        box.template_icon(icon_value=icon, scale=6.0)
    for job in jobs:
        if job is active:
            continue
        row = box.row()
        row.label(text=f"Waiting: {job.describe()}", icon='TIME')
        row.operator("csd.cancel", text="", icon='X').job_id = job.id


def draw_report(layout, width):
    report = QUEUE.last_report
    if report is None or QUEUE.busy and report.level == 'INFO':
        return
    box = layout.box()
    icon = {'ERROR': 'ERROR', 'WARNING': 'ERROR'}.get(report.level, 'INFO')
    row = box.row()
    row.alert = report.level == 'ERROR'
    row.label(text={"ERROR": "Problem", "WARNING": "Note"}.get(report.level, "Done"), icon=icon)
    row.operator("csd.dismiss_report", text="", icon='X', emboss=False)
    _wrapped(box, report.message, 'NONE', width)
    if report.hint:
        _wrapped(box, report.hint, 'NONE', width)
    if report.job_dir:
        box.operator("csd.open_folder", icon='FILE_FOLDER').path = report.job_dir


def connection_state(prefs) -> tuple[str, str]:
    """What the panel says about the remote server: (text, icon)."""
    try:
        config = preferences.server_config(prefs)
        config.check_network()
    except UserError as exc:
        return exc.message, 'ERROR'
    active = QUEUE.active
    if active is not None and active.remote is not None and active.process.connection_lost:
        return f"{config.host}: connection lost, retrying", 'ERROR'
    state = preferences.EngineState
    if state.connection_url == config.url and state.connection_ok is not None:
        return (f"{config.host}: connected" if state.connection_ok else f"{config.host}: not reachable at the "
                "last test"), 'LINKED' if state.connection_ok else 'ERROR'
    return f"{config.host}: not tested yet (Test connection, in the preferences)", 'WORLD'


def draw_remote(layout, prefs, width: int) -> None:
    """The remote server's state, and this file's remote jobs that an earlier session left running."""
    box = layout.box()
    text, icon = connection_state(prefs)
    _wrapped(box, f"Remote engine: {text}", icon, width)
    followed = {job.job_dir for job in QUEUE.unfinished}
    records = [r for r in preferences.RemoteJobs.records if r.job_dir not in followed and r.job_dir.is_dir()]
    if not records:
        return
    check = preferences.RemoteJobs.check
    states = check.result if check is not None and check.done and isinstance(check.result, dict) else {}
    col = box.column(align=True)
    col.label(text="Remote jobs of this file:", icon='WORLD')
    for record in records:
        state = states.get(record.job_id, "asking the server..." if check is not None and not check.done else "")
        _wrapped(col, f"{q.TASK_NAMES.get(record.task, record.task)} '{record.label}'"
                 + (f": {state}" if state else ""), 'BLANK1', width)
    box.operator("csd.fetch_remote_jobs", icon='IMPORT')


def draw_region(layout, settings, obj) -> None:
    """The Region choice (for Texture Selected and Apply Edit), what it names, and its feather band."""
    col = layout.column(align=True)
    col.prop(settings, "region")
    if settings.region == 'WHOLE':
        return
    target = obj if obj is not None and obj.type == 'MESH' else None
    if settings.region == 'VERTEX_GROUP':
        if target is not None:
            col.prop_search(settings, "region_vertex_group", target, "vertex_groups", text="")
        else:
            col.prop(settings, "region_vertex_group", text="")
    elif settings.region == 'MATERIAL':
        if target is not None:
            col.prop_search(settings, "region_material", target, "material_slots", text="")
        else:
            col.prop(settings, "region_material", text="")
    elif settings.region == 'SELECTED':
        col.label(text="The faces selected in Edit Mode", icon='FACESEL')
    col.prop(settings, "region_feather_texels")
    col.prop(settings, "region_feather_distance")


class _SidebarPanel:
    """What every CSD panel shares: its place, View3D > Sidebar > CSD."""

    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "CSD"


class CSD_PT_main(_SidebarPanel, bpy.types.Panel):
    bl_label = "CSD"
    bl_idname = "CSD_PT_main"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.csd
        prefs = preferences.get(context)
        width = _panel_width_chars(context)

        col = layout.column()
        col.prop(settings, "prompt", text="", icon='OUTLINER_DATA_FONT', placeholder="Prompt, e.g. a wooden chair")
        col.prop(settings, "negative_prompt")
        row = col.row(align=True)
        row.prop(settings, "quality", text="")
        row.prop(settings, "seed")
        col.prop(settings, "material")
        draw_region(layout, settings, context.active_object)

        busy = QUEUE.busy
        col = layout.column(align=True)
        col.scale_y = 1.3
        col.operator("csd.texture_selected", icon='TEXTURE')
        col.operator("csd.generate_asset", icon='MESH_MONKEY')
        if busy:
            layout.label(text="New jobs wait in line until this one finishes.", icon='INFO')

        draw_jobs(layout)
        if preferences.EngineState.downloading():
            preferences.draw_download(layout.box())
        draw_report(layout, width)
        if preferences.is_remote(prefs):
            draw_remote(layout, prefs, width)
        elif prefs is not None and not prefs.engine_python:
            from .exchange import engine_env
            if not engine_env.venv_python(preferences.default_venv()).exists():
                box = layout.box()
                _wrapped(box, "No engine yet: set it up in the preferences.", 'ERROR', width)
                box.operator("preferences.addon_show", text="Open Preferences", icon='PREFERENCES').module = \
                    preferences.ADDON_ID


class CSD_PT_edit(_SidebarPanel, bpy.types.Panel):
    bl_label = "Edit"
    bl_idname = "CSD_PT_edit"
    bl_parent_id = "CSD_PT_main"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.csd
        obj = context.active_object
        col = layout.column()
        col.prop(settings, "target_prompt")
        col.prop(settings, "edit_prompt")
        row = col.row(align=True)
        row.prop(settings, "edit_w1")
        row.prop(settings, "edit_w2")
        generated = obj is not None and obj.get("csd_task") == "generate"
        sub = col.row()
        sub.enabled = generated
        sub.prop(settings, "edit_geometry")
        col.operator("csd.apply_edit", icon='BRUSH_DATA')
        if obj is not None and obj.get("csd_revision"):
            col.label(text=f"'{obj.name}': revision {obj.get('csd_revision')}", icon='INFO')


class CSD_PT_advanced(_SidebarPanel, bpy.types.Panel):
    bl_label = "Advanced"
    bl_idname = "CSD_PT_advanced"
    bl_parent_id = "CSD_PT_main"
    bl_options = {'DEFAULT_CLOSED'}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        settings = context.scene.csd
        prefs = preferences.get(context)
        col = layout.column()
        col.prop(settings, "guidance_mode")
        if settings.guidance_mode == 'CSD':
            col.prop(settings, "w1")
            sub = col.column(align=True)
            sub.prop(settings, "w2_start")
            sub.prop(settings, "w2_end")
            sub.prop(settings, "w2_anneal_steps")
        else:
            col.prop(settings, "cfg_scale")
        row = col.row()
        model = (prefs.texture_model.strip() if prefs else BUNDLED) or BUNDLED
        row.enabled = model != BUNDLED
        row.prop(settings, "use_controlnet")
        if model == BUNDLED:
            col.label(text="ControlNet needs a Stable Diffusion model", icon='INFO')
        col.prop(settings, "reunwrap")
        col.prop(settings, "use_scene_cameras")
        col = layout.column()
        col.enabled = settings.quality == 'CUSTOM'
        col.prop(settings, "steps")
        col.prop(settings, "render_size")
        col.prop(settings, "texture_size")
        col.prop(settings, "generate_steps")
        col.prop(settings, "refine_steps")
        col.prop(settings, "edit_steps")


def draw_status(self, context):
    """A compact progress bar in the status bar while a job runs."""
    job = QUEUE.active
    if job is None:
        return
    row = self.layout.row(align=True)
    row.progress(factor=job.progress.fraction, type='BAR', text=f"CSD {progress_text(job)}")
    row.operator("csd.cancel", text="", icon='CANCEL').job_id = 0


classes = (CSD_PT_main, CSD_PT_edit, CSD_PT_advanced)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register():
    _register_classes()
    bpy.types.STATUSBAR_HT_header.append(draw_status)


def unregister():
    bpy.types.STATUSBAR_HT_header.remove(draw_status)
    _unregister_classes()
