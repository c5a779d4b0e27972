"""The worker's malloc set-up (bridge/allocator.py): freed tensor memory is reused, not faulted in
again every step; the user's own settings win; an idle worker gives the memory back."""
import json
import os
import platform
import subprocess
import sys
import threading
import time

import pytest

from silk.bridge import allocator, protocol
from tests.bridge.conftest import worker_python
from tools.blender_env import ROOT

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
BLOCK_BYTES = 112 * 2 ** 20  # SD 1.5's largest convolution weight, which oneDNN copies on every call
ROUNDS = 16

# On a thread of its own, as the worker's jobs run: a torch tensor the size of that weight made,
# written and freed, round after round; the page faults of each round, counted for that thread
# alone. (Tuned, the first rounds still fault: torch asks for 64-byte aligned blocks, which a
# freed block of the same size cannot hold until freed neighbours have merged with it; then
# none do. glibc's defaults map and unmap the block every round.)
SCRIPT = f"""
import json, resource, sys, threading
sys.path.insert(0, {ROOT!r})
from tools.blender_env import load_silk
load_silk(register=False)
from silk.bridge import allocator
tuned = allocator.tune() if sys.argv[1] == "tuned" else None
import torch
torch.set_num_threads(1)
ROUNDS = {ROUNDS}
faults = []
def rounds():
    for _ in range(ROUNDS):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        block = torch.empty({BLOCK_BYTES} // 4)
        block.fill_(1.0)
        del block
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
job = threading.Thread(target=rounds)
job.start()
job.join()
print(json.dumps({{"tuned": tuned, "faults": faults}}))
"""


def rounds(mode: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in allocator.USER_VARIABLES}
    env.pop("GLIBC_TUNABLES", None)
    done = subprocess.run([worker_python(), "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the set-up is for glibc's malloc (Linux)")
def test_a_tuned_worker_reuses_freed_tensor_memory_instead_of_faulting_it_in_again():
    tuned, default = rounds("tuned"), rounds("default")
    assert tuned["tuned"] == {"arena_max": 1, "mmap_max": 0, "trim_threshold": allocator.TRIM_THRESHOLD}
    first, last = tuned["faults"][0], tuned["faults"][-4:]
    assert first > 0, tuned  # the first round does fault the block in: the counter sees faults
    assert max(last) <= first // 100, tuned  # the last rounds reuse what earlier ones freed
    # glibc's defaults map and unmap the block every round (one fault per page, or per huge page
    # where the system gives those): the difference the set-up makes.
    assert min(default["faults"][-4:]) >= 10 * max(max(last), 1), (tuned, default)


@pytest.mark.parametrize("environ", [{"MALLOC_ARENA_MAX": "4"}, {"MALLOC_TRIM_THRESHOLD_": "0"},
                                     {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"},
                                     {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}])
def test_the_users_own_malloc_settings_are_left_alone(environ):
    assert allocator.user_settings(environ)
    assert allocator.tune(environ) is None
    assert allocator.user_settings({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}) == []


class LoadOnlyBackend:
    def missing_modules(self):
        return []

    def status(self):
        return {}

    def load(self, model):
        return {"source": model.source}


def test_an_idle_worker_gives_freed_memory_back_once(monkeypatch):
    from silk.bridge.server import WorkerServer

    trims = []
    monkeypatch.setattr(allocator, "IDLE_TRIM_SECONDS", 0.3)
    monkeypatch.setattr(allocator, "trim", lambda: trims.append(time.monotonic()) or True)
    server = WorkerServer(token="t", backend=LoadOnlyBackend())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    import socket

    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.settimeout(10)
        reader = protocol.StreamReader(sock)
        sock.sendall(protocol.encode({"type": "hello", "id": 1, "protocol": 1, "token": "t"}))
        assert reader.read_message()[0]["type"] == "hello"
        time.sleep(0.8)
        assert trims == []  # no job ran yet: nothing to give back
        for request_id in (2, 3):  # two jobs back to back: no trim between them
            sock.sendall(protocol.encode({"type": "load_model", "id": request_id, "model": {"source": "tiny"}}))
            assert reader.read_message()[0]["reply_to"] == request_id
        finished = time.monotonic()
        time.sleep(1.2)
        assert len(trims) == 1, trims  # once, after the idle time, not again while idle
        assert trims[0] - finished >= 0.25
        sock.close()
    finally:
        assert server.close(5)
        thread.join(5)
