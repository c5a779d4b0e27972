"""The pictures the ControlNets see: depth, BAE normals, colour transfer."""
import numpy as np
import pytest

from silk.engine import conditioning
from silk.engine.color import linear_to_srgb, srgb_to_linear
from silk.engine.conditioning import DepthRange, depth_condition, normal_condition
from silk.engine.guides import compute_guides
from tests.synthetic import camera, frame, placed, translation, uv_sphere


def test_bae_convention_for_axis_normals():
    normals = np.array([[[0, 0, 1], [-1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]]], dtype=float)
    picture = normal_condition(normals, np.eye(4))
    assert np.allclose(picture[0, 0], [0.5, 0.5, 1.0])  # facing the viewer: blue
    assert np.allclose(picture[0, 1], [1.0, 0.5, 0.5])  # left: red
    assert np.allclose(picture[0, 2], [0.0, 0.5, 0.5])
    assert np.allclose(picture[0, 3], [0.5, 1.0, 0.5])  # up: green
    assert np.allclose(picture[0, 4], [0.5, 0.5, 1.0])  # background


def test_normals_are_rotated_into_camera_space():
    # Camera turned 90 degrees left (about +Y): world -X now faces the viewer.
    angle = np.radians(90)
    camera_to_world = np.eye(4)
    camera_to_world[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    view = np.linalg.inv(camera_to_world)
    picture = normal_condition(np.array([[[1.0, 0, 0]]]), view)
    assert np.allclose(picture[0, 0], [0.5, 0.5, 1.0], atol=1e-9)


def test_sphere_normal_picture_matches_the_known_answer():
    cam = camera(width=64, height=64)
    guides = compute_guides(frame(cam, placed("ball", uv_sphere(1.0, 128, 64), translation(z=-4))))
    picture = normal_condition(guides.normal, cam.view)
    centre = picture[32, 32]
    assert np.allclose(centre, [0.5, 0.5, 1.0], atol=0.02)
    rows, cols = np.nonzero(guides.coverage)
    left, right = cols.min(), cols.max()
    top, bottom = rows.min(), rows.max()
    # Left rim points left (red high), right rim right (red low), top rim up (green high).
    assert picture[32, left, 0] > 0.85 and picture[32, right, 0] < 0.15
    assert picture[top, 32, 1] > 0.85 and picture[bottom, 32, 1] < 0.15
    assert np.allclose(picture[0, 0], [0.5, 0.5, 1.0])  # background


def test_depth_is_inverse_near_white_with_a_fixed_range():
    shot = DepthRange(near=2.0, far=20.0)
    depth = np.array([[1.0, 2.0, 5.0, 20.0, 40.0, 1e10]])
    values = depth_condition(depth, shot)[..., 0][0]
    assert values[0] == 1.0 and values[1] == 1.0
    assert values[3] == pytest.approx(0.0) and values[4] == 0.0 and values[5] == 0.0
    expected = (1 / 5 - 1 / 20) / (1 / 2 - 1 / 20)
    assert values[2] == pytest.approx(expected, rel=1e-6)
    # The same depth gives the same value whatever else is in the frame: no per-frame normalisation.
    other_frame = depth_condition(np.array([[5.0, 3.0]]), shot)[..., 0]
    assert other_frame[0, 0] == pytest.approx(values[2])


def test_depth_range_from_percentiles_ignores_background():
    depth = np.full((10, 10), 1e10)
    depth[2:8, 2:8] = np.linspace(3, 9, 36).reshape(6, 6)
    found = DepthRange.from_percentiles(depth)
    assert 3.0 <= found.near < 3.2 and 8.8 < found.far <= 9.0
    assert DepthRange.from_percentiles(np.full((4, 4), 1e10)) is None


def test_invalid_depth_range_is_rejected():
    with pytest.raises(ValueError):
        DepthRange(5.0, 1.0)


def test_srgb_round_trip_and_known_values():
    values = np.linspace(0, 1, 257, dtype=np.float32)
    assert np.allclose(linear_to_srgb(srgb_to_linear(values)), values, atol=1e-6)
    assert srgb_to_linear(np.float32(0.5)) == pytest.approx(0.21404, abs=1e-5)


def test_motion_picture_encodes_direction_as_hue():
    vectors = np.zeros((1, 3, 4), dtype=np.float32)
    vectors[0, 0, :2] = (5, 0)
    vectors[0, 1, :2] = (-5, 0)
    picture = conditioning.motion_picture(vectors)
    assert not np.allclose(picture[0, 0], picture[0, 1])
    assert np.allclose(picture[0, 2], [1, 1, 1])  # no motion: white
