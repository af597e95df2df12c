"""Issue 25: job.json fuzzing. Documents from a seeded generator (wrong types, huge, negative and
NaN numbers, deep nesting, unknown keys, long strings, missing fields) run through the real job
runner: every run ends with a documented exit code and an error event, never a traceback, and
nothing outside the job folder changes."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from engine.cli import main
from engine.errors import EXIT_CODES

CASES = 300
SEED = 25
# Every valid-looking job stops at its first step (steps capped at 1) or before: no case may start
# model work for long. A key kept as given is one the generator may also break.
SETTINGS = {
    "texture": {"prompt": "a red cube", "steps": 1, "render_size": 16, "texture_size": 16, "preview_every": 0},
    "generate": {"prompt": "a red cube", "stage1": {"steps": 1}, "stage2": {"steps": 1}, "preview_every": 0},
    "edit": {"target_prompt": "a blue cube", "edit_prompt": "red", "steps": 1},
}


def odd_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(14)
    if kind == 0:
        return rng.choice([math.nan, math.inf, -math.inf])
    if kind == 1:
        return rng.choice([2 ** 70, -(2 ** 70), 10 ** 30, -1, 0, 1e308, -1e-308])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return "x" * rng.choice([0, 1, 3000, 100_000])
    if kind == 4:
        return rng.choice(["cuda:abc", "../../outside", "/etc/passwd", "\u0000", "auto", "1"])
    if kind == 5 and depth < 3:
        return [odd_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 6 and depth < 3:
        return {rng.choice(["a", "steps", "prior", "model", "distance"]): odd_value(rng, depth + 1)
                for _ in range(rng.randrange(3))}
    if kind == 7:
        nesting = rng.choice([20, 5000])
        return json.loads("[" * min(nesting, 900) + "]" * min(nesting, 900))
    if kind == 8:
        return [rng.uniform(-10, 10) for _ in range(rng.choice([1, 2, 3, 16]))]
    if kind == 9:
        return [[rng.choice(["a", 1.0]) for _ in range(4)] for _ in range(4)]
    return rng.choice([rng.randint(-5, 5), rng.uniform(-1e3, 1e3), "", "a"])


SETTING_NAMES = ["prompt", "negative_prompt", "steps", "seed", "device", "render_size", "texture_size",
                 "learning_rate", "preview_every", "cameras", "guidance", "prior", "hash_grid", "extra_cameras",
                 "stage1", "stage2", "extract", "resume", "stages", "stage1_state", "target_prompt",
                 "edit_prompt", "preserve_weight", "fit_steps", "unknown_key"]


def fuzzed_job(rng: random.Random) -> str:
    task = rng.choice(list(SETTINGS))
    settings = json.loads(json.dumps(SETTINGS[task]))
    for _ in range(rng.randrange(1, 4)):
        action = rng.randrange(3)
        name = rng.choice(SETTING_NAMES)
        if action == 0 and settings:
            settings.pop(rng.choice(list(settings)))
        else:
            settings[name] = odd_value(rng)
    if isinstance(settings.get("steps"), int) and not isinstance(settings["steps"], bool):
        settings["steps"] = min(settings["steps"], 1)
    document = {"protocol": 1, "task": task, "mesh": "mesh.npz", "source": "mesh.npz", "settings": settings}
    if rng.random() < 0.15:
        document[rng.choice(["protocol", "task", "mesh", "output", "settings", "extra"])] = odd_value(rng)
    if rng.random() < 0.1:
        document.pop(rng.choice(list(document)))
    text = json.dumps(document, allow_nan=True)
    if rng.random() < 0.03:
        text = "[" * 100_000 + "]" * 100_000
    return text


def listing(folder):
    return sorted((str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns)
                  for path in folder.rglob("*"))


@pytest.fixture
def cheap_runs(monkeypatch):
    """A job that passed every check stops at its first model load: what is under test is that it
    got there through validation, not the model work after it (tests elsewhere run jobs whole)."""
    from engine.errors import Cancelled
    from engine.prior import load

    def refuse(*args, **kwargs):
        raise Cancelled("stopped by the fuzz test before model work")

    monkeypatch.setattr(load, "load_prior", refuse)
    for module in ("texture", "generate", "edit_texture", "edit_geometry"):
        pipeline = __import__(f"engine.pipelines.{module}", fromlist=["load_prior"])
        if hasattr(pipeline, "load_prior"):
            monkeypatch.setattr(pipeline, "load_prior", refuse)


def test_fuzzed_job_files_end_with_a_documented_exit_code(tmp_path, capsys, cheap_runs):
    rng = random.Random(SEED)
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("untouched")
    before = listing(sentinel)
    positions = np.asarray([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    triangles = np.asarray([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int64)
    codes, results_missing = {}, []
    for index in range(CASES):
        job_dir = tmp_path / "jobs" / f"{index:03d}"
        job_dir.mkdir(parents=True)
        np.savez(job_dir / "mesh.npz", positions=positions, triangles=triangles)
        (job_dir / "job.json").write_text(fuzzed_job(rng))
        code = main(["run", str(job_dir)])
        captured = capsys.readouterr()
        assert code in EXIT_CODES and code != 1, (index, (job_dir / "job.json").read_text()[:500], captured.err)
        assert "Traceback" not in captured.err
        events = [json.loads(line) for line in (job_dir / "progress.jsonl").read_text().splitlines()]
        assert code == 0 or any(event["event"] == "error" for event in events), index
        missing_result = [] if (job_dir / "out" / "result.json").is_file() else [index]
        results_missing.extend(missing_result)
        codes[code] = codes.get(code, 0) + 1
    assert listing(sentinel) == before
    assert not results_missing, results_missing
    assert len(codes) >= 2, codes  # the generator reaches more than one outcome
