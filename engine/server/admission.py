"""Whether an unpacked job folder may run on this server: the engine's own job.json and settings
checks, then what a job from the network may name beyond its folder (only models)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import BUNDLED_MODEL, SOURCE_MODEL, config_from_job
from ..config.checks import Settings
from ..config.parts import PriorConfig
from ..errors import BadInputError
from ..job.protocol import read_job

MODEL_HINT = ("Name a Hugging Face hub id (owner/name) the server has (GET /v1/server lists them), 'bundled', "
              "or a folder under the server's --models-dir.")


@dataclasses.dataclass(frozen=True)
class ModelPolicy:
    models_dir: Path | None = None  # folders below it may be named by absolute path

    def check(self, name: str, where: str, job_dir: Path) -> None:
        from ..prior.hub import is_hub_id

        if name in (BUNDLED_MODEL, SOURCE_MODEL):
            return
        if self.models_dir is not None and Path(name).is_absolute():
            path = Path(name).resolve()
            if path.is_relative_to(self.models_dir.resolve()) and path.is_dir():
                return
        if is_hub_id(name) and not (job_dir / name).exists():
            return
        raise BadInputError(f"{where} = {name!r}: a job sent to a server may name no folder or file, of the server "
                            "or of its own upload, as a model.", MODEL_HINT)


def _priors(settings: Settings, where: str = ""):
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if isinstance(value, PriorConfig):
            yield f"{where}{item.name}", value
        elif isinstance(value, Settings):
            yield from _priors(value, f"{where}{item.name}.")


def admit_job(job_dir: Path, policy: ModelPolicy) -> str:
    """The job's task, once its job.json and settings pass the engine's checks and it names no
    server path; else the engine's own error (JobFileError, BadInputError)."""
    spec = read_job(job_dir)
    config = config_from_job(spec)
    config.validate()
    for where, prior in _priors(config):
        policy.check(prior.model, f"settings.{where}.model", spec.job_dir)
        for condition, name in prior.controlnet_models.items():
            policy.check(name, f"settings.{where}.controlnet_models.{condition}", spec.job_dir)
        if prior.cache_dir is not None:
            raise BadInputError(f"settings.{where}.cache_dir: a job sent to a server may not name a cache folder.",
                                "Leave cache_dir out; the server uses its own model cache.")
    return spec.task
