"""The panel's actions, as thin operators: each builds its jobs (build_jobs), hands them to a
JobFollower (job_follower), and reports. The engine's set-up and checks are in engine_setup.

In the UI a job action is a modal operator whose timer follows the engine, so Blender never
blocks; in background mode (``blender -b``, where timers never fire) and when called from a
script (``bpy.ops.csd.texture_selected()``) the same code runs synchronously.
"""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import IntProperty

from . import build_jobs
from .blender import preview
from .exchange.errors import UserError
from .exchange.queue import QUEUE
from .job_follower import JobFollower

POLL_INTERVAL_S = 0.25


class _JobOperator:
    """A job action; each names in ``prepare`` the build_jobs function that makes its jobs."""

    bl_options = {'REGISTER', 'UNDO'}

    def execute(self, context):
        return self._start(context, modal=False)

    def invoke(self, context, event):
        return self._start(context, modal=not bpy.app.background and context.window is not None)

    def _start(self, context, modal: bool):
        try:
            jobs, notes = self.prepare(context)
        except UserError as exc:
            QUEUE.set_report("ERROR", exc.message, exc.hint)
            self.report({'ERROR'}, exc.text())
            preview.redraw_panels(context)
            return {'CANCELLED'}
        follower = JobFollower(jobs, notes)
        for note in follower.notes:
            self.report({'INFO'}, note)
        QUEUE.set_report("INFO", " ".join(follower.notes) if follower.notes else f"{jobs[0].describe()} started.")
        if not modal:
            follower.run(context)
            return self._finish(follower)
        self._follower = follower
        wm = context.window_manager
        self._timer = wm.event_timer_add(POLL_INTERVAL_S, window=context.window)
        wm.modal_handler_add(self)
        follower.tick(context)
        preview.redraw_panels(context)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        if event.type != 'TIMER' or event.timer is not self._timer:
            return {'PASS_THROUGH'}
        done = self._follower.tick(context)
        preview.redraw_panels(context)
        if not done:
            return {'RUNNING_MODAL'}
        context.window_manager.event_timer_remove(self._timer)
        preview.clear_overlay()
        return self._finish(self._follower)

    def cancel(self, context):
        # Blender ends modal operators when a file is loaded or the window closes.
        self._follower.abandon("Stopped because Blender ended the operation; nothing was changed.")
        try:
            context.window_manager.event_timer_remove(self._timer)
        except Exception:
            pass
        preview.clear_overlay()

    def _finish(self, follower):
        for job in follower.jobs:
            report = job.report
            if report is None:
                continue
            level = report.level if report.level in ('INFO', 'WARNING', 'ERROR') else 'INFO'
            self.report({level}, report.message + (f" {report.hint}" if report.hint and level != 'INFO' else ""))
        preview.redraw_panels()
        return {'FINISHED'} if follower.imported else {'CANCELLED'}


class CSD_OT_texture_selected(_JobOperator, bpy.types.Operator):
    """Texture the selected mesh objects from the prompt (each gets a new material; earlier ones are kept)"""

    bl_idname = "csd.texture_selected"
    bl_label = "Texture Selected"

    prepare = staticmethod(build_jobs.prepare_texture)


class CSD_OT_generate_asset(_JobOperator, bpy.types.Operator):
    """Generate a new textured 3D asset from the prompt, placed at the 3D cursor"""

    bl_idname = "csd.generate_asset"
    bl_label = "Generate Asset"

    prepare = staticmethod(build_jobs.prepare_generate)


class CSD_OT_apply_edit(_JobOperator, bpy.types.Operator):
    """Edit the active object's texture toward the target prompt and away from the edit prompt (a new revision; the original stays)"""

    bl_idname = "csd.apply_edit"
    bl_label = "Apply Edit"

    prepare = staticmethod(build_jobs.prepare_edit)


class CSD_OT_fetch_remote_jobs(_JobOperator, bpy.types.Operator):
    """Import the results of this file's remote jobs that went on while it was closed (a job still running is followed to its end)"""

    bl_idname = "csd.fetch_remote_jobs"
    bl_label = "Fetch finished remote jobs"

    prepare = staticmethod(build_jobs.prepare_fetch_remote)


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
        preview.redraw_panels(context)
        return {'FINISHED'}


class CSD_OT_dismiss_report(bpy.types.Operator):
    """Hide this message"""

    bl_idname = "csd.dismiss_report"
    bl_label = "Dismiss"
    bl_options = {'INTERNAL'}

    def execute(self, context):
        QUEUE.last_report = None
        preview.redraw_panels(context)
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


classes = (CSD_OT_texture_selected, CSD_OT_generate_asset, CSD_OT_apply_edit, CSD_OT_fetch_remote_jobs,
           CSD_OT_cancel, CSD_OT_dismiss_report, CSD_OT_open_folder)


register, unregister = bpy.utils.register_classes_factory(classes)
