"""Silk's operators."""
from . import animation, farm, render, units, worker

MODULES = (worker, render, units, animation, farm)


def register():
    for module in MODULES:
        module.register()


def unregister():
    for module in reversed(MODULES):
        module.unregister()
