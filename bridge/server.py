"""The worker's server: one client connection at a time, one job at a time.

The connection thread reads and answers messages at once (ping, status, cancel),
so a client always hears back while a job runs; jobs (load a model, generate, echo)
run on a job thread and report progress as they go. Every request is validated;
a bad one gets an error reply and the worker keeps serving.
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import traceback

import numpy as np

from . import frames as frames_module
from . import protocol
from .frames import FrameError, WorkerFrames, verify_probe

log = logging.getLogger("silk.worker")
WORKER_VERSION = "0.1.0"


class JobError(Exception):
    """A job that cannot be done, with a message for the user and a code for programs."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Cancelled(Exception):
    pass


class Job:
    def __init__(self, request: dict, attachments: list):
        self.request = request
        self.attachments = attachments
        self.id = request["id"]
        self.cancel = threading.Event()


class WorkerServer:
    def __init__(self, token: str, backend, host: str = "127.0.0.1", port: int = 0,
                 exit_on_disconnect: bool = False, parent_pid: int | None = None):
        self.token = token
        self.backend = backend
        self.exit_on_disconnect = exit_on_disconnect
        self.parent_pid = parent_pid
        self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        self._send_lock = threading.Lock()
        self._job: Job | None = None
        self._job_lock = threading.Lock()
        self._connection = None
        self._frames = WorkerFrames(None)
        self._stopping = threading.Event()
        # One long-lived job thread: torch's thread pools stay warm from job to job.
        self._jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._job_loop, name="jobs", daemon=True).start()
        from .annotators import Annotators  # here, not at the top: annotators.py imports JobError from this module

        self.annotators = Annotators()

    # -- lifetime ---------------------------------------------------------
    def serve_forever(self) -> None:
        if self.parent_pid:
            threading.Thread(target=self._watch_parent, name="parent-watch", daemon=True).start()
        while not self._stopping.is_set():
            try:
                self.listener.settimeout(0.5)
                connection, address = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            log.info("client connected from %s", address)
            try:
                self._serve(connection)
            finally:
                self._close_connection(connection)
            if self.exit_on_disconnect:
                break
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        job = self._job
        if job is not None:
            job.cancel.set()
        try:
            self.listener.close()
        except OSError:
            pass

    def _watch_parent(self) -> None:
        while not self._stopping.wait(0.5):
            if not frames_module._alive(self.parent_pid) or (os.name == "posix" and os.getppid() != self.parent_pid):
                log.warning("parent process %s is gone; exiting", self.parent_pid)
                os._exit(0)

    def _close_connection(self, connection) -> None:
        job = self._job
        if job is not None:
            job.cancel.set()
        self._frames.forget()
        self._frames = WorkerFrames(None)
        self._connection = None
        try:
            connection.close()
        except OSError:
            pass

    # -- messages ---------------------------------------------------------
    def send(self, message: dict, attachments=()) -> None:
        connection = self._connection
        if connection is None:
            return
        data = protocol.encode(message, attachments)
        with self._send_lock:
            try:
                connection.sendall(data)
            except OSError:
                pass  # the client is gone; the connection loop notices

    def _serve(self, connection) -> None:
        self._connection = connection
        reader = protocol.StreamReader(connection)
        connection.settimeout(10.0)
        try:
            message, _ = reader.read_message()
            hello = protocol.validate_request(message)
            if hello["type"] != "hello":
                raise protocol.ProtocolError("handshake", "the first message must be 'hello'", hello["id"])
        except protocol.ProtocolError as error:
            self.send(protocol.error_reply(error))
            return
        except (ConnectionError, OSError):
            return
        if not _same_secret(hello["token"], self.token):
            self.send({"type": "error", "reply_to": hello["id"], "code": "unauthorised", "message": "wrong token"})
            return
        if hello["protocol"] != protocol.PROTOCOL_VERSION:
            self.send({"type": "error", "reply_to": hello["id"], "code": "version",
                       "message": f"worker speaks protocol {protocol.PROTOCOL_VERSION}, client {hello['protocol']}"})
            return
        shared_dir = hello.get("shared_dir")
        shared = bool(shared_dir and hello.get("probe") and verify_probe(shared_dir, hello["probe"]))
        self._frames = WorkerFrames(shared_dir if shared else None)
        self.send({"type": "hello", "reply_to": hello["id"], "protocol": protocol.PROTOCOL_VERSION,
                   "worker": WORKER_VERSION, "pid": os.getpid(), "shared_frames": shared,
                   "missing": self.backend.missing_modules(), "annotators": list(self.annotators.names),
                   "features": list(protocol.FEATURES)})
        connection.settimeout(None)
        while not self._stopping.is_set():
            try:
                message, attachments = reader.read_message()
                request = protocol.validate_request(message)
            except protocol.ProtocolError as error:
                self.send(protocol.error_reply(error))
                continue
            except (ConnectionError, OSError):
                return
            if not self._dispatch(request, attachments):
                return

    def _dispatch(self, request: dict, attachments: list) -> bool:
        kind, request_id = request["type"], request["id"]
        if kind == "ping":
            self.send({"type": "pong", "reply_to": request_id, "busy": self._job is not None})
        elif kind == "status":
            status = self.backend.status()
            job = self._job
            self.send(dict(status, type="status", reply_to=request_id, busy=job is not None,
                           job=job.id if job else None, pid=os.getpid()))
        elif kind == "cancel":
            job = self._job
            if job is not None and job.id == request["job"]:
                job.cancel.set()
            self.send({"type": "ok", "reply_to": request_id})
        elif kind == "shutdown":
            self.send({"type": "ok", "reply_to": request_id})
            self.stop()
            return False
        elif kind == "hello":
            self.send({"type": "error", "reply_to": request_id, "code": "handshake", "message": "already greeted"})
        else:
            with self._job_lock:
                if self._job is not None:
                    self.send({"type": "error", "reply_to": request_id, "code": "busy",
                               "message": f"the worker is busy with request {self._job.id}"})
                    return True
                self._job = Job(request, attachments)
            self._jobs.put(self._job)
        return True

    # -- jobs -------------------------------------------------------------
    def _job_loop(self) -> None:
        while True:
            job = self._jobs.get()
            self._run_job(job)

    def _run_job(self, job: Job) -> None:
        request = job.request
        started = time.perf_counter()
        attachments = ()
        try:
            if request["type"] == "echo":
                reply, attachments = self._echo(job)
            elif request["type"] == "load_model":
                info = self.backend.load(request["model"])
                reply = {"type": "ok", "reply_to": job.id, "model": info}
            elif request["type"] == "generate_video":
                reply, attachments = self._generate_video(job)
            else:
                reply, attachments = self._generate(job)
        except Cancelled:
            reply = {"type": "cancelled", "reply_to": job.id}
        except (JobError, FrameError) as error:
            code = getattr(error, "code", "bad_frame")
            reply = {"type": "error", "reply_to": job.id, "code": code, "message": str(error)}
        except Exception as error:  # the worker must survive anything a job does
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            reply = {"type": "error", "reply_to": job.id, "code": "internal",
                     "message": f"{type(error).__name__}: {error}"}
        log.info("job %s (%s) took %.3f s", job.id, request["type"], time.perf_counter() - started)
        # Free the job slot before replying: the client may send its next job at once.
        with self._job_lock:
            self._job = None
        self.send(reply, attachments)

    def _echo(self, job: Job):
        source = self._frames.open(job.request["frame"], job.attachments)
        return self._frame_reply(job, "echo", "frame", source)

    def _frame_reply(self, job: Job, kind: str, key: str, image: np.ndarray, **extra):
        """The reply carrying ``image``: written into the client's output frame, or attached."""
        output = job.request.get("output")
        if output is not None and "file" in output:
            target = self._frames.open(output, [], writable=True)
            if target.shape != image.shape or target.dtype != image.dtype:
                raise FrameError(f"output frame is {target.shape} {target.dtype}, result is {image.shape} {image.dtype}")
            np.copyto(target, image)
            return dict({"type": kind, "reply_to": job.id, key: output}, **extra), ()
        data = np.ascontiguousarray(image)
        descriptor = {"attachment": 0, "shape": list(data.shape), "dtype": data.dtype.name}
        return dict({"type": kind, "reply_to": job.id, key: descriptor}, **extra), [memoryview(data).cast("B")]

    def _generate(self, job: Job) -> None:
        request = job.request
        images = {}
        for key in ("init_image", "mask", "noise"):
            if request.get(key) is not None:
                images[key] = self._frames.open(request[key], job.attachments)
        units = []
        annotating = None  # seconds spent in annotators, when any ran
        for unit in request.get("controlnets", []):
            if not isinstance(unit, dict) or not isinstance(unit.get("image"), dict):
                raise JobError("malformed", "each ControlNet unit needs an 'image' frame")
            if job.cancel.is_set():
                raise Cancelled()
            started = time.perf_counter()
            # The backend sees the annotator's output (or the image itself), never the annotator fields.
            image = self.annotators.apply(unit, self._frames.open(unit["image"], job.attachments))
            if unit.get("annotator", "none") != "none":
                annotating = (annotating or 0.0) + time.perf_counter() - started
            units.append({key: value for key, value in dict(unit, image=image).items()
                          if key not in protocol.ANNOTATOR_FIELDS})

        result = self.backend.generate(request, images, units, progress=self._progress(job), cancel=job.cancel)
        timings = result.timings if annotating is None else dict(result.timings, annotators=round(annotating, 4))
        return self._frame_reply(job, "result", "image", result.image, seed=result.seed, timings=timings,
                                 model=result.model)

    def _progress(self, job: Job):
        """The backend's per-step callback for ``job``: a progress message (with the preview
        when the request asked for one), or Cancelled once the client cancelled."""
        def progress(step: int, steps: int, preview: np.ndarray | None = None) -> None:
            if job.cancel.is_set():
                raise Cancelled()
            message = {"type": "progress", "job": job.id, "step": step, "steps": steps}
            if preview is not None and job.request.get("preview"):
                data = np.ascontiguousarray(preview, dtype=np.uint8)
                message["preview"] = {"attachment": 0, "shape": list(data.shape), "dtype": "uint8"}
                self.send(message, [memoryview(data).cast("B")])
            else:
                self.send(message)

        return progress

    def _generate_video(self, job: Job):
        """One window of a video model: every frame's ControlNet pictures in, every frame out."""
        request = job.request
        images = {key: self._frames.open(request[key], job.attachments)
                  for key in ("init_video", "masks") if request.get(key) is not None}
        units = []
        for unit in request.get("controlnets", []):
            if not isinstance(unit, dict) or not isinstance(unit.get("image"), dict):
                raise JobError("malformed", "each ControlNet unit needs an 'image' video frame")
            units.append(dict(unit, image=self._frames.open(unit["image"], job.attachments)))

        result = self.backend.generate_video(request, images, units, progress=self._progress(job), cancel=job.cancel)
        return self._frame_reply(job, "result", "video", result.frames, seed=result.seed, timings=result.timings,
                                 model=result.model)


def _same_secret(given: str, expected: str) -> bool:
    import hmac

    return hmac.compare_digest(given.encode(), expected.encode())
