"""Edit a texture with words: Classifier Score Distillation's editing gradient (paper Eq. 11).

    g = w1 * (e(y_target) - e("")) - w2 * (e(y_edit) - e(""))

pulls every render towards the target description and away from the attribute being changed
(paper section 4, 5.4: w1 = 1, w2 = 0.5; with w2 = 0 it is plain CSD towards the target).
It is `score_distillation_loss` with the prompts [target, "", edit] in the negative's place.

Read top to bottom, this is the whole job (docs/edit.md has the measurements):
  1. open the SOURCE (engine/pipelines/kit/sources.py): the output folder of a texture, generate or edit job, whose saved texture
     field simply continues, or any textured mesh file, to whose texture image a fresh field is
     fitted first so that the edit starts from the unedited look; the field is the source's
     material (albedo or PBR) unless the job asks for the other one, which converts it;
  2. load the prior and encode [target, "", edit] once;
  3. the texture job's view pool, lighting (environments for PBR), backgrounds and step (eager on
     the CPU, one CUDA graph on GPUs); a frozen copy of the source field renders the reference of
     each view;
  4. optimise the field with Eq. 11 plus an image-space L2 to the source's render from the same
     view, light and background (`preserve_weight`; 0 turns it off), so that what the prompts do
     not mention stays;
  5. bake, export and save exactly as the texture job does; the state is again of kind
     "texture", so edits chain.
With a `region` (engine/pipelines/kit/regions.py) Eq. 11 acts inside the region only: the renders show
the source's own maps outside it and the field inside, from views that see the region; the
preservation term counts each pixel by its kept share (it acts in the border's band, and outside the
region, where the render is the source's texture itself, it is zero); the bake keeps the source's maps
texel for texel outside the region.
A generated asset's geometry is edited (`edit_geometry`) by engine/pipelines/edit_geometry.py;
the task table (engine/pipelines/tasks.py) picks which of the two runs an edit job.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..config import EditJobConfig
from ..errors import BadInputError, first_line
from ..field.texture_field import MATERIAL_CHANNELS, TextureField
from ..files import atomic_write_bytes
from ..job.runner import JobContext
from ..prior.base import DiffusionPrior
from ..prior.load import load_prior
from .kit.cameras import build_cameras
from .kit.loop import LoopPlan, run_loop, seeded_generator
from .kit.outputs import bake_and_export, save_corner_uvs, write_field_preview
from .kit.prompts import edit_prompts, encode_prompts_once
from .kit.regions import (RegionBlend, fit_field_to_texture, job_views, read_region,
                          source_kept_maps)
from .kit.regions import sample_texture  # noqa: F401  (this job's texture lookup, where callers have found it)
from .kit.sources import EditSource, open_source
from .texture_step import Preservation, make_texture_step, render_field_view
from .views import ViewPool

# Views over which the summary measures how far the edit moved from the source.
SUMMARY_VIEWS = 8


def run_edit_texture(config: EditJobConfig, context: JobContext) -> dict[str, str]:
    config.validate()
    device, reporter, cancel, out = context.device, context.reporter, context.cancel, context.output_dir
    generator = seeded_generator(config.seed)

    # 1. The source: mesh, field and the settings it was made with.
    with context.timed("setup_s"):
        reporter.stage("loading source")
        source = open_source(config, context.folder.path)
        reporter.warnings(source.mesh.warnings)
        texture_hint = None if source.texture is None else max(source.texture.shape[:2])
        config.resolve_source_defaults(source.settings, texture_hint, source.material)
        config.hash_grid = source.field_config  # recorded in the saved state, so the next edit can load it
        mesh = source.mesh
        blend, kept = None, None
        if config.region is not None:
            kept = source_kept_maps(source)
            faces = read_region(config.region, mesh.input_triangles, mesh.kept_triangles,
                                config.region_allow_whole_mesh)
            blend = RegionBlend.build(mesh.unit, faces, kept.shape, config.region_feather_texels,
                                      config.region_feather_distance)
        # Written now so the add-on can show live previews (an edit never changes the UV layout).
        context.outputs["corner_uvs"] = write_corner_uvs(out, source)
        positions = torch.from_numpy(mesh.unit.positions).to(device)
        triangles = torch.from_numpy(mesh.unit.triangles).to(device)
        field = TextureField(source.field_config, seed=config.seed,
                             channels=MATERIAL_CHANNELS[config.material]).to(device)
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
        reporter.warnings(prior.warnings)  # e.g. which ControlNets `auto` picked, a prompt cut at the token limit
        cancel.check()

        # 3. The views: rasterised once, on first use; the step (eager on CPU, one CUDA graph on GPUs).
        cameras = build_cameras(config, mesh.normalization, generator)
        pool = job_views(positions, triangles, cameras, config.render_size, prior.supports_controlnet, field.channels,
                         blend, kept, mesh.unit, config.region_view_share, device)
        views, cameras, texels = pool.views, pool.cameras, pool.texels
        preservation = Preservation(source_field, config.preserve_weight) if config.preserve_weight > 0 else None
        edit_step = make_texture_step(field, prior, views, cameras, embeddings, config, generator, device,
                                      preservation=preservation)
        reporter.warnings(edit_step.warnings)

    # 4. Optimisation: Eq. 11, plus the pull back towards the source's render.
    loss_value = run_loop(LoopPlan(config.steps, preview_every=config.preview_every), edit_step, context,
                          lambda step: write_field_preview(field, mesh, views, step, context, texels))

    # 5. Bake and export, as the texture job.
    with context.timed("bake_s"):
        change = change_from_source(field, source_field, views, SUMMARY_VIEWS)
    outputs, coverage = bake_and_export(field, mesh, config, context, texels)
    summary = {"source_kind": source.kind, "coverage": round(coverage, 4), "final_loss": loss_value,
               "change_from_source": round(change, 5)}
    if blend is not None:
        summary.update(region=blend.summary(), region_views=round(pool.view_share, 4))
        context.result_extra["region"] = blend.summary()
    if fit_rmse is not None:
        summary["fit_rmse"] = round(fit_rmse, 5)
    reporter.emit("summary", **summary)
    return outputs


# --- 1. The source ------------------------------------------------------------------------------

def write_corner_uvs(out: Path, source: EditSource) -> str:
    """The source job's corner_uvs.npy, unchanged (it is in the add-on's original triangle order),
    or, for a mesh file, the file's own UVs in its triangle order."""
    if source.corner_uvs is not None:
        atomic_write_bytes(out / "corner_uvs.npy", source.corner_uvs)
        return "corner_uvs.npy"
    return save_corner_uvs(out, source.mesh)


def load_field_state(field: TextureField, state: dict, source: Path) -> None:
    """The saved field into `field`, converted to its material when the edit asks for the other one."""
    try:
        field.load_any_material(state)
    except (RuntimeError, KeyError, TypeError) as error:
        raise BadInputError(f"The texture field saved in {source} does not fit this engine's field "
                            f"({first_line(error)}).",
                            "Run the texture job again with this engine.") from error


# --- 2. The prompts -----------------------------------------------------------------------------

def encode_edit_prompts(prior: DiffusionPrior, config: EditJobConfig) -> torch.Tensor:
    """(K, L, D): target, empty, and (when given) edit prompt embeddings, computed once."""
    return encode_prompts_once(prior, edit_prompts(config.target_prompt, config.edit_prompt))


# --- 5. The summary -----------------------------------------------------------------------------

def change_from_source(field: TextureField, source_field: TextureField, views: ViewPool, count: int) -> float:
    """Mean absolute difference (0..1) of the field's values (base colour; for PBR also roughness
    and metallic) from the source's over the first `count` views' visible pixels: how much the
    edit changed."""
    total, pixels = 0.0, 0
    with torch.no_grad():
        for index in range(min(count, len(views))):
            view, _ = views.get(index)
            difference = (render_field_view(field, view) - render_field_view(source_field, view)).abs().mean(dim=-1)
            total += float(difference[view.mask].sum())
            pixels += int(view.mask.sum())
    return total / max(pixels, 1)
