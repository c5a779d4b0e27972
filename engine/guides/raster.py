"""A vectorised triangle rasteriser that resolves visibility only.

It answers one question per pixel: which triangle is nearest at the pixel centre.
Every guide value is then computed exactly for that triangle by a ray cast (see
``compute.py``), so the rasteriser never interpolates attributes and its precision
only matters for which surface wins.

Triangles crossing the near plane are clipped in homogeneous space (into one or
two triangles that keep the original triangle's id); fragments beyond the far
plane are discarded, which matches Cycles' clip_start/clip_end.

Speed comes from numpy over all triangles at once: triangles whose bounding box
spans at most 2x2 pixels (most of them in dense meshes) are tested against a fixed
set of four pixel centres without any per-pixel bookkeeping; larger ones are
enumerated pixel by pixel in bounded chunks.
"""
from __future__ import annotations

import numpy as np

from . import kernels

# Candidate (pixel, triangle) pairs processed at once; bounds memory at any size.
CHUNK_CANDIDATES = 1 << 21
# Barycentric slack so that shared edges never leave cracks between triangles.
EDGE_EPSILON = 1e-9
# NDC depth slack at the near plane (clipped vertices land on it up to rounding).
NEAR_SLACK = 1e-9
# Screen-space area (pixels squared, doubled) below which a triangle covers nothing.
MIN_AREA = 1e-12

_OUT_RIGHT, _OUT_LEFT, _OUT_TOP, _OUT_BOTTOM, _OUT_FAR, _OUT_NEAR = 1, 2, 4, 8, 16, 32


def _outcodes(x, y, z, w):
    code = np.zeros(x.shape, dtype=np.uint8)
    code |= np.where(x > w, _OUT_RIGHT, 0).astype(np.uint8)
    code |= np.where(x < -w, _OUT_LEFT, 0).astype(np.uint8)
    code |= np.where(y > w, _OUT_TOP, 0).astype(np.uint8)
    code |= np.where(y < -w, _OUT_BOTTOM, 0).astype(np.uint8)
    code |= np.where(z > w, _OUT_FAR, 0).astype(np.uint8)
    code |= np.where(z + w < 0, _OUT_NEAR, 0).astype(np.uint8)
    return code


def clip_near(clip: np.ndarray, ids: np.ndarray):
    """Clip triangles (T, 3, 4) against the near plane z >= -w.

    Returns clipped triangles and the id of the triangle each one came from.
    """
    distance = clip[..., 2] + clip[..., 3]
    inside = distance >= 0.0
    count = inside.sum(axis=1)

    keep = [clip[count == 3]]
    keep_ids = [ids[count == 3]]

    one = count == 1
    if np.any(one):
        tri, dist, ins = clip[one], distance[one], inside[one]
        first = np.argmax(ins, axis=1)  # the inside vertex
        a, b, c = _rolled(tri, first)
        da, db, dc = _rolled(dist, first)
        ab = a + (b - a) * (da / (da - db))[:, None]
        ac = a + (c - a) * (da / (da - dc))[:, None]
        keep.append(np.stack([a, ab, ac], axis=1))
        keep_ids.append(ids[one])

    two = count == 2
    if np.any(two):
        tri, dist, ins = clip[two], distance[two], inside[two]
        outside = np.argmin(ins, axis=1)
        # Put the outside vertex last: a, b inside, c outside.
        c, a, b = _rolled(tri, outside)
        dc, da, db = _rolled(dist, outside)
        bc = b + (c - b) * (db / (db - dc))[:, None]
        ac = a + (c - a) * (da / (da - dc))[:, None]
        keep.append(np.stack([a, b, bc], axis=1))
        keep.append(np.stack([a, bc, ac], axis=1))
        keep_ids.extend([ids[two], ids[two]])

    return np.concatenate(keep, axis=0), np.concatenate(keep_ids, axis=0)


def _rolled(values: np.ndarray, start: np.ndarray):
    rows = np.arange(values.shape[0])
    return (
        values[rows, start % 3],
        values[rows, (start + 1) % 3],
        values[rows, (start + 2) % 3],
    )


def rasterize(clip_vertices: np.ndarray, triangles: np.ndarray, width: int, height: int,
              ids: np.ndarray | None = None, use_kernels: bool = True):
    """Visibility of indexed triangles whose vertices are given in clip space (V, 4).

    Returns ``(winner, z)``: arrays of shape (height, width), rows bottom-up as in
    Blender's raster space. ``winner`` holds the winning triangle's id (``ids[k]``,
    by default its index) or -1, and ``z`` its NDC depth or +inf.
    """
    clip_vertices = np.asarray(clip_vertices, dtype=np.float64).reshape(-1, 4)
    triangles = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    if ids is None:
        ids = np.arange(triangles.shape[0], dtype=np.int64)
    zbuffer = np.full(width * height, np.inf)
    winner = np.full(width * height, -1, dtype=np.int64)
    if triangles.shape[0] == 0:
        return winner.reshape(height, width), zbuffer.reshape(height, width)
    if kernels.AVAILABLE and use_kernels:
        kernels.rasterize_indexed(clip_vertices, triangles, np.asarray(ids, dtype=np.int64), width, height,
                                  zbuffer, winner, EDGE_EPSILON, NEAR_SLACK, MIN_AREA)
        return winner.reshape(height, width), zbuffer.reshape(height, width)

    x, y, z, w = (np.ascontiguousarray(clip_vertices[:, k]) for k in range(4))
    finite = np.isfinite(clip_vertices).all(axis=1)
    code = _outcodes(x, y, z, w)
    code[~finite] = 0xFF
    c0, c1, c2 = code[triangles[:, 0]], code[triangles[:, 1]], code[triangles[:, 2]]
    bad = ~(finite[triangles[:, 0]] & finite[triangles[:, 1]] & finite[triangles[:, 2]])
    rejected = ((c0 & c1 & c2) != 0) | bad
    needs_clip = (((c0 | c1 | c2) & _OUT_NEAR) != 0) & ~rejected
    plain = ~rejected & ~needs_clip

    # Screen coordinates of vertices in front of the camera.
    safe_w = np.where(w > 0, w, 1.0)
    sx = (x / safe_w + 1.0) * (0.5 * width)
    sy = (y / safe_w + 1.0) * (0.5 * height)
    sz = z / safe_w

    plain_tris = triangles[plain]
    corners = [
        np.stack([sx[plain_tris[:, k]], sy[plain_tris[:, k]], sz[plain_tris[:, k]]])
        for k in range(3)
    ]
    tri_ids = ids[plain]
    if np.any(needs_clip):
        soup = clip_vertices[triangles[needs_clip]]
        soup, soup_ids = clip_near(soup, ids[needs_clip])
        sw = soup[..., 3]
        extra = [
            np.stack([
                (soup[:, k, 0] / sw[:, k] + 1.0) * (0.5 * width),
                (soup[:, k, 1] / sw[:, k] + 1.0) * (0.5 * height),
                soup[:, k, 2] / sw[:, k],
            ])
            for k in range(3)
        ]
        corners = [np.concatenate([corners[k], extra[k]], axis=1) for k in range(3)]
        tri_ids = np.concatenate([tri_ids, soup_ids])

    (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = corners
    _fill(x0, y0, z0, x1, y1, z1, x2, y2, z2, tri_ids, width, height, zbuffer, winner)
    return winner.reshape(height, width), zbuffer.reshape(height, width)


def rasterize_triangles(clip: np.ndarray, width: int, height: int, ids: np.ndarray | None = None,
                        use_kernels: bool = True):
    """Visibility of a triangle soup given in clip space (T, 3, 4); see :func:`rasterize`."""
    clip = np.asarray(clip, dtype=np.float64).reshape(-1, 3, 4)
    triangles = np.arange(clip.shape[0] * 3, dtype=np.int64).reshape(-1, 3)
    return rasterize(clip.reshape(-1, 4), triangles, width, height, ids, use_kernels)


def _fill(x0, y0, z0, x1, y1, z1, x2, y2, z2, tri_ids, width, height, zbuffer, winner):
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    xmin = np.minimum(np.minimum(x0, x1), x2)
    xmax = np.maximum(np.maximum(x0, x1), x2)
    ymin = np.minimum(np.minimum(y0, y1), y2)
    ymax = np.maximum(np.maximum(y0, y1), y2)
    # Pixel centres i + 0.5 inside the bounding box, clamped to the picture.
    i0 = np.maximum(np.ceil(xmin - 0.5), 0)
    i1 = np.minimum(np.floor(xmax - 0.5), width - 1)
    j0 = np.maximum(np.ceil(ymin - 0.5), 0)
    j1 = np.minimum(np.floor(ymax - 0.5), height - 1)
    usable = (np.abs(area) > MIN_AREA) & (i1 >= i0) & (j1 >= j0)
    keep = np.nonzero(usable)[0]
    if keep.size == 0:
        return
    x0, y0, z0, x1, y1, z1, x2, y2, z2, area, i0, i1, j0, j1, tri_ids = (
        a[keep] for a in (x0, y0, z0, x1, y1, z1, x2, y2, z2, area, i0, i1, j0, j1, tri_ids)
    )
    # Affine edge and depth functions relative to the box origin (i0, j0):
    #   b(px, py) = c + a * (px - i0) + b * (py - j0).
    inv_area = 1.0 / area
    ex0, ey0 = x0 - i0, y0 - j0
    a1, b1 = (y2 - y0) * inv_area, -(x2 - x0) * inv_area
    c1 = -(a1 * ex0 + b1 * ey0)
    a2, b2 = -(y1 - y0) * inv_area, (x1 - x0) * inv_area
    c2 = -(a2 * ex0 + b2 * ey0)
    dz1, dz2 = z1 - z0, z2 - z0
    az, bz, cz = a1 * dz1 + a2 * dz2, b1 * dz1 + b2 * dz2, z0 + c1 * dz1 + c2 * dz2
    i0 = i0.astype(np.int64)
    j0 = j0.astype(np.int64)
    box_w = i1.astype(np.int64) - i0 + 1
    box_h = j1.astype(np.int64) - j0 + 1
    coefficients = (a1, b1, c1, a2, b2, c2, az, bz, cz)

    small = (box_w <= 2) & (box_h <= 2)
    index = np.nonzero(small)[0]
    if index.size:
        # Four fixed candidate centres per triangle, masked by its box.
        di = np.array([0, 1, 0, 1])
        dj = np.array([0, 0, 1, 1])
        a1s, b1s, c1s, a2s, b2s, c2s, azs, bzs, czs = (c[index][:, None] for c in coefficients)
        fx, fy = di + 0.5, dj + 0.5
        e1 = c1s + a1s * fx + b1s * fy
        e2 = c2s + a2s * fx + b2s * fy
        depth = czs + azs * fx + bzs * fy
        inside = (
            (di < box_w[index][:, None]) & (dj < box_h[index][:, None])
            & (e1 >= -EDGE_EPSILON) & (e2 >= -EDGE_EPSILON) & (1.0 - e1 - e2 >= -EDGE_EPSILON)
            & (depth <= 1.0) & (depth >= -1.0 - NEAR_SLACK)
        )
        pixel = (j0[index][:, None] + dj) * width + (i0[index][:, None] + di)
        _resolve(pixel[inside], depth[inside], np.broadcast_to(tri_ids[index][:, None], inside.shape)[inside],
                 zbuffer, winner)

    index = np.nonzero(~small)[0]
    if index.size:
        _fill_spans(index, coefficients, i0, j0, box_w, box_h, tri_ids, width, zbuffer, winner)


def _fill_spans(index, coefficients, i0, j0, box_w, box_h, tri_ids, width, zbuffer, winner):
    """Larger triangles, row by row: each row's covered span comes from the three edge
    functions, so only covered pixels are ever enumerated."""
    a1, b1, c1, a2, b2, c2, az, bz, cz = (c[index] for c in coefficients)
    rows = box_h[index]
    row_offsets = np.concatenate([[0], np.cumsum(rows)])
    for start in range(0, int(row_offsets[-1]), CHUNK_CANDIDATES // 64):
        stop = min(start + CHUNK_CANDIDATES // 64, int(row_offsets[-1]))
        first = int(np.searchsorted(row_offsets, start, side="right") - 1)
        last = int(np.searchsorted(row_offsets, stop - 1, side="right") - 1)
        span = np.arange(first, last + 1)
        lo_row = np.maximum(row_offsets[span], start)
        hi_row = np.minimum(row_offsets[span + 1], stop)
        tri = np.repeat(span, hi_row - lo_row)
        dj = np.arange(start, stop) - row_offsets[tri]
        fy = dj + 0.5
        # Along the row each edge function is alpha + a * fx; keep fx where all three >= -eps.
        e1_0 = c1[tri] + b1[tri] * fy
        e2_0 = c2[tri] + b2[tri] * fy
        e0_0 = 1.0 - e1_0 - e2_0
        lo = np.zeros(tri.size)
        hi = np.full(tri.size, np.inf)
        empty = np.zeros(tri.size, dtype=bool)
        for alpha, slope in ((e1_0, a1[tri]), (e2_0, a2[tri]), (e0_0, -a1[tri] - a2[tri])):
            alpha = alpha + EDGE_EPSILON
            with np.errstate(divide="ignore", invalid="ignore"):
                bound = -alpha / slope
            lo = np.where(slope > 0, np.maximum(lo, bound), lo)
            hi = np.where(slope < 0, np.minimum(hi, bound), hi)
            empty |= (slope == 0) & (alpha < 0)
        first_px = np.maximum(np.ceil(lo - 0.5), 0).astype(np.int64)
        last_px = np.minimum(np.floor(np.minimum(hi, box_w[index][tri]) - 0.5), box_w[index][tri] - 1)
        last_px = last_px.astype(np.int64)
        counts = np.where(empty, 0, np.maximum(last_px - first_px + 1, 0))
        total = int(counts.sum())
        if total == 0:
            continue
        run = np.repeat(np.arange(tri.size), counts)
        run_offsets = np.concatenate([[0], np.cumsum(counts)])
        di = first_px[run] + (np.arange(total) - run_offsets[run])
        owner = tri[run]
        fx = di + 0.5
        depth = cz[owner] + az[owner] * fx + bz[owner] * fy[run]
        keep = (depth <= 1.0) & (depth >= -1.0 - NEAR_SLACK)
        g = index[owner]
        pixel = (j0[g] + dj[run]) * width + (i0[g] + di)
        _resolve(pixel[keep], depth[keep], tri_ids[g[keep]], zbuffer, winner)


def _resolve(pixel, depth, ids, zbuffer, winner):
    """Depth test: keep the nearest fragment per pixel (ties: the last one)."""
    if pixel.size == 0:
        return
    np.minimum.at(zbuffer, pixel, depth)
    won = depth <= zbuffer[pixel]
    winner[pixel[won]] = ids[won]
