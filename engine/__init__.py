"""Silk's render engine.

``guides/``, ``conditioning.py``, ``diffusion_job.py``, ``color.py``, ``animation.py``
(the animation core), ``noise.py``, ``temporal.py`` and ``schedule.py`` are free of
``bpy``: they hold the maths and the worker requests, and run in Blender's Python,
in the worker's Python and in fast unit tests. ``settings.py``, ``job_settings.py``,
``scene_capture.py``, ``scene_frames.py``, ``render_engine.py``, ``takes.py``,
``worker_link.py`` and ``result_history.py`` are the thin layer that talks to Blender.
"""
