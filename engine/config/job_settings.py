"""Settings from job.json (the add-on's jobs) and from a generate run's saved settings (resume):
the one place where a JSON object becomes a job config."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BadInputError, JobFileError
from ..files import atomic_write_text
from ..job.outputs import attempts
from ..job.paths import open_inside
from ..job.protocol import JobSpec
from .dicts import to_dict, update_from_dict
from .edit import EditJobConfig
from .generate import GenerateJobConfig
from .parts import BUNDLED_MODEL
from .texture import TextureJobConfig

CONFIG_FILE = "generate_config.json"
# A run's settings are a few kB; the cap keeps a crafted file from filling memory.
MAX_SAVED_CONFIG_BYTES = 1 << 20

JobConfig = TextureJobConfig | GenerateJobConfig | EditJobConfig


def config_from_job(spec: JobSpec) -> JobConfig:
    """job.json's settings (the config's own names, nested as it nests them) -> the task's config."""
    if spec.task == "texture":
        config = texture_config_from_job(spec.settings, spec.mesh, spec.output_dir)
        config.region = None if spec.region is None else str(spec.region)
        config.keep_texture = None if spec.keep_texture is None else str(spec.keep_texture)
        return config
    if spec.task == "generate":
        config = generate_config_from_job(spec.settings, spec.output_dir)
        if config.stage1_state is not None:  # from job.json, or from the saved settings of a resumed run
            config.stage1_state = str(spec.inside(config.stage1_state, "settings.stage1_state"))
        return config
    if spec.task == "edit":
        config = edit_config_from_job(spec.settings, spec.source, spec.output_dir)
        config.region = None if spec.region is None else str(spec.region)
        return config
    raise JobFileError(f"This engine cannot run {spec.task!r} jobs yet.", "Update the engine.")


def _refuse_paths_in_settings(settings: dict, keys: tuple[str, ...], hint: str) -> None:
    for key in keys:
        if key in settings:
            raise JobFileError(f"job.json settings may not contain {key!r}.", hint)


def texture_config_from_job(settings: dict, mesh: Path, out: Path) -> TextureJobConfig:
    _refuse_paths_in_settings(settings, ("mesh", "out", "region", "keep_texture"),
                              "Give the mesh as the job's top-level 'mesh', the folder as 'output', and a region's "
                              "files as the top-level 'region' and 'keep_texture'.")
    if "prompt" not in settings:
        raise JobFileError("job.json settings have no 'prompt'.", "")
    return update_from_dict(TextureJobConfig(prompt="", mesh=str(mesh), out=str(out)), settings)


def edit_config_from_job(settings: dict, source: Path, out: Path) -> EditJobConfig:
    _refuse_paths_in_settings(settings, ("source", "out", "region"),
                              "Give the source as the job's top-level 'source', the folder as 'output', and a "
                              "region's file as the top-level 'region'.")
    if "target_prompt" not in settings:
        raise JobFileError("job.json settings have no 'target_prompt'.", "An edit needs target_prompt and edit_prompt.")
    return update_from_dict(EditJobConfig(source=str(source), target_prompt="", edit_prompt="", out=str(out)),
                            settings)


def generate_config_from_job(settings: dict, out: Path) -> GenerateJobConfig:
    if "out" in settings:
        raise BadInputError("job.json settings may not contain 'out'.", "Give the folder as the job's 'output'.")
    if "prompt" not in settings and not settings.get("resume"):
        raise BadInputError("job.json settings have no 'prompt'.", "")
    if settings.get("resume"):
        config = load_saved_config(out)
        return update_from_dict(config, {k: v for k, v in settings.items() if k != "prompt"})
    models = [_prior_model(settings, stage) for stage in ("stage1", "stage2")]
    return update_from_dict(GenerateJobConfig.defaults_for("", str(out), *models), settings)


def _prior_model(settings: dict, stage: str) -> str:
    """The prior a job.json asks for in one stage (shape errors are left to update_from_dict)."""
    prior = settings.get(stage, {}).get("prior", {}) if isinstance(settings.get(stage), dict) else {}
    model = prior.get("model", BUNDLED_MODEL) if isinstance(prior, dict) else BUNDLED_MODEL
    return model if isinstance(model, str) else BUNDLED_MODEL


def save_config(config: GenerateJobConfig, out: Path) -> str:
    atomic_write_text(out / CONFIG_FILE, json.dumps(to_dict(config), indent=2))
    return CONFIG_FILE


def load_saved_config(folder: Path) -> GenerateJobConfig:
    # A run killed outright left its settings in its partial folder, not in the published set.
    handle, path = None, folder / CONFIG_FILE
    for attempt in attempts(folder):
        handle, path = open_inside(attempt, CONFIG_FILE, f"The run's {CONFIG_FILE}"), attempt / CONFIG_FILE
        if handle is not None:
            break
    if handle is None:
        raise BadInputError(f"Nothing to resume in {folder}: no {CONFIG_FILE}.",
                            "Pass the --out folder of an earlier generate run.")
    try:
        with handle:
            data = json.loads(handle.read(MAX_SAVED_CONFIG_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as error:
        raise BadInputError(f"{path} cannot be read: {error}.", "Start a new run instead.") from error
    if not isinstance(data, dict) or not isinstance(data.get("prompt", ""), str):
        raise BadInputError(f"{path} is not a generate run's settings (a JSON object with a text prompt).",
                            "Start a new run instead.")
    data.pop("resume", None)
    config = GenerateJobConfig(prompt=data.pop("prompt", ""), out=str(folder))
    data.pop("out", None)
    return update_from_dict(config, data)
