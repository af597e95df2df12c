"""The engine's server (`python -m engine serve`, docs/remote.md) as a client sees it: a real
server in its own process, Ray and all, spoken to over loopback HTTP with the standard library.

Jobs run on the bundled prior at tiny sizes on the CPU. One server serves the module; the
restart test starts its own, on its own jobs folder, and kills it. Every server is started in a
session of its own, so whatever it leaves (Ray's processes, engines) is found by that session's
id and ended in the teardown.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CUBE = REPO / "examples" / "cube.obj"
START_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 240.0
PNG = b"\x89PNG\r\n\x1a\n"


def texture_settings(**overrides) -> dict:
    settings = {"prompt": "a green checkered cube", "steps": 30, "texture_size": 128, "render_size": 64,
                "preview_every": 10, "seed": 7, "prior": {"model": "bundled"}}
    settings.update(overrides)
    return settings


def no_previews() -> int:
    """preview_every beyond any job here: no previews, and a job.json of its own, by which the job's
    folders on the worker are told from other runs'."""
    return 1000 + secrets.randbelow(90_000)


def generate_settings() -> dict:
    """A generate job's NeRF stage, which a 2-core CPU runs in about 20 s, saved every 5 steps."""
    return {"prompt": "a blue cube", "seed": 1, "stages": "1", "texture_size": 64, "preview_every": no_previews(),
            "checkpoint_every": 5, "extract": {"resolution": 32, "target_triangles": 600},
            "stage1": {"steps": 40, "samples_per_ray": 32, "occupancy_resolution": 16,
                       "hash_grid": {"levels": 4, "log2_table_size": 12, "mlp_width": 16}}}


def write_job_folder(folder: Path, task: str, settings: dict, mesh: bytes | None = None) -> Path:
    folder.mkdir(parents=True)
    document = {"protocol": 1, "task": task, "settings": settings}
    if task == "texture":
        document["mesh"] = "cube.obj"
        (folder / "cube.obj").write_bytes(CUBE.read_bytes() if mesh is None else mesh)
    (folder / "job.json").write_text(json.dumps(document), "utf-8")
    return folder


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def zip_members(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def engine_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# Processes, read from /proc (psutil is not a dependency)
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    session: int
    state: str
    command: str


def processes() -> list[Proc]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended meanwhile
        # The command name in parentheses may hold spaces: the fields that follow start after the last ')'.
        state, ppid, _group, session = stat[stat.rfind(")") + 2:].split()[:4]
        found.append(Proc(int(entry), int(ppid), int(session), state, command.strip()))
    return found


def is_ray_agent(proc: Proc) -> bool:
    """Ray's per-node agents, which outlive a raylet that dies (ray-project/ray#52385)."""
    return proc.command in ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def alive(pid: int) -> bool:
    return any(proc.pid == pid and proc.state != "Z" for proc in processes())


def wait_for(condition, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ------------------------------------------------------------------------------------------------
# A server and its client
# ------------------------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    def error_kind(self) -> str:
        document = self.json()
        assert set(document["error"]) == {"kind", "message", "hint"} and document["error"]["message"], document
        return document["error"]["kind"]


@dataclass
class Server:
    jobs_dir: Path
    token: str
    token_file: Path
    log: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None

    def start(self) -> Server:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "engine", "serve", "--port", str(self.port), "--jobs-dir", str(self.jobs_dir),
                 "--token-file", str(self.token_file), *self.extra_args],
                cwd=REPO, env=engine_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own session: everything it starts can be found and ended

        def answers() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                return self.request("GET", "/v1/server", timeout=5).status == 200
            except OSError:
                return False

        wait_for(answers, START_TIMEOUT_S, "the server to answer", every=0.5)
        return self

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def session_processes(self) -> list[Proc]:
        return [proc for proc in processes() if proc.session == self.process.pid and proc.state != "Z"]

    def kill(self) -> list[Proc]:
        """SIGKILL the server; returns what of its session is left once Ray had 15 s to go, ended."""
        self.process.kill()
        self.process.wait()
        try:
            wait_for(lambda: all(is_ray_agent(proc) for proc in self.session_processes()), 15,
                     "the server's Ray processes to end")
        except AssertionError:
            pass  # the caller judges what is left
        return self.end_session()

    def stop(self) -> tuple[int | None, list[Proc]]:
        """SIGTERM the server (SIGKILL after 30 s); its exit code and what of its session was left."""
        if self.process is None:
            return None, []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode, self.end_session()

    def end_session(self) -> list[Proc]:
        """SIGKILL whatever the server's session still holds (Ray leaves its agents behind when its
        raylet dies, ray-project/ray#52385); returns those processes."""
        left = self.session_processes()
        for proc in left:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    # -- HTTP ---------------------------------------------------------------------------------

    def connection(self, timeout: float = 60) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                token: str | None = "", timeout: float = 60) -> Answer:
        """token "" sends the server's token, None sends none."""
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token or self.token}"
        connection = self.connection(timeout)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def headers_only(self, method: str, path: str, headers: dict) -> Answer:
        """A request whose body is never sent: what the server answers from its headers alone."""
        connection = self.connection()
        try:
            connection.putrequest(method, path)
            for name, value in {"Authorization": f"Bearer {self.token}", **headers}.items():
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def submit(self, archive: bytes, label: str = "") -> dict:
        answer = self.request("POST", "/v1/jobs", archive, {"Content-Type": "application/zip", "X-Job-Label": label})
        assert answer.status == 201, (answer.status, answer.body)
        return answer.json()["job"]

    def job(self, job_id: str) -> dict:
        answer = self.request("GET", f"/v1/jobs/{job_id}")
        assert answer.status == 200, answer.body
        return answer.json()["job"]

    def events(self, job_id: str, after: int = 0, headers: dict | None = None) -> Iterator[tuple[int, dict]]:
        """(id, event) from the job's event stream, until the server ends it."""
        connection = self.connection(timeout=60)  # the server sends a comment every 15 s
        deadline = time.monotonic() + JOB_TIMEOUT_S
        try:
            connection.request("GET", f"/v1/jobs/{job_id}/events?after={after}",
                               headers={"Authorization": f"Bearer {self.token}", **(headers or {})})
            response = connection.getresponse()
            assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
            number, kind, data = None, None, None
            for raw in response:
                assert time.monotonic() < deadline, f"job {job_id} still streams after {JOB_TIMEOUT_S:.0f} s"
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("id: "):
                    number = int(line[4:])
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif not line and data is not None:
                    assert kind == "progress"
                    yield number, json.loads(data)
                    number, kind, data = None, None, None
        finally:
            connection.close()

    def follow(self, job_id: str, after: int = 0) -> list[dict]:
        numbered = list(self.events(job_id, after))
        assert [number for number, _ in numbered] == list(range(after + 1, after + 1 + len(numbered)))
        return [event for _, event in numbered]

    def outputs(self, job_id: str) -> zipfile.ZipFile:
        answer = self.request("GET", f"/v1/jobs/{job_id}/outputs")
        assert answer.status == 200 and answer.headers["content-type"] == "application/zip", answer.body
        return zipfile.ZipFile(io.BytesIO(answer.body))


def new_server(root: Path, *extra_args: str) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    token_file = root / "token"
    token_file.write_text(token + "\n", "utf-8")
    token_file.chmod(0o600)
    return Server(root / "jobs", token, token_file, root / "server.log", extra_args=extra_args)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    # Every job of this module zips to a few kB, well under the 1 MB limit the 413 test needs.
    running = new_server(tmp_path_factory.mktemp("server"), "--max-upload-mb", "1").start()
    try:
        yield running
    finally:
        running.stop()


def engine_of(job_id: str) -> Proc | None:
    """The `python -m engine run` of the job: the child of the Ray worker running its task."""
    table = processes()
    workers = {proc.pid for proc in table if f"csd-job-{job_id}" in proc.command}
    engines = [proc for proc in table if proc.ppid in workers and "-m engine run" in proc.command
               and proc.state != "Z"]
    return engines[0] if engines else None


def worker_folders(document: bytes) -> list[Path]:
    """The folders Ray's workers on this machine unpacked a job into, told by their job.json."""
    found = []
    for folder in Path(tempfile.gettempdir()).glob("csd-job-*"):
        try:
            if (folder / "job" / "job.json").read_bytes() == document:
                found.append(folder)
        except OSError:
            continue  # not a job's folder, or one being removed
    return found


def until_first(events: Iterator[tuple[int, dict]], kind: str) -> list[dict]:
    seen = []
    for _, event in events:
        seen.append(event)
        if event["event"] == kind:
            return seen
    raise AssertionError(f"the stream ended without a {kind!r} event: {seen}")


# ------------------------------------------------------------------------------------------------
# Jobs through the API
# ------------------------------------------------------------------------------------------------

def test_a_texture_job_through_the_api_equals_a_local_run(server, tmp_path):
    folder = write_job_folder(tmp_path / "job", "texture", texture_settings())
    archive = zip_folder(folder)
    # The same folder run by the engine itself, meanwhile (it writes out/ next to the zipped files).
    local = subprocess.Popen([sys.executable, "-m", "engine", "run", str(folder)], cwd=REPO, env=engine_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        job = server.submit(archive, label="cube")
        assert (job["status"], job["task"], job["label"], job["attempt"]) == ("queued", "texture", "cube", 0)
        events = server.follow(job["id"])
        _, local_errors = local.communicate(timeout=JOB_TIMEOUT_S)
    finally:
        if local.poll() is None:
            local.kill()
    assert local.returncode == 0, local_errors.decode(errors="replace")[-2000:]

    assert events[0]["event"] == "queued" and events[0]["position"] >= 1
    kinds = [event["event"] for event in events]
    assert kinds[1] == "started" and kinds.count("finished") == 1 and kinds[-1] == "finished"
    assert events[-1]["status"] == "ok" and events[-1]["result"] == "result.json"
    assert [event["step"] for event in events if event["event"] == "step"] == list(range(1, 31))
    record = server.job(job["id"])
    assert (record["status"], record["exit_code"], record["error"], record["attempt"]) == ("ok", 0, None, 1)
    assert record["events"] == len(events) and record["progress"]["step"] == 30

    outputs = server.outputs(job["id"])
    result = json.loads(outputs.read("result.json"))
    assert result["status"] == "ok"
    for key in ("texture", "obj", "mtl", "glb", "preview", "state"):
        assert result["outputs"][key] in outputs.namelist(), key
    local_out = folder / "out"
    for name in ("texture.png", "mesh.obj", "mesh.mtl", "corner_uvs.npy"):
        assert outputs.read(name) == (local_out / name).read_bytes(), name

    previews = [event for event in events if event["event"] == "preview"]
    assert [event["step"] for event in previews] == [10, 20]
    for event in previews:
        for key in ("path", "view"):
            answer = server.request("GET", f"/v1/jobs/{job['id']}/previews/{event[key]}")
            assert answer.status == 200 and answer.headers["content-type"] == "image/png"
            # The live file (in the run's partial folder) is the one the finished set keeps.
            assert answer.body.startswith(PNG)
            assert answer.body == outputs.read("previews/" + event[key].split("/previews/", 1)[1])

    # A stream picked up where it left off: after=N, or the Last-Event-ID header.
    assert server.follow(job["id"], after=len(events) - 2) == events[-2:]
    tail = list(server.events(job["id"], headers={"Last-Event-ID": str(len(events) - 1)}))
    assert tail == [(len(events), events[-1])]

    listed = server.request("GET", "/v1/jobs").json()["jobs"]
    assert job["id"] in [entry["id"] for entry in listed]
    assert server.request("DELETE", f"/v1/jobs/{job['id']}").status == 204
    assert server.request("GET", f"/v1/jobs/{job['id']}").status == 404
    assert not (server.jobs_dir / job["id"]).exists()


def test_cancel_mid_job(server, tmp_path):
    archive = zip_folder(write_job_folder(tmp_path / "job", "texture", texture_settings(steps=2000)))
    job = server.submit(archive)
    stream = server.events(job["id"])
    before = until_first(stream, "step")

    # A running job has no outputs yet and cannot be deleted.
    for method, path in (("GET", "outputs"), ("DELETE", "")):
        answer = server.request(method, f"/v1/jobs/{job['id']}/{path}".rstrip("/"))
        assert answer.status == 409 and answer.error_kind() == "not_finished", (method, answer.body)

    answer = server.request("POST", f"/v1/jobs/{job['id']}/cancel")
    assert answer.status == 202 and answer.json()["job"]["cancel_requested"] is True
    rest = [event for _, event in stream]
    assert rest[-1]["event"] == "finished" and rest[-1]["status"] == "cancelled"
    assert any(event["event"] == "error" and event["kind"] == "cancelled" for event in rest)
    assert max(event["step"] for event in before + rest if event["event"] == "step") < 2000

    record = server.job(job["id"])
    assert (record["status"], record["exit_code"]) == ("cancelled", 130)
    assert json.loads(server.outputs(job["id"]).read("result.json"))["status"] == "cancelled"
    # Cancelling a finished job leaves it as it is.
    again = server.request("POST", f"/v1/jobs/{job['id']}/cancel")
    assert again.status == 202 and again.json()["job"]["status"] == "cancelled"


def test_a_killed_worker_is_retried_and_the_job_finishes(server, tmp_path):
    settings = texture_settings(steps=12, render_size=32, preview_every=no_previews())
    archive = zip_folder(write_job_folder(tmp_path / "job", "texture", settings))
    job = server.submit(archive)
    stream = server.events(job["id"])
    before = until_first(stream, "step")
    engine = wait_for(lambda: engine_of(job["id"]), 30, "the job's engine process")
    os.kill(engine.ppid, signal.SIGKILL)  # the Ray worker running the job's task
    # The engine dies with its worker (no orphan keeps computing).
    wait_for(lambda: not alive(engine.pid), 30, "the killed worker's engine to end")

    after = [event for _, event in stream]
    kinds = [event["event"] for event in after]
    assert "finished" not in [event["event"] for event in before]
    retries = [event for event in after if event["event"] == "retry"]
    assert len(retries) == 1 and retries[0]["attempt"] == 2 and retries[0]["reason"]
    assert kinds.count("finished") == 1 and after[-1] == {**after[-1], "event": "finished", "status": "ok"}
    steps = [event["step"] for event in after[kinds.index("retry"):] if event["event"] == "step"]
    assert steps == list(range(1, 13))  # a texture job starts again from its first step
    record = server.job(job["id"])
    assert (record["status"], record["attempt"], record["exit_code"]) == ("ok", 2, 0)
    assert json.loads(server.outputs(job["id"]).read("result.json"))["status"] == "ok"
    # Neither attempt left its folder on the worker (Ray's workers here share this machine's temp folder).
    assert not worker_folders((tmp_path / "job" / "job.json").read_bytes())


def test_a_killed_server_restarts_its_jobs_and_a_generate_job_resumes(tmp_path):
    first = new_server(tmp_path / "server").start()
    try:
        broken = first.submit(zip_folder(write_job_folder(tmp_path / "broken", "texture", texture_settings(),
                                                          mesh=b"v 0 0 0\nv 1 0 0\n")))
        generate = first.submit(zip_folder(write_job_folder(tmp_path / "generate", "generate", generate_settings())))
        # The broken job fails at once (while the generate job loads its model), with the engine's own error.
        record = wait_for(lambda: (job := first.job(broken["id"]))["status"] == "error" and job, 60,
                          "the broken job to end")
        assert (record["exit_code"], record["error"]["kind"]) == (2, "bad_input")
        assert "no faces" in record["error"]["message"]

        stream = first.events(generate["id"])
        for _, event in stream:
            if event["event"] == "checkpoint" and event["stage"] == 1 and event["step"] >= 10:
                break
        else:
            raise AssertionError("the generate job ended before its second checkpoint")
        stream.close()
        checkpoint_step = event["step"]
        engine = engine_of(generate["id"])
        assert engine is not None
        wait_for(lambda: (first.jobs_dir / generate["id"] / "checkpoint" / "stage1.pt").is_file(), 10,
                 "the server to keep the checkpoint")
        left = first.kill()
    finally:
        first.stop()
    # Killing the server takes its Ray cluster and the job's engine with it; what Ray's own agents
    # leave behind is ended above, nothing else may be.
    assert not alive(engine.pid)
    assert all(is_ray_agent(proc) for proc in left), left

    second = Server(first.jobs_dir, first.token, first.token_file, first.log).start()
    try:
        listed = {entry["id"]: entry for entry in second.request("GET", "/v1/jobs").json()["jobs"]}
        assert set(listed) == {broken["id"], generate["id"]}
        assert listed[broken["id"]]["status"] == "error"
        assert listed[generate["id"]]["status"] in ("queued", "running")
        failed = second.follow(broken["id"])
        assert failed[-1] == {**failed[-1], "event": "finished", "status": "error"}
        assert [event for event in failed if event["event"] == "error"][0]["kind"] == "bad_input"

        events = second.follow(generate["id"])
        kinds = [event["event"] for event in events]
        restart = kinds.index("retry")
        assert events[restart]["attempt"] == 2 and "restart" in events[restart]["reason"]
        assert "finished" not in kinds[:restart]
        resumed = [event for event in events[restart:] if event["event"] == "resumed"]
        assert len(resumed) == 1 and resumed[0]["step"] >= checkpoint_step
        first_step = next(event["step"] for event in events[restart:] if event["event"] == "step")
        assert first_step == resumed[0]["step"] + 1  # stage 1 goes on where its checkpoint left it
        assert kinds.count("finished") == 1 and events[-1]["status"] == "ok"
        record = second.job(generate["id"])
        assert (record["status"], record["attempt"]) == ("ok", 2)
        outputs = second.outputs(generate["id"])
        assert {"mesh.glb", "stage1.pt"} <= set(outputs.namelist())
        # The attempt the killed server ran left its folder on the worker; the next one removed it.
        assert not worker_folders((tmp_path / "generate" / "job.json").read_bytes())
        # SIGTERM shuts the server down gracefully, Ray and all.
        code, left = second.stop()
        assert code == 0 and not left, left
        assert "Traceback" not in second.log.read_text(errors="replace")
    finally:
        second.stop()


# ------------------------------------------------------------------------------------------------
# What the server refuses
# ------------------------------------------------------------------------------------------------

def job_json(settings: dict | None = None) -> bytes:
    return json.dumps({"protocol": 1, "task": "texture", "mesh": "cube.obj",
                       "settings": settings or texture_settings()}).encode()


def with_symlink(name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("job.json", job_json())
        link = zipfile.ZipInfo(name)
        link.create_system = 3
        link.external_attr = (0o120777 << 16)  # a Unix symbolic link
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


REFUSED_UPLOADS = {
    "dot-dot": (400, "bad_archive", zip_members({"job.json": job_json(), "../escape.obj": b"v 0 0 0"})),
    "absolute": (400, "bad_archive", zip_members({"job.json": job_json(), "/tmp/escape.obj": b"v 0 0 0"})),
    "symlink": (400, "bad_archive", with_symlink("cube.obj")),
    "zip bomb": (400, "bad_archive", zip_members({"job.json": job_json(), "cube.obj": bytes(20 << 20)})),
    "too many files": (400, "bad_archive", zip_members({"job.json": job_json(),
                                                        **{f"f/{i}.txt": b"" for i in range(1001)}})),
    "not a zip": (400, "bad_archive", b"PK\x03\x04 but nothing after"),
    "malformed job.json": (422, "job_file", zip_members({"job.json": b"{\"protocol\": 1, \"task\":",
                                                          "cube.obj": CUBE.read_bytes()})),
    "server folder as model": (422, "bad_input", zip_members({
        "job.json": job_json(texture_settings(prior={"model": str(REPO / "engine" / "prior" / "bundled")})),
        "cube.obj": CUBE.read_bytes()})),
    "cache folder": (422, "bad_input", zip_members({
        "job.json": job_json(texture_settings(prior={"model": "bundled", "cache_dir": "/root/.cache"})),
        "cube.obj": CUBE.read_bytes()})),
}


@pytest.mark.parametrize("case", list(REFUSED_UPLOADS))
def test_refused_uploads_leave_nothing(server, case):
    status, kind, body = REFUSED_UPLOADS[case]
    assert len(body) < 1 << 20
    before = set(os.listdir(server.jobs_dir))
    answer = server.request("POST", "/v1/jobs", body, {"Content-Type": "application/zip"})
    assert (answer.status, answer.error_kind()) == (status, kind), answer.body
    assert set(os.listdir(server.jobs_dir)) == before
    assert not os.listdir(server.jobs_dir / ".uploads")


def test_refused_requests(server):
    job = zip_members({"job.json": job_json(), "cube.obj": CUBE.read_bytes()})
    no_token = server.request("GET", "/v1/jobs", token=None)
    assert (no_token.status, no_token.error_kind()) == (401, "no_token")
    for path in ("/v1/jobs", "/v1/openapi.json", "/v1/server"):
        wrong = server.request("GET", path, token=secrets.token_urlsafe(32))
        assert (wrong.status, wrong.error_kind()) == (401, "wrong_token"), path
    posted = server.request("POST", "/v1/jobs", job, {"Content-Type": "application/zip"}, token="x" * 43)
    assert posted.status == 401

    # Refused on the size it declares, before a byte of the body is read (none is sent).
    oversized = server.headers_only("POST", "/v1/jobs", {"Content-Type": "application/zip",
                                                         "Content-Length": str((1 << 20) + 1)})
    assert (oversized.status, oversized.error_kind()) == (413, "too_large")
    unsized = server.headers_only("POST", "/v1/jobs", {"Content-Type": "application/zip",
                                                       "Transfer-Encoding": "chunked"})
    assert (unsized.status, unsized.error_kind()) == (411, "no_length")
    not_zip = server.request("POST", "/v1/jobs", job, {"Content-Type": "text/plain"})
    assert (not_zip.status, not_zip.error_kind()) == (415, "not_zip")

    for method, path in (("GET", ""), ("GET", "/events"), ("GET", "/outputs"), ("POST", "/cancel"),
                         ("DELETE", ""), ("GET", "/previews/x.png")):
        answer = server.request(method, f"/v1/jobs/20990101-000000-abcdef{path}")
        assert (answer.status, answer.error_kind()) == (404, "not_found"), (method, path)

    info = server.request("GET", "/v1/server").json()
    assert info["protocol"] == 1 and info["max_upload_bytes"] == 1 << 20
    assert info["ray"]["job_slot"] in ("CPU", "GPU") and info["models"][0]["model"] == "bundled"


def test_a_public_address_without_a_token_is_refused(tmp_path):
    started = subprocess.run([sys.executable, "-m", "engine", "serve", "--host", "0.0.0.0", "--port",
                              str(free_port()), "--jobs-dir", str(tmp_path / "jobs")],
                             cwd=REPO, env=engine_env(), capture_output=True, text=True, timeout=60, check=False)
    assert started.returncode == 2
    assert "without a token" in started.stderr and "--token-file" in started.stderr
    assert not (tmp_path / "jobs").exists()
