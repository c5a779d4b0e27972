"""Blender tests run in Blender's Python module with Silk registered from the checkout."""
import bpy  # noqa: F401  (a missing Blender module must fail loudly, not skip)
import pytest

from tools.blender_env import load_silk


@pytest.fixture(scope="session")
def silk():
    return load_silk(register=True)


@pytest.fixture
def render_dir(tmp_path):
    return tmp_path
