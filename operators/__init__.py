"""Silk's operators."""
from . import render, units, variants, worker

MODULES = (worker, render, units, variants)


def register():
    for module in MODULES:
        module.register()


def unregister():
    for module in reversed(MODULES):
        module.unregister()
