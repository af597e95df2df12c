"""The whole generate job as a user runs it, timed end to end: `python -m engine generate` on local
diffusers folders of the full-size architectures with random weights (speed does not depend on the
weights' values). Stage 1: an IF-I-XL-sized UNet with a T5-XXL-sized text encoder; stage 2: an
SD-2.1-base-sized UNet, its VAE and an OpenCLIP-H-sized text encoder. Default length 10,000 +
5,000 steps, the job's defaults otherwise (previews, checkpoints, extraction, unwrap, bake, export).

Prints each phase's wall time (from the job's progress events), the job's peak GPU memory
(result.json) and the total against the 20-minute target.

A default run is longer than one device command may take (10 minutes), so `--stop-after-s`
cancels the job (SIGTERM: the engine saves its state, as when an artist cancels) and a second
command with `--resume` continues it from the saved state; the table adds the parts up, counting
the resumed part's model loading as the cost of the interruption. On the device tool keep --models
and --out under /tmp and send the second command at once: the machine's copy of the repository is
re-synced each command (a `runs/` folder there is deleted), /tmp lasts while the machine stays warm.

    python3 bench/bench_generate_job.py --models /tmp/models --out /tmp/job --stop-after-s 540
    python3 bench/bench_generate_job.py --models /tmp/models --out /tmp/job --resume --stop-after-s 540
    python bench/bench_generate_job.py --smoke --models /tmp/m --out /tmp/j    # toy widths, CPU
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from bench_generate import (IF_I_XL, SD21_BASE, SD_VAE, SMOKE_IF, SMOKE_SD, SMOKE_T5_CONFIG,  # noqa: E402
                            SMOKE_VAE, T5_XXL_CONFIG, TARGET_GIB, TARGET_MIN)
from tiny_models import save_word_tokenizer  # noqa: E402  (a word-level tokenizer saved as a real folder)

# stabilityai/stable-diffusion-2-1-base text_encoder/config.json (OpenCLIP ViT-H/14's text tower).
OPENCLIP_H_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                         max_position_embeddings=77, vocab_size=49408, hidden_act="gelu", projection_dim=1024)
SMOKE_CLIP_CONFIG = dict(OPENCLIP_H_CONFIG, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                         num_hidden_layers=1)
PROMPT = "a zoomed out DSLR photo of a toad"  # the example: a clear front, so Perp-Neg is on
MODEL_INDEX = {"_diffusers_version": "0.42.1", "unet": ["diffusers", "UNet2DConditionModel"],
               "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "scheduler": ["diffusers", "DDPMScheduler"]}


def write_if_folder(folder: Path, smoke: bool, device: str, dtype: torch.dtype) -> None:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    folder.mkdir(parents=True, exist_ok=True)
    with torch.device(device):  # random initialisation on the GPU: seconds, not minutes on the CPU
        UNet2DConditionModel(**(SMOKE_IF if smoke else IF_I_XL)).to(dtype).save_pretrained(folder / "unet")
        T5EncoderModel(T5Config(**(SMOKE_T5_CONFIG if smoke else T5_XXL_CONFIG))).to(dtype).save_pretrained(
            folder / "text_encoder")
    save_word_tokenizer(folder / "tokenizer", max_length=77)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        **MODEL_INDEX, "_class_name": "IFPipeline", "text_encoder": ["transformers", "T5EncoderModel"]}))


def write_sd_folder(folder: Path, smoke: bool, device: str, dtype: torch.dtype) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder.mkdir(parents=True, exist_ok=True)
    with torch.device(device):
        UNet2DConditionModel(**(SMOKE_SD if smoke else SD21_BASE)).to(dtype).save_pretrained(folder / "unet")
        AutoencoderKL(**(SMOKE_VAE if smoke else SD_VAE)).to(dtype).save_pretrained(folder / "vae")
        CLIPTextModel(CLIPTextConfig(**(SMOKE_CLIP_CONFIG if smoke else OPENCLIP_H_CONFIG))).to(dtype).save_pretrained(
            folder / "text_encoder")
    save_word_tokenizer(folder / "tokenizer", max_length=77)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        **MODEL_INDEX, "_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"]}))


def ensure_models(root: Path, smoke: bool, device: str) -> tuple[Path, Path, float]:
    """The two model folders under root (written once; reused by --resume)."""
    stage1, stage2 = root / "if-i-xl-random", root / "sd21-base-random"
    start = time.monotonic()
    dtype = torch.float16 if device == "cuda" else torch.float32
    if not (stage1 / "model_index.json").is_file():
        torch.manual_seed(0)
        write_if_folder(stage1, smoke, device, dtype)
    if not (stage2 / "model_index.json").is_file():
        torch.manual_seed(1)
        write_sd_folder(stage2, smoke, device, dtype)
    if device == "cuda":
        torch.cuda.empty_cache()
    return stage1, stage2, time.monotonic() - start


def run_job(command: list[str], stop_after_s: float | None, log: Path) -> tuple[int, list[dict], float]:
    """Run the engine, cancelling it with SIGTERM after stop_after_s; its events and wall time."""
    start = time.monotonic()
    with log.open("a") as sink:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=sink, text=True, cwd=REPO,
                                   env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                       filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        events, stopped = [], False
        for line in process.stdout:
            sink.write(line)
            if line.startswith("{"):
                events.append(json.loads(line))
            if not stopped and stop_after_s is not None and time.monotonic() - start > stop_after_s:
                process.send_signal(signal.SIGTERM)
                stopped = True
        code = process.wait()
    return code, events, time.monotonic() - start


def phase_times(events: list[dict]) -> dict[str, float]:
    """Wall time between consecutive `stage` events (and the start and the end), per stage name."""
    marks = [(e["time"], e["name"]) for e in events if e.get("event") == "stage"]
    end = next((e["time"] for e in events if e.get("event") == "finished"), events[-1]["time"] if events else 0.0)
    phases: dict[str, float] = {"start-up": marks[0][0] if marks else end}
    for (begin, name), (finish, _) in zip(marks, marks[1:] + [(end, "")]):
        phases[name] = phases.get(name, 0.0) + finish - begin
    return phases


def last_step(events: list[dict]) -> str:
    """"step/total" of the job's last step event (steps count across both stages)."""
    steps = [e for e in events if e.get("event") == "step"]
    return f"{steps[-1]['step']}/{steps[-1]['total_steps']}" if steps else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="folder for the random-weight model folders")
    parser.add_argument("--out", required=True, help="the job's output folder")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--steps1", type=int, default=None, help="default: the job's 10,000")
    parser.add_argument("--steps2", type=int, default=None, help="default: the job's 5,000")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--stop-after-s", type=float, default=None, help="cancel the job after this many seconds")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `generate` flags")
    parser.add_argument("--smoke", action="store_true", help="toy widths and 4 + 4 steps on the CPU")
    args = parser.parse_args()

    device = "cpu" if args.smoke else "cuda"
    out, log = Path(args.out), Path(args.out + ".log")
    stage1, stage2, write_s = ensure_models(Path(args.models), args.smoke, device)
    steps1, steps2 = (args.steps1 or 4, args.steps2 or 4) if args.smoke else (args.steps1, args.steps2)
    if args.resume:
        command = ["--resume", str(out)]
    else:
        command = ["--prompt", args.prompt, "--out", str(out), "--stage1-model", str(stage1),
                   "--stage2-model", str(stage2), "--device", device]
        if args.smoke:
            command += ["--render-size1", "16", "--render-size2", "64", "--mesh-resolution", "32",
                        "--target-triangles", "2000", "--texture-size", "64"]
        command += [flag for name, value in (("--steps1", steps1), ("--steps2", steps2)) if value is not None
                    for flag in (name, str(value))]
    code, events, wall_s = run_job([sys.executable, "-m", "engine", "generate", *command, *args.extra],
                                   args.stop_after_s, log)
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").is_file() else {}
    part = {"resumed": args.resume, "code": code, "status": result.get("status"), "wall_s": round(wall_s, 1),
            "model_folders_written_s": round(write_s, 1), "phases_s": phase_times(events),
            "last_step": last_step(events), "peak_gpu_memory_gib": result.get("peak_gpu_memory_gib"),
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "date": time.strftime("%Y-%m-%d %H:%M")}
    parts_file = Path(args.out + ".parts.jsonl")
    # A fresh run starts the file anew, so parts of an earlier job in the same --out are not added in.
    with parts_file.open("a" if args.resume else "w") as sink:
        sink.write(json.dumps(part) + "\n")
    parts = [json.loads(line) for line in parts_file.read_text().splitlines()]

    print("| part | status | wall s | last step | peak GPU GiB |")
    print("|---|---|---|---|---|")
    for index, p in enumerate(parts):
        print(f"| {index + 1}{' (resumed)' if p['resumed'] else ''} | {p['status']} | {p['wall_s']} | "
              f"{p['last_step']} | {p['peak_gpu_memory_gib']} |")
    totals: dict[str, float] = {}
    for p in parts:
        for name, seconds in p["phases_s"].items():
            totals[name] = totals.get(name, 0.0) + seconds
    print("\n| phase (all parts) | wall s |\n|---|---|")
    for name, seconds in totals.items():
        print(f"| {name} | {seconds:.1f} |")
    total_min = sum(p["wall_s"] for p in parts) / 60
    peak = max((p["peak_gpu_memory_gib"] or 0.0) for p in parts)
    print(f"\nwhole job: {total_min:.1f} min in {len(parts)} part(s) (target {TARGET_MIN:g} min); "
          f"peak GPU memory {peak:.2f} GiB (target {TARGET_GIB:g}); last status {parts[-1]['status']}")


if __name__ == "__main__":
    main()
