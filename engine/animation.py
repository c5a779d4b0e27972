"""Painting a frame of an animation: feedback from the previous painted frame warped by the
scene's exact motion, occlusion-aware fusion, noise per shot, colour coherence, cadence.

What a take remembers lives in ``TakeMemory`` (this Blender session) and in small
sidecar files next to the saved frames (``<output folder>/.silk/<frame file>.npz``), so
a render that was interrupted, or a farm machine that renders the second half of a
shot, continues from the last finished frame without a seam. The maths is in
``temporal.py`` and ``schedule.py``; this module decides what to paint from what.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import diffusion_job, latent_walk, schedule, temporal
from .guides import compute_guides
from .scene_capture import capture_frame

log = logging.getLogger("silk")

SIDECAR_FOLDER = ".silk"
LATENT_FACTOR = 8  # the VAE's downsampling: latent noise is 8x smaller than the frame


@dataclass
class Painted:
    picture: np.ndarray  # display sRGB (H, W, 3)
    noise: np.ndarray | None = None  # the latent noise it grew from (WARPED mode)


@dataclass
class TakeMemory:
    """What one shot's take has painted in this session."""

    job: int
    frames: dict = field(default_factory=dict)  # frame -> Painted
    anchor: temporal.ColorAnchor | None = None
    last_frame: int | None = None

    def keep_recent(self, frame: int, window: int) -> None:
        for old in [f for f in self.frames if abs(f - frame) > window]:
            del self.frames[old]


_takes: dict = {}
_job = 0


@dataclass(frozen=True)
class FrameNote:
    """How a frame was made, for the stats line, scripts and tests."""

    frame: int
    kind: str  # "fresh" (no feedback), "feedback", "in-between", "loop"
    source: int | None = None  # the frame it was warped from (in-betweens: the key before)
    strength: float | None = None
    feedback_seconds: float = 0.0  # warping, filling, noise and colour work here (not in the worker)
    seed: int | None = None


# How the frames of the current job were made, in order.
frame_notes: list = []


def new_job(*_args) -> None:
    """A render job starts (render_init): frames remembered from earlier jobs are only used
    for F12 stepping to the next frame; animations continue from their sidecar files."""
    global _job
    _job += 1
    frame_notes.clear()


def forget_all() -> None:
    _takes.clear()


# -- sidecars ----------------------------------------------------------------------
def sidecar_path(frame_path: str) -> str:
    folder, name = os.path.split(frame_path)
    return os.path.join(folder, SIDECAR_FOLDER, name + ".npz")


def save_sidecar(frame_path: str, painted: Painted) -> None:
    path = sidecar_path(frame_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {"picture": painted.picture.astype(np.float16)}
    if painted.noise is not None:
        arrays["noise"] = painted.noise.astype(np.float32)
    temporary = path + ".part.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def load_sidecar(frame_path: str, height: int, width: int) -> Painted | None:
    """A finished frame's painting, if its file and its sidecar both exist and fit."""
    path = sidecar_path(frame_path)
    if not (os.path.exists(frame_path) and os.path.exists(path)):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:  # never unpickle
            picture = np.asarray(data["picture"], dtype=np.float32)
            noise = np.asarray(data["noise"], dtype=np.float32) if "noise" in data.files else None
    except (OSError, ValueError, KeyError) as error:
        log.warning("Ignoring the unreadable take file %s: %s", path, error)
        return None
    if picture.shape != (height, width, 3):
        return None
    return Painted(picture, noise)


# -- the painter --------------------------------------------------------------------
@dataclass
class FrameContext:
    """Everything about the frame being rendered that painting needs."""

    frame: int
    shot: schedule.Shot
    take_key: tuple
    width: int
    height: int
    is_animation: bool
    frame_path: callable  # frame number -> the file Blender saves it to ("" when not saving)


class FramePainter:
    """Paints the current frame (and, under cadence, the key frame after it when needed).

    ``paint_fn(guides, job, init=None, strength_map=None, fusion=0, noise=None, seed=None)``
    runs the worker and returns a display picture; ``motion_fn(frame)`` returns the guides
    of the current frame relative to another frame; ``key_guides_fn(frame, other)``
    returns ``(guides, job, temporal_settings)`` of ``frame``, its guides relative to
    ``other`` and its settings as keyframed at ``frame`` (for painting a key ahead).
    """

    def __init__(self, context: FrameContext, job: diffusion_job.JobSettings, temporal_settings, paint_fn,
                 motion_fn, key_guides_fn, rewrite_fn=None):
        self.context = context
        self.rewrite_fn = rewrite_fn  # (frame, picture): save over a finished frame (loops)
        self.job = job
        self.settings = temporal_settings
        self.paint_fn = paint_fn
        self.motion_fn = motion_fn
        self.key_guides_fn = key_guides_fn
        take = _takes.get(context.take_key)
        if take is None or (take.job != _job and context.is_animation):
            take = TakeMemory(job=_job)
            _takes.clear()  # one take at a time keeps memory bounded
            _takes[context.take_key] = take
        self.take = take

    # -- public ---------------------------------------------------------------------
    def paint(self, guides) -> np.ndarray:
        settings, context = self.settings, self.context
        frame = context.frame
        if not settings.use_feedback:
            painted = self._paint_key(frame, guides, previous_frame=None)
            return painted.picture
        step = schedule.cadence_step(frame, context.shot, settings.cadence)
        if step.is_key:
            # A key painted ahead by an in-between of this animation job is used as it is;
            # F12 always paints anew (the user re-renders to see a change).
            ahead = self.context.is_animation and self.take.job == _job
            painted = self.take.frames.get(frame) if ahead else None
            if painted is None:
                painted = self._paint_key(frame, guides, previous_frame=self._previous_key(frame))
        else:
            painted = Painted(self._in_between(step))
            frame_notes.append(FrameNote(frame, "in-between", step.before))
        self._remember(frame, painted)
        if (settings.use_loop and context.is_animation and frame == context.shot.end
                and context.shot.end > context.shot.start and self.rewrite_fn is not None):
            self._repaint_loop()
        return painted.picture

    # -- keys -------------------------------------------------------------------------
    def _previous_key(self, frame: int) -> int | None:
        shot, cadence = self.context.shot, max(1, self.settings.cadence)
        offset = (frame - shot.start) % cadence
        previous = frame - (offset or cadence)
        return previous if previous >= shot.start else None

    def _painted(self, frame: int) -> Painted | None:
        """A painted frame of this take: remembered, or finished earlier (its sidecar)."""
        take = self.take
        found = take.frames.get(frame)
        if found is not None and (take.job == _job or take.last_frame == frame):
            return found
        if self.context.is_animation:
            path = self.context.frame_path(frame)
            if path:
                return load_sidecar(path, self.context.height, self.context.width)
        return None

    def _paint_key(self, frame: int, guides, previous_frame: int | None, job=None, settings=None) -> Painted:
        settings, job = settings or self.settings, job or self.job
        previous = self._painted(previous_frame) if previous_frame is not None else None
        seed = job.seed + frame if settings.noise_mode == "RANDOM" else job.seed
        started = time.perf_counter()
        noise = None
        if settings.use_feedback and settings.noise_mode == "WARPED":
            noise = self._noise_for(frame, guides, previous_frame, previous)
        elif settings.noise_mode in latent_walk.MODES:
            noise = self._walk_noise(frame, job, settings)
        feedback = None
        if previous is not None:
            feedback = temporal.feedback_from(previous.picture, guides.vector, guides.occlusion, settings.strength)
            # Colour coherence on the start picture, as Deforum does: the model then paints from
            # colours anchored to the shot's first frame, and its own output is left untouched.
            feedback.init_image = self._anchored(feedback.init_image)
        spent = time.perf_counter() - started
        frame_notes.append(FrameNote(frame, "fresh", seed=seed) if feedback is None else
                           FrameNote(frame, "feedback", previous_frame, settings.strength, spent, seed))
        if feedback is None:
            picture = self.paint_fn(guides, job, seed=seed, noise=noise)
            if self.take.anchor is None or frame == self.context.shot.start:
                self.take.anchor = temporal.ColorAnchor.of(picture)
        else:
            picture = self.paint_fn(guides, job, init=feedback.init_image, strength_map=feedback.strength,
                                    fusion=settings.fusion, seed=seed, noise=noise)
        return Painted(picture, noise)

    def _walk_noise(self, frame, job, settings) -> np.ndarray:
        """DRIFT or LOOP noise of ``frame`` (latent_walk.py): a function of seed, shot and frame."""
        shot = self.context.shot
        shape = (-(-self.context.height // LATENT_FACTOR), -(-self.context.width // LATENT_FACTOR), 4)
        angle_at = settings.drift_angle_at or (lambda _frame: settings.noise_drift)
        return latent_walk.noise_for(settings.noise_mode, job.seed, shot.start, shot.end, frame, shape,
                                     angle_at=angle_at, turns=settings.loop_turns)

    def _noise_for(self, frame, guides, previous_frame, previous) -> np.ndarray:
        height, width = self.context.height, self.context.width
        shape = (-(-height // LATENT_FACTOR), -(-width // LATENT_FACTOR), 4)
        rng = np.random.default_rng([self.job.seed & 0xFFFFFFFF, frame])
        if previous is None or previous.noise is None or previous.noise.shape != shape:
            return np.random.default_rng(self.job.seed & 0xFFFFFFFF).standard_normal(shape).astype(np.float32)
        return temporal.warp_noise(previous.noise, guides.vector, guides.occlusion, rng)

    def _anchored(self, picture: np.ndarray) -> np.ndarray:
        """``picture`` with its colours pulled toward the shot's first frame."""
        take, strength = self.take, self.settings.color_coherence
        if take.anchor is None:  # resumed mid-shot: the first frame's painting is on disk
            start = self._painted(self.context.shot.start)
            take.anchor = temporal.ColorAnchor.of(start.picture if start is not None else picture)
        if strength <= 0:
            return picture
        return temporal.match_color(picture, take.anchor, strength)

    def _remember(self, frame: int, painted: Painted) -> None:
        take = self.take
        take.frames[frame] = painted
        take.last_frame = frame
        take.keep_recent(frame, 2 * max(1, self.settings.cadence) + 1)
        path = self.context.frame_path(frame) if self.context.is_animation else ""
        if path:
            save_sidecar(path, painted)

    # -- loops --------------------------------------------------------------------------
    def _repaint_loop(self) -> None:
        """Repaint the shot's first frames with feedback running on from its last frame, and
        cross-fade them into the first take, so the last frame flows into the first."""
        shot = self.context.shot
        length = min(self.settings.loop_frames, shot.end - shot.start)
        previous_frame, previous = shot.end, self.take.frames[shot.end]
        for frame in range(shot.start, shot.start + length):
            guides, job, settings = self.key_guides_fn(frame, previous_frame)
            feedback = temporal.feedback_from(previous.picture, guides.vector, guides.occlusion, settings.strength)
            feedback.init_image = self._anchored(feedback.init_image)
            seed = job.seed + frame if settings.noise_mode == "RANDOM" else job.seed
            noise = self._walk_noise(frame, job, settings) if settings.noise_mode in latent_walk.MODES else None
            picture = self.paint_fn(guides, job, init=feedback.init_image, strength_map=feedback.strength,
                                    fusion=settings.fusion, seed=seed, noise=noise)
            frame_notes.append(FrameNote(frame, "loop", previous_frame, settings.strength))
            original = self._painted(frame)
            weight = schedule.loop_blend(frame, shot, length)
            final = picture if original is None else weight * picture + (1.0 - weight) * original.picture
            self.rewrite_fn(frame, final.astype(np.float32))
            previous_frame, previous = frame, Painted(picture)

    # -- cadence ----------------------------------------------------------------------
    def _in_between(self, step: schedule.CadenceStep) -> np.ndarray:
        before = self._painted(step.before)
        if before is None:  # the key before was never painted (a render started mid-way): paint it now
            before = self._paint_ahead(step.before)
        after = self.take.frames.get(step.after) if self.take.job == _job else None
        if after is None:
            after = self._paint_ahead(step.after, previous_frame=step.before, previous=before)
        to_before = self.motion_fn(step.before)
        to_after = self.motion_fn(step.after)
        return temporal.in_between(before.picture, to_before.vector, to_before.occlusion,
                                   after.picture, to_after.vector, to_after.occlusion, step.position)

    def _paint_ahead(self, frame: int, previous_frame: int | None = None, previous: Painted | None = None) -> Painted:
        """Paint key ``frame`` now (it is needed by the frames before it)."""
        if previous_frame is None:
            previous_frame = self._previous_key(frame)
        guides, job, settings = self.key_guides_fn(frame, previous_frame)
        if previous is not None:
            self.take.frames[previous_frame] = previous
        painted = self._paint_key(frame, guides, previous_frame, job, settings)
        self.take.frames[frame] = painted
        if self.context.is_animation and self.context.frame_path(frame):
            save_sidecar(self.context.frame_path(frame), painted)
        return painted


# -- geometry at other frames (bpy through the engine) --------------------------------------
def guides_between(engine, depsgraph, camera_object, width, height, frame: int, other: int | None, current=None,
                   read_settings=None):
    """The guides of ``frame`` with motion and occlusion relative to ``other`` (any frame).

    ``current``: frame's geometry when already captured. ``read_settings(evaluated_scene)``
    is called while the scene stands at ``frame`` (keyframed values of that frame); its
    result is returned beside the guides. Returns to the frame being rendered."""
    scene = depsgraph.scene
    rendering, subframe = scene.frame_current, scene.frame_subframe
    settings = None
    try:
        if current is None:
            engine.frame_set(frame, 0.0)
            current, _ = capture_frame(depsgraph, camera_object, width, height)
            if read_settings is not None:
                settings = read_settings(depsgraph.scene_eval)
        other_geometry = None
        if other is not None:
            engine.frame_set(other, 0.0)
            known = frozenset(instance.key for instance in current.instances)
            other_geometry, _ = capture_frame(depsgraph, camera_object, width, height, known)
    finally:
        if scene.frame_current != rendering:
            engine.frame_set(rendering, subframe)
    guides = compute_guides(current, other_geometry)
    return guides if read_settings is None else (guides, settings)
