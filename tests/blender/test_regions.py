"""Regions in the add-on (issue 23): the panel's Region (selected faces, a vertex group, a material slot)
becomes the job's region.npy, in mesh.npz's triangle order, and a texture job's keep.png is the object's
own base-colour image texel for texel; every refusal leaves the scene as it was.

The engine is the test double (fake_engine/): these tests pin down what the add-on writes and imports;
the last test runs a region job through the real engine.
"""

from __future__ import annotations

import json
import shutil
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest

from conftest import ADDON_MODULE, fake, snapshot
from test_extension import Recorder
from test_failures import _png, expect_refused, run
from test_real_engine import heavy, prior_model, real  # noqa: F401  (fixtures)


def mod(name):
    return import_module(f"{ADDON_MODULE}.{name}")


def paint(bpy, obj, name: str = "Painted", uv_map: str | None = None, size=(16, 8)):
    """A material whose Base Color is a packed 8-bit image of known random texels (on ``uv_map``, else
    the render UV map), appended to ``obj``; returns the image."""
    width, height = size
    image = bpy.data.images.new(name, width, height)
    texels = np.ones((height, width, 4), dtype=np.float32)
    texels[..., :3] = np.random.default_rng(len(name)).integers(0, 256, (height, width, 3)) / 255.0
    image.pixels.foreach_set(texels.ravel())
    image.pack()
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:  # Blender < 5.0
        mat.use_nodes = True
    tree = mat.node_tree
    tex = tree.nodes.new("ShaderNodeTexImage")
    tex.image = image
    tree.links.new(tex.outputs["Color"], tree.nodes["Principled BSDF"].inputs["Base Color"])
    if uv_map is not None:
        uv = tree.nodes.new("ShaderNodeUVMap")
        uv.uv_map = uv_map
        tree.links.new(uv.outputs["UV"], tex.inputs["Vector"])
    obj.data.materials.append(mat)
    return image


def rgb8(image) -> np.ndarray:
    """An image's texels as Blender holds them (row 0 at the bottom), 8-bit RGB."""
    width, height = image.size
    pixels = np.empty(width * height * image.channels, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    return np.round(pixels.reshape(height, width, image.channels)[..., :3] * 255).astype(np.uint8)


def monkey(bpy):
    """Suzanne (with her UV map) alone in the scene, selected and active, painted."""
    bpy.data.objects.remove(bpy.data.objects["Cube"])
    bpy.ops.mesh.primitive_monkey_add(location=(0.5, 0.0, 0.0))
    obj = bpy.context.active_object
    obj.name = "Suzanne"
    image = paint(bpy, obj)
    return obj, image


def select_faces_in_edit_mode(bpy, obj, chosen: np.ndarray) -> None:
    """Enter Edit Mode and select exactly the faces ``chosen`` marks (face select mode, nothing flushed)."""
    import bmesh

    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode='EDIT')
    bpy.context.tool_settings.mesh_select_mode = (False, False, True)
    bm = bmesh.from_edit_mesh(obj.data)
    for element in (*bm.verts, *bm.edges, *bm.faces):
        element.select = False
    bm.faces.ensure_lookup_table()
    for face in bm.faces:
        if chosen[face.index]:
            face.select_set(True)
    bmesh.update_edit_mesh(obj.data)


def triangles_of(mesh, faces: np.ndarray) -> np.ndarray:
    """The loop triangles (in Blender's order) of the polygons ``faces`` marks."""
    mesh.calc_loop_triangles()
    polygons = np.array([tri.polygon_index for tri in mesh.loop_triangles])
    return np.flatnonzero(faces[polygons])


def face_centres_x(mesh) -> np.ndarray:
    return np.array([p.center.x for p in mesh.polygons])


def prepare(bpy, task: str = "texture"):
    """The jobs an action would start, built but not run (their folders removed by the caller)."""
    jobs, _ = getattr(mod("build_jobs"), f"prepare_{task}")(bpy.context)
    return jobs


def job_files(job_dir: Path) -> tuple[dict, dict, np.ndarray]:
    job = json.loads((job_dir / "job.json").read_text("utf-8"))
    mesh = dict(np.load(job_dir / "mesh.npz")) if (job_dir / "mesh.npz").exists() else {}
    return job, mesh, np.load(job_dir / job["region"], allow_pickle=False)


def kept_png(bpy, path: Path) -> np.ndarray:
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        return rgb8(image)
    finally:
        bpy.data.images.remove(image)


def test_selected_faces_in_edit_mode_become_the_region(addon, bpy):
    obj, image = monkey(bpy)
    mod("preferences").get().keep_job_folders = True
    chosen = face_centres_x(obj.data) > 0.01  # Suzanne's faces on one side
    select_faces_in_edit_mode(bpy, obj, chosen)
    scene = bpy.context.scene.csd
    scene.region, scene.region_feather_texels, scene.region_feather_distance = 'SELECTED', 5, 0.05
    jobs_root = mod("preferences").jobs_root()
    before = set(jobs_root.iterdir()) if jobs_root.exists() else set()
    fake(outputs={"texture": str(_png(bpy))})
    assert run(bpy) == {'FINISHED'}
    assert obj.mode == 'EDIT'  # the import left the artist where they were
    bpy.ops.object.mode_set(mode='OBJECT')
    [job_dir] = set(jobs_root.iterdir()) - before
    job, mesh, region = job_files(job_dir)
    assert job["region"] == "region.npy" and job["keep_texture"] == "keep.png"
    assert job["settings"]["region_feather_texels"] == 5 and job["settings"]["region_feather_distance"] == 0.05
    assert job["settings"]["reunwrap"] is False
    assert region.dtype == np.int32 and region.ndim == 1
    expected = triangles_of(obj.data, chosen)
    assert 0 < len(expected) < len(mesh["triangles"])
    assert np.array_equal(region, expected)
    # mesh.npz's triangles are Blender's loop triangles, in that order: the region's indices name them
    corners = np.array([tuple(tri.vertices) for tri in obj.data.loop_triangles])
    assert np.array_equal(mesh["triangles"], corners)
    kept = kept_png(bpy, job_dir / "keep.png")
    assert kept.shape == (8, 16, 3) and np.array_equal(kept, rgb8(image))
    # the result replaced the kept texture in a new material on every face, on the kept texture's UV map
    mat = obj.material_slots[len(obj.material_slots) - 1].material
    assert mat.name.startswith("CSD a red sphere") and all(p.material_index == 1 for p in obj.data.polygons)
    assert next(n for n in mat.node_tree.nodes if n.type == 'UVMAP').uv_map == "UVMap"


def test_vertex_group_region_round_trip_is_one_undo_step(addon, bpy):
    obj, image = monkey(bpy)
    group = obj.vertex_groups.new(name="Left ear")
    light = obj.vertex_groups.new(name="Light")
    xs = np.array([v.co.x for v in obj.data.vertices])
    group.add([int(i) for i in np.flatnonzero(xs < -0.6)], 1.0, 'REPLACE')
    group.add([int(i) for i in np.flatnonzero((xs >= -0.6) & (xs < -0.5))], 0.3, 'REPLACE')  # too light to count
    light.add(list(range(len(xs))), 0.5, 'REPLACE')  # 0.5 is not above 0.5: no face
    scene = bpy.context.scene.csd
    scene.region, scene.region_vertex_group = 'VERTEX_GROUP', "Left ear"
    bpy.ops.ed.undo_push(message="groups")
    inside = np.array([all(xs[v] < -0.6 for v in p.vertices) for p in obj.data.polygons])
    jobs = prepare(bpy)
    try:
        job, _, region = job_files(jobs[0].job_dir)
        assert np.array_equal(region, triangles_of(obj.data, inside)) and len(region) > 0
        assert np.array_equal(kept_png(bpy, jobs[0].job_dir / "keep.png"), rgb8(image))
    finally:
        shutil.rmtree(jobs[0].job_dir)
    before = snapshot(bpy)
    fake(outputs={"texture": str(_png(bpy))})
    assert run(bpy) == {'FINISHED'}
    assert len(obj.material_slots) == 2 and obj["csd_task"] == "texture"
    bpy.ops.ed.undo()
    assert snapshot(bpy) == before
    bpy.context.scene.csd.region_vertex_group = "Light"  # the undo reloaded the scene's data
    expect_refused(bpy, "texture_selected", "no face", "vertex group 'light'")


def test_material_slot_region_follows_modifiers_and_keeps_its_uv_map(addon, bpy):
    cube = bpy.data.objects["Cube"]
    mesh = cube.data
    painted_uv = mesh.uv_layers.new(name="Painted UV")
    uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
    painted_uv.data.foreach_get("uv", uv)
    painted_uv.data.foreach_set("uv", uv * 0.5 + 0.25)  # another layout than the active map's
    mesh.uv_layers.active = mesh.uv_layers["UVMap"]
    image = paint(bpy, cube, "Painted", uv_map="Painted UV")
    label = bpy.data.materials.new("Label")
    mesh.materials.append(label)
    top = int(np.argmax([p.center.z for p in mesh.polygons]))
    mesh.polygons[top].material_index = 1
    cube.modifiers.new("bevel", 'BEVEL')  # faces made by a modifier keep their material
    bpy.context.view_layer.update()
    scene = bpy.context.scene.csd
    scene.region, scene.region_material = 'MATERIAL', "Label"
    jobs = prepare(bpy)
    try:
        job, npz, region = job_files(jobs[0].job_dir)
        evaluated = cube.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
        evaluated.calc_loop_triangles()
        materials = np.array([tri.material_index for tri in evaluated.loop_triangles])
        loops = np.array([tuple(tri.loops) for tri in evaluated.loop_triangles])
        uvs = np.array([tuple(d.uv) for d in evaluated.uv_layers["Painted UV"].data], dtype=np.float32)
        cube.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh_clear()
        assert len(npz["triangles"]) == len(materials) > 12  # the bevel's faces are there
        assert np.array_equal(region, np.flatnonzero(materials == 1)) and len(region) >= 2
        assert np.array_equal(npz["corner_uvs"], uvs[loops])  # the kept texture's UV map, not the active one
        assert np.array_equal(kept_png(bpy, jobs[0].job_dir / "keep.png"), rgb8(image))
        assert jobs[0].request.uv_map == "Painted UV" and not jobs[0].request.needs_uvs
    finally:
        shutil.rmtree(jobs[0].job_dir)
    scene.region = 'SELECTED'  # selections belong to the faces before the bevel
    expect_refused(bpy, "texture_selected", "modifiers", "material slot")


@pytest.mark.parametrize("case, words", [
    ("nothing selected", ("select faces in edit mode first",)),
    ("every face", ("every face", "whole object")),
    ("no texture", ("no texture to keep", "texture the whole object first")),
    ("no uv map", ("no uv map", "texture the whole object first")),
    ("two textures", ("2 textures", "keeps one")),
    ("new uv layout", ("new uv layout",)),
    ("no such group", ("no vertex group 'ears'",)),
    ("no such material", ("no material slot with 'gold'",)),
])
def test_refusals_leave_the_scene_unchanged(addon, bpy, case, words):
    cube = bpy.data.objects["Cube"]
    scene = bpy.context.scene.csd
    scene.region = 'SELECTED'
    faces = np.zeros(len(cube.data.polygons), dtype=bool)
    faces[0] = True
    if case != "no texture":
        paint(bpy, cube)
    if case == "nothing selected":
        faces[:] = False
    elif case == "every face":
        faces[:] = True
    elif case == "no uv map":
        cube.data.uv_layers.remove(cube.data.uv_layers[0])
    elif case == "two textures":
        paint(bpy, cube, "Other")
        cube.data.polygons[1].material_index = 1
    elif case == "new uv layout":
        scene.reunwrap = True
    elif case == "no such group":
        scene.region, scene.region_vertex_group = 'VERTEX_GROUP', "Ears"
    elif case == "no such material":
        scene.region, scene.region_material = 'MATERIAL', "Gold"
    cube.data.polygons.foreach_set("select", faces)
    bpy.ops.ed.undo_push(message=case)
    jobs_root = mod("preferences").jobs_root()
    folders = set(jobs_root.iterdir()) if jobs_root.exists() else set()
    expect_refused(bpy, "texture_selected", *words)
    assert (set(jobs_root.iterdir()) if jobs_root.exists() else set()) == folders


def test_edit_region_of_a_csd_result(addon, bpy):
    cube = bpy.data.objects["Cube"]
    fake(outputs={"texture": str(_png(bpy))})
    assert run(bpy) == {'FINISHED'}  # the whole cube textured first
    scene = bpy.context.scene.csd
    scene.target_prompt, scene.edit_prompt = "a cube with a blue top", "red"
    scene.region = 'SELECTED'
    chosen = np.array([p.center.z > 0.9 for p in cube.data.polygons])
    cube.data.polygons.foreach_set("select", chosen)
    jobs = prepare(bpy, "edit")
    try:
        job, _, region = job_files(jobs[0].job_dir)
        assert job["task"] == "edit" and job["source"] == "source" and "keep_texture" not in job
        assert job["settings"]["region_feather_texels"] == 8 and job["settings"]["region_feather_distance"] == 0.03
        assert np.array_equal(region, triangles_of(cube.data, chosen)) and len(region) == 2
    finally:
        shutil.rmtree(jobs[0].job_dir)
    # a result made for another mesh: the region could not be placed on it
    stored = Path(cube["csd_result"])
    np.save(stored / "corner_uvs.npy", np.zeros((5, 3, 2), dtype=np.float32))
    expect_refused(bpy, "apply_edit", "12 triangles now", "made for 5")


def test_edit_region_skips_the_faces_the_texture_job_dropped(addon, bpy):
    """An edit's faces are those of the earlier job's mesh.obj: the add-on's triangles less the degenerate
    ones the engine dropped, so the indices after a dropped triangle move down by one."""
    bpy.data.objects.remove(bpy.data.objects["Cube"])
    mesh = bpy.data.meshes.new("Strip")
    mesh.from_pydata([(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (2, 0, 0), (2, 1, 0), (3, 0, 0)], [],
                     [(0, 1, 2, 3), (1, 4, 6), (1, 4, 5, 2)])  # the middle triangle has no area
    mesh.uv_layers.new(name="UVMap")
    obj = bpy.data.objects.new("Strip", mesh)
    bpy.context.collection.objects.link(obj)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj
    fake(outputs={"texture": str(_png(bpy))})
    assert run(bpy) == {'FINISHED'}
    scene = bpy.context.scene.csd
    scene.target_prompt, scene.edit_prompt = "a blue strip", "red"
    scene.region = 'SELECTED'
    obj.data.polygons.foreach_set("select", np.array([False, False, True]))
    assert np.array_equal(triangles_of(obj.data, np.array([False, False, True])), [3, 4])
    jobs = prepare(bpy, "edit")
    try:
        _, _, region = job_files(jobs[0].job_dir)
        assert np.array_equal(region, [2, 3])
    finally:
        shutil.rmtree(jobs[0].job_dir)
    obj.data.polygons.foreach_set("select", np.array([False, True, False]))
    bpy.ops.ed.undo_push(message="the flat face selected")
    expect_refused(bpy, "apply_edit", "only faces of zero area")


def test_edit_region_refusals(addon, bpy, tmp_path):
    cube = bpy.data.objects["Cube"]
    paint(bpy, cube)  # a texture from elsewhere: it would travel as a GLB, in the exporter's triangle order
    scene = bpy.context.scene.csd
    scene.target_prompt, scene.edit_prompt = "a green cube", "red"
    scene.region = 'SELECTED'
    bpy.ops.ed.undo_push(message="painted")
    expect_refused(bpy, "apply_edit", "once csd has textured it", "whole object")
    # marked as a generated asset with its result folder, as the import marks one
    cube["csd_result"], cube["csd_task"] = str(tmp_path), "generate"
    cube.data.polygons.foreach_set("select", np.arange(len(cube.data.polygons)) == 0)
    scene.edit_geometry = True
    bpy.ops.ed.undo_push(message="a generated asset")
    expect_refused(bpy, "apply_edit", "edit geometry", "region")


def test_panel_draws_the_region_choice(addon, bpy):
    class RegionRecorder(Recorder):
        def _child(self, *args, **kwargs):
            return RegionRecorder(self.bpy, self.log)

        row = column = box = split = _child

        def prop_search(self, data, name, search_data, search_name, **kwargs):
            assert name in data.bl_rna.properties and search_name in search_data.bl_rna.properties
            self.log.append(("prop_search", name, search_name))

    panel = mod("panel")
    scene = bpy.context.scene.csd
    log = []
    panel.CSD_PT_main.draw(type("P", (), {"layout": RegionRecorder(bpy, log)})(), bpy.context)
    assert ("prop", "region") in log and ("prop", "region_feather_texels") not in log
    for region, search in (('VERTEX_GROUP', ("prop_search", "region_vertex_group", "vertex_groups")),
                           ('MATERIAL', ("prop_search", "region_material", "material_slots"))):
        scene.region = region
        log = []
        panel.CSD_PT_main.draw(type("P", (), {"layout": RegionRecorder(bpy, log)})(), bpy.context)
        assert search in log and ("prop", "region_feather_texels") in log


@heavy  # with the newest bpy only: after it, bpy 4.2's glTF exporter crashed now and then in later tests
def test_region_texture_real_engine(real, bpy):  # noqa: F811 (a fixture)
    """The real engine on the top face of a painted cube: the texels of the other faces come back bit for bit,
    the top face's change, and one undo step removes the job."""
    mod("preferences").get().extra_settings = json.dumps({"texture": {"region_fit_steps": 10}})
    cube = bpy.data.objects["Cube"]
    image = paint(bpy, cube, size=(32, 32))
    top = int(np.argmax([p.center.z for p in cube.data.polygons]))
    cube.data.polygons.foreach_set("select", np.arange(len(cube.data.polygons)) == top)
    bpy.context.scene.csd.region = 'SELECTED'
    bpy.ops.ed.undo_push(message="painted, top face selected")
    before = snapshot(bpy)
    assert run(bpy) == {'FINISHED'}, mod("exchange.queue").QUEUE.last_report
    cube = bpy.data.objects["Cube"]
    mat = cube.material_slots[len(cube.material_slots) - 1].material
    result = rgb8(next(n.image for n in mat.node_tree.nodes if n.type == 'TEX_IMAGE'))
    kept = rgb8(image)
    assert result.shape == kept.shape
    # Texel centres in each face's UV rectangle (the cube's UV islands are axis-aligned squares).
    uv = np.empty(len(cube.data.loops) * 2, dtype=np.float32)
    cube.data.uv_layers["UVMap"].data.foreach_get("uv", uv)
    uv = uv.reshape(-1, 2)
    height, width = kept.shape[:2]
    u, v = np.meshgrid((np.arange(width) + 0.5) / width, (np.arange(height) + 0.5) / height)

    def covered(polygon, margin=0.0):
        corners = uv[list(polygon.loop_indices)]
        low, high = corners.min(axis=0) - margin, corners.max(axis=0) + margin
        return (u >= low[0]) & (u <= high[0]) & (v >= low[1]) & (v <= high[1])

    near_top = covered(cube.data.polygons[top], margin=2.0 / width)
    kept_faces = np.zeros_like(near_top)
    for polygon in cube.data.polygons:
        if polygon.index != top:
            kept_faces |= covered(polygon)
    away = kept_faces & ~near_top
    assert away.sum() > 100 and np.array_equal(result[away], kept[away])
    inside = covered(cube.data.polygons[top])
    assert not np.array_equal(result[inside], kept[inside])
    bpy.ops.ed.undo()
    assert snapshot(bpy) == before
