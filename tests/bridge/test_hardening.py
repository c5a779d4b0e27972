"""The worker as a hostile or careless peer meets it: real worker processes, loopback only.

Every probe ends with the worker alive (or, for the exit probes, gone with code 0) and a
legitimate client answered within 5 s.
"""
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import threading
import time

import numpy as np
import pytest

from silk.bridge import protocol, worker_log
from silk.bridge.client import WorkerClient, WorkerConfig, WorkerCrashed, WorkerError, WorkerUnavailable
from silk.bridge.frames import DIRECTORY_PREFIX, SharedFrames
from tests.bridge.conftest import TINY, control_images, worker_python

WORKER = os.path.join(os.path.dirname(protocol.__file__), "worker.py")
ANSWER_SECONDS = 5.0  # the bound for answering a legitimate client during any probe


# -- starting workers and talking to them ---------------------------------------------
class Worker:
    def __init__(self, process, port, token, log_path, frames_root):
        self.process, self.port, self.token, self.log_path, self.frames_root = (
            process, port, token, log_path, frames_root)

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def start_worker(folder, worker_env, token="right-token", args=(), env=None) -> Worker:
    """A worker on 127.0.0.1 with its own log file, frames root and state folder under ``folder``."""
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    port_file = os.path.join(folder, "port")
    frames_root = os.path.join(folder, "frames-root")
    os.makedirs(frames_root, mode=0o700, exist_ok=True)
    log_path = os.path.join(folder, "worker.log")
    environment = dict(os.environ, **worker_env)
    environment.update(SILK_WORKER_TOKEN=token, SILK_FRAMES_ROOT=frames_root,
                       XDG_STATE_HOME=os.path.join(folder, "state"), **(env or {}))
    process = subprocess.Popen([worker_python(), WORKER, "--host", "127.0.0.1", "--port", "0", "--port-file",
                                port_file, "--log-file", log_path, *args], env=environment,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not os.path.exists(port_file):
        assert process.poll() is None, f"the worker exited with {process.returncode}"
        assert time.monotonic() < deadline, "the worker did not start within 60 s"
        time.sleep(0.05)
    with open(port_file) as handle:
        return Worker(process, int(handle.read()), token, log_path, frames_root)


def frame_bytes(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def json_bytes(message: dict, ascii_only: bool = True) -> bytes:
    """JSON as a peer may send it: escapes (a lone surrogate is valid JSON that way) or raw UTF-8."""
    return json.dumps(message, ensure_ascii=ascii_only).encode("utf-8")


def connect(port, timeout=10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_reply(sock, timeout=10.0) -> dict:
    sock.settimeout(timeout)
    message, _ = protocol.StreamReader(sock).read_message()
    return message


def closed_by_peer(sock, timeout=10.0) -> bool:
    """True when the worker closes the connection (after any answer) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


RIGHT = object()


def greet(worker: Worker, token=RIGHT, **fields) -> tuple[socket.socket, dict]:
    sock = connect(worker.port)
    message = {"type": "hello", "id": 1, "protocol": protocol.PROTOCOL_VERSION,
               "token": worker.token if token is RIGHT else token, **fields}
    sock.sendall(frame_bytes(json_bytes(message)))
    return sock, read_reply(sock)


def answer_time(worker: Worker) -> float:
    """Seconds until a legitimate client with the right token is greeted."""
    started = time.monotonic()
    sock, reply = greet(worker)
    took = time.monotonic() - started
    sock.close()
    assert reply["type"] == "hello", reply
    return took


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def settle(worker: Worker, seconds=0.3):
    """Let the worker notice a closed connection before the next client."""
    time.sleep(seconds)


@pytest.fixture(scope="module")
def worker(tmp_path_factory, worker_env):
    """One worker for the probes that leave it running (memory-capped, as on a shared farm node)."""
    started = start_worker(tmp_path_factory.mktemp("hardening"), worker_env,
                           env={"SILK_WORKER_MEMORY_LIMIT_MB": "6144"})
    yield started
    started.stop()


@pytest.fixture
def checked(worker):
    """After the probe: the worker is alive and greets a legitimate client within 5 s."""
    yield worker
    settle(worker)
    assert worker.alive(), f"the worker died:\n{worker.log_text()[-3000:]}"
    assert answer_time(worker) < ANSWER_SECONDS
    settle(worker)


# -- before authentication --------------------------------------------------------------
def test_lone_surrogate_and_odd_tokens_are_wrong_tokens(checked):
    for token in ("\ud800", "\udfff" * 3, "right-token\ud800", "é" * 40, ""):
        sock, reply = greet(checked, token=token)
        assert reply["type"] == "error" and reply["code"] == "unauthorised", reply
        assert closed_by_peer(sock)
        sock.close()
    for token in (123, None, ["right-token"], {"a": 1}):
        sock, reply = greet(checked, token=token)
        assert reply["type"] == "error" and reply["code"] == "malformed", reply
        sock.close()


def test_an_error_reply_echoing_200k_emoji_stays_within_the_limit(checked):
    emoji = "\U0001F600" * 200_000  # 800 kB of UTF-8; echoed as JSON escapes it would be 2.4 MB
    # Before authentication: far over the hello limit, refused without being read.
    sock = connect(checked.port)
    sock.sendall(frame_bytes(json_bytes({"type": emoji, "id": 1}, ascii_only=False)))
    reply = read_reply(sock)
    assert reply["code"] == "oversized" and closed_by_peer(sock)
    sock.close()
    # After authentication: an unknown type of 200k emoji, then a job whose error echoes them.
    sock, hello = greet(checked)
    assert hello["type"] == "hello"
    sock.sendall(frame_bytes(json_bytes({"type": emoji, "id": 2}, ascii_only=False)))
    reply = read_reply(sock)
    assert reply["type"] == "error" and reply["code"] == "unknown_type" and reply["reply_to"] == 2
    assert len(reply["message"]) < protocol.MAX_ERROR_TEXT + 100 and "more characters" in reply["message"]
    sock.sendall(frame_bytes(json_bytes({"type": "load_model", "id": 3, "model": {"source": emoji}},
                                        ascii_only=False)))
    reply = read_reply(sock, timeout=30)
    assert reply["type"] == "error" and reply["reply_to"] == 3 and reply["code"] == "bad_model", reply
    assert len(reply["message"]) < protocol.MAX_ERROR_TEXT + 100
    # The job thread lives on: the slot is free and the next job is done.
    sock.sendall(frame_bytes(json_bytes({"type": "ping", "id": 4})))
    assert read_reply(sock) == {"type": "pong", "reply_to": 4, "busy": False}
    frame = np.arange(12, dtype=np.float32)
    sock.sendall(protocol.encode({"type": "echo", "id": 5, "frame": {"attachment": 0, "shape": [12],
                                                                     "dtype": "float32"}}, [frame.tobytes()]))
    sock.settimeout(30)
    message, attachments = protocol.StreamReader(sock).read_message()
    assert message["type"] == "echo" and bytes(attachments[0]) == frame.tobytes()
    sock.close()


def test_a_declared_gigabyte_is_never_allocated_before_authentication(checked):
    """RSS grows by < 100 MB while peers without a token declare 1 GiB (under a 6 GiB memory cap)."""
    before = rss_bytes(checked.process.pid)
    peers = []
    for _ in range(3):
        # A hello declaring a 1 GiB attachment, then bytes of it.
        sock = connect(checked.port)
        sock.sendall(frame_bytes(json_bytes({"type": "hello", "id": 1, "protocol": 1, "token": "x",
                                             "attachments": [1 << 30]})) + b"\0" * (1 << 20))
        peers.append(sock)
        # A message whose header declares a gigabyte of JSON, and bytes of it.
        sock = connect(checked.port)
        sock.sendall(struct.pack(">I", 1 << 30) + b"{" * (1 << 20))
        peers.append(sock)
        # A valid hello declaring a gigabyte, sending nothing more.
        sock = connect(checked.port)
        sock.sendall(frame_bytes(json_bytes({"type": "hello", "id": 1, "protocol": 1, "token": "right-token",
                                             "attachments": [1 << 30]})))
        peers.append(sock)
    peak = before
    codes = []
    for sock in peers:
        peak = max(peak, rss_bytes(checked.process.pid))
        try:
            codes.append(read_reply(sock)["code"])
        except (ConnectionError, OSError):
            codes.append("closed")
        assert closed_by_peer(sock)
        sock.close()
    peak = max(peak, rss_bytes(checked.process.pid))
    assert set(codes) <= {"handshake", "oversized", "closed"}, codes
    assert codes.count("closed") <= 3  # a reset may eat an answer while the peer still sends; most arrive
    grown = (peak - before) / 2 ** 20
    print(f"RSS before {before / 2 ** 20:.0f} MiB, peak {peak / 2 ** 20:.0f} MiB (+{grown:.1f} MiB)")
    assert grown < 100


def slow_peer(port, stop: threading.Event, closed_after: list):
    """Sends a valid hello one byte a second; records when the worker closed it."""
    sock = connect(port)
    started = time.monotonic()
    data = frame_bytes(json_bytes({"type": "hello", "id": 1, "protocol": 1, "token": "right-token"}))
    try:
        for byte in data:
            if stop.is_set():
                return
            sock.sendall(bytes([byte]))
            time.sleep(1.0)
    except OSError:
        closed_after.append(time.monotonic() - started)
    finally:
        sock.close()


def test_idle_and_slow_peers_do_not_delay_a_client(checked):
    idle = [connect(checked.port) for _ in range(5)]
    stop, closed_after = threading.Event(), []
    slow = [threading.Thread(target=slow_peer, args=(checked.port, stop, closed_after)) for _ in range(2)]
    for thread in slow:
        thread.start()
    half_sent = connect(checked.port)  # a hello cut off midway
    half_sent.sendall(frame_bytes(json_bytes({"type": "hello", "id": 1, "protocol": 1, "token": "x"}))[:20])
    time.sleep(0.5)
    took = answer_time(checked)
    print(f"answered in {took * 1000:.0f} ms beside 5 idle, 2 byte-a-second and 1 half-sent peers")
    assert took < ANSWER_SECONDS
    # Each waiting peer has one deadline for its whole hello: all are closed after it.
    for sock in idle + [half_sent]:
        assert closed_by_peer(sock, timeout=10)
        sock.close()
    for thread in slow:
        thread.join(timeout=15)
    stop.set()
    assert len(closed_after) == 2 and max(closed_after) < 10, closed_after


def test_a_flood_of_idle_connections_does_not_lock_a_client_out(checked):
    """More idle peers than may wait at once: the oldest are pushed out, a new client is served."""
    from silk.bridge.server import MAX_PENDING

    idle = [connect(checked.port) for _ in range(MAX_PENDING + 16)]
    took = answer_time(checked)
    print(f"answered in {took * 1000:.0f} ms beside {len(idle)} idle peers")
    assert took < ANSWER_SECONDS
    for sock in idle:
        sock.close()


def test_a_second_client_is_refused_at_once_naming_the_first(checked):
    first, hello = greet(checked)
    assert hello["type"] == "hello"
    first_address = "%s:%d" % first.getsockname()[:2]
    second = WorkerClient(WorkerConfig(remote=("127.0.0.1", checked.port, checked.token)))
    started = time.monotonic()
    with pytest.raises(WorkerUnavailable) as caught:
        second.ensure_started()
    assert time.monotonic() - started < ANSWER_SECONDS
    assert "busy" in str(caught.value) and first_address in str(caught.value)
    second.stop()
    # The first client is still served; once it leaves the second gets in.
    first.sendall(protocol.encode({"type": "ping", "id": 9}))
    assert read_reply(first)["type"] == "pong"
    first.close()
    settle(checked)
    second.ensure_started()
    assert second.ping()["type"] == "pong"
    second._alive = False  # leave without asking the shared worker to shut down
    second.stop()


def test_bad_messages_after_authentication_are_answered(checked):
    sock, _ = greet(checked)
    bad = [
        {"type": "cancel", "id": 2, "job": "\ud800"},
        {"type": "ping", "id": -5},
        {"type": "echo", "id": 3, "frame": {"file": "../../etc/passwd", "shape": [4], "dtype": "uint8"}},
        {"type": "echo", "id": 4, "frame": {"attachment": 0, "shape": [4], "dtype": "uint8"}},
        {"type": "hello", "id": 5, "protocol": 1, "token": "right-token"},
    ]
    for message in bad:
        sock.sendall(frame_bytes(json_bytes(message)))
        reply = read_reply(sock, timeout=30)
        assert reply["type"] == "error", (message, reply)
    sock.close()


# -- shared frames ---------------------------------------------------------------------
def make_client_folder(parent, name=None, probe="secret-probe", probe_kind="file"):
    folder = os.path.join(parent, name or f"{DIRECTORY_PREFIX}{os.getpid()}-{os.urandom(3).hex()}")
    os.makedirs(folder, mode=0o700)
    path = os.path.join(folder, "probe")
    if probe_kind == "file":
        with open(path, "w") as handle:
            handle.write(probe)
    elif probe_kind == "fifo":
        os.mkfifo(path, 0o600)
    elif probe_kind == "link":
        target = os.path.join(parent, f"target-{os.urandom(3).hex()}")
        with open(target, "w") as handle:
            handle.write(probe)
        os.symlink(target, path)
    return folder


def test_shared_folder_escapes_get_no_shared_frames(checked, tmp_path):
    root = checked.frames_root
    outside = make_client_folder(str(tmp_path))  # outside the frames root, right probe
    linked = os.path.join(root, f"{DIRECTORY_PREFIX}1-link")
    os.symlink(outside, linked)  # a link inside the root to a folder outside it
    attempts = {
        "outside the root": outside,
        "a link out of the root": linked,
        "dot-dot out of the root": os.path.join(root, os.path.relpath(outside, root)),
        "probe is a FIFO": make_client_folder(root, probe_kind="fifo"),
        "probe is a link": make_client_folder(root, probe_kind="link"),
        "wrong probe": make_client_folder(root, probe="another"),
        "no silk name": make_client_folder(root, name="plain-folder"),
        "the root itself": root,
        "surrogate path": root + f"/{DIRECTORY_PREFIX}\ud800",
        "NUL in path": root + f"/{DIRECTORY_PREFIX}a\0b",
    }
    for what, folder in attempts.items():
        started = time.monotonic()
        sock, reply = greet(checked, shared_dir=folder, probe="secret-probe")
        assert time.monotonic() - started < ANSWER_SECONDS, what
        assert reply["type"] == "hello" and reply["shared_frames"] is False, what
        sock.close()
        settle(checked, 0.2)
    # The right folder is shared; frames inside it that are links or FIFOs are refused, at once.
    good = make_client_folder(root)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x01" * 16)
    os.symlink(secret, os.path.join(good, "linked"))
    os.mkfifo(os.path.join(good, "fifo"), 0o600)
    with open(os.path.join(good, "original"), "wb") as handle:
        handle.write(b"\0" * 16)
    os.link(os.path.join(good, "original"), os.path.join(good, "hardlinked"))
    with open(os.path.join(good, "fine"), "wb") as handle:
        handle.write(np.arange(4, dtype=np.float32).tobytes())
    sock, reply = greet(checked, shared_dir=good, probe="secret-probe")
    assert reply["shared_frames"] is True
    for request_id, name in enumerate(["linked", "fifo", "hardlinked", "probe", "../x", "fine"], start=2):
        descriptor = {"file": name, "shape": [4], "dtype": "float32"}
        started = time.monotonic()
        sock.sendall(frame_bytes(json_bytes({"type": "echo", "id": request_id, "frame": descriptor})))
        sock.settimeout(30)
        reply, attachments = protocol.StreamReader(sock).read_message()
        assert time.monotonic() - started < ANSWER_SECONDS, name
        if name == "fine":
            assert reply["type"] == "echo" and np.array_equal(np.frombuffer(attachments[0], np.float32), np.arange(4))
        else:
            assert reply["type"] == "error" and reply["code"] == "bad_frame", (name, reply)
    sock.close()


def test_an_error_reply_always_encodes_within_the_limit():
    worst = "\U0001F600\ud800\x00\"\\" * 2_000_000  # astral, lone surrogate, control, quote, backslash
    for code, text, reply_to in [(worst, worst, 10 ** 4000), ("x", UnprintableError(), -1), (5, None, 3.5),
                                 ("bad", b"\xff" * 10 ** 6, True)]:
        wire = protocol.encode(protocol.make_error(code, text, reply_to))
        assert len(wire) < 64 * 1024
        message = json.loads(wire[4:])
        assert message["type"] == "error" and message["reply_to"] is None
    assert protocol.make_error("c", "m", 7)["reply_to"] == 7


def test_loopback_is_recognised():
    from silk.bridge.server import is_loopback

    assert is_loopback(("127.0.0.1", 1)) and is_loopback(("127.8.9.1", 1)) and is_loopback(("::1", 1, 0, 0))
    assert is_loopback(("::ffff:127.0.0.1", 1, 0, 0))
    for address in (("192.168.1.4", 1), ("10.0.0.1", 2), ("::ffff:10.0.0.1", 1, 0, 0), ("fe80::1%eth0", 1, 0, 2),
                    ("nonsense", 1), None, ()):
        assert not is_loopback(address), address


def test_the_frames_root_is_private_and_refused_when_not(tmp_path, monkeypatch):
    from silk.bridge.frames import FrameError, shared_root

    root = tmp_path / "root"
    monkeypatch.setenv("SILK_FRAMES_ROOT", str(root))
    assert shared_root() == str(root) and stat.S_IMODE(os.stat(root).st_mode) == 0o700
    frames = SharedFrames()
    try:
        assert stat.S_IMODE(os.stat(os.path.join(frames.directory, "probe")).st_mode) == 0o600
    finally:
        frames.close()
    os.chmod(root, 0o755)
    with pytest.raises(FrameError, match="other users"):
        shared_root()
    os.chmod(root, 0o700)
    link = tmp_path / "link"
    os.symlink(root, link)
    monkeypatch.setenv("SILK_FRAMES_ROOT", str(link))
    with pytest.raises(FrameError, match="link"):
        shared_root()


# -- logs --------------------------------------------------------------------------------
def test_logs_are_private_limited_and_never_hold_the_token(checked):
    # A stream of identical bad peers: the log holds a handful of their lines, not thousands.
    size_before = os.path.getsize(checked.log_path)
    for _ in range(300):
        sock = connect(checked.port)
        sock.sendall(frame_bytes(json_bytes({"type": "hello", "id": 1, "protocol": 1, "token": "wrong"})))
        sock.close()
    sock, _ = greet(checked)  # and the right token, once
    sock.close()
    settle(checked, 1.0)
    text = checked.log_text()
    assert checked.token not in text and "wrong\"" not in text
    grown = os.path.getsize(checked.log_path) - size_before
    assert text.count("wrong token") <= 2 * worker_log.REPEATS + 1
    assert grown < 20_000, f"the log grew by {grown} bytes for 300 identical refusals"
    assert stat.S_IMODE(os.stat(checked.log_path).st_mode) == 0o600
    assert "listening on 127.0.0.1" in text


def test_log_rotation_with_captured_output(tmp_path):
    """In a process of its own (it takes over file descriptors 1 and 2): rotation by size, 0600
    files, raw stderr inside the current file, the repeat limit."""
    script = f"""
import logging, os, sys
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))!r})
from tools.blender_env import load_silk
load_silk(register=False)
from silk.bridge import worker_log
path = worker_log.setup("INFO", {str(tmp_path / "logs" / "w.log")!r}, capture_output=True, max_bytes=20000)
log = logging.getLogger("silk.worker")
for n in range(2000):
    log.info("line %d %s", n, "x" * 40)
for n in range(500):
    log.error("the same error")
os.write(2, b"raw stderr line\\n")
print("printed line", flush=True)
log.warning("surrogate \\ud800 in a message")
"""
    subprocess.run([worker_python(), "-c", script], check=True, timeout=60)
    folder = tmp_path / "logs"
    names = sorted(os.listdir(folder))
    assert names == ["w.log", "w.log.1", "w.log.2", "w.log.3"], names
    for name in names:
        assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600
        assert os.path.getsize(folder / name) <= 20000 + 200
    current = (folder / "w.log").read_text()
    assert "raw stderr line" in current and "printed line" in current and "surrogate \\ud800" in current
    assert current.count("the same error") == worker_log.REPEATS


def test_repeat_limiter_counts_what_it_left_out():
    import logging

    now = [0.0]
    limiter = worker_log.RepeatLimiter(repeats=2, window=10.0, clock=lambda: now[0])

    def record(text):
        return logging.LogRecord("silk.worker", logging.ERROR, __file__, 1, text, (), None)

    assert [limiter.filter(record("same")) for _ in range(5)] == [True, True, False, False, False]
    assert limiter.filter(record("other"))
    now[0] = 11.0
    again = record("same")
    assert limiter.filter(again) and "3 more like this" in again.getMessage()


def test_the_client_default_log_is_private(make_client, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    client = make_client(log_path=None)
    client.ensure_started()
    path = client.log_path
    assert path.startswith(str(tmp_path / "state")) and os.path.exists(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    client.stop()


# -- jobs whose replies fail, in-process with a backend that misbehaves ---------------------
class UnprintableError(Exception):
    def __str__(self):
        raise RuntimeError("cannot print me")


class MisbehavingBackend:
    def missing_modules(self):
        return []

    def status(self):
        raise UnprintableError()

    def load(self, model):  # the server hands over the typed request (bridge/schema.py)
        if model.source == "unprintable":
            raise UnprintableError()
        if model.source == "unencodable":
            return {"values": {1, 2}}  # a set: not JSON
        return {"source": "x" * (protocol.MAX_JSON_BYTES + 10)}  # a reply over the limit


def test_a_failing_reply_becomes_an_error_and_the_job_thread_lives(tmp_path):
    from silk.bridge.server import WorkerServer

    server = WorkerServer(token="t", backend=MisbehavingBackend())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sock = connect(server.port)
        sock.sendall(protocol.encode({"type": "hello", "id": 1, "protocol": 1, "token": "t"}))
        assert read_reply(sock)["type"] == "hello"
        for request_id, source in enumerate(["unprintable", "unencodable", "huge", "unprintable"], start=2):
            sock.sendall(protocol.encode({"type": "load_model", "id": request_id, "model": {"source": source}}))
            reply = read_reply(sock)
            assert reply["type"] == "error" and reply["reply_to"] == request_id, reply
            assert reply["code"] == "internal"
        sock.sendall(protocol.encode({"type": "status", "id": 9}))  # fails on the connection thread
        reply = read_reply(sock)
        assert reply["type"] == "error" and reply["code"] == "internal" and reply["reply_to"] == 9
        sock.sendall(protocol.encode({"type": "ping", "id": 10}))
        assert read_reply(sock) == {"type": "pong", "reply_to": 10, "busy": False}
        sock.close()
    finally:
        assert server.close(5)
        thread.join(5)


# -- ending cleanly --------------------------------------------------------------------
def generate_until_step(client: WorkerClient, step: int, action) -> type:
    """Start a long generation and call ``action`` at ``step``; returns the error the client saw.
    The frame is big enough (192x192, two torch threads) that the job thread is mostly inside a
    torch op when the request arrives: exiting the interpreter there used to abort the process
    (exit -6, "terminate called without an active exception"; about one run in three here)."""
    client.load_model(TINY)
    try:
        client.generate(TINY, "x", control_images(192, 192), 192, 192, steps=500, timeout=120,
                        on_progress=lambda progress: progress.step == step and action())
    except WorkerError as error:
        return type(error)
    return type(None)


@pytest.mark.parametrize("how", ["disconnect", "shutdown", "sigterm"])
def test_the_worker_exits_with_code_0_when_stopped_mid_generation(tmp_path, worker_env, how):
    # "disconnect" runs the worker as a client starts a local one: it exits when its client leaves.
    args = ["--exit-on-disconnect", "--parent-pid", str(os.getpid())] if how == "disconnect" else []
    worker = start_worker(tmp_path, worker_env, args=args, env={"OMP_NUM_THREADS": "2"})
    client = WorkerClient(WorkerConfig(remote=("127.0.0.1", worker.port, worker.token)))
    asked = []

    def stop_it():
        asked.append(time.monotonic())
        if how == "disconnect":  # the client goes away (Blender closed, connection dropped)
            client._sock.shutdown(socket.SHUT_RDWR)
        elif how == "shutdown":
            client._send({"type": "shutdown", "id": 99999})
        else:
            os.kill(worker.process.pid, signal.SIGTERM)

    try:
        seen = generate_until_step(client, 1, stop_it)
        assert seen in (WorkerCrashed, type(None)) or issubclass(seen, WorkerError)
        code = worker.process.wait(timeout=30)
        took = time.monotonic() - asked[0]
        print(f"{how}: exit code {code} {took:.1f} s after the request")
        assert code == 0 and took < 30
        text = worker.log_text()
        assert "terminate called" not in text and "Traceback" not in text
        assert "exiting" in text and "still running" not in text
    finally:
        client._alive = False
        client.stop()
        worker.stop()
