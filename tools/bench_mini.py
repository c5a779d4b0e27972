"""`make bench-mini`: what the ``mini`` model does with Silk's guides (a proxy for a real
model, not an artist's model).

On the three benchmark scenes (tools/bench_scenes.py) at 256x192, with the conditioning
pictures the render engine makes (depth and normal), painted by Silk's own diffusion
backend in this process:

(a) the painting follows the scene: Canny edges of the painting against the guides' edges
    (depth steps and normal creases): recall within 2 px, and the chance level (the same
    guides mirrored); and fixed-seed frames of the moving scene change where the guides
    change, not elsewhere;
(b) the noise chooses the texture: mean absolute difference of two seeds' paintings;
(c) image-to-image keeps its initial picture in proportion to strength: the difference
    to the initial picture at strengths 0.2-1.0;
(d) text-to-image and image-to-image pictures have the same statistics: the ratio of
    their standard deviations (image-to-image at strength 0.5 from a painting of the
    previous frame with faithful encoding, as feedback does; and without it).

    .venv/bin/python tools/bench_mini.py [--frames 1,12,24,36,48] [--threads 2]
"""
import argparse
import json
import os
import platform
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bpy  # noqa: E402, F401 - Blender's module first, as everywhere in tools/
import numpy as np  # noqa: E402

from tools import bench_scenes  # noqa: E402
from tools.blender_env import load_silk  # noqa: E402
from tools.mini import MINI_PROMPT, MINI_SETTINGS, metrics  # noqa: E402


def paint(backend, depth, normal, seed, init=None, strength=1.0, prompt=MINI_PROMPT, faithful_encoding=False):
    height, width = depth.shape[:2]
    request = dict(MINI_SETTINGS, model={"source": "mini"}, prompt=prompt, seed=seed, width=width, height=height,
                   strength=strength, faithful_encoding=faithful_encoding)
    images = {} if init is None else {"init_image": init}
    result = backend.generate(request, images, [{"image": depth}, {"image": normal}], progress=lambda *a: None,
                              cancel=threading.Event())
    return result.image


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="1,12,24,36,48")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    load_silk(register=False)
    from silk.bridge import schema
    from silk.bridge.diffusion import DiffusionBackend
    from silk.engine import temporal

    feedback_strength = schema.default("strength")  # the engine's default feedback strength

    backend = DiffusionBackend()
    frames = [int(frame) for frame in args.frames.split(",")]
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}",
              "settings": MINI_SETTINGS, "size": [args.width, args.height], "scenes": {}}
    paint_seconds = []
    for name in bench_scenes.SCENES:
        scene = bench_scenes.build(name, args.width, args.height)
        guides = bench_scenes.shot_guides(scene, frames, args.width, args.height)
        figures = {"recall": [], "chance": [], "seeds": [], "where_changed": [], "where_still": [],
                   "std_ratio": [], "std_ratio_plain_encoding": [], "one_pass_colour_shift": [], "strength": {}}
        paintings = {}
        for frame in frames:
            depth, normal = guides[frame]
            started = time.perf_counter()
            paintings[frame] = paint(backend, depth, normal, seed=1)
            paint_seconds.append(time.perf_counter() - started)
            alignment = metrics.edge_alignment(depth, normal, paintings[frame])
            figures["recall"].append(alignment["recall"])
            figures["chance"].append(alignment["chance"])
            other = paint(backend, depth, normal, seed=2)
            figures["seeds"].append(float(np.abs(other - paintings[frame]).mean()))
        for before, after in zip(frames, frames[1:]):
            change = metrics.change_where_scene_changes(guides[before], guides[after], paintings[before],
                                                        paintings[after])
            figures["where_changed"].append(change["change_where_changed"])
            figures["where_still"].append(change["change_where_still"])
            # (d) feedback's case: the previous frame's painting as the initial picture.
            depth, normal = guides[after]
            fed = paint(backend, depth, normal, seed=1, init=paintings[before], strength=0.5, faithful_encoding=True)
            figures["std_ratio"].append(float(fed.std() / paintings[after].std()))
            plain = paint(backend, depth, normal, seed=1, init=paintings[before], strength=0.5)
            figures["std_ratio_plain_encoding"].append(float(plain.std() / paintings[after].std()))
            # One feedback pass over a painting that did not move: how far its mean colour goes
            # (what hold_to_start and colour coherence cannot take back; docs/benchmarks.md).
            again = paint(backend, depth, normal, seed=1, init=paintings[after], strength=feedback_strength,
                          faithful_encoding=True)
            figures["one_pass_colour_shift"].append(temporal.color_drift(again, paintings[after]))
        depth, normal = guides[frames[0]]
        for strength in (0.2, 0.4, 0.6, 0.8, 1.0):
            repainted = paint(backend, depth, normal, seed=7, init=paintings[frames[0]], strength=strength)
            figures["strength"][strength] = float(np.abs(repainted - paintings[frames[0]]).mean())
        summary = {key: (float(np.nanmean(values)) if isinstance(values, list) else values)
                   for key, values in figures.items()}
        report["scenes"][name] = summary
        print(f"{name}: edge recall {summary['recall']:.2f} (chance {summary['chance']:.2f}); "
              f"seed difference {summary['seeds']:.3f}; change where the scene changed "
              f"{summary['where_changed']:.3f} / where still {summary['where_still']:.3f}; "
              f"img2img std ratio {summary['std_ratio']:.2f} (faithful encoding, as feedback paints; "
              f"{summary['std_ratio_plain_encoding']:.2f} without); one feedback pass shifts the mean colour by "
              f"{summary['one_pass_colour_shift']:.2f} (CIE76); difference to the init by strength "
              + ", ".join(f"{s:g}: {d:.3f}" for s, d in summary["strength"].items()), flush=True)
    report["paint_seconds_median"] = float(np.median(paint_seconds))
    print(f"painting time, {args.width}x{args.height}, {MINI_SETTINGS['steps']} steps: "
          f"{report['paint_seconds_median']:.2f} s median ({report['machine']})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
