"""Where a stage-1 step's time goes: torch.profiler over a few steps of bench_generate's stage-1 step
(full-size IF-I-XL-sized UNet at random weights, the initial density blob), for the job's two
batches: Perp-Neg (batch 1, five predictions) and prompts without a clear front (batch 4, three).
Prints, per row, the step's wall time, the GPU's busy time (the union of its kernels' intervals)
and the top operators by their own GPU time, so it shows whether the UNet, the field's samples or
idle gaps (the CPU waiting on a host sync) make the step slow.

    python3 bench/profile_generate_step.py --steps 5
    python bench/profile_generate_step.py --smoke     # toy sizes, CPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import (IF_I_XL, NO_FRONT_BATCH, SMOKE_IF, T5_XXL, build_nerf, build_pixel_prior,  # noqa: E402
                            stage1_step, synchronize)
from engine.prior.fast.graphed import use_cuda_graphs  # noqa: E402


def busy_ms(events, device_type: str) -> float:
    """The union of the device kernels' intervals, in ms (overlapping kernels counted once)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type.name == device_type and e.time_range.end > e.time_range.start)
    total, end = 0.0, None
    for start, stop in spans:
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total / 1000.0


def profile_row(name: str, step, steps: int, device: torch.device, top: int) -> None:
    for _ in range(3):
        step()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        begin = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        wall = (time.perf_counter() - begin) * 1000.0 / steps
    events = prof.events()
    busy = busy_ms(events, "CUDA") / steps if device.type == "cuda" else float("nan")
    print(f"\n### {name}: wall {wall:.1f} ms a step, GPU busy {busy:.1f} ms ({busy / wall:.0%})\n")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=top, max_name_column_width=60)
    print(table, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per row (after 3 warm-up steps)")
    parser.add_argument("--top", type=int, default=25, help="operators listed per row")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    generator = torch.Generator().manual_seed(0)
    text = dict(tokens=8, width=32) if args.smoke else T5_XXL
    prior = build_pixel_prior(SMOKE_IF if args.smoke else IF_I_XL, device, dtype)
    use_cuda_graphs(prior, device.type == "cuda")
    embeddings = torch.randn(7, text["tokens"], text["width"], generator=generator).to(device, dtype)
    size = 16 if args.smoke else 64
    for name, perp_neg, batch in (("stage 1 + Perp-Neg, batch 1", True, 1),
                                  (f"stage 1, batch {NO_FRONT_BATCH} (no clear front)", False, NO_FRONT_BATCH)):
        model = build_nerf(device, args.smoke, False)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-15)
        step, _ = stage1_step(model, prior, embeddings, perp_neg, True, size, batch, optimizer, generator, device)
        profile_row(name, step, args.steps, device, args.top)


if __name__ == "__main__":
    main()
