"""What every job writes for the add-on: the textured mesh (texture maps, GLB, OBJ + MTL, preview
sheet), the per-corner UVs, the texture state, and the live previews."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...bake.bake import bake_texture
from ...bake.maps import MaterialMaps
from ...bake.region import RegionTexels, bake_region
from ...bake.preview import save_preview_sheet
from ...config import to_dict
from ...field.texture_field import TextureField
from ...files import atomic_save_image, atomic_write_bytes
from ...job.progress import CancelToken
from ...job.runner import JobContext
from ...job.state_files import TextureState
from ...mesh.export import write_glb, write_obj
from ...mesh.types import Normalization, TriangleMesh
from ...mesh.uv import unwrap
from ..texture_step import blended, render_field_view
from ..views import ViewPool

PREVIEW_TEXTURE_SIZE = 256


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


def warning_event(context: JobContext) -> Callable[[str], None]:
    """A sink for warnings found while working (e.g. a slow unwrap): each becomes a warning event."""
    def warn(message: str) -> None:
        context.reporter.emit("warning", message=message)
    return warn


def on_the_ground(normalization: Normalization, unit_positions: np.ndarray) -> Normalization:
    """A generated asset's export frame: its unit-box frame moved so the lowest vertex is at z = 0
    (refinement may have moved the lowest vertices)."""
    lowest = float(normalization.from_unit(unit_positions)[:, 2].min())
    return Normalization(normalization.center - np.array([0.0, 0.0, lowest]), normalization.scale, "Z")


def mesh_for_export(unit: TriangleMesh, normalization: Normalization, texture_size: int,
                    context: JobContext) -> PreparedMesh:
    """A mesh the engine made or moved (unit box), unwrapped when it has no UVs, and its user-frame twin."""
    unwrapped = unit.corner_uvs is None
    if unwrapped:
        unit = unwrap(unit, texture_size, context.cancel, warning_event(context))
    user = TriangleMesh(normalization.from_unit(unit.positions), unit.triangles, unit.corner_uvs)
    count = unit.num_triangles
    return PreparedMesh(user, unit, normalization, np.arange(count), count, unwrapped, [])


def bake_and_export(field: TextureField, mesh: PreparedMesh, config, context: JobContext,
                    region: RegionTexels | None = None) -> tuple[dict[str, str], float]:
    """The texture and edit jobs' last stages: bake the field (all its channels, so a PBR field's
    maps too) into the mesh's UV layout (a region job's: into the kept maps, engine/bake/region.py),
    export it and save the state. Returns the outputs and the bake's UV coverage."""
    context.reporter.stage("baking")
    with context.timed("bake_s"):
        if region is None:
            baked = bake_texture(mesh.unit, lambda p: field(p), config.texture_size, context.device,
                                 cancel=context.cancel)
        else:
            baked = bake_region(region, lambda p: field(p), context.cancel)
    context.reporter.stage("exporting")
    with context.timed("export_s"):
        outputs = export_textured_mesh(context.output_dir, mesh, baked.image, context.cancel)
        outputs["state"] = save_texture_state(context.output_dir, field, config.hash_grid, mesh.normalization,
                                              config)
    return outputs, float(baked.coverage)


def export_textured_mesh(out: Path, mesh: PreparedMesh, baked: np.ndarray,
                         cancel: CancelToken | None = None) -> dict[str, str]:
    """The maps, GLB, OBJ + MTL and preview sheet of a bake (uint8 (H, W, 3) albedo or (H, W, 5)
    PBR: engine/bake/maps.py); a cancel (signal or file) stops between any two files, and a signal
    within one (each file is written whole or not at all). The preview sheet shows the base colour."""
    maps = MaterialMaps.from_baked(baked)
    up_axis = mesh.normalization.up_axis
    images = {"texture": ("texture.png", maps.base_colour)}
    orm = None
    if maps.roughness is not None and maps.metallic is not None:
        orm = maps.orm()
        images.update(orm=("orm.png", orm), roughness=("roughness.png", maps.roughness),
                      metallic=("metallic.png", maps.metallic))
    names = {key: name for key, (name, _) in images.items()}
    writers = [partial(atomic_save_image, out / name, image) for name, image in images.values()]
    writers += [lambda: write_glb(out / "mesh.glb", mesh.user, maps.base_colour, up_axis, orm),
                lambda: write_obj(out / "mesh.obj", mesh.user, names["texture"], up_axis,
                                  names.get("roughness"), names.get("metallic")),
                lambda: save_preview_sheet(out / "preview.png", mesh.unit, maps.base_colour)]
    for write in writers:
        if cancel is not None:
            cancel.check()
        write()
    return {"glb": "mesh.glb", "obj": "mesh.obj", "mtl": "mesh.mtl", **names, "preview": "preview.png"}


def save_texture_state(out: Path, field: TextureField, field_config, normalization: Normalization, settings) -> str:
    """What an edit job needs to continue a texture: the field, its layout, the frame, the job's settings
    and the field's material (albedo or pbr)."""
    return TextureState(field.state_dict(), to_dict(field_config), normalization.to_dict(), to_dict(settings),
                        field.material).save(out)


def save_corner_uvs(out: Path, mesh: PreparedMesh) -> str:
    """The UVs the texture was baked for, per corner, in the INPUT triangle order, so the
    add-on can add them to the original object (triangles dropped as degenerate get zeros)."""
    corner_uvs = np.zeros((mesh.input_triangles, 3, 2), dtype=np.float32)
    corner_uvs[mesh.kept_triangles] = mesh.user.corner_uvs
    buffer = io.BytesIO()
    np.save(buffer, corner_uvs)
    atomic_write_bytes(out / "corner_uvs.npy", buffer.getvalue())
    return "corner_uvs.npy"


def write_preview(context: JobContext, step: int, view: np.ndarray, texture: np.ndarray | None = None) -> None:
    """A live preview for the add-on: one render (`view`) and, for a texture on a fixed UV layout,
    a low-resolution texture its viewport shows on the mesh (the event's `path`; else the render)."""
    previews = context.output_dir / "previews"
    previews.mkdir(exist_ok=True)
    view_name = f"previews/view_{step:06d}.png"
    shown = view_name
    if texture is not None:
        shown = f"previews/texture_{step:06d}.png"
        atomic_save_image(context.output_dir / shown, texture)
    atomic_save_image(context.output_dir / view_name, view)
    context.reporter.emit("preview", step=step, path=context.live_path(shown), view=context.live_path(view_name))


def write_field_preview(field: TextureField, mesh: PreparedMesh, views: ViewPool, step: int,
                        context: JobContext, region: RegionTexels | None = None) -> None:
    """The texture and edit jobs' preview: the field's base colour baked small, and in the first view
    (a region job's: blended into the kept texture, at the kept texture's size, shown small)."""
    with torch.no_grad():
        if region is None:
            texture = bake_texture(mesh.unit, lambda p: field(p)[:, :3], PREVIEW_TEXTURE_SIZE, context.device).image
        else:
            full = np.ascontiguousarray(bake_region(region, lambda p: field(p)).image[..., :3])
            texture = np.asarray(Image.fromarray(full).resize((PREVIEW_TEXTURE_SIZE, PREVIEW_TEXTURE_SIZE),
                                                              Image.BILINEAR))
        view, _ = views.get(0)
        render = blended(render_field_view(field, view), views.layer(0))[0, ..., :3]
    write_preview(context, step, (render.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8), texture)
