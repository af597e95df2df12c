"""The add-on's remote client without Blender and without the real server (csd_blender/exchange/remote*.py):
safe unpacking, server-sent events, the network rules, and RemoteEngineProcess against a small
stand-in that speaks docs/remote.md's /v1 (lost connections, previews, outputs, a refused token, a cancel)."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import struct
import sys
import threading
import time
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from csd_blender.exchange import job_folder, protocol, remote, remote_process, requests, result  # noqa: E402
from csd_blender.exchange.errors import UserError  # noqa: E402
from csd_blender.exchange.engine_output import EngineOutputError  # noqa: E402
from csd_blender.exchange.progress import JsonlTail  # noqa: E402

TOKEN = "t" * 40


def png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + b"\x80\x40\x20" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_zip(path: Path, members: list[tuple]) -> Path:
    """members: (name, bytes) or (ZipInfo, bytes)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


# -- unpacking the server's outputs ------------------------------------------------------------------

def test_a_good_outputs_zip_is_unpacked(tmp_path):
    archive = make_zip(tmp_path / "o.zip", [("result.json", b"{}"), ("previews/a.png", png()), ("sub/", b"")])
    names = remote.unpack_outputs(archive, tmp_path / "out")
    assert sorted(names) == ["previews/a.png", "result.json"]
    assert (tmp_path / "out" / "previews" / "a.png").read_bytes() == png() and (tmp_path / "out" / "sub").is_dir()


def _link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _fifo(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    return info


@pytest.mark.parametrize("members, words", [
    ([("/etc/passwd", b"x")], "absolute"),
    ([("../escape.txt", b"x")], "leaves its folder"),
    ([("a/../../escape.txt", b"x")], "leaves its folder"),
    ([("a\\..\\b.txt", b"x")], "absolute"),
    ([("C:/x.txt", b"x")], "absolute"),
    ([(_link("texture.png"), b"/etc/passwd")], "link"),
    ([(_fifo("pipe"), b"")], "link or special"),
    ([("a.txt", b"1"), ("A.TXT", b"2")], "twice"),
    ([("bomb.bin", b"\0" * (8 * 2 ** 20))], "zip bomb"),
])
def test_unsafe_outputs_are_refused_before_anything_is_written(tmp_path, members, words):
    archive = make_zip(tmp_path / "o.zip", members)
    with pytest.raises(EngineOutputError, match=words):
        remote.unpack_outputs(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.txt").exists()


def test_too_many_files_or_bytes_and_non_zips_are_refused(tmp_path):
    archive = make_zip(tmp_path / "o.zip", [(f"f{i}.txt", b"abc") for i in range(5)])
    with pytest.raises(EngineOutputError, match="5 files"):
        remote.unpack_outputs(archive, tmp_path / "a", max_files=4)
    with pytest.raises(EngineOutputError, match="15 bytes"):
        remote.unpack_outputs(archive, tmp_path / "b", max_bytes=14)
    (tmp_path / "not.zip").write_bytes(b"<html>proxy error</html>")
    with pytest.raises(EngineOutputError, match="not a readable zip"):
        remote.unpack_outputs(tmp_path / "not.zip", tmp_path / "c")


def test_a_member_larger_than_it_declares_is_cut_off(tmp_path):
    archive = make_zip(tmp_path / "o.zip", [("a.bin", b"x" * 1000)])
    data = bytearray(archive.read_bytes())
    # Make both headers declare 10 bytes: the unpacker counts what it writes instead of trusting them.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature)
        data[at + offset:at + offset + 4] = struct.pack("<I", 10)
    archive.write_bytes(bytes(data))
    with pytest.raises(EngineOutputError):
        remote.unpack_outputs(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-unpacked is left


# -- server-sent events -----------------------------------------------------------------------------

def test_sse_parser_follows_the_stream_rules():
    parser = remote.SseParser()
    lines = [": keep-alive", "", "id: 7", "event: progress", 'data: {"event": "step",', 'data: "step": 2}', "",
             "retry: 1000", "id: x", "data: plain\r", "", "id: 9", ""]
    events = [e for e in (parser.feed(line + "\n") for line in lines) if e is not None]
    assert events[0] == remote.SseEvent(7, "progress", '{"event": "step",\n"step": 2}')
    assert events[1] == remote.SseEvent(None, "message", "plain")
    assert len(events) == 2  # a comment, or an id without data, is no event


class FakeResponse(io.BytesIO):
    pass


def test_event_stream_skips_bad_and_overlong_lines():
    big = "data: " + json.dumps({"event": "stage", "name": "x" * 70000})
    body = "\n".join(["id: 1", 'data: {"event": "started", "total_steps": 3}', "", "id: 2", "data: not json", "",
                      "id: 3", big, "", "id: 4", 'data: {"event": "finished", "status": "ok"}', "", ""])
    events = list(remote.EventStream(FakeResponse(body.encode())))
    assert [(n, e["event"]) for n, e in events] == [(1, "started"), (4, "finished")]


# -- where the add-on may go -------------------------------------------------------------------------

@pytest.fixture
def no_sockets(monkeypatch):
    """Fails the test if anything tries to connect anywhere."""
    attempts = []

    def refuse(self, *args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"a socket was opened: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_urls_are_normalised_and_bad_ones_refused():
    assert remote.normalize_url(" http://127.0.0.1:8765/v1/ ") == "http://127.0.0.1:8765"
    assert remote.normalize_url("https://gpu.example.com/csd/") == "https://gpu.example.com/csd"
    for bad, words in (("", "No server URL"), ("ftp://x", "not a server URL"), ("127.0.0.1:8765", "not a server URL"),
                       ("http://u:p@h:1", "parts"), ("http://h:port", "port")):
        with pytest.raises(UserError, match=words):
            remote.normalize_url(bad)
    assert remote.is_loopback("localhost") and remote.is_loopback("127.0.0.2") and remote.is_loopback("[::1]")
    assert not remote.is_loopback("10.0.0.1") and not remote.is_loopback("gpu.example.com")


def test_offline_means_no_socket_unless_a_loopback_server_is_allowed(no_sockets, tmp_path):
    remote_server = remote.ServerConfig("http://10.255.255.1:8765", TOKEN, online_access=False, allow_loopback=True)
    loopback_refused = remote.ServerConfig("http://127.0.0.1:9", TOKEN, online_access=False, allow_loopback=False)
    empty = remote.ServerConfig("", TOKEN, online_access=True, allow_loopback=True)
    for config, words in ((remote_server, "Online access is off"), (loopback_refused, "Allow loopback server"),
                          (empty, "No server URL")):
        with pytest.raises(remote.NetworkBlocked) as refused:
            remote.RemoteClient(config)
        assert words in refused.value.text()
    # A job sent through a blocked config fails with the same message, and nothing is opened either.
    job_dir = _job_dir(tmp_path)
    process = remote_process.RemoteEngineProcess(job_dir, remote_process.RemoteTarget(remote_server), "cube")
    process.start()
    assert process.wait(10) == protocol.EXIT_ENGINE_ERROR
    outcome = result.interpret(job_dir, process.returncode, last_error_event=_progress(job_dir).error)
    assert "Online access is off" in outcome.message and not (job_dir / remote.REMOTE_FILE).exists()
    assert no_sockets == []


def test_a_loopback_server_is_reached_offline_when_allowed(fake_server):
    config = remote.ServerConfig(fake_server.url, TOKEN, online_access=False, allow_loopback=True)
    assert remote.RemoteClient(config).server_info()["protocol"] == protocol.PROTOCOL
    assert fake_server.seen_auth == {f"Bearer {TOKEN}"}


def test_local_model_folders_are_refused_for_a_server(tmp_path):
    folder = tmp_path / "my model"
    folder.mkdir()
    for value in (str(folder), "~/models/sd", "//models/sd", "./sd", "C:\\models\\sd"):
        assert remote.local_model_folder(value), value
        with pytest.raises(UserError, match="cannot read folders on this computer"):
            remote.check_remote_models({"texture model": value})
    for value in ("bundled", "", "stable-diffusion-v1-5/stable-diffusion-v1-5", "/srv/models/on-the-server"):
        assert not remote.local_model_folder(value), value
    assert not remote.local_model_folder(str(folder), server_models={str(folder)})


def test_labels_become_latin1_header_values():
    assert remote.header_text("Suzanne ü 100%\n") == "Suzanne %C3%BC 100%25"


# -- the job folder as it travels, and as a later session finds it ------------------------------------

def _job_dir(tmp_path) -> Path:
    job_dir = tmp_path / "job ü"
    job_dir.mkdir()
    job_folder.write_mesh_npz(job_dir / protocol.MESH_FILE, np.eye(3), [[0, 1, 2]])
    job_folder.write_job(job_dir, "texture", {"prompt": "a cube", "steps": 2}, mesh=protocol.MESH_FILE)
    return job_dir


def test_pack_job_sends_only_the_engines_inputs(tmp_path):
    job_dir = _job_dir(tmp_path)
    for name in (protocol.PROGRESS_FILE, protocol.LOG_FILE, protocol.CANCEL_FILE, remote.REQUEST_FILE,
                 remote.REMOTE_FILE):
        (job_dir / name).write_text("{}")
    (job_dir / "out").mkdir()
    (job_dir / "out" / "result.json").write_text("{}")
    (job_dir / "source").mkdir()
    (job_dir / "source" / "state.pt").write_bytes(b"weights")
    archive = remote.pack_job(job_dir, tmp_path / "up.zip")
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["job.json", "mesh.npz", "source/state.pt"]
    os.symlink("/etc/passwd", job_dir / "source" / "link")
    with pytest.raises(UserError, match="link"):
        remote.pack_job(job_dir, tmp_path / "up2.zip")


def test_requests_survive_the_disk_without_pickles(tmp_path):
    ref = requests.ObjectRef("Suzanne", 42, {"vertices": 507, "loops": 1968, "polygons": 500})
    overlay = requests.MeshOverlay(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]]), None)
    texture = requests.TextureRequest(ref, "a monkey", "UVMap", False, np.array([[0, 1, 2]]), overlay)
    for request in (texture, requests.GenerateRequest("a chair", (1.0, 2.0, 3.0)),
                    requests.EditRequest(ref, "blue", "UVMap", "material", "texture")):
        folder = tmp_path / type(request).__name__
        folder.mkdir()
        remote_process.save_request(folder, "texture", "Suzanne", "/tmp/scene.blend", request)
        back = remote_process.load_request(folder)
        assert type(back) is type(request) and back.prompt == request.prompt
        if hasattr(request, "target"):
            assert back.target == requests.ObjectRef("Suzanne", None, ref.counts)  # no stale session id
    tri_loops = remote_process.load_request(tmp_path / "TextureRequest").tri_loops
    assert np.array_equal(tri_loops, [[0, 1, 2]]) and tri_loops.dtype.kind == "i"
    (tmp_path / "TextureRequest" / remote.REQUEST_FILE).write_text('{"request": {"kind": "texture"}}')
    with pytest.raises(UserError, match="damaged"):
        remote_process.load_request(tmp_path / "TextureRequest")
    with pytest.raises(UserError, match="damaged"):
        remote_process.load_request(tmp_path / "GenerateRequest" / "missing")
    np.save(tmp_path / "obj.npy", np.array([object()], dtype=object), allow_pickle=True)
    os.replace(tmp_path / "obj.npy", tmp_path / "EditRequest" / remote.REQUEST_ARRAYS)
    with pytest.raises(UserError, match="damaged"):  # a pickled array is never loaded
        remote_process.load_request(tmp_path / "EditRequest")


def test_records_list_this_files_unsettled_jobs(tmp_path):
    root = tmp_path / "remote-jobs"
    blend = str(tmp_path / "scene.blend")
    for name, blend_of, settled in (("a", blend, False), ("b", blend, True), ("c", "/other.blend", False),
                                    ("d", "", False)):
        folder = root / name
        folder.mkdir(parents=True)
        remote_process.save_request(folder, "generate", name, blend_of, requests.GenerateRequest("x", (0, 0, 0)))
        job_folder.write_json_atomic(folder / remote.REMOTE_FILE,
                                     {"server": "http://127.0.0.1:1", "job_id": f"job-{name}", "settled": settled})
    assert [r.label for r in remote_process.pending_records(root, blend)] == ["a"]
    remote_process.set_blend(root / "d", blend)
    remote_process.settle(root / "a")
    assert [r.label for r in remote_process.pending_records(root, blend)] == ["d"]
    (root / "e").mkdir()  # never accepted by a server
    now = time.time()
    for name, age in (("e", 0), ("a", 10), ("b", 20), ("d", 30), ("c", 40 * 86400)):
        os.utime(root / name, (now - age, now - age))
    remote_process.prune(root, keep=1)
    # kept: the newest folder, and the one job still to fetch; gone: settled ones and one too old to matter
    assert sorted(p.name for p in root.iterdir()) == ["d", "e"]


# -- RemoteEngineProcess against a stand-in server -------------------------------------------------------

EVENTS = [
    {"event": "queued", "position": 1},
    {"event": "started", "task": "texture", "total_steps": 4, "device": "cpu", "time": 0.1},
    {"event": "stage", "name": "optimising", "time": 0.2},
    {"event": "step", "step": 1, "total_steps": 4, "loss": 0.5, "elapsed_s": 0.3, "eta_s": 1.0, "time": 0.3},
    {"event": "preview", "step": 2, "path": ".partial-7/previews/texture_000002.png",
     "view": ".partial-7/previews/view_000002.png", "time": 0.4},
    {"event": "step", "step": 4, "total_steps": 4, "loss": 0.25, "elapsed_s": 0.6, "eta_s": 0.0, "time": 0.6},
    {"event": "finished", "status": "ok", "result": "result.json", "time": 0.7},
]


class FakeServer:
    """docs/remote.md's /v1, scripted: the first event stream breaks after 4 events, the next request
    for it gets a 503, the third resumes from the Last-Event-ID it is given."""

    def __init__(self, token: str = TOKEN, mode: str = "ok"):
        self.token, self.mode = token, mode
        self.seen_auth: set = set()
        self.uploads: list[bytes] = []
        self.event_requests: list[tuple[str, str]] = []  # (after, Last-Event-ID)
        self.preview_requests: list[str] = []
        self.cancelled = threading.Event()
        self.release_outputs = threading.Event()
        self.status = "queued"
        self.max_upload_bytes = 512 << 20
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, status, doc):
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _job(self):
                return {"id": "20261208-011500-3f9c2a", "task": "texture", "status": server.status,
                        "exit_code": {"ok": 0, "cancelled": 130}.get(server.status), "events": len(EVENTS)}

            def _authorised(self):
                given = self.headers.get("Authorization", "")
                server.seen_auth.add(given)
                if given != f"Bearer {server.token}":
                    self._json(401, {"error": {"kind": "wrong_token", "message": "The server refused the token.",
                                               "hint": "Use the token in the server's --token-file."}})
                    return False
                return True

            def do_POST(self):
                if not self._authorised():
                    return
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/jobs":
                    server.uploads.append(body)
                    self._json(201, {"job": self._job()})
                elif self.path.endswith("/cancel"):
                    server.cancelled.set()
                    self._json(202, {"job": self._job()})

            def do_GET(self):
                if not self._authorised():
                    return
                path = self.path
                if path == "/v1/server":
                    self._json(200, {"engine_version": "0.1.0", "protocol": protocol.PROTOCOL,
                                     "ray": {"gpus": 2, "cpus": 32, "nodes": 1, "accelerators": ["H100"]},
                                     "models": [{"model": "bundled"}, {"model": "org/sd"}],
                                     "max_upload_bytes": server.max_upload_bytes})
                elif "/events" in path:
                    self._events(path.split("after=")[1], self.headers.get("Last-Event-ID", ""))
                elif "/previews/" in path:
                    server.preview_requests.append(path.split("/previews/", 1)[1])
                    data = png()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif path.endswith("/outputs"):
                    server.release_outputs.wait(10)
                    buffer = io.BytesIO()
                    with zipfile.ZipFile(buffer, "w") as z:
                        z.writestr("result.json", json.dumps({"protocol": 1, "task": "texture", "status": "ok",
                                                              "outputs": {"texture": "texture.png"}}))
                        z.writestr("texture.png", png(4, 4))
                    data = buffer.getvalue()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                else:
                    self._json(200, {"job": self._job()})

            def _chunk(self, text: str):
                data = text.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _events(self, after, last_id):
                server.event_requests.append((after, last_id))
                attempt = len(server.event_requests)
                if server.mode == "ok" and attempt == 2:
                    self._json(503, {"error": {"kind": "unavailable", "message": "restarting"}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                start = int(last_id or after)
                if server.mode == "cancel":
                    server.status = "running"
                    self._chunk(f"id: 1\nevent: progress\ndata: {json.dumps(EVENTS[1])}\n\n")
                    while not server.cancelled.wait(0.05):
                        self._chunk(": keep-alive\n\n")
                    server.status = "cancelled"
                    for number, event in ((2, {"event": "error", "kind": "cancelled", "message": "Cancelled.",
                                               "exit_code": 130}), (3, {"event": "finished", "status": "cancelled"})):
                        self._chunk(f"id: {number}\nevent: progress\ndata: {json.dumps(event)}\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                server.status = "running"
                end = 4 if attempt == 1 else len(EVENTS)
                for number in range(start + 1, end + 1):
                    self._chunk(f"id: {number}\nevent: progress\ndata: {json.dumps(EVENTS[number - 1])}\n\n")
                if attempt == 1:  # cut off: no final chunk, the connection just closes
                    self.close_connection = True
                    return
                server.status = "ok"
                self.wfile.write(b"0\r\n\r\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release_outputs.set()
        self.cancelled.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server():
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(remote_process, "RETRY_FIRST_S", 0.05)


def _progress(job_dir: Path):
    from csd_blender.exchange.progress import JobProgress

    state = JobProgress()
    state.apply_all(JsonlTail(job_dir / protocol.PROGRESS_FILE).read())
    return state


def _target(url: str, token: str = TOKEN) -> remote_process.RemoteTarget:
    return remote_process.RemoteTarget(remote.ServerConfig(url, token, online_access=False, allow_loopback=True))


def test_a_job_is_followed_through_a_lost_connection(tmp_path, fake_server, quick_retries):
    job_dir = _job_dir(tmp_path)
    (job_dir / remote.REQUEST_FILE).write_text("{}")  # stays here
    process = remote_process.RemoteEngineProcess(job_dir, _target(fake_server.url), "cube ü")
    process.start()
    tail, lines, seen_preview = JsonlTail(job_dir / protocol.PROGRESS_FILE), [], False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not fake_server.release_outputs.is_set():
        for event in tail.read():
            lines.append(event)
            if event["event"] == "preview":  # written only once its files are here
                for key in ("path", "view"):
                    assert (job_dir / "out" / event[key]).read_bytes() == png()
                seen_preview = True
            if event["event"] == "finished":
                fake_server.release_outputs.set()
        time.sleep(0.005)
    assert process.wait(20) == 0 and seen_preview
    lines += tail.read()
    stages = [e["name"] for e in lines if e["event"] == "stage"]
    assert stages[:5] == ["sending the job to the server", "queued on the server (position 1)", "optimising",
                          remote_process.CONNECTION_LOST, "optimising"]
    assert stages[-1] == "fetching the result"
    server_events = iter(lines)  # every event of the server, once and in order, among the add-on's stages
    assert all(any(line == event for line in server_events) for event in EVENTS)
    assert len(lines) == len(EVENTS) + 5  # sending, queued, lost, restored, fetching
    # resumed after event 4, by number and by Last-Event-ID
    assert fake_server.event_requests == [("0", ""), ("4", "4"), ("4", "4")]
    assert sorted(fake_server.preview_requests) == sorted([EVENTS[4]["path"], EVENTS[4]["view"]])
    assert fake_server.seen_auth == {f"Bearer {TOKEN}"}
    with zipfile.ZipFile(io.BytesIO(fake_server.uploads[0])) as z:
        assert sorted(z.namelist()) == ["job.json", "mesh.npz"]
    assert json.loads((job_dir / remote.REMOTE_FILE).read_text()) == {
        "server": fake_server.url, "job_id": "20261208-011500-3f9c2a", "settled": False}
    # out/ is the server's set alone, as after a local run's swap
    assert sorted(p.name for p in (job_dir / "out").iterdir()) == ["result.json", "texture.png"]
    outcome = result.interpret(job_dir, process.returncode)
    assert outcome.ok and set(outcome.outputs) == {"texture"}
    assert not (job_dir / remote.UPLOAD_FILE).exists() and not (job_dir / remote_process.OUTPUTS_ZIP).exists()


def test_a_refused_token_says_so_and_sends_nothing_else(tmp_path, fake_server):
    job_dir = _job_dir(tmp_path)
    process = remote_process.RemoteEngineProcess(job_dir, _target(fake_server.url, token="wrong"), "cube")
    process.start()
    assert process.wait(10) == protocol.EXIT_ENGINE_ERROR
    outcome = result.interpret(job_dir, process.returncode, last_error_event=_progress(job_dir).error)
    assert outcome.status == "error" and outcome.kind == "unauthorized"
    assert outcome.message.startswith("The server refused the token") and "--token-file" in outcome.hint
    assert fake_server.uploads == [] and fake_server.event_requests == []
    assert not (job_dir / remote.REMOTE_FILE).exists()


def test_a_job_larger_than_the_server_takes_is_not_sent(tmp_path, fake_server):
    fake_server.max_upload_bytes = 100
    job_dir = _job_dir(tmp_path)
    process = remote_process.RemoteEngineProcess(job_dir, _target(fake_server.url), "cube")
    process.start()
    assert process.wait(10) == protocol.EXIT_ENGINE_ERROR
    outcome = result.interpret(job_dir, process.returncode, last_error_event=_progress(job_dir).error)
    assert "more than the server accepts (100 B)" in outcome.message and "--max-upload-mb" in outcome.hint
    assert fake_server.uploads == [] and not (job_dir / remote.UPLOAD_FILE).exists()


def test_cancel_reaches_the_server_and_ends_cancelled(tmp_path):
    server = FakeServer(mode="cancel")
    try:
        job_dir = _job_dir(tmp_path)
        process = remote_process.RemoteEngineProcess(job_dir, _target(server.url), "cube")
        process.start()
        deadline = time.monotonic() + 10
        while _progress(job_dir).stage != "starting":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t0 = time.monotonic()
        process.cancel()
        assert process.wait(10) == protocol.EXIT_CANCELLED and time.monotonic() - t0 < 5
        assert server.cancelled.is_set() and process.cancel_requested
        assert not (job_dir / "out" / protocol.RESULT_FILE).exists()  # a cancelled job's outputs are not fetched
    finally:
        server.close()


def test_detach_leaves_the_server_job_alone(tmp_path):
    server = FakeServer(mode="cancel")  # its stream waits (keep-alives) until a cancel that must not come
    try:
        job_dir = _job_dir(tmp_path)
        process = remote_process.RemoteEngineProcess(job_dir, _target(server.url), "cube")
        process.start()
        deadline = time.monotonic() + 10
        while _progress(job_dir).stage != "starting":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.detach()
        time.sleep(0.3)
        assert not server.cancelled.is_set() and process.returncode is None
        assert json.loads((job_dir / remote.REMOTE_FILE).read_text())["job_id"] == "20261208-011500-3f9c2a"
    finally:
        server.close()


def test_test_connection_summary(fake_server):
    info = remote.RemoteClient(_target(fake_server.url).config).server_info()
    remote.check_protocol(info)
    lines = remote.describe_server(info)
    assert lines[0] == "Engine 0.1.0, job protocol 1"
    assert lines[1] == "Devices: 2 GPUs 32 CPUs 1 node (H100)" and lines[2] == "Models: bundled, org/sd"
    assert remote.server_models(info) == {"bundled", "org/sd"}
    with pytest.raises(UserError, match="protocol 9"):
        remote.check_protocol({"protocol": 9})
