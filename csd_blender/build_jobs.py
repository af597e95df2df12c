"""The scene to jobs: each action's checks, its job folders written, and what the import will need.

``prepare_texture``, ``prepare_generate`` and ``prepare_edit`` read the scene and the selection,
raise a UserError for anything the artist can fix, and return the queued-to-be jobs, each with
its typed request (csd_blender.exchange.requests), and notes for the artist. In remote mode the
same job folder is written, with the request kept beside it (a later session may import the
result: ``prepare_fetch_remote``). With a Region other than Whole object, texture and edit jobs also
carry the region's faces and, for texture jobs, the texture kept outside them (docs/job-protocol.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from . import preferences
from .blender import mesh_export, result_import
from .engine_setup import EngineLaunch, engine_launch, remote_server
from .exchange import job_folder, protocol, remote, remote_process
from .exchange import settings as settings_mod
from .exchange.errors import UserError
from .exchange.queue import QUEUE, Job
from .exchange.remote_process import RemoteTarget
from .exchange.requests import (
    EditRequest,
    GenerateRequest,
    JobRequest,
    MeshOverlay,
    ObjectRef,
    TextureRequest,
)


def require_prompt(text: str, what: str = "prompt") -> str:
    if not text or not text.strip():
        raise UserError(f"The {what} is empty.", "Describe what you want, e.g. 'a wooden chair with carved legs'.")
    return text.strip()


Engine = EngineLaunch | RemoteTarget


def with_material(settings: dict, choice: str) -> dict:
    """The panel's Material choice as the job's ``material`` setting (texture and edit jobs). Auto sends
    none, so the engine decides: PBR for real priors, albedo for the bundled one, an edit its source's."""
    if choice != 'AUTO':
        settings["material"] = choice.lower()
    return settings


def _engine(prefs, models: dict[str, str]) -> Engine:
    """Where the job runs: the engine on this computer, or the remote server (whose jobs may not
    name folders on this computer: ``models``, role -> the model setting the job uses)."""
    if not preferences.is_remote(prefs):
        return engine_launch(prefs)
    config = remote_server(prefs)
    remote.check_remote_models(models, preferences.EngineState.server_models)
    return RemoteTarget(config)


def _new_job_dir(task: str, label: str, engine: Engine) -> Path:
    try:
        if isinstance(engine, RemoteTarget):
            root = preferences.remote_jobs_root()
            remote_process.prune(root, keep=10, busy={job.job_dir for job in QUEUE.jobs})
        else:
            root = preferences.jobs_root()
            if not QUEUE.busy:  # failed jobs keep their folders (and logs) for a while: the newest ten
                job_folder.prune_job_dirs(root, keep=10)
        return job_folder.create_job_dir(root, task, label)
    except OSError as exc:
        raise UserError(f"The job folder could not be created: {exc}.", "Check free disk space and permissions.") from None


def _job(task: str, label: str, job_dir: Path, engine: Engine, prefs, request: JobRequest, context) -> Job:
    if isinstance(engine, RemoteTarget):
        try:
            remote_process.save_request(job_dir, task, label, context.blend_data.filepath, request)
        except OSError as exc:
            job_folder.remove_tree(job_dir)
            raise UserError(f"The job folder could not be written: {exc}.", "Check free disk space.") from None
        return Job(task, label, job_dir, "", None, keep_dir=prefs.keep_job_folders, request=request, remote=engine)
    return Job(task, label, job_dir, engine.python, engine.source, engine.env, keep_dir=prefs.keep_job_folders,
               request=request)


def _object_ref(obj, counts: dict[str, int]) -> ObjectRef:
    return ObjectRef(obj.name, getattr(obj, "session_uid", None), counts)


# -- regions ------------------------------------------------------------------------------------------

REGION_FILE = "region.npy"
KEEP_FILE = "keep.png"


@dataclasses.dataclass(frozen=True)
class JobRegion:
    """What a region job writes beside its mesh: the faces to change (indices into the job's mesh: a
    texture job's mesh.npz triangles, an edit source's mesh.obj) and, for a texture job, the texture kept
    outside them."""

    faces: np.ndarray  # (n,) int32
    kept: mesh_export.KeptTexture | None = None


def region_choice(scene) -> mesh_export.RegionChoice | None:
    """The panel's Region; None for the whole object."""
    if scene.region == 'WHOLE':
        return None
    name = {'VERTEX_GROUP': scene.region_vertex_group, 'MATERIAL': scene.region_material}.get(scene.region, "")
    return mesh_export.RegionChoice(scene.region, name)


def with_region(settings: dict, scene) -> dict:
    """A region job's feather band; only region jobs send it, so a whole object's job stays as it was.
    The distance is rounded: Blender keeps it in single precision (0.03 would be 0.029999999329...)."""
    return {**settings, "region_feather_texels": int(scene.region_feather_texels),
            "region_feather_distance": round(float(scene.region_feather_distance), 6)}


def write_region(job_dir: Path, region: JobRegion | None) -> dict[str, str]:
    """region.npy (and keep.png) in the job folder; the job.json keys that name them (none without a region)."""
    if region is None:
        return {}
    np.save(job_dir / REGION_FILE, np.ascontiguousarray(region.faces, dtype=np.int32))
    keys = {"region": REGION_FILE}
    if region.kept is not None:
        region.kept.write_png(job_dir / KEEP_FILE)
        keys["keep_texture"] = KEEP_FILE
    return keys


def _texture_region(obj, ex: mesh_export.ExportedMesh, choice: mesh_export.RegionChoice,
                    depsgraph) -> tuple[mesh_export.ExportedMesh, JobRegion]:
    """A texture job's region on one object, and its mesh exported with the UVs of the texture kept."""
    faces = mesh_export.region_triangles(obj, ex, choice)
    kept = mesh_export.kept_texture(obj, ex, faces)
    if kept.uv_map != ex.uv_map:  # the kept texture lies in another UV map than the active one
        ex = mesh_export.export_evaluated_mesh(obj, depsgraph, kept.uv_map)
        if ex.uv_map != kept.uv_map:
            raise UserError(f"The modifiers of '{obj.name}' remove the UV map '{kept.uv_map}' its texture uses.",
                            "Apply the modifiers, or set Region to Whole object.")
    return ex, JobRegion(faces, kept)


def _source_triangles(folder: Path) -> int | None:
    """How many triangles an earlier result's texture was made for (its corner_uvs.npy); None when it has none."""
    path = folder / "corner_uvs.npy"
    if not path.is_file():
        return None
    try:
        return len(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise UserError(f"The earlier result of this object cannot be read ({exc}).",
                        "Texture the object again, then edit a region of it.") from None


def prepare_texture(context) -> tuple[list[Job], list[str]]:
    scene = context.scene.csd
    prefs = preferences.get(context)
    require_prompt(scene.prompt)
    selected = list(context.selected_objects)
    if not selected:
        raise UserError("Nothing is selected.", "Select one or more mesh objects, then click Texture Selected.")
    meshes = [o for o in selected if o.type == 'MESH']
    others = [o for o in selected if o.type != 'MESH']
    if not meshes:
        first = others[0]
        raise UserError(f"No mesh is selected: '{first.name}' is {mesh_export.describe_type(first)}.",
                        "Select one or more mesh objects.")
    for obj in meshes:
        mesh_export.check_mesh_object(obj)
    choice = region_choice(scene)
    if choice is not None and scene.reunwrap:
        raise UserError("A region keeps the object's UV layout (the rest of its texture lies in it), so it cannot "
                        "be used with New UV layout.", "Turn off New UV layout (Advanced), or set Region to Whole object.")
    pd = preferences.as_dict(prefs)
    models = {"texture model": pd["texture_model"]}
    if scene.use_controlnet:
        models.update({"depth ControlNet": pd["controlnet_depth"], "canny ControlNet": pd["controlnet_canny"]})
    engine = _engine(prefs, models)
    depsgraph = context.evaluated_depsgraph_get()
    exports = [(obj, mesh_export.export_evaluated_mesh(obj, depsgraph)) for obj in meshes]
    regions: list[JobRegion | None] = [None] * len(exports)
    if choice is not None:
        for index, (obj, ex) in enumerate(exports):
            ex, regions[index] = _texture_region(obj, ex, choice, depsgraph)
            exports[index] = (obj, ex)
    for obj, ex in exports:
        if (scene.reunwrap or ex.corner_uvs is None) and not ex.same_topology:
            raise UserError(f"'{obj.name}' has no UV map and its modifiers change its faces, so a new UV layout "
                            "could not be put back on it.",
                            "Add a UV map first (UV > Smart UV Project), or apply the modifiers.")
    cameras = mesh_export.scene_cameras(context.scene) if scene.use_scene_cameras else None
    settings = with_material(settings_mod.texture_settings(scene.as_dict(), pd, cameras), scene.material)
    if choice is not None:
        settings = with_region(settings, scene)
    jobs = []
    try:
        for (obj, ex), region in zip(exports, regions, strict=True):
            job_dir = _new_job_dir("texture", obj.name, engine)
            try:
                job_folder.write_mesh_npz(job_dir / protocol.MESH_FILE, ex.positions, ex.triangles, ex.corner_uvs)
                job_folder.write_job(job_dir, "texture", settings, mesh=protocol.MESH_FILE,
                                     **write_region(job_dir, region))
            except OSError as exc:
                job_folder.remove_tree(job_dir)
                raise UserError(f"The job folder could not be written: {exc}.", "Check free disk space.") from None
            needs_uvs = bool(scene.reunwrap or ex.corner_uvs is None)
            request = TextureRequest(
                _object_ref(obj, ex.counts), settings["prompt"], uv_map=None if needs_uvs else ex.uv_map,
                needs_uvs=needs_uvs, tri_loops=ex.tri_loops,
                overlay=MeshOverlay(ex.positions, ex.triangles, None if needs_uvs else ex.corner_uvs))
            jobs.append(_job("texture", obj.name, job_dir, engine, prefs, request, context))
    except BaseException:
        for job in jobs:
            job_folder.remove_tree(job.job_dir)
        raise
    notes = []
    if others:
        names = ", ".join(f"'{o.name}'" for o in others[:3]) + (" ..." if len(others) > 3 else "")
        notes.append(f"Skipped {len(others)} object(s) that are not meshes: {names}.")
    if len(jobs) > 1:
        notes.append(f"Texturing {len(jobs)} objects one after another.")
    return jobs, notes


def prepare_generate(context) -> tuple[list[Job], list[str]]:
    scene = context.scene.csd
    prefs = preferences.get(context)
    prompt = require_prompt(scene.prompt)
    pd = preferences.as_dict(prefs)
    engine = _engine(prefs, {"generate model (stage 1)": pd["generate_model"],
                             "generate model (stage 2)": pd["generate_refine_model"]})
    settings = settings_mod.generate_settings(scene.as_dict(), pd)
    job_dir = _new_job_dir("generate", prompt, engine)
    try:
        job_folder.write_job(job_dir, "generate", settings)
    except OSError as exc:
        job_folder.remove_tree(job_dir)
        raise UserError(f"The job folder could not be written: {exc}.", "Check free disk space.") from None
    request = GenerateRequest(prompt, tuple(context.scene.cursor.location))
    return [_job("generate", result_import.short(prompt, 30), job_dir, engine, prefs, request, context)], []


def _image_texture_uv(obj) -> str | None:
    """The UV map an object's image texture uses, when it has one (None when it has no image texture)."""
    mesh = obj.data
    for slot in obj.material_slots:
        mat = slot.material
        if mat is None or mat.node_tree is None:
            continue
        images = [n for n in mat.node_tree.nodes if n.type == 'TEX_IMAGE' and n.image is not None]
        if not images:
            continue
        uv_nodes = [n for n in mat.node_tree.nodes if n.type == 'UVMAP' and n.uv_map in mesh.uv_layers]
        if uv_nodes:
            return uv_nodes[0].uv_map
        for layer in mesh.uv_layers:
            if layer.active_render:
                return layer.name
        return mesh.uv_layers.active.name if mesh.uv_layers.active else None
    return None


def _edit_region(obj, choice: mesh_export.RegionChoice | None, stored: Path | None, edit_geometry: bool,
                 context) -> JobRegion | None:
    """An edit's region: faces of the mesh the earlier CSD result was made on, i.e. its mesh.obj, which holds
    the texture job's triangles less the degenerate ones the engine dropped (outside the region the engine
    keeps the source's own texture). A texture from elsewhere travels as a GLB whose triangles are in the
    exporter's order, not Blender's, so its faces could not be named."""
    if choice is None:
        return None
    if edit_geometry:
        raise UserError("Edit geometry changes the whole surface, so it cannot keep to a region.",
                        "Turn off Edit geometry, or set Region to Whole object.")
    if stored is None:
        raise UserError(f"A region of '{obj.name}' can be edited once CSD has textured it (its faces are matched to "
                        "that job's mesh); its texture comes from elsewhere.",
                        "Texture it first (Texture Selected, Region: Whole object), or set Region to Whole object.")
    ex = mesh_export.export_evaluated_mesh(obj, context.evaluated_depsgraph_get())
    faces = mesh_export.region_triangles(obj, ex, choice)
    made_for = _source_triangles(stored)
    if made_for is not None and made_for != len(ex.triangles):
        raise UserError(f"'{obj.name}' has {len(ex.triangles)} triangles now, but its texture was made for {made_for}, "
                        "so the region cannot be placed on it.",
                        "Texture it again (Texture Selected), then edit a region of it.")
    dropped = mesh_export.degenerate_triangles(ex.positions, ex.triangles)
    faces = (np.cumsum(~dropped) - 1)[faces[~dropped[faces]]].astype(np.int32)
    if len(faces) == 0:
        raise UserError(f"The region of '{obj.name}' holds only faces of zero area, which have no texture.",
                        "Choose faces with an area, or clean up the mesh (Mesh > Clean Up > Degenerate Dissolve).")
    return JobRegion(faces)


def prepare_edit(context) -> tuple[list[Job], list[str]]:
    scene = context.scene.csd
    prefs = preferences.get(context)
    obj = context.active_object
    if obj is None or not obj.select_get():
        raise UserError("No object is selected to edit.",
                        "Select an object textured or generated by CSD, or any mesh with an image texture.")
    if obj.type != 'MESH':
        raise UserError(f"'{obj.name}' is {mesh_export.describe_type(obj)}, not a mesh.", "Select a textured mesh.")
    mesh_export.check_mesh_object(obj)
    target = require_prompt(scene.target_prompt, "target prompt")
    require_prompt(scene.edit_prompt, "edit prompt")
    stored = obj.get(result_import.PROP_RESULT)
    source_task = obj.get(result_import.PROP_TASK) or "texture"
    uv_map = obj.get(result_import.PROP_UV_MAP)
    ours = bool(stored) and Path(str(stored)).is_dir()
    texture_uv = None if ours else _image_texture_uv(obj)
    if not ours and texture_uv is None:
        raise UserError(f"'{obj.name}' has no texture to edit.",
                        "Texture it first (Texture Selected), or pick an object made by Generate Asset "
                        "or one with an image texture and a UV map.")
    region = _edit_region(obj, region_choice(scene), Path(str(stored)) if ours else None,
                          source_task == "generate" and scene.edit_geometry, context)
    pd = preferences.as_dict(prefs)
    engine = _engine(prefs, {"edit model": pd["edit_model"]})
    job_dir = _new_job_dir("edit", obj.name, engine)
    try:
        if ours:
            job_folder.link_or_copy_tree(Path(str(stored)), job_dir / "source")
            source = "source"
        else:
            source_task = "texture"
            uv_map = texture_uv
            mesh_export.export_glb(obj, str(job_dir / "source.glb"), context)
            source = "source.glb"
        mode = "object" if (source_task == "generate" and scene.edit_geometry) else "material"
        if mode == "object" and scene.material == 'PBR':  # the engine refuses it: say so before it starts
            raise UserError("Edit geometry makes a new object with a base-colour material; it cannot make a PBR "
                            "material.", "Set Material to Auto or Albedo, or turn off Edit geometry.")
        settings = with_material(settings_mod.edit_settings(scene.as_dict(), pd), scene.material)
        if mode == "material":
            settings.pop("edit_geometry", None)
        if region is not None:
            settings = with_region(settings, scene)
        job_folder.write_job(job_dir, "edit", settings, source=source, **write_region(job_dir, region))
    except UserError:
        job_folder.remove_tree(job_dir)
        raise
    except (OSError, RuntimeError) as exc:
        job_folder.remove_tree(job_dir)
        raise UserError(f"The edit job could not be prepared: {exc}.", "Check free disk space.") from None
    if mode == "material" and (not uv_map or uv_map not in obj.data.uv_layers):
        job_folder.remove_tree(job_dir)
        raise UserError(f"'{obj.name}' lost the UV map its texture uses.", "Texture it again, then edit.")
    request = EditRequest(_object_ref(obj, mesh_export.mesh_counts(obj.data)), target, uv_map=uv_map, mode=mode, source_task=source_task)
    return [_job("edit", obj.name, job_dir, engine, prefs, request, context)], []


def _current_target(request: JobRequest, context) -> JobRequest:
    """A kept request's object found in this session: by name, still a mesh with the same counts
    (the session id it was sent with means nothing now); a UserError when it is gone or changed."""
    if not isinstance(request, (TextureRequest, EditRequest)):
        return request
    ref = request.target
    obj = context.blend_data.objects.get(ref.name)
    if obj is None or obj.type != 'MESH' or mesh_export.mesh_counts(obj.data) != ref.counts:
        raise UserError(f"'{ref.name}' was deleted or its mesh changed since its remote job was sent; "
                        "the result was not imported.", "")
    return dataclasses.replace(request, target=_object_ref(obj, ref.counts))


def prepare_fetch_remote(context) -> tuple[list[Job], list[str]]:
    """Jobs following again the remote jobs this .blend sent in an earlier session: a finished one's
    result is imported at once, a running one is followed to its end."""
    prefs = preferences.get(context)
    remote_server(prefs)  # a server URL is set and the network rules allow it
    blend = context.blend_data.filepath
    if not blend:
        raise UserError("This file was never saved, so no remote job belongs to it.",
                        "Open the .blend the remote jobs were sent from.")
    followed = {job.job_dir for job in QUEUE.unfinished}
    records = [r for r in remote_process.pending_records(preferences.remote_jobs_root(), blend)
               if r.job_dir not in followed]
    if not records:
        raise UserError("No remote jobs of this file are waiting to be fetched.",
                        "A remote job is listed here when its file is closed before the job has ended.")
    jobs, notes = [], []
    for record in records:
        try:
            request = _current_target(remote_process.load_request(record.job_dir), context)
        except UserError as exc:
            notes.append(f"{record.label}: {exc.text()} It is kept in {record.job_dir}.")
            continue
        config = remote.server_config(record.server, preferences.read_token(),
                                      online_access=preferences.online_access(),
                                      allow_loopback=prefs.allow_loopback_offline)
        config.check_network()
        jobs.append(Job(record.task, record.label, record.job_dir, "", None, keep_dir=prefs.keep_job_folders,
                        request=request, remote=RemoteTarget(config, record.job_id)))
    if not jobs:
        raise UserError("None of this file's remote jobs can be imported.", " ".join(notes))
    taken = {job.job_dir for job in jobs}
    preferences.RemoteJobs.records = [r for r in preferences.RemoteJobs.records if r.job_dir not in taken]
    return jobs, notes
