"""What the add-on does with the engine's results: images, materials, UV maps, objects, undo.

The engine here is the test double (fake_engine/), so these tests pin down the add-on's
side: what it writes into job folders and how it imports what comes back.
test_real_engine.py runs the same actions through the real engine.
"""

from __future__ import annotations

import json
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest

from conftest import ADDON_MODULE, fake, snapshot
from test_failures import _png, run


def mod(name):
    return import_module(f"{ADDON_MODULE}.{name}")


def csd_materials(obj):
    return [s.material for s in obj.material_slots if s.material and s.material.name.startswith("CSD")]


def test_texture_writes_world_space_mesh_and_settings(addon, bpy, tmp_path):
    cube = bpy.data.objects["Cube"]
    cube.rotation_euler = (0.0, 0.0, 0.5)
    cube.modifiers.new("bevel", 'BEVEL')  # modifiers applied, topology changed: UVs still come through
    bpy.context.view_layer.update()
    fake(record=str(tmp_path / "rec"), outputs={"texture": str(_png(bpy))})
    assert run(bpy) == {'FINISHED'}
    job = json.loads((tmp_path / "rec" / "job.json").read_text())
    assert job["protocol"] == 1 and job["task"] == "texture" and job["mesh"] == "mesh.npz"
    settings = job["settings"]
    assert settings["prompt"] == "a red sphere" and settings["steps"] == 2 and settings["render_size"] == 16
    assert settings["prior"]["model"] == "bundled" and settings["prior"]["allow_download"] is False
    assert settings["guidance"]["mode"] == "csd"
    mesh = np.load(tmp_path / "rec" / "mesh.npz")
    assert mesh["positions"].dtype == np.float32 and mesh["triangles"].dtype == np.int32
    assert str(mesh["up_axis"]) == "Z"
    assert mesh["corner_uvs"].shape == (len(mesh["triangles"]), 3, 2)
    assert len(mesh["triangles"]) > 12  # the bevel's faces are there
    centre = mesh["positions"].mean(axis=0)
    assert np.allclose(centre, (1.0, 2.0, 3.0), atol=1e-3)  # world space


def test_texture_import_material_image_and_undo(addon, bpy):
    cube = bpy.data.objects["Cube"]
    old = bpy.data.materials.new("Artist material")
    cube.data.materials.append(old)
    bpy.ops.ed.undo_push(message="artist material")
    before = snapshot(bpy)
    jobs_before = set(mod("preferences").jobs_root().iterdir())
    fake(outputs={"texture": str(_png(bpy))})
    assert run(bpy) == {'FINISHED'}
    cube = bpy.data.objects["Cube"]
    names = [s.material.name for s in cube.material_slots]
    assert names[0] == "Artist material" and names[1].startswith("CSD a red sphere")
    mat = cube.material_slots[1].material
    assert all(p.material_index == 1 for p in cube.data.polygons)
    tex = next(n for n in mat.node_tree.nodes if n.type == 'TEX_IMAGE')
    uv = next(n for n in mat.node_tree.nodes if n.type == 'UVMAP')
    assert tex.image is not None and tex.image.packed_file is not None and tex.image.size[0] == 8
    assert uv.uv_map == "UVMap"
    bsdf = next(n for n in mat.node_tree.nodes if n.type == 'BSDF_PRINCIPLED')
    assert bsdf.inputs["Base Color"].links[0].from_node == tex
    assert cube["csd_task"] == "texture" and Path(cube["csd_result"]).is_dir()
    assert set(mod("preferences").jobs_root().iterdir()) == jobs_before  # removed after success
    bpy.ops.ed.undo()  # one step returns to before the job
    assert snapshot(bpy) == before
    bpy.ops.ed.redo()
    assert len(bpy.data.objects["Cube"].material_slots) == 2


def test_texture_mesh_without_uvs_gets_csd_uv(addon, bpy):
    cube = bpy.data.objects["Cube"]
    while cube.data.uv_layers:
        cube.data.uv_layers.remove(cube.data.uv_layers[0])
    bpy.ops.ed.undo_push(message="no uvs")
    fake(outputs={"texture": str(_png(bpy))}, corner_uvs_from_mesh=True)
    assert run(bpy) == {'FINISHED'}
    cube = bpy.data.objects["Cube"]
    assert [layer.name for layer in cube.data.uv_layers] == ["CSD UV"]
    uv = np.empty(len(cube.data.loops) * 2, dtype=np.float32)
    cube.data.uv_layers["CSD UV"].data.foreach_get("uv", uv)
    assert uv.max() > 0  # written from the engine's per-corner UVs
    mat = csd_materials(cube)[0]
    assert next(n for n in mat.node_tree.nodes if n.type == 'UVMAP').uv_map == "CSD UV"


def test_no_uvs_and_topology_changing_modifier_is_refused(addon, bpy):
    cube = bpy.data.objects["Cube"]
    while cube.data.uv_layers:
        cube.data.uv_layers.remove(cube.data.uv_layers[0])
    cube.modifiers.new("subsurf", 'SUBSURF')
    bpy.ops.ed.undo_push(message="subsurf")
    before = snapshot(bpy)
    assert run(bpy) == {'CANCELLED'}
    assert "uv map" in mod("exchange.queue").QUEUE.last_report.message.lower()
    assert snapshot(bpy) == before


def test_missing_corner_uvs_rolls_back(addon, bpy):
    cube = bpy.data.objects["Cube"]
    while cube.data.uv_layers:
        cube.data.uv_layers.remove(cube.data.uv_layers[0])
    bpy.ops.ed.undo_push(message="no uvs")
    before = snapshot(bpy)
    fake(outputs={"texture": str(_png(bpy))})
    assert run(bpy) == {'CANCELLED'}
    assert "uv layout" in mod("exchange.queue").QUEUE.last_report.message.lower()
    assert snapshot(bpy) == before


def test_texture_several_objects_in_turn_one_undo_step(addon, bpy):
    bpy.ops.mesh.primitive_uv_sphere_add(location=(4, 0, 0))
    bpy.ops.object.camera_add(location=(0, -5, 0))
    bpy.ops.object.select_all(action='SELECT')
    bpy.ops.ed.undo_push(message="three objects")
    before = snapshot(bpy)
    fake(outputs={"texture": str(_png(bpy))})
    assert run(bpy) == {'FINISHED'}
    assert len(csd_materials(bpy.data.objects["Cube"])) == 1
    assert len(csd_materials(bpy.data.objects["Sphere"])) == 1
    bpy.ops.ed.undo()
    assert snapshot(bpy) == before


def test_texture_saved_next_to_blend(addon, bpy, tmp_path):
    mod("preferences").get().image_storage = 'FILE'
    blend = tmp_path / "scène with space.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    fake(outputs={"texture": str(_png(bpy))})
    assert run(bpy) == {'FINISHED'}
    image = csd_materials(bpy.data.objects["Cube"])[0].node_tree.nodes["Image Texture"].image
    assert image.packed_file is None and image.filepath.startswith("//textures/")
    assert (tmp_path / "textures").is_dir() and any((tmp_path / "textures").iterdir())


def test_scene_cameras_are_sent(addon, bpy, tmp_path):
    bpy.ops.object.camera_add(location=(0, -6, 1))
    bpy.data.objects["Cube"].select_set(True)
    bpy.context.scene.csd.use_scene_cameras = True
    fake(record=str(tmp_path / "rec"), outputs={"texture": str(_png(bpy))})
    assert run(bpy) == {'FINISHED'}
    cams = json.loads((tmp_path / "rec" / "job.json").read_text())["settings"]["extra_cameras"]
    assert len(cams) == 1 and np.allclose(np.array(cams[0]["matrix_world"])[:3, 3], (0, -6, 1))


def _glb(bpy, tmp_path) -> Path:
    """A textured GLB made by Blender's exporter, standing in for the engine's mesh.glb."""
    bpy.ops.mesh.primitive_ico_sphere_add(location=(0, 0, 0))
    obj = bpy.context.active_object
    mat = bpy.data.materials.new("m")
    if mat.node_tree is None:  # Blender < 5.0
        mat.use_nodes = True
    tex = mat.node_tree.nodes.new("ShaderNodeTexImage")
    tex.image = bpy.data.images.load(str(_png(bpy)))
    mat.node_tree.links.new(tex.outputs["Color"], mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"])
    obj.data.materials.append(mat)
    path = tmp_path / "mesh.glb"
    bpy.ops.object.select_all(action='DESELECT')
    obj.select_set(True)
    bpy.ops.export_scene.gltf(filepath=str(path), export_format='GLB', use_selection=True)
    bpy.data.objects.remove(obj)
    bpy.ops.ed.undo_push(message="glb made")
    return path


def test_generate_adds_object_at_cursor(addon, bpy, tmp_path):
    glb = _glb(bpy, tmp_path)
    bpy.context.scene.cursor.location = (3.0, -1.0, 0.5)
    bpy.context.scene.csd.prompt = "a blue cube"
    bpy.ops.ed.undo_push(message="cursor")
    before = snapshot(bpy)
    fake(record=str(tmp_path / "rec"), outputs={"glb": str(glb)})
    assert run(bpy, "generate_asset") == {'FINISHED'}
    job = json.loads((tmp_path / "rec" / "job.json").read_text())
    assert job["task"] == "generate" and job["settings"]["stage1"]["steps"] >= 1 and "mesh" not in job
    obj = bpy.data.objects["a blue cube"]
    assert tuple(round(v, 4) for v in obj.location) == (3.0, -1.0, 0.5)
    assert obj["csd_task"] == "generate"
    images = [n.image for s in obj.material_slots for n in s.material.node_tree.nodes if n.type == 'TEX_IMAGE']
    assert images and all(i.packed_file is not None for i in images)
    bpy.ops.ed.undo()
    assert snapshot(bpy) == before


def test_apply_edit_on_textured_object_makes_material_revision(addon, bpy, tmp_path):
    fake(outputs={"texture": str(_png(bpy))})
    assert run(bpy) == {'FINISHED'}
    cube = bpy.data.objects["Cube"]
    first = csd_materials(cube)[0].name
    scene = bpy.context.scene.csd
    scene.target_prompt, scene.edit_prompt = "a blue striped sphere", "red"
    fake(record=str(tmp_path / "rec"), outputs={"texture": str(_png(bpy))})
    assert run(bpy, "apply_edit") == {'FINISHED'}
    job = json.loads((tmp_path / "rec" / "job.json").read_text())
    assert job["task"] == "edit" and job["source"] == "source"
    assert job["settings"]["target_prompt"] == "a blue striped sphere" and job["settings"]["guidance"]["w2_end"] == 0.5
    assert "texture.png" in (tmp_path / "rec" / "source.txt").read_text()  # the previous output, copied in
    cube = bpy.data.objects["Cube"]
    mats = [m.name for m in csd_materials(cube)]
    assert mats[0] == first and "rev 2" in mats[1] and cube["csd_revision"] == 2


def test_apply_edit_on_any_textured_mesh_exports_glb(addon, bpy, tmp_path):
    cube = bpy.data.objects["Cube"]
    mat = bpy.data.materials.new("painted")
    if mat.node_tree is None:  # Blender < 5.0
        mat.use_nodes = True
    tex = mat.node_tree.nodes.new("ShaderNodeTexImage")
    tex.image = bpy.data.images.load(str(_png(bpy)))
    cube.data.materials.append(mat)
    scene = bpy.context.scene.csd
    scene.target_prompt, scene.edit_prompt = "a green cube", "red"
    bpy.ops.ed.undo_push(message="painted")
    fake(record=str(tmp_path / "rec"), outputs={"texture": str(_png(bpy))})
    assert run(bpy, "apply_edit") == {'FINISHED'}
    job = json.loads((tmp_path / "rec" / "job.json").read_text())
    assert job["source"] == "source.glb"
    assert [s.material.name for s in bpy.data.objects["Cube"].material_slots][0] == "painted"
    assert len(csd_materials(bpy.data.objects["Cube"])) == 1


def test_apply_edit_needs_a_texture(addon, bpy):
    scene = bpy.context.scene.csd
    scene.target_prompt, scene.edit_prompt = "a green cube", "red"
    before = snapshot(bpy)
    assert run(bpy, "apply_edit") == {'CANCELLED'}
    assert "no texture to edit" in mod("exchange.queue").QUEUE.last_report.message
    assert snapshot(bpy) == before


def test_apply_edit_geometry_on_generated_makes_object_revision(addon, bpy, tmp_path):
    glb = _glb(bpy, tmp_path)
    bpy.context.scene.csd.prompt = "a blue cube"
    fake(outputs={"glb": str(glb)})
    assert run(bpy, "generate_asset") == {'FINISHED'}
    original = bpy.data.objects["a blue cube"]
    bpy.ops.object.select_all(action='DESELECT')
    original.select_set(True)
    bpy.context.view_layer.objects.active = original
    scene = bpy.context.scene.csd
    scene.target_prompt, scene.edit_prompt, scene.edit_geometry = "a blue cone", "cube", True
    fake(record=str(tmp_path / "rec"), outputs={"glb": str(glb)})
    assert run(bpy, "apply_edit") == {'FINISHED'}
    assert json.loads((tmp_path / "rec" / "job.json").read_text())["settings"]["edit_geometry"] is True
    revision = bpy.data.objects["a blue cube rev 2"]
    assert revision["csd_revision"] == 2 and "a blue cube" in bpy.data.objects
    assert original.hide_get()


def test_setup_engine_respects_online_access(addon, bpy):
    assert bpy.app.online_access is False
    with pytest.raises(RuntimeError, match="Online access is off"):
        bpy.ops.csd.setup_engine()
    assert not mod("preferences").default_venv().exists()


def test_check_engine_reports_torch(addon, bpy):
    mod("preferences").get().engine_source = ""  # the engine vendored in the extension
    bpy.ops.csd.check_engine()
    state = mod("preferences").EngineState
    text = "\n".join(state.check_lines + [row.text() for row in state.check_rows])
    assert "PyTorch" in text and "Engine code found" in text and "texture: bundled" in text
