"""SDXL base as a texture prior (engine/prior/sdxl.py): the pooled embedding packed with the prompt's
hidden states, the added conditions (pooled embedding, time ids) reaching the UNet and its
ControlNet, zeros for the unconditional prompt, a VAE safe in half precision, the render size from
the model, and the texture job's steps with it. Parity with diffusers' StableDiffusionXLPipeline
itself is in tests/test_parity_*.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from engine.cli import main
from engine.config import PIXEL_MODEL_RENDER_SIZE, PriorConfig, TextureJobConfig
from engine.errors import ModelNotFoundError
from engine.pipelines.texture_step import EagerTextureStep, StaticTextureStep
from engine.prior.base import ControlImages
from engine.prior.fast.patching import replaced_methods
from engine.prior.sdxl import FP16_FIX_VAE, SdxlPrior, load_vae, pack_embeddings, unpack_embeddings
import test_texture_step
from test_texture_step import Job, assert_same_steps, job_config, run_steps
from tiny_models import TINY_SDXL_POOLED, make_tiny_sdxl, make_tiny_sdxl_controlnet

CUBE = Path(__file__).resolve().parents[1] / "examples" / "cube.obj"
PROMPTS = ["a red sphere", "", "blue"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("sdxl")
    sdxl = make_tiny_sdxl(root / "tiny-sdxl")
    return sdxl, {"depth": make_tiny_sdxl_controlnet(root / "cn-depth-sdxl", sdxl, seed=1)}


@pytest.fixture(scope="module")
def prior(tiny_sdxl) -> SdxlPrior:
    sdxl, controlnets = tiny_sdxl
    return SdxlPrior.from_folder(sdxl, "tiny-sdxl", CPU, torch.float32, controlnets)


def edited_copy(folder: Path, destination: Path, relative: str, **changes) -> Path:
    """A copy of a model folder with some keys of one of its JSON files changed."""
    shutil.copytree(folder, destination)
    path = destination / relative
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return destination


@pytest.mark.parametrize("pooled_dim", [24, 32, 40])  # narrower than a row, one row, more than one
def test_pooled_embedding_packs_into_whole_rows_and_back(pooled_dim):
    hidden, pooled = torch.randn(3, 5, 32), torch.randn(3, pooled_dim)
    packed = pack_embeddings(hidden, pooled)
    assert packed.shape == (3, 5 + -(-pooled_dim // 32), 32)
    unpacked_hidden, unpacked_pooled = unpack_embeddings(packed, pooled_dim)
    assert torch.equal(unpacked_hidden, hidden) and torch.equal(unpacked_pooled, pooled)
    # What the engine does to embeddings (repeat per sample, pick prompts) commutes with the packing.
    repeated_hidden, repeated_pooled = unpack_embeddings(packed[[0, 2]].repeat_interleave(2, dim=0), pooled_dim)
    assert torch.equal(repeated_pooled, pooled[[0, 0, 2, 2]]) and torch.equal(repeated_hidden, hidden[[0, 0, 2, 2]])


def encoder_outputs(prior: SdxlPrior, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both encoders' penultimate hidden states side by side, and the second's pooled embedding."""
    states = []
    for tokenizer, encoder in ((prior.tokenizer, prior.text_encoder), (prior.tokenizer_2, prior.text_encoder_2)):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        output = encoder(ids, output_hidden_states=True)
        states.append(output.hidden_states[-2])
    return torch.cat(states, dim=-1), output.text_embeds


def test_prompts_encode_both_text_encoders_and_zeros_for_the_empty_prompt(tiny_sdxl, prior, tmp_path):
    hidden, pooled = unpack_embeddings(prior.encode_prompts(PROMPTS), TINY_SDXL_POOLED)
    with torch.no_grad():
        expected_hidden, expected_pooled = encoder_outputs(prior, PROMPTS)
    assert hidden.shape == (3, 8, 32) and pooled.shape == (3, TINY_SDXL_POOLED)
    for index in (0, 2):
        torch.testing.assert_close(hidden[index], expected_hidden[index], rtol=0, atol=1e-6)
        torch.testing.assert_close(pooled[index], expected_pooled[index], rtol=0, atol=1e-6)
    # force_zeros_for_empty_prompt (SDXL base's model_index.json): "" is zeros, not the encoding of "".
    assert not hidden[1].any() and not pooled[1].any() and expected_pooled[1].abs().sum() > 0

    sdxl, _ = tiny_sdxl
    encoded = edited_copy(sdxl, tmp_path / "encoded-empty", "model_index.json", force_zeros_for_empty_prompt=False)
    other = SdxlPrior.from_folder(encoded, "tiny-sdxl", CPU, torch.float32, {})
    hidden, pooled = unpack_embeddings(other.encode_prompts(PROMPTS), TINY_SDXL_POOLED)
    torch.testing.assert_close(pooled[1], expected_pooled[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(hidden[1], expected_hidden[1], rtol=0, atol=1e-6)


def test_unet_and_controlnet_get_the_pooled_embeddings_and_time_ids(prior):
    embeddings = prior.encode_prompts(PROMPTS).repeat_interleave(2, dim=0)  # 3 prompts x batch 2
    hidden, pooled = unpack_embeddings(embeddings, TINY_SDXL_POOLED)
    noisy, timesteps = torch.randn(6, 4, 8, 8), torch.full((6,), 300)
    control = ControlImages({"depth": torch.rand(2, 3, 64, 64)}, 0.5)
    calls = {}

    def recording(name, forward):
        def record(*args, **kwargs):
            calls[name] = kwargs
            return forward(*args, **kwargs)
        return record
    with replaced_methods([(prior.unet, "forward", recording("unet", prior.unet.forward)),
                           (prior.controlnets["depth"], "forward",
                            recording("controlnet", prior.controlnets["depth"].forward))]):
        eps = prior.predict_noise(noisy, timesteps, embeddings, control)
    # The render (64 px: 8 x 8 latents) is the original and the target size, uncropped.
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).expand(6, 6)
    for name in ("unet", "controlnet"):
        torch.testing.assert_close(calls[name]["added_cond_kwargs"]["text_embeds"], pooled, rtol=0, atol=0)
        torch.testing.assert_close(calls[name]["added_cond_kwargs"]["time_ids"], time_ids, rtol=0, atol=0)
        torch.testing.assert_close(calls[name]["encoder_hidden_states"], hidden, rtol=0, atol=0)
    # An epsilon model's prediction is the UNet's output as it is.
    added = calls["unet"]["added_cond_kwargs"]
    with torch.no_grad():
        down, mid = prior.controlnets["depth"](noisy, timesteps, encoder_hidden_states=hidden,
                                               controlnet_cond=control.images["depth"].repeat(3, 1, 1, 1),
                                               conditioning_scale=0.5, added_cond_kwargs=added, return_dict=False)
        expected = prior.unet(noisy, timesteps, encoder_hidden_states=hidden, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid, added_cond_kwargs=added, return_dict=False)[0]
    torch.testing.assert_close(eps, expected, rtol=0, atol=0)
    # Other sizes: the image size the latents decode to; made once per size (a CUDA graph replays it).
    assert prior.time_ids((16, 12)).tolist() == [[128.0, 96.0, 0.0, 0.0, 128.0, 96.0]]
    assert prior.time_ids((8, 8)) is prior.time_ids((8, 8))


def test_v_prediction_sdxl_predicts_noise_and_sample_prediction_is_refused(tiny_sdxl, prior, tmp_path):
    sdxl, _ = tiny_sdxl
    v_folder = edited_copy(sdxl, tmp_path / "v", "scheduler/scheduler_config.json", prediction_type="v_prediction")
    v_prior = SdxlPrior.from_folder(v_folder, "tiny-sdxl-v", CPU, torch.float32, {})
    embeddings = v_prior.encode_prompts(PROMPTS)
    noisy, timesteps = torch.randn(3, 4, 8, 8), torch.tensor([100, 500, 900])
    with torch.no_grad():
        hidden, pooled = unpack_embeddings(embeddings, TINY_SDXL_POOLED)
        added = {"text_embeds": pooled, "time_ids": v_prior.time_ids((8, 8)).expand(3, 6)}
        v = v_prior.unet(noisy, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False)[0]
    abar = v_prior.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    torch.testing.assert_close(v_prior.predict_noise(noisy, timesteps, embeddings),
                               abar.sqrt() * v + (1 - abar).sqrt() * noisy)
    sample_folder = edited_copy(sdxl, tmp_path / "sample", "scheduler/scheduler_config.json", prediction_type="sample")
    with pytest.raises(ModelNotFoundError, match="sample"):
        SdxlPrior.from_folder(sample_folder, "tiny-sdxl-sample", CPU, torch.float32, {})


def save_fp16_fix_vae(cache: Path) -> Path:
    """A stand-in for madebyollin/sdxl-vae-fp16-fix in a Hugging Face cache (force_upcast off)."""
    from diffusers import AutoencoderKL

    snapshot = cache / f"models--{FP16_FIX_VAE.replace('/', '--')}" / "snapshots" / "0123abc"
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4, block_out_channels=(4,) * 4,
                  layers_per_block=1, scaling_factor=0.13025, force_upcast=False,
                  down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4).save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    return snapshot


def test_vae_is_safe_in_half_precision(tiny_sdxl, tmp_path, monkeypatch):
    import huggingface_hub

    sdxl, _ = tiny_sdxl
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    vae, warning = load_vae(sdxl, torch.float32)
    assert vae.dtype == torch.float32 and warning is None
    # SDXL's VAE (force_upcast) without the fp16-fixed one on the machine: float32, and the job says so.
    vae, warning = load_vae(sdxl, torch.float16)
    assert vae.dtype == torch.float32 and vae.config.force_upcast and FP16_FIX_VAE in warning
    # The fixed VAE in the default cache, or in the cache the model itself is in, is used in float16.
    default_cache = tmp_path / "default-cache"
    save_fp16_fix_vae(default_cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(default_cache))
    vae, warning = load_vae(sdxl, torch.float16)
    assert vae.dtype == torch.float16 and not vae.config.force_upcast and warning is None
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    model_cache = tmp_path / "model-cache"
    snapshot = model_cache / "models--stabilityai--stable-diffusion-xl-base-1.0" / "snapshots" / "4567def"
    shutil.copytree(sdxl, snapshot)
    save_fp16_fix_vae(model_cache)
    vae, warning = load_vae(snapshot, torch.float16)
    assert vae.dtype == torch.float16 and not vae.config.force_upcast and warning is None


def test_half_precision_prior_encodes_renders_with_a_float32_vae(tiny_sdxl, prior, tmp_path, monkeypatch):
    import huggingface_hub

    sdxl, _ = tiny_sdxl
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    half = SdxlPrior.from_folder(sdxl, "tiny-sdxl", CPU, torch.float16, {})
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32 and len(half.warnings) == 1
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(half.images_to_model_input(images), prior.images_to_model_input(images),
                                   rtol=0, atol=0)


def test_render_size_defaults_to_the_models_own():
    def config(model: str, render_size: int | None = None) -> TextureJobConfig:
        settings = TextureJobConfig(prompt="a chair", mesh=str(CUBE), out="unused", render_size=render_size,
                                    prior=PriorConfig(model=model))
        settings.validate()
        return settings

    assert config("bundled").render_size == 64
    assert config("some/model").render_size is None  # known once the model is loaded
    assert config("stabilityai/stable-diffusion-xl-base-1.0").resolve_render_size(1024, pixel_space=False) == 1024
    assert config("stable-diffusion-v1-5/stable-diffusion-v1-5").resolve_render_size(512, pixel_space=False) == 512
    assert config("DeepFloyd/IF-I-XL-v1.0").resolve_render_size(64, pixel_space=True) == PIXEL_MODEL_RENDER_SIZE
    assert config("stabilityai/stable-diffusion-xl-base-1.0", 256).resolve_render_size(1024, False) == 256


def test_static_step_equals_eager_step_sdxl_with_controlnet(tiny_sdxl):
    sdxl, controlnets = tiny_sdxl
    config = job_config(sdxl, controlnets, render_size=64)
    eager = run_steps(Job(config, CPU), EagerTextureStep)
    static = run_steps(Job(config, CPU), StaticTextureStep)
    assert all(torch.isfinite(torch.tensor(eager[0])))
    assert_same_steps(static, eager)
    assert any(not torch.equal(a, b) for a, b in zip(eager[1][0], eager[1][-1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("half_precision", [False, True])
def test_graphed_step_matches_eager_on_cuda_sdxl(tiny_sdxl, half_precision, tmp_path, monkeypatch):
    """tests/test_texture_step.py's CUDA-graph checks on SDXL with its ControlNet; in half precision
    with SDXL's VAE in float32 (no fp16-fixed VAE in the empty cache)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    test_texture_step.test_graphed_step_matches_eager_on_cuda(tiny_sdxl, half_precision, monkeypatch)


def test_texture_job_runs_offline_through_the_cli_at_the_models_render_size(tiny_sdxl, tmp_path, capsys):
    sdxl, _ = tiny_sdxl
    out = tmp_path / "out"
    code = main(["texture", str(CUBE), "--prompt", "a red cube", "--model", str(sdxl), "--controlnet", "none",
                 "--steps", "3", "--texture-size", "32", "--preview-every", "0", "--device", "cpu", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "ok" and (out / result["outputs"]["texture"]).is_file()
    state = torch.load(out / "state.pt", weights_only=False)
    assert state["settings"]["render_size"] == 64  # the tiny SDXL's own resolution: 8 x 8 latents
