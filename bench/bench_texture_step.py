"""GPU benchmark of the texture job's step (issue 2, "Speed and memory"; issue 17, SDXL), in the
engine's own code.

Full-size architectures with random weights (speed does not depend on the weights' values;
ControlNet's zero convolutions get small random values so nothing is timed on zeros), fp16:
  --model sd15 (default)  SD-1.5 UNet, the SD VAE and two ControlNets (depth, canny) made with
                          ControlNetModel.from_unet, in the engine's LatentPrior; random (3, 77, 768)
                          text embeddings for [prompt, "", negative]; views at 512 x 512.
  --model sdxl            SDXL base's UNet, its VAE in fp16 (the architecture of the fp16-fixed VAE;
                          --vae-float32: SDXL's own VAE upcast, as the engine runs it without that one)
                          and one depth ControlNet (diffusers/controlnet-depth-sdxl-1.0 is the UNet's
                          encoder copied, as from_unet makes it), in the engine's SdxlPrior; random
                          (3, 77, 2048) hidden states and (3, 1280) pooled embeddings; views at its
                          native 1024 x 1024. The configs are bench/model_configs.py's.
Mesh: a trimesh icosphere (subdivisions 5, 20,480 triangles) in the unit box; a pool of 96
random views; the default 16-level hash-grid texture field.

  (a) the naive eager step (EagerTextureStep: what the job ran before), the ratio's denominator;
  (b) the fast step (GraphedTextureStep: one CUDA graph per step) and its variants
      (each switching one option off, or cuDNN autotuning on);
  pieces of the step, each alone in eager mode and captured in a graph, to see where time goes;
  (c) a whole 2000-step texture job at 512 with a 2048 x 2048 bake, run as the add-on runs it
      (`python -m engine run JOB_DIR`, a fresh process) from a model folder saved beforehand:
      the time includes Python start-up, model loading, view rasterisation, graph capture,
      previews, the bake and the export.

Step times are medians over the timed steps after warm-up, by CUDA events around the whole
step call (host work included: the GPU waits for it), plus the wall clock per step with the
loss read back (as the job's loop does). Peak memory is torch.cuda.max_memory_allocated from
building the step (capture included) to the end of its timed steps, models and views included.

    python bench/bench_texture_step.py                  # on a CUDA GPU (about 5 minutes)
    python bench/bench_texture_step.py --model sdxl     # SDXL at 1024; no whole job unless --job-steps
    python bench/bench_texture_step.py --smoke [--model sdxl]  # tiny sizes on the CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from engine.config import TextureJobConfig  # noqa: E402
from engine.field import hashgrid_triton  # noqa: E402
from engine.field.texture_field import TextureField  # noqa: E402
from engine.pipelines.texture_step import (EagerTextureStep, FastStepOptions,  # noqa: E402
                                           GraphedTextureStep, StaticTextureStep)
from engine.prior.fast.controlnets import concurrent_controlnets, prior_modules, shared_controlnet_condition  # noqa: E402
from engine.prior.fast.group_norm_triton import triton_group_norms  # noqa: E402
from engine.pipelines.views import ViewPool  # noqa: E402
from engine.prior.base import ControlImages  # noqa: E402
from engine.prior.latent import LatentPrior  # noqa: E402
from engine.prior.sdxl import FP16_FIX_VAE, SdxlPrior, pack_embeddings  # noqa: E402
from engine.render.cameras import sample_cameras  # noqa: E402
from model_configs import CLIP_L_TEXT, OPENCLIP_BIGG_TEXT, SD15_UNET, SD_VAE, SDXL_UNET, SDXL_VAE  # noqa: E402

TOKENS = 77

# Fast-step variants: "default" is what the job runs; each other one changes one thing.
VARIANTS = {
    "default": {},
    "pytorch-grid": {"triton": False},  # the hash grid's pure-PyTorch path
    "no-shuffle": {"shuffle_points": False},  # points in pixel order
    "no-overlap": {"overlap_controlnets": False},  # ControlNets one after the other
    "no-shared-condition": {"share_condition": False},  # condition embedded for every prompt
    "no-triton-group-norm": {"triton_group_norm": False},  # PyTorch's GroupNorm
    "no-math-vae-attention": {"vae_math_attention": False},  # SDPA's own kernel choice in the VAE
    "none": {"triton": False, "shuffle_points": False, "overlap_controlnets": False, "share_condition": False,
             "triton_group_norm": False, "vae_math_attention": False, "channels_last": False,
             "fused_elementwise": False},  # the graph alone
    "float-atomics": {"float_atomics": True},  # hash-grid backward by float32 atomics (not deterministic)
    "cudnn-benchmark": {"cudnn_benchmark": True},
    "no-channels-last": {"channels_last": False},  # the networks NCHW (cuDNN converts around each conv)
    "no-fused-elementwise": {"fused_elementwise": False},  # PyTorch's bias adds and GEGLU
}
DEFAULT_VARIANTS = ("default,none,pytorch-grid,no-shuffle,no-overlap,no-shared-condition,no-triton-group-norm,"
                    "no-math-vae-attention")
OPTION_NAMES = ("share_condition", "overlap_controlnets", "triton_group_norm", "vae_math_attention",
                "shuffle_points", "channels_last", "fused_elementwise")

# --smoke: the same code paths with toy widths, on the CPU.
SMOKE_UNET = dict(SD15_UNET, sample_size=8, layers_per_block=1, block_out_channels=(32, 32, 64, 64),
                  attention_head_dim=2, cross_attention_dim=32, norm_num_groups=8)
SMOKE_VAE = dict(SD_VAE, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, sample_size=64)
SMOKE_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=77)
# SDXL's toy UNet: text hidden states 16 + 16 wide, pooled embedding 16, time ids embedded in 8 each.
SMOKE_SDXL_TEXT = dict(SMOKE_TEXT, hidden_size=16, intermediate_size=32)
SMOKE_SDXL_POOLED = 16


@dataclass(frozen=True)
class BenchModel:
    """The architecture one run builds: configs of the UNet, the VAE and the text encoders (for the
    whole job's model folder; SDXL's second one has a projection), the ControlNets, the render size."""

    name: str
    unet: dict
    vae: dict
    text_encoders: tuple[dict, ...]
    controlnets: tuple[str, ...]
    render_size: int

    @property
    def sdxl(self) -> bool:
        return self.unet.get("addition_embed_type") == "text_time"

    @property
    def text_width(self) -> int:
        return int(self.unet["cross_attention_dim"])


def bench_model(name: str, smoke: bool, vae_float32: bool) -> BenchModel:
    if name == "sd15":
        return (BenchModel(name, SMOKE_UNET, SMOKE_VAE, (SMOKE_TEXT,), ("depth", "canny"), 64) if smoke else
                BenchModel(name, SD15_UNET, SD_VAE, (CLIP_L_TEXT,), ("depth", "canny"), 512))
    # In float16 the VAE is the fp16-fixed one: SDXL's architecture without force_upcast.
    vae = dict(SDXL_VAE, force_upcast=vae_float32)
    if not smoke:
        return BenchModel(name, SDXL_UNET, vae, (CLIP_L_TEXT, OPENCLIP_BIGG_TEXT), ("depth",), 1024)
    unet = dict(SDXL_UNET, sample_size=8, layers_per_block=1, block_out_channels=(32, 32, 64),
                attention_head_dim=(2, 2, 4), transformer_layers_per_block=(1, 1, 2), cross_attention_dim=32,
                addition_time_embed_dim=8, projection_class_embeddings_input_dim=SMOKE_SDXL_POOLED + 6 * 8,
                norm_num_groups=8)
    return BenchModel(name, unet, dict(SMOKE_VAE, scaling_factor=vae["scaling_factor"], force_upcast=vae_float32),
                      (SMOKE_SDXL_TEXT, dict(SMOKE_SDXL_TEXT, projection_dim=SMOKE_SDXL_POOLED)), ("depth",), 64)


def sd_alphas_cumprod() -> torch.Tensor:
    """SD-1.5's scheduler: scaled_linear betas from 0.00085 to 0.012 over 1000 steps."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def randomise_zeros(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Zero-initialised weights (ControlNet's zero convolutions) get small random values."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dim() > 1 and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 1e-3)


def build_models(device: torch.device, dtype: torch.dtype, model: BenchModel, smoke: bool):
    import diffusers
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    diffusers.utils.logging.set_verbosity_error()

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    with torch.device(device):  # initialise on the GPU: full-size CPU initialisation takes minutes
        unet = UNet2DConditionModel(**model.unet)
        vae = AutoencoderKL(**model.vae)
        extra = dict(conditioning_embedding_out_channels=(4, 8, 8, 8)) if smoke else {}
        controlnets = {name: ControlNetModel.from_unet(unet, **extra) for name in model.controlnets}
    for module in (unet, vae, *controlnets.values()):
        randomise_zeros(module, generator)
    # SDXL's own VAE overflows in float16 (force_upcast): the engine runs it in float32.
    unet, vae = unet.to(dtype), vae.to(torch.float32 if model.vae.get("force_upcast") else dtype)
    controlnets = {name: net.to(dtype) for name, net in controlnets.items()}
    return unet, vae, controlnets


def make_prior(model: BenchModel, unet, vae, controlnets, device, dtype) -> LatentPrior:
    # The text encoders are not needed: embeddings are given (the job frees them after encoding, too).
    if model.sdxl:
        return SdxlPrior(unet, vae, (torch.nn.Identity(), torch.nn.Identity()), (None, None), sd_alphas_cumprod(),
                         controlnets, "bench", device, dtype)
    return LatentPrior(unet, vae, torch.nn.Identity(), None, sd_alphas_cumprod(), controlnets, "bench",
                       device, dtype)


def random_embeddings(prior: LatentPrior, model: BenchModel, device, dtype) -> torch.Tensor:
    """Random text embeddings for [prompt, "", negative], in the prior's layout (SDXL's: pooled rows packed)."""
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, TOKENS, model.text_width, generator=generator)
    if model.sdxl:
        hidden = pack_embeddings(hidden, torch.randn(3, prior.pooled_dim, generator=generator))
    return hidden.to(device, dtype)


def icosphere_unit(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.5)
    return np.asarray(sphere.vertices, dtype=np.float32), np.asarray(sphere.faces, dtype=np.int64)


class Timer:
    """Per-call times: CUDA events around the call on GPUs (host work included), wall clock always."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.event_ms: list[float] = []
        self.wall_ms: list[float] = []

    def run(self, fn, count: int, warmup: int, read_back=lambda result: None) -> None:
        for index in range(warmup + count):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                start.record()
            begin = time.perf_counter()
            result = fn(index)
            if self.cuda:
                end.record()
            read_back(result)
            if self.cuda:
                torch.cuda.synchronize()
            wall = (time.perf_counter() - begin) * 1e3
            if index >= warmup:
                self.wall_ms.append(wall)
                self.event_ms.append(start.elapsed_time(end) if self.cuda else wall)

    @property
    def median(self) -> float:
        return statistics.median(self.event_ms)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall_ms)


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else float("nan")


def reset_peak() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def set_channels_last(prior: LatentPrior, enabled: bool) -> None:
    fmt = torch.channels_last if enabled else torch.contiguous_format
    for module in (prior.unet, prior.vae, *prior.controlnets.values()):
        module.to(memory_format=fmt)


def time_step(name: str, make_step, steps: int, warmup: int, device: torch.device, rows: list[dict]) -> dict:
    reset_peak()
    begin = time.perf_counter()
    step = make_step()
    build_s = time.perf_counter() - begin
    timer = Timer(device)
    losses = []
    timer.run(step, steps, warmup, read_back=lambda loss: losses.append(float(loss)))
    row = dict(name=name, median_ms=timer.median, median_wall_ms=timer.median_wall,
               p10_ms=float(np.percentile(timer.event_ms, 10)), p90_ms=float(np.percentile(timer.event_ms, 90)),
               peak_gib=peak_gib(), build_s=build_s, steps=steps, finite=bool(np.isfinite(losses).all()))
    rows.append(row)
    print(f"  {name}: median {row['median_ms']:.2f} ms (wall {row['median_wall_ms']:.2f} ms, "
          f"p10 {row['p10_ms']:.2f}, p90 {row['p90_ms']:.2f}), peak {row['peak_gib']:.2f} GiB, "
          f"built in {build_s:.1f} s", flush=True)
    del step
    return row


def time_graphed_piece(fn, iters: int = 20) -> float:
    """Median ms of `fn` captured alone in a CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(iters + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    del graph
    return statistics.median(times[3:])


def time_eager_piece(fn, iters: int = 20) -> float:
    timer = Timer(torch.device("cuda"))
    timer.run(lambda _: fn(), iters, 3)
    return timer.median


def breakdown(static: StaticTextureStep, prior: LatentPrior, embeddings: torch.Tensor) -> list[dict]:
    """Each piece of the step alone, eager and graphed (no_grad where the step has no gradient)."""
    static.load_inputs(0, torch.Generator().manual_seed(1))
    field, points = static.field, static.points
    size = static.height
    image = torch.rand(1, 3, size, size, device=points.device, requires_grad=True)
    latents = torch.randn(3, 4, size // 8, size // 8, device=points.device)
    timesteps = torch.full((3,), 300, device=points.device, dtype=torch.long)
    batch_embeddings = embeddings.repeat_interleave(1, dim=0)
    control = ControlImages(static.control, static.control_scale)
    nets = f"{len(prior.controlnets)} ControlNet{'s' if len(prior.controlnets) > 1 else ''}"
    upstream = torch.randn(static.n_max, 3, device=points.device)

    def field_fwd_bwd():
        field.zero_grad(set_to_none=False)
        field(points).backward(upstream)

    def vae_fwd_bwd():
        image.grad = None
        prior.images_to_model_input(image).float().square().sum().backward()

    def vae_channels_last():
        image.grad = None
        images = image.contiguous(memory_format=torch.channels_last)
        prior.images_to_model_input(images).float().square().sum().backward()

    def unet_only():
        with torch.no_grad():
            prior.predict_noise(latents, timesteps, batch_embeddings)

    def unet_controlnets():
        with torch.no_grad():
            prior.predict_noise(latents, timesteps, batch_embeddings, control)

    def field_fwd_bwd_pytorch():
        field.encoding.use_triton = False
        field_fwd_bwd()
        field.encoding.use_triton = True

    def unet_controlnets_shared():
        with torch.no_grad(), shared_controlnet_condition(prior):
            prior.predict_noise(latents, timesteps, batch_embeddings, control)

    def unet_controlnets_fast():
        with torch.no_grad(), shared_controlnet_condition(prior), triton_group_norms(*prior_modules(prior)), \
                concurrent_controlnets(prior, static.streams):
            prior.predict_noise(latents, timesteps, batch_embeddings, control)

    def vae_fast():
        image.grad = None
        with triton_group_norms(prior.vae):
            with sdpa_kernel(SDPBackend.MATH):
                x = prior.images_to_model_input(image)
            x.float().square().sum().backward()

    pieces = [(f"hash-grid field fwd+bwd, {static.n_max} points, PyTorch", field_fwd_bwd_pytorch),
              (f"hash-grid field fwd+bwd, {static.n_max} points, Triton", field_fwd_bwd),
              (f"VAE encoder fwd+bwd, {size}x{size}", vae_fwd_bwd),
              ("VAE encoder fwd+bwd, channels_last + cudnn.benchmark", vae_channels_last),
              ("VAE encoder fwd+bwd, Triton GroupNorm + math attention", vae_fast),
              ("UNet, batch 3, no_grad", unet_only),
              (f"UNet + {nets}, batch 3, no_grad", unet_controlnets),
              (f"UNet + {nets}, condition embedded once", unet_controlnets_shared),
              (f"UNet + {nets}, all of the step's options", unet_controlnets_fast)]
    rows = []
    for name, fn in pieces:
        channels_last = "channels_last" in name
        torch.backends.cudnn.benchmark = channels_last
        prior.vae.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        eager_ms = time_eager_piece(fn)
        try:
            graphed_ms = time_graphed_piece(fn)
        except RuntimeError as exc:
            print(f"  {name}: capture FAILED: {str(exc)[:500]}", flush=True)
            graphed_ms = float("nan")
        rows.append(dict(piece=name, eager_ms=eager_ms, graphed_ms=graphed_ms))
        print(f"  {name}: eager {eager_ms:.2f} ms, graphed {graphed_ms:.2f} ms", flush=True)
    torch.backends.cudnn.benchmark = False
    prior.vae.to(memory_format=torch.contiguous_format)
    field.zero_grad(set_to_none=True)
    return rows


def graphed_runs_equal(prior, views, cameras, embeddings, config, device) -> bool:
    results = []
    for _ in range(2):
        field = TextureField(config.hash_grid, seed=0).to(device)
        step = GraphedTextureStep(field, prior, views, cameras, embeddings, config, torch.Generator().manual_seed(0),
                                  device)
        losses = [float(step(index)) for index in range(5)]
        results.append((losses, [p.detach().clone() for p in field.parameters()]))
        del step
    (losses_a, params_a), (losses_b, params_b) = results
    return losses_a == losses_b and all(torch.equal(a, b) for a, b in zip(params_a, params_b))


def profile_kernels(name: str, fn, top: int = 22) -> None:
    """fn's CUDA kernels by total time over 3 calls (a graph replays the same kernels), then the
    PyTorch operators (with their input shapes) that launched them."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    print(f"--- profile: {name} (3 calls), kernels")
    kernels = [event for event in prof.key_averages() if event.device_type == torch.autograd.DeviceType.CUDA]
    kernels.sort(key=lambda event: event.device_time_total, reverse=True)
    for event in kernels[:top]:
        print(f"{event.device_time_total / 1000:9.3f} ms {event.count:6d} calls  {event.key[:110]}")
    print(f"--- profile: {name} (3 calls), operators by their own CUDA time")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cuda_time_total", row_limit=top,
                                                            max_name_column_width=40, max_shapes_column_width=70))


def profile_step(static: StaticTextureStep) -> None:
    static.load_inputs(0, torch.Generator().manual_seed(1))
    profile_kernels("whole static step, default options", static.forward_backward_update, top=30)


def save_model_folder(root: Path, model: BenchModel, unet, vae, controlnets) -> tuple[Path, dict[str, Path]]:
    """A diffusers Stable Diffusion (or SDXL) folder and ControlNet folders of the benchmark's random
    models. SDXL's fp16 VAE goes into a Hugging Face cache under `root` as the fp16-fixed VAE, and its
    folder gets SDXL's own VAE config (force_upcast), so the job finds the fixed one as a user's would."""
    from diffusers import DDPMScheduler, EulerDiscreteScheduler
    from tiny_models import save_word_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = root / f"{model.name}-random"
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    if model.sdxl and not vae.config.force_upcast:
        snapshot = root / "hf-cache" / f"models--{FP16_FIX_VAE.replace('/', '--')}" / "snapshots" / "bench"
        vae.save_pretrained(snapshot)
        (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
        (snapshot.parents[1] / "refs" / "main").write_text("bench")
        config_path = folder / "vae" / "config.json"
        config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), force_upcast=True)))
    components = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    for index, text_config in enumerate(model.text_encoders):
        suffix = f"_{index + 1}" if index else ""
        encoder_class = CLIPTextModelWithProjection if "projection_dim" in text_config else CLIPTextModel
        with torch.device(unet.device):  # full-size CPU initialisation is slow
            encoder = encoder_class(CLIPTextConfig(vocab_size=16, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                                                   **text_config))
        encoder.to(unet.dtype).save_pretrained(folder / f"text_encoder{suffix}")
        save_word_tokenizer(folder / f"tokenizer{suffix}", max_length=TOKENS)
        components[f"text_encoder{suffix}"] = ["transformers", encoder_class.__name__]
        components[f"tokenizer{suffix}"] = ["transformers", "PreTrainedTokenizerFast"]
    scheduler_class = EulerDiscreteScheduler if model.sdxl else DDPMScheduler
    scheduler_class(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                    beta_schedule="scaled_linear").save_pretrained(folder / "scheduler")
    components["scheduler"] = ["diffusers", scheduler_class.__name__]
    pipeline = "StableDiffusionXLPipeline" if model.sdxl else "StableDiffusionPipeline"
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline, "_diffusers_version": "0.42.1",
                                                         **components}))
    folders = {}
    for name, net in controlnets.items():
        folders[name] = root / f"controlnet-{name}"
        net.save_pretrained(folders[name])
    return folder, folders


def run_job(root: Path, model: Path, controlnets: dict[str, Path], steps: int, render_size: int,
            texture_size: int, device: str, mesh_subdivisions: int, timeout_s: float) -> dict:
    """A texture job as the add-on runs it: job.json, then `python -m engine run JOB_DIR`."""
    import trimesh

    job = root / "job"
    job.mkdir(parents=True, exist_ok=True)
    vertices, faces = icosphere_unit(mesh_subdivisions)
    trimesh.Trimesh(vertices, faces, process=False).export(job / "mesh.obj")  # no UVs: xatlas unwraps it
    settings = {"prompt": "a wooden chair with carved legs", "steps": steps, "render_size": render_size,
                "texture_size": texture_size, "device": device,
                "prior": {"model": str(model), "controlnets": sorted(controlnets),
                          "controlnet_models": {name: str(path) for name, path in controlnets.items()}}}
    (job / "job.json").write_text(json.dumps({"protocol": 1, "task": "texture", "mesh": "mesh.obj",
                                              "output": "out", "settings": settings}))
    # A fresh Triton cache: the job pays its kernels' compilation, as on a fresh install. The Hugging
    # Face cache is save_model_folder's (SDXL's fp16-fixed VAE, if any), not this machine's.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRITON_CACHE_DIR=str(job / "triton-cache"),
               HF_HUB_CACHE=str(model.parent / "hf-cache"),
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    begin = time.perf_counter()
    try:
        process = subprocess.run([sys.executable, "-m", "engine", "run", str(job)], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        return dict(exit_code=None, wall_s=time.perf_counter() - begin, status=f"killed after {timeout_s} s",
                    timings={}, warnings=[], stdout_tail=str(exc.stdout)[-2000:])
    wall_s = time.perf_counter() - begin
    result_path = job / "out" / "result.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if process.returncode != 0:
        print(process.stdout[-3000:], process.stderr[-3000:], sep="\n")
    events = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    warnings = [event.get("message") for event in events if event.get("event") == "warning"]
    # When each stage began (seconds since the engine's start): where the setup time goes.
    stages = {event["name"]: event["time"] for event in events if event.get("event") == "stage"}
    return dict(exit_code=process.returncode, wall_s=wall_s, status=result.get("status"),
                timings=result.get("timings", {}), warnings=warnings, stage_start_s=stages,
                texture=str(job / "out" / "texture.png"))


def markdown(rows: list[dict], pieces: list[dict], job: dict | None, eager_ms: float, device_name: str, setup: str,
             smoke: bool) -> str:
    lines = [f"Device: {device_name}; {setup}{' (smoke run: tiny models, not a measurement)' if smoke else ''}", "",
             "| step | median (CUDA events) | wall per step | p10-p90 | speed-up vs eager | peak memory | build |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['median_ms']:.1f} ms | {row['median_wall_ms']:.1f} ms | "
                     f"{row['p10_ms']:.1f}-{row['p90_ms']:.1f} ms | {eager_ms / row['median_ms']:.2f}x | "
                     f"{row['peak_gib']:.2f} GiB | {row['build_s']:.1f} s |")
    if pieces:
        lines += ["", "| piece of the step | eager | in a CUDA graph |", "|---|---|---|"]
        lines += [f"| {p['piece']} | {p['eager_ms']:.2f} ms | {p['graphed_ms']:.2f} ms |" for p in pieces]
    if job:
        t = job["timings"]
        lines += ["", "| whole job (`python -m engine run`) | seconds |", "|---|---|",
                  f"| wall clock, process start to exit (status {job['status']}, exit {job['exit_code']}) "
                  f"| {job['wall_s']:.1f} |"]
        lines += [f"| {key} | {value:.1f} |" for key, value in t.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script runs")
    parser.add_argument("--model", choices=("sd15", "sdxl"), default="sd15",
                        help="sd15: SD 1.5 + depth and canny ControlNets at 512; sdxl: SDXL base + depth at 1024")
    parser.add_argument("--vae-float32", action="store_true",
                        help="sdxl: SDXL's own VAE in float32 (the engine's fallback without the fp16-fixed VAE)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 60; smoke 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; smoke 1)")
    parser.add_argument("--views", type=int, default=None, help="view pool size (default 96; smoke 4)")
    parser.add_argument("--variants", default=None,
                        help=f"fast-step variants, comma-separated, from: {', '.join(VARIANTS)} (default: "
                             f"{DEFAULT_VARIANTS}; with one ControlNet, as sdxl's, no no-overlap)")
    parser.add_argument("--profile", action="store_true", help="print the step's top CUDA kernels")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--job-steps", type=int, default=None,
                        help="whole-job steps (default 2000 for sd15, 0 (skipped) for sdxl; smoke 6; 0 skips)")
    parser.add_argument("--job-timeout", type=float, default=420.0, help="seconds before the job is killed")
    parser.add_argument("--out", default=None, help="folder for results.json, results.md and the job")
    args = parser.parse_args()

    smoke = args.smoke
    device = torch.device("cpu" if smoke else "cuda")
    if not smoke and not torch.cuda.is_available():
        sys.exit("No CUDA GPU: run with --smoke for a CPU check.")
    steps = args.steps or (3 if smoke else 60)
    warmup = args.warmup if args.warmup is not None else (1 if smoke else 10)
    views_count = args.views or (4 if smoke else 96)
    # SDXL's 2000-step job would outlast the job timeout; --job-steps asks for a shorter one.
    job_steps = args.job_steps if args.job_steps is not None else (6 if smoke else 0 if args.model == "sdxl" else 2000)
    model = bench_model(args.model, smoke, args.vae_float32)
    render_size = model.render_size
    variants = args.variants or ",".join(variant for variant in DEFAULT_VARIANTS.split(",")
                                         if len(model.controlnets) > 1 or variant != "no-overlap")
    texture_size, subdivisions = (128, 2) if smoke else (2048, 5)
    out = Path(args.out or (REPO / "bench" / f"out-texture-step{'-sdxl' if model.sdxl else ''}"))
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float32 if smoke else torch.float16
    device_name = "CPU" if smoke else torch.cuda.get_device_name()
    setup = (f"{model.name}, {render_size} px, ControlNets: {', '.join(model.controlnets)}, VAE in "
             f"{'float32' if model.vae.get('force_upcast') else str(dtype).removeprefix('torch.')}")
    print(f"torch {torch.__version__}, device {device_name}, {setup}", flush=True)

    begin = time.perf_counter()
    unet, vae, controlnets = build_models(device, dtype, model, smoke)
    prior = make_prior(model, unet, vae, controlnets, device, dtype)
    embeddings = random_embeddings(prior, model, device, dtype)
    config = TextureJobConfig(prompt="bench", mesh="-", out="-", steps=2000, render_size=render_size,
                              texture_size=texture_size)
    config.prior.controlnets = model.controlnets
    config.validate()
    vertices, faces = icosphere_unit(subdivisions)
    positions, triangles = torch.from_numpy(vertices).to(device), torch.from_numpy(faces).to(device)
    cameras = sample_cameras(config.cameras, views_count, torch.Generator().manual_seed(0))
    views = ViewPool(positions, triangles, cameras, render_size, with_control=True)
    models_s = time.perf_counter() - begin
    for index in range(len(views)):  # rasterise the pool once, outside every timing
        views.get(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"models built in {models_s:.1f} s, {len(views)} views rasterised in "
          f"{time.perf_counter() - begin - models_s:.1f} s", flush=True)
    field = TextureField(config.hash_grid, seed=0).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"models, views and field ready in {time.perf_counter() - begin:.1f} s "
          f"({len(faces)} triangles, {len(views)} views at {render_size})", flush=True)

    def step_args():
        return (field, prior, views, cameras, embeddings, config, torch.Generator().manual_seed(0), device)

    rows: list[dict] = []
    print("(a) naive eager step", flush=True)
    field.encoding.use_triton = False  # naive: the pure-PyTorch hash grid
    eager = time_step("eager (naive) step", lambda: EagerTextureStep(*step_args()), steps, warmup, device, rows)

    print("(b) fast step", flush=True)
    fast_class = StaticTextureStep if smoke else GraphedTextureStep
    for variant in [v for v in variants.split(",") if v]:
        if variant not in VARIANTS:
            sys.exit(f"unknown variant {variant}; use {', '.join(VARIANTS)}")
        if smoke and variant != "default":
            continue
        options = VARIANTS[variant]
        torch.backends.cudnn.benchmark = options.get("cudnn_benchmark", False)
        field.encoding.use_triton = options.get("triton", True)
        hashgrid_triton.DETERMINISTIC = not options.get("float_atomics", False)
        kwargs = {"options": FastStepOptions(**{key: options[key] for key in OPTION_NAMES if key in options})}
        label = "graphed step" if not smoke else "static-shape step (no graph on CPU)"
        try:
            time_step(f"{label}, {variant}", lambda: fast_class(*step_args(), **kwargs), steps, warmup, device, rows)
        except RuntimeError as exc:  # report and go on to the next variant
            print(f"  {label}, {variant} FAILED: {type(exc).__name__}: {str(exc)[:2000]}", flush=True)
    torch.backends.cudnn.benchmark = False
    set_channels_last(prior, False)
    field.encoding.use_triton = True
    hashgrid_triton.DETERMINISTIC = True

    if not smoke:
        print("determinism: two graphed runs of 5 steps from the same start", flush=True)
        print(f"  bitwise equal: {graphed_runs_equal(prior, views, cameras, embeddings, config, device)}", flush=True)
    if not smoke and args.profile:
        profile_step(StaticTextureStep(*step_args()))

    pieces = []
    if not smoke and not args.no_breakdown:
        print("pieces of the step", flush=True)
        static = StaticTextureStep(*step_args())
        pieces = breakdown(static, prior, embeddings)
        del static

    job = None
    save_results(out, rows, pieces, job, eager["median_ms"], device_name, setup, smoke)
    if job_steps > 0:
        print(f"(c) whole job: {job_steps} steps at {render_size}, bake {texture_size}", flush=True)
        begin = time.perf_counter()
        model_folder, controlnet_folders = save_model_folder(out / "models", model, unet, vae, controlnets)
        print(f"  model folder written in {time.perf_counter() - begin:.1f} s (not part of the job)", flush=True)
        del prior, unet, vae, controlnets, views, field
        reset_peak()
        job = run_job(out, model_folder, controlnet_folders, job_steps, render_size, texture_size, device.type,
                      subdivisions, args.job_timeout)
        print(f"  job: exit {job['exit_code']}, {job['wall_s']:.1f} s wall, timings {job['timings']}, "
              f"warnings {job['warnings']}, stages began at {job['stage_start_s']}", flush=True)

    table = save_results(out, rows, pieces, job, eager["median_ms"], device_name, setup, smoke)
    print()
    print(table)


def save_results(out: Path, rows, pieces, job, eager_ms: float, device_name: str, setup: str, smoke: bool) -> str:
    table = markdown(rows, pieces, job, eager_ms, device_name, setup, smoke)
    (out / "results.json").write_text(json.dumps({"device": device_name, "setup": setup, "torch": torch.__version__,
                                                  "steps": rows, "pieces": pieces, "job": job}, indent=2))
    (out / "results.md").write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
