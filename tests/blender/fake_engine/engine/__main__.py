"""python -m engine run JOB_DIR, faked (see __init__.py). Standard library only."""

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

START = time.monotonic()


def models(args: list, spec: dict) -> int:
    """`models list [MODEL ...]` (each MODEL in spec["local"] is complete, with spec["size_bytes"]) and
    `models download MODEL --allow-download` (spec["download"]: steps, step_s, error, ignore_cancel)."""
    def emit(event, **fields):
        print(json.dumps({"event": event, "time": time.monotonic() - START, **fields}), flush=True)

    size = int(spec.get("size_bytes", 1234))
    if args[0] == "list":
        for model in args[1:]:
            local = model in spec.get("local", [])
            emit("model", model=model, use="asked for", local=local, complete=local, size_bytes=size if local else 0,
                 size=f"{size} B" if local else "0 B", path=None, missing=[])
        emit("finished", status="ok")
        return 0
    model, behaviour = args[1], spec.get("download", {})
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    steps = int(behaviour.get("steps", 3))
    emit("download_plan", model=model, files=steps + 2, total_bytes=steps * 100 + 10, fetch_files=steps,
         fetch_bytes=steps * 100)
    print(f"{model}: downloading {steps} files", file=sys.stderr, flush=True)
    for step in range(steps):
        if stopped and not behaviour.get("ignore_cancel"):
            emit("error", kind="cancelled", message="Cancelled by the user.", hint="", exit_code=130)
            emit("finished", status="cancelled")
            return 130
        time.sleep(float(behaviour.get("step_s", 0.01)))
        emit("download", model=model, file=f"part{step}", file_bytes_done=100, file_bytes=100,
             bytes_done=(step + 1) * 100, bytes_total=steps * 100)
    if behaviour.get("error"):
        emit("error", **behaviour["error"])
        emit("finished", status="error")
        return int(behaviour["error"].get("exit_code", 3))
    emit("finished", status="ok", model=model, path="/nowhere", size_bytes=size)
    return 0


def main() -> int:
    spec = json.loads(os.environ.get("CSD_FAKE_ENGINE") or "{}")
    if len(sys.argv) >= 3 and sys.argv[1] == "models":
        return models(sys.argv[2:], spec)
    if len(sys.argv) < 3 or sys.argv[1] != "run":
        print("fake engine: usage: python -m engine run JOB_DIR | models list|download ...", file=sys.stderr)
        return 2
    job = Path(sys.argv[2])
    data = json.loads((job / "job.json").read_text("utf-8"))
    if spec.get("record"):
        record = Path(spec["record"])
        record.mkdir(parents=True, exist_ok=True)
        shutil.copy(job / "job.json", record / "job.json")
        if (job / "mesh.npz").exists():
            shutil.copy(job / "mesh.npz", record / "mesh.npz")
        src = data.get("source")
        if src:
            (record / "source.txt").write_text(str(sorted(p.name for p in (job / src).iterdir()))
                                               if (job / src).is_dir() else src)
    out = job / data.get("output", "out")
    out.mkdir(exist_ok=True)
    progress = open(job / "progress.jsonl", "a", encoding="utf-8")
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))

    def emit(event, **fields):
        progress.write(json.dumps({"event": event, "time": time.monotonic() - START, **fields}) + "\n")
        progress.flush()

    def result(status, outputs=None, error=None):
        doc = {"protocol": 1, "task": data["task"], "status": status, "outputs": outputs or {},
               "settings": data.get("settings", {}), "timings": {}, "error": error}
        # The material the job asked for, as the engine reports it; spec["material"] overrides it
        # (any value, to test refusals). Neither: no key, as engines before PBR materials wrote.
        material = spec.get("material", data.get("settings", {}).get("material"))
        if material is not None:
            doc["material"] = material
        tmp = out / "result.json.tmp"
        tmp.write_text(json.dumps(doc), "utf-8")
        os.replace(tmp, out / "result.json")

    steps = int(spec.get("steps", 3))
    emit("started", task=data["task"], total_steps=steps, device="cpu")
    emit("stage", name="optimising")
    for step in range(steps):
        if spec.get("crash_at") == step:
            os.kill(os.getpid(), signal.SIGKILL)
        if stopped or (job / "cancel").exists():
            if spec.get("ignore_cancel"):
                while True:
                    time.sleep(0.1)
            result("cancelled")
            emit("finished", status="cancelled", result="out/result.json")
            return 130
        time.sleep(float(spec.get("step_s", 0.01)))
        emit("step", step=step + 1, total_steps=steps, loss=0.5, elapsed_s=time.monotonic() - START,
             eta_s=(steps - step - 1) * float(spec.get("step_s", 0.01)))
        if spec.get("preview") and step == 0:
            shutil.copy(spec["preview"], out / "preview_texture.png")
            emit("preview", step=1, path="preview_texture.png", view="preview_texture.png")
    if spec.get("error"):
        error = dict(spec["error"])
        emit("error", **error)
        if not spec.get("no_result"):
            result("error", error=error)
        return int(error.get("exit_code", 1))
    if "exit_code" in spec:  # exit without writing result.json, with this code (0 included)
        return int(spec["exit_code"])
    outputs = {}
    for name, src in (spec.get("outputs") or {}).items():
        target = out / Path(src).name
        shutil.copy(src, target)
        outputs[name] = target.name
    for name, rel in (spec.get("raw_outputs") or {}).items():
        outputs[name] = rel
    if spec.get("corner_uvs_from_mesh"):
        import numpy as np

        tris = np.load(job / "mesh.npz")["triangles"]
        uvs = np.random.default_rng(0).random((len(tris), 3, 2)).astype("float32")
        np.save(out / "corner_uvs.npy", uvs)
        outputs["corner_uvs"] = "corner_uvs.npy"
    result("ok", outputs)
    emit("finished", status="ok", result="out/result.json")
    return 0


sys.exit(main())
