"""Peak GPU memory of every supported checkpoint family at full size (random weights), for the
README's support table: what a job holds on the GPU from loading the model to its steps.

For each family (bench/model_configs.py), the checkpoint and its ControlNets are built at full size
with random weights on the GPU, saved in fp16 in their real folder layout (model_index.json, the
scheduler's class and config, CLIP BPE / sentencepiece T5 tokenizers) inside a Hugging Face cache
layout, and then loaded by the engine's own `load_prior`, as a job loads a downloaded model. Then
what the job runs with that family, with the job's own functions:
  texture families (SD 1.x with the depth + canny ControlNets at 512 px, SD 2.x base at 512,
  SD 2.x 768-v at 768, SDXL with the depth ControlNet at 1024, with the fp16-fixed VAE and without
  it): the prompts encoded then the text encoders released, the job's view pool (96 views of an
  icosphere of 20,480 triangles) rasterised at the model's render size, the texture field, and
  make_texture_step's step (one CUDA graph per step);
  generate stage 1 (IF-I XL / L / M): the UNet's CUDA graphs, the Perp-Neg prompts encoded by the
  T5-XXL encoder then the encoder released, the NeRF, and the stage-1 step at 64 px with Perp-Neg
  (batch 1) and without it (batch 4, prompts without a clear front).

Each family starts from a fresh CUDA memory state (everything of the one before deleted, cache
emptied, peak statistics reset). Reported per family: parameters and fp16 weight bytes per component
(what the engine downloads, less configs and tokenizers; counted from the configs), the loaded
modules' parameters and dtypes, torch.cuda.max_memory_allocated / max_memory_reserved from loading
to the last step, the memory after each phase, and the median step time (the loss read back each
step, as the job's loop does). A second table lists every checkpoint's components.

    python bench/bench_model_families.py --out bench/out-model-families/results.json   # CUDA GPU
    python bench/bench_model_families.py --families sdxl,if-i-xl                       # a subset
    python bench/bench_model_families.py --smoke            # toy widths on the CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from bench_generate import stage1_step  # noqa: E402
from bench_texture_step import icosphere_unit, randomise_zeros  # noqa: E402
from model_configs import CHECKPOINTS, FAMILIES, SDXL_FP16_FIX_VAE, Checkpoint, Component, Family  # noqa: E402
from model_folders import write_clip_tokenizer, write_t5_tokenizer  # noqa: E402

from engine.config import TextureJobConfig  # noqa: E402
from engine.field.texture_field import TextureField  # noqa: E402
from engine.pipelines.generate import build_nerf, encode_nerf_prompts, speed_up_unet  # noqa: E402
from engine.config import GenerateJobConfig  # noqa: E402
from engine.pipelines.texture import encode_prompts  # noqa: E402
from engine.pipelines.texture_step import make_texture_step  # noqa: E402
from engine.pipelines.views import ViewPool  # noqa: E402
from engine.prior.load import load_prior  # noqa: E402
from engine.prior.sdxl import find_fp16_fix_vae  # noqa: E402
from engine.render.cameras import sample_cameras  # noqa: E402

TEXTURE_PROMPT = "a wooden chair with carved legs"
GENERATE_PROMPT = "a zoomed out DSLR photo of a toad"  # a clear front: the job turns Perp-Neg on
SNAPSHOT = "0" * 40  # the commit every written snapshot claims to be
GIB = 2 ** 30


@dataclass(frozen=True)
class Run:
    """A family as one benchmark row. SDXL runs twice: with the fp16-fixed VAE where the engine looks
    for it (the Hugging Face cache the model lies in), and without it (the engine runs the VAE in
    float32)."""

    key: str
    family: Family
    fp16_fix_vae: bool = False

    @property
    def checkpoints(self) -> list[Checkpoint]:
        extra = [SDXL_FP16_FIX_VAE] if self.fp16_fix_vae else []
        return [self.family.base, *self.family.controlnets.values(), *extra]


RUNS = {run.key: run for run in (
    Run("sd15", FAMILIES["sd15"]),
    Run("sd2-base", FAMILIES["sd2-base"]),
    Run("sd2-768v", FAMILIES["sd2-768v"]),
    Run("sdxl", FAMILIES["sdxl"], fp16_fix_vae=True),
    Run("sdxl-vae-fp32", FAMILIES["sdxl"]),
    Run("if-i-xl", FAMILIES["if-i-xl"]),
    Run("if-i-l", FAMILIES["if-i-l"]),
    Run("if-i-m", FAMILIES["if-i-m"]),
)}

# --smoke: each component's architecture (block types, attention layout, conditioning) at toy widths.
SMOKE_TEXT_WIDTH = 32  # the text embedding width the UNets cross-attend to (SDXL: both encoders together)


def smoke_config(component: Component, text_encoders: int) -> dict:
    """The component at toy widths; text_encoders: how many its checkpoint has (SDXL: 2)."""
    config, name = component.config, component.class_name
    if name in ("UNet2DConditionModel", "ControlNetModel"):
        blocks = len(config["block_out_channels"])
        pixel = "SimpleCrossAttnDownBlock2D" in config["down_block_types"]
        tiny = dict(config, layers_per_block=1, norm_num_groups=8,
                    block_out_channels=(32, 64, 96, 128) if pixel else (32, 32, 64, 64)[-blocks:])
        if "sample_size" in config:  # UNets: 16 px (IF) or 8 x 8 latents (64 px renders)
            tiny["sample_size"] = 16 if pixel else 8
        if pixel:  # IF: 16-channel heads, T5's embeddings projected to 64
            tiny.update(attention_head_dim=16, cross_attention_dim=64, encoder_hid_dim=SMOKE_TEXT_WIDTH,
                        addition_embed_type_num_heads=4)
        else:  # attention_head_dim counts heads in these blocks
            heads = config["attention_head_dim"]
            tiny.update(attention_head_dim=2 if isinstance(heads, int) else (2,) * blocks,
                        cross_attention_dim=SMOKE_TEXT_WIDTH)
        if "transformer_layers_per_block" in config:
            tiny["transformer_layers_per_block"] = tuple(min(n, 2) for n in config["transformer_layers_per_block"])
        if config.get("addition_embed_type") == "text_time":  # SDXL: the second encoder's pooled embedding
            tiny.update(addition_time_embed_dim=8,  # (half the width) and 6 time ids x 8
                        projection_class_embeddings_input_dim=SMOKE_TEXT_WIDTH // 2 + 6 * 8)
        if name == "ControlNetModel":
            tiny["conditioning_embedding_out_channels"] = (4, 8, 8, 8)
        return tiny
    if name == "AutoencoderKL":
        return dict(config, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, sample_size=64)
    if name.startswith("CLIPTextModel"):
        width = SMOKE_TEXT_WIDTH // text_encoders
        return dict(config, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                    num_attention_heads=2, projection_dim=width)
    if name == "T5EncoderModel":
        return dict(config, d_model=SMOKE_TEXT_WIDTH, d_ff=64, d_kv=8, num_heads=4, num_layers=2)
    raise ValueError(f"no smoke size for {name}")


def build_module(component: Component, config: dict, token_ids: dict | None):
    """The component with random weights, on the current default device (float32)."""
    import diffusers
    import transformers

    if component.library == "diffusers":
        return getattr(diffusers, component.class_name)(**config)
    config_class = transformers.T5Config if component.class_name == "T5EncoderModel" else transformers.CLIPTextConfig
    return getattr(transformers, component.class_name)(config_class(**config, **(token_ids or {})))


def write_tokenizer(component: Component, folder: Path) -> tuple[str, dict]:
    """The tokenizer the text encoder ships with (a small vocabulary in its real format): its class
    name and the token ids the encoder's config needs."""
    if component.class_name == "T5EncoderModel":
        write_t5_tokenizer(folder)
        return "T5Tokenizer", dict(pad_token_id=0, eos_token_id=1)
    open_clip = component.config.get("hidden_act") == "gelu"  # OpenCLIP's towers pad with "!", CLIP's with <eos>
    vocab = write_clip_tokenizer(folder, "!" if open_clip else "<|endoftext|>")
    return "CLIPTokenizer", dict(bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                 pad_token_id=0 if open_clip else vocab - 1)


def folder_bytes(folder: Path) -> int:
    """Bytes of the weight files under folder, through links."""
    return sum((Path(root) / name).stat().st_size for root, _, names in os.walk(folder, followlinks=True)
               for name in names if name.endswith(".safetensors"))


class ModelStore:
    """Random-weight checkpoints in a Hugging Face cache layout under root, each written once (in
    fp16 on a GPU) and deleted after the last planned run that needs it. Text encoders that several
    checkpoints share (IF's T5-XXL, CLIP ViT-L/14, OpenCLIP ViT-H/14) are written once and linked."""

    def __init__(self, root: Path, runs: list[Run], device: torch.device, smoke: bool):
        self.cache, self.shared = root / "hub", root / "shared"
        self.device, self.smoke = device, smoke
        self.pending = Counter(checkpoint.hub_id for run in runs for checkpoint in run.checkpoints)
        self.shared_folders: dict[str, Path] = {}

    def repository(self, hub_id: str) -> Path:
        return self.cache / f"models--{hub_id.replace('/', '--')}"

    def snapshot(self, hub_id: str) -> Path:
        return self.repository(hub_id) / "snapshots" / SNAPSHOT

    def folder(self, checkpoint: Checkpoint) -> Path:
        folder = self.snapshot(checkpoint.hub_id)
        if not folder.is_dir():
            # Written aside and moved in when whole: a write that fails leaves no half folder.
            partial = self.cache / "partial"
            shutil.rmtree(partial, ignore_errors=True)
            self.write(checkpoint, partial)
            folder.parent.mkdir(parents=True)
            partial.rename(folder)
            (self.repository(checkpoint.hub_id) / "refs").mkdir()
            (self.repository(checkpoint.hub_id) / "refs" / "main").write_text(SNAPSHOT)
        return folder

    def write(self, checkpoint: Checkpoint, folder: Path) -> None:
        import diffusers

        folder.mkdir(parents=True)
        text_encoders = sum(component.library == "transformers" for component in checkpoint.components)
        index = {"_class_name": checkpoint.pipeline, "_diffusers_version": diffusers.__version__}
        for component in checkpoint.components:
            index[component.subfolder] = [component.library, component.class_name]
            config = smoke_config(component, text_encoders) if self.smoke else component.config
            if component.library == "diffusers":
                self.save_random(component, config, None, folder / component.subfolder)
                continue
            tokenizer = component.subfolder.replace("text_encoder", "tokenizer")
            tokenizer_class, token_ids = write_tokenizer(component, folder / tokenizer)
            index[tokenizer] = ["transformers", tokenizer_class]
            key = json.dumps([component.class_name, config, token_ids], sort_keys=True)
            if key not in self.shared_folders:
                self.shared_folders[key] = self.shared / f"{component.class_name}-{len(self.shared_folders)}"
                self.save_random(component, config, token_ids, self.shared_folders[key])
            (folder / component.subfolder).symlink_to(self.shared_folders[key], target_is_directory=True)
        if checkpoint.scheduler is not None:
            name, config = checkpoint.scheduler
            getattr(diffusers, name).from_config(config).save_pretrained(folder / "scheduler")
            index["scheduler"] = ["diffusers", name]
        if checkpoint.pipeline is not None:
            if checkpoint.pipeline == "StableDiffusionXLPipeline":
                index["force_zeros_for_empty_prompt"] = True
            (folder / "model_index.json").write_text(json.dumps(index, indent=1))

    def save_random(self, component: Component, config: dict, token_ids: dict | None, target: Path) -> None:
        torch.manual_seed(0)
        with torch.device(self.device):  # random initialisation on the GPU: seconds, not minutes on the CPU
            module = build_module(component, config, token_ids)
        if component.class_name == "ControlNetModel":  # zero convolutions get small random values
            randomise_zeros(module, torch.Generator().manual_seed(0))
        module.to(torch.float16).save_pretrained(target)

    def place_fp16_fix_vae(self, present: bool) -> None:
        """Put the fp16-fixed SDXL VAE in the cache (where the engine looks for it), or take it out."""
        if present:
            self.folder(SDXL_FP16_FIX_VAE)
        elif self.repository(SDXL_FP16_FIX_VAE.hub_id).exists():
            shutil.rmtree(self.repository(SDXL_FP16_FIX_VAE.hub_id))

    def done(self, run: Run) -> None:
        for checkpoint in run.checkpoints:
            self.pending[checkpoint.hub_id] -= 1
            if self.pending[checkpoint.hub_id] <= 0 and self.repository(checkpoint.hub_id).exists():
                shutil.rmtree(self.repository(checkpoint.hub_id))

    def close(self) -> None:
        shutil.rmtree(self.cache.parent, ignore_errors=True)


def component_parameters(component: Component) -> int:
    """Parameters of a component at full size, counted from its config on the meta device."""
    with torch.device("meta"):
        module = build_module(component, component.config, None)
    return sum(parameter.numel() for parameter in module.parameters())


def checkpoint_table() -> dict[str, dict[str, int]]:
    """Every checkpoint's components: parameters (fp16 bytes are twice that)."""
    return {hub_id: {component.subfolder or component.class_name: component_parameters(component)
                     for component in checkpoint.components} for hub_id, checkpoint in CHECKPOINTS.items()}


def loaded_modules(prior) -> dict[str, dict]:
    """The modules the loaded prior holds: parameters, dtype, device."""
    found = {}
    for name, value in vars(prior).items():
        modules = value.items() if isinstance(value, dict) else [(None, value)]
        for key, module in modules:
            if isinstance(module, torch.nn.Module):
                parameter = next(module.parameters(), None)
                found[name if key is None else f"{name}.{key}"] = dict(
                    parameters=sum(p.numel() for p in module.parameters()),
                    dtype=str(parameter.dtype).replace("torch.", "") if parameter is not None else None,
                    device=str(parameter.device) if parameter is not None else None)
    return found


class MemoryLog:
    """GPU memory after each phase of a run: allocated now, and the peaks since the run began."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.phases: list[dict] = []
        self.began = time.perf_counter()

    def mark(self, phase: str) -> None:
        row = dict(phase=phase, at_s=round(time.perf_counter() - self.began, 2))
        if self.cuda:
            torch.cuda.synchronize()
            row.update(allocated_gib=torch.cuda.memory_allocated() / GIB,
                       peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB,
                       peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB)
        self.phases.append(row)
        memory = (f", {row['allocated_gib']:.2f} GiB allocated, peak {row['peak_allocated_gib']:.2f}"
                  if self.cuda else "")
        print(f"    {phase}: {row['at_s']:.1f} s{memory}", flush=True)


def fresh_cuda_state(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def median_step_ms(step, steps: int, warmup: int, device: torch.device) -> float:
    """Median wall time of `step(index)` over the timed steps; a returned loss is read back, as the job does."""
    times = []
    for index in range(warmup + steps):
        begin = time.perf_counter()
        loss = step(index)
        if loss is not None:
            float(loss)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= warmup:
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def texture_run(run: Run, folders: dict[str, Path], args, device: torch.device, memory: MemoryLog,
                result: dict) -> None:
    """The texture job's setup and steps (engine/pipelines/texture.py run_texture) on the family."""
    family = run.family
    config = TextureJobConfig(prompt=TEXTURE_PROMPT, mesh="-", out="-")
    config.prior.model = str(folders[family.base.hub_id])
    config.prior.controlnets = tuple(family.controlnets)
    config.prior.controlnet_models = {name: str(folders[checkpoint.hub_id])
                                      for name, checkpoint in family.controlnets.items()}
    config.cameras.view_pool = args.views or config.cameras.view_pool
    config.validate()
    generator = torch.Generator().manual_seed(config.seed)

    prior = load_prior(config.prior, device)
    result.update(loaded=loaded_modules(prior), warnings=list(prior.warnings))
    memory.mark("model loaded")
    embeddings = encode_prompts(prior, config)
    memory.mark("prompts encoded, text encoders released")

    vertices, faces = icosphere_unit(2 if args.smoke else 5)
    positions, triangles = torch.from_numpy(vertices).to(device), torch.from_numpy(faces).to(device)
    cameras = sample_cameras(config.cameras, config.cameras.view_pool, generator)
    render_size = config.resolve_render_size(prior.resolution, prior.pixel_space)
    views = ViewPool(positions, triangles, cameras, render_size, with_control=prior.supports_controlnet)
    field = TextureField(config.hash_grid, seed=config.seed).to(device)
    step = make_texture_step(field, prior, views, cameras, embeddings, config, generator, device)
    result.update(render_size=render_size, views=len(views), triangles=int(faces.shape[0]),
                  step_class=type(step).__name__, warnings=result["warnings"] + step.warnings)
    memory.mark(f"{len(views)} views rasterised, step built ({type(step).__name__})")
    controlnets = " + ".join(f"{name} ControlNet" for name in family.controlnets)
    label = f"texture step at {render_size} px" + (f", {controlnets}" if controlnets else "")
    result["steps"] = [dict(label=label, median_ms=median_step_ms(step, args.steps, args.warmup, device))]
    memory.mark(f"{args.warmup} + {args.steps} steps")


def generate_stage1_run(run: Run, folders: dict[str, Path], args, device: torch.device, memory: MemoryLog,
                        result: dict) -> None:
    """The generate job's stage-1 setup (engine/pipelines/generate.py optimise_nerf) and its step with
    and without Perp-Neg."""
    config = GenerateJobConfig.defaults_for(GENERATE_PROMPT, "-", stage1_model=str(folders[run.family.base.hub_id]))
    stage = config.stage1
    if args.smoke:
        stage.render_size, stage.samples_per_ray, stage.occupancy_resolution = 16, 32, 16
        stage.hash_grid.levels, stage.hash_grid.log2_table_size = 4, 12
    generator = torch.Generator().manual_seed(config.seed)

    prior = load_prior(stage.prior, device)
    result.update(loaded=loaded_modules(prior), warnings=list(prior.warnings))
    speed_up_unet(prior, config.compile)
    memory.mark("model loaded")
    embeddings = encode_nerf_prompts(prior, config, True)
    memory.mark("Perp-Neg prompts encoded, text encoder released")
    model = build_nerf(stage, config.seed, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=stage.learning_rate, eps=1e-15)
    memory.mark("NeRF built")
    result.update(render_size=stage.render_size, steps=[])
    for label, perp_neg, batch in (("stage-1 step, Perp-Neg, batch", True, stage.batch_size),
                                   ("stage-1 step, no clear front, batch", False, stage.batch_size_no_front)):
        step, _ = stage1_step(model, prior, embeddings, perp_neg, True, stage.render_size, batch, optimizer,
                              generator, device)
        result["steps"].append(dict(label=f"{label} {batch} at {stage.render_size} px",
                                    median_ms=median_step_ms(lambda _: step(), args.steps, args.warmup, device)))
        memory.mark(f"{label} {batch}: {args.warmup} + {args.steps} steps")


def measure(run: Run, store: ModelStore, args, device: torch.device) -> dict:
    family = run.family
    result = dict(run=run.key, family=family.name, use=family.use, job=family.job,
                  checkpoints=[checkpoint.hub_id for checkpoint in run.checkpoints])
    begin = time.perf_counter()
    store.place_fp16_fix_vae(run.fp16_fix_vae)
    folders = {checkpoint.hub_id: store.folder(checkpoint) for checkpoint in run.checkpoints}
    if run.fp16_fix_vae and find_fp16_fix_vae(folders[family.base.hub_id]) is None:
        raise RuntimeError("the engine does not find the fp16-fixed VAE written next to the model")
    result["write_s"] = time.perf_counter() - begin
    result["weight_file_bytes"] = sum(folder_bytes(folder) for folder in folders.values())
    print(f"  model folders written in {result['write_s']:.1f} s "
          f"({result['weight_file_bytes'] / 1e9:.2f} GB of weights)", flush=True)
    fresh_cuda_state(device)
    memory = MemoryLog(device)
    if device.type == "cuda":
        result["allocated_at_start_gib"] = torch.cuda.memory_allocated() / GIB
    (texture_run if family.job == "texture" else generate_stage1_run)(run, folders, args, device, memory, result)
    result["phases"] = memory.phases
    if device.type == "cuda":
        result.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB,
                      peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB)
    return result


def download_bytes(run: Run, parameters: dict[str, dict[str, int]]) -> dict[str, int]:
    """fp16 weight bytes per component the run's checkpoints hold (the engine downloads these)."""
    return {f"{hub_id} {name}".strip(): 2 * count for hub_id in (c.hub_id for c in run.checkpoints)
            for name, count in parameters[hub_id].items()}


def markdown(results: list[dict], parameters: dict[str, dict[str, int]], header: str) -> str:
    lines = [header, "",
             "| family | used for | parameters | fp16 weights | peak allocated | peak reserved | after loading | "
             "median step | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results:
        total = sum(row.get("download_bytes", {}).values())
        weights = f"{total / 1e9:.2f} GB" if total else "-"
        params = f"{total / 2e9:.2f} B" if total else "-"
        if "error" in row:
            lines.append(f"| {row['family']} ({row['run']}) | {row['use']} | {params} | {weights} | - | - | - | - | "
                         f"{row['error'][:160]} |")
            continue
        loaded = next((p for p in row["phases"] if p["phase"] == "model loaded"), {})
        gib = (lambda value: f"{value:.2f} GiB" if value is not None else "n/a")
        steps = "; ".join(f"{s['median_ms']:.1f} ms ({s['label']})" for s in row["steps"])
        dtypes = ", ".join(f"{name} {info['dtype']}" for name, info in row["loaded"].items()
                           if info["dtype"] != "float16")
        lines.append(f"| {row['family']} ({row['run']}) | {row['use']} | {params} | {weights} | "
                     f"{gib(row.get('peak_allocated_gib'))} | {gib(row.get('peak_reserved_gib'))} | "
                     f"{gib(loaded.get('allocated_gib'))} | {steps} | {dtypes or 'all fp16'} |")
    lines += ["", "| checkpoint | component | parameters | fp16 bytes |", "|---|---|---|---|"]
    for hub_id, components in parameters.items():
        for name, count in components.items():
            lines.append(f"| {hub_id} | {name} | {count / 1e6:.1f} M | {2 * count / 1e9:.3f} GB |")
        if len(components) > 1:
            total = sum(components.values())
            lines.append(f"| {hub_id} | **all** | {total / 1e6:.1f} M | {2 * total / 1e9:.3f} GB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(RUNS), help=f"comma-separated, from: {', '.join(RUNS)}")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per workload (default 10; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; smoke 0)")
    parser.add_argument("--views", type=int, default=None, help="texture view pool (default: the job's 96; smoke 4)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="start no family after this many seconds (0: no limit)")
    parser.add_argument("--models", type=Path, default=None,
                        help="where to write the model folders (a new folder in it, deleted at the end; "
                             "default: the temp dir); the largest moment needs about 20 GB")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out-model-families" / "results.json",
                        help="results JSON (the markdown table goes next to it, .md)")
    parser.add_argument("--smoke", action="store_true", help="toy widths on the CPU: checks the script runs")
    args = parser.parse_args()
    keys = [key for key in args.families.split(",") if key]
    unknown = [key for key in keys if key not in RUNS]
    if unknown:
        sys.exit(f"unknown families {unknown}; use {', '.join(RUNS)}")
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("No CUDA GPU: run with --smoke for a CPU check.")
    device = torch.device("cpu" if args.smoke else "cuda")
    args.steps = args.steps or (2 if args.smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.smoke else 3)
    args.views = args.views or (4 if args.smoke else None)

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke: toy widths, not a measurement)"
    header = (f"{device_name}; torch {torch.__version__}, diffusers {diffusers.__version__}, "
              f"transformers {transformers.__version__}; {time.strftime('%Y-%m-%d')}")
    print(header, flush=True)
    began = time.perf_counter()
    parameters = checkpoint_table()
    runs = [RUNS[key] for key in keys]
    root = Path(tempfile.mkdtemp(prefix="model-families-", dir=args.models))
    store = ModelStore(root, runs, device, args.smoke)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    try:
        for run in runs:
            elapsed = time.perf_counter() - began
            print(f"[{elapsed:6.1f} s] {run.key}: {run.family.name}, {run.family.job}", flush=True)
            if args.budget_s and elapsed > args.budget_s:
                row = dict(run=run.key, family=run.family.name, use=run.family.use,
                           error=f"skipped: the time budget of {args.budget_s:.0f} s was spent")
            else:
                try:
                    row = measure(run, store, args, device)
                except Exception as error:  # noqa: BLE001 - a family that fails must not lose the others
                    print(traceback.format_exc(), flush=True)
                    row = dict(run=run.key, family=run.family.name, use=run.family.use,
                               error=f"{type(error).__name__}: {error}")
                    del error
            row["download_bytes"] = download_bytes(run, parameters)
            row["elapsed_s"] = time.perf_counter() - began
            results.append(row)
            store.done(run)
            fresh_cuda_state(device)
            table = markdown(results, parameters, header)
            args.out.write_text(json.dumps(dict(header=header, command=" ".join(sys.argv), families=results,
                                                checkpoint_parameters=parameters), indent=1, default=str))
            args.out.with_suffix(".md").write_text(table + "\n")
    finally:
        store.close()
    print(f"\n{len(results)} families in {time.perf_counter() - began:.0f} s\n\n{table}")
    if any("error" in row for row in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
