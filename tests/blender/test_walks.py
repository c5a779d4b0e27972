"""Latent walks, image prompts and the variant picker in Blender's module: the real worker, `tiny`."""
import math

import bpy
import numpy as np
import pytest

from silk.engine import job_settings, render_engine, variants, walk_settings
from tests.blender.test_diffusion import diffuse_scene, errors


def still_scene(width=64, height=48):
    """The diffusion scene with nothing moving: only the noise can change a picture."""
    scene = diffuse_scene(width, height, steps=2)
    for obj in scene.objects:
        obj.animation_data_clear()
    scene.silk.use_feedback = False  # independent frames: what DRIFT and LOOP make smooth
    return scene


def paint_frames(scene, frames):
    pictures = []
    for frame in frames:
        scene.frame_set(frame)
        bpy.ops.render.render()
        assert not errors(), render_engine.last_reports
        pictures.append(render_engine.last_picture.copy())
    return pictures


def change(a, b):
    return float(np.abs(a - b).mean())


def test_drift_angle_keyframes_are_read_at_every_frame(silk):
    scene = still_scene()
    scene.silk.noise_drift = math.radians(30)
    assert job_settings.temporal_from_scene(scene).drift_angle_at(7) == pytest.approx(math.radians(30))
    for frame, value in ((1, 0.0), (11, math.pi / 2)):
        scene.silk.noise_drift = value
        scene.silk.keyframe_insert("noise_drift", frame=frame)
    angle_at = job_settings.temporal_from_scene(scene).drift_angle_at
    assert angle_at(1) == pytest.approx(0.0, abs=1e-6) and angle_at(11) == pytest.approx(math.pi / 2, abs=1e-6)
    assert angle_at(6) == pytest.approx(math.pi / 4, abs=1e-3)  # half way along a symmetric curve
    assert angle_at(40) == pytest.approx(math.pi / 2, abs=1e-6)


def test_drift_changes_the_picture_by_its_angle_and_loop_closes(silk):
    scene = still_scene()
    scene.frame_start, scene.frame_end = 1, 6
    scene.silk.noise_mode = "DRIFT"
    steps = {}
    for degrees in (0, 20, 90):
        scene.silk.noise_drift = math.radians(degrees)
        pictures = paint_frames(scene, range(1, 4))
        steps[degrees] = np.mean([change(a, b) for a, b in zip(pictures, pictures[1:])])
    assert steps[0] == 0.0  # drift 0: the noise, so the picture, stays
    assert 0.0 < steps[20] < 0.6 * steps[90]  # a small drift changes the picture less than fresh noise
    scene.silk.noise_mode = "LOOP"
    pictures = paint_frames(scene, range(1, 7))
    consecutive = [change(a, b) for a, b in zip(pictures, pictures[1:])]
    closing = change(pictures[-1], pictures[0])
    assert 0.5 * np.median(consecutive) < closing < 1.5 * np.median(consecutive)  # the last frame flows into the first
    assert change(pictures[0], pictures[3]) > 1.5 * np.median(consecutive)  # half way round is far from the start


def solid_image(name, color, size=(24, 16)):
    image = bpy.data.images.new(name, *size)
    pixels = np.ones((size[1], size[0], 4), np.float32)
    pixels[..., :3] = color
    image.pixels.foreach_set(pixels.ravel())
    return image


def test_image_prompt_keys_travel_like_prompt_keys_and_steer_the_picture(silk):
    scene = still_scene()
    silk_settings = scene.silk
    red, blue = solid_image("Red", (1, 0, 0)), solid_image("Blue", (0, 0, 1))
    bpy.ops.render.render()
    plain = render_engine.last_picture.copy()
    for frame, image, weight in ((1, red, 1.0), (9, blue, 0.5)):
        scene.frame_set(frame)
        bpy.ops.silk.image_prompt_key_add()
        key = silk_settings.image_prompt_keys[-1]
        key.image, key.weight = image, weight
    assert [key.frame for key in silk_settings.image_prompt_keys] == [1, 9]
    silk_settings.prompt_easing = 0.0
    for frame, value in ((1, 0.2), (9, 1.0)):
        silk_settings.ip_adapter_scale = value
        silk_settings.keyframe_insert("ip_adapter_scale", frame=frame)
    for point in walk_settings.fcurve(scene, "silk.ip_adapter_scale").keyframe_points:
        point.interpolation = "LINEAR"
    scene.frame_set(3)
    job = job_settings.from_scene(scene)
    assert [entry["weight"] for entry in job.image_prompts] == pytest.approx([0.75, 0.25 * 0.5])
    assert job.image_prompts[0]["image"].shape == (16, 24, 3)
    assert np.allclose(job.image_prompts[0]["image"], (1, 0, 0)) and np.allclose(job.image_prompts[1]["image"],
                                                                                  (0, 0, 1))
    assert job.ip_adapter == {"scale": pytest.approx(0.4)}  # keyframed: a quarter of the way from 0.2 to 1.0
    scene.frame_set(12)
    assert [entry["weight"] for entry in job_settings.from_scene(scene).image_prompts] == [0.5]
    # Through the worker: the image prompt steers F12, and the two keys give different pictures.
    scene.frame_set(1)
    bpy.ops.render.render()
    assert not errors(), render_engine.last_reports
    with_red = render_engine.last_picture.copy()
    assert change(with_red, plain) > 0.01
    scene.frame_set(9)
    bpy.ops.render.render()
    assert change(render_engine.last_picture, with_red) > 0.01
    # A key without a picture is one clear error, not a traceback.
    silk_settings.image_prompt_keys[0].image = None
    with pytest.raises(RuntimeError, match="image prompt key at frame 1 has no image"):
        bpy.ops.render.render()


def test_a_wrong_ip_adapter_is_one_clear_error(silk, tmp_path):
    scene = still_scene()
    key = scene.silk.image_prompt_keys.add()
    key.image = solid_image("Green", (0, 1, 0))
    scene.silk.ip_adapter = str(tmp_path)  # a folder without an IP-Adapter in it
    with pytest.raises(RuntimeError, match="holds no .safetensors/.bin files"):
        bpy.ops.render.render()
    assert len(errors()) == 1


def test_paint_variants_makes_a_grid_and_choosing_a_tile_keys_its_seed(silk):
    scene = still_scene(64, 48)
    silk_settings = scene.silk
    silk_settings.preview_scale = 0.5
    silk_settings.variant_count = 4
    silk_settings.seed = 77
    scene.timeline_markers.new("Shot", frame=5)
    scene.frame_set(7)
    assert bpy.ops.silk.choose_variant.poll() is False  # nothing painted yet
    assert bpy.ops.silk.paint_variants() == {"FINISHED"}
    image = bpy.data.images[f"Silk Variants {scene.name}"]
    seeds = list(image["silk_variant_seeds"])
    assert len(seeds) == 4 and seeds[0] == 77 and len(set(seeds)) == 4
    assert max(seeds) < 2 ** 23  # seeds a keyframe holds exactly
    assert tuple(image.size) == variants.grid_size(4, 32, 24)
    width, height = image.size
    pixels = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(pixels)
    grid = pixels.reshape(height, width, 4)[::-1, :, :3]
    tiles = []
    for index in range(4):
        x, y = variants.tile_origin(index, 4, 32, 24)
        tiles.append(grid[y:y + 24, x:x + 32])
        assert tiles[-1][:12, :].max() > 0.9  # its label
    lower = [tile[14:] for tile in tiles]  # below the labels: the paintings
    assert min(change(a, b) for i, a in enumerate(lower) for b in lower[i + 1:]) > 0.005  # four different seeds
    # Tile 3 (index 2) becomes the seed, keyed at the shot's first frame (the Shot marker at 5).
    assert bpy.ops.silk.choose_variant_at.poll() is False  # double-click: only over the grid in an Image Editor
    assert bpy.ops.silk.choose_variant(index=2) == {"FINISHED"}
    assert silk_settings.seed == seeds[2]
    curve = walk_settings.fcurve(scene, "silk.seed")
    assert [(point.co[0], point.co[1], point.interpolation) for point in curve.keyframe_points] == \
        [(5.0, float(seeds[2]), "CONSTANT")]
    scene.frame_set(30)
    assert silk_settings.seed == seeds[2]  # the shot animates from the chosen variant
    # A preview of the same size and steps paints exactly the chosen tile's picture.
    scene.frame_set(7)
    silk_settings.preview_steps = silk_settings.steps
    assert bpy.ops.silk.render_preview() == {"FINISHED"}
    preview = bpy.data.images[f"Silk Preview {scene.name}"]
    assert tuple(preview.size) == (32, 24)
    painted = np.empty(32 * 24 * 4, np.float32)
    preview.pixels.foreach_get(painted)
    assert np.allclose(painted.reshape(24, 32, 4)[::-1, :, :3][14:], lower[2], atol=1e-5)
    silk_settings.variant_key_seed = False
    assert bpy.ops.silk.choose_variant(index=1) == {"FINISHED"}
    assert silk_settings.seed == seeds[1] and len(curve.keyframe_points) == 1  # set, not keyed
    with pytest.raises(RuntimeError, match="there is no variant 10 \\(the grid has 4\\)"):
        bpy.ops.silk.choose_variant(index=9)


def test_a_looping_take_with_loop_noise_and_feedback_renders_and_repaints_its_start(silk, tmp_path):
    from tests.blender.test_animation import animated_scene, render_take

    scene = animated_scene(4, 64, 48)
    scene.silk.steps = 2
    scene.silk.noise_mode = "LOOP"
    scene.silk.use_loop, scene.silk.loop_frames = True, 2
    assert render_take(scene, tmp_path, exr_output=False) == [f"f_{frame:04d}.png" for frame in range(1, 5)]
    assert not errors(), render_engine.last_reports
    kinds = [(note.frame, note.kind) for note in render_engine.session.notes]
    assert kinds[:4] == [(1, "fresh"), (2, "feedback"), (3, "feedback"), (4, "feedback")]
    assert kinds[4:] == [(1, "loop"), (2, "loop")]


def test_dice_seeds_are_ones_a_keyframe_holds_exactly(silk):
    from silk.engine.settings import SEED_LIMIT

    scene = still_scene()
    drawn = []
    for _ in range(64):  # uncapped (below 2^31), 64 draws all under 2^23 would happen once in 2^512
        assert bpy.ops.silk.randomize_seed() == {"FINISHED"}
        drawn.append(scene.silk.seed)
    assert max(drawn) < SEED_LIMIT and len(set(drawn)) > 60
    for seed in (drawn[-1], max(drawn)):
        scene.silk.seed = seed
        scene.silk.keyframe_insert("seed", frame=1)
        scene.frame_set(2)
        scene.frame_set(1)
        assert scene.silk.seed == seed


def test_variant_seeds_are_ones_a_keyframe_holds_exactly(silk):
    from silk.operators.variants import SEED_LIMIT, variant_seeds

    seeds = variant_seeds(9_000_000, 6)  # a current seed a key would round is not offered again
    assert len(set(seeds)) == 6 and 9_000_000 not in seeds and max(seeds) < SEED_LIMIT
    scene = still_scene()
    for seed in (SEED_LIMIT - 1, SEED_LIMIT - 2, seeds[0]):
        scene.silk.seed = seed
        scene.silk.keyframe_insert("seed", frame=1)
        scene.frame_set(2)
        scene.frame_set(1)
        assert scene.silk.seed == seed
