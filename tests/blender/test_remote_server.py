"""The add-on in remote mode against a REAL `python -m engine serve` on 127.0.0.1 (embedded Ray on
the CPU), started once for this module with its own jobs folder, a free port and a token file.

Blender's online access is off in these tests (bpy as a module), so they also show that a loopback
server is reached only with "Allow loopback server while offline" on.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest

from conftest import ADDON_MODULE, ENGINE_PYTHON, ROOT, snapshot
from test_failures import run
from test_real_engine import heavy

SERVER_START_S = 180


def mod(name):
    return import_module(f"{ADDON_MODULE}.{name}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, url: str, token: str, log: Path, process: subprocess.Popen):
        self.url, self.token, self.log, self.process = url, token, log, process

    def client(self):
        remote = mod("exchange.remote")
        return remote.RemoteClient(remote.ServerConfig(self.url, self.token, online_access=False,
                                                       allow_loopback=True))

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture(scope="module")
def server(tmp_path_factory, extension):
    if not ENGINE_PYTHON.exists():
        pytest.skip(f"no engine Python at {ENGINE_PYTHON} (run scripts/setup.sh)")
    if not (ROOT / "engine" / "server" / "serve.py").is_file():
        pytest.skip("the engine has no server (engine/server) yet")
    folder = tmp_path_factory.mktemp("engine server ü")
    token_file = folder / "token"
    token_file.write_text(secrets.token_urlsafe(32) + "\n")
    token_file.chmod(0o600)
    port = _free_port()
    log = folder / "server.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    with open(log, "wb") as out:
        process = subprocess.Popen([str(ENGINE_PYTHON), "-m", "engine", "serve", "--port", str(port),
                                    "--jobs-dir", str(folder / "jobs"), "--token-file", str(token_file)],
                                   cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}", token_file.read_text().strip(), log, process)
    remote = mod("exchange.remote")
    deadline = time.monotonic() + SERVER_START_S
    while True:
        assert process.poll() is None, f"the server exited ({process.returncode}):\n{srv.log_tail()}"
        try:
            srv.client().server_info()
            break
        except remote.ConnectionLost:
            assert time.monotonic() < deadline, f"the server did not answer in {SERVER_START_S} s:\n{srv.log_tail()}"
            time.sleep(0.5)
    yield srv
    process.send_signal(signal.SIGINT)  # uvicorn shuts down and stops its Ray
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the group this fixture started
        process.wait(10)


@pytest.fixture
def remote_mode(addon, bpy, server):
    prefs = mod("preferences").get()
    prefs.engine_mode = 'REMOTE'
    prefs.server_url = server.url
    prefs.server_token = server.token
    prefs.allow_loopback_offline = True
    prefs.engine_source = ""  # the local comparison runs the engine shipped in the extension
    bpy.ops.object.select_all(action='DESELECT')
    bpy.ops.mesh.primitive_monkey_add(location=(0.0, 0.0, 1.0))
    bpy.context.active_object.name = "Suzanne"
    bpy.ops.ed.undo_push(message="Suzanne")
    return prefs


def _report():
    return mod("exchange.queue").QUEUE.last_report


def _texture_pixels(bpy) -> np.ndarray:
    suzanne = bpy.data.objects["Suzanne"]
    mats = [s.material for s in suzanne.material_slots if s.material]
    assert len(mats) == 1 and mats[0].name.startswith("CSD a red sphere"), mats
    image = next(n.image for n in mats[0].node_tree.nodes if n.type == 'TEX_IMAGE')
    assert image.packed_file is not None and tuple(image.size) == (32, 32)
    pixels = np.empty(32 * 32 * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    return pixels


def test_test_connection_shows_the_server(remote_mode, bpy):
    assert bpy.ops.csd.test_connection() == {'FINISHED'}
    state = mod("preferences").EngineState
    assert state.connection_ok and state.connection_lines[0] == f"Connected to {remote_mode.server_url}"
    assert state.connection_lines[1].startswith("Engine ") and "job protocol 1" in state.connection_lines[1]
    assert state.connection_lines[2].startswith("Devices: ") and "CPU" in state.connection_lines[2]
    assert "bundled" in state.connection_lines[3] and "bundled" in state.server_models
    assert mod("panel").connection_state(remote_mode) == ("127.0.0.1: connected", 'LINKED')


@pytest.mark.skipif(os.environ.get("CSD_BLENDER_HEAVY") == "1",
                    reason="covered by test_texture_remote_matches_local")
def test_texture_remote(remote_mode, bpy):
    before = snapshot(bpy)
    assert run(bpy) == {'FINISHED'}, _report()
    assert np.isfinite(_texture_pixels(bpy)).all()
    bpy.ops.ed.undo()
    assert snapshot(bpy) == before


@heavy
def test_texture_remote_matches_local(remote_mode, bpy, monkeypatch):
    """The same job, seed and engine give the same texture on the server as on this computer."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as Ray's workers run, so the CPU sums run alike
    remote_mode.extra_settings = '{"texture": {"preview_every": 1}}'  # previews come from the server too
    remote_mode.keep_job_folders = True  # for the job's log
    before = snapshot(bpy)
    assert run(bpy) == {'FINISHED'}, _report()
    remote_pixels = _texture_pixels(bpy)
    job = mod("exchange.queue").QUEUE.jobs[-1]
    assert job.progress.preview_serial >= 1 and job.progress.refusals == []
    log = job.process.log_path.read_text()
    assert "Sent " in log and "not fetched" not in log, log  # every preview file came
    bpy.ops.ed.undo()
    assert snapshot(bpy) == before
    remote_mode.engine_mode = 'LOCAL'
    assert run(bpy) == {'FINISHED'}, _report()
    local_pixels = _texture_pixels(bpy)
    assert np.array_equal(remote_pixels, local_pixels), np.abs(remote_pixels - local_pixels).max()


def test_a_wrong_token_is_reported_and_changes_nothing(remote_mode, bpy):
    remote_mode.server_token = "not-the-token-" + "y" * 30
    before = snapshot(bpy)
    assert run(bpy) == {'CANCELLED'}
    rep = _report()
    assert rep.level == "ERROR" and "The server refused the token" in rep.message, rep
    assert "--token-file" in rep.hint
    assert snapshot(bpy) == before


def test_cancel_mid_job_ends_cancelled(remote_mode, bpy, server):
    bpy.context.scene.csd.steps = 5000
    before = snapshot(bpy)
    jobs, notes = mod("build_jobs").prepare_texture(bpy.context)
    driver = mod("job_follower").JobFollower(jobs, notes)
    job = jobs[0]
    deadline = time.monotonic() + 120
    driver.tick(bpy.context)
    while job.progress.step < 1:  # the engine is optimising on the server
        assert time.monotonic() < deadline and job.state == "running", (job.state, job.outcome, server.log_tail())
        time.sleep(0.05)
        driver.tick(bpy.context)
    t0 = time.monotonic()
    bpy.ops.csd.cancel()
    while not driver.done:
        driver.tick(bpy.context)
        time.sleep(0.05)
    assert time.monotonic() - t0 < 15
    assert job.state == "cancelled" and job.process.returncode == 130
    assert server.client().job(job.process.job_id)["status"] == "cancelled"
    assert snapshot(bpy) == before


@heavy
def test_closing_the_file_detaches_and_fetch_imports(remote_mode, bpy, server, tmp_path):
    blend = tmp_path / "monkey.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    jobs, notes = mod("build_jobs").prepare_texture(bpy.context)
    driver = mod("job_follower").JobFollower(jobs, notes)
    job = jobs[0]
    deadline = time.monotonic() + 60
    driver.tick(bpy.context)
    while job.process.job_id is None:  # the server has accepted it
        assert time.monotonic() < deadline and job.state == "running", (job.state, job.outcome)
        driver.tick(bpy.context)
        time.sleep(0.05)
    job_id = job.process.job_id

    bpy.ops.wm.open_mainfile(filepath=str(blend))  # closing the file detaches, never cancels
    assert job.state == "detached" and driver.done
    records = mod("preferences").RemoteJobs.records
    assert [r.job_id for r in records] == [job_id]
    client = server.client()
    while client.job(job_id)["status"] not in ("ok", "error", "cancelled"):
        assert time.monotonic() < deadline + 120, server.log_tail()
        time.sleep(0.2)
    assert client.job(job_id)["status"] == "ok"

    assert bpy.ops.csd.fetch_remote_jobs() == {'FINISHED'}, _report()
    assert np.isfinite(_texture_pixels(bpy)).all()
    assert not Path(records[0].job_dir).exists()  # imported: nothing left to fetch
    assert mod("build_jobs").remote_process.pending_records(
        mod("preferences").remote_jobs_root(), str(blend)) == []
