"""A local stand-in for the Hugging Face Hub, for download tests without network.

It answers the requests huggingface_hub makes (HF_ENDPOINT points at it): the model info
with file sizes (GET /api/models/OWNER/NAME?blobs=true) and the file metadata and contents
(HEAD and GET /OWNER/NAME/resolve/REVISION/PATH, with Range for resumed downloads). It records
every request, and can hold a file's body after its first bytes until the test lets it go.
Standard library only, so the add-on's tests (Blender's Python) can use it too.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Hold:
    """Send `after` bytes of the file, then wait for `release` (or `timeout_s`) before the rest."""

    after: int
    release: threading.Event = field(default_factory=threading.Event)
    reached: threading.Event = field(default_factory=threading.Event)
    timeout_s: float = 30.0


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.holds: dict[tuple[str, str], Hold] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for hold in self.holds.values():
            hold.release.set()
        self._server.shutdown()
        self._server.server_close()

    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> None:
        self.repos[repo_id] = dict(files)

    def add_folder(self, repo_id: str, folder: Path, renames: dict[str, str] | None = None,
                   extra: dict[str, bytes] | None = None) -> None:
        """A repository holding `folder`'s files (paths relative to it, some renamed) plus `extra` files."""
        renames = renames or {}
        files = {}
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                relative = path.relative_to(folder).as_posix()
                files[renames.get(relative, relative)] = path.read_bytes()
        files.update(extra or {})
        self.add_repo(repo_id, files)

    def commit(self, repo_id: str) -> str:
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def fetched(self, repo_id: str) -> list[str]:
        """Paths of `repo_id` whose contents were sent (GET), in order."""
        prefix = f"/{repo_id}/resolve/"
        with self._lock:
            return [path[len(prefix):].split("/", 1)[1] for method, path in self.requests
                    if method == "GET" and path.startswith(prefix)]

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))


_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub._record(self.command, path)
            info, resolve = _INFO.match(path), _RESOLVE.match(path)
            if info and body:
                return self._model_info(info.group(1))
            if resolve:
                return self._file(resolve.group(1), resolve.group(3), body)
            self._not_found("EntryNotFound")

        def _not_found(self, code: str) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _model_info(self, repo_id: str) -> None:
            files = hub.repos.get(repo_id)
            if files is None:
                return self._not_found("RepoNotFound")
            siblings = [{"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
                        for name, data in sorted(files.items())]
            data = json.dumps({"id": repo_id, "sha": hub.commit(repo_id), "siblings": siblings}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _file(self, repo_id: str, name: str, body: bool) -> None:
            files = hub.repos.get(repo_id)
            if files is None:
                return self._not_found("RepoNotFound")
            if name not in files:
                return self._not_found("EntryNotFound")
            data = files[name]
            start = 0
            match = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if match and body:
                start = int(match.group(1))
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", hub.commit(repo_id))
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            hold = hub.holds.get((repo_id, name))
            try:
                if hold is not None and start <= hold.after:
                    self.wfile.write(data[start:hold.after])
                    self.wfile.flush()
                    hold.reached.set()
                    hold.release.wait(hold.timeout_s)
                    start = hold.after
                self.wfile.write(data[start:])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped (a cancelled download)

    return Handler
