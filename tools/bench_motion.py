"""Benchmark: motion-module windows joined by exact motion, against per-frame feedback,
windows joined blindly, and diffusers' FreeNoise alone.

Renders the demo scene (tools/demo_scene.py) as animations through Blender's animation
render, once per mode:

- per-frame warp feedback + fusion 0.8 (Silk without a motion module)
- motion module, windows joined by exact motion (the default: context 16, overlap 4)
- motion module, windows joined blindly: the same windows, each painted from text and guides
  alone and only cross-faded over the overlap (what exact-motion joins add)
- motion module, looped: the same with ``use_loop``, for the seam

and, outside the engine, one ``generate_video`` request for the whole shot with diffusers'
FreeNoise windows (context 16, stride 4) and the same guides. Measured from the frames:

- warp error (Lai et al. 2018, exact motion and occlusion from the scene, mask eroded 1 px,
  display RGB in [0, 1]), mean over consecutive frames, and at the window joins (the first
  frame after each overlap) alone;
- long-range warp error: frame t against frame t-16 (motion computed directly, not chained);
- loop seam: warp error of the first frame against the last, over the shot's median pair;
- wall time per frame (the whole render / frames), after a warm-up render that starts the
  worker and loads the model and the motion module.

    .venv/bin/python tools/bench_motion.py [--model tiny] [--motion-module tiny] [--frames 48] [--size 128]

``MOTION_MODULE=<repo id, folder or file>`` and ``MODEL=...`` measure a real module on a GPU.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bpy  # noqa: E402
import numpy as np  # noqa: E402

from tools import demo_scene  # noqa: E402
from tools.bench_temporal import LONG_RANGE, exact_motion, painting_setup  # noqa: E402
from tools.blender_env import ROOT, load_silk, set_png  # noqa: E402

PER_FRAME = dict(motion_module="", use_feedback=True, fusion=0.8, noise_mode="FIXED", cadence=1, use_loop=False)


def motion_modes(module):
    windows = dict(motion_module=module, context_frames=16, context_overlap=4, use_loop=False)
    return [
        ("per-frame warp feedback + fusion", PER_FRAME, False),
        ("motion module, windows joined by exact motion", windows, False),
        ("motion module, windows joined blindly (cross-fade only)", windows, True),
        ("motion module, looped (windows joined by exact motion)", dict(windows, use_loop=True), False),
    ]


def render(scene, folder, settings, blind=False):
    from silk.engine import windows

    for name, value in settings.items():
        setattr(scene.silk, name, value)
    set_png(scene)
    scene.render.filepath = os.path.join(folder, "f_")
    original = windows.join_start
    if blind:
        windows.join_start = lambda *args, **kwargs: None  # every window from text and guides alone
    started = time.perf_counter()
    try:
        bpy.ops.render.render(animation=True)
    finally:
        windows.join_start = original
    return time.perf_counter() - started


def read_frames(folder, frames):
    from tests.support.scenes import read_png

    return {frame: read_png(os.path.join(folder, f"f_{frame:04d}.png"))[..., :3] for frame in frames}


def metrics(pictures, frames, motion, long_motion, joins):
    from silk.engine import temporal

    pairs = {f: temporal.warp_error(pictures[f], pictures[f - 1], *motion[f]) for f in frames[1:]}
    long = [temporal.warp_error(pictures[f], pictures[f - LONG_RANGE], *long_motion[f])
            for f in frames if f - LONG_RANGE in pictures]
    return {"warp_error": float(np.nanmean(list(pairs.values()))),
            "warp_error_at_joins": float(np.nanmean([pairs[f] for f in joins])) if joins else None,
            "long_range_warp_error": float(np.nanmean(long)) if long else None,
            "median_pair": float(np.nanmedian(list(pairs.values())))}


def free_noise_take(scene, frames, size, steps):
    """One request for the whole shot with diffusers' FreeNoise windows, the engine's guides."""
    from silk.engine import conditioning, diffusion_job, job_settings, worker_link
    from silk.engine.guides import compute_guides
    from silk.engine.scene_capture import capture_frame

    job = job_settings.from_scene(scene)
    model = diffusion_job.model_request(job)
    videos, depth_range = None, None
    for position, frame in enumerate(frames):
        scene.frame_set(frame)
        geometry, _ = capture_frame(bpy.context.evaluated_depsgraph_get(), scene.camera, size, size)
        guides = compute_guides(geometry, None)
        if depth_range is None:
            camera = guides.camera
            depth_range = conditioning.depth_range_of_frame(guides.depth, guides.coverage, camera.clip_start,
                                                            camera.clip_end)
        units = diffusion_job.control_units(job, guides, depth_range)
        if videos is None:  # as engine/motion_render.py builds a window's units
            videos = [{"image": np.empty((len(frames),) + np.shape(unit.image), np.float32), "weight": unit.weight,
                       "start": unit.start, "end": unit.end} for unit in units]
        for video, unit in zip(videos, units):
            video["image"][position] = unit.image
    client = worker_link.client()
    client.ensure_started()
    started = time.perf_counter()
    pictures, _ = client.generate_video(model.to_json(), {"source": scene.silk.motion_module}, job.prompt, videos, size, size,
                                        len(frames), negative_prompt=job.negative_prompt, seed=job.seed,
                                        steps=steps, guidance=job.guidance, scheduler=job.scheduler,
                                        context_frames=16, context_stride=4, timeout=7200)
    seconds = time.perf_counter() - started
    return {frame: pictures[position] for position, frame in enumerate(frames)}, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("MODEL") or "tiny")
    parser.add_argument("--motion-module", default=os.environ.get("MOTION_MODULE") or "tiny")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--skip-free-noise", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("SILK_WORKER_PYTHON", os.path.join(ROOT, ".venv", "bin", "python"))

    load_silk()
    from silk.engine import windows, worker_link
    from silk.engine.schedule import Shot

    scene = painting_setup(demo_scene.build(args.size, args.size), args.frames, args.model, args.steps)
    frames = list(range(1, args.frames + 1))
    motion = {f: exact_motion(scene, f, f - 1, args.size, args.size) for f in frames[1:]}
    long_motion = {f: exact_motion(scene, f, f - LONG_RANGE, args.size, args.size) for f in frames if f > LONG_RANGE}
    seam_motion = exact_motion(scene, frames[0], frames[-1], args.size, args.size)
    plan = windows.schedule_windows(Shot(1, args.frames), 16, 4)
    joins = [window.frames[window.lead] for window in plan[1:]]  # the first frame after each overlap
    results = {"machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
               "model": args.model, "motion_module": args.motion_module, "size": args.size, "frames": args.frames,
               "steps": args.steps, "windows": [[w.frames[0], w.frames[-1]] for w in plan], "modes": {}}
    from silk.engine import temporal

    # Warm-up: start the worker and load the model and the motion module before any mode is timed.
    scene.silk.motion_module, scene.silk.context_frames = args.motion_module, 2
    scene.frame_set(1)
    bpy.ops.render.render()
    for label, settings, blind in motion_modes(args.motion_module):
        with tempfile.TemporaryDirectory() as folder:
            seconds = render(scene, folder, settings, blind)
            pictures = read_frames(folder, frames)
        found = metrics(pictures, frames, motion, long_motion, joins)
        found["seconds_per_frame"] = seconds / len(frames)
        if settings.get("use_loop"):
            found["loop_seam"] = temporal.warp_error(pictures[frames[0]], pictures[frames[-1]], *seam_motion)
            found["loop_seam_vs_median"] = found["loop_seam"] / found["median_pair"]
        results["modes"][label] = found
        print(label, json.dumps(found), flush=True)
    if not args.skip_free_noise:
        scene.silk.motion_module = args.motion_module
        pictures, seconds = free_noise_take(scene, frames, args.size, args.steps)
        found = metrics(pictures, frames, motion, long_motion, joins)
        found["seconds_per_frame"] = seconds / len(frames)
        found["note"] = "worker time only (guides computed before)"
        label = "FreeNoise alone (diffusers, one request, context 16 stride 4)"
        results["modes"][label] = found
        print(label, json.dumps(found), flush=True)
    worker_link.unregister()
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
