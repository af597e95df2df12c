"""Baking and export of PBR materials (issue 22): the maps a 5-channel field bakes into, the GLB
and OBJ + MTL that carry them, and the Khronos glTF validator's verdict on every GLB the engine
writes. The field here is a stand-in with known values; no prior is needed."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.bake.bake import bake_texture
from engine.bake.maps import MaterialMaps
from engine.cli import main
from engine.files import to_uint8
from engine.mesh.export import write_glb
from engine.mesh.load import load_mesh
from engine.mesh.types import Normalization, TriangleMesh
from engine.mesh.uv import ensure_uvs
from engine.pipelines.kit.outputs import PreparedMesh, export_textured_mesh

REPO = Path(__file__).resolve().parents[1]
CUBE = REPO / "examples" / "cube.obj"
VALIDATOR = REPO / "scripts" / "validate_gltf.js"
ROUGHNESS, METALLIC = 0.3, 0.8
PBR_OUTPUTS = {"glb": "mesh.glb", "obj": "mesh.obj", "mtl": "mesh.mtl", "texture": "texture.png", "orm": "orm.png",
               "roughness": "roughness.png", "metallic": "metallic.png", "preview": "preview.png"}


def validate_gltf(*paths: Path) -> list[dict]:
    """The glTF validator's report of each file (scripts/validate_gltf.js)."""
    if shutil.which("node") is None:
        pytest.skip("node (Node.js) is not installed, so the Khronos glTF validator cannot run")
    run = subprocess.run(["node", str(VALIDATOR), *map(str, paths)], check=False, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode in (0, 1), f"the glTF validator did not run: {run.stderr.strip()}"
    return [json.loads(line) for line in run.stdout.splitlines()]


def assert_valid(*paths: Path) -> None:
    for report in validate_gltf(*paths):
        problems = [message for message in report["messages"] if message["severity"] <= 1]
        assert report["errors"] == 0 and report["warnings"] == 0, f"{report['file']}: {problems}"


def read_glb(path: Path) -> tuple[dict, bytes]:
    """A GLB's JSON chunk and binary chunk."""
    data = path.read_bytes()
    magic, version, _ = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2
    json_length, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON"
    return json.loads(data[20:20 + json_length]), data[20 + json_length + 8:]


def glb_texture(tree: dict, binary: bytes, texture_info: dict) -> np.ndarray:
    """The decoded image a material's texture slot points at."""
    image = tree["images"][tree["textures"][texture_info["index"]]["source"]]
    view = tree["bufferViews"][image["bufferView"]]
    start = view.get("byteOffset", 0)
    return np.asarray(Image.open(io.BytesIO(binary[start:start + view["byteLength"]])))


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def material_field(points: torch.Tensor) -> torch.Tensor:
    """A stand-in 5-channel field: a colour that varies over the surface, constant roughness and metallic."""
    colour = 0.5 + 0.4 * torch.sin(4.0 * points + torch.tensor([0.0, 2.0, 4.0]))
    return torch.cat([colour, torch.tensor([ROUGHNESS, METALLIC]).expand(len(points), 2)], dim=1)


def two_materials(points: torch.Tensor) -> torch.Tensor:
    """Rough red dielectric on the x > 0 half of the unit box, smooth blue metal on the rest."""
    rough_red = torch.tensor([1.0, 0.0, 0.0, 0.9, 0.0])
    smooth_blue_metal = torch.tensor([0.0, 0.0, 1.0, 0.2, 1.0])
    return torch.where(points[:, :1] > 0, rough_red, smooth_blue_metal)


@pytest.fixture(scope="module")
def cube() -> PreparedMesh:
    """examples/cube.obj with xatlas UVs, in its own frame and in the unit box."""
    user, up_axis = load_mesh(CUBE)
    user, unwrapped = ensure_uvs(user, reunwrap=True, resolution_hint=128)
    normalization = Normalization.fit(user.positions, up_axis)
    unit = TriangleMesh(normalization.to_unit(user.positions), user.triangles, user.corner_uvs)
    count = user.num_triangles
    return PreparedMesh(user, unit, normalization, np.arange(count), count, unwrapped, [])


@pytest.fixture(scope="module")
def pbr_export(cube: PreparedMesh, tmp_path_factory) -> tuple[Path, dict[str, str], np.ndarray]:
    """The stand-in field baked at 64 x 64 and exported: (folder, outputs, the bake)."""
    out = tmp_path_factory.mktemp("pbr")
    baked = bake_texture(cube.unit, material_field, 64).image
    return out, export_textured_mesh(out, cube, baked), baked


def test_bake_splits_a_material_into_padded_maps(cube: PreparedMesh) -> None:
    baked = bake_texture(cube.unit, two_materials, 64)
    assert baked.image.shape == (64, 64, 5) and baked.coverage < 0.9  # padding was needed
    maps = MaterialMaps.from_baked(baked.image)
    assert maps.material == "pbr"
    # Every texel, padding included, holds one of the two materials in all five channels at once:
    # the maps are padded alike and nothing of an empty background shows anywhere.
    expected = {tuple(to_uint8(two_materials(torch.tensor([[x, 0.0, 0.0]]))[0].numpy())) for x in (0.25, -0.25)}
    texels = {tuple(texel) for texel in baked.image.reshape(-1, 5)}
    assert texels == expected
    orm = maps.orm()
    assert np.all(orm[..., 0] == 255)
    np.testing.assert_array_equal(orm[..., 1], maps.roughness)
    np.testing.assert_array_equal(orm[..., 2], maps.metallic)


def test_bakes_of_other_channel_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        MaterialMaps.from_baked(np.zeros((4, 4, 4), np.uint8))
    assert MaterialMaps.from_baked(np.zeros((4, 4, 3), np.uint8)).material == "albedo"
    with pytest.raises(ValueError, match="albedo"):
        MaterialMaps.from_baked(np.zeros((4, 4, 3), np.uint8)).orm()


def test_pbr_export_writes_the_maps_with_the_baked_values(pbr_export) -> None:
    out, outputs, baked = pbr_export
    assert outputs == PBR_OUTPUTS
    for name in outputs.values():
        assert (out / name).is_file(), name
    np.testing.assert_array_equal(png(out / "texture.png"), baked[..., :3])
    roughness, metallic, orm = png(out / "roughness.png"), png(out / "metallic.png"), png(out / "orm.png")
    assert roughness.ndim == 2 and metallic.ndim == 2 and orm.shape == (64, 64, 3)  # grayscale; packed RGB
    # Linear 8-bit values: 0.3 -> 77 and 0.8 -> 204 (within 1 for rounding), in every texel.
    assert np.abs(roughness.astype(int) - 77).max() <= 1 and np.abs(metallic.astype(int) - 204).max() <= 1
    assert np.all(orm[..., 0] == 255)
    np.testing.assert_array_equal(orm[..., 1], roughness)
    np.testing.assert_array_equal(orm[..., 2], metallic)


def test_pbr_glb_carries_a_metallic_roughness_material(pbr_export) -> None:
    out, _, _ = pbr_export
    tree, binary = read_glb(out / "mesh.glb")
    (material,) = tree["materials"]
    pbr = material["pbrMetallicRoughness"]
    # Factors 1 (written or the default): the maps' values are the material's values.
    assert pbr.get("roughnessFactor", 1.0) == 1.0 and pbr.get("metallicFactor", 1.0) == 1.0
    np.testing.assert_array_equal(glb_texture(tree, binary, pbr["baseColorTexture"]), png(out / "texture.png"))
    np.testing.assert_array_equal(glb_texture(tree, binary, pbr["metallicRoughnessTexture"]), png(out / "orm.png"))
    assert "normalTexture" not in material  # no normal map is baked
    primitive = tree["meshes"][0]["primitives"][0]
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(primitive["attributes"])


def test_pbr_mtl_names_the_maps(pbr_export) -> None:
    out, _, _ = pbr_export
    lines = (out / "mesh.mtl").read_text().splitlines()
    for line in ("map_Kd texture.png", "map_Pr roughness.png", "map_Pm metallic.png", "Pr 1", "Pm 1"):
        assert line in lines, line
    assert "mtllib mesh.mtl" in (out / "mesh.obj").read_text()


def test_albedo_glb_keeps_its_matte_material(tmp_path: Path, cube: PreparedMesh) -> None:
    texture = bake_texture(cube.unit, lambda p: material_field(p)[:, :3], 32).image
    outputs = export_textured_mesh(tmp_path, cube, texture)
    assert outputs == {"glb": "mesh.glb", "obj": "mesh.obj", "mtl": "mesh.mtl", "texture": "texture.png",
                       "preview": "preview.png"}
    tree, _ = read_glb(tmp_path / "mesh.glb")
    pbr = tree["materials"][0]["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0.0 and pbr["roughnessFactor"] == 0.8 and "metallicRoughnessTexture" not in pbr
    assert "map_Pr" not in (tmp_path / "mesh.mtl").read_text()
    assert not (tmp_path / "orm.png").exists()


def test_every_glb_the_engine_writes_passes_the_gltf_validator(tmp_path: Path, cube: PreparedMesh, pbr_export,
                                                                capsys) -> None:
    """Texture jobs of both materials (bundled prior, tiny settings), the PBR export above, and
    write_glb of both materials from a Z-up and a Y-up frame: no errors and no warnings."""
    written = [pbr_export[0] / "mesh.glb"]
    for material in ("albedo", "pbr"):
        job = tmp_path / material
        code = main(["texture", str(CUBE), "--prompt", "a green checkered cube", "--model", "bundled",
                     "--material", material, "--out", str(job), "--steps", "2", "--render-size", "32",
                     "--texture-size", "64", "--preview-every", "0", "--device", "cpu"])
        assert code == 0, capsys.readouterr().err
        result = json.loads((job / "result.json").read_text())
        assert result["material"] == material
        assert ("orm" in result["outputs"]) == (material == "pbr")
        written.append(job / result["outputs"]["glb"])
    maps = MaterialMaps.from_baked(pbr_export[2])
    for frame in ("Z", "Y"):
        written.append(write_glb(tmp_path / f"albedo-{frame}.glb", cube.user, maps.base_colour, frame))
        written.append(write_glb(tmp_path / f"pbr-{frame}.glb", cube.user, maps.base_colour, frame, maps.orm()))
    assert_valid(*written)


def test_the_validator_reports_a_broken_glb(tmp_path: Path, pbr_export) -> None:
    """The check above can fail: a material that points at a texture that does not exist is an error."""
    tree, binary = read_glb(pbr_export[0] / "mesh.glb")
    tree["materials"][0]["pbrMetallicRoughness"]["metallicRoughnessTexture"]["index"] = 99
    text = json.dumps(tree).encode()
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(binary), b"BIN\0") + binary
    broken = tmp_path / "broken.glb"
    broken.write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks)
    (report,) = validate_gltf(broken)
    assert report["errors"] > 0
