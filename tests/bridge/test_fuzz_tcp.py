"""A live TCP worker under 10,000 generated hostile messages from several connections at once.

Three threads are peers without the token: each opens connection after connection and sends
one hostile thing (random bytes, broken framing, absurd sizes, wrong or surrogate tokens,
attachments, deep nesting, partial writes, sudden disconnects). One thread holds the token and
pipelines hostile requests (every request type with wrong, huge, surrogate or nested fields,
mutated JSON, bad frames and attachments, oversized messages), reconnecting now and then, some
times mid-message. Every authenticated message must get exactly one reply; every peer without
the token must be answered or closed within 5 s; a legitimate client is answered within 5 s
throughout; afterwards the worker loads `tiny` and paints. The count and time are printed
(docs/benchmarks.md records them).
"""
import json
import os
import random
import socket
import struct
import threading
import time

import numpy as np

from silk.bridge import protocol
from silk.bridge.client import WorkerClient, WorkerConfig
from tests.bridge.conftest import TINY, control_images
from tests.bridge.test_hardening import ANSWER_SECONDS, connect, frame_bytes, rss_bytes, start_worker
from tests.bridge.test_protocol import mutations

TOKEN = "fuzz-token"
PREAUTH_THREADS = 3
PREAUTH_CONNECTIONS = 2800  # per thread
SESSION_MESSAGES = 12000
# Requests that would do real work (load a model, paint) or stop the worker are never sent whole.
WORKING_TYPES = {"shutdown", "generate", "load_model"}


def hostile_values(rng: random.Random):
    """A value a field should never hold."""
    choice = rng.randrange(14)
    if choice == 0:
        return "\ud800" * rng.randint(1, 3)
    if choice == 1:
        return "\U0001F600" * rng.choice([1, 100, 5000, 90_000])
    if choice == 2:
        return rng.choice([None, True, False, 0, -1, 2 ** 63, -(2 ** 63), 1e308, -0.0, 0.5])
    if choice == 3:
        return int("9" * rng.randint(20, 4000))
    if choice == 4:
        return [[]] * rng.randint(0, 50)
    if choice == 5:
        return {"\udfff": "\ud800", "": None}
    if choice == 6:
        return "x" * rng.choice([0, 1000, 20_000])
    if choice == 7:
        return {"source": rng.choice(["\ud800", "tiny\0", "../../etc", 5, None]), "controlnets": "x"}
    if choice == 8:
        return {"file": rng.choice(["probe", "../x", "\ud800", "a" * 70, 5, "/etc/passwd"]),
                "shape": [rng.randint(-2, 3)], "dtype": rng.choice(["float32", "object", 5])}
    if choice == 9:
        return {"attachment": rng.choice([-1, 0, 1, 99, "0", True]), "shape": [2, 2], "dtype": "uint8"}
    if choice == 10:
        return [{"image": None, "annotator": "\ud800", "annotator_options": {"x": [1]}}]
    if choice == 11:
        return "nested"  # replaced by raw nesting below
    if choice == 12:
        return rng.random() * 1e9
    return "".join(chr(rng.randint(1, 0x10FFFF)) for _ in range(rng.randint(1, 30)))


def session_message(rng: random.Random, request_id: int) -> tuple[bytes, list]:
    """One hostile request (wire bytes) for the authenticated connection, and its attachments."""
    kind = rng.randrange(10)
    if kind <= 1:  # mutated valid JSON, as the decoder fuzz makes it
        payload = next(mutations(rng, 1))
        try:
            parsed = json.loads(payload)
            if isinstance(parsed, dict) and parsed.get("type") in WORKING_TYPES:
                payload = b'{"type": "ping"}'  # no id: malformed
        except (ValueError, RecursionError):
            pass
        return frame_bytes(payload), []
    if kind == 2:  # deep nesting, within and beyond the decoder's recursion limit
        depth = rng.choice([10, 500, 900, 5000, 50_000])
        return frame_bytes(b'{"type": "ping", "id": 1, "x": ' + b"[" * depth + b"]" * depth + b"}"), []
    if kind == 3:  # attachments: declared right (and sent) or wrong (and not sent)
        sizes = [rng.randint(0, 65536) for _ in range(rng.randint(1, 4))]
        declared = rng.choice([sizes, sizes, [-1], ["8"], [1 << 31], [1] * 17, "x", [1.5]])
        message = {"type": rng.choice(["echo", "ping", "nonsense"]), "id": request_id, "attachments": declared,
                   "frame": {"attachment": rng.randint(0, 4), "shape": [rng.randint(1, 64)],
                             "dtype": rng.choice(["uint8", "float32", "float16"])}}
        data = json.dumps(message).encode()
        attachments = [os.urandom(n) for n in sizes] if declared is sizes else []
        return frame_bytes(data) + b"".join(attachments), attachments
    if kind == 4 and rng.random() < 0.01:  # oversized: declared and sent whole, then refused
        size = protocol.MAX_JSON_BYTES + rng.randint(1, 1 << 20)
        return struct.pack(">I", size) + b" " * size, []
    # A request of a known type with one or more fields made hostile.
    kind_name = rng.choice(sorted(protocol.REQUESTS))
    required, optional = protocol.REQUESTS[kind_name]
    message = {"type": kind_name, "id": rng.choice([request_id, request_id, -1, "1", None, 1.5, True])}
    for name in list(required) + rng.sample(sorted(optional), k=min(len(optional), rng.randint(0, 3))):
        message[name] = hostile_values(rng)
    if kind_name in WORKING_TYPES:
        # Never whole: a required field of the wrong type, or no id.
        broken = rng.choice(sorted(required) or ["id"])
        message[broken] = rng.choice([None, [], 1.5]) if broken != "model" else "not an object"
        if kind_name == "shutdown":
            message["id"] = rng.choice(["1", None, -3, 1.5])
    return frame_bytes(json.dumps(message).encode()), []


def preauth_bytes(rng: random.Random) -> tuple[bytes, str]:
    """What a peer without the token sends on one connection, and how it ends it."""
    kind = rng.randrange(12)
    hello = {"type": "hello", "id": 1, "protocol": 1, "token": TOKEN}
    if kind == 0:
        data = os.urandom(rng.randint(0, 64))
    elif kind == 1:
        data = struct.pack(">I", rng.choice([0, 1, 1 << 20, 1 << 30, (1 << 32) - 1]))
    elif kind == 2:
        data = frame_bytes(json.dumps(dict(hello, token=hostile_values(rng))).encode())
    elif kind == 3:
        data = frame_bytes(json.dumps(dict(hello, attachments=[1 << 30])).encode()) + b"\0" * rng.randint(0, 4096)
    elif kind == 4:
        depth = rng.choice([100, 900, 5000])
        data = frame_bytes(b"[" * depth + b"]" * depth)
    elif kind == 5:
        data = frame_bytes(json.dumps({"type": rng.choice(["ping", "generate", "shutdown", "\ud800"]),
                                       "id": 1}).encode())
    elif kind == 6:
        data = frame_bytes(json.dumps(dict(hello, token="wrong", protocol=hostile_values(rng))).encode())
    elif kind == 7:
        data = frame_bytes(json.dumps(dict(hello, token="wrong")).encode())[:rng.randint(0, 30)]
    elif kind == 8:
        data = frame_bytes("\U0001F600".encode() * rng.randint(1, 5000))
    elif kind == 9:
        data = frame_bytes(json.dumps(dict(hello, token="wrong", shared_dir="/etc", probe="x")).encode())
    elif kind == 10:
        data = frame_bytes(next(mutations(rng, 1)))
    else:
        data = b""
    ending = rng.choice(["half-close", "half-close", "half-close", "drop", "partial"])
    return data, ending


def run_preauth_peer(seed: int, results: dict, lock: threading.Lock, port: int):
    rng = random.Random(seed)
    slowest = 0.0
    answered = closed = 0
    for _ in range(PREAUTH_CONNECTIONS):
        data, ending = preauth_bytes(rng)
        started = time.monotonic()
        try:
            sock = connect(port)
        except OSError:
            with lock:
                results["connect_failures"] += 1
            continue
        try:
            if ending == "partial":  # the same bytes in small pieces
                for start in range(0, len(data), 7):
                    sock.sendall(data[start:start + 7])
                    if rng.random() < 0.05:
                        time.sleep(0.002)
            else:
                sock.sendall(data)
            if ending == "drop":
                continue
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(ANSWER_SECONDS)
            received = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            answered += bool(received)
            closed += 1
        except TimeoutError:
            with lock:
                results["stalled"] += 1
        except OSError:  # reset, broken pipe, not connected: the worker closed first
            closed += 1
        finally:
            sock.close()
            slowest = max(slowest, time.monotonic() - started)
    with lock:
        results["preauth"] += PREAUTH_CONNECTIONS
        results["answered"] += answered
        results["slowest_preauth"] = max(results["slowest_preauth"], slowest)


def authenticate(port: int) -> socket.socket:
    """The fuzzing client's connection (retrying while the worker still ends the previous one)."""
    deadline = time.monotonic() + 10
    while True:
        sock = connect(port)
        sock.sendall(protocol.encode({"type": "hello", "id": 1, "protocol": 1, "token": TOKEN}))
        reply, _ = protocol.StreamReader(sock).read_message()
        if reply["type"] == "hello":
            return sock
        sock.close()
        assert reply.get("code") == "busy" and time.monotonic() < deadline, reply
        time.sleep(0.05)


def run_session(seed: int, results: dict, lock: threading.Lock, port: int):
    rng = random.Random(seed)
    sock = authenticate(port)
    sent = replies = 0
    codes = results["codes"]
    batch = []
    while sent < SESSION_MESSAGES:
        data, _ = session_message(rng, sent + 2)
        batch.append(data)
        sent += 1
        if len(batch) == 50 or sent == SESSION_MESSAGES:
            sock.sendall(b"".join(batch))
            sock.settimeout(30)
            reader = protocol.StreamReader(sock)
            for _ in batch:
                reply, _ = reader.read_message()
                replies += 1
                code = reply.get("code", reply.get("type"))
                codes[code] = codes.get(code, 0) + 1
            batch = []
            if rng.random() < 0.03:  # leave, sometimes mid-message, and come back
                sock.sendall(rng.choice([b"", b"\0\0", frame_bytes(b'{"type": "ping", "id": 5}')[:9],
                                         struct.pack(">I", 1 << 30)]))
                sock.close()
                sock = authenticate(port)
    sock.sendall(protocol.encode({"type": "ping", "id": 1}))
    reply, _ = protocol.StreamReader(sock).read_message()
    assert reply["type"] == "pong", reply
    sock.close()
    with lock:
        results["session"] += sent
        results["session_replies"] += replies


def run_legitimate_probe(port: int, stop: threading.Event, times: list):
    """A client with the token, every half second: answered (told 'busy' while the fuzzing client is
    connected, greeted in between) within 5 s."""
    while not stop.wait(0.5):
        started = time.monotonic()
        sock = connect(port)
        try:
            sock.sendall(protocol.encode({"type": "hello", "id": 1, "protocol": 1, "token": TOKEN}))
            sock.settimeout(ANSWER_SECONDS + 5)
            reply, _ = protocol.StreamReader(sock).read_message()
            assert reply["type"] == "hello" or reply.get("code") == "busy", reply
            times.append(time.monotonic() - started)
        finally:
            sock.close()


def test_ten_thousand_hostile_messages_from_several_connections(tmp_path, worker_env):
    worker = start_worker(tmp_path, worker_env, token=TOKEN)
    try:
        rss_before = rss_bytes(worker.process.pid)
        results = {"preauth": 0, "answered": 0, "stalled": 0, "connect_failures": 0, "session": 0,
                   "session_replies": 0, "slowest_preauth": 0.0, "codes": {}}
        lock, stop, probe_times = threading.Lock(), threading.Event(), []
        errors = []

        def guarded(target, *args):
            def run():
                try:
                    target(*args)
                except BaseException as error:  # reported below, with the thread's name
                    errors.append(f"{threading.current_thread().name}: {type(error).__name__}: {error}")
            return run

        threads = [threading.Thread(target=guarded(run_preauth_peer, seed, results, lock, worker.port),
                                    name=f"preauth{seed}") for seed in range(PREAUTH_THREADS)]
        threads.append(threading.Thread(target=guarded(run_session, 100, results, lock, worker.port), name="session"))
        probe = threading.Thread(target=guarded(run_legitimate_probe, worker.port, stop, probe_times), name="probe")
        started = time.monotonic()
        for thread in threads + [probe]:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
        took = time.monotonic() - started
        stop.set()
        probe.join(timeout=20)
        assert not errors, errors
        assert all(not thread.is_alive() for thread in threads)
        total = results["preauth"] + results["session"]
        print(f"\nfuzz: {total} hostile messages ({results['session']} authenticated, {results['preauth']} "
              f"connections without the token, {results['answered']} of them answered) in {took:.1f} s; slowest "
              f"peer without the token {results['slowest_preauth']:.2f} s; legitimate client answered in at most "
              f"{max(probe_times) * 1000:.0f} ms ({len(probe_times)} probes); RSS {rss_before / 2 ** 20:.0f} -> "
              f"{rss_bytes(worker.process.pid) / 2 ** 20:.0f} MiB")
        print("replies to the authenticated connection:", dict(sorted(results["codes"].items())))
        assert total >= 10_000
        assert results["session_replies"] == results["session"]  # one reply per authenticated message
        assert results["stalled"] == 0 and results["connect_failures"] == 0
        assert results["slowest_preauth"] < ANSWER_SECONDS
        assert probe_times and max(probe_times) < ANSWER_SECONDS
        assert worker.alive()
        assert rss_bytes(worker.process.pid) - rss_before < 200 * 2 ** 20
        log_size = sum(os.path.getsize(os.path.join(tmp_path, name)) for name in os.listdir(tmp_path)
                       if name.startswith("worker.log"))
        assert log_size < 4 * 3 * 2 ** 20  # rotated: at most four files of 2 MiB (and a line)
        # Then a legitimate client loads tiny and paints.
        client = WorkerClient(WorkerConfig(remote=("127.0.0.1", worker.port, TOKEN)))
        assert client.load_model(TINY)["source"] == "tiny"
        image, info = client.generate(TINY, "after the storm", control_images(64, 64), 64, 64, steps=2, seed=3)
        assert image.shape == (64, 64, 3) and np.isfinite(image).all() and info["model"] == "tiny"
        client.stop()  # a remote worker is asked to shut down: it exits cleanly
        assert worker.process.wait(timeout=30) == 0
    finally:
        worker.stop()
