"""Silk: a Blender render engine that paints with Stable Diffusion, steered by the scene.

Registration only; see ``engine/``, ``operators/``, ``ui/`` and ``bridge/``.
"""


def register():
    from .engine import render_engine, result_history, settings, takes
    from . import operators, ui

    settings.register()
    render_engine.register()
    result_history.register()
    takes.register()
    operators.register()
    ui.register()


def unregister():
    from .engine import render_engine, result_history, settings, takes, worker_link
    from . import operators, ui

    ui.unregister()
    operators.unregister()
    takes.unregister()
    result_history.unregister()
    render_engine.unregister()
    settings.unregister()
    worker_link.unregister()  # the worker exits with its client
