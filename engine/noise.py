"""Latent noise that travels with the scene's exact motion and stays white Gaussian noise. No ``bpy``.

Re-sampling last frame's latent noise at each latent pixel (nearest or bilinear) either loses
motion below half a latent pixel (4 frame pixels) per frame or duplicates and blurs samples under
zoom: the field stops being N(0, 1) white noise. Here the noise is the integral of a finer white
noise field ("How I Warped Your Noise", Chang et al. 2024), carried from frame to frame as a
per-frame state of particles (Go-with-the-Flow, Burgert et al. 2025):

- a latent pixel is the area-weighted sum of its ``subpixels x subpixels`` independent N(0, 1)
  particles, sum(sqrt(w) v) / sqrt(sum(w)) (so it is N(0, 1));
- each particle keeps its exact position inside its cell, so motion far below a latent pixel per
  frame accumulates instead of being rounded away;
- a frame moves every particle along the scene's exact motion; particles landing in the same cell
  merge the same area-weighted way (still N(0, 1), and independent of every other cell, since no
  particle is used twice); a cell a magnification opens between particles gets half of a
  neighbour, split conditionally (Brownian-bridge style: the halves sum back to the parent); a
  surface new to the frame (disocclusion, the frame's edge) gets fresh N(0, 1) particles;
  particles whose surface is hidden or leaves the frame end.

Every cell is then a function of a disjoint set of independent N(0, 1) values: the field stays
exactly white Gaussian noise under any motion, zoom and occlusion, and a surface point keeps its
noise as long as it stays visible. Positions never depend on values, so nothing biases them.

Motion convention: ``vector`` is frame t's Vector pass (x, y) = position in the previous frame
minus the position now, in frame pixels, +y up; ``occlusion`` > 0.5 where frame t's surface was
not visible in the previous frame (see temporal.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

LATENT_FACTOR = 8  # the VAE's downsampling: a latent pixel covers 8x8 frame pixels
SUBPIXELS = 8  # particles per latent pixel along each axis: one per frame pixel
CHANNELS = 4


def latent_shape(height: int, width: int) -> tuple[int, int]:
    """The latent noise's (rows, columns) for a frame: ceil(size / 8), as the worker expects."""
    return -(-int(height) // LATENT_FACTOR), -(-int(width) // LATENT_FACTOR)


@dataclass
class NoiseField:
    """The noise state of one frame: particle values and their positions inside their cells."""

    values: np.ndarray  # (rows * subpixels, columns * subpixels, 4) float32, each N(0, 1)
    offsets: np.ndarray  # (rows * subpixels, columns * subpixels, 2) float32 (x right, y down), in [-0.5, 0.5]
    weights: np.ndarray  # (rows * subpixels, columns * subpixels) float32: the area each particle stands for
    subpixels: int = SUBPIXELS

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.values.shape[0] // self.subpixels, self.values.shape[1] // self.subpixels

    def latent(self) -> np.ndarray:
        """The latent noise (rows, columns, 4) float32: each pixel the area-weighted sum of its
        particles, sum(sqrt(w) v) / sqrt(sum(w)): N(0, 1) for any positive weights."""
        rows, columns = self.latent_shape
        s = self.subpixels
        root = np.sqrt(self.weights.astype(np.float64))[..., None]
        blocks = (root * self.values).reshape(rows, s, columns, s, self.values.shape[2]).sum(axis=(1, 3))
        total = self.weights.astype(np.float64).reshape(rows, s, columns, s).sum(axis=(1, 3))
        return (blocks / np.sqrt(total)[..., None]).astype(np.float32)


def frame_rng(seed: int, frame: int) -> np.random.Generator:
    """The generator for frame ``frame``'s fresh particles (the same in every render and mode)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(frame) & 0xFFFFFFFF, 0x5111])


def fresh_field(height: int, width: int, rng: np.random.Generator, subpixels: int = SUBPIXELS) -> NoiseField:
    """Independent N(0, 1) particles at their cells' centres, for a frame of ``height x width`` pixels."""
    rows, columns = latent_shape(height, width)
    shape = (rows * subpixels, columns * subpixels)
    values = rng.standard_normal(shape + (CHANNELS,)).astype(np.float32)
    return NoiseField(values, np.zeros(shape + (2,), dtype=np.float32), np.ones(shape, dtype=np.float32), subpixels)


def shot_noise(height: int, width: int, seed: int, subpixels: int = SUBPIXELS) -> NoiseField:
    """A shot's first noise (and FIXED mode's noise for the whole shot): from the seed alone."""
    return fresh_field(height, width, np.random.default_rng(int(seed) & 0xFFFFFFFF), subpixels)


@functools.lru_cache(maxsize=8)
def seed_latent(height: int, width: int, seed: int) -> np.ndarray:
    """The latent of ``shot_noise`` (FIXED mode's noise, every frame of a shot), made once."""
    latent = shot_noise(height, width, seed).latent()
    latent.setflags(write=False)
    return latent


def warp_field(field: NoiseField, vector: np.ndarray, occlusion: np.ndarray, rng: np.random.Generator) -> NoiseField:
    """Carry ``field`` (the previous frame's noise) along frame t's exact backward motion."""
    height, width = vector.shape[:2]
    s = field.subpixels
    fine_h, fine_w = field.values.shape[:2]
    cell = LATENT_FACTOR / s  # frame pixels per particle cell
    # Every cell of frame t: its centre in frame pixels, and where its surface was in the previous frame.
    cols = (np.arange(fine_w) + 0.5) * cell - 0.5
    rows = (np.arange(fine_h) + 0.5) * cell - 0.5
    pixel_cols = np.clip(np.rint(cols).astype(np.int64), 0, width - 1)
    pixel_rows = np.clip(np.rint(rows).astype(np.int64), 0, height - 1)
    motion = np.asarray(vector, dtype=np.float32)[pixel_rows][:, pixel_cols]
    hidden = np.asarray(occlusion)[pixel_rows][:, pixel_cols] > 0.5
    grid_y, grid_x = np.mgrid[0:fine_h, 0:fine_w].astype(np.float64)
    back_x = grid_x + motion[..., 0] / cell  # in cell units
    back_y = grid_y - motion[..., 1] / cell
    source_x, source_y = _round(back_x), _round(back_y)
    seen = (~hidden & (source_x >= 0) & (source_x < fine_w) & (source_y >= 0) & (source_y < fine_h)).ravel()

    # The forward motion of each previous cell: the backward motion of the cells that came from it,
    # inverted (splatted onto the previous frame's grid), and spread one cell into gaps (minification).
    count = fine_h * fine_w
    source = (source_y * fine_w + source_x).ravel()[seen]
    forward_x = (grid_x - back_x).ravel()[seen]
    forward_y = (grid_y - back_y).ravel()[seen]
    hits = np.bincount(source, minlength=count).astype(np.float64)
    sum_x = np.bincount(source, forward_x, minlength=count)
    sum_y = np.bincount(source, forward_y, minlength=count)
    hits, sum_x, sum_y = (a.reshape(fine_h, fine_w) for a in (hits, sum_x, sum_y))
    sum_x, sum_y, hits = _spread(sum_x, hits), _spread(sum_y, hits), _spread(hits, hits)
    moves = hits > 0

    # Move each particle that has somewhere to go, keeping its exact position.
    position_x = grid_x + field.offsets[..., 0] + np.where(moves, sum_x / np.maximum(hits, 1e-12), 0.0)
    position_y = grid_y + field.offsets[..., 1] + np.where(moves, sum_y / np.maximum(hits, 1e-12), 0.0)
    target_x, target_y = _round(position_x), _round(position_y)
    inside = moves & (target_x >= 0) & (target_x < fine_w) & (target_y >= 0) & (target_y < fine_h)
    target = np.where(inside, target_y * fine_w + np.clip(target_x, 0, fine_w - 1), 0).ravel()
    # A particle landing on a surface frame t shows for the first time (or behind it) ends there.
    alive = inside.ravel() & ~hidden.ravel()[target]
    target = target[alive]

    # Merge particles sharing a cell, weighted by area: sum(sqrt(w) v) / sqrt(sum(w)) keeps N(0, 1)
    # and loses nothing of what each stood for (two halves of a split merge back into their parent).
    landed = np.bincount(target, minlength=count).astype(np.float64)
    weight = field.weights.ravel()[alive].astype(np.float64)
    values = field.values.reshape(-1, field.values.shape[2])[alive].astype(np.float64) * np.sqrt(weight)[:, None]
    merged = np.stack([np.bincount(target, values[:, k], minlength=count) for k in range(values.shape[1])], axis=1)
    weights = np.bincount(target, weight, minlength=count)
    merged /= np.sqrt(np.maximum(weights, 1e-12))[:, None]
    empty = landed == 0
    _split_into_gaps(merged, weights, empty, seen, (fine_h, fine_w), rng)
    fresh = rng.standard_normal(merged.shape)
    merged[empty] = fresh[empty]
    weights[empty] = 1.0
    offset_x = np.bincount(target, (position_x - target_x).ravel()[alive], minlength=count) / np.maximum(landed, 1)
    offset_y = np.bincount(target, (position_y - target_y).ravel()[alive], minlength=count) / np.maximum(landed, 1)
    offsets = np.stack([offset_x, offset_y], axis=-1).reshape(fine_h, fine_w, 2)
    # Positions and areas are kept at float16 precision (ample for where a particle sits) so a take's
    # sidecar holds them in half the space and a resumed render continues with the very same state.
    return NoiseField(merged.reshape(field.values.shape).astype(np.float32),
                      _half(np.clip(offsets, -0.5, 0.5)), _half(np.maximum(weights.reshape(fine_h, fine_w), 1e-4)), s)


def _half(values: np.ndarray) -> np.ndarray:
    return np.asarray(values).astype(np.float16).astype(np.float32)


def _split_into_gaps(values: np.ndarray, weights: np.ndarray, empty: np.ndarray, seen: np.ndarray, shape,
                     rng) -> None:
    """Fill the cells a magnification opened between particles by splitting a neighbour in two
    (in place): X = (a + b) / sqrt(2) with a, b independent N(0, 1) given X (a = (X + Z) / sqrt(2),
    b = (X - Z) / sqrt(2)), so the surface keeps its noise as it grows instead of getting fresh
    noise in every gap; each half stands for half the area. ``empty`` is updated; surfaces new to
    the frame are left to fresh noise."""
    height, width = shape
    grid = values.reshape(height, width, -1)
    area = weights.reshape(height, width)
    gaps = (empty & seen).reshape(height, width)
    filled = ~empty.reshape(height, width)
    for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0)):
        # Cells whose neighbour at (dy, dx) holds a particle; each neighbour splits at most once per direction.
        here = np.zeros((height, width), dtype=bool)
        here[max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)] = filled[
            max(0, dy):height - max(0, -dy) or None, max(0, dx):width - max(0, -dx) or None]
        here &= gaps
        rows, cols = np.nonzero(here)
        if rows.size == 0:
            continue
        parent = grid[rows + dy, cols + dx]
        spread = rng.standard_normal(parent.shape)
        grid[rows + dy, cols + dx] = (parent + spread) / np.sqrt(2.0)
        grid[rows, cols] = (parent - spread) / np.sqrt(2.0)
        area[rows + dy, cols + dx] *= 0.5
        area[rows, cols] = area[rows + dy, cols + dx]
        gaps[rows, cols] = False
        filled[rows, cols] = True
    empty[:] = ~filled.ravel()


def _round(values: np.ndarray) -> np.ndarray:
    """Nearest cell, halves always up: ``np.rint`` rounds halves to even, which would send
    neighbouring particles with the same offset to the same cell."""
    return np.floor(values + 0.5).astype(np.int64)


def _spread(values: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """``values`` where ``hits`` > 0; elsewhere the sum of the 4-neighbours' (one cell of spread)."""
    padded = np.pad(values, 1)
    padded_hits = np.pad(hits > 0, 1)
    neighbours = np.zeros_like(values)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        part = padded[dy:dy + values.shape[0], dx:dx + values.shape[1]]
        has = padded_hits[dy:dy + values.shape[0], dx:dx + values.shape[1]]
        neighbours += np.where(has, part, 0.0)
    return np.where(hits > 0, values, neighbours)


def upscale_latent(latent: np.ndarray, height: int, width: int) -> np.ndarray:
    """Latent noise (rows, columns, 4) shown at the frame's size: each latent pixel over its 8x8
    block, cropped to the frame (the ``Noise`` render pass)."""
    large = np.repeat(np.repeat(np.asarray(latent, dtype=np.float32), LATENT_FACTOR, axis=0), LATENT_FACTOR, axis=1)
    return np.ascontiguousarray(large[:height, :width])


# -- measures of a noise field (the benchmark's and the tests') ---------------------------------
def lag1_autocorrelation(latent: np.ndarray) -> float:
    """Mean correlation of horizontally and vertically adjacent latent pixels (0 for white noise)."""
    data = np.asarray(latent, dtype=np.float64)
    data = (data - data.mean(axis=(0, 1))) / np.maximum(data.std(axis=(0, 1)), 1e-12)
    horizontal = (data[:, 1:] * data[:, :-1]).mean()
    vertical = (data[1:] * data[:-1]).mean()
    return float((horizontal + vertical) / 2)


def unique_fraction(latent: np.ndarray) -> float:
    values = np.asarray(latent).ravel()
    return float(np.unique(values).size / values.size)
