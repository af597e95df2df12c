"""The paper's Table 2 in miniature: attribute prompts textured with the bundled prior, judged.

    .venv/bin/python bench/table2_attributes.py --out out/table2 [--steps 100] [--limit N] [--docs docs/benchmarks.md]

40 attribute prompts ("a red sphere", "a green checkered cube", "a black and white striped cube",
...) are each textured onto a mesh of the named shape (`python -m engine texture ... --model
bundled`, run in-process, CPU, seed 0) with four methods:

  CSD              Eq. 7: w1 = 1, no negative prompt (--w2-start 0 --w2-end 0)
  CSD + neg        Eq. 10 with the engine's default annealed negative prompt
                   ("oversaturated color, ugly, tiling, low quality, noisy", w2 1 -> 0.5 over the job)
  SDS 7.5          Eq. 6 with the engine's --cfg-scale 7.5 (paper's w = 6.5)
  SDS 100          Eq. 6 with --cfg-scale 100 (w = 99, DreamFusion's setting)

Each result is rendered unlit from 8 views and judged by judge (no weights shared with
the prior): colour from analytic statistics, pattern and shape from the judge's classifier.
Reported per method: attribute accuracy (colour, pattern, shape, all three) and R-precision
in the paper's sense (R = 1): the judge scores every prompt of the set against each result and
the result counts when its own prompt scores strictly best; "R-prec." uses all of the prompt
(shape too), "R-prec. (no shape)" only colours and pattern.

Results are cached per job in --out (delete a job folder to redo it); --docs rewrites the
section between the markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPTS = [
    # plain: every colour once
    "a red sphere", "a green cube", "a blue cylinder", "a yellow cone", "an orange torus", "a purple sphere",
    "a pink cube", "a brown cylinder", "a white cone", "a black torus", "a gray sphere", "a cyan cube",
    # striped
    "a red striped cube", "a blue striped sphere", "a green striped cylinder", "a yellow striped cone",
    "a purple striped torus", "a black and white striped cube", "a red and yellow striped sphere",
    "a blue and orange striped cylinder", "a green and black striped cone", "a pink and purple striped cube",
    # checkered
    "a green checkered cube", "a red checkered sphere", "a blue checkered cylinder", "an orange checkered cone",
    "a black and white checkered cube", "a yellow and blue checkered sphere", "a red and black checkered cylinder",
    "a cyan and purple checkered cube", "a brown checkered torus",
    # dotted
    "a red dotted sphere", "a blue dotted cube", "a yellow dotted cone", "a green dotted cylinder",
    "a pink dotted torus", "a black and white dotted sphere", "a purple and yellow dotted cube",
    "a brown and white dotted cylinder", "an orange dotted cube",
]

METHODS = {
    "CSD": ["--guidance", "csd", "--w2-start", "0", "--w2-end", "0"],
    "CSD + neg": ["--guidance", "csd"],
    "SDS 7.5": ["--guidance", "sds", "--cfg-scale", "7.5"],
    "SDS 100": ["--guidance", "sds", "--cfg-scale", "100"],
}

BEGIN = "<!-- table2-attributes:begin -->"
END = "<!-- table2-attributes:end -->"


def mesh_for(shape: str, folder: Path) -> tuple[Path, str]:
    """(mesh file, its up axis): the README's examples for sphere and cube, canonical primitives else."""
    if shape in ("sphere", "cube"):
        return ROOT / "examples" / f"{shape}.obj", "Y"
    path = folder / f"{shape}.obj"
    if not path.exists():
        import trimesh

        from training.bundled_prior.world import make_shape

        mesh = make_shape(shape)
        folder.mkdir(parents=True, exist_ok=True)
        trimesh.Trimesh(mesh.positions, mesh.triangles, process=False).export(path)
    return path, "Z"


def run_job(prompt: str, method: str, out: Path, steps: int, seed: int, meshes: Path) -> Path:
    from engine.cli import main as engine_main
    from judge import parse_prompt

    job = out / "jobs" / method.replace(" ", "_").replace("+", "plus").replace(".", "_") / \
        prompt.replace(" ", "_").replace(",", "")
    if (job / "result.json").is_file() and json.loads((job / "result.json").read_text()).get("status") == "ok":
        return job
    mesh, up_axis = mesh_for(parse_prompt(prompt)["shape"], meshes)
    argv = ["texture", str(mesh), "--prompt", prompt, "--model", "bundled", "--out", str(job), "--steps", str(steps),
            "--render-size", "64", "--texture-size", "128", "--seed", str(seed), "--preview-every", "0",
            "--device", "cpu", "--up-axis", up_axis] + METHODS[method]
    start = time.time()
    stdout = sys.stdout
    with open(os.devnull, "w") as sink:
        sys.stdout = sink
        try:
            code = engine_main(argv)
        finally:
            sys.stdout = stdout
    if code != 0:
        raise RuntimeError(f"job failed ({code}): {' '.join(argv)}")
    print(f"  {method:10s} {prompt!r}: {time.time() - start:.0f} s", flush=True)
    return job


def judge_job(job: Path, judge) -> dict:
    from judge.results import judge_result

    cached = job / "judge.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    result = judge_result(job, judge=judge)
    summary = {k: result[k] for k in ("shape", "pattern", "colour", "colours", "colour_fractions", "pattern_score")}
    summary["probabilities"] = result["probabilities"]
    summary["texture_colour"] = result["texture_colour"][0]
    cached.write_text(json.dumps(summary))
    return summary


def evaluate(prompts: list[str], judged: dict[str, list[dict]]) -> dict[str, dict]:
    from judge import attribute_accuracy, parse_prompt, r_precision

    table = {}
    for method, predictions in judged.items():
        rows = [attribute_accuracy(p, prompt) for p, prompt in zip(predictions, prompts)]
        table[method] = {
            "colour": float(np.mean([r["colour"] for r in rows])),
            "pattern": float(np.mean([r["pattern"] for r in rows])),
            "shape": float(np.mean([r["shape"] for r in rows])),
            "all": float(np.mean([all(r.values()) for r in rows])),
            "r_precision": r_precision(predictions, prompts),
            "r_precision_no_shape": r_precision(predictions, prompts, use_shape=False),
            "pattern_accuracy_patterned": float(np.mean([r["pattern"] for r, p in zip(rows, prompts)
                                                         if parse_prompt(p)["pattern"] != "plain"] or [np.nan])),
            "colour_accuracy_plain": float(np.mean([r["colour"] for r, p in zip(rows, prompts)
                                                    if parse_prompt(p)["pattern"] == "plain"] or [np.nan])),
        }
    return table


def job_seconds(out: Path) -> list[float]:
    """Each cached job's own wall time (result.json timings.total_s)."""
    seconds = []
    for path in (out / "jobs").glob("*/*/result.json"):
        seconds.append(float(json.loads(path.read_text()).get("timings", {}).get("total_s", 0.0)))
    return seconds


def markdown(prompts: list[str], judged: dict[str, list[dict]], table: dict[str, dict], args) -> str:
    lines = [BEGIN, "## Table 2 in miniature: attribute prompts with the bundled prior (issue 3)", ""]
    seconds = job_seconds(Path(args.out))
    lines.append(f"**Date:** {time.strftime('%Y-%m-%d')}. **Machine:** CPU ({platform.processor() or platform.machine()}, "
                 f"{os.cpu_count()} cores, shared with other work), torch {torch.__version__}. "
                 f"{len(prompts)} prompts x {len(judged)} methods, {args.steps} steps each, 64 px renders, "
                 f"128 px textures, seed {args.seed}, one run. Texture jobs took {np.mean(seconds):.0f} s each "
                 f"on average ({min(seconds):.0f}-{max(seconds):.0f} s; {sum(seconds) / 60:.0f} min in all).")
    lines += ["", "**Command:**", "", "```",
              f".venv/bin/python bench/table2_attributes.py --out {args.out} --steps {args.steps} "
              f"--docs docs/benchmarks.md", "```", ""]
    lines += ["| method | colour acc. | pattern acc. | shape acc. | all three | R-prec. | R-prec. (no shape) "
              "| pattern acc. (patterned prompts) | colour acc. (plain prompts) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for method, row in table.items():
        lines.append(f"| {method} | {row['colour']:.2f} | {row['pattern']:.2f} | {row['shape']:.2f} | {row['all']:.2f} "
                     f"| {row['r_precision']:.2f} | {row['r_precision_no_shape']:.2f} "
                     f"| {row['pattern_accuracy_patterned']:.2f} | {row['colour_accuracy_plain']:.2f} |")
    lines += ["", "Read automatically off the table and the per-prompt verdicts:", ""]
    lines += [f"- {line}" for line in observations(prompts, judged, table)]
    lines += ["", "<details><summary>Per prompt: the judge's (pattern, colours) for each method</summary>", "",
              "| prompt | " + " | ".join(judged) + " |", "|---|" + "---|" * len(judged)]
    for i, prompt in enumerate(prompts):
        cells = [f"{judged[m][i]['pattern']}, {'+'.join(judged[m][i]['colours'])}" for m in judged]
        lines.append(f"| {prompt} | " + " | ".join(cells) + " |")
    lines += ["", "</details>", "", END]
    return "\n".join(lines)


def observations(prompts: list[str], judged: dict[str, list[dict]], table: dict[str, dict]) -> list[str]:
    """Which method is best per metric, and every prompt where an SDS row got all attributes right
    and a CSD row did not (and the reverse count)."""
    from judge import attribute_accuracy

    notes = []
    metrics = {"colour": "colour accuracy", "pattern": "pattern accuracy", "all": "all-three accuracy",
               "r_precision": "R-precision", "r_precision_no_shape": "R-precision without shape"}
    for key, label in metrics.items():
        best = max(row[key] for row in table.values())
        winners = [m for m, row in table.items() if row[key] == best]
        notes.append(f"best {label}: {', '.join(winners)} ({best:.2f})")
    right = {m: [all(attribute_accuracy(p, prompt).values()) for p, prompt in zip(judged[m], prompts)]
             for m in judged}
    csd_methods = [m for m in judged if m.startswith("CSD")]
    sds_methods = [m for m in judged if m.startswith("SDS")]
    for sds in sds_methods:
        for csd in csd_methods:
            sds_only = [prompts[i] for i in range(len(prompts)) if right[sds][i] and not right[csd][i]]
            csd_only = sum(1 for i in range(len(prompts)) if right[csd][i] and not right[sds][i])
            where = "; ".join(sds_only) if sds_only else "nowhere"
            notes.append(f"{sds} right and {csd} wrong: {len(sds_only)} prompt(s) ({where}); the reverse: "
                         f"{csd_only}")
    return notes


def write_docs(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/table2")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="only the first N prompts (0: all)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--docs", default=None, help="rewrite this markdown file's Table-2 section")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    prompts = PROMPTS[: args.limit] if args.limit else PROMPTS
    methods = [m.strip() for m in args.methods.split(",")]
    from judge import AttributeJudge

    judge = AttributeJudge.load()
    judged: dict[str, list[dict]] = {m: [] for m in methods}
    for prompt in prompts:
        for method in methods:
            job = run_job(prompt, method, out, args.steps, args.seed, out / "meshes")
            judged[method].append(judge_job(job, judge))
    table = evaluate(prompts, judged)
    (out / "table2.json").write_text(json.dumps({"prompts": prompts, "table": table, "judged": judged}, indent=1))
    print(json.dumps(table, indent=1))
    if args.docs:
        write_docs(Path(args.docs), markdown(prompts, judged, table, args))
        print(f"wrote {args.docs}")


if __name__ == "__main__":
    main()
