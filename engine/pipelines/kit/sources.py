"""What an edit starts from, opened in one place: the output folder of a texture, generate or
edit job (its texture state continues), any textured mesh file (a fresh field is fitted to its
image), or, for a geometry edit, a generated asset's refined-mesh state with its export frame.
Each opener refuses an unusable source with a BadInputError saying why."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...config import HashGridConfig, update_from_dict
from ...errors import BadInputError, first_line
from ...field.texture_field import MATERIAL_CHANNELS
from ...job.outputs import require_ok_result
from ...job.paths import file_inside, read_bytes_inside
from ...job.state_files import REFINED_MESH_STATE, TEXTURE_STATE, RefinedMeshState, TextureState, applying_state
from ...mesh.extract import Placement
from ...mesh.load import load_mesh, load_textured_mesh
from ...mesh.types import Normalization
from ...mesh.uv import uv_problem
from ...mesh.validate import validate_mesh
from ...refine.refinable_mesh import RefinableMesh
from .outputs import PreparedMesh, on_the_ground

SOURCE_HINT = ("Pass the output folder of a finished texture job (it holds state.pt and mesh.obj), "
               "or a .glb/.gltf/.obj file whose material has a base-colour image texture and UVs.")
MESH_FILE_NAMES = ("mesh.glb", "mesh.gltf", "mesh.obj")


@dataclass
class EditSource:
    """What an appearance edit starts from: the mesh, the field (parameters or a texture to fit)
    and the settings of the job that made it."""

    kind: str  # "texture_state" (a texture job's folder) or "textured_mesh" (any mesh file)
    path: Path
    mesh: PreparedMesh
    field_config: HashGridConfig
    field_state: dict | None  # saved parameters; None: fit a fresh field to `texture`
    texture: np.ndarray | None  # (H, W, 3) uint8 base colour of a mesh file
    settings: dict  # the source job's settings ({} for mesh files)
    corner_uvs: bytes | None  # the source job's corner_uvs.npy, passed on unchanged (same UV layout)
    material: str | None  # the saved field's material ("albedo" or "pbr"); None for mesh files


@dataclass
class GeneratedAsset:
    """A generate job's refined mesh, ready to continue (a geometry edit)."""

    path: Path
    mesh: RefinableMesh
    state: RefinedMeshState  # stage2.pt as saved (settings, placement, frames)
    normalization: Normalization  # the export's frame: unit box -> the user's world (on the ground)
    corner_uvs: np.ndarray | None  # the export's UV layout, per triangle of `mesh`; None: unwrap anew
    texture_size: int | None  # the source's texture.png size
    warnings: list[str]


def refuse_missing_or_own_folder(path: Path, out: Path) -> None:
    if not path.exists():
        raise BadInputError(f"The edit source {path} does not exist.", SOURCE_HINT)
    if path.is_dir() and path.resolve() == Path(out).resolve():
        raise BadInputError(f"The output folder is the source folder {path}; the edit would overwrite its source.",
                            "Choose another --out folder.")


# --- Appearance edits ---------------------------------------------------------------------------

def open_source(config, out: Path) -> EditSource:
    """The starting point of an edit `config` (its source, up axis and field layout for a mesh
    file), or a BadInputError saying why its source cannot be one."""
    path, up_axis, field_config = Path(config.source), config.up_axis, config.hash_grid
    refuse_missing_or_own_folder(path, out)
    if path.is_dir():
        if file_inside(path, TEXTURE_STATE, f"The source's {TEXTURE_STATE}") is not None:
            opened = open_state_folder(path)
            require_ok_result(path, "The edit source")
            return opened
        for name in MESH_FILE_NAMES:
            mesh_path = file_inside(path, name, f"The source's {name}")
            if mesh_path is not None:
                return open_textured_mesh(mesh_path, up_axis, field_config)
        raise BadInputError(f"{path} holds no {TEXTURE_STATE} and no textured mesh ({', '.join(MESH_FILE_NAMES)}).",
                            SOURCE_HINT)
    return open_textured_mesh(path, up_axis, field_config)


def open_state_folder(folder: Path) -> EditSource:
    """A texture job's output: its field continues, on its mesh.obj, in its saved frame."""
    state_path = folder / TEXTURE_STATE
    state = TextureState.load(folder)
    if state.material not in MATERIAL_CHANNELS:
        raise BadInputError(f"{state_path} holds a field of an unknown material {state.material!r}.",
                            f"This engine knows {' and '.join(MATERIAL_CHANNELS)} fields. Run the texture job "
                            "again with this engine.")
    try:
        field_config = update_from_dict(HashGridConfig(), dict(state.field_config), "state.field_config")
        field_config.validate()
        normalization = Normalization.from_dict(state.normalization)
    except (BadInputError, KeyError, TypeError, ValueError) as error:
        raise BadInputError(f"{state_path} has an unusable field layout or frame ({error}).",
                            "Run the texture job again with this engine.") from error
    mesh_path = file_inside(folder, "mesh.obj", "The source's mesh.obj")
    if mesh_path is None:
        raise BadInputError(f"{folder} has {TEXTURE_STATE} but no mesh.obj to put the texture on.",
                            "Pass the whole output folder of the texture job, unchanged.")
    # mesh.obj keeps the user's frame (the one the state's normalization maps from) and the
    # triangles in the order the texture job kept them.
    user, _ = load_mesh(mesh_path, normalization.up_axis)
    user, report = validate_mesh(user)
    problem = uv_problem(user.corner_uvs)
    if problem is not None:
        raise BadInputError(f"{mesh_path} has no usable UV layout ({problem}).",
                            "Pass the texture job's output folder unchanged.")
    unit = user.with_positions(normalization.to_unit(user.positions))
    if np.abs(unit.positions).max() > 0.5 + 1e-3:
        raise BadInputError(f"{mesh_path} does not match {state_path}: the mesh lies outside the saved frame.",
                            "Keep the texture job's output files together and unchanged.")
    count = user.num_triangles
    mesh = PreparedMesh(user, unit, normalization, np.arange(count), count, False, list(report.warnings))
    corner_uvs = read_bytes_inside(folder, "corner_uvs.npy", "The source's corner_uvs.npy")
    if corner_uvs is not None:
        check_corner_uvs(corner_uvs, folder / "corner_uvs.npy")
    return EditSource("texture_state", folder, mesh, field_config, state.field, None, state.settings, corner_uvs,
                      state.material)


def check_corner_uvs(data: bytes, path: Path) -> None:
    """The source's corner_uvs.npy is copied into the outputs unchanged: it must be what its name
    says, float (F, 3, 2) per-corner UVs, and nothing else."""
    try:
        uvs = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise BadInputError(f"{path} is not a .npy array ({first_line(error)}).",
                            "Pass the texture job's output folder unchanged.") from error
    if not isinstance(uvs, np.ndarray) or uvs.ndim != 3 or uvs.shape[1:] != (3, 2) \
            or not np.issubdtype(uvs.dtype, np.floating):
        raise BadInputError(f"{path} does not hold per-corner UVs (float, F x 3 x 2).",
                            "Pass the texture job's output folder unchanged.")


def open_textured_mesh(path: Path, up_axis: str | None, field_config: HashGridConfig) -> EditSource:
    """Any mesh with a base-colour texture: a fresh field will be fitted to that image."""
    user, texture, file_up_axis = load_textured_mesh(path, up_axis)
    if texture is None or is_placeholder_texture(texture):
        reason = "no UVs" if user.corner_uvs is None else "no base-colour image texture"
        raise BadInputError(f"{path.name} has {reason}, so there is no texture to edit.",
                            "Texture it first (python -m engine texture MESH --prompt ...) and edit that job's "
                            "output folder, or export the mesh with its image texture (.glb, or .obj with .mtl).")
    user, report = validate_mesh(user)
    problem = uv_problem(user.corner_uvs)
    if problem is not None:
        raise BadInputError(f"{path.name}'s UVs cannot place its texture ({problem}).",
                            "Fix the UVs in Blender so that they lie inside 0..1, and export again.")
    normalization = Normalization.fit(user.positions, file_up_axis)
    unit = user.with_positions(normalization.to_unit(user.positions))
    mesh = PreparedMesh(user, unit, normalization, report.kept_triangles, report.input_triangles, False,
                        list(report.warnings))
    return EditSource("textured_mesh", path, mesh, field_config, None, texture, {}, None, None)


def is_placeholder_texture(texture: np.ndarray) -> bool:
    """trimesh gives a mesh with UVs but no material a tiny grey stand-in image: not a texture."""
    import trimesh

    placeholder = np.asarray(trimesh.visual.material.empty_material().image.convert("RGB"))
    return texture.shape == placeholder.shape and np.array_equal(texture, placeholder)


# --- Geometry edits -----------------------------------------------------------------------------

def open_generated_asset(source: str | Path, out: Path) -> GeneratedAsset:
    """A generate job's output folder with a finished refinement stage, or a clear BadInputError."""
    path = Path(source)
    refuse_missing_or_own_folder(path, out)
    state_path = path / REFINED_MESH_STATE
    if not path.is_dir() or not state_path.is_file():
        raise BadInputError(f"--edit-geometry needs a generated asset's refinement state ({REFINED_MESH_STATE}); "
                            f"{path} has none (a texture on a fixed mesh, or a mesh file, has no editable geometry).",
                            "Pass the output folder of a finished generate job, or leave out --edit-geometry "
                            "to edit the texture.")
    mesh, state = load_refined_mesh(state_path)
    if not state.complete:
        raise BadInputError(f"{state_path} is from an unfinished refinement stage.",
                            "Finish the generate job first (python -m engine generate ... --resume).")
    require_ok_result(path, "The edit source")
    # The export put the asset back on the ground; that frame is kept so the edit lands in place.
    with applying_state(state_path):
        if state.export_normalization is not None:
            normalization = Normalization.from_dict(state.export_normalization)
        else:
            normalization = on_the_ground(Normalization.from_dict(state.normalization),
                                                 mesh.positions().detach().cpu().numpy())
    corner_uvs, warnings = exported_uv_layout(path, mesh, normalization)
    texture_size = None
    texture_path = file_inside(path, "texture.png", "The source's texture.png")
    if texture_path is not None:
        with Image.open(texture_path) as image:
            texture_size = max(image.size)
    return GeneratedAsset(path, mesh, state, normalization, corner_uvs, texture_size, warnings)


def load_refined_mesh(path: Path) -> tuple[RefinableMesh, RefinedMeshState]:
    """A saved refined-mesh state as a RefinableMesh (unit box, on the CPU), and the state."""
    state = RefinedMeshState.load(path.parent, path.name)
    if state is None:
        raise BadInputError(f"{path} is not a generate job's stage-2 state.", "Pass the stage2.pt of a generate run.")
    with applying_state(path):
        hash_grid = update_from_dict(HashGridConfig(), dict(state.settings["hash_grid"]), "state.hash_grid")
        hash_grid.validate()
        buffers = state.model
        mesh = RefinableMesh(buffers["base"].numpy(), buffers["triangles"].numpy(), hash_grid)
        mesh.load_state_dict(buffers)
        Normalization.from_dict(state.normalization), Placement.from_dict(state.placement)  # frames that read
    return mesh, state


def exported_uv_layout(folder: Path, mesh: RefinableMesh, normalization: Normalization
                       ) -> tuple[np.ndarray | None, list[str]]:
    """The corner UVs of the source's mesh.obj, if it is the refined mesh triangle for triangle."""
    obj = file_inside(folder, "mesh.obj", "The source's mesh.obj")
    if obj is None:
        return None, [f"{folder} has no mesh.obj; the edited asset gets a new UV layout."]
    exported, _ = load_mesh(obj, "Z")
    triangles = mesh.triangles.cpu().numpy()
    unit = mesh.positions().detach().cpu().numpy()
    same = (exported.num_triangles == len(triangles) and uv_problem(exported.corner_uvs) is None
            and np.allclose(normalization.to_unit(exported.positions)[exported.triangles], unit[triangles], atol=1e-4))
    if not same:
        return None, [f"{obj} does not match {REFINED_MESH_STATE}; the edited asset gets a new UV layout."]
    return exported.corner_uvs, []
