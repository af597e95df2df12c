"""The add-on's remote mode in Blender, before any server answers: where the token lives, and every
job or test refused with a clear message (and no socket opened) when the preferences forbid the network."""

from __future__ import annotations

import socket
import stat
from importlib import import_module
from pathlib import Path

import pytest

from conftest import ADDON_MODULE
from test_failures import expect_refused

TOKEN = "s3cret-" + "x" * 40


def mod(name):
    return import_module(f"{ADDON_MODULE}.{name}")


@pytest.fixture
def no_sockets(monkeypatch):
    attempts = []

    def refuse(self, *args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"a socket was opened: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture
def remote_prefs(addon):
    prefs = mod("preferences").get()
    prefs.engine_mode = 'REMOTE'
    return prefs


def test_the_token_lives_in_a_private_file_not_in_blend_or_preferences(remote_prefs, bpy, tmp_path):
    preferences = mod("preferences")
    remote_prefs.server_token = TOKEN
    path = preferences.token_path()
    assert path.read_text().strip() == TOKEN and remote_prefs.server_token == TOKEN
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    remote_prefs.server_url = "http://marker.example:8765"  # saved with the preferences, unlike the token
    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.save_userpref()
    userpref = Path(bpy.utils.user_resource('CONFIG')) / "userpref.blend"
    assert b"http://marker.example:8765" in userpref.read_bytes()
    for file in (blend, userpref):
        assert TOKEN.encode() not in file.read_bytes(), file
    remote_prefs.server_token = ""
    assert not path.exists() and remote_prefs.server_token == ""


def test_remote_mode_needs_a_server_url(remote_prefs, bpy, no_sockets):
    rep = expect_refused(bpy, "texture_selected", "no server url", "preferences")
    assert "engine python" not in (rep.message + rep.hint).lower()  # remote mode needs no local engine
    assert no_sockets == []


def test_offline_a_remote_server_is_never_contacted(remote_prefs, bpy, no_sockets):
    assert not mod("preferences").online_access()  # bpy as a module runs with online access off
    remote_prefs.server_url = "http://10.255.255.1:8765"
    remote_prefs.allow_loopback_offline = True  # only for servers on this computer
    expect_refused(bpy, "texture_selected", "online access is off", "10.255.255.1")
    expect_refused(bpy, "generate_asset", "online access is off")
    assert no_sockets == []


def test_offline_a_loopback_server_needs_its_preference(remote_prefs, bpy, no_sockets):
    remote_prefs.server_url = "http://127.0.0.1:9"
    expect_refused(bpy, "texture_selected", "online access is off", "allow loopback server while offline")
    assert no_sockets == []


def test_a_local_model_folder_is_refused_for_a_server(remote_prefs, bpy, tmp_path, no_sockets):
    folder = tmp_path / "my model"
    folder.mkdir()
    remote_prefs.server_url = "http://127.0.0.1:9"
    remote_prefs.allow_loopback_offline = True
    remote_prefs.texture_model = str(folder)
    folders = set(mod("preferences").remote_jobs_root().iterdir())
    expect_refused(bpy, "texture_selected", "the server cannot read folders on this computer",
                   "use a hub id or a model the server lists")
    assert no_sockets == []
    assert set(mod("preferences").remote_jobs_root().iterdir()) == folders  # no job folder was written


def test_remote_settings_leave_the_cache_to_the_server(remote_prefs, tmp_path):
    remote_prefs.cache_dir = str(tmp_path)
    settings = mod("preferences").as_dict(remote_prefs)
    assert settings["cache_dir"] == "" and settings["allow_download"] == remote_prefs.allow_download
    remote_prefs.engine_mode = 'LOCAL'
    assert mod("preferences").as_dict(remote_prefs)["cache_dir"] == str(tmp_path)
    remote_prefs.cache_dir = ""


def test_test_connection_offline_says_why_and_opens_nothing(remote_prefs, bpy, no_sockets):
    remote_prefs.server_url = "https://gpu.example.com"
    with pytest.raises(RuntimeError, match="Online access is off"):
        bpy.ops.csd.test_connection()
    state = mod("preferences").EngineState
    assert state.connection_ok is False and "Online access is off" in state.connection_lines[0]
    text, icon = mod("panel").connection_state(remote_prefs)
    assert "Online access is off" in text and icon == 'ERROR'
    assert no_sockets == []


def test_fetch_with_nothing_to_fetch_says_so(remote_prefs, bpy, tmp_path, no_sockets):
    expect_refused(bpy, "fetch_remote_jobs", "no server url")
    remote_prefs.server_url = "http://127.0.0.1:9"
    remote_prefs.allow_loopback_offline = True
    expect_refused(bpy, "fetch_remote_jobs", "never saved")
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    expect_refused(bpy, "fetch_remote_jobs", "no remote jobs of this file")
    assert no_sockets == []


def test_preferences_and_panel_draw_the_remote_mode(remote_prefs, bpy, tmp_path):
    from test_extension import Recorder, draw

    preferences, panel = mod("preferences"), mod("panel")
    remote_prefs.server_url = "http://127.0.0.1:8765"

    class Proxy:
        def __init__(self, real, layout):
            self.__dict__.update(_real=real, layout=layout)

        def __getattr__(self, name):
            return getattr(self._real, name)

    log = []
    preferences.CSD_AddonPreferences.draw(Proxy(remote_prefs, Recorder(bpy, log)), bpy.context)
    for entry in (("prop", "engine_mode"), ("prop", "server_url"), ("prop", "server_token"),
                  ("prop", "allow_loopback_offline"), ("operator", "csd.test_connection")):
        assert entry in log, entry
    assert ("prop", "engine_python") not in log and ("prop", "cache_dir") not in log

    record = mod("exchange.remote_process").RemoteRecord(tmp_path, "http://127.0.0.1:8765", "job-1", "texture",
                                                        "Suzanne", str(tmp_path / "a.blend"), False)
    preferences.RemoteJobs.records = [record]
    try:
        log = draw(bpy, panel.CSD_PT_main, bpy.context)
    finally:
        preferences.RemoteJobs.records = []
    labels = " ".join(text for kind, text in log if kind == "label")
    assert "Remote engine: Online access is off" in labels and "Texture 'Suzanne'" in labels
    assert ("operator", "csd.fetch_remote_jobs") in log and "No engine yet" not in labels
