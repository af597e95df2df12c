"""Geometry edits of a generated asset (`edit --edit-geometry`): Eq. 11 moves the surface too.

A generate job's refinement stage saves the asset as a mesh whose vertices are base positions
plus learnable offsets, with an albedo field on its surface (stage2.pt). An edit continues both
as the refinement did (its cameras, offset learning rate, normal consistency), with the edit's
gradient (Eq. 11) in place of generation's and the edit job's preservation loss against the
source asset rendered from the same view, light and background. The triangles never change,
so the UV layout of the source's export still holds and is kept.

Read top to bottom:
  1. open the source folder: stage2.pt, and mesh.obj for its UV layout;
  2. load the prior and encode [target, "", edit] once;
  3. optimise offsets and albedo, re-rasterising every step (the geometry moves);
  4. bake into the kept UV layout and export as every job does; state.pt (kind "texture", for
     appearance edits) and stage2.pt (for further geometry edits) so that edits chain.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..bake.bake import bake_texture
from ..config import update_from_dict
from ..errors import BadInputError
from ..guidance.score_distillation import score_distillation_loss
from ..job.outputs import require_ok_result
from ..job.paths import file_inside
from ..job.runner import JobContext
from ..job.state_files import STAGE2_KIND, applying_state, write_state
from ..mesh.load import load_mesh
from ..mesh.types import Normalization, TriangleMesh
from ..mesh.uv import unwrap, uv_problem
from ..prior.load import load_prior
from ..render.cameras import sample_cameras
from ..render.shading import sample_backgrounds, sample_lighting, shade
from .edit import SOURCE_HINT, encode_edit_prompts, preservation_loss
from .edit_config import EditJobConfig
from .generate import ShapeRegulariser
from .generate_config import RefineStageConfig
from .texture import PreparedMesh, export_textured_mesh, optimise, save_corner_uvs, save_state, warning_event

STAGE2_STATE = "stage2.pt"  # engine/pipelines/generate.py's name for the refinement stage's state


@dataclass
class GeneratedAsset:
    """A generate job's refined mesh, ready to continue."""

    path: Path
    mesh: "RefinableMesh"  # noqa: F821 - engine.refine.refinable_mesh, imported with the generate job
    state: dict  # stage2.pt as saved (settings, placement, frames)
    normalization: Normalization  # the export's frame: unit box -> the user's world (on the ground)
    corner_uvs: np.ndarray | None  # the export's UV layout, per triangle of `mesh`; None: unwrap anew
    texture_size: int | None  # the source's texture.png size
    warnings: list[str]


def run_geometry_edit(config: EditJobConfig, context: JobContext) -> dict[str, str]:
    device, reporter, cancel, out = context.device, context.reporter, context.cancel, context.output_dir
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)

    # 1. The source: the refined mesh with its offsets and albedo field.
    with context.timed("setup_s"):
        reporter.stage("loading source")
        asset = open_generated_asset(Path(config.source), context.folder.path)
        for warning in asset.warnings:
            reporter.emit("warning", message=warning)
        settings = asset.state.get("settings", {})
        config.resolve_source_defaults({"stage2": settings}, asset.texture_size)
        config.hash_grid = asset.mesh.texture.field_config
        # How the refinement ran (settings its state lacks, from older versions, are the defaults).
        refine = update_from_dict(RefineStageConfig(), dict(settings), "stage2")
        cameras_config = refine.cameras
        mesh = asset.mesh.to(device)
        offset_lr = refine.vertex_learning_rate(mesh.mean_edge_length())
        source_mesh = copy.deepcopy(mesh).requires_grad_(False)
        cancel.check()

        # 2. The prior and the prompts.
        reporter.stage("loading model")
        prior = load_prior(config.prior, device)
        embeddings = encode_edit_prompts(prior, config)
        optimizer = torch.optim.Adam([{"params": mesh.texture.parameters(), "lr": config.learning_rate},
                                      {"params": [mesh.offsets], "lr": offset_lr}], eps=1e-15)
        cancel.check()

    # 3. Optimisation: Eq. 11, the refinement's regulariser, and the pull back towards the source.
    # Without the planar regions: they hold flat sides flat, and an edit may be asking to round them.
    regulariser = ShapeRegulariser(dataclasses.replace(refine, planar_weight=0.0))

    def edit_step(step: int) -> torch.Tensor:
        cameras = sample_cameras(cameras_config, 1, generator).to(device)
        lighting = sample_lighting(cameras, generator) if config.lighting else None
        background = sample_backgrounds(1, generator, device)
        view, albedo = mesh.render(cameras, config.render_size)
        rgb = shade(albedo, view.normal, view.mask, lighting, background)
        if refine.antialias:
            rgb = mesh.antialias(rgb, view)
        x = prior.images_to_model_input(rgb.permute(0, 3, 1, 2))
        loss = score_distillation_loss(prior, x, embeddings, config.guidance, step, generator).loss
        loss = loss + regulariser(mesh, step)
        if config.preserve_weight > 0:
            with torch.no_grad():
                source_view, source_albedo = source_mesh.render(cameras, config.render_size)
                reference = shade(source_albedo, source_view.normal, source_view.mask, lighting, background)
                if refine.antialias:
                    reference = source_mesh.antialias(reference, source_view)
            loss = loss + config.preserve_weight * preservation_loss(rgb, reference)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def preview(step: int) -> None:
        from .generate import render_mesh_preview, write_preview

        write_preview(context, render_mesh_preview(mesh, device), step)

    loss_value = optimise(edit_step, config.steps, config.preview_every, context, preview)

    # 4. Bake into the kept UV layout and export.
    reporter.stage("baking")
    with context.timed("bake_s"):
        with torch.no_grad():
            unit_positions = mesh.positions().cpu().numpy()
            moved = float((mesh.positions() - source_mesh.positions()).norm(dim=-1).mean())
        prepared = export_mesh(asset, unit_positions, config.texture_size, context)
        baked = bake_texture(prepared.unit, lambda p: mesh.texture(p), config.texture_size, device, cancel=cancel)
    reporter.stage("exporting")
    with context.timed("export_s"):
        outputs = export_textured_mesh(out, prepared, baked.image, cancel)
        outputs["state"] = save_state(out, mesh.texture, config, prepared)
        outputs["state_stage2"] = save_stage2_state(out, asset, mesh, optimizer, generator)
        outputs["corner_uvs"] = save_corner_uvs(out, prepared)
    reporter.emit("summary", source_kind="generated_geometry", coverage=round(float(baked.coverage), 4),
                  final_loss=loss_value, mean_vertex_move=round(moved, 6))
    return outputs


def open_generated_asset(path: Path, out: Path) -> GeneratedAsset:
    """A generate job's output folder with a finished refinement stage, or a clear BadInputError."""
    if not path.exists():
        raise BadInputError(f"The edit source {path} does not exist.", SOURCE_HINT)
    if path.resolve() == Path(out).resolve():
        raise BadInputError(f"The output folder is the source folder {path}; the edit would overwrite its source.",
                            "Choose another --out folder.")
    state_path = path / STAGE2_STATE
    if not path.is_dir() or not state_path.is_file():
        raise BadInputError(f"--edit-geometry needs a generated asset's refinement state ({STAGE2_STATE}); "
                            f"{path} has none (a texture on a fixed mesh, or a mesh file, has no editable geometry).",
                            "Pass the output folder of a finished generate job, or leave out --edit-geometry "
                            "to edit the texture.")
    from .generate import load_stage2_mesh

    mesh, stage2_normalization, _placement, state = load_stage2_mesh(state_path, "cpu")
    if not state.get("complete", False):
        raise BadInputError(f"{state_path} is from an unfinished refinement stage.",
                            "Finish the generate job first (python -m engine generate ... --resume).")
    require_ok_result(path, "The edit source")
    # The export put the asset back on the ground; that frame is kept so the edit lands in place.
    with applying_state(state_path):
        normalization = Normalization.from_dict(state["export_normalization"]) if "export_normalization" in state \
            else ground_normalization(stage2_normalization, mesh.positions().detach().cpu().numpy())
    corner_uvs, warnings = exported_uv_layout(path, mesh, normalization)
    texture_size = None
    texture_path = file_inside(path, "texture.png", "The source's texture.png")
    if texture_path is not None:
        with Image.open(texture_path) as image:
            texture_size = max(image.size)
    return GeneratedAsset(path, mesh, state, normalization, corner_uvs, texture_size, warnings)


def ground_normalization(normalization: Normalization, unit_positions: np.ndarray) -> Normalization:
    """generate.py's export frame: the refinement's frame moved so the lowest vertex is at z = 0."""
    lowest = float(normalization.from_unit(unit_positions)[:, 2].min())
    return Normalization(normalization.center - np.array([0.0, 0.0, lowest]), normalization.scale, "Z")


def exported_uv_layout(folder: Path, mesh, normalization: Normalization) -> tuple[np.ndarray | None, list[str]]:
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
        return None, [f"{obj} does not match {STAGE2_STATE}; the edited asset gets a new UV layout."]
    return exported.corner_uvs, []


def export_mesh(asset: GeneratedAsset, unit_positions: np.ndarray, texture_size: int,
                context: JobContext) -> PreparedMesh:
    triangles = asset.mesh.triangles.cpu().numpy()
    unit = TriangleMesh(unit_positions, triangles, asset.corner_uvs)
    unwrapped = asset.corner_uvs is None
    if unwrapped:
        unit = unwrap(unit, texture_size, context.cancel, warning_event(context))
    user = TriangleMesh(asset.normalization.from_unit(unit.positions), unit.triangles, unit.corner_uvs)
    count = unit.num_triangles
    return PreparedMesh(user, unit, asset.normalization, np.arange(count), count, unwrapped, [])


def save_stage2_state(out: Path, asset: GeneratedAsset, mesh, optimizer: torch.optim.Optimizer,
                      generator: torch.Generator) -> str:
    """The source's refinement state with the edited mesh, so a further geometry edit continues it."""
    state = dict(asset.state)
    state.update(model=mesh.state_dict(), optimizer=optimizer.state_dict(), generator=generator.get_state(),
                 export_normalization=asset.normalization.to_dict())
    write_state(out / STAGE2_STATE, STAGE2_KIND, state)
    return STAGE2_STATE

