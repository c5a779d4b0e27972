"""Silk's guides against Cycles on surfaces whose shading is easy to get subtly wrong.

Built as an artist would: flat faces that are not planar (a Wave-deformed grid, bent quads,
a warped n-gon), "Smooth by Angle" with sharp edges, custom normals (Weighted Normal),
flat and smooth faces mixed, non-uniform, negative and animated scale, shear through a
scaled parent, collection instances and linked duplicates with non-uniform transforms,
and the same through an orthographic camera. Same tolerances as test_exactness.py.
"""
import math

import bpy
import numpy as np
import pytest

from tests.blender.test_exactness import FRAME, check_against_cycles
from tests.support import scenes


def _bend(obj, offsets):
    """Move the mesh's vertices along z by ``offsets`` (one per vertex, cycled)."""
    for index, vertex in enumerate(obj.data.vertices):
        vertex.co.z += offsets[index % len(offsets)]


def flat_non_planar():
    scene = scenes.reset(96, 72)
    scenes.add_camera(scene, location=(0, -8, 4.5), rotation=(math.radians(62), 0, 0))
    # A flat-shaded grid under a moving Wave: every quad is bent, differently each frame.
    sea = scenes.add_mesh(scene, "grid", "Sea", x_subdivisions=14, y_subdivisions=10, size=7)
    wave = sea.modifiers.new("Wave", "WAVE")
    wave.height, wave.width, wave.speed, wave.narrowness = 0.35, 1.6, 0.15, 1.2
    # A warped 12-sided n-gon and a few bent quads, flat, moving.
    disc = scenes.add_mesh(scene, "circle", "Disc", location=(2.2, 0.5, 1.5), vertices=12, radius=1.1,
                           fill_type="NGON", rotation=(math.radians(70), 0, 0))
    _bend(disc, (0.3, -0.2, 0.1, -0.35))
    scenes.keyframe(disc, "rotation_euler", [(1, (math.radians(70), 0, -0.3)), (10, (math.radians(55), 0.2, 0.4))])
    card = scenes.add_mesh(scene, "grid", "Card", location=(-2.3, 0.3, 1.4), x_subdivisions=3, y_subdivisions=3,
                           size=1.8, rotation=(math.radians(75), 0, 0.3))
    _bend(card, (0.25, -0.3, 0.0, 0.4, -0.1, 0.2, -0.25))
    scenes.keyframe(card, "location", [(1, (-2.6, 0.3, 1.4)), (10, (-1.8, 0.0, 1.7))])
    return scene


def smooth_by_angle_and_custom_normals():
    scene = scenes.reset(96, 72)
    scenes.add_camera(scene, location=(0, -9, 3.5), rotation=(math.radians(70), 0, 0))
    # Smooth by Angle: smooth sides, sharp rims; stretched non-uniformly.
    can = scenes.add_mesh(scene, "cylinder", "Can", location=(-2.4, 0, 1.1), vertices=24)
    scenes.smooth_by_angle(can, math.radians(40))
    scenes.keyframe(can, "rotation_euler", [(1, (0.3, 0, 0)), (10, (0.6, 0.2, 1.0))])
    scenes.keyframe(can, "scale", [(1, (1.3, 0.8, 1.0)), (10, (0.9, 1.2, 0.8))])
    # Custom normals from a Weighted Normal modifier on a bevelled box.
    box = scenes.add_mesh(scene, "cube", "Box", location=(0.2, 0.5, 1.0), size=1.4)
    box.modifiers.new("Bevel", "BEVEL").width = 0.2
    for polygon in box.data.polygons:
        polygon.use_smooth = True
    box.modifiers.new("WeightedNormal", "WEIGHTED_NORMAL").keep_sharp = True
    scenes.keyframe(box, "rotation_euler", [(1, (0, 0, 0.2)), (10, (0.4, 0.1, 0.9))])
    # Flat and smooth faces mixed without sharp edges: vertex normals on the smooth ones.
    ball = scenes.add_mesh(scene, "uv_sphere", "Ball", location=(2.5, 0.8, 1.2), segments=24, ring_count=12)
    for polygon in ball.data.polygons:
        polygon.use_smooth = polygon.center.x > 0
    scenes.keyframe(ball, "rotation_euler", [(1, (0, 0, 0)), (10, (0, 0.3, 1.2))])
    scenes.add_mesh(scene, "plane", "Ground", size=30)
    return scene


def scaled_transforms(ortho=False):
    scene = scenes.reset(96, 72)
    if ortho:
        cam = scenes.add_camera(scene, location=(0, -9, 3.5), rotation=(math.radians(72), 0, 0), ortho=True,
                                ortho_scale=8.0)
        scenes.keyframe(cam, "location", [(1, (-0.6, -9, 3.3)), (10, (0.6, -9, 3.8))])
    else:
        scenes.add_camera(scene, location=(0, -9, 3.5), rotation=(math.radians(72), 0, 0))
    # A subdivided, smooth Suzanne under animated non-uniform scale.
    monkey = scenes.add_mesh(scene, "monkey", "Monkey", location=(-2.2, 0, 1.2), smooth=True)
    monkey.modifiers.new("Subdivision", "SUBSURF").levels = 2
    scenes.keyframe(monkey, "scale", [(1, (1.0, 1.0, 1.0)), (10, (1.6, 0.7, 1.2))])
    scenes.keyframe(monkey, "rotation_euler", [(1, (0, 0, 0.3)), (10, (0.2, 0, -0.4))])
    # Mirrored (negative scale), smooth, its scale animated too.
    ball = scenes.add_mesh(scene, "uv_sphere", "Mirrored", location=(0.3, 0.5, 1.1), smooth=True, segments=32,
                           ring_count=16)
    scenes.keyframe(ball, "scale", [(1, (-1.0, 1.0, 0.8)), (10, (-1.3, 0.7, 1.1))])
    # Shear: a rotated smooth torus under a non-uniformly scaled parent.
    parent = bpy.data.objects.new("Squash", None)
    scene.collection.objects.link(parent)
    parent.location = (2.6, 0.5, 1.2)
    scenes.keyframe(parent, "scale", [(1, (1.8, 0.9, 0.6)), (10, (1.2, 1.1, 0.9))])
    torus = scenes.add_mesh(scene, "torus", "Sheared", smooth=True, major_radius=0.8, minor_radius=0.3)
    torus.parent = parent
    torus.rotation_euler = (math.radians(50), math.radians(30), math.radians(40))
    scenes.add_mesh(scene, "plane", "Ground", size=30)
    return scene


def instanced_non_uniform():
    scene = scenes.reset(96, 72)
    scenes.add_camera(scene, location=(0, -11, 4), rotation=(math.radians(72), 0, 0))
    source = bpy.data.collections.new("Source")
    scene.collection.children.link(source)
    bpy.context.view_layer.active_layer_collection = bpy.context.view_layer.layer_collection.children["Source"]
    pebble = scenes.add_mesh(scene, "ico_sphere", "Pebble", subdivisions=2, smooth=True)
    pebble.modifiers.new("Subdivision", "SUBSURF").levels = 1
    scenes.add_mesh(scene, "cube", "Block", location=(1.3, 0, 0), size=0.8)
    bpy.context.view_layer.active_layer_collection = bpy.context.view_layer.layer_collection
    bpy.context.view_layer.layer_collection.children["Source"].exclude = True
    for index, x in enumerate((-3.0, 0.5)):
        empty = bpy.data.objects.new(f"Instancer{index}", None)
        empty.instance_type = "COLLECTION"
        empty.instance_collection = source
        scene.collection.objects.link(empty)
        scenes.keyframe(empty, "location", [(1, (x, 0, 1.0)), (10, (x + 0.6, 0.8, 1.3))])
        scenes.keyframe(empty, "scale", [(1, (1.6, 0.7, 1.0)), (10, (0.8, 1.2, 1.5 - 0.3 * index))])
        scenes.keyframe(empty, "rotation_euler", [(1, (0, 0, 0)), (10, (0.3, 0, 0.5 * (index + 1)))])
    # Linked duplicates: one smooth mesh placed twice, each non-uniformly scaled.
    monkey = scenes.add_mesh(scene, "monkey", "Monkey", location=(2.8, 1.5, 1.2), smooth=True)
    twin = monkey.copy()
    scene.collection.objects.link(twin)
    twin.location = (3.2, -1.0, 0.9)
    scenes.keyframe(monkey, "scale", [(1, (1.5, 0.6, 1.0)), (10, (0.9, 1.1, 0.7))])
    scenes.keyframe(twin, "scale", [(1, (0.6, 1.0, 1.4)), (10, (1.2, 0.8, 0.9))])
    scenes.add_mesh(scene, "plane", "Ground", size=30)
    return scene


SURFACES = {
    "flat_non_planar": flat_non_planar,
    "smooth_by_angle_and_custom_normals": smooth_by_angle_and_custom_normals,
    "scaled_transforms": scaled_transforms,
    "scaled_transforms_ortho": lambda: scaled_transforms(ortho=True),
    "instanced_non_uniform": instanced_non_uniform,
}


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_surfaces_match_cycles(silk, tmp_path, name):
    check_against_cycles(tmp_path, name, SURFACES[name])


@pytest.mark.parametrize("name", ["flat_non_planar", "instanced_non_uniform"])
def test_numpy_path_matches_cycles_on_these_surfaces_too(silk, tmp_path, monkeypatch, name):
    from silk.engine.guides import kernels

    monkeypatch.setattr(kernels, "AVAILABLE", False)
    check_against_cycles(tmp_path, name, SURFACES[name])
