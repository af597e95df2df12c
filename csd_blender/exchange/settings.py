"""From the panel's choices to the engine's job.json "settings" object.

Names follow the engine's config dataclasses: TextureJobConfig (engine/config.py) for
texture jobs, GenerateJobConfig (engine/pipelines/generate_config.py) for generate jobs,
EditJobConfig (engine/pipelines/edit_config.py) for edit jobs, with nested objects for
guidance, cameras, prior and the generate stages. The engine refuses unknown keys, so
each builder sends only keys the engine's config has.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

BUNDLED = "bundled"


@dataclass(frozen=True)
class Preset:
    label: str
    description: str
    texture_steps: int  # with a Stable Diffusion (or other downloaded) model
    bundled_steps: int  # with the small bundled prior
    texture_size: int
    stage1_steps: int
    stage2_steps: int
    edit_steps: int


PRESETS = {
    "DRAFT": Preset("Draft", "A fast look at the idea", 600, 150, 512, 2000, 1000, 300),
    "STANDARD": Preset("Standard", "Good quality for most assets", 2000, 300, 1024, 6000, 3000, 800),
    "HIGH": Preset("High", "Final quality: more steps and a 2K texture", 3000, 600, 2048, 10000, 5000, 1500),
}

def deep_merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` laid over it, nested objects merged key by key."""
    merged = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def texture_sizes(quality: str, custom: dict, model: str) -> dict:
    """steps/render_size/texture_size for a texture job; the render size is left to the engine
    (it knows the prior's native resolution) unless the artist chose Custom."""
    if quality == "CUSTOM":
        return {"steps": int(custom["steps"]), "render_size": int(custom["render_size"]),
                "texture_size": int(custom["texture_size"])}
    preset = PRESETS[quality]
    steps = preset.bundled_steps if model == BUNDLED else preset.texture_steps
    return {"steps": steps, "texture_size": preset.texture_size}


def _prior(model: str, prefs: dict, controlnets=None) -> dict:
    prior: dict = {"model": model or BUNDLED, "allow_download": bool(prefs.get("allow_download", False))}
    if controlnets is not None:
        prior["controlnets"] = list(controlnets)
        models = {k: prefs.get(f"controlnet_{k}", "") for k in ("depth", "canny")}
        models = {k: v for k, v in models.items() if v}
        if controlnets and models and prior["model"] != BUNDLED:
            prior["controlnet_models"] = models
    if prefs.get("cache_dir"):
        prior["cache_dir"] = prefs["cache_dir"]
    return prior


def _preview_every(steps: int) -> int:
    return max(1, min(100, steps // 12)) if steps >= 24 else 0


def texture_settings(scene: dict, prefs: dict, extra_cameras: list | None = None) -> dict:
    """Settings for a texture job.

    scene: prompt, negative_prompt, quality, seed, steps, render_size, texture_size,
           guidance_mode, w1, w2_start, w2_end, w2_anneal_steps, cfg_scale, use_controlnet,
           reunwrap
    prefs: device, texture_model, controlnet_depth, controlnet_canny, cache_dir, allow_download
    """
    model = prefs.get("texture_model") or BUNDLED
    sizes = texture_sizes(scene.get("quality", "STANDARD"), scene, model)
    # "auto": the ControlNets of the model's family (SD 1.x, SDXL), none for SD 2.x and pixel models.
    controlnets = ["auto"] if scene.get("use_controlnet", False) else []
    settings = {
        "prompt": scene["prompt"].strip(),
        **sizes,
        "seed": int(scene.get("seed", 0)),
        "device": str(prefs.get("device", "auto")).lower(),
        "reunwrap": bool(scene.get("reunwrap", False)),
        "preview_every": _preview_every(sizes["steps"]),
        "guidance": {
            "mode": str(scene.get("guidance_mode", "csd")).lower(),
            "w1": float(scene.get("w1", 1.0)),
            "w2_start": float(scene.get("w2_start", 1.0)),
            "w2_end": float(scene.get("w2_end", 0.5)),
            "w2_anneal_steps": int(scene.get("w2_anneal_steps", 10000)),
            "cfg_scale": float(scene.get("cfg_scale", 100.0)),
        },
        "prior": _prior(model, prefs, controlnets),
    }
    negative = scene.get("negative_prompt")
    if negative is not None and negative.strip():
        settings["negative_prompt"] = negative.strip()
    if extra_cameras:
        settings["extra_cameras"] = extra_cameras
    return deep_merge(settings, (prefs.get("extra_settings") or {}).get("texture", {}))


def generate_settings(scene: dict, prefs: dict) -> dict:
    """Settings for a generate job (GenerateJobConfig: stage1 = NeRF, stage2 = refinement)."""
    quality = scene.get("quality", "STANDARD")
    models = (prefs.get("generate_model") or BUNDLED, prefs.get("generate_refine_model") or BUNDLED)
    if quality == "CUSTOM":
        steps = [int(scene["generate_steps"]), int(scene["refine_steps"])]
        texture_size = int(scene["texture_size"])
    else:
        preset = PRESETS[quality]
        # A stage on the bundled prior keeps the engine's bundled preset (its steps belong with its
        # learning rates and schedules), so the panel makes the asset `generate --model bundled` makes.
        steps = [None if model == BUNDLED else count
                 for model, count in zip(models, (preset.stage1_steps, preset.stage2_steps))]
        texture_size = preset.texture_size
    stages = [{"prior": _prior(model, prefs)} for model in models]
    for stage, count in zip(stages, steps):
        if count is not None:
            stage["steps"] = count
    settings = {
        "prompt": scene["prompt"].strip(),
        "seed": int(scene.get("seed", 0)),
        "device": str(prefs.get("device", "auto")).lower(),
        "texture_size": texture_size,
        "stage1": stages[0],
        "stage2": stages[1],
    }
    if None not in steps:
        settings["preview_every"] = _preview_every(sum(steps))
    negative = scene.get("negative_prompt")
    if negative is not None and negative.strip():
        settings["negative_prompt"] = negative.strip()
    return deep_merge(settings, (prefs.get("extra_settings") or {}).get("generate", {}))


def edit_settings(scene: dict, prefs: dict) -> dict:
    """Settings for an edit job (EditJobConfig, Eq. 11: w1 toward the target, w2 away from the edit prompt).

    Steps and sizes are left to the engine (it follows the source job and its prior) unless the
    artist chose Custom quality; the prior is the source's unless an edit model is set.
    """
    w2 = float(scene.get("edit_w2", 0.5))
    settings = {
        "target_prompt": scene["target_prompt"].strip(),
        "edit_prompt": scene["edit_prompt"].strip(),
        "seed": int(scene.get("seed", 0)),
        "device": str(prefs.get("device", "auto")).lower(),
        "guidance": {"mode": "csd", "w1": float(scene.get("edit_w1", 1.0)), "w2_start": w2, "w2_end": w2},
    }
    if scene.get("quality") == "CUSTOM":
        settings["steps"] = int(scene["edit_steps"])
    if scene.get("edit_geometry"):
        settings["edit_geometry"] = True
    if prefs.get("edit_model"):
        settings["prior"] = _prior(prefs["edit_model"], prefs)
    return deep_merge(settings, (prefs.get("extra_settings") or {}).get("edit", {}))
