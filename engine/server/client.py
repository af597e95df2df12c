"""A small client of the server's HTTP API (docs/remote.md, "The HTTP API"), stdlib only: what
`python -m engine batch --server` talks through.

Every error becomes one `ServerError`: the server's own JSON error (`{"error": {"kind", "message",
"hint"}}`) with its HTTP status, or status 0 and kind `unreachable` when no answer came. The event
stream reconnects after a dropped connection, from the last event it got (`Last-Event-ID`).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import EXIT_CODES, BadInputError, EngineError

API = "/v1"
TIMEOUT_S = 60.0  # one blocked read or write; uploads and downloads of large jobs take longer in all
# The server sends a comment every 15 s on a quiet event stream: a longer silence is a dead connection.
STREAM_TIMEOUT_S = 60.0
RECONNECT_TRIES = 5  # failed reconnections in a row before the stream gives up
RESUME_AFTER_S = 1.0  # before following a stream again that ended while its job goes on
MAX_JSON_BYTES = 64 << 20  # GET /v1/jobs of a busy server
MAX_EVENT_LINE = 1 << 20
FINISHED = ("ok", "error", "cancelled")
UNREACHABLE_HINT = "Check the URL, that the server runs (python -m engine serve), and the network to it."


class ServerError(EngineError):
    """The server refused a request (`status` its HTTP status, `kind` its error's kind), or could not
    be reached (status 0, kind `unreachable`)."""

    def __init__(self, message: str, hint: str = "", *, status: int = 0, kind: str = "unreachable"):
        super().__init__(message, hint)
        self.status, self.kind = status, kind
        # A refusal of the engine's own kind (bad_input, job_file) keeps the engine's exit code.
        self.exit_code = {name: code for code, name in EXIT_CODES.items()}.get(kind, EngineError.exit_code)


def server_url(text: str) -> str:
    """The server's address as the user gave it (`http://host:port`, with or without `/v1`), checked."""
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadInputError(f"--server {text!r} is not an http:// or https:// address.",
                            "Give the server's address, e.g. http://127.0.0.1:8765.")
    path = parts.path.rstrip("/").removesuffix(API)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True)
class ServerClient:
    url: str  # as server_url gives it
    token: str | None = None

    # -- the API --------------------------------------------------------------------------------

    def server_info(self) -> dict:
        return self._json("GET", "/server")

    def submit(self, archive: bytes, label: str = "") -> dict:
        """Send a job folder (zipped, job.json at its root); the new job."""
        # Header values travel as Latin-1: the label goes percent-encoded (the server decodes it).
        headers = {"Content-Type": "application/zip", "X-Job-Label": urllib.parse.quote(label)}
        return self._json("POST", "/jobs", archive, headers)["job"]

    def job(self, job_id: str) -> dict:
        return self._json("GET", f"/jobs/{_quote(job_id)}")["job"]

    def cancel(self, job_id: str) -> dict:
        return self._json("POST", f"/jobs/{_quote(job_id)}/cancel", b"")["job"]

    def outputs(self, job_id: str) -> bytes:
        """The finished job's output folder, zipped."""
        with self._open("GET", f"/jobs/{_quote(job_id)}/outputs") as response:
            return self._read(response, None)

    def events(self, job_id: str, after: int = 0) -> Iterator[tuple[int, dict]]:
        """(number, event) for each of the job's events after the first `after`, to the job's end.
        A dropped connection is opened again from the last event received; RECONNECT_TRIES failures
        in a row raise ServerError."""
        last, failures = after, 0
        while True:
            try:
                with self._open("GET", f"/jobs/{_quote(job_id)}/events?after={last}",
                                headers={"Accept": "text/event-stream", "Last-Event-ID": str(last)},
                                timeout=STREAM_TIMEOUT_S) as response:
                    for number, event in _server_sent_events(response):
                        last, failures = max(last, number), 0
                        yield number, event
                # The server ends the stream at the job's end; a stream cut short (a proxy) also ends quietly.
                record = self.job(job_id)
                if record["status"] in FINISHED and record["events"] <= last:
                    return
            except ServerError as error:
                if error.status:
                    raise  # the server answered: the job is gone, or the token is refused
                failure = error
            except (OSError, http.client.HTTPException) as error:  # dropped mid-stream, or a read timed out
                failure = ServerError(f"The connection to {self.url} broke while following job {job_id}: "
                                      f"{error}.", UNREACHABLE_HINT)
            else:
                time.sleep(RESUME_AFTER_S)  # the server answers: follow on, without hammering it
                continue
            failures += 1
            if failures > RECONNECT_TRIES:
                raise failure
            time.sleep(min(2.0 ** failures, 15.0))

    # -- HTTP -----------------------------------------------------------------------------------

    def _open(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
              timeout: float = TIMEOUT_S) -> http.client.HTTPResponse:
        request = urllib.request.Request(self.url + API + path, data=body, method=method, headers=dict(headers or {}))
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as error:
            with error:
                raise _refusal(error, method, path) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            raise ServerError(f"Cannot reach the server at {self.url}: {reason}.", UNREACHABLE_HINT) from error

    def _json(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> dict:
        try:
            with self._open(method, path, body, headers) as response:
                data = self._read(response, MAX_JSON_BYTES)
        except (OSError, http.client.HTTPException) as error:
            raise ServerError(f"The connection to {self.url} broke during {method} {API}{path}: {error}.",
                              UNREACHABLE_HINT) from error
        try:
            document = json.loads(data)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise ServerError(f"{method} {API}{path} answered something other than a JSON object.",
                              "Check that the URL is a csd-blender engine server.", status=502, kind="bad_answer")
        return document

    def _read(self, response: http.client.HTTPResponse, limit: int | None) -> bytes:
        data = response.read() if limit is None else response.read(limit + 1)
        if limit is not None and len(data) > limit:
            raise ServerError(f"The server's answer is larger than {limit:,} bytes.", "", status=502, kind="bad_answer")
        return data


def _quote(job_id: str) -> str:
    return urllib.parse.quote(job_id, safe="")


def _refusal(error: urllib.error.HTTPError, method: str, path: str) -> ServerError:
    """The server's JSON error as a ServerError, or what the status says when the body is not one."""
    try:
        document = json.loads(error.read(MAX_EVENT_LINE))
        details = document["error"]
        kind, message, hint = (str(details.get(key) or "") for key in ("kind", "message", "hint"))
    except (ValueError, TypeError, KeyError, AttributeError, OSError):
        kind, message, hint = "http", "", ""
    return ServerError(message or f"{method} {API}{path} answered {error.code} {error.reason}.", hint,
                       status=error.code, kind=kind or "http")


def _server_sent_events(response) -> Iterator[tuple[int, dict]]:
    """(id, JSON object) of each event of a text/event-stream; comments and other data are skipped."""
    number, data = None, []
    while True:
        raw = response.readline(MAX_EVENT_LINE)
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith(":"):
            continue
        if line:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "id" and value.isdigit():
                number = int(value)
            elif field == "data":
                data.append(value)
            continue
        if number is not None and data:
            try:
                event = json.loads("\n".join(data))
            except ValueError:
                event = None
            if isinstance(event, dict):
                yield number, event
        number, data = None, []
