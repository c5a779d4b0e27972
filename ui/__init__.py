"""Silk's panels (Render Properties and the 3D Viewport sidebar)."""
from . import panels


def register():
    panels.register()


def unregister():
    panels.unregister()
