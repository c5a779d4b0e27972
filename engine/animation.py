"""Painting the frames of an animation. No ``bpy``.

A render asks a ``RenderSession`` for one frame; the session decides what to paint from what:
feedback from the previous painted frame warped by the scene's exact motion, occlusion-aware
fusion, noise per shot (fixed, travelling with the motion, or random), colour coherence to the
shot's first frame, cadence (keys painted, frames between warped from both keys) and loops. It
reaches the scene through a ``FrameSource`` (guides and settings at any frame, exact motion
between any two frames, the shot a frame belongs to; ``scene_frames.py`` is Blender's) and the
model through a ``Painter`` (request in, picture out; the render engine's drives the worker).
Both are small protocols, so every rule here is tested with fakes in milliseconds.

What a take remembers lives in the session (this Blender session) and in small sidecar files
next to the saved frames (``<output folder>/.silk/<frame file>.<frame>.npz``), so a render that
was interrupted, or a farm machine that renders the second half of a shot, continues from the
last finished frame without a seam. The maths is in ``temporal.py``, ``noise.py`` and
``schedule.py``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..bridge import families, schema
from . import conditioning, latent_walk, noise, schedule, temporal
from .diffusion_job import JobSettings

log = logging.getLogger("silk")

SIDECAR_FOLDER = ".silk"
# Samplers that add fresh noise at every step (the sampler table says which): fusion's pull toward
# the run's own noised target would leave their latents less noisy than they expect, so fusion is
# off for them (with a warning).
FUSION_INCOMPATIBLE_SAMPLERS = tuple(sampler.id for sampler in families.SAMPLERS if sampler.fresh_noise_each_step)
# A render this many times the family's native size (bridge/families.py) gets a warning.
TOO_LARGE = 1.5


# -- what a frame is painted with ------------------------------------------------------------
@dataclass
class TemporalSettings:
    use_feedback: bool = True
    strength: float = schema.default("strength")
    fusion: float = 0.5
    fusion_end: float = schema.default("fusion_end")  # fraction of the steps after which fusion stops
    noise_mode: str = "FIXED"
    color_coherence: float = 1.0  # full, as Deforum's default colour match (LAB); measured in docs/benchmarks.md
    hold_to_start: float = 0.5  # mix the shot's first painting, carried by the exact motion, into each start picture
    faithful_encoding: bool = True  # feedback frames: encode the start picture compensating the VAE's error
    cadence: int = 1
    use_loop: bool = False
    loop_frames: int = 6
    noise_drift: float = 0.0  # DRIFT (latent_walk.py): radians at this frame
    loop_turns: int = 1  # LOOP: circles over the shot
    drift_angle_at: object = None  # DRIFT: frame -> radians as keyframed there (None: noise_drift everywhere)


@dataclass
class FrameSettings:
    """A frame's settings as keyframed at that frame."""

    job: JobSettings
    temporal: TemporalSettings


class FrameSourceError(Exception):
    """A frame's geometry could not be read (worded for the render report)."""


class FrameSource(Protocol):
    """The scene, seen from the animation core."""

    name: str  # the scene's name (takes and reports)
    width: int
    height: int
    is_animation: bool  # a timeline animation render (frames saved to files), not F12
    frame_step: int  # the animation's frame step (1 for F12): the frames rendered are this far apart
    output_is_movie: bool  # the frames go into one movie file
    loop_output_problem: str  # why a loop's repainted first frames can't be saved over their files ("": they can)

    def guides(self, frame: int, relative_to: int | None):
        """Frame ``frame``'s guides (depth, normal, coverage, camera) with ``vector`` and
        ``occlusion`` relative to frame ``relative_to`` (any frame; None: no motion).
        Raises FrameSourceError."""

    def settings(self, frame: int) -> FrameSettings:
        """The settings as keyframed at ``frame``."""

    def shot(self, frame: int) -> schedule.Shot:
        """The shot holding ``frame`` (camera cuts and shot markers)."""

    def output_file(self, frame: int) -> str:
        """The image file frame ``frame`` is saved to; "" when it is not saved to an image."""

    @property
    def take_key(self) -> tuple:
        """What makes two renders the same take (scene, shot, camera, size)."""


@dataclass
class PaintRequest:
    """One picture for the model to paint."""

    frame: int
    guides: object
    job: JobSettings
    seed: int
    noise: np.ndarray  # (ceil(height / 8), ceil(width / 8), 4) float32: the latent noise it starts from
    depth_range: conditioning.DepthRange
    init_image: np.ndarray | None = None  # display sRGB (H, W, 3): the previous frame warped
    strength_map: np.ndarray | None = None  # (H, W) denoising strength per pixel
    fusion: float = 0.0
    fusion_end: float = 1.0
    faithful_encoding: bool = False  # with init_image: see bridge/diffusion/pictures.encode_image
    is_current: bool = True  # the frame being rendered (not a key painted ahead or a loop repaint)


class Painter(Protocol):
    def paint(self, request: PaintRequest) -> np.ndarray:
        """The painted picture, display sRGB (H, W, 3) float32."""


@dataclass
class Painted:
    picture: np.ndarray  # display sRGB (H, W, 3)
    noise: np.ndarray | None = None  # the latent noise it grew from (None: an in-between, not painted)
    noise_field: noise.NoiseField | None = None  # WARPED mode's state, carried to the next key
    noise_seed: int | None = None


@dataclass(frozen=True)
class FrameNote:
    """How a frame was made, for the stats line, scripts and tests."""

    frame: int
    kind: str  # "fresh" (no feedback), "feedback", "in-between", "loop"
    source: int | None = None  # the frame it was warped from (in-betweens: the key before)
    strength: float | None = None
    feedback_seconds: float = 0.0  # warping, filling, noise and colour work here (not in the worker)
    seed: int | None = None
    noise_mode: str | None = None


@dataclass
class TakeMemory:
    """What one shot's take has painted in this Blender session."""

    session: int
    frames: dict = field(default_factory=dict)  # frame -> Painted
    noise_fields: dict = field(default_factory=dict)  # (seed, frame) -> NoiseField (WARPED chain)
    anchor: temporal.ColorAnchor | None = None
    start: tuple | None = None  # (frame, picture): the shot's first painting, for hold_to_start
    last_frame: int | None = None

    def keep_recent(self, frame: int, window: int) -> None:
        for old in [f for f in self.frames if abs(f - frame) > window]:
            del self.frames[old]
        for key in [k for k in self.noise_fields if abs(k[1] - frame) > window]:
            del self.noise_fields[key]


@dataclass
class TakeRecord:
    """What an animation render painted, for the take the job's end adds to the sequencer."""

    scene_name: str
    frames: set = field(default_factory=set)
    label: str = ""
    rewrites: dict = field(default_factory=dict)  # frame -> display picture to save over the frame's file


# -- sidecars ---------------------------------------------------------------------------------
def sidecar_path(frame_file: str, frame: int, kind: str = "") -> str:
    """Keyed by the frame's file and its number: two frames never share a sidecar. ``kind``
    "noise": the WARPED noise state's file beside it."""
    folder, name = os.path.split(frame_file)
    return os.path.join(folder, SIDECAR_FOLDER, f"{name}.{int(frame)}{'.' + kind if kind else ''}.npz")


def _write(path: str, arrays: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + ".part.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def save_sidecar(frame_file: str, frame: int, painted: Painted) -> None:
    """The painting (float16) and, in WARPED mode, the noise state in a file of its own (only the
    latest key's is kept: see ``forget_noise_state``)."""
    _write(sidecar_path(frame_file, frame), {"picture": painted.picture.astype(np.float16)})
    state = painted.noise_field
    if state is not None:
        _write(sidecar_path(frame_file, frame, "noise"), {
            "values": state.values, "offsets": state.offsets.astype(np.float16),  # float16 in memory too
            "weights": state.weights.astype(np.float16), "seed": np.int64(painted.noise_seed or 0),
            "subpixels": np.int64(state.subpixels)})


def forget_noise_state(frame_file: str, frame: int) -> None:
    """Drop a frame's noise state once the next key's is saved: a resume needs only the latest
    (an older frame's noise is re-traced from the motion when needed)."""
    path = sidecar_path(frame_file, frame, "noise")
    if os.path.exists(path):
        os.remove(path)


def load_sidecar(frame_file: str, frame: int, height: int, width: int) -> Painted | None:
    """A finished frame's painting (and noise state, when kept), if its file and its sidecar both
    exist and fit."""
    path = sidecar_path(frame_file, frame)
    if not (os.path.exists(frame_file) and os.path.exists(path)):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:  # never unpickle
            picture = np.asarray(data["picture"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as error:
        log.warning("Ignoring the unreadable take file %s: %s", path, error)
        return None
    if picture.shape != (height, width, 3):
        return None
    state, seed = _load_noise_state(sidecar_path(frame_file, frame, "noise"), height, width)
    return Painted(picture, None, state, seed)


def _load_noise_state(path: str, height: int, width: int):
    if not os.path.exists(path):
        return None, None
    try:
        with np.load(path, allow_pickle=False) as data:
            state = noise.NoiseField(np.asarray(data["values"], dtype=np.float32),
                                     np.asarray(data["offsets"], dtype=np.float32),
                                     np.asarray(data["weights"], dtype=np.float32), int(data["subpixels"]))
            seed = int(data["seed"])
    except (OSError, ValueError, KeyError) as error:
        log.warning("Ignoring the unreadable noise state %s: %s", path, error)
        return None, None
    fits = (state.subpixels == noise.SUBPIXELS and state.values.ndim == 3 and state.values.shape[2] == noise.CHANNELS
            and state.latent_shape == noise.latent_shape(height, width)
            and state.values.shape[:2] == state.offsets.shape[:2] == state.weights.shape
            and state.values.shape[:2] == tuple(n * state.subpixels for n in state.latent_shape)
            and np.isfinite(state.values).all() and np.isfinite(state.offsets).all() and (state.weights > 0).all())
    return (state, seed) if fits else (None, None)


# -- warnings a render gives once -------------------------------------------------------------
def render_warnings(view_transform: str, dither: float, frame_step: int, use_feedback: bool, width: int,
                    height: int, family: str, scheduler: str, fusion: float) -> list[tuple[str, str]]:
    """(key, message) for each silent trap this render walks into."""
    warnings = []
    if view_transform != "Standard" or dither != 0:
        warnings.append(("view", f"The view transform is {view_transform} with dither {dither:g}: saved files and the "
                                 "Render Result differ from the model's picture (colours shifted, noise added). "
                                 "Use Standard view with dither 0 (Silk's Output panel: 'Use Standard View')"))
    if frame_step > 1 and use_feedback:
        warnings.append(("frame_step", f"Frame step is {frame_step}: each frame starts from the one {frame_step} "
                                       "frames earlier, across larger motion (more is repainted). To paint every "
                                       f"n-th frame (here n = {frame_step}) and still get every frame, use Silk's cadence instead"))
    native = families.FAMILIES[family].native_size if family in families.FAMILIES else None
    if native and max(width, height) > TOO_LARGE * native:
        warnings.append(("size", f"The render size {width}x{height} is far above the model's native size "
                                 f"({native} px): expect repeated subjects and slow frames; render near {native} px "
                                 "and upscale"))
    if use_feedback and fusion > 0 and scheduler in FUSION_INCOMPATIBLE_SAMPLERS:
        warnings.append(("fusion_sampler", f"Fusion is off with the {scheduler} sampler (it adds fresh noise every "
                                           "step, which fusion would fight); choose Euler, DPM++ or UniPC to use it"))
    return warnings


# -- the session ------------------------------------------------------------------------------
class RenderSession:
    """Everything one render job (F12, an animation, a preview) keeps between its frames.

    A new job starts a new session (``next``); the paintings of the last take carry over so F12
    can step to the next frame with feedback; everything else starts empty."""

    def __init__(self, number: int = 1, takes: dict | None = None):
        self.number = number
        self.notes: list[FrameNote] = []
        self.reported: set = set()  # keys of the warnings given in this job
        self.messages: list = []  # (level, message) queued for the render report
        self.depth_ranges: dict = {}  # (take key, shot start) -> DepthRange
        self.takes: dict = takes if takes is not None else {}  # take key -> TakeMemory
        self.records: dict = {}  # scene name -> TakeRecord
        self.lock = threading.Lock()  # records are read from the main thread when the job ends

    def next(self) -> "RenderSession":
        return RenderSession(self.number + 1, self.takes)

    def warn_once(self, key) -> bool:
        """True the first time ``key`` is warned about in this job."""
        if key in self.reported:
            return False
        self.reported.add(key)
        return True

    def report(self, level: str, key, message: str) -> None:
        """Queue a report for the render (once per job per ``key``); ``take_reports`` hands them out."""
        if self.warn_once(key):
            self.messages.append((level, message))

    def take_reports(self) -> list[tuple[str, str]]:
        messages, self.messages = self.messages, []
        return messages

    # -- take records (the sequencer's take when the job ends) -----------------------------
    def record(self, scene_name: str, frame: int, label: str) -> None:
        with self.lock:
            entry = self.records.setdefault(scene_name, TakeRecord(scene_name))
            entry.frames.add(frame)
            entry.label = label

    def rewrite(self, scene_name: str, frame: int, picture: np.ndarray) -> None:
        with self.lock:
            entry = self.records.setdefault(scene_name, TakeRecord(scene_name))
            entry.rewrites[frame] = np.array(picture, dtype=np.float32, copy=True)

    def drain_records(self) -> list[TakeRecord]:
        with self.lock:
            records = list(self.records.values())
            self.records.clear()
        return records

    # -- depth normalisation ----------------------------------------------------------------
    def depth_range(self, source: FrameSource, frame: int, guides, normalization: str) -> conditioning.DepthRange:
        """One depth normalisation per shot: the camera's clip range, or the depths the shot's
        first frame shows."""
        camera = guides.camera
        if normalization == "CLIP":
            return conditioning.DepthRange.from_clip(camera.clip_start, camera.clip_end)
        start = source.shot(frame).start
        key = (source.take_key, start)
        found = self.depth_ranges.get(key)
        if found is None:
            first = guides
            if frame != start:
                try:
                    first = source.guides(start, None)
                except FrameSourceError:
                    first = None
            found = (conditioning.depth_range_of_frame(first.depth, first.coverage, camera.clip_start, camera.clip_end)
                     if first is not None else conditioning.DepthRange.from_clip(camera.clip_start, camera.clip_end))
            self.depth_ranges[key] = found
        return found

    # -- painting ---------------------------------------------------------------------------
    def paint(self, source: FrameSource, painter: Painter, frame: int, normalization: str = "SHOT") -> Painted:
        """Paint frame ``frame`` (and what it needs before its turn). Returns its picture and noise."""
        return _Take(self, source, painter, normalization).paint(frame)

    def frame_noise(self, source: FrameSource, frame: int) -> np.ndarray | None:
        """The latent noise frame ``frame`` starts from, exactly as painting it would use (the
        Noise pass in Guides mode); None for a cadence in-between (it is not painted)."""
        take = _Take(self, source, None, "CLIP")
        settings = source.settings(frame)
        temporal_settings = settings.temporal
        if temporal_settings.use_feedback:
            step = schedule.cadence_step(frame, source.shot(frame), temporal_settings.cadence)
            if not step.is_key:
                return None
        previous_key = take.previous_key(frame, settings)
        latent, _field = take.noise(frame, settings, previous_key)
        return latent


class _Take:
    """One frame's work within a session: the take it continues and the rules of painting."""

    def __init__(self, session: RenderSession, source: FrameSource, painter: Painter | None, normalization: str):
        self.session, self.source, self.painter, self.normalization = session, source, painter, normalization
        take = session.takes.get(source.take_key)
        if take is None or (take.session != session.number and source.is_animation):
            take = TakeMemory(session=session.number)
            session.takes.clear()  # one take at a time keeps memory bounded
            session.takes[source.take_key] = take
        self.memory = take

    # -- public ---------------------------------------------------------------------------
    def paint(self, frame: int) -> Painted:
        source, memory = self.source, self.memory
        settings = source.settings(frame)
        temporal_settings = settings.temporal
        shot = source.shot(frame)
        if not temporal_settings.use_feedback:  # painted on its own; WARPED noise still follows the motion
            painted = self._paint_key(frame, settings, self.previous_key(frame, settings), is_current=True)
        else:
            step = schedule.cadence_step(frame, shot, temporal_settings.cadence)
            if step.is_key:
                # A key painted ahead by an in-between of this animation job is used as it is;
                # F12 always paints anew (the user re-renders to see a change).
                ahead = source.is_animation and memory.session == self.session.number
                painted = memory.frames.get(frame) if ahead else None
                if painted is None:
                    painted = self._paint_key(frame, settings, self.previous_key(frame, settings), is_current=True)
            else:
                painted = Painted(self._in_between(frame, step))
                self.session.notes.append(FrameNote(frame, "in-between", step.before))
        self._remember(frame, painted, temporal_settings.cadence)
        loops = temporal_settings.use_loop and source.is_animation and shot.end > shot.start
        if loops and source.loop_output_problem:
            # A loop saves its repainted first frames over their files when the job ends.
            self.session.report("WARNING", "loop_output", "Loop is off for this render: a loop saves its repainted "
                                f"first frames over their files, and {source.loop_output_problem}")
        elif loops and frame == shot.end:
            self._repaint_loop(shot, temporal_settings)
        return painted

    # -- keys -----------------------------------------------------------------------------
    def previous_key(self, frame: int, settings: FrameSettings) -> int | None:
        """The key painted before ``frame`` in its shot (every frame is a key without feedback)."""
        shot = self.source.shot(frame)
        cadence = max(1, settings.temporal.cadence) if settings.temporal.use_feedback else 1
        if cadence == 1 and self.source.frame_step > 1:  # Blender renders every frame_step-th frame
            previous = frame - self.source.frame_step
            return previous if previous >= shot.start else None
        offset = (frame - shot.start) % cadence
        previous = frame - (offset or cadence)
        return previous if previous >= shot.start else None

    def _painted(self, frame: int) -> Painted | None:
        """A painted frame of this take: remembered, or finished earlier (its sidecar)."""
        memory = self.memory
        found = memory.frames.get(frame)
        if found is not None and (memory.session == self.session.number or memory.last_frame == frame):
            return found
        if self.source.is_animation:
            path = self.source.output_file(frame)
            if path:
                return load_sidecar(path, frame, self.source.height, self.source.width)
        return None

    def _guides(self, frame: int, previous_key: int | None):
        return self.source.guides(frame, previous_key if previous_key is not None else frame - 1)

    def _paint_key(self, frame: int, settings: FrameSettings, previous_key: int | None, is_current: bool) -> Painted:
        """Paint key ``frame`` from the previous painted key, warped by the exact motion between them."""
        temporal_settings, job = settings.temporal, settings.job
        guides = self._guides(frame, previous_key)
        previous = self._painted(previous_key) if previous_key is not None and temporal_settings.use_feedback else None
        started = time.perf_counter()
        latent, field_ = self.noise(frame, settings, previous_key, guides)
        request = PaintRequest(frame=frame, guides=guides, job=job, seed=self._seed(frame, settings), noise=latent,
                               depth_range=self.session.depth_range(self.source, frame, guides, self.normalization),
                               is_current=is_current)
        start_view = None
        if previous is not None:
            feedback = temporal.feedback_from(previous.picture, guides.vector, guides.occlusion,
                                              temporal_settings.strength)
            # Frame 2 starts from frame 1 itself: holding it to frame 1 would change nothing.
            holds = temporal_settings.hold_to_start > 0 and previous_key != self.source.shot(frame).start
            if holds or temporal_settings.color_coherence > 0:
                start_view = self._start_view(frame, previous_key, guides)
            if holds and start_view is not None:
                feedback = temporal.held_to_start(feedback, start_view, temporal_settings.hold_to_start,
                                                  temporal_settings.strength)
            # Colour coherence on the start picture, as Deforum does (and on the painting, below).
            request.init_image = self._anchored(feedback.init_image, frame, temporal_settings)
            request.strength_map = feedback.strength
            request.faithful_encoding = temporal_settings.faithful_encoding
            if job.scheduler not in FUSION_INCOMPATIBLE_SAMPLERS:
                request.fusion, request.fusion_end = temporal_settings.fusion, temporal_settings.fusion_end
        spent = time.perf_counter() - started
        # Noted before painting: the frame in progress is the last note (scripts and tests watch it).
        note = (FrameNote(frame, "fresh", seed=request.seed, noise_mode=temporal_settings.noise_mode)
                if previous is None else FrameNote(frame, "feedback", previous_key, temporal_settings.strength, spent,
                                                   request.seed, temporal_settings.noise_mode))
        notes = self.session.notes
        notes.append(note)
        noted = len(notes) - 1
        picture = self.painter.paint(request)
        if start_view is not None and temporal_settings.color_coherence > 0:
            started = time.perf_counter()
            picture = temporal.colour_held_to_start(picture, start_view, temporal_settings.color_coherence)
            notes[noted] = dataclasses.replace(note, feedback_seconds=spent + time.perf_counter() - started)
        if previous is None and (self.memory.anchor is None or frame == self.source.shot(frame).start):
            self.memory.anchor = temporal.ColorAnchor.of(picture)
        if frame == self.source.shot(frame).start:
            self.memory.start = (frame, picture)
        return Painted(picture, latent, field_, job.seed if field_ is not None else None)

    @staticmethod
    def _seed(frame: int, settings: FrameSettings) -> int:
        return settings.job.seed + frame if settings.temporal.noise_mode == "RANDOM" else settings.job.seed

    # -- noise ----------------------------------------------------------------------------
    def noise(self, frame: int, settings: FrameSettings, previous_key: int | None, guides=None):
        """(latent noise, WARPED state) frame ``frame`` starts from. A function of the seed, the
        shot, the noise mode and the exact motion only: never of what was painted, so Guides mode,
        a resumed render and a farm machine get the very same noise."""
        height, width = self.source.height, self.source.width
        mode, seed = settings.temporal.noise_mode, settings.job.seed
        if mode == "RANDOM":
            return noise.shot_noise(height, width, seed + frame).latent(), None
        if mode in latent_walk.MODES:  # DRIFT and LOOP: latent walks over the shot
            temporal_settings, shot = settings.temporal, self.source.shot(frame)
            angle_at = temporal_settings.drift_angle_at or (lambda _frame: temporal_settings.noise_drift)
            shape = noise.latent_shape(height, width) + (noise.CHANNELS,)
            return latent_walk.noise_for(mode, seed, shot.start, shot.end, frame, shape, angle_at=angle_at,
                                         turns=temporal_settings.loop_turns), None
        if mode != "WARPED":
            return noise.seed_latent(height, width, seed), None
        field_ = self._noise_field(frame, seed, previous_key, settings, guides)
        return field_.latent(), field_

    def _noise_field(self, frame: int, seed: int, previous_key: int | None, settings: FrameSettings,
                     guides=None) -> noise.NoiseField:
        height, width = self.source.height, self.source.width
        # Walk back over the keys to the latest one whose noise is known (or the shot's start)...
        chain, key, known = [], frame, None
        while True:
            known = self._known_noise(seed, key)
            if known is not None:
                break
            chain.append(key)
            before = previous_key if key == frame else self.previous_key(key, settings)
            if before is None:
                known = noise.shot_noise(height, width, seed)
                chain.pop()
                self.memory.noise_fields[(seed, key)] = known
                break
            key = before
        # ...then carry it forward, key by key, with the exact motion between consecutive keys.
        field_ = known
        for key in reversed(chain):
            before = previous_key if key == frame else self.previous_key(key, settings)
            motion = guides if key == frame and guides is not None else self.source.guides(key, before)
            field_ = noise.warp_field(field_, motion.vector, motion.occlusion, noise.frame_rng(seed, key))
            self.memory.noise_fields[(seed, key)] = field_
        return field_

    def _known_noise(self, seed: int, frame: int) -> noise.NoiseField | None:
        found = self.memory.noise_fields.get((seed, frame))
        if found is not None:
            return found
        painted = self.memory.frames.get(frame) or self._painted(frame)
        if painted is not None and painted.noise_field is not None and painted.noise_seed == seed:
            return painted.noise_field
        return None

    def _start_view(self, frame: int, other: int | None, guides) -> temporal.StartView | None:
        """The shot's first painting as frame ``frame`` sees it (``guides``: the frame's guides
        relative to frame ``other``, reused when that is the start), or None for the shot's first
        frame itself or where that painting is lost."""
        start = self.source.shot(frame).start
        if frame == start:
            return None
        memory = self.memory
        if memory.start is None or memory.start[0] != start:  # resumed mid-shot: the painting is on disk
            painted = self._painted(start)
            if painted is None:
                return None
            memory.start = (start, painted.picture)
        motion = guides if other == start else self.source.guides(frame, start)
        return temporal.start_view(memory.start[1], motion.vector, motion.occlusion)

    # -- colour ---------------------------------------------------------------------------
    def _anchored(self, picture: np.ndarray, frame: int, settings: TemporalSettings) -> np.ndarray:
        """``picture`` (for frame ``frame``) with its colours pulled toward the shot's first frame."""
        memory, strength = self.memory, settings.color_coherence
        if memory.anchor is None:  # resumed mid-shot: the first frame's painting is on disk
            start = self._painted(self.source.shot(frame).start)
            memory.anchor = temporal.ColorAnchor.of(start.picture if start is not None else picture)
        if strength <= 0:
            return picture
        return temporal.match_color(picture, memory.anchor, strength)

    def _remember(self, frame: int, painted: Painted, cadence: int) -> None:
        memory = self.memory
        memory.frames[frame] = painted
        memory.last_frame = frame
        memory.keep_recent(frame, 2 * max(1, cadence) + 1)
        self._save(frame, painted)

    def _save(self, frame: int, painted: Painted) -> None:
        path = self.source.output_file(frame) if self.source.is_animation else ""
        if not path:
            return
        save_sidecar(path, frame, painted)
        if painted.noise_field is not None:
            before = self.previous_key(frame, self.source.settings(frame))
            if before is not None and self.source.output_file(before):
                forget_noise_state(self.source.output_file(before), before)

    # -- loops ----------------------------------------------------------------------------
    def _repaint_loop(self, shot: schedule.Shot, temporal_settings: TemporalSettings) -> None:
        """Repaint the shot's first frames with feedback running on from its last frame, and
        cross-fade them into the first take, so the last frame flows into the first."""
        length = min(temporal_settings.loop_frames, shot.end - shot.start)
        previous_frame, previous = shot.end, self.memory.frames[shot.end]
        for frame in range(shot.start, shot.start + length):
            settings = self.source.settings(frame)
            guides = self.source.guides(frame, previous_frame)
            feedback = temporal.feedback_from(previous.picture, guides.vector, guides.occlusion,
                                              settings.temporal.strength)
            latent, field_ = self._loop_noise(frame, settings, previous, guides)
            request = PaintRequest(frame=frame, guides=guides, job=settings.job, seed=self._seed(frame, settings),
                                   noise=latent, depth_range=self.session.depth_range(self.source, frame, guides,
                                                                                      self.normalization),
                                   init_image=self._anchored(feedback.init_image, frame, settings.temporal),
                                   strength_map=feedback.strength, is_current=False,
                                   faithful_encoding=settings.temporal.faithful_encoding)
            if settings.job.scheduler not in FUSION_INCOMPATIBLE_SAMPLERS:
                request.fusion, request.fusion_end = settings.temporal.fusion, settings.temporal.fusion_end
            picture = self.painter.paint(request)
            coherence = settings.temporal.color_coherence
            start_view = self._start_view(frame, previous_frame, guides) if coherence > 0 else None
            if start_view is not None:
                picture = temporal.colour_held_to_start(picture, start_view, coherence)
            self.session.notes.append(FrameNote(frame, "loop", previous_frame, settings.temporal.strength,
                                                seed=request.seed, noise_mode=settings.temporal.noise_mode))
            original = self._painted(frame)
            weight = schedule.loop_blend(frame, shot, length)
            final = picture if original is None else weight * picture + (1.0 - weight) * original.picture
            self.session.rewrite(self.source.name, frame, final.astype(np.float32))
            previous_frame, previous = frame, Painted(picture, latent, field_, settings.job.seed)

    def _loop_noise(self, frame: int, settings: FrameSettings, previous: Painted, guides):
        """A loop repaint's noise: WARPED carries the last frame's noise on over the seam."""
        if settings.temporal.noise_mode == "WARPED" and previous.noise_field is not None:
            field_ = noise.warp_field(previous.noise_field, guides.vector, guides.occlusion,
                                      noise.frame_rng(settings.job.seed, frame))
            return field_.latent(), field_
        return self.noise(frame, settings, None)[0], None

    # -- cadence ----------------------------------------------------------------------------
    def _in_between(self, frame: int, step: schedule.CadenceStep) -> np.ndarray:
        before = self._painted(step.before)
        if before is None:  # the key before was never painted (a render started mid-way): paint it now
            before = self._paint_ahead(step.before)
        after = self.memory.frames.get(step.after) if self.memory.session == self.session.number else None
        if after is None:
            self.memory.frames[step.before] = before
            after = self._paint_ahead(step.after)
        to_before = self.source.guides(frame, step.before)
        to_after = self.source.guides(frame, step.after)
        return temporal.in_between(before.picture, to_before.vector, to_before.occlusion,
                                   after.picture, to_after.vector, to_after.occlusion, step.position)

    def _paint_ahead(self, frame: int) -> Painted:
        """Paint key ``frame`` now (the frames before it need it), from the key before it."""
        settings = self.source.settings(frame)
        painted = self._paint_key(frame, settings, self.previous_key(frame, settings), is_current=False)
        self.memory.frames[frame] = painted
        self._save(frame, painted)
        return painted
