"""Train the bundled prior (a tiny text-to-image pixel diffusion model) on the attribute world.

    python -m training.bundled_prior.train --out runs/prior [--steps N | --minutes M] [--seed 0] [--init WEIGHTS]
        [--state FILE --deadline S]   # pause by S seconds, continue with the same command
    python -m training.bundled_prior.export --weights runs/prior/prior_fp16.safetensors --out engine/prior/bundled

The shipped weights: see training/bundled_prior/README.md (the exact command and its log).

Objective: epsilon prediction under the DDPM squaredcos_cap_v2 schedule (1000 steps), t uniform;
the text encoder is trained jointly; 12% of captions are replaced by "" (condition dropout), so
e(x_t, "") is the unconditional model that classifier-free guidance and CSD need. The weights
shipped are an exponential moving average of the trained ones, in fp16.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import TRAIN_CAMERAS, BankConfig, SceneSampler, build_bank, compose, contact_sheet
from .model import RESOLUTION, UNET_CONFIG, build_scheduler, build_text_encoder, build_tokenizer, build_unet, \
    encode_texts
from .world import vocabulary


class SceneStream(torch.utils.data.IterableDataset):
    """Endless scene batches (parameters + token ids) drawn on CPU workers, each seeded."""

    def __init__(self, shapes: np.ndarray, azimuths: np.ndarray, tokenizer_json: str, batch: int, seed: int,
                 empty_prompt_prob: float):
        self.shapes, self.azimuths = shapes, azimuths
        self.tokenizer_json, self.batch, self.seed = tokenizer_json, batch, seed
        self.empty_prompt_prob = empty_prompt_prob

    def __iter__(self):
        from tokenizers import Tokenizer

        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        sampler = SceneSampler(self.shapes, self.azimuths, seed=self.seed * 1000 + 17 + worker,
                               empty_prompt_prob=self.empty_prompt_prob)
        tokenizer = Tokenizer.from_str(self.tokenizer_json)
        while True:
            scenes = sampler.sample(self.batch)
            yield scenes, encode_texts(tokenizer, scenes.captions)


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1 - decay)


@torch.no_grad()
def sample_images(unet, text_encoder, tokenizer, prompts: list[str], guidance: float, steps: int, seed: int,
                  device: torch.device) -> torch.Tensor:
    """DDPM ancestral sampling with classifier-free guidance; (N, 3, R, R) in [0, 1]."""
    scheduler = build_scheduler()
    scheduler.set_timesteps(steps)
    ids = encode_texts(tokenizer, prompts + [""] * len(prompts)).to(device)
    context = text_encoder(ids)[0]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(len(prompts), 3, RESOLUTION, RESOLUTION, generator=generator).to(device)
    for t in scheduler.timesteps:
        eps = unet(torch.cat([x, x]), t.to(device), context).sample.float()
        cond, uncond = eps.chunk(2)
        eps = uncond + guidance * (cond - uncond)
        x = scheduler.step(eps, t, x, generator=generator).prev_sample.to(device)
    return (x.clamp(-1, 1) + 1) / 2


SAMPLE_PROMPTS = [
    "a red sphere", "a blue cube", "a green cylinder", "a yellow cone", "an orange torus", "a purple sphere",
    "a pink cube", "a brown cylinder", "a white cone", "a black torus", "a gray sphere", "a cyan cube",
    "a red striped cube", "a blue checkered sphere", "a green dotted cylinder", "a black and white striped cube",
    "a yellow and black checkered cone", "a white dotted torus", "a cube", "",
    "a red sphere, noisy", "a blue cube, oversaturated color", "a green cylinder, low quality", "a red cube, tiling",
]


def save_weights(path: Path, unet, text_encoder) -> None:
    from safetensors.torch import save_file

    tensors = {f"unet.{k}": v.detach().to(torch.float16).contiguous().cpu() for k, v in unet.state_dict().items()}
    tensors.update({f"text_encoder.{k}": v.detach().to(torch.float16).contiguous().cpu()
                    for k, v in text_encoder.state_dict().items()})
    save_file(tensors, str(path))


def load_fp16_weights(path: Path) -> tuple[dict, dict]:
    """The UNet's and the text encoder's state dicts, in fp32, from a run's file or the shipped folder."""
    from safetensors.torch import load_file

    if path.is_dir():
        return ({k: v.float() for k, v in load_file(str(path / "unet" / "diffusion_pytorch_model.safetensors")).items()},
                {k: v.float() for k, v in load_file(str(path / "text_encoder" / "model.safetensors")).items()})
    tensors = load_file(str(path))
    return ({k[len("unet."):]: v.float() for k, v in tensors.items() if k.startswith("unet.")},
            {k[len("text_encoder."):]: v.float() for k, v in tensors.items() if k.startswith("text_encoder.")})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: fit --minutes after a timing pass)")
    parser.add_argument("--minutes", type=float, default=6.0, help="training-time budget when --steps is 0")
    parser.add_argument("--deadline", type=float, default=0.0,
                        help="seconds from start by which this command must end (keeps a device command inside "
                             "its time limit; 0: none): with --state the run pauses by then, else --steps 0 fits "
                             "the whole run before it")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--empty-prompt-prob", type=float, default=0.12)
    parser.add_argument("--views", type=int, default=16_000, help="G-buffers in the bank")
    parser.add_argument("--variants", type=int, default=12, help="meshes per shape")
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--sample-steps", type=int, default=100)
    parser.add_argument("--init", default="",
                        help="continue from these fp16 weights (a run's prior_fp16.safetensors, or the shipped "
                             "engine/prior/bundled folder); the optimiser and the lr schedule start afresh")
    parser.add_argument("--state", default="",
                        help="training-state file: with --deadline the run saves its state there and stops when "
                             "the deadline nears; the same command then continues from it (one run split over "
                             "several time-limited device commands)")
    parser.add_argument("--bank-cache", default="",
                        help="keep the G-buffer bank in this file (built once, loaded by a continued run with the "
                             "same bank settings)")
    parser.add_argument("--layers-per-block", type=int, default=UNET_CONFIG["layers_per_block"],
                        help="resnets per UNet block (a variant of the shipped architecture)")
    parser.add_argument("--elevation", type=float, nargs=2, default=TRAIN_CAMERAS.elevation_deg,
                        metavar=("MIN", "MAX"), help="the training cameras' elevation range, degrees")
    args = parser.parse_args(argv)
    state_path = Path(args.state) if args.state else None
    resuming = state_path is not None and state_path.exists()
    unet_overrides = {"layers_per_block": args.layers_per_block}
    cameras = dataclasses.replace(TRAIN_CAMERAS, elevation_deg=tuple(args.elevation))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "train_log.txt", "a")

    def log(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    log(f"args {json.dumps(vars(args))}")
    log(f"device {device} torch {torch.__version__} "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}")

    start = time.time()
    bank_config = BankConfig(views=args.views, variants_per_shape=args.variants, seed=args.seed, cameras=cameras)
    bank_cache = Path(args.bank_cache) if args.bank_cache else None
    cached = torch.load(bank_cache, map_location=device, weights_only=False) if bank_cache and bank_cache.exists() \
        else None
    # A cache built for other views, meshes or seed is rebuilt, never silently trained on.
    if cached is not None and cached["config"] == bank_config:
        bank = cached["bank"]
    else:
        bank = build_bank(bank_config, device, log)
        if bank_cache is not None:
            torch.save({"config": bank_config, "bank": bank}, bank_cache)
    log(f"bank of {len(bank)} g-buffers in {time.time() - start:.1f} s")

    tokenizer = build_tokenizer(vocabulary())
    torch.manual_seed(args.seed)
    unet = build_unet(**unet_overrides).to(device)
    text_encoder = build_text_encoder(tokenizer.get_vocab_size()).to(device)
    ema_unet = build_unet(**unet_overrides).to(device)
    ema_text = build_text_encoder(tokenizer.get_vocab_size()).to(device)
    if args.init and not resuming:
        unet_state, text_state = load_fp16_weights(Path(args.init))
        unet.load_state_dict(unet_state)
        text_encoder.load_state_dict(text_state)
        log(f"initialised from {args.init}")
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.load_state_dict(text_encoder.state_dict())
    ema_unet.requires_grad_(False)
    ema_text.requires_grad_(False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    log(f"params unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M, "
        f"text {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M")
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01,
                                  fused=device.type == "cuda")
    alphas_cumprod = build_scheduler().alphas_cumprod.to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed + 1)
    step, total, resumes = 0, args.steps, 0
    if resuming:
        saved = torch.load(state_path, map_location=device, weights_only=False)
        for module, key in ((unet, "unet"), (text_encoder, "text_encoder"), (ema_unet, "ema_unet"),
                            (ema_text, "ema_text")):
            module.load_state_dict(saved[key])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"].cpu())
        step, total, resumes = saved["step"], saved["total"], saved["resumes"] + 1
        log(f"continuing from {state_path} at step {step}/{total}")

    # A continued run reseeds its data workers (their streams cannot be saved), so it sees new scenes.
    stream = SceneStream(bank.shape.cpu().numpy(), bank.cameras.azimuth.cpu().numpy(), tokenizer.to_str(),
                         args.batch, args.seed + 7919 * resumes, args.empty_prompt_prob)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=args.workers,
                                         persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers else None,
                                         pin_memory=device.type == "cuda")
    batches = iter(loader)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else \
        torch.autocast(device_type="cpu", enabled=False)

    waits = []

    def train_step(step: int, total: int) -> float:
        wait_start = time.perf_counter()
        scenes, ids = next(batches)
        waits.append(time.perf_counter() - wait_start)
        with torch.no_grad():
            images, _ = compose(bank, scenes, generator)
            x0 = images * 2 - 1
            t = torch.randint(0, 1000, (x0.shape[0],), generator=generator, device=device)
            noise = torch.randn(x0.shape, generator=generator, device=device)
            abar = alphas_cumprod[t].view(-1, 1, 1, 1)
            xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, total, args.lr, args.warmup)
        with autocast:
            context = text_encoder(ids.to(device, non_blocking=True))[0]
            pred = unet(xt, t, context).sample
        loss = F.mse_loss(pred.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text_encoder, decay)
        return loss

    def save_state() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                    "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                    "optimizer": optimizer.state_dict(), "generator": generator.get_state(), "step": step,
                    "total": total, "resumes": resumes}, tmp)
        os.replace(tmp, state_path)

    if total <= 0 and not resuming:
        # Timing pass: these steps are part of the run (their lr follows a provisional schedule of 10^4 steps).
        calibrate = 60
        for step in range(calibrate):
            train_step(step, 10_000)
            if step == 19:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.time()
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.time() - t0) / (calibrate - 20)
        budget = args.minutes * 60
        if args.deadline > 0 and state_path is None:
            budget = min(budget, args.deadline - (time.time() - start))
        total = max(int(budget / per_step) // 100 * 100, calibrate + 100)
        step = calibrate
        log(f"timing: {per_step * 1000:.1f} ms/step -> {total} steps for {args.minutes} min "
            f"(reproduce with --steps {total})")
    losses = []
    train_start = time.time()
    step_start, slowest = time.time(), 0.0
    while step < total:
        loss = train_step(step, total)
        losses.append(loss.detach())
        step += 1
        now = time.time()
        slowest, step_start = max(slowest, now - step_start) if step > 5 else 0.0, now
        # Pausing leaves room for the state file and a few slow steps before the deadline.
        if (state_path is not None and args.deadline > 0 and step < total
                and now - start > args.deadline - 30 - 5 * slowest):
            save_state()
            log(f"paused at step {step}/{total} after {now - train_start:.0f} s; saved {state_path}: "
                f"run the same command again to continue")
            log_file.close()
            return
        if step % args.log_every == 0 or step == total:
            mean = torch.stack(losses).mean().item()
            losses = []
            elapsed = time.time() - train_start
            log(f"step {step}/{total} loss {mean:.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                f"{elapsed:.0f} s; waiting for data {1000 * float(np.mean(waits[-args.log_every:])):.1f} ms/step")
    log(f"training done: {total} steps ({time.time() - train_start:.0f} s in this command)")

    save_weights(out / "prior_fp16.safetensors", ema_unet, ema_text)
    # What export.py needs to rebuild this run's model and describe its world.
    (out / "run.json").write_text(json.dumps({"unet": unet_overrides, "training_cameras": dataclasses.asdict(cameras)},
                                             indent=2) + "\n")
    log("saved prior_fp16.safetensors and run.json")
    try:
        from PIL import Image

        ema_unet.eval()
        ema_text.eval()
        images = sample_images(ema_unet, ema_text, tokenizer, SAMPLE_PROMPTS, 5.0, args.sample_steps, args.seed,
                               device)
        Image.fromarray(contact_sheet(images, columns=6)).resize((6 * 128, 4 * 128), Image.NEAREST).save(
            out / "samples.png")
        scenes, _ = next(batches)
        images, _ = compose(bank, scenes, generator)
        Image.fromarray(contact_sheet(images[:128], columns=16)).save(out / "data_preview.png")
        log("data preview captions (row-major): " + " | ".join(scenes.captions[:128]))
        log("saved samples.png and data_preview.png")
    except Exception as error:  # previews must never cost the run
        log(f"preview failed: {error!r}")
    log(f"total wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
