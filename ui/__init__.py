"""Silk's panels and preferences."""
from . import panels, preferences


def register():
    preferences.register()
    panels.register()


def unregister():
    panels.unregister()
    preferences.unregister()
