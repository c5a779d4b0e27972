"""Windows of a video model over a shot, joined by exact motion (engine/windows.py; no bpy, fakes only)."""
import numpy as np
import pytest

from silk.engine import windows
from silk.engine.schedule import Shot
from silk.engine.windows import (JoinStart, Window, WindowPainter, WindowSettings, blend_weight, far_strength,
                                 join_start, schedule_windows, window_for)

H, W = 6, 8


@pytest.fixture(autouse=True)
def fresh_memory():
    windows.forget_all()
    yield
    windows.forget_all()


def test_a_shot_is_covered_by_windows_overlapping_by_at_least_the_overlap():
    plan = schedule_windows(Shot(1, 40), 16, 4)
    assert [(w.frames[0], w.frames[-1], w.lead) for w in plan] == [(1, 16, 0), (13, 28, 4), (25, 40, 4)]
    for length, context, overlap in ((30, 16, 4), (17, 16, 4), (100, 16, 0), (41, 8, 7), (5, 3, 1)):
        plan = schedule_windows(Shot(10, 10 + length - 1), context, overlap)
        covered = sorted({frame for window in plan for frame in window.frames})
        assert covered == list(range(10, 10 + length))
        assert all(len(w.frames) == context for w in plan) and plan[-1].frames[-1] == 10 + length - 1
        for before, after in zip(plan, plan[1:]):
            shared = len(set(before.frames) & set(after.frames))
            assert shared == after.lead >= overlap and after.frames[:after.lead] == before.frames[-after.lead:]
        assert max(w.lead for w in plan) - min(w.lead for w in plan[1:] or plan) <= 1  # spread evenly
    assert schedule_windows(Shot(3, 9), 16, 4) == [Window(0, tuple(range(3, 10)))]  # shorter than a window


def test_a_loop_wraps_the_shot_end_into_its_start():
    plan = schedule_windows(Shot(1, 40), 16, 4, loop=True)
    wrap = plan[-1]
    assert wrap.frames == tuple(range(33, 41)) + tuple(range(1, 9)) and (wrap.lead, wrap.tail) == (8, 8)
    assert wrap.new_frames == ()  # it repaints frames painted once already, joined in its middle
    short = schedule_windows(Shot(1, 5), 16, 4, loop=True)
    assert short[-1].frames == (3, 4, 5, 1, 2)
    assert window_for(plan, 40) is plan[2] and window_for(plan, 1) is plan[0]  # the wrap is not a frame's window


def test_a_frame_in_an_overlap_belongs_to_the_later_window():
    plan = schedule_windows(Shot(1, 40), 16, 4)
    assert [window_for(plan, frame).index for frame in (1, 12, 13, 16, 17, 24, 25, 40)] == [0, 0, 1, 1, 1, 1, 2, 2]
    assert [blend_weight(plan[1], position) for position in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]


def pattern(shift):
    """A picture of a horizontal ramp moved ``shift`` pixels right."""
    columns = (np.arange(W) - shift) / W
    return np.repeat(np.stack([columns, 1 - columns, np.full(W, 0.5)], axis=-1)[None], H, axis=0).astype(np.float32)


def sliding_motion(frame, source):
    """The scene slides one pixel right per frame: a pixel of ``frame`` was (frame - source)
    pixels to the left in ``source``; what entered on the left was not seen there."""
    shift = frame - source
    vector = np.zeros((H, W, 4), np.float32)
    vector[..., 0] = -shift
    occlusion = np.zeros((H, W), np.float32)
    return vector, occlusion


def test_the_next_window_starts_from_the_painted_frames_warped_to_their_exact_positions():
    window = Window(1, (5, 6, 7, 8, 9), lead=2)
    painted = {5: pattern(5), 6: pattern(6)}
    start = join_start(window, painted, sliding_motion, strength=0.4)
    assert start.init_video.shape == (5, H, W, 3) and start.masks.shape == (5, H, W)
    assert start.sources == (5, 6, 6, 6, 6)  # the nearest painted frame in time
    assert np.array_equal(start.init_video[0], pattern(5)) and np.all(start.masks[:2] == pytest.approx(0.4))
    for position, frame in enumerate(window.frames[2:], start=2):
        seen = slice(frame - 6 + 1, None)  # columns the source saw (the rest slid in from the left)
        assert np.allclose(start.init_video[position][:, seen], pattern(frame)[:, seen], atol=1e-5)
        assert np.all(start.masks[position][:, :frame - 6] == 1.0)  # new on the left: repainted fully
    seen_strengths = [float(start.masks[p][0, -1]) for p in range(2, 5)]
    assert seen_strengths[0] == pytest.approx(0.4) and seen_strengths == sorted(seen_strengths)  # freer further away
    assert seen_strengths[-1] < 1.0 and far_strength(0.4, 10, 3) == 1.0
    assert join_start(Window(0, (1, 2, 3)), {}, sliding_motion, 0.4) is None


class FakeWorker:
    """Paints a window as its start (or grey) plus the window's number: joins are visible."""

    def __init__(self):
        self.calls = []

    def __call__(self, window, start):
        self.calls.append((window, start))
        base = start.init_video if start is not None else np.full((len(window.frames), H, W, 3), 0.5, np.float32)
        return np.clip(base + 0.01 * (window.index + 1), 0, 1)


def render(painter, frames):
    return {frame: painter.picture(frame) for frame in frames}


def test_one_request_per_window_and_every_frame_written(tmp_path):
    worker = FakeWorker()
    painter = WindowPainter(Shot(1, 40), WindowSettings(16, 4, 0.5), ("take",), W, H, worker, sliding_motion,
                            lambda frame: str(tmp_path / f"{frame:04d}.png"))
    pictures = render(painter, range(1, 41))
    assert [window.index for window, _ in worker.calls] == [0, 1, 2]
    assert worker.calls[0][1] is None and all(isinstance(start, JoinStart) for _, start in worker.calls[1:])
    assert all(picture.shape == (H, W, 3) and picture.dtype == np.float32 for picture in pictures.values())
    # the overlap cross-fades from the first window's painting into the second's
    first, second = worker.calls[0][0], worker.calls[1][0]
    assert np.allclose(pictures[12], 0.51)  # only the first window painted it
    assert 0.51 < pictures[13].mean() < pictures[16].mean() <= 0.53
    assert sorted(p.name for p in (tmp_path / ".silk").iterdir()) == [
        "window-1-16.npz", "window-13-28.npz", "window-25-40.npz"]
    assert (first.frames[-1], second.frames[0]) == (16, 13)


def test_a_resume_redoes_only_the_unfinished_window(tmp_path):
    path = lambda frame: str(tmp_path / f"{frame:04d}.png")  # noqa: E731
    settings = WindowSettings(16, 4, 0.5)
    worker = FakeWorker()
    render(WindowPainter(Shot(1, 40), settings, ("take",), W, H, worker, sliding_motion, path), range(1, 21))
    assert [window.index for window, _ in worker.calls] == [0, 1]
    (tmp_path / ".silk" / "window-13-28.npz").unlink()  # killed while the second window was painted
    windows.forget_all()  # a new Blender session: nothing remembered
    resumed = FakeWorker()
    painter = WindowPainter(Shot(1, 40), settings, ("take",), W, H, resumed, sliding_motion, path, reuse_saved=True)
    render(painter, range(15, 41))
    assert [window.index for window, _ in resumed.calls] == [1, 2]
    assert resumed.calls[0][1] is not None and resumed.calls[0][1].sources[:4] == (13, 14, 15, 16)  # joined to disk
    again = FakeWorker()
    windows.forget_all()
    render(WindowPainter(Shot(1, 40), settings, ("take",), W, H, again, sliding_motion, path, reuse_saved=True),
           range(1, 41))
    assert again.calls == []  # continuing what is on disk: everything is there
    anew = FakeWorker()
    windows.forget_all()
    render(WindowPainter(Shot(1, 40), settings, ("take",), W, H, anew, sliding_motion, path), range(1, 41))
    assert [window.index for window, _ in anew.calls] == [0, 1, 2]  # a render that overwrites paints anew


def test_a_looped_shot_repaints_its_seam_in_one_window_and_rewrites_the_first_frames(tmp_path):
    worker = FakeWorker()
    rewritten = {}
    painter = WindowPainter(Shot(1, 20), WindowSettings(8, 2, 0.5, use_loop=True), ("take",), W, H, worker,
                            sliding_motion, lambda frame: str(tmp_path / f"{frame:04d}.png"),
                            rewrite_fn=lambda frame, picture: rewritten.setdefault(frame, picture))
    pictures = render(painter, range(1, 21))
    wrap, start = worker.calls[-1]
    assert wrap.tail and wrap.frames == (17, 18, 19, 20, 1, 2, 3, 4)
    assert start is not None and np.all(start.masks == pytest.approx(0.5))  # every frame joined, none new
    assert sorted(rewritten) == [1, 2, 3, 4]
    # nearest the seam the wrap's painting weighs most, on both sides
    weights = [blend_weight(wrap, position) for position in range(8)]
    assert weights[3] == max(weights[:4]) and weights[4] == max(weights[4:])
    assert len(worker.calls) == len(schedule_windows(Shot(1, 20), 8, 2, loop=True))


def test_the_loop_cross_fade_favours_the_wrap_next_to_the_seam(tmp_path):
    def levels(window, start):  # each window paints one flat level: which one a frame shows is measurable
        return np.full((len(window.frames), H, W, 3), 0.1 * (window.index + 1), np.float32)

    rewritten = {}
    painter = WindowPainter(Shot(1, 20), WindowSettings(8, 2, 0.5, use_loop=True), ("take",), W, H, levels,
                            sliding_motion, lambda frame: "", rewrite_fn=lambda f, picture: rewritten.update({f: picture}))
    pictures = render(painter, range(1, 21))
    wrap_level = 0.1 * (painter.windows[-1].index + 1)
    distance = {frame: abs(float(picture.mean()) - wrap_level) for frame, picture in {**pictures, **rewritten}.items()}
    assert distance[20] < distance[19] < distance[18] < distance[17] < distance[16]
    assert distance[1] < distance[2] < distance[3] < distance[4]


def test_a_single_frame_render_paints_one_window_without_painting_those_before(tmp_path):
    worker = FakeWorker()
    painter = WindowPainter(Shot(1, 40), WindowSettings(16, 4, 0.5), ("take",), W, H, worker, sliding_motion,
                            lambda frame: "")
    picture = painter.picture(30)
    assert picture.shape == (H, W, 3) and [(w.index, s) for w, s in worker.calls] == [(2, None)]
