"""Judge a texturing result: render the textured mesh unlit from around it and ask the judge.

Used by tests/test_semantics.py and bench/table2_attributes.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Views like the training data's middle: the judge and the prior both saw such framings.
JUDGE_ELEVATION_DEG = 20.0
JUDGE_DISTANCE = 2.9
JUDGE_FOVY_DEG = 34.0
JUDGE_BACKGROUND = (0.5, 0.5, 0.5)


def render_result_views(mesh_path: str | Path, texture: np.ndarray | str | Path, views: int = 8, size: int = 64,
                        lighting: bool = False, up_axis: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(views, size, size, 3) float renders in [0, 1] of the mesh with the texture, and (views, size, size)
    masks. The mesh goes through the texture job's own preparation (normalisation, UVs as baked)."""
    from engine.bake.preview import render_textured
    from engine.mesh.load import load_mesh
    from engine.mesh.types import Normalization
    from engine.mesh.validate import validate_mesh
    from engine.render.cameras import orbit_cameras
    from engine.render.gbuffer import render_gbuffer

    if not isinstance(texture, np.ndarray):
        texture = np.asarray(Image.open(texture).convert("RGB"))
    mesh, file_up_axis = load_mesh(str(mesh_path), up_axis)
    mesh, _ = validate_mesh(mesh)
    if mesh.corner_uvs is None:
        raise ValueError(f"{mesh_path} has no UVs; judge the textured OBJ that the job wrote (out/mesh.obj)")
    normalization = Normalization.fit(mesh.positions, file_up_axis)
    unit = mesh.with_positions(normalization.to_unit(mesh.positions))
    azimuths = torch.arange(views, dtype=torch.float32) * (360.0 / views) - 90.0
    cameras = orbit_cameras(torch.full((views,), JUDGE_ELEVATION_DEG), azimuths, JUDGE_DISTANCE, JUDGE_FOVY_DEG)
    images = render_textured(unit, texture, cameras, size, background=JUDGE_BACKGROUND, lighting=lighting)
    with torch.no_grad():
        masks = render_gbuffer(torch.from_numpy(unit.positions), torch.from_numpy(unit.triangles), cameras,
                               size).mask.numpy()
    return np.asarray(images, dtype=np.float32), masks


def judge_result(out_dir: str | Path, views: int = 8, size: int = 64, judge=None) -> dict:
    """Judge a texture job's output folder (mesh.obj + texture.png).

    Returns {"views": per-view predictions, "shape"/"pattern": majority vote over views,
    "colour": the dominant colour over all views' object pixels, "colours": the two dominant,
    "colour_fractions": pooled fractions, "pattern_score": mean analytic pattern score,
    "texture_colour": (name, fractions) of the texture image's used texels}."""
    from . import AttributeJudge, judge_colour, pattern_score, top_colours
    from .colour import colour_fractions

    out_dir = Path(out_dir)
    judge = judge or AttributeJudge.load()
    images, masks = render_result_views(out_dir / "mesh.obj", out_dir / "texture.png", views, size)
    predictions = judge.predict(images, masks, shaded=False)
    pooled = np.zeros(len(predictions[0]["probabilities"]["colour"]))
    names = list(predictions[0]["probabilities"]["colour"])
    weights = masks.reshape(len(masks), -1).sum(1).astype(np.float64)
    for p, w in zip(predictions, weights):
        pooled += w * np.array([p["probabilities"]["colour"][n] for n in names])
    pooled /= max(pooled.sum(), 1e-12)
    fractions = {n: float(v) for n, v in zip(names, pooled)}

    def vote(key: str) -> str:
        totals: dict[str, float] = {}
        for p in predictions:
            for name, prob in p["probabilities"][key].items():
                totals[name] = totals.get(name, 0.0) + prob
        return max(totals, key=totals.get)

    texture = np.asarray(Image.open(out_dir / "texture.png").convert("RGB"))
    used = _used_texels(out_dir)
    return {
        "views": predictions,
        "shape": vote("shape"),
        "pattern": vote("pattern"),
        "colour": max(fractions, key=fractions.get),
        "colours": top_colours(fractions, 2),
        "colour_fractions": fractions,
        "pattern_score": float(np.mean([pattern_score(img, m)["score"] for img, m in zip(images, masks)])),
        "texture_colour": judge_colour(texture, used),
        "texture_fractions": colour_fractions(texture, used),
        "probabilities": {"shape": _mean_probs(predictions, "shape"), "pattern": _mean_probs(predictions, "pattern"),
                          "colour": fractions},
    }


def _mean_probs(predictions: list[dict], key: str) -> dict[str, float]:
    names = list(predictions[0]["probabilities"][key])
    return {n: float(np.mean([p["probabilities"][key][n] for p in predictions])) for n in names}


def _used_texels(out_dir: Path) -> np.ndarray | None:
    """Mask of the texels the mesh's UV layout covers (the rest is padding/background)."""
    try:
        from engine.render.rasterize import rasterize_uv

        texture = Image.open(out_dir / "texture.png")
        corner_uvs = np.load(out_dir / "corner_uvs.npy")
        keep = np.abs(corner_uvs).reshape(len(corner_uvs), -1).sum(1) > 0
        rast = rasterize_uv(torch.from_numpy(corner_uvs[keep]), texture.height, texture.width)
        return rast.mask[0].numpy()
    except Exception:  # no UV file: judge every texel
        return None
