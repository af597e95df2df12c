"""Tiny random models saved in each supported family's real folder layout: the real pipeline and
component classes in model_index.json, the real scheduler class and config (prediction type
included), CLIP BPE tokenizers (vocab.json + merges.txt) and a sentencepiece T5 tokenizer
(spiece.model) trained here. diffusers' own pipelines load these folders exactly as the engine
does, so the parity tests can run both on the same weights without any download."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 77  # the length IFPipeline and threestudio encode IF prompts at
# Words the tokenizers know whole (BPE merges); any other lowercase word is spelt out letter by letter.
WORDS = ["a", "red", "blue", "green", "wooden", "chair", "cube", "sphere", "corgi", "striped", "vase", "ugly",
         "low", "quality", "noisy", "tiling", "oversaturated", "color", "front", "back", "side", "view",
         "overhead", "of", "the"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SD15_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                  "trained_betas": None}


@dataclass
class ModelFolders:
    """Where one session's tiny models lie."""

    sd15: Path
    sd15_controlnets: dict[str, Path]  # "depth", "canny"
    sd2_base: Path
    sd2_v: Path
    sdxl: Path
    sdxl_controlnet: Path  # depth
    deepfloyd_if: Path


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _model_index(folder: Path, pipeline: str, components: dict, **extra) -> None:
    _write_json(folder / "model_index.json",
                {"_class_name": pipeline, "_diffusers_version": "0.42.1", **extra, **components})


# ---------------------------------------------------------------------------------------- tokenizers

def write_clip_tokenizer(folder: Path, pad_token: str) -> int:
    """A CLIP byte-level BPE tokenizer as Stable Diffusion ships it (vocab.json, merges.txt, configs);
    returns the vocabulary size. SD 1.x pads with <|endoftext|>, the OpenCLIP encoders of SD 2.x and
    SDXL's second with "!"."""
    tokens = ["!", ","] + list(LETTERS) + [f"{c}</w>" for c in ",!" + LETTERS]
    merges = []
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:  # merge left to right: every intermediate piece is a token too
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            if pieces[0] not in tokens:
                tokens.append(pieces[0])
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "vocab.json", {token: index for index, token in enumerate(tokens)})
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": pad_token}
    _write_json(folder / "special_tokens_map.json", specials)
    _write_json(folder / "tokenizer_config.json", {"tokenizer_class": "CLIPTokenizer", "do_lower_case": True,
                                                   "model_max_length": CLIP_MAX_LENGTH, **specials})
    return len(tokens)


T5_SENTENCES = [
    "a red wooden chair", "a blue striped vase", "a corgi sitting on the grass", "a green cube on a table",
    "a sphere made of glass", "front view of a corgi", "back view of a wooden chair", "side view of a vase",
    "overhead view of the cube", "oversaturated color, ugly, tiling, low quality, noisy", "a photo of a dog",
    "a small house with a red roof", "an old stone bridge over a river", "a teapot with blue flowers",
    "a robot made of metal", "a bowl of fruit on a wooden table", "a cat sleeping in the sun",
    "a yellow rubber duck", "a knight in shining armour", "a castle on a hill at night", "a bicycle leaning on a wall",
    "a plate of pasta with tomato sauce", "a lamp with a white shade", "an apple and a pear",
    "a tree with orange leaves", "a dragon breathing fire", "a boat on a calm lake", "a pair of leather boots",
    "a clock on a brick wall", "a violin lying on a chair", "a cup of hot coffee", "a bird on a branch",
]


def write_t5_tokenizer(folder: Path, vocab_size: int = 96) -> int:
    """DeepFloyd IF's tokenizer layout: a sentencepiece unigram model (spiece.model, trained here
    on a few sentences) with T5's ids (pad 0, eos 1, unk 2, no bos) and 100 sentinel tokens;
    returns the vocabulary size with the sentinels."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(T5_SENTENCES), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        character_coverage=1.0, minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    sentinels = [f"<extra_id_{i}>" for i in range(100)]
    specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                "additional_special_tokens": sentinels}
    _write_json(folder / "special_tokens_map.json", specials)
    _write_json(folder / "tokenizer_config.json", {"tokenizer_class": "T5Tokenizer", "model_max_length": T5_MAX_LENGTH,
                                                   "extra_ids": 100, "sp_model_kwargs": {}, **specials})
    return vocab_size + len(sentinels)


# ---------------------------------------------------------------------------------------- text encoders

def _clip_config(vocab_size: int, pad_token_id: int, hidden: int, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH,
                          pad_token_id=pad_token_id, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                          **extra)


def _clip_text_encoder(folder: Path, vocab_size: int, pad_token: str, hidden: int, act: str,
                       projection_dim: int | None = None) -> None:
    """CLIPTextModel, or CLIPTextModelWithProjection (SDXL's second encoder) if projection_dim is set."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    pad_id = 0 if pad_token == "!" else vocab_size - 1
    if projection_dim is None:
        CLIPTextModel(_clip_config(vocab_size, pad_id, hidden, hidden_act=act)).save_pretrained(folder)
    else:
        config = _clip_config(vocab_size, pad_id, hidden, hidden_act=act, projection_dim=projection_dim)
        CLIPTextModelWithProjection(config).save_pretrained(folder)


# ---------------------------------------------------------------------------------------- networks

def _latent_unet(sample_size: int, cross_attention_dim: int, linear_projection: bool, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, cross_attention_dim=cross_attention_dim, attention_head_dim=(2, 4),
        use_linear_projection=linear_projection,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        **extra)


def _vae(scaling_factor: float, sample_size: int, **extra):
    """8x down-sampling as the real VAEs (four blocks), at a few channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
                         block_out_channels=(4, 4, 4, 4), layers_per_block=1, sample_size=sample_size,
                         scaling_factor=scaling_factor, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, **extra)


def _controlnet(unet, seed: int):
    """ControlNetModel.from_unet, with its zero-initialised layers (the zero convolutions and the
    condition embedding's last layer) given random weights, so the condition reaches the UNet."""
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 8))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in controlnet.parameters():
            if not parameter.any():
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return controlnet


# ---------------------------------------------------------------------------------------- families

def make_sd15(folder: Path, seed: int = 0) -> Path:
    """runwayml / stable-diffusion-v1-5's layout (the files the engine loads; no safety checker)."""
    from diffusers import PNDMScheduler

    torch.manual_seed(seed)
    vocab = write_clip_tokenizer(folder / "tokenizer", pad_token="<|endoftext|>")
    _clip_text_encoder(folder / "text_encoder", vocab, "<|endoftext|>", hidden=32, act="quick_gelu")
    _latent_unet(8, 32, linear_projection=False).save_pretrained(folder / "unet")
    _vae(0.18215, 64).save_pretrained(folder / "vae")
    PNDMScheduler(**SD15_SCHEDULER).save_pretrained(folder / "scheduler")
    _model_index(folder, "StableDiffusionPipeline", {
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, requires_safety_checker=True)
    return folder


def make_sd15_controlnet(folder: Path, sd15: Path, seed: int) -> Path:
    """An lllyasviel/control_v11* layout: config.json and weights, made from the SD 1.5 UNet."""
    from diffusers import UNet2DConditionModel

    _controlnet(UNet2DConditionModel.from_pretrained(sd15 / "unet"), seed).save_pretrained(folder)
    return folder


def make_sd2(folder: Path, prediction_type: str, seed: int = 0) -> Path:
    """stabilityai/stable-diffusion-2-1-base's layout (epsilon, 512) or stable-diffusion-2-1's
    (v_prediction, 768: a UNet sample size 1.5 times the base's)."""
    from diffusers import DDIMScheduler

    torch.manual_seed(seed)
    sample_size = 12 if prediction_type == "v_prediction" else 8
    vocab = write_clip_tokenizer(folder / "tokenizer", pad_token="!")
    _clip_text_encoder(folder / "text_encoder", vocab, "!", hidden=32, act="gelu")
    _latent_unet(sample_size, 32, linear_projection=True).save_pretrained(folder / "unet")
    _vae(0.18215, sample_size * 8).save_pretrained(folder / "vae")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                  prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    _model_index(folder, "StableDiffusionPipeline", {
        "feature_extractor": ["transformers", "CLIPImageProcessor"], "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, requires_safety_checker=False)
    return folder


SDXL_TIME_EMBED_DIM = 8
SDXL_PROJECTION_DIM = 16


def _sdxl_unet():
    # The pooled text embedding and the six size/crop numbers (each embedded in
    # SDXL_TIME_EMBED_DIM) make the added condition, as in the real 2816 = 1280 + 6 * 256.
    return _latent_unet(8, 32 + 32, linear_projection=True, addition_embed_type="text_time",
                        addition_time_embed_dim=SDXL_TIME_EMBED_DIM, transformer_layers_per_block=(1, 2),
                        projection_class_embeddings_input_dim=SDXL_PROJECTION_DIM + 6 * SDXL_TIME_EMBED_DIM)


def make_sdxl(folder: Path, seed: int = 0) -> Path:
    """stabilityai/stable-diffusion-xl-base-1.0's layout: two CLIP tokenizers and encoders (the
    second with a projection), a text_time UNet, the Euler scheduler, force_zeros_for_empty_prompt."""
    from diffusers import EulerDiscreteScheduler

    torch.manual_seed(seed)
    vocab = write_clip_tokenizer(folder / "tokenizer", pad_token="<|endoftext|>")
    write_clip_tokenizer(folder / "tokenizer_2", pad_token="!")
    _clip_text_encoder(folder / "text_encoder", vocab, "<|endoftext|>", hidden=32, act="quick_gelu")
    _clip_text_encoder(folder / "text_encoder_2", vocab, "!", hidden=32, act="gelu",
                       projection_dim=SDXL_PROJECTION_DIM)
    _sdxl_unet().save_pretrained(folder / "unet")
    _vae(0.13025, 64, force_upcast=True).save_pretrained(folder / "vae")
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
                           interpolation_type="linear", prediction_type="epsilon",
                           use_karras_sigmas=False).save_pretrained(folder / "scheduler")
    _model_index(folder, "StableDiffusionXLPipeline", {
        "feature_extractor": [None, None], "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]},
        force_zeros_for_empty_prompt=True)
    return folder


def make_sdxl_controlnet(folder: Path, sdxl: Path, seed: int) -> Path:
    """A diffusers/controlnet-*-sdxl-1.0 layout, made from the SDXL UNet (text_time condition included)."""
    from diffusers import UNet2DConditionModel

    _controlnet(UNet2DConditionModel.from_pretrained(sdxl / "unet"), seed).save_pretrained(folder)
    return folder


def make_deepfloyd_if(folder: Path, seed: int = 0) -> Path:
    """DeepFloyd/IF-I-XL-v1.0's layout: T5 tokenizer and encoder, a pixel UNet with learned variance
    (6 output channels), text-pooled added embedding and simple cross-attention blocks, IF's DDPM
    scheduler config."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    vocab = write_t5_tokenizer(folder / "tokenizer")
    T5EncoderModel(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                            pad_token_id=0, eos_token_id=1)).save_pretrained(folder / "text_encoder")
    UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), cross_attention_dim=32,
        encoder_hid_dim=32, attention_head_dim=8, addition_embed_type="text", addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu",
    ).save_pretrained(folder / "unet")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000, variance_type="learned_range",
                  thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5, clip_sample=True,
                  clip_sample_range=1.0, prediction_type="epsilon").save_pretrained(folder / "scheduler")
    _model_index(folder, "IFPipeline", {
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "safety_checker": ["deepfloyd_if", "IFSafetyChecker"], "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5Tokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "watermarker": ["deepfloyd_if", "IFWatermarker"]},
        requires_safety_checker=True)
    return folder


def make_model_folders(root: Path) -> ModelFolders:
    sd15 = make_sd15(root / "stable-diffusion-v1-5")
    sdxl = make_sdxl(root / "stable-diffusion-xl-base-1.0")
    return ModelFolders(
        sd15=sd15,
        sd15_controlnets={"depth": make_sd15_controlnet(root / "control_v11f1p_sd15_depth", sd15, seed=1),
                          "canny": make_sd15_controlnet(root / "control_v11p_sd15_canny", sd15, seed=2)},
        sd2_base=make_sd2(root / "stable-diffusion-2-1-base", "epsilon"),
        sd2_v=make_sd2(root / "stable-diffusion-2-1", "v_prediction"),
        sdxl=sdxl,
        sdxl_controlnet=make_sdxl_controlnet(root / "controlnet-depth-sdxl-1.0", sdxl, seed=3),
        deepfloyd_if=make_deepfloyd_if(root / "IF-I-XL-v1.0"))
