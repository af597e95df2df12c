"""Every failure ends with a clear message and leaves the scene exactly as it was."""

from __future__ import annotations

import signal
import time
from importlib import import_module

import pytest

from conftest import ADDON_MODULE, fake, snapshot


def mod(name):
    return import_module(f"{ADDON_MODULE}.{name}")


def report():
    return mod("exchange.queue").QUEUE.last_report


def run(bpy, op="texture_selected"):
    """Run an action as a script does; an ERROR report reaches scripts as a RuntimeError."""
    try:
        return getattr(bpy.ops.csd, op)('EXEC_DEFAULT', True)
    except RuntimeError as exc:
        assert "Error:" in str(exc)
        return {'CANCELLED'}


def expect_refused(bpy, op, *words):
    before = snapshot(bpy)
    result = run(bpy, op)
    assert result == {'CANCELLED'}
    rep = report()
    assert rep is not None and rep.level == "ERROR"
    text = (rep.message + " " + rep.hint).lower()
    for word in words:
        assert word.lower() in text, text
    assert "traceback" not in text
    assert snapshot(bpy) == before
    assert not mod("exchange.queue").QUEUE.busy
    return rep


def test_nothing_selected(addon, bpy):
    bpy.ops.object.select_all(action='DESELECT')
    expect_refused(bpy, "texture_selected", "nothing is selected", "select")


def test_non_mesh_selected(addon, bpy):
    bpy.ops.object.select_all(action='DESELECT')
    bpy.ops.object.camera_add()
    bpy.ops.ed.undo_push(message="camera")
    expect_refused(bpy, "texture_selected", "camera", "select one or more mesh")


def test_empty_prompt(addon, bpy):
    bpy.context.scene.csd.prompt = "   "
    expect_refused(bpy, "texture_selected", "prompt is empty")


def test_mesh_without_faces(addon, bpy):
    bpy.ops.object.select_all(action='DESELECT')
    mesh = bpy.data.meshes.new("Edges")
    mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [(0, 1), (1, 2)], [])
    obj = bpy.data.objects.new("Edges", mesh)
    bpy.context.collection.objects.link(obj)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    expect_refused(bpy, "texture_selected", "no faces")


def test_zero_scale(addon, bpy):
    bpy.context.active_object.scale = (1.0, 0.0, 1.0)
    bpy.context.view_layer.update()
    expect_refused(bpy, "texture_selected", "zero scale")


def test_several_objects_one_unusable_refuses_all(addon, bpy):
    cube = bpy.context.active_object
    bpy.ops.mesh.primitive_plane_add(location=(5, 0, 0))
    bpy.context.active_object.scale = (0, 0, 0)
    cube.select_set(True)
    bpy.context.view_layer.update()
    expect_refused(bpy, "texture_selected", "zero scale")


def test_engine_python_missing(addon, bpy):
    mod("preferences").get().engine_python = "/nonexistent/engine python/bin/python"
    expect_refused(bpy, "texture_selected", "not found", "set up engine")


def test_engine_python_without_torch(addon, bpy, tmp_path):
    import sys

    # The bpy venv's own Python has numpy but no PyTorch.
    mod("preferences").get().engine_python = sys.executable
    expect_refused(bpy, "texture_selected", "no pytorch", "set up engine")


def test_no_engine_configured(addon, bpy):
    mod("preferences").get().engine_python = ""
    expect_refused(bpy, "texture_selected", "no engine python", "set up engine")


@pytest.mark.parametrize("code,kind,words", [
    (5, "out_of_memory", ["ran out of", "draft"]),
    (2, "bad_input", ["cannot be used"]),
    (3, "model_not_found", ["not on this machine"]),
    (4, "device", ["cuda"]),
])
def test_engine_errors(addon, bpy, code, kind, words):
    messages = {"out_of_memory": "The GPU ran out of memory.", "bad_input": "The mesh cannot be used.",
                "model_not_found": "Model 'x' is not on this machine.", "device": "CUDA was requested but absent."}
    fake(error={"kind": kind, "message": messages[kind], "hint": "", "exit_code": code})
    rep = expect_refused(bpy, "texture_selected", *words)
    assert rep.job_dir  # the failed job's folder is kept for its log


def test_engine_out_of_memory_without_result(addon, bpy):
    fake(exit_code=5)
    expect_refused(bpy, "texture_selected", "out of memory", "render size")


def test_engine_crash_mid_job(addon, bpy):
    fake(steps=5, crash_at=2)
    rep = expect_refused(bpy, "texture_selected", "sigkill", "unexpectedly")
    assert "engine.log" in rep.hint


@pytest.mark.parametrize("exit_code, words", [(0, "finished but wrote no result"), (1, "before finishing")])
def test_engine_exits_without_result(addon, bpy, exit_code, words):
    fake(exit_code=exit_code, steps=1)
    expect_refused(bpy, "texture_selected", words)


@pytest.mark.parametrize("name, words", [("../../../../etc/passwd", ("leaves its folder",)),
                                         ("texture\x00.png", ("control characters",))])
def test_result_outside_job_folder_is_refused(addon, bpy, name, words):
    fake(raw_outputs={"texture": name})
    expect_refused(bpy, "texture_selected", "output was refused", "'texture'", *words, "unchanged")


def _start(bpy, op="texture"):
    """The modal path without a window: build the jobs and a JobFollower, as invoke() does."""
    build = mod("build_jobs")
    prepare = {"texture": build.prepare_texture, "generate": build.prepare_generate, "edit": build.prepare_edit}[op]
    jobs, notes = prepare(bpy.context)
    return mod("job_follower").JobFollower(jobs, notes)


def _tick_until(bpy, driver, predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        driver.tick(bpy.context)
        time.sleep(0.02)


@pytest.mark.parametrize("moment", ["queued", "running", "ended"])
def test_cancel_at_any_moment(addon, bpy, moment):
    q = mod("exchange.queue")
    before = snapshot(bpy)
    fake(steps=400, step_s=0.02)
    driver = _start(bpy)
    job = driver.jobs[0]
    if moment == "running":
        _tick_until(bpy, driver, lambda: job.progress.step >= 2)
    elif moment == "ended":
        fake(steps=1)
        job.env_extra = {}
        job.start()
        job.wait(20)
        assert job.state == q.ENDED
    t0 = time.monotonic()
    mod("exchange.queue").QUEUE.cancel_all("Cancelled.")
    _tick_until(bpy, driver, lambda: driver.done)
    assert time.monotonic() - t0 < 5
    assert job.state == q.CANCELLED
    assert snapshot(bpy) == before
    assert not job.job_dir.exists()  # cancelled job folders are removed
    assert "unchanged" in job.report.hint


def test_cancel_ignored_is_killed(addon, bpy, monkeypatch):
    process = mod("exchange.process")
    monkeypatch.setattr(process, "CANCEL_GRACE_S", 0.5)
    fake(steps=400, step_s=0.02, ignore_cancel=True)
    driver = _start(bpy)
    job = driver.jobs[0]
    _tick_until(bpy, driver, lambda: job.progress.step >= 1)
    job.cancel()
    _tick_until(bpy, driver, lambda: driver.done, timeout=15)
    assert job.state == "cancelled" and job.process.returncode == -signal.SIGKILL


def test_engine_killed_from_outside(addon, bpy):
    before = snapshot(bpy)
    fake(steps=400, step_s=0.02)
    driver = _start(bpy)
    job = driver.jobs[0]
    _tick_until(bpy, driver, lambda: job.progress.step >= 1)
    job.process.proc.send_signal(signal.SIGKILL)
    _tick_until(bpy, driver, lambda: driver.done)
    assert job.state == "failed" and "SIGKILL" in job.report.message
    assert snapshot(bpy) == before


def test_file_closed_while_running(addon, bpy):
    fake(steps=400, step_s=0.02)
    driver = _start(bpy)
    job = driver.jobs[0]
    _tick_until(bpy, driver, lambda: job.progress.step >= 1)
    bpy.ops.wm.read_homefile(use_empty=True)  # load_pre stops the job
    assert job.state == "cancelled" and job.process.returncode is not None
    assert "file was closed" in job.report.message
    assert len(bpy.data.objects) == 0 and len(bpy.data.materials) == 0


def test_object_deleted_while_running(addon, bpy):
    fake(steps=30, step_s=0.02, outputs={"texture": str(_png(bpy))})
    driver = _start(bpy)
    job = driver.jobs[0]
    _tick_until(bpy, driver, lambda: job.progress.step >= 1)
    bpy.data.objects.remove(bpy.data.objects["Cube"])
    before = snapshot(bpy)
    _tick_until(bpy, driver, lambda: driver.done)
    assert job.state == "failed" and "deleted" in job.report.message
    assert snapshot(bpy) == before


def test_second_job_waits_in_line(addon, bpy):
    q = mod("exchange.queue")
    fake(steps=20, step_s=0.02, outputs={"texture": str(_png(bpy))})
    first = _start(bpy)
    second = _start(bpy)
    assert any("Queued behind" in n for n in second.notes)
    first.tick(bpy.context)
    assert first.jobs[0].state == q.RUNNING and second.jobs[0].state == q.QUEUED
    deadline = time.monotonic() + 60
    while not (first.done and second.done):  # in the UI each action's modal timer ticks its own driver
        assert time.monotonic() < deadline
        first.tick(bpy.context)
        second.tick(bpy.context)
        time.sleep(0.02)
    assert first.jobs[0].state == second.jobs[0].state == "done"
    assert first.jobs[0].ended_at <= second.jobs[0].started_at


_PNG = {}


def _png(bpy):
    """A small real PNG, written by Blender itself."""
    if "path" not in _PNG:
        import tempfile
        from pathlib import Path

        path = Path(tempfile.mkdtemp()) / "texture.png"
        image = bpy.data.images.new("tmp", 8, 8)
        image.pixels = [1.0, 0.0, 0.0, 1.0] * 64
        image.filepath_raw = str(path)
        image.file_format = 'PNG'
        image.save()
        bpy.data.images.remove(image)
        _PNG["path"] = path
    return _PNG["path"]
