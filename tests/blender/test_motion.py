"""Animation renders with a motion module (the `tiny` one) in Blender's module: windows of frames,
one video request each, resume by window, loops. The real worker; tiny sizes."""
import os
import threading
import time

import bpy
import numpy as np
import pytest

from silk.bridge.client import WorkerClient
from silk.engine import render_engine, takes, windows, worker_link
from tests.blender.test_animation import animated_scene, editing_strips, render_take, strip_range
from tests.support.scenes import read_png


@pytest.fixture
def requests(monkeypatch):
    """The frames of every generate_video request the render sends, in order."""
    sent = []
    original = WorkerClient.generate_video

    def counting(self, model, motion, prompt, controlnets, width, height, frames, **options):
        sent.append({"frames": frames, "init": options.get("init_video") is not None})
        return original(self, model, motion, prompt, controlnets, width, height, frames, **options)

    monkeypatch.setattr(WorkerClient, "generate_video", counting)
    return sent


def motion_scene(frames=6):
    scene = animated_scene(frames, 64, 64)
    scene.silk.steps = 2
    scene.silk.motion_module = "tiny"
    scene.silk.context_frames, scene.silk.context_overlap = 4, 1
    return scene


def render_killed_in_the_second_window(scene, tmp_path, requests, seconds: float = 300):
    """Render the take, killing the worker while it paints the second window; the render fails."""
    def kill_in_the_second_window():
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            client = worker_link._client
            if len(requests) == 2 and client and client.state == "busy":
                client.kill()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_in_the_second_window, daemon=True)
    watcher.start()
    with pytest.raises(RuntimeError, match="worker stopped unexpectedly"):
        render_take(scene, tmp_path, exr_output=False)
    watcher.join(5)


def test_a_shot_is_painted_in_windows_one_request_each(silk, tmp_path, requests):
    scene = motion_scene(6)
    files = render_take(scene, tmp_path, exr_output=False)
    assert files == [f"f_{frame:04d}.png" for frame in range(1, 7)]
    assert not any(level == "ERROR" for level, _ in render_engine.last_reports), render_engine.last_reports
    assert requests == [{"frames": 4, "init": False}, {"frames": 4, "init": True}]  # windows 1-4 and 3-6
    assert sorted(os.listdir(tmp_path / ".silk")) == ["window-1-4.npz", "window-3-6.npz"]
    strips = editing_strips(scene)
    newest = max(strips, key=lambda strip: strip[takes.TAKE_KEY])
    assert strip_range(newest) == (1, 6) and "motion tiny | ctx 4/1" in newest.name
    pictures = [read_png(str(tmp_path / name)) for name in files]
    assert all(picture.std() > 0.01 for picture in pictures)
    # A frame only the second window painted is its painting; a shared one is cross-faded.
    second = windows.load_window(str(tmp_path / ".silk" / "window-3-6.npz"), windows.Window(1, (3, 4, 5, 6), 2), 64, 64)
    assert np.allclose(pictures[5], second[3], atol=2.5 / 255)
    assert not np.allclose(pictures[2], second[0], atol=2.5 / 255)


def test_killing_the_worker_mid_shot_redoes_only_the_unfinished_window(silk, tmp_path, requests):
    scene = motion_scene(6)
    scene.render.use_overwrite = False

    render_killed_in_the_second_window(scene, tmp_path, requests)
    done = sorted(name for name in os.listdir(tmp_path) if name.startswith("f_"))
    assert done == ["f_0001.png", "f_0002.png"]
    before = {name: os.path.getmtime(tmp_path / name) for name in done}
    requests.clear()
    files = render_take(scene, tmp_path, exr_output=False)
    assert files == [f"f_{frame:04d}.png" for frame in range(1, 7)]
    assert requests == [{"frames": 4, "init": True}]  # only the second window, joined to the first one's frames
    assert all(os.path.getmtime(tmp_path / name) == mtime for name, mtime in before.items())


def test_a_40_frame_shot_in_windows_of_16_resumes_by_window(silk, tmp_path, requests):
    """The issue's case: 40 frames, context 16, overlap 4: every frame through Blender's output, one
    take strip, and a resume after the worker dies in the second window repaints from that window on."""
    scene = motion_scene(40)
    scene.silk.context_frames, scene.silk.context_overlap = 16, 4
    scene.render.use_overwrite = False
    planned = windows.schedule_windows(windows.Shot(1, 40), 16, 4)
    assert [window.frames[0] for window in planned] == [1, 13, 25] and all(len(w.frames) == 16 for w in planned)

    render_killed_in_the_second_window(scene, tmp_path, requests)
    done = sorted(name for name in os.listdir(tmp_path) if name.startswith("f_"))
    assert done == [f"f_{frame:04d}.png" for frame in range(1, 13)]  # the first window's own frames
    before = {name: os.path.getmtime(tmp_path / name) for name in done}
    requests.clear()
    files = render_take(scene, tmp_path, exr_output=False)
    assert files == [f"f_{frame:04d}.png" for frame in range(1, 41)]
    assert requests == [{"frames": 16, "init": True}, {"frames": 16, "init": True}]  # windows 13-28 and 25-40
    assert all(os.path.getmtime(tmp_path / name) == mtime for name, mtime in before.items())
    strips = editing_strips(scene)
    newest = max(strips, key=lambda strip: strip[takes.TAKE_KEY])
    assert strip_range(newest) == (1, 40)


def test_a_looped_shot_wraps_its_last_window_into_its_first_frames(silk, tmp_path, requests):
    scene = motion_scene(6)
    scene.silk.use_loop = True
    render_take(scene, tmp_path, exr_output=False)
    assert len(requests) == 3 and requests[-1] == {"frames": 4, "init": True}  # the wrap: 5, 6, 1, 2
    assert "window-5-2-loop.npz" in os.listdir(tmp_path / ".silk")
    first_window = windows.load_window(str(tmp_path / ".silk" / "window-1-4.npz"), windows.Window(0, (1, 2, 3, 4)),
                                       64, 64)
    assert not np.allclose(read_png(str(tmp_path / "f_0001.png")), first_window[0], atol=2.5 / 255)  # rewritten
    second = windows.Window(1, (3, 4, 5, 6), 2)
    second_window = windows.load_window(str(tmp_path / ".silk" / "window-3-6.npz"), second, 64, 64)
    shared = windows.blend(first_window[2], second_window[0], windows.blend_weight(second, 0))
    assert np.allclose(read_png(str(tmp_path / "f_0003.png")), shared, atol=2.5 / 255)  # out of the wrap: as painted


def test_a_single_frame_render_with_a_motion_module(silk, requests):
    scene = motion_scene(6)
    scene.frame_set(5)
    bpy.ops.render.render()
    assert not any(level == "ERROR" for level, _ in render_engine.last_reports), render_engine.last_reports
    assert requests == [{"frames": 4, "init": False}]  # its window alone, nothing before it
    assert render_engine.last_picture.shape == (64, 64, 3)
