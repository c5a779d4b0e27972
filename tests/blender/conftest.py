"""Blender tests run in Blender's Python module with Silk registered from the checkout.

Diffusion renders use the real worker (the project's .venv Python, or
SILK_WORKER_PYTHON) with the `tiny` model, built once per session, offline.
"""
import os

import bpy  # noqa: F401  (a missing Blender module must fail loudly, not skip)
import pytest

from tools.blender_env import ROOT, load_silk


@pytest.fixture(scope="session", autouse=True)
def worker_environment(tmp_path_factory):
    python = os.environ.get("SILK_WORKER_PYTHON") or os.path.join(ROOT, ".venv", "bin", "python")
    assert os.path.exists(python), f"no worker Python at {python}: run `make venv`"
    os.environ["SILK_WORKER_PYTHON"] = python
    os.environ.setdefault("SILK_MODEL_CACHE", str(tmp_path_factory.mktemp("models")))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    yield
    from silk.engine import worker_link

    worker_link.unregister()  # stop the worker


@pytest.fixture(scope="module", autouse=True)
def stop_the_worker_after_each_module():
    """Each test file starts its own worker and leaves no process or shared frames behind."""
    yield
    from silk.engine import worker_link

    worker_link.unregister()


@pytest.fixture(scope="session")
def silk():
    return load_silk(register=True)


@pytest.fixture
def render_dir(tmp_path):
    return tmp_path
