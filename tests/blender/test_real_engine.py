"""The add-on driving the REAL engine (the copy vendored in the installed extension) on the CPU.

Tiny sizes and a tiny or the bundled prior keep each job to seconds. Skipped only when the
engine's Python (.venv, or CSD_ENGINE_PYTHON) is missing; generate and edit skip until the
engine's `run` accepts those tasks.
"""

from __future__ import annotations

import os
import subprocess
import time
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest

from conftest import ADDON_MODULE, ENGINE_PYTHON, ROOT, snapshot
from test_failures import run


def mod(name):
    return import_module(f"{ADDON_MODULE}.{name}")


@pytest.fixture(scope="session")
def prior_model(tmp_path_factory):
    if not ENGINE_PYTHON.exists():
        pytest.skip(f"no engine Python at {ENGINE_PYTHON} (run scripts/setup.sh)")
    if (ROOT / "engine" / "prior" / "bundled" / "model_index.json").is_file():
        return "bundled"
    shared = os.environ.get("CSD_TEST_PRIOR")  # made once by scripts/test_blender.sh for every bpy version
    if shared and (Path(shared) / "model_index.json").is_file():
        return shared
    if not (ROOT / "tests" / "tiny_models.py").is_file():
        pytest.skip("neither the bundled prior nor tests/tiny_models.py is available")
    folder = tmp_path_factory.mktemp("tiny prior ü") / "pixel"
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from tiny_models import make_tiny_pixel_prior; make_tiny_pixel_prior(Path(sys.argv[2]))")
    subprocess.run([str(ENGINE_PYTHON), "-c", code, str(ROOT / "tests"), str(folder)], check=True,
                   capture_output=True, timeout=300)
    return str(folder)


@pytest.fixture
def real(addon, bpy, prior_model):
    prefs = mod("preferences").get()
    prefs.engine_source = ""  # the engine shipped inside the extension
    prefs.texture_model = prior_model
    return prefs


def _report():
    return mod("exchange.queue").QUEUE.last_report


HEAVY = os.environ.get("CSD_BLENDER_HEAVY") == "1"
heavy = pytest.mark.skipif(not HEAVY, reason="several engine runs: set CSD_BLENDER_HEAVY=1 "
                                             "(scripts/test_blender.sh does for the newest bpy)")


@pytest.mark.skipif(HEAVY, reason="covered by test_texture_undo_and_edit_real_engine")
def test_texture_real_engine(real, bpy):
    before = snapshot(bpy)
    assert run(bpy) == {'FINISHED'}, _report()
    cube = bpy.data.objects["Cube"]
    mats = [s.material for s in cube.material_slots if s.material]
    assert len(mats) == 1 and mats[0].name.startswith("CSD a red sphere")
    image = next(n.image for n in mats[0].node_tree.nodes if n.type == 'TEX_IMAGE')
    assert image.packed_file is not None and tuple(image.size) == (32, 32)
    assert [layer.name for layer in cube.data.uv_layers] == ["UVMap"]
    bpy.ops.ed.undo()
    assert snapshot(bpy) == before


@heavy
def test_texture_undo_and_edit_real_engine(real, bpy):
    """One click textures a UV-mapped cube and an unmapped sphere in turn; one undo reverts both."""
    bpy.ops.mesh.primitive_uv_sphere_add(segments=12, ring_count=6, location=(4, 0, 0))
    sphere = bpy.context.active_object
    while sphere.data.uv_layers:
        sphere.data.uv_layers.remove(sphere.data.uv_layers[0])
    sphere.data.update()
    bpy.data.objects["Cube"].select_set(True)
    bpy.ops.ed.undo_push(message="cube and sphere")
    before = snapshot(bpy)

    assert run(bpy) == {'FINISHED'}, _report()
    cube, sphere = bpy.data.objects["Cube"], bpy.data.objects["Sphere"]
    for obj in (cube, sphere):
        mats = [s.material for s in obj.material_slots if s.material]
        assert len(mats) == 1 and mats[0].name.startswith("CSD a red sphere")
        image = next(n.image for n in mats[0].node_tree.nodes if n.type == 'TEX_IMAGE')
        assert image.packed_file is not None and tuple(image.size) == (32, 32)
        pixels = np.empty(32 * 32 * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
        assert np.isfinite(pixels).all()
        assert (Path(obj["csd_result"]) / "result.json").is_file()
    assert [layer.name for layer in cube.data.uv_layers] == ["UVMap"]  # the artist's UVs were used
    assert [layer.name for layer in sphere.data.uv_layers] == ["CSD UV"]  # the engine unwrapped
    uv = np.empty(len(sphere.data.loops) * 2, dtype=np.float32)
    sphere.data.uv_layers["CSD UV"].data.foreach_get("uv", uv)
    assert 0.0 <= uv.min() and uv.max() <= 1.0 and uv.std() > 0.05

    bpy.ops.ed.undo()
    assert snapshot(bpy) == before
    bpy.ops.ed.redo()
    assert bpy.data.objects["Cube"]["csd_revision"] == 1

    bpy.ops.object.select_all(action='DESELECT')
    cube = bpy.data.objects["Cube"]
    cube.select_set(True)
    bpy.context.view_layer.objects.active = cube
    scene = bpy.context.scene.csd
    scene.target_prompt, scene.edit_prompt, scene.edit_steps = "a blue sphere", "red", 2
    result = run(bpy, "apply_edit")
    _skip_if_unsupported("edit")
    assert result == {'FINISHED'}, _report()
    assert bpy.data.objects["Cube"]["csd_revision"] == 2


def test_cancel_real_engine(real, bpy):
    bpy.context.scene.csd.steps = 5000
    before = snapshot(bpy)
    jobs, notes = mod("build_jobs").prepare_texture(bpy.context)
    driver = mod("job_follower").JobFollower(jobs, notes)
    job = jobs[0]
    deadline = time.monotonic() + 120
    driver.tick(bpy.context)
    while job.progress.events < 1:  # cancel as soon as the engine has said anything
        assert time.monotonic() < deadline and job.state == "running", (job.state, job.outcome)
        time.sleep(0.05)
        driver.tick(bpy.context)
    t0 = time.monotonic()
    bpy.ops.csd.cancel()
    while not driver.done:
        driver.tick(bpy.context)
        time.sleep(0.05)
    assert time.monotonic() - t0 < 5
    assert job.state == "cancelled" and job.process.returncode in (130, -15)
    assert snapshot(bpy) == before


def _skip_if_unsupported(task):
    rep = _report()
    if rep is not None and f"cannot run '{task}' jobs" in rep.message:
        pytest.skip(f"the engine does not run {task} jobs yet: {rep.message}")


@heavy
def test_generate_asset_real_engine(real, bpy):
    real.generate_model = real.texture_model
    real.generate_refine_model = real.texture_model
    real.extra_settings = ('{"generate": {"stage1": {"render_size": 16}, "stage2": {"render_size": 16}, '
                           '"extract": {"resolution": 32, "target_triangles": 500}, "texture_size": 32}}')
    bpy.context.scene.csd.generate_steps = 2
    bpy.context.scene.csd.refine_steps = 2
    bpy.context.scene.csd.prompt = "a blue cube"
    count = len(bpy.data.objects)
    result = run(bpy, "generate_asset")
    _skip_if_unsupported("generate")
    assert result == {'FINISHED'}, _report()
    assert len(bpy.data.objects) > count and "a blue cube" in bpy.data.objects
