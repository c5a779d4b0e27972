"""Blender's one connection to the diffusion worker, shared by renders and the panel.

The worker is configured from Silk's preferences and environment variables; the
client is re-made when that configuration changes. One job runs at a time: renders
and the panel's preview take ``job_lock`` (with a timeout) before talking to it.
"""
from __future__ import annotations

import os
import threading

import bpy

from ..bridge.client import WorkerClient, WorkerConfig, WorkerError, WorkerUnavailable
from ..bridge.environment import WorkerPythonMissing, resolve_worker_python
from ..ui import preferences

job_lock = threading.Lock()
# Set by the panel's Stop button: the running render or preview stops within one step.
cancel_requested = threading.Event()
_client: WorkerClient | None = None
_client_key = None
# What the worker last said it runs: {"device", "source", "family"} (the status line; the family it
# detected steers the ControlNet defaults of a hub model, see diffusion_job.model_family).
loaded: dict = {}
_starting = False
_start_error: str | None = None


def worker_config() -> WorkerConfig:
    """The worker the preferences and the environment ask for (raises WorkerUnavailable)."""
    prefs = preferences.preferences()
    env = {}
    model_folder = getattr(prefs, "model_folder", "") if prefs else ""
    if model_folder and not os.environ.get("SILK_MODEL_CACHE"):  # a farm node's environment wins (shared storage)
        folder = bpy.path.abspath(model_folder)
        env.update(SILK_MODEL_CACHE=folder, HF_HUB_CACHE=os.path.join(folder, "hub"))
    _kind, gpu = environment_device()
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    remote = (getattr(prefs, "remote_address", "") or "").strip() if prefs else ""
    if remote:
        host, _, port = remote.rpartition(":")
        if not host or not port.isdigit():
            raise WorkerUnavailable(f"The remote worker address '{remote}' must be host:port")
        token = prefs.remote_token.strip()
        if not token:
            raise WorkerUnavailable("The remote worker needs its token (printed when it starts); set it in Silk's "
                                    "preferences")
        return WorkerConfig(remote=(host, int(port), token), log_path=preferences.worker_log_path())
    try:
        python = resolve_worker_python(getattr(prefs, "worker_python", "") if prefs else "",
                                       preferences.worker_environment_dir())
    except WorkerPythonMissing as error:
        raise WorkerUnavailable(str(error)) from None
    return WorkerConfig(python=python.path, log_path=preferences.worker_log_path(), env=env)


def client() -> WorkerClient:
    """The shared client for the current configuration (not started)."""
    global _client, _client_key
    config = worker_config()
    key = (config.python, config.remote, tuple(sorted(config.env.items())))
    if _client is None or key != _client_key:
        if _client is not None:
            _client.stop()
        _client, _client_key = WorkerClient(config), key
        loaded.clear()
    return _client


DEVICE_VAR = "SILK_WORKER_DEVICE"  # a farm node's GPU for the worker: auto, cpu, mps, cuda or cuda:<index>


def environment_device() -> tuple[str | None, str | None]:
    """(device kind, CUDA index) from SILK_WORKER_DEVICE; (None, None) when unset. ``cuda:1`` runs
    the worker with CUDA_VISIBLE_DEVICES=1, so it sees that GPU alone."""
    value = os.environ.get(DEVICE_VAR, "").strip().lower()
    if not value:
        return None, None
    kind, _, index = value.partition(":")
    if kind not in ("auto", "cpu", "mps", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise WorkerUnavailable(f"{DEVICE_VAR}={value!r} is not auto, cpu, mps, cuda or cuda:<index>")
    return kind, index or None


def device_setting() -> tuple[str, str]:
    prefs = preferences.preferences()
    device, precision = (prefs.device.lower(), prefs.precision.lower()) if prefs else ("auto", "auto")
    try:
        device = environment_device()[0] or device
    except WorkerUnavailable:
        pass  # reported when the worker is configured (worker_config)
    return device, precision


def note_loaded(info: dict) -> None:
    loaded.update({key: info[key] for key in ("device", "source", "family") if info.get(key)})


def status() -> tuple[str, str]:
    """(state, text) for the panel: stopped, starting, ready, busy or error."""
    if _starting:
        return "starting", "Starting the worker..."
    if _start_error and (_client is None or _client.state != "ready"):
        return "error", _start_error
    if _client is None:
        return "stopped", "Worker stopped"
    state = _client.state
    if state == "ready":
        if loaded:
            return "ready", f"Ready on {loaded.get('device', '?').upper()} with {loaded.get('source', '?')}"
        return "ready", "Ready (no model loaded yet)"
    if state == "busy":
        return "busy", "Busy"
    if state == "starting":
        return "starting", "Starting the worker..."
    if state == "error":
        return "error", _client.last_error or "The worker failed"
    return "stopped", "Worker stopped"


def start_in_background() -> None:
    """Start the worker without blocking the UI (the panel shows 'starting')."""
    global _starting, _start_error
    if _starting:
        return
    _start_error = None
    try:
        worker = client()
    except WorkerError as error:
        _start_error = str(error)
        return
    _starting = True

    def run():
        global _starting, _start_error
        try:
            if job_lock.acquire(timeout=5.0):  # held: a render or preview is using (so starting) it
                try:
                    worker.ensure_started()
                finally:
                    job_lock.release()
        except WorkerError as error:
            _start_error = str(error)
        finally:
            _starting = False

    threading.Thread(target=run, name="silk-worker-start", daemon=True).start()


def stop() -> None:
    global _start_error
    _start_error = None
    if _client is not None:
        acquired = job_lock.acquire(timeout=0.1)
        if not acquired:
            _client.kill()  # a job is running: end it; the job reports the crash and lets go
            acquired = job_lock.acquire(timeout=10)
        try:
            _client.stop()
        finally:
            if acquired:
                job_lock.release()
    loaded.clear()


def log_path() -> str:
    if _client is not None and _client.log_path:
        return _client.log_path
    return preferences.worker_log_path()


def unregister():
    global _client
    if _client is not None:
        _client.stop()
        _client = None
