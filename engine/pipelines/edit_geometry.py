"""Geometry edits of a generated asset (`edit --edit-geometry`): Eq. 11 moves the surface too.

A generate job's refinement stage saves the asset as a mesh whose vertices are base positions
plus learnable offsets, with an albedo field on its surface (stage2.pt). An edit continues both
as the refinement did (its cameras, offset learning rate, normal consistency), with the edit's
gradient (Eq. 11) in place of generation's and the edit job's preservation loss against the
source asset rendered from the same view, light and background. The triangles never change,
so the UV layout of the source's export still holds and is kept.

Read top to bottom:
  1. open the source folder (engine/pipelines/kit/sources.py): stage2.pt with its export
     frame, and mesh.obj for its UV layout;
  2. load the prior and encode [target, "", edit] once;
  3. optimise offsets and albedo, re-rasterising every step (the geometry moves);
  4. bake into the kept UV layout and export as every job does; state.pt (kind "texture", for
     appearance edits) and stage2.pt (for further geometry edits) so that edits chain.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch

from ..bake.bake import bake_texture
from ..config import EditJobConfig, RefineStageConfig, update_from_dict
from ..guidance.score_distillation import score_distillation_loss
from ..job.runner import JobContext
from ..mesh.types import TriangleMesh
from ..prior.load import load_prior
from ..refine.refinable_mesh import RefinableMesh
from ..render.cameras import sample_cameras
from ..render.shading import sample_backgrounds, sample_lighting, shade
from .kit.loop import LoopPlan, run_loop, seeded_generator
from .kit.outputs import export_textured_mesh, mesh_for_export, save_corner_uvs, save_texture_state, write_preview
from .kit.prompts import edit_prompts, encode_prompts_once
from .kit.refinement import ShapeRegulariser, render_mesh_preview
from .kit.sources import GeneratedAsset, open_generated_asset
from .texture_step import preservation_loss


def run_edit_geometry(config: EditJobConfig, context: JobContext) -> dict[str, str]:
    config.validate()
    device, reporter, cancel, out = context.device, context.reporter, context.cancel, context.output_dir
    generator = seeded_generator(config.seed)

    # 1. The source: the refined mesh with its offsets and albedo field.
    with context.timed("setup_s"):
        reporter.stage("loading source")
        asset = open_generated_asset(config.source, context.folder.path)
        reporter.warnings(asset.warnings)
        settings = asset.state.settings
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
        embeddings = encode_prompts_once(prior, edit_prompts(config.target_prompt, config.edit_prompt))
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

    loss_value = run_loop(LoopPlan(config.steps, preview_every=config.preview_every), edit_step, context,
                          lambda step: write_preview(context, step, render_mesh_preview(mesh, device)))

    # 4. Bake into the kept UV layout and export.
    reporter.stage("baking")
    with context.timed("bake_s"):
        with torch.no_grad():
            unit_positions = mesh.positions().cpu().numpy()
            moved = float((mesh.positions() - source_mesh.positions()).norm(dim=-1).mean())
        prepared = mesh_for_export(TriangleMesh(unit_positions, asset.mesh.triangles.cpu().numpy(), asset.corner_uvs),
                                   asset.normalization, config.texture_size, context)
        baked = bake_texture(prepared.unit, lambda p: mesh.texture(p), config.texture_size, device, cancel=cancel)
    reporter.stage("exporting")
    with context.timed("export_s"):
        outputs = export_textured_mesh(out, prepared, baked.image, cancel)
        outputs["state"] = save_texture_state(out, mesh.texture, config.hash_grid, prepared.normalization, config)
        outputs["state_stage2"] = save_stage2_state(out, asset, mesh, optimizer, generator)
        outputs["corner_uvs"] = save_corner_uvs(out, prepared)
    reporter.emit("summary", source_kind="generated_geometry", coverage=round(float(baked.coverage), 4),
                  final_loss=loss_value, mean_vertex_move=round(moved, 6))
    return outputs


def save_stage2_state(out: Path, asset: GeneratedAsset, mesh: RefinableMesh, optimizer: torch.optim.Optimizer,
                      generator: torch.Generator) -> str:
    """The source's refinement state with the edited mesh and its export frame, so a further
    geometry edit continues it where this one exported."""
    return dataclasses.replace(asset.state, model=mesh.state_dict(), optimizer=optimizer.state_dict(),
                               generator=generator.get_state(),
                               export_normalization=asset.normalization.to_dict()).save(out)
