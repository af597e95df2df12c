"""The engine's command line: results, and a clear message plus a documented exit code for
every bad input, never a traceback, never half-written files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main

REPO = Path(__file__).resolve().parents[1]
CUBE = REPO / "examples" / "cube.obj"
FAST = ["--steps", "4", "--render-size", "32", "--texture-size", "64", "--preview-every", "0", "--device", "cpu"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def result_of(out_dir):
    return json.loads((Path(out_dir) / "result.json").read_text())


def test_texture_writes_every_output(tmp_path, tiny_pixel_prior, capsys):
    out = tmp_path / "out dir ü"  # spaces and non-ASCII in paths work
    code, stdout, stderr = run_cli(["texture", CUBE, "--prompt", "a red cube", "--model", tiny_pixel_prior,
                                    "--out", out, *FAST], capsys)
    assert code == 0, stderr
    result = result_of(out)
    assert result["status"] == "ok" and result["protocol"] == 1
    for key in ("glb", "obj", "mtl", "texture", "preview", "state", "corner_uvs"):
        assert (out / result["outputs"][key]).is_file(), key
    events = [json.loads(line)["event"] for line in stdout.splitlines() if line.startswith("{")]
    assert events[0] == "started" and events[-1] == "finished" and "step" in events
    assert "Traceback" not in stderr


def test_texture_is_deterministic_for_a_seed(tmp_path, tiny_pixel_prior, capsys):
    textures = []
    for name in ("a", "b"):
        code, _, err = run_cli(["texture", CUBE, "--prompt", "a red cube", "--model", tiny_pixel_prior,
                                "--out", tmp_path / name, "--seed", "3", *FAST], capsys)
        assert code == 0, err
        from PIL import Image
        textures.append(np.asarray(Image.open(tmp_path / name / "texture.png")))
    assert np.array_equal(textures[0], textures[1])


def write_obj(path, vertices, faces):
    lines = [f"v {x} {y} {z}" for x, y, z in vertices] + [f"f {a} {b} {c}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("case,expected", [
    ("missing", "not found"),
    ("garbage", ""),
    ("no_faces", "no faces"),
    ("nan", "NaN"),
    ("degenerate", "degenerate"),
])
def test_bad_meshes_give_one_line_and_exit_2(tmp_path, tiny_pixel_prior, capsys, case, expected):
    if case == "missing":
        mesh = tmp_path / "nope.obj"
    elif case == "garbage":
        mesh = tmp_path / "garbage.glb"
        mesh.write_bytes(b"\x00\x01not a mesh at all" * 10)
    elif case == "no_faces":
        mesh = tmp_path / "points.obj"
        mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    elif case == "nan":
        mesh = write_obj(tmp_path / "nan.obj", [(0, 0, 0), (1, 0, 0), ("nan", 1, 0)], [(1, 2, 3)])
    else:
        mesh = write_obj(tmp_path / "flat.obj", [(0, 0, 0), (1, 0, 0), (2, 0, 0)], [(1, 2, 3)])
    out = tmp_path / "out"
    code, _, stderr = run_cli(["texture", mesh, "--prompt", "a cube", "--model", tiny_pixel_prior, "--out", out,
                               *FAST], capsys)
    assert code == 2
    assert "Traceback" not in stderr
    first = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(first) == 1 and expected.lower() in first[0].lower()
    assert any(line.startswith("hint:") for line in stderr.splitlines())
    result = result_of(out)
    assert result["status"] == "error" and result["error"]["kind"] == "bad_input"


def test_empty_prompt(tmp_path, tiny_pixel_prior, capsys):
    code, _, stderr = run_cli(["texture", CUBE, "--prompt", "  ", "--model", tiny_pixel_prior,
                               "--out", tmp_path / "o", *FAST], capsys)
    assert code == 2 and "prompt is empty" in stderr


def test_unknown_model_says_what_to_download(tmp_path, capsys):
    code, _, stderr = run_cli(["texture", CUBE, "--prompt", "a cube", "--model", "nobody/no-such-model",
                               "--out", tmp_path / "o", *FAST], capsys)
    assert code == 3
    assert "python -m engine models download nobody/no-such-model --allow-download" in stderr
    assert result_of(tmp_path / "o")["error"]["kind"] == "model_not_found"


def test_missing_local_model_folder(tmp_path, capsys):
    code, _, stderr = run_cli(["texture", CUBE, "--prompt", "a cube", "--model", str(tmp_path / "models" / "x"),
                               "--out", tmp_path / "o", *FAST], capsys)
    assert code == 3 and "not on this machine" in stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_but_absent(tmp_path, tiny_pixel_prior, capsys):
    args = [a if a != "cpu" else "cuda" for a in FAST]
    code, _, stderr = run_cli(["texture", CUBE, "--prompt", "a cube", "--model", tiny_pixel_prior,
                               "--out", tmp_path / "o", *args], capsys)
    assert code == 4 and "CUDA" in stderr and "--device cpu" in stderr


def test_out_of_memory_is_reported_with_a_hint(tmp_path, capsys):
    from engine.job.progress import CancelToken, ProgressReporter
    from engine.job.runner import run_pipeline

    def pipeline(context):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    code = run_pipeline("texture", {}, tmp_path / "o", "cpu", pipeline, ProgressReporter(), CancelToken())
    stderr = capsys.readouterr().err
    assert code == 5 and "--render-size" in stderr
    assert result_of(tmp_path / "o")["error"]["kind"] == "out_of_memory"


def test_peak_gpu_memory_is_reported_for_cuda_jobs_only(tmp_path):
    from engine.job.progress import CancelToken, ProgressReporter
    from engine.job.runner import run_pipeline

    held = []

    def pipeline(context):
        held.append(torch.ones(2 ** 28, dtype=torch.uint8, device=context.device))  # 0.25 GiB
        return {}

    run_pipeline("texture", {}, tmp_path / "cpu", "cpu", pipeline, ProgressReporter(), CancelToken())
    assert "peak_gpu_memory_gib" not in result_of(tmp_path / "cpu")
    if torch.cuda.is_available():
        run_pipeline("texture", {}, tmp_path / "gpu", "cuda", pipeline, ProgressReporter(), CancelToken())
        assert result_of(tmp_path / "gpu")["peak_gpu_memory_gib"] >= 0.25


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path, tiny_pixel_prior, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, stderr = run_cli(["texture", CUBE, "--prompt", "a cube", "--model", tiny_pixel_prior,
                                   "--out", locked / "o", *FAST], capsys)
    finally:
        locked.chmod(0o700)
    assert code == 6 and "Cannot write" in stderr


def test_output_folder_that_is_a_file(tmp_path, tiny_pixel_prior, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    code, _, stderr = run_cli(["texture", CUBE, "--prompt", "a cube", "--model", tiny_pixel_prior,
                               "--out", target, *FAST], capsys)
    assert code == 6 and target.read_text() == "x"


def test_refused_run_keeps_a_finished_set_but_replaces_an_unfinished_one(tmp_path, tiny_pixel_prior, capsys):
    out = tmp_path / "o"
    code, _, _ = run_cli(["texture", CUBE, "--prompt", "a cube", "--model", tiny_pixel_prior, "--out", out, *FAST],
                         capsys)
    assert code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = ["texture", tmp_path / "missing.obj", "--prompt", "a cube", "--model", tiny_pixel_prior,
               "--out", out, *FAST]
    code, _, err = run_cli(refused, capsys)
    assert code == 2 and "missing.obj" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the finished set, byte for byte
    (out / "result.json").write_text(json.dumps({"status": "cancelled"}))
    code, _, _ = run_cli(refused, capsys)
    assert code == 2
    # An unfinished set is replaced as a unit: the refused run's result.json alone.
    assert [p.name for p in out.iterdir()] == ["result.json"] and result_of(out)["status"] == "error"


def write_job(job_dir, data, mesh=True):
    job_dir.mkdir(parents=True, exist_ok=True)
    if mesh:
        from engine.mesh.load import load_mesh
        loaded, _ = load_mesh(CUBE)
        np.savez(job_dir / "mesh.npz", positions=loaded.positions, triangles=loaded.triangles)
    (job_dir / "job.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return job_dir


def job(settings, **extra):
    return {"protocol": 1, "task": "texture", "mesh": "mesh.npz", "settings": settings, **extra}


def test_run_job_folder(tmp_path, tiny_pixel_prior, capsys):
    settings = {"prompt": "a red cube", "steps": 3, "render_size": 32, "texture_size": 64, "device": "cpu",
                "preview_every": 2, "prior": {"model": str(tiny_pixel_prior)}}
    job_dir = write_job(tmp_path / "job", job(settings))
    code, _, err = run_cli(["run", job_dir], capsys)
    assert code == 0, err
    result = result_of(job_dir / "out")
    assert result["status"] == "ok" and result["settings"]["steps"] == 3
    events = [json.loads(line) for line in (job_dir / "progress.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events][0] == "started" and events[-1]["event"] == "finished"
    preview = [e for e in events if e["event"] == "preview"]
    # Live previews are named inside the run's partial folder; once it is swapped in they are in the set.
    live = Path(preview[0]["path"]) if preview else None
    assert live is not None and live.parts[0].startswith(".partial-")
    assert (job_dir / "out" / Path(*live.parts[1:])).is_file()
    uvs = np.load(job_dir / "out" / "corner_uvs.npy")
    assert uvs.shape == (np.load(job_dir / "mesh.npz")["triangles"].shape[0], 3, 2)


@pytest.mark.parametrize("data,message", [
    ("{not json", "not valid JSON"),
    ({"protocol": 99, "task": "texture", "mesh": "mesh.npz", "settings": {"prompt": "x"}}, "newer"),
    ({"task": "texture", "mesh": "mesh.npz", "settings": {"prompt": "x"}}, "protocol"),
    (job({"prompt": "x"}, output="../escape"), "outside the job folder"),
    ({"protocol": 1, "task": "texture", "mesh": "/etc/passwd", "settings": {"prompt": "x"}}, "absolute"),
    ({"protocol": 1, "task": "texture", "mesh": "../../mesh.npz", "settings": {"prompt": "x"}}, "outside"),
    (job({"prompt": "x", "colour": "red"}), "Unknown setting"),
    ({"protocol": 1, "task": "paint", "settings": {}}, "task"),
])
def test_bad_job_files_exit_7_or_2(tmp_path, capsys, data, message):
    job_dir = write_job(tmp_path / "job", data)
    code, _, stderr = run_cli(["run", job_dir], capsys)
    assert code in (7, 2)
    assert message.lower() in stderr.lower()
    assert "Traceback" not in stderr
    assert not (tmp_path / "escape").exists()


def test_sigint_cancels_within_two_seconds(tmp_path, tiny_pixel_prior):
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "engine", "texture", str(CUBE), "--prompt", "a cube",
                                "--model", str(tiny_pixel_prior), "--out", str(out), "--steps", "100000",
                                "--render-size", "32", "--texture-size", "64", "--device", "cpu"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in process.stdout:
        if '"event": "step"' in line:
            break
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    finished = None
    for line in process.stdout:
        if '"event": "finished"' in line:
            finished = time.monotonic() - sent  # the job has stopped and result.json is written
            break
    process.wait(timeout=30)
    assert process.returncode == 130
    assert finished is not None and finished < 2.0, finished
    result = result_of(out)
    assert result["status"] == "cancelled"
    assert "Traceback" not in process.stderr.read()
