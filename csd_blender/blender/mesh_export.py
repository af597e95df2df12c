"""Blender objects to the engine's inputs: the evaluated mesh in world space, cameras, GLB sources,
a region of the mesh's faces and the texture kept outside it."""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
    corner_uvs: np.ndarray | None  # (F, 3, 2) from the exported UV map, or None
    tri_loops: np.ndarray  # (F, 3) loop index of each corner (of the evaluated mesh)
    tri_polygons: np.ndarray  # (F,) the evaluated mesh's polygon each triangle belongs to
    tri_materials: np.ndarray  # (F,) the material slot index of each triangle
    uv_map: str | None  # the exported UV map's name
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


def export_evaluated_mesh(obj, depsgraph, uv_map: str | None = None) -> ExportedMesh:
    """The mesh as the artist sees it (modifiers applied), in world space, triangulated by loop_triangles;
    corner UVs from ``uv_map`` (None: the active UV map)."""
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
        polygons = np.empty(n_tris, dtype=np.int32)
        mesh.loop_triangles.foreach_get("polygon_index", polygons)
        materials = np.empty(n_tris, dtype=np.int32)
        mesh.loop_triangles.foreach_get("material_index", materials)
        corner_uvs = None
        # Unless one is named, the original mesh says which UV map is active; the evaluated mesh
        # carries its values through the modifiers.
        if uv_map is None:
            original_active = obj.data.uv_layers.active
            uv_map = original_active.name if original_active is not None else None
        layer = mesh.uv_layers.get(uv_map) if uv_map is not None else None
        if layer is None:
            uv_map = None
        else:
            uv = np.empty(len(mesh.loops) * 2, dtype=np.float32)
            layer.data.foreach_get("uv", uv)
            corner_uvs = uv.reshape(-1, 2)[loops].reshape(-1, 3, 2)
        same = mesh_counts(mesh) == original_counts
        return ExportedMesh(world.astype(np.float32), tris.reshape(-1, 3), corner_uvs, loops.reshape(-1, 3),
                            polygons, materials, uv_map, same, original_counts)
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


# -- regions: part of a mesh's faces, and the texture kept outside them ------------------------------

RegionKind = Literal['SELECTED', 'VERTEX_GROUP', 'MATERIAL']
GROUP_WEIGHT = 0.5  # a vertex belongs to a region's vertex group above this weight
KEEP_HINT = "Region texturing keeps the rest of an existing texture: texture the whole object first."


@dataclass(frozen=True)
class RegionChoice:
    """The panel's Region: the faces selected in Edit Mode, those wholly in a vertex group, or those
    showing a material (``name``: the group's or the material's)."""

    kind: RegionKind
    name: str = ""


def _face_vertices_in_group(mesh, group_index: int) -> np.ndarray:
    """(P,) whether every vertex of each polygon has a weight above GROUP_WEIGHT in the group."""
    weights = np.zeros(len(mesh.vertices), dtype=np.float32)
    for vertex in mesh.vertices:
        for element in vertex.groups:
            if element.group == group_index:
                weights[vertex.index] = element.weight
    corner_vertices = np.empty(len(mesh.loops), dtype=np.int32)
    mesh.loops.foreach_get("vertex_index", corner_vertices)
    starts = np.empty(len(mesh.polygons), dtype=np.int32)
    mesh.polygons.foreach_get("loop_start", starts)
    return np.logical_and.reduceat(weights[corner_vertices] > GROUP_WEIGHT, starts)


def region_triangles(obj, ex: ExportedMesh, choice: RegionChoice) -> np.ndarray:
    """The region as int32 indices into ``ex.triangles`` (mesh.npz's triangle order), ascending; a
    UserError for a region that holds no face or every face."""
    mesh = obj.data
    if choice.kind == 'MATERIAL':
        if not choice.name:
            raise UserError("No material is chosen for the region.", "Pick a material in the panel's Region.")
        slots = [i for i, slot in enumerate(obj.material_slots)
                 if slot.material is not None and slot.material.name == choice.name]
        if not slots:
            raise UserError(f"'{obj.name}' has no material slot with '{choice.name}'.",
                            "Pick one of its materials in the panel's Region, or set Region to Whole object.")
        inside = np.isin(ex.tri_materials, slots)
        empty = (f"No face of '{obj.name}' uses the material '{choice.name}'.",
                 "Assign it to faces in Edit Mode (Material properties > Assign), or pick another.")
    else:
        # Selection and vertex groups belong to the original mesh's faces; the evaluated mesh's
        # polygons are those faces only when no modifier made or removed any.
        if not ex.same_topology:
            raise UserError(f"'{obj.name}' has modifiers that change its faces, so its "
                            f"{'selected faces' if choice.kind == 'SELECTED' else 'vertex group'} cannot be "
                            "found on the mesh that is textured.",
                            "Apply the modifiers, or use a Material slot region (it follows modifiers).")
        if choice.kind == 'SELECTED':
            faces = np.zeros(len(mesh.polygons), dtype=bool)
            mesh.polygons.foreach_get("select", faces)
            empty = (f"No faces of '{obj.name}' are selected.",
                     "Select faces in Edit Mode first, or set Region to Whole object.")
        else:
            group = obj.vertex_groups.get(choice.name) if choice.name else None
            if group is None:
                raise UserError(f"'{obj.name}' has no vertex group '{choice.name}'." if choice.name
                                else "No vertex group is chosen for the region.",
                                "Pick one of its vertex groups in the panel's Region, or set Region to Whole object.")
            faces = _face_vertices_in_group(mesh, group.index)
            empty = ((f"No face of '{obj.name}' lies wholly in the vertex group '{choice.name}' (each of a face's "
                      f"vertices needs a weight above {GROUP_WEIGHT})."),
                     "Assign the faces' vertices to the group in Edit Mode, or pick another group.")
        inside = faces[ex.tri_polygons]
    if not inside.any():
        raise UserError(*empty)
    if inside.all():
        raise UserError(f"The region holds every face of '{obj.name}'.",
                        "Set Region to Whole object to texture all of it, or choose fewer faces.")
    return np.flatnonzero(inside).astype(np.int32)


# engine/mesh/validate.py's rule: a triangle with a repeated corner, or whose doubled area is at most this
# share of the squared diagonal of the mesh's bounds, is degenerate; the engine drops it.
DEGENERATE_AREA_FRACTION = 1e-12


def degenerate_triangles(positions: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(F,) the triangles the engine drops from a mesh (engine/mesh/validate.py's rule, the same arithmetic)."""
    corners = np.asarray(positions, dtype=np.float32).astype(np.float64)[triangles]
    used = corners.reshape(-1, 3)
    diagonal_sq = float(((used.max(axis=0) - used.min(axis=0)) ** 2).sum())
    doubled_area = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    repeated = ((triangles[:, 0] == triangles[:, 1]) | (triangles[:, 1] == triangles[:, 2])
                | (triangles[:, 0] == triangles[:, 2]))
    return repeated | (doubled_area <= DEGENERATE_AREA_FRACTION * diagonal_sq)


@dataclass(frozen=True)
class KeptTexture:
    """The base-colour image kept outside a region: its 8-bit RGB texels, row 0 at v = 1 (as mesh.npz's
    corner UVs place them), and the UV map that places it."""

    uv_map: str
    pixels: np.ndarray  # (H, W, 3) uint8

    def write_png(self, path: Path) -> None:
        """An 8-bit RGB PNG of exactly these texels (no colour management on the way: bit for bit)."""
        height, width, _ = self.pixels.shape
        rows = np.zeros((height, 1 + width * 3), dtype=np.uint8)  # each row: filter type 0, then RGB
        rows[:, 1:] = self.pixels.reshape(height, width * 3)

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                               + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def base_colour_texture(mat, mesh) -> tuple[object, str | None] | None:
    """The Image Texture node feeding a Principled BSDF's Base Color (result_import's layout, or any
    material made that way) and the UV map placing it: a UV Map node's, else the mesh's render UV map
    (what an unconnected Vector input uses); the map is None when another node places the image.
    None when the material has no such image."""
    if mat is None or mat.node_tree is None:
        return None
    for node in mat.node_tree.nodes:
        if node.type != 'BSDF_PRINCIPLED' or not node.inputs["Base Color"].links:
            continue
        tex = node.inputs["Base Color"].links[0].from_node
        if tex.type != 'TEX_IMAGE' or tex.image is None:
            continue
        vector = tex.inputs["Vector"].links
        if not vector:
            render = next((layer.name for layer in mesh.uv_layers if layer.active_render), None)
            return tex.image, render
        source = vector[0].from_node
        if source.type != 'UVMAP':
            return tex.image, None
        if not source.uv_map:
            return tex.image, next((layer.name for layer in mesh.uv_layers if layer.active_render), None)
        return tex.image, source.uv_map if source.uv_map in mesh.uv_layers else None
    return None


def image_rgb8(image) -> np.ndarray:
    """An image's texels as (H, W, 3) uint8, row 0 at the top. An 8-bit image's bytes come through
    unchanged; a float image (kept linear by Blender) is encoded to sRGB unless it holds data."""
    width, height = image.size
    if width == 0 or height == 0:
        raise UserError(f"The image '{image.name}' could not be read.",
                        "Check that its file exists (Image Editor > Image > Reload), or texture the whole object first.")
    channels = image.channels
    pixels = np.empty(width * height * channels, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(height, width, channels)
    rgb = pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    rgb = np.clip(rgb, 0.0, 1.0)
    if image.is_float and not image.colorspace_settings.is_data:
        rgb = np.where(rgb <= 0.0031308, rgb * 12.92, 1.055 * np.power(rgb, 1 / 2.4) - 0.055)
    return np.ascontiguousarray(np.round(rgb[::-1] * 255.0).astype(np.uint8))


def kept_texture(obj, ex: ExportedMesh, region: np.ndarray) -> KeptTexture:
    """The one base-colour image the faces outside ``region`` show (with its UV map), read from Blender;
    a UserError when they show none, several, or one that no UV map places."""
    mesh = obj.data
    outside = np.ones(len(ex.triangles), dtype=bool)
    outside[region] = False
    found = {}
    for index in np.unique(ex.tri_materials[outside]).tolist():
        slot = obj.material_slots[index] if index < len(obj.material_slots) else None
        texture = base_colour_texture(slot.material if slot is not None else None, mesh)
        if texture is None:
            raise UserError(f"'{obj.name}' has no texture to keep outside the region.", KEEP_HINT)
        found[(texture[0].name, texture[1])] = texture
    if len(found) > 1:
        names = ", ".join(f"'{name}'" for name, _ in found)
        raise UserError(f"The faces of '{obj.name}' outside the region show {len(found)} textures ({names}); "
                        "a region job keeps one.",
                        "Texture the whole object first, or choose a region that holds the faces of the others.")
    image, uv_map = next(iter(found.values()))
    if uv_map is None:
        if not mesh.uv_layers:
            raise UserError(f"'{obj.name}' has no UV map, so its texture cannot be kept outside the region.", KEEP_HINT)
        raise UserError(f"No UV map of '{obj.name}' places its texture '{image.name}', so the texture cannot be kept "
                        "outside the region.",
                        "Connect a UV Map node to the image's Vector input (or leave it unconnected). " + KEEP_HINT)
    return KeptTexture(uv_map, image_rgb8(image))
