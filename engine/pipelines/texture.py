"""Texture a given mesh from a text prompt with Classifier Score Distillation.

Read top to bottom, this is the whole job (paper section 5.3):
  1. load, validate, unwrap (when needed) and normalise the mesh;
  2. load the prior and encode the prompts once;
  3. rasterise a pool of random views once: the geometry is fixed, so each view's surface
     points, normals and ControlNet conditions never change;
  4. optimise a hash-grid field with CSD (or SDS) through shaded renders: an albedo (one random
     light), or a PBR material (base colour, roughness, metallic under random environments);
  5. bake the field into the mesh's UV layout with seam padding, export GLB and OBJ,
     write the preview sheet and the state an edit job can continue from.

A region job (`region`, engine/pipelines/kit/regions.py) textures only some faces: it keeps the
mesh's UVs and the texture kept outside the region, fits the field to that texture first, renders
the kept texture outside the region and the field inside it from views that see the region, and
bakes into the kept texture, blended at the region's border.
"""

from __future__ import annotations

import torch

from ..config import TextureJobConfig
from ..field.texture_field import MATERIAL_CHANNELS, TextureField
from ..job.runner import JobContext
from ..mesh.load import load_mesh, load_textured_mesh
from ..mesh.types import Normalization
from ..mesh.uv import ensure_uvs, uv_problem
from ..mesh.validate import validate_mesh
from ..prior.base import DiffusionPrior
from ..prior.load import load_prior
from .kit.cameras import build_cameras
from .kit.loop import LoopPlan, run_loop, seeded_generator
from .kit.outputs import PreparedMesh, bake_and_export, save_corner_uvs, warning_event, write_field_preview
from .kit.prompts import encode_prompts_once
from .kit.regions import (KeptMaps, RegionBlend, fit_field_to_texture, job_views,
                          keep_texture_for, read_region)
from .kit.sources import is_placeholder_texture
from .texture_step import make_texture_step


def prepare_mesh(path: str, up_axis: str | None, reunwrap: bool, texture_size: int,
                 context: JobContext | None = None) -> PreparedMesh:
    """With a job's `context`, an unwrap's warnings are its events and its cancel stops the unwrap."""
    mesh, file_up_axis = load_mesh(path, up_axis)
    mesh, report = validate_mesh(mesh)
    if context is None:
        mesh, unwrapped = ensure_uvs(mesh, reunwrap, texture_size)
    else:
        mesh, unwrapped = ensure_uvs(mesh, reunwrap, texture_size, warning_event(context), context.cancel)
    normalization = Normalization.fit(mesh.positions, file_up_axis)
    unit = mesh.with_positions(normalization.to_unit(mesh.positions))
    return PreparedMesh(mesh, unit, normalization, report.kept_triangles, report.input_triangles, unwrapped,
                        list(report.warnings))


def prepare_region_mesh(config: TextureJobConfig) -> tuple[PreparedMesh, KeptMaps]:
    """A region job's mesh, with its own UVs (never unwrapped anew: the kept texture lies in them),
    and the maps kept outside the region."""
    mesh, texture, file_up_axis = load_textured_mesh(config.mesh, config.up_axis)
    mesh, report = validate_mesh(mesh)
    if texture is not None and is_placeholder_texture(texture):
        texture = None
    kept = keep_texture_for(config.mesh, config.keep_texture, texture, uv_problem(mesh.corner_uvs) is None)
    normalization = Normalization.fit(mesh.positions, file_up_axis)
    unit = mesh.with_positions(normalization.to_unit(mesh.positions))
    return (PreparedMesh(mesh, unit, normalization, report.kept_triangles, report.input_triangles, False,
                         list(report.warnings)), kept)


def encode_prompts(prior: DiffusionPrior, config: TextureJobConfig) -> torch.Tensor:
    """(K, L, D): text, empty, and (CSD only) negative prompt embeddings, computed once."""
    prompts = [config.prompt, ""]
    if config.guidance.mode == "csd" and config.negative_prompt.strip():
        prompts.append(config.negative_prompt)
    return encode_prompts_once(prior, prompts)


def run_texture(config: TextureJobConfig, context: JobContext) -> dict[str, str]:
    config.validate()
    device, reporter, cancel, out = context.device, context.reporter, context.cancel, context.output_dir
    generator = seeded_generator(config.seed)

    # 1. The mesh (and a region job's region and kept texture).
    with context.timed("setup_s"):
        reporter.stage("loading mesh")
        blend, kept = None, None
        if config.region is None:
            mesh = prepare_mesh(config.mesh, config.up_axis, config.reunwrap, config.texture_size, context)
        else:
            mesh, kept = prepare_region_mesh(config)
            faces = read_region(config.region, mesh.input_triangles, mesh.kept_triangles,
                                config.region_allow_whole_mesh)
            blend = RegionBlend.build(mesh.unit, faces, kept.shape, config.region_feather_texels,
                                      config.region_feather_distance)
        reporter.warnings(mesh.warnings)
        # Written now so the add-on can show live previews on a mesh the engine unwrapped.
        context.outputs["corner_uvs"] = save_corner_uvs(out, mesh)
        positions = torch.from_numpy(mesh.unit.positions).to(device)
        triangles = torch.from_numpy(mesh.unit.triangles).to(device)
        cancel.check()

        # 2. The prior and the prompts.
        reporter.stage("loading model")
        prior = load_prior(config.prior, device)
        embeddings = encode_prompts(prior, config)
        reporter.warnings(prior.warnings)  # loading's and encoding's (a prompt cut at the token limit)
        cancel.check()

        # 3. The views: rasterised once, on first use, at the model's own size unless the user chose one.
        reporter.stage("preparing views")
        cameras = build_cameras(config, mesh.normalization, generator)
        config.resolve_render_size(prior.resolution, prior.pixel_space)
        field = TextureField(config.hash_grid, seed=config.seed,
                             channels=MATERIAL_CHANNELS[config.material]).to(device)
        pool = job_views(positions, triangles, cameras, config.render_size, prior.supports_controlnet, field.channels,
                         blend, kept, mesh.unit, config.region_view_share, device)
        views, cameras, texels = pool.views, pool.cameras, pool.texels
        if blend is not None:
            # The optimisation starts from what was there: the field fitted to the kept texture (on the
            # whole surface, so that the saved state holds the whole result for an edit to continue).
            reporter.stage("fitting kept texture")
            fit_field_to_texture(field, mesh.unit, kept.base_colour, config.region_fit_steps, generator, device,
                                 cancel)
            cancel.check()
        # Eager on CPU; on CUDA one graph replay per step (engine/pipelines/texture_step.py).
        texture_step = make_texture_step(field, prior, views, cameras, embeddings, config, generator, device)
        reporter.warnings(texture_step.warnings)

    # 4. Optimisation.
    loss_value = run_loop(LoopPlan(config.steps, preview_every=config.preview_every), texture_step, context,
                          lambda step: write_field_preview(field, mesh, views, step, context, texels))

    # 5. Bake and export.
    outputs, coverage = bake_and_export(field, mesh, config, context, texels)
    summary = {"coverage": round(coverage, 4), "final_loss": loss_value, "unwrapped": mesh.unwrapped}
    if blend is not None:
        summary.update(region=blend.summary(), region_views=round(pool.view_share, 4))
        context.result_extra["region"] = blend.summary()
    reporter.emit("summary", **summary)
    return outputs
