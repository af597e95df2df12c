"""Whole CLI jobs, offline, from local folders in each supported family's real layout (tiny random
models, tests/model_folders.py): texture with SD 1.x and both ControlNets, SD 2.x (epsilon and
v-prediction), SDXL with a ControlNet; generate with an IF stage I and an SD 2.1 stage 2.
Each must end with status ok and its outputs; nothing may reach the network."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from engine.cli import main

CUBE = Path(__file__).resolve().parents[1] / "examples" / "cube.obj"
TINY_TEXTURE = ["--steps", "2", "--texture-size", "32", "--preview-every", "0", "--device", "cpu"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Offline as a user without internet: the hub's offline switch, and any connection fails."""
    def refuse(*args, **kwargs):
        raise OSError("a test job tried to reach the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def finished_ok(out: Path, stderr: str, code: int) -> dict:
    assert code == 0, stderr
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "ok", result["error"]
    for name in result["outputs"].values():
        assert (out / name).is_file(), name
    return result


def run_job(job_dir: Path, task: str, settings: dict, capsys) -> dict:
    """`python -m engine run JOB_DIR`, as the add-on runs a job (ControlNet folders are settings)."""
    job_dir.mkdir(parents=True)
    data = {"protocol": 1, "task": task, "settings": settings}
    if task == "texture":
        shutil.copy(CUBE, job_dir / "cube.obj")
        data["mesh"] = "cube.obj"
    (job_dir / "job.json").write_text(json.dumps(data))
    code = main(["run", str(job_dir)])
    return finished_ok(job_dir / "out", capsys.readouterr().err, code)


@pytest.mark.parametrize("family", ["sd2_base", "sd2_v"])
def test_texture_with_stable_diffusion_2(model_folders, tmp_path, capsys, family):
    """With the default --controlnet auto: SD 2.x has no standard ControlNets, so none are
    attached (SD 1.5's would not fit its UNet) and nothing is looked up."""
    out = tmp_path / "out"
    code = main(["texture", str(CUBE), "--prompt", "a red wooden chair", "--model", str(getattr(model_folders, family)),
                 "--render-size", "32", "--out", str(out), *TINY_TEXTURE])
    result = finished_ok(out, capsys.readouterr().err, code)
    assert result["settings"]["steps"] == 2


def texture_settings(model: Path, controlnets: dict[str, Path], render_size: int) -> dict:
    return {"prompt": "a red wooden chair", "steps": 2, "render_size": render_size, "texture_size": 32,
            "preview_every": 0, "device": "cpu",
            "prior": {"model": str(model), "controlnets": list(controlnets),
                      "controlnet_models": {name: str(path) for name, path in controlnets.items()}}}


def test_texture_with_stable_diffusion_1_and_both_controlnets(model_folders, tmp_path, capsys):
    result = run_job(tmp_path / "job", "texture", texture_settings(model_folders.sd15, model_folders.sd15_controlnets,
                                                                  render_size=64), capsys)
    assert result["settings"]["prior"]["controlnets"] == ["depth", "canny"]


def test_texture_with_sdxl_and_a_controlnet(model_folders, tmp_path, capsys):
    result = run_job(tmp_path / "job", "texture",
                     texture_settings(model_folders.sdxl, {"depth": model_folders.sdxl_controlnet}, render_size=64),
                     capsys)
    assert result["settings"]["prior"]["controlnets"] == ["depth"]


def test_generate_with_deepfloyd_if_then_stable_diffusion_2(model_folders, tmp_path, capsys):
    hash_grid = {"levels": 4, "log2_table_size": 12, "mlp_width": 16}
    settings = {
        "prompt": "a red wooden chair", "device": "cpu", "texture_size": 32, "preview_every": 0,
        "checkpoint_every": 0,
        "stage1": {"steps": 2, "render_size": 16, "samples_per_ray": 32, "occupancy_resolution": 16,
                   "batch_size_no_front": 1, "hash_grid": hash_grid,
                   "prior": {"model": str(model_folders.deepfloyd_if)}},
        "extract": {"resolution": 16, "target_triangles": 200},
        "stage2": {"steps": 2, "render_size": 32, "start_fit_steps": 2, "hash_grid": hash_grid,
                   "prior": {"model": str(model_folders.sd2_base)}},
    }
    result = run_job(tmp_path / "job", "generate", settings, capsys)
    assert result["settings"]["stage1"]["prior"]["model"] == str(model_folders.deepfloyd_if)
    assert result["settings"]["stage2"]["prior"]["model"] == str(model_folders.sd2_base)
