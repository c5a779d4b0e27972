"""Silk's operators."""
from . import worker


def register():
    worker.register()


def unregister():
    worker.unregister()
