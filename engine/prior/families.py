"""Which family a diffusers model folder belongs to, what the engine uses it for and which of its
components it loads, told from the folder's config files alone (no weights needed): the loader
routes on it, the downloader fetches only those components, the add-on lists models with it.

Families, from the UNet's config (and the text encoder's where the width is not a real one):
  SD 1.x    cross_attention_dim 768 (CLIP ViT-L, quick_gelu)
  SD 2.x    cross_attention_dim 1024 (OpenCLIP ViT-H, gelu); base (512, epsilon) or 768-v
  SDXL      addition_embed_type "text_time" (cross_attention_dim 2048), two text encoders
  IF        DeepFloyd IF stage I: a pixel-space UNet (3 input channels), T5 text encoder
  bundled   the engine's own small IF-style prior
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..config import SD1_CONTROLNETS, SD2_CONTROLNETS, SDXL_CONTROLNETS, ControlNetDefaults
from ..errors import ModelNotFoundError

BUNDLED_PRIOR_DIR = Path(__file__).resolve().parent / "bundled"
SUPPORTED = ("Supported: Stable Diffusion 1.x and 2.x, SDXL base and DeepFloyd IF stage I as diffusers folders "
             "or hub ids (SD 1.x and SDXL also as single .safetensors/.ckpt files), or 'bundled'.")

# Pipelines of families the engine cannot distil from, by _class_name prefix, for a precise message.
UNSUPPORTED_PIPELINES = {
    "StableDiffusion3": "Stable Diffusion 3 (a flow-matching transformer)",
    "Flux": "FLUX (a flow-matching transformer)",
    "Kandinsky": "Kandinsky (image-embedding prior and MoVQ decoder)",
    "PixArt": "PixArt (a diffusion transformer with T5)",
    "StableCascade": "Stable Cascade",
    "Wuerstchen": "Würstchen",
    "IFSuperResolution": "DeepFloyd IF stage II/III (super-resolution)",
    "StableDiffusionUpscale": "the Stable Diffusion upscaler",
    "StableDiffusionInpaint": "a Stable Diffusion inpainting model",
    "StableDiffusionDepth2Img": "Stable Diffusion depth-to-image",
}
LORA_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin", "adapter_config.json",
              "adapter_model.safetensors")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


class Family(Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    IF_STAGE_I = "if-stage-1"
    BUNDLED = "bundled"


FAMILY_NAMES = {Family.SD1: "Stable Diffusion 1.x", Family.SD2: "Stable Diffusion 2.x", Family.SDXL: "SDXL",
                Family.IF_STAGE_I: "DeepFloyd IF stage I", Family.BUNDLED: "the bundled prior"}
# The jobs each family is meant for (README's support table).
FAMILY_USES = {Family.SD1: ("texture", "edit"), Family.SD2: ("texture", "edit", "generate stage 2"),
               Family.SDXL: ("texture", "edit"), Family.IF_STAGE_I: ("generate stage 1",),
               Family.BUNDLED: ("texture", "edit", "generate stage 1", "generate stage 2")}
LATENT_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
FAMILY_COMPONENTS = {Family.SD1: LATENT_COMPONENTS, Family.SD2: LATENT_COMPONENTS,
                     Family.SDXL: (*LATENT_COMPONENTS, "text_encoder_2", "tokenizer_2"),
                     Family.IF_STAGE_I: ("unet", "text_encoder", "tokenizer", "scheduler"),
                     Family.BUNDLED: ("unet", "text_encoder", "tokenizer", "scheduler")}
# None: ControlNets cannot guide the family at all (pixel space).
FAMILY_CONTROLNETS: dict[Family, ControlNetDefaults | None] = {
    Family.SD1: SD1_CONTROLNETS, Family.SD2: SD2_CONTROLNETS, Family.SDXL: SDXL_CONTROLNETS,
    Family.IF_STAGE_I: None, Family.BUNDLED: None}


@dataclass(frozen=True)
class UNetSignature:
    """What a ControlNet must share with the UNet it guides: its residuals are added to the UNet's
    blocks (block widths), it reads the same text embeddings (cross-attention width) and, for SDXL,
    the same added conditions."""

    cross_attention_dim: int
    addition_embed_type: str | None
    block_out_channels: tuple[int, ...]
    in_channels: int

    @classmethod
    def from_config(cls, config: dict) -> "UNetSignature":
        return cls(int(config.get("cross_attention_dim") or 0), config.get("addition_embed_type"),
                   tuple(int(c) for c in config.get("block_out_channels", ())), int(config.get("in_channels", 0)))

    def describe(self) -> str:
        """The family such a network is made for, as far as its config says."""
        if self.addition_embed_type == "text_time":
            return "SDXL"
        family = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x"}.get(self.cross_attention_dim)
        if family is None:
            return f"a model with cross-attention width {self.cross_attention_dim}"
        return f"{family} (cross-attention width {self.cross_attention_dim})"


@dataclass(frozen=True)
class ModelDescription:
    family: Family
    label: str  # e.g. "Stable Diffusion 2.x (v-prediction)"
    pipeline: str  # model_index.json's _class_name
    uses: tuple[str, ...]  # the jobs it is meant for: "texture", "edit", "generate stage 1/2"
    components: tuple[str, ...]  # the subfolders the engine loads
    prediction_type: str  # the scheduler's: "epsilon" or "v_prediction"
    resolution: int  # the image size the model was trained at, in pixels
    unet: UNetSignature

    @property
    def pixel_space(self) -> bool:
        return self.family in (Family.IF_STAGE_I, Family.BUNDLED)

    @property
    def controlnet_defaults(self) -> ControlNetDefaults | None:
        """What `auto` attaches; None where ControlNets cannot be used at all."""
        return FAMILY_CONTROLNETS[self.family]


def read_json(path: Path, name: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"{name} has no {path.parent.name}/{path.name}.",
                                 "Download the model again; the folder is incomplete.") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"{path} cannot be read: {exc}.", "Download the model again.") from exc
    if not isinstance(data, dict):
        raise ModelNotFoundError(f"{path} is not a JSON object.", "Download the model again.")
    return data


def unsupported(name: str, what: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"{name} is {what}, which the engine cannot use.", SUPPORTED)


def _present(index: dict, component: str) -> bool:
    entry = index.get(component)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None


def describe_model_folder(folder: Path, name: str | None = None) -> ModelDescription:
    """The family and use of the diffusers pipeline in `folder`, from its configs; a folder of any
    other kind (SD3, FLUX, Kandinsky, a LoRA, a ControlNet, ...) ends in a ModelNotFoundError that
    says what it is and what is supported."""
    name = name or str(folder)
    if not (folder / "model_index.json").is_file():
        raise _not_a_pipeline(folder, name)
    index = read_json(folder / "model_index.json", name)
    pipeline = str(index.get("_class_name", ""))
    for prefix, what in UNSUPPORTED_PIPELINES.items():
        if pipeline.startswith(prefix):
            raise unsupported(name, what)
    if not _present(index, "unet"):
        raise unsupported(name, f"a {pipeline or 'diffusers'} pipeline without a UNet")
    unet_config = read_json(folder / "unet" / "config.json", name)
    unet = UNetSignature.from_config(unet_config)
    prediction_type = str(read_json(folder / "scheduler" / "scheduler_config.json", name)
                          .get("prediction_type", "epsilon"))
    if folder.resolve() == BUNDLED_PRIOR_DIR:
        family = Family.BUNDLED
    elif pipeline.startswith("IF"):
        if unet.in_channels != 3:
            raise unsupported(name, f"an IF pipeline whose UNet reads {unet.in_channels} channels (not stage I)")
        family = Family.IF_STAGE_I
    elif _present(index, "vae"):
        family = _latent_family(folder, index, unet, name)
    else:
        raise unsupported(name, f"a {pipeline or 'diffusers'} pipeline")
    if family in (Family.IF_STAGE_I, Family.BUNDLED):
        resolution = int(unet_config.get("sample_size", 64))
    else:
        vae_config = read_json(folder / "vae" / "config.json", name)
        resolution = int(unet_config.get("sample_size", 64)) * 2 ** (len(vae_config.get("block_out_channels", ())) - 1)
    suffix = " (v-prediction)" if prediction_type == "v_prediction" else ""
    return ModelDescription(family, FAMILY_NAMES[family] + suffix, pipeline, FAMILY_USES[family],
                            FAMILY_COMPONENTS[family], prediction_type, resolution, unet)


def _latent_family(folder: Path, index: dict, unet: UNetSignature, name: str) -> Family:
    if unet.in_channels != 4:
        raise unsupported(name, f"a latent model whose UNet reads {unet.in_channels} channels "
                                "(inpainting or image-conditioned, not text-to-image)")
    if not _present(index, "text_encoder"):
        what = "an SDXL refiner" if _present(index, "text_encoder_2") else "a pipeline without a text encoder"
        raise unsupported(name, what)
    if unet.addition_embed_type == "text_time":
        if not _present(index, "text_encoder_2"):
            raise unsupported(name, "an SDXL-style model without a second text encoder")
        return Family.SDXL
    if unet.addition_embed_type is not None:
        raise unsupported(name, f"a latent model with added conditions {unet.addition_embed_type!r}")
    by_width = {768: Family.SD1, 1024: Family.SD2}.get(unet.cross_attention_dim)
    if by_width is not None:
        return by_width
    # Widths of neither (pruned or test-sized models): SD 1.x's CLIP ViT-L uses quick_gelu,
    # SD 2.x's OpenCLIP ViT-H gelu.
    activation = read_json(folder / "text_encoder" / "config.json", name).get("hidden_act")
    by_encoder = {"quick_gelu": Family.SD1, "gelu": Family.SD2}.get(activation)
    if by_encoder is None:
        raise unsupported(name, f"a latent model with cross-attention width {unet.cross_attention_dim} and a "
                                f"{activation} text encoder, neither Stable Diffusion 1.x nor 2.x")
    return by_encoder


def _not_a_pipeline(folder: Path, name: str) -> ModelNotFoundError:
    """What a folder without model_index.json holds, as a message."""
    lora = [file for file in LORA_FILES if (folder / file).is_file()]
    if lora:
        return unsupported(name, f"a LoRA ({lora[0]}: adapter weights without their base model)")
    if (folder / "config.json").is_file():
        class_name = str(read_json(folder / "config.json", name).get("_class_name", "a model component"))
        if class_name.startswith("ControlNet"):
            return ModelNotFoundError(
                f"{name} is a ControlNet ({class_name}), not a base model.",
                "Name it as the depth or canny ControlNet (settings prior.controlnet_models) and pass a base model "
                "as --model. " + SUPPORTED)
        return unsupported(name, f"one model component ({class_name}), not a whole diffusers pipeline")
    single_files = sorted(path.name for path in folder.iterdir() if path.suffix in SINGLE_FILE_SUFFIXES)
    if single_files:
        return ModelNotFoundError(f"{name} is not a diffusers pipeline folder; it holds {', '.join(single_files[:3])}.",
                                  "Pass the checkpoint file itself as --model. " + SUPPORTED)
    return ModelNotFoundError(f"{name} is not a diffusers pipeline folder (no model_index.json).", SUPPORTED)


def describe_controlnet_folder(folder: Path, name: str) -> UNetSignature:
    """The UNet a ControlNet folder (config.json of a ControlNetModel) is made for."""
    config = read_json(folder / "config.json", name)
    class_name = str(config.get("_class_name", ""))
    if class_name != "ControlNetModel":
        raise ModelNotFoundError(f"{name} is not a ControlNet the engine can use ({class_name or 'no _class_name'}).",
                                 "Name a diffusers ControlNetModel folder or hub id (e.g. "
                                 f"{SD1_CONTROLNETS.depth} for SD 1.x, {SDXL_CONTROLNETS.depth} for SDXL).")
    return UNetSignature.from_config(config)
