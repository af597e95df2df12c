"""Live previews while a job runs: a thumbnail in the panel and the texture on the object in the viewport.

Neither touches the artist's data: the thumbnail lives in a preview collection and the
viewport overlay is drawn with the gpu module from arrays kept here, so cancelling or a
failed job leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import bpy
import numpy as np

from ..exchange.engine_output import EngineOutputError, image_size, read_corner_uvs, resolve_inside

_previews = None
_thumb = {"key": None, "icon": 0}
_overlay = {"handle": None, "batch": None, "texture": None, "job_id": None, "serial": -1,
            "positions": None, "uvs": None}


def register():
    global _previews
    try:
        import bpy.utils.previews
        _previews = bpy.utils.previews.new()
    except Exception:  # no UI (some background builds)
        _previews = None


def unregister():
    global _previews
    clear_overlay()
    if _previews is not None:
        try:
            bpy.utils.previews.remove(_previews)
        except Exception:
            pass
    _previews = None
    _thumb.update(key=None, icon=0)


def _engine_file(job, relative: str, read):
    """``read(path)`` of a file the engine named for a preview; None while it is not there or when refused."""
    try:
        path = resolve_inside(job.output_dir, relative)
        return read(path) if path.is_file() else None
    except EngineOutputError as exc:
        job.progress.refuse(str(exc))  # the job's report says what was ignored
        return None


def _live_file(preview: str, name: str) -> str:
    """Where a running job keeps `name`: beside its previews, in the partial folder it writes until
    its set is swapped in (docs/job-protocol.md), else at the top of the output folder."""
    first = PurePosixPath(preview).parts[0] if preview else ""
    return f"{first}/{name}" if first.startswith(".partial-") else name


def _preview_image(job, relative: str) -> Path | None:
    def checked(path: Path) -> Path:
        image_size(path, f"the preview '{relative}'")
        return path

    return _engine_file(job, relative, checked)


def thumbnail_icon(job) -> int:
    """An icon id showing the job's latest preview image (0 when there is none)."""
    if _previews is None or job is None:
        return 0
    rel = job.progress.preview_view or job.progress.preview_texture
    if not rel:
        return 0
    key = f"{job.id}-{job.progress.preview_serial}"
    if _thumb["key"] == key:
        return _thumb["icon"]
    path = _preview_image(job, rel)
    if path is None:
        return _thumb["icon"]
    try:
        if key not in _previews:
            _previews.load(key, str(path), 'IMAGE')
        icon = _previews[key].icon_id
    except Exception:
        return _thumb["icon"]
    old = _thumb["key"]
    _thumb.update(key=key, icon=icon)
    if old and old in _previews:
        try:
            del _previews[old]
        except Exception:
            pass
    return icon


# -- viewport overlay ------------------------------------------------------------------------

def set_overlay_geometry(job_id: int, positions: np.ndarray, triangles: np.ndarray, corner_uvs) -> None:
    """World-space triangles and their UVs for the job whose preview will be drawn."""
    _overlay.update(job_id=job_id, batch=None, texture=None, serial=-1,
                    positions=np.asarray(positions, dtype=np.float32)[np.asarray(triangles).reshape(-1)],
                    uvs=None if corner_uvs is None else np.asarray(corner_uvs, dtype=np.float32).reshape(-1, 2))


def clear_overlay() -> None:
    handle = _overlay.get("handle")
    if handle is not None:
        try:
            bpy.types.SpaceView3D.draw_handler_remove(handle, 'WINDOW')
        except Exception:
            pass
    _overlay.update(handle=None, batch=None, texture=None, job_id=None, serial=-1, positions=None, uvs=None)
    _tag_redraw()


def tag_redraw(area_types: tuple[str, ...], context=None) -> None:
    """Redraw every open area of these types."""
    wm = getattr(context or bpy.context, "window_manager", None)
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in area_types:
                area.tag_redraw()


def redraw_panels(context=None) -> None:
    """Redraw where the add-on shows its state: the sidebar panel, the status bar, the preferences."""
    tag_redraw(('VIEW_3D', 'STATUSBAR', 'PREFERENCES'), context)


def _tag_redraw() -> None:
    tag_redraw(('VIEW_3D', 'STATUSBAR', 'PROPERTIES'))


def _load_texture(path: Path):
    import gpu

    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        width, height = image.size
        pixels = np.empty(width * height * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    buffer = gpu.types.Buffer('FLOAT', width * height * 4, pixels)
    return gpu.types.GPUTexture((width, height), format='RGBA16F', data=buffer)


def _draw():
    batch, texture = _overlay.get("batch"), _overlay.get("texture")
    if batch is None or texture is None:
        return
    import gpu

    shader = _overlay["shader"]
    gpu.state.depth_test_set('LESS_EQUAL')
    gpu.state.face_culling_set('BACK')
    shader.bind()
    shader.uniform_sampler("image", texture)
    batch.draw(shader)
    gpu.state.face_culling_set('NONE')
    gpu.state.depth_test_set('NONE')


def update_overlay(job, enabled: bool) -> None:
    """Show the newest preview texture on the object (GUI only; silently does nothing otherwise)."""
    if bpy.app.background or not enabled or job is None or _overlay.get("job_id") != job.id:
        return
    serial = job.progress.preview_serial
    if serial == _overlay["serial"] or not job.progress.preview_texture:
        return
    _overlay["serial"] = serial
    try:
        import gpu
        from gpu_extras.batch import batch_for_shader

        uvs = _overlay.get("uvs")
        if uvs is None:  # the engine unwrapped: its UVs arrive with the first preview, if it writes them early
            faces = len(_overlay["positions"]) // 3
            uvs = _engine_file(job, _live_file(job.progress.preview_texture, "corner_uvs.npy"),
                               lambda path: read_corner_uvs(path, faces))
            if uvs is None:
                return
            uvs = _overlay["uvs"] = uvs.reshape(-1, 2)
        texture_file = _preview_image(job, job.progress.preview_texture)
        if texture_file is None:
            return
        texture = _load_texture(texture_file)
        if _overlay.get("batch") is None:
            shader = gpu.shader.from_builtin('IMAGE')
            _overlay["shader"] = shader
            _overlay["batch"] = batch_for_shader(shader, 'TRIS', {"pos": _overlay["positions"], "texCoord": uvs})
        _overlay["texture"] = texture
        if _overlay.get("handle") is None:
            _overlay["handle"] = bpy.types.SpaceView3D.draw_handler_add(_draw, (), 'WINDOW', 'POST_VIEW')
        _tag_redraw()
    except Exception as exc:  # a preview must never break a job
        print(f"CSD: live preview unavailable: {exc}")
