"""Warped latent noise (engine/noise.py): it travels with exact motion, below a latent pixel per
frame too, and stays white N(0, 1) noise under zoom and disocclusion."""
import numpy as np
import pytest

from silk.engine import noise


def motion(size, dx, dy, zoom=1.0):
    """Vector pass of a camera pan (dx right, dy down per frame, frame pixels) and zoom about the centre."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = (size - 1) / 2
    x = centre + (cols + dx - centre) / zoom
    y = centre + (rows + dy - centre) / zoom
    vector = np.zeros((size, size, 4), dtype=np.float32)
    vector[..., 0], vector[..., 1] = x - cols, -(y - rows)
    return vector


def run(field, vector, occlusion, frames, seed=3):
    for frame in range(1, frames + 1):
        field = noise.warp_field(field, vector, occlusion, noise.frame_rng(seed, frame))
    return field


def test_the_latent_is_white_unit_gaussian_and_sized_as_the_worker_expects():
    field = noise.shot_noise(100, 130, seed=1)
    latent = field.latent()
    assert latent.shape == (13, 17, 4) and latent.dtype == np.float32
    big = noise.shot_noise(512, 512, seed=1).latent()
    assert np.allclose(big.reshape(-1, 4).std(axis=0), 1.0, atol=0.05)
    assert abs(noise.lag1_autocorrelation(big)) < 0.05


def test_motion_of_a_quarter_latent_pixel_per_frame_accumulates_instead_of_being_rounded_away():
    field = noise.shot_noise(128, 128, seed=2)
    still = np.zeros((128, 128), dtype=np.float32)
    # The scene moves 2 px left per frame: after 4 frames the noise is one latent pixel left, exactly.
    moved = run(field, motion(128, 2.0, 0.0), still, 4)
    before, after = field.latent(), moved.latent()
    np.testing.assert_allclose(after[:, :-1], before[:, 1:], atol=1e-5)
    assert not np.allclose(after[:, -1], before[:, -1])  # the frame's new edge is fresh noise
    # 0.5 px per frame: no frame alone moves a particle a whole cell, yet 16 frames move them a
    # latent pixel (the seam with the fresh particles entering at the edge merges a little).
    slow = run(field, motion(128, 0.5, 0.0), still, 16)
    np.testing.assert_allclose(slow.latent()[:, :-2], before[:, 1:-1], atol=1e-5)


@pytest.mark.parametrize("zoom", [1.3, 1 / 1.3])
def test_zoom_keeps_the_noise_white_gaussian_and_the_surface_keeps_much_of_its_noise(zoom):
    size, frames = 256, 16
    field = noise.shot_noise(size, size, seed=4)
    per_frame = zoom ** (1 / frames)
    vector, still = motion(size, 0.0, 0.0, per_frame), np.zeros((size, size), dtype=np.float32)
    latents = [field.latent()]
    for frame in range(1, frames + 1):
        field = noise.warp_field(field, vector, still, noise.frame_rng(4, frame))
        latents.append(field.latent())
    last = latents[-1]
    assert np.all(np.abs(last.reshape(-1, 4).std(axis=0) - 1.0) < 0.1)
    assert abs(noise.lag1_autocorrelation(last)) < 0.1
    assert noise.unique_fraction(last) > 0.9
    assert np.all(field.weights > 0) and np.all(np.abs(field.offsets) <= 0.5)
    # Near the zoom's centre the surface barely moves: its latent pixels keep their noise.
    centre = slice(14, 18)
    assert np.corrcoef(last[centre, centre].ravel(), latents[8][centre, centre].ravel())[0, 1] > 0.5


def test_a_disoccluded_surface_gets_fresh_noise_and_a_still_one_keeps_its_own():
    size = 64
    field = noise.shot_noise(size, size, seed=5)
    occlusion = np.zeros((size, size), dtype=np.float32)
    occlusion[:, :32] = 1.0  # the left half was hidden in the previous frame
    warped = noise.warp_field(field, np.zeros((size, size, 4), dtype=np.float32), occlusion, noise.frame_rng(5, 1))
    before, after = field.latent(), warped.latent()
    np.testing.assert_array_equal(after[:, 4:], before[:, 4:])
    assert abs(np.corrcoef(after[:, :4].ravel(), before[:, :4].ravel())[0, 1]) < 0.3


def test_the_same_seed_and_frames_give_the_same_noise():
    field = noise.shot_noise(96, 96, seed=6)
    vector, still = motion(96, 0.7, -0.3, 1.02), np.zeros((96, 96), dtype=np.float32)
    a, b = run(field, vector, still, 3), run(field, vector, still, 3)
    np.testing.assert_array_equal(a.latent(), b.latent())


def test_the_noise_pass_repeats_each_latent_pixel_over_its_block_cropped_to_the_frame():
    latent = noise.shot_noise(20, 27, seed=1).latent()
    shown = noise.upscale_latent(latent, 20, 27)
    assert shown.shape == (20, 27, 4)
    np.testing.assert_array_equal(shown[8:16, 16:24], np.broadcast_to(latent[1, 2], (8, 8, 4)))
    np.testing.assert_array_equal(shown[19, 26], latent[2, 3])
