"""The engine's results back into Blender: a new image and material, a UV map, new objects.

Every import either completes or removes what it created, and never touches what the
artist made: previous materials stay on the object (and in the file), objects are added,
not replaced. Only files inside the job's output folder are read.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np

from ..exchange import job_folder
from ..exchange.engine_output import (
    EngineOutputError,
    check_file,
    read_corner_uvs,
    recheck_inside,
)
from ..exchange.errors import UserError
from ..exchange.requests import EditRequest, GenerateRequest, ObjectRef, TextureRequest
from ..exchange.result import ADVICE
from . import mesh_export

CSD_UV = "CSD UV"
MAX_UV_MAPS = 8
PROP_RESULT = "csd_result"
PROP_TASK = "csd_task"
PROP_PROMPT = "csd_prompt"
PROP_REVISION = "csd_revision"
PROP_UV_MAP = "csd_uv_map"
NON_COLOR = "Non-Color"


def short(text: str, limit: int = 40) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def find_object(ref: ObjectRef):
    """The job's object, found again by its session id (survives renames), else by name."""
    uid = ref.uid
    if uid is not None:
        for obj in bpy.data.objects:
            if getattr(obj, "session_uid", None) == uid:
                return obj
    name = ref.name
    obj = bpy.data.objects.get(name) if name else None
    if obj is not None and uid is not None and getattr(obj, "session_uid", uid) != uid:
        # Same name, different object: only accept it if it is still a mesh of the same size.
        counts = ref.counts
        if obj.type != 'MESH' or (counts and len(obj.data.loops) != counts.get("loops")):
            return None
    return obj


class Created:
    """Data-blocks made by one import, removed again if the import fails half-way."""

    def __init__(self):
        self.items = []

    def add(self, collection, item):
        self.items.append((collection, item))
        return item

    def rollback(self):
        for collection, item in reversed(self.items):
            try:
                collection.remove(item)
            except (ReferenceError, RuntimeError):
                pass
        self.items.clear()


def output_file(job, name: str, required: bool = True) -> Path | None:
    """The named output, checked again just before it is read (inside the output folder, no link, its kind)."""
    path = job.outcome.outputs.get(name) if job.outcome else None
    if path is None:
        if required:
            raise UserError(f"The engine's result has no '{name}' file.",
                            "The extension and the engine may not match: update both.")
        return None
    try:
        path = recheck_inside(job.output_dir, path)
        if not path.is_file():
            raise UserError(f"The engine's '{name}' file is missing.", "")
        check_file(path, f"the engine's '{name}' file")
    except EngineOutputError as exc:
        raise UserError(f"The engine's output was refused: {exc}.", ADVICE["bad_output"]) from None
    return path


def load_image(path: Path, name: str, storage: str, created: Created, what: str = "texture",
               colorspace: str | None = None):
    """A new image from a result PNG: packed into the .blend, or saved next to it.

    ``colorspace`` None keeps Blender's default for a PNG (sRGB, a base colour's); data maps
    (roughness, metallic, normals) are read as 'Non-Color' so their values reach the shader as written.
    """
    blend = bpy.data.filepath
    if storage == 'FILE' and blend:
        folder = Path(bpy.path.abspath("//textures"))
        folder.mkdir(parents=True, exist_ok=True)
        stem = job_folder.slug(name, 48)
        dest = folder / f"{stem}.png"
        index = 1
        while dest.exists():
            dest = folder / f"{stem}-{index}.png"
            index += 1
        shutil.copy2(path, dest)
        image = created.add(bpy.data.images, bpy.data.images.load(str(dest), check_existing=False))
        try:
            image.filepath = bpy.path.relpath(str(dest))
        except ValueError:  # another drive on Windows
            pass
    else:
        image = created.add(bpy.data.images, bpy.data.images.load(str(path), check_existing=False))
        image.pack()
        image.filepath_raw = f"//textures/{job_folder.slug(name, 48)}.png"
    image.name = name
    if image.size[0] == 0:
        raise UserError(f"The engine's {what} could not be read.", ADVICE["bad_output"])
    if colorspace is not None:
        image.colorspace_settings.name = colorspace
    return image


@dataclass(frozen=True)
class MaterialFiles:
    """A texture result's images, checked before the object is touched: the base colour (sRGB), and
    for a PBR result the ORM map (glTF's packing: G roughness, B metallic) and maybe a normal map."""

    base_colour: Path
    orm: Path | None = None
    normal: Path | None = None  # tangent space, OpenGL convention (+Y up), as Blender's Normal Map node reads it


@dataclass(frozen=True)
class MaterialImages:
    base_colour: bpy.types.Image
    orm: bpy.types.Image | None = None
    normal: bpy.types.Image | None = None


def material_files(job) -> MaterialFiles:
    """The files of the result's material (result.json's "material"); an albedo result reads only its texture."""
    base_colour = output_file(job, "texture")
    if job.outcome.material != "pbr":
        return MaterialFiles(base_colour)
    return MaterialFiles(base_colour, output_file(job, "orm"), output_file(job, "normal", required=False))


def load_material_images(files: MaterialFiles, name: str, storage: str, created: Created) -> MaterialImages:
    base_colour = load_image(files.base_colour, name, storage, created)
    orm = normal = None
    if files.orm is not None:
        orm = load_image(files.orm, f"{name} ORM", storage, created, "roughness and metallic map", NON_COLOR)
    if files.normal is not None:
        normal = load_image(files.normal, f"{name} normal", storage, created, "normal map", NON_COLOR)
    return MaterialImages(base_colour, orm, normal)


def _image_node(tree, image, label: str, location, uv):
    tex = tree.nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.label = label
    tex.location = location
    tree.links.new(uv.outputs["UV"], tex.inputs["Vector"])
    return tex


def make_material(name: str, images: MaterialImages, uv_map: str, created: Created, props: dict):
    """A Principled BSDF material: the base colour image, and for PBR roughness and metallic from the
    ORM map through a Separate Color node and the normal map through a Normal Map node, all on ``uv_map``.
    An albedo material is matte (Roughness 0.7, Metallic 0), as before PBR results existed."""
    mat = created.add(bpy.data.materials, bpy.data.materials.new(name))
    if mat.node_tree is None:  # Blender < 5.0: new materials start without nodes
        mat.use_nodes = True
    tree = mat.node_tree
    bsdf = next((n for n in tree.nodes if n.type == 'BSDF_PRINCIPLED'), None)
    output = next((n for n in tree.nodes if n.type == 'OUTPUT_MATERIAL'), None)
    if output is None:
        output = tree.nodes.new("ShaderNodeOutputMaterial")
        output.location = (300, 300)
    if bsdf is None:
        bsdf = tree.nodes.new("ShaderNodeBsdfPrincipled")
        bsdf.location = (10, 300)
        tree.links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])
    pbr = images.orm is not None or images.normal is not None
    # A PBR material's images stand one column further left, making room for the nodes that read them.
    column = bsdf.location.x - (520 if pbr else 320)
    uv = tree.nodes.new("ShaderNodeUVMap")
    uv.uv_map = uv_map
    uv.location = (column - 220, bsdf.location.y - 120)
    tex = _image_node(tree, images.base_colour, "CSD texture", (column, bsdf.location.y), uv)
    tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    if images.orm is not None:
        orm = _image_node(tree, images.orm, "CSD roughness and metallic (ORM)", (column, bsdf.location.y - 300), uv)
        split = tree.nodes.new("ShaderNodeSeparateColor")
        split.mode = 'RGB'
        split.location = (bsdf.location.x - 220, bsdf.location.y - 300)
        tree.links.new(orm.outputs["Color"], split.inputs["Color"])
        tree.links.new(split.outputs["Green"], bsdf.inputs["Roughness"])
        tree.links.new(split.outputs["Blue"], bsdf.inputs["Metallic"])
    elif "Roughness" in bsdf.inputs:
        bsdf.inputs["Roughness"].default_value = 0.7
    if images.normal is not None:
        normal = _image_node(tree, images.normal, "CSD normal", (column, bsdf.location.y - 600), uv)
        normal_map = tree.nodes.new("ShaderNodeNormalMap")
        normal_map.space = 'TANGENT'
        normal_map.uv_map = uv_map  # the tangents of the UV map the texture was baked on
        normal_map.location = (bsdf.location.x - 220, bsdf.location.y - 600)
        tree.links.new(normal.outputs["Color"], normal_map.inputs["Color"])
        tree.links.new(normal_map.outputs["Normal"], bsdf.inputs["Normal"])
    tree.nodes.active = tex
    for key, value in props.items():
        mat[key] = value
    return mat


class _ObjectMode:
    """Mesh data written in Edit Mode would be overwritten when it is left: switch out and back."""

    def __init__(self, obj):
        self.obj = obj
        self.was_edit = obj.mode == 'EDIT'

    def __enter__(self):
        if self.was_edit:
            with bpy.context.temp_override(active_object=self.obj, object=self.obj, selected_objects=[self.obj]):
                bpy.ops.object.mode_set(mode='OBJECT')
        return self

    def __exit__(self, *exc):
        if self.was_edit:
            with bpy.context.temp_override(active_object=self.obj, object=self.obj, selected_objects=[self.obj]):
                bpy.ops.object.mode_set(mode='EDIT')
        return False


def add_corner_uvs(obj, corner_uvs: np.ndarray, tri_loops: np.ndarray, counts: dict) -> str:
    """A new UV map from the engine's per-corner UVs (in mesh.npz's triangle order)."""
    mesh = obj.data
    if mesh_export.mesh_counts(mesh) != counts:
        raise UserError(f"'{obj.name}' was edited while the engine worked, so the new UV layout no longer fits.",
                        "Run Texture Selected again.")
    corner_uvs = np.asarray(corner_uvs, dtype=np.float32)
    if corner_uvs.shape != (len(tri_loops), 3, 2) or not np.all(np.isfinite(corner_uvs)):
        raise UserError("The engine's UV layout does not match the mesh it was given.",
                        "The extension and the engine may not match: update both.")
    if len(mesh.uv_layers) >= MAX_UV_MAPS:
        raise UserError(f"'{obj.name}' already has {MAX_UV_MAPS} UV maps, Blender's maximum.",
                        "Remove one (Object Data properties > UV Maps), or turn off 'New UV layout'.")
    layer = mesh.uv_layers.new(name=CSD_UV, do_init=False)
    if layer is None:
        raise UserError(f"A UV map could not be added to '{obj.name}'.", "")
    uv = np.zeros((len(mesh.loops), 2), dtype=np.float32)
    uv[np.asarray(tri_loops).reshape(-1)] = corner_uvs.reshape(-1, 2)
    layer.data.foreach_set("uv", uv.reshape(-1))
    mesh.uv_layers.active = layer
    return layer.name


def apply_material(obj, mat) -> None:
    """Append the material as a new slot and show it on every face; earlier slots stay."""
    mesh = obj.data
    mesh.materials.append(mat)
    index = len(mesh.materials) - 1
    if index < len(obj.material_slots) and obj.material_slots[index].link == 'OBJECT':
        obj.material_slots[index].material = mat
    mesh.polygons.foreach_set("material_index", np.full(len(mesh.polygons), index, dtype=np.int32))
    mesh.update()


def store_result(job, results_root: Path) -> Path:
    """Keep the job's outputs (with the engine's saved state) for later edits."""
    dest = Path(results_root) / job.job_dir.name
    if dest.exists():
        job_folder.remove_tree(dest)
    if job.keep_dir:
        shutil.copytree(job.output_dir, dest, symlinks=True)  # a link stays a link, never the file it names
    else:
        job_folder.move_tree(job.output_dir, dest)
    return dest


def _revision_of(idblock) -> int:
    try:
        return int(idblock.get(PROP_REVISION, 0))
    except (TypeError, ValueError):
        return 0


def import_texture(job, storage: str, results_root: Path) -> str:
    """A texture (or texture edit) result onto the original object: new image, new material, maybe a UV map."""
    request: TextureRequest | EditRequest = job.request
    obj = find_object(request.target)
    if obj is None or obj.type != 'MESH':
        raise UserError(f"'{request.target.name}' was deleted while the engine worked; the result was not applied.",
                        f"The result is kept in {job.output_dir}.")
    created = Created()
    mesh = obj.data
    uv_before = [layer.name for layer in mesh.uv_layers]
    active_uv_before = mesh.uv_layers.active_index
    materials_before = len(mesh.materials)
    material_index_before = np.empty(len(mesh.polygons), dtype=np.int32)
    mesh.polygons.foreach_get("material_index", material_index_before)
    try:
        with _ObjectMode(obj):
            files = material_files(job)
            uv_map = request.uv_map
            if isinstance(request, TextureRequest) and request.needs_uvs:
                uv_path = output_file(job, "corner_uvs", required=False)
                if uv_path is None:
                    raise UserError("The engine did not return the UV layout it made for this mesh.",
                                    "Update the engine, or give the mesh a UV map (UV > Smart UV Project).")
                tri_loops = np.asarray(request.tri_loops)
                try:
                    corner_uvs = read_corner_uvs(uv_path, len(tri_loops))
                except EngineOutputError as exc:
                    raise UserError(f"The engine's output was refused: {exc}.", ADVICE["bad_output"]) from None
                uv_map = add_corner_uvs(obj, corner_uvs, tri_loops, request.target.counts)
            elif not uv_map or uv_map not in mesh.uv_layers:
                raise UserError(f"The UV map '{uv_map}' of '{obj.name}' was removed while the engine worked.",
                                "Run the job again.")
            prompt = request.prompt
            revision = _revision_of(obj) + 1
            label = short(prompt) + (f" rev {revision}" if job.task == "edit" else "")
            images = load_material_images(files, f"CSD {label}", storage, created)
            stored = store_result(job, results_root)
            props = {PROP_RESULT: str(stored), PROP_TASK: job.task, PROP_PROMPT: prompt,
                     PROP_REVISION: revision, PROP_UV_MAP: uv_map}
            mat = make_material(f"CSD {label}", images, uv_map, created, props)
            apply_material(obj, mat)
            for key, value in props.items():
                obj[key] = value
            if isinstance(request, EditRequest) and request.source_task == "generate":
                obj[PROP_TASK] = "generate"
    except BaseException:
        # put the object back exactly as it was
        created.rollback()
        while len(mesh.materials) > materials_before:
            mesh.materials.pop(index=len(mesh.materials) - 1)
        for layer in list(mesh.uv_layers):
            if layer.name not in uv_before:
                mesh.uv_layers.remove(layer)
        if 0 <= active_uv_before < len(mesh.uv_layers):
            mesh.uv_layers.active_index = active_uv_before
        if len(material_index_before) == len(mesh.polygons):
            mesh.polygons.foreach_set("material_index", material_index_before)
        raise
    kind = "Edited" if job.task == "edit" else "Textured"
    return f"{kind} '{obj.name}': new material '{mat.name}' (earlier materials kept)."


def _pack_images_in(objects, job_dir: Path) -> None:
    job_real = Path(job_dir).resolve()
    for obj in objects:
        for slot in getattr(obj, "material_slots", []):
            mat = slot.material
            if mat is None or mat.node_tree is None:
                continue
            for node in mat.node_tree.nodes:
                image = getattr(node, "image", None)
                if image is None or image.packed_file is not None:
                    continue
                try:
                    path = Path(bpy.path.abspath(image.filepath)).resolve()
                except (OSError, ValueError):
                    continue
                if job_real in path.parents:
                    image.pack()


def import_glb_objects(path: Path, context, created_objects: list) -> list:
    """Import a GLB; returns the new root objects (the importer may make several)."""
    import addon_utils

    if not hasattr(bpy.ops.import_scene, "gltf"):
        addon_utils.enable("io_scene_gltf2", default_set=False)
    before = {o.as_pointer() for o in bpy.data.objects}
    result = bpy.ops.import_scene.gltf(filepath=str(path))
    new = [o for o in bpy.data.objects if o.as_pointer() not in before]
    created_objects.extend(new)
    if 'FINISHED' not in result or not new:
        raise UserError("The engine's model could not be imported.", "")
    return [o for o in new if o.parent is None or o.parent not in new]


def _remove_objects(objects) -> None:
    meshes = []
    for obj in objects:
        try:
            if obj.type == 'MESH':
                meshes.append(obj.data)
            bpy.data.objects.remove(obj, do_unlink=True)
        except ReferenceError:
            pass
    for mesh in meshes:
        try:
            if mesh.users == 0:
                bpy.data.meshes.remove(mesh)
        except ReferenceError:
            pass


def import_generated(job, context, results_root: Path) -> str:
    """Generate Asset: the GLB becomes new object(s) at the 3D cursor, named after the prompt."""
    request: GenerateRequest = job.request
    glb = output_file(job, "glb")
    created: list = []
    try:
        roots = import_glb_objects(glb, context, created)
        _pack_images_in(created, job.job_dir)
        name = short(request.prompt, 60)
        location = request.location
        stored = store_result(job, results_root)
        for index, root in enumerate(roots):
            root.name = name if index == 0 else f"{name}.{index:03d}"
            root.location = location
        for obj in created:
            obj[PROP_RESULT] = str(stored)
            obj[PROP_TASK] = "generate"
            obj[PROP_PROMPT] = request.prompt
            obj[PROP_REVISION] = 1
            if obj.type == 'MESH' and obj.data.uv_layers.active is not None:
                obj[PROP_UV_MAP] = obj.data.uv_layers.active.name
    except BaseException:
        _remove_objects(created)
        raise
    return f"Generated '{roots[0].name}' at the 3D cursor."


def import_edited_object(job, context, results_root: Path) -> str:
    """A geometry edit of a generated asset: a new object revision where the original stands."""
    request: EditRequest = job.request
    original = find_object(request.target)
    if original is None:
        raise UserError(f"'{request.target.name}' was deleted while the engine worked; the result was not applied.",
                        f"The result is kept in {job.output_dir}.")
    glb = output_file(job, "glb")
    created: list = []
    try:
        roots = import_glb_objects(glb, context, created)
        _pack_images_in(created, job.job_dir)
        revision = _revision_of(original) + 1
        stored = store_result(job, results_root)
        base = original.name.split(" rev ")[0]
        for index, root in enumerate(roots):
            root.name = f"{base} rev {revision}" + (f".{index:03d}" if index else "")
            root.matrix_world = original.matrix_world.copy()
        for obj in created:
            obj[PROP_RESULT] = str(stored)
            obj[PROP_TASK] = "generate"
            obj[PROP_PROMPT] = request.prompt
            obj[PROP_REVISION] = revision
        original.hide_set(True)
    except BaseException:
        _remove_objects(created)
        raise
    return f"Edited '{original.name}': new object '{roots[0].name}' (the original is hidden, not removed)."
