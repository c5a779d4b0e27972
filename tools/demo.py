"""`make demo`: render the demo scene with the Silk engine: its guides, then paintings.

Writes to ``out/``:
- ``demo.blend``: the scene, to open in Blender with Silk installed;
- ``passes/frame_####.exr``: multilayer EXR with Depth, Normal, Vector, Occlusion;
- ``guides/<guide>/frame_####.png``: each guide picture exactly as Silk shows it;
- ``painted/frame_####.png``: the frames painted by Stable Diffusion (DIFFUSE mode);
- ``contact_sheet.png``: the guides and the painting for a few frames side by side.

The model is ``--model`` (``make demo MODEL=...``), by default Silk's default SD 1.5
with its depth and normal ControlNets, downloaded on first use. Where it can be
neither downloaded nor found in the cache, the demo says so and paints with
``tiny`` (random weights: noise, but the whole pipeline runs).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bpy  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from tools import demo_scene  # noqa: E402
from tools.blender_env import ROOT, load_silk, set_multilayer_exr, set_png  # noqa: E402

GUIDES = ("DEPTH", "NORMAL", "MOTION", "OCCLUSION")
COLUMNS = GUIDES + ("PAINTED",)
PROMPT = "a cosy toy room, wooden blocks and a glossy ball on a wooden floor, soft morning light, oil painting"


def render_guides(scene, out: str, frames) -> dict:
    scene.render.engine = "SILK"
    scene.silk.mode = "GUIDES"
    scene.view_settings.view_transform = "Standard"
    scene.render.dither_intensity = 0.0
    pictures = {}
    for frame in frames:
        scene.frame_set(frame)
        set_multilayer_exr(scene)
        scene.render.filepath = os.path.join(out, "passes", f"frame_{frame:04d}.exr")
        bpy.ops.render.render(write_still=True)
        for guide in GUIDES:
            scene.silk.guide_preview = guide
            set_png(scene)
            path = os.path.join(out, "guides", guide.lower(), f"frame_{frame:04d}.png")
            scene.render.filepath = path
            bpy.ops.render.render(write_still=True)
            pictures[(frame, guide)] = path
    return pictures


def render_paintings(scene, out: str, frames, model: str, steps: int) -> tuple[dict, str]:
    """Paint ``frames`` with ``model`` (falling back to tiny when it cannot be had here)."""
    from silk.engine import render_engine

    scene.silk.mode = "DIFFUSE"
    scene.silk.model = model
    scene.silk.prompt = PROMPT
    scene.silk.steps = steps or (6 if model == "tiny" else 20)  # tiny paints noise: no need to wait for it
    set_png(scene)
    pictures = {}
    for frame in frames:
        scene.frame_set(frame)
        path = os.path.join(out, "painted", f"frame_{frame:04d}.png")
        scene.render.filepath = path
        started = time.perf_counter()
        try:
            bpy.ops.render.render(write_still=True)
        except RuntimeError:
            message = next((m for level, m in render_engine.last_reports if level == "ERROR"), "render failed")
            if scene.silk.model != "tiny" and not pictures and ("hub could provide" in message
                                                                or "Cannot load the ControlNet" in message):
                print(f"The model '{model}' cannot be downloaded or found here:\n  {message}\n"
                      "Painting with 'tiny' instead (random weights: the pictures are noise).")
                return render_paintings(scene, out, frames, "tiny", steps)
            raise SystemExit(f"Silk could not paint frame {frame}: {message}")
        print(f"Painted frame {frame} with {scene.silk.model} in {time.perf_counter() - started:.1f} s")
        pictures[(frame, "PAINTED")] = path
    return pictures, scene.silk.model


def contact_sheet(pictures: dict, frames, path: str, thumb_width: int = 256) -> None:
    rows = []
    for frame in frames:
        tiles = []
        for guide in COLUMNS:
            if (frame, guide) not in pictures:
                continue
            image = cv2.imread(pictures[(frame, guide)], cv2.IMREAD_COLOR)
            scale = thumb_width / image.shape[1]
            image = cv2.resize(image, (thumb_width, int(round(image.shape[0] * scale))), interpolation=cv2.INTER_AREA)
            label = f"{guide.title()}  frame {frame}"
            cv2.putText(image, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(image, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(cv2.copyMakeBorder(image, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(40, 40, 40)))
        rows.append(np.hstack(tiles))
    cv2.imwrite(path, np.vstack(rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "out"))
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--model", default=os.environ.get("MODEL") or None,
                        help="'tiny', a hub repo id, a diffusers folder or a checkpoint (default: Silk's default)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: 20; 6 with tiny)")
    parser.add_argument("--guides-only", action="store_true", help="skip the paintings")
    parser.add_argument("--motion-module", default=os.environ.get("MOTION_MODULE") or "",
                        help="paint with a motion module ('tiny', a repo id, folder or file): each frame's window")
    args = parser.parse_args(argv)
    os.environ.setdefault("SILK_WORKER_PYTHON", os.path.join(ROOT, ".venv", "bin", "python"))

    load_silk()
    started = time.perf_counter()
    scene = demo_scene.build(args.width, args.height)
    scene.silk.motion_module = args.motion_module
    os.makedirs(args.out, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=os.path.join(args.out, "demo.blend"))
    pictures = render_guides(scene, args.out, demo_scene.FRAMES)
    print(f"Rendered the guides of {len(demo_scene.FRAMES)} frames in {time.perf_counter() - started:.1f} s")
    if not args.guides_only:
        from silk.engine import diffusion_job, worker_link

        painted, model = render_paintings(scene, args.out, demo_scene.FRAMES, args.model or diffusion_job.DEFAULT_MODEL,
                                          args.steps)
        pictures.update(painted)
        worker_link.unregister()  # stop the worker
        print(f"Painted {len(demo_scene.FRAMES)} frames with {model}: {os.path.join(args.out, 'painted')}")
    sheet = os.path.join(args.out, "contact_sheet.png")
    contact_sheet(pictures, demo_scene.FRAMES, sheet)
    print(f"Contact sheet: {sheet}")


if __name__ == "__main__":
    main()
