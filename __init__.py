"""Silk: a Blender render engine that paints with Stable Diffusion, steered by the scene.

Registration only; see ``engine/``, ``operators/``, ``ui/`` and ``bridge/``.
"""


def register():
    from .engine import render_engine, settings
    from . import operators, ui

    settings.register()
    render_engine.register()
    operators.register()
    ui.register()


def unregister():
    from .engine import render_engine, settings
    from . import operators, ui

    ui.unregister()
    operators.unregister()
    render_engine.unregister()
    settings.unregister()
