"""Test setup: the checkout is importable as the ``silk`` package.

Core tests (guides, conditioning, colour) import no ``bpy``. Tests under
``tests/blender`` run in Blender's own Python module (``bpy``), never a mock.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tools.blender_env import load_silk  # noqa: E402

load_silk(register=False)
