"""`python -m engine serve`: checks the settings, then runs the API with uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError

MIN_TOKEN_CHARS = 32
TOKEN_HINT = ('Write one with: python -c "import secrets; print(secrets.token_urlsafe(32))" > token.txt, '
              "then pass --token-file token.txt (and give the same token to the add-on).")


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    token_file: Path | None = None
    ray_address: str | None = None
    max_upload_mb: int = 512
    jobs_dir: Path = Path("engine-jobs")
    keep_days: float = 7.0
    models_dir: Path | None = None
    allow_download: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    try:
        token = path.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"The token file {path} cannot be read: {error}.", TOKEN_HINT) from error
    if len(token) < MIN_TOKEN_CHARS or any(ch.isspace() or not ch.isprintable() for ch in token):
        raise BadInputError(f"The token in {path} must be one line of at least {MIN_TOKEN_CHARS} characters "
                            "without spaces.", TOKEN_HINT)
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"warning: {path} can be read by other users of this machine (chmod 600 it).", file=sys.stderr)
    return token


def check(settings: ServeSettings) -> str | None:
    """The token (None without --token-file), once the settings are safe to serve with."""
    if not 0 < settings.port < 65536:
        raise BadInputError(f"--port {settings.port} is not a port.", "Use a number from 1 to 65535, e.g. 8765.")
    if settings.max_upload_mb < 1:
        raise BadInputError("--max-upload-mb must be at least 1.", "")
    token = read_token(settings.token_file) if settings.token_file is not None else None
    if token is None and not is_loopback(settings.host):
        raise BadInputError(f"Refusing to serve on {settings.host} without a token: anyone who can reach it could "
                            "run jobs on this machine.", TOKEN_HINT)
    if settings.models_dir is not None and not settings.models_dir.is_dir():
        raise BadInputError(f"--models-dir {settings.models_dir} is not a folder.", "")
    return token


def serve(settings: ServeSettings) -> int:
    import uvicorn

    from .app import ApiSettings, create_app
    from .archives import ArchiveLimits
    from .admission import ModelPolicy
    from .dispatch import RayDispatcher, RaySettings
    from .store import JobStore

    token = check(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    max_bytes = settings.max_upload_mb << 20
    store = JobStore(settings.jobs_dir, ArchiveLimits(), ModelPolicy(settings.models_dir))
    dispatcher = RayDispatcher(store, RaySettings(settings.ray_address, settings.allow_download))
    app = create_app(store, dispatcher, ApiSettings(token, max_bytes, settings.keep_days))
    where = f"http://{settings.host}:{settings.port}/v1"
    print(f"csd-blender engine server on {where} (jobs in {store.root}; "
          f"{'token required' if token else 'no token: loopback only'})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0
