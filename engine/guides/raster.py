"""A vectorised triangle rasteriser that resolves visibility only.

It answers one question per pixel: which triangle is nearest at the pixel centre.
Every guide value is then computed exactly for that triangle by a ray cast (see
``compute.py``), so the rasteriser never interpolates attributes and its precision
only matters for which surface wins.

Triangles crossing the near plane are clipped in homogeneous space (into one or
two triangles that keep the original triangle's id); fragments beyond the far
plane are discarded, which matches Cycles' clip_start/clip_end.
"""
from __future__ import annotations

import numpy as np

# Candidate (pixel, triangle) pairs processed at once; bounds memory at any size.
CHUNK_CANDIDATES = 1 << 21


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


def rasterize_triangles(clip: np.ndarray, width: int, height: int, ids: np.ndarray | None = None):
    """Visibility of triangles given in clip space (T, 3, 4).

    Returns ``(triangle, z)``: arrays of shape (height, width), rows bottom-up as in
    Blender's raster space. ``triangle`` holds the winning triangle id (or -1) and
    ``z`` its NDC depth (or +inf).
    """
    clip = np.asarray(clip, dtype=np.float64).reshape(-1, 3, 4)
    if ids is None:
        ids = np.arange(clip.shape[0], dtype=np.int64)
    pixel_count = width * height
    zbuffer = np.full(pixel_count, np.inf)
    winner = np.full(pixel_count, -1, dtype=np.int64)
    if clip.shape[0] == 0:
        return winner.reshape(height, width), zbuffer.reshape(height, width)

    finite = np.all(np.isfinite(clip), axis=(1, 2))
    clip, ids = clip[finite], ids[finite]
    # Trivially reject triangles wholly outside one side of the view volume.
    x, y, z, w = clip[..., 0], clip[..., 1], clip[..., 2], clip[..., 3]
    outside = (
        np.all(x > w, axis=1) | np.all(x < -w, axis=1)
        | np.all(y > w, axis=1) | np.all(y < -w, axis=1)
        | np.all(z > w, axis=1)
    )
    clip, ids = clip[~outside], ids[~outside]
    clip, ids = clip_near(clip, ids)
    if clip.shape[0] == 0:
        return winner.reshape(height, width), zbuffer.reshape(height, width)

    w = clip[..., 3]
    sx = (clip[..., 0] / w + 1.0) * (0.5 * width)
    sy = (clip[..., 1] / w + 1.0) * (0.5 * height)
    sz = clip[..., 2] / w

    x0, x1, x2 = sx[:, 0], sx[:, 1], sx[:, 2]
    y0, y1, y2 = sy[:, 0], sy[:, 1], sy[:, 2]
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)

    # Pixel centres i + 0.5 inside the bounding box.
    i0 = np.maximum(np.ceil(np.minimum(np.minimum(x0, x1), x2) - 0.5), 0)
    i1 = np.minimum(np.floor(np.maximum(np.maximum(x0, x1), x2) - 0.5), width - 1)
    j0 = np.maximum(np.ceil(np.minimum(np.minimum(y0, y1), y2) - 0.5), 0)
    j1 = np.minimum(np.floor(np.maximum(np.maximum(y0, y1), y2) - 0.5), height - 1)
    usable = (np.abs(area) > 1e-12) & (i1 >= i0) & (j1 >= j0)
    if not np.any(usable):
        return winner.reshape(height, width), zbuffer.reshape(height, width)

    sel = np.nonzero(usable)[0]
    x0, y0, x1, y1, x2, y2 = x0[sel], y0[sel], x1[sel], y1[sel], x2[sel], y2[sel]
    z0, z1, z2 = sz[sel, 0], sz[sel, 1], sz[sel, 2]
    inv_area = 1.0 / area[sel]
    ids = ids[sel]
    i0 = i0[sel].astype(np.int64)
    j0 = j0[sel].astype(np.int64)
    box_w = i1[sel].astype(np.int64) - i0 + 1
    box_h = j1[sel].astype(np.int64) - j0 + 1
    counts = box_w * box_h
    offsets = np.concatenate([[0], np.cumsum(counts)])
    total = int(offsets[-1])

    for start in range(0, total, CHUNK_CANDIDATES):
        stop = min(start + CHUNK_CANDIDATES, total)
        first = int(np.searchsorted(offsets, start, side="right") - 1)
        last = int(np.searchsorted(offsets, stop - 1, side="right") - 1)
        span = np.arange(first, last + 1)
        lo = np.maximum(offsets[span], start)
        hi = np.minimum(offsets[span + 1], stop)
        tri = np.repeat(span, hi - lo)
        local = np.arange(start, stop) - offsets[tri]

        bw = box_w[tri]
        pi = i0[tri] + local % bw
        pj = j0[tri] + local // bw
        px = pi + 0.5
        py = pj + 0.5

        ax, ay = x0[tri], y0[tri]
        dx, dy = px - ax, py - ay
        inv = inv_area[tri]
        b1 = (dx * (y2[tri] - ay) - (x2[tri] - ax) * dy) * inv
        b2 = ((x1[tri] - ax) * dy - dx * (y1[tri] - ay)) * inv
        b0 = 1.0 - b1 - b2
        eps = -1e-9
        inside = (b0 >= eps) & (b1 >= eps) & (b2 >= eps)
        depth = b0 * z0[tri] + b1 * z1[tri] + b2 * z2[tri]
        inside &= (depth <= 1.0) & (depth >= -1.0 - 1e-9)
        if not np.any(inside):
            continue
        pixel = (pj * width + pi)[inside]
        depth = depth[inside]
        tri = tri[inside]
        np.minimum.at(zbuffer, pixel, depth)
        won = depth <= zbuffer[pixel]
        winner[pixel[won]] = ids[tri[won]]

    return winner.reshape(height, width), zbuffer.reshape(height, width)
