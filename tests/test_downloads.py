"""Downloads fetch only the files the engine loads, say the size first, report progress, stop on
cancel, and never go online unless allowed. The hub is tests/fake_hub.py on this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fake_hub import FakeHub, Hold

ROOT = Path(__file__).resolve().parents[1]
SD_REPO = "tiny-org/tiny-sd"
# The hub's copy of tiny_models' Stable Diffusion folder as real repositories lay it out: the fp16
# variant beside fp32, .bin, EMA, ONNX, Flax and OpenVINO copies, components the engine never
# loads, full single-file checkpoints and a model card at the root.
FP16_NAMES = {"unet/diffusion_pytorch_model.safetensors": "unet/diffusion_pytorch_model.fp16.safetensors",
              "vae/diffusion_pytorch_model.safetensors": "vae/diffusion_pytorch_model.fp16.safetensors",
              "text_encoder/model.safetensors": "text_encoder/model.fp16.safetensors"}
UNUSED = ["unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
          "unet/diffusion_pytorch_model.fp16.bin", "unet/diffusion_pytorch_model.non_ema.safetensors",
          "unet/model.onnx", "unet/openvino_model.bin", "unet/openvino_model.xml",
          "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin",
          "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin", "text_encoder/flax_model.msgpack",
          "safety_checker/config.json", "safety_checker/model.safetensors", "safety_checker/model.fp16.safetensors",
          "feature_extractor/preprocessor_config.json",
          "v1-5-pruned-emaonly.safetensors", "v1-5-pruned.ckpt", "README.md", ".gitattributes"]


def hub_repo_files(folder: Path) -> tuple[dict[str, bytes], set[str]]:
    """(extra files for FakeHub.add_folder, the paths the engine needs) for a tiny SD folder."""
    index = json.loads((folder / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"], image_encoder=[None, None])
    extra = {name: b"not for the engine " * 64 for name in UNUSED}
    extra["model_index.json"] = json.dumps(index).encode()
    needed = {FP16_NAMES.get(path, path) for path in
              (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())}
    return extra, needed


# File names as the real repositories have them (DeepFloyd/IF-I-XL-v1.0, stabilityai/stable-diffusion-xl-base-1.0).
IF_LISTING = ["model_index.json", "README.md", "LICENSE", ".gitattributes",
              "feature_extractor/preprocessor_config.json", "safety_checker/config.json",
              "safety_checker/model.fp16.safetensors", "safety_checker/pytorch_model.bin",
              "scheduler/scheduler_config.json", "text_encoder/config.json",
              "text_encoder/model.fp16-00001-of-00002.safetensors",
              "text_encoder/model.fp16-00002-of-00002.safetensors",
              "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
              "text_encoder/model.safetensors.index.fp16.json", "text_encoder/model.safetensors.index.json",
              "text_encoder/pytorch_model.fp16-00001-of-00002.bin", "text_encoder/pytorch_model.bin.index.fp16.json",
              "tokenizer/special_tokens_map.json", "tokenizer/spiece.model", "tokenizer/tokenizer_config.json",
              "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
              "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
              "watermarker/config.json", "watermarker/diffusion_pytorch_model.safetensors"]
SDXL_LISTING = ["model_index.json", "sd_xl_base_1.0.safetensors", "sd_xl_offset_example-lora_1.0.safetensors",
                "scheduler/scheduler_config.json", "vae_1_0/config.json",
                "vae_1_0/diffusion_pytorch_model.fp16.safetensors", "vae_decoder/model.onnx",
                *(f"{folder}/{name}" for folder in ("text_encoder", "text_encoder_2")
                  for name in ("config.json", "model.fp16.safetensors", "model.safetensors", "model.onnx",
                               "openvino_model.bin", "openvino_model.xml", "flax_model.msgpack")),
                *(f"{folder}/{name}" for folder in ("tokenizer", "tokenizer_2")
                  for name in ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")),
                *(f"{folder}/{name}" for folder in ("unet", "vae")
                  for name in ("config.json", "diffusion_pytorch_model.fp16.safetensors",
                               "diffusion_pytorch_model.safetensors", "model.onnx", "model.onnx_data"))]


def test_the_files_picked_from_real_repository_layouts(tmp_path):
    from engine.errors import ModelNotFoundError
    from engine.prior.families import FAMILY_COMPONENTS, Family
    from engine.prior.hub import missing_parts, select_files, weights_variant

    if_configs, if_weights = select_files(IF_LISTING, FAMILY_COMPONENTS[Family.IF_STAGE_I], "DeepFloyd/IF-I-XL-v1.0")
    assert if_configs == ["model_index.json", "unet/config.json", "text_encoder/config.json",
                          "tokenizer/special_tokens_map.json", "tokenizer/spiece.model",
                          "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"]
    assert if_weights == ["unet/diffusion_pytorch_model.fp16.safetensors",
                       "text_encoder/model.fp16-00001-of-00002.safetensors",
                       "text_encoder/model.fp16-00002-of-00002.safetensors",
                       "text_encoder/model.safetensors.index.fp16.json"]
    configs, weights = select_files(SDXL_LISTING, FAMILY_COMPONENTS[Family.SDXL], "stabilityai/sdxl")
    assert weights == [f"{folder}/{name}.fp16.safetensors" for folder, name in (
        ("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model"),
        ("text_encoder_2", "model"))]
    assert set(configs) == {"model_index.json", "scheduler/scheduler_config.json",
                            *(f"{folder}/config.json" for folder in ("unet", "vae", "text_encoder", "text_encoder_2")),
                            *(f"{folder}/{name}" for folder in ("tokenizer", "tokenizer_2") for name in
                              ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"))}
    # Old repositories with .bin weights only; EMA-only weights are refused with what there is.
    assert select_files(["config.json", "diffusion_pytorch_model.bin", "README.md"], None, "o/cn") == (
        ["config.json"], ["diffusion_pytorch_model.bin"])
    with pytest.raises(ModelNotFoundError, match="only: ema safetensors"):
        select_files(["config.json", "diffusion_pytorch_model.ema.safetensors"], None, "o/cn")

    # The IF files as a download leaves them: complete, loaded as the fp16 variant; a shard missing is seen.
    folder = tmp_path / "if"
    for name in if_configs + if_weights:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("{}")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "IFPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5Tokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"], "safety_checker": ["deepfloyd_if", "IFSafetyChecker"]}))
    (folder / "text_encoder/model.safetensors.index.fp16.json").write_text(json.dumps({"weight_map": {
        "a": "model.fp16-00001-of-00002.safetensors", "b": "model.fp16-00002-of-00002.safetensors"}}))
    assert missing_parts(folder) == [] and weights_variant(folder / "text_encoder") == "fp16"
    (folder / "text_encoder/model.fp16-00002-of-00002.safetensors").unlink()
    assert missing_parts(folder) == ["text_encoder"]


def engine(args: list[str], hub: FakeHub | None, home: Path, offline: bool = False, **popen) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE"))}
    env.update(PYTHONPATH=str(ROOT), HF_HOME=str(home / "hf-home"), HF_HUB_CACHE=str(home / "cache"),
               HF_HUB_OFFLINE="1" if offline else "0", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
               HF_ENDPOINT=hub.endpoint if hub else "http://127.0.0.1:9")
    return subprocess.Popen([sys.executable, "-m", "engine", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, list[dict], str]:
    out, err = process.communicate(timeout=timeout)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return process.returncode, events, err


def test_download_fetches_only_what_the_engine_loads_and_the_engine_loads_it(tiny_stable_diffusion, tmp_path):
    from diffusers import UNet2DConditionModel

    from engine.config import PriorConfig
    from engine.prior.hub import weights_kind
    from engine.prior.load import load_prior

    sd, _ = tiny_stable_diffusion
    extra, needed = hub_repo_files(sd)
    weights = {name for name in needed if weights_kind(Path(name).name)}
    hold = Hold(after=0)  # every weights file, one hold: the first requested waits
    with FakeHub() as hub:
        hub.add_folder(SD_REPO, sd, renames=FP16_NAMES, extra=extra)
        hub.holds.update({(SD_REPO, name): hold for name in weights})
        process = engine(["models", "download", SD_REPO, "--allow-download"], hub, tmp_path)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
        reader.start()
        assert hold.reached.wait(60)
        # While the first weights file is held, the size has been said; only configs were read before
        # it (they tell the family, hence which components to fetch).
        time.sleep(1.0)
        said = [json.loads(line)["event"] for line in list(lines)]
        before = hub.fetched(SD_REPO)
        hold.release.set()
        process.wait(120)
        reader.join(10)
        err = process.stderr.read()
        fetched = hub.fetched(SD_REPO)
    assert process.returncode == 0, err
    assert "download_plan" in said and "download" in said
    assert before[-1] in weights and not weights & set(before[:-1])
    assert sorted(fetched) == sorted(needed)  # fp16 variant; no safety checker, .bin, ONNX, EMA, root checkpoints
    events = [json.loads(line) for line in lines]
    plan = next(event for event in events if event["event"] == "download_plan")
    sizes = {name: len(hub.repos[SD_REPO][name]) for name in needed}
    assert plan["files"] == len(needed) and plan["total_bytes"] == sum(sizes.values())
    assert plan["fetch_files"] == len(weights) and plan["fetch_bytes"] == sum(sizes[name] for name in weights)
    assert f"{SD_REPO}: downloading 3 of the {len(needed)} files the engine loads" in err
    progress = [event for event in events if event["event"] == "download"]
    assert {event["file"] for event in progress} == weights
    assert progress[-1]["bytes_done"] == progress[-1]["bytes_total"] == plan["fetch_bytes"]
    assert all(a["bytes_done"] <= b["bytes_done"] for a, b in zip(progress, progress[1:]))
    assert events[-1]["event"] == "finished" and events[-1]["status"] == "ok"

    # Offline, the engine finds the fp16-only folder in the cache and loads the fp16 variant.
    prior = load_prior(PriorConfig(model=SD_REPO, controlnets=(), half_precision=False,
                                   cache_dir=str(tmp_path / "cache")), torch.device("cpu"))
    reference = UNet2DConditionModel.from_pretrained(sd / "unet")
    for name, value in reference.state_dict().items():
        assert torch.equal(prior.unet.state_dict()[name], value), name


def test_models_list_reports_what_is_on_this_machine(tiny_stable_diffusion, tmp_path):
    sd, controlnets = tiny_stable_diffusion
    extra, needed = hub_repo_files(sd)
    with FakeHub() as hub:
        hub.add_folder(SD_REPO, sd, renames=FP16_NAMES, extra=extra)
        hub.add_folder("tiny-org/cn-depth", controlnets["depth"],
                       renames={"diffusion_pytorch_model.safetensors": "diffusion_pytorch_model.fp16.safetensors"},
                       extra={"diffusion_pytorch_model.safetensors": b"fp32", "diffusion_pytorch_model.bin": b"bin",
                              "images/example.png": b"png", "README.md": b"card"})
        for model in (SD_REPO, "tiny-org/cn-depth"):
            assert finish(engine(["models", "download", model, "--allow-download"], hub, tmp_path))[0] == 0
        assert sorted(hub.fetched("tiny-org/cn-depth")) == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
        code, events, err = finish(engine(["models", "list", "tiny-org/cn-depth", "tiny-org/absent"], hub, tmp_path,
                                          offline=True))
    assert code == 0, err
    models = {event["model"]: event for event in events if event["event"] == "model"}
    assert models[SD_REPO]["complete"] and models[SD_REPO]["use"] == "Stable Diffusion 1.x: texture, edit"
    assert models[SD_REPO]["size_bytes"] == sum(len(hub.repos[SD_REPO][name]) for name in needed)
    assert models["tiny-org/cn-depth"]["complete"]
    assert not models["tiny-org/absent"]["local"]
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in models  # the defaults are always listed


def test_models_commands_import_no_pytorch(tmp_path):
    """The add-on's Check engine and Download start them: they must answer in a fraction of a second."""
    code = "import sys; from engine.cli import main; main(['models', 'list']); print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False"


def test_offline_never_touches_the_network_and_says_the_exact_command(tmp_path):
    from engine.config import PriorConfig
    from engine.errors import ModelNotFoundError
    from engine.prior.load import resolve_model_folder

    with FakeHub() as hub:
        hub.add_repo(SD_REPO, {"model_index.json": b"{}"})
        for offline, args in ((True, ["--allow-download"]), (False, [])):
            code, events, err = finish(engine(["models", "download", SD_REPO, *args], hub, tmp_path, offline=offline))
            assert code == 3, err
            error = next(event for event in events if event["event"] == "error")
            assert "is not on this machine" in error["message"]
            assert f"`python -m engine models download {SD_REPO} --allow-download`" in error["hint"]
            assert ("Unset HF_HUB_OFFLINE" in error["hint"]) == offline
        assert hub.requests == []
    # The engine's own path (a job's load_prior) says the same, with the cache it was given.
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model_folder(SD_REPO, PriorConfig(model=SD_REPO, cache_dir=str(tmp_path / "my cache")))
    assert f"models download {SD_REPO} --allow-download --cache-dir '{tmp_path / 'my cache'}'" in caught.value.hint


def test_ctrl_c_stops_a_download_within_a_file_and_the_next_one_finishes(tmp_path):
    weights = bytes(range(256)) * (24 * 4096)  # 24 MiB: huggingface_hub reads 10 MiB chunks
    files = {"config.json": b'{"_class_name": "ControlNetModel"}', "diffusion_pytorch_model.safetensors": weights}
    with FakeHub() as hub:
        hub.add_repo("tiny-org/big", files)
        hold = hub.holds[("tiny-org/big", "diffusion_pytorch_model.safetensors")] = Hold(after=12 * 2 ** 20)
        process = engine(["models", "download", "tiny-org/big", "--allow-download"], hub, tmp_path)
        assert hold.reached.wait(60)
        process.send_signal(signal.SIGINT)
        code, events, err = finish(process)
        assert code == 130, err
        assert (events[-1]["event"], events[-1]["status"]) == ("finished", "cancelled")
        downloading = [event for event in events if event["event"] == "download"]
        assert downloading[-1]["file"] == "diffusion_pytorch_model.safetensors"
        assert downloading[-1]["bytes_done"] < len(weights)
        snapshot = tmp_path / "cache" / "models--tiny-org--big" / "snapshots" / hub.commit("tiny-org/big")
        assert (snapshot / "config.json").is_file() and not (snapshot / "diffusion_pytorch_model.safetensors").exists()
        hold.release.set()
        code, events, err = finish(engine(["models", "download", "tiny-org/big", "--allow-download"], hub, tmp_path))
    assert code == 0, err
    assert (snapshot / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    plan = next(event for event in events if event["event"] == "download_plan")
    assert plan["fetch_files"] == 1 and plan["fetch_bytes"] == len(weights)  # config.json was kept


def test_a_job_reports_its_download_and_its_cancel_file_stops_it(tiny_stable_diffusion, tmp_path):
    sd, _ = tiny_stable_diffusion
    extra, _ = hub_repo_files(sd)
    big = "unet/diffusion_pytorch_model.fp16.safetensors"
    job = tmp_path / "job"
    job.mkdir()
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    np.savez(job / "mesh.npz", positions=positions, triangles=np.array([[0, 1, 2]], np.int32),
             corner_uvs=positions[None, :, :2])
    (job / "job.json").write_text(json.dumps({
        "protocol": 1, "task": "texture", "mesh": "mesh.npz",
        "settings": {"prompt": "a red cube", "steps": 1, "device": "cpu",
                     "prior": {"model": SD_REPO, "allow_download": True, "controlnets": []}}}))
    with FakeHub() as hub:
        hub.add_folder(SD_REPO, sd, renames=FP16_NAMES, extra=extra)
        hub.repos[SD_REPO][big] += bytes(24 * 2 ** 20)  # large enough to be read in several chunks
        hold = hub.holds[(SD_REPO, big)] = Hold(after=12 * 2 ** 20)
        process = engine(["run", str(job)], hub, tmp_path)
        assert hold.reached.wait(60)
        (job / "cancel").touch()
        hold.release.set()
        code, _, err = finish(process)
    assert code == 130, err
    events = [json.loads(line) for line in (job / "progress.jsonl").read_text().splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds.index("download_plan") < kinds.index("download")
    assert [event for event in events if event["event"] == "download"][-1]["file"] == big
    assert json.loads((job / "out" / "result.json").read_text())["status"] == "cancelled"
