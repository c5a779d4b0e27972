"""`make demo`: render the demo scene's guides with the Silk engine.

Writes to ``out/``:
- ``demo.blend``: the scene, to open in Blender with Silk installed;
- ``passes/frame_####.exr``: multilayer EXR with Depth, Normal, Vector, Occlusion;
- ``guides/<guide>/frame_####.png``: each guide picture exactly as Silk shows it;
- ``contact_sheet.png``: all guides for a few frames side by side.
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


def contact_sheet(pictures: dict, frames, path: str, thumb_width: int = 256) -> None:
    rows = []
    for frame in frames:
        tiles = []
        for guide in GUIDES:
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
    args = parser.parse_args(argv)

    load_silk()
    started = time.perf_counter()
    scene = demo_scene.build(args.width, args.height)
    os.makedirs(args.out, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=os.path.join(args.out, "demo.blend"))
    pictures = render_guides(scene, args.out, demo_scene.FRAMES)
    sheet = os.path.join(args.out, "contact_sheet.png")
    contact_sheet(pictures, demo_scene.FRAMES, sheet)
    print(f"Rendered the guides of {len(demo_scene.FRAMES)} frames in {time.perf_counter() - started:.1f} s")
    print(f"Contact sheet: {sheet}")


if __name__ == "__main__":
    main()
