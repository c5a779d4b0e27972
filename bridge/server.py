"""The worker's server: one client at a time, one job at a time, and no peer can crash,
stall or flood it.

- Every connection gets a thread of its own; at most ``MAX_PENDING`` wait for their hello (a
  new one pushes the oldest out). Before its token is checked a peer has ``HANDSHAKE_SECONDS``
  in all to send one hello of at most ``protocol.MAX_HELLO_BYTES`` without attachments;
  anything else is answered where it can be and the connection closed. Nothing it declares is
  allocated.
- The authenticated client's connection thread reads and answers messages at once (ping,
  status, cancel), so a client always hears back while a job runs; jobs (load a model,
  generate, echo) run on the job thread and report progress as they go.
- A second client that authenticates while one is connected is refused at once (``busy``,
  naming the connected peer's address).
- Any failure in a job, or in sending its reply, becomes an error reply; if even that cannot
  be sent, the connection is closed so the client notices. The job thread lives on.
- Shared frames only for a loopback client that proves it owns a folder in the frames root.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import queue
import socket
import threading
import time
import traceback

import numpy as np

from . import allocator, protocol, schema
from . import frames as frames_module
from .errors import Cancelled, JobError
from .frames import FrameError, WorkerFrames, open_client_folder

log = logging.getLogger("silk.worker")
WORKER_VERSION = "0.1.0"
HANDSHAKE_SECONDS = 5.0  # a peer's whole hello, from connecting to the last byte
MAX_PENDING = 32  # connections waiting for their hello at once
SEND_STALL_SECONDS = 30.0  # a client that takes nothing of a reply for this long is dropped
CONNECTION_THREAD_STACK = 1 << 20  # bytes: ample for the JSON decoder's deepest nesting
KEEPALIVE = {"TCP_KEEPIDLE": 30, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}  # a vanished client is noticed in ~1 min


class Session:
    """An authenticated client's connection."""

    def __init__(self, connection: socket.socket, address, frames: WorkerFrames):
        self.connection = connection
        self.peer = describe_address(address)
        self.frames = frames
        self.since = time.strftime("%H:%M:%S")
        self.closed = threading.Event()
        self._send_lock = threading.Lock()

    def send(self, message: dict, attachments=()) -> bool:
        """Send a message; False (and the connection closed) when it cannot be."""
        parts = encode_or_error(message, attachments)
        with self._send_lock:
            if self.closed.is_set():
                return False
            try:
                for part in parts:
                    _send_all(self.connection, part)
                return True
            except OSError as error:  # gone, reset, or stopped reading for SEND_STALL_SECONDS
                log.info("cannot send to the client %s (%s); closing its connection", self.peer,
                         type(error).__name__)
        self.close()
        return False

    def close(self) -> None:
        """Close for sending and receiving (the connection thread then ends the session)."""
        self.closed.set()
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Job:
    def __init__(self, request: dict, attachments: list, session: Session, parsed=None):
        self.request = request
        self.attachments = attachments
        self.session = session
        self.parsed = parsed  # the typed request (bridge/schema.py) of 'generate' and 'load_model'
        self.id = request["id"]
        self.cancel = threading.Event()


class WorkerServer:
    def __init__(self, token: str, backend, host: str = "127.0.0.1", port: int = 0,
                 exit_on_disconnect: bool = False, parent_pid: int | None = None, frames_root: str | None = None):
        self.token = token
        self.backend = backend
        self.exit_on_disconnect = exit_on_disconnect
        self.parent_pid = parent_pid
        self.frames_root = frames_root  # None: frames.shared_root()
        self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        self._session: Session | None = None
        self._session_lock = threading.Lock()
        self._pending: dict[socket.socket, float] = {}  # in arrival order
        self._pending_lock = threading.Lock()
        self._job: Job | None = None
        self._job_lock = threading.Lock()
        self._job_idle = threading.Event()
        self._job_idle.set()
        self._stopping = threading.Event()
        # One long-lived job thread: torch's thread pools stay warm from job to job.
        self._jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._job_loop, name="jobs", daemon=True).start()
        from .annotators import Annotators  # here, not at the top: annotators.py imports JobError from this module

        self.annotators = Annotators()

    # -- lifetime ---------------------------------------------------------
    def serve_forever(self) -> None:
        """Accept connections until stopped (``shutdown``, ``stop``, a signal, or with
        ``exit_on_disconnect`` the end of the first authenticated session)."""
        if self.parent_pid:
            threading.Thread(target=self._watch_parent, name="parent-watch", daemon=True).start()
        self.listener.settimeout(0.5)
        while not self._stopping.is_set():
            try:
                connection, address = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as error:
                if self._stopping.is_set():
                    break
                # Out of file descriptors or memory for a moment: refuse by waiting, never exit.
                log.warning("cannot accept a connection: %s", error)
                self._stopping.wait(0.1)
                continue
            self._admit(connection, address)
        self.stop()

    def request_stop(self) -> None:
        """Safe from a signal handler: serve_forever returns within half a second."""
        self._stopping.set()

    def stop(self) -> None:
        self._stopping.set()
        job = self._job
        if job is not None:
            job.cancel.set()
        try:
            self.listener.close()
        except OSError:
            pass
        session = self._session
        if session is not None:
            session.close()
        with self._pending_lock:
            waiting = list(self._pending)
        for connection in waiting:
            _shut(connection)

    def close(self, timeout: float = 20.0) -> bool:
        """Stop, and wait up to ``timeout`` for a running job to end (it is cancelled at its
        next step); True when none runs any more. The process may then exit safely."""
        self.stop()
        return self._job_idle.wait(timeout)

    def _watch_parent(self) -> None:
        while not self._stopping.wait(0.5):
            if not frames_module._alive(self.parent_pid) or (os.name == "posix" and os.getppid() != self.parent_pid):
                log.warning("parent process %s is gone; exiting", self.parent_pid)
                self.request_stop()
                return

    # -- connections ------------------------------------------------------
    def _admit(self, connection: socket.socket, address) -> None:
        """Give the connection its own thread; push out the oldest waiting peer when too many wait."""
        pushed_out = None
        with self._pending_lock:
            if len(self._pending) >= MAX_PENDING:
                pushed_out = next(iter(self._pending))
                del self._pending[pushed_out]
            self._pending[connection] = time.monotonic()
        if pushed_out is not None:
            _shut(pushed_out)
        try:
            previous = _small_stacks()
            try:
                threading.Thread(target=self._connection_thread, args=(connection, address),
                                 name="connection", daemon=True).start()
            finally:
                _small_stacks(previous)
        except (RuntimeError, MemoryError) as error:  # no thread to be had: refuse this one
            log.warning("cannot serve a connection: %s", error)
            self._forget_pending(connection)
            _close(connection)

    def _forget_pending(self, connection) -> None:
        with self._pending_lock:
            self._pending.pop(connection, None)

    def _connection_thread(self, connection: socket.socket, address) -> None:
        session = None
        try:
            session = self._greet(connection, address)
        except Exception as error:  # whatever a peer sent, the worker goes on
            log.warning("handshake with %s failed: %s: %s", describe_host(address), type(error).__name__,
                        protocol.shorten(error, 200))
        finally:
            self._forget_pending(connection)
        try:
            if session is not None:
                self._serve(session)
        except Exception:
            log.error("the connection of %s failed:\n%s", session.peer, traceback.format_exc())
        finally:
            if session is not None:
                self._end_session(session)
            _close(connection)

    def _greet(self, connection: socket.socket, address) -> Session | None:
        """The handshake: a Session for a client with the right token, else None (answered or not)."""
        deadline = time.monotonic() + HANDSHAKE_SECONDS
        host = describe_host(address)
        try:
            message = protocol.StreamReader(connection).read_first(deadline)
            hello = protocol.validate_request(message)
            if hello["type"] != "hello":
                raise protocol.ProtocolError("handshake", "the first message must be 'hello'", hello["id"])
        except protocol.ProtocolError as error:
            log.info("refused a connection from %s: %s", host, error.code)
            _answer_and_close(connection, protocol.error_reply(error), deadline)
            return None
        except (ConnectionError, OSError):  # TimeoutError too: the peer was too slow or silent
            log.info("dropped a connection from %s: no hello within %.0f s", host, HANDSHAKE_SECONDS)
            return None
        if not same_secret(hello["token"], self.token):
            log.info("refused a connection from %s: wrong token", host)
            _answer_and_close(connection, protocol.make_error("unauthorised", "wrong token", hello["id"]), deadline)
            return None
        if hello["protocol"] != protocol.PROTOCOL_VERSION:
            _answer_and_close(connection, protocol.make_error(
                "version", f"worker speaks protocol {protocol.PROTOCOL_VERSION}, client {hello['protocol']}",
                hello["id"]), deadline)
            return None
        folder = None
        if is_loopback(address) and hello.get("shared_dir") and hello.get("probe"):
            folder = open_client_folder(hello["shared_dir"], hello["probe"], self.frames_root)
        session = Session(connection, address, WorkerFrames(folder))
        with self._session_lock:
            current = self._session
            if current is None and not self._stopping.is_set():
                self._session = session
        if current is not None or self._session is not session:
            session.frames.forget()
            busy = (f"the worker is serving another client ({current.peer}, connected since {current.since}) "
                    "and takes one client at a time; try again when it disconnects") if current else "the worker is stopping"
            log.info("refused a client from %s: %s", host, "busy" if current else "stopping")
            _answer_and_close(connection, protocol.make_error("busy", busy, hello["id"]), deadline)
            return None
        try:
            log.info("client %s connected (shared frames: %s)", session.peer, "yes" if folder else "no")
            _keep_alive(connection)
            connection.settimeout(SEND_STALL_SECONDS)  # bounds a send; reading below is patient
            session.send({"type": "hello", "reply_to": hello["id"], "protocol": protocol.PROTOCOL_VERSION,
                          "worker": WORKER_VERSION, "pid": os.getpid(), "shared_frames": folder is not None,
                          "missing": self.backend.missing_modules(), "annotators": list(self.annotators.names),
                          "features": list(protocol.FEATURES)})
        except BaseException:
            self._end_session(session)  # never leave a session registered that nobody serves
            raise
        return session

    def _serve(self, session: Session) -> None:
        reader = protocol.StreamReader(session.connection, patient=True)
        while not self._stopping.is_set() and not session.closed.is_set():
            try:
                message, attachments = reader.read_message()
            except protocol.ProtocolError as error:
                if not session.send(protocol.error_reply(error)):
                    return
                continue
            except (ConnectionError, OSError):
                return
            except MemoryError:  # attachments beyond SILK_WORKER_MEMORY_LIMIT_MB: the stream is torn
                session.send(protocol.make_error("out_of_memory", "the worker has no memory for this "
                                                 "message's attachments; closing the connection"))
                return
            try:
                request = protocol.validate_request(message)
            except protocol.ProtocolError as error:
                if not session.send(protocol.error_reply(error)):
                    return
                continue
            except Exception as error:
                log.error("checking a request failed:\n%s", traceback.format_exc())
                session.send(protocol.make_error("internal", f"{type(error).__name__}: {protocol.shorten(error, 500)}",
                                                 message.get("id")))
                continue
            try:
                if not self._dispatch(session, request, attachments):
                    return
            except Exception as error:
                log.error("request %s failed:\n%s", request.get("id"), traceback.format_exc())
                session.send(protocol.make_error("internal", f"{type(error).__name__}: {protocol.shorten(error, 500)}",
                                                 request.get("id")))

    def _end_session(self, session: Session) -> None:
        job = self._job
        if job is not None and job.session is session:
            job.cancel.set()
        with self._session_lock:
            if self._session is session:
                self._session = None
        if self.exit_on_disconnect:
            self.request_stop()
        session.close()
        try:
            session.frames.forget()
            log.info("client %s disconnected", session.peer)
        except Exception:  # the slot is free already; nothing here may keep the next client out
            pass

    def _dispatch(self, session: Session, request: dict, attachments: list) -> bool:
        kind, request_id = request["type"], request["id"]
        if kind == "ping":
            session.send({"type": "pong", "reply_to": request_id, "busy": self._job is not None})
        elif kind == "status":
            status = self.backend.status()
            job = self._job
            session.send(dict(status, type="status", reply_to=request_id, busy=job is not None,
                              job=job.id if job else None, pid=os.getpid()))
        elif kind == "cancel":
            job = self._job
            if job is not None and job.id == request["job"]:
                job.cancel.set()
            session.send({"type": "ok", "reply_to": request_id})
        elif kind == "shutdown":
            session.send({"type": "ok", "reply_to": request_id})
            log.info("shutdown requested by %s", session.peer)
            self.request_stop()
            return False
        elif kind == "hello":
            session.send(protocol.make_error("handshake", "already greeted", request_id))
        else:
            try:  # every field's type and range, before the job is queued (bridge/schema.py)
                parsed = schema.parse(request)
            except JobError as error:
                session.send(protocol.make_error(error.code, error.message, request_id))
                return True
            with self._job_lock:
                job = self._job
                if job is None:
                    self._job = job = Job(request, attachments, session, parsed)
                    self._job_idle.clear()
                else:
                    job = None
            if job is None:
                session.send(protocol.make_error("busy", f"the worker is busy with request {self._job.id if self._job else '?'}",
                                                 request_id))
            else:
                self._jobs.put(job)
        return True

    # -- jobs -------------------------------------------------------------
    def _job_loop(self) -> None:
        freed = False  # whether a job ran since memory was last given back
        while True:
            try:
                job = self._jobs.get(timeout=allocator.IDLE_TRIM_SECONDS if freed else None)
            except queue.Empty:  # idle: what the jobs freed goes back to the system
                allocator.trim()
                freed = False
                continue
            freed = True
            try:
                self._run_job(job)
            except BaseException:  # never reached by design; if it is, the client must notice and the thread live on
                try:
                    log.critical("job %s could not be answered:\n%s", job.id, traceback.format_exc())
                except Exception:
                    pass
                job.session.close()
            finally:
                with self._job_lock:
                    if self._job is job:
                        self._job = None
                    if self._job is None:
                        self._job_idle.set()

    def _run_job(self, job: Job) -> None:
        request = job.request
        started = time.perf_counter()
        attachments = ()
        try:
            if request["type"] == "echo":
                reply, attachments = self._echo(job)
            elif request["type"] == "load_model":
                info = self.backend.load(job.parsed)
                reply = {"type": "ok", "reply_to": job.id, "model": info}
            elif request["type"] == "generate_video":
                reply, attachments = self._generate_video(job)
            else:
                reply, attachments = self._generate(job)
        except Cancelled:
            reply = {"type": "cancelled", "reply_to": job.id}
        except (JobError, FrameError) as error:
            reply = protocol.make_error(getattr(error, "code", "bad_frame"), error, job.id)
        except Exception as error:  # the worker must survive anything a job does
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            reply = protocol.make_error("internal", f"{type(error).__name__}: {protocol.shorten(error, 1000)}", job.id)
        log.info("job %s (%s) took %.3f s", job.id, request["type"], time.perf_counter() - started)
        # Free the job slot before replying: the client may send its next job at once.
        with self._job_lock:
            self._job = None
            self._job_idle.set()
        job.session.send(reply, attachments)  # closes the connection when even an error reply cannot go

    def _echo(self, job: Job):
        source = job.session.frames.open(job.request["frame"], job.attachments)
        return self._frame_reply(job, "echo", "frame", source)

    def _frame_reply(self, job: Job, kind: str, key: str, image: np.ndarray, **extra):
        """The reply carrying ``image``: written into the client's output frame, or attached."""
        output = job.request.get("output")
        if output is not None and "file" in output:
            target = job.session.frames.open(output, [], writable=True)
            if target.shape != image.shape or target.dtype != image.dtype:
                raise FrameError(f"output frame is {target.shape} {target.dtype}, result is {image.shape} {image.dtype}")
            np.copyto(target, image)
            return dict({"type": kind, "reply_to": job.id, key: output}, **extra), ()
        data = np.ascontiguousarray(image)
        descriptor = {"attachment": 0, "shape": list(data.shape), "dtype": data.dtype.name}
        return dict({"type": kind, "reply_to": job.id, key: descriptor}, **extra), [memoryview(data).cast("B")]

    def _generate(self, job: Job) -> None:
        request = job.parsed
        images = {}
        for key in schema.FRAME_FIELDS:
            if getattr(request, key) is not None:
                images[key] = job.session.frames.open(getattr(request, key), job.attachments)
        images["image_prompts"] = [job.session.frames.open(entry["image"], job.attachments)
                                   for entry in request.image_prompts or ()]
        units = []
        annotating = None  # seconds spent in annotators, when any ran
        for unit in request.controlnets:
            if job.cancel.is_set():
                raise Cancelled()
            started = time.perf_counter()
            # The backend sees the annotator's output (or the image itself), never the annotator fields.
            image = self.annotators.apply(vars(unit), job.session.frames.open(unit.image, job.attachments))
            if (unit.annotator or "none") != "none":
                annotating = (annotating or 0.0) + time.perf_counter() - started
            units.append(schema.ControlUnit(image=image, weight=unit.weight, start=unit.start, end=unit.end))

        result = self.backend.generate(request, images, units, progress=self._progress(job), cancel=job.cancel)
        timings = result.timings if annotating is None else dict(result.timings, annotators=round(annotating, 4))
        return self._frame_reply(job, "result", "image", result.image, seed=result.seed, timings=timings,
                                 model=result.model)

    def _progress(self, job: Job):
        """The backend's per-step callback for ``job``: a progress message (with the preview
        when the request asked for one), or Cancelled once the client cancelled."""
        def progress(step: int, steps: int, preview: np.ndarray | None = None) -> None:
            if job.cancel.is_set() or job.session.closed.is_set():
                raise Cancelled()
            message = {"type": "progress", "job": job.id, "step": step, "steps": steps}
            if preview is not None and job.request.get("preview"):
                data = np.ascontiguousarray(preview, dtype=np.uint8)
                message["preview"] = {"attachment": 0, "shape": list(data.shape), "dtype": "uint8"}
                job.session.send(message, [memoryview(data).cast("B")])
            else:
                job.session.send(message)

        return progress

    def _generate_video(self, job: Job):
        """One window of a video model: every frame's ControlNet pictures in, every frame out."""
        request = job.request
        images = {key: job.session.frames.open(request[key], job.attachments)
                  for key in ("init_video", "masks") if request.get(key) is not None}
        given = request.get("controlnets") or []
        if not isinstance(given, list):
            raise JobError("bad_request", "'controlnets' must be a list of units")
        units = []
        for unit in given:
            if not isinstance(unit, dict) or not isinstance(unit.get("image"), dict):
                raise JobError("malformed", "each ControlNet unit needs an 'image' video frame")
            units.append(dict(unit, image=job.session.frames.open(unit["image"], job.attachments)))

        result = self.backend.generate_video(request, images, units, progress=self._progress(job), cancel=job.cancel)
        return self._frame_reply(job, "result", "video", result.frames, seed=result.seed, timings=result.timings,
                                 model=result.model)


def same_secret(given, expected: str) -> bool:
    """Constant-time token check; anything but a string (or a string no encoding holds) is wrong."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def encode_or_error(message: dict, attachments=()) -> list:
    """The message's wire pieces; when it cannot be encoded (too big, not JSON), an error reply
    saying so, to the same request, which always can be."""
    try:
        return protocol.encode_parts(message, attachments)
    except Exception as error:
        log.error("cannot encode a %r message: %s", message.get("type"), protocol.shorten(error, 200))
        reply_to = message.get("reply_to", message.get("job"))
        return protocol.encode_parts(protocol.make_error(
            "internal", f"the worker could not send its reply: {protocol.shorten(error, 500)}", reply_to))


def _send_all(connection: socket.socket, data) -> None:
    """sendall in pieces, so the socket's timeout bounds a stall, not a whole big frame on a slow link."""
    view = memoryview(data).cast("B")
    while view:
        sent = connection.send(view[:1 << 20])
        view = view[sent:]


def _answer_and_close(connection: socket.socket, reply: dict, deadline: float) -> None:
    """Answer a peer that is not served (best effort, within the handshake's deadline); the caller closes."""
    try:
        connection.settimeout(max(0.2, deadline - time.monotonic()))
        for part in encode_or_error(reply):
            _send_all(connection, part)
        connection.shutdown(socket.SHUT_WR)  # the peer reads the answer, then sees the end
        # Closing with unread bytes would reset the connection and could lose the answer: read
        # (and drop) a little of what the peer still sends, briefly.
        connection.settimeout(0.2)
        for _ in range(16):
            if not connection.recv(1 << 16):
                break
    except OSError:
        pass


def _keep_alive(connection: socket.socket) -> None:
    """TCP keepalive: a client whose machine or network vanished is noticed, freeing the worker."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in KEEPALIVE.items():
            if hasattr(socket, name):
                connection.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass


def _small_stacks(size: int = CONNECTION_THREAD_STACK) -> int:
    """Set the stack size of threads started next (many connection threads reserve little address
    space under SILK_WORKER_MEMORY_LIMIT_MB); returns the previous size. Where the platform
    refuses, threads keep the default."""
    try:
        return threading.stack_size(size)
    except (ValueError, RuntimeError):
        return 0


def _shut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _close(connection: socket.socket) -> None:
    try:
        connection.close()
    except OSError:
        pass


def describe_address(address) -> str:
    try:
        host, port = address[0], address[1]
    except (TypeError, IndexError):
        return str(address)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def describe_host(address) -> str:
    """The peer's host alone: log lines about unauthenticated peers repeat word for word, so the
    log's repeat limit holds them down."""
    try:
        return str(address[0])
    except (TypeError, IndexError):
        return str(address)


def is_loopback(address) -> bool:
    try:
        host = ipaddress.ip_address(str(address[0]).split("%")[0])
    except (ValueError, TypeError, IndexError):
        return False
    mapped = getattr(host, "ipv4_mapped", None)
    return host.is_loopback or bool(mapped and mapped.is_loopback)
