"""Silk's render engine.

``guides/``, ``conditioning.py`` and ``color.py`` are free of ``bpy``: they hold the
maths and run in Blender's Python, in the worker's Python and in fast unit tests.
``settings.py``, ``scene_capture.py`` and ``render_engine.py`` are the thin layer
that talks to Blender.
"""
