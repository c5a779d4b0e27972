"""Which frames belong together and what each frame asks for: shots, cadence, prompt travel
and loop cross-fades. No ``bpy``."""
from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True)
class Shot:
    start: int
    end: int  # inclusive

    def __contains__(self, frame: int) -> bool:
        return self.start <= frame <= self.end


def shot_of(frame: int, frame_start: int, frame_end: int, cuts) -> Shot:
    """The shot holding ``frame``: from the last cut at or before it (or the range's start) to
    the frame before the next cut (or the range's end). Cuts are camera changes and frames the
    user marked as shot starts."""
    cuts = sorted({cut for cut in cuts if frame_start < cut <= frame_end})
    index = bisect.bisect_right(cuts, frame)
    start = cuts[index - 1] if index > 0 else frame_start
    end = cuts[index] - 1 if index < len(cuts) else frame_end
    return Shot(start, max(start, end))


@dataclass(frozen=True)
class CadenceStep:
    """How to make a frame under cadence: diffuse it (a key) or blend its two keys."""

    frame: int
    before: int
    after: int

    @property
    def is_key(self) -> bool:
        return self.before == self.frame

    @property
    def position(self) -> float:
        return 0.0 if self.after == self.before else (self.frame - self.before) / (self.after - self.before)


def cadence_step(frame: int, shot: Shot, cadence: int) -> CadenceStep:
    """Keys are every ``cadence``-th frame from the shot's start, and its last frame."""
    cadence = max(1, int(cadence))
    offset = (frame - shot.start) % cadence
    if offset == 0 or frame == shot.end:
        return CadenceStep(frame, frame, frame)
    before = frame - offset
    return CadenceStep(frame, before, min(before + cadence, shot.end))


@dataclass(frozen=True)
class PromptKey:
    frame: int
    prompt: str
    negative_prompt: str = ""


def travel(frames, frame: int, easing: float = 1.0) -> list[tuple[int, float]]:
    """How frame ``frame`` blends keys at ``frames`` (sorted): [(index, weight)], weights summing
    to 1. Before the first key and after the last one a single key holds; between two keys the
    weight travels from one to the other, evenly (``easing`` 0) or slow in and out (``easing``
    1, smoothstep), or in between. Prompts and image prompts travel alike."""
    if not frames:
        return []
    if frame <= frames[0]:
        return [(0, 1.0)]
    if frame >= frames[-1]:
        return [(len(frames) - 1, 1.0)]
    index = bisect.bisect_right(frames, frame)
    linear = (frame - frames[index - 1]) / (frames[index] - frames[index - 1])
    smooth = linear * linear * (3 - 2 * linear)
    weight = (1 - easing) * linear + easing * smooth
    if weight <= 0:
        return [(index - 1, 1.0)]
    return [(index - 1, 1.0 - weight), (index, weight)]


def prompt_mix(keys, frame: int, easing: float = 1.0) -> list[tuple[str, str, float]]:
    """The prompts frame ``frame`` blends, with weights summing to 1 (see ``travel``)."""
    keys = sorted(keys, key=lambda key: key.frame)
    return [(keys[index].prompt, keys[index].negative_prompt, weight)
            for index, weight in travel([key.frame for key in keys], frame, easing)]


def loop_blend(frame: int, shot: Shot, loop_frames: int) -> float:
    """For a looping shot: how much of the repainted-from-the-end version frame ``frame`` takes
    (1 at the shot's first frame, fading to 0 after ``loop_frames``); 0 outside the fade."""
    offset = frame - shot.start
    length = min(loop_frames, shot.end - shot.start)
    if offset < 0 or offset >= length or length <= 0:
        return 0.0
    return 1.0 - offset / length
