"""Add-on preferences: the engine (on this computer, or a remote server), models, storage.

The remote server's token is kept in a file in the extension's user folder (readable by this
user only), never in the .blend or Blender's preferences file: its field reads and writes that file.
"""

from __future__ import annotations

import os
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from .exchange import engine_env, remote

ADDON_ID = __package__


class EngineState:
    """Runtime state of the 'Set up engine', 'Check engine' and model Download helpers (not saved)."""

    setup = None  # engine_env.SetupPlan while it runs
    setup_message = ""
    setup_error = ""
    check_running = False
    check_lines: list = []
    check_rows: list = []  # models.ModelRow: which models are on this machine, with their sizes
    check_ok: bool | None = None
    download = None  # models.ModelDownload, the running or last download
    download_level = ""  # "INFO" or "ERROR" once it has ended
    download_message = ""
    download_hint = ""
    # "Test connection" (remote mode): the request in flight, then what the server said.
    connection = None  # remote_process.BackgroundCall while it runs
    connection_url = ""  # the server it was about
    connection_ok: bool | None = None
    connection_lines: list = []
    server_models: frozenset = frozenset()  # the model names the server listed at the last test

    @classmethod
    def downloading(cls) -> bool:
        return cls.download is not None and not cls.download.done


class RemoteJobs:
    """Remote jobs of the open .blend that an earlier session sent and did not follow to their end
    (listed when the file is loaded), and their status on the server once asked (not saved)."""

    records: list = []  # remote_process.RemoteRecord
    states: dict = {}  # job id -> the server's status, or why it is not known
    check = None  # remote_process.BackgroundCall asking the server


def online_access() -> bool:
    """Whether the artist allows Blender to go online (Preferences > System > Network)."""
    return bool(getattr(bpy.app, "online_access", True))


def user_dir(*parts: str, create: bool = True) -> Path:
    """A folder under the extension's user data folder (survives updates of the extension)."""
    try:
        root = Path(bpy.utils.extension_path_user(ADDON_ID, create=create))
    except (ValueError, AttributeError):  # loaded as a legacy add-on (development)
        root = Path(bpy.utils.user_resource('DATAFILES', path="csd_blender", create=create))
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def jobs_root() -> Path:
    return user_dir("jobs")


def remote_jobs_root() -> Path:
    """Remote jobs' folders: apart from local ones, since they wait for a later session's fetch."""
    return user_dir("remote-jobs")


def token_path(create: bool = False) -> Path:
    return user_dir("remote", create=create) / "token"


_token_cache: dict = {"stamp": None, "token": ""}


def read_token() -> str:
    path = token_path()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return ""
    if _token_cache["stamp"] != stamp:
        try:
            _token_cache.update(stamp=stamp, token=path.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            return ""
    return _token_cache["token"]


def write_token(token: str) -> None:
    """Write the token file readable by this user only; an empty token removes it."""
    token = token.strip()
    path = token_path(create=True)
    _token_cache.update(stamp=None, token="")
    if not token:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name("token.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    os.replace(tmp, path)


def _get_token(self) -> str:
    return read_token()


def _set_token(self, value: str) -> None:
    try:
        write_token(value)
    except OSError as exc:
        print(f"CSD: the server token could not be saved in {token_path()}: {exc}")


def is_remote(prefs) -> bool:
    return prefs is not None and prefs.engine_mode == 'REMOTE'


def server_config(prefs) -> remote.ServerConfig:
    """The remote server and what the artist allows, read here on the main thread for the
    threads that talk to it; a UserError when the URL is not set or not a URL."""
    return remote.server_config(prefs.server_url, read_token(), online_access=online_access(),
                                allow_loopback=prefs.allow_loopback_offline)


def results_root() -> Path:
    return user_dir("results")


def default_venv() -> Path:
    return user_dir(create=True) / "engine-venv"


def get(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon else None


def as_dict(prefs) -> dict:
    """The preferences the settings builders need, as plain values. A remote job leaves the model
    cache and downloads to the server (its own cache, its --allow-download)."""
    remote_mode = is_remote(prefs)
    return {
        "device": prefs.device.lower(),
        "texture_model": prefs.texture_model.strip() or "bundled",
        "generate_model": prefs.generate_model.strip(),
        "generate_refine_model": prefs.generate_refine_model.strip(),
        "edit_model": prefs.edit_model.strip(),
        "controlnet_depth": prefs.controlnet_depth.strip(),
        "controlnet_canny": prefs.controlnet_canny.strip(),
        "cache_dir": bpy.path.abspath(prefs.cache_dir).strip() if prefs.cache_dir and not remote_mode else "",
        "allow_download": bool(prefs.allow_download and (remote_mode or online_access())),
        "extra_settings": extra_settings(prefs),
    }


def extra_settings(prefs) -> dict:
    """The developer option 'Extra settings': JSON merged into jobs' settings, per task."""
    import json

    text = prefs.extra_settings.strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def engine_python(prefs) -> Path:
    configured = bpy.path.abspath(prefs.engine_python) if prefs.engine_python else ""
    return engine_env.resolve_python(configured, default_venv())


def engine_source(prefs) -> Path | None:
    override = bpy.path.abspath(prefs.engine_source) if prefs.engine_source else ""
    return engine_env.engine_source_dir(override)


def engine_env_extra(prefs) -> dict:
    """Environment for the engine: model cache and offline mode follow the preferences."""
    extra = {}
    if prefs.cache_dir:
        cache = bpy.path.abspath(prefs.cache_dir)
        extra["HF_HUB_CACHE"] = cache
    if not (prefs.allow_download and online_access()):
        extra["HF_HUB_OFFLINE"] = "1"
    return extra


class CSD_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    engine_mode: EnumProperty(
        name="Engine", default='LOCAL',
        items=[('LOCAL', "On this computer", "Run the engine here, in its own Python environment"),
               ('REMOTE', "Remote server", "Send jobs to an engine server (python -m engine serve) and "
                                          "bring the results back")])
    server_url: StringProperty(
        name="Server URL", default="",
        description="The engine server, e.g. http://127.0.0.1:8765 (an SSH tunnel) or https://gpu.example.com "
                    "(behind a TLS proxy)")
    server_token: StringProperty(
        name="Token", subtype='PASSWORD', get=_get_token, set=_set_token,
        description="The token in the server's --token-file. Kept in a file in the extension's user folder, "
                    "never in the .blend or the preferences file")
    allow_loopback_offline: BoolProperty(
        name="Allow loopback server while offline", default=False,
        description="Talk to a server on this computer (127.0.0.1, localhost; also an SSH tunnel's end) even "
                    "while Blender's online access is off")
    engine_python: StringProperty(
        name="Engine Python", subtype='FILE_PATH',
        description="The Python executable of the engine's environment (with PyTorch). "
                    "Empty: the environment made by 'Set up engine'")
    device: EnumProperty(
        name="Device", default='AUTO',
        items=[('AUTO', "Auto", "The GPU when there is one, else the CPU"),
               ('CUDA', "CUDA", "An NVIDIA GPU"),
               ('CPU', "CPU", "The processor (slow, but works everywhere)")])
    texture_model: StringProperty(
        name="Texture model", default="bundled",
        description="Diffusion model for Texture Selected: 'bundled' (offline, small), a Stable Diffusion "
                    "1.x/2.x Hugging Face id, or a local folder")
    generate_model: StringProperty(
        name="Generate model (stage 1)", default="",
        description="Pixel-space model for Generate Asset's first stage (DeepFloyd IF style); empty: the engine's default")
    generate_refine_model: StringProperty(
        name="Generate model (stage 2)", default="",
        description="Latent model for Generate Asset's refinement stage; empty: the engine's default")
    edit_model: StringProperty(
        name="Edit model", default="",
        description="Diffusion model for Apply Edit; empty: the engine's default")
    # Empty by default: the engine picks the ControlNets of the texture model's family (SD 1.x and
    # SDXL have their own; SD 2.x has none), and refuses one made for another family.
    controlnet_depth: StringProperty(
        name="Depth ControlNet", default="",
        description="Depth ControlNet (hub id or folder) made for the texture model's family; "
                    "empty: the family's standard one")
    controlnet_canny: StringProperty(
        name="Canny ControlNet", default="",
        description="Canny-edge ControlNet (hub id or folder) made for the texture model's family; "
                    "empty: the family's standard one")
    cache_dir: StringProperty(
        name="Model cache", subtype='DIR_PATH', default="",
        description="Where downloaded models are kept; empty: the Hugging Face default (~/.cache/huggingface)")
    allow_download: BoolProperty(
        name="Download missing models", default=True,
        description="Let the engine download models it needs (only when Blender's online access is allowed)")
    keep_job_folders: BoolProperty(
        name="Keep job folders", default=False,
        description="Keep each job's folder (inputs, engine log, outputs) after it succeeds, for debugging")
    image_storage: EnumProperty(
        name="Store textures", default='PACK',
        items=[('PACK', "Pack into .blend", "Textures travel inside the .blend file"),
               ('FILE', "Next to the .blend", "Save textures in a 'textures' folder next to the saved .blend "
                                               "(packed while the file is unsaved)")])
    viewport_preview: BoolProperty(
        name="Live preview in the viewport", default=True,
        description="Show the texture on the object while the engine works")
    engine_source: StringProperty(
        name="Engine source", subtype='DIR_PATH', default="",
        description="Developers: a folder containing the engine's 'engine' package; empty: the copy bundled "
                    "with this extension")
    extra_settings: StringProperty(
        name="Extra settings", default="",
        description='Developers: JSON laid over each job\'s settings, per task, e.g. '
                    '{"texture": {"render_size": 64}, "generate": {"extract": {"resolution": 64}}}')

    def draw(self, context):
        layout = self.layout
        box = layout.box()
        box.label(text="Engine", icon='SCRIPTPLUGINS')
        box.row().prop(self, "engine_mode", expand=True)
        if is_remote(self):
            self.draw_remote(box)
        else:
            self.draw_local(box)
        box.prop(self, "device")

        box = layout.box()
        box.label(text="Models", icon='NODE_MATERIAL')
        col = box.column()
        col.prop(self, "texture_model")
        col.prop(self, "controlnet_depth")
        col.prop(self, "controlnet_canny")
        col.prop(self, "generate_model")
        col.prop(self, "generate_refine_model")
        col.prop(self, "edit_model")
        if is_remote(self):
            col.label(text="Hub ids, 'bundled', or names the server lists; the server keeps its own cache.",
                      icon='INFO')
        else:
            col.prop(self, "cache_dir")
        row = col.row()
        row.enabled = is_remote(self) or online_access()
        row.prop(self, "allow_download")

        box = layout.box()
        box.label(text="Results", icon='IMAGE_DATA')
        box.prop(self, "image_storage")
        box.prop(self, "viewport_preview")
        box.prop(self, "keep_job_folders")
        box.label(text=f"Job folders: {user_dir('jobs', create=False)}")

        box = layout.box()
        box.label(text="Developer", icon='CONSOLE')
        box.prop(self, "engine_source")
        box.prop(self, "extra_settings")
        if self.extra_settings.strip() and not extra_settings(self):
            box.label(text="Extra settings: not a JSON object, ignored", icon='ERROR')

    def draw_remote(self, box):
        box.prop(self, "server_url")
        box.prop(self, "server_token")
        box.prop(self, "allow_loopback_offline")
        row = box.row()
        row.enabled = bool(self.server_url.strip()) and EngineState.connection is None
        row.operator("csd.test_connection", icon='LINKED')
        if not online_access():
            box.label(text="Online access is off (Preferences > System > Network): only a server on this "
                           "computer can be used, with 'Allow loopback server while offline'.", icon='UNLINKED')
        if EngineState.connection is not None:
            box.label(text="Asking the server...", icon='SORTTIME')
        elif EngineState.connection_lines:
            icon = 'CHECKMARK' if EngineState.connection_ok else 'ERROR'
            for index, line in enumerate(EngineState.connection_lines):
                box.label(text=line, icon=icon if index == 0 else 'BLANK1')

    def draw_local(self, box):
        box.prop(self, "engine_python")
        if not self.engine_python:
            venv = engine_env.venv_python(default_venv())
            box.label(text=("Using " if venv.exists() else "Not set up yet: ") + str(venv), icon='INFO')
        row = box.row(align=True)
        setup = EngineState.setup
        if setup is not None and not setup.done:
            row.progress(factor=setup.fraction, text=setup.stage or "Setting up...")
            row.operator("csd.setup_engine_cancel", text="", icon='X')
        else:
            sub = row.row(align=True)
            sub.enabled = online_access()
            sub.operator("csd.setup_engine", icon='IMPORT')
            row.operator("csd.check_engine", icon='VIEWZOOM')
        if not online_access():
            box.label(text="Online access is off (Preferences > System > Network): "
                           "'Set up engine' and model downloads are disabled.", icon='UNLINKED')
        if EngineState.setup_message:
            box.label(text=EngineState.setup_message, icon='CHECKMARK')
        if EngineState.setup_error:
            box.label(text=EngineState.setup_error, icon='ERROR')
        if EngineState.check_running:
            box.label(text="Checking the engine...", icon='SORTTIME')
        for line in EngineState.check_lines:
            box.label(text=line)
        draw_models(box)


def draw_models(layout) -> None:
    """The models 'Check engine' found (or not) on this machine, a Download button for each missing one
    while online access is allowed, and the running download's progress bar with its Cancel."""
    rows = EngineState.check_rows
    if rows:
        col = layout.column(align=True)
        col.label(text="Models", icon='NODE_MATERIAL')
        for row in rows:
            line = col.row()
            line.label(text=row.text(), icon='CHECKMARK' if row.complete else 'ERROR' if row.local else 'BLANK1')
            if row.downloadable:
                button = line.row()
                button.enabled = online_access() and not EngineState.downloading()
                button.operator("csd.download_model", text="Download", icon='IMPORT').model = row.model
    draw_download(layout)


def draw_download(layout) -> None:
    download = EngineState.download
    if EngineState.downloading():
        row = layout.row(align=True)
        row.progress(factor=download.fraction, type='BAR', text=download.status_text())
        row.operator("csd.download_model_cancel", text="", icon='X')
        if download.progress.download_file:
            layout.label(text=download.progress.download_file, icon='FILE')
    elif EngineState.download_message:
        icon = 'ERROR' if EngineState.download_level == "ERROR" else 'INFO'
        layout.label(text=EngineState.download_message, icon=icon)
        if EngineState.download_hint:
            layout.label(text=EngineState.download_hint)


classes = (CSD_AddonPreferences,)


register, unregister = bpy.utils.register_classes_factory(classes)
