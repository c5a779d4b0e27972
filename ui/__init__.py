"""Silk's panels and preferences."""
from . import panels, preferences, walk_panels


def register():
    preferences.register()
    panels.register()
    walk_panels.register()  # after panels: its panels sit inside theirs


def unregister():
    walk_panels.unregister()
    panels.unregister()
    preferences.unregister()
