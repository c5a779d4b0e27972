"""Silk's operators (none yet beyond Blender's own F12 and Ctrl+F12)."""


def register():
    pass


def unregister():
    pass
