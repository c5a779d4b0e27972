"""The animation core (engine/animation.py) driven through fakes: shots, cadence, resume, loops,
prompt travel, noise and the render's warnings, in milliseconds and without Blender."""
import os
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest

from silk.engine import animation, noise, schedule, temporal
from silk.engine.animation import FrameSettings, RenderSession, TemporalSettings
from silk.engine.diffusion_job import JobSettings

WIDTH, HEIGHT = 32, 24


@dataclass
class Camera:
    clip_start: float = 0.1
    clip_end: float = 100.0


@dataclass
class Guides:
    frame: int
    relative_to: int | None
    vector: np.ndarray
    occlusion: np.ndarray
    depth: np.ndarray
    coverage: np.ndarray
    camera: Camera


class FakeScene:
    """A camera panning 1 px per frame over a wall; shots cut at ``cuts``; frames saved as files in
    ``folder`` (an empty ``folder``: F12, nothing saved)."""

    def __init__(self, folder="", first=1, last=8, cuts=(), temporal=None, job=None, movie=False,
                 settings_at=None, animation_render=True, frame_step=1):
        self.name = "Scene"
        self.width, self.height = WIDTH, HEIGHT
        self.is_animation = animation_render
        self.frame_step = frame_step
        self.output_is_movie = movie
        self.loop_output_problem = "the output is a movie" if movie else ""
        self.folder, self.first, self.last, self.cuts = str(folder), first, last, list(cuts)
        self.temporal = temporal or TemporalSettings()
        self.job = job or JobSettings(model="tiny", seed=5, steps=4)
        self.settings_at = settings_at
        self.guide_calls = []

    @property
    def take_key(self):
        return (self.name, WIDTH, HEIGHT)

    def shot(self, frame):
        return schedule.shot_of(frame, self.first, self.last, self.cuts)

    def settings(self, frame):
        if self.settings_at is not None:
            return self.settings_at(frame)
        return FrameSettings(self.job, self.temporal)

    def output_file(self, frame):
        return os.path.join(self.folder, f"f_{frame:04d}.png") if self.folder and not self.output_is_movie else ""

    def guides(self, frame, relative_to):
        self.guide_calls.append((frame, relative_to))
        vector = np.zeros((HEIGHT, WIDTH, 4), dtype=np.float32)
        if relative_to is not None:
            vector[..., 0] = frame - relative_to  # the wall moves 1 px left per frame
        depth = np.full((HEIGHT, WIDTH), 5.0 + frame * 0.01, dtype=np.float32)
        return Guides(frame, relative_to, vector, np.zeros((HEIGHT, WIDTH), dtype=np.float32), depth,
                      np.ones((HEIGHT, WIDTH), dtype=bool), Camera())


class FakePainter:
    """Paints a flat colour from the seed, or the warped start picture it is given."""

    def __init__(self):
        self.requests = []

    def paint(self, request):
        self.requests.append(request)
        if request.init_image is not None:
            return np.clip(request.init_image * 0.9 + 0.05, 0, 1).astype(np.float32)
        return np.full((HEIGHT, WIDTH, 3), (request.seed % 7) / 7.0 + 0.1, dtype=np.float32)

    def frames(self):
        return [request.frame for request in self.requests]


def render(scene, frames, session=None, painter=None):
    """An animation render of ``frames``: one session, the frame files written as Blender would."""
    session = session or RenderSession()
    painter = painter or FakePainter()
    for frame in frames:
        session.paint(scene, painter, frame)
        if scene.output_file(frame):
            open(scene.output_file(frame), "wb").close()
    return session, painter


def kinds(session):
    return [(note.frame, note.kind, note.source) for note in session.notes]


def test_feedback_runs_through_a_shot_and_restarts_at_a_cut(tmp_path):
    scene = FakeScene(tmp_path, last=6, cuts=[4])
    session, painter = render(scene, range(1, 7))
    assert kinds(session) == [(1, "fresh", None), (2, "feedback", 1), (3, "feedback", 2), (4, "fresh", None),
                              (5, "feedback", 4), (6, "feedback", 5)]
    assert painter.requests[3].init_image is None and painter.requests[4].init_image is not None
    assert painter.requests[1].guides.relative_to == 1
    assert painter.requests[1].fusion == pytest.approx(0.5)


def test_with_a_frame_step_each_frame_warps_from_the_frame_rendered_before_it(tmp_path):
    scene = FakeScene(tmp_path, last=7, frame_step=3)
    session, painter = render(scene, [1, 4, 7])
    assert kinds(session) == [(1, "fresh", None), (4, "feedback", 1), (7, "feedback", 4)]
    assert painter.requests[1].guides.relative_to == 1


def test_without_feedback_every_frame_is_painted_on_its_own(tmp_path):
    scene = FakeScene(tmp_path, last=4, temporal=TemporalSettings(use_feedback=False, cadence=3))
    session, painter = render(scene, range(1, 5))
    assert [kind for _, kind, _ in kinds(session)] == ["fresh"] * 4
    assert all(request.init_image is None for request in painter.requests)


def test_cadence_paints_keys_once_and_warps_each_from_the_key_before_with_their_own_motion(tmp_path):
    scene = FakeScene(tmp_path, last=7, temporal=TemporalSettings(cadence=3))
    session, painter = render(scene, range(1, 8))
    assert painter.frames() == [1, 4, 7]
    assert [kind for _, kind, _ in kinds(session)] == ["fresh", "feedback", "in-between", "in-between",
                                                       "feedback", "in-between", "in-between"]
    key = painter.requests[1]
    assert key.guides.relative_to == 1 and np.all(key.guides.vector[..., 0] == 3)  # 4 -> 1, not 4 -> 3
    assert not key.is_current  # painted ahead, for frame 2
    assert painter.requests[2].guides.relative_to == 4


def test_a_render_resumed_on_a_key_warps_from_the_last_key_with_the_motion_between_them(tmp_path):
    scene = FakeScene(tmp_path, last=7, temporal=TemporalSettings(cadence=3, noise_mode="WARPED"))
    first, _ = render(scene, range(1, 4))  # interrupted after frame 3 (key 4 was painted ahead, not saved)
    assert not os.path.exists(scene.output_file(4))
    resumed, painter = render(scene, range(4, 8), session=first.next())
    assert painter.frames() == [4, 7]
    key = painter.requests[0]
    assert key.init_image is not None and key.guides.relative_to == 1
    assert (4, "feedback", 1) in kinds(resumed)
    # Its noise is the one the uninterrupted render used: carried from key 1's sidecar.
    os.makedirs(tmp_path / "whole")
    _, whole = render(FakeScene(tmp_path / "whole", last=7, temporal=scene.temporal), range(1, 8))
    np.testing.assert_array_equal(key.noise, whole.requests[1].noise)


def test_f12_stepping_to_the_next_key_warps_from_the_key_painted_last(tmp_path):
    scene = FakeScene("", last=9, temporal=TemporalSettings(cadence=4), animation_render=False)
    session, painter = render(scene, [1])
    session, painter = render(scene, [5], session=session.next(), painter=painter)
    assert painter.requests[-1].guides.relative_to == 1 and painter.requests[-1].init_image is not None


def test_only_the_latest_keys_noise_state_is_kept_and_a_resume_without_it_retraces_the_same_noise(tmp_path):
    scene = FakeScene(tmp_path, last=6, temporal=TemporalSettings(noise_mode="WARPED"))
    first, whole = render(scene, range(1, 5))
    states = sorted(name for name in os.listdir(tmp_path / ".silk") if name.endswith(".noise.npz"))
    assert states == ["f_0004.png.4.noise.npz"]
    os.remove(tmp_path / ".silk" / states[0])  # lost: frame 5 re-traces the motion from the shot's start
    _, resumed = render(scene, [5, 6], session=first.next())
    os.makedirs(tmp_path / "whole")
    _, straight = render(FakeScene(tmp_path / "whole", last=6, temporal=scene.temporal), range(1, 7))
    np.testing.assert_array_equal(resumed.requests[0].noise, straight.requests[4].noise)
    np.testing.assert_array_equal(resumed.requests[1].noise, straight.requests[5].noise)
    assert resumed.requests[0].init_image is not None  # the painting itself came from frame 4's sidecar


def test_a_farm_chunk_starting_mid_shot_continues_from_the_saved_frame_before_it(tmp_path):
    scene = FakeScene(tmp_path, last=8)
    render(scene, range(1, 5))
    chunk, painter = render(scene, range(5, 9), session=RenderSession(number=40))  # another machine
    assert kinds(chunk)[0] == (5, "feedback", 4)
    assert painter.requests[0].init_image is not None


def test_a_loop_repaints_the_first_frames_from_the_last_and_records_the_cross_fade(tmp_path):
    scene = FakeScene(tmp_path, last=5, temporal=TemporalSettings(use_loop=True, loop_frames=2))
    session, painter = render(scene, range(1, 6))
    loops = [(note.frame, note.source) for note in session.notes if note.kind == "loop"]
    assert loops == [(1, 5), (2, 1)]
    assert painter.requests[5].guides.frame == 1 and painter.requests[5].guides.relative_to == 5
    records = session.drain_records()
    assert sorted(records[0].rewrites) == [1, 2]


def test_a_loop_with_a_movie_output_is_refused_with_one_report(tmp_path):
    scene = FakeScene(tmp_path, last=5, movie=True, temporal=TemporalSettings(use_loop=True, loop_frames=2))
    session, painter = render(scene, range(1, 6))
    assert not any(note.kind == "loop" for note in session.notes)
    assert session.drain_records() == []
    reports = session.take_reports()
    assert len(reports) == 1 and "movie" in reports[0][1]
    assert not os.path.exists(tmp_path / ".silk")  # a movie's frames share one file: no sidecars


def test_prompt_travel_paints_each_frame_and_each_key_ahead_with_its_own_prompts(tmp_path):
    keys = [schedule.PromptKey(1, "a forest"), schedule.PromptKey(7, "a desert")]

    def settings_at(frame):
        mix = schedule.prompt_mix(keys, frame, 0.0)
        job = JobSettings(model="tiny", seed=2, prompt=mix[0][0],
                          prompt_mix=[{"prompt": p, "negative_prompt": n, "weight": w} for p, n, w in mix]
                          if len(mix) > 1 else [])
        return FrameSettings(job, TemporalSettings(cadence=3))

    scene = FakeScene(tmp_path, last=7, settings_at=settings_at)
    _, painter = render(scene, range(1, 8))
    weights = {request.frame: [entry["weight"] for entry in request.job.prompt_mix] for request in painter.requests}
    assert weights[1] == [] and weights[7] == []
    assert weights[4] == pytest.approx([0.5, 0.5])


def test_noise_modes_and_guides_mode_gets_exactly_the_noise_painting_uses(tmp_path):
    warped = TemporalSettings(noise_mode="WARPED")
    scene = FakeScene(tmp_path, last=4, temporal=warped)
    _, painter = render(scene, range(1, 5))
    # Guides mode in a new Blender session (nothing remembered, no files): the same noise.
    for request in painter.requests:
        again = RenderSession().frame_noise(FakeScene("", last=4, temporal=warped), request.frame)
        np.testing.assert_array_equal(again, request.noise)
    assert painter.requests[0].noise.shape == noise.latent_shape(HEIGHT, WIDTH) + (4,)
    assert not np.array_equal(painter.requests[0].noise, painter.requests[3].noise)  # it travelled
    # The wall moved 3 px left: the noise followed it (3/8 of a latent pixel, no longer the same on screen).
    fixed_scene = FakeScene(tmp_path / "fixed", last=3, temporal=replace(warped, noise_mode="FIXED"))
    os.makedirs(tmp_path / "fixed")
    _, fixed = render(fixed_scene, range(1, 4))
    assert all(np.array_equal(request.noise, fixed.requests[0].noise) for request in fixed.requests)
    np.testing.assert_array_equal(fixed.requests[0].noise, painter.requests[0].noise)  # same start per shot
    random_scene = FakeScene("", last=2, temporal=replace(warped, noise_mode="RANDOM"))
    _, random = render(random_scene, [1, 2])
    assert not np.array_equal(random.requests[0].noise, random.requests[1].noise)
    assert [request.seed for request in random.requests] == [6, 7]


def test_independent_frames_with_warped_noise_get_the_travelling_noise_guides_mode_shows(tmp_path):
    temporal_settings = TemporalSettings(use_feedback=False, noise_mode="WARPED")
    _, painter = render(FakeScene(tmp_path, last=3, temporal=temporal_settings), range(1, 4))
    assert all(request.init_image is None for request in painter.requests)
    for request in painter.requests:
        again = RenderSession().frame_noise(FakeScene("", last=3, temporal=temporal_settings), request.frame)
        np.testing.assert_array_equal(again, request.noise)
    assert not np.array_equal(painter.requests[0].noise, painter.requests[2].noise)


def test_a_cadence_in_between_has_no_noise_of_its_own(tmp_path):
    scene = FakeScene("", last=7, temporal=TemporalSettings(cadence=3, noise_mode="WARPED"))
    session = RenderSession()
    assert session.frame_noise(scene, 2) is None
    assert session.frame_noise(scene, 4).shape == (3, 4, 4)
    assert scene.guide_calls.count((4, 1)) == 1  # key 4's noise came from key 1 by their own motion


def test_ancestral_samplers_get_no_fusion_and_fusion_end_reaches_the_request(tmp_path):
    temporal_settings = TemporalSettings(fusion=0.7, fusion_end=0.6)
    _, painter = render(FakeScene(tmp_path, last=2, temporal=temporal_settings), [1, 2])
    assert (painter.requests[1].fusion, painter.requests[1].fusion_end) == (pytest.approx(0.7), pytest.approx(0.6))
    os.makedirs(tmp_path / "a")
    scene = FakeScene(tmp_path / "a", last=2, temporal=temporal_settings,
                      job=JobSettings(model="tiny", scheduler="euler_a"))
    _, painter = render(scene, [1, 2])
    assert painter.requests[1].init_image is not None and painter.requests[1].fusion == 0


def test_feedback_frames_ask_for_faithful_encoding_unless_it_is_turned_off(tmp_path):
    _, painter = render(FakeScene(tmp_path, last=3), [1, 2, 3])
    assert [request.faithful_encoding for request in painter.requests] == [False, True, True]  # fresh, feedback
    os.makedirs(tmp_path / "off")
    scene = FakeScene(tmp_path / "off", last=2, temporal=TemporalSettings(faithful_encoding=False))
    _, painter = render(scene, [1, 2])
    assert painter.requests[1].init_image is not None and not painter.requests[1].faithful_encoding


def test_frames_after_the_second_are_held_to_the_shots_first_painting_by_its_exact_motion(tmp_path):
    scene = FakeScene(tmp_path, last=6, cuts=[5], temporal=TemporalSettings(hold_to_start=0.5))
    _, painter = render(scene, range(1, 7))
    # Frame 2 starts from frame 1 itself; frames 3 and 4 also from frame 1 carried to them; the
    # cut at 5 starts a new shot, whose frame 6 starts from frame 5 alone.
    assert [call for call in scene.guide_calls if call[1] in (1, 5) and call[0] - call[1] > 1] == [(3, 1), (4, 1)]
    first = painter.requests[0]
    plain = FakeScene(tmp_path / "plain", last=6, cuts=[5],
                      temporal=TemporalSettings(hold_to_start=0.0, color_coherence=0.0))
    os.makedirs(tmp_path / "plain")
    _, unheld = render(plain, range(1, 7))
    assert not np.allclose(painter.requests[2].init_image, unheld.requests[2].init_image)  # frame 3
    np.testing.assert_array_equal(painter.requests[1].init_image, unheld.requests[1].init_image)  # frame 2
    np.testing.assert_array_equal(painter.requests[5].init_image, unheld.requests[5].init_image)  # frame 6
    assert first.init_image is None and not [call for call in plain.guide_calls if call[0] - (call[1] or 0) > 1]


def test_colour_coherence_holds_each_painting_to_the_first_ones_colours_against_the_models_pull(tmp_path):
    # FakePainter pulls every repainting toward grey (0.05 + 0.9 x): a model's colour drift.
    def paintings(folder, coherence):
        os.makedirs(folder)
        scene = FakeScene(folder, last=6, cuts=[5], temporal=TemporalSettings(
            color_coherence=coherence, hold_to_start=0.0, fusion=0.0))
        session = RenderSession()
        return [session.paint(scene, FakePainter(), frame).picture.mean() for frame in range(1, 7)], scene

    drifting, _ = paintings(tmp_path / "free", 0.0)
    held, scene = paintings(tmp_path / "held", 1.0)
    assert drifting[3] < drifting[0] - 0.05  # four repaintings pulled it toward grey
    assert held[0] == drifting[0]
    for frame in (1, 2, 3):  # the shot's first painting's colour, but for the edge the camera uncovers
        assert abs(held[frame] - held[0]) < 0.1 * abs(drifting[frame] - drifting[0])
    assert held[4] == drifting[4] and held[5] == pytest.approx(held[4], abs=2e-3)  # the cut's own first painting
    # Its exact motion to the start is computed once per frame, for the colour and the picture.
    assert [call for call in scene.guide_calls if call[0] - (call[1] or 0) > 1] == [(3, 1), (4, 1)]


def test_the_colour_hold_is_counted_in_a_frames_feedback_time(tmp_path, monkeypatch):
    held = temporal.colour_held_to_start

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return held(*args, **kwargs)

    monkeypatch.setattr(temporal, "colour_held_to_start", slow)
    session, _ = render(FakeScene(tmp_path, last=3), [1, 2, 3])
    assert [note.kind for note in session.notes] == ["fresh", "feedback", "feedback"]
    assert all(note.feedback_seconds >= 0.05 for note in session.notes[1:])


def test_a_resumed_render_holds_to_the_first_painting_it_reads_back(tmp_path):
    temporal_settings = TemporalSettings(hold_to_start=0.5)
    scene = FakeScene(tmp_path, last=6, temporal=temporal_settings)
    _, straight = render(scene, range(1, 5))
    resumed_scene = FakeScene(tmp_path, last=6, temporal=temporal_settings)
    _, resumed = render(resumed_scene, [4], session=RenderSession())  # a new Blender session: files only
    assert (4, 1) in resumed_scene.guide_calls  # the first painting came back from its file
    np.testing.assert_allclose(resumed.requests[0].init_image, straight.requests[3].init_image, atol=2e-3)


def test_the_depth_range_is_measured_once_per_shot_from_its_first_frame(tmp_path):
    scene = FakeScene(tmp_path, last=6, cuts=[4])
    session, painter = render(scene, range(1, 7))
    ranges = {request.frame: request.depth_range for request in painter.requests}
    assert ranges[1] == ranges[2] == ranges[3] != ranges[4] == ranges[6]


def test_sidecars_are_keyed_by_frame_number_and_reject_what_does_not_fit(tmp_path):
    path = str(tmp_path / "movie.mp4")
    assert animation.sidecar_path(path, 3) != animation.sidecar_path(path, 4)
    open(path, "wb").close()
    field = noise.shot_noise(HEIGHT, WIDTH, 1)
    animation.save_sidecar(path, 3, animation.Painted(np.zeros((HEIGHT, WIDTH, 3), np.float32), None, field, 1))
    loaded = animation.load_sidecar(path, 3, HEIGHT, WIDTH)
    np.testing.assert_array_equal(loaded.noise_field.latent(), field.latent())
    assert loaded.noise_seed == 1
    # A noise state that does not fit (hostile or stale file) is ignored, the painting still used.
    state = animation.sidecar_path(path, 3, "noise")
    np.savez(state, values=np.full((8, 8, 4), np.nan, np.float32), offsets=np.zeros((8, 8, 2), np.float16),
             weights=np.ones((8, 8), np.float16), seed=np.int64(1), subpixels=np.int64(noise.SUBPIXELS))
    damaged = animation.load_sidecar(path, 3, HEIGHT, WIDTH)
    assert damaged is not None and damaged.noise_field is None
    assert animation.load_sidecar(path, 4, HEIGHT, WIDTH) is None
    assert animation.load_sidecar(path, 3, HEIGHT + 8, WIDTH) is None


def test_render_warnings_name_each_trap_once_per_render():
    clean = animation.render_warnings("Standard", 0.0, 1, True, 512, 512, "sd15", "euler", 0.5)
    assert clean == []
    keys = [key for key, _ in animation.render_warnings("AgX", 1.0, 2, True, 1920, 1080, "sd15", "euler_a", 0.5)]
    assert keys == ["view", "frame_step", "size", "fusion_sampler"]
    assert animation.render_warnings("Standard", 0.0, 2, False, 1024, 1024, "sdxl", "euler", 0.5) == []
    session = RenderSession()
    session.report("WARNING", "view", "one")
    session.report("WARNING", "view", "one")
    assert session.take_reports() == [("WARNING", "one")] and session.take_reports() == []
