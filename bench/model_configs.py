"""The full-size architecture of every supported checkpoint family, as the checkpoints' own config
files give it (unet/, vae/, text_encoder*/config.json and scheduler/scheduler_config.json of each
hub repository), for benchmarks that build the models with random weights.

Only values that change the architecture or what it computes are written out; everything else is
the diffusers / transformers default, which these checkpoints keep. Configs other benchmarks
already hold are imported from them, not repeated: SD 1.5's UNet, VAE and CLIP ViT-L/14 text tower
(here), SD 2.1 base's UNet and the T5-XXL encoder (bench_generate.py) and
OpenCLIP ViT-H/14's text tower (bench_generate_job.py).

IF-I-XL is written here, not taken from bench_generate.py: its IF_I_XL carries three settings of
the IF-II upscalers (resnet_skip_time_act, resnet_out_scale_factor 1.414, time_embedding_act_fn),
which stage I's config does not have (diffusers' scripts/convert_if.py sets them only for stage II).
They add no parameters and next to no compute.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import SD21_BASE, T5_XXL_CONFIG  # noqa: E402
from bench_generate_job import OPENCLIP_H_CONFIG  # noqa: E402

# stable-diffusion-v1-5 unet/config.json
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32)
# stable-diffusion-v1-5 vae/config.json
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215)
# CLIP ViT-L/14's text tower (what SD-1.5's embeddings come from), for the job's model folder.
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   max_position_embeddings=77)


@dataclass(frozen=True)
class Component:
    """One model of a checkpoint: where it lives in the repository and how it is built."""

    subfolder: str  # "" for a repository that is the model itself (a ControlNet)
    library: str  # "diffusers" or "transformers"
    class_name: str
    config: dict


@dataclass(frozen=True)
class Checkpoint:
    hub_id: str
    components: tuple[Component, ...]
    pipeline: str | None = None  # model_index.json's _class_name; None for a ControlNet repository
    scheduler: tuple[str, dict] | None = None  # (class name, config)


@dataclass(frozen=True)
class Family:
    """A row of the README's support table: a base checkpoint, the ControlNets the engine attaches
    to it, and the job that uses it."""

    key: str
    name: str
    use: str
    job: str  # "texture" or "generate stage 1"
    base: Checkpoint
    controlnets: dict[str, Checkpoint] = field(default_factory=dict)


def controlnet_config(unet: dict) -> dict:
    """A ControlNet as the SD 1.5 v1.1 and SDXL 1.0 ControlNets are: a copy of the UNet's encoder
    half (what ControlNetModel.from_unet copies) with diffusers' default condition embedding
    (16, 32, 96, 256 channels, 3 input channels)."""
    keys = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "attention_head_dim",
            "cross_attention_dim", "transformer_layers_per_block", "use_linear_projection", "upcast_attention",
            "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
            "norm_num_groups")
    return {key: unet[key] for key in keys if key in unet}


# stable-diffusion-v1-5/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1-base: PNDM
# scheduler, epsilon prediction, SD's scaled-linear betas.
SD_SCHEDULER = ("PNDMScheduler", dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                      num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                                      set_alpha_to_one=False, clip_sample=False, prediction_type="epsilon"))
# stabilityai/stable-diffusion-2-1: the 768 px model predicts v.
SD_V_SCHEDULER = ("DDIMScheduler", dict(SD_SCHEDULER[1], prediction_type="v_prediction"))
# stabilityai/stable-diffusion-xl-base-1.0
SDXL_SCHEDULER = ("EulerDiscreteScheduler", dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                 num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
                                                 interpolation_type="linear", use_karras_sigmas=False,
                                                 prediction_type="epsilon"))
# DeepFloyd/IF-I-*-v1.0: cosine betas; the UNet also predicts a variance (6 output channels).
IF_SCHEDULER = ("DDPMScheduler", dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                      variance_type="learned_range", prediction_type="epsilon", thresholding=True,
                                      dynamic_thresholding_ratio=0.95, sample_max_value=1.5))

# stabilityai/stable-diffusion-2-1 unet/config.json: SD 2.1 base's UNet at 96 x 96 latents, with
# attention computed in float32 (upcast_attention).
SD21_768_UNET = dict(SD21_BASE, sample_size=96, upcast_attention=True)
SD21_768_VAE = dict(SD_VAE, sample_size=768)

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (2.6B parameters).
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, norm_num_groups=32)
# Its VAE: SD's architecture with its own scaling factor; it overflows in float16 (force_upcast).
SDXL_VAE = dict(SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
# text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower with its projection (the pooled
# embedding SDXL's added conditioning takes); text_encoder is CLIP ViT-L/14's, as SD 1.5's.
OPENCLIP_BIGG_TEXT = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                          max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)


def if_stage1_unet(model_channels: int) -> dict:
    """DeepFloyd IF stage I's UNet (its config.yml: channel_mult 1,2,3,4, 3 res blocks, attention
    at 32/16/8 px with 64-channel heads, T5's 4096-d embeddings projected to 4 x model_channels)."""
    return dict(sample_size=64, in_channels=3, out_channels=6, layers_per_block=3,
                block_out_channels=tuple(model_channels * mult for mult in (1, 2, 3, 4)),
                down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
                up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
                mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=64,
                cross_attention_dim=4 * model_channels, encoder_hid_dim=4096, encoder_hid_dim_type="text_proj",
                addition_embed_type="text", addition_embed_type_num_heads=64, act_fn="gelu",
                resnet_time_scale_shift="scale_shift", cross_attention_norm="group_norm", norm_num_groups=32)


# model_channels 704 / 320 / 192: 4.3B / 0.94B / 0.37B parameters (the model cards' 4.3B, 900M, 400M).
IF_I_XL = if_stage1_unet(704)
IF_I_L = if_stage1_unet(320)
IF_I_M = if_stage1_unet(192)


def _text(subfolder: str, class_name: str, config: dict) -> Component:
    return Component(subfolder, "transformers", class_name, config)


def _diffusers(subfolder: str, class_name: str, config: dict) -> Component:
    return Component(subfolder, "diffusers", class_name, config)


def _controlnet(hub_id: str, unet: dict) -> Checkpoint:
    return Checkpoint(hub_id, (_diffusers("", "ControlNetModel", controlnet_config(unet)),))


def _stable_diffusion(hub_id: str, unet: dict, vae: dict, text: dict, scheduler: tuple[str, dict]) -> Checkpoint:
    return Checkpoint(hub_id, (_diffusers("unet", "UNet2DConditionModel", unet),
                               _diffusers("vae", "AutoencoderKL", vae),
                               _text("text_encoder", "CLIPTextModel", text)), "StableDiffusionPipeline", scheduler)


def _deepfloyd(hub_id: str, unet: dict) -> Checkpoint:
    return Checkpoint(hub_id, (_diffusers("unet", "UNet2DConditionModel", unet),
                               _text("text_encoder", "T5EncoderModel", T5_XXL_CONFIG)), "IFPipeline", IF_SCHEDULER)


SD15_DEPTH = _controlnet("lllyasviel/control_v11f1p_sd15_depth", SD15_UNET)
SD15_CANNY = _controlnet("lllyasviel/control_v11p_sd15_canny", SD15_UNET)
SDXL_DEPTH = _controlnet("diffusers/controlnet-depth-sdxl-1.0", SDXL_UNET)
SDXL_CANNY = _controlnet("diffusers/controlnet-canny-sdxl-1.0", SDXL_UNET)

# madebyollin/sdxl-vae-fp16-fix: SDXL's VAE fine-tuned to stay finite in float16; the engine uses it
# in place of SDXL's own VAE when it is on the machine.
SDXL_FP16_FIX_VAE = Checkpoint("madebyollin/sdxl-vae-fp16-fix",
                               (_diffusers("", "AutoencoderKL", dict(SDXL_VAE, force_upcast=False)),))

SDXL_BASE = Checkpoint("stabilityai/stable-diffusion-xl-base-1.0", (
    _diffusers("unet", "UNet2DConditionModel", SDXL_UNET),
    _diffusers("vae", "AutoencoderKL", SDXL_VAE),
    _text("text_encoder", "CLIPTextModel", CLIP_L_TEXT),
    _text("text_encoder_2", "CLIPTextModelWithProjection", OPENCLIP_BIGG_TEXT)), "StableDiffusionXLPipeline",
    SDXL_SCHEDULER)

# In the order the benchmark runs them (most used first).
FAMILIES = {family.key: family for family in (
    Family("sd15", "SD 1.x", "texture (with the depth + canny ControlNets)", "texture",
           _stable_diffusion("stable-diffusion-v1-5/stable-diffusion-v1-5", SD15_UNET, SD_VAE, CLIP_L_TEXT,
                             SD_SCHEDULER),
           {"depth": SD15_DEPTH, "canny": SD15_CANNY}),
    Family("sd2-base", "SD 2.x base", "texture; generate stage 2", "texture",
           _stable_diffusion("stabilityai/stable-diffusion-2-1-base", SD21_BASE, SD_VAE, OPENCLIP_H_CONFIG,
                             SD_SCHEDULER)),
    Family("sd2-768v", "SD 2.x 768-v", "texture at 768 px (v-prediction)", "texture",
           _stable_diffusion("stabilityai/stable-diffusion-2-1", SD21_768_UNET, SD21_768_VAE, OPENCLIP_H_CONFIG,
                             SD_V_SCHEDULER)),
    Family("sdxl", "SDXL", "texture at 1024 px (with the depth ControlNet)", "texture", SDXL_BASE,
           {"depth": SDXL_DEPTH}),
    Family("if-i-xl", "IF-I XL", "generate stage 1", "generate stage 1", _deepfloyd("DeepFloyd/IF-I-XL-v1.0", IF_I_XL)),
    Family("if-i-l", "IF-I L", "generate stage 1", "generate stage 1", _deepfloyd("DeepFloyd/IF-I-L-v1.0", IF_I_L)),
    Family("if-i-m", "IF-I M", "generate stage 1", "generate stage 1", _deepfloyd("DeepFloyd/IF-I-M-v1.0", IF_I_M)),
)}

# Every checkpoint the README's table lists: the families' own, the SDXL canny ControlNet (the same
# architecture as SDXL depth, so no family runs it) and the fp16-fixed SDXL VAE.
CHECKPOINTS = {checkpoint.hub_id: checkpoint for family in FAMILIES.values()
               for checkpoint in (family.base, *family.controlnets.values())}
CHECKPOINTS.update({checkpoint.hub_id: checkpoint for checkpoint in (SDXL_CANNY, SDXL_FP16_FIX_VAE)})
