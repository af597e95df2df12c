"""Edit a texture with words: Classifier Score Distillation's editing gradient (paper Eq. 11).

    g = w1 * (e(y_target) - e("")) - w2 * (e(y_edit) - e(""))

pulls every render towards the target description and away from the attribute being changed
(paper section 4, 5.4: w1 = 1, w2 = 0.5; with w2 = 0 it is plain CSD towards the target).
It is `score_distillation_loss` with the prompts [target, "", edit] in the negative's place.

Read top to bottom, this is the whole job (docs/edit.md has the measurements):
  1. open the SOURCE: the output folder of a texture, generate or edit job, whose saved texture
     field simply continues, or any textured mesh file, to whose texture image a fresh field is
     fitted first so that the edit starts from the unedited look;
  2. load the prior and encode [target, "", edit] once;
  3. the texture job's view pool, lighting, backgrounds and step (eager on the CPU, one CUDA
     graph on GPUs); a frozen copy of the source field renders the reference of each view;
  4. optimise the field with Eq. 11 plus an image-space L2 to the source's render from the same
     view, light and background (`preserve_weight`; 0 turns it off), so that what the prompts do
     not mention stays;
  5. bake, export and save exactly as the texture job does; the state is again of kind
     "texture", so edits chain.
A generated asset's geometry is edited (`edit_geometry`) by engine/pipelines/edit_geometry.py.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import HashGridConfig, update_from_dict
from ..errors import BadInputError
from ..field.texture_field import TextureField, fit_field
from ..files import atomic_write_bytes
from ..guidance.score_distillation import score_distillation_loss
from ..job.paths import file_inside, read_bytes_inside
from ..job.outputs import require_ok_result
from ..job.runner import JobContext
from ..job.state_files import TEXTURE_KIND, read_state
from ..mesh.load import load_mesh, load_textured_mesh
from ..mesh.sampling import sample_surface
from ..mesh.types import Normalization, TriangleMesh
from ..mesh.uv import uv_problem
from ..mesh.validate import validate_mesh
from ..prior.base import ControlImages, DiffusionPrior
from ..prior.load import load_prior
from ..render.shading import sample_backgrounds, sample_lighting, shade
from .edit_config import EditJobConfig
from .texture import PreparedMesh, bake_and_export, build_cameras, optimise, save_corner_uvs, write_preview
from .texture_step import EagerTextureStep, GraphedTextureStep, StaticTextureStep, render_albedo_view
from .views import ViewPool

SOURCE_HINT = ("Pass the output folder of a finished texture job (it holds state.pt and mesh.obj), "
               "or a .glb/.gltf/.obj file whose material has a base-colour image texture and UVs.")
MESH_FILE_NAMES = ("mesh.glb", "mesh.gltf", "mesh.obj")
# Fitting a field to a mesh file's texture: surface samples drawn once, a batch of them per step.
FIT_SAMPLES = 1 << 18
# Views over which the summary measures how far the edit moved from the source.
SUMMARY_VIEWS = 8


@dataclass
class EditSource:
    """What an edit starts from: the mesh, the field (parameters or a texture to fit) and the
    settings of the job that made it."""

    kind: str  # "texture_state" (a texture job's folder) or "textured_mesh" (any mesh file)
    path: Path
    mesh: PreparedMesh
    field_config: HashGridConfig
    field_state: dict | None  # saved parameters; None: fit a fresh field to `texture`
    texture: np.ndarray | None  # (H, W, 3) uint8 base colour of a mesh file
    settings: dict  # the source job's settings ({} for mesh files)
    corner_uvs: bytes | None  # the source job's corner_uvs.npy, passed on unchanged (same UV layout)


def run_edit(config: EditJobConfig, context: JobContext) -> dict[str, str]:
    config.validate()
    if config.edit_geometry:  # a generated asset whose surface moves too: engine/pipelines/edit_geometry.py
        from .edit_geometry import run_geometry_edit

        return run_geometry_edit(config, context)
    device, reporter, cancel, out = context.device, context.reporter, context.cancel, context.output_dir
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)

    # 1. The source: mesh, field and the settings it was made with.
    with context.timed("setup_s"):
        reporter.stage("loading source")
        source = open_source(config, context.folder.path)
        for warning in source.mesh.warnings:
            reporter.emit("warning", message=warning)
        texture_hint = None if source.texture is None else max(source.texture.shape[:2])
        config.resolve_source_defaults(source.settings, texture_hint)
        config.hash_grid = source.field_config  # recorded in the saved state, so the next edit can load it
        mesh = source.mesh
        # Written now so the add-on can show live previews (an edit never changes the UV layout).
        context.outputs["corner_uvs"] = write_corner_uvs(out, source)
        positions = torch.from_numpy(mesh.unit.positions).to(device)
        triangles = torch.from_numpy(mesh.unit.triangles).to(device)
        field = TextureField(source.field_config, seed=config.seed).to(device)
        fit_rmse = None
        if source.field_state is not None:
            load_field_state(field, source.field_state, source.path)
        else:
            reporter.stage("fitting source texture")
            fit_rmse = fit_field_to_texture(field, mesh.unit, source.texture, config.fit_steps, generator, device,
                                            cancel)
        source_field = copy.deepcopy(field).requires_grad_(False)
        cancel.check()

        # 2. The prior and the prompts, in score_distillation_loss's order [target, "", edit].
        reporter.stage("loading model")
        prior = load_prior(config.prior, device)
        embeddings = encode_edit_prompts(prior, config)
        for warning in prior.warnings:  # e.g. which ControlNets `auto` picked, a prompt cut at the token limit
            reporter.emit("warning", message=warning)
        cancel.check()

        # 3. The views: rasterised once, on first use; the step (eager on CPU, one CUDA graph on GPUs).
        cameras = build_cameras(config, mesh.normalization, generator)
        views = ViewPool(positions, triangles, cameras, config.render_size, with_control=prior.supports_controlnet)
        edit_step = make_edit_step(field, source_field, prior, views, cameras, embeddings, config, generator, device)
        for warning in edit_step.warnings:
            reporter.emit("warning", message=warning)

    # 4. Optimisation: Eq. 11, plus the pull back towards the source's render.
    loss_value = optimise(edit_step, config.steps, config.preview_every, context,
                          lambda step: write_preview(field, mesh, views, out, step, device, context))

    # 5. Bake and export, as the texture job.
    with context.timed("bake_s"):
        change = change_from_source(field, source_field, views, SUMMARY_VIEWS)
    outputs, coverage = bake_and_export(field, mesh, config, context)
    summary = {"source_kind": source.kind, "coverage": round(coverage, 4), "final_loss": loss_value,
               "change_from_source": round(change, 5)}
    if fit_rmse is not None:
        summary["fit_rmse"] = round(fit_rmse, 5)
    reporter.emit("summary", **summary)
    return outputs


# --- 1. The source ------------------------------------------------------------------------------

def open_source(config: EditJobConfig, out: Path) -> EditSource:
    """The edit's starting point, or a BadInputError saying why SOURCE cannot be one."""
    path = Path(config.source)
    if not path.exists():
        raise BadInputError(f"The edit source {path} does not exist.", SOURCE_HINT)
    if path.is_dir() and path.resolve() == Path(out).resolve():
        raise BadInputError(f"The output folder is the source folder {path}; the edit would overwrite its source.",
                            "Choose another --out folder.")
    if path.is_dir():
        if file_inside(path, "state.pt", "The source's state.pt") is not None:
            source = open_state_folder(path)
            require_ok_result(path, "The edit source")
            return source
        for name in MESH_FILE_NAMES:
            mesh_path = file_inside(path, name, f"The source's {name}")
            if mesh_path is not None:
                return open_textured_mesh(mesh_path, config.up_axis, config.hash_grid)
        raise BadInputError(f"{path} holds no state.pt and no textured mesh ({', '.join(MESH_FILE_NAMES)}).",
                            SOURCE_HINT)
    return open_textured_mesh(path, config.up_axis, config.hash_grid)


def open_state_folder(folder: Path) -> EditSource:
    """A texture job's output: its field continues, on its mesh.obj, in its saved frame."""
    state_path = folder / "state.pt"
    state = read_state(folder, "state.pt", TEXTURE_KIND)
    try:
        field_config = update_from_dict(HashGridConfig(), dict(state["field_config"]), "state.field_config")
        field_config.validate()
        normalization = Normalization.from_dict(state["normalization"])
    except (BadInputError, KeyError, TypeError, ValueError) as error:
        raise BadInputError(f"{state_path} has an unusable field layout or frame ({error}).",
                            "Run the texture job again with this engine.") from error
    mesh_path = file_inside(folder, "mesh.obj", "The source's mesh.obj")
    if mesh_path is None:
        raise BadInputError(f"{folder} has state.pt but no mesh.obj to put the texture on.",
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
    settings = state.get("settings") if isinstance(state.get("settings"), dict) else {}
    return EditSource("texture_state", folder, mesh, field_config, state["field"], None, settings, corner_uvs)


def check_corner_uvs(data: bytes, path: Path) -> None:
    """The source's corner_uvs.npy is copied into the outputs unchanged: it must be what its name
    says, float (F, 3, 2) per-corner UVs, and nothing else."""
    try:
        uvs = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise BadInputError(f"{path} is not a .npy array ({str(error).splitlines()[0][:200]}).",
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
    return EditSource("textured_mesh", path, mesh, field_config, None, texture, {}, None)


def is_placeholder_texture(texture: np.ndarray) -> bool:
    """trimesh gives a mesh with UVs but no material a tiny grey stand-in image: not a texture."""
    import trimesh

    placeholder = np.asarray(trimesh.visual.material.empty_material().image.convert("RGB"))
    return texture.shape == placeholder.shape and np.array_equal(texture, placeholder)


def write_corner_uvs(out: Path, source: EditSource) -> str:
    """The source job's corner_uvs.npy, unchanged (it is in the add-on's original triangle order),
    or, for a mesh file, the file's own UVs in its triangle order."""
    if source.corner_uvs is not None:
        atomic_write_bytes(out / "corner_uvs.npy", source.corner_uvs)
        return "corner_uvs.npy"
    return save_corner_uvs(out, source.mesh)


def load_field_state(field: TextureField, state: dict, source: Path) -> None:
    try:
        field.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as error:
        raise BadInputError(f"The texture field saved in {source} does not fit this engine's field "
                            f"({str(error).splitlines()[0][:200]}).",
                            "Run the texture job again with this engine.") from error


def fit_field_to_texture(field: TextureField, mesh_unit: TriangleMesh, texture: np.ndarray, steps: int,
                         generator: torch.Generator, device: torch.device, cancel) -> float:
    """Regress the field, at points spread over the surface by area, to the texture's colour
    there (looked up through the UVs, bilinearly). Returns the RMSE on the last batch."""
    points, uvs = sample_surface(mesh_unit, FIT_SAMPLES, generator)
    return fit_field(field, points.to(device), sample_texture(texture, uvs).to(device), steps, generator, cancel)


def sample_texture(texture: np.ndarray, uvs: torch.Tensor) -> torch.Tensor:
    """Bilinear colours (N, 3) in [0, 1] of a uint8 (H, W, 3) image at UVs (v up: row 0 is v = 1)."""
    image = torch.tensor(texture[..., :3]).float().div(255.0).permute(2, 0, 1)[None]
    grid = torch.stack([uvs[:, 0] * 2.0 - 1.0, 1.0 - uvs[:, 1] * 2.0], dim=-1)[None, :, None, :]
    colours = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return colours[0, :, :, 0].T.contiguous()


# --- 2. The prompts -----------------------------------------------------------------------------

def encode_edit_prompts(prior: DiffusionPrior, config: EditJobConfig) -> torch.Tensor:
    """(K, L, D): target, empty, and (when given) edit prompt embeddings, computed once.

    With these in the order score_distillation_loss expects ([prompt, "", negative]), its CSD
    gradient is Eq. 11; without an edit prompt it is plain CSD towards the target (Eq. 7)."""
    prompts = [config.target_prompt, ""]
    if config.edit_prompt.strip():
        prompts.append(config.edit_prompt)
    embeddings = prior.encode_prompts(prompts)
    prior.release_text_encoder()
    return embeddings


# --- 3, 4. The step: Eq. 11 and preservation -------------------------------------------------

def preservation_loss(rgb: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Image-space L2: the mean over pixels of the squared RGB difference to the source's render."""
    return ((rgb - reference.detach()) ** 2).sum(dim=-1).mean()


class EagerEditStep(EagerTextureStep):
    """The texture job's step (same views, lights, backgrounds, prior call and ControlNets) with
    the prompts [target, "", edit], so score_distillation_loss applies Eq. 11, and the source
    field's render from the same view, light and background as the preservation target."""

    def __init__(self, field: TextureField, source_field: TextureField, *args):
        super().__init__(field, *args)
        self.source_field = source_field

    def __call__(self, step: int) -> torch.Tensor:
        config, generator, device = self.config, self.generator, self.device
        index = int(torch.randint(len(self.cameras), (1,), generator=generator))
        view, control = self.views.get(index)
        lighting = sample_lighting(self.cameras.index([index]).to(device), generator) if config.lighting else None
        background = sample_backgrounds(1, generator, device)
        rgb = shade(render_albedo_view(self.field, view), view.normal, view.mask, lighting, background)
        x = self.prior.images_to_model_input(rgb.permute(0, 3, 1, 2))

        control_images = ControlImages(control, config.prior.controlnet_scale_at(step)) if control else None
        loss = score_distillation_loss(self.prior, x, self.embeddings, config.guidance, step, generator,
                                       control_images).loss
        if config.preserve_weight > 0:
            with torch.no_grad():
                reference = shade(render_albedo_view(self.source_field, view), view.normal, view.mask, lighting,
                                  background)
            loss = loss + config.preserve_weight * preservation_loss(rgb, reference)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class StaticEditStep(StaticTextureStep):
    """EagerEditStep's maths with the texture job's static shapes (engine/pipelines/texture_step.py):
    the source field is evaluated at the same padded points as the field."""

    def __init__(self, field: TextureField, source_field: TextureField, *args):
        self.source_field = source_field
        self._rgb: torch.Tensor | None = None
        super().__init__(field, *args)

    def render(self) -> torch.Tensor:
        self._rgb = super().render()
        return self._rgb

    def loss(self) -> torch.Tensor:
        loss = super().loss()  # renders (and keeps) the field's image
        weight = self.config.preserve_weight
        if weight > 0:
            with torch.no_grad():
                values = self.source_field(self.points)
                flat = values.new_zeros(self.height * self.width + 1, 3).index_put((self.pixels,), values)
                albedo = flat[:-1].view(1, self.height, self.width, 3)
                reference = shade(albedo, self.normal, self.mask, self.lighting, self.background)
            loss = loss + weight * preservation_loss(self._rgb, reference)
        return loss


class GraphedEditStep(StaticEditStep, GraphedTextureStep):
    """StaticEditStep captured once as a CUDA graph (forward, backward and Adam), as the texture job's."""


def make_edit_step(field: TextureField, source_field: TextureField, prior: DiffusionPrior, views: ViewPool,
                   cameras, embeddings: torch.Tensor, config: EditJobConfig, generator: torch.Generator,
                   device: torch.device, mode: str = "auto") -> EagerEditStep | StaticEditStep | GraphedEditStep:
    """As make_texture_step: graphed on CUDA (eager, with a warning, if capture fails), eager elsewhere."""
    args = (field, source_field, prior, views, cameras, embeddings, config, generator, device)
    if mode == "eager" or (mode == "auto" and device.type != "cuda"):
        return EagerEditStep(*args)
    if mode == "static":
        return StaticEditStep(*args)
    if mode == "graphed":
        return GraphedEditStep(*args)
    try:
        return GraphedEditStep(*args)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:
        torch.cuda.synchronize(device)
        field.zero_grad(set_to_none=True)
        step = EagerEditStep(*args)
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        step.warnings.append(f"The CUDA-graph edit step could not be captured ({reason}); using the eager step.")
        return step


def change_from_source(field: TextureField, source_field: TextureField, views: ViewPool, count: int) -> float:
    """Mean absolute albedo difference (0..1) between the field and the source over the first
    `count` views' visible pixels: how much the edit changed."""
    total, pixels = 0.0, 0
    with torch.no_grad():
        for index in range(min(count, len(views))):
            view, _ = views.get(index)
            difference = (render_albedo_view(field, view) - render_albedo_view(source_field, view)).abs().mean(dim=-1)
            total += float(difference[view.mask].sum())
            pixels += int(view.mask.sum())
    return total / max(pixels, 1)
