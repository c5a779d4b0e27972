"""Shots as farm work and farm records (engine/farm.py, no bpy)."""
import json
import os

import pytest

from silk.engine import farm, schedule


def spans(chunks):
    return [(chunk.first, chunk.last) for chunk in chunks]


def test_shots_follow_the_engines_cuts_over_the_range():
    shots = farm.plan_shots(1, 30, cuts=[10, 22, 22, 40, 1])  # repeated, outside and at-start cuts are ignored
    assert [(shot.start, shot.end) for shot in shots] == [(1, 9), (10, 21), (22, 30)]
    for shot in shots:
        for frame in range(shot.start, shot.end + 1):
            assert schedule.shot_of(frame, 1, 30, [10, 22, 40]) == schedule.Shot(shot.start, shot.end)
    assert all(shot.chained and len(shot.chunks) == 1 for shot in shots)
    assert shots[0].keys == tuple(range(1, 10)) and shots[0].loop_frames == ()


def test_chunks_hold_at_most_the_maximum_and_cover_the_shot_in_order():
    (shot,) = farm.plan_shots(1, 10, [], max_frames=4)
    assert spans(shot.chunks) == [(1, 4), (5, 8), (9, 10)]
    (shot,) = farm.plan_shots(5, 8, [], max_frames=4)
    assert spans(shot.chunks) == [(5, 8)]
    (shot,) = farm.plan_shots(1, 10, [], max_frames=0)
    assert spans(shot.chunks) == [(1, 10)]
    (shot,) = farm.plan_shots(1, 3, [], max_frames=1)
    assert spans(shot.chunks) == [(1, 1), (2, 2), (3, 3)]


def test_under_cadence_chunks_end_on_keys():
    (shot,) = farm.plan_shots(1, 14, [], cadence=3, max_frames=5)
    assert shot.keys == (1, 4, 7, 10, 13, 14)
    assert spans(shot.chunks) == [(1, 4), (5, 7), (8, 10), (11, 14)]
    for chunk in shot.chunks:
        assert chunk.last in shot.keys and len(chunk) <= 5
    # Keys further apart than the maximum: a chunk runs to the next key rather than painting it twice.
    (shot,) = farm.plan_shots(1, 12, [], cadence=5, max_frames=2)
    assert shot.keys == (1, 6, 11, 12)
    assert spans(shot.chunks) == [(1, 1), (2, 6), (7, 11), (12, 12)]
    # Without feedback there is no cadence and no order: every frame is a key, chunks are independent.
    (shot,) = farm.plan_shots(1, 6, [], cadence=3, use_feedback=False, loop_frames=2, max_frames=2)
    assert shot.keys == tuple(range(1, 7)) and not shot.chained and shot.loop_frames == ()


def test_loop_frames_are_the_first_frames_the_last_chunk_repaints():
    shots = farm.plan_shots(1, 10, [8], loop_frames=4)
    assert shots[0].loop_frames == (1, 2, 3, 4)
    assert shots[1].loop_frames == (8, 9)  # a 3-frame shot loops over at most 2 frames, as the engine does
    assert len(shots[1].loop_frames) == min(4, shots[1].end - shots[1].start)
    (one,) = farm.plan_shots(5, 5, [], loop_frames=4)
    assert one.loop_frames == ()


@pytest.mark.parametrize("start, end, step, maximum, match", [
    (5, 4, 1, 0, "empty"), (1, 10, 2, 0, "frame step"), (1, 10, 1, -1, "longest chunk")])
def test_impossible_plans_say_why(start, end, step, maximum, match):
    with pytest.raises(farm.FarmPlanError, match=match):
        farm.plan_shots(start, end, [], frame_step=step, max_frames=maximum)


def test_the_shot_list_json_is_what_the_job_type_reads():
    shots = farm.plan_shots(1, 8, [5], cadence=2, loop_frames=1, max_frames=3)
    parsed = json.loads(farm.shots_json(shots))
    assert parsed["silk_shots"] == 1
    assert parsed["shots"][0] == {"start": 1, "end": 4, "keys": [1, 3, 4], "loop_frames": [1],
                                  "chunks": [[1, 3], [4, 4]], "chained": True}


def write_frames(folder, frames):
    for frame in frames:
        (folder / f"{frame:06d}.png").write_bytes(b"png")
    return {frame: str(folder / f"{frame:06d}.png") for frame in frames}


def test_records_of_chunks_make_one_take_stopping_at_the_first_unfinished_frame(tmp_path):
    farm.write_record(str(tmp_path), "Scene", "seed 1 | tiny", farm.Chunk(1, 3), write_frames(tmp_path, [1, 2, 3]))
    farm.write_record(str(tmp_path), "Scene", "seed 1 | tiny", farm.Chunk(7, 8), write_frames(tmp_path, [7, 8]))
    take = farm.read_take(str(tmp_path))
    assert (take.scene, take.label, take.start, take.end) == ("Scene", "seed 1 | tiny", 1, 8)
    assert [os.path.basename(path) for path in take.files] == ["000001.png", "000002.png", "000003.png"]
    assert take.missing == [4, 5, 6]
    farm.write_record(str(tmp_path), "Scene", "seed 1 | tiny", farm.Chunk(4, 6), write_frames(tmp_path, [4, 5, 6]))
    take = farm.read_take(str(tmp_path))
    assert len(take.files) == 8 and take.missing == []
    os.remove(tmp_path / "000005.png")  # a record is no proof: the frame file must be there
    assert farm.read_take(str(tmp_path)).missing == [5]
    assert not [name for name in os.listdir(tmp_path / ".silk" / "farm") if not name.endswith(".json")]


def test_records_from_elsewhere_cannot_point_outside_the_folder_or_mix_scenes(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    farm.write_record(str(folder), "Scene", "", farm.Chunk(1, 1), write_frames(folder, [1]))
    records = folder / ".silk" / "farm"
    (records / "evil.json").write_text(json.dumps({"silk_farm_record": 1, "scene": "Scene", "label": "", "first": 2,
                                                   "last": 2, "files": {"2": "../secret.png"}}))
    (records / "garbage.json").write_text("{not json")
    (records / "huge.json").write_bytes(b" " * (farm.MAX_RECORD_BYTES + 1))
    take = farm.read_take(str(folder))
    assert take.files == [str(folder / "000001.png")] and take.missing == [2]
    farm.write_record(str(folder), "Other", "", farm.Chunk(3, 3), write_frames(folder, [3]))
    with pytest.raises(farm.FarmPlanError, match="several scenes"):
        farm.read_take(str(folder))
    with pytest.raises(FileNotFoundError, match="No Silk farm records"):
        farm.read_take(str(tmp_path / "empty"))
