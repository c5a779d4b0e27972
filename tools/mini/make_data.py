"""Training data for ``mini``: procedural scenes rendered by Blender, paired with Silk's own
Depth and Normal conditioning pictures of the same frames.

Each scene: a ground (sometimes a back wall), 2-6 random primitives (non-uniform scale,
flat or smooth shading, some subdivided), random procedural materials (noise, waves,
checker, cells, bricks, magic, plain, each through a random colour ramp), a key sun that
follows the camera (behind and above it, a random side), a dim sky of random colour, and a
camera looking at the set from a random place; objects and camera move between the frames rendered, so
consecutive samples of a scene see the same materials from other places.

The picture is Cycles (few samples, no denoising, Standard view transform); the
conditioning pictures come from the engine's own code, as the render engine makes them:
``scene_capture.capture_frame`` -> ``guides.compute_guides`` ->
``conditioning.depth_condition`` (one depth range per frame) / ``normal_condition``.

Shards of ``--per-shard`` scenes are written as ``shard_####.npz`` (uint8 pictures), so
training can start on the first shards while the rest render.

    .venv/bin/python tools/mini/make_data.py --out /tmp/mini-data --scenes 600 --seed 0
"""
import argparse
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import bpy  # noqa: E402
import numpy as np  # noqa: E402
from mathutils import Vector  # noqa: E402

from tools.blender_env import load_silk, set_png  # noqa: E402
from tools.mini.families import FAMILIES  # noqa: E402

PRIMITIVES = ("cube", "uv_sphere", "ico_sphere", "cylinder", "cone", "torus", "monkey")


def random_colour(rng, dark=0.0, saturation=0.85):
    hue, saturation, value = rng.random(), rng.uniform(0.1, saturation), min(1.0, rng.uniform(0.35 + dark, 1.0))
    import colorsys

    return (*colorsys.hsv_to_rgb(hue, saturation, value), 1.0)


def make_material(rng, family: str, pattern_scale: float = 1.0):
    material = bpy.data.materials.new(family)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = nodes.get("Principled BSDF")
    bsdf.inputs["Roughness"].default_value = rng.uniform(0.2, 0.9)
    if family == "plain":
        bsdf.inputs["Base Color"].default_value = random_colour(rng)
        return material
    coords = nodes.new("ShaderNodeTexCoord")
    mapping = nodes.new("ShaderNodeMapping")
    mapping.inputs["Scale"].default_value = [rng.uniform(0.4, 2.0) * pattern_scale] * 3
    mapping.inputs["Rotation"].default_value = rng.uniform(0, math.tau, 3).tolist()
    links.new(coords.outputs["Object"], mapping.inputs["Vector"])
    if family == "marble":
        texture = nodes.new("ShaderNodeTexNoise")
        texture.inputs["Scale"].default_value = rng.uniform(1.0, 6.0)
        texture.inputs["Detail"].default_value = rng.uniform(2.0, 8.0)
        texture.inputs["Distortion"].default_value = rng.uniform(0.0, 3.0)
        factor = texture.outputs["Fac"]
    elif family == "stripes":
        texture = nodes.new("ShaderNodeTexWave")
        texture.wave_profile = rng.choice(["SIN", "SAW"])
        texture.inputs["Scale"].default_value = rng.uniform(1.0, 5.0)
        texture.inputs["Distortion"].default_value = rng.uniform(0.0, 6.0)
        factor = texture.outputs["Fac"]
    elif family == "checker":
        texture = nodes.new("ShaderNodeTexChecker")
        texture.inputs["Scale"].default_value = rng.uniform(2.0, 8.0)
        factor = texture.outputs["Fac"]
    elif family == "cells":
        texture = nodes.new("ShaderNodeTexVoronoi")
        texture.inputs["Scale"].default_value = rng.uniform(2.0, 8.0)
        factor = texture.outputs["Distance"]
    elif family == "bricks":
        texture = nodes.new("ShaderNodeTexBrick")
        texture.inputs["Scale"].default_value = rng.uniform(2.0, 6.0)
        factor = texture.outputs["Fac"]
    else:  # swirls
        texture = nodes.new("ShaderNodeTexMagic")
        texture.inputs["Scale"].default_value = rng.uniform(1.0, 4.0)
        factor = texture.outputs["Fac"]
    links.new(mapping.outputs["Vector"], texture.inputs["Vector"])
    ramp = nodes.new("ShaderNodeValToRGB")
    elements = ramp.color_ramp.elements
    count = int(rng.integers(2, 5))
    while len(elements) < count:
        elements.new(0.5)
    for index, element in enumerate(elements):
        element.position = (index + rng.uniform(-0.3, 0.3)) / max(count - 1, 1) if 0 < index < count - 1 else (
            0.0 if index == 0 else 1.0)
        element.color = random_colour(rng)
    if rng.random() < 0.3:
        ramp.color_ramp.interpolation = "CONSTANT"
    links.new(factor, ramp.inputs["Fac"])
    links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
    if rng.random() < 0.4:
        bump = nodes.new("ShaderNodeBump")
        bump.inputs["Strength"].default_value = rng.uniform(0.1, 0.5)
        links.new(factor, bump.inputs["Height"])
        links.new(bump.outputs["Normal"], bsdf.inputs["Normal"])
    return material


def add_primitive(rng, kind: str, location):
    ops = bpy.ops.mesh
    if kind == "cube":
        ops.primitive_cube_add(size=1.0, location=location)
    elif kind == "uv_sphere":
        ops.primitive_uv_sphere_add(radius=0.6, location=location, segments=24, ring_count=12)
    elif kind == "ico_sphere":
        ops.primitive_ico_sphere_add(radius=0.6, location=location, subdivisions=int(rng.integers(1, 4)))
    elif kind == "cylinder":
        ops.primitive_cylinder_add(radius=0.5, depth=1.2, location=location, vertices=int(rng.integers(6, 32)))
    elif kind == "cone":
        ops.primitive_cone_add(radius1=0.6, depth=1.2, location=location, vertices=int(rng.integers(4, 32)))
    elif kind == "torus":
        ops.primitive_torus_add(major_radius=0.6, minor_radius=0.2, location=location)
    else:
        ops.primitive_monkey_add(size=1.0, location=location)
    obj = bpy.context.object
    obj.scale = rng.uniform(0.6, 1.8, 3) * rng.uniform(0.8, 2.0)
    obj.rotation_euler = rng.uniform(0, math.tau, 3)
    if rng.random() < 0.6:
        if rng.random() < 0.4:
            obj.modifiers.new("Subdivision", "SUBSURF").levels = 1
        bpy.ops.object.shade_smooth()
    return obj


def keyframes(obj, path, start, end, frames):
    for frame, value in zip(frames, (start, end)):
        setattr(obj, path, value)
        obj.keyframe_insert(path, frame=frame)


def look_at(camera, target):
    direction = Vector(target) - camera.location
    camera.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()


def build_scene(rng, size: int, samples: int, span: int, threads: int = 1):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.max_bounces = 3
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.use_motion_blur = False
    scene.render.threads_mode, scene.render.threads = "FIXED", threads  # a shared machine: no waiting threads
    scene.view_settings.view_transform = "Standard"
    scene.render.dither_intensity = 0.0
    scene.frame_start, scene.frame_end = 1, 1 + span
    set_png(scene)

    themed = rng.random() < 0.7  # one family for the whole scene: the prompt names it
    theme = FAMILIES[int(rng.integers(len(FAMILIES)))]

    def family():
        return theme if themed else FAMILIES[int(rng.integers(len(FAMILIES)))]

    world = bpy.data.worlds.new("World")
    scene.world = world
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = random_colour(rng)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = rng.uniform(0.15, 0.45)

    bpy.ops.mesh.primitive_plane_add(size=60)
    bpy.context.object.data.materials.append(make_material(rng, family(), pattern_scale=0.15))
    if rng.random() < 0.35:
        distance = rng.uniform(4, 10)
        angle = rng.uniform(0, math.tau)
        bpy.ops.mesh.primitive_plane_add(size=40, location=(distance * math.cos(angle), distance * math.sin(angle), 0),
                                         rotation=(math.radians(90), 0, angle + math.pi / 2))
        bpy.context.object.data.materials.append(make_material(rng, family(), pattern_scale=0.2))

    frames = (1, 1 + span)
    for _ in range(int(rng.integers(2, 7))):
        start = (rng.uniform(-2.5, 2.5), rng.uniform(-2.5, 2.5), rng.uniform(0.3, 1.5))
        obj = add_primitive(rng, PRIMITIVES[int(rng.integers(len(PRIMITIVES)))], start)
        obj.data.materials.append(make_material(rng, family()))
        if rng.random() < 0.7:
            end = np.array(start) + rng.normal(0, 1.0, 3) * (1, 1, 0.3)
            end[2] = max(end[2], 0.2)
            keyframes(obj, "location", start, tuple(end), frames)
            keyframes(obj, "rotation_euler", tuple(obj.rotation_euler),
                      tuple(np.array(obj.rotation_euler) + rng.normal(0, 0.8, 3)), frames)

    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    camera.data.lens = rng.uniform(20, 60)
    positions = []
    for _ in frames:
        angle, distance = rng.uniform(0, math.tau), rng.uniform(3.5, 8)
        positions.append((distance * math.cos(angle), distance * math.sin(angle), rng.uniform(0.8, 4.5)))
    if rng.random() < 0.5:  # a short move rather than a jump
        positions[1] = tuple(np.array(positions[0]) + rng.normal(0, 1.2, 3) * (1, 1, 0.3))
    for frame, position in zip(frames, positions):
        camera.location = position
        look_at(camera, (rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, 1)))
        camera.keyframe_insert("location", frame=frame)
        camera.keyframe_insert("rotation_euler", frame=frame)

    # The key light comes from behind and above the camera (a random side), bright against a dim
    # sky: the shading then follows the Normal guide the same way in every scene, so the
    # geometry is what a picture is most predictable from (with lights from anywhere, a dark
    # side facing the camera left many pictures near-flat, and the model trained on them learnt
    # to ignore the guides). The seed still chooses the colours and textures.
    side = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.9)
    tilt = rng.uniform(0.5, 1.1)
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", "SUN"))
    scene.collection.objects.link(sun)
    sun.data.energy = rng.uniform(3.0, 5.0)
    sun.data.color = random_colour(rng, dark=0.5, saturation=0.25)[:3]
    sun.data.angle = rng.uniform(0.05, 0.3)
    for frame, position in zip(frames, positions):  # the light follows the camera round the set
        heading = math.atan2(position[1], position[0])  # from the set towards the camera
        sun.rotation_euler = (tilt, 0.0, heading + math.pi / 2 + side)  # a sun shines along its -Z
        sun.keyframe_insert("rotation_euler", frame=frame)
    return scene, frames, (FAMILIES.index(theme) if themed else -1)


def conditions(scene, size: int):
    from silk.engine import conditioning
    from silk.engine.guides import compute_guides
    from silk.engine.scene_capture import capture_frame

    current, _ = capture_frame(bpy.context.evaluated_depsgraph_get(), scene.camera, size, size)
    guides = compute_guides(current)
    depth_range = conditioning.depth_range_of_frame(guides.depth, guides.coverage, guides.camera.clip_start,
                                                    guides.camera.clip_end)
    depth = conditioning.depth_condition(guides.depth, depth_range)[..., 0]
    normal = conditioning.normal_condition(guides.normal, guides.camera.view)
    return depth, normal


def to_uint8(picture):
    return np.clip(np.round(picture * 255.0), 0, 255).astype(np.uint8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--scenes", type=int, default=600)
    parser.add_argument("--first-scene", type=int, default=0, help="to render a range of scenes in another process")
    parser.add_argument("--per-shard", type=int, default=50)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="Cycles render threads")
    args = parser.parse_args(argv)
    import cv2

    load_silk(register=False)
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    shard = {"rgb": [], "depth": [], "normal": [], "family": []}
    picture_path = os.path.join(args.out, f"render_{args.first_scene}.png")
    for index in range(args.first_scene, args.first_scene + args.scenes):
        rng = np.random.default_rng([args.seed, index])  # scene i is the same whichever process renders it
        scene, frames, family = build_scene(rng, args.size, args.samples, span=int(rng.integers(4, 16)),
                                            threads=args.threads)
        for frame in frames:
            scene.frame_set(frame)
            depth, normal = conditions(scene, args.size)
            scene.render.filepath = picture_path
            bpy.ops.render.render(write_still=True)
            rgb = cv2.cvtColor(cv2.imread(picture_path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            shard["rgb"].append(rgb)
            shard["depth"].append(to_uint8(depth))
            shard["normal"].append(to_uint8(normal))
            shard["family"].append(family)
        done = index + 1 - args.first_scene
        if done % args.per_shard == 0 or done == args.scenes:
            name = os.path.join(args.out, f"shard_{index // args.per_shard:04d}.npz")
            np.savez(name + ".tmp.npz", **{key: np.stack(value) for key, value in shard.items()})
            os.replace(name + ".tmp.npz", name)
            shard = {key: [] for key in shard}
            print(f"{done} scenes, {time.perf_counter() - started:.0f} s: {name}", flush=True)


if __name__ == "__main__":
    main()
