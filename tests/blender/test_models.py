"""Models on this machine and downloads from the add-on: "Check engine" lists them with their sizes
(the engine's `models list`), a missing one downloads with a progress bar while online access is
allowed, and can be cancelled. The bpy-free half runs anywhere; the rest needs Blender."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from importlib import import_module

import pytest

from conftest import ADDON_MODULE, FAKE_ENGINE_SRC, ROOT
from fake_hub import FakeHub, Hold

sys.path.insert(0, str(ROOT))
from csd_blender.exchange import models, progress  # noqa: E402

CONTROLNET = "tiny-org/controlnet"
WEIGHTS = bytes(range(256)) * 4096 * 14  # 14 MiB: read in more than one chunk
CONTROLNET_FILES = {"config.json": b'{"_class_name": "ControlNetModel"}',
                    "diffusion_pytorch_model.fp16.safetensors": WEIGHTS,
                    "diffusion_pytorch_model.safetensors": b"fp32 copy the engine does not need",
                    "diffusion_pytorch_model.bin": b"bin copy", "README.md": b"card"}


def fake_download(tmp_path, behaviour: dict) -> models.ModelDownload:
    download = models.ModelDownload(sys.executable, "owner/model", FAKE_ENGINE_SRC,
                                    {"CSD_FAKE_ENGINE": json.dumps({"download": behaviour, "size_bytes": 2_580_000})},
                                    tmp_path / "download.log")
    download.start()
    return download


def wait(download, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not download.poll():
        assert time.monotonic() < deadline, "the download did not end"
        time.sleep(0.02)


def wait_for_progress(download) -> None:
    deadline = time.monotonic() + 30
    while not download.progress.bytes_done:
        assert not download.poll() and time.monotonic() < deadline
        time.sleep(0.02)


def test_download_events_make_a_progress_bar():
    state = progress.JobProgress()
    state.apply_all([{"event": "started", "total_steps": 10},
                     {"event": "stage", "name": "loading model"},
                     {"event": "download_plan", "model": "o/m", "files": 9, "total_bytes": 3_000_000,
                      "fetch_files": 2, "fetch_bytes": 2_000_000},
                     {"event": "download", "model": "o/m", "file": "unet/w.safetensors", "file_bytes_done": 500_000,
                      "file_bytes": 1_500_000, "bytes_done": 500_000, "bytes_total": 2_000_000}])
    assert state.stage == progress.DOWNLOADING and state.fraction == 0.25
    assert state.download_text() == "Downloading o/m: 500.00 kB / 2.00 MB"
    state.apply({"event": "stage", "name": "preparing views"})
    assert state.fraction == 0.0  # back to the job's steps


def test_model_download_follows_the_engine_and_cancels(tmp_path):
    done = fake_download(tmp_path, {"steps": 3})
    wait(done)
    assert done.ok and done.progress.bytes_done == done.progress.bytes_total == 300
    assert done.outcome() == ("INFO", "owner/model is on this machine (2.58 MB on disk).", "")

    failed = fake_download(tmp_path, {"steps": 1, "error": {"kind": "model_not_found", "exit_code": 3,
                                                              "message": "owner/model is gated.", "hint": "Log in."}})
    wait(failed)
    assert failed.outcome() == ("ERROR", "Downloading owner/model failed: owner/model is gated.", "Log in.")

    slow = fake_download(tmp_path, {"steps": 500, "step_s": 0.02})
    wait_for_progress(slow)
    assert slow.status_text().startswith("Downloading owner/model: ")
    slow.cancel()
    wait(slow)
    assert slow.returncode == 130 and slow.outcome()[:2] == ("INFO", "The download of owner/model was cancelled.")

    stuck = fake_download(tmp_path, {"steps": 500, "step_s": 0.02, "ignore_cancel": True})
    wait_for_progress(stuck)
    started = time.monotonic()
    stuck.stop(timeout=0.5)  # what Blender quitting does: an engine that does not stop is killed
    assert stuck.returncode == -9 and time.monotonic() - started < 10


def test_model_rows_put_the_preferences_models_first():
    report = {"roles": {"texture": "bundled", "depth ControlNet": "o/depth", "edit": ""},
              "models": [{"model": "o/depth", "use": "depth ControlNet", "local": False, "complete": False},
                         {"model": "bundled", "use": "the bundled prior", "local": True, "complete": True,
                          "size": "9.08 MB"},
                         {"model": "o/cached", "use": "SDXL", "local": True, "complete": False, "size": "1.00 GB",
                          "missing": ["unet"]},
                         {"model": "o/absent", "use": "SDXL", "local": False, "complete": False}]}
    rows = models.model_rows(report)
    assert [row.text() for row in rows] == ["texture: bundled (on this machine, 9.08 MB)",
                                            "depth ControlNet: o/depth (not downloaded)",
                                            "SDXL: o/cached (partly downloaded (unet missing), 1.00 GB)"]
    assert [row.downloadable for row in rows] == [False, True, True]


# -- with Blender -------------------------------------------------------------------------------

def mod(name):
    return import_module(f"{ADDON_MODULE}.{name}")


@contextmanager
def online(bpy, allowed: bool = True):
    system = bpy.context.preferences.system
    before = system.use_online_access
    system.use_online_access = allowed
    try:
        yield
    finally:
        system.use_online_access = before


@pytest.fixture
def real_engine(addon, tmp_path):
    """The engine vendored in the extension, with an empty model cache of its own."""
    prefs = mod("preferences").get()
    prefs.engine_source = ""
    prefs.cache_dir = str(tmp_path / "hf cache")
    state = mod("preferences").EngineState
    state.download, state.download_message, state.check_rows = None, "", []
    yield prefs
    prefs.cache_dir = ""
    prefs.property_unset("controlnet_depth")
    os.environ.pop("HF_ENDPOINT", None)


def test_check_engine_lists_models_with_their_sizes(real_engine, bpy):
    real_engine.controlnet_depth = CONTROLNET
    bpy.ops.csd.check_engine()
    rows = {row.role: row for row in mod("preferences").EngineState.check_rows}
    assert rows["texture"].model == "bundled" and rows["texture"].complete
    assert rows["texture"].state.startswith("on this machine, ") and rows["texture"].state.endswith(" MB")
    assert rows["depth ControlNet"].state == "not downloaded" and rows["depth ControlNet"].downloadable
    from test_extension import Recorder

    log = []
    mod("preferences").draw_models(Recorder(bpy, log))
    labels = [text for kind, text in log if kind == "label"]
    assert f"depth ControlNet: {CONTROLNET} (not downloaded)" in labels
    downloadable = [row for row in rows.values() if row.downloadable]
    assert log.count(("operator", "csd.download_model")) == len(downloadable) > 0


def test_download_refused_while_online_access_is_off(real_engine, bpy):
    with online(bpy, False), pytest.raises(RuntimeError, match="Online access is off"):
        bpy.ops.csd.download_model(model=CONTROLNET)
    assert mod("preferences").EngineState.download is None


def test_download_fetches_what_the_engine_loads_and_shows_it(real_engine, bpy):
    real_engine.controlnet_depth = CONTROLNET
    state = mod("preferences").EngineState
    with FakeHub() as hub, online(bpy):
        hub.add_repo(CONTROLNET, CONTROLNET_FILES)
        os.environ["HF_ENDPOINT"] = hub.endpoint
        assert bpy.ops.csd.download_model(model=CONTROLNET) == {'FINISHED'}
        assert sorted(hub.fetched(CONTROLNET)) == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    assert state.download_level == "INFO" and state.download_message.startswith(f"{CONTROLNET} is on this machine")
    assert state.download.progress.bytes_done == len(WEIGHTS) + len(CONTROLNET_FILES["config.json"])
    assert mod("exchange.queue").QUEUE.last_report.message == state.download_message
    bpy.ops.csd.check_engine()
    rows = {row.role: row for row in state.check_rows}
    assert rows["depth ControlNet"].complete and rows["depth ControlNet"].state.endswith("14.68 MB")


def test_a_running_download_shows_a_progress_bar_and_cancels(real_engine, bpy):
    from test_extension import Recorder

    state = mod("preferences").EngineState
    prefs_module = mod("preferences")
    with FakeHub() as hub, online(bpy):
        hub.add_repo(CONTROLNET, CONTROLNET_FILES)
        hold = hub.holds[(CONTROLNET, "diffusion_pytorch_model.fp16.safetensors")] = Hold(after=11 * 2 ** 20)
        os.environ["HF_ENDPOINT"] = hub.endpoint
        python, source, env = mod("engine_setup").engine_launch(real_engine)
        state.download = models.ModelDownload(python, CONTROLNET, source, env, prefs_module.user_dir() / "dl.log",
                                              cache_dir=real_engine.cache_dir)
        state.download.start()
        assert hold.reached.wait(60)
        deadline = time.monotonic() + 30
        while state.download.progress.download_file != "diffusion_pytorch_model.fp16.safetensors":
            assert not state.download.poll() and time.monotonic() < deadline
            time.sleep(0.05)
        log = []
        mod("panel").CSD_PT_main.draw(type("P", (), {"layout": Recorder(bpy, log)})(), bpy.context)
        assert ("operator", "csd.download_model_cancel") in log
        assert any(kind == "progress" and text.startswith(f"Downloading {CONTROLNET}: ")
                   and text.endswith(" / 14.68 MB") for kind, text in log)
        assert bpy.ops.csd.download_model_cancel() == {'FINISHED'}
        wait(state.download)
    assert state.download.returncode == 130
    assert state.download.outcome()[1] == f"The download of {CONTROLNET} was cancelled."
