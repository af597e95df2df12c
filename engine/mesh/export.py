"""Write textured meshes: GLB (one self-contained file) and OBJ + MTL (next to the texture PNGs).

Both writers are atomic (engine.files) and take the mesh in the user's own frame. A mesh has an
albedo material (a base-colour texture on a fixed matte surface) or a PBR one (base colour plus
roughness and metallic maps: engine/bake/maps.py says their layouts).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from ..files import atomic_write_bytes, atomic_write_text
from .load import OBJ_UP_AXIS_COMMENT
from .types import TriangleMesh, z_up_to_y_up

MATERIAL_NAME = "csd_texture"
# An albedo material is matte and non-metallic: its texture holds the whole appearance.
ROUGHNESS = 0.8


def write_glb(path: str | Path, mesh: TriangleMesh, texture: np.ndarray, up_axis: str = "Z",
              orm: np.ndarray | None = None) -> Path:
    """Save `mesh` with `texture` (uint8 (H, W, 3), sRGB base colour) as a binary glTF.

    With `orm` (uint8 (H, W, 3): occlusion, roughness, metallic, linear) the material is glTF's
    metallic-roughness PBR with that map as its metallicRoughnessTexture (factors 1, so the map's
    values are the material's); without it, a matte non-metal (roughness ROUGHNESS, metallic 0).
    glTF is Y-up by specification, so Z-up positions are rotated to Y-up; Blender's glTF
    importer rotates them back and the object lands where it was. Vertices are split where
    corners of one vertex carry different UVs, as glTF stores UVs per vertex.
    """
    if mesh.corner_uvs is None:
        raise ValueError("write_glb needs a mesh with corner_uvs")
    positions = z_up_to_y_up(mesh.positions) if up_axis == "Z" else np.asarray(mesh.positions)
    # Normals from the unsplit mesh so the shading stays smooth across UV seams.
    normals = trimesh.Trimesh(positions, mesh.triangles, process=False).vertex_normals
    source_vertex, split_uvs, split_triangles = split_uv_seams(mesh.triangles, mesh.corner_uvs)
    if orm is None:
        material = trimesh.visual.material.PBRMaterial(
            name=MATERIAL_NAME, baseColorTexture=Image.fromarray(texture), metallicFactor=0.0,
            roughnessFactor=ROUGHNESS)
    else:
        material = trimesh.visual.material.PBRMaterial(
            name=MATERIAL_NAME, baseColorTexture=Image.fromarray(texture),
            metallicRoughnessTexture=Image.fromarray(orm), metallicFactor=1.0, roughnessFactor=1.0)
    # trimesh keeps UVs in the OpenGL convention (v up) and flips v to glTF's top-left origin on export.
    visual = trimesh.visual.TextureVisuals(uv=split_uvs, material=material)
    textured = trimesh.Trimesh(vertices=positions[source_vertex], faces=split_triangles,
                               vertex_normals=normals[source_vertex], visual=visual, process=False)
    scene = trimesh.Scene()
    scene.add_geometry(textured, geom_name="mesh", node_name="mesh")
    data = trimesh.exchange.gltf.export_glb(scene, include_normals=True)
    return atomic_write_bytes(path, data)


def split_uv_seams(triangles: np.ndarray, corner_uvs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One vertex per distinct (vertex, uv) pair.

    Returns (source vertex index (N,), uv (N, 2), triangles (F, 3) into the N new vertices).
    """
    vertex = np.asarray(triangles, dtype=np.int64).reshape(-1)
    uv = np.ascontiguousarray(corner_uvs, dtype=np.float32).reshape(-1, 2)
    # Compare UVs by their exact bits: two corners share a vertex only if nothing differs.
    keys = np.column_stack([vertex, uv.view(np.int32).astype(np.int64)])
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return vertex[first], uv[first], inverse.reshape(-1, 3)


def write_obj(path_obj: str | Path, mesh: TriangleMesh, texture_filename: str | None, up_axis: str = "Z",
              roughness_filename: str | None = None, metallic_filename: str | None = None) -> tuple[Path, Path | None]:
    """Save `mesh` as OBJ, plus an MTL next to it whose map_Kd names `texture_filename` and, for a
    PBR material, whose map_Pr and map_Pm (the MTL PBR extension) name the grayscale roughness and
    metallic maps.

    Positions stay in the user's frame, unchanged and in the same vertex order, so the result
    can be matched to the original mesh vertex for vertex. A `# up_axis` comment records the
    frame (load_mesh reads it back); importers that ignore it need that axis set by hand.
    With `texture_filename` None no MTL is written (a plain mesh, e.g. for examples).
    Returns the paths written (OBJ, MTL or None).
    """
    if texture_filename is not None and mesh.corner_uvs is None:
        raise ValueError("write_obj needs corner_uvs to place a texture")
    if (roughness_filename is None) != (metallic_filename is None) or (
            roughness_filename is not None and texture_filename is None):
        raise ValueError("a PBR material needs a texture, a roughness and a metallic map")
    path_obj = Path(path_obj)
    path_mtl = path_obj.with_suffix(".mtl") if texture_filename is not None else None
    lines = io.StringIO()
    lines.write("# written by csd-blender\n")
    lines.write(f"{OBJ_UP_AXIS_COMMENT}{up_axis}\n")
    if path_mtl is not None:
        lines.write(f"mtllib {path_mtl.name}\n")
    np.savetxt(lines, np.asarray(mesh.positions, dtype=np.float64), fmt="v %.9g %.9g %.9g")
    faces = np.asarray(mesh.triangles, dtype=np.int64) + 1  # OBJ indices are 1-based
    if mesh.corner_uvs is not None:
        unique_uvs, uv_index = np.unique(np.asarray(mesh.corner_uvs, dtype=np.float32).reshape(-1, 2),
                                         axis=0, return_inverse=True)
        np.savetxt(lines, unique_uvs.astype(np.float64), fmt="vt %.7g %.7g")
        if path_mtl is not None:
            lines.write(f"usemtl {MATERIAL_NAME}\n")
        corners = np.stack([faces, uv_index.reshape(-1, 3) + 1], axis=2).reshape(-1, 6)
        np.savetxt(lines, corners, fmt="f %d/%d %d/%d %d/%d")
    else:
        np.savetxt(lines, faces, fmt="f %d %d %d")
    if path_mtl is not None:
        atomic_write_text(path_mtl, mtl_text(texture_filename, roughness_filename, metallic_filename))
    atomic_write_text(path_obj, lines.getvalue())
    return path_obj, path_mtl


def mtl_text(texture_filename: str, roughness_filename: str | None = None,
             metallic_filename: str | None = None) -> str:
    if roughness_filename is None:
        # Kd white so the texture shows as is; no specular highlight (illum 1) to match the GLB.
        return (f"newmtl {MATERIAL_NAME}\n"
                "Ka 1 1 1\nKd 1 1 1\nKs 0 0 0\nNs 10\nd 1\nillum 1\n"
                f"map_Kd {texture_filename}\n")
    # The PBR extension's keys, factors 1 so the maps' values are the material's, as in the GLB.
    return (f"newmtl {MATERIAL_NAME}\n"
            "Ka 1 1 1\nKd 1 1 1\nKs 0.5 0.5 0.5\nd 1\nillum 2\nPr 1\nPm 1\n"
            f"map_Kd {texture_filename}\nmap_Pr {roughness_filename}\nmap_Pm {metallic_filename}\n")
