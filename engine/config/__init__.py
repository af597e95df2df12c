"""Typed settings for every job, validated once at the edge (CLI or job.json).

parts: guidance, cameras, hash grid, prior; texture / generate / edit: each task's config;
checks: the bounds declared on the fields and the one validator; presets: named presets per task
and prior; dicts: to and from JSON; job_settings: job.json and a generate run's saved settings.
"""

from .checks import (MAX_EXTRA_CAMERAS, MAX_GUIDANCE_WEIGHT, MAX_LEARNING_RATE, MAX_NAME_CHARS,
                     MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, MAX_VIEW_POOL, MAX_WEIGHT, Settings, check_settings)
from .dicts import to_dict, update_from_dict
from .edit import DEFAULT_FIT_STEPS, DEFAULT_PRESERVE_WEIGHT, SOURCE_MODEL, EditJobConfig
from .generate import (NERF_STAGE_STEPS, REFINE_STAGE_STEPS, ExtractConfig, GenerateJobConfig, GenerateStages,
                       NerfStageConfig, PerpNegMode, RefineStageConfig)
from .job_settings import (CONFIG_FILE, config_from_job, edit_config_from_job, generate_config_from_job,
                           load_saved_config, save_config, texture_config_from_job)
from .parts import (BUNDLED_MODEL, CONTROLNET_CONDITIONS, DEFAULT_LATENT_MODEL, DEFAULT_NEGATIVE_PROMPT,
                    SD1_CONTROLNETS, SD2_CONTROLNETS, SDXL_CONTROLNETS, CameraConfig, ControlNetDefaults,
                    GuidanceConfig, HashGridConfig, PriorConfig)
from .presets import PRESETS, apply_preset, preset_for
from .texture import PIXEL_MODEL_RENDER_SIZE, Material, TextureJobConfig

__all__ = [
    "MAX_EXTRA_CAMERAS", "MAX_GUIDANCE_WEIGHT", "MAX_LEARNING_RATE", "MAX_NAME_CHARS",
    "MAX_PROMPT_CHARS", "MAX_SEED", "MAX_STEPS", "MAX_VIEW_POOL", "MAX_WEIGHT", "Settings", "check_settings",
    "to_dict", "update_from_dict", "DEFAULT_FIT_STEPS", "DEFAULT_PRESERVE_WEIGHT", "SOURCE_MODEL", "EditJobConfig",
    "NERF_STAGE_STEPS", "REFINE_STAGE_STEPS", "ExtractConfig", "GenerateJobConfig", "GenerateStages",
    "NerfStageConfig", "PerpNegMode", "RefineStageConfig", "CONFIG_FILE", "config_from_job", "edit_config_from_job",
    "generate_config_from_job", "load_saved_config", "save_config", "texture_config_from_job", "BUNDLED_MODEL", "CONTROLNET_CONDITIONS", "DEFAULT_LATENT_MODEL", "DEFAULT_NEGATIVE_PROMPT",
    "SD1_CONTROLNETS", "SD2_CONTROLNETS", "SDXL_CONTROLNETS", "CameraConfig", "ControlNetDefaults",
    "GuidanceConfig", "HashGridConfig", "PriorConfig", "PRESETS", "apply_preset", "preset_for",
    "PIXEL_MODEL_RENDER_SIZE", "Material", "TextureJobConfig",
]
