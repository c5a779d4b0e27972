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


# -- the engine's noise choice (FramePainter with a fake worker) -------------------------------
def _painter_noises(mode, frames, feedback, job_number, drift=math.radians(20), turns=1):
    from types import SimpleNamespace

    from silk.engine import animation, diffusion_job, schedule

    height, width = 24, 40
    shot = schedule.Shot(1, 6)
    settings = SimpleNamespace(use_feedback=feedback, strength=0.5, fusion=0.0, noise_mode=mode, color_coherence=0.0,
                               cadence=1, use_loop=False, loop_frames=2, noise_drift=drift, loop_turns=turns,
                               drift_angle_at=None)
    guides = SimpleNamespace(vector=np.zeros((height, width, 4), np.float32),
                             occlusion=np.zeros((height, width), np.float32))
    job = diffusion_job.JobSettings(seed=99)
    seen = {}
    animation._job = job_number  # a new render job: nothing remembered from the last one
    for frame in frames:
        def paint(_guides, _job, init=None, strength_map=None, fusion=0.0, noise=None, seed=None, frame=frame):
            seen[frame] = (noise, seed)
            return np.full((height, width, 3), 0.5, np.float32)

        context = animation.FrameContext(frame=frame, shot=shot, take_key=("walk", mode, feedback), width=width,
                                         height=height, is_animation=True, frame_path=lambda _frame: "")
        animation.FramePainter(context, job, settings, paint, None, None).paint(guides)
    return seen


@pytest.mark.parametrize("mode", ["DRIFT", "LOOP"])
@pytest.mark.parametrize("feedback", [False, True])
def test_engine_paints_walk_modes_with_the_walks_noise_and_the_fixed_seed(mode, feedback):
    seen = _painter_noises(mode, range(1, 7), feedback, job_number=1000)
    for frame, (noise, seed) in seen.items():
        expected = noise_for(mode, 99, 1, 6, frame, (3, 5, 4), lambda _f: math.radians(20))
        assert noise is not None and noise.shape == (3, 5, 4) and np.array_equal(noise, expected), frame
        assert seed == 99
    # A render resumed at frame 4 (another job, nothing remembered) paints it from the same noise.
    resumed = _painter_noises(mode, [4], feedback, job_number=1001)
    assert np.array_equal(resumed[4][0], seen[4][0])
    if mode == "DRIFT":
        assert correlation(seen[2][0], seen[3][0]) == pytest.approx(math.cos(math.radians(20)), abs=0.15)


def test_a_loops_repainted_start_uses_the_same_loop_noise():
    """use_loop repaints the shot's first frames from its last: with LOOP noise they start from
    their own frame's noise again, so the circle closes in the noise and in the pictures."""
    from types import SimpleNamespace

    from silk.engine import animation, diffusion_job, schedule

    height, width, shot = 16, 16, schedule.Shot(1, 4)
    settings = SimpleNamespace(use_feedback=True, strength=0.5, fusion=0.0, noise_mode="LOOP", color_coherence=0.0,
                               cadence=1, use_loop=True, loop_frames=2, noise_drift=0.0, loop_turns=1,
                               drift_angle_at=None)
    guides = SimpleNamespace(vector=np.zeros((height, width, 4), np.float32),
                             occlusion=np.zeros((height, width), np.float32))
    job = diffusion_job.JobSettings(seed=5)
    calls, rewritten = [], []
    animation._job = 2000
    for frame in range(1, 5):
        def paint(_guides, _job, init=None, strength_map=None, fusion=0.0, noise=None, seed=None):
            calls.append(noise)
            return np.full((height, width, 3), 0.5, np.float32)

        context = animation.FrameContext(frame=frame, shot=shot, take_key=("loop",), width=width, height=height,
                                         is_animation=True, frame_path=lambda _frame: "")
        animation.FramePainter(context, job, settings, paint, None, lambda f, _other: (guides, job, settings),
                               rewrite_fn=lambda f, picture: rewritten.append(f)).paint(guides)
    assert rewritten == [1, 2] and len(calls) == 6
    for index, frame in enumerate([1, 2, 3, 4, 1, 2]):
        assert np.array_equal(calls[index], noise_for("LOOP", 5, 1, 4, frame, (2, 2, 4))), index
