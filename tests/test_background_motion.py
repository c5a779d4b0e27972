"""The world background's motion (engine/guides/background.py): directions at infinity follow
the camera's rotation and lens, never its translation; warping a sky with it reproduces the sky
the next camera sees. Where Silk's Vector pass differs from Cycles' (0 there)."""
import subprocess
import sys

import numpy as np

from silk.engine import temporal
from silk.engine.guides import compute_guides
from silk.engine.guides.background import pixel_directions
from tests.synthetic import camera, frame, perspective, placed, quad, translation

ROOT = __file__.rsplit("/tests/", 1)[0]


def turned(degrees_about_y=0.0, degrees_about_x=0.0, position=(0.0, 0.0, 0.0)):
    """A view matrix (world to camera) for a camera at ``position`` turned left about +Y, then up about +X."""
    a, b = np.radians(degrees_about_y), np.radians(degrees_about_x)
    yaw = np.array([[np.cos(a), 0, np.sin(a), 0], [0, 1, 0, 0], [-np.sin(a), 0, np.cos(a), 0], [0, 0, 0, 1]])
    pitch = np.array([[1, 0, 0, 0], [0, np.cos(b), -np.sin(b), 0], [0, np.sin(b), np.cos(b), 0], [0, 0, 0, 1]])
    world = yaw @ pitch
    world[:3, 3] = position
    return np.linalg.inv(world)


def sky(cam):
    """A smooth sky painted on directions, as the camera sees it (rows top-down, RGB)."""
    height, width = cam.height, cam.width
    rows, cols = np.mgrid[0:height, 0:width]
    px, py = cols.ravel() + 0.5, (height - 1 - rows).ravel() + 0.5
    d = pixel_directions(cam, px.astype(float), py.astype(float))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    azimuth, elevation = np.arctan2(d[:, 0], -d[:, 2]), d[:, 1]
    channels = [0.5 + 0.4 * np.sin(6 * azimuth), 0.5 + 0.4 * np.cos(9 * elevation), 0.5 + 0.3 * np.sin(4 * azimuth + 5 * elevation)]
    return np.stack(channels, axis=-1).reshape(height, width, 3).astype(np.float32)


def test_a_camera_that_only_moves_sees_a_still_background():
    now, before = camera(view=turned(position=(0.3, 0.1, -0.2))), camera()
    guides = compute_guides(frame(now), frame(before), frame(camera(view=turned(position=(0.6, 0, 0)))))
    assert np.all(guides.vector == 0) and np.all(guides.occlusion == 0)


def test_a_turning_camera_moves_the_background_by_the_focal_length_times_the_tangent():
    now, before = camera(), camera(view=turned(degrees_about_y=2.0))
    guides = compute_guides(frame(now), frame(before), frame(camera(view=turned(degrees_about_y=-2.0))))
    focal = now.projection[0, 0] * now.width / 2
    centre = guides.vector[now.height // 2, now.width // 2]
    # The previous camera looked 2 degrees further left: the centre's direction was right of its centre.
    assert abs(centre[0] - focal * np.tan(np.radians(2.0))) < 0.05 and abs(centre[1]) < 0.05
    assert abs(centre[2] - focal * np.tan(np.radians(2.0))) < 0.05  # now minus next: next looks right, it is left there


def test_warping_the_previous_sky_by_the_background_motion_reproduces_this_sky():
    now = camera(160, 120, view=turned(10.0, 4.0))
    before = camera(160, 120, view=turned(13.0, 2.5))
    before = type(before)(view=before.view, projection=perspective(56.0, 160 / 120), width=160, height=120,
                          clip_start=0.1, clip_end=100.0)  # and a zoom (focal length change)
    guides = compute_guides(frame(now), frame(before))
    warped, inside = temporal.warp(sky(before), guides.vector)
    error = np.abs(warped - sky(now)).max(axis=-1)
    assert inside.mean() > 0.8
    assert np.percentile(error[inside], 99) < 0.02
    still, _ = temporal.warp(sky(before), np.zeros_like(guides.vector))  # what Cycles' zero motion gives
    assert np.abs(still - sky(now)).max(axis=-1)[inside].mean() > 10 * error[inside].mean()
    assert np.array_equal(guides.occlusion > 0.5, ~inside)  # directions outside the previous view are new


def test_background_a_surface_covered_a_frame_ago_is_new():
    now, before = camera(), camera(view=turned(degrees_about_y=1.0))
    wall = placed("wall", quad(1.0), translation(x=-1.5, z=-5))
    gone = compute_guides(frame(now), frame(before, wall))  # the wall vanished this frame
    assert gone.occlusion[gone.depth > 1e9].max() == 1.0
    assert gone.occlusion.mean() < 0.2


def test_orthographic_background_keeps_zero_motion():
    now, before = camera(ortho=True), camera(ortho=True, view=turned(degrees_about_y=3.0))
    guides = compute_guides(frame(now), frame(before))
    assert np.all(guides.vector == 0)


def test_the_animation_core_and_noise_import_no_bpy():
    code = ("import sys; sys.modules['bpy'] = None; sys.path.insert(0, sys.argv[1]);"
            "from tools.blender_env import load_silk; load_silk(register=False);"
            "import silk.engine.animation, silk.engine.noise, silk.engine.schedule, silk.engine.guides.background")
    result = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
