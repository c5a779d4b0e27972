"""Silk's operators."""
from . import animation, farm, render, units, variants, worker

MODULES = (worker, render, units, animation, farm, variants)


def register():
    for module in MODULES:
        module.register()


def unregister():
    for module in reversed(MODULES):
        module.unregister()
