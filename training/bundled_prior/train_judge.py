"""Train the judge's shape/pattern classifier (judge/classifier.py) on held-out renders.

    python -m training.bundled_prior.train_judge --out runs/judge [--seed 1000]
    cp runs/judge/judge.safetensors judge/weights/judge.safetensors

Held out from the prior's data: the meshes (shape-bank seed), the cameras and the scene draws
all come from other seeds (the prior uses seed 0; the judge trains on seed 1000 and is
evaluated on seed 2000). Renders are 64 px (2x supersampled), 40% unlit (albedo), the rest lit
by engine.render.shading exactly as the prior's data; 5% are degraded.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import CameraConfig
from judge import judge_colour, top_colours
from judge.classifier import JudgeNet, save_judge
from judge.palette import COLOURS, PATTERNS

from .dataset import BankConfig, SceneSampler, build_bank, compose

# The views the shipped judge was trained and evaluated on (the shipped prior's too), kept apart so that a
# prior trained on other views (train.py --elevation) leaves the judge's recipe as it was.
JUDGE_CAMERAS = CameraConfig(elevation_deg=(-15.0, 55.0), azimuth_deg=(-180.0, 180.0), distance=(2.5, 3.3),
                             fovy_deg=(22.0, 46.0))


class JudgeStream(torch.utils.data.IterableDataset):
    def __init__(self, shapes: np.ndarray, azimuths: np.ndarray, batch: int, seed: int):
        self.shapes, self.azimuths, self.batch, self.seed = shapes, azimuths, batch, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        sampler = SceneSampler(self.shapes, self.azimuths, seed=self.seed * 1000 + 31 + worker, empty_prompt_prob=0.0,
                               view_word_prob=0.0, degrade_prob=0.05)
        while True:
            yield sampler.sample(self.batch)


def evaluate(model: JudgeNet, bank, seed: int, count: int, device, log=print, unlit_prob: float = 0.5) -> dict:
    """Held-out accuracy: CNN shape/pattern; analytic colour on lit and on unlit renders."""
    sampler = SceneSampler(bank.shape.cpu().numpy(), bank.cameras.azimuth.cpu().numpy(), seed=seed,
                           empty_prompt_prob=0.0, view_word_prob=0.0, degrade_prob=0.0)
    generator = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    correct = {"shape": 0, "pattern": 0}
    colour_hits = {"lit": [0, 0], "unlit": [0, 0]}
    confusion = np.zeros((len(PATTERNS), len(PATTERNS)), dtype=np.int64)
    done = 0
    while done < count:
        n = min(250, count - done)
        scenes = sampler.sample(n)
        for lit in (True, False):
            images, coverage = compose(bank, scenes, generator, unlit_prob=0.0 if lit else 1.0)
            with torch.no_grad():
                logits = model(images)
            # The CNN is scored on a mix: the first half of each batch lit, the second half unlit.
            half = slice(0, n // 2) if lit else slice(n // 2, n)
            for name in ("shape", "pattern"):
                pred = logits[name][half].argmax(-1).cpu()
                correct[name] += int((pred == scenes.labels[name][half]).sum())
                if name == "pattern":
                    for t, p in zip(scenes.labels["pattern"][half].tolist(), pred.tolist()):
                        confusion[t, p] += 1
            key = "lit" if lit else "unlit"
            pixels = images.permute(0, 2, 3, 1).cpu().numpy()
            masks = (coverage > 0.99).cpu().numpy()
            for i in range(n):
                _, fractions = judge_colour(pixels[i], masks[i], shaded=lit)
                base, second = COLOURS[int(scenes.labels["colour"][i])], COLOURS[int(scenes.labels["second"][i])]
                if PATTERNS[int(scenes.labels["pattern"][i])] == "plain":
                    hit = max(fractions, key=fractions.get) == base
                else:
                    hit = set(top_colours(fractions, 2)) == {base, second}
                colour_hits[key][0] += int(hit)
                colour_hits[key][1] += 1
        done += n
    result = {
        "shape": correct["shape"] / count, "pattern": correct["pattern"] / count,
        "colour_lit": colour_hits["lit"][0] / colour_hits["lit"][1],
        "colour_unlit": colour_hits["unlit"][0] / colour_hits["unlit"][1],
        "pattern_confusion(rows=true " + ",".join(PATTERNS) + ")": confusion.tolist(),
        "count": count,
    }
    model.train()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--eval-seed", type=int, default=2000)
    parser.add_argument("--views", type=int, default=8000)
    parser.add_argument("--eval-views", type=int, default=1500)
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--deadline", type=float, default=0.0, help="stop training after this many seconds (0: none)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "judge_log.txt", "a")

    def log(message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(args.seed)
    log(f"args {json.dumps(vars(args))}")
    start = time.time()
    bank = build_bank(BankConfig(views=args.views, resolution=64, supersample=2, seed=args.seed,
                                 cameras=JUDGE_CAMERAS), device, log)
    log(f"training bank {len(bank)} views in {time.time() - start:.0f} s")
    model = JudgeNet().to(device)
    log(f"judge params {sum(p.numel() for p in model.parameters()) / 1e6:.3f} M")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    stream = JudgeStream(bank.shape.cpu().numpy(), bank.cameras.azimuth.cpu().numpy(), args.batch, args.seed)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=args.workers,
                                         persistent_workers=args.workers > 0)
    batches = iter(loader)
    generator = torch.Generator(device=device).manual_seed(args.seed + 1)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else \
        torch.autocast(device_type="cpu", enabled=False)
    running = []
    for step in range(args.steps):
        if args.deadline > 0 and time.time() - start > args.deadline:
            log(f"deadline reached: stopped after {step} of {args.steps} steps")
            break
        scenes = next(batches)
        with torch.no_grad():
            images, _ = compose(bank, scenes, generator, unlit_prob=0.4)
            # Mild photometric jitter so that the CNN does not key on exact shading levels.
            gain = 0.85 + 0.3 * torch.rand(images.shape[0], 1, 1, 1, generator=generator, device=device)
            images = (images * gain).clamp(0, 1)
        labels = {k: v.to(device) for k, v in scenes.labels.items()}
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps)) if step > 100 else args.lr * (step + 1) / 100
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            logits = model(images)
        patterned = labels["pattern"] != 0
        loss = (F.cross_entropy(logits["shape"].float(), labels["shape"])
                + F.cross_entropy(logits["pattern"].float(), labels["pattern"])
                + 0.5 * F.cross_entropy(logits["colour"].float(), labels["colour"])
                + 0.5 * (F.cross_entropy(logits["second"].float(), labels["second"], reduction="none")
                         * patterned).sum() / patterned.sum().clamp_min(1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running.append(loss.detach())
        if (step + 1) % 200 == 0:
            log(f"step {step + 1}/{args.steps} loss {torch.stack(running).mean().item():.4f} lr {lr:.2e} "
                f"{time.time() - start:.0f} s")
            running = []
    save_judge(model, out / "judge.safetensors")
    log("saved judge.safetensors")
    del bank
    if device.type == "cuda":
        torch.cuda.empty_cache()
    eval_bank = build_bank(BankConfig(views=args.eval_views, resolution=64, supersample=2, seed=args.eval_seed,
                                      cameras=JUDGE_CAMERAS), device, log)
    from judge.classifier import load_judge

    fp16_model = load_judge(out / "judge.safetensors", device)
    result = evaluate(fp16_model, eval_bank, args.eval_seed, args.eval_images, device, log)
    log(f"held-out (seed {args.eval_seed}) accuracy: {json.dumps(result)}")
    log(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
