"""Painting a shot in windows of a video model (a motion module), joined by exact motion. No ``bpy``.

A motion module paints ``context_frames`` frames at once. A shot longer than that is painted in
windows that overlap by ``context_overlap`` frames. Where diffusers' FreeNoise averages the
overlapping latents blindly, Silk knows where every surface point of one frame lies in any other:
the next window starts (video-to-video) from the previous window's frames, each new frame from
the nearest painted frame warped to its exact position, repainted freely where that frame did
not see the surface (occlusion) and more freely the further it lies in time; the frames both
windows paint are then cross-faded by nearness in time. With a loop the last window wraps
around the shot and ends on the shot's first frames, so the take's last frame flows into its first.

A window is the unit of work: its painting is kept as one sidecar file
(``<output folder>/.silk/window-<first>-<last>.npz``), so a render that stops mid-shot redoes
at most the window it was in. ``WindowPainter`` is what the render engine calls per frame.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from . import temporal
from .schedule import Shot

log = logging.getLogger("silk")

DEFAULT_CONTEXT_FRAMES = 16
DEFAULT_CONTEXT_OVERLAP = 4
SIDECAR_FOLDER = ".silk"  # the same folder as the per-frame sidecars (animation.SIDECAR_FOLDER)


@dataclass(frozen=True)
class Window:
    """Frames painted together, in order. The first ``lead`` were painted by the window before
    (the overlap that joins them); with a loop, the last ``tail`` are the shot's first frames,
    painted by the first window, to which the wrapping window joins the shot's end."""

    index: int
    frames: tuple
    lead: int = 0
    tail: int = 0

    @property
    def first(self) -> int:
        """The frame on which the render paints this window."""
        return self.frames[0]

    @property
    def new_frames(self) -> tuple:
        """The frames no earlier window painted."""
        return self.frames[self.lead:len(self.frames) - self.tail]


def schedule_windows(shot: Shot, context_frames: int = DEFAULT_CONTEXT_FRAMES,
                     overlap: int = DEFAULT_CONTEXT_OVERLAP, loop: bool = False) -> list[Window]:
    """The windows of a shot: ``context_frames`` each, as few as overlap by at least ``overlap``
    frames, spread evenly from the shot's first frame to its last (longer overlaps rather than a
    short last window). With ``loop``, one more window wraps around: the
    shot's last half window of frames, then its first half window."""
    length = shot.end - shot.start + 1
    context = max(1, int(context_frames))
    overlap = min(max(0, int(overlap)), context - 1)
    if length <= context:
        windows = [Window(0, tuple(range(shot.start, shot.end + 1)))]
    else:
        # As few windows as keep every overlap at least `overlap` frames, spread evenly over the shot.
        count = -(-(length - overlap) // (context - overlap))
        starts = [shot.start + round(index * (length - context) / (count - 1)) for index in range(count)]
        windows = []
        for index, start in enumerate(starts):
            lead = 0 if index == 0 else starts[index - 1] + context - start
            windows.append(Window(index, tuple(range(start, start + context)), lead))
    if loop and length > 1:
        # The wrap: the shot's last frames then its first ones, half a window each, so the seam
        # between the last frame and the first lies in the middle of a window.
        size = min(context, length)
        tail = size // 2
        lead = size - tail
        frames = tuple(range(shot.end - lead + 1, shot.end + 1)) + tuple(range(shot.start, shot.start + tail))
        windows.append(Window(len(windows), frames, lead, tail))
    return windows


def window_for(windows: list[Window], frame: int) -> Window:
    """The window a render paints (or has painted) by the time it reaches ``frame``: the last
    one, in order, that starts at or before it and holds it (the wrap of a loop excluded: it
    is painted at the shot's end)."""
    found = None
    for window in windows:
        if window.tail:
            continue
        if window.first <= frame and frame in window.frames:
            found = window
    if found is None:
        raise ValueError(f"frame {frame} is in no window of {windows}")
    return found


def blend_weight(window: Window, position: int) -> float:
    """How much of ``window``'s painting a frame it shares with another window takes: rising
    over the lead overlap (nearer the window's own frames, more of it), falling over the tail."""
    count = len(window.frames)
    if position < window.lead:
        return (position + 1) / (window.lead + 1)
    if position >= count - window.tail:
        return (count - position) / (window.tail + 1)
    return 1.0


@dataclass
class JoinStart:
    """What a window starts from: an initial video and each pixel's strength."""

    init_video: np.ndarray  # (frames, H, W, 3) display sRGB
    masks: np.ndarray  # (frames, H, W) denoising strength per pixel
    sources: tuple  # per frame: the painted frame it starts from


def join_start(window: Window, painted: dict, motion_fn, strength: float) -> JoinStart | None:
    """The window's start from ``painted`` ({frame: picture}, what earlier windows painted):
    a painted frame starts from its own painting at ``strength``; a new frame from the nearest
    painted frame of the window (in time) warped to its exact position by ``motion_fn(frame,
    source) -> (vector, occlusion)``, repainted fully where that frame did not see the surface,
    and elsewhere with a strength rising from ``strength`` toward 1 with the distance in time.
    None when nothing in the window was painted (the shot's first window)."""
    known = [position for position, frame in enumerate(window.frames) if frame in painted]
    if not known:
        return None
    reach = max(1, len(window.frames) - len(known))
    pictures, masks, sources = [], [], []
    for position, frame in enumerate(window.frames):
        if frame in painted:
            picture = np.asarray(painted[frame], dtype=np.float32)[..., :3]
            pictures.append(picture)
            masks.append(np.full(picture.shape[:2], float(strength), np.float32))
            sources.append(frame)
            continue
        nearest = min(known, key=lambda known_position: (abs(known_position - position), -known_position))
        source = window.frames[nearest]
        vector, occlusion = motion_fn(frame, source)
        distance = abs(nearest - position)
        feedback = temporal.feedback_from(np.asarray(painted[source], dtype=np.float32), vector, occlusion,
                                          far_strength(strength, distance, reach))
        pictures.append(feedback.init_image)
        masks.append(feedback.strength)
        sources.append(source)
    return JoinStart(np.stack(pictures).astype(np.float32), np.stack(masks).astype(np.float32), tuple(sources))


def far_strength(strength: float, distance: int, reach: int) -> float:
    """The strength for a surface seen ``distance`` frames away: ``strength`` next to it, 1 at
    ``reach`` frames (the further, the less the warped picture says about this frame)."""
    return float(strength + (1.0 - strength) * min(1.0, max(0, distance - 1) / max(1, reach)))


def blend(previous: np.ndarray, current: np.ndarray, weight: float) -> np.ndarray:
    """A frame two windows painted: ``weight`` of the current window's painting."""
    return (weight * np.asarray(current, np.float32)[..., :3]
            + (1.0 - weight) * np.asarray(previous, np.float32)[..., :3]).astype(np.float32)


# -- window sidecars --------------------------------------------------------------------
def window_sidecar_path(frame_path: str, window: Window) -> str:
    """Next to the frame files: ``.silk/window-<first>-<last>[-loop].npz``."""
    folder = os.path.dirname(frame_path)
    suffix = "-loop" if window.tail else ""
    return os.path.join(folder, SIDECAR_FOLDER, f"window-{window.frames[0]}-{window.frames[-1]}{suffix}.npz")


def save_window(path: str, window: Window, frames: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + ".part.npz"
    np.savez(temporary, frames=np.asarray(frames, np.float16), numbers=np.asarray(window.frames, np.int64))
    os.replace(temporary, path)  # whole or not at all


def load_window(path: str, window: Window, height: int, width: int) -> np.ndarray | None:
    """A window's painting, if its sidecar exists and is of this window at this size."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:  # never unpickle
            frames = np.asarray(data["frames"], dtype=np.float32)
            numbers = tuple(int(n) for n in data["numbers"])
    except (OSError, ValueError, KeyError) as error:
        log.warning("Ignoring the unreadable window file %s: %s", path, error)
        return None
    if numbers != window.frames or frames.shape != (len(window.frames), height, width, 3):
        return None
    return frames


# -- the painter --------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowSettings:
    context_frames: int = DEFAULT_CONTEXT_FRAMES
    context_overlap: int = DEFAULT_CONTEXT_OVERLAP
    strength: float = 0.5  # how freely frames a previous window painted are repainted
    use_loop: bool = False


# Paintings of the current take's recent windows: {(take key, window frames): frames}.
_paintings: dict = {}


def forget_all() -> None:
    _paintings.clear()


class WindowPainter:
    """The picture of each frame of a shot painted in windows.

    ``paint_fn(window, start)`` paints ``window.frames`` at once (``start``: a ``JoinStart`` or
    None) and returns (frames, H, W, 3) pictures; the engine computes every frame's guides for
    it and sends one video request. ``motion_fn(frame, other) -> (vector, occlusion)`` is the
    exact motion of ``frame`` relative to ``other``. ``frame_path(frame)`` is where the render
    saves a frame ("" when not saving: no sidecars). ``rewrite_fn(frame, picture)`` saves over
    a finished frame (the loop's first frames). Saved windows join the windows painted next;
    a window is taken from its sidecar instead of painted only with ``reuse_saved`` (a render
    that continues what is on disk, not one that paints anew)."""

    def __init__(self, shot: Shot, settings: WindowSettings, take_key, width: int, height: int, paint_fn, motion_fn,
                 frame_path, rewrite_fn=None, reuse_saved: bool = False):
        self.shot = shot
        self.settings = settings
        self.take_key = take_key
        self.width, self.height = width, height
        self.paint_fn = paint_fn
        self.motion_fn = motion_fn
        self.frame_path = frame_path
        self.rewrite_fn = rewrite_fn
        self.reuse_saved = reuse_saved
        self.windows = schedule_windows(shot, settings.context_frames, settings.context_overlap, settings.use_loop)
        self.painted_windows: list = []  # indices painted by this painter (for stats and tests)

    def picture(self, frame: int) -> np.ndarray:
        """Frame ``frame``'s picture, painting its window when the render reaches it. With a
        loop, the wrapping window is painted on its first frame and cross-faded into the shot's
        last frames as they come, and at the shot's end the first frames are rewritten."""
        picture = self._final_picture(frame)
        wrap = self.windows[-1] if self.windows[-1].tail else None
        if wrap is not None and frame in wrap.frames[:wrap.lead]:
            frames = self._painting(wrap)
            if frames is not None:
                position = wrap.frames.index(frame)
                picture = blend(picture, frames[position], blend_weight(wrap, position))
                if frame == self.shot.end and self.rewrite_fn is not None:
                    first = self._painting(self.windows[0])
                    for position in range(len(wrap.frames) - wrap.tail, len(wrap.frames)):
                        shot_frame = wrap.frames[position]
                        original = first[self.windows[0].frames.index(shot_frame)]
                        self.rewrite_fn(shot_frame, blend(original, frames[position], blend_weight(wrap, position)))
        return np.ascontiguousarray(picture[..., :3], dtype=np.float32)

    def _final_picture(self, frame: int) -> np.ndarray:
        """A frame's picture from the shot's windows (before a loop closes): its window's, cross-
        faded over the lead with the window before's, when that one is at hand."""
        window = window_for(self.windows, frame)
        frames = self._painting(window)
        position = window.frames.index(frame)
        picture = frames[position]
        if position < window.lead:
            previous = self.windows[window.index - 1]
            painted = self._painting(previous, paint=False)
            if painted is not None:
                picture = blend(painted[previous.frames.index(frame)], picture, blend_weight(window, position))
        return picture

    # -- windows ----------------------------------------------------------------------------
    def _painting(self, window: Window, paint: bool = True) -> np.ndarray | None:
        """The window's painting: remembered, from its sidecar, or (``paint``) painted now, joined
        to what is at hand of the windows it overlaps (never painting those: an F12 render or a
        resume paints one window). A loop's wrap is only painted with the first window at hand."""
        key = (self.take_key, window.frames)
        found = _paintings.get(key)
        if found is not None:
            return found
        path = window_sidecar_path(self.frame_path(window.first), window) if self.frame_path(window.first) else ""
        found = load_window(path, window, self.height, self.width) if path and (self.reuse_saved or not paint) \
            else None
        if found is None:
            if not paint:
                return None
            painted = self._known_paintings(window)
            if window.tail and not painted:
                log.warning("The loop is not closed: the shot's first window is neither remembered nor saved")
                return None
            start = join_start(window, painted, self.motion_fn, self.settings.strength)
            found = np.asarray(self.paint_fn(window, start), dtype=np.float32)
            if found.shape != (len(window.frames), self.height, self.width, 3):
                raise ValueError(f"the window painting is {found.shape}, expected "
                                 f"{(len(window.frames), self.height, self.width, 3)}")
            self.painted_windows.append(window.index)
            if path:
                save_window(path, window, found)
        self._keep(key, found)
        return found

    def _known_paintings(self, window: Window) -> dict:
        """What is at hand of the window's frames painted before: for a window, the window
        before's painting of the lead; for a loop's wrap, the final pictures of the shot's last
        frames and the first window's painting of its first frames."""
        if window.tail:
            first = self._painting(self.windows[0], paint=False)
            if first is None:
                return {}
            painted = {frame: self._final_picture(frame) for frame in window.frames[:window.lead]}
            for frame in window.frames[window.lead:]:
                painted[frame] = first[self.windows[0].frames.index(frame)]
            return painted
        if not window.lead:
            return {}
        previous = self.windows[window.index - 1]
        frames = self._painting(previous, paint=False)
        if frames is None:
            return {}
        return {frame: frames[previous.frames.index(frame)] for frame in window.frames[:window.lead]}

    def _keep(self, key, frames) -> None:
        """Remember the take's first window (loops), the one before and this one."""
        for other in [other for other in _paintings if other[0] != self.take_key]:
            del _paintings[other]  # one take at a time keeps memory bounded
        _paintings.pop(key, None)
        _paintings[key] = frames
        recent = [other for other in _paintings if other[1] != self.windows[0].frames]
        for other in recent[:-2]:
            del _paintings[other]
