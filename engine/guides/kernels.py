"""Compiled loops for the guides' two hot spots, when numba is available.

The numpy code in ``raster.py`` and ``compute.py`` is the reference and the fallback;
these kernels do the same arithmetic one pixel at a time, and the tests hold both
paths to the same results. ``SILK_NO_JIT=1`` forces numpy. numba caches the compiled
code on disk, so only the first render after an install pays the compile time
(about 6 s measured, see docs/benchmarks.md). Tolerances come in as arguments, from
the one place each is defined (``raster.py``, ``compute.py``): numba's disk cache
would not notice a changed constant imported from another module.
"""
from __future__ import annotations

import os

import numpy as np

try:  # numba is optional: bundled with the extension, absent in some Pythons
    if os.environ.get("SILK_NO_JIT"):
        raise ImportError("disabled by SILK_NO_JIT")
    from numba import njit, prange
    AVAILABLE = True
except ImportError:  # the tests also run the numpy path by turning AVAILABLE off
    AVAILABLE = False

    def njit(*_args, **_kwargs):
        def wrap(function):
            return function
        return wrap

    prange = range


@njit(cache=True, nogil=True, inline="always")
def _fill_one(x0, y0, z0, x1, y1, z1, x2, y2, z2, tri_id, width, height, zbuffer, winner,
              edge_epsilon, near_slack, min_area):
    """Rasterise one screen-space triangle (x, y raster coordinates, z NDC depth)."""
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    if abs(area) <= min_area:
        return
    i0 = max(np.ceil(min(x0, x1, x2) - 0.5), 0.0)
    i1 = min(np.floor(max(x0, x1, x2) - 0.5), width - 1.0)
    j0 = max(np.ceil(min(y0, y1, y2) - 0.5), 0.0)
    j1 = min(np.floor(max(y0, y1, y2) - 0.5), height - 1.0)
    if i1 < i0 or j1 < j0:
        return
    inv_area = 1.0 / area
    ex0 = x0 - i0
    ey0 = y0 - j0
    a1 = (y2 - y0) * inv_area
    b1 = -(x2 - x0) * inv_area
    c1 = -(a1 * ex0 + b1 * ey0)
    a2 = -(y1 - y0) * inv_area
    b2 = (x1 - x0) * inv_area
    c2 = -(a2 * ex0 + b2 * ey0)
    dz1 = z1 - z0
    dz2 = z2 - z0
    az = a1 * dz1 + a2 * dz2
    bz = b1 * dz1 + b2 * dz2
    cz = z0 + c1 * dz1 + c2 * dz2
    ii0 = int(i0)
    jj0 = int(j0)
    for dj in range(int(j1) - jj0 + 1):
        fy = dj + 0.5
        e1_row = c1 + b1 * fy
        e2_row = c2 + b2 * fy
        z_row = cz + bz * fy
        row = (jj0 + dj) * width + ii0
        for di in range(int(i1) - ii0 + 1):
            fx = di + 0.5
            e1 = e1_row + a1 * fx
            if e1 < -edge_epsilon:
                continue
            e2 = e2_row + a2 * fx
            if e2 < -edge_epsilon or 1.0 - e1 - e2 < -edge_epsilon:
                continue
            depth = z_row + az * fx
            if depth > 1.0 or depth < -1.0 - near_slack:
                continue
            pixel = row + di
            if depth <= zbuffer[pixel]:
                zbuffer[pixel] = depth
                winner[pixel] = tri_id


@njit(cache=True, nogil=True)
def rasterize_indexed(clip, triangles, ids, width, height, zbuffer, winner, edge_epsilon, near_slack, min_area):
    """The whole rasteriser of ``raster.rasterize`` for indexed triangles in clip space:
    trivial rejection, near-plane clipping into one or two triangles, and the fill."""
    # Screen coordinates of every vertex in front of the near plane, once.
    count_vertices = clip.shape[0]
    sx = np.empty(count_vertices)
    sy = np.empty(count_vertices)
    sz = np.empty(count_vertices)
    code = np.zeros(count_vertices, dtype=np.uint8)
    for i in range(count_vertices):
        x, y, z, w = clip[i, 0], clip[i, 1], clip[i, 2], clip[i, 3]
        if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(z) and np.isfinite(w)):
            code[i] = 128
            continue
        c = 0
        if x > w:
            c |= 1
        if x < -w:
            c |= 2
        if y > w:
            c |= 4
        if y < -w:
            c |= 8
        if z > w:
            c |= 16
        if z + w < 0.0:
            c |= 32
        code[i] = c
        if w > 0.0:
            sx[i] = (x / w + 1.0) * (0.5 * width)
            sy[i] = (y / w + 1.0) * (0.5 * height)
            sz[i] = z / w
    polygon = np.empty((4, 4))
    for k in range(triangles.shape[0]):
        a, b, c = triangles[k, 0], triangles[k, 1], triangles[k, 2]
        ca, cb, cc = code[a], code[b], code[c]
        if (ca | cb | cc) & 128 or (ca & cb & cc) != 0:
            continue
        if ((ca | cb | cc) & 32) == 0:
            _fill_one(sx[a], sy[a], sz[a], sx[b], sy[b], sz[b], sx[c], sy[c], sz[c], ids[k],
                      width, height, zbuffer, winner, edge_epsilon, near_slack, min_area)
            continue
        # Sutherland-Hodgman against the near plane z + w >= 0 (keeps the winding).
        count = 0
        for corner in range(3):
            va = triangles[k, corner]
            vb = triangles[k, (corner + 1) % 3]
            da = clip[va, 2] + clip[va, 3]
            db = clip[vb, 2] + clip[vb, 3]
            if da >= 0.0:
                for r in range(4):
                    polygon[count, r] = clip[va, r]
                count += 1
            if (da >= 0.0) != (db >= 0.0):
                t = da / (da - db)
                for r in range(4):
                    polygon[count, r] = clip[va, r] + (clip[vb, r] - clip[va, r]) * t
                count += 1
        for fan in range(1, count - 1):
            p, q = fan, fan + 1
            w0, w1, w2 = polygon[0, 3], polygon[p, 3], polygon[q, 3]
            _fill_one((polygon[0, 0] / w0 + 1.0) * (0.5 * width), (polygon[0, 1] / w0 + 1.0) * (0.5 * height),
                      polygon[0, 2] / w0,
                      (polygon[p, 0] / w1 + 1.0) * (0.5 * width), (polygon[p, 1] / w1 + 1.0) * (0.5 * height),
                      polygon[p, 2] / w1,
                      (polygon[q, 0] / w2 + 1.0) * (0.5 * width), (polygon[q, 1] / w2 + 1.0) * (0.5 * height),
                      polygon[q, 2] / w2,
                      ids[k], width, height, zbuffer, winner, edge_epsilon, near_slack, min_area)


@njit(cache=True, nogil=True, inline="always")
def _unproject(inverse, ndc_x, ndc_y, ndc_z):
    w = inverse[3, 0] * ndc_x + inverse[3, 1] * ndc_y + inverse[3, 2] * ndc_z + inverse[3, 3]
    return (
        (inverse[0, 0] * ndc_x + inverse[0, 1] * ndc_y + inverse[0, 2] * ndc_z + inverse[0, 3]) / w,
        (inverse[1, 0] * ndc_x + inverse[1, 1] * ndc_y + inverse[1, 2] * ndc_z + inverse[1, 3]) / w,
        (inverse[2, 0] * ndc_x + inverse[2, 1] * ndc_y + inverse[2, 2] * ndc_z + inverse[2, 3]) / w,
    )


@njit(cache=True, nogil=True)
def _hidden(px, py, point_depth, own, raster, raster_depth, width, height, inverse, view_row,
            vertices, triangles, depth_tolerance, neighbourhood_tolerance, barycentric_slack):
    """1.0 if a point at raster (px, py) and view depth ``point_depth`` of the previous frame
    was hidden there (see compute._hidden_before, which this mirrors)."""
    ix = min(max(int(np.floor(px)), 0), width - 1)
    iy = min(max(int(np.floor(py)), 0), height - 1)
    if raster[iy * width + ix] == own:
        return 0.0
    base_x = int(np.floor(px - 0.5))
    base_y = int(np.floor(py - 0.5))
    farthest = 0.0
    for dx in range(2):
        for dy in range(2):
            sx = min(max(base_x + dx, 0), width - 1)
            sy = min(max(base_y + dy, 0), height - 1)
            farthest = max(farthest, raster_depth[sy * width + sx])
    if farthest < point_depth * (1.0 - neighbourhood_tolerance):
        return 1.0
    ndc_x = 2.0 * px / width - 1.0
    ndc_y = 2.0 * py / height - 1.0
    o0, o1, o2 = _unproject(inverse, ndc_x, ndc_y, -1.0)
    f0, f1, f2 = _unproject(inverse, ndc_x, ndc_y, 1.0)
    d0 = f0 - o0
    d1 = f1 - o1
    d2 = f2 - o2
    for dx in range(2):
        for dy in range(2):
            sx = min(max(base_x + dx, 0), width - 1)
            sy = min(max(base_y + dy, 0), height - 1)
            seen = raster[sy * width + sx]
            if seen < 0 or seen == own:
                continue
            a, b, c = triangles[seen, 0], triangles[seen, 1], triangles[seen, 2]
            v00, v01, v02 = vertices[a, 0], vertices[a, 1], vertices[a, 2]
            e10, e11, e12 = vertices[b, 0] - v00, vertices[b, 1] - v01, vertices[b, 2] - v02
            e20, e21, e22 = vertices[c, 0] - v00, vertices[c, 1] - v01, vertices[c, 2] - v02
            p0 = d1 * e22 - d2 * e21
            p1 = d2 * e20 - d0 * e22
            p2 = d0 * e21 - d1 * e20
            det = e10 * p0 + e11 * p1 + e12 * p2
            if abs(det) < 1e-300:
                continue
            inv_det = 1.0 / det
            s0 = o0 - v00
            s1 = o1 - v01
            s2 = o2 - v02
            u = (s0 * p0 + s1 * p1 + s2 * p2) * inv_det
            q0 = s1 * e12 - s2 * e11
            q1 = s2 * e10 - s0 * e12
            q2 = s0 * e11 - s1 * e10
            v = (d0 * q0 + d1 * q1 + d2 * q2) * inv_det
            t = (e20 * q0 + e21 * q1 + e22 * q2) * inv_det
            if u < -barycentric_slack or v < -barycentric_slack or u + v > 1.0 + barycentric_slack:
                continue
            hx = o0 + d0 * t
            hy = o1 + d1 * t
            hz = o2 + d2 * t
            hit_depth = -(view_row[0] * hx + view_row[1] * hy + view_row[2] * hz + view_row[3])
            if hit_depth < point_depth * (1.0 - depth_tolerance):
                return 1.0
    return 0.0


@njit(cache=True, nogil=True, parallel=True)
def guide_pixels(pixels, local, width, height, hit, normal_table, winding, previous_table, following_table,
                 existed, own_ids, raster, raster_depth, prev_inverse, prev_view_row,
                 prev_vertices, prev_triangles, depth, normal, vector, occlusion,
                 depth_tolerance, neighbourhood_tolerance, barycentric_slack):
    """Every guide at every covered pixel (see compute.compute_guides, which this mirrors).

    All three frames share the render size ``width`` x ``height``. Returns how many
    pixels see the back side of a surface."""
    has_previous = previous_table.shape[0] > 0
    has_following = following_table.shape[0] > 0
    backfacing = 0
    for n in prange(pixels.shape[0]):
        pixel = pixels[n]
        k = local[n]
        px = (pixel % width) + 0.5
        py = (pixel // width) + 0.5
        c = hit[k]
        denominator = c[6] + px * c[7] + py * c[8]
        if denominator == 0.0:
            denominator = 1e-300
        inverse = 1.0 / denominator
        u = (c[0] + px * c[1] + py * c[2]) * inverse
        v = (c[3] + px * c[4] + py * c[5]) * inverse
        depth[pixel] = (c[9] + px * c[10] + py * c[11]) * inverse

        sign = 1.0
        if denominator * winding[k] > 0.0:
            sign = -1.0
            backfacing += 1
        m = normal_table[k]
        nx = m[0] + u * m[3] + v * m[6]
        ny = m[1] + u * m[4] + v * m[7]
        nz = m[2] + u * m[5] + v * m[8]
        length = np.sqrt(nx * nx + ny * ny + nz * nz)
        if length > 0.0:
            sign /= length
        normal[pixel, 0] = nx * sign
        normal[pixel, 1] = ny * sign
        normal[pixel, 2] = nz * sign

        if has_previous:
            q = previous_table[k]
            x = q[0] + u * q[1] + v * q[2]
            y = q[3] + u * q[4] + v * q[5]
            w = q[6] + u * q[7] + v * q[8]
            point_depth = q[9] + u * q[10] + v * q[11]
            in_front = w > 1e-12
            if not in_front:
                w = 1.0
            prev_x = (x / w + 1.0) * (0.5 * width)
            prev_y = (y / w + 1.0) * (0.5 * height)
            vector[pixel, 0] = prev_x - px
            vector[pixel, 1] = prev_y - py
            if in_front and existed[n] and 0.0 <= prev_x < width and 0.0 <= prev_y < height:
                occlusion[pixel] = _hidden(prev_x, prev_y, point_depth, own_ids[n], raster, raster_depth,
                                           width, height, prev_inverse, prev_view_row,
                                           prev_vertices, prev_triangles, depth_tolerance,
                                           neighbourhood_tolerance, barycentric_slack)
            else:
                occlusion[pixel] = 1.0
        if has_following:
            q = following_table[k]
            x = q[0] + u * q[1] + v * q[2]
            y = q[3] + u * q[4] + v * q[5]
            w = q[6] + u * q[7] + v * q[8]
            if w <= 1e-12:
                w = 1.0
            vector[pixel, 2] = px - (x / w + 1.0) * (0.5 * width)
            vector[pixel, 3] = py - (y / w + 1.0) * (0.5 * height)
    return backfacing


@njit(cache=True, nogil=True, inline="always")
def _affine_rows(vertices, a, b, c, rows, out, k):
    """Clip x, y, w and view depth of triangle (a, b, c) at another frame, affine in (u, v)
    (see compute._affine_projection, which this mirrors)."""
    for r in range(4):
        q00 = vertices[a, 0]
        q01 = vertices[a, 1]
        q02 = vertices[a, 2]
        out[k, 3 * r] = q00 * rows[r, 0] + q01 * rows[r, 1] + q02 * rows[r, 2] + rows[r, 3]
        out[k, 3 * r + 1] = ((vertices[b, 0] - q00) * rows[r, 0] + (vertices[b, 1] - q01) * rows[r, 1]
                             + (vertices[b, 2] - q02) * rows[r, 2])
        out[k, 3 * r + 2] = ((vertices[c, 0] - q00) * rows[r, 0] + (vertices[c, 1] - q01) * rows[r, 1]
                             + (vertices[c, 2] - q02) * rows[r, 2])


@njit(cache=True, nogil=True, inline="always")
def _cross(ax, ay, az, bx, by, bz):
    return ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx


@njit(cache=True, nogil=True, parallel=True)
def triangle_tables(used, vertices, triangles, owner_of, used_normals, used_flat, normal_matrices, renormalise,
                    instance_winding, origin, direction, forward, is_ortho, previous_vertices, previous_rows,
                    following_vertices, following_rows, hit, normal, winding, previous, following):
    """The per-triangle tables of compute._TriangleTables, one visible triangle at a time
    (the numpy code there is the reference; the tests hold both to the same guides).
    ``used_normals`` and ``used_flat`` hold the k-th visible triangle's at row k."""
    has_previous = previous.shape[0] > 0
    has_following = following.shape[0] > 0
    fx, fy, fz = forward[0], forward[1], forward[2]
    for k in prange(used.shape[0]):
        t = used[k]
        a, b, c = triangles[t, 0], triangles[t, 1], triangles[t, 2]
        v0x, v0y, v0z = vertices[a, 0], vertices[a, 1], vertices[a, 2]
        e1x, e1y, e1z = vertices[b, 0] - v0x, vertices[b, 1] - v0y, vertices[b, 2] - v0z
        e2x, e2y, e2z = vertices[c, 0] - v0x, vertices[c, 1] - v0y, vertices[c, 2] - v0z
        nx, ny, nz = _cross(e1x, e1y, e1z, e2x, e2y, e2z)
        sx, sy, sz = origin[0, 0] - v0x, origin[0, 1] - v0y, origin[0, 2] - v0z
        if is_ortho:
            ux, uy, uz = _cross(e2x, e2y, e2z, fx, fy, fz)
            wx, wy, wz = _cross(fx, fy, fz, e1x, e1y, e1z)
            hit[k, 0] = sx * ux + sy * uy + sz * uz
            hit[k, 3] = sx * wx + sy * wy + sz * wz
            hit[k, 6] = nx * fx + ny * fy + nz * fz
            hit[k, 7] = 0.0
            hit[k, 8] = 0.0
            hit[k, 9] = -(sx * nx + sy * ny + sz * nz)
            for j in (1, 2):
                ox, oy, oz = origin[j, 0], origin[j, 1], origin[j, 2]
                hit[k, j] = ux * ox + uy * oy + uz * oz
                hit[k, 3 + j] = wx * ox + wy * oy + wz * oz
                hit[k, 9 + j] = -(nx * ox + ny * oy + nz * oz)
        else:
            ux, uy, uz = _cross(sx, sy, sz, e2x, e2y, e2z)
            wx, wy, wz = _cross(e1x, e1y, e1z, sx, sy, sz)
            plane = -(sx * nx + sy * ny + sz * nz)
            for j in range(3):
                dx, dy, dz = direction[j, 0], direction[j, 1], direction[j, 2]
                hit[k, j] = ux * dx + uy * dy + uz * dz
                hit[k, 3 + j] = wx * dx + wy * dy + wz * dz
                hit[k, 6 + j] = nx * dx + ny * dy + nz * dz
                hit[k, 9 + j] = plane * (fx * dx + fy * dy + fz * dz)
        owner = owner_of[t]
        sign = instance_winding[owner]
        winding[k] = sign
        world = np.empty((3, 3))
        if used_flat[k]:
            length = np.sqrt(nx * nx + ny * ny + nz * nz)
            scale = sign / length if length > 0.0 else sign
            for corner in range(3):
                world[corner, 0] = nx * scale
                world[corner, 1] = ny * scale
                world[corner, 2] = nz * scale
        else:
            m = normal_matrices[owner]
            for corner in range(3):
                x = np.float64(used_normals[k, corner, 0])
                y = np.float64(used_normals[k, corner, 1])
                z = np.float64(used_normals[k, corner, 2])
                for i in range(3):
                    world[corner, i] = m[i, 0] * x + m[i, 1] * y + m[i, 2] * z
                if renormalise[owner]:
                    length = np.sqrt(world[corner, 0] ** 2 + world[corner, 1] ** 2 + world[corner, 2] ** 2)
                    if length > 0.0:
                        for i in range(3):
                            world[corner, i] /= length
        for i in range(3):
            normal[k, i] = world[0, i]
            normal[k, 3 + i] = world[1, i] - world[0, i]
            normal[k, 6 + i] = world[2, i] - world[0, i]
        if has_previous:
            _affine_rows(previous_vertices, a, b, c, previous_rows, previous, k)
        if has_following:
            _affine_rows(following_vertices, a, b, c, following_rows, following, k)


@njit(cache=True, nogil=True, inline="always")
def _direction_in(vp, dx, dy, dz, width, height):
    """Raster position of a direction at infinity in a camera (see background.project_directions)."""
    w = vp[3, 0] * dx + vp[3, 1] * dy + vp[3, 2] * dz
    valid = w > 1e-12
    if not valid:
        w = 1.0
    x = ((vp[0, 0] * dx + vp[0, 1] * dy + vp[0, 2] * dz) / w + 1.0) * 0.5 * width
    y = ((vp[1, 0] * dx + vp[1, 1] * dy + vp[1, 2] * dz) / w + 1.0) * 0.5 * height
    return x, y, valid


@njit(cache=True, nogil=True, inline="always")
def _unmoved_as_zero(moved):
    return 0.0 if abs(moved) < 1e-6 else moved


@njit(cache=True, nogil=True, parallel=True)
def background_motion(index, width, direction, perspective, previous_vp, previous_size, previous_perspective,
                      previous_winner, following_vp, following_size, following_perspective, vector, occlusion):
    """background.fill_background one pixel at a time (the numpy code there is the reference).

    A camera that is absent has a zero-sized ``*_size``; ``previous_winner`` is empty when
    the previous frame's visibility is unknown."""
    has_previous = previous_size[0] > 0
    has_following = following_size[0] > 0
    for n in prange(index.shape[0]):
        pixel = index[n]
        px = (pixel % width) + 0.5
        py = (pixel // width) + 0.5
        dx = direction[0, 0] + px * direction[1, 0] + py * direction[2, 0]
        dy = direction[0, 1] + px * direction[1, 1] + py * direction[2, 1]
        dz = direction[0, 2] + px * direction[1, 2] + py * direction[2, 2]
        if has_previous:
            x, y, valid = px, py, True
            if perspective and previous_perspective:
                x, y, valid = _direction_in(previous_vp, dx, dy, dz, previous_size[0], previous_size[1])
                vector[pixel, 0] = _unmoved_as_zero(x - px) if valid else 0.0
                vector[pixel, 1] = _unmoved_as_zero(y - py) if valid else 0.0
            if previous_winner.shape[0] > 0:
                column = np.floor(x)
                row = np.floor(y)
                seen = False
                if valid and 0 <= column < previous_size[0] and 0 <= row < previous_size[1]:
                    seen = previous_winner[int(row) * previous_size[0] + int(column)] < 0
                occlusion[pixel] = 0.0 if seen else 1.0
        if has_following and perspective and following_perspective:
            x, y, valid = _direction_in(following_vp, dx, dy, dz, following_size[0], following_size[1])
            vector[pixel, 2] = _unmoved_as_zero(px - x) if valid else 0.0
            vector[pixel, 3] = _unmoved_as_zero(py - y) if valid else 0.0
