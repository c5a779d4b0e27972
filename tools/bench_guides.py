"""Benchmark: Silk's guides against Cycles' 1-sample Depth/Normal/Vector render.

Two scenes of more than 250k triangles, each rendered at 512x512 as an animation (one
render job of consecutive frames, as an artist or a farm renders a shot) by both engines
in the same process:

- ``rigid``: four Suzannes (Subdivision level 3 applied, smooth), a UV sphere and a
  ground plane; every object and the camera move, no mesh deforms.
- ``deforming``: a ground grid with live Subdivision (level 2) and Wave modifiers, two
  Suzannes with live Subdivision (level 3), one of them under a Wave before it, and a
  moving sphere and camera: two meshes change shape every frame.

Each engine renders the shot once to warm up, then both render it ``--rounds`` times in
turns (so that the load of a shared machine falls on both alike); the time of a frame is
the time between consecutive frames' BMP files being written (its render and the write). Two
figures per engine: the median over all shots' frames after their first (a long shot's
frame: a job's first frame has no previous render to reuse), and the whole shot, first
frame included, over its frame count (what this short job costs per frame). The process's
CPU seconds of whole shots (all threads) are reported beside the wall-clock ones: on a
shared machine they show the work done, whatever share of the cores the process got.

    .venv/bin/python tools/bench_guides.py [--size 512] [--frames 6] [--rounds 2] [--scenes rigid deforming]
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bpy  # noqa: E402

from tools.blender_env import load_silk, use_cycles_reference  # noqa: E402

FIRST_FRAME = 20


def _camera(scene):
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    for frame, x in ((1, -2.0), (48, 2.0)):
        camera.location = (x, -12, 4)
        camera.rotation_euler = (math.radians(75), 0, math.radians(x * 3))
        camera.keyframe_insert("location", frame=frame)
        camera.keyframe_insert("rotation_euler", frame=frame)


def _monkey(index, levels, apply):
    bpy.ops.mesh.primitive_monkey_add(location=(index * 2.5 - 3.75, 0, 1))
    monkey = bpy.context.object
    modifier = monkey.modifiers.new("Subdivision", "SUBSURF")
    modifier.levels = modifier.render_levels = levels
    for poly in monkey.data.polygons:
        poly.use_smooth = True
    if apply:
        bpy.ops.object.modifier_apply(modifier="Subdivision")
    for frame, z in ((1, 0.0), (48, math.radians(90 * (index + 1)))):
        monkey.rotation_euler = (0, 0, z)
        monkey.location.y = 0 if frame == 1 else index - 1.5
        monkey.keyframe_insert("rotation_euler", frame=frame)
        monkey.keyframe_insert("location", frame=frame)
    return monkey


def _sphere():
    bpy.ops.mesh.primitive_uv_sphere_add(segments=128, ring_count=64, location=(0, 3, 1.5))
    sphere = bpy.context.object
    for frame, x in ((1, -4.0), (48, 4.0)):
        sphere.location.x = x
        sphere.keyframe_insert("location", frame=frame)


def _wave(obj, height, width, speed):
    wave = obj.modifiers.new("Wave", "WAVE")
    wave.height, wave.width, wave.speed = height, width, speed
    return wave


def build_scene(size: int, kind: str = "rigid"):
    """The benchmark scene (``rigid`` or ``deforming``) and its triangle count at the first frame."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.frame_start, scene.frame_end = 1, 48
    if kind == "rigid":
        bpy.ops.mesh.primitive_plane_add(size=40)
        for index in range(4):
            _monkey(index, 3, apply=True)
    elif kind == "deforming":
        bpy.ops.mesh.primitive_grid_add(x_subdivisions=64, y_subdivisions=64, size=40)
        ground = bpy.context.object
        ground.modifiers.new("Subdivision", "SUBSURF").levels = 2
        ground.modifiers["Subdivision"].render_levels = 2
        _wave(ground, 0.5, 3.0, 0.1)
        for index in (1, 2):
            monkey = _monkey(index, 3, apply=False)
            if index == 1:  # deform before subdividing: the whole stack runs every frame
                wave = _wave(monkey, 0.15, 0.6, 0.05)
                bpy.context.view_layer.objects.active = monkey
                bpy.ops.object.modifier_move_to_index(modifier=wave.name, index=0)
    else:
        raise ValueError(f"unknown scene {kind!r}")
    _sphere()
    _camera(scene)
    scene.frame_set(FIRST_FRAME)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    triangles = sum(
        len(inst.object.data.loop_triangles)
        for inst in depsgraph.object_instances if inst.object.type == "MESH"
    )
    return scene, triangles


def time_shot(scene, frames: int) -> tuple[list, float]:
    """Seconds per frame of one animation render of ``frames`` frames (all of them), and the
    process's CPU seconds (all threads) of the whole shot.

    A frame's time runs from the previous frame's file being written (the job's start for the
    first frame) to its own, read from the files' modification times (fine-grained on this
    machine's ext4): a render handler would be a script running between the frames, and Silk
    reuses nothing across frames while one is registered (``scene_capture.scripts_between_frames``).
    """
    paths = [scene.render.frame_path(frame=frame) for frame in range(scene.frame_start, scene.frame_end + 1)]
    assert len(paths) == frames
    for path in paths:
        if os.path.exists(path):
            os.remove(path)
    start, cpu_start = time.time_ns(), time.process_time()
    bpy.ops.render.render(animation=True)
    cpu = time.process_time() - cpu_start
    written = [start] + [os.stat(path).st_mtime_ns for path in paths]
    return [(b - a) / 1e9 for a, b in zip(written, written[1:])], cpu


def _use(scene, engine: str) -> None:
    if engine == "CYCLES":
        use_cycles_reference(scene)
    else:
        scene.render.engine = "SILK"
        scene.silk.mode = "GUIDES"


def measure(scene, frames: int, rounds: int) -> dict:
    """Both engines' seconds per frame, rendering the shot in turns (Cycles, Silk, Cycles,
    ...) so that a change in the machine's load falls on both alike."""
    scene.frame_start, scene.frame_end = FIRST_FRAME, FIRST_FRAME + frames - 1
    times = {"CYCLES": [], "SILK": []}
    cpu_times = {"CYCLES": [], "SILK": []}
    for engine in times:  # warm up: kernels, caches, memory
        _use(scene, engine)
        time_shot(scene, frames)
    for _ in range(rounds):
        for engine, collected in times.items():
            _use(scene, engine)
            shot, cpu = time_shot(scene, frames)
            collected.append(shot)
            cpu_times[engine].append(cpu)
    result = {}
    for engine, shots in times.items():
        later = [t for shot in shots for t in shot[1:]]  # a job's first frame has nothing to reuse
        result[engine.lower()] = {"first_frames": [round(shot[0], 4) for shot in shots],
                                  "frames": [[round(t, 4) for t in shot] for shot in shots],
                                  "median": round(statistics.median(later), 4),
                                  "whole_shot": round(statistics.mean(t for shot in shots for t in shot), 4),
                                  "cpu_whole_shot": round(sum(cpu_times[engine]) / (frames * rounds), 4)}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="shots per engine, in turns, after a warm-up each")
    parser.add_argument("--scenes", nargs="+", default=["rigid", "deforming"], choices=["rigid", "deforming"])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    load_silk()
    from silk.engine import scene_capture
    from silk.engine.guides import kernels

    results = {
        "blender": bpy.app.version_string,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "size": args.size,
        "frames": args.frames,
        "compiled_kernels": kernels.AVAILABLE,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    goals = {"rigid": 0.3, "deforming": 0.5}
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.scenes:
            scene, triangles = build_scene(args.size, kind)
            scene.render.image_settings.file_format = "BMP"  # writing costs both engines next to nothing
            scene.render.filepath = os.path.join(folder, f"{kind}_")
            cache = scene_capture.motion_cache
            reused_before, returns_before = cache.reused, cache.returns_without_evaluating
            unread_before = cache.reused_unread
            load_before = [round(x, 2) for x in os.getloadavg()]
            measured = measure(scene, args.frames, args.rounds)
            cycles, silk = measured["cycles"], measured["silk"]
            ratio = silk["median"] / cycles["median"]
            whole = silk["whole_shot"] / cycles["whole_shot"]
            cpu_ratio = silk["cpu_whole_shot"] / cycles["cpu_whole_shot"]
            results[kind] = {"triangles": triangles, "cycles": cycles, "silk": silk, "ratio": round(ratio, 3),
                             "whole_shot_ratio": round(whole, 3), "cpu_ratio": round(cpu_ratio, 3),
                             "silk_frames_reused": cache.reused - reused_before,
                             "silk_frames_t_taken_unread": cache.reused_unread - unread_before,
                             "silk_returns_without_evaluating": cache.returns_without_evaluating - returns_before,
                             "load_average": [load_before, [round(x, 2) for x in os.getloadavg()]]}
            print(f"{kind}: {triangles} triangles at {args.size}x{args.size}: Silk {silk['median']:.3f} s vs "
                  f"Cycles {cycles['median']:.3f} s per frame: {ratio:.2f}x (goal <= {goals[kind]}x); "
                  f"whole {args.frames}-frame shots {whole:.2f}x; CPU seconds {cpu_ratio:.2f}x; "
                  f"load average {results[kind]['load_average']}", flush=True)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:])
