"""Latent walks: starting noise that drifts slowly from frame to frame (DRIFT) or walks a
closed circle over a shot (LOOP). No ``bpy``.

Both keep every frame's noise exactly unit Gaussian: DRIFT mixes the previous frame's
noise with fresh noise as ``cos(a) * previous + sin(a) * fresh`` and LOOP takes
``cos(phi) * A + sin(phi) * B`` of two independent fields, and cos^2 + sin^2 = 1.
Every frame's noise is a function of (seed, shot start, frame) alone, so a frame can be
painted without painting the ones before it: a render resumed mid-shot, a farm machine
rendering the second half, or a cadence key painted ahead get the same noise.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MODES = ("DRIFT", "LOOP")
# Keeps the streams of fresh noise, and of LOOP's two fields, apart from other uses of a seed.
_STREAM_FRESH, _STREAM_LOOP = 0x5D1F, 0x100B


def fresh_noise(seed: int, shot_start: int, frame: int, shape: tuple, stream: int = _STREAM_FRESH) -> np.ndarray:
    """Unit Gaussian noise of ``shape`` for one frame of one shot (float64)."""
    words = [int(seed) & 0xFFFFFFFF, int(shot_start) & 0xFFFFFFFF, int(frame) & 0xFFFFFFFF, stream]
    return np.random.default_rng(words).standard_normal(shape)


@dataclass
class _Chain:
    frame: int
    angles: tuple  # the angles used for the frames after the shot's start, in order
    noise: np.ndarray  # float64


class DriftWalk:
    """DRIFT noise: ``noise(start) = fresh(start)``, ``noise(t) = cos(a_t) noise(t-1) + sin(a_t) fresh(t)``.

    ``angle_at(frame)`` is the drift angle in radians as keyframed at ``frame`` (0 = the noise
    stays, pi/2 = fresh noise every frame). A frame's noise is computed by walking the chain
    from the shot's start; the last walk is remembered, so an animation rendered in order
    costs one step per frame."""

    def __init__(self):
        self._chains: dict = {}

    def noise(self, seed: int, shot_start: int, frame: int, shape: tuple,
              angle_at: Callable[[int], float]) -> np.ndarray:
        shape = tuple(int(size) for size in shape)
        frame = max(int(frame), int(shot_start))
        angles = tuple(float(angle_at(step)) for step in range(shot_start + 1, frame + 1))
        key = (int(seed), int(shot_start), shape)
        chain = self._chains.get(key)
        if chain is None or chain.frame > frame or chain.angles != angles[:len(chain.angles)]:
            chain = _Chain(shot_start, (), fresh_noise(seed, shot_start, shot_start, shape))
        noise = chain.noise
        for index in range(len(chain.angles), len(angles)):
            angle = angles[index]
            step = shot_start + 1 + index
            noise = math.cos(angle) * noise + math.sin(angle) * fresh_noise(seed, shot_start, step, shape)
        if len(self._chains) > 4:  # a few shots' chains; each is one latent-sized array
            self._chains.clear()
        self._chains[key] = _Chain(frame, angles, noise)
        return noise.astype(np.float32)


def loop_phase(frame: int, shot_start: int, shot_end: int, turns: int = 1) -> float:
    """LOOP's angle at ``frame``: from 0 at the shot's start by equal steps, so that the step
    after the last frame would reach ``2 pi turns``, the first frame's noise again."""
    length = max(1, int(shot_end) - int(shot_start) + 1)
    return 2.0 * math.pi * max(1, int(turns)) * (int(frame) - int(shot_start)) / length


def loop_noise(seed: int, shot_start: int, shot_end: int, frame: int, shape: tuple, turns: int = 1) -> np.ndarray:
    """LOOP noise: ``cos(phi) A + sin(phi) B`` with A and B fixed per (seed, shot)."""
    shape = tuple(int(size) for size in shape)
    first = fresh_noise(seed, shot_start, 0, shape, _STREAM_LOOP)
    second = fresh_noise(seed, shot_start, 1, shape, _STREAM_LOOP)
    phase = loop_phase(frame, shot_start, shot_end, turns)
    return (math.cos(phase) * first + math.sin(phase) * second).astype(np.float32)


_drift = DriftWalk()


def noise_for(mode: str, seed: int, shot_start: int, shot_end: int, frame: int, shape: tuple,
              angle_at: Callable[[int], float] = lambda _frame: 0.0, turns: int = 1) -> np.ndarray:
    """The latent noise (float32, ``shape``) a frame of a DRIFT or LOOP shot starts from."""
    if mode == "DRIFT":
        return _drift.noise(seed, shot_start, frame, shape, angle_at)
    if mode == "LOOP":
        return loop_noise(seed, shot_start, shot_end, frame, shape, turns)
    raise ValueError(f"{mode!r} is not a latent walk mode ({', '.join(MODES)})")


# -- measuring -----------------------------------------------------------------------------
def correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation of two noise fields, over all their values."""
    a = np.asarray(first, dtype=np.float64).ravel()
    b = np.asarray(second, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / math.sqrt((a @ a) * (b @ b)))


def step_sizes(noises: list) -> np.ndarray:
    """RMS change between consecutive noise fields, and last to first as the final entry."""
    closed = list(noises) + [noises[0]]
    return np.array([float(np.sqrt(np.mean((np.asarray(b, np.float64) - np.asarray(a, np.float64)) ** 2)))
                     for a, b in zip(closed, closed[1:])])
