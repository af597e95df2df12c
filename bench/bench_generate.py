"""GPU benchmark of the generate job's two optimisation steps, each against a naive eager version.

Full-size architectures with random weights (speed does not depend on the weights' values):
  stage 1: the NeRF (16-level hash grid, 256 samples per ray) rendered at 64 x 64, batch 1,
           with an IF-I-XL-sized pixel UNet (config values below) called on
           text / empty / negative prompts (+2 other views with Perp-Neg), T5-XXL-sized
           (4096-d) text embeddings passed in at random, backward into the NeRF;
  stage 2: the refinable mesh (~48.5k triangles) rasterised at 512, VAE encoder + SD-2.1-base
           UNet on text / empty / negative, backward into vertices and albedo field.
naive: dense sampling of every ray step (no occupancy grid), the pure-PyTorch hash grid and
rasterizer, eager UNet. ours (the job's default): occupancy-grid skipping with the
no-grad pruning pass and the occupancy update every 16 steps, the engine's fastest installed
hash grid (tiny-cuda-nn, else the Triton kernels where present, else PyTorch), nvdiffrast
where installed, and the UNet call replayed from a CUDA graph per input shape
(engine/prior/graphed.py) and run NHWC, and stage 2's VAE encoder runs NHWC with the Triton
kernels (engine/prior/vae_encoding.py); "NCHW UNet" and "plain VAE encoder" rows leave those
out, "eager UNet" rows the graphs. ours + compile (the job's --compile): the same with the UNet under
torch.compile(mode="reduce-overhead") (CUDA graphs); its compile time is reported too.
Also measured: peak memory while the prompts are encoded by a T5-XXL-sized encoder with the
IF-sized UNet resident (the job's peak before the encoder is freed), and the stage-1 step at
batch 4 (the job's batch for prompts without a clear front, where Perp-Neg is off).
Prints a table with median step times, peak memory and the projected default run
(10,000 + 5,000 steps). Each row is written to --out as soon as it is measured, so a run cut
short keeps what it measured; a row that fails is recorded with its error and the rest go on.

    python bench/bench_generate.py --out DIR              # on a CUDA GPU
    python bench/bench_generate.py --smoke                # tiny sizes on the CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import GuidanceConfig, HashGridConfig  # noqa: E402
from engine.guidance.score_distillation import score_distillation_loss  # noqa: E402
from engine.mesh.extract import mesh_from_grid  # noqa: E402
from engine.nerf.background import LearnedBackground  # noqa: E402
from engine.nerf.field import NerfField  # noqa: E402
from engine.nerf.losses import sparsity_loss  # noqa: E402
from engine.nerf.occupancy import OccupancyGrid  # noqa: E402
from engine.guidance.perp_neg import perp_neg_distillation_loss, perp_neg_embeddings  # noqa: E402
from engine.nerf.renderer import NerfModel, render_nerf, shade_albedo  # noqa: E402
from engine.refine.refinable_mesh import RefinableMesh  # noqa: E402
from engine.prior.fast.graphed import use_cuda_graphs  # noqa: E402
from engine.prior.latent import LatentPrior  # noqa: E402
from engine.prior.pixel import PixelPrior  # noqa: E402
from engine.render.cameras import orbit_cameras  # noqa: E402
from engine.render.shading import sample_lighting, shade  # noqa: E402

# DeepFloyd IF-I-XL-v1.0 unet/config.json (4.3B parameters).
IF_I_XL = dict(sample_size=64, in_channels=3, out_channels=6, layers_per_block=3,
               block_out_channels=(704, 1408, 2112, 2816),
               down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
               up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
               mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=64, cross_attention_dim=2816,
               encoder_hid_dim=4096, encoder_hid_dim_type="text_proj", addition_embed_type="text",
               addition_embed_type_num_heads=64, act_fn="gelu", resnet_time_scale_shift="scale_shift",
               resnet_skip_time_act=True, resnet_out_scale_factor=1.414, cross_attention_norm="group_norm",
               time_embedding_act_fn="gelu", norm_num_groups=32)
T5_XXL = dict(tokens=77, width=4096)
# stabilityai/stable-diffusion-2-1-base unet/config.json and its VAE.
SD21_BASE = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                 cross_attention_dim=1024, use_linear_projection=True,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
OPENCLIP_H = dict(tokens=77, width=1024)

# --smoke: the same code paths with toy widths, on the CPU.
SMOKE_IF = dict(IF_I_XL, sample_size=16, layers_per_block=1, block_out_channels=(32, 64, 96, 128),
                attention_head_dim=16, cross_attention_dim=64, encoder_hid_dim=32, addition_embed_type_num_heads=4)
SMOKE_SD = dict(SD21_BASE, sample_size=8, layers_per_block=1, block_out_channels=(32, 32, 64, 64),
                attention_head_dim=(2, 2, 4, 4), cross_attention_dim=32)
SMOKE_VAE = dict(SD_VAE, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, sample_size=64)


# google/t5-v1_1-xxl encoder (IF's text encoder, 4.8B parameters), for the prompt-encoding peak.
T5_XXL_CONFIG = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
                     feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
SMOKE_T5_CONFIG = dict(T5_XXL_CONFIG, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, vocab_size=128)
# The stage-1 batch for prompts without a clear front (NerfStageConfig.batch_size_no_front).
NO_FRONT_BATCH = 4
OCCUPANCY_UPDATE_EVERY = 16
STAGE1_STEPS, STAGE2_STEPS = 10_000, 5_000
TARGET_MIN, TARGET_GIB = 20.0, 24.0


def alphas() -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, 1000)
    return torch.cumprod(1.0 - betas, dim=0)


def parameter_count(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e9


def build_pixel_prior(config: dict, device, dtype) -> PixelPrior:
    from diffusers import UNet2DConditionModel

    with torch.device(device):  # random initialisation on the GPU: seconds, not minutes on the CPU
        unet = UNet2DConditionModel(**config)
    unet = unet.to(device, dtype)
    return PixelPrior(unet, torch.nn.Identity(), None, alphas(), "IF-I-XL-sized", device, dtype, False)


def build_latent_prior(unet_config: dict, vae_config: dict, device, dtype) -> LatentPrior:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
    unet, vae = unet.to(device, dtype), vae.to(device, dtype)
    return LatentPrior(unet, vae, torch.nn.Identity(), None, alphas(), {}, "SD-2.1-base-sized", device, dtype)


def set_triton_hash_grid(module: torch.nn.Module, enabled: bool) -> None:
    """Switch the Triton hash-grid kernels on or off where the engine has them (naive: off)."""
    for sub in module.modules():
        if hasattr(sub, "use_triton"):
            sub.use_triton = enabled


def hash_grid_backend(module: torch.nn.Module, device) -> str:
    try:
        from engine.field.hashgrid_triton import triton_available
    except ImportError:
        def triton_available() -> bool:
            return False
    for sub in module.modules():
        if type(sub).__name__ == "TcnnHashGridEncoding":
            return "tiny-cuda-nn"
    for sub in module.modules():
        if getattr(sub, "use_triton", False) and device.type == "cuda" and triton_available():
            return "Triton (no-grad points)"
    return "PyTorch"


def build_nerf(device, smoke: bool, naive: bool) -> NerfModel:
    grid = HashGridConfig(per_level_scale=1.38) if not smoke else HashGridConfig(levels=4, log2_table_size=12)
    samples = 256 if not smoke else 32
    field = NerfField(grid, 1.0, 10.0, 0.5, use_tcnn=device.type == "cuda" and not naive)
    occupancy = OccupancyGrid(64 if not smoke else 16, 1.0, 2 * 3 ** 0.5 / samples, 0.01)
    model = NerfModel(field, LearnedBackground(), occupancy, samples).to(device)
    if naive:
        set_triton_hash_grid(model, False)
    generator = torch.Generator().manual_seed(0)
    for step in range(0, 64, 16):
        occupancy.update(field.density, step, generator)
    return model


def sphere_mesh(resolution: int, triangles: int) -> tuple[np.ndarray, np.ndarray]:
    """A sphere of radius 0.48 in the unit box; resolution 180 gives ~48.5k triangles without decimation
    (decimation needs fast-simplification, which the GPU machine may not have)."""
    axis = np.linspace(-1, 1, resolution)
    grid = 10.0 + 50.0 * (0.4 - np.linalg.norm(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1), axis=-1))
    mesh, _ = mesh_from_grid(grid.astype(np.float32), 1.0, 10.0, triangles, 0.1)
    return mesh.positions * 1.2, mesh.triangles


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, iterations: int, warmup: int, device) -> dict:
    """Median ms per call (CUDA events and wall clock), peak memory (GiB) over the timed calls,
    and the seconds of the first call (torch.compile's compile time where compiled)."""
    begin = time.perf_counter()
    fn()
    synchronize(device)
    first_s = time.perf_counter() - begin
    for _ in range(max(0, warmup - 1)):
        fn()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, walls = [], []
    for _ in range(iterations):
        begin = time.perf_counter()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            fn()
        walls.append((time.perf_counter() - begin) * 1000.0)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    if not times:
        times = walls
    return dict(ms=statistics.median(times), wall_ms=statistics.median(walls), p10=min(times) if len(times) < 10
                else sorted(times)[len(times) // 10], p90=max(times) if len(times) < 10
                else sorted(times)[(9 * len(times)) // 10], peak_gib=peak, first_s=first_s, iterations=iterations)


def stage1_step(model: NerfModel, prior, embeddings: torch.Tensor, perp_neg: bool, skip_empty: bool, size: int,
                batch: int, optimizer, generator: torch.Generator, device, at_step: int = 100):
    """at_step: the schedule's step (w2 = at_step / 5000, capped at 1; at w2 = 1 CSD needs no "" prediction)."""
    guidance = GuidanceConfig(w2_start=0.0, w2_end=1.0, w2_anneal_steps=5000, t_max_before_switch=0.98,
                              t_max_switch_step=5000)
    counter = [1000]  # past the occupancy grid's warm-up, as for most of a run
    stats = {"samples": []}

    def step():
        if skip_empty and counter[0] % OCCUPANCY_UPDATE_EVERY == 0:
            model.occupancy.update(model.field.density, counter[0], generator)
        counter[0] += 1
        cameras = orbit_cameras(torch.rand(batch, generator=generator) * 40,
                                torch.rand(batch, generator=generator) * 360, 1.75, 55.0).to(device)
        render = render_nerf(model, cameras, size, generator, True, 0.01, skip_empty)
        stats["samples"].append(render.samples)
        image = shade_albedo(render, sample_lighting(cameras, generator), model.background(render.directions))
        x = prior.images_to_model_input(image.permute(0, 3, 1, 2))
        if perp_neg:
            positive, others, weights = perp_neg_embeddings(embeddings[3:7], cameras.elevation, cameras.azimuth,
                                                            3.0, 60.0)
            distill = perp_neg_distillation_loss(prior, x, positive, embeddings[1:2], embeddings[2:3], others,
                                                 weights, guidance, at_step, generator)
        else:
            distill = score_distillation_loss(prior, x, embeddings[:3], guidance, at_step, generator)
        loss = distill.loss + 10.0 * render.orientation + sparsity_loss(render.opacity)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, stats


def stage2_step(mesh: RefinableMesh, prior, embeddings: torch.Tensor, size: int, optimizer,
                generator: torch.Generator, device, backend: str, fast_vae: bool = True, antialias: bool = True):
    import engine.render.gbuffer as gbuffer

    from engine.prior.fast.channels_last import set_memory_format
    from engine.prior.fast.vae_encoding import FastVaeEncoder

    if fast_vae:
        encode = FastVaeEncoder(prior).encode
    else:
        set_memory_format([prior.vae], False)
        encode = prior.images_to_model_input

    guidance = GuidanceConfig(w2_start=1.0, w2_end=0.5, w2_anneal_steps=5000)
    original = gbuffer.rasterize

    def step():
        gbuffer.rasterize = lambda clip, tris, h, w, _backend="auto": original(clip, tris, h, w, backend)
        try:
            cameras = orbit_cameras(torch.rand(1, generator=generator) * 40, torch.rand(1, generator=generator) * 360,
                                    1.75, 55.0).to(device)
            view, albedo = mesh.render(cameras, size)
            image = shade(albedo, view.normal, view.mask, sample_lighting(cameras, generator),
                          torch.ones(1, 3, device=device))
            if antialias:
                image = mesh.antialias(image, view)
            x = encode(image.permute(0, 3, 1, 2))
            loss = (score_distillation_loss(prior, x, embeddings, guidance, 100, generator).loss
                    + 1000.0 * mesh.normal_consistency())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        finally:
            gbuffer.rasterize = original

    return step


class Recorder:
    """Rows measured so far, rewritten to OUT/results.{json,md} after every row."""

    def __init__(self, out: Path | None, header: dict, budget_s: float):
        self.out, self.header, self.rows = out, header, []
        self.began, self.budget_s = time.perf_counter(), budget_s
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    def run(self, label: str, measure, note: str = "") -> dict | None:
        if self.budget_s and self.elapsed() > self.budget_s:
            row = dict(label=label, error=f"skipped: time budget of {self.budget_s:.0f} s spent", note=note)
            print(f"[{self.elapsed():6.1f} s] {label}: {row['error']}", flush=True)
            self.rows.append(row)
            self.write()
            return None
        print(f"[{self.elapsed():6.1f} s] {label} ...", flush=True)
        try:
            result = measure()
            row = dict(label=label, note=note, **result)
            print(f"[{self.elapsed():6.1f} s] {label}: {row['ms']:.1f} ms (wall {row['wall_ms']:.1f}), "
                  f"peak {row['peak_gib']:.2f} GiB, first call {row['first_s']:.1f} s {note}", flush=True)
        except Exception as error:  # noqa: BLE001 - a failed row must not lose the others
            text = traceback.format_exc()
            print(text, flush=True)
            row = dict(label=label, note=note, error=f"{type(error).__name__}: {str(error)[:300]}")
            del error
        self.rows.append(row)
        self.write()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return row

    def get(self, label: str) -> dict | None:
        return next((r for r in self.rows if r["label"] == label and "ms" in r), None)

    def table(self) -> str:
        h = self.header
        lines = [f"{h['device']}, torch {h['torch']}, diffusers {h['diffusers']}; hash grid (ours): "
                 f"{h.get('hash_grid', '?')}; rasterizer (ours): {h.get('rasterizer', '?')}", "",
                 "| step | median ms (CUDA events) | p10-p90 ms | wall ms | peak GiB | timed steps | first call s | note |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            if "ms" in r:
                note = r.get("note", "")
                if "samples_with_autograd" in r:
                    note += f"; {r['samples_with_autograd']:,} field samples with autograd"
                lines.append(f"| {r['label']} | {r['ms']:.1f} | {r['p10']:.1f}-{r['p90']:.1f} | {r['wall_ms']:.1f} | "
                             f"{r['peak_gib']:.2f} | {r['iterations']} | {r['first_s']:.1f} | {note} |")
            else:
                lines.append(f"| {r['label']} | - | - | - | - | - | - | {r['error']} |")
        lines.append("")
        lines += self.projections()
        return "\n".join(lines)

    def projections(self) -> list[str]:
        lines = []
        variants = (("naive", "stage 1 naive", "stage 2 naive"),
                    ("ours (job default: UNet calls from CUDA graphs)", "stage 1 ours", "stage 2 ours"),
                    ("ours, NCHW UNet (the default before)", "stage 1 ours, NCHW UNet", "stage 2 ours, NCHW UNet"),
                    ("ours, eager UNet", "stage 1 ours, eager UNet", "stage 2 ours, eager UNet"),
                    ("ours + compile (--compile)", "stage 1 ours + compile", "stage 2 ours + compile"))
        for name, s1, s2 in variants:
            for perp in ("", " + Perp-Neg"):
                a, b = self.get(s1.replace("ours", "ours" + perp) if "ours" in s1 else s1 + perp), self.get(s2)
                if a is None or b is None:
                    continue
                total = (STAGE1_STEPS * a["ms"] + STAGE2_STEPS * b["ms"]) / 60_000
                peak = max(a["peak_gib"], b["peak_gib"])
                verdict = "meets" if total <= TARGET_MIN else "misses"
                lines.append(f"projected {STAGE1_STEPS:,} + {STAGE2_STEPS:,} steps, {name}{perp}: {total:.1f} min "
                             f"({verdict} the {TARGET_MIN:.0f}-min target; optimisation steps only), "
                             f"peak of the steps {peak:.2f} GiB")
        first, second = (self.get(f"stage 1 ours, batch {NO_FRONT_BATCH}"),
                         self.get(f"stage 1 ours, batch {NO_FRONT_BATCH}, second half"))
        stage2 = self.get("stage 2 ours")
        if first and second and stage2:
            total = (STAGE1_STEPS / 2 * (first["ms"] + second["ms"]) + STAGE2_STEPS * stage2["ms"]) / 60_000
            verdict = "meets" if total <= TARGET_MIN else "misses"
            lines.append(f"projected {STAGE1_STEPS:,} + {STAGE2_STEPS:,} steps, ours, no-front prompt (batch "
                         f"{NO_FRONT_BATCH}, halves as measured): {total:.1f} min ({verdict} the "
                         f"{TARGET_MIN:.0f}-min target; optimisation steps only)")
        encoding = self.get("prompt encoding: T5-XXL-sized encoder + IF-sized UNet resident")
        ours = [r["peak_gib"] for r in self.rows if "ms" in r and "ours" in r["label"]]
        if encoding is not None and ours:
            peak = max([encoding["peak_gib"]] + ours)
            verdict = "meets" if peak <= TARGET_GIB else "misses"
            lines.append(f"peak memory of the job (ours, prompt encoding included): {peak:.2f} GiB "
                         f"({verdict} the {TARGET_GIB:.0f} GiB target)")
        return lines

    def write(self) -> None:
        if self.out is None:
            return
        (self.out / "results.json").write_text(json.dumps(dict(self.header, rows=self.rows,
                                                               elapsed_s=self.elapsed()), indent=1))
        (self.out / "results.md").write_text(self.table() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU, 2 iterations")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--naive-iterations", type=int, default=5, help="timed steps of the (slow) naive rows")
    parser.add_argument("--naive-warmup", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="start no new row after this many seconds (0: no limit)")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json / results.md")
    parser.add_argument("--stages", choices=("1", "2", "both"), default="both", help="which stages' rows to run")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    iterations, warmup = (2, 1) if args.smoke else (args.iterations, args.warmup)
    naive_iterations, naive_warmup = (2, 1) if args.smoke else (args.naive_iterations, args.naive_warmup)
    compile_rows = device.type == "cuda" and not args.no_compile
    generator = torch.Generator().manual_seed(0)
    text1 = T5_XXL if not args.smoke else dict(tokens=8, width=32)
    text2 = OPENCLIP_H if not args.smoke else dict(tokens=8, width=32)
    import diffusers

    header = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke: toy sizes)",
                  torch=torch.__version__, diffusers=diffusers.__version__, command=" ".join(sys.argv))
    rec = Recorder(args.out, header, args.budget_s)
    size1 = 64 if not args.smoke else 16

    def stage1_row(prior, embeddings, perp_neg: bool, naive: bool, batch: int = 1, triton: bool = True,
                   graphs: bool = True, nhwc: bool = True, at_step: int = 100, cudnn_benchmark: bool = False):
        def measure():
            if cudnn_benchmark != torch.backends.cudnn.benchmark:
                torch.backends.cudnn.benchmark = cudnn_benchmark
                use_cuda_graphs(prior, False)  # capture again with the new convolution algorithms
            use_cuda_graphs(prior, graphs and not naive, nhwc)
            model = build_nerf(device, args.smoke, naive)
            if not triton:
                set_triton_hash_grid(model, False)
            header["hash_grid"] = header.get("hash_grid") or (None if naive else hash_grid_backend(model, device))
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-15)
            step, stats = stage1_step(model, prior, embeddings, perp_neg, not naive, size1, batch, optimizer,
                                      generator, device, at_step)
            result = timed(step, naive_iterations if naive else iterations, naive_warmup if naive else warmup, device)
            result["samples_with_autograd"] = int(statistics.median(stats["samples"]))
            return result
        return measure

    def unet_row(prior, embeddings, batch: int):
        def measure():
            use_cuda_graphs(prior, True)
            noisy = torch.randn(3 * batch, 3, size1, size1, generator=generator).to(device, dtype)
            timesteps = torch.randint(20, 980, (3 * batch,), generator=generator).to(device)
            context = embeddings[:3].repeat_interleave(batch, dim=0)

            def call():
                with torch.no_grad():
                    prior.predict_noise(noisy, timesteps, context)
            return timed(call, iterations, warmup, device)
        return measure

    if args.stages in ("1", "both"):
        # Stage 1.
        prior = build_pixel_prior(SMOKE_IF if args.smoke else IF_I_XL, device, dtype)
        header["if_unet_params_b"] = parameter_count(prior.unet)
        print(f"IF-I-XL-sized UNet: {header['if_unet_params_b']:.2f} B parameters", flush=True)
        embeddings = torch.randn(7, text1["tokens"], text1["width"], generator=generator).to(device, dtype)

        def encode_prompts():
            from transformers import T5Config, T5EncoderModel

            with torch.device(device):
                encoder = T5EncoderModel(T5Config(**(SMOKE_T5_CONFIG if args.smoke else T5_XXL_CONFIG)))
            encoder = encoder.to(device, dtype).eval().requires_grad_(False)
            header["t5_params_b"] = parameter_count(encoder)
            tokens = torch.randint(0, encoder.config.vocab_size, (6, text1["tokens"]), generator=generator).to(device)
            synchronize(device)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

            def encode():
                with torch.no_grad():
                    encoder(tokens)[0]
            result = timed(encode, 3, 1, device)
            del encoder
            return result

        rec.run("prompt encoding: T5-XXL-sized encoder + IF-sized UNet resident", encode_prompts,
                "the job's peak before the encoder is freed; 6 prompts of 77 tokens")
        rec.run("stage 1 ours", stage1_row(prior, embeddings, False, False), "batch 1, text/empty/negative")
        rec.run("stage 1 ours + Perp-Neg", stage1_row(prior, embeddings, True, False), "batch 1, + 2 other views")
        rec.run("stage 1 ours + Perp-Neg, NCHW UNet", stage1_row(prior, embeddings, True, False, nhwc=False),
                "graphed UNet with NCHW weights and activations (the job's default before)")
        rec.run("stage 1 ours + Perp-Neg, eager UNet", stage1_row(prior, embeddings, True, False, graphs=False),
                "the UNet call not replayed from a CUDA graph")
        rec.run(f"stage 1 ours, batch {NO_FRONT_BATCH}", stage1_row(prior, embeddings, False, False, NO_FRONT_BATCH),
                "the job's batch for prompts without a clear front (Perp-Neg off)")
        rec.run(f"stage 1 ours, batch {NO_FRONT_BATCH}, second half", stage1_row(prior, embeddings, False, False,
                                                                                NO_FRONT_BATCH, at_step=6000),
                "steps 5000-10,000: w2 = 1, so no empty-prompt prediction")
        rec.run(f"stage 1 ours, batch {NO_FRONT_BATCH}, cudnn benchmark", stage1_row(
            prior, embeddings, False, False, NO_FRONT_BATCH, cudnn_benchmark=True),
            "torch.backends.cudnn.benchmark on while the graphs are captured")
        rec.run("stage 1 ours + Perp-Neg, cudnn benchmark", stage1_row(prior, embeddings, True, False,
                                                                       cudnn_benchmark=True), "")
        for batch in (1, NO_FRONT_BATCH):
            rec.run(f"stage 1 UNet call alone, batch {batch} x 3 prompts", unet_row(prior, embeddings, batch),
                    "graphed no-grad noise prediction only: the prior's share of the step")
        if (header.get("hash_grid") or "").startswith("Triton"):
            rec.run("stage 1 ours + Perp-Neg, PyTorch hash grid", stage1_row(prior, embeddings, True, False, triton=False),
                    "the Triton hash-grid kernels switched off")
        rec.run("stage 1 naive", stage1_row(prior, embeddings, False, True), "dense 256 samples/ray, PyTorch hash grid")
        rec.run("stage 1 naive + Perp-Neg", stage1_row(prior, embeddings, True, True), "dense, PyTorch hash grid")
        del prior
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if args.stages in ("2", "both"):
        # Stage 2.
        prior = build_latent_prior(SMOKE_SD if args.smoke else SD21_BASE, SMOKE_VAE if args.smoke else SD_VAE,
                                   device, dtype)
        header["sd_unet_params_b"] = parameter_count(prior.unet)
        header["vae_params_b"] = parameter_count(prior.vae)
        embeddings2 = torch.randn(3, text2["tokens"], text2["width"], generator=generator).to(device, dtype)
        positions, triangles = sphere_mesh(96, 500) if args.smoke else sphere_mesh(180, 50_000)
        header["stage2_triangles"] = int(triangles.shape[0])
        print(f"stage 2 mesh: {triangles.shape[0]} triangles", flush=True)
        size2 = 512 if not args.smoke else 64
        grid = HashGridConfig(per_level_scale=1.38) if not args.smoke else HashGridConfig(levels=4, log2_table_size=12)
        from engine.render.rasterize import nvdiffrast_available

        header["rasterizer"] = "nvdiffrast" if device.type == "cuda" and nvdiffrast_available() else "PyTorch"

        def stage2_row(naive: bool, compiled: bool = False, nhwc: bool = True, fast_vae: bool = True,
                       antialias: bool = True, rasterizer: str = "auto"):
            def measure():
                use_cuda_graphs(prior, not naive and not compiled, nhwc)
                mesh = RefinableMesh(positions, triangles, grid).to(device)
                if not naive and device.type == "cuda":
                    from engine.field.texture_field import TextureField

                    mesh.texture = TextureField(grid, use_tcnn=True).to(device)
                if naive:
                    set_triton_hash_grid(mesh, False)
                optimizer = torch.optim.Adam([{"params": mesh.texture.parameters(), "lr": 1e-3},
                                              {"params": [mesh.offsets], "lr": 1e-4}], eps=1e-15)
                step = stage2_step(mesh, prior, embeddings2, size2, optimizer, generator, device,
                                   "torch" if naive else rasterizer, fast_vae and not naive, antialias)
                return timed(step, naive_iterations if naive else iterations, naive_warmup if naive else warmup, device)
            return measure

        rec.run("stage 2 naive", stage2_row(True), "PyTorch rasterizer")
        rec.run("stage 2 ours", stage2_row(False), "UNet call replayed from a CUDA graph")
        rec.run("stage 2 ours, no antialiasing", stage2_row(False, antialias=False),
                "silhouettes without gradients (stage2.antialias false)")
        if header["rasterizer"] == "nvdiffrast":
            rec.run("stage 2 ours, PyTorch rasterizer", stage2_row(False, rasterizer="torch"),
                    "our own rasterizer in place of nvdiffrast")
        rec.run("stage 2 ours, plain VAE encoder", stage2_row(False, fast_vae=False),
                "the VAE encoder NCHW with PyTorch's GroupNorm and attention kernels")
        rec.run("stage 2 ours, NCHW UNet", stage2_row(False, nhwc=False, fast_vae=False),
                "graphed UNet in NCHW, plain VAE encoder (the job's default before)")
        rec.run("stage 2 ours, eager UNet", stage2_row(False, compiled=True), "the UNet call not replayed from a CUDA graph")
        if compile_rows:
            torch._dynamo.reset()
            prior.unet = torch.compile(prior.unet, mode="reduce-overhead")
            rec.run("stage 2 ours + compile", stage2_row(False, compiled=True),
                    "UNet: torch.compile reduce-overhead; first call compiles")
            prior.unet = getattr(prior.unet, "_orig_mod", prior.unet)
        del prior
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # Stage 1 compiled, last: compiling the 4.3B UNet takes minutes.
    if compile_rows and args.stages in ("1", "both"):
        prior = build_pixel_prior(IF_I_XL, device, dtype)
        for perp_neg in (True, False):
            torch._dynamo.reset()
            prior.unet = torch.compile(prior.unet, mode="reduce-overhead")
            rec.run(f"stage 1 ours{' + Perp-Neg' if perp_neg else ''} + compile",
                    stage1_row(prior, embeddings, perp_neg, False, graphs=False), "first call compiles")
            prior.unet = getattr(prior.unet, "_orig_mod", prior.unet)
        del prior

    print(f"\n{header['device']}, torch {torch.__version__}, {iterations} timed steps after {warmup} warm-up "
          f"({naive_iterations} after {naive_warmup} for naive rows), {rec.elapsed():.0f} s in all\n")
    print(rec.table())


if __name__ == "__main__":
    main()
