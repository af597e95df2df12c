"""Issue 25, findings 6, 7 and 9: bad input ends as bad input (not "a bug in the engine"), every
number and string a job gives is bounded, a prompt cut at the token limit is said, and large
textures in a mesh file are read up to a stated limit."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch

from engine.cli import main
from engine.config import MAX_PROMPT_CHARS, PriorConfig
from engine.errors import BadInputError, ModelNotFoundError

TETRAHEDRON = {"positions": [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]],
               "triangles": [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]}


def run_job(job_dir, data) -> tuple[int, dict]:
    job_dir.mkdir(parents=True, exist_ok=True)
    np.savez(job_dir / "mesh.npz", positions=np.asarray(TETRAHEDRON["positions"], np.float32),
             triangles=np.asarray(TETRAHEDRON["triangles"], np.int64))
    text = data if isinstance(data, str) else json.dumps(data)
    (job_dir / "job.json").write_text(text)
    code = main(["run", str(job_dir)])
    result = json.loads((job_dir / "out" / "result.json").read_text())
    return code, result


def texture_job(**settings) -> dict:
    return {"protocol": 1, "task": "texture", "mesh": "mesh.npz", "settings": {"prompt": "a red cube", **settings}}


@pytest.mark.parametrize("settings", [
    {"cameras": {"distance": [1]}},
    {"cameras": {"distance": [1, "a"]}},
    {"extra_cameras": [{"matrix_world": "abcd", "fovy_deg": 40}]},
    {"extra_cameras": [{"matrix_world": [["a"] * 4] * 4}]},
    {"seed": 2 ** 70},
    {"steps": True},
    {"steps": 10 ** 20},
    {"render_size": True},
    {"texture_size": 1.5},
    {"learning_rate": 1e300},
    {"guidance": {"w1": 10 ** 400}},
    {"prompt": "a red cube " * 1000},
    {"negative_prompt": "x" * (MAX_PROMPT_CHARS + 1)},
    {"device": "cuda:abc"},
    {"device": 7},
], ids=lambda settings: next(iter(settings)))
def test_bad_settings_are_bad_input_with_a_result(tmp_path, capsys, settings):
    code, result = run_job(tmp_path / "job", texture_job(**settings))
    assert code == 2, result
    assert result["status"] == "error" and result["error"]["kind"] == "bad_input"
    assert "Traceback" not in capsys.readouterr().err


def test_cuda_device_with_a_bad_number_on_a_cuda_machine(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    code, result = run_job(tmp_path / "job", texture_job(device="cuda:abc"))
    assert code == 2 and result["error"]["kind"] == "bad_input"
    assert "cuda:N" in result["error"]["hint"]


def test_deeply_nested_job_file_is_refused(tmp_path, capsys):
    depth = 200_000
    code, result = run_job(tmp_path / "job", '{"protocol": 1, "task": "texture", "settings": '
                           + "[" * depth + "]" * depth + "}")
    assert code == 7 and "nested" in result["error"]["message"]


def test_job_file_over_the_size_limit_is_refused(tmp_path, capsys):
    code, result = run_job(tmp_path / "job", texture_job(prompt="x" * 1_200_000))
    assert code == 7 and "larger than" in result["error"]["message"]


def test_nan_in_job_file_is_refused(tmp_path, capsys):
    code, result = run_job(tmp_path / "job", json.dumps(texture_job()).replace('"a red cube"}', '"a"}, "x": NaN'))
    assert code == 7


def test_generate_config_that_is_a_list_cannot_be_resumed(tmp_path, capsys):
    (tmp_path / "job" / "out").mkdir(parents=True)
    (tmp_path / "job" / "out" / "generate_config.json").write_text("[1, 2]")
    (tmp_path / "job" / "job.json").write_text(json.dumps({"protocol": 1, "task": "generate",
                                                           "settings": {"resume": True}}))
    assert main(["run", str(tmp_path / "job")]) == 2
    events = [json.loads(line) for line in (tmp_path / "job" / "progress.jsonl").read_text().splitlines()]
    assert any(event["event"] == "error" and "generate run's settings" in event["message"] for event in events)


@pytest.mark.parametrize("case", ["truncated", "random", "empty", "config value"])
def test_broken_weights_are_a_broken_model(tmp_path, case):
    from engine.prior.families import BUNDLED_PRIOR_DIR
    from engine.prior.load import load_prior

    folder = tmp_path / "model"
    shutil.copytree(BUNDLED_PRIOR_DIR, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    if case == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "random":
        weights.write_bytes(os.urandom(4096))
    elif case == "empty":
        weights.write_bytes(b"")
    else:
        config_path = folder / "unet" / "config.json"
        config = json.loads(config_path.read_text())
        config["layers_per_block"] = "two"
        config_path.write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError) as raised:
        load_prior(PriorConfig(model=str(folder)), torch.device("cpu"))
    assert raised.value.exit_code == 3 and "download it again" in raised.value.hint


def test_broken_weights_end_the_job_with_exit_3(tmp_path, capsys):
    from engine.prior.families import BUNDLED_PRIOR_DIR

    folder = tmp_path / "model"
    shutil.copytree(BUNDLED_PRIOR_DIR, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    code, result = run_job(tmp_path / "job", texture_job(steps=1, prior={"model": str(folder)}))
    assert code == 3 and result["error"]["kind"] == "model_not_found"


def test_long_prompt_warns_that_it_is_cut(tiny_stable_diffusion):
    from engine.prior.load import load_prior

    sd_folder, _controlnets = tiny_stable_diffusion
    prior = load_prior(PriorConfig(model=str(sd_folder), controlnets=()), torch.device("cpu"))
    prior.encode_prompts(["a red sphere", ""])
    assert prior.warnings == []
    prior.encode_prompts(["a red sphere and a blue cube and a green chair", ""])
    assert len(prior.warnings) == 1 and "reads only 8" in prior.warnings[0]


def test_bundled_prior_warns_of_a_prompt_over_its_24_tokens():
    from engine.prior.load import load_prior

    prior = load_prior(PriorConfig(), torch.device("cpu"))
    prior.encode_prompts([" ".join(["a red cube"] * 10), ""])
    assert len(prior.warnings) == 1 and "30" not in prior.warnings[0] and "reads only 24" in prior.warnings[0]


# --- Large textures (finding 9) ------------------------------------------------------------------

def png_bytes(width: int, height: int, rows: bool = True) -> bytes:
    """A flat red PNG; with rows=False only its header (enough to tell its size, never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = zlib.compress((b"\x00" + b"\xc8\x0a\x0a" * width) * height, 1) if rows else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def glb_with_texture(path, png: bytes) -> None:
    """A textured box as GLB whose base-colour image is `png` (the GLB's binary chunk rebuilt)."""
    import trimesh
    from PIL import Image

    box = trimesh.creation.box()
    box.visual = trimesh.visual.TextureVisuals(uv=np.random.default_rng(0).random((len(box.vertices), 2)),
                                               image=Image.new("RGB", (4, 4), (200, 10, 10)))
    glb = box.export(file_type="glb")
    json_length = struct.unpack("<I", glb[12:16])[0]
    header = json.loads(glb[20:20 + json_length])
    binary = bytearray(glb[20 + json_length + 8:])
    view = header["bufferViews"][header["images"][0]["bufferView"]]
    view["byteOffset"], view["byteLength"] = len(binary), len(png)
    binary += png + b"\0" * (-len(png) % 4)
    header["buffers"][0]["byteLength"] = len(binary)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 4)
    body = (struct.pack("<I", len(text)) + b"JSON" + text + struct.pack("<I", len(binary)) + b"BIN\0" + bytes(binary))
    path.write_bytes(b"glTF" + struct.pack("<II", 2, 12 + len(body)) + body)


def test_texture_above_pillows_guard_is_read(tmp_path, monkeypatch):
    """Pillow's guard is lowered to below this texture, as a 16k texture is above its real one (a 16k
    PNG takes seconds to make and 1 GB to decode): the texture is read all the same, and the guard is
    as it was afterwards."""
    from PIL import Image

    from engine.mesh.load import load_textured_mesh

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 32 * 32)
    glb_with_texture(tmp_path / "box.glb", png_bytes(128, 128))
    _mesh, texture, _axis = load_textured_mesh(tmp_path / "box.glb")
    assert texture is not None and texture.shape == (128, 128, 3)
    assert tuple(texture[0, 0]) == (200, 10, 10)
    assert Image.MAX_IMAGE_PIXELS == 32 * 32


def test_texture_over_the_limit_is_refused_with_the_limit(tmp_path):
    """Only the header of a 20,000 x 20,000 PNG: the size is refused before any pixel is decoded."""
    from engine.mesh.load import MAX_TEXTURE_SIDE, load_textured_mesh

    glb_with_texture(tmp_path / "box.glb", png_bytes(20_000, 20_000, rows=False))
    with pytest.raises(BadInputError) as raised:
        load_textured_mesh(tmp_path / "box.glb")
    assert f"{MAX_TEXTURE_SIDE:,} x {MAX_TEXTURE_SIDE:,}" in raised.value.message


def test_edit_of_a_glb_with_a_texture_over_the_limit_exits_2(tmp_path, capsys):
    source = tmp_path / "job" / "box.glb"
    source.parent.mkdir(parents=True)
    glb_with_texture(source, png_bytes(20_000, 20_000, rows=False))
    code, result = run_job(tmp_path / "job", {"protocol": 1, "task": "edit", "source": "box.glb",
                                              "settings": {"target_prompt": "a blue cube", "edit_prompt": "red",
                                                           "steps": 1}})
    assert code == 2 and "16,384" in result["error"]["message"]
