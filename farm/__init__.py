"""Silk on a render farm: a scene's shots as farm work, and the Flamenco job type that renders
them (``flamenco/silk_shots.js``). See docs/farm.md.

``shots(scene)`` is the documented entry point; the planning itself is ``engine/farm.py``
(no ``bpy``), the shot cuts are the engine's own (``job_settings.shot_cuts``).
"""
from __future__ import annotations

import os

from ..engine import farm as plan
from ..engine import job_settings

JOB_TYPE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flamenco", "silk_shots.js")
JOB_TYPE_NAME = "silk-shots"  # Flamenco names a job type after its file, "_" read as "-"


def shots(scene, max_frames: int = 0) -> list:
    """The scene's shots as farm work (``engine.farm.FarmShot``: start, end, keys, loop_frames,
    chunks, chained), from its frame range, markers and Silk settings as they stand now.
    ``max_frames``: split shots longer than this into chunks that run in order (0: never)."""
    settings = scene.silk
    return plan.plan_shots(scene.frame_start, scene.frame_end, job_settings.shot_cuts(scene),
                           cadence=settings.cadence, use_feedback=settings.use_feedback,
                           loop_frames=settings.loop_frames if settings.use_loop else 0,
                           max_frames=max_frames, frame_step=scene.frame_step)


def shots_json(scene, max_frames: int = 0) -> str:
    """``shots`` as the JSON a Silk farm job carries (what the job type evaluates at submission)."""
    return plan.shots_json(shots(scene, max_frames))
