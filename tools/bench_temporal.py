"""Benchmark: how smoothly Silk animates, and what feedback and cadence cost.

Renders the demo scene (moving objects, a moving camera, occlusions) as animations with
the Silk engine through Blender's own animation render, once per mode:

- independent frames, random seeds (seed + frame)      - the flicker baseline
- independent frames, fixed seed                       - the usual baseline
- warp feedback (exact motion, holes filled, no fusion)
- warp feedback + fusion
- warp feedback + fusion + warped noise (engine/noise.py), with fusion stopping at the end of
  the steps, after 75% of them, and after 50% (``fusion_end``)
- warp feedback + fusion, cadence 4

and measures from the saved multilayer EXRs (Combined, Vector, Occlusion):
- warp error (Lai et al. 2018; exact motion; Occlusion mask eroded 1 px; RGB in [0, 1]),
  mean over consecutive frames;
- long-range warp error: frame t against frame t-16, warped by the exact motion between
  them (computed from the scene, not chained);
- colour drift: CIE76 delta E of each frame's mean LAB colour against frame 1, mean;
- wall time per frame (the whole animation render / frames).

For the long-range goal's context it also measures the same two warp errors on the Normal
guide itself (the camera-space normal picture the ControlNet is given): where surfaces turn
toward or away from the camera, the shading a model paints from that guide changes over 16
frames as much as the guide does, however well the texture holds.

Then, at --overhead-size (512), the per-frame cost of feedback: Silk's own warp, fill
and colour work (timed inside the engine), and the worker's fusion (the same frames
with and without fusion).

    .venv/bin/python tools/bench_temporal.py [--model tiny] [--frames 48] [--size 256] [--steps 8]
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

from tools import bench_scenes  # noqa: E402
from tools.blender_env import ROOT, load_silk, set_multilayer_exr  # noqa: E402

MODES = [
    ("independent, random seeds", dict(use_feedback=False, noise_mode="RANDOM")),
    ("independent, fixed seed", dict(use_feedback=False, noise_mode="FIXED")),
    ("warp feedback", dict(use_feedback=True, fusion=0.0, noise_mode="FIXED")),
    ("warp feedback + fusion", dict(use_feedback=True, fusion=0.8, noise_mode="FIXED")),
    ("+ warped noise", dict(use_feedback=True, fusion=0.8, noise_mode="WARPED")),
    ("+ warped noise, fusion end 0.75", dict(use_feedback=True, fusion=0.8, noise_mode="WARPED", fusion_end=0.75)),
    ("+ warped noise, fusion end 0.5", dict(use_feedback=True, fusion=0.8, noise_mode="WARPED", fusion_end=0.5)),
    ("feedback + fusion, cadence 4", dict(use_feedback=True, fusion=0.8, noise_mode="FIXED", cadence=4)),
]
LONG_RANGE = 16


def read_frame(path):
    from tests.support import exr

    passes = exr.read_passes(path)
    occlusion = passes["Occlusion"]
    return passes["Combined"][..., :3], passes["Vector"], occlusion[..., 0] if occlusion.ndim == 3 else occlusion


def painting_setup(scene, frames: int, model: str, steps: int):
    """A benchmark scene set to paint frames 1..frames with Silk, colour-exact (Standard, no dither)."""
    scene.frame_start, scene.frame_end = 1, frames
    scene.render.engine = "SILK"
    scene.view_settings.view_transform = "Standard"
    scene.render.dither_intensity = 0.0
    silk = scene.silk
    silk.mode = "DIFFUSE"
    silk.model = model
    silk.steps = steps
    silk.prompt = "a cosy toy room, wooden blocks and a glossy ball on a wooden floor, oil painting"
    return scene


def exact_motion(scene, frame, other, width, height):
    """Vector and Occlusion of ``frame`` relative to any ``other`` frame, from the scene itself."""
    from silk.engine.guides import compute_guides
    from silk.engine.scene_capture import capture_frame

    scene.frame_set(frame)
    current, _ = capture_frame(bpy.context.evaluated_depsgraph_get(), scene.camera, width, height)
    scene.frame_set(other)
    known = frozenset(instance.key for instance in current.instances)
    earlier, _ = capture_frame(bpy.context.evaluated_depsgraph_get(), scene.camera, width, height, known)
    guides = compute_guides(current, earlier)
    return guides.vector, guides.occlusion


def render_mode(scene, folder, settings):
    silk = scene.silk
    for name, value in dict(use_feedback=True, fusion=0.0, fusion_end=1.0, noise_mode="FIXED", cadence=1).items():
        setattr(silk, name, value)
    for name, value in settings.items():
        setattr(silk, name, value)
    set_multilayer_exr(scene)
    scene.render.filepath = os.path.join(folder, "f_")
    started = time.perf_counter()
    bpy.ops.render.render(animation=True)
    return time.perf_counter() - started


def measure(scene, folder, frames, width, height, long_range_motion):
    from silk.engine import temporal
    from silk.engine.color import linear_to_srgb

    pictures, vectors, occlusions = {}, {}, {}
    for frame in frames:
        combined, vector, occlusion = read_frame(os.path.join(folder, f"f_{frame:04d}.exr"))
        pictures[frame], vectors[frame], occlusions[frame] = linear_to_srgb(combined), vector, occlusion
    short = [temporal.warp_error(pictures[f], pictures[f - 1], vectors[f], occlusions[f]) for f in frames[1:]]
    long = [temporal.warp_error(pictures[f], pictures[f - LONG_RANGE], *long_range_motion[f])
            for f in frames if f - LONG_RANGE in pictures]
    drift = [temporal.color_drift(pictures[f], pictures[frames[0]]) for f in frames[1:]]
    return {"warp_error": float(np.nanmean(short)), "long_range_warp_error": float(np.nanmean(long)) if long else None,
            "color_drift": float(np.mean(drift))}


def feedback_overhead(scene, size, steps, frames=4):
    """Per-frame cost of feedback at ``size``: Silk's warp, fill and colour work (timed in
    the engine), and the worker's fusion (every fusion step timed in the same backend code,
    run in this process: the difference of two whole renders is lost in their noise)."""
    from silk.engine import render_engine

    scene.render.resolution_x = scene.render.resolution_y = size
    scene.frame_start, scene.frame_end = 1, frames
    scene.silk.steps = steps
    with tempfile.TemporaryDirectory() as folder:
        render_mode(scene, folder, dict(use_feedback=True, fusion=0.8))  # warm: model loaded at this size
        seconds = render_mode(scene, folder, dict(use_feedback=True, fusion=0.8))
        notes = [note for note in render_engine.session.notes if note.kind == "feedback"]
    per_frame = seconds / frames
    engine_cost = float(np.mean([note.feedback_seconds for note in notes]))
    fusion_cost = fusion_seconds_per_frame(size, steps)
    return {"size": size, "steps": steps, "frames": frames, "seconds_per_frame": per_frame,
            "engine_feedback_seconds": engine_cost, "fusion_seconds": fusion_cost,
            "overhead_fraction": (engine_cost + fusion_cost) / per_frame}


def fusion_seconds_per_frame(size, steps, repeats=3):
    """Time spent in fusion's per-step work for one image-to-image frame at ``size``."""
    import threading

    from silk.bridge import diffusion

    backend = diffusion.DiffusionBackend(cache_dir=os.environ.get("SILK_MODEL_CACHE"))
    spent = [0.0]
    original = diffusion.Fusion.apply

    def timed(self, latents, step, total):
        started = time.perf_counter()
        result = original(self, latents, step, total)
        spent[0] += time.perf_counter() - started
        return result

    rng = np.random.default_rng(0)
    mask = np.full((size, size, 1), 0.55, dtype=np.float32)
    mask[size // 3: size // 2, size // 3: size // 2] = 1.0  # an uncovered patch
    images = {"init_image": rng.random((size, size, 3), dtype=np.float32), "mask": mask}
    units = [{"image": rng.random((size, size, 3), dtype=np.float32)} for _ in range(2)]
    request = {"model": {"source": "tiny"}, "prompt": "a room", "steps": steps, "seed": 1, "width": size,
               "height": size, "strength": 1.0, "guidance": 7.0, "scheduler": "dpmpp_2m_karras", "fusion": 0.8}
    diffusion.Fusion.apply = timed
    try:
        for _ in range(repeats):
            backend.generate(request, images, units, progress=lambda *a: None, cancel=threading.Event())
    finally:
        diffusion.Fusion.apply = original
    return spent[0] / repeats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("MODEL") or "tiny")
    parser.add_argument("--scene", default=os.environ.get("SCENE") or "demo", choices=bench_scenes.SCENES,
                        help="demo; orbit (camera orbit, parallax); fast (fast objects, large disocclusions)")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--overhead-size", type=int, default=512)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--only-overhead", action="store_true", help="measure only the feedback overhead")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--modes", help="only these modes: numbers in the list above, from 1, comma-separated")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="set a scene.silk setting for every mode (a number), e.g. color_coherence=1")
    args = parser.parse_args(argv)
    os.environ.setdefault("SILK_WORKER_PYTHON", os.path.join(ROOT, ".venv", "bin", "python"))

    load_silk()
    scene = painting_setup(bench_scenes.build(args.scene, args.size, args.size), args.frames, args.model, args.steps)
    silk = scene.silk
    if args.model == "mini":  # mini's own settings (tools/mini): trained without negative prompts
        from tools.mini import MINI_PROMPT, MINI_SETTINGS

        silk.prompt, silk.negative_prompt = MINI_PROMPT, ""
        silk.guidance_scale, silk.scheduler = MINI_SETTINGS["guidance"], MINI_SETTINGS["scheduler"]
    for setting in args.setting:
        name, value = setting.split("=", 1)
        setattr(silk, name, type(getattr(silk, name))(float(value)))
    frames = list(range(1, args.frames + 1))
    results = {"settings": args.setting, "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
               "model": args.model, "scene": args.scene, "size": args.size, "frames": args.frames, "steps": args.steps, "modes": {}}
    if not args.only_overhead:
        measure_modes(scene, frames, args, results)
    if not args.skip_overhead:
        overhead = feedback_overhead(scene, args.overhead_size, args.steps)
        results["overhead"] = overhead
        print(f"feedback overhead at {overhead['size']}x{overhead['size']}: engine {overhead['engine_feedback_seconds']:.3f}"
              f" s + fusion {overhead['fusion_seconds']:.4f} s of {overhead['seconds_per_frame']:.2f} s/frame = "
              f"{100 * overhead['overhead_fraction']:.1f}% (goal <= 10%)")
    from silk.engine import worker_link

    worker_link.unregister()
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


def normal_guide_change(scene, frames, size, long_range_motion):
    """Warp errors of the Normal guide picture itself, over one frame and over LONG_RANGE."""
    from silk.engine import temporal

    pictures = {frame: normal for frame, (_, normal) in bench_scenes.shot_guides(scene, frames, size, size).items()}
    short = [temporal.warp_error(pictures[f], pictures[f - 1], *exact_motion(scene, f, f - 1, size, size))
             for f in frames[1:]]
    long = [temporal.warp_error(pictures[f], pictures[f - LONG_RANGE], *long_range_motion[f])
            for f in frames if f - LONG_RANGE in pictures]
    result = {"warp_error": float(np.nanmean(short)), "long_range_warp_error": float(np.nanmean(long))}
    result["long_vs_one_frame"] = result["long_range_warp_error"] / result["warp_error"]
    print(f"{'the Normal guide itself':32s} warp {result['warp_error']:.5f}  long {result['long_range_warp_error']:.5f}"
          f"  ({LONG_RANGE}-frame / 1-frame {result['long_vs_one_frame']:.1f})", flush=True)
    return result


def measure_modes(scene, frames, args, results):
    long_range_motion = {f: exact_motion(scene, f, f - LONG_RANGE, args.size, args.size)
                         for f in frames if f - LONG_RANGE >= 1}
    if long_range_motion:
        results["normal_guide"] = normal_guide_change(scene, frames, args.size, long_range_motion)
    chosen = {int(number) for number in args.modes.split(",")} if args.modes else set(range(1, len(MODES) + 1))
    for label, settings in [mode for number, mode in enumerate(MODES, 1) if number in chosen]:
        with tempfile.TemporaryDirectory() as folder:
            seconds = render_mode(scene, folder, settings)
            metrics = measure(scene, folder, frames, args.size, args.size, long_range_motion)
        metrics["seconds_per_frame"] = seconds / len(frames)
        results["modes"][label] = metrics
        print(f"{label:32s} warp {metrics['warp_error']:.5f}  long {metrics['long_range_warp_error'] or float('nan'):.5f}"
              f"  drift {metrics['color_drift']:.2f}  {metrics['seconds_per_frame']:.2f} s/frame", flush=True)
    summarise_goals(results)


def summarise_goals(results):
    """The animation goals (docs/benchmarks.md) for the modes that were measured."""
    modes = results["modes"]
    fused = modes.get("warp feedback + fusion")
    if fused is None:
        return
    goals = []
    for baseline, key, limit in (("independent, fixed seed", "fusion_vs_fixed_seed", 0.5),
                                 ("independent, random seeds", "fusion_vs_random_seeds", 0.3)):
        if baseline in modes:
            results[key] = fused["warp_error"] / modes[baseline]["warp_error"]
            goals.append((f"feedback + fusion warp error / {baseline.split(', ')[1]}", results[key], "<=", limit))
    if fused["long_range_warp_error"] is not None:
        results["fusion_long_vs_one_frame"] = fused["long_range_warp_error"] / fused["warp_error"]
        goals.append((f"feedback + fusion {LONG_RANGE}-frame / 1-frame warp error", results["fusion_long_vs_one_frame"],
                      "<=", 2.0))
    goals.append(("feedback + fusion colour drift (CIE76)", fused["color_drift"], "<", 3.0))
    if "feedback + fusion, cadence 4" in modes:
        results["cadence4_vs_cadence1_time"] = (modes["feedback + fusion, cadence 4"]["seconds_per_frame"]
                                                / fused["seconds_per_frame"])
        goals.append(("cadence 4 wall time / cadence 1", results["cadence4_vs_cadence1_time"], "<=", 0.4))
    results["goals"] = {}
    for label, value, relation, limit in goals:
        met = value <= limit if relation == "<=" else value < limit
        results["goals"][label] = {"value": value, "goal": f"{relation} {limit:g}", "met": bool(met)}
        print(f"{label}: {value:.3f} (goal {relation} {limit:g}: {'met' if met else 'NOT met'})")


if __name__ == "__main__":
    main()
