"""Temporal feedback maths on pictures and synthetic scenes with known answers (no bpy)."""
import numpy as np
import pytest

from silk.engine import temporal
from silk.engine.guides import compute_guides
from tests.synthetic import camera, frame, placed, quad, translation, uv_sphere


def pattern(height=40, width=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((height, width, 3)).astype(np.float32)


def constant_motion(height, width, vx, vy):
    vector = np.zeros((height, width, 4), dtype=np.float32)
    vector[..., 0], vector[..., 1] = vx, vy
    return vector


def test_warp_moves_pixels_by_the_backward_motion_with_blenders_axes():
    before = pattern()
    # Everything moved 3 px right and 2 px up since the previous frame: a pixel now at (r, c)
    # was at (r + 2, c - 3) before; Vector stores previous minus now with +y up: (-3, -2).
    vector = constant_motion(40, 50, -3.0, -2.0)
    warped, inside = temporal.warp(before, vector)
    np.testing.assert_allclose(warped[:-2, 3:], before[2:, :-3], atol=1e-6)
    assert not inside[:, :3].any() and not inside[-2:].any() and inside[:-2, 3:].all()


def test_fractional_motion_samples_bilinearly():
    ramp = np.tile(np.arange(10, dtype=np.float32)[None, :, None], (4, 1, 3))
    warped, _ = temporal.warp(ramp, constant_motion(4, 10, 0.25, 0.0))
    assert np.allclose(warped[:, :9, 0], np.arange(9) + 0.25, atol=1e-6)


def test_warping_the_previous_frame_with_exact_guides_reproduces_the_current_one():
    """The sign conventions end to end: a sphere and a quad moving, frame t-1's coverage
    warped by frame t's Vector equals frame t's coverage wherever t-1 saw the surface."""
    cam = camera(80, 60)
    sphere, card = uv_sphere(0.8), quad(1.5)
    def scene(x):
        return frame(cam, placed("s", sphere, translation(x=x, z=-6)), placed("c", card, translation(x=-x, y=0.5, z=-4)))
    previous = compute_guides(scene(-0.5))
    current = compute_guides(scene(-0.2), scene(-0.5), scene(0.1))
    labels_before = np.stack([previous.depth < 5.0, previous.coverage, previous.depth > 5.0], -1).astype(np.float32)
    labels_now = np.stack([current.depth < 5.0, current.coverage, current.depth > 5.0], -1).astype(np.float32)
    warped, inside = temporal.warp(labels_before, current.vector)
    mask = temporal.coherence_mask(current.occlusion, current.vector)
    assert mask.mean() > 0.9
    error = np.abs(warped[mask] - labels_now[mask]).max(axis=-1)
    # Bilinear sampling blurs a label's edge by under a pixel; nothing else may differ.
    assert error.mean() < 0.01 and (error > 0.5).mean() < 0.005, (error.mean(), (error > 0.5).mean())
    assert temporal.warp_error(labels_now, labels_before, current.vector, current.occlusion) < 0.01
    # Without the motion the same pictures disagree.
    still = np.zeros_like(current.vector)
    assert temporal.warp_error(labels_now, labels_before, still, np.zeros_like(current.occlusion)) > 0.03


def test_fill_holes_is_exact_on_flat_colour_and_stays_within_the_known_range():
    image = np.full((32, 48, 3), 0.25, dtype=np.float32)
    holes = np.zeros((32, 48), dtype=bool)
    holes[10:20, 5:30] = True
    spoiled = image.copy()
    spoiled[holes] = 9.0
    np.testing.assert_allclose(temporal.fill_holes(spoiled, holes), image, atol=1e-6)
    two_sides = np.zeros((16, 32, 3), dtype=np.float32)
    two_sides[:, 16:] = 1.0
    gap = np.zeros((16, 32), dtype=bool)
    gap[:, 12:20] = True
    filled = temporal.fill_holes(two_sides, gap)
    assert filled.min() >= 0.0 and filled.max() <= 1.0
    assert filled[8, 12, 0] < filled[8, 19, 0]  # it leans toward the nearer side
    np.testing.assert_array_equal(filled[~gap], two_sides[~gap])


def test_feedback_strength_is_the_setting_where_seen_and_one_where_new():
    previous = pattern(20, 30)
    occlusion = np.zeros((20, 30), dtype=np.float32)
    occlusion[5:8, 10:14] = 1.0
    feedback = temporal.feedback_from(previous, constant_motion(20, 30, 0, 0), occlusion, strength=0.35)
    assert np.all(feedback.strength[5:8, 10:14] == 1.0)
    assert np.all(feedback.strength[4:9, 9:15] == 1.0)  # grown by one pixel at silhouettes
    assert np.all(feedback.strength[12:, :] == pytest.approx(0.35))
    np.testing.assert_array_equal(feedback.init_image[feedback.visible], previous[feedback.visible])


def test_holding_to_the_start_mixes_its_warped_painting_in_and_gives_back_what_it_saw():
    previous, start = pattern(20, 30, seed=1), pattern(20, 30, seed=2)
    hidden_last_frame = np.zeros((20, 30), dtype=np.float32)
    hidden_last_frame[5:9, 10:15] = 1.0  # disoccluded now: the previous frame did not see it...
    feedback = temporal.feedback_from(previous, constant_motion(20, 30, 0, 0), hidden_last_frame, strength=0.4)
    hidden_at_start = np.zeros((20, 30), dtype=np.float32)
    hidden_at_start[14:, :] = 1.0  # ...but the shot's first frame did; it did not see the bottom rows
    to_start = constant_motion(20, 30, 2, 0)  # the surface was 2 px further right at the start
    held = temporal.held_to_start(feedback, temporal.start_view(start, to_start, hidden_at_start), weight=0.25,
                                  strength=0.4)
    warped_start, _ = temporal.warp(start, to_start)
    both = feedback.visible & held.visible & (np.arange(20) < 12)[:, None] & (np.arange(30) < 26)[None, :]
    np.testing.assert_allclose(held.init_image[both], 0.75 * previous[both] + 0.25 * warped_start[both], atol=1e-6)
    revealed = np.zeros((20, 30), dtype=bool)
    revealed[6:8, 11:14] = True  # inside the grown hole, seen at the start
    np.testing.assert_allclose(held.init_image[revealed], warped_start[revealed], atol=1e-6)
    assert np.all(held.strength[revealed] == pytest.approx(0.4)) and np.all(feedback.strength[revealed] == 1.0)
    assert held.visible[revealed].all() and not feedback.visible[revealed].any()
    bottom = np.s_[16:, :]  # hidden at the start: the previous frame's alone
    np.testing.assert_array_equal(held.init_image[bottom], feedback.init_image[bottom])
    np.testing.assert_array_equal(held.strength[bottom], feedback.strength[bottom])
    assert temporal.held_to_start(feedback, temporal.start_view(start, to_start, hidden_at_start), weight=0.0,
                                  strength=0.4) is feedback


def test_warped_noise_follows_motion_keeps_its_statistics_and_is_fresh_where_new():
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((8, 10, 4)).astype(np.float32)
    still = temporal.warp_noise(noise, constant_motion(64, 80, 0, 0), np.zeros((64, 80)), rng)
    np.testing.assert_array_equal(still, noise)
    moved = temporal.warp_noise(noise, constant_motion(64, 80, -8.0, 0.0), np.zeros((64, 80)), rng)
    np.testing.assert_array_equal(moved[:, 1:], noise[:, :-1])  # one latent pixel right
    assert not np.allclose(moved[:, 0], noise[:, 0])  # came from outside: fresh
    big = rng.standard_normal((64, 64, 4)).astype(np.float32)
    shifted = temporal.warp_noise(big, constant_motion(512, 512, -12.0, 5.0), np.zeros((512, 512)), rng)
    assert abs(shifted.std() - 1.0) < 0.05 and abs(shifted.mean()) < 0.05


def test_lab_round_trip_and_colour_anchor():
    picture = pattern(16, 16) * 0.5 + 0.25  # inside the gamut, so matching need not clip
    np.testing.assert_allclose(temporal.lab_to_rgb(temporal.rgb_to_lab(picture)), picture, atol=1e-5)
    assert temporal.rgb_to_lab(np.ones((1, 1, 3)))[0, 0] == pytest.approx([100, 0, 0], abs=1e-3)
    anchor = temporal.ColorAnchor.of(picture)
    drifted = np.clip(picture * 0.7 + np.array([0.2, 0.05, 0.0], dtype=np.float32), 0, 1)
    assert temporal.color_drift(drifted, picture) > 5
    corrected = temporal.match_color(drifted, anchor, 1.0)
    assert temporal.color_drift(corrected, picture) < 1.0
    half = temporal.match_color(drifted, anchor, 0.5)
    assert temporal.color_drift(corrected, picture) < temporal.color_drift(half, picture) < temporal.color_drift(
        drifted, picture)
    np.testing.assert_array_equal(temporal.match_color(drifted, anchor, 0.0), drifted)


def test_colour_held_to_start_moves_shared_surfaces_back_to_their_first_colours_and_keeps_the_texture():
    start = pattern(48, 64, seed=3) * 0.5 + 0.25
    to_start = constant_motion(48, 64, 0, 2)  # the surface was 2 px further up at the start
    warped_start, _ = temporal.warp(start, to_start)
    hidden_at_start = np.zeros((48, 64), dtype=np.float32)
    hidden_at_start[:, :24] = 1.0  # a new object on the left: the start did not see it
    painted = np.clip(warped_start * 0.9 + np.array([0.08, 0.02, -0.03], dtype=np.float32), 0, 1)  # drifted
    painted[:, :24] = pattern(48, 24, seed=4) * 0.2 + 0.05  # the new object is dark: not drift
    shared = temporal.coherence_mask(hidden_at_start, to_start)
    seen_from_start = temporal.start_view(start, to_start, hidden_at_start)
    np.testing.assert_array_equal(seen_from_start.seen, shared)  # what the warp error measures as seen
    inner = np.zeros_like(shared)
    inner[12:36, 36:52] = True  # between the centres of squares (8 px) the shared surface covers wholly
    new = np.zeros_like(shared)
    new[:, :16] = True  # squares only the new object covers

    def shift(picture, where):  # mean LAB difference to the start's painting there
        return np.linalg.norm(temporal.rgb_to_lab(picture)[where].mean(0) - temporal.rgb_to_lab(warped_start)[
            where].mean(0))

    held = temporal.colour_held_to_start(painted, seen_from_start, strength=1.0)
    half = temporal.colour_held_to_start(painted, seen_from_start, strength=0.5)
    assert shift(painted, inner) > 4 and shift(held, inner) < 0.3 and shift(held, inner) < shift(half, inner)
    assert shift(half, inner) == pytest.approx(shift(painted, inner) / 2, rel=0.05)
    np.testing.assert_allclose(held[new], painted[new], atol=1e-5)  # what the start did not see keeps its colours
    # Texture is kept: within a square the correction is one smooth field, so pixel-to-pixel LAB
    # differences change by far less than the shift itself.
    lab_before, lab_after = temporal.rgb_to_lab(painted), temporal.rgb_to_lab(held)
    moved = lab_after - lab_before
    assert np.abs(np.diff(moved[12:36, 32:], axis=1)).max() < 0.5 < np.abs(moved[inner]).mean()
    assert held.dtype == np.float32 and held.shape == painted.shape
    np.testing.assert_array_equal(temporal.colour_held_to_start(painted, seen_from_start, 0.0),
                                  painted)
    nothing_shared = np.ones((48, 64), dtype=np.float32)  # the camera turned away: left as painted
    np.testing.assert_array_equal(
        temporal.colour_held_to_start(painted, temporal.start_view(start, to_start, nothing_shared), strength=1.0),
        painted)


def test_in_between_blends_both_warps_by_time_and_visibility():
    before, after = np.zeros((10, 12, 3), np.float32), np.ones((10, 12, 3), np.float32)
    still = constant_motion(10, 12, 0, 0)
    none = np.zeros((10, 12), np.float32)
    assert np.allclose(temporal.in_between(before, still, none, after, still, none, 0.25), 0.25)
    hidden_after = none.copy()
    hidden_after[2:5, 2:5] = 1.0  # not visible in the later key frame: take the earlier one there
    blended = temporal.in_between(before, still, none, after, still, hidden_after, 0.75)
    assert np.allclose(blended[3, 3], 0.0) and np.allclose(blended[8, 10], 0.75)
