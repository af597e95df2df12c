"""Runs the store's jobs on Ray: submits each queued job as a task (one GPU, or one CPU slot where
the cluster has no GPU), drains what tasks report into the store, passes cancels on, and records
each job's end. Ray does the queueing, placement and retries; this only keeps the store in step."""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import ray

from .store import JobNotFound, JobStore
from .workers import JobHub, run_job_attempt

POLL_S = 0.2
log = logging.getLogger("engine.server")


@dataclass
class RaySettings:
    address: str | None = None  # None: start Ray on this machine; "auto" or HOST:PORT: join a cluster
    allow_download: bool = False  # whether jobs may fetch models from the Hugging Face Hub
    env: dict[str, str] = field(default_factory=dict)  # more environment for the engine processes


def _runtime_env(settings: RaySettings) -> dict:
    import engine

    package = Path(engine.__file__).resolve().parent
    if settings.address is None:
        # Ray's workers start in this process's folder, which may not hold the engine.
        paths = [str(package.parent), os.environ.get("PYTHONPATH", "")]
        return {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, paths))}}
    # On a cluster the engine's source travels with the Ray job: workers need its requirements only.
    return {"py_modules": [str(package)], "excludes": ["__pycache__", "*.pyc"]}


class RayDispatcher:
    def __init__(self, store: JobStore, settings: RaySettings = RaySettings()):
        self.store, self.settings = store, settings
        self._tasks: dict[str, ray.ObjectRef] = {}
        self._cancelled_early: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.hub = None
        self.uses_gpus = False

    def start(self) -> None:
        if not ray.is_initialized():
            # ray.init makes SIGTERM exit wherever the main thread is (tracebacks, no shutdown); the
            # web server's own handler, a graceful shutdown that stops this dispatcher, is put back.
            in_main_thread = threading.current_thread() is threading.main_thread()
            on_sigterm = signal.getsignal(signal.SIGTERM) if in_main_thread else None
            ray.init(address=self.settings.address or "local", namespace="csd-engine",
                     runtime_env=_runtime_env(self.settings),
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
            if on_sigterm is not None:
                signal.signal(signal.SIGTERM, on_sigterm)
        self.uses_gpus = ray.cluster_resources().get("GPU", 0) >= 1
        self.hub = JobHub.remote()
        for record in self.store.unfinished():
            reason = "the server restarted" if record.attempt else ""
            ray.get(self.hub.seed.remote(record.id, record.attempt, self.store.checkpoint(record.id), reason))
        self._thread = threading.Thread(target=self._loop, name="ray-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if ray.is_initialized():
            ray.shutdown()

    def wake(self) -> None:
        """A job was submitted or cancelled: act now, not at the next poll."""
        self._wake.set()

    def resources(self) -> dict:
        if not ray.is_initialized():
            return {}
        total = ray.cluster_resources()
        free = ray.available_resources()
        accelerators = sorted({key.split(":", 1)[1] for key in total if key.startswith("accelerator_type:")})
        return {"address": self.settings.address or "local", "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
                "gpus": int(total.get("GPU", 0)), "cpus": int(total.get("CPU", 0)),
                "free_gpus": int(free.get("GPU", 0)), "free_cpus": int(free.get("CPU", 0)),
                "accelerators": accelerators, "job_slot": "GPU" if self.uses_gpus else "CPU"}

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the dispatcher must outlive any one job's trouble
                log.exception("dispatcher")
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _tick(self) -> None:
        for record in self.store.unfinished():
            if record.id not in self._tasks and record.id not in self._cancelled_early:
                self._submit(record.id)
            if record.cancel_requested:
                self._cancel(record.id)
        self._drain()
        if self._tasks:
            ready, _ = ray.wait(list(self._tasks.values()), num_returns=len(self._tasks), timeout=0)
            if ready:
                self._drain()  # what the tasks reported before they returned comes first
                for job_id, ref in list(self._tasks.items()):
                    if ref in ready:
                        self._finish(job_id, ref)

    def _submit(self, job_id: str) -> None:
        env = dict(self.settings.env)
        if not self.settings.allow_download:
            env["HF_HUB_OFFLINE"] = "1"
        resources = {"num_gpus": 1} if self.uses_gpus else {"num_cpus": 1}
        job_zip = ray.put(self.store.job_archive(job_id))
        self._tasks[job_id] = run_job_attempt.options(**resources, name=f"csd-job-{job_id}").remote(
            job_id, job_zip, self.hub, env)

    def _cancel(self, job_id: str) -> None:
        begun = ray.get(self.hub.cancel.remote(job_id))
        ref = self._tasks.get(job_id)
        if not begun and ref is not None:
            # Not begun: Ray drops it from its queue. Never a task that has begun: ray.cancel would
            # interrupt it while its engine runs on, untold (the record's attempt lags behind the task).
            ray.cancel(ref)

    def _drain(self) -> None:
        for report in ray.get(self.hub.drain.remote()):
            job_id = report["job_id"]
            try:
                record = self.store.get(job_id)
            except JobNotFound:  # deleted meanwhile
                continue
            if record.finished:
                continue
            self.store.mark_running(job_id, report["attempt"])
            for path, data in report["previews"].items():
                self.store.save_preview(job_id, path, data)
            if report["checkpoint"]:
                self.store.save_checkpoint(job_id, report["checkpoint"])
            self.store.append_events(job_id, report["events"])

    def _finish(self, job_id: str, ref: ray.ObjectRef) -> None:
        del self._tasks[job_id]
        try:
            result = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            self._cancelled_early.add(job_id)
            self._end_without_result(job_id, 130, {"kind": "cancelled", "message": "Cancelled before it started.",
                                                   "hint": "", "exit_code": 130}, "cancelled")
        except ray.exceptions.RayError as error:
            message = (f"The job's worker stopped twice ({type(error).__name__}); "
                       "its last checkpoint is kept in the job's folder on the server.")
            self._end_without_result(job_id, 1, {"kind": "engine_error", "message": message,
                                                 "hint": "Submit the job again; if it fails again, check the "
                                                         "server's GPUs and memory.", "exit_code": 1}, "error")
        else:
            code = result["exit_code"]
            if result["outputs"] is not None:
                self.store.finish(job_id, code, result["outputs"])
            else:
                self._end_without_result(job_id, code, {
                    "kind": "engine_error", "message": f"The engine ended (exit code {code}) without a result.",
                    "hint": "The job's engine.log on the worker tells more; submit the job again.",
                    "exit_code": code}, "error")
        ray.get(self.hub.forget.remote(job_id))

    def _end_without_result(self, job_id: str, exit_code: int, error: dict, status: str) -> None:
        """The engine wrote no result (killed, or never started): the store and the event stream
        still end, with what the server knows."""
        self.store.append_events(job_id, [{"event": "error", **error},
                                          {"event": "finished", "status": status, "result": None}])
        self.store.finish(job_id, exit_code, None, error, status=status)
        log.info("job %s ended without a result: %s", job_id, error["message"])
