"""Quality benchmark of `generate --model bundled`: shape and colour of the assets, per setting.

Each (variant, prompt, seed) runs as its own `python -m engine run` job (the add-on's path), one
thread per job and `--jobs` jobs at once, with the variant's settings laid over the job's. The
asset is then judged: the judge's shape and colour (judge.results), sphericity, the
share of the area on big flat sides and the taper (judge.geometry; a cube: 0.81, 1 and 1,
a ball: 1, 0 and 1),
and whether the exported GLB is closed. Prints a table and writes rows.jsonl, each run's folder
and a contact sheet of the previews to --out. Runs at the CLI's sizes unless --small.

    python bench/bench_bundled_generate.py --out bench/out-bundled-generate --jobs 2 --seeds 0 1 2 3
    python bench/bench_bundled_generate.py --variants preset --prompts "a blue cube" --seeds 0 1 2 \\
        --variant 'mine={"stage1": {"steps": 600}}'
    python bench/bench_bundled_generate.py --variants "" --stage1-from /tmp/s1 --seeds 0 1 \\
        --variant 'flat={"stage2": {"planar_weight": 300.0}}'   # stage 2 alone, from saved stage-1 states
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from csd_blender.exchange.settings import deep_merge  # noqa: E402  (the add-on's job-settings merge)

# Settings laid over the job's (job.json "settings", nested as GenerateJobConfig), and so over the
# bundled preset the job starts from.
# The sweep of 2026-12-01 (docs/benchmarks.md) chose the preset's stage 2 and its 64^3 grid; these
# are its other variants, each against today's preset.
VARIANTS: dict[str, dict] = {
    "preset": {},
    # The preset before the sixth session: all of the training views in stage 1, t from 0.02, no
    # density opening, no planar regions.
    "old-preset": {"stage1": {"guidance": {"t_min": 0.02}, "elevation_no_front_deg": [-15.0, 55.0],
                              "cameras": {"elevation_deg": [-15.0, 55.0]}},
                   "extract": {"opening_radius": 0.0}, "stage2": {"planar_weight": 0.0}},
    # The isosurface on a 128^3 grid, as before: needles grow where its slivers' vertices move.
    "grid128": {"extract": {"resolution": 128}},
    "grid128-lap10": {"extract": {"resolution": 128}, "stage2": {"laplacian_weight": 10.0}},
    # Stage 1 without the orientation loss (it rounds the box; without it, horns and legs).
    "o0": {"stage1": {"orientation_weight": [0.0, 0.0]}},
    "o0-a400": {"stage1": {"orientation_weight": [0.0, 0.0]}, "stage2": {"normal_consistency_weight": 400.0}},
    # ... and legs opened out of the density before marching cubes.
    "o0-open-a400": {"stage1": {"orientation_weight": [0.0, 0.0]}, "extract": {"opening_radius": 0.06},
                     "stage2": {"normal_consistency_weight": 400.0}},
    # A stage 1 that sees the object from below as often as from above: seen mostly from above, the
    # cheapest density that looks like a box there is a bowl cut away underneath.
    "elev55": {"stage1": {"elevation_no_front_deg": [-55.0, 55.0], "cameras": {"elevation_deg": [-55.0, 55.0]}}},
    "stage1-600": {"stage1": {"steps": 600, "learning_rate": 5e-3}},
    "a400": {"stage2": {"normal_consistency_weight": 400.0}},
    "stage2-500": {"stage2": {"steps": 500}},
    "closeup": {"stage1": {"cameras": {"fovy_deg": [22.0, 32.0]}}},
}
PROMPTS = ("a blue cube", "a red sphere")


def run_one(variant: str, settings: dict, prompt: str, seed: int, out: Path, sizes: dict,
            stage1_from: Path | None = None) -> dict:
    job = out / f"{variant}__{prompt.replace(' ', '_')}__{seed}"
    job.mkdir(parents=True, exist_ok=True)
    if stage1_from is not None:
        state = stage1_from / f"{prompt.replace(' ', '_')}__{seed}" / "stage1.pt"
        sizes = {**sizes, "stages": "2", "stage1_state": str(state.resolve())}
    merged = deep_merge({"prompt": prompt, "seed": seed, "device": "cpu", "preview_every": 0, "checkpoint_every": 0,
                         **sizes}, settings)
    (job / "job.json").write_text(json.dumps({"protocol": 1, "task": "generate", "output": "out",
                                              "settings": merged}, indent=1))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.time()
    process = subprocess.run([sys.executable, "-m", "engine", "run", str(job)], env=env, capture_output=True,
                             text=True)
    row = {"variant": variant, "prompt": prompt, "seed": seed, "wall_s": round(time.time() - start, 1),
           "code": process.returncode}
    if process.returncode != 0:
        row["error"] = (process.stdout + process.stderr)[-600:]
        return row
    row.update(measure(job / "out"))
    return row


def measure(out: Path) -> dict:
    from judge.geometry import flat_share, load_closed_mesh, sphericity, taper
    from judge.results import judge_result

    verdict = judge_result(out)
    mesh = load_closed_mesh(out / "mesh.glb")
    return {"shape": verdict["shape"], "p_shape": round(max(verdict["probabilities"]["shape"].values()), 3),
            "colour": verdict["colour"], "pattern": verdict["pattern"],
            "sphericity": round(sphericity(mesh), 3), "flat": round(flat_share(mesh), 3),
            "taper": round(taper(mesh), 3),
            "watertight": bool(mesh.is_watertight), "triangles": int(len(mesh.faces))}


def contact_sheet(out: Path, rows: list[dict]) -> None:
    from PIL import Image

    tiles = []
    for row in rows:
        path = out / f"{row['variant']}__{row['prompt'].replace(' ', '_')}__{row['seed']}" / "out" / "preview.png"
        if path.is_file():
            image = Image.open(path).convert("RGB")
            tiles.append(image.crop((0, 0, image.width // 2, image.height // 2)).resize((256, 256)))
    if not tiles:
        return
    columns = 4
    sheet = Image.new("RGB", (256 * columns, 256 * ((len(tiles) + columns - 1) // columns)), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (256 * (i % columns), 256 * (i // columns)))
    sheet.save(out / "sheet.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "bench" / "out-bundled-generate"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from VARIANTS")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help="an extra variant: its settings as JSON")
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    parser.add_argument("--small", action="store_true",
                        help="a 4000-triangle mesh and 128 px texture (default: the CLI's sizes)")
    parser.add_argument("--stage1-from", type=Path, default=None, metavar="DIR",
                        help="run stage 2 only, from DIR/PROMPT__SEED/stage1.pt (PROMPT with _ for spaces), "
                             "e.g. the job folders of `generate --stages 1`: a sweep of stage-2 settings")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the judge runs in this process, beside the jobs

    variants = {name: VARIANTS[name] for name in args.variants.split(",") if name}
    for item in args.variant:
        name, _, text = item.partition("=")
        variants[name] = json.loads(text)
    sizes = {"texture_size": 128, "extract": {"target_triangles": 4000}} if args.small else {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = [(name, settings, prompt, seed) for name, settings in variants.items() for prompt in args.prompts
            for seed in args.seeds]
    rows = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool, open(out / "rows.jsonl", "a") as log:
        futures = [pool.submit(run_one, *item, out, sizes, args.stage1_from) for item in work]
        for future in concurrent.futures.as_completed(futures):
            row = future.result()
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps(row), flush=True)
    order = {(name, prompt, seed): i for i, (name, _, prompt, seed) in enumerate(work)}
    rows.sort(key=lambda r: order[(r["variant"], r["prompt"], r["seed"])])
    contact_sheet(out, rows)
    print("\n| variant | prompt | seed | judge shape (p) | colour | sphericity | flat | taper | closed | wall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["code"] != 0:
            print(f"| {r['variant']} | {r['prompt']} | {r['seed']} | failed (exit {r['code']}) | | | | | | {r['wall_s']} s |")
            continue
        print(f"| {r['variant']} | {r['prompt']} | {r['seed']} | {r['shape']} ({r['p_shape']}) | {r['colour']} | "
              f"{r['sphericity']} | {r['flat']} | {r['taper']} | {'yes' if r['watertight'] else 'no'} | {r['wall_s']} s |")


if __name__ == "__main__":
    main()
