"""Named presets: settings laid under the user's, by task (or generate stage) and by the prior that
guides it. "bundled": the bundled prior's (a small CPU model); "real": a hub or local model's.

A preset is applied one way (`apply_preset`) before the user's own settings count, so a user may
always ask for a value the preset replaces. Generate applies its presets to a fresh config, then
lays the user's settings over it (GenerateJobConfig.defaults_for); texture and edit keep the
settings a preset fills at None until the prior is known (and, for edit, the source's values are
read), so their presets go to the settings still open (`open_settings`).

Why the bundled prior's generate preset is what it is: docs/benchmarks.md, "Why the bundled
generate preset is what it is".
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .dicts import update_from_dict
from .parts import BUNDLED_MODEL

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The bundled prior is small and meant for CPUs; a real model's render size is its own,
    # known once it is loaded (TextureJobConfig.resolve_render_size). 64-px renders and 512-px
    # textures need no 2^19 table: on a CPU, Adam over the default 12.6M parameters would cost
    # more than the whole rest of a step. The bundled prior (v1) was trained on matte albedo
    # renders and knows no materials, so its jobs optimise albedo; a real model's, PBR materials.
    "texture": {
        "bundled": {"steps": 300, "render_size": 64, "texture_size": 512, "preview_every": 100,
                    "hash_grid": {"log2_table_size": 15}, "material": "albedo"},
        "real": {"steps": 2000, "texture_size": 1024, "preview_every": 200, "material": "pbr"},
    },
    # An edit starts from a finished texture, so it needs fewer steps than texturing (300 / 2000).
    # Its material is the source's (EditJobConfig.resolve_source_defaults); these are for mesh files.
    "edit": {
        "bundled": {"steps": 150, "render_size": 64, "texture_size": 512, "preview_every": 50,
                    "material": "albedo"},
        "real": {"steps": 800, "render_size": 512, "texture_size": 1024, "preview_every": 200,
                 "material": "pbr"},
    },
    # The paper's settings are the generate config's own defaults; with the bundled prior they make
    # a grey ball, so each stage it guides gets these instead.
    "generate.stage1": {
        "bundled": {
            "stage1": {
                "steps": 300, "render_size": 32, "samples_per_ray": 64, "occupancy_resolution": 32,
                "batch_size_no_front": 1, "learning_rate": 1e-2, "lighting_prob": 0.85, "geometry_render_prob": 0.0,
                "random_background_prob": 1.0, "ambient_only_steps": 0, "light_ambient": (0.5, 0.7),
                "light_jitter": 0.4, "view_prompts": False, "elevation_no_front_deg": (-15.0, 25.0),
                "guidance": {"w2_start": 0.5, "w2_end": 0.5, "t_min": 0.3},
                "cameras": {"elevation_deg": (-15.0, 25.0), "distance": (2.5, 3.3), "fovy_deg": (22.0, 46.0)},
                "hash_grid": {"levels": 6, "log2_table_size": 15},
            },
            "extract": {"threshold": 2.5, "resolution": 64, "target_triangles": 10_000, "opening_radius": 0.08},
            "texture_size": 512, "preview_every": 100, "checkpoint_every": 100,
        },
        "real": {},
    },
    "generate.stage2": {
        "bundled": {
            "stage2": {
                "steps": 300, "start_fit_steps": 100, "lighting_prob": 0.85, "geometry_render_prob": 0.0,
                "normal_consistency": "angle", "normal_consistency_weight": 200.0,
                "offset_learning_rate_per_edge": 0.11, "planar_weight": 150.0, "planar_angle_deg": 30.0,
                "planar_min_share": 0.1, "planar_crease_deg": 60.0, "planar_upright_deg": 8.0,
                "guidance": {"w2_start": 0.0, "w2_end": 0.0},
                "cameras": {"elevation_deg": (-15.0, 55.0), "distance": (2.5, 3.3), "fovy_deg": (22.0, 46.0)},
                "hash_grid": {"log2_table_size": 15},
            },
        },
        "real": {},
    },
}


def preset_for(task: str, model: str) -> dict[str, Any]:
    """The preset of `task` (or generate stage) when `model` guides it."""
    return PRESETS[task]["bundled" if model == BUNDLED_MODEL else "real"]


def apply_preset(config: Any, preset: dict[str, Any], name: str) -> Any:
    return update_from_dict(config, preset, f"preset.{name}")


def open_settings(config: Any, preset: dict[str, Any]) -> dict[str, Any]:
    """The part of `preset` for the settings `config` leaves open: those at None, and parts
    (hash_grid, ...) still exactly at their own defaults."""
    open_part = {}
    for key, value in preset.items():
        current = getattr(config, key)
        if current is None or (dataclasses.is_dataclass(current) and current == type(current)()):
            open_part[key] = value
    return open_part
