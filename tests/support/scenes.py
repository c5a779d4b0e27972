"""Test scenes built with Blender's Python API (used in Blender's module, never mocked)."""
import math
import os

import bpy
import numpy as np


def reset(width=96, height=72):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x = width
    scene.render.resolution_y = height
    scene.render.resolution_percentage = 100
    scene.frame_start, scene.frame_end = 1, 10
    scene.frame_set(3)
    return scene


def add_camera(scene, location=(0, -8, 2), rotation=(math.radians(80), 0, 0), ortho=False, **data):
    cam_data = bpy.data.cameras.new("Camera")
    cam = bpy.data.objects.new("Camera", cam_data)
    scene.collection.objects.link(cam)
    cam.location = location
    cam.rotation_euler = rotation
    if ortho:
        cam_data.type = "ORTHO"
        cam_data.ortho_scale = data.pop("ortho_scale", 8.0)
    for key, value in data.items():
        setattr(cam_data, key, value)
    scene.camera = cam
    return cam


def keyframe(obj, path, frames_values):
    for frame, value in frames_values:
        setattr(obj, path, value)
        obj.keyframe_insert(path, frame=frame)
    for fcurve in _fcurves(obj.id_data):  # the ID that owns the animation (a shape key's Key)
        for point in fcurve.keyframe_points:
            point.interpolation = "LINEAR"


def _fcurves(obj):
    action = obj.animation_data.action
    if hasattr(action, "fcurves"):
        return list(action.fcurves)
    # Blender 5.0: layered actions keep their F-curves in channelbags.
    curves = []
    for layer in action.layers:
        for strip in layer.strips:
            for bag in strip.channelbags:
                curves.extend(bag.fcurves)
    return curves


def add_mesh(scene, kind, name, location=(0, 0, 0), smooth=False, **kwargs):
    before = set(bpy.data.objects)
    getattr(bpy.ops.mesh, f"primitive_{kind}_add")(location=location, **kwargs)
    obj = (set(bpy.data.objects) - before).pop()
    obj.name = name
    if smooth:
        for poly in obj.data.polygons:
            poly.use_smooth = True
    return obj


def read_png(path):
    """A saved 8-bit picture as float RGB in [0, 1], rows top-down."""
    image = bpy.data.images.load(str(path))
    pixels = np.array(image.pixels[:], dtype=np.float32).reshape(image.size[1], image.size[0], -1)[::-1, :, :3]
    bpy.data.images.remove(image)
    return pixels


def smooth_by_angle(obj, angle):
    """Blender 4.1+'s "Shade Auto Smooth": a "Smooth by Angle" geometry-nodes modifier.

    The operator loads the node group from Blender's bundled assets; where it cannot in
    background mode (4.2), the same node group is appended from the bundled file."""
    for polygon in obj.data.polygons:  # as the operator does: smooth, then split by angle
        polygon.use_smooth = True
    bpy.context.view_layer.objects.active = obj
    for other in bpy.context.view_layer.objects:
        other.select_set(other == obj)
    if "FINISHED" not in bpy.ops.object.shade_auto_smooth(angle=angle):
        path = os.path.join(bpy.utils.system_resource("DATAFILES"), "assets", "geometry_nodes", "smooth_by_angle.blend")
        with bpy.data.libraries.load(path) as (source, target):
            target.node_groups = ["Smooth by Angle"]
        modifier = obj.modifiers.new("Smooth by Angle", "NODES")
        modifier.node_group = target.node_groups[0]
    modifier = next(m for m in obj.modifiers if m.type == "NODES" and m.node_group
                    and m.node_group.name.startswith("Smooth by Angle"))
    for item in modifier.node_group.interface.items_tree:
        if getattr(item, "in_out", None) == "INPUT" and item.name == "Angle":
            modifier[item.identifier] = angle
    obj.data.update()
    return modifier
