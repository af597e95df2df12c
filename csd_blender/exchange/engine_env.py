"""Finding, checking and setting up the engine's Python environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .engine_output import EngineOutputError, parse_json
from .errors import UserError
from .process import _popen_kwargs, engine_process_env

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the extension's folder
VENDORED_ENGINE = PACKAGE_DIR / "engine_src"  # build.py puts engine/ here
REQUIREMENTS = PACKAGE_DIR / "requirements-engine.txt"


def venv_python(venv_dir: Path) -> Path:
    venv_dir = Path(venv_dir)
    return venv_dir / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def engine_source_dir(override: str = "") -> Path | None:
    """The folder to put on the engine's PYTHONPATH (it contains ``engine/``)."""
    candidates = []
    if override:
        candidates.append(Path(override).expanduser())
    candidates.append(VENDORED_ENGINE)
    candidates.append(PACKAGE_DIR.parent)  # a development checkout: csd_blender/ beside engine/
    for path in candidates:
        if (path / "engine" / "__init__.py").is_file():
            return path
    return None


def resolve_python(configured: str, default_venv: Path | None) -> Path:
    """The engine Python: the configured one, else the one 'Set up engine' made."""
    if configured:
        path = Path(os.path.expanduser(configured))
        if path.is_dir():  # a venv folder was chosen instead of its python
            path = venv_python(path)
        return path
    if default_venv is not None and venv_python(default_venv).exists():
        return venv_python(default_venv)
    raise UserError("No engine Python is set.",
                    "Open Edit > Preferences > Add-ons > CSD and set the engine Python, "
                    "or click 'Set up engine'.")


_QUICK_CACHE: dict = {}

_QUICK_SCRIPT = (
    "import importlib.util as u, sys; "
    "sys.exit(0 if u.find_spec('torch') and u.find_spec('numpy') else 3)"
)


def quick_check(python: Path, timeout: float = 30.0) -> None:
    """Fail fast, with advice, when the engine Python is missing or has no PyTorch (no torch import)."""
    python = Path(python)
    if not python.exists():
        raise UserError(f"The engine Python was not found: {python}",
                        "Set the engine Python in the add-on's preferences, or click 'Set up engine'.")
    if not os.access(python, os.X_OK) or python.is_dir():
        raise UserError(f"The engine Python cannot be run: {python}",
                        "Choose the python executable of the engine's environment.")
    try:
        stamp = python.stat().st_mtime
    except OSError:
        stamp = 0
    key = (str(python), stamp)
    code = _QUICK_CACHE.get(key)
    if code is None:
        try:
            code = subprocess.run([str(python), "-c", _QUICK_SCRIPT], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=engine_process_env(None), timeout=timeout).returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UserError(f"The engine Python could not be started ({exc}).",
                            "Choose a working Python 3.11+ in the add-on's preferences.") from None
        if code == 0:
            _QUICK_CACHE[key] = code
    if code == 3:
        raise UserError(f"The engine Python has no PyTorch: {python}",
                        "Click 'Set up engine' in the add-on's preferences, or install the engine's "
                        "requirements into that Python.")
    if code != 0:
        raise UserError(f"The engine Python does not work (exit code {code}): {python}",
                        "Choose a working Python 3.11+ in the add-on's preferences.")


def forget_checks() -> None:
    _QUICK_CACHE.clear()


# The full check ("Check engine"): runs in the engine's Python, prints one JSON object.
CHECK_SCRIPT = r'''
import json, sys, importlib
report = {"python": sys.version.split()[0], "executable": sys.executable}
try:
    import torch
    report["torch"] = torch.__version__
    report["cuda"] = bool(torch.cuda.is_available())
    report["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if report["cuda"] else []
    mps = getattr(torch.backends, "mps", None)
    report["mps"] = bool(mps and mps.is_available())
except Exception as exc:
    report["torch"] = None
    report["torch_error"] = f"{type(exc).__name__}: {exc}"
try:
    engine = importlib.import_module("engine")
    report["engine"] = getattr(engine, "__version__", "present")
except Exception as exc:
    report["engine"] = None
    report["engine_error"] = f"{type(exc).__name__}: {exc}"
from importlib import metadata
for name in ("diffusers", "transformers", "xatlas", "trimesh"):
    try:
        report.setdefault("packages", {})[name] = metadata.version(name)
    except Exception:
        report.setdefault("packages", {})[name] = None
models = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
report["roles"] = {role: model for role, model in models.items() if model}
# Which models are on this machine, with their sizes: the engine's own `models list` (JSON lines).
try:
    import subprocess
    asked = list(dict.fromkeys(report["roles"].values()))
    listing = subprocess.run([sys.executable, "-m", "engine", "models", "list", *asked],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90)
    events = [json.loads(line) for line in listing.stdout.splitlines() if line.startswith("{")]
    report["models"] = [event for event in events if event.get("event") == "model"]
    if listing.returncode != 0:
        report["models_error"] = (listing.stderr.strip().splitlines() or [f"exit code {listing.returncode}"])[-1]
except Exception as exc:
    report["models"] = []
    report["models_error"] = f"{type(exc).__name__}: {exc}"
print("CSD-CHECK " + json.dumps(report))
'''


def check_command(python: Path, models: dict) -> list[str]:
    return [str(python), "-c", CHECK_SCRIPT, json.dumps(models)]


def parse_check_output(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith("CSD-CHECK "):
            try:
                report = parse_json(line[len("CSD-CHECK "):], "The engine check's report")
            except EngineOutputError:
                return None
            return report if isinstance(report, dict) else None
    return None


def summarize_check(report: dict | None) -> list[str]:
    """Lines for the preferences panel about the engine's environment (its models: models.model_rows)."""
    if not report:
        return ["The engine Python did not answer the check."]
    lines = [f"Python {report.get('python', '?')}"]
    if report.get("torch"):
        device = "CUDA: " + ", ".join(report.get("devices") or ["yes"]) if report.get("cuda") else (
            "Apple GPU (MPS)" if report.get("mps") else "CPU only")
        lines.append(f"PyTorch {report['torch']} ({device})")
    else:
        lines.append("PyTorch missing: " + str(report.get("torch_error", "")))
    lines.append("Engine code found" if report.get("engine") else "Engine code NOT found: " + str(report.get("engine_error", "")))
    if report.get("models_error"):
        lines.append("Models could not be listed: " + str(report["models_error"]))
    return lines


class BackgroundCommand:
    """A helper process (check, set-up) whose output goes to a log file, polled without blocking."""

    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None):
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=str(self.cwd) if self.cwd else None, **_popen_kwargs())

    def poll(self) -> int | None:
        if self.proc is not None and self.returncode is None:
            self.returncode = self.proc.poll()
        return self.returncode

    def terminate(self) -> None:
        if self.proc is not None and self.poll() is None:
            try:
                self.proc.terminate()
            except OSError:
                pass

    def kill(self) -> None:
        if self.proc is not None and self.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass

    def output(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""


@dataclass
class SetupPlan:
    """'Set up engine': create a venv with the given base Python, then pip-install the requirements."""

    venv_dir: Path
    requirements: Path
    base_python: str = sys.executable
    log_path: Path | None = None
    steps: list = field(default_factory=list)
    index: int = -1
    current: BackgroundCommand | None = None
    error: str = ""
    done: bool = False
    total_packages: int = 0
    seen_packages: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        self.venv_dir = Path(self.venv_dir)
        self.log_path = Path(self.log_path or (self.venv_dir.parent / "setup-engine.log"))
        python = venv_python(self.venv_dir)
        self.steps = [
            ("Creating the virtual environment", [self.base_python, "-m", "venv", str(self.venv_dir)]),
            ("Updating pip", [str(python), "-m", "pip", "install", "--upgrade", "pip"]),
            ("Installing the engine's packages", [str(python), "-m", "pip", "install", "--progress-bar", "off",
                                                  "-r", str(self.requirements)]),
        ]
        try:
            self.total_packages = sum(1 for line in Path(self.requirements).read_text("utf-8").splitlines()
                                      if line.strip() and not line.strip().startswith("#"))
        except OSError:
            self.total_packages = 0

    @property
    def stage(self) -> str:
        return self.steps[self.index][0] if 0 <= self.index < len(self.steps) else ""

    @property
    def fraction(self) -> float:
        if self.done:
            return 1.0
        if self.index < 2:
            return max(0, self.index) * 0.05
        if not self.total_packages:
            return 0.1
        return 0.1 + 0.9 * min(1.0, self.seen_packages / self.total_packages)

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP")}
        env["PYTHONNOUSERSITE"] = "1"
        return env

    def _next(self) -> None:
        self.index += 1
        if self.index >= len(self.steps):
            self.done = True
            self.current = None
            return
        label, argv = self.steps[self.index]
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n== {label}: {' '.join(argv)}\n")
        self.current = BackgroundCommand(argv, self.log_path, env=self._env())
        try:
            self.current.start()
        except OSError as exc:
            self.error = f"{label} failed: {exc}"
            self.done = True

    def poll(self) -> bool:
        """Advance; True once finished (check ``error``)."""
        if self.done:
            return True
        if self.current is None:
            self.venv_dir.parent.mkdir(parents=True, exist_ok=True)
            self._next()
            return self.done
        code = self.current.poll()
        if self.index == 2:
            text = self.current.output()
            self.seen_packages = min(self.total_packages, text.count("\nCollecting ") + text.count("\nRequirement already satisfied: "))
        if code is None:
            return False
        if code != 0:
            tail = self.current.output().strip().splitlines()[-3:]
            self.error = f"{self.stage} failed (exit code {code}). " + " ".join(tail)
            self.done = True
            return True
        self._next()
        return self.done

    def cancel(self) -> None:
        if self.current is not None:
            self.current.terminate()
        self.error = "Cancelled."
        self.done = True
