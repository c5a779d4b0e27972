"""Motion of the world background: directions at infinity seen by a moving camera. No ``bpy``.

A pixel that shows no surface shows a direction (the sky, an HDRI, the world colour). That
direction does not move when the camera translates, but it does when the camera rotates, zooms
(focal length) or shifts its lens: it appears where the other frame's camera projects the same
direction. Silk writes that motion into the Vector pass and warps with it, so a painted sky turns
with the camera instead of staying on screen. Cycles writes 0 there; this is where Silk's Vector
pass differs from Cycles' (docs/guides.md). Orthographic cameras see no direction at infinity:
their background keeps 0 motion.

Raster conventions as in ``compute.py``: flat arrays bottom-up, pixel (i, j) sampled at its
centre (i + 0.5, j + 0.5), +y up; (x, y) = position in the previous frame minus now, (z, w) =
position now minus in the next frame.
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .camera import Camera


def pixel_directions(camera: Camera, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """World directions (not unit) the camera sees through raster positions (perspective only).

    A perspective ray's direction is affine in the raster position (``Camera.affine_rays``):
    three multiply-adds a pixel instead of unprojecting two points."""
    _, direction = camera.affine_rays()
    return direction[0] + px[:, None] * direction[1] + py[:, None] * direction[2]


def project_directions(camera: Camera, directions: np.ndarray):
    """Raster positions of directions at infinity in ``camera``; ``valid`` where in front of it."""
    clip = directions @ camera.view_projection[:, :3].T  # w = 0: translation does not move a direction
    w = clip[:, 3]
    valid = w > 1e-12
    safe = np.where(valid, w, 1.0)
    x = (clip[:, 0] / safe + 1.0) * 0.5 * camera.width
    y = (clip[:, 1] / safe + 1.0) * 0.5 * camera.height
    return x, y, valid


def _motion(to: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Raster motion, with the round-off of an unmoved camera (about 1e-14 px) written as 0."""
    moved = to - at
    return np.where(np.abs(moved) < 1e-6, 0.0, moved)


def fill_background(vector: np.ndarray, occlusion: np.ndarray, background: np.ndarray, camera: Camera,
                    previous: Camera | None, following: Camera | None, previous_winner: np.ndarray | None,
                    use_kernels: bool = False) -> None:
    """Write the background pixels' motion into ``vector`` (N, 4) and their occlusion (N,), in place.

    ``background``: (N,) bool, pixels showing no surface now; ``previous_winner``: the previous
    frame's per-pixel triangle (-1 = background) to tell whether the direction was visible then
    (a surface may have covered it). ``use_kernels``: the compiled loop (kernels.background_motion)
    where numba is available; this numpy code is its reference."""
    if not background.any():
        return
    index = np.nonzero(background)[0]
    if use_kernels and kernels.AVAILABLE:
        def camera_args(other):
            if other is None:
                return np.zeros((4, 4)), np.zeros(2, dtype=np.int64), False
            return other.view_projection, np.array([other.width, other.height], dtype=np.int64), not other.is_ortho

        kernels.background_motion(
            index, camera.width, camera.affine_rays()[1], not camera.is_ortho, *camera_args(previous),
            np.zeros(0, dtype=np.int64) if previous_winner is None else previous_winner, *camera_args(following),
            vector, occlusion)
        return
    px = (index % camera.width) + 0.5
    py = (index // camera.width) + 0.5
    perspective = not camera.is_ortho
    directions = pixel_directions(camera, px, py) if perspective else None
    if previous is not None:
        x, y, valid = px, py, np.ones(index.size, dtype=bool)  # orthographic: no motion at infinity
        if perspective and not previous.is_ortho:
            x, y, valid = project_directions(previous, directions)
            vector[index, 0] = np.where(valid, _motion(x, px), 0.0)
            vector[index, 1] = np.where(valid, _motion(y, py), 0.0)
        if previous_winner is not None:
            column, row = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
            inside = valid & (column >= 0) & (column < previous.width) & (row >= 0) & (row < previous.height)
            seen = np.zeros(index.size, dtype=bool)
            seen[inside] = previous_winner[row[inside] * previous.width + column[inside]] < 0
            occlusion[index] = np.where(seen, 0.0, 1.0)
    if following is not None and perspective and not following.is_ortho:
        x, y, valid = project_directions(following, directions)
        vector[index, 2] = np.where(valid, _motion(px, x), 0.0)
        vector[index, 3] = np.where(valid, _motion(py, y), 0.0)
