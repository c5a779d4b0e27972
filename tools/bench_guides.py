"""Benchmark: Silk's guides against Cycles' 1-sample Depth/Normal/Vector render.

Builds a scene of more than 200k triangles with moving objects and a moving camera,
renders it at 512x512 with both engines in the same process, and prints the median
wall time of several renders (after one warm-up each).

    .venv/bin/python tools/bench_guides.py [--size 512] [--repeats 5]
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bpy  # noqa: E402

from tools.blender_env import load_silk, use_cycles_reference  # noqa: E402


def build_scene(size: int, keep_modifiers: bool = False):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.frame_start, scene.frame_end = 1, 48

    bpy.ops.mesh.primitive_plane_add(size=40)
    for index in range(4):
        bpy.ops.mesh.primitive_monkey_add(location=(index * 2.5 - 3.75, 0, 1))
        monkey = bpy.context.object
        modifier = monkey.modifiers.new("Subdivision", "SUBSURF")
        modifier.levels = modifier.render_levels = 3
        for poly in monkey.data.polygons:
            poly.use_smooth = True
        if not keep_modifiers:
            bpy.ops.object.modifier_apply(modifier="Subdivision")
        for frame, z in ((1, 0.0), (48, math.radians(90 * (index + 1)))):
            monkey.rotation_euler = (0, 0, z)
            monkey.location.y = 0 if frame == 1 else index - 1.5
            monkey.keyframe_insert("rotation_euler", frame=frame)
            monkey.keyframe_insert("location", frame=frame)
    bpy.ops.mesh.primitive_uv_sphere_add(segments=128, ring_count=64, location=(0, 3, 1.5))
    sphere = bpy.context.object
    for frame, x in ((1, -4.0), (48, 4.0)):
        sphere.location.x = x
        sphere.keyframe_insert("location", frame=frame)

    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    for frame, x in ((1, -2.0), (48, 2.0)):
        camera.location = (x, -12, 4)
        camera.rotation_euler = (math.radians(75), 0, math.radians(x * 3))
        camera.keyframe_insert("location", frame=frame)
        camera.keyframe_insert("rotation_euler", frame=frame)
    scene.frame_set(24)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    triangles = sum(
        len(inst.object.data.loop_triangles)
        for inst in depsgraph.object_instances if inst.object.type == "MESH"
    )
    return scene, triangles


def time_renders(repeats: int, before_each=None) -> tuple:
    """The first render (first-use costs: kernels, caches) and ``repeats`` more."""
    started = time.perf_counter()
    bpy.ops.render.render()
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        if before_each is not None:
            before_each()
        started = time.perf_counter()
        bpy.ops.render.render()
        times.append(time.perf_counter() - started)
    return first, times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep-modifiers", action="store_true",
                        help="keep the Subdivision modifiers live, so both engines also pay for evaluating them")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    load_silk()
    from silk.engine.guides import kernels

    scene, triangles = build_scene(args.size, args.keep_modifiers)

    use_cycles_reference(scene)
    cycles_first, cycles = time_renders(args.repeats)

    scene.render.engine = "SILK"
    scene.silk.mode = "GUIDES"
    silk_first, silk = time_renders(args.repeats)
    # The same with the mesh topology cache emptied before each render (as if every
    # mesh had changed shape since the last render).
    from silk.engine.scene_capture import topology_cache

    def forget_topology():
        topology_cache.finish_render()
        topology_cache.finish_render()

    _, silk_uncached = time_renders(args.repeats, forget_topology)

    cycles_median, silk_median = statistics.median(cycles), statistics.median(silk)
    result = {
        "blender": bpy.app.version_string,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "triangles": triangles,
        "size": args.size,
        "live_modifiers": args.keep_modifiers,
        "compiled_kernels": kernels.AVAILABLE,
        "cycles_first_render": round(cycles_first, 4),
        "silk_first_render": round(silk_first, 4),
        "cycles_seconds": [round(t, 4) for t in cycles],
        "silk_seconds": [round(t, 4) for t in silk],
        "cycles_median": round(cycles_median, 4),
        "silk_median": round(silk_median, 4),
        "ratio": round(silk_median / cycles_median, 3),
        "silk_uncached_seconds": [round(t, 4) for t in silk_uncached],
        "silk_uncached_median": round(statistics.median(silk_uncached), 4),
        "uncached_ratio": round(statistics.median(silk_uncached) / cycles_median, 3),
    }
    print(json.dumps(result, indent=2))
    print(f"First render: Silk {silk_first:.3f} s, Cycles {cycles_first:.3f} s")
    print(f"Silk without the topology cache: {result['silk_uncached_median']:.3f} s ({result['uncached_ratio']:.2f}x)")
    print(f"Silk guides {silk_median:.3f} s vs Cycles {cycles_median:.3f} s: "
          f"{result['ratio']:.2f}x (goal <= 0.5x) for {triangles} triangles at {args.size}x{args.size}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:])
