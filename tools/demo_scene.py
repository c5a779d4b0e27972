"""The demo scene: a small set with moving objects, occlusions and a dolly camera.

Built from code so it is the same everywhere; ``make demo`` saves it as
``out/demo.blend`` for opening in Blender.
"""
import math

import bpy

FRAMES = (1, 12, 24, 36, 48)


def _keyframes(obj, path, pairs):
    for frame, value in pairs:
        setattr(obj, path, value)
        obj.keyframe_insert(path, frame=frame)


def build(width: int = 512, height: int = 384):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.name = "Silk Demo"
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.frame_start, scene.frame_end = 1, 48
    scene.render.fps = 24

    bpy.ops.mesh.primitive_plane_add(size=40)
    bpy.context.object.name = "Floor"
    bpy.ops.mesh.primitive_plane_add(size=40, location=(0, 8, 10), rotation=(math.radians(90), 0, 0))
    bpy.context.object.name = "Back Wall"

    bpy.ops.mesh.primitive_monkey_add(location=(0, 0, 1.2))
    monkey = bpy.context.object
    monkey.name = "Suzanne"
    monkey.modifiers.new("Subdivision", "SUBSURF").levels = 2
    bpy.ops.object.shade_smooth()
    _keyframes(monkey, "rotation_euler", [(1, (0, 0, -0.6)), (48, (0.2, 0, 0.8))])

    bpy.ops.mesh.primitive_torus_add(location=(-3, 1, 0.75), major_radius=0.8, minor_radius=0.25,
                                     rotation=(math.radians(90), 0, 0))
    torus = bpy.context.object
    torus.name = "Wheel"
    bpy.ops.object.shade_smooth()
    _keyframes(torus, "location", [(1, (-4.5, -1.0, 1.05)), (48, (3.5, -1.0, 1.05))])
    _keyframes(torus, "rotation_euler", [(1, (math.radians(90), 0, 0)), (48, (math.radians(90), -8.0, 0))])

    # A row of columns as a collection instance, so instancing is part of the demo.
    columns = bpy.data.collections.new("Columns")
    scene.collection.children.link(columns)
    for index in range(4):
        bpy.ops.mesh.primitive_cylinder_add(radius=0.3, depth=3, location=(index * 2.0 - 3, 4, 1.5))
        column = bpy.context.object
        for collection in column.users_collection:
            collection.objects.unlink(column)
        columns.objects.link(column)
    bpy.context.view_layer.layer_collection.children["Columns"].exclude = True
    row = bpy.data.objects.new("Colonnade", None)
    row.instance_type = "COLLECTION"
    row.instance_collection = columns
    scene.collection.objects.link(row)

    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.6, location=(2.5, -2, 0.6))
    ball = bpy.context.object
    ball.name = "Ball"
    bpy.ops.object.shade_smooth()
    _keyframes(ball, "location", [(1, (2.5, -2.5, 0.6)), (24, (1.0, 1.5, 2.2)), (48, (-1.0, 2.5, 0.6))])

    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    camera.data.lens = 35
    _keyframes(camera, "location", [(1, (-2.5, -10, 2.6)), (48, (2.5, -8.5, 3.2))])
    _keyframes(camera, "rotation_euler", [(1, (math.radians(80), 0, math.radians(-12))),
                                          (48, (math.radians(76), 0, math.radians(12)))])
    scene.frame_set(1)
    return scene
