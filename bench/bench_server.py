"""The remote engine's cost (issue 19): texture jobs through `python -m engine serve` against the
same jobs run as the add-on runs them locally (`python -m engine run JOB_DIR`).

Jobs: bench_texture_step.py's whole job (full-size SD 1.5 UNet, VAE and two ControlNets at random
weights saved as a local diffusers folder, an icosphere OBJ without UVs, 512 renders, a 2048 bake),
with --job-steps steps. The model folder is the server's --models-dir, as a studio would set it up.

  --mode run     N jobs, one `python -m engine run` after another: each job's wall clock.
  --mode server  start the server (local Ray, this machine's GPU), submit N jobs at once (back to
                 back on one GPU), follow each one's events, download its outputs: the total wall
                 clock from the first upload to the last download, and per job the upload, the
                 wait in the queue, the engine's own time (its events) and the download.
  --smoke        tiny models on the CPU: checks the script runs.

    python bench/bench_server.py --mode run --jobs 8 --job-steps 300
    python bench/bench_server.py --mode server --jobs 8 --job-steps 300
    python bench/bench_server.py --mode run --jobs 3 --bundled      # the README's job on this CPU
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def build_model_folder(root: Path, smoke: bool) -> tuple[Path, dict[str, Path]]:
    """bench_texture_step's SD 1.5 + two ControlNets, saved once under `root` (reused when there)."""
    model, controlnets = root / "sd15-random", {name: root / f"controlnet-{name}" for name in ("depth", "canny")}
    if (model / "model_index.json").is_file() and all((path / "config.json").is_file() for path in controlnets.values()):
        return model, controlnets
    import torch

    from bench_texture_step import bench_model, build_models, save_model_folder

    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.float16
    spec = bench_model("sd15", smoke, False)
    unet, vae, nets = build_models(device, dtype, spec, smoke)
    folder, folders = save_model_folder(root, spec, unet, vae, nets)
    return folder, folders


def write_bundled_job(folder: Path, steps: int | None) -> Path:
    """The README's main job (the bundled prior on the CPU, examples/cube.obj)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mesh.obj").write_bytes((REPO / "examples" / "cube.obj").read_bytes())
    settings = {"prompt": "a green checkered cube", "device": "cpu", **({"steps": steps} if steps else {})}
    (folder / "job.json").write_text(json.dumps({"protocol": 1, "task": "texture", "mesh": "mesh.obj",
                                                 "output": "out", "settings": settings}))
    return folder


def write_job(folder: Path, model: Path, controlnets: dict[str, Path], steps: int, smoke: bool) -> Path:
    import trimesh

    from bench_texture_step import icosphere_unit

    folder.mkdir(parents=True, exist_ok=True)
    vertices, faces = icosphere_unit(2 if smoke else 5)
    trimesh.Trimesh(vertices, faces, process=False).export(folder / "mesh.obj")
    settings = {"prompt": "a wooden chair with carved legs", "steps": steps, "render_size": 64 if smoke else 512,
                "texture_size": 128 if smoke else 2048, "device": "cpu" if smoke else "cuda",
                "prior": {"model": str(model), "controlnets": sorted(controlnets),
                          "controlnet_models": {name: str(path) for name, path in controlnets.items()}}}
    (folder / "job.json").write_text(json.dumps({"protocol": 1, "task": "texture", "mesh": "mesh.obj",
                                                 "output": "out", "settings": settings}))
    return folder


def engine_env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1",
                PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))


def run_locally(template: Path, work: Path, count: int) -> list[dict]:
    rows = []
    for index in range(count):
        job = work / f"run-{index}"
        job.mkdir(parents=True)
        for name in ("job.json", "mesh.obj"):
            (job / name).write_bytes((template / name).read_bytes())
        begin = time.perf_counter()
        process = subprocess.run([sys.executable, "-m", "engine", "run", str(job)], cwd=REPO, env=engine_env(),
                                 capture_output=True, text=True)
        wall = time.perf_counter() - begin
        result = json.loads((job / "out" / "result.json").read_text())
        rows.append({"job": index, "exit_code": process.returncode, "status": result["status"], "wall_s": wall,
                     "engine_total_s": result["timings"].get("total_s")})
        print(f"run {index}: {result['status']} in {wall:.1f} s", flush=True)
    return rows


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_on_server(template: Path, work: Path, count: int, models_root: Path,
                  one_at_a_time: bool) -> tuple[list[dict], dict]:
    from engine.server.client import ServerClient

    token = "bench-" + "x" * 40
    (work / "token").write_text(token)
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", str(port), "--jobs-dir",
                               str(work / "jobs"), "--token-file", str(work / "token"), "--models-dir",
                               str(models_root)], cwd=REPO, env=engine_env(),
                              stdout=open(work / "server.log", "wb"), stderr=subprocess.STDOUT)
    client = ServerClient(f"http://127.0.0.1:{port}", token)
    try:
        while True:
            try:
                info = client.server_info()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if server.poll() is not None or time.perf_counter() - started > 120:
                    raise SystemExit((work / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        ready_s = time.perf_counter() - started
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in ("job.json", "mesh.obj"):
                archive.write(template / name, name)
        upload = buffer.getvalue()
        rows: list[dict] = [{} for _ in range(count)]

        def submit(index: int) -> None:
            sent = time.perf_counter()
            job = client.submit(upload, f"bench {index}")
            rows[index] = {"job": index, "id": job["id"], "upload_s": time.perf_counter() - sent, "submitted": sent}

        def follow(row: dict) -> None:
            first = last = None
            for _number, event in client.events(row["id"]):
                now = time.perf_counter()
                if event.get("event") == "started" and first is None:
                    first = now
                if event.get("event") == "finished":
                    last = now
            fetched = time.perf_counter()
            data = client.outputs(row["id"])
            row["download_s"] = time.perf_counter() - fetched
            row["outputs_mb"] = len(data) / 2 ** 20
            record = client.job(row["id"])
            row.update(status=record["status"], attempt=record["attempt"], done=time.perf_counter(),
                       queue_s=(first or fetched) - row["submitted"], engine_s=(last or fetched) - (first or fetched),
                       record_run_s=(record["ended"] or 0) - (record["started"] or 0))
            print(f"server {row['job']}: {row['status']} (queue {row['queue_s']:.1f} s, engine {row['engine_s']:.1f} s, "
                  f"download {row['download_s']:.2f} s, {row['outputs_mb']:.1f} MB)", flush=True)

        begin = time.perf_counter()
        if one_at_a_time:
            for index in range(count):
                submit(index)
                follow(rows[index])
                rows[index]["wall_s"] = rows[index]["done"] - rows[index]["submitted"]
        else:
            for index in range(count):
                submit(index)
            threads = [threading.Thread(target=follow, args=(row,)) for row in rows]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        total = max(row["done"] for row in rows) - begin
        return rows, {"ready_s": ready_s, "total_s": total, "ray": info["ray"]}
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("run", "server"), required=True)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--job-steps", type=int, default=None, help="default 300; --bundled: the job's own (300)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="server: submit each job when the one before has been downloaded (per-job overhead)")
    parser.add_argument("--bundled", action="store_true",
                        help="the README's main job (bundled prior, CPU) instead of the full-size models")
    parser.add_argument("--models", type=Path, default=REPO / "bench" / "out-server" / "models",
                        help="where the random-weight model folder is saved (and reused)")
    parser.add_argument("--out", type=Path, default=None, help="results.json goes here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    if args.bundled:
        args.models.mkdir(parents=True, exist_ok=True)
        template = write_bundled_job(work / "template", args.job_steps)
    else:
        begin = time.perf_counter()
        model, controlnets = build_model_folder(args.models, args.smoke)
        print(f"model folder ready in {time.perf_counter() - begin:.1f} s", flush=True)
        template = write_job(work / "template", model, controlnets, args.job_steps or 300, args.smoke)
    if args.mode == "run":
        rows, extra = run_locally(template, work, args.jobs), {}
        walls = [row["wall_s"] for row in rows]
        print("\n| job | status | wall s |\n|---|---|---|")
        for row in rows:
            print(f"| {row['job']} | {row['status']} | {row['wall_s']:.1f} |")
        print(f"| all {len(rows)} | | {sum(walls):.1f} (mean {sum(walls) / len(walls):.1f}) |")
    else:
        rows, extra = run_on_server(template, work, args.jobs, args.models, args.one_at_a_time)
        print(f"\nserver ready in {extra['ready_s']:.1f} s; Ray: {extra['ray']}")
        print("\n| job | status | attempt | upload s | queue s | engine s | download s | outputs MB | wall s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            wall = f"{row['wall_s']:.1f}" if "wall_s" in row else ""
            print(f"| {row['job']} | {row['status']} | {row['attempt']} | {row['upload_s']:.2f} | {row['queue_s']:.1f} "
                  f"| {row['engine_s']:.1f} | {row['download_s']:.2f} | {row['outputs_mb']:.1f} | {wall} |")
        print(f"| all {len(rows)}, first upload to last download | | | | | {extra['total_s']:.1f} s | | |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"results-{args.mode}.json").write_text(json.dumps({"rows": rows, **extra}, indent=1))


if __name__ == "__main__":
    main()
