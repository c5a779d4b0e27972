"""The Silk engine in Blender: F12, animation, saved files, passes, and bad input."""
import math
import os

import bpy
import numpy as np
import pytest

from silk.engine import conditioning, render_engine
from tests.support import exr, scenes
from tools.blender_env import set_multilayer_exr, set_png


def simple_scene(width=64, height=48):
    scene = scenes.reset(width, height)
    scenes.add_camera(scene, location=(0, -8, 2), rotation=(math.radians(80), 0, 0))
    cube = scenes.add_mesh(scene, "cube", "Cube", location=(0, 0, 1))
    scenes.keyframe(cube, "location", [(1, (-1, 0, 1)), (10, (1, 0, 1.5))])
    scenes.add_mesh(scene, "uv_sphere", "Sphere", location=(2, 2, 1), smooth=True)
    scenes.add_mesh(scene, "plane", "Ground", size=30)
    scene.render.engine = "SILK"
    scene.silk.mode = "GUIDES"
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    scene.render.dither_intensity = 0.0
    return scene


def render_png(scene, path):
    set_png(scene)
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return scenes.read_png(path)


def camera_view_matrix(scene):
    depsgraph = bpy.context.evaluated_depsgraph_get()
    matrix = scene.camera.evaluated_get(depsgraph).matrix_world.normalized()
    return np.linalg.inv(np.array(matrix))


def test_engine_is_registered_with_settings(silk):
    assert "SILK" in {engine.bl_idname for engine in bpy.types.RenderEngine.__subclasses__() if hasattr(engine, "bl_idname")}
    scene = scenes.reset()  # defaults of a fresh scene, whatever earlier tests left behind
    assert scene.silk.mode == "DIFFUSE"
    assert scene.silk.guide_preview == "DEPTH"


def test_guides_mode_shows_the_normal_picture_exactly(silk, tmp_path):
    scene = simple_scene()
    scene.silk.guide_preview = "NORMAL"
    set_multilayer_exr(scene)
    scene.render.filepath = str(tmp_path / "passes.exr")
    bpy.ops.render.render(write_still=True)
    passes = exr.read_passes(str(tmp_path / "passes.exr"))
    expected = conditioning.normal_condition(passes["Normal"], camera_view_matrix(scene))
    saved = render_png(scene, tmp_path / "normal.png")
    # With the Standard view transform the saved picture is the ControlNet's picture.
    assert np.abs(saved - expected).max() <= 1.0 / 255 + 1e-6
    assert saved.std() > 0.05


def test_depth_picture_is_normalised_once_per_shot(silk, tmp_path):
    scene = scenes.reset(64, 48)
    scenes.add_camera(scene, location=(0, -10, 0), rotation=(math.radians(90), 0, 0))
    # A slanted wall: its depths span the shot's range, so its picture is neither black nor white.
    wall = scenes.add_mesh(scene, "plane", "Wall", location=(0, 5, 0), size=40)
    wall.rotation_euler = (math.radians(90), 0, math.radians(50))
    card = scenes.add_mesh(scene, "plane", "Card", location=(0, 0, 0), size=2)
    card.rotation_euler = (math.radians(90), 0, 0)
    # The card flies toward the camera: per-frame normalisation would darken the wall.
    scenes.keyframe(card, "location", [(1, (0, 2, 0)), (10, (0, -7, 0))])
    scene.render.engine = "SILK"
    scene.silk.mode = "GUIDES"
    scene.silk.guide_preview = "DEPTH"
    scene.view_settings.view_transform = "Standard"
    scene.render.dither_intensity = 0.0
    scene.frame_start = 1
    scene.frame_set(1)
    first = render_png(scene, tmp_path / "first.png")
    scene.frame_set(8)
    later = render_png(scene, tmp_path / "later.png")
    for wall_pixel in ((2, 2), (40, 60), (10, 50)):  # the wall, away from the card in both frames
        assert 0.02 < first[wall_pixel][0] < 0.98
        assert first[wall_pixel][0] == pytest.approx(later[wall_pixel][0], abs=1.0 / 255)
    centre = (24, 32)  # the card came closer than the shot's near depth: clamped white
    assert later[centre][0] == pytest.approx(1.0)


def test_every_pass_is_written_and_seen_by_the_compositor(silk, tmp_path):
    scene = simple_scene()
    set_multilayer_exr(scene)
    scene.render.filepath = str(tmp_path / "passes.exr")
    bpy.ops.render.render(write_still=True)
    passes = exr.read_passes(str(tmp_path / "passes.exr"))
    assert {"Combined", "Depth", "Normal", "Vector", "Occlusion"} <= set(passes)
    assert passes["Depth"].shape == (48, 64, 1) and passes["Vector"].shape == (48, 64, 4)

    if hasattr(scene, "compositing_node_group"):  # Blender 5.0
        tree = bpy.data.node_groups.new("Compositing", "CompositorNodeTree")
        scene.compositing_node_group = tree
    else:
        scene.use_nodes = True
        tree = scene.node_tree
    layers = tree.nodes.new("CompositorNodeRLayers")
    layers.scene = scene
    outputs = {socket.name for socket in layers.outputs if socket.enabled}
    assert {"Depth", "Normal", "Vector", "Occlusion"} <= outputs


def test_render_leaves_the_current_frame_alone(silk):
    scene = simple_scene()
    scene.frame_set(4)
    bpy.ops.render.render()
    assert scene.frame_current == 4


def test_animation_render_saves_every_frame(silk, tmp_path):
    scene = simple_scene(32, 24)
    scene.frame_start, scene.frame_end = 1, 3
    set_png(scene)
    scene.render.filepath = str(tmp_path / "frame_")
    bpy.ops.render.render(animation=True)
    assert sorted(os.listdir(tmp_path)) == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]


def test_saved_file_renders_its_animation_in_background(silk, tmp_path):
    scene = simple_scene(32, 24)
    scene.frame_start, scene.frame_end = 2, 3
    set_multilayer_exr(scene)
    scene.render.filepath = str(tmp_path / "out" / "f_")
    blend = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    assert bpy.context.scene.render.engine == "SILK"
    bpy.ops.render.render(animation=True)
    files = sorted(os.listdir(tmp_path / "out"))
    assert files == ["f_0002.exr", "f_0003.exr"]
    passes = exr.read_passes(str(tmp_path / "out" / files[0]))
    assert np.any(passes["Vector"] != 0) and "Occlusion" in passes


def test_diffuse_mode_without_a_worker_python_is_one_clear_error(silk, monkeypatch, tmp_path):
    scene = simple_scene()
    scene.silk.mode = "DIFFUSE"
    monkeypatch.setenv("SILK_WORKER_PYTHON", str(tmp_path / "no-such-python"))
    with pytest.raises(RuntimeError, match="worker Python .*SILK_WORKER_PYTHON.*does not exist"):
        bpy.ops.render.render()
    assert [level for level, _ in render_engine.last_reports] == ["ERROR"]
    monkeypatch.undo()
    assert_blender_still_renders()


def assert_blender_still_renders():
    scene = simple_scene(16, 12)
    bpy.ops.render.render()
    assert not any(level == "ERROR" for level, _ in render_engine.last_reports)


def test_no_camera_is_a_clear_error(silk):
    scene = simple_scene()
    scene.camera = None
    with pytest.raises(RuntimeError, match="no camera"):
        bpy.ops.render.render()
    assert_blender_still_renders()


def test_camera_with_nan_transform_is_a_clear_error(silk):
    scene = simple_scene()
    scene.camera.location = (float("nan"), 0, 0)
    with pytest.raises(RuntimeError, match="invalid transform"):
        bpy.ops.render.render()
    assert_blender_still_renders()


def test_object_with_nan_transform_is_skipped_and_named(silk, tmp_path):
    scene = simple_scene()
    bpy.data.objects["Sphere"].location = (0, float("nan"), 0)
    set_multilayer_exr(scene)
    scene.render.filepath = str(tmp_path / "nan.exr")
    bpy.ops.render.render(write_still=True)
    warnings = [message for level, message in render_engine.last_reports if level == "WARNING"]
    assert any("Sphere" in message and "invalid" in message for message in warnings)
    passes = exr.read_passes(str(tmp_path / "nan.exr"))
    assert np.all(np.isfinite(passes["Depth"])) and (passes["Depth"] < 1e9).any()


def test_empty_scene_warns_that_nothing_is_visible(silk):
    scene = scenes.reset(32, 24)
    scenes.add_camera(scene)
    scene.render.engine = "SILK"
    scene.silk.mode = "GUIDES"
    bpy.ops.render.render()
    assert any("Nothing visible" in message for _, message in render_engine.last_reports)
    assert_blender_still_renders()


def test_camera_inside_an_object_warns(silk):
    scene = scenes.reset(32, 24)
    scenes.add_camera(scene, location=(0, 0, 0))
    scenes.add_mesh(scene, "cube", "Room", size=10)
    scene.render.engine = "SILK"
    scene.silk.mode = "GUIDES"
    bpy.ops.render.render()
    assert any("inside an object" in message for _, message in render_engine.last_reports)


def test_zero_area_faces_do_not_disturb_the_guides(silk, tmp_path):
    scene = simple_scene()
    mesh = bpy.data.meshes.new("Degenerate")
    vertices = [(0, -2, 0.5), (1, -2, 0.5), (2, -2, 0.5), (0, -2, 1.5), (0, -2, 1.5), (0, -2, 1.5)]
    mesh.from_pydata(vertices, [], [(0, 1, 2), (3, 4, 5)])
    scene.collection.objects.link(bpy.data.objects.new("Degenerate", mesh))
    set_multilayer_exr(scene)
    scene.render.filepath = str(tmp_path / "degenerate.exr")
    bpy.ops.render.render(write_still=True)
    passes = exr.read_passes(str(tmp_path / "degenerate.exr"))
    assert np.all(np.isfinite(passes["Normal"])) and np.all(np.isfinite(passes["Vector"]))
    assert not any(level == "ERROR" for level, _ in render_engine.last_reports)


@pytest.mark.parametrize("size", [(1, 1), (4096, 4096)])
def test_extreme_resolutions_render(silk, tmp_path, size):
    if size == (1, 1):
        scene = simple_scene(4, 4)  # Blender's smallest resolution, at 25%: 1x1
        scene.render.resolution_percentage = 25
    else:
        scene = simple_scene(*size)
    set_multilayer_exr(scene)
    scene.render.filepath = str(tmp_path / "size.exr")
    bpy.ops.render.render(write_still=True)
    passes = exr.read_passes(str(tmp_path / "size.exr"))
    assert passes["Depth"].shape == (size[1], size[0], 1)
    assert_blender_still_renders()


def test_too_large_a_render_is_refused_clearly(silk, monkeypatch):
    scene = simple_scene(64, 64)
    monkeypatch.setattr(render_engine, "MAX_PIXELS", 1000)
    with pytest.raises(RuntimeError, match="too large"):
        bpy.ops.render.render()
    monkeypatch.undo()
    assert_blender_still_renders()


def test_unexpected_failure_is_reported_not_raised_as_a_traceback(silk, monkeypatch):
    scene = simple_scene()

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(render_engine, "compute_guides", broken)
    with pytest.raises(RuntimeError, match="Render failed .*simulated bug"):
        bpy.ops.render.render()
    monkeypatch.undo()
    assert_blender_still_renders()


def test_panels_register_and_draw_without_errors(silk):
    from silk.ui import panels

    for panel in panels.CLASSES:
        assert hasattr(bpy.types, panel.__name__)
    scene = simple_scene()

    class Context:
        engine = "SILK"

    assert panels.SILK_PT_render.poll(Context())
