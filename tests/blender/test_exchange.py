"""The Blender-free half of the add-on (csd_blender/exchange): runs in any Python, no bpy needed."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from conftest import FAKE_ENGINE_SRC, ROOT

sys.path.insert(0, str(ROOT))
from csd_blender.exchange import engine_output, job_folder, progress, queue, result, settings  # noqa: E402


def test_jsonl_tail_handles_partial_lines(tmp_path):
    path = tmp_path / "progress.jsonl"
    tail = progress.JsonlTail(path)
    assert tail.read() == []
    with open(path, "w") as f:
        f.write('{"event": "started", "total_steps": 4, "time": 0}\n{"event": "st')
    assert [e["event"] for e in tail.read()] == ["started"]
    with open(path, "a") as f:
        f.write('ep", "step": 2, "total_steps": 4, "eta_s": 3}\nnot json\n')
    events = tail.read()
    assert [e["event"] for e in events] == ["step"]
    state = progress.JobProgress()
    state.apply_all([{"event": "started", "total_steps": 4}] + events)
    assert state.fraction == 0.5 and state.eta_s == 3
    assert progress.format_duration(3725) == "1:02:05" and progress.format_duration(None) == "--:--"


def test_resolve_inside_refuses_escapes(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"x")
    assert engine_output.resolve_inside(tmp_path / "out", "a.png").name == "a.png"
    for bad in ("../job.json", "/etc/passwd", "x/../../y", ""):
        with pytest.raises(engine_output.UnsafePathError):
            engine_output.resolve_inside(tmp_path / "out", bad)
    os.symlink("/etc", tmp_path / "out" / "link")
    with pytest.raises(engine_output.UnsafePathError):
        engine_output.resolve_inside(tmp_path / "out", "link/passwd")


def _result(tmp_path, doc):
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "result.json").write_text(json.dumps(doc))


def test_interpret_outcomes(tmp_path):
    _result(tmp_path, {"status": "ok", "outputs": {"texture": "t.png", "gone": "g.png"}})
    (tmp_path / "out" / "t.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\0\x01\0\0\0\x01")
    ok = result.interpret(tmp_path, 0)
    assert ok.ok and set(ok.outputs) == {"texture"}  # a named output not written is left out
    _result(tmp_path, {"status": "error", "error": {"kind": "out_of_memory", "message": "OOM.", "hint": ""}})
    oom = result.interpret(tmp_path, 5)
    assert oom.kind == "out_of_memory" and "render size" in oom.hint
    (tmp_path / "out" / "result.json").unlink()
    assert result.interpret(tmp_path, -9).kind == "crashed" and "SIGKILL" in result.interpret(tmp_path, -9).message
    assert result.interpret(tmp_path, 5).kind == "out_of_memory"
    assert result.interpret(tmp_path, 130).status == "cancelled"
    log = tmp_path / "engine.log"
    log.write_text("Traceback...\nModuleNotFoundError: No module named 'torch'\n")
    assert result.interpret(tmp_path, 1, log_path=log).kind == "no_torch"


def test_settings_follow_engine_names():
    scene = {"prompt": " a chair ", "quality": "DRAFT", "seed": 3, "use_controlnet": True, "negative_prompt": "ugly",
             "target_prompt": "a", "edit_prompt": "b", "edit_w1": 1.0, "edit_w2": 0.25}
    prefs = {"device": "cpu", "texture_model": "bundled", "allow_download": False,
             "extra_settings": {"texture": {"guidance": {"t_max": 0.6}}}}
    tex = settings.texture_settings(scene, prefs)
    assert tex["prompt"] == "a chair" and tex["steps"] == settings.PRESETS["DRAFT"].bundled_steps
    assert "render_size" not in tex  # the engine picks the prior's native size
    assert tex["prior"] == {"model": "bundled", "allow_download": False, "controlnets": ["auto"]}
    assert tex["guidance"]["t_max"] == 0.6 and tex["guidance"]["w1"] == 1.0
    gen = settings.generate_settings(scene, prefs)
    assert set(gen) >= {"prompt", "stage1", "stage2"}
    assert "steps" not in gen["stage1"] and "preview_every" not in gen  # the engine's bundled preset decides
    gen = settings.generate_settings(scene, {**prefs, "generate_model": "DeepFloyd/IF-I-XL-v1.0"})
    assert gen["stage1"]["steps"] == 2000 and "steps" not in gen["stage2"]
    edit = settings.edit_settings(scene, prefs)
    assert edit["guidance"] == {"mode": "csd", "w1": 1.0, "w2_start": 0.25, "w2_end": 0.25}


def test_controlnets_are_left_to_the_models_family_unless_named():
    scene = {"prompt": "a chair", "use_controlnet": True}
    prefs = {"texture_model": "stabilityai/stable-diffusion-xl-base-1.0", "controlnet_depth": "",
             "controlnet_canny": ""}
    prior = settings.texture_settings(scene, prefs)["prior"]
    assert prior["controlnets"] == ["auto"] and "controlnet_models" not in prior
    prior = settings.texture_settings(scene, dict(prefs, controlnet_depth="me/depth-xl"))["prior"]
    assert prior["controlnet_models"] == {"depth": "me/depth-xl"}


def test_engine_configs_accept_our_settings():
    """Every key the add-on sends exists in the engine's config dataclasses."""
    engine_python = ROOT / ".venv" / "bin" / "python"
    if not engine_python.exists():
        pytest.skip("no engine venv")
    scene = {"prompt": "a chair", "quality": "CUSTOM", "steps": 5, "render_size": 64, "texture_size": 64,
             "generate_steps": 3, "refine_steps": 2, "edit_steps": 4, "seed": 1, "use_controlnet": True,
             "negative_prompt": "ugly", "target_prompt": "a blue chair", "edit_prompt": "red", "edit_geometry": True}
    prefs = {"device": "cpu", "texture_model": "bundled", "cache_dir": "/tmp/cache",
             "controlnet_depth": "d/d", "controlnet_canny": "c/c", "edit_model": "bundled"}
    payload = json.dumps({"texture": settings.texture_settings(scene, prefs, [{"matrix_world": [[1, 0, 0, 0]] * 4,
                                                                               "fovy_deg": 40.0}]),
                          "generate": settings.generate_settings(scene, prefs),
                          "edit": settings.edit_settings(scene, prefs)})
    code = r"""
import json, sys
from engine.config import EditJobConfig, GenerateJobConfig, TextureJobConfig, update_from_dict
data = json.loads(sys.argv[1])
update_from_dict(TextureJobConfig(prompt="", mesh="m", out="o"), data["texture"])
update_from_dict(GenerateJobConfig(prompt="", out="o"), data["generate"])
update_from_dict(EditJobConfig(source="s", target_prompt="", edit_prompt="", out="o"), data["edit"])
print("ok")
"""
    import subprocess

    run = subprocess.run([str(engine_python), "-c", code, payload], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr


def test_generate_asset_with_the_bundled_prior_runs_the_clis_job():
    """At every quality but Custom, the panel's job is `generate --model bundled` (the engine's preset)."""
    engine_python = ROOT / ".venv" / "bin" / "python"
    if not engine_python.exists():
        pytest.skip("no engine venv")
    payload = json.dumps([settings.generate_settings({"prompt": "a blue cube", "quality": quality},
                                                     {"device": "cpu"}) for quality in ("DRAFT", "STANDARD", "HIGH")])
    code = r"""
import argparse, json, sys
from pathlib import Path
from engine.cli import add_generate_arguments, generate_config_from_args
from engine.config import generate_config_from_job
parser = argparse.ArgumentParser()
add_generate_arguments(parser)
cli = generate_config_from_args(parser.parse_args(["--prompt", "a blue cube", "--model", "bundled", "--out", "o"]))
for job in json.loads(sys.argv[1]):
    config = generate_config_from_job(job, Path("o"))
    assert (config.stage1, config.extract, config.stage2) == (cli.stage1, cli.extract, cli.stage2), job
print("ok")
"""
    import subprocess

    run = subprocess.run([str(engine_python), "-c", code, payload], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr + run.stdout


def test_job_folder_and_mesh(tmp_path):
    np = pytest.importorskip("numpy")
    root = tmp_path / "jobs ü"
    a = job_folder.create_job_dir(root, "texture", "Chaise ü / 椅子")
    b = job_folder.create_job_dir(root, "texture", "Chaise ü / 椅子")
    assert a != b and "椅子" in a.name
    job_folder.write_job(a, "texture", {"prompt": "x"}, mesh="mesh.npz")
    assert json.loads((a / "job.json").read_text())["protocol"] == 1
    with pytest.raises(ValueError):
        job_folder.write_job(a, "texture", {}, mesh="../escape.npz")
    job_folder.write_mesh_npz(a / "mesh.npz", [[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], np.zeros((1, 3, 2)))
    data = np.load(a / "mesh.npz")
    assert data["triangles"].dtype == np.int32 and data["corner_uvs"].shape == (1, 3, 2)


def _queue_job(tmp_path, name, behaviour):
    job_dir = job_folder.create_job_dir(tmp_path / "jobs", "texture", name)
    job_folder.write_job(job_dir, "texture", {"prompt": "x"}, mesh="mesh.npz")
    return queue.Job("texture", name, job_dir, sys.executable, FAKE_ENGINE_SRC,
                     {"CSD_FAKE_ENGINE": json.dumps(behaviour)})


def test_queue_runs_one_at_a_time_and_cancels(tmp_path):
    q = queue.JobQueue()
    first = q.add(_queue_job(tmp_path, "a", {"steps": 100, "step_s": 0.02}))
    second = q.add(_queue_job(tmp_path, "b", {"steps": 1}))
    q.tick()
    assert first.state == queue.RUNNING and second.state == queue.QUEUED
    q.cancel_all()
    assert second.state == queue.CANCELLED  # a queued job is cancelled at once
    deadline = time.monotonic() + 10
    while first.state != queue.CANCELLED:
        assert time.monotonic() < deadline
        q.tick()
        time.sleep(0.02)
    assert not first.job_dir.exists() and not second.job_dir.exists()
