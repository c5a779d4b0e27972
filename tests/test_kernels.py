"""The compiled kernels and the numpy reference path give the same guides."""
import numpy as np
import pytest

from silk.engine.guides import Camera, compute_guides, kernels
from silk.engine.guides.raster import rasterize_triangles
from tests.synthetic import camera, frame, placed, quad, translation, uv_sphere



def test_numba_is_installed_for_the_tests():
    # The suite must exercise both paths; without numba only one would run.
    assert kernels.AVAILABLE


def busy_scene():
    cam_now = camera(width=90, height=70)
    cam_before = Camera(view=translation(x=-0.15, y=0.05), projection=cam_now.projection, width=90,
                        height=70, clip_start=0.1, clip_end=100)
    wall = quad(60)
    ball = uv_sphere(1.0, 48, 24)
    card = quad(1.5)
    now = frame(cam_now, placed("wall", wall, translation(z=-12)), placed("ball", ball, translation(x=0.4, z=-6)),
                placed("card", card, translation(x=-1.0, y=0.3, z=-4)))
    before = frame(cam_before, placed("wall", wall, translation(z=-12)), placed("ball", ball, translation(x=-0.3, z=-6.2)),
                   placed("card", card, translation(x=-0.2, y=0.2, z=-4)))
    after = frame(cam_now, placed("wall", wall, translation(z=-12)), placed("ball", ball, translation(x=0.9, z=-5.9)))
    return now, before, after


def test_guides_are_identical_on_both_paths():
    now, before, after = busy_scene()
    fast = compute_guides(now, before, after, use_kernels=True)
    slow = compute_guides(now, before, after, use_kernels=False)
    assert np.array_equal(fast.coverage, slow.coverage)
    assert np.allclose(fast.depth, slow.depth, rtol=1e-6)
    assert np.allclose(fast.normal, slow.normal, atol=1e-6)
    assert np.allclose(fast.vector, slow.vector, atol=1e-5)
    assert np.mean(fast.occlusion == slow.occlusion) > 0.999
    assert fast.occlusion.sum() > 20  # the scene does uncover things
    assert fast.backfacing_fraction == pytest.approx(slow.backfacing_fraction)


@pytest.mark.parametrize("seed", range(5))
def test_rasterisers_agree_on_random_triangles_including_behind_the_camera(seed):
    rng = np.random.default_rng(seed)
    count, width, height = 300, 61, 47
    xy = rng.uniform(-1.5, 1.5, (count, 1, 2)) + rng.normal(0, 1, (count, 3, 2)) * np.where(
        rng.random((count, 1, 1)) < 0.5, 0.03, 0.6)
    w = rng.uniform(-0.5, 5, (count, 3, 1))
    z = rng.uniform(-1.2, 1.2, (count, 3, 1))
    clip = np.concatenate([xy * np.abs(w), z * np.abs(w) - np.where(w < 0, 2, 0), w], axis=-1)
    fast, fast_z = rasterize_triangles(clip, width, height, use_kernels=True)
    slow, slow_z = rasterize_triangles(clip, width, height, use_kernels=False)
    assert np.array_equal(fast, slow)
    finite = np.isfinite(slow_z)
    assert np.array_equal(np.isfinite(fast_z), finite)
    assert np.allclose(fast_z[finite], slow_z[finite], rtol=0, atol=1e-12)


@pytest.mark.parametrize("use_kernels", [True, False])
def test_a_previous_frame_drawn_before_is_not_drawn_again_and_changes_nothing(monkeypatch, use_kernels):
    """An animation's frame t-1 was rendered as a current frame: its raster is reused."""
    from silk.engine.guides import compute
    from silk.engine.guides.geometry import FrameGeometry

    now, before, _ = busy_scene()
    before.instances = [i for i in before.instances if i.key != "card"]
    now.instances = [i for i in now.instances if i.key != "card"]
    compute_guides(before, use_kernels=use_kernels)  # frame t-1 rendered as the current frame
    assert before.visibility is not None
    drawn = []
    original = compute.rasterize
    monkeypatch.setattr(compute, "rasterize", lambda *a, **k: drawn.append(1) or original(*a, **k))
    reused = compute_guides(now, before, use_kernels=use_kernels)
    assert len(drawn) == 1  # only frame t
    fresh = compute_guides(now, FrameGeometry(before.camera, before.instances), use_kernels=use_kernels)
    assert len(drawn) == 3
    for name in ("depth", "normal", "vector", "occlusion"):
        assert np.array_equal(getattr(reused, name), getattr(fresh, name)), name
    assert reused.occlusion.sum() > 20


@pytest.mark.parametrize("ortho", [False, True])
def test_triangle_tables_agree_on_flat_mirrored_sheared_and_shared_meshes(ortho):
    """The compiled per-triangle tables equal the numpy ones, value for value."""
    from silk.engine.guides import compute
    from silk.engine.guides.geometry import Instance

    cam = camera(width=80, height=60, ortho=ortho)
    ball = uv_sphere(1.0, 24, 12)
    flat_card = quad(2.0)
    flat_card.flat[:] = True
    shear = translation(x=-1.2, z=-6)
    shear[:3, :3] = [[1.2, 0.4, 0.0], [0.0, 0.7, 0.2], [0.1, 0.0, 1.5]]
    mirror = translation(x=1.0, y=0.4, z=-5) @ np.diag([-1.3, 0.8, 1.0, 1.0])
    now = frame(cam, Instance("ball", ball, shear), Instance("twin", ball, mirror, shared_mesh=True),
                Instance("card", flat_card, translation(y=-1.0, z=-4) @ np.diag([1.0, -0.6, 1.0, 1.0])),
                Instance("wall", quad(60), translation(z=-12)))
    before = frame(cam, *[Instance(i.key, i.mesh, translation(x=0.1) @ i.matrix) for i in now.instances])
    after = frame(cam, *[Instance(i.key, i.mesh, translation(y=0.2) @ i.matrix) for i in now.instances])
    notes = []
    scene = compute._build_scene(now, before, after, notes)
    visible = np.arange(scene.triangles.shape[0])
    slow = compute._TriangleTables(scene, visible, cam, before, after, use_kernels=False)
    fast = compute._TriangleTables(scene, visible, cam, before, after, use_kernels=True)
    for name in ("hit", "normal", "winding", "previous", "following"):
        assert np.allclose(getattr(fast, name), getattr(slow, name), rtol=1e-12, atol=1e-12), name
    assert scene.renormalise.tolist() == [True, False, True, True]
    assert (slow.winding < 0).sum() > 0 and compute._normals_of(scene, visible)[1].sum() == 2


@pytest.mark.parametrize("ortho_now, ortho_other", [(False, False), (False, True), (True, False)])
def test_background_motion_agrees_on_both_paths(ortho_now, ortho_other):
    """The compiled background loop writes what background.fill_background's numpy code writes."""
    from silk.engine.guides.background import fill_background

    angle = np.radians(4.0)
    turn = np.array([[np.cos(angle), 0, np.sin(angle), 0], [0, 1, 0, 0], [-np.sin(angle), 0, np.cos(angle), 0],
                     [0, 0, 0, 1]])
    now = camera(width=70, height=50, ortho=ortho_now)
    before = camera(width=70, height=50, view=turn, ortho=ortho_other, fov=55.0)
    after = camera(width=70, height=50, view=translation(x=0.2) @ np.linalg.inv(turn), ortho=ortho_other)
    rng = np.random.default_rng(3)
    background = rng.random(70 * 50) < 0.6
    previous_winner = np.where(rng.random(70 * 50) < 0.5, -1, 7)
    results = []
    for use_kernels in (True, False):
        vector = np.zeros((70 * 50, 4), dtype=np.float32)
        occlusion = np.full(70 * 50, 0.5, dtype=np.float32)
        fill_background(vector, occlusion, background, now, before, after, previous_winner, use_kernels)
        results.append((vector, occlusion))
    (fast_vector, fast_occlusion), (slow_vector, slow_occlusion) = results
    assert np.allclose(fast_vector, slow_vector, atol=1e-4)
    assert np.array_equal(fast_occlusion, slow_occlusion)
    assert np.array_equal(fast_occlusion[~background], np.full((~background).sum(), 0.5, dtype=np.float32))
    if not ortho_now and not ortho_other:
        assert np.abs(slow_vector[background]).max() > 1.0  # the turn moves the sky
