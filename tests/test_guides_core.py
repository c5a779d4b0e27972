"""compute_guides on synthetic scenes with known answers (no Blender needed)."""
import numpy as np
import pytest

from silk.engine.guides import BACKGROUND_DEPTH, Camera, Instance, Mesh, compute_guides
from tests.synthetic import camera, frame, placed, quad, translation, uv_sphere


def pixel_scale(cam, depth):
    """Pixels per world unit at ``depth`` for the synthetic perspective camera."""
    return cam.projection[0, 0] * cam.width / 2 / depth


def test_plane_facing_the_camera_has_exact_depth_and_normal():
    cam = camera()
    guides = compute_guides(frame(cam, placed("q", quad(100), translation(z=-5))))
    assert guides.coverage.all()
    assert np.allclose(guides.depth, 5.0, rtol=1e-9)
    assert np.allclose(guides.normal, [0, 0, 1])


def test_slanted_plane_depth_matches_analytic_ray_cast():
    cam = camera(width=40, height=30)
    tilt = np.radians(50)
    rotation = np.eye(4)
    rotation[:3, :3] = [[np.cos(tilt), 0, np.sin(tilt)], [0, 1, 0], [-np.sin(tilt), 0, np.cos(tilt)]]
    matrix = translation(z=-6) @ rotation
    guides = compute_guides(frame(cam, placed("q", quad(100), matrix)))
    normal = rotation[:3, 2]
    point = matrix[:3, 3]
    jj, ii = np.mgrid[0:cam.height, 0:cam.width]
    origins, directions = cam.pixel_rays((ii + 0.5).ravel().astype(float), (jj + 0.5).ravel().astype(float))
    t = ((point - origins) @ normal) / (directions @ normal)
    expected = -(origins + directions * t[:, None])[:, 2]
    expected = expected.reshape(cam.height, cam.width)[::-1]  # guides are top-down
    covered = guides.coverage
    assert covered.mean() > 0.9
    assert np.allclose(guides.depth[covered], expected[covered], rtol=1e-6)
    assert np.allclose(guides.normal[covered], normal, atol=1e-6)


def test_translation_gives_exact_vectors_in_pixels():
    cam = camera()
    mesh = quad(100)
    now = placed("q", mesh, translation(x=0.3, z=-5))
    before = placed("q", mesh, translation(x=0.0, z=-5))
    after = placed("q", mesh, translation(x=0.5, y=0.1, z=-5))
    guides = compute_guides(frame(cam, now), frame(cam, before), frame(cam, after))
    scale = pixel_scale(cam, 5.0)
    vx, vy, vz, vw = np.moveaxis(guides.vector, -1, 0)
    assert np.allclose(vx, -0.3 * scale, atol=1e-6)
    assert np.allclose(vy, 0.0, atol=1e-6)
    assert np.allclose(vz, -0.2 * scale, atol=1e-6)
    assert np.allclose(vw, -0.1 * scale * cam.projection[1, 1] / cam.projection[0, 0] * cam.height / cam.width, atol=1e-6)
    # 0.3 units is 2.49 pixels: the two leftmost columns were outside the frame a frame ago.
    assert np.all(guides.occlusion[:, :2] == 1) and np.all(guides.occlusion[:, 2:] == 0)


def test_camera_motion_moves_everything():
    cam_now = camera()
    cam_before = Camera(view=translation(x=-0.2), projection=cam_now.projection, width=cam_now.width,
                        height=cam_now.height, clip_start=0.1, clip_end=100)
    wall = placed("w", quad(100), translation(z=-10))
    guides = compute_guides(frame(cam_now, wall), frame(cam_before, wall))
    # The camera was 0.2 to the right a frame ago, so points were 0.2 further left on screen.
    assert np.allclose(guides.vector[..., 0], -0.2 * pixel_scale(cam_now, 10.0), atol=1e-6)


def test_orthographic_camera_depth_and_vectors():
    cam = camera(width=40, height=40, ortho=True)
    mesh = quad(100)
    guides = compute_guides(frame(cam, placed("q", mesh, translation(x=0.5, z=-7))),
                            frame(cam, placed("q", mesh, translation(z=-7))))
    assert np.allclose(guides.depth, 7.0)
    # Orthographic half width 4 units over 20 pixels: 5 pixels per unit at any depth.
    assert np.allclose(guides.vector[..., 0], -0.5 * 5.0, atol=1e-6)


def test_uncovered_background_is_marked_occluded():
    cam = camera(width=80, height=60)
    wall = placed("wall", quad(100), translation(z=-10))
    card_now = placed("card", quad(2), translation(x=1.0, z=-5))
    card_before = placed("card", quad(2), translation(x=-1.0, z=-5))
    guides = compute_guides(frame(cam, wall, card_now), frame(cam, wall, card_before))
    # Expected: wall pixels whose point was behind the card a frame ago.
    jj, ii = np.mgrid[0:cam.height, 0:cam.width]
    origins, directions = cam.pixel_rays((ii + 0.5).ravel().astype(float), (jj + 0.5).ravel().astype(float))
    wall_points = origins + directions * ((-10 - origins[:, 2]) / directions[:, 2])[:, None]
    toward_camera = wall_points * (5.0 / 10.0)  # where the line of sight crosses the card's plane
    hidden_before = (np.abs(toward_camera[:, 0] + 1.0) < 1.0) & (np.abs(toward_camera[:, 1]) < 1.0)
    on_card_now = (np.abs(toward_camera[:, 0] - 1.0) < 1.0) & (np.abs(toward_camera[:, 1]) < 1.0)
    expected = hidden_before & ~on_card_now
    expected = expected.reshape(cam.height, cam.width)[::-1].astype(np.float32)
    assert expected.sum() > 50
    assert np.mean(guides.occlusion == expected) > 0.99


def test_without_a_previous_frame_everything_is_new():
    cam = camera()
    guides = compute_guides(frame(cam, placed("q", quad(100), translation(z=-5))))
    assert np.all(guides.occlusion == 1.0)


def test_object_that_just_appeared_is_new_and_static_background_is_not():
    cam = camera()
    wall = placed("wall", quad(100), translation(z=-10))
    card = placed("card", quad(2), translation(z=-5))
    guides = compute_guides(frame(cam, wall, card), frame(cam, wall))
    centre = guides.occlusion[cam.height // 2, cam.width // 2]
    corner = guides.occlusion[0, 0]
    assert centre == 1.0 and corner == 0.0


def test_object_that_disappeared_still_occluded_the_previous_frame():
    cam = camera()
    wall = placed("wall", quad(100), translation(z=-10))
    card = placed("card", quad(2), translation(z=-5))
    guides = compute_guides(frame(cam, wall), frame(cam, wall, card))
    assert guides.occlusion[cam.height // 2, cam.width // 2] == 1.0
    assert guides.occlusion[0, 0] == 0.0


def test_changed_topology_falls_back_to_object_motion_and_says_so():
    cam = camera()
    big = quad(100)
    other = uv_sphere(1.0, 8, 4)  # a different vertex count
    now = placed("thing", big, translation(x=0.2, z=-5))
    before = placed("thing", other, translation(z=-5))
    guides = compute_guides(frame(cam, now), frame(cam, before))
    assert any("topology" in note for note in guides.notes)
    assert np.allclose(guides.vector[..., 0], -0.2 * pixel_scale(cam, 5.0), atol=1e-6)


def test_background_has_cycles_conventions():
    cam = camera()
    guides = compute_guides(frame(cam), frame(cam))
    assert np.all(guides.depth == BACKGROUND_DEPTH)
    assert np.all(guides.normal == 0) and np.all(guides.vector == 0)
    assert not guides.coverage.any()


def test_inside_a_closed_sphere_the_normals_face_the_camera():
    cam = camera()
    guides = compute_guides(frame(cam, placed("room", uv_sphere(5.0), np.eye(4))))
    assert guides.coverage.all()
    assert guides.backfacing_fraction > 0.99
    # Normals point back toward the camera at the origin: opposite to the radial direction.
    centre = guides.normal[cam.height // 2, cam.width // 2]
    assert centre[2] > 0.99


def test_smooth_sphere_normals_are_radial():
    cam = camera(width=64, height=64)
    guides = compute_guides(frame(cam, placed("ball", uv_sphere(1.0, 128, 64), translation(z=-4))))
    jj, ii = np.mgrid[0:cam.height, 0:cam.width]
    origins, directions = cam.pixel_rays((ii + 0.5).ravel().astype(float), (jj + 0.5).ravel().astype(float))
    d = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    oc = origins - np.array([0, 0, -4.0])
    b = np.einsum("ij,ij->i", oc, d)
    disc = b * b - (np.einsum("ij,ij->i", oc, oc) - 1.0)
    hit = disc > 0
    t = -b - np.sqrt(np.maximum(disc, 0))
    radial = (origins + d * t[:, None]) - np.array([0, 0, -4.0])
    radial = radial.reshape(cam.height, cam.width, 3)[::-1]
    hit = hit.reshape(cam.height, cam.width)[::-1] & guides.coverage
    cosine = np.einsum("ijk,ijk->ij", guides.normal, radial)[hit]
    assert np.mean(cosine > np.cos(np.radians(1.0))) > 0.99


@pytest.mark.parametrize("size", [(1, 1), (3, 2)])
def test_tiny_pictures(size):
    cam = camera(*size)
    guides = compute_guides(frame(cam, placed("q", quad(100), translation(z=-5))), frame(cam))
    assert guides.depth.shape == (size[1], size[0])
    assert guides.vector.shape == (size[1], size[0], 4)


def test_camera_rejects_bad_input():
    with pytest.raises(ValueError, match="not finite"):
        Camera(view=np.full((4, 4), np.nan), projection=np.eye(4), width=4, height=4, clip_start=0.1, clip_end=10)
    with pytest.raises(ValueError, match="empty"):
        Camera(view=np.eye(4), projection=np.eye(4), width=0, height=4, clip_start=0.1, clip_end=10)


def test_each_flat_triangle_of_a_bent_quad_keeps_its_own_normal():
    cam = camera(width=48, height=48)
    positions = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0.6], [-1, 1, 0]], dtype=float)
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    # Corner normals say "the quad's normal"; flat shading must ignore them.
    bent = Mesh(positions, triangles, np.tile([0.0, 0.0, 1.0], (2, 3, 1)), flat=np.array([True, True]))
    guides = compute_guides(frame(cam, placed("bent", bent, translation(z=-4))))
    expected = [np.cross(positions[b] - positions[a], positions[c] - positions[a]) for a, b, c in triangles]
    expected = [n / np.linalg.norm(n) for n in expected]
    seen = guides.normal[guides.coverage]
    for normal in expected:
        assert np.mean(np.abs(seen - normal).max(axis=1) < 1e-6) > 0.3


def test_mirrored_flat_triangles_face_the_camera():
    cam = camera(width=32, height=32)
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    flat_quad = quad(4)
    flat_quad.flat[:] = True
    guides = compute_guides(frame(cam, placed("m", flat_quad, translation(z=-4) @ mirror)))
    assert np.allclose(guides.normal[guides.coverage], [0, 0, 1], atol=1e-6)


@pytest.mark.parametrize("scale, differs", [((3.0, 1.0, 1.0), True), ((2.0, 2.0, 2.0), False)])
def test_corner_normals_are_renormalised_in_world_space_unless_the_mesh_is_shared(scale, differs):
    """Cycles applies a once-placed mesh's transform, renormalising each vertex normal,
    then interpolates; a shared mesh is interpolated in object space. Non-uniform scale
    tells the two apart."""
    cam = camera(width=48, height=48)
    positions = np.array([[-1.5, -1.5, 0], [1.5, -1.5, 0], [0, 1.5, 0]], dtype=float)
    tilted = np.array([[0.8, 0.0, 0.6], [0.0, 0.0, 1.0], [-0.6, 0.0, 0.8]])
    mesh = Mesh(positions, np.array([[0, 1, 2]]), tilted[None])
    matrix = translation(z=-6) @ np.diag(list(scale) + [1.0])
    once = compute_guides(frame(cam, Instance("t", mesh, matrix)))
    shared = compute_guides(frame(cam, Instance("t", mesh, matrix, shared_mesh=True)))
    covered = once.coverage & shared.coverage
    assert covered.sum() > 100
    angle = np.degrees(np.arccos(np.clip(np.sum(once.normal * shared.normal, axis=-1), -1, 1)))[covered]
    assert (angle.max() > 1.0) == differs


def test_closed_form_inverse_matches_numpy_and_refuses_singular_matrices():
    from silk.engine.guides.camera import inverse4

    rng = np.random.default_rng(7)
    for _ in range(50):
        m = rng.normal(size=(4, 4))
        assert np.allclose(inverse4(m), np.linalg.inv(m), rtol=1e-9, atol=1e-9)
    cam = camera(ortho=True)
    assert np.allclose(inverse4(cam.view_projection) @ cam.view_projection, np.eye(4), atol=1e-12)
    with pytest.raises(np.linalg.LinAlgError):
        inverse4(np.diag([1.0, 1.0, 0.0, 1.0]))
