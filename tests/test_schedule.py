"""Shots, cadence, prompt travel and loop fades (no bpy)."""
import pytest

from silk.engine.schedule import PromptKey, Shot, cadence_step, loop_blend, prompt_mix, shot_of


def test_shots_run_from_cut_to_cut_within_the_range():
    assert shot_of(5, 1, 48, []) == Shot(1, 48)
    assert shot_of(5, 1, 48, [10, 30]) == Shot(1, 9)
    assert shot_of(10, 1, 48, [10, 30]) == Shot(10, 29)
    assert shot_of(47, 1, 48, [30, 10, 1, 60]) == Shot(30, 48)  # unsorted, outside the range ignored


def test_cadence_keys_every_nth_frame_and_the_shots_last():
    shot = Shot(1, 10)
    steps = [cadence_step(frame, shot, 4) for frame in range(1, 11)]
    assert [step.frame for step in steps if step.is_key] == [1, 5, 9, 10]
    assert (steps[1].before, steps[1].after, steps[1].position) == (1, 5, 0.25)
    assert (steps[9 - 1].is_key, steps[8].is_key) == (True, True)
    assert all(cadence_step(frame, shot, 1).is_key for frame in range(1, 11))
    assert cadence_step(3, Shot(3, 3), 4).is_key


def test_prompt_travel_between_keys_with_easing():
    keys = [PromptKey(20, "winter", "rain"), PromptKey(1, "summer", "")]
    assert prompt_mix(keys, 1) == [("summer", "", 1.0)]
    assert prompt_mix(keys, 30) == [("winter", "rain", 1.0)]
    mix = prompt_mix(keys, 10, easing=0.0)
    assert [p for p, _, _ in mix] == ["summer", "winter"]
    assert mix[1][2] == pytest.approx(9 / 19) and sum(w for _, _, w in mix) == pytest.approx(1.0)
    eased = prompt_mix(keys, 3, easing=1.0)[1][2]
    assert 0 < eased < 2 / 19  # slow in
    assert prompt_mix([], 5) == []


def test_loop_fade_starts_full_and_ends_at_zero():
    shot = Shot(1, 24)
    weights = [loop_blend(frame, shot, 4) for frame in range(1, 7)]
    assert weights == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert loop_blend(1, Shot(1, 2), 6) == 1.0 and loop_blend(2, Shot(1, 2), 6) == 0.0
