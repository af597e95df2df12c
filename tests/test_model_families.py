"""Model families: which family a folder or single file is (from its configs or keys alone), the
ControlNets `auto` picks for it and the check of named ones, the scheduler's alphas and
prediction type, DeepFloyd IF's sentencepiece T5 tokenizer and prompt encoding, and the
messages for what the engine cannot use (SD3, FLUX, Kandinsky, LoRAs, unknown single files).

Everything is tiny and built here; folders whose weights are never loaded hold only configs, at
the real models' sizes."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from engine.config import SD1_CONTROLNETS, SDXL_CONTROLNETS, PriorConfig
from engine.errors import BadInputError, ModelNotFoundError
from engine.prior.families import Family, describe_model_folder
from engine.prior.load import load_prior, pick_controlnets

CPU = torch.device("cpu")


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def cpu_config(model: Path | str, **overrides) -> PriorConfig:
    return PriorConfig(model=str(model), half_precision=False, **{"controlnets": (), **overrides})


# ------------------------------------------------------------------------------------ config-only folders

def config_folder(root: Path, pipeline: str, unet: dict, vae_blocks: int | None = 4, text_act: str = "quick_gelu",
                  prediction_type: str = "epsilon", scheduler: str = "PNDMScheduler", **components) -> Path:
    """A pipeline folder with the configs describe_model_folder reads and no weights."""
    index = {"_class_name": pipeline, "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", "CLIPTextModel"], "scheduler": ["diffusers", scheduler], **components}
    write_json(root / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", "in_channels": 4,
                                               "block_out_channels": [320, 640, 1280, 1280], **unet})
    if vae_blocks:
        index["vae"] = ["diffusers", "AutoencoderKL"]
        write_json(root / "vae" / "config.json", {"block_out_channels": [128, 256, 512, 512][:vae_blocks]})
    write_json(root / "text_encoder" / "config.json", {"hidden_act": text_act})
    write_json(root / "scheduler" / "scheduler_config.json", {"_class_name": scheduler,
                                                              "prediction_type": prediction_type})
    write_json(root / "model_index.json", index)
    return root


def sd15_configs(root: Path) -> Path:
    return config_folder(root, "StableDiffusionPipeline", {"cross_attention_dim": 768, "sample_size": 64})


def sd21_configs(root: Path) -> Path:
    return config_folder(root, "StableDiffusionPipeline", {"cross_attention_dim": 1024, "sample_size": 96},
                         text_act="gelu", prediction_type="v_prediction", scheduler="DDIMScheduler")


def sdxl_configs(root: Path) -> Path:
    return config_folder(root, "StableDiffusionXLPipeline",
                         {"cross_attention_dim": 2048, "sample_size": 128, "addition_embed_type": "text_time",
                          "block_out_channels": [320, 640, 1280]},
                         scheduler="EulerDiscreteScheduler",
                         text_encoder_2=["transformers", "CLIPTextModelWithProjection"])


def if_configs(root: Path) -> Path:
    return config_folder(root, "IFPipeline", {"in_channels": 3, "cross_attention_dim": 4096, "sample_size": 64,
                                              "addition_embed_type": "text"},
                         vae_blocks=None, scheduler="DDPMScheduler")


def test_families_from_configs(tmp_path):
    sd15 = describe_model_folder(sd15_configs(tmp_path / "sd15"))
    assert (sd15.family, sd15.resolution, sd15.prediction_type) == (Family.SD1, 512, "epsilon")
    assert sd15.components == ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    assert sd15.controlnet_defaults == SD1_CONTROLNETS and "texture" in sd15.uses
    sd21 = describe_model_folder(sd21_configs(tmp_path / "sd21"))
    assert (sd21.family, sd21.resolution, sd21.label) == (Family.SD2, 768, "Stable Diffusion 2.x (v-prediction)")
    sdxl = describe_model_folder(sdxl_configs(tmp_path / "sdxl"))
    assert (sdxl.family, sdxl.resolution) == (Family.SDXL, 1024)
    assert {"text_encoder_2", "tokenizer_2"} <= set(sdxl.components) and sdxl.controlnet_defaults == SDXL_CONTROLNETS
    deepfloyd = describe_model_folder(if_configs(tmp_path / "if"))
    assert (deepfloyd.family, deepfloyd.resolution, deepfloyd.pixel_space) == (Family.IF_STAGE_I, 64, True)
    assert deepfloyd.components == ("unet", "text_encoder", "tokenizer", "scheduler")
    assert deepfloyd.controlnet_defaults is None and deepfloyd.uses == ("generate stage 1",)


def test_widths_of_neither_family_go_by_the_text_encoder(tmp_path):
    """Widths other than 768/1024 (the test suite's tiny models): CLIP ViT-L's quick_gelu is SD 1.x."""
    tiny = {"cross_attention_dim": 16, "sample_size": 8}
    assert describe_model_folder(config_folder(tmp_path / "a", "StableDiffusionPipeline", tiny)).family == Family.SD1
    sd2 = config_folder(tmp_path / "b", "StableDiffusionPipeline", tiny, text_act="gelu")
    assert describe_model_folder(sd2).family == Family.SD2


# ------------------------------------------------------------------------------------ ControlNets

def test_auto_picks_the_controlnets_of_the_model_family(tmp_path):
    auto = PriorConfig(model="m")
    chosen, notices = pick_controlnets(describe_model_folder(sd15_configs(tmp_path / "sd15")), auto, "m")
    assert chosen == {"depth": SD1_CONTROLNETS.depth, "canny": SD1_CONTROLNETS.canny}
    assert SD1_CONTROLNETS.depth in notices[0]
    chosen, notices = pick_controlnets(describe_model_folder(sdxl_configs(tmp_path / "sdxl")), auto, "m")
    assert chosen == {"depth": "diffusers/controlnet-depth-sdxl-1.0", "canny": "diffusers/controlnet-canny-sdxl-1.0"}
    chosen, notices = pick_controlnets(describe_model_folder(sd21_configs(tmp_path / "sd21")), auto, "m")
    assert chosen == {} and "no standard" in notices[0] and "Stable Diffusion 2.x" in notices[0]
    assert pick_controlnets(describe_model_folder(if_configs(tmp_path / "if")), auto, "m") == ({}, [])
    # Named ones come first, also for SD 2.x; asking for a condition SD 2.x has no default for fails.
    named = PriorConfig(model="m", controlnet_models={"depth": "someone/sd21-depth"})
    sd21 = describe_model_folder(tmp_path / "sd21")
    assert pick_controlnets(sd21, named, "m")[0] == {"depth": "someone/sd21-depth"}
    with pytest.raises(BadInputError, match="no standard canny ControlNet"):
        pick_controlnets(sd21, PriorConfig(model="m", controlnets=("canny",)), "m")


@pytest.fixture(scope="module")
def tiny_sd2(tmp_path_factory, tiny_stable_diffusion) -> Path:
    """conftest's tiny Stable Diffusion with an OpenCLIP-style (gelu) text encoder: SD 2.x."""
    folder = tmp_path_factory.mktemp("sd2") / "tiny-sd2"
    shutil.copytree(tiny_stable_diffusion[0], folder)
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    write_json(folder / "text_encoder" / "config.json", {**config, "hidden_act": "gelu"})
    return folder


def test_auto_attaches_no_sd15_controlnet_to_sd2(tiny_sd2):
    """`auto` used to attach the SD 1.5 ControlNets to every latent model (here they are not even on
    this machine, so loading failed; with them, the first step crashed on a shape mismatch)."""
    prior = load_prior(cpu_config(tiny_sd2, controlnets=("auto",)), CPU)
    assert not prior.supports_controlnet
    assert any("No ControlNets" in warning for warning in prior.warnings)


def mismatched_controlnet(source: Path, target: Path, **config_changes) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    write_json(target / "config.json", {**config, **config_changes})
    return target


@pytest.mark.parametrize("changes, made_for", [({"cross_attention_dim": 768}, "Stable Diffusion 1.x"),
                                               ({"addition_embed_type": "text_time"}, "SDXL")])
def test_a_named_controlnet_of_another_family_fails_before_loading(tmp_path, tiny_sd2, tiny_stable_diffusion,
                                                                   changes, made_for):
    controlnet = mismatched_controlnet(tiny_stable_diffusion[1]["depth"], tmp_path / "cn", **changes)
    config = cpu_config(tiny_sd2, controlnets=("auto",), controlnet_models={"depth": str(controlnet)})
    with pytest.raises(BadInputError) as error:
        load_prior(config, CPU)
    assert f"made for {made_for}" in error.value.message and "Stable Diffusion 2.x" in error.value.message
    assert "--controlnet none" in error.value.hint


def test_matching_controlnets_load(tiny_stable_diffusion):
    sd, controlnets = tiny_stable_diffusion
    config = cpu_config(sd, controlnets=("depth", "canny"),
                        controlnet_models={k: str(v) for k, v in controlnets.items()})
    prior = load_prior(config, CPU)
    assert sorted(prior.controlnets) == ["canny", "depth"] and prior.warnings == []


# ------------------------------------------------------------------------------------ noise schedules

SCHEDULERS = [
    ("PNDMScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                       "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}),
    ("DDIMScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                       "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}),
    ("EulerDiscreteScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                                "rescale_betas_zero_snr": True, "timestep_spacing": "leading"}),
    ("DDPMScheduler", {"trained_betas": torch.linspace(1e-4, 0.03, 1000).tolist()}),
]


def with_scheduler(source: Path, target: Path, class_name: str, config: dict | None = None,
                   prediction_type: str = "epsilon") -> Path:
    """A copy of the model folder `source` with a `class_name` scheduler of `config`."""
    import diffusers

    shutil.copytree(source, target)
    shutil.rmtree(target / "scheduler")
    scheduler = getattr(diffusers, class_name)(prediction_type=prediction_type, **(config or {}))
    scheduler.save_pretrained(target / "scheduler")
    return target


@pytest.mark.parametrize("class_name, scheduler_config", SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_alphas_are_the_folders_own_schedulers(tmp_path, tiny_stable_diffusion, class_name, scheduler_config):
    """Each real folder's scheduler class builds the training alphas (Euler keeps 2^-24 at the end
    under zero terminal SNR, where DDPM has 0)."""
    import diffusers

    folder = with_scheduler(tiny_stable_diffusion[0], tmp_path / "sd", class_name, scheduler_config)
    prior = load_prior(cpu_config(folder), CPU)
    expected = getattr(diffusers, class_name).from_pretrained(folder, subfolder="scheduler").alphas_cumprod
    assert torch.equal(prior.alphas_cumprod, expected.float())


@pytest.mark.parametrize("family", ["latent", "pixel"])
def test_v_prediction_becomes_noise(tmp_path, tiny_stable_diffusion, tiny_pixel_prior, family):
    """predict_noise returns eps = sqrt(a) v + sqrt(1 - a) x_t for a v-prediction model (IF: on the
    noise channels, not the learned variance)."""
    source = tiny_stable_diffusion[0] if family == "latent" else tiny_pixel_prior
    folder = with_scheduler(source, tmp_path / "model", "DDIMScheduler", prediction_type="v_prediction")
    prior = load_prior(cpu_config(folder), CPU)
    assert prior.prediction_type == "v_prediction"
    embeddings = prior.encode_prompts(["a red cube", ""])
    channels = 4 if family == "latent" else 3
    noisy = torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([100, 800])
    with torch.no_grad():
        v = prior.unet(noisy, timesteps, encoder_hidden_states=embeddings).sample[:, :channels]
        eps = prior.predict_noise(noisy, timesteps, embeddings)
    abar = prior.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    torch.testing.assert_close(eps, abar.sqrt() * v + (1 - abar).sqrt() * noisy)


def test_sample_prediction_is_refused_at_load(tmp_path, tiny_stable_diffusion):
    folder = with_scheduler(tiny_stable_diffusion[0], tmp_path / "sd", "DDPMScheduler", prediction_type="sample")
    with pytest.raises(ModelNotFoundError, match="predicts 'sample'"):
        load_prior(cpu_config(folder), CPU)


# ------------------------------------------------------------------------------------ DeepFloyd IF's T5

T5_SENTENCES = ["a red wooden chair", "a blue striped vase", "a corgi on the grass", "a green cube on a table",
                "oversaturated color, ugly, tiling, low quality, noisy", "front view of a house", "a cup of tea"]


def write_t5_tokenizer(folder: Path) -> int:
    """IF's tokenizer folder: a sentencepiece unigram model with T5's ids (pad 0, eos 1, unk 2),
    tokenizer_config.json and special_tokens_map.json; returns the vocabulary size."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(T5_SENTENCES * 4), model_writer=model, vocab_size=40, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
    folder.mkdir(parents=True)
    (folder / "spiece.model").write_bytes(model.getvalue())
    sentinels = [f"<extra_id_{i}>" for i in range(4)]
    specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "additional_special_tokens": sentinels}
    write_json(folder / "special_tokens_map.json", specials)
    write_json(folder / "tokenizer_config.json", {"tokenizer_class": "T5Tokenizer", "model_max_length": 512,
                                                  "extra_ids": 4, **specials})
    return 40 + len(sentinels)


@pytest.fixture(scope="module")
def tiny_if(tmp_path_factory) -> Path:
    """An IF stage I folder: T5EncoderModel with a sentencepiece tokenizer, a 6-channel pixel UNet."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("if") / "IF-I-tiny"
    vocab = write_t5_tokenizer(folder / "tokenizer")
    T5EncoderModel(T5Config(vocab_size=vocab, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=2,
                            relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                            is_encoder_decoder=False)).save_pretrained(folder / "text_encoder")
    UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(8, 16),
                         norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).save_pretrained(folder / "unet")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2",
                  variance_type="learned_range").save_pretrained(folder / "scheduler")
    write_json(folder / "model_index.json", {
        "_class_name": "IFPipeline", "tokenizer": ["transformers", "T5Tokenizer"],
        "text_encoder": ["transformers", "T5EncoderModel"], "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": ["deepfloyd_if", "IFSafetyChecker"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"], "watermarker": ["deepfloyd_if", "IFWatermarker"]})
    return folder


def test_if_t5_prompts_are_encoded_as_ifpipeline_does(tiny_if):
    """77 tokens with the attention mask, lowercased and stripped (IFPipeline without caption cleaning)."""
    from transformers import T5EncoderModel, T5Tokenizer

    prior = load_prior(cpu_config(tiny_if), CPU)
    assert describe_model_folder(tiny_if).family == Family.IF_STAGE_I
    embeddings = prior.encode_prompts(["  A Red Wooden Chair ", ""])
    tokenizer = T5Tokenizer.from_pretrained(tiny_if / "tokenizer")
    encoder = T5EncoderModel.from_pretrained(tiny_if / "text_encoder").eval()
    tokens = tokenizer(["a red wooden chair", ""], padding="max_length", max_length=77, truncation=True,
                       add_special_tokens=True, return_tensors="pt")
    with torch.no_grad():
        expected = encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    assert embeddings.shape == (2, 77, 16)
    torch.testing.assert_close(embeddings, expected)


@pytest.mark.parametrize("module, package", [("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf")])
def test_a_missing_sentencepiece_package_is_named(tiny_if, monkeypatch, module, package):
    """transformers' own error for this case asks for tiktoken."""
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(ModelNotFoundError) as error:
        load_prior(cpu_config(tiny_if), CPU)
    assert package in error.value.message and f"pip install {package}" in error.value.hint
    assert "tiktoken" not in error.value.message + error.value.hint


# ------------------------------------------------------------------------------------ what is not supported

def unsupported_folders(root: Path) -> dict[str, tuple[Path, str]]:
    """Folders of families the engine cannot use, each with what its message must name."""
    sd3 = root / "sd3"
    write_json(sd3 / "model_index.json", {"_class_name": "StableDiffusion3Pipeline",
                                           "transformer": ["diffusers", "SD3Transformer2DModel"]})
    flux = root / "flux"
    write_json(flux / "model_index.json", {"_class_name": "FluxPipeline",
                                            "transformer": ["diffusers", "FluxTransformer2DModel"]})
    kandinsky = root / "kandinsky"
    write_json(kandinsky / "model_index.json", {"_class_name": "KandinskyV22Pipeline",
                                                 "unet": ["diffusers", "UNet2DConditionModel"],
                                                 "movq": ["diffusers", "VQModel"]})
    lora = root / "lora"
    lora.mkdir()
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
    controlnet = root / "controlnet"
    write_json(controlnet / "config.json", {"_class_name": "ControlNetModel", "cross_attention_dim": 768})
    return {"SD3": (sd3, "Stable Diffusion 3"), "FLUX": (flux, "FLUX"), "Kandinsky": (kandinsky, "Kandinsky"),
            "LoRA": (lora, "LoRA"), "ControlNet": (controlnet, "ControlNet")}


@pytest.mark.parametrize("kind", ["SD3", "FLUX", "Kandinsky", "LoRA", "ControlNet"])
def test_unsupported_folders_say_what_they_are_and_what_is_supported(tmp_path, kind):
    folder, named = unsupported_folders(tmp_path)[kind]
    with pytest.raises(ModelNotFoundError) as error:
        load_prior(cpu_config(folder), CPU)
    assert named in error.value.message
    assert all(family in error.value.hint for family in ("Stable Diffusion 1.x and 2.x", "SDXL", "DeepFloyd IF"))


def save_single_file(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: torch.zeros(shape, dtype=torch.float16) for key, shape in shapes.items()}, str(path))
    return path


UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
SINGLE_FILES = {
    "sd3": ({"model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (4,)}, "Stable Diffusion 3"),
    "flux": ({"double_blocks.0.img_attn.norm.key_norm.scale": (4,)}, "FLUX"),
    "lora": ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 4)}, "LoRA"),
    "inpainting": ({UNET_CONV_IN: (320, 9, 3, 3),
                    "cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,)}, "9 channels"),
    "refiner": ({UNET_CONV_IN: (384, 4, 3, 3), "conditioner.embedders.0.model.ln_final.weight": (4,)}, "SDXL refiner"),
    "sd2": ({UNET_CONV_IN: (320, 4, 3, 3), "cond_stage_model.model.token_embedding.weight": (4, 4)},
            "Stable Diffusion 2.x single file"),
}


@pytest.mark.parametrize("kind", list(SINGLE_FILES))
def test_unsupported_single_files_say_what_they_are(tmp_path, kind):
    shapes, named = SINGLE_FILES[kind]
    path = save_single_file(tmp_path / f"{kind}.safetensors", shapes)
    with pytest.raises(ModelNotFoundError) as error:
        load_prior(cpu_config(path, cache_dir=str(tmp_path / "hub")), CPU)
    assert named in error.value.message and "SDXL" in error.value.hint


def test_a_ckpt_single_file_is_recognised(tmp_path):
    shapes, named = SINGLE_FILES["sd2"]
    torch.save({"state_dict": {key: torch.zeros(shape) for key, shape in shapes.items()}, "global_step": 875000},
               tmp_path / "model.ckpt")
    with pytest.raises(ModelNotFoundError, match=named):
        load_prior(cpu_config(tmp_path / "model.ckpt"), CPU)


@pytest.mark.parametrize("family, repo, config_file", [
    ("sd1", "stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer/vocab.json"),
    ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2/merges.txt")])
def test_single_file_without_configs_says_what_to_download(tmp_path, family, repo, config_file):
    text = ({"cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,)} if family == "sd1" else
            {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (4,),
             "conditioner.embedders.1.model.ln_final.weight": (4,)})
    path = save_single_file(tmp_path / "model.safetensors", {UNET_CONV_IN: (320, 4, 3, 3), **text})
    with pytest.raises(ModelNotFoundError) as error:
        load_prior(cpu_config(path, cache_dir=str(tmp_path / "hub")), CPU)
    assert repo in error.value.message
    assert f"hf download {repo} model_index.json" in error.value.hint and config_file in error.value.hint
    assert f"--cache-dir {tmp_path / 'hub'}" in error.value.hint


# ------------------------------------------------------------------------------------ a real single-file load

def clip_tokenizer_files(folder: Path) -> None:
    """A CLIP BPE tokenizer (vocab.json, merges.txt) whose ids fit the tiny text encoder's 16."""
    vocab = ["!", "a</w>", "<|startoftext|>", "<|endoftext|>", "r", "e", "d</w>", "c", "u", "b", "e</w>"]
    shutil.rmtree(folder, ignore_errors=True)
    write_json(folder / "vocab.json", {token: index for index, token in enumerate(vocab)})
    (folder / "merges.txt").write_text("#version: 0.2\n")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>"}
    write_json(folder / "special_tokens_map.json", specials)
    write_json(folder / "tokenizer_config.json",
               {"tokenizer_class": "CLIPTokenizer", "model_max_length": 8, **specials})


RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                 "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
UNET_TOP_TO_LDM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                   "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
VAE_ATTENTION_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_to_original_layout(unet) -> dict[str, torch.Tensor]:
    """A diffusers SD UNet's weights under the original (CompVis) names: input_blocks (a resnet
    and an attention per layer, then the downsampler), middle_block, output_blocks."""
    per_block, state = unet.config.layers_per_block, {}
    for key, value in unet.state_dict().items():
        module, parameter = key.rsplit(".", 1)
        parts = module.split(".")
        if module in UNET_TOP_TO_LDM:
            name = UNET_TOP_TO_LDM[module]
        elif parts[0] == "mid_block":
            index, rest = int(parts[2]), ".".join(parts[3:])
            name = (f"middle_block.{2 * index}.{RESNET_TO_LDM[rest]}" if parts[1] == "resnets"
                    else f"middle_block.1.{rest}")
        else:
            block, down = int(parts[1]), parts[0] == "down_blocks"
            first = 1 + block * (per_block + 1) if down else block * (per_block + 1)
            blocks = "input_blocks" if down else "output_blocks"
            if parts[2] in ("downsamplers", "upsamplers"):
                layer = first + per_block
                has_attention = "CrossAttn" in unet.config.up_block_types[block]
                name = f"{blocks}.{layer}.0.op" if down else f"{blocks}.{layer}.{2 if has_attention else 1}.conv"
            else:
                layer, rest = first + int(parts[3]), ".".join(parts[4:])
                name = (f"{blocks}.{layer}.0.{RESNET_TO_LDM[rest]}" if parts[2] == "resnets"
                        else f"{blocks}.{layer}.1.{rest}")
        state[f"model.diffusion_model.{name}.{parameter}"] = value
    return state


def vae_to_original_layout(vae) -> dict[str, torch.Tensor]:
    """A diffusers VAE's weights under the original names (decoder blocks numbered bottom-up,
    attention projections as 1x1 convolutions)."""
    up_blocks, state = len(vae.config.up_block_types), {}
    for key, value in vae.state_dict().items():
        module, parameter = key.rsplit(".", 1)
        side, *parts = module.split(".")
        if side in ("quant_conv", "post_quant_conv"):
            name = module
        elif parts[0] in ("conv_in", "conv_out"):
            name = f"{side}.{parts[0]}"
        elif parts[0] == "conv_norm_out":
            name = f"{side}.norm_out"
        elif parts[0] == "mid_block":
            if parts[1] == "resnets":
                name = f"{side}.mid.block_{int(parts[2]) + 1}.{parts[3].replace('conv_shortcut', 'nin_shortcut')}"
            else:
                name = f"{side}.mid.attn_1.{VAE_ATTENTION_TO_LDM['.'.join(parts[3:])]}"
                value = value[:, :, None, None] if parameter == "weight" and value.dim() == 2 else value
        else:
            level = int(parts[1]) if parts[0] == "down_blocks" else up_blocks - 1 - int(parts[1])
            stage = "down" if parts[0] == "down_blocks" else "up"
            if parts[2] in ("downsamplers", "upsamplers"):
                name = f"{side}.{stage}.{level}.{stage}sample.conv"
            else:
                name = f"{side}.{stage}.{level}.block.{parts[3]}.{parts[4].replace('conv_shortcut', 'nin_shortcut')}"
        state[f"first_stage_model.{name}.{parameter}"] = value
    return state


def fake_hub_snapshot(cache: Path, repo: str, source: Path, files: tuple[str, ...]) -> None:
    """`files` of `source` as the Hugging Face cache holds a download of `repo` (refs/main -> snapshot)."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(revision)
    for file in files:
        target = storage / "snapshots" / revision / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / file, target)


def test_sd1_single_file_converts_with_configs_from_the_cache(tmp_path, tiny_stable_diffusion):
    """An SD 1.x checkpoint in the original layout (made here from a tiny pipeline) loads through
    diffusers' from_single_file, with the configs of stable-diffusion-v1-5 found in the cache;
    the converted folder is kept and reused."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from engine.prior.latent import LatentPrior
    from engine.prior.single_file import SD1_SINGLE_FILE

    pipeline = with_scheduler(tiny_stable_diffusion[0], tmp_path / "pipeline", *SCHEDULERS[0])
    clip_tokenizer_files(pipeline / "tokenizer")
    index = json.loads((pipeline / "model_index.json").read_text())
    write_json(pipeline / "model_index.json", {
        **index, "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "PNDMScheduler"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"]})
    cache = tmp_path / "hub"
    fake_hub_snapshot(cache, SD1_SINGLE_FILE.config_repo, pipeline, SD1_SINGLE_FILE.config_files)
    unet = UNet2DConditionModel.from_pretrained(pipeline / "unet")
    vae = AutoencoderKL.from_pretrained(pipeline / "vae")
    text_encoder = CLIPTextModel.from_pretrained(pipeline / "text_encoder")
    text_state = {"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
                  for k, v in text_encoder.state_dict().items()}
    checkpoint = tmp_path / "downloads" / "tiny-sd15.safetensors"
    checkpoint.parent.mkdir()
    save_file({k: v.contiguous() for k, v in {**unet_to_original_layout(unet), **vae_to_original_layout(vae),
                                              **text_state}.items()}, str(checkpoint))

    config = cpu_config(checkpoint, cache_dir=str(cache))
    prior = load_prior(config, CPU)
    assert isinstance(prior, LatentPrior) and prior.tokenizer.__class__.__name__.startswith("CLIPTokenizer")
    assert len(prior.warnings) == 1 and "Converted tiny-sd15.safetensors" in prior.warnings[0]
    for loaded, original in ((prior.unet, unet), (prior.vae, vae), (prior.text_encoder, text_encoder)):
        expected = original.state_dict()
        assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
    converted = list((cache / "csd-blender-converted").iterdir())
    assert len(converted) == 1 and describe_model_folder(converted[0]).family == Family.SD1
    assert load_prior(config, CPU).warnings == []  # the second run loads the kept folder
