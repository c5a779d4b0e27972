"""Silk's operators."""
from . import render, units, worker

MODULES = (worker, render, units)


def register():
    for module in MODULES:
        module.register()


def unregister():
    for module in reversed(MODULES):
        module.unregister()
