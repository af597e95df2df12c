"""Blender objects to the engine's inputs: the evaluated mesh in world space, cameras, GLB sources."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import bpy
import numpy as np

from ..exchange.errors import UserError

TYPE_NAMES = {'CURVE': "a curve", 'SURFACE': "a surface", 'META': "a metaball", 'FONT': "a text object",
              'CURVES': "a hair object", 'POINTCLOUD': "a point cloud", 'VOLUME': "a volume",
              'GPENCIL': "a grease pencil", 'GREASEPENCIL': "a grease pencil", 'ARMATURE': "an armature",
              'LATTICE': "a lattice", 'EMPTY': "an empty", 'LIGHT': "a light", 'LIGHT_PROBE': "a light probe",
              'CAMERA': "a camera", 'SPEAKER': "a speaker"}


def describe_type(obj) -> str:
    return TYPE_NAMES.get(obj.type, obj.type.lower())


def has_zero_scale(obj) -> bool:
    matrix = np.array(obj.matrix_world, dtype=np.float64)[:3, :3]
    det = abs(float(np.linalg.det(matrix)))
    return not math.isfinite(det) or det < 1e-12


@dataclass
class ExportedMesh:
    positions: np.ndarray  # (V, 3) world space
    triangles: np.ndarray  # (F, 3) int32
    corner_uvs: np.ndarray | None  # (F, 3, 2) from the active UV map, or None
    tri_loops: np.ndarray  # (F, 3) loop index of each corner (of the evaluated mesh)
    uv_map: str | None  # the active UV map's name
    same_topology: bool  # evaluated loops are the original mesh's loops (no topology-changing modifier)
    counts: dict = field(default_factory=dict)  # the original mesh's vertex/loop/polygon counts


def check_mesh_object(obj) -> None:
    if obj.type != 'MESH':
        raise UserError(f"'{obj.name}' is {describe_type(obj)}, not a mesh.", "Select a mesh object.")
    if has_zero_scale(obj):
        raise UserError(f"'{obj.name}' has a zero scale, so it has no surface to texture.",
                        "Set its scale to non-zero values (Object > Apply > Scale after fixing it).")
    if len(obj.data.polygons) == 0 and obj.mode != 'EDIT':
        raise UserError(f"'{obj.name}' has no faces.", "Texturing needs a mesh with faces (fill it, or pick another).")


def mesh_counts(mesh) -> dict:
    return {"vertices": len(mesh.vertices), "loops": len(mesh.loops), "polygons": len(mesh.polygons)}


def export_evaluated_mesh(obj, depsgraph) -> ExportedMesh:
    """The mesh as the artist sees it (modifiers applied), in world space, triangulated by loop_triangles."""
    check_mesh_object(obj)
    if obj.mode == 'EDIT':
        obj.update_from_editmode()
    original_counts = mesh_counts(obj.data)
    obj_eval = obj.evaluated_get(depsgraph)
    mesh = obj_eval.to_mesh()
    try:
        if hasattr(mesh, "calc_loop_triangles"):
            mesh.calc_loop_triangles()
        n_tris = len(mesh.loop_triangles)
        if n_tris == 0:
            raise UserError(f"'{obj.name}' has no faces.",
                            "Texturing needs a mesh with faces (fill it, or pick another).")
        n_verts = len(mesh.vertices)
        co = np.empty(n_verts * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", co)
        co = co.reshape(-1, 3).astype(np.float64)
        matrix = np.array(obj_eval.matrix_world, dtype=np.float64)
        world = co @ matrix[:3, :3].T + matrix[:3, 3]
        if not np.all(np.isfinite(world)):
            raise UserError(f"'{obj.name}' has vertices at infinite or undefined positions.",
                            "Fix the mesh or its modifiers.")
        tris = np.empty(n_tris * 3, dtype=np.int32)
        mesh.loop_triangles.foreach_get("vertices", tris)
        loops = np.empty(n_tris * 3, dtype=np.int32)
        mesh.loop_triangles.foreach_get("loops", loops)
        corner_uvs = None
        uv_map = None
        # The original mesh says which UV map is active; the evaluated mesh carries its values
        # through the modifiers.
        original_active = obj.data.uv_layers.active
        active = mesh.uv_layers.get(original_active.name) if original_active is not None else None
        if active is not None:
            uv_map = active.name
            uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
            active.data.foreach_get("uv", uv)
            corner_uvs = uv.reshape(-1, 2)[loops].reshape(-1, 3, 2)
        same = mesh_counts(mesh) == original_counts
        return ExportedMesh(world.astype(np.float32), tris.reshape(-1, 3), corner_uvs, loops.reshape(-1, 3),
                            uv_map, same, original_counts)
    finally:
        obj_eval.to_mesh_clear()


def scene_cameras(scene) -> list[dict]:
    """Perspective cameras of the scene as the engine takes them (camera-to-world, OpenGL axes)."""
    cameras = []
    for obj in scene.objects:
        if obj.type != 'CAMERA' or obj.data.type != 'PERSP':
            continue
        cam = obj.data
        # The engine renders square images: the fitted sensor side gives the field of view.
        if cam.sensor_fit == 'VERTICAL':
            fov = cam.angle_y
        elif cam.sensor_fit == 'HORIZONTAL':
            fov = cam.angle_x
        else:
            fov = cam.angle
        matrix = obj.matrix_world.normalized()
        cameras.append({"matrix_world": [list(map(float, row)) for row in matrix],
                        "fovy_deg": math.degrees(fov)})
    return cameras


def export_glb(obj, filepath: str, context) -> None:
    """Export one object, with its materials and textures, as a GLB (an edit job's source)."""
    view_layer = context.view_layer
    selected = [o for o in view_layer.objects if o.select_get()]
    active = view_layer.objects.active
    try:
        for o in selected:
            o.select_set(False)
        obj.select_set(True)
        view_layer.objects.active = obj
        bpy.ops.export_scene.gltf(filepath=filepath, export_format='GLB', use_selection=True,
                                  export_apply=True, export_materials='EXPORT', export_yup=True)
    finally:
        obj.select_set(False)
        for o in selected:
            try:
                o.select_set(True)
            except ReferenceError:
                pass
        view_layer.objects.active = active
