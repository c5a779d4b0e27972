"""The visibility rasteriser against brute-force ray casting and known coverage."""
import numpy as np
import pytest

from silk.engine.guides import raster
from silk.engine.guides.raster import rasterize, rasterize_triangles
from tests.synthetic import camera


def brute_force_depth(clip_triangles, width, height):
    """Nearest NDC depth per pixel centre by testing every triangle (slow, obviously right)."""
    best = np.full((height, width), np.inf)
    jj, ii = np.mgrid[0:height, 0:width]
    px = (ii + 0.5) / width * 2 - 1
    py = (jj + 0.5) / height * 2 - 1
    for tri in clip_triangles:
        ndc = tri[:, :3] / tri[:, 3:4]
        (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = ndc
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if abs(area) < 1e-15:
            continue
        b1 = ((px - x0) * (y2 - y0) - (x2 - x0) * (py - y0)) / area
        b2 = ((x1 - x0) * (py - y0) - (px - x0) * (y1 - y0)) / area
        b0 = 1 - b1 - b2
        z = b0 * z0 + b1 * z1 + b2 * z2
        inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0) & (z >= -1) & (z <= 1)
        best = np.where(inside & (z < best), z, best)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_random_triangles_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    width, height = 37, 29
    count = 60
    # Mixed sizes: many tiny (the 2x2 fast path) and some large (the general path).
    centres = rng.uniform(-1.2, 1.2, (count, 1, 2))
    spread = np.where(rng.random((count, 1, 1)) < 0.5, 0.03, 0.6)
    xy = centres + rng.normal(0, 1, (count, 3, 2)) * spread
    w = rng.uniform(1.0, 5.0, (count, 3, 1))
    z = rng.uniform(-0.9, 0.9, (count, 3, 1))
    clip = np.concatenate([xy * w, z * w, w], axis=-1)
    winner, zbuf = rasterize_triangles(clip, width, height)
    expected = brute_force_depth(clip, width, height)
    covered = np.isfinite(expected)
    # Pixel centres lying exactly on an edge may go either way; demand near-total agreement.
    assert np.mean((winner >= 0) == covered) > 0.995
    both = covered & (winner >= 0)
    assert np.allclose(zbuf[both], expected[both], atol=1e-9)


def test_shared_edges_leave_no_cracks_or_gaps():
    # A fan of thin triangles around a centre covers a disc with no holes.
    width = height = 64
    angles = np.linspace(0, 2 * np.pi, 301)
    ring = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 0.8
    triangles = np.array([[[0, 0], ring[k], ring[k + 1]] for k in range(300)])
    clip = np.concatenate([triangles, np.zeros((300, 3, 1)), np.ones((300, 3, 1))], axis=-1)
    winner, _ = rasterize_triangles(clip, width, height)
    jj, ii = np.mgrid[0:height, 0:width]
    r = np.hypot((ii + 0.5) / width * 2 - 1, (jj + 0.5) / height * 2 - 1)
    assert np.all(winner[r < 0.78] >= 0)
    assert np.all(winner[r > 0.81] == -1)


def test_triangle_through_the_near_plane_is_clipped_not_dropped():
    # A floor below the camera running from behind it to far in front.
    cam = camera(width=40, height=30, near=0.5, far=100.0)
    floor = np.array([[-50, -1, 20], [50, -1, 20], [0, -1, -80]], dtype=float)
    winner, zbuf = rasterize(cam.to_clip(floor), np.array([[0, 1, 2]]), cam.width, cam.height)
    # Analytic coverage: a pixel sees the floor if its ray goes down and hits it inside the clip range.
    jj, ii = np.mgrid[0:cam.height, 0:cam.width]
    origins, directions = cam.pixel_rays((ii + 0.5).ravel().astype(float), (jj + 0.5).ravel().astype(float))
    t = (-1 - origins[:, 1]) / np.where(directions[:, 1] < 0, directions[:, 1], -1e-300)
    hit = origins + directions * t[:, None]
    depth = -hit[:, 2]
    # The floor triangle narrows from x = +-50 at z = 20 to a point at z = -80.
    within = np.abs(hit[:, 0]) <= 0.5 * (hit[:, 2] + 80)
    expected = (directions[:, 1] < 0) & (depth >= 0.5) & (depth <= 100) & within
    expected = expected.reshape(cam.height, cam.width)
    assert (winner >= 0).sum() > 0.3 * winner.size
    assert np.mean((winner >= 0) == expected) > 0.99


def test_far_plane_discards_fragments():
    cam = camera(width=16, height=16, near=0.1, far=10.0)
    wall = np.array([[-100, -100, -20], [100, -100, -20], [0, 100, -20]], dtype=float)
    winner, _ = rasterize(cam.to_clip(wall), np.array([[0, 1, 2]]), 16, 16)
    assert np.all(winner == -1)


def test_degenerate_and_non_finite_triangles_are_skipped():
    cam = camera(width=16, height=16)
    points = np.array([[0, 0, -5], [1, 1, -5], [2, 2, -5], [np.nan, 0, -5], [1, 0, -5], [0, 1, -5]])
    winner, _ = rasterize(cam.to_clip(points), np.array([[0, 1, 2], [3, 4, 5]]), 16, 16)
    assert np.all(winner == -1)


def test_large_triangles_are_processed_in_bounded_chunks(monkeypatch):
    monkeypatch.setattr(raster, "CHUNK_CANDIDATES", 1000)
    cam = camera(width=96, height=80)
    quad = np.array([[-10, -10, -5], [10, -10, -5], [10, 10, -5], [-10, 10, -5]], dtype=float)
    winner, _ = rasterize(cam.to_clip(quad), np.array([[0, 1, 2], [0, 2, 3]]), 96, 80)
    assert np.all(winner >= 0)


def test_one_by_one_picture():
    cam = camera(width=1, height=1)
    tri = np.array([[-5, -5, -5], [5, -5, -5], [0, 5, -5]], dtype=float)
    winner, zbuf = rasterize(cam.to_clip(tri), np.array([[0, 1, 2]]), 1, 1)
    assert winner.shape == (1, 1) and winner[0, 0] == 0
