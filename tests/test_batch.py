"""`python -m engine batch` (docs/remote.md, "Batch"): a manifest's jobs run through local Ray and
through a real server, each as `python -m engine batch` in its own process, on the bundled prior at
tiny sizes on the CPU; and the HTTP client's event stream against a stand-in server that drops it.

Each batch (like each server) runs in a session of its own, so what Ray leaves is ended after it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.batch.manifest import read_manifest
from engine.server.client import ServerClient, ServerError
from test_server import engine_env, new_server, processes

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {"prior": {"model": "bundled"}, "steps": 20, "texture_size": 128, "render_size": 32}
# name, mesh, prompt, settings of their own
GOOD = [("cube", "cube.obj", "a green checkered cube", {}),
        ("sphere", "sphere.obj", "a red sphere", {}),
        ("cube-seed3", "cube.obj", "a blue cube", {"seed": 3})]
BAD = ("too-small", "cube.obj", "a cube", {"render_size": 8})  # refused by the engine's bounds: 16 to 2,048
BATCH_TIMEOUT_S = 420


def rows(jobs) -> list[dict]:
    return [{"name": name, "task": "texture", "mesh": f"meshes/{mesh}", "prompt": prompt,
             "settings": {**SETTINGS, **extra}} for name, mesh, prompt, extra in jobs]


def write_csv(path: Path, jobs) -> Path:
    lines = ["name,task,mesh,prompt,settings"]
    for row in rows(jobs):
        settings = json.dumps(row["settings"]).replace('"', '""')
        lines.append(f'{row["name"]},{row["task"]},{row["mesh"]},{row["prompt"]},"{settings}"')
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def write_jsonl(path: Path, jobs) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows(jobs)), "utf-8")
    return path


def batch(*args: str) -> subprocess.CompletedProcess:
    """`python -m engine batch ARGS` in a session of its own; whatever it leaves (Ray's agents) is ended."""
    process = subprocess.Popen([sys.executable, "-m", "engine", "batch", *args], cwd=REPO, env=engine_env(),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=BATCH_TIMEOUT_S)
    finally:
        process.kill()
        for proc in processes():
            if proc.session == process.pid and proc.pid != process.pid:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The three texture jobs and one with a bad setting, run on Ray on this machine."""
    root = tmp_path_factory.mktemp("batch")
    (root / "meshes").mkdir()
    for mesh in ("cube.obj", "sphere.obj"):
        shutil.copy(REPO / "examples" / mesh, root / "meshes" / mesh)
    manifest = write_csv(root / "manifest.csv", GOOD + [BAD])
    started = time.monotonic()
    completed = batch(str(manifest), "--out", str(root / "out"))
    return root, completed, time.monotonic() - started


def test_local_batch_runs_every_row_and_a_failed_job_twice_without_stopping_the_others(first_run):
    root, completed, _ = first_run
    assert completed.returncode == 1, completed.stderr  # one job failed
    document = summary(root / "out")
    assert list(document["jobs"]) == ["cube", "sphere", "cube-seed3", "too-small"]
    for name, _mesh, _prompt, _extra in GOOD:
        job = document["jobs"][name]
        assert (job["status"], job["skipped"], job["attempts"], job["error"]) == ("ok", False, 1, None), job
        assert job["outputs"]["texture"] == f"{name}/texture.png"
        for relative in job["outputs"].values():
            assert (root / "out" / relative).is_file()
        record = json.loads((root / "out" / name / "batch-job.json").read_text("utf-8"))
        assert record["job"]["mesh"] == "input/" + _mesh and record["job"]["settings"]["prompt"] == _prompt
    bad = document["jobs"]["too-small"]
    assert (bad["status"], bad["attempts"], bad["error"]["kind"]) == ("error", 2, "bad_input"), bad
    assert "render_size" in bad["error"]["message"]
    assert not (root / "out" / "too-small").exists()  # a failed job leaves no folder
    assert (document["ok"], document["error"]) == (3, 1)
    assert "too-small error" in completed.stderr and "trying once more" in completed.stderr
    assert not any((root / "out").glob(".*next-*")) and not list((root / "out" / ".batch-jobs").glob("2*"))


def test_batch_outputs_equal_engine_run_on_the_same_job_folder(first_run, tmp_path):
    root, _, _ = first_run
    row = next(row for row in read_manifest(root / "manifest.csv") if row.name == "cube")
    folder = row.inputs.write(tmp_path / "job")
    run = subprocess.run([sys.executable, "-m", "engine", "run", str(folder)], cwd=REPO, env=engine_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (folder / "out" / "texture.png").read_bytes() == (root / "out" / "cube" / "texture.png").read_bytes()
    record = json.loads((root / "out" / "cube" / "batch-job.json").read_text("utf-8"))
    assert record["input_hash"] == row.inputs.input_hash()


def test_a_second_run_skips_the_finished_jobs(first_run):
    root, _, first_s = first_run
    # The same jobs as JSON lines: the same job folders, so the same input hashes as the CSV's rows.
    manifest = write_jsonl(root / "again.jsonl", GOOD)
    started = time.monotonic()
    completed = batch(str(manifest), "--out", str(root / "out"))
    elapsed = time.monotonic() - started
    assert completed.returncode == 0, completed.stderr
    jobs = summary(root / "out")["jobs"]
    assert all((job["status"], job["skipped"], job["attempts"]) == ("ok", True, 0) for job in jobs.values()), jobs
    assert "3 skipped (done already), 0 to run" in completed.stderr and "running on" not in completed.stderr
    assert elapsed < first_s / 2, (elapsed, first_s)


def test_a_malformed_manifest_is_refused_naming_each_row_and_column(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text('name,task,mesh,prompt,settings\n'
                        'a,texture,missing.obj,a cube,"{""steps"": 20"\n'
                        'b,paint,,,\n', "utf-8")
    completed = batch(str(manifest), "--out", str(tmp_path / "out"))
    assert completed.returncode == 2
    assert "has 3 problems" in completed.stderr
    assert "line 2 (row 1), column 'settings': not valid JSON" in completed.stderr
    assert "line 2 (row 1), column 'mesh':" in completed.stderr and "missing.obj does not exist" in completed.stderr
    assert "line 3 (row 2), column 'task': 'paint' is not one of texture, generate, edit" in completed.stderr
    assert not (tmp_path / "out").exists()


def test_input_hash_follows_the_job_not_the_manifest(tmp_path):
    (tmp_path / "meshes").mkdir()
    shutil.copy(REPO / "examples" / "cube.obj", tmp_path / "meshes" / "cube.obj")
    first = read_manifest(write_jsonl(tmp_path / "a.jsonl", GOOD[:1]))[0].inputs.input_hash()
    reordered = tmp_path / "b.jsonl"
    row = rows(GOOD[:1])[0]
    reordered.write_text(json.dumps({"settings": dict(reversed(list(row["settings"].items()))),
                                     **{key: row[key] for key in ("prompt", "mesh", "task", "name")}}) + "\n")
    assert read_manifest(reordered)[0].inputs.input_hash() == first
    changed = read_manifest(write_jsonl(tmp_path / "c.jsonl", [(*GOOD[0][:3], {"steps": 21})]))[0]
    assert changed.inputs.input_hash() != first
    with open(tmp_path / "meshes" / "cube.obj", "a") as mesh:
        mesh.write("# edited\n")
    assert read_manifest(tmp_path / "a.jsonl")[0].inputs.input_hash() != first


def test_a_row_brings_the_files_its_mesh_names_and_an_edits_source_folder(tmp_path):
    (tmp_path / "meshes" / "maps").mkdir(parents=True)
    (tmp_path / "meshes" / "chair.obj").write_text("mtllib chair.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "meshes" / "chair.mtl").write_text("newmtl wood\nmap_Kd -s 1 1 1 maps/wood.png\n"
                                                   "map_Bump ../outside.png\n")  # outside the mesh's folder: left out
    (tmp_path / "meshes" / "maps" / "wood.png").write_bytes(b"png")
    (tmp_path / "outside.png").write_bytes(b"png")
    (tmp_path / "meshes" / "lamp.gltf").write_text(json.dumps({"buffers": [{"uri": "lamp%20data.bin"}],
                                                               "images": [{"uri": "data:image/png;base64,AA=="}]}))
    (tmp_path / "meshes" / "lamp data.bin").write_bytes(b"\0" * 12)
    (tmp_path / "earlier" / ".partial-7").mkdir(parents=True)
    for name in ("result.json", "state.pt", ".partial-7/state.pt"):
        (tmp_path / "earlier" / name).write_text("{}")
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in [
        {"task": "texture", "mesh": "meshes/chair.obj", "prompt": "a chair"},
        {"task": "texture", "mesh": str(tmp_path / "meshes" / "lamp.gltf"), "prompt": "a lamp"},
        {"task": "edit", "source": "earlier", "target_prompt": "a red chair", "edit_prompt": "brown"}]) + "\n")
    chair, lamp, edit = read_manifest(manifest)
    assert (chair.name, lamp.name, edit.name) == ("001-chair", "002-lamp", "003-earlier")
    assert [name for name, _ in chair.inputs.files] == ["input/chair.obj", "input/chair.mtl", "input/maps/wood.png"]
    assert [name for name, _ in lamp.inputs.files] == ["input/lamp.gltf", "input/lamp data.bin"]
    assert [name for name, _ in edit.inputs.files] == ["source/result.json", "source/state.pt"]
    assert (edit.inputs.document["source"], edit.inputs.document["settings"]) == (
        "source", {"target_prompt": "a red chair", "edit_prompt": "brown"})
    folder = chair.inputs.write(tmp_path / "job")
    assert json.loads((folder / "job.json").read_text())["mesh"] == "input/chair.obj"
    assert (folder / "input" / "maps" / "wood.png").read_bytes() == b"png"


def test_batch_through_a_server_equals_the_local_batch(first_run, tmp_path):
    root, _, _ = first_run
    server = new_server(tmp_path / "server").start()
    try:
        manifest = write_jsonl(root / "server.jsonl", GOOD[:1])
        url = f"http://127.0.0.1:{server.port}"
        wrong = tmp_path / "wrong-token"
        wrong.write_text("w" * 40 + "\n")
        wrong.chmod(0o600)
        refused = batch(str(manifest), "--out", str(tmp_path / "refused"), "--server", url, "--token-file", str(wrong))
        assert refused.returncode == 1 and "The server refused the token." in refused.stderr
        completed = batch(str(manifest), "--out", str(tmp_path / "out"), "--server", url,
                          "--token-file", str(server.token_file))
        assert completed.returncode == 0, completed.stderr + server.log_tail()
        job = summary(tmp_path / "out")["jobs"]["cube"]
        assert (job["status"], job["attempts"]) == ("ok", 1), job
        assert ((tmp_path / "out" / "cube" / "texture.png").read_bytes()
                == (root / "out" / "cube" / "texture.png").read_bytes())
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------
# The client's event stream, against a stand-in server
# ------------------------------------------------------------------------------------------------

class StandIn(BaseHTTPRequestHandler):
    """Job J's three events: the first stream sends two and ends while the job runs, the next sends
    the third; the job has finished after the second stream."""

    protocol_version = "HTTP/1.0"  # each answer ends when the connection closes, as a dropped stream does
    streams: list[str] = []
    tokens: list[str] = []
    EVENTS = [{"event": "started", "total_steps": 2}, {"event": "step", "step": 1, "total_steps": 2},
              {"event": "finished", "status": "ok"}]

    def do_GET(self):  # the name http.server calls
        self.tokens.append(self.headers.get("Authorization", ""))
        if self.path.startswith("/v1/jobs/J/events"):
            after = int(self.headers.get("Last-Event-ID", "0"))
            self.streams.append(f"{self.path} Last-Event-ID={after}")
            self.answer(200, "text/event-stream", "".join(
                f": keep-alive\n\nid: {number}\nevent: progress\ndata: {json.dumps(event)}\n\n"
                for number, event in enumerate(self.EVENTS, start=1) if after < number <= after + 2).encode())
        elif self.path == "/v1/jobs/J":
            finished = len(self.streams) >= 2
            self.answer(200, "application/json", json.dumps({"job": {
                "id": "J", "status": "ok" if finished else "running", "events": 3}}).encode())
        else:
            refusal = {"kind": "not_found", "message": "There is no job 'X' on this server.", "hint": "GET /v1/jobs"}
            self.answer(404, "application/json", json.dumps({"error": refusal}).encode())

    def answer(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    StandIn.streams, StandIn.tokens = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ServerClient(f"http://127.0.0.1:{server.server_address[1]}", token="t" * 40)
    finally:
        server.shutdown()
        server.server_close()


def test_client_events_continue_from_the_last_event_after_the_stream_ends_early(stand_in):
    events = list(stand_in.events("J"))
    assert [number for number, _ in events] == [1, 2, 3]
    assert [event["event"] for _, event in events] == ["started", "step", "finished"]
    assert StandIn.streams == ["/v1/jobs/J/events?after=0 Last-Event-ID=0", "/v1/jobs/J/events?after=2 Last-Event-ID=2"]
    assert set(StandIn.tokens) == {"Bearer " + "t" * 40}


def test_client_raises_the_servers_error(stand_in):
    with pytest.raises(ServerError) as caught:
        list(stand_in.events("X"))
    error = caught.value
    assert (error.status, error.kind, error.message, error.hint) == (
        404, "not_found", "There is no job 'X' on this server.", "GET /v1/jobs")
    with pytest.raises(ServerError) as caught:
        ServerClient("http://127.0.0.1:9", token=None).server_info()  # nothing listens on the discard port
    assert (caught.value.status, caught.value.kind) == (0, "unreachable") and "Cannot reach" in caught.value.message
