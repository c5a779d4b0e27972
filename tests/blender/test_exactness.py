"""Silk's guides against Cycles' own passes, rendered in the same test run.

Cycles: 1 sample, denoising and motion blur off, a point-like pixel filter so its
single sample sits at the pixel centre. Tolerances are the product's promise:
away from silhouettes, depth relative error < 1e-3 on >= 99.5% of pixels, normals
within 1 degree on >= 99%, vectors within 0.05 px on >= 99%; Occlusion agrees with
a ray-cast visibility check on >= 99% of pixels.
"""
import math

import bpy
import numpy as np
import pytest

from tests.support import scenes
from tests.support.reference import away_from_silhouettes, raycast_occlusion, raycast_vectors, render_passes

FRAME = 5


def moving_objects():
    scene = scenes.reset(96, 72)
    scenes.add_camera(scene, location=(0, -9, 3), rotation=(math.radians(75), 0, 0))
    cube = scenes.add_mesh(scene, "cube", "Cube", location=(-1.5, 0, 1))
    scenes.keyframe(cube, "rotation_euler", [(1, (0, 0, 0)), (10, (0.4, 0.3, 1.5))])
    scenes.keyframe(cube, "location", [(1, (-2.0, 0, 1)), (10, (0.5, 0.5, 1.2))])
    sphere = scenes.add_mesh(scene, "uv_sphere", "Sphere", location=(2, 1, 1), smooth=True)
    scenes.keyframe(sphere, "location", [(1, (2.5, 1, 1)), (10, (-1.0, -0.5, 1.5))])
    scenes.keyframe(sphere, "scale", [(1, (1, 1, 1)), (10, (0.6, 1.2, 0.8))])
    scenes.add_mesh(scene, "plane", "Ground", size=30)
    return scene


def deforming_mesh():
    scene = scenes.reset(96, 72)
    scenes.add_camera(scene, location=(0, -7, 2), rotation=(math.radians(80), 0, 0))
    blob = scenes.add_mesh(scene, "ico_sphere", "Blob", location=(0, 0, 1), subdivisions=3, smooth=True)
    blob.shape_key_add(name="Basis")
    squash = blob.shape_key_add(name="Squash")
    for point in squash.data:
        point.co.z *= 0.5
        point.co.x *= 1.3 + 0.2 * point.co.z
    squash.value = 0.0
    squash.keyframe_insert("value", frame=1)
    squash.value = 1.0
    squash.keyframe_insert("value", frame=10)
    twist = blob.modifiers.new("Twist", "SIMPLE_DEFORM")
    twist.deform_method = "TWIST"
    twist.angle = 0.0
    twist.keyframe_insert("angle", frame=1)
    twist.angle = 1.2
    twist.keyframe_insert("angle", frame=10)
    scenes.add_mesh(scene, "plane", "Ground", size=30)
    return scene


def moving_camera():
    scene = scenes.reset(96, 72)
    cam = scenes.add_camera(scene)
    scenes.keyframe(cam, "location", [(1, (-1.5, -9, 2)), (10, (2.0, -6, 3.5))])
    scenes.keyframe(cam, "rotation_euler", [(1, (math.radians(80), 0, -0.2)), (10, (math.radians(70), 0.1, 0.3))])
    monkey = scenes.add_mesh(scene, "monkey", "Monkey", location=(0, 0, 1), smooth=True)
    monkey.modifiers.new("Subdivision", "SUBSURF").levels = 1
    scenes.add_mesh(scene, "torus", "Torus", location=(2.5, 2, 0.6))
    scenes.add_mesh(scene, "plane", "Ground", size=30)
    return scene


def orthographic():
    scene = scenes.reset(96, 72)
    cam = scenes.add_camera(scene, ortho=True, ortho_scale=7.0)
    scenes.keyframe(cam, "location", [(1, (-1, -9, 2)), (10, (1, -9, 3))])
    cube = scenes.add_mesh(scene, "cube", "Cube", location=(0, 0, 1))
    scenes.keyframe(cube, "rotation_euler", [(1, (0, 0, 0)), (10, (0, 0.5, 1.0))])
    # Smooth sides, flat caps: smooth caps (a smooth n-gon fanning into the sides) are
    # where Cycles 5.0's Principled normal correction bends the Normal pass most; 4.2
    # does not (docs/guides.md, "Known differences").
    cylinder = scenes.add_mesh(scene, "cylinder", "Cylinder", location=(2, 2, 1))
    for polygon in cylinder.data.polygons:
        polygon.use_smooth = len(polygon.vertices) == 4
    scenes.keyframe(cylinder, "location", [(1, (3, 2, 1)), (10, (0, -1, 1))])
    scenes.add_mesh(scene, "plane", "Ground", size=30)
    return scene


def lens_shift_and_aspect():
    scene = scenes.reset(128, 64)
    scene.render.resolution_percentage = 75
    scene.render.pixel_aspect_x = 2.0
    cam = scenes.add_camera(scene, shift_x=0.15, shift_y=-0.1, sensor_fit="VERTICAL", lens=35)
    scenes.keyframe(cam, "location", [(1, (0, -9, 2)), (10, (0.5, -8, 2.5))])
    cube = scenes.add_mesh(scene, "cube", "Cube", location=(0, 0, 1))
    scenes.keyframe(cube, "rotation_euler", [(1, (0, 0, 0)), (10, (0.3, 0, 1.0))])
    scenes.add_mesh(scene, "uv_sphere", "Sphere", location=(2.5, 1, 1), smooth=True)
    scenes.add_mesh(scene, "plane", "Ground", size=30)
    return scene


def instances():
    scene = scenes.reset(96, 72)
    scenes.add_camera(scene, location=(0, -12, 4), rotation=(math.radians(72), 0, 0))
    source = bpy.data.collections.new("Source")
    bpy.context.scene.collection.children.link(source)
    cube = bpy.data.objects.new("Block", bpy.data.meshes.new("Block"))
    import bmesh
    mesh = bmesh.new()
    bmesh.ops.create_cube(mesh, size=1.0)
    mesh.to_mesh(cube.data)
    mesh.free()
    source.objects.link(cube)
    array = cube.modifiers.new("Array", "ARRAY")
    array.count = 3
    array.relative_offset_displace = (1.5, 0, 0)
    source.hide_render = False
    bpy.context.view_layer.layer_collection.children["Source"].exclude = True
    for index, x in enumerate((-3.0, 1.0)):
        empty = bpy.data.objects.new(f"Instancer{index}", None)
        empty.instance_type = "COLLECTION"
        empty.instance_collection = source
        scene.collection.objects.link(empty)
        scenes.keyframe(empty, "location", [(1, (x, 0, 0.5)), (10, (x + 1, 1.5, 1.0))])
        scenes.keyframe(empty, "rotation_euler", [(1, (0, 0, 0)), (10, (0, 0, 0.6 * (index + 1)))])
    scenes.add_mesh(scene, "plane", "Ground", size=30)
    return scene


def near_plane_cut():
    scene = scenes.reset(96, 72)
    cam = scenes.add_camera(scene, location=(0, -3, 0.6), rotation=(math.radians(88), 0, 0), clip_start=0.5)
    scenes.keyframe(cam, "location", [(1, (0, -3.2, 0.6)), (10, (0.3, -2.5, 0.7))])
    # A box the camera's near plane slices through, and a floor running behind the camera.
    box = scenes.add_mesh(scene, "cube", "Box", location=(0.4, -2.5, 0.5), size=1.0)
    scenes.keyframe(box, "rotation_euler", [(1, (0, 0, 0.2)), (10, (0, 0, 0.5))])
    scenes.add_mesh(scene, "plane", "Floor", size=40)
    scenes.add_mesh(scene, "uv_sphere", "Sphere", location=(1, 3, 1), smooth=True)
    return scene


def mixed_geometry():
    """Text, a bevelled curve, a metaball, geometry-nodes instances, and an object hidden from the render."""
    scene = scenes.reset(96, 72)
    cam = scenes.add_camera(scene, location=(0, -10, 3), rotation=(math.radians(75), 0, 0))
    scenes.keyframe(cam, "location", [(1, (-0.5, -10, 3)), (10, (0.5, -9.5, 3.2))])
    bpy.ops.object.text_add(location=(-3.5, 0, 0.3), rotation=(math.radians(90), 0, 0))
    text = bpy.context.object
    text.data.body = "Silk"
    text.data.extrude = 0.1
    bpy.ops.curve.primitive_bezier_circle_add(radius=0.8, location=(2.5, 0, 1.2), rotation=(math.radians(90), 0, 0))
    bpy.context.object.data.bevel_depth = 0.15
    scenes.keyframe(bpy.context.object, "rotation_euler", [(1, (math.radians(90), 0, 0)), (10, (math.radians(90), 0, 1.0))])
    bpy.ops.object.metaball_add(type="BALL", radius=0.9, location=(0, 1, 1.3))
    scenes.keyframe(bpy.context.object, "location", [(1, (-0.5, 1, 1.3)), (10, (0.6, 1, 1.5))])
    grid = scenes.add_mesh(scene, "grid", "Scatter", location=(0, 3, 0.3), x_subdivisions=4, y_subdivisions=3, size=5)
    tree = bpy.data.node_groups.new("Scatter", "GeometryNodeTree")
    tree.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    tree.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    group_in, group_out = tree.nodes.new("NodeGroupInput"), tree.nodes.new("NodeGroupOutput")
    on_points = tree.nodes.new("GeometryNodeInstanceOnPoints")
    cube = tree.nodes.new("GeometryNodeMeshCube")
    cube.inputs["Size"].default_value = (0.35, 0.35, 0.35)
    tree.links.new(group_in.outputs[0], on_points.inputs["Points"])
    tree.links.new(cube.outputs["Mesh"], on_points.inputs["Instance"])
    tree.links.new(on_points.outputs["Instances"], group_out.inputs[0])
    grid.modifiers.new("Scatter", "NODES").node_group = tree
    scenes.keyframe(grid, "rotation_euler", [(1, (0, 0, 0)), (10, (0, 0, 0.4))])
    blocker = scenes.add_mesh(scene, "cube", "Hidden", location=(0, -6, 3), size=2)
    blocker.hide_render = True  # right in front of the camera: must not appear
    scenes.add_mesh(scene, "plane", "Ground", size=30)
    return scene


SCENES = {
    "mixed_geometry": mixed_geometry,
    "moving_objects": moving_objects,
    "deforming_mesh": deforming_mesh,
    "moving_camera": moving_camera,
    "orthographic": orthographic,
    "lens_shift_and_aspect": lens_shift_and_aspect,
    "instances": instances,
    "near_plane_cut": near_plane_cut,
}
# Scenes whose surfaces move rigidly and are not instances, so the ray-cast reference can
# follow a point to frame t-1 with its object's matrix.
RIGID = {"moving_objects", "moving_camera", "orthographic", "lens_shift_and_aspect", "near_plane_cut"}


@pytest.mark.parametrize("name", sorted(SCENES))
def test_guides_match_cycles(silk, tmp_path, name):
    check_against_cycles(tmp_path, name)


@pytest.mark.parametrize("name", ["moving_objects", "near_plane_cut", "instances"])
def test_numpy_path_matches_cycles_too(silk, tmp_path, monkeypatch, name):
    """Without the compiled kernels (numba missing) the guides meet the same tolerances."""
    from silk.engine.guides import kernels

    monkeypatch.setattr(kernels, "AVAILABLE", False)
    check_against_cycles(tmp_path, name)


def check_against_cycles(tmp_path, name, build=None):
    """Render the scene ``build`` (default: ``SCENES[name]``) makes with Cycles and Silk; compare."""
    scene = (build or SCENES[name])()
    scene.frame_set(FRAME)
    cycles = render_passes(scene, tmp_path / "cycles.exr", "CYCLES")
    ours = render_passes(scene, tmp_path / "silk.exr", "SILK")

    depth_c, depth_s = cycles["Depth"][..., 0], ours["Depth"][..., 0]
    assert depth_s.shape == depth_c.shape
    # Same coverage everywhere but at a handful of silhouette pixels.
    assert np.mean((depth_c < 1e9) == (depth_s < 1e9)) > 0.995
    mask = away_from_silhouettes(depth_c, depth_s)
    assert mask.sum() > 0.3 * mask.size, "the scene must show plenty of surface"

    relative = np.abs(depth_s - depth_c) / depth_c
    assert np.mean(relative[mask] < 1e-3) >= 0.995

    cosine = np.clip(np.sum(cycles["Normal"] * ours["Normal"], axis=-1), -1, 1)
    assert np.mean(np.degrees(np.arccos(cosine))[mask] < 1.0) >= 0.99

    reference_vectors = cycles["Vector"]
    if scene.camera.data.type == "ORTHO" and bpy.app.version >= (5, 0, 0):
        # Cycles 5.0's Vector pass is wrong for orthographic cameras (4.2's is right and
        # matches ours; docs/guides.md): follow rigid surface points by ray casting instead.
        reference_vectors = raycast_vectors(scene, FRAME)
        mask &= ~np.isnan(reference_vectors).any(axis=-1)
    vector_error = np.abs(reference_vectors - ours["Vector"]).max(axis=-1)
    assert np.mean(vector_error[mask] < 0.05) >= 0.99
    # The scene really moves: a zero-motion bug would not pass as exact.
    assert np.abs(reference_vectors[mask]).max() > 0.5

    # Background: Normal 0 as in Cycles. Vector differs on purpose: Silk writes the motion of the
    # directions at infinity (camera rotation, lens), Cycles 0 (tests/test_background_motion.py).
    background = (depth_c > 1e9) & (depth_s > 1e9)
    if background.any():
        assert np.all(ours["Normal"][background] == 0) and np.all(np.isfinite(ours["Vector"][background]))


@pytest.mark.parametrize("name", ["moving_objects", "orthographic"])
def test_vectors_agree_with_ray_cast_motion(silk, tmp_path, name):
    """An engine-independent check of the Vector pass: rigid surface points followed in time."""
    scene = SCENES[name]()
    scene.frame_set(FRAME)
    ours = render_passes(scene, tmp_path / "silk.exr", "SILK")
    reference = raycast_vectors(scene, FRAME)
    mask = away_from_silhouettes(ours["Depth"][..., 0], ours["Depth"][..., 0]) & ~np.isnan(reference).any(axis=-1)
    assert mask.sum() > 0.3 * mask.size
    error = np.abs(reference - ours["Vector"]).max(axis=-1)
    assert np.mean(error[mask] < 0.05) >= 0.99


@pytest.mark.parametrize("name", sorted(RIGID))
def test_occlusion_agrees_with_ray_cast_visibility(silk, tmp_path, name):
    scene = SCENES[name]()
    scene.frame_set(FRAME)
    ours = render_passes(scene, tmp_path / "silk.exr", "SILK")
    reference = raycast_occlusion(scene, FRAME)
    hit = ~np.isnan(reference) & (ours["Depth"][..., 0] < 1e9)
    assert hit.sum() > 0.3 * hit.size
    agreement = np.mean(ours["Occlusion"][..., 0][hit] == reference[hit])
    assert agreement >= 0.99, f"occlusion agrees on {agreement:.4f} of pixels"
