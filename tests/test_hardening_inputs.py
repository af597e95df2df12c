"""Issue 25, findings 1 and 2: no code runs from a crafted state file, and no file of a job is
read or written outside its folder or through a link.

Each case stops before a model is loaded (a missing model would end in exit 3 instead), so the
suite needs no prior and runs in a few seconds.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.config import HashGridConfig, to_dict
from engine.field.texture_field import TextureField
from engine.job.protocol import result_document, write_result
from engine.mesh.export import write_obj
from engine.mesh.types import Normalization, TriangleMesh

MISSING_MODEL = "/nonexistent/csd-model"  # an honest source gets past its checks and stops here (exit 3)


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err


class RunsCode:
    """Unpickled by a full unpickler, creates `sentinel`: what a crafted state file would do."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return exec, (f"open({self.sentinel!r}, 'w').close()",)


def crafted_state(path: Path, sentinel: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": "generate-stage1", "version": 1, "step": 0, "complete": True, "payload": RunsCode(sentinel)},
               path)
    return path


def write_job(job_dir: Path, document: dict) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text(json.dumps({"protocol": 1, **document}))
    return job_dir


def saved_generate_run(out: Path) -> None:
    """What a cancelled generate run leaves for --resume: its settings (and, here, a crafted state)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate_config.json").write_text(json.dumps({"prompt": "a chair", "device": "cpu"}))
    write_result(out, result_document("generate", "cancelled", {"config": "generate_config.json",
                                                               "state_stage1": "stage1.pt"}, {}, {}))


# --- 1. No code from a crafted state ------------------------------------------------------------

def test_stage1_state_outside_the_job_folder_is_refused(tmp_path, capsys):
    sentinel = tmp_path / "ran"
    crafted_state(tmp_path / "elsewhere" / "stage1.pt", sentinel)
    for name, stage1_state in (("relative", "../elsewhere/stage1.pt"),
                               ("absolute", str(tmp_path / "elsewhere" / "stage1.pt"))):
        job = write_job(tmp_path / name, {"task": "generate", "settings": {
            "prompt": "a chair", "stages": "2", "stage1_state": stage1_state, "device": "cpu"}})
        code, stderr = run_cli(["run", job], capsys)
        assert code == 7 and "stage1_state" in stderr and "outside" in stderr, stderr
        assert not sentinel.exists()


def test_stage1_state_through_a_link_in_the_job_folder_is_refused(tmp_path, capsys):
    sentinel = tmp_path / "ran"
    target = crafted_state(tmp_path / "elsewhere" / "stage1.pt", sentinel)
    job = write_job(tmp_path / "job", {"task": "generate", "settings": {
        "prompt": "a chair", "stages": "2", "stage1_state": "stage1.pt", "device": "cpu"}})
    (job / "stage1.pt").symlink_to(target)
    code, stderr = run_cli(["run", job], capsys)
    assert code == 7 and "link" in stderr, stderr
    assert not sentinel.exists()


def test_resume_from_a_crafted_state_in_the_job_output_runs_no_code(tmp_path, capsys):
    sentinel = tmp_path / "ran"
    job = write_job(tmp_path / "job", {"task": "generate", "settings": {"resume": True}})
    saved_generate_run(job / "out")
    crafted_state(job / "out" / "stage1.pt", sentinel)
    code, stderr = run_cli(["run", job], capsys)
    assert code == 2 and "not loaded" in stderr and "Traceback" not in stderr, stderr
    assert not sentinel.exists()
    result = json.loads((job / "out" / "result.json").read_text())
    assert result["status"] == "error" and result["error"]["kind"] == "bad_input"


def test_resume_dir_with_a_crafted_state_runs_no_code(tmp_path, capsys):
    sentinel = tmp_path / "ran"
    saved_generate_run(tmp_path / "run")
    crafted_state(tmp_path / "run" / "stage1.pt", sentinel)
    code, stderr = run_cli(["generate", "--resume", tmp_path / "run"], capsys)
    assert code == 2 and "not loaded" in stderr, stderr
    assert not sentinel.exists()


def stage1_state(**changes) -> dict:
    state = {"kind": "generate-stage1", "version": 1, "step": 8, "complete": True, "prompt": "a chair",
             "model": {"field.encoding.params": torch.zeros(3)}, "optimizer": {"state": {}, "param_groups": []},
             "generator": torch.Generator().get_state(), "settings": {}}
    state.update(changes)
    return {key: value for key, value in state.items() if value is not None}


@pytest.mark.parametrize("changes,message", [
    ({"kind": "generate-stage2"}, "holds a 'generate-stage2' state"),
    ({"kind": None}, "names no 'kind'"),
    ({"version": 99}, "version 99"),
    ({"model": None}, "lacks a usable 'model'"),
    ({"step": "8"}, "lacks a usable 'step'"),
    ({}, "does not fit"),  # the right entries, but not the NeRF's parameters
])
def test_a_state_of_the_wrong_kind_version_or_shape_is_bad_input(tmp_path, capsys, changes, message):
    path = tmp_path / "states" / "stage1.pt"
    path.parent.mkdir()
    torch.save(stage1_state(**changes), path)
    out = tmp_path / "out"
    code, stderr = run_cli(["generate", "--prompt", "a chair", "--out", out, "--stages", "2",
                            "--stage1-state", path, "--device", "cpu"], capsys)
    assert code == 2 and message in stderr and "hint:" in stderr and "Traceback" not in stderr, stderr
    assert json.loads((out / "result.json").read_text())["error"]["kind"] == "bad_input"


# --- 2. No link followed out of a job's folders -------------------------------------------------

def texture_source(folder: Path) -> Path:
    """A texture job's output as an edit reads it: state.pt, mesh.obj and corner_uvs.npy."""
    folder.mkdir(parents=True)
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    triangles = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int64)
    corner_uvs = np.tile(np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9]], np.float32), (4, 1, 1))
    write_obj(folder / "mesh.obj", TriangleMesh(positions, triangles, corner_uvs), "texture.png", "Z")
    hash_grid = HashGridConfig()
    torch.save({"kind": "texture", "field": TextureField(hash_grid).state_dict(), "field_config": to_dict(hash_grid),
                "normalization": Normalization.fit(positions, "Z").to_dict()}, folder / "state.pt")
    np.save(folder / "corner_uvs.npy", corner_uvs)
    write_result(folder, result_document("texture", "ok", {"obj": "mesh.obj", "mtl": "mesh.mtl", "state": "state.pt",
                                                           "corner_uvs": "corner_uvs.npy"}, {}, {}))
    return folder


def run_edit(source: Path, out: Path, capsys):
    return run_cli(["edit", source, "--target-prompt", "a blue chair", "--edit-prompt", "red", "--out", out,
                    "--model", MISSING_MODEL, "--device", "cpu"], capsys)


def test_an_honest_edit_source_passes_its_checks(tmp_path, capsys):
    code, stderr = run_edit(texture_source(tmp_path / "source"), tmp_path / "out", capsys)
    assert code == 3, stderr  # the source was read; the (missing) model is what stops the job


@pytest.mark.parametrize("name", ["state.pt", "mesh.obj", "corner_uvs.npy"])
def test_a_link_inside_an_edit_source_is_refused(tmp_path, capsys, name):
    source = texture_source(tmp_path / "source")
    secret = tmp_path / "secret" / name
    secret.parent.mkdir()
    (source / name).rename(secret)  # a file of the right kind, outside the source folder
    (source / name).symlink_to(secret)
    out = tmp_path / "out"
    code, stderr = run_edit(source, out, capsys)
    assert code == 2 and "is a link" in stderr, stderr
    copied = out / name
    assert not copied.exists() or copied.read_bytes() != secret.read_bytes()


def texture_job(job_dir: Path) -> Path:
    """A texture job that fails its settings (empty prompt) at once, after the job folder is read."""
    job_dir.mkdir(parents=True)
    np.savez(job_dir / "mesh.npz", positions=np.eye(3, dtype=np.float32), triangles=np.array([[0, 1, 2]]))
    return write_job(job_dir, {"task": "texture", "mesh": "mesh.npz", "settings": {"prompt": " ", "device": "cpu"}})


def test_progress_log_that_is_a_link_is_not_written(tmp_path, capsys):
    job = texture_job(tmp_path / "job")
    outside = tmp_path / "outside.log"
    outside.write_text("")
    (job / "progress.jsonl").symlink_to(outside)
    code, stderr = run_cli(["run", job], capsys)
    assert code == 7 and "progress.jsonl" in stderr and "link" in stderr, stderr
    assert outside.read_text() == ""


def test_an_output_link_gets_no_error_result(tmp_path, capsys):
    job = texture_job(tmp_path / "job")
    outside = tmp_path / "outside"
    outside.mkdir()
    (job / "out").symlink_to(outside, target_is_directory=True)
    code, stderr = run_cli(["run", job], capsys)
    assert code == 7 and "link" in stderr, stderr
    assert list(outside.iterdir()) == []


def test_a_job_file_that_is_a_link_is_refused(tmp_path, capsys):
    job = texture_job(tmp_path / "job")
    (job / "job.json").rename(tmp_path / "elsewhere.json")
    (job / "job.json").symlink_to(tmp_path / "elsewhere.json")
    code, stderr = run_cli(["run", job], capsys)
    assert code == 7 and "job.json is a link" in stderr, stderr


def test_a_mesh_that_is_a_link_is_refused(tmp_path, capsys):
    job = texture_job(tmp_path / "job")
    (job / "mesh.npz").rename(tmp_path / "mesh.npz")
    (job / "mesh.npz").symlink_to(tmp_path / "mesh.npz")
    code, stderr = run_cli(["run", job], capsys)
    assert code == 7 and "link" in stderr, stderr


@pytest.mark.parametrize("obj,mtl", [
    ("mtllib ../secret.mtl", None),  # the material library outside the mesh's folder
    ("mtllib in.mtl", "map_Kd ../secret.png"),  # the texture outside
    ("mtllib in.mtl", "map_Kd {secret}"),  # the texture by absolute path
    ("mtllib in.mtl", "map_Kd link.png"),  # the texture through a link inside the folder
])
def test_a_mesh_file_cannot_name_a_texture_outside_its_folder(tmp_path, obj, mtl):
    # An edit fits its field to the mesh's texture and bakes it into the outputs: a texture read
    # from anywhere would leak any image on the machine into the job's results.
    from PIL import Image

    from engine.mesh.load import load_textured_mesh

    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((8, 8, 3), 201, np.uint8)).save(secret)
    (tmp_path / "secret.mtl").write_text(f"newmtl m\nmap_Kd {secret}\n")
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "link.png").symlink_to(secret)
    if mtl is not None:
        (folder / "in.mtl").write_text("newmtl m\n" + mtl.format(secret=secret) + "\n")
    (folder / "mesh.obj").write_text(obj + "\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"
                                     "usemtl m\nf 1/1 2/2 3/3\n")
    _, texture, _ = load_textured_mesh(folder / "mesh.obj")
    assert texture is None or not (texture == 201).all()
