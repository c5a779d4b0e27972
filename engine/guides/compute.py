"""Per-pixel guides with Cycles' pass conventions.

For each pixel the rasteriser names the visible triangle; the values are then
computed exactly (float64) where the pixel's centre ray meets that triangle, so
depth, normal and motion are as precise as the geometry itself. The compiled
kernels (``kernels.py``) and the numpy code here compute the same thing.

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

from .background import fill_background
from .camera import Camera
from .geometry import FrameGeometry, Instance, transform_points
from . import kernels
from .raster import rasterize

BACKGROUND_DEPTH = 1.0e10
# Pixels processed at once when computing attributes; bounds memory at 4K.
PIXEL_CHUNK = 1 << 20
# A surface point counts as hidden in the previous frame when something lies in
# front of it by more than this fraction of its depth.
OCCLUSION_DEPTH_TOLERANCE = 1e-4
# The same when comparing with the depths at surrounding pixel centres, which also
# differ from the point's depth by the surface's slope over a pixel.
OCCLUSION_NEIGHBOURHOOD_TOLERANCE = 1e-2
# How far outside a triangle (in barycentrics) a ray may pass and still count as hitting it.
OCCLUSION_BARYCENTRIC_SLACK = 1e-6


@dataclass
class GuideSet:
    depth: np.ndarray
    normal: np.ndarray
    vector: np.ndarray
    occlusion: np.ndarray
    coverage: np.ndarray
    camera: Camera
    notes: list[str] = field(default_factory=list)
    # Fraction of covered pixels that see the back side of a surface.
    backfacing_fraction: float = 0.0

    @property
    def width(self) -> int:
        return self.camera.width

    @property
    def height(self) -> int:
        return self.camera.height


@dataclass
class _Scene:
    """All triangles of the current frame in world space, indexed, with their motion."""

    vertices: np.ndarray  # (V, 3) world positions now
    previous: np.ndarray  # (V, 3) the same vertices a frame ago
    following: np.ndarray  # (V, 3) the same vertices a frame later
    triangles: np.ndarray  # (T, 3) indices into the vertex arrays
    triangle_instance: np.ndarray  # (T,) which instance each triangle belongs to
    normal_blocks: list  # per instance: (first triangle, its mesh): shading normals, read for visible triangles only
    normal_matrices: np.ndarray  # (I, 3, 3) object-to-world for normals
    winding: np.ndarray  # (I,) +1 or -1: sign of the instance's determinant
    renormalise: np.ndarray  # (I,) corner normals are renormalised in world space (see Instance.shared_mesh)
    in_previous: np.ndarray  # (I,) the instance existed a frame ago
    previous_only_vertices: np.ndarray  # (P, 3) occluders that exist only a frame ago
    previous_only_triangles: np.ndarray  # (Q, 3) indices into previous_only_vertices


def _other_frame_positions(instance: Instance, other: Instance | None, notes: list[str]) -> tuple[np.ndarray, bool]:
    """World positions of ``instance``'s vertices at another frame, and whether it existed."""
    mesh = instance.mesh
    if other is None:
        return instance.world_positions(), False
    if other.mesh.vertex_count == mesh.vertex_count:
        return other.world_positions(), True
    notes.append(
        f"'{instance.name or instance.key}': topology changes between frames "
        f"({mesh.vertex_count} vs {other.mesh.vertex_count} vertices); motion is "
        "reprojected with the object's transform instead of per vertex"
    )
    return transform_points(other.matrix, mesh.positions), True


def _build_scene(current: FrameGeometry, previous: FrameGeometry | None, following: FrameGeometry | None,
                 notes: list[str]) -> _Scene:
    prev_by_key = previous.by_key() if previous is not None else {}
    next_by_key = following.by_key() if following is not None else {}
    now, before, after, triangles, owner, normal_blocks = [], [], [], [], [], []
    normal_matrices, winding, existed_list, renormalise = [], [], [], []
    base = first_triangle = 0
    for instance in current.instances:
        mesh = instance.mesh
        if mesh.triangle_count == 0:
            continue
        index = len(normal_matrices)
        now.append(instance.world_positions())
        world_prev, existed = _other_frame_positions(instance, prev_by_key.get(instance.key), notes)
        before.append(world_prev)
        after.append(_other_frame_positions(instance, next_by_key.get(instance.key), notes)[0])
        triangles.append(mesh.triangles + base)
        owner.append(np.full(mesh.triangle_count, index, dtype=np.int32))
        normal_blocks.append((first_triangle, mesh))
        first_triangle += mesh.triangle_count
        linear = instance.matrix[:3, :3]
        # The inverse transpose is the cofactor matrix over the determinant (no LAPACK
        # call for a 3x3, which costs more than the arithmetic).
        cofactors = np.stack([np.cross(linear[:, 1], linear[:, 2]), np.cross(linear[:, 2], linear[:, 0]),
                              np.cross(linear[:, 0], linear[:, 1])], axis=1)
        determinant = float(linear[:, 0] @ cofactors[:, 0])
        normal_matrices.append(cofactors / determinant if abs(determinant) > 1e-300 else np.zeros((3, 3)))
        winding.append(1.0 if determinant >= 0 else -1.0)
        renormalise.append(not instance.shared_mesh)
        existed_list.append(existed and previous is not None)
        base += mesh.vertex_count

    only_vertices, only_triangles = [], []
    if previous is not None:
        current_keys = {instance.key for instance in current.instances}
        only_base = 0
        for instance in previous.instances:
            if instance.key in current_keys or instance.mesh.triangle_count == 0:
                continue
            only_vertices.append(instance.world_positions())
            only_triangles.append(instance.mesh.triangles + only_base)
            only_base += instance.mesh.vertex_count

    def stack(blocks, shape, dtype=np.float64):
        return np.concatenate(blocks, axis=0) if blocks else np.zeros(shape, dtype=dtype)

    return _Scene(
        vertices=stack(now, (0, 3)),
        previous=stack(before, (0, 3)),
        following=stack(after, (0, 3)),
        triangles=stack(triangles, (0, 3), np.int64),
        triangle_instance=stack(owner, (0,), np.int32),
        normal_blocks=normal_blocks,
        normal_matrices=np.array(normal_matrices).reshape(-1, 3, 3),
        winding=np.array(winding, dtype=np.float64),
        renormalise=np.array(renormalise, dtype=bool),
        in_previous=np.array(existed_list, dtype=bool),
        previous_only_vertices=stack(only_vertices, (0, 3)),
        previous_only_triangles=stack(only_triangles, (0, 3), np.int64),
    )


class _TriangleTables:
    """Per-triangle coefficients that make every per-pixel quantity a few multiply-adds.

    For a pixel at raster position p, the ray hitting triangle (v0, e1, e2) has
    barycentrics u = U(p) / N(p), v = V(p) / N(p) and view depth D(p) / N(p),
    where U, V, N, D are affine in p (exactly: the ray's origin or its direction is
    affine in p, and each is a scalar triple product). Positions at other frames are
    affine in (u, v), so their clip coordinates are too. Only triangles that won a
    pixel get a row.
    """

    def __init__(self, scene: _Scene, visible: np.ndarray, camera: Camera,
                 previous: FrameGeometry | None, following: FrameGeometry | None, use_kernels: bool = False):
        count = scene.triangles.shape[0]
        used = np.flatnonzero(np.bincount(visible, minlength=count)) if visible.size else np.zeros(0, int)
        self.local = np.full(count, -1, dtype=np.int64)
        self.local[used] = np.arange(used.size)
        self.following_camera = following.camera if following is not None else None
        if kernels.AVAILABLE and use_kernels:
            self._compiled(scene, used, camera, previous, following)
            return
        corners = scene.triangles[used]
        v0 = scene.vertices[corners[:, 0]]
        e1 = scene.vertices[corners[:, 1]] - v0
        e2 = scene.vertices[corners[:, 2]] - v0
        n = np.cross(e1, e2)
        origin, direction = camera.affine_rays()
        forward = camera.forward

        def affine(rows_dot):  # rows_dot(k) gives the k-th coefficient column
            return [rows_dot(k) for k in range(3)]

        if camera.is_ortho:  # origins vary, the direction is forward
            s0 = origin[0] - v0
            a_u = np.cross(e2, forward)
            a_v = np.cross(forward, e1)
            u_terms = [np.einsum("ij,ij->i", s0, a_u), a_u @ origin[1], a_u @ origin[2]]
            v_terms = [np.einsum("ij,ij->i", s0, a_v), a_v @ origin[1], a_v @ origin[2]]
            n_terms = [n @ forward, np.zeros(used.size), np.zeros(used.size)]
            d_terms = [-np.einsum("ij,ij->i", s0, n), -(n @ origin[1]), -(n @ origin[2])]
        else:  # perspective: one origin, affine directions
            s = origin[0] - v0
            a_u = np.cross(s, e2)
            a_v = np.cross(e1, s)
            u_terms = affine(lambda k: a_u @ direction[k])
            v_terms = affine(lambda k: a_v @ direction[k])
            n_terms = affine(lambda k: n @ direction[k])
            plane = -np.einsum("ij,ij->i", s, n)
            d_terms = affine(lambda k: plane * (forward @ direction[k]))
        self.hit = np.stack(u_terms + v_terms + n_terms + d_terms, axis=1)
        self.winding = scene.winding[scene.triangle_instance[used]]

        owner = scene.triangle_instance[used]
        used_normals, flat = _normals_of(scene, used, owner)
        local_normals = used_normals.astype(np.float64)
        # Normals transform by the inverse transpose. Cycles renormalises each corner's
        # world normal before interpolating when it applies the object's transform (a
        # mesh placed once); otherwise it interpolates in object space, which is the
        # same as interpolating the unnormalised world normals.
        world_normals = np.matmul(local_normals, scene.normal_matrices[owner].transpose(0, 2, 1))
        applied = scene.renormalise[owner]
        if applied.any():
            lengths = np.linalg.norm(world_normals[applied], axis=2, keepdims=True)
            world_normals[applied] /= np.where(lengths > 0, lengths, 1.0)
        # Flat: the world triangle's own normal, oriented as the transformed object-space
        # one (a mirroring transform reverses the winding; Cycles flips it back too).
        if flat.any():
            geometric = n[flat] * self.winding[flat, None]
            length = np.linalg.norm(geometric, axis=1, keepdims=True)
            world_normals[flat] = (geometric / np.where(length > 0, length, 1.0))[:, None, :]
        self.normal = np.concatenate(
            [world_normals[:, 0], world_normals[:, 1] - world_normals[:, 0], world_normals[:, 2] - world_normals[:, 0]],
            axis=1,
        )
        self.previous = _affine_projection(scene.previous, corners, previous) if previous is not None else None
        self.following = _affine_projection(scene.following, corners, following) if following is not None else None

    def _compiled(self, scene: _Scene, used: np.ndarray, camera: Camera, previous, following) -> None:
        """The same tables from kernels.triangle_tables."""
        count = used.size
        origin, direction = camera.affine_rays()
        self.hit = np.empty((count, 12))
        self.normal = np.empty((count, 9))
        self.winding = np.empty(count)
        self.previous = np.empty((count, 12)) if previous is not None else None
        self.following = np.empty((count, 12)) if following is not None else None
        none = np.zeros((0, 12))
        kernels.triangle_tables(
            used, scene.vertices, scene.triangles, scene.triangle_instance, *_normals_of(scene, used),
            scene.normal_matrices, scene.renormalise, scene.winding, origin, direction, camera.forward,
            camera.is_ortho, scene.previous, _projection_rows(previous), scene.following, _projection_rows(following),
            self.hit, self.normal, self.winding,
            none if self.previous is None else self.previous, none if self.following is None else self.following)


def _normals_of(scene: _Scene, used: np.ndarray, owner: np.ndarray | None = None):
    """Object-space corner normals (U, 3, 3) and flat flags (U,) of the triangles ``used``
    (sorted), gathered from each instance's mesh: only visible triangles are copied."""
    if owner is None:
        owner = scene.triangle_instance[used]
    normals = np.empty((used.size, 3, 3), dtype=np.float32)
    flat = np.empty(used.size, dtype=bool)
    bounds = np.searchsorted(owner, np.arange(len(scene.normal_blocks) + 1))
    for index, (first, mesh) in enumerate(scene.normal_blocks):
        start, stop = bounds[index], bounds[index + 1]
        if start == stop:
            continue
        local = used[start:stop] - first
        normals[start:stop] = mesh.corner_normals[local]
        flat[start:stop] = mesh.flat[local]
    return normals, flat


def _projection_rows(frame: FrameGeometry | None) -> np.ndarray:
    """Rows giving clip x, y, w and view depth of a world point at ``frame``."""
    if frame is None:
        return np.zeros((4, 4))
    vp, view = frame.camera.view_projection, frame.camera.view
    return np.ascontiguousarray(np.stack([vp[0], vp[1], vp[3], -view[2]]), dtype=np.float64)


def _affine_projection(vertices: np.ndarray, corners: np.ndarray, frame: FrameGeometry) -> np.ndarray:
    """Clip x, y, w and view depth of a triangle's points at another frame, affine in (u, v): (T, 12)."""
    q0 = vertices[corners[:, 0]]
    q1 = vertices[corners[:, 1]] - q0
    q2 = vertices[corners[:, 2]] - q0
    rows = _projection_rows(frame)
    columns = []
    for row in rows:
        columns += [q0 @ row[:3] + row[3], q1 @ row[:3], q2 @ row[:3]]
    return np.stack(columns, axis=1)


def _project_affine(coefficients: np.ndarray, u: np.ndarray, v: np.ndarray, camera: Camera):
    c = coefficients
    x = c[:, 0] + u * c[:, 1] + v * c[:, 2]
    y = c[:, 3] + u * c[:, 4] + v * c[:, 5]
    w = c[:, 6] + u * c[:, 7] + v * c[:, 8]
    depth = c[:, 9] + u * c[:, 10] + v * c[:, 11]
    in_front = w > 1e-12
    safe = np.where(in_front, w, 1.0)
    return (x / safe + 1.0) * (0.5 * camera.width), (y / safe + 1.0) * (0.5 * camera.height), depth, in_front


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


@dataclass
class _PreviousRaster:
    """What the occlusion test needs of frame t-1: who won each pixel, how deep, and
    the triangles (with the same ids as frame t's, plus those only there then)."""

    winner: np.ndarray  # (H*W,) triangle id or -1
    depth: np.ndarray  # (H*W,) view depth or inf
    vertices: np.ndarray  # (V, 3) world positions at t-1
    triangles: np.ndarray  # (T, 3) indices into vertices, by id
    camera: Camera | None

    @property
    def camera_inverse(self) -> np.ndarray:
        return self.camera.inverse_view_projection

    @property
    def camera_view_row(self) -> np.ndarray:
        return self.camera.view[2]


class _EmptyPreviousRaster:
    """Placeholders for the compiled kernel when there is no frame t-1 (never read)."""

    winner = np.zeros(1, dtype=np.int64)
    depth = np.zeros(1)
    vertices = np.zeros((1, 3))
    triangles = np.zeros((1, 3), dtype=np.int64)
    camera_inverse = np.eye(4)
    camera_view_row = np.zeros(4)


def _layout(current: FrameGeometry, use_kernels: bool) -> tuple:
    """What decides the triangle ids of a rasterised frame: its meshes, in order."""
    return use_kernels, tuple((instance.key, instance.mesh.vertex_count, instance.mesh.triangle_count)
                              for instance in current.instances if instance.mesh.triangle_count)


def _rasterize_previous(scene: _Scene, previous: FrameGeometry, width: int, height: int,
                        use_kernels: bool, layout: tuple) -> _PreviousRaster:
    """Frame t-1 rasterised with frame t's triangle ids, plus what was only there then.

    When frame t-1 was rendered as the current frame with the same meshes in the same
    order (so the same ids), and all of them existed then and nothing else did, its
    raster is reused: it is exactly what drawing it again would give."""
    kept = previous.visibility
    if (kept is not None and kept[0] == layout and scene.in_previous.all()
            and scene.previous_only_triangles.shape[0] == 0):
        return _PreviousRaster(kept[1], kept[2], scene.previous, scene.triangles, previous.camera)
    if scene.in_previous.all() and scene.previous_only_triangles.shape[0] == 0:  # the usual case: no copies
        all_previous, all_triangles, ids = scene.previous, scene.triangles, None
        drawn = all_triangles
    else:
        all_previous = np.concatenate([scene.previous, scene.previous_only_vertices], axis=0)
        existing = np.nonzero(scene.in_previous[scene.triangle_instance])[0]
        only = scene.previous_only_triangles + scene.previous.shape[0]
        all_triangles = np.concatenate([scene.triangles, only], axis=0)
        ids = np.concatenate([existing, scene.triangles.shape[0] + np.arange(only.shape[0])])
        drawn = all_triangles[ids]
    winner, z = rasterize(previous.camera.to_clip(all_previous), drawn, width, height, ids, use_kernels)
    depth = np.where(np.isfinite(z), previous.camera.depth_from_ndc(z), np.inf)
    return _PreviousRaster(winner.reshape(-1), depth.reshape(-1), all_previous, all_triangles, previous.camera)


def _guide_pixels_numpy(covered, own, existed, width, tables, previous_raster, depth, normal, vector,
                        occlusion) -> int:
    """The numpy reference for kernels.guide_pixels, in chunks that bound memory.

    Returns how many pixels see the back side of a surface."""
    backfacing = 0
    for start in range(0, covered.size, PIXEL_CHUNK):
        pixels = covered[start:start + PIXEL_CHUNK]
        tri = own[start:start + PIXEL_CHUNK]
        local = tables.local[tri]
        px = (pixels % width).astype(np.float64) + 0.5
        py = (pixels // width).astype(np.float64) + 0.5

        # Barycentrics and depth of the pixel-centre ray's hit: ratios of affine forms.
        c = tables.hit[local]
        denominator = c[:, 6] + px * c[:, 7] + py * c[:, 8]
        inverse = 1.0 / np.where(denominator == 0.0, 1e-300, denominator)
        u = (c[:, 0] + px * c[:, 1] + py * c[:, 2]) * inverse
        v = (c[:, 3] + px * c[:, 4] + py * c[:, 5]) * inverse
        depth[pixels] = (c[:, 9] + px * c[:, 10] + py * c[:, 11]) * inverse
        del c

        # The ray meets the geometric normal head-on unless it sees the back side.
        facing_away = denominator * tables.winding[local] > 0.0
        backfacing += int(np.count_nonzero(facing_away))
        n = tables.normal[local]
        shading = n[:, 0:3] + u[:, None] * n[:, 3:6] + v[:, None] * n[:, 6:9]
        del n
        shading[facing_away] *= -1.0
        normal[pixels] = _normalized(shading)

        if previous_raster is not None:
            prev_x, prev_y, prev_depth, prev_front = _project_affine(
                tables.previous[local], u, v, previous_raster.camera)
            vector[pixels, 0] = prev_x - px
            vector[pixels, 1] = prev_y - py
            occlusion[pixels] = _hidden_before(
                previous_raster, tri, existed[start:start + PIXEL_CHUNK], prev_x, prev_y, prev_depth, prev_front)
        if tables.following is not None:
            next_x, next_y, _, _ = _project_affine(tables.following[local], u, v, tables.following_camera)
            vector[pixels, 2] = px - next_x
            vector[pixels, 3] = py - next_y
    return backfacing


def _normalized(vectors: np.ndarray) -> np.ndarray:
    length = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(length > 0, length, 1.0)


def compute_guides(
    current: FrameGeometry,
    previous: FrameGeometry | None = None,
    following: FrameGeometry | None = None,
    use_kernels: bool = True,
) -> GuideSet:
    """Depth, normal, vector and occlusion guides of ``current``'s camera view.

    ``previous`` and ``following`` are the same scene evaluated one frame earlier
    and later (their cameras give the motion of the camera itself). All three share
    the render size. ``use_kernels=False`` forces the numpy reference path even when
    the compiled kernels are available.
    """
    camera = current.camera
    width, height = camera.width, camera.height
    for frame in (previous, following):
        if frame is not None and (frame.camera.width, frame.camera.height) != (width, height):
            raise ValueError("all frames must share the render size")
    notes: list[str] = []
    scene = _build_scene(current, previous, following, notes)
    winner, z = rasterize(camera.to_clip(scene.vertices), scene.triangles, width, height, use_kernels=use_kernels)
    winner = winner.reshape(-1)
    layout = _layout(current, use_kernels)
    current.visibility = (layout, winner, np.where(np.isfinite(z), camera.depth_from_ndc(z), np.inf).reshape(-1))
    covered = np.nonzero(winner >= 0)[0]

    depth = np.full(width * height, BACKGROUND_DEPTH, dtype=np.float32)
    normal = np.zeros((width * height, 3), dtype=np.float32)
    vector = np.zeros((width * height, 4), dtype=np.float32)
    occlusion = np.zeros(width * height, dtype=np.float32)

    previous_raster = None
    if previous is not None:
        previous_raster = _rasterize_previous(scene, previous, width, height, use_kernels, layout)
    else:
        occlusion[:] = 1.0

    tables = _TriangleTables(scene, winner[covered], camera, previous, following, use_kernels)
    own = winner[covered]
    existed = scene.in_previous[scene.triangle_instance[own]]
    if kernels.AVAILABLE and use_kernels:
        before = previous_raster if previous_raster is not None else _EmptyPreviousRaster()
        no_table = np.zeros((0, 12))
        backfacing = kernels.guide_pixels(
            covered, tables.local[own], width, height, tables.hit, tables.normal, tables.winding,
            no_table if tables.previous is None else tables.previous,
            no_table if tables.following is None else tables.following,
            existed, own, before.winner, before.depth, before.camera_inverse, before.camera_view_row,
            before.vertices, before.triangles, depth, normal, vector, occlusion,
            OCCLUSION_DEPTH_TOLERANCE, OCCLUSION_NEIGHBOURHOOD_TOLERANCE, OCCLUSION_BARYCENTRIC_SLACK,
        )
    else:
        backfacing = _guide_pixels_numpy(covered, own, existed, width, tables, previous_raster,
                                         depth, normal, vector, occlusion)

    # Background: directions at infinity move with the camera's rotation, lens and shift; a fresh
    # pixel unless its direction showed background a frame ago as well (background.py).
    fill_background(vector, occlusion, winner < 0, camera, previous.camera if previous is not None else None,
                    following.camera if following is not None else None,
                    previous_raster.winner if previous_raster is not None else None, use_kernels)

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
        backfacing_fraction=backfacing_fraction,
    )


def _hidden_before(before: _PreviousRaster, tri: np.ndarray, existed: np.ndarray, px: np.ndarray,
                   py: np.ndarray, depth: np.ndarray, in_front: np.ndarray) -> np.ndarray:
    """1.0 where a surface point was not visible from the previous frame's camera.

    The point is projected into the previous frame. If the triangle seen at the
    nearest pixel centre is its own, it was visible. Otherwise it was hidden when
    - even the farthest of the four surrounding pixel centres is in front of it
      (something covers the whole neighbourhood: the usual case, and the only
      test that works when occluding triangles are smaller than a pixel), or
    - one of the triangles seen at those four centres contains its exact ray and
      lies in front of it (a thin occluder edge between pixel centres).
    Testing actual triangles, not their planes, keeps convex surfaces from hiding
    themselves.
    """
    camera, raster, raster_depth = before.camera, before.winner, before.depth
    vertices, triangles = before.vertices, before.triangles
    width, height = camera.width, camera.height
    inside = in_front & (px >= 0) & (px < width) & (py >= 0) & (py < height) & existed
    hidden = np.ones(tri.shape[0], dtype=np.float32)
    idx = np.nonzero(inside)[0]
    if idx.size == 0:
        return hidden
    qx, qy = px[idx], py[idx]
    ix = np.clip(np.floor(qx).astype(np.int64), 0, width - 1)
    iy = np.clip(np.floor(qy).astype(np.int64), 0, height - 1)
    own = tri[idx]
    visible = raster[iy * width + ix] == own
    check = np.nonzero(~visible)[0]
    if check.size:
        origins, directions = camera.pixel_rays(qx[check], qy[check])
        point_depth = depth[idx[check]]
        blocked = np.zeros(check.size, dtype=bool)
        farthest = np.zeros(check.size)
        base_x = np.floor(qx[check] - 0.5).astype(np.int64)
        base_y = np.floor(qy[check] - 0.5).astype(np.int64)
        for dx in (0, 1):
            for dy in (0, 1):
                sx = np.clip(base_x + dx, 0, width - 1)
                sy = np.clip(base_y + dy, 0, height - 1)
                farthest = np.maximum(farthest, raster_depth[sy * width + sx])
                seen = raster[sy * width + sx]
                candidate = np.nonzero((seen >= 0) & (seen != own[check]) & ~blocked)[0]
                if candidate.size == 0:
                    continue
                corners = vertices[triangles[seen[candidate]]]
                t, u, v = _intersect(origins[candidate], directions[candidate],
                                     corners[:, 0], corners[:, 1], corners[:, 2])
                slack = OCCLUSION_BARYCENTRIC_SLACK
                hit = (u >= -slack) & (v >= -slack) & (u + v <= 1 + slack)
                hit_depth = camera.view_depth(origins[candidate] + directions[candidate] * t[:, None])
                in_front_of_point = hit_depth < point_depth[candidate] * (1.0 - OCCLUSION_DEPTH_TOLERANCE)
                blocked[candidate[hit & in_front_of_point]] = True
        blocked |= farthest < point_depth * (1.0 - OCCLUSION_NEIGHBOURHOOD_TOLERANCE)
        visible[check] = ~blocked
    hidden[idx[visible]] = 0.0
    return hidden
