"""Texture a given mesh from a text prompt with Classifier Score Distillation.

Read top to bottom, this is the whole job (paper section 5.3):
  1. load, validate, unwrap (when needed) and normalise the mesh;
  2. load the prior and encode the prompts once;
  3. rasterise a pool of random views once: the geometry is fixed, so each view's surface
     points, normals and ControlNet conditions never change;
  4. optimise a hash-grid albedo field with CSD (or SDS) through shaded renders;
  5. bake the field into the mesh's UV layout with seam padding, export GLB and OBJ,
     write the preview sheet and the state an edit job can continue from.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..bake.bake import bake_texture
from ..bake.preview import save_preview_sheet
from ..config import TextureJobConfig, to_dict
from ..errors import EngineError
from ..files import atomic_save_image, atomic_write_bytes
from ..field.texture_field import TextureField
from ..job.progress import CancelToken
from ..job.runner import JobContext
from ..job.state_files import TEXTURE_KIND, write_state
from ..mesh.export import write_glb, write_obj
from ..mesh.load import load_mesh
from ..mesh.types import Normalization, TriangleMesh
from ..mesh.uv import ensure_uvs
from ..mesh.validate import validate_mesh
from ..prior.base import DiffusionPrior
from ..prior.load import load_prior
from ..render.cameras import Cameras, cameras_from_matrices, sample_cameras
from .texture_step import make_texture_step, render_albedo_view
from .views import ViewPool


@dataclass
class PreparedMesh:
    """The user's mesh (user frame, with UVs) and its unit-box twin used for optimisation."""

    user: TriangleMesh
    unit: TriangleMesh
    normalization: Normalization
    kept_triangles: np.ndarray  # input triangle index of each kept triangle (degenerate ones dropped)
    input_triangles: int
    unwrapped: bool
    warnings: list[str]


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


def warning_event(context: JobContext) -> Callable[[str], None]:
    """A sink for warnings found while working (e.g. a slow unwrap): each becomes a warning event."""
    def warn(message: str) -> None:
        context.reporter.emit("warning", message=message)
    return warn


def encode_prompts(prior: DiffusionPrior, config: TextureJobConfig) -> torch.Tensor:
    """(K, L, D): text, empty, and (CSD only) negative prompt embeddings, computed once."""
    prompts = [config.prompt, ""]
    if config.guidance.mode == "csd" and config.negative_prompt.strip():
        prompts.append(config.negative_prompt)
    embeddings = prior.encode_prompts(prompts)
    prior.release_text_encoder()
    return embeddings


def build_cameras(config: TextureJobConfig, normalization: Normalization, generator: torch.Generator) -> Cameras:
    """Random views within the paper's ranges, plus the caller's cameras mapped into the unit box."""
    cameras = sample_cameras(config.cameras, config.cameras.view_pool, generator)
    if not config.extra_cameras:
        return cameras
    matrices, fovs = [], []
    for camera in config.extra_cameras:
        matrix = np.asarray(camera["matrix_world"], dtype=np.float64)
        position = normalization.to_unit(matrix[None, :3, 3])[0]
        rotation = np.stack([normalization.directions_to_unit(matrix[None, :3, i])[0] for i in range(3)], axis=1)
        unit_matrix = np.eye(4)
        unit_matrix[:3, :3], unit_matrix[:3, 3] = rotation, position
        matrices.append(unit_matrix)
        fovs.append(float(camera.get("fovy_deg", 40.0)))
    return cameras.concat(cameras_from_matrices(np.stack(matrices), np.asarray(fovs)))


def run_texture(config: TextureJobConfig, context: JobContext) -> dict[str, str]:
    config.validate()
    device, reporter, cancel, out = context.device, context.reporter, context.cancel, context.output_dir
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)

    # 1. The mesh.
    with context.timed("setup_s"):
        reporter.stage("loading mesh")
        mesh = prepare_mesh(config.mesh, config.up_axis, config.reunwrap, config.texture_size, context)
        for warning in mesh.warnings:
            reporter.emit("warning", message=warning)
        # Written now so the add-on can show live previews on a mesh the engine unwrapped.
        context.outputs["corner_uvs"] = save_corner_uvs(out, mesh)
        positions = torch.from_numpy(mesh.unit.positions).to(device)
        triangles = torch.from_numpy(mesh.unit.triangles).to(device)
        cancel.check()

        # 2. The prior and the prompts.
        reporter.stage("loading model")
        prior = load_prior(config.prior, device)
        embeddings = encode_prompts(prior, config)
        for warning in prior.warnings:  # loading's and encoding's (a prompt cut at the token limit)
            reporter.emit("warning", message=warning)
        cancel.check()

        # 3. The views: rasterised once, on first use, at the model's own size unless the user chose one.
        reporter.stage("preparing views")
        cameras = build_cameras(config, mesh.normalization, generator)
        config.resolve_render_size(prior.resolution, prior.pixel_space)
        views = ViewPool(positions, triangles, cameras, config.render_size,
                         with_control=prior.supports_controlnet)

        field = TextureField(config.hash_grid, seed=config.seed).to(device)
        # Eager on CPU; on CUDA one graph replay per step (engine/pipelines/texture_step.py).
        texture_step = make_texture_step(field, prior, views, cameras, embeddings, config, generator, device)
        for warning in texture_step.warnings:
            reporter.emit("warning", message=warning)

    # 4. Optimisation.
    loss_value = optimise(texture_step, config.steps, config.preview_every, context,
                          lambda step: write_preview(field, mesh, views, out, step, device, context))

    # 5. Bake and export.
    outputs, coverage = bake_and_export(field, mesh, config, context)
    reporter.emit("summary", coverage=round(coverage, 4), final_loss=loss_value, unwrapped=mesh.unwrapped)
    return outputs


def optimise(step_fn: Callable[[int], torch.Tensor | float], steps: int, preview_every: int, context: JobContext,
             preview: Callable[[int], None]) -> float:
    """The loop the texture and edit jobs share: `step_fn(step)` (0-based) takes one optimiser step
    and returns its loss; a cancel check before each, a step event after each (about 100 in all)
    and `preview(done)` every `preview_every` steps (0: never) but the last. Returns the last loss."""
    context.reporter.stage("optimising")
    with context.timed("optimise_s"):
        loss_value = 0.0
        for step in range(steps):
            context.cancel.check()
            loss_value = float(step_fn(step))
            if not np.isfinite(loss_value):
                raise EngineError(f"The optimisation diverged (the loss became {loss_value} at step {step + 1}).",
                                  "Try a lower --lr or another --seed.")
            context.reporter.step(step + 1, steps, loss_value, every=max(1, steps // 100))
            if preview_every and (step + 1) % preview_every == 0 and step + 1 < steps:
                preview(step + 1)
    return loss_value


def write_preview(field: TextureField, mesh: PreparedMesh, views: ViewPool, out: Path, step: int,
                  device: torch.device, context: JobContext) -> None:
    """A low-resolution texture (for the add-on's live viewport preview) and one render."""
    previews = out / "previews"
    previews.mkdir(exist_ok=True)
    with torch.no_grad():
        texture = bake_texture(mesh.unit, lambda p: field(p), 256, device).image
        view, _ = views.get(0)
        render = render_albedo_view(field, view)[0]
    texture_name, view_name = f"previews/texture_{step:06d}.png", f"previews/view_{step:06d}.png"
    atomic_save_image(out / texture_name, texture)
    atomic_save_image(out / view_name, (render.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8))
    context.reporter.emit("preview", step=step, path=context.live_path(texture_name), view=context.live_path(view_name))


def bake_and_export(field: TextureField, mesh: PreparedMesh, config,
                    context: JobContext) -> tuple[dict[str, str], float]:
    """The texture and edit jobs' last stages: bake the field into the mesh's UV layout, export it
    and save the state. Returns the outputs and the bake's UV coverage."""
    context.reporter.stage("baking")
    with context.timed("bake_s"):
        baked = bake_texture(mesh.unit, lambda p: field(p), config.texture_size, context.device,
                             cancel=context.cancel)
    context.reporter.stage("exporting")
    with context.timed("export_s"):
        outputs = export_textured_mesh(context.output_dir, mesh, baked.image, context.cancel)
        outputs["state"] = save_state(context.output_dir, field, config, mesh)
    return outputs, float(baked.coverage)


def export_textured_mesh(out: Path, mesh: PreparedMesh, texture: np.ndarray,
                         cancel: CancelToken | None = None) -> dict[str, str]:
    """Texture, GLB, OBJ + MTL and preview sheet; a cancel (signal or file) stops between any two,
    and a signal within one (each file is written whole or not at all)."""
    writers = (lambda: atomic_save_image(out / "texture.png", texture),
               lambda: write_glb(out / "mesh.glb", mesh.user, texture, mesh.normalization.up_axis),
               lambda: write_obj(out / "mesh.obj", mesh.user, "texture.png", mesh.normalization.up_axis),
               lambda: save_preview_sheet(out / "preview.png", mesh.unit, texture))
    for write in writers:
        if cancel is not None:
            cancel.check()
        write()
    return {"glb": "mesh.glb", "obj": "mesh.obj", "mtl": "mesh.mtl", "texture": "texture.png",
            "preview": "preview.png"}


def save_state(out: Path, field: TextureField, config: TextureJobConfig, mesh: PreparedMesh) -> str:
    """What an edit job needs to continue from this texture: the field and the frame."""
    write_state(out / "state.pt", TEXTURE_KIND, {
        "field": field.state_dict(), "field_config": to_dict(config.hash_grid),
        "normalization": mesh.normalization.to_dict(), "settings": to_dict(config)})
    return "state.pt"


def save_corner_uvs(out: Path, mesh: PreparedMesh) -> str:
    """The UVs the texture was baked for, per corner, in the INPUT triangle order, so the
    add-on can add them to the original object (triangles dropped as degenerate get zeros)."""
    corner_uvs = np.zeros((mesh.input_triangles, 3, 2), dtype=np.float32)
    corner_uvs[mesh.kept_triangles] = mesh.user.corner_uvs
    buffer = io.BytesIO()
    np.save(buffer, corner_uvs)
    atomic_write_bytes(out / "corner_uvs.npy", buffer.getvalue())
    return "corner_uvs.npy"
