"""Scenes with different motion for the animation benchmarks (``make bench-mini``,
``tools/bench_temporal.py --scene``), built from code so they are the same everywhere.

- ``demo``: the demo scene (moving objects, occlusions, a dolly camera);
- ``orbit``: the camera orbits a cluster of objects at several depths (parallax);
- ``fast``: objects cross the frame quickly in front of a busy background (large
  disocclusions every frame).

Each ``build_<name>(width, height)`` returns the scene, frames 1-48, with the camera set.

``shot_guides`` gives a shot's conditioning pictures as the render engine makes them:
the engine's scene capture and guides, one depth range for the whole shot (from its
first frame), ``conditioning.depth_condition`` and ``normal_condition``.
"""
import math

import bpy

from tools import demo_scene

SCENES = ("demo", "orbit", "fast")


def _keyframes(obj, path, pairs):
    for frame, value in pairs:
        setattr(obj, path, value)
        obj.keyframe_insert(path, frame=frame)


def _empty_scene(name: str, width: int, height: int):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.name = name
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.frame_start, scene.frame_end = 1, 48
    scene.render.fps = 24
    return scene


def _camera(scene, lens: float = 35.0):
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    camera.data.lens = lens
    return camera


def build_demo(width: int = 512, height: int = 384):
    return demo_scene.build(width, height)


def build_orbit(width: int = 512, height: int = 384):
    """A half orbit around objects near and far: strong parallax, surfaces turn to and from the camera."""
    scene = _empty_scene("Silk Orbit", width, height)
    bpy.ops.mesh.primitive_plane_add(size=40)
    bpy.ops.mesh.primitive_cube_add(size=1.2, location=(0, 0, 0.6))
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.7, location=(2.2, 1.5, 0.7))
    bpy.ops.object.shade_smooth()
    bpy.ops.mesh.primitive_cylinder_add(radius=0.4, depth=2.5, location=(-2.0, 2.5, 1.25))
    bpy.ops.mesh.primitive_cone_add(radius1=0.6, depth=1.4, location=(-1.5, -1.8, 0.7))
    bpy.ops.mesh.primitive_torus_add(location=(1.2, -2.2, 0.25), major_radius=0.6, minor_radius=0.25)
    bpy.ops.object.shade_smooth()
    bpy.ops.mesh.primitive_monkey_add(location=(0.3, 4.0, 1.0), rotation=(0, 0, math.pi))
    bpy.context.object.modifiers.new("Subdivision", "SUBSURF").levels = 1
    bpy.ops.object.shade_smooth()
    target = bpy.data.objects.new("Target", None)
    scene.collection.objects.link(target)
    target.location = (0, 0.5, 0.6)
    camera = _camera(scene, lens=28)
    constraint = camera.constraints.new("TRACK_TO")
    constraint.target = target
    constraint.track_axis, constraint.up_axis = "TRACK_NEGATIVE_Z", "UP_Y"
    for frame in range(1, 49, 4):  # keyed every 4 frames along the arc: a smooth orbit
        angle = math.radians(-120 + 150 * (frame - 1) / 47)
        camera.location = (7.0 * math.cos(angle), 7.0 * math.sin(angle), 2.5)
        camera.keyframe_insert("location", frame=frame)
    angle = math.radians(30)
    camera.location = (7.0 * math.cos(angle), 7.0 * math.sin(angle), 2.5)
    camera.keyframe_insert("location", frame=48)
    scene.frame_set(1)
    return scene


def build_fast(width: int = 512, height: int = 384):
    """A still camera; objects cross the frame in under a second before a wall of boxes."""
    scene = _empty_scene("Silk Fast", width, height)
    bpy.ops.mesh.primitive_plane_add(size=40)
    for index in range(7):  # a busy background that the movers uncover
        bpy.ops.mesh.primitive_cube_add(size=1.0, location=(index * 1.4 - 4.2, 3.0, 0.8 + (index % 3) * 0.5),
                                        scale=(1.0, 0.8, 1.6 + (index % 3) * 1.0))
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.9, location=(0, 0, 0.9))
    ball = bpy.context.object
    bpy.ops.object.shade_smooth()
    _keyframes(ball, "location", [(1, (-9.0, 0.0, 0.9)), (20, (9.0, 0.0, 0.9)), (21, (9.0, 1.5, 0.9)),
                                  (40, (-9.0, 1.5, 0.9)), (48, (-9.0, 1.5, 0.9))])
    bpy.ops.mesh.primitive_cube_add(size=1.4, location=(0, -1.5, 0.7))
    box = bpy.context.object
    _keyframes(box, "location", [(1, (7.0, -1.5, 0.7)), (30, (-7.0, -1.5, 0.7)), (48, (0.0, -1.5, 2.5))])
    _keyframes(box, "rotation_euler", [(1, (0, 0, 0)), (48, (1.5, 0.5, 6.0))])
    camera = _camera(scene, lens=26)
    camera.location = (0, -6.5, 1.8)
    camera.rotation_euler = (math.radians(84), 0, 0)
    scene.frame_set(1)
    return scene


def build(name: str, width: int = 512, height: int = 384):
    if name not in SCENES:
        raise ValueError(f"unknown scene {name!r}; one of {', '.join(SCENES)}")
    return globals()[f"build_{name}"](width, height)


def shot_guides(scene, frames, width: int, height: int) -> dict:
    """{frame: (depth picture, normal picture)} as the render engine makes them for a shot."""
    from silk.engine import conditioning
    from silk.engine.guides import compute_guides
    from silk.engine.scene_capture import capture_frame

    pictures, depth_range = {}, None
    for frame in frames:
        scene.frame_set(frame)
        current, _ = capture_frame(bpy.context.evaluated_depsgraph_get(), scene.camera, width, height)
        guides = compute_guides(current)
        if depth_range is None:
            depth_range = conditioning.depth_range_of_frame(guides.depth, guides.coverage, guides.camera.clip_start,
                                                            guides.camera.clip_end)
        pictures[frame] = (conditioning.depth_condition(guides.depth, depth_range),
                           conditioning.normal_condition(guides.normal, guides.camera.view))
    return pictures
