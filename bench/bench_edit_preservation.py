"""The edit job's preservation weight, measured: "a red striped sphere" -> target "a blue striped
sphere", edit prompt "red" (paper Eq. 11, w1 = 1, w2 = 0.5), with the bundled prior on the CPU,
for several --preserve-weight values. Writes a Markdown table (docs/edit.md quotes it).

    python bench/bench_edit_preservation.py [--out DIR] [--weights 0,5,20,100] [--steps 150]

What is measured on each result's texture, over the texels its UV layout uses:
  red -> blue      fraction of the source's red texels that are blue now (the edit asked for this)
  white kept       fraction of the source's white texels still white (the prompts never mention it)
  drift on white   mean absolute RGB change on those white texels (0..1)
and from judge's renders: the two dominant colours and the pattern score (stripes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.cli import main  # noqa: E402
from judge import PALETTE  # noqa: E402
from judge.colour import srgb_to_lab  # noqa: E402
from judge.results import _used_texels, judge_result  # noqa: E402

GRID = {"levels": 12, "log2_table_size": 16}


def nearest_names(texture: np.ndarray) -> np.ndarray:
    names = list(PALETTE)
    lab = srgb_to_lab(texture.astype(np.float64) / 255.0)
    palette = srgb_to_lab(np.array([PALETTE[n] for n in names]))
    return np.array(names)[((lab[..., None, :] - palette) ** 2).sum(-1).argmin(-1)]


def texture_of(folder: Path) -> np.ndarray:
    return np.asarray(Image.open(folder / "texture.png").convert("RGB"))


def run_job(job_dir: Path, job: dict) -> float:
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text(json.dumps(job))
    start = time.monotonic()
    code = main(["run", str(job_dir)])
    if code != 0:
        raise SystemExit((job_dir / "out" / "result.json").read_text())
    return time.monotonic() - start


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/out-edit-preservation")
    parser.add_argument("--weights", default="0,5,20,100")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = Path(args.out)
    source_job = root / "source"
    if not (source_job / "out" / "state.pt").is_file():
        shutil.rmtree(source_job, ignore_errors=True)
        source_job.mkdir(parents=True)
        shutil.copy(ROOT / "examples" / "sphere.obj", source_job / "sphere.obj")
        run_job(source_job, {"protocol": 1, "task": "texture", "mesh": "sphere.obj", "settings": {
            "prompt": "a red striped sphere", "device": "cpu", "preview_every": 0, "hash_grid": GRID,
            "seed": args.seed, "prior": {"model": "bundled"}}})
    source = source_job / "out"
    used = _used_texels(source)
    before = nearest_names(texture_of(source))
    red, white = used & (before == "red"), used & (before == "white")
    judged = judge_result(source)
    rows = [("source", "-", "-", "-", " ".join(judged["colours"]), f"{judged['pattern_score']:.3f}", "-")]
    for weight in [float(w) for w in args.weights.split(",")]:
        job_dir = root / f"preserve_{weight:g}"
        shutil.rmtree(job_dir, ignore_errors=True)
        shutil.copytree(source, job_dir / "source")
        seconds = run_job(job_dir, {"protocol": 1, "task": "edit", "source": "source", "settings": {
            "target_prompt": "a blue striped sphere", "edit_prompt": "red", "steps": args.steps, "device": "cpu",
            "preview_every": 0, "preserve_weight": weight, "seed": args.seed}})
        out = job_dir / "out"
        after_texture = texture_of(out)
        after = nearest_names(after_texture)
        drift = np.abs(after_texture[white].astype(np.float64) - texture_of(source)[white]).mean() / 255.0
        judged = judge_result(out)
        rows.append((f"{weight:g}", f"{(after[red] == 'blue').mean():.2f}", f"{(after[white] == 'white').mean():.2f}",
                     f"{drift:.3f}", " ".join(judged["colours"]), f"{judged['pattern_score']:.3f}", f"{seconds:.0f}"))
    header = ("preserve weight", "red -> blue", "white kept", "drift on white", "judge colours", "pattern score",
              "edit s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    table = "\n".join(lines)
    (root / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main_bench()
