"""Temporal feedback maths: warping by exact motion, hole filling, per-pixel strength,
warped noise, colour coherence, cadence in-betweens and the coherence metrics. No ``bpy``.

Conventions (see guides.md): images are (H, W, C) float32, rows top-down; ``vector`` is
frame t's Vector pass, whose (x, y) is the position in the previous frame minus the
position now, in pixels, +y UP. So pixel (row, col) of frame t came from
(col + vx, row - vy) in frame t-1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# -- warping ------------------------------------------------------------------------
def source_coordinates(vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel of frame t was in the other frame: (x, y) in pixel-centre coordinates."""
    height, width = vector.shape[:2]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    return cols + vector[..., 0], rows - vector[..., 1]


def warp(image: np.ndarray, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Backward-warp ``image`` (the other frame) onto frame t with bilinear sampling.

    Returns the warped image and ``inside``: False where the source lies outside the frame.
    """
    source = np.asarray(image, dtype=np.float32)
    height, width = source.shape[:2]
    x, y = source_coordinates(vector)
    inside = (x > -0.5) & (x < width - 0.5) & (y > -0.5) & (y < height - 0.5)
    x = np.clip(x, 0, width - 1)
    y = np.clip(y, 0, height - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), width - 2) if width > 1 else np.zeros_like(x, dtype=np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), height - 2) if height > 1 else np.zeros_like(y, dtype=np.int64)
    x1 = np.minimum(x0 + 1, width - 1)
    y1 = np.minimum(y0 + 1, height - 1)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    flat = source if source.ndim == 3 else source[..., None]
    top = flat[y0, x0] * (1 - fx) + flat[y0, x1] * fx
    bottom = flat[y1, x0] * (1 - fx) + flat[y1, x1] * fx
    warped = (top * (1 - fy) + bottom * fy).astype(np.float32)
    return (warped if source.ndim == 3 else warped[..., 0]), inside


def warp_nearest(image: np.ndarray, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour backward warp: keeps the statistics of noise (no blurring)."""
    height, width = image.shape[:2]
    x, y = source_coordinates(vector)
    inside = (x > -0.5) & (x < width - 0.5) & (y > -0.5) & (y < height - 0.5)
    cols = np.clip(np.rint(x).astype(np.int64), 0, width - 1)
    rows = np.clip(np.rint(y).astype(np.int64), 0, height - 1)
    return image[rows, cols], inside


def dilate(mask: np.ndarray, pixels: int = 1) -> np.ndarray:
    """Grow a boolean mask by ``pixels`` (3x3 steps)."""
    grown = np.asarray(mask, dtype=bool).copy()
    for _ in range(pixels):
        padded = np.pad(grown, 1, mode="edge")
        grown = (padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
                 | padded[:-2, :-2] | padded[:-2, 2:] | padded[2:, :-2] | padded[2:, 2:])
    return grown


def fill_holes(image: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """Fill ``holes`` from the surrounding known pixels (push-pull: average down, spread up).

    A smooth, colour-plausible start for the pixels the warp cannot provide; diffusion then
    paints them freely (their strength is 1)."""
    known = ~np.asarray(holes, dtype=bool)
    if known.all():
        return np.asarray(image, dtype=np.float32)
    if not known.any():
        return np.full_like(image, 0.5, dtype=np.float32)
    values = np.asarray(image, dtype=np.float32) * known[..., None]
    weights = known.astype(np.float32)[..., None]
    levels = [(values, weights)]
    while min(values.shape[:2]) > 1:
        values, weights = _half(values), _half(weights)
        levels.append((values, weights))
    filled = levels[-1][0] / np.maximum(levels[-1][1], 1e-8)
    for values, weights in reversed(levels[:-1]):
        coarse = _double(filled, values.shape[:2])
        own = values / np.maximum(weights, 1e-8)
        trust = np.clip(weights, 0.0, 1.0)
        filled = own * trust + coarse * (1.0 - trust)
    return np.where(known[..., None], image, filled).astype(np.float32)


def _half(array: np.ndarray) -> np.ndarray:
    height, width = array.shape[:2]
    padded = np.pad(array, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    return 0.25 * (padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2])


def _double(array: np.ndarray, shape) -> np.ndarray:
    return np.repeat(np.repeat(array, 2, axis=0), 2, axis=1)[:shape[0], :shape[1]]


# -- feedback -------------------------------------------------------------------------
@dataclass
class Feedback:
    """What frame t starts from: the previous output warped, its holes filled, and how
    strongly each pixel is re-painted."""

    init_image: np.ndarray  # display sRGB (H, W, 3)
    strength: np.ndarray  # (H, W) denoising strength per pixel: ``strength`` where seen before, 1 in holes
    visible: np.ndarray  # (H, W) bool: the surface was visible in the previous frame (and inside it)


def feedback_from(previous_output: np.ndarray, vector: np.ndarray, occlusion: np.ndarray, strength: float,
                  grow: int = 1) -> Feedback:
    """Warp the previous output onto frame t by the exact motion and mark what is new."""
    warped, inside = warp(previous_output[..., :3], vector)
    new = (np.asarray(occlusion) > 0.5) | ~inside
    # Silhouettes: the 1-px ring around new pixels mixes both sides of an edge; re-paint it.
    holes = dilate(new, grow) if grow else new
    init = fill_holes(warped, holes)
    per_pixel = np.where(holes, 1.0, float(strength)).astype(np.float32)
    return Feedback(init_image=init, strength=per_pixel, visible=~holes)


@dataclass
class StartView:
    """The shot's first painting as frame t sees it: warped onto frame t by the exact motion
    between the two frames, and where frame t sees surfaces the first frame saw (silhouettes
    grown). Hold to start and the colour hold both read it; a frame computes it once."""

    picture: np.ndarray  # display sRGB (H, W, 3)
    seen: np.ndarray  # (H, W) bool


def start_view(start_picture: np.ndarray, vector: np.ndarray, occlusion: np.ndarray, grow: int = 1) -> StartView:
    """``vector``/``occlusion``: frame t's exact motion to the shot's first frame (any two
    frames of a scene have it, however far apart)."""
    warped, inside = warp(start_picture[..., :3], vector)
    return StartView(warped, coherence_mask(occlusion, vector, grow, inside=inside))


def held_to_start(feedback: Feedback, start: StartView, weight: float, strength: float) -> Feedback:
    """``feedback`` with the shot's first painting mixed into its start picture.

    Where the first frame saw the surface, the start picture moves ``weight`` of the way to
    its painting there; where the previous frame did not see it but the first did (a surface
    that was hidden for a while), it is the first painting, repainted at ``strength`` instead
    of anew. Each frame then starts from the same painting instead of from a chain of
    repaintings, whose small changes add up over a shot (colour drift, textures crawling)."""
    if weight <= 0:
        return feedback
    warped, seen = start.picture, start.seen
    both = (seen & feedback.visible)[..., None]
    revealed = seen & ~feedback.visible
    weight = float(min(weight, 1.0))
    init = np.where(both, (1.0 - weight) * feedback.init_image + weight * warped, feedback.init_image)
    init = np.where(revealed[..., None], warped, init).astype(np.float32)
    per_pixel = np.where(revealed, float(strength), feedback.strength).astype(np.float32)
    return Feedback(init_image=init, strength=per_pixel, visible=feedback.visible | seen)


def warp_noise(noise: np.ndarray, vector: np.ndarray, occlusion: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Carry the previous frame's latent noise (h, w, 4) along the motion; fresh noise where
    the surface is new. ``vector``/``occlusion`` are at the frame's resolution; the noise is
    about 8x smaller, so both are sampled at each latent pixel's centre."""
    small_h, small_w = noise.shape[:2]
    height, width = vector.shape[:2]
    rows = np.minimum(((np.arange(small_h) + 0.5) * height / small_h).astype(int), height - 1)
    cols = np.minimum(((np.arange(small_w) + 0.5) * width / small_w).astype(int), width - 1)
    small_vector = vector[rows][:, cols] * np.array([small_w / width, small_h / height, 1, 1], dtype=np.float32)
    warped, inside = warp_nearest(noise, small_vector)
    new = (occlusion[rows][:, cols] > 0.5) | ~inside
    fresh = rng.standard_normal(noise.shape).astype(np.float32)
    return np.where(new[..., None], fresh, warped).astype(np.float32)


# -- colour coherence -------------------------------------------------------------------
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_WHITE = np.array([0.95047, 1.0, 1.08883])


def _srgb_to_linear(v):
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(v):
    v = np.clip(v, 0.0, None)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1 / 2.4) - 0.055)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Display sRGB [0, 1] to CIELAB (D65)."""
    xyz = _srgb_to_linear(np.asarray(rgb, dtype=np.float64)[..., :3]) @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * _WHITE
    return np.clip(_linear_to_srgb(xyz @ np.linalg.inv(_RGB_TO_XYZ).T), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class ColorAnchor:
    """LAB mean and spread of a shot's first frame."""

    mean: tuple
    std: tuple

    @classmethod
    def of(cls, rgb: np.ndarray) -> "ColorAnchor":
        lab = rgb_to_lab(rgb).reshape(-1, 3)
        return cls(tuple(lab.mean(axis=0)), tuple(lab.std(axis=0)))


def match_color(rgb: np.ndarray, anchor: ColorAnchor, strength: float) -> np.ndarray:
    """Move the picture's LAB statistics toward the anchor's by ``strength`` (0 = unchanged)."""
    if strength <= 0:
        return np.asarray(rgb, dtype=np.float32)
    lab = rgb_to_lab(rgb)
    flat = lab.reshape(-1, 3)
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    target_mean, target_std = np.array(anchor.mean), np.array(anchor.std)
    scale = np.where(std > 1e-6, target_std / np.maximum(std, 1e-6), 1.0)
    matched = (lab - mean) * scale + target_mean
    mixed = lab + (matched - lab) * float(min(strength, 1.0))
    return lab_to_rgb(mixed)


def colour_held_to_start(picture: np.ndarray, start: StartView, strength: float, cells: int = 8) -> np.ndarray:
    """A painted frame's colours held to the shot's first painting (after painting).

    The frame is cut into about ``cells`` squares along its longer side; in each, the
    painting's mean LAB colour over the surfaces the first frame also saw moves ``strength`` of
    the way to the first painting's mean there (as frame t sees it, ``start``), times the share
    of the square those surfaces cover; the corrections are interpolated smoothly between
    squares' centres.
    A model that pulls every repainting toward its own colours (the drift of feedback loops) is
    pulled back each frame, surface by surface; what the first frame did not see keeps the
    model's colours, and detail finer than a square (shading, texture) stays the model's."""
    seen = start.seen
    if strength <= 0 or not seen.any():
        return np.asarray(picture, dtype=np.float32)
    lab = rgb_to_lab(picture)
    height, width = seen.shape
    size = max(1, int(np.ceil(max(height, width) / cells)))
    rows, cols = -(-height // size), -(-width // size)

    def cell_sums(array):  # (height, width, c) -> (rows, cols, c), zero-padded to whole squares
        padded = np.zeros((rows * size, cols * size, array.shape[2]))
        padded[:height, :width] = array
        return padded.reshape(rows, size, cols, size, -1).sum(axis=(1, 3))

    weight = seen[..., None].astype(np.float64)
    counts = cell_sums(weight)
    areas = cell_sums(np.ones_like(weight))
    difference = cell_sums((rgb_to_lab(start.picture) - lab) * weight) / np.maximum(counts, 1.0)
    correction = _smooth_upsample(difference * (counts / areas), size, height, width)
    return lab_to_rgb(lab + float(min(strength, 1.0)) * correction)


def _smooth_upsample(coarse: np.ndarray, size: int, height: int, width: int) -> np.ndarray:
    """Bilinear interpolation of values at the centres of ``size``-pixel squares to every pixel
    (held constant beyond the outer centres)."""
    def axis(count, length):
        position = np.clip((np.arange(length) + 0.5) / size - 0.5, 0.0, count - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, count - 1)
        return low, high, (position - low)

    low, high, t = axis(coarse.shape[0], height)
    by_rows = coarse[low] * (1 - t)[:, None, None] + coarse[high] * t[:, None, None]
    low, high, t = axis(coarse.shape[1], width)
    return by_rows[:, low] * (1 - t)[None, :, None] + by_rows[:, high] * t[None, :, None]


# -- cadence ----------------------------------------------------------------------------
def in_between(before: np.ndarray, vector_to_before: np.ndarray, occlusion_to_before: np.ndarray,
               after: np.ndarray, vector_to_after: np.ndarray, occlusion_to_after: np.ndarray,
               position: float) -> np.ndarray:
    """A frame between two diffused key frames: both warped onto it by exact motion,
    blended by visibility and by nearness in time (``position`` 0 = at ``before``)."""
    from_before, inside_before = warp(before[..., :3], vector_to_before)
    from_after, inside_after = warp(after[..., :3], vector_to_after)
    seen_before = (~dilate(occlusion_to_before > 0.5, 1) & inside_before).astype(np.float32)
    seen_after = (~dilate(occlusion_to_after > 0.5, 1) & inside_after).astype(np.float32)
    weight_before = (1.0 - position) * seen_before
    weight_after = position * seen_after
    total = weight_before + weight_after
    # Seen in neither: the nearer key frame's warp is the best guess there.
    fallback = np.where(position < 0.5, 1.0, 0.0).astype(np.float32)
    weight_before = np.where(total > 0, weight_before / np.maximum(total, 1e-8), fallback)
    return (from_before * weight_before[..., None] + from_after * (1 - weight_before[..., None])).astype(np.float32)


# -- measuring ----------------------------------------------------------------------------
def coherence_mask(occlusion: np.ndarray, vector: np.ndarray, erode: int = 1, inside: np.ndarray | None = None
                   ) -> np.ndarray:
    """Pixels whose surface point was visible in the other frame, silhouettes eroded.
    ``inside``: what ``warp`` along ``vector`` already returned, where the caller has it."""
    if inside is None:
        _, inside = warp(np.zeros(vector.shape[:2] + (1,), dtype=np.float32), vector)
    return ~dilate((np.asarray(occlusion) > 0.5) | ~inside, erode)


def warp_error(current: np.ndarray, other: np.ndarray, vector: np.ndarray, occlusion: np.ndarray) -> float:
    """Mean squared RGB difference between frame t and the other frame warped onto it, over
    the pixels visible in both (Lai et al. 2018, with exact motion and occlusion)."""
    warped, inside = warp(other[..., :3], vector)
    mask = coherence_mask(occlusion, vector, inside=inside)
    if not mask.any():
        return float("nan")
    difference = (np.asarray(current, dtype=np.float64)[..., :3] - warped) ** 2
    return float(difference[mask].sum() / (3 * mask.sum()))


def color_drift(frame: np.ndarray, first: np.ndarray) -> float:
    """Delta E (CIE76) between the mean LAB colours of a frame and the shot's first frame."""
    return float(np.linalg.norm(rgb_to_lab(frame).reshape(-1, 3).mean(0) - rgb_to_lab(first).reshape(-1, 3).mean(0)))
