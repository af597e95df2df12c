"""Talking to a remote engine server (docs/remote.md, "The HTTP API (/v1)"), free of bpy.

Blender's Python has no extra packages, so this is urllib only. Everything the server sends is
input from another machine: JSON is bounded, event lines are checked like progress.jsonl's, and
the outputs zip is unpacked only after every member passed the checks (no absolute path, no
``..``, no link or special file, bounded count and size, no zip bomb).

No socket is opened unless ``ServerConfig.check_network`` allows it: a URL must be set, and
Blender's online access must be on, unless the server is on this machine (loopback) and the
artist allowed that while offline.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path, PurePosixPath
from typing import Iterator

from . import protocol
from .engine_output import MAX_EVENT_BYTES, EngineOutputError, clean_text, parse_event, parse_json, relative_name
from .errors import UserError

API = "/v1"
CONNECT_TIMEOUT_S = 15.0
# The server sends a comment every 15 s on an idle event stream: a silence far longer than that
# is a connection that died without telling (a sleeping laptop, a dropped VPN).
STREAM_TIMEOUT_S = 60.0
# Uploads and downloads of large jobs take long; this bounds one blocked read or write, not the whole.
TRANSFER_TIMEOUT_S = 120.0
MAX_JSON_RESPONSE = 8 * 2 ** 20  # GET /v1/jobs of a busy server lists many jobs
MAX_ERROR_BODY = 64 * 2 ** 10
MAX_PREVIEW_BYTES = 256 * 2 ** 20
# What an outputs zip may hold, the server's own limits for uploads (docs/remote.md, Security).
MAX_UNPACK_FILES = 1000
MAX_UNPACK_BYTES = 4 * 2 ** 30
MAX_DOWNLOAD_BYTES = MAX_UNPACK_BYTES + 2 ** 30  # the zip of that, with room for its directory
MAX_RATIO = 200  # a member packed more tightly than this (and over RATIO_MIN_BYTES) is a zip bomb
RATIO_MIN_BYTES = 2 ** 20
CHUNK = 2 ** 20

TOKEN_HINT = ("Check the token in Preferences > Add-ons > CSD > Engine: it must be the one in the server's "
              "--token-file.")
UNREACHABLE_HINT = ("Check the server URL in Preferences > Add-ons > CSD > Engine, that the server runs "
                    "(python -m engine serve), and the network between here and there.")

# Files of a job folder that stay on this computer: the engine's outputs and logs (the server makes
# its own), the cancel flag, and the add-on's own records of a remote job.
REMOTE_FILE = "remote.json"
REQUEST_FILE = "request.json"
REQUEST_ARRAYS = "request.npz"
UPLOAD_FILE = "upload.zip"
LOCAL_ONLY = frozenset({protocol.OUTPUT_DIR, protocol.PROGRESS_FILE, protocol.CANCEL_FILE, protocol.LOG_FILE,
                        ".out.lock", REMOTE_FILE, REQUEST_FILE, REQUEST_ARRAYS, UPLOAD_FILE})


class NetworkBlocked(UserError):
    """The preferences forbid going online for this server: nothing was sent."""


class RemoteError(UserError):
    """The server answered, and the answer is final (a refused token, a refused job, an unknown job)."""

    def __init__(self, message: str, hint: str = "", *, status: int = 0, kind: str = ""):
        super().__init__(message, hint)
        self.status = status
        self.kind = kind


class ConnectionLost(Exception):
    """The server could not be reached or the connection broke: worth trying again."""


# -- where the server is, and whether the add-on may go there ------------------------------------

def is_loopback(host: str) -> bool:
    """Whether a URL's host is this computer (``localhost``, 127.0.0.0/8, ::1)."""
    host = (host or "").strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_url(url: str) -> str:
    """``http(s)://host[:port][/prefix]`` without a trailing slash or /v1; a UserError when it is not one."""
    text = (url or "").strip()
    if not text:
        raise UserError("No server URL is set.",
                        "Set it in Preferences > Add-ons > CSD > Engine (e.g. http://127.0.0.1:8765), "
                        "or choose 'On this computer'.")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"'{clean_text(text, 200)}' is not a server URL.",
                        "Write it as http://HOST:PORT (or https:// behind a TLS proxy), e.g. http://127.0.0.1:8765.")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UserError(f"'{clean_text(text, 200)}' has parts a server URL does not take.",
                        "Write only http://HOST:PORT; the token goes in its own field.")
    try:
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        raise UserError(f"'{clean_text(text, 200)}' has a port that is not a number.",
                        "Write it as http://HOST:PORT, e.g. http://127.0.0.1:8765.") from None
    path = parts.path.rstrip("/")
    if path.endswith(API):
        path = path[: -len(API)]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass(frozen=True)
class ServerConfig:
    """A server and what the artist allows: read from the preferences on Blender's main thread."""

    url: str  # normalised by normalize_url
    token: str
    online_access: bool  # Blender's "Allow Online Access"
    allow_loopback: bool  # "Allow loopback server while offline"

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or ""

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def check_network(self) -> None:
        """Raise NetworkBlocked unless this server may be contacted now."""
        if not self.url:
            raise NetworkBlocked("No server URL is set.", "Set it in Preferences > Add-ons > CSD > Engine.")
        if self.online_access or (self.loopback and self.allow_loopback):
            return
        if self.loopback:
            raise NetworkBlocked("Online access is off, so the server on this computer was not contacted.",
                                 "Allow online access (Preferences > System > Network), or turn on "
                                 "'Allow loopback server while offline' in the add-on's preferences.")
        raise NetworkBlocked(f"Online access is off, so the server {self.host} was not contacted.",
                             "Allow online access in Preferences > System > Network, or use the engine on "
                             "this computer.")


def server_config(url: str, token: str, *, online_access: bool, allow_loopback: bool) -> ServerConfig:
    return ServerConfig(normalize_url(url), (token or "").strip(), bool(online_access), bool(allow_loopback))


# -- server-sent events ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SseEvent:
    id: int | None  # the event's number, for ?after= and Last-Event-ID
    event: str
    data: str


class SseParser:
    """Server-sent events from the stream's lines, by the WHATWG rules the server's stream uses:
    ``field: value`` lines, a blank line ends an event, ``:`` starts a comment (keep-alives),
    several ``data`` lines join with newlines."""

    def __init__(self):
        self._data: list[str] = []
        self._event = ""
        self._id: int | None = None

    def feed(self, line: bytes | str) -> SseEvent | None:
        """One line of the stream; returns the event a blank line completes."""
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        line = line.rstrip("\r\n")
        if not line:
            event = SseEvent(self._id, self._event or "message", "\n".join(self._data)) if self._data else None
            self._data, self._event = [], ""
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            try:
                self._id = int(value)
            except ValueError:
                self._id = None
        return None


class EventStream:
    """An open ``GET /v1/jobs/ID/events``: iterating yields each event's JSON object (checked like
    a progress.jsonl line) with its number, until the server ends the stream."""

    def __init__(self, response: HTTPResponse):
        self._response = response

    def __iter__(self) -> Iterator[tuple[int | None, dict]]:
        parser = SseParser()
        skipping = False  # inside a line longer than an event may be: drop it to its end
        try:
            while True:
                line = self._response.readline(MAX_EVENT_BYTES + 2)
                if not line:
                    return
                if skipping or not line.endswith(b"\n") and len(line) > MAX_EVENT_BYTES:
                    skipping = not line.endswith(b"\n")
                    continue
                sse = parser.feed(line)
                if sse is None:
                    continue
                event = parse_event(sse.data.encode("utf-8"))
                if event is not None:
                    yield sse.id, event
        except (OSError, HTTPException, ValueError) as exc:  # a reset, a timeout, a cut chunk
            raise ConnectionLost(f"the event stream broke ({_reason(exc)})") from None
        finally:
            self.close()

    def close(self) -> None:
        try:
            self._response.close()
        except (OSError, HTTPException):
            pass


# -- the client ------------------------------------------------------------------------------------

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the token to wherever it points: the server never redirects, so none is followed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise RemoteError(f"The server redirected to {clean_text(newurl, 200)}; the add-on does not follow redirects.",
                          "Set the server URL to the address it redirects to, if you trust it.", status=code,
                          kind="redirect")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return clean_text(str(reason), 200) or type(exc).__name__


class RemoteClient:
    """One server's /v1 routes. Every call checks the network rules first and raises RemoteError
    (a final answer), ConnectionLost (try again) or NetworkBlocked (nothing was sent)."""

    def __init__(self, config: ServerConfig):
        config.check_network()
        self.config = config
        # System proxies do not apply to a server on this computer (and would see the token).
        proxies = urllib.request.ProxyHandler({}) if config.loopback else urllib.request.ProxyHandler()
        self._opener = urllib.request.build_opener(proxies, _NoRedirect())

    def _open(self, method: str, route: str, *, body=None, headers: dict | None = None,
              timeout: float = CONNECT_TIMEOUT_S) -> HTTPResponse:
        self.config.check_network()
        request = urllib.request.Request(self.config.url + API + route, data=body, method=method)
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", "csd-blender")
        if self.config.token:
            request.add_header("Authorization", f"Bearer {self.config.token}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            return self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except (urllib.error.URLError, OSError, HTTPException, ValueError) as exc:
            raise ConnectionLost(f"{self.config.url} could not be reached ({_reason(exc)})") from None

    def _json(self, method: str, route: str, **kwargs) -> dict:
        response = self._open(method, route, **kwargs)
        try:
            with response:
                data = response.read(MAX_JSON_RESPONSE + 1)
        except (OSError, HTTPException) as exc:
            raise ConnectionLost(f"the server's answer was cut off ({_reason(exc)})") from None
        if len(data) > MAX_JSON_RESPONSE:
            raise RemoteError(f"The server's answer to {route} is larger than {MAX_JSON_RESPONSE} bytes.",
                              "The server may not be a CSD engine server: check the URL.", kind="bad_answer")
        try:
            value = parse_json(data, f"the server's answer to {route}") if data.strip() else {}
        except EngineOutputError as exc:
            raise RemoteError(f"The server's answer could not be read: {exc}.",
                              "The server may not be a CSD engine server: check the URL.", kind="bad_answer") from None
        if not isinstance(value, dict):
            raise RemoteError(f"The server's answer to {route} is not a JSON object.",
                              "The server may not be a CSD engine server: check the URL.", kind="bad_answer")
        return value

    @staticmethod
    def _job_of(answer: dict) -> dict:
        job = answer.get("job")
        if not isinstance(job, dict) or not isinstance(job.get("id"), str) or not job["id"]:
            raise RemoteError("The server's answer names no job.", "Update the server and the extension together.",
                              kind="bad_answer")
        return job

    def server_info(self) -> dict:
        return self._json("GET", "/server")

    def submit(self, archive: Path, label: str = "") -> dict:
        """POST the job folder's zip; returns the JOB the server queued."""
        size = os.path.getsize(archive)
        headers = {"Content-Type": "application/zip", "Content-Length": str(size)}
        if label:
            headers["X-Job-Label"] = header_text(label)
        with open(archive, "rb") as body:
            return self._job_of(self._json("POST", "/jobs", body=body, headers=headers, timeout=TRANSFER_TIMEOUT_S))

    def job(self, job_id: str) -> dict:
        return self._job_of(self._json("GET", f"/jobs/{_quote(job_id)}"))

    def cancel(self, job_id: str) -> dict:
        return self._job_of(self._json("POST", f"/jobs/{_quote(job_id)}/cancel", body=b""))

    def events(self, job_id: str, after: int = 0) -> EventStream:
        """The job's events after number ``after``, once the server has answered (a ConnectionLost otherwise)."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if after:
            headers["Last-Event-ID"] = str(after)
        response = self._open("GET", f"/jobs/{_quote(job_id)}/events?after={int(after)}", headers=headers,
                              timeout=STREAM_TIMEOUT_S)
        return EventStream(response)

    def download(self, route: str, dest: Path, limit: int) -> Path:
        """A file from ``route`` written to ``dest`` (whole or not at all), refused past ``limit`` bytes."""
        response = self._open("GET", route, timeout=TRANSFER_TIMEOUT_S)
        dest = Path(dest)
        tmp = dest.with_name(dest.name + ".download")
        written = 0
        try:
            with response, open(tmp, "wb") as handle:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, HTTPException) as exc:
                        raise ConnectionLost(f"the download of {route} broke ({_reason(exc)})") from None
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > limit:
                        raise RemoteError(f"The server sent more than {limit} bytes for {route}.",
                                          "The server may not be a CSD engine server: check the URL.",
                                          kind="bad_answer")
                    handle.write(chunk)
            os.replace(tmp, dest)
        except OSError as exc:  # this computer's disk: the network's errors are ConnectionLost above
            raise UserError(f"A download from the server could not be written to {dest}: {exc.strerror or exc}.",
                            "Check free disk space and permissions.") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        return dest

    def preview(self, job_id: str, path: str, dest: Path) -> Path:
        return self.download(f"/jobs/{_quote(job_id)}/previews/{_quote(path)}", dest, MAX_PREVIEW_BYTES)

    def outputs(self, job_id: str, dest: Path) -> Path:
        return self.download(f"/jobs/{_quote(job_id)}/outputs", dest, MAX_DOWNLOAD_BYTES)


def _quote(path: str) -> str:
    return urllib.parse.quote(path, safe="/")


def header_text(text: str, limit: int = 200) -> str:
    """A label as an HTTP header value (Latin-1 only): other characters are percent-encoded."""
    text = clean_text(text, limit).replace("\n", " ").replace("\t", " ").strip()
    return "".join(ch if 32 <= ord(ch) < 127 and ch != "%" else urllib.parse.quote(ch, safe="") for ch in text)


def _http_error(exc: urllib.error.HTTPError) -> Exception:
    """The server's JSON error ({"error": {"kind", "message", "hint"}}) as an exception for the artist."""
    status = exc.code
    try:
        body = exc.read(MAX_ERROR_BODY)
    except (OSError, HTTPException):
        body = b""
    finally:
        exc.close()
    detail: dict = {}
    try:
        value = parse_json(body, "the server's error") if body.strip() else {}
        if isinstance(value, dict) and isinstance(value.get("error"), dict):
            detail = value["error"]
    except EngineOutputError:
        pass
    kind = clean_text(detail.get("kind"), 40)
    message = clean_text(detail.get("message"), 500).strip()
    hint = clean_text(detail.get("hint"), 500).strip()
    if status in (401, 403):
        return RemoteError(f"The server refused the token (HTTP {status}); nothing was sent to the engine.",
                           TOKEN_HINT, status=status, kind="unauthorized")
    if status in (502, 503, 504):  # a proxy in front of a server that is restarting
        return ConnectionLost(f"the server is not answering (HTTP {status})")
    if not message:
        message = f"The server answered HTTP {status}{f' ({kind})' if kind else ''}."
    return RemoteError(message, hint, status=status, kind=kind or f"http_{status}")


# -- job folders as zips -----------------------------------------------------------------------------

def pack_job(job_dir: Path, dest: Path) -> Path:
    """The job folder as the server takes it: a zip with job.json at its root, without the files
    that stay here (LOCAL_ONLY). A link anywhere is refused: the server would refuse the archive."""
    job_dir = Path(job_dir)
    if not (job_dir / protocol.JOB_FILE).is_file():
        raise UserError(f"The job folder {job_dir} has no {protocol.JOB_FILE}.", "Run the action again.")
    members: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(job_dir):
        base = Path(root)
        relative_root = base.relative_to(job_dir)
        for name in sorted(dirs + files):
            path = base / name
            relative = (relative_root / name).as_posix()
            if not relative_root.parts and name in LOCAL_ONLY:
                continue
            if path.is_symlink():
                raise UserError(f"The job folder holds a link, '{relative}', which the server would refuse.",
                                "Use real files: an edit's earlier result must not contain links.")
            if name in files:
                members.append((path, relative))
        dirs[:] = sorted(d for d in dirs if relative_root.parts or d not in LOCAL_ONLY)
    tmp = Path(dest).with_name(Path(dest).name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path, name in members:
            archive.write(path, name)
    os.replace(tmp, dest)
    return Path(dest)


def _member_name(info: zipfile.ZipInfo) -> str:
    name = info.filename[:-1] if info.is_dir() else info.filename
    try:
        name = relative_name(name)
    except EngineOutputError as exc:
        raise EngineOutputError(f"the outputs zip names {exc}") from None
    if any(part in ("", ".") for part in name.split("/")):
        raise EngineOutputError(f"the outputs zip names '{clean_text(name, 120)}', not a plain path")
    mode = info.external_attr >> 16
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise EngineOutputError(f"the outputs zip holds '{clean_text(name, 120)}', a link or special file")
    if info.flag_bits & 0x1:
        raise EngineOutputError(f"the outputs zip holds '{clean_text(name, 120)}' encrypted")
    return name


def unpack_outputs(archive_path: Path, dest: Path, *, max_files: int = MAX_UNPACK_FILES,
                   max_bytes: int = MAX_UNPACK_BYTES) -> list[str]:
    """Unpack the server's outputs zip into ``dest`` (a new folder), every member checked before
    anything is written; returns the files' names. Raises EngineOutputError saying what was refused.
    The sizes the zip declares are not trusted: the bytes written are counted and capped too."""
    dest = Path(dest)
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise EngineOutputError(f"the outputs are not a readable zip ({clean_text(str(exc), 200)})") from None
    with archive:
        members = archive.infolist()
        files = [info for info in members if not info.is_dir()]
        if len(files) > max_files:
            raise EngineOutputError(f"the outputs zip holds {len(files)} files, more than the {max_files} accepted")
        names, seen, total = [], set(), 0
        for info in members:
            name = _member_name(info)
            key = name.casefold()  # two names one file on Windows and macOS
            if key in seen:
                raise EngineOutputError(f"the outputs zip holds '{clean_text(name, 120)}' twice")
            seen.add(key)
            total += info.file_size
            if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise EngineOutputError(f"'{clean_text(name, 120)}' in the outputs zip unpacks to {info.file_size} "
                                        f"bytes from {info.compress_size}, more than {MAX_RATIO} to 1 (a zip bomb)")
            names.append((info, name))
        if total > max_bytes:
            raise EngineOutputError(f"the outputs zip unpacks to {total} bytes, more than the {max_bytes} accepted")
        dest.mkdir(parents=True)
        try:
            _write_members(archive, names, dest, max_bytes)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)  # nothing half-unpacked is left for a reader
            raise
        return [name for info, name in names if not info.is_dir()]


def _write_members(archive: zipfile.ZipFile, names: list[tuple[zipfile.ZipInfo, str]], dest: Path,
                   max_bytes: int) -> None:
    """Write the checked members; bytes are counted as they come, whatever the headers say."""
    written = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for info, name in names:
        target = dest.joinpath(*PurePosixPath(name).parts)
        left = info.file_size
        try:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as reader, os.fdopen(os.open(target, flags, 0o644), "wb") as writer:
                while chunk := reader.read(CHUNK):
                    left -= len(chunk)
                    written += len(chunk)
                    if left < 0 or written > max_bytes:
                        raise EngineOutputError(f"'{clean_text(name, 120)}' in the outputs zip holds more "
                                                "bytes than it declares")
                    writer.write(chunk)
        except (zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError, zlib.error, OSError) as exc:
            # OSError: a name that is a file and a folder at once ("a" and "a/b"), or this disk is full
            raise EngineOutputError(f"'{clean_text(name, 120)}' in the outputs zip cannot be unpacked "
                                    f"({clean_text(str(exc), 200)})") from None


# -- what GET /v1/server says, for the preferences --------------------------------------------------

def server_models(info: dict) -> frozenset[str]:
    """The model names GET /v1/server lists."""
    models = info.get("models")
    if not isinstance(models, list):
        return frozenset()
    return frozenset(m["model"] for m in models if isinstance(m, dict) and isinstance(m.get("model"), str))


def describe_server(info: dict) -> list[str]:
    """A few lines about a server for "Test connection": engine version, devices, models."""
    lines = []
    version = clean_text(str(info.get("engine_version") or info.get("version") or "unknown"), 40)
    proto = info.get("protocol")
    lines.append(f"Engine {version}, job protocol {clean_text(str(proto), 10) if proto is not None else 'unknown'}")
    resources = info.get("ray") if isinstance(info.get("ray"), dict) else {}
    gpus, cpus, nodes = (resources.get(key) for key in ("gpus", "cpus", "nodes"))
    parts = []
    for value, what in ((gpus, "GPU"), (cpus, "CPU"), (nodes, "node")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            amount = int(value) if float(value).is_integer() else value
            parts.append(f"{amount} {what}{'' if amount == 1 else 's'}")
    names = resources.get("accelerators")
    if isinstance(names, list) and names:
        parts.append("(" + ", ".join(clean_text(str(n), 60) for n in names[:4]) + ")")
    lines.append("Devices: " + (" ".join(parts) if parts else "unknown"))
    models = info.get("models")
    if isinstance(models, list):
        shown = [clean_text(str(m.get("model") if isinstance(m, dict) else m), 80) for m in models[:8]]
        more = f" and {len(models) - 8} more" if len(models) > 8 else ""
        lines.append("Models: " + (", ".join(shown) + more if shown else "none yet"))
    return lines


def check_protocol(info: dict) -> None:
    """Refuse a server whose engine speaks another job protocol than this extension."""
    proto = info.get("protocol")
    if proto != protocol.PROTOCOL:
        raise RemoteError(f"The server's engine speaks job protocol {clean_text(str(proto), 10)}; this extension "
                          f"speaks {protocol.PROTOCOL}.", "Update the server and the extension together.",
                          kind="protocol")


def local_model_folder(value: str, server_models: frozenset[str] | set[str] = frozenset()) -> bool:
    """Whether a model setting names a folder on this computer, which the server cannot read, rather
    than a hub id, 'bundled', or a folder of the server's --models-dir (named by its path there)."""
    text = (value or "").strip()
    if not text or text in server_models:
        return False
    if text.startswith(("//", "~", ".")) or "\\" in text or (len(text) > 1 and text[1] == ":"):
        return True  # Blender-relative, home-relative, relative or Windows paths: this computer's
    return os.path.isabs(text) and os.path.isdir(text)


def check_remote_models(models: dict[str, str], server_models: frozenset[str] | set[str] = frozenset()) -> None:
    """Refuse, before anything is sent, a job whose models name folders on this computer
    (``server_models``: the names the server listed, which are never refused)."""
    for role, value in models.items():
        if local_model_folder(value, server_models):
            raise UserError(f"The {role} is a folder on this computer ({clean_text(value, 200)}): the server cannot "
                            "read folders on this computer; use a hub id or a model the server lists.",
                            "Change it in Preferences > Add-ons > CSD > Models ('Test connection' lists the "
                            "server's models).")
