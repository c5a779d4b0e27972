"""Guides turned into the pictures ControlNets were trained on.

- Depth (control_v11f1p_sd15_depth): inverse depth, near white, far black, with ONE
  normalisation per shot (``DepthRange``), never per frame, so the control signal
  does not flicker as objects move.
- Normal (control_v11p_sd15_normalbae): camera-space normals in the BAE convention,
  R = 1 - (x+1)/2, G = (y+1)/2, B = (z+1)/2 with +x right, +y up, +z toward the
  viewer; background (0.5, 0.5, 1.0).

All pictures are float32 (H, W, 3) display values in [0, 1], rows top-down.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BACKGROUND_NORMAL_RGB = (0.5, 0.5, 1.0)


@dataclass(frozen=True)
class DepthRange:
    """The depth interval mapped to [black, white] for a whole shot."""

    near: float
    far: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.near) and np.isfinite(self.far)) or self.near <= 0 or self.far <= self.near:
            raise ValueError(f"invalid depth range {self.near}..{self.far}")

    @classmethod
    def from_clip(cls, clip_start: float, clip_end: float) -> "DepthRange":
        return cls(float(clip_start), float(clip_end))

    @classmethod
    def from_percentiles(cls, depth: np.ndarray, coverage: np.ndarray | None = None,
                         low: float = 1.0, high: float = 99.0) -> "DepthRange | None":
        """From the depths a frame actually shows (None when it shows nothing)."""
        values = np.asarray(depth, dtype=np.float64)
        mask = np.isfinite(values) & (values > 0) & (values < 1e9)
        if coverage is not None:
            mask &= np.asarray(coverage, dtype=bool)
        seen = values[mask]
        if seen.size == 0:
            return None
        near, far = np.percentile(seen, [low, high])
        near = max(float(near), 1e-6)
        far = max(float(far), near * 1.0001 + 1e-6)
        return cls(near, far)


def depth_range_of_frame(depth: np.ndarray, coverage: np.ndarray, clip_start: float, clip_end: float) -> DepthRange:
    """From the depths a frame shows; the camera's clip range when it shows nothing."""
    return DepthRange.from_percentiles(depth, coverage) or DepthRange.from_clip(clip_start, clip_end)


def depth_condition(depth: np.ndarray, depth_range: DepthRange) -> np.ndarray:
    """Inverse depth picture: 1 at ``near`` (and closer), 0 at ``far`` (and beyond, and background)."""
    d = np.asarray(depth, dtype=np.float64)
    inv_near, inv_far = 1.0 / depth_range.near, 1.0 / depth_range.far
    with np.errstate(divide="ignore"):
        inverse = np.where(d > 0, 1.0 / np.maximum(d, 1e-12), 0.0)
    value = np.clip((inverse - inv_far) / (inv_near - inv_far), 0.0, 1.0)
    value[~(d < 1e9)] = 0.0
    return np.repeat(value.astype(np.float32)[..., None], 3, axis=-1)


def world_to_camera_normals(normal: np.ndarray, view: np.ndarray) -> np.ndarray:
    """Rotate world-space normals into camera space (+x right, +y up, +z toward viewer)."""
    rotation = np.asarray(view, dtype=np.float64)[:3, :3]
    # The view matrix of a camera is a rigid transform: its 3x3 part is a rotation.
    return (np.asarray(normal, dtype=np.float64).reshape(-1, 3) @ rotation.T).reshape(normal.shape)


def normal_condition(normal_world: np.ndarray, view: np.ndarray) -> np.ndarray:
    """BAE normal picture from world-space unit normals (background: zero vectors)."""
    camera = world_to_camera_normals(normal_world, view)
    length = np.linalg.norm(camera, axis=-1, keepdims=True)
    background = length[..., 0] < 0.5
    unit = camera / np.where(length > 0, length, 1.0)
    c = (unit + 1.0) * 0.5
    picture = np.stack([1.0 - c[..., 0], c[..., 1], c[..., 2]], axis=-1)
    picture[background] = BACKGROUND_NORMAL_RGB
    return np.clip(picture, 0.0, 1.0).astype(np.float32)


def motion_picture(vector: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Backward motion (Vector x, y) as colour: hue is direction, saturation is speed.

    ``scale`` is the speed in pixels shown at full saturation (default: the 99th
    percentile of this frame's speeds, at least one pixel).
    """
    dx = np.asarray(vector[..., 0], dtype=np.float64)
    dy = np.asarray(vector[..., 1], dtype=np.float64)
    speed = np.hypot(dx, dy)
    if scale is None:
        moving = speed[speed > 0]
        scale = max(float(np.percentile(moving, 99)) if moving.size else 1.0, 1.0)
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    saturation = np.clip(speed / scale, 0.0, 1.0)
    return _hsv_to_rgb(hue, saturation, np.ones_like(hue)).astype(np.float32)


def occlusion_picture(occlusion: np.ndarray) -> np.ndarray:
    value = np.clip(np.asarray(occlusion, dtype=np.float32), 0.0, 1.0)
    return np.repeat(value[..., None], 3, axis=-1)


def _hsv_to_rgb(h, s, v):
    i = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [
        np.stack(c, axis=-1)
        for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    ]
    out = np.zeros(h.shape + (3,))
    for k in range(6):
        out[i == k] = choices[k][i == k]
    return out
