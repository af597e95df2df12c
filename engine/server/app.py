"""The HTTP API (docs/remote.md): FastAPI routes over the job store, jobs run by the Ray dispatcher.

Every route answers JSON errors `{"error": {"kind", "message", "hint"}}` with the documented
status, never a traceback; with a token, every route (the schema too) needs it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import urllib.parse
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from pydantic import BaseModel
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import BUNDLED_MODEL
from ..errors import BadInputError, EngineError, JobFileError
from ..job.protocol import PROTOCOL_VERSION
from .archives import ArchiveError
from .dispatch import RayDispatcher
from .store import JobNotFinished, JobNotFound, JobStore

log = logging.getLogger("engine.server")
API = "/v1"
KEEPALIVE_S = 15.0
EVENT_POLL_S = 0.25
STATUS_OF = {JobNotFound: 404, JobNotFinished: 409, ArchiveError: 400, JobFileError: 422, BadInputError: 422}


class ErrorBody(BaseModel):
    kind: str
    message: str
    hint: str = ""


class ErrorResponse(BaseModel):
    error: ErrorBody


class Job(BaseModel):
    """A job as the server sees it (engine/server/store.py's JobRecord)."""

    id: str
    task: str
    label: str
    status: str  # queued, running, ok, error, cancelled
    exit_code: int | None
    error: dict | None  # the engine's error: kind, message, hint, exit_code
    attempt: int
    cancel_requested: bool
    created: float
    started: float | None
    ended: float | None
    progress: dict  # stage, step, total_steps, eta_s, loss
    events: int


class JobResponse(BaseModel):
    job: Job


class JobList(BaseModel):
    jobs: list[Job]


class ServerInfo(BaseModel):
    engine_version: str
    protocol: int
    ray: dict  # address, nodes, gpus, cpus, free_gpus, free_cpus, accelerators, job_slot
    models: list[dict]  # model, use, complete, size (models under --models-dir by their path)
    max_upload_bytes: int
    allow_download: bool
    jobs: dict[str, int]  # how many jobs are in each status


def _errors(*statuses: int) -> dict:
    return {status: {"model": ErrorResponse} for status in statuses}


@dataclass(frozen=True)
class ApiSettings:
    token: str | None = None
    max_upload_bytes: int = 512 << 20
    keep_days: float = 7.0


def error_response(status: int, kind: str, message: str, hint: str = "") -> JSONResponse:
    return JSONResponse({"error": {"kind": kind, "message": message, "hint": hint}}, status_code=status)


def _status_of(error: EngineError) -> int:
    for kind, status in STATUS_OF.items():
        if isinstance(error, kind):
            return status
    return 500


def create_app(store: JobStore, dispatcher: RayDispatcher | None, settings: ApiSettings) -> FastAPI:
    """The API over `store`. `dispatcher` runs the jobs (started with the app, stopped with it)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if dispatcher is not None:
            dispatcher.start()  # in the main thread, where Ray can install its signal handlers
        purge = asyncio.create_task(_purge_every_hour())
        try:
            yield
        finally:
            purge.cancel()
            if dispatcher is not None:
                await asyncio.to_thread(dispatcher.stop)

    async def _purge_every_hour():
        while True:
            removed = await asyncio.to_thread(store.purge, settings.keep_days)
            if removed:
                log.info("deleted %d finished jobs older than %s days", len(removed), settings.keep_days)
            await asyncio.sleep(3600)

    app = FastAPI(title="csd-blender engine", version=_engine_version(), lifespan=lifespan,
                  openapi_url=f"{API}/openapi.json", docs_url=f"{API}/docs", redoc_url=None,
                  description="Texture, generate and edit jobs of csd-blender's engine, as job folders "
                              "(docs/job-protocol.md) sent as zip archives; see docs/remote.md.")

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if settings.token is not None:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {settings.token}"
            # compare_digest takes the same time wherever the strings differ.
            if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8")):
                kind = "no_token" if not given else "wrong_token"
                return error_response(401, kind, "The server needs its token (Authorization: Bearer TOKEN)."
                                      if not given else "The server refused the token.",
                                      "Use the token in the server's --token-file.")
        return await call_next(request)

    @app.exception_handler(EngineError)
    async def engine_error(_request: Request, error: EngineError):
        return error_response(_status_of(error), error.kind, error.message, error.hint)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException):
        return error_response(error.status_code, "http", str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def request_error(_request: Request, error: RequestValidationError):
        return error_response(422, "bad_request", f"The request is not valid: {error.errors()[:3]}.")

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception):
        log.exception("unexpected error")
        return error_response(500, "server_error", f"The server failed: {type(error).__name__}.",
                              "See the server's log; report the problem if it repeats.")

    @app.get(f"{API}/server", response_model=ServerInfo, responses=_errors(401))
    async def server_info() -> dict:
        """Engine version, protocol, Ray resources, the models on the server, limits, job counts."""
        from ..prior.hub import list_models

        models = await asyncio.to_thread(list_models, _models_dir_entries(store), None)
        records = store.list()
        return {"engine_version": _engine_version(), "protocol": PROTOCOL_VERSION,
                "ray": dispatcher.resources() if dispatcher is not None else {},
                "models": [{"model": BUNDLED_MODEL, "use": "the bundled offline prior", "complete": True}] + [
                    {key: value for key, value in entry.to_dict().items() if key != "path"}
                    for entry in models if entry.local],
                "max_upload_bytes": settings.max_upload_bytes,
                "allow_download": dispatcher.settings.allow_download if dispatcher is not None else False,
                "jobs": {status: sum(1 for r in records if r.status == status)
                         for status in ("queued", "running", "ok", "error", "cancelled")}}

    @app.post(f"{API}/jobs", status_code=201, response_model=JobResponse,
              responses=_errors(400, 401, 411, 413, 415, 422),
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/zip": {"schema": {"type": "string", "format": "binary"}}}}})
    async def submit(request: Request) -> dict:
        """Submit a job folder: the request body is the folder zipped, job.json at its root."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != "application/zip":
            return error_response(415, "not_zip", f"The body must be a zip archive, not {content_type or 'nothing'}.",
                                  "Send Content-Type: application/zip.")
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit():
            return error_response(411, "no_length", "The upload must say its size (Content-Length).")
        if int(declared) > settings.max_upload_bytes:
            return too_large()
        path = store.upload_path()
        try:
            received = 0
            with open(path, "wb") as handle:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > settings.max_upload_bytes:
                        return too_large()
                    handle.write(chunk)
            # HTTP headers are Latin-1: clients send a label percent-encoded as UTF-8.
            label = urllib.parse.unquote(request.headers.get("x-job-label", ""), errors="replace")
            record = await asyncio.to_thread(store.accept, path, label)
        finally:
            path.unlink(missing_ok=True)
        if dispatcher is not None:
            dispatcher.wake()
        return {"job": record.to_dict()}

    def too_large() -> JSONResponse:
        return error_response(413, "too_large", f"The upload is larger than this server accepts "
                              f"({settings.max_upload_bytes // (1 << 20)} MB).",
                              "Send a smaller mesh, or start the server with a larger --max-upload-mb.")

    @app.get(f"{API}/jobs", response_model=JobList, responses=_errors(401))
    async def list_jobs() -> dict:
        return {"jobs": [record.to_dict() for record in store.list()]}

    @app.get(f"{API}/jobs/{{job_id}}", response_model=JobResponse, responses=_errors(401, 404))
    async def get_job(job_id: str) -> dict:
        return {"job": store.get(job_id).to_dict()}

    @app.get(f"{API}/jobs/{{job_id}}/events", responses={
        **_errors(401, 404), 200: {"content": {"text/event-stream": {}},
                                   "description": "id: N, event: progress, data: one JSON event per message"}})
    async def events(job_id: str, request: Request, after: int = 0):
        """The job's events as server-sent events, from event `after` + 1 to the job's end."""
        store.get(job_id)
        last = request.headers.get("last-event-id", "")
        start = int(last) if last.isdigit() else max(after, 0)
        return StreamingResponse(_event_stream(store, job_id, start, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get(f"{API}/jobs/{{job_id}}/previews/{{path:path}}", response_class=FileResponse,
             responses={**_errors(401, 404), 200: {"content": {"image/png": {}}}})
    async def preview(job_id: str, path: str):
        return FileResponse(store.preview_file(job_id, path), media_type="image/png")

    @app.post(f"{API}/jobs/{{job_id}}/cancel", status_code=202, response_model=JobResponse,
              responses=_errors(401, 404))
    async def cancel(job_id: str) -> dict:
        record = store.request_cancel(job_id)
        if dispatcher is not None:
            dispatcher.wake()
        return {"job": record.to_dict()}

    @app.get(f"{API}/jobs/{{job_id}}/outputs", response_class=Response,
             responses={**_errors(401, 404, 409), 200: {"content": {"application/zip": {}},
                                                        "description": "the output folder, zipped"}})
    async def outputs(job_id: str):
        return FileResponse(store.outputs_archive(job_id), media_type="application/zip",
                            filename=f"{job_id}-outputs.zip")

    @app.delete(f"{API}/jobs/{{job_id}}", status_code=204, response_class=Response, responses=_errors(401, 404, 409))
    async def delete(job_id: str):
        await asyncio.to_thread(store.delete, job_id)
        return Response(status_code=204)

    return app


async def _event_stream(store: JobStore, job_id: str, after: int, request: Request):
    sent, quiet = after, 0.0
    while True:
        lines = store.events_after(job_id, sent)
        for number, line in lines:
            yield f"id: {number}\nevent: progress\ndata: {line}\n\n"
            sent = number
        if not lines:
            try:
                record = store.get(job_id)
            except JobNotFound:
                return
            if record.finished and not store.events_after(job_id, sent):
                return
            if await request.is_disconnected():
                return
            quiet += EVENT_POLL_S
            if quiet >= KEEPALIVE_S:
                quiet = 0.0
                yield ": keep-alive\n\n"
            await asyncio.sleep(EVENT_POLL_S)
        else:
            quiet = 0.0


def _models_dir_entries(store: JobStore) -> list[str]:
    root = store.policy.models_dir
    if root is None or not root.is_dir():
        return []
    return [str(path) for path in sorted(root.iterdir()) if path.is_dir()]


def _engine_version() -> str:
    import engine

    return engine.__version__


def openapi_document() -> str:
    """The API's schema as docs/openapi.json holds it (`python -m engine.server.app` prints it)."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return json.dumps(create_app(JobStore(folder), None, ApiSettings()).openapi(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(openapi_document(), end="")
