"""Bridge tests run the real worker process with the `tiny` model (no mocks).

The worker's Python is SILK_WORKER_PYTHON or the project's .venv (which `make test`
fills with torch and diffusers). Models are cached per test session; the hub is off.
"""
import os
import sys

import pytest

from tools.blender_env import ROOT


def worker_python() -> str:
    python = os.environ.get("SILK_WORKER_PYTHON") or os.path.join(ROOT, ".venv", "bin", "python")
    assert os.path.exists(python), f"no worker Python at {python}: run `make venv`"
    return python


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def worker_env(model_cache):
    return {"SILK_MODEL_CACHE": model_cache, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def make_client(tmp_path, worker_env):
    from silk.bridge.client import WorkerClient, WorkerConfig

    clients = []

    def make(**overrides):
        settings = dict(python=worker_python(), log_path=str(tmp_path / f"worker{len(clients)}.log"),
                        env=dict(worker_env))
        settings.update(overrides)
        client = WorkerClient(WorkerConfig(**settings))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.stop()


@pytest.fixture(scope="session", autouse=True)
def no_frames_left_behind():
    """After every bridge test: no shared-frame directory of ours, or of a dead process, remains."""
    yield
    from silk.bridge.frames import DIRECTORY_PREFIX, shared_root, _alive

    leftovers = []
    for name in os.listdir(shared_root()):
        if name.startswith(DIRECTORY_PREFIX):
            pid = int(name[len(DIRECTORY_PREFIX):].split("-")[0])
            if pid == os.getpid() or not _alive(pid):
                leftovers.append(name)
    assert not leftovers, f"shared frames left behind: {leftovers}"


TINY = {"source": "tiny"}


def control_images(height=64, width=80, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [{"image": rng.random((height, width, 3), dtype=np.float32)},
            {"image": rng.random((height, width, 3), dtype=np.float32), "weight": 0.7, "start": 0.0, "end": 0.8}]
