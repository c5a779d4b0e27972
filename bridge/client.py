"""The client Blender uses to drive the diffusion worker. No ``bpy`` here.

Every wait has a deadline. While a request runs, the client pings the worker; a
worker that stops answering is killed (``WorkerHung``), one that dies is noticed
at once through its closed connection (``WorkerCrashed``), and the next request
starts a fresh worker by itself. The worker's output goes to a log file the UI can
open. Frames travel through shared memory-mapped files (local worker) or inline
(remote worker).
"""
from __future__ import annotations

import os
import queue
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import protocol, schema, worker_log
from .errors import JobError
from .frames import FrameError, SharedFrames

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


class WorkerError(Exception):
    """A problem with the worker, worded for the user."""

    code = "worker"


class WorkerUnavailable(WorkerError):
    code = "unavailable"


class WorkerCrashed(WorkerError):
    code = "crashed"


class WorkerHung(WorkerError):
    code = "hung"


class WorkerTimeout(WorkerError):
    code = "timeout"


class JobCancelled(WorkerError):
    code = "cancelled"


class JobFailed(WorkerError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class WorkerConfig:
    python: str | None = None  # local worker: the Python that runs it
    remote: tuple | None = None  # (host, port, token): a worker elsewhere
    log_path: str | None = None
    start_timeout: float = 60.0
    connect_timeout: float = 10.0
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 4.0
    send_timeout: float = 30.0  # a worker that stops reading cannot block a send for longer
    env: dict = field(default_factory=dict)


@dataclass
class Progress:
    step: int
    steps: int
    preview: np.ndarray | None = None


class WorkerClient:
    def __init__(self, config: WorkerConfig):
        self.config = config
        self.process: subprocess.Popen | None = None
        self.frames: SharedFrames | None = None
        self.shared_frames = False
        self.state = "stopped"
        self.last_error: str | None = None
        self.worker_pid: int | None = None
        self.worker_annotators: list | None = None  # None: a worker older than annotators
        self.worker_features: list | None = None  # None: a worker older than fusion, noise and prompt_mix
        self._sock: socket.socket | None = None
        self._inbox: queue.Queue = queue.Queue()
        self._send_lock = threading.Lock()
        self._next_id = 1
        self._alive = False
        self._last_heard = 0.0
        self._log_handle = None
        self._reader: threading.Thread | None = None

    # -- lifetime ---------------------------------------------------------
    @property
    def log_path(self) -> str | None:
        return self.config.log_path

    def ensure_started(self) -> None:
        if self._alive and (self.process is None or self.process.poll() is None):
            return
        self.stop()
        self.state = "starting"
        try:
            if self.config.remote:
                host, port, token = self.config.remote
                self._connect(host, int(port), token, shared=False)
            else:
                self._start_local()
        except WorkerError as error:
            self.state, self.last_error = "error", str(error)
            self.stop(keep_state=True)
            raise
        self.state = "ready"
        self.last_error = None

    def _start_local(self) -> None:
        python = self.config.python
        if not python:
            raise WorkerUnavailable("No Python is set for the Silk worker")
        if not os.path.exists(python):
            raise WorkerUnavailable(f"The worker Python '{python}' does not exist. Set SILK_WORKER_PYTHON, "
                                    "choose one in Silk's preferences, or run 'Install worker environment'")
        try:
            self.frames = SharedFrames()
        except FrameError as error:
            raise WorkerUnavailable(f"Cannot share frames with the worker: {error}") from None
        token = secrets.token_urlsafe(24)
        port_file = os.path.join(self.frames.directory, "port")
        env = dict(os.environ)
        # Inside Blender these point at Blender's own Python; the worker runs another one.
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
        env.update(self.config.env, SILK_WORKER_TOKEN=token, PYTHONUNBUFFERED="1")
        # Not inside the frames folder: that is deleted on stop, and the log must outlive a crash.
        # A private (0600) file in a per-user folder; the worker rotates it by size.
        log_path = self.config.log_path or worker_log.default_log_path()
        self.config.log_path = log_path
        self._log_handle = worker_log.open_private(log_path)
        self._log_handle.write(f"\n--- Silk worker starting {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        self._log_handle.flush()
        command = [python, WORKER_SCRIPT, "--port-file", port_file, "--parent-pid", str(os.getpid()),
                   "--exit-on-disconnect", "--log-file", log_path]
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log_handle,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as error:
            raise WorkerUnavailable(f"Cannot run the worker Python '{python}': {error.strerror}") from None
        finally:  # the worker holds its own copy (and must be able to rotate the file)
            self._log_handle.close()
            self._log_handle = None
        deadline = time.monotonic() + self.config.start_timeout
        while not os.path.exists(port_file):
            if self.process.poll() is not None:
                tail = self.log_tail()
                if "SILK_WORKER_MISSING " in tail:
                    missing = tail.split("SILK_WORKER_MISSING ", 1)[1].split()[0]
                    raise WorkerUnavailable(
                        f"The worker Python '{python}' lacks {missing.replace(',', ', ')}. Run 'Install worker "
                        "environment' in Silk's preferences, or set SILK_WORKER_PYTHON to a Python that has them")
                raise WorkerUnavailable(f"The worker stopped while starting (exit code {self.process.returncode}): "
                                        f"{tail}")
            if time.monotonic() > deadline:
                raise WorkerUnavailable(f"The worker did not start within {self.config.start_timeout:.0f} s; "
                                        f"see its log: {log_path}")
            time.sleep(0.02)
        with open(port_file) as handle:
            port = int(handle.read())
        self._connect("127.0.0.1", port, token, shared=True)

    def _connect(self, host: str, port: int, token: str, shared: bool) -> None:
        try:
            self._sock = socket.create_connection((host, port), timeout=self.config.connect_timeout)
        except OSError as error:
            raise WorkerUnavailable(f"Cannot connect to the worker at {host}:{port}: {error}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.settimeout(self.config.send_timeout)
        self._alive = True
        self._inbox = queue.Queue()
        self._reader = threading.Thread(target=self._read_loop, args=(self._sock,), name="silk-worker-reader",
                                        daemon=True)
        self._reader.start()
        hello = {"type": "hello", "protocol": protocol.PROTOCOL_VERSION, "token": token, "client": "silk"}
        if shared and self.frames is not None:
            hello.update(shared_dir=self.frames.directory, probe=self.frames.probe_secret)
        try:
            reply, _ = self._call(hello, timeout=self.config.connect_timeout, heartbeat=False)
        except JobFailed as error:  # refused: wrong token, another client connected, another protocol
            raise WorkerUnavailable(f"The worker at {host}:{port} refused the connection ({error.code}): {error}") \
                from None
        if reply.get("type") != "hello":
            raise WorkerUnavailable("The worker did not greet back")
        self.worker_pid = reply.get("pid")
        self.worker_annotators = reply.get("annotators")
        self.worker_features = reply.get("features")
        self.shared_frames = bool(reply.get("shared_frames"))
        if reply.get("missing"):
            raise WorkerUnavailable(
                "The worker's Python lacks " + ", ".join(reply["missing"]) + ". Run 'Install worker environment' in "
                "Silk's preferences, or install them into that Python (pip install torch diffusers transformers "
                "safetensors pillow numpy)")

    def stop(self, keep_state: bool = False) -> None:
        """Ask the worker to exit, then make sure it has; free everything."""
        if self._sock is not None and self._alive:
            try:
                self._send({"type": "shutdown", "id": self._new_id()})
            except WorkerError:
                pass
        self._alive = False
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self.process is not None:
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self.process = None
        if self.frames is not None:
            self.frames.close()
            self.frames = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if not keep_state:
            self.state = "stopped"

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    def log_tail(self, lines: int = 12) -> str:
        try:
            with open(self.config.log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(0, handle.tell() - 8192))
                text = handle.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:])

    # -- messages ---------------------------------------------------------
    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _send(self, message: dict, attachments=()) -> None:
        data = protocol.encode(message, attachments)
        with self._send_lock:
            if self._sock is None:
                raise WorkerCrashed("The worker is not connected")
            try:
                self._sock.sendall(data)
            except TimeoutError:
                self._alive = False
                self.kill()
                raise WorkerHung(f"The worker stopped reading for {self.config.send_timeout:.0f} s and was "
                                 "stopped. It will restart for the next job") from None
            except OSError as error:
                self._alive = False
                raise WorkerCrashed(f"Lost the connection to the worker: {error}") from None

    def _read_loop(self, sock) -> None:
        reader = protocol.StreamReader(sock, patient=True)
        while True:
            try:
                message, attachments = reader.read_message()
                protocol.validate_reply(message)
            except protocol.ProtocolError as error:
                self._inbox.put(({"type": "error", "reply_to": None, "code": "protocol",
                                  "message": f"bad message from the worker: {error}"}, []))
                continue
            except (ConnectionError, OSError):
                self._inbox.put(None)  # the connection is gone
                return
            self._last_heard = time.monotonic()
            self._inbox.put((message, attachments))

    def _call(self, message: dict, attachments=(), timeout: float = 30.0, heartbeat: bool = True,
              on_progress=None, should_cancel=None):
        """Send a request and wait for its reply, with progress, cancellation and heartbeats."""
        request_id = self._new_id()
        message = dict(message, id=request_id)
        self._send(message, attachments)
        deadline = time.monotonic() + timeout
        self._last_heard = time.monotonic()
        last_ping = time.monotonic()
        cancel_sent = None
        while True:
            now = time.monotonic()
            if now > deadline:
                raise WorkerTimeout(f"The worker did not finish '{message['type']}' within {timeout:.0f} s")
            if should_cancel is not None and cancel_sent is None and should_cancel():
                self._send({"type": "cancel", "id": self._new_id(), "job": request_id})
                cancel_sent = now
            if heartbeat:
                if now - self._last_heard > self.config.heartbeat_timeout:
                    self._declare_hung()
                if now - last_ping > self.config.heartbeat_interval:
                    self._send({"type": "ping", "id": self._new_id()})
                    last_ping = now
            try:
                item = self._inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is None:
                self._declare_crashed()
            reply, reply_attachments = item
            if reply.get("type") == "progress":
                if reply.get("job") == request_id and on_progress is not None:
                    on_progress(Progress(reply.get("step", 0), reply.get("steps", 0),
                                         self._preview(reply, reply_attachments)))
                continue
            if reply.get("reply_to") != request_id:
                if reply.get("type") == "error" and reply.get("reply_to") is None:
                    raise JobFailed(reply.get("code", "error"), reply.get("message", "worker error"))
                continue  # pongs and replies to pings and cancels
            if reply.get("type") == "error":
                raise JobFailed(reply.get("code", "error"), reply.get("message", "worker error"))
            if reply.get("type") == "cancelled":
                raise JobCancelled("Cancelled")
            return reply, reply_attachments

    def _declare_crashed(self):
        self._alive = False
        code = None
        if self.process is not None:
            try:
                code = self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.state = "error"
        detail = f" (exit code {code})" if code is not None else ""
        self.last_error = f"The Silk worker stopped unexpectedly{detail}"
        raise WorkerCrashed(f"{self.last_error}. It will restart for the next job. Log: {self.log_path}\n"
                            f"{self.log_tail(6)}")

    def _declare_hung(self):
        self._alive = False
        self.kill()
        self.state = "error"
        self.last_error = f"The Silk worker stopped answering for {self.config.heartbeat_timeout:.0f} s and was stopped"
        raise WorkerHung(f"{self.last_error}. It will restart for the next job. Log: {self.log_path}")

    @staticmethod
    def _preview(reply, attachments):
        descriptor = reply.get("preview")
        if not descriptor or not attachments:
            return None
        try:
            return np.frombuffer(attachments[descriptor["attachment"]], dtype=np.uint8).reshape(descriptor["shape"])
        except (KeyError, ValueError, IndexError, TypeError):
            return None

    # -- frames -----------------------------------------------------------
    def frame(self, array: np.ndarray, attachments: list, name: str | None = None) -> dict:
        """A frame descriptor for ``array``: copied into shared memory, or (remote worker)
        appended to ``attachments``, the list that goes with the request."""
        array = np.ascontiguousarray(array)
        if self.shared_frames and self.frames is not None:
            view, descriptor = self.frames.allocate(array.shape, array.dtype, name)
            np.copyto(view, array)
            return descriptor
        attachments.append(memoryview(array).cast("B"))
        return {"attachment": len(attachments) - 1, "shape": list(array.shape), "dtype": array.dtype.name}

    def buffer(self, shape, dtype=np.float32, name: str | None = None) -> tuple[np.ndarray, dict]:
        """A shared buffer to fill in place (no copy); only with shared frames."""
        if not (self.shared_frames and self.frames is not None):
            raise WorkerError("shared frames are not available with this worker")
        return self.frames.allocate(shape, dtype, name)

    def _result_array(self, reply: dict, key: str, attachments: list) -> np.ndarray:
        descriptor = reply.get(key)
        if not isinstance(descriptor, dict):
            raise JobFailed("protocol", "the worker's reply has no image")
        if "file" in descriptor:
            return self.frames.view(descriptor)
        return np.frombuffer(attachments[descriptor["attachment"]], dtype=descriptor["dtype"]).reshape(
            descriptor["shape"])

    # -- operations -------------------------------------------------------
    def ping(self, timeout: float = 5.0) -> dict:
        self.ensure_started()
        reply, _ = self._call({"type": "ping"}, timeout=timeout, heartbeat=False)
        return reply

    def status(self, timeout: float = 5.0) -> dict:
        self.ensure_started()
        reply, _ = self._call({"type": "status"}, timeout=timeout, heartbeat=False)
        return reply

    def load_model(self, model, timeout: float = 1800.0, should_cancel=None) -> dict:
        """Load a model (a schema.ModelRequest or its JSON). The reply says what the worker loaded:
        source, family (detected from the model), device, dtype and every component's dtype and device."""
        self.ensure_started()
        model = model.to_json() if isinstance(model, schema.ModelRequest) else model
        self.state = "busy"
        try:
            reply, _ = self._call({"type": "load_model", "model": model}, timeout=timeout, should_cancel=should_cancel)
        finally:
            if self.state == "busy":
                self.state = "ready"
        return reply["model"]

    def _check_features(self, request: schema.GenerateRequest) -> None:
        """An older worker would ignore fields it does not know and paint without them: refuse instead."""
        annotators = [unit.annotator for unit in request.controlnets if unit.annotator not in (None, "none")]
        if annotators and self.worker_annotators is None:
            raise JobFailed("unsupported", f"This worker is older than Silk's annotators and cannot run "
                            f"'{annotators[0]}'. Update Silk (bridge/) on the worker's machine and restart the worker")
        used = request.features()
        missing = [name for name in used if name not in (self.worker_features or ())]
        if missing:
            raise JobFailed("unsupported", f"This worker is older than Silk's temporal feedback and cannot use "
                            f"{', '.join(missing)}. Update Silk (bridge/) on the worker's machine and restart the worker")

    def echo(self, frame: dict, attachments=(), output: dict | None = None, timeout: float = 30.0):
        self.ensure_started()
        reply, reply_attachments = self._call({"type": "echo", "frame": frame, "output": output},
                                              attachments, timeout=timeout)
        return self._result_array(reply, "frame", reply_attachments)

    def _painting_job(self, message: dict, attachments: list, key: str, timeout: float, on_progress,
                      should_cancel):
        """Run a painting request with the worker marked busy; its ``key`` array (a copy) and what
        the worker said about it."""
        self.state = "busy"
        try:
            reply, reply_attachments = self._call(message, attachments, timeout=timeout, on_progress=on_progress,
                                                  should_cancel=should_cancel)
        finally:
            if self.state == "busy":
                self.state = "ready"
        result = np.array(self._result_array(reply, key, reply_attachments), dtype=np.float32, copy=True)
        return result, {"seed": reply.get("seed"), "timings": reply.get("timings", {}), "model": reply.get("model")}

    def generate(self, request, *fields, timeout: float = 3600.0, on_progress=None, should_cancel=None,
                 **named) -> tuple[np.ndarray, dict]:
        """One picture for a schema.GenerateRequest (or for the fields one is built from:
        ``generate(model, prompt, controlnets, width, height, seed=..., ...)``, see
        schema.build). Returns the (height, width, 3) float32 image in [0, 1] (display sRGB) and
        details."""
        try:
            if not isinstance(request, schema.GenerateRequest):
                request = schema.build(request, *fields, **named)
            request.validated()
        except JobError as error:
            raise JobFailed(error.code, error.message) from None
        self.ensure_started()
        self._check_features(request)
        attachments = []
        message = request.to_json(lambda array, name: self.frame(np.asarray(array, dtype=np.float32), attachments,
                                                                 name=name))
        if self.shared_frames:
            _, message["output"] = self.buffer((request.height, request.width, 3), np.float32, name="output")
        return self._painting_job(message, attachments, "image", timeout, on_progress, should_cancel)

    def _unit(self, unit: dict, attachments: list, name: str) -> dict:
        """A ControlNet unit as a video request carries it: its video as a frame, its weight,
        start and end."""
        return {"image": self.frame(np.asarray(unit["image"], dtype=np.float32), attachments, name=name),
                "weight": float(unit.get("weight", 1.0)), "start": float(unit.get("start", 0.0)),
                "end": float(unit.get("end", 1.0))}

    def generate_video(self, model: dict, motion: dict, prompt: str, controlnets: list, width: int, height: int,
                       frames: int, *, prompts: dict | None = None, negative_prompt: str = "", seed: int = 0,
                       steps: int = 20, guidance: float = 7.0, scheduler: str = "euler",
                       init_video: np.ndarray | None = None, strength: float = 1.0, masks: np.ndarray | None = None,
                       decode_chunk: int | None = None, context_frames: int | None = None,
                       context_stride: int | None = None, preview: bool = False, timeout: float = 3600.0,
                       on_progress=None, should_cancel=None) -> tuple[np.ndarray, dict]:
        """One window of a video model (bridge/motion.py): ``frames`` frames painted together.
        ``motion``: {"source": 'tiny' | repo id | folder | file, "config"?, "loras"?: [{"path", "weight"}]};
        ``controlnets``: [{"image": (frames, h, w, c) array, "weight", "start", "end"}]; ``prompts``:
        {frame: prompt} for prompt travel; ``init_video`` (frames, h, w, 3) with ``masks`` (frames, h,
        w), each pixel's strength, starts the window from given frames. Returns the (frames, height,
        width, 3) float32 frames in [0, 1] and details."""
        self.ensure_started()
        if self.worker_features is None or "generate_video" not in self.worker_features:
            raise JobFailed("unsupported", "This worker is older than Silk's motion modules. Update Silk (bridge/) on "
                            "the worker's machine and restart the worker")
        attachments = []
        units = [self._unit(unit, attachments, f"video{index}") for index, unit in enumerate(controlnets)]
        request = {"type": "generate_video", "model": model, "motion": motion, "prompt": prompt,
                   "frames": int(frames), "negative_prompt": negative_prompt, "seed": int(seed), "steps": int(steps),
                   "guidance": float(guidance), "scheduler": scheduler, "width": int(width), "height": int(height),
                   "strength": float(strength), "controlnets": units, "preview": bool(preview)}
        if prompts:
            request["prompts"] = {str(int(frame)): text for frame, text in prompts.items()}
        for key, value in (("decode_chunk", decode_chunk), ("context_frames", context_frames),
                           ("context_stride", context_stride)):
            if value is not None:
                request[key] = int(value)
        for key, array in (("init_video", init_video), ("masks", masks)):
            if array is not None:
                request[key] = self.frame(np.asarray(array, dtype=np.float32), attachments, name=key)
        if self.shared_frames:
            # No name keeps the buffer's view: a traceback kept by the caller must not pin the mapping.
            request["output"] = self.buffer((int(frames), height, width, 3), np.float32, name="output_video")[1]
        return self._painting_job(request, attachments, "video", timeout, on_progress, should_cancel)


def _mix_entry(entry: dict) -> dict:
    """A prompt_mix entry as JSON takes it (a numpy weight becomes a float; anything else goes as
    it is, for the worker to refuse with a clear message)."""
    entry = dict(entry)
    if isinstance(entry.get("weight"), (np.floating, np.integer)):
        entry["weight"] = float(entry["weight"])
    return entry
