"""Per-pixel guides with Cycles' pass conventions.

For each pixel the rasteriser names the visible triangle; the values are then
computed exactly (float64) by intersecting the pixel's centre ray with that
triangle, so depth, normal and motion are as precise as the geometry itself.

Conventions (the same as Cycles' passes):
- ``depth``: distance along the camera's view axis, background ``BACKGROUND_DEPTH``.
- ``normal``: world-space unit shading normal facing the camera, background 0.
- ``vector``: (x, y) = raster position in the previous frame minus now, (z, w) =
  now minus next, in pixels with +y up; background 0.
- ``occlusion``: 1 where the pixel's surface point was not visible in the previous
  frame (newly uncovered, entered the frame, new object, or no previous frame).

All arrays are returned top-down (row 0 is the top of the picture), like images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .camera import Camera
from .geometry import FrameGeometry, Instance, transform_normals, transform_points
from .raster import rasterize_triangles

BACKGROUND_DEPTH = 1.0e10
# Pixels processed at once when computing attributes; bounds memory at 4K.
PIXEL_CHUNK = 1 << 20
# A surface point counts as hidden in the previous frame when something lies in
# front of it by more than this fraction of its depth.
OCCLUSION_DEPTH_TOLERANCE = 2e-3


@dataclass
class GuideSet:
    depth: np.ndarray
    normal: np.ndarray
    vector: np.ndarray
    occlusion: np.ndarray
    coverage: np.ndarray
    camera: Camera
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Fraction of covered pixels that see the back side of a surface.
    backfacing_fraction: float = 0.0

    @property
    def width(self) -> int:
        return self.camera.width

    @property
    def height(self) -> int:
        return self.camera.height


@dataclass
class _Soup:
    """All triangles of the current frame in world space, with their motion."""

    current: np.ndarray  # (T, 3, 3)
    previous: np.ndarray  # (T, 3, 3)
    following: np.ndarray  # (T, 3, 3)
    normals: np.ndarray  # (T, 3, 3) world-space corner normals
    winding: np.ndarray  # (T,) +1 or -1: sign of the instance's determinant
    in_previous: np.ndarray  # (T,) bool: the triangle's instance existed a frame ago
    previous_only: np.ndarray  # (P, 3, 3) occluders that exist only a frame ago


def _other_frame_positions(instance: Instance, other: Instance | None, notes: list[str]) -> tuple[np.ndarray, bool]:
    """World positions of ``instance``'s vertices at another frame, and whether it existed."""
    mesh = instance.mesh
    if other is None:
        return transform_points(instance.matrix, mesh.positions), False
    if other.mesh.vertex_count == mesh.vertex_count:
        return transform_points(other.matrix, other.mesh.positions), True
    notes.append(
        f"'{instance.name or instance.key}': topology changes between frames "
        f"({mesh.vertex_count} vs {other.mesh.vertex_count} vertices); motion is "
        "reprojected with the object's transform instead of per vertex"
    )
    return transform_points(other.matrix, mesh.positions), True


def _build_soup(current: FrameGeometry, previous: FrameGeometry | None, following: FrameGeometry | None, notes: list[str]) -> _Soup:
    prev_by_key = previous.by_key() if previous is not None else {}
    next_by_key = following.by_key() if following is not None else {}
    cur_blocks, prev_blocks, next_blocks, normal_blocks = [], [], [], []
    winding_blocks, existed_blocks = [], []
    for instance in current.instances:
        mesh = instance.mesh
        if mesh.triangle_count == 0:
            continue
        tris = mesh.triangles
        world_now = transform_points(instance.matrix, mesh.positions)
        world_prev, existed = _other_frame_positions(instance, prev_by_key.get(instance.key), notes)
        if previous is None:
            existed = False
        world_next, _ = _other_frame_positions(instance, next_by_key.get(instance.key), notes)
        cur_blocks.append(world_now[tris])
        prev_blocks.append(world_prev[tris])
        next_blocks.append(world_next[tris])
        normal_blocks.append(transform_normals(instance.matrix, mesh.corner_normals))
        sign = 1.0 if np.linalg.det(instance.matrix[:3, :3]) >= 0 else -1.0
        winding_blocks.append(np.full(tris.shape[0], sign))
        existed_blocks.append(np.full(tris.shape[0], existed))

    previous_only = []
    if previous is not None:
        current_keys = {instance.key for instance in current.instances}
        for instance in previous.instances:
            if instance.key not in current_keys and instance.mesh.triangle_count:
                world = transform_points(instance.matrix, instance.mesh.positions)
                previous_only.append(world[instance.mesh.triangles])

    def stack(blocks, shape):
        return np.concatenate(blocks, axis=0) if blocks else np.zeros(shape)

    return _Soup(
        current=stack(cur_blocks, (0, 3, 3)),
        previous=stack(prev_blocks, (0, 3, 3)),
        following=stack(next_blocks, (0, 3, 3)),
        normals=stack(normal_blocks, (0, 3, 3)),
        winding=stack(winding_blocks, (0,)),
        in_previous=stack(existed_blocks, (0,)).astype(bool),
        previous_only=stack(previous_only, (0, 3, 3)),
    )


def _intersect(origins, directions, v0, v1, v2):
    """Ray/plane-of-triangle intersection: ray parameter and barycentrics (u, v)."""
    e1 = v1 - v0
    e2 = v2 - v0
    p = np.cross(directions, e2)
    det = np.einsum("ij,ij->i", e1, p)
    det = np.where(np.abs(det) < 1e-300, 1e-300, det)
    inv_det = 1.0 / det
    s = origins - v0
    u = np.einsum("ij,ij->i", s, p) * inv_det
    q = np.cross(s, e1)
    v = np.einsum("ij,ij->i", directions, q) * inv_det
    t = np.einsum("ij,ij->i", e2, q) * inv_det
    return t, u, v


def _interpolate(corners: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return corners[:, 0] * (1.0 - u - v)[:, None] + corners[:, 1] * u[:, None] + corners[:, 2] * v[:, None]


def compute_guides(
    current: FrameGeometry,
    previous: FrameGeometry | None = None,
    following: FrameGeometry | None = None,
) -> GuideSet:
    """Depth, normal, vector and occlusion guides of ``current``'s camera view.

    ``previous`` and ``following`` are the same scene evaluated one frame earlier
    and later (their cameras give the motion of the camera itself).
    """
    camera = current.camera
    width, height = camera.width, camera.height
    notes: list[str] = []
    warnings: list[str] = []
    soup = _build_soup(current, previous, following, notes)
    triangle_count = soup.current.shape[0]

    winner, _ = rasterize_triangles(camera.to_clip(soup.current), width, height)
    winner = winner.reshape(-1)
    covered = np.nonzero(winner >= 0)[0]

    depth = np.full(width * height, BACKGROUND_DEPTH, dtype=np.float32)
    normal = np.zeros((width * height, 3), dtype=np.float32)
    vector = np.zeros((width * height, 4), dtype=np.float32)
    occlusion = np.zeros(width * height, dtype=np.float32)

    previous_raster = None
    if previous is not None:
        # Rasterise the previous frame with the same triangle ids, plus what was only there then.
        existing = np.nonzero(soup.in_previous)[0]
        clip_prev = previous.camera.to_clip(np.concatenate([soup.previous[existing], soup.previous_only], axis=0))
        ids = np.concatenate([existing, triangle_count + np.arange(soup.previous_only.shape[0])])
        previous_raster, _ = rasterize_triangles(clip_prev, previous.camera.width, previous.camera.height, ids)
        previous_raster = previous_raster.reshape(-1)
        all_previous = np.concatenate([soup.previous, soup.previous_only], axis=0)
    else:
        occlusion[:] = 1.0

    backfacing = 0
    for start in range(0, covered.size, PIXEL_CHUNK):
        pixels = covered[start:start + PIXEL_CHUNK]
        tri = winner[pixels]
        pi = (pixels % width).astype(np.float64) + 0.5
        pj = (pixels // width).astype(np.float64) + 0.5
        origins, directions = camera.pixel_rays(pi, pj)
        corners = soup.current[tri]
        t, u, v = _intersect(origins, directions, corners[:, 0], corners[:, 1], corners[:, 2])
        points = origins + directions * t[:, None]

        depth[pixels] = camera.view_depth(points)

        shading = _interpolate(soup.normals[tri], u, v)
        geometric = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]) * soup.winding[tri][:, None]
        facing_away = np.einsum("ij,ij->i", geometric, directions) > 0.0
        backfacing += int(np.count_nonzero(facing_away))
        shading[facing_away] *= -1.0
        length = np.linalg.norm(shading, axis=1)
        normal[pixels] = shading / np.where(length > 0, length, 1.0)[:, None]

        cur_x, cur_y, _, _ = camera.project(points)
        if previous is not None:
            prev_points = _interpolate(soup.previous[tri], u, v)
            prev_x, prev_y, prev_depth, prev_front = previous.camera.project(prev_points)
            vector[pixels, 0] = prev_x - cur_x
            vector[pixels, 1] = prev_y - cur_y
            occlusion[pixels] = _hidden_before(
                previous.camera, previous_raster, all_previous, tri, soup.in_previous[tri],
                prev_x, prev_y, prev_depth, prev_front,
            )
        if following is not None:
            next_points = _interpolate(soup.following[tri], u, v)
            next_x, next_y, _, _ = following.camera.project(next_points)
            vector[pixels, 2] = cur_x - next_x
            vector[pixels, 3] = cur_y - next_y

    if previous is not None:
        # Background: a fresh pixel unless it was background a frame ago as well.
        background = winner < 0
        occlusion[background] = (previous_raster[background] >= 0).astype(np.float32)

    coverage = winner >= 0
    backfacing_fraction = backfacing / max(covered.size, 1)

    def top_down(values, channels):
        shaped = values.reshape((height, width) + ((channels,) if channels > 1 else ()))
        return np.ascontiguousarray(shaped[::-1])

    return GuideSet(
        depth=top_down(depth, 1),
        normal=top_down(normal, 3),
        vector=top_down(vector, 4),
        occlusion=top_down(occlusion, 1),
        coverage=top_down(coverage, 1),
        camera=camera,
        notes=notes,
        warnings=warnings,
        backfacing_fraction=backfacing_fraction,
    )


def _hidden_before(camera: Camera, raster: np.ndarray, triangles: np.ndarray, tri: np.ndarray,
                   existed: np.ndarray, px: np.ndarray, py: np.ndarray, depth: np.ndarray,
                   in_front: np.ndarray) -> np.ndarray:
    """1.0 where a surface point was not visible from the previous frame's camera."""
    width, height = camera.width, camera.height
    inside = in_front & (px >= 0) & (px < width) & (py >= 0) & (py < height) & existed
    hidden = np.ones(tri.shape[0], dtype=np.float32)
    idx = np.nonzero(inside)[0]
    if idx.size == 0:
        return hidden
    ix = np.clip(np.floor(px[idx]).astype(np.int64), 0, width - 1)
    iy = np.clip(np.floor(py[idx]).astype(np.int64), 0, height - 1)
    seen = raster[iy * width + ix]
    visible = (seen < 0) | (seen == tri[idx])
    # Another triangle won that pixel: is its plane in front of our point exactly there?
    other = np.nonzero(~visible)[0]
    if other.size:
        occluder = triangles[seen[other]]
        origins, directions = camera.pixel_rays(px[idx][other], py[idx][other])
        t, _, _ = _intersect(origins, directions, occluder[:, 0], occluder[:, 1], occluder[:, 2])
        occluder_depth = camera.view_depth(origins + directions * t[:, None])
        point_depth = depth[idx][other]
        visible[other] = occluder_depth >= point_depth * (1.0 - OCCLUSION_DEPTH_TOLERANCE)
    hidden[idx[visible]] = 0.0
    return hidden
