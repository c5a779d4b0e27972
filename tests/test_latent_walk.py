"""Latent walks: DRIFT and LOOP noise (no bpy)."""
import math

import numpy as np
import pytest

from silk.engine import latent_walk
from silk.engine.latent_walk import DriftWalk, correlation, loop_noise, noise_for, step_sizes

SHAPE = (32, 40, 4)


def test_drift_consecutive_noise_correlates_by_the_cosine_of_its_angle():
    for degrees in (5, 30, 60):
        angle = math.radians(degrees)
        noises = [noise_for("DRIFT", 7, 1, 40, frame, SHAPE, lambda _f: angle) for frame in range(1, 13)]
        measured = np.mean([correlation(a, b) for a, b in zip(noises, noises[1:])])
        assert measured == pytest.approx(math.cos(angle), abs=0.02), degrees
        values = np.stack(noises).astype(np.float64)
        assert values.std() == pytest.approx(1.0, abs=0.02) and abs(values.mean()) < 0.02  # unit Gaussian
        assert all(noise.dtype == np.float32 and noise.shape == SHAPE for noise in noises)


def test_drift_zero_is_fixed_and_ninety_degrees_is_fresh_every_frame():
    fixed = [noise_for("DRIFT", 3, 1, 10, frame, SHAPE, lambda _f: 0.0) for frame in (1, 2, 5)]
    assert np.array_equal(fixed[0], fixed[1]) and np.array_equal(fixed[0], fixed[2])
    fresh = [noise_for("DRIFT", 3, 1, 10, frame, SHAPE, lambda _f: math.pi / 2) for frame in (1, 2, 3)]
    assert abs(correlation(fresh[0], fresh[1])) < 0.03 and abs(correlation(fresh[1], fresh[2])) < 0.03


def test_drift_any_frame_alone_equals_the_frame_reached_in_order():
    """Resuming mid-shot, a second farm machine or a cadence key painted ahead: same noise."""
    angle_at = lambda frame: math.radians(5 + 3 * frame)  # keyframed: the angle changes per frame
    in_order = DriftWalk()
    walked = [in_order.noise(11, 4, frame, SHAPE, angle_at) for frame in range(4, 15)]
    alone = DriftWalk().noise(11, 4, 12, SHAPE, angle_at)
    assert np.allclose(alone, walked[12 - 4], atol=1e-6)
    # Backwards (a render restarted earlier) and out of order give the same noise too.
    assert np.allclose(in_order.noise(11, 4, 6, SHAPE, angle_at), walked[2], atol=1e-6)
    # A changed keyframe after the remembered frame changes only the frames after it.
    changed = lambda frame: angle_at(frame) if frame < 10 else 0.0
    assert np.allclose(in_order.noise(11, 4, 9, SHAPE, changed), walked[5], atol=1e-6)
    assert np.allclose(in_order.noise(11, 4, 12, SHAPE, changed), walked[9 - 4], atol=1e-6)  # frozen from frame 9


def test_drift_depends_on_seed_and_shot():
    base = noise_for("DRIFT", 1, 1, 10, 3, SHAPE, lambda _f: 0.3)
    assert abs(correlation(base, noise_for("DRIFT", 2, 1, 10, 3, SHAPE, lambda _f: 0.3))) < 0.03
    assert abs(correlation(base, noise_for("DRIFT", 1, 2, 10, 3, SHAPE, lambda _f: 0.3))) < 0.03


def test_loop_last_frame_steps_into_the_first_like_every_other_step():
    for turns, (start, end) in ((1, (1, 24)), (2, (10, 40))):
        noises = [noise_for("LOOP", 5, start, end, frame, SHAPE, turns=turns) for frame in range(start, end + 1)]
        steps = step_sizes(noises)
        assert steps[-1] == pytest.approx(np.median(steps[:-1]), rel=0.10)
        assert steps.std() / steps.mean() < 0.05  # an even walk, no jump anywhere
        values = np.stack(noises).astype(np.float64)
        assert values.std() == pytest.approx(1.0, abs=0.02)
    # Without the loop's closing, the last frame would be far from the first: the test can fail.
    open_walk = [loop_noise(5, 1, 47, frame, SHAPE) for frame in range(1, 25)]
    assert step_sizes(open_walk)[-1] > 5 * np.median(step_sizes(open_walk)[:-1])


def test_loop_one_frame_shot_and_unknown_mode():
    assert np.array_equal(loop_noise(1, 5, 5, 5, SHAPE), loop_noise(1, 5, 5, 5, SHAPE))
    with pytest.raises(ValueError, match="latent walk"):
        noise_for("WARPED", 1, 1, 2, 1, SHAPE)
    assert latent_walk.MODES == ("DRIFT", "LOOP")


# -- the engine's noise choice (the animation core with a fake scene and painter) ------------------
def _walk_scene(folder, mode, feedback, **temporal):
    from dataclasses import replace

    from silk.engine.animation import TemporalSettings
    from tests.test_animation_core import FakeScene

    settings = replace(TemporalSettings(), use_feedback=feedback, noise_mode=mode, noise_drift=math.radians(20),
                       **temporal)
    return FakeScene(folder, last=6, temporal=settings)


def _expected(mode, scene, frame):
    from silk.engine import noise

    shape = noise.latent_shape(scene.height, scene.width) + (noise.CHANNELS,)
    return noise_for(mode, scene.job.seed, 1, 6, frame, shape, lambda _f: math.radians(20))


@pytest.mark.parametrize("mode", ["DRIFT", "LOOP"])
@pytest.mark.parametrize("feedback", [False, True])
def test_engine_paints_walk_modes_with_the_walks_noise_and_the_fixed_seed(mode, feedback, tmp_path):
    from silk.engine.animation import RenderSession
    from tests.test_animation_core import render

    scene = _walk_scene(tmp_path, mode, feedback)
    session, painter = render(scene, range(1, 7))
    assert [request.frame for request in painter.requests] == list(range(1, 7))
    for request in painter.requests:
        assert request.noise.dtype == np.float32 and np.array_equal(request.noise, _expected(mode, scene, request.frame))
        assert request.seed == scene.job.seed
    # The Noise pass (and Guides mode) shows the very noise a frame is painted from.
    assert np.array_equal(RenderSession().frame_noise(scene, 4), painter.requests[3].noise)
    # A render resumed at frame 4 (a new session, the frames before it on disk) paints from the same noise.
    _session, resumed = render(scene, [4], session=session.next())
    assert np.array_equal(resumed.requests[0].noise, painter.requests[3].noise)
    if mode == "DRIFT":
        assert correlation(painter.requests[1].noise, painter.requests[2].noise) == pytest.approx(
            math.cos(math.radians(20)), abs=0.15)


def test_drift_reads_the_angle_keyframed_at_each_frame(tmp_path):
    from tests.test_animation_core import render

    angles = {frame: math.radians(10 * frame) for frame in range(1, 7)}
    scene = _walk_scene(tmp_path, "DRIFT", False, drift_angle_at=angles.get)
    _session, painter = render(scene, range(1, 7))
    walk = DriftWalk()
    shape = painter.requests[0].noise.shape
    assert np.allclose(painter.requests[5].noise, walk.noise(scene.job.seed, 1, 6, shape, angles.get), atol=1e-6)
    assert not np.allclose(painter.requests[5].noise, _expected("DRIFT", scene, 6), atol=1e-3)  # not the constant


def test_a_loops_repainted_start_uses_the_same_loop_noise(tmp_path):
    """use_loop repaints the shot's first frames from its last: with LOOP noise they start from
    their own frame's noise again, so the circle closes in the noise and in the pictures."""
    from tests.test_animation_core import render

    scene = _walk_scene(tmp_path, "LOOP", True, use_loop=True, loop_frames=2)
    session, painter = render(scene, range(1, 7))
    assert [(note.frame, note.kind) for note in session.notes][-2:] == [(1, "loop"), (2, "loop")]
    assert [request.frame for request in painter.requests] == [1, 2, 3, 4, 5, 6, 1, 2]
    for request in painter.requests:
        assert np.array_equal(request.noise, _expected("LOOP", scene, request.frame)), request.frame


def test_cadence_keys_get_the_noise_of_their_frame(tmp_path):
    from tests.test_animation_core import render

    scene = _walk_scene(tmp_path, "DRIFT", True, cadence=3)
    _session, painter = render(scene, range(1, 7))
    assert sorted(request.frame for request in painter.requests) == [1, 4, 6]  # keys; the rest are in-betweens
    for request in painter.requests:
        assert np.array_equal(request.noise, _expected("DRIFT", scene, request.frame)), request.frame
