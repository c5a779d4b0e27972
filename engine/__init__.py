"""Silk's render engine.

``guides/``, ``conditioning.py``, ``diffusion_job.py`` and ``color.py`` are free of
``bpy``: they hold the maths and the worker requests, and run in Blender's Python,
in the worker's Python and in fast unit tests. ``settings.py``, ``job_settings.py``,
``scene_capture.py``, ``render_engine.py``, ``worker_link.py`` and
``result_history.py`` are the thin layer that talks to Blender.
"""
