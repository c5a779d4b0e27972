"""Animation renders with feedback in Blender's module: the real worker, the `tiny` model."""
import contextlib
import math
import os
import threading
import time

import bpy
import numpy as np
import pytest

from silk.engine import animation, render_engine, takes, temporal, worker_link
from silk.engine.color import linear_to_srgb
from tests.blender.test_diffusion import diffuse_scene
from tests.support.scenes import read_png
from tests.support import exr, scenes
from tools.blender_env import set_multilayer_exr, set_png


def animated_scene(frames=8, width=64, height=48):
    scene = diffuse_scene(width, height, steps=4)
    scene.frame_start, scene.frame_end = 1, frames
    camera = scene.camera
    scenes.keyframe(camera, "location", [(1, (0, -8, 2)), (frames, (0.6, -7.4, 2.1))])
    return scene


def render_take(scene, folder, exr_output=True):
    (set_multilayer_exr if exr_output else set_png)(scene)
    scene.render.filepath = os.path.join(str(folder), "f_")
    bpy.ops.render.render(animation=True)
    return sorted(name for name in os.listdir(folder) if name.startswith("f_"))


def take_warp_error(folder, frames):
    """Mean warp error of a rendered take, from its own Combined, Vector and Occlusion passes."""
    passes = [exr.read_passes(os.path.join(str(folder), f"f_{frame:04d}.exr")) for frame in frames]
    errors = []
    for before, now in zip(passes, passes[1:]):
        errors.append(temporal.warp_error(linear_to_srgb(now["Combined"][..., :3]),
                                          linear_to_srgb(before["Combined"][..., :3]), now["Vector"],
                                          now["Occlusion"][..., 0] if now["Occlusion"].ndim == 3 else now["Occlusion"]))
    return float(np.mean(errors))


def editing_strips(scene):
    editing = bpy.data.scenes.get(takes.editing_scene_name(scene.name))
    assert editing is not None, "no editing scene"
    return [strip for strip in takes._all_strips(editing.sequence_editor) if takes.TAKE_KEY in strip.keys()]


def strip_range(strip):
    start = strip.frame_final_start
    return start, start + strip.frame_final_duration - 1


def test_eight_frames_with_feedback_make_eight_files_a_take_and_flow_better(silk, tmp_path):
    scene = animated_scene(8, 128, 96)  # tiny's latents are 8x smaller: give them room
    scene.silk.use_feedback = False  # the baseline: independent frames, fixed seed
    assert render_take(scene, tmp_path / "independent") == [f"f_{frame:04d}.exr" for frame in range(1, 9)]
    independent = take_warp_error(tmp_path / "independent", range(1, 9))
    scene.silk.use_feedback = True
    scene.silk.fusion = 0.8
    files = render_take(scene, tmp_path / "feedback")
    assert files == [f"f_{frame:04d}.exr" for frame in range(1, 9)]
    assert not any(level == "ERROR" for level, _ in render_engine.last_reports)
    assert [note.kind for note in render_engine.session.notes] == ["fresh"] + ["feedback"] * 7
    feedback = take_warp_error(tmp_path / "feedback", range(1, 9))
    assert feedback < independent, (feedback, independent)
    strips = editing_strips(scene)
    assert len(strips) == 2  # one channel per take
    newest = max(strips, key=lambda strip: strip[takes.TAKE_KEY])
    assert strip_range(newest) == (1, 8) and newest.channel == 2
    assert newest.name.startswith("Take 2 | seed 42 | str ")
    # Rendering the same range again replaces that take's strip.
    render_take(scene, tmp_path / "feedback")
    strips = editing_strips(scene)
    assert len(strips) == 2 and sorted(strip[takes.TAKE_KEY] for strip in strips) == [1, 2]


def test_the_rendered_scene_keeps_its_own_render(silk, tmp_path):
    scene = animated_scene(2)
    render_take(scene, tmp_path, exr_output=False)
    assert scene.sequence_editor is None or not len(takes._all_strips(scene.sequence_editor))
    assert bpy.data.scenes.get(takes.editing_scene_name(scene.name)) is not None


def test_a_keyframed_strength_is_read_per_frame(silk, tmp_path):
    scene = animated_scene(4)
    scene.silk.strength = 0.3
    scene.silk.keyframe_insert("strength", frame=1)
    scene.silk.strength = 0.9
    scene.silk.keyframe_insert("strength", frame=4)
    render_take(scene, tmp_path, exr_output=False)
    used = {note.frame: note.strength for note in render_engine.session.notes if note.kind == "feedback"}
    expected = {}
    for frame in (2, 3, 4):
        scene.frame_set(frame)
        expected[frame] = scene.silk.strength
    assert used == pytest.approx(expected)
    assert used[2] < used[3] < used[4]


def test_a_camera_cut_restarts_feedback(silk, tmp_path):
    scene = animated_scene(6)
    second = bpy.data.objects.new("Camera 2", scene.camera.data.copy())
    scene.collection.objects.link(second)
    second.location, second.rotation_euler = (6, -6, 3), (math.radians(70), 0, math.radians(45))
    first_marker = scene.timeline_markers.new("A", frame=1)
    first_marker.camera = scene.camera
    cut = scene.timeline_markers.new("B", frame=4)
    cut.camera = second
    render_take(scene, tmp_path, exr_output=False)
    notes = {note.frame: note for note in render_engine.session.notes}
    assert notes[1].kind == "fresh" and notes[4].kind == "fresh"
    assert notes[3].source == 2 and notes[5].source == 4 and notes[6].source == 5


def test_a_shot_marker_restarts_feedback(silk, tmp_path):
    scene = animated_scene(4)
    scene.timeline_markers.new("Shot 2", frame=3)
    render_take(scene, tmp_path, exr_output=False)
    assert [note.kind for note in render_engine.session.notes] == ["fresh", "feedback", "fresh", "feedback"]


def test_cadence_paints_keys_and_builds_the_frames_between(silk, tmp_path):
    scene = animated_scene(6)
    scene.silk.cadence = 3
    files = render_take(scene, tmp_path, exr_output=False)
    assert len(files) == 6
    notes = [(note.frame, note.kind) for note in render_engine.session.notes]
    # Keys 1, 4 and 6 (the shot's last); 4 is painted ahead while making frame 2.
    assert notes == [(1, "fresh"), (4, "feedback"), (2, "in-between"), (3, "in-between"), (6, "feedback"),
                     (5, "in-between")]


def test_a_key_painted_before_its_turn_uses_its_own_frames_settings(silk, tmp_path):
    scene = animated_scene(4)
    scene.silk.cadence = 3
    for frame, seed in ((1, 10), (4, 40)):
        scene.silk.seed = seed
        scene.silk.keyframe_insert("seed", frame=frame)
    scene.silk.strength = 0.3
    scene.silk.keyframe_insert("strength", frame=1)
    scene.silk.strength = 0.8
    scene.silk.keyframe_insert("strength", frame=4)
    render_take(scene, tmp_path, exr_output=False)
    key = next(note for note in render_engine.session.notes if note.frame == 4)
    assert key.seed == 40 and key.strength == pytest.approx(0.8)  # painted while rendering frame 2


def test_killing_the_worker_at_frame_five_reports_and_a_rerun_resumes_there(silk, tmp_path):
    scene = animated_scene(8)
    scene.render.use_overwrite = False

    def kill_at_frame_five():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            client = worker_link._client
            if any(note.frame == 5 for note in render_engine.session.notes) and client and client.state == "busy":
                client.kill()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_at_frame_five, daemon=True)
    watcher.start()
    with pytest.raises(RuntimeError, match="worker stopped unexpectedly"):
        render_take(scene, tmp_path, exr_output=False)
    watcher.join(5)
    done = sorted(os.listdir(tmp_path))
    assert [name for name in done if name.startswith("f_")] == [f"f_{frame:04d}.png" for frame in range(1, 5)]
    before = {name: os.path.getmtime(tmp_path / name) for name in done if name.startswith("f_")}
    files = render_take(scene, tmp_path, exr_output=False)
    assert files == [f"f_{frame:04d}.png" for frame in range(1, 9)]
    assert all(os.path.getmtime(tmp_path / name) == mtime for name, mtime in before.items())  # not redone
    notes = [(note.frame, note.kind, note.source) for note in render_engine.session.notes]
    assert notes[0] == (5, "feedback", 4)  # continued from frame 4's painting: no seam
    assert [frame for frame, _, _ in notes] == [5, 6, 7, 8]
    strips = editing_strips(scene)
    assert strip_range(max(strips, key=lambda strip: strip[takes.TAKE_KEY])) == (1, 8)


def test_a_looping_shot_repaints_its_first_frames_from_its_last(silk, tmp_path):
    scene = animated_scene(6)
    scene.silk.use_loop = True
    scene.silk.loop_frames = 2
    render_take(scene, tmp_path, exr_output=False)
    loops = [(note.frame, note.source) for note in render_engine.session.notes if note.kind == "loop"]
    assert loops == [(1, 6), (2, 1)]
    assert len([name for name in os.listdir(tmp_path) if name.startswith("f_")]) == 6
    # Frame 1's file now holds the repainted version (flowing on from frame 6), frame 2's a
    # half cross-fade; frame 3 onward keep the take's first painting (kept beside each file).
    for frame, replaced in ((1, True), (2, True), (3, False), (6, False)):
        path = str(tmp_path / f"f_{frame:04d}.png")
        first_painting = animation.load_sidecar(path, frame, 48, 64).picture
        differs = not np.allclose(read_png(path), first_painting, atol=2.5 / 255)
        assert differs == replaced, frame


@pytest.mark.parametrize("layout", ["multilayer-parts", "multilayer-interleaved", "single-layer"])
def test_a_looping_take_into_exr_saves_its_repainted_frames_and_keeps_the_other_passes(silk, tmp_path,
                                                                                       monkeypatch, layout):
    import OpenEXR

    multilayer = layout.startswith("multilayer")

    scene = animated_scene(4)
    scene.silk.steps = 2
    scene.silk.use_loop, scene.silk.loop_frames = True, 2
    set_multilayer_exr(scene)
    settings = scene.render.image_settings
    if hasattr(settings, "use_exr_interleave"):  # 5.0 writes one part per pass unless told (4.x: interleaved)
        settings.use_exr_interleave = layout == "multilayer-interleaved"
    if not multilayer:
        if hasattr(settings, "media_type"):  # Blender 5.0
            settings.media_type = "IMAGE"
        settings.file_format = "OPEN_EXR"
    repainted, before = {}, {}
    keep_rewrite, keep_save = animation.RenderSession.rewrite, takes._save_frame

    def remember_rewrite(session, scene_name, frame, picture):
        repainted[frame] = picture.copy()
        keep_rewrite(session, scene_name, frame, picture)

    def remember_file(scene, frame, picture):
        path = scene.render.frame_path(frame=frame)
        with OpenEXR.File(path) as file:
            before[frame] = (exr.read_passes(path), [sorted(part.channels) for part in file.parts])
        keep_save(scene, frame, picture)

    reports = []
    keep_report = render_engine.SilkRenderEngine._report

    def remember_report(engine, level, message):
        reports.append((level, message))
        keep_report(engine, level, message)

    monkeypatch.setattr(animation.RenderSession, "rewrite", remember_rewrite)
    monkeypatch.setattr(takes, "_save_frame", remember_file)
    monkeypatch.setattr(render_engine.SilkRenderEngine, "_report", remember_report)
    scene.render.filepath = str(tmp_path / "f_")
    bpy.ops.render.render(animation=True)
    assert not any(level == "ERROR" for level, _ in reports + render_engine.last_reports), reports
    refused = [message for _, message in reports if "Loop is off" in message]
    if multilayer and takes.image_io() is None:
        # bpy 4.2 as a Python module ships no OpenImageIO (Blender itself does): the loop is
        # refused up front, once, and the take is kept as painted.
        assert len(refused) == 1 and "multilayer EXR" in refused[0], reports
        assert not repainted and not before
        for frame in range(1, 5):
            path = str(tmp_path / f"f_{frame:04d}.exr")
            first_painting = animation.load_sidecar(path, frame, 48, 64).picture
            assert np.allclose(linear_to_srgb(exr.read_passes(path)["Combined"][..., :3]), first_painting, atol=1e-3)
        return
    assert not refused, reports
    assert sorted(repainted) == sorted(before) == [1, 2]
    for frame in range(1, 5):
        path = str(tmp_path / f"f_{frame:04d}.exr")
        after = exr.read_passes(path)
        combined = after["Combined"] if multilayer else after.get("Combined", np.stack(
            [OpenEXR.File(path, separate_channels=True).channels()[c].pixels for c in "RGBA"], axis=-1))
        first_painting = animation.load_sidecar(path, frame, 48, 64).picture
        if frame in repainted:
            # The file holds the repainted picture, not the first painting...
            assert np.allclose(linear_to_srgb(combined[..., :3]), repainted[frame], atol=1e-3), frame
            assert not np.allclose(repainted[frame], first_painting, atol=2.5 / 255), frame
            assert np.allclose(combined[..., 3], 1.0)
            # ...and every other pass, part and channel as Blender wrote them.
            passes, layout = before[frame]
            with OpenEXR.File(path) as file:
                assert [sorted(part.channels) for part in file.parts] == layout
            assert sorted(after) == sorted(passes)
            for name in passes:
                if name != "Combined":
                    assert np.array_equal(after[name], passes[name]), name
        else:
            assert np.allclose(linear_to_srgb(combined[..., :3]), first_painting, atol=1e-3), frame
    if multilayer:
        assert {"Depth", "Normal", "Vector"} <= set(exr.read_passes(str(tmp_path / "f_0001.exr")))


def test_prompt_keys_travel_between_prompts_per_frame(silk):
    from silk.engine import job_settings

    scene = animated_scene(8)
    for frame, prompt in ((1, "a summer meadow"), (7, "a winter forest")):
        scene.frame_set(frame)
        bpy.ops.silk.prompt_key_add()
        scene.silk.prompt_keys[-1].prompt = prompt
    scene.silk.prompt_easing = 0.0
    scene.frame_set(1)
    assert job_settings.from_scene(scene).prompt == "a summer meadow" and not job_settings.from_scene(scene).prompt_mix
    scene.frame_set(4)
    mix = job_settings.from_scene(scene).prompt_mix
    assert [entry["prompt"] for entry in mix] == ["a summer meadow", "a winter forest"]
    assert [entry["weight"] for entry in mix] == pytest.approx([0.5, 0.5])
    scene.frame_set(8)
    assert job_settings.from_scene(scene).prompt == "a winter forest"


def test_mark_shot_start_adds_one_marker_that_cuts(silk):
    from silk.engine import job_settings

    scene = animated_scene(8)
    scene.frame_set(5)
    assert bpy.ops.silk.mark_shot_start() == {"FINISHED"}
    assert bpy.ops.silk.mark_shot_start() == {"CANCELLED"}  # one is enough
    assert job_settings.shot_of(scene, 6) == job_settings.schedule.Shot(5, 8)
    assert job_settings.shot_of(scene, 4) == job_settings.schedule.Shot(1, 4)


def test_the_noise_pass_in_guides_mode_is_exactly_the_noise_painting_started_from(silk, tmp_path):
    scene = animated_scene(4)
    scene.silk.noise_mode = "WARPED"
    scene.silk.use_noise_pass = True
    scene.view_layers[0].update()
    render_take(scene, tmp_path / "diffuse")
    scene.silk.mode = "GUIDES"
    render_take(scene, tmp_path / "guides")
    for frame in range(1, 5):
        painted = exr.read_passes(str(tmp_path / "diffuse" / f"f_{frame:04d}.exr"))["Noise"]
        shown = exr.read_passes(str(tmp_path / "guides" / f"f_{frame:04d}.exr"))["Noise"]
        assert painted.shape == (48, 64, 4)
        np.testing.assert_array_equal(painted, shown)
        # Each latent pixel over its 8x8 block, unit Gaussian values.
        assert np.all(painted[:8, :8] == painted[0, 0])
        assert 0.5 < painted[::8, ::8].std() < 1.5
    first = exr.read_passes(str(tmp_path / "guides" / "f_0001.exr"))["Noise"]
    last = exr.read_passes(str(tmp_path / "guides" / "f_0004.exr"))["Noise"]
    assert not np.array_equal(first, last)  # the camera moved: the noise travelled with the scene


def test_a_render_in_blenders_default_view_warns_once_and_one_click_sets_standard(silk, tmp_path):
    scene = animated_scene(1)
    scene.view_settings.view_transform = "AgX"
    scene.render.dither_intensity = 1.0
    scene.render.filepath = str(tmp_path / "f12.png")
    bpy.ops.render.render(write_still=True)
    warnings = [message for level, message in render_engine.last_reports if "view transform" in message]
    assert len(warnings) == 1 and "AgX" in warnings[0] and "Use Standard View" in warnings[0]
    bpy.ops.silk.use_standard_view()
    assert scene.view_settings.view_transform == "Standard" and scene.render.dither_intensity == 0
    bpy.ops.render.render(write_still=True)
    assert not any("view transform" in message for _, message in render_engine.last_reports)


@contextlib.contextmanager
def engine_reports():
    """Every (level, message) the engine reports while the block runs, still reported as usual."""
    reports = []
    original = render_engine.SilkRenderEngine._report

    def keep(self, level, message):
        reports.append((level, message))
        original(self, level, message)

    render_engine.SilkRenderEngine._report = keep
    try:
        yield reports
    finally:
        render_engine.SilkRenderEngine._report = original


def test_a_loop_into_a_movie_is_refused_with_a_report_and_the_movie_is_kept(silk, tmp_path):
    scene = animated_scene(3)
    scene.silk.use_loop = True
    scene.silk.loop_frames = 2
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):  # Blender 5.0
        settings.media_type = "VIDEO"
    settings.file_format = "FFMPEG"
    scene.render.ffmpeg.format = "MPEG4"
    scene.render.ffmpeg.codec = "H264"
    scene.render.filepath = str(tmp_path / "take_")
    with engine_reports() as reports:
        bpy.ops.render.render(animation=True)
    movies = [name for name in os.listdir(tmp_path) if name.startswith("take_")]
    assert len(movies) == 1 and movies[0].endswith(".mp4") and os.path.getsize(tmp_path / movies[0]) > 0
    assert not (tmp_path / ".silk").exists()  # no sidecars: a movie's frames share one file
    loop_reports = [message for _, message in reports if "Loop is off" in message]
    assert len(loop_reports) == 1, reports  # once per render, not per frame
    assert not any(note.kind == "loop" for note in render_engine.session.notes)


def test_a_frame_step_keeps_feedback_on_and_says_what_it_costs(silk, tmp_path):
    scene = animated_scene(5)
    scene.frame_step = 2
    with engine_reports() as reports:
        render_take(scene, tmp_path, exr_output=False)
    notes = [(note.frame, note.kind, note.source) for note in render_engine.session.notes]
    assert notes == [(1, "fresh", None), (3, "feedback", 1), (5, "feedback", 3)]
    assert len([message for _, message in reports if "Frame step is 2" in message]) == 1


def test_hold_to_start_reads_the_shots_first_frame_once_per_job_and_paints_the_same(silk, tmp_path, monkeypatch):
    from silk.engine import scene_capture

    scene = animated_scene(6)
    assert scene.silk.hold_to_start == 0.5  # on by default
    cache = scene_capture.motion_cache
    reused = cache.other_frames_reused
    render_take(scene, tmp_path / "kept", exr_output=False)
    # Frames 3-6 hold to frame 1: read at frame 3, taken as it was at frames 4, 5 and 6.
    assert cache.other_frames_reused - reused == 3
    monkeypatch.setattr(cache, "kept_frame", lambda *_args: None)  # read it at every frame instead
    render_take(scene, tmp_path / "read", exr_output=False)
    for frame in range(1, 7):
        kept, read = (read_png(tmp_path / folder / f"f_{frame:04d}.png") for folder in ("kept", "read"))
        assert np.array_equal(kept, read), frame
    scene.silk.hold_to_start = 0.0
    render_take(scene, tmp_path / "unheld", exr_output=False)
    assert not np.array_equal(read_png(tmp_path / "unheld" / "f_0006.png"), read_png(tmp_path / "read" / "f_0006.png"))
