"""Single-file checkpoints (.safetensors or .ckpt in the original Stable Diffusion layout, as model
sites offer them): which family a file holds, told from its keys without loading its tensors, and
a diffusers folder made from it once with diffusers' `from_single_file`.

`from_single_file` converts the weights but takes every config (model_index.json, the UNet's, the
VAE's, the text encoders', the tokenizers, the scheduler's) from the original repository. They
are looked up in the Hugging Face cache (downloaded there, and only they, when downloads are
allowed); otherwise the message names the exact files to download. The converted folder is kept
beside the cache, keyed by the file's path, size and modification time, so later runs load it as
any diffusers folder.

Single files carry no scheduler config: they are taken to predict what their base model does
(noise, for SD 1.5 and SDXL base). SD 2.x files are refused: whether one is the 512 epsilon or
the 768 v-prediction model is not in its keys.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelNotFoundError, first_line
from .families import FAMILY_NAMES, SUPPORTED, Family, unsupported

UNET_PREFIX = "model.diffusion_model."
CLIP_TOKENIZER_FILES = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")
SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
CONVERTED_FOLDER = "csd-blender-converted"


@dataclass(frozen=True)
class SingleFileFamily:
    """How a single file of one family becomes a diffusers folder."""

    family: Family
    pipeline: str  # the diffusers pipeline class whose from_single_file converts it
    config_repo: str  # the original repository whose configs the conversion takes
    config_files: tuple[str, ...]  # those configs, relative to the repository
    skipped_components: tuple[str, ...]  # listed in the repository's model_index.json, not needed


def _configs(text_encoders: tuple[str, ...]) -> tuple[str, ...]:
    files = ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json"]
    for encoder in text_encoders:
        files.append(f"{encoder}/config.json")
        tokenizer = encoder.replace("text_encoder", "tokenizer")
        files += [f"{tokenizer}/{name}" for name in CLIP_TOKENIZER_FILES]
    return tuple(files)


SD1_SINGLE_FILE = SingleFileFamily(Family.SD1, "StableDiffusionPipeline",
                                   "stable-diffusion-v1-5/stable-diffusion-v1-5", _configs(("text_encoder",)),
                                   ("safety_checker", "feature_extractor"))
SDXL_SINGLE_FILE = SingleFileFamily(Family.SDXL, "StableDiffusionXLPipeline",
                                    "stabilityai/stable-diffusion-xl-base-1.0",
                                    _configs(("text_encoder", "text_encoder_2")), ())


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype


def read_checkpoint_header(path: Path) -> dict[str, TensorInfo]:
    """Every tensor's name, shape and dtype, without reading the tensors (safetensors' header;
    a .ckpt is memory-mapped, so only the pickle is read)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as checkpoint:
                header = {}
                for key in checkpoint.keys():
                    tensor = checkpoint.get_slice(key)
                    header[key] = TensorInfo(tuple(tensor.get_shape()),
                                             SAFETENSORS_DTYPES.get(tensor.get_dtype(), torch.float32))
                return header
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # safetensors and torch.load raise many types for a damaged or foreign file
        raise ModelNotFoundError(f"{path} cannot be read as a checkpoint: {first_line(exc)}.",
                                 "Download it again; a .ckpt that holds more than tensors cannot be read safely, "
                                 "so prefer the model's .safetensors file.") from exc
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise ModelNotFoundError(f"{path} holds no state dict.", SUPPORTED)
    return {key: TensorInfo(tuple(value.shape), value.dtype) for key, value in state_dict.items()
            if isinstance(value, torch.Tensor)}


def classify_single_file(header: dict[str, TensorInfo], name: str) -> SingleFileFamily:
    """The family of a checkpoint from its tensor names (and the UNet's input width); anything but
    SD 1.x and SDXL base ends in a ModelNotFoundError that says what the file is."""
    keys = list(header)
    if any(key.endswith("joint_blocks.0.context_block.adaLN_modulation.1.bias") for key in keys):
        raise unsupported(name, "a Stable Diffusion 3 checkpoint (a flow-matching transformer)")
    if any("double_blocks.0.img_attn" in key for key in keys):
        raise unsupported(name, "a FLUX checkpoint (a flow-matching transformer)")
    if any(key.startswith(("lora_unet_", "lora_te")) or ".lora_down." in key or ".lora_A." in key for key in keys):
        raise unsupported(name, "a LoRA (adapter weights without their base model)")
    if any(key.startswith(("control_model.", "controlnet_cond_embedding.")) for key in keys):
        raise ModelNotFoundError(f"{name} is a ControlNet checkpoint, not a base model.",
                                 "ControlNets are used as diffusers folders or hub ids (settings "
                                 "prior.controlnet_models). " + SUPPORTED)
    conv_in = header.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        raise unsupported(name, "a checkpoint without a Stable Diffusion UNet")
    if conv_in.shape[1] != 4:
        raise unsupported(name, f"a checkpoint whose UNet reads {conv_in.shape[1]} channels (inpainting or "
                                "image-conditioned, not text-to-image)")
    if any(key.startswith("conditioner.embedders.1.model.") for key in keys):
        return SDXL_SINGLE_FILE
    if any(key.startswith("conditioner.embedders.0.model.") for key in keys):
        raise unsupported(name, "an SDXL refiner checkpoint")
    if "cond_stage_model.model.token_embedding.weight" in header:
        raise ModelNotFoundError(
            f"{name} is a Stable Diffusion 2.x single file, whose prediction type (epsilon at 512 or v at 768) "
            "its keys do not tell.",
            "Use the model as a diffusers folder or hub id (e.g. stabilityai/stable-diffusion-2-1-base), whose "
            "scheduler config says it. " + SUPPORTED)
    if any(key.startswith("cond_stage_model.transformer.") for key in keys):
        return SD1_SINGLE_FILE
    raise unsupported(name, "a checkpoint the engine does not recognise")


def config_folder(kind: SingleFileFamily, name: str, cache_dir: str | None, offline: bool) -> Path:
    """The original repository's configs in the Hugging Face cache (fetching only them when online)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    folder = None
    try:
        folder = Path(snapshot_download(kind.config_repo, allow_patterns=list(kind.config_files), cache_dir=cache_dir,
                                        local_files_only=offline))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
        folder = None
    missing = [file for file in kind.config_files if folder is None or not (folder / file).is_file()]
    if missing:
        cache = f" --cache-dir {cache_dir}" if cache_dir else ""
        raise ModelNotFoundError(
            f"{name} is a {FAMILY_NAMES[kind.family]} single file; converting it needs {kind.config_repo}'s config "
            f"files, and {len(missing)} of them are not on this machine (e.g. {missing[0]}).",
            f"Download only those configs (a few kB, no weights): `hf download {kind.config_repo} "
            f"{' '.join(kind.config_files)}{cache}`, or allow downloads.")
    return folder


def converted_folder(path: Path, cache_dir: str | None) -> Path:
    """Where `path`'s diffusers conversion is kept: beside the Hugging Face cache, keyed by the
    file's path, size and modification time (a replaced file is converted again)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\n{stat.st_size}\n{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return Path(cache_dir or HF_HUB_CACHE) / CONVERTED_FOLDER / f"{path.stem}-{key}"


def folder_for_single_file(path: Path, name: str, cache_dir: str | None, offline: bool) -> tuple[Path, str | None]:
    """The diffusers folder converted from the checkpoint `path` (made now if it is not yet), and a
    notice for the job when it was made now."""
    header = read_checkpoint_header(path)
    kind = classify_single_file(header, name)
    target = converted_folder(path, cache_dir)
    if (target / "model_index.json").is_file():
        return target, None
    configs = config_folder(kind, name, cache_dir, offline)
    dtype = header[UNET_PREFIX + "input_blocks.0.0.weight"].dtype
    convert_single_file(path, kind, configs, target, dtype)
    notice = (f"Converted {path.name} ({FAMILY_NAMES[kind.family]}) into a diffusers folder once: {target} "
              "(later runs load it; delete it to free the space).")
    return target, notice


def convert_single_file(path: Path, kind: SingleFileFamily, configs: Path, target: Path, dtype: torch.dtype) -> None:
    """`path` converted by diffusers' from_single_file with the configs in `configs`, saved (in the
    file's own precision) to `target`, which appears whole or not at all."""
    import diffusers

    pipeline_class = getattr(diffusers, kind.pipeline)
    skipped = {component: None for component in kind.skipped_components}
    try:
        pipeline = pipeline_class.from_single_file(str(path), config=str(configs), local_files_only=True,
                                                   torch_dtype=dtype, **skipped)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"{path.name} could not be converted as a {FAMILY_NAMES[kind.family]} "
                                 f"checkpoint: {reason}", SUPPORTED) from exc
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        pipeline.save_pretrained(partial)
        os.replace(partial, target)
    except OSError as exc:
        if not (target / "model_index.json").is_file():  # not made meanwhile by a job converting the same file
            raise ModelNotFoundError(f"The converted model cannot be written to {target}: {exc}.",
                                     "Free some disk space there, or pass a writable --cache-dir.") from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
