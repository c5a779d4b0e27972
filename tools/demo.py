"""`make demo`: render the demo scene with the Silk engine: its guides, then paintings.

Writes to ``out/``:
- ``demo.blend``: the scene, to open in Blender with Silk installed;
- ``passes/frame_####.exr``: multilayer EXR with Depth, Normal, Vector, Occlusion;
- ``guides/<guide>/frame_####.png``: each guide picture exactly as Silk shows it;
- ``painted/frame_####.png``: the frames painted by Stable Diffusion (DIFFUSE mode);
- ``contact_sheet.png``: the guides and the painting for a few frames side by side;
- ``animation/<mode>/frame_####.png`` and ``demo.gif``: the shot rendered as an animation
  twice, every frame painted on its own (fixed seed) and with feedback (Silk's default),
  side by side.

The model is ``--model`` (``make demo MODEL=...``), by default Silk's default SD 1.5
with its depth and normal ControlNets, downloaded on first use. Where it can be
neither downloaded nor found in the cache, the demo says so in one line and paints with
``mini``, the small model Silk trains itself (tools/mini), where its weights are in
models/mini, else with ``tiny`` (random weights: noise, but the whole pipeline runs).
"""
import argparse
import contextlib
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bpy  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from tools import demo_scene  # noqa: E402
from tools.blender_env import ROOT, load_silk, set_multilayer_exr, set_png  # noqa: E402

from tools.mini import MINI_PROMPT, MINI_SETTINGS  # noqa: E402

GUIDES = ("DEPTH", "NORMAL", "MOTION", "OCCLUSION")
ANIMATION_MODES = (("independent frames", dict(use_feedback=False, noise_mode="FIXED")),
                   ("with feedback", dict(use_feedback=True)))
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


def use_model(scene, model: str, steps) -> None:
    silk = scene.silk
    silk.model = model
    if model in ("mini", "tiny"):  # the small models' own settings (mini was trained without negative prompts)
        silk.prompt, silk.negative_prompt = MINI_PROMPT, ""
        silk.steps = steps or (MINI_SETTINGS["steps"] if model == "mini" else 6)
        silk.guidance_scale = MINI_SETTINGS["guidance"]
        silk.scheduler = MINI_SETTINGS["scheduler"]
    else:
        silk.prompt = PROMPT
        silk.steps = steps or 20


def fallback_model() -> str:
    """mini where its weights are in the checkout (models/mini), else tiny."""
    from silk.bridge import tiny_model

    return "mini" if os.path.exists(os.path.join(tiny_model.MINI_PATH, "model_index.json")) else "tiny"


def cannot_load(message: str) -> bool:
    return "hub could provide" in message or "Cannot load the ControlNet" in message


@contextlib.contextmanager
def held_output(replay_unless=None):
    """Hold what Blender and the engine print (file descriptors 1 and 2) while the block runs and
    print it afterwards, except when the block fails with a report ``replay_unless`` accepts: the
    demo then says what it does in one line of its own, not Blender's error lines before it."""
    if replay_unless is None:
        yield
        return
    from silk.engine import render_engine

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 1)
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except RuntimeError:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)
            report = next((m for level, m in render_engine.last_reports if level == "ERROR"), "")
            if not (failed and replay_unless(report)):
                held.seek(0)
                sys.stdout.write(held.read().decode(errors="replace"))
                sys.stdout.flush()


def render_paintings(scene, out: str, frames, model: str, steps) -> tuple[dict, str]:
    """Paint ``frames`` with ``model`` (falling back to mini when it cannot be had here)."""
    from silk.engine import render_engine

    scene.silk.mode = "DIFFUSE"
    use_model(scene, model, steps)
    set_png(scene)
    pictures = {}
    for frame in frames:
        scene.frame_set(frame)
        path = os.path.join(out, "painted", f"frame_{frame:04d}.png")
        scene.render.filepath = path
        started = time.perf_counter()
        first_try = model not in ("mini", "tiny") and not pictures
        try:
            with held_output(replay_unless=cannot_load if first_try else None):
                bpy.ops.render.render(write_still=True)
        except RuntimeError:
            message = next((m for level, m in render_engine.last_reports if level == "ERROR"), "render failed")
            if first_try and cannot_load(message):
                fallback = fallback_model()
                what = "Silk's own small offline model" if fallback == "mini" else "random weights: noise"
                print(f"The model '{model}' cannot be downloaded or found here: painting with '{fallback}' ({what}).")
                return render_paintings(scene, out, frames, fallback, steps)
            raise SystemExit(f"Silk could not paint frame {frame}: {message}")
        print(f"Painted frame {frame} with {scene.silk.model} in {time.perf_counter() - started:.1f} s")
        pictures[(frame, "PAINTED")] = path
    return pictures, scene.silk.model


def animation_modes(motion_module: str | None) -> tuple:
    """The modes painted side by side; with a motion module, a third column painted in its windows."""
    if not motion_module:
        return ANIMATION_MODES
    return ANIMATION_MODES + (("motion module", dict(use_feedback=True, motion_module=motion_module)),)


def render_animation(scene, out: str, width: int, height: int, frame_step: int, modes=ANIMATION_MODES) -> dict:
    """The shot as an animation render, once per mode; {mode: [png paths]}."""
    size = scene.render.resolution_x, scene.render.resolution_y, scene.frame_step
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.frame_step = frame_step
    set_png(scene)
    paths = {}
    try:
        for label, settings in modes:
            for name, value in settings.items():
                setattr(scene.silk, name, value)
            folder = os.path.join(out, "animation", label.replace(" ", "_"))
            scene.render.filepath = os.path.join(folder, "frame_")
            started = time.perf_counter()
            bpy.ops.render.render(animation=True)
            frames = range(scene.frame_start, scene.frame_end + 1, frame_step)
            paths[label] = [os.path.join(folder, f"frame_{frame:04d}.png") for frame in frames]
            print(f"Painted the shot {label} ({len(paths[label])} frames, {width}x{height}) in "
                  f"{time.perf_counter() - started:.0f} s")
    finally:
        scene.render.resolution_x, scene.render.resolution_y, scene.frame_step = size
        scene.silk.motion_module = ""
    return paths


def side_by_side_gif(paths: dict, model: str, path: str, frame_ms: int = 125) -> None:
    """The modes' frames side by side, each labelled, as an endlessly looping GIF."""
    from PIL import Image, ImageDraw

    labels = list(paths)
    frames = []
    for index in range(len(paths[labels[0]])):
        tiles = [Image.open(paths[label][index]).convert("RGB") for label in labels]
        width, height = tiles[0].size
        canvas = Image.new("RGB", (width * len(tiles) + 4 * (len(tiles) - 1), height + 18), (30, 30, 30))
        draw = ImageDraw.Draw(canvas)
        for column, (label, tile) in enumerate(zip(labels, tiles)):
            x = column * (width + 4)
            canvas.paste(tile, (x, 18))
            draw.text((x + 4, 3), f"{label} ({model})", fill=(235, 235, 235))
        frames.append(canvas)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0, optimize=True)


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
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: 20; mini: 12)")
    parser.add_argument("--guides-only", action="store_true", help="skip the paintings")
    parser.add_argument("--animation-size", default="256x192", help="size of the animation frames")
    # Every frame by default: a frame step makes Silk warn (cadence is its way to skip frames).
    parser.add_argument("--frame-step", type=int, default=1, help="animate every n-th frame of the 48")
    parser.add_argument("--motion-module", default=os.environ.get("MOTION_MODULE") or None,
                        help="also paint the shot with this motion module ('tiny', a hub id, folder or file)")
    args = parser.parse_args(argv)
    os.environ.setdefault("SILK_WORKER_PYTHON", os.path.join(ROOT, ".venv", "bin", "python"))

    load_silk()
    started = time.perf_counter()
    scene = demo_scene.build(args.width, args.height)
    os.makedirs(args.out, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=os.path.join(args.out, "demo.blend"))
    pictures = render_guides(scene, args.out, demo_scene.FRAMES)
    print(f"Rendered the guides of {len(demo_scene.FRAMES)} frames in {time.perf_counter() - started:.1f} s")
    if not args.guides_only:
        from silk.engine import diffusion_job, worker_link

        painted, model = render_paintings(scene, args.out, demo_scene.FRAMES, args.model or diffusion_job.DEFAULT_MODEL,
                                          args.steps)
        pictures.update(painted)
        print(f"Painted {len(demo_scene.FRAMES)} frames with {model}: {os.path.join(args.out, 'painted')}")
        width, height = (int(value) for value in args.animation_size.split("x"))
        animation = render_animation(scene, args.out, width, height, args.frame_step,
                                     animation_modes(args.motion_module))
        worker_link.unregister()  # stop the worker
        gif = os.path.join(args.out, "demo.gif")
        side_by_side_gif(animation, model, gif, frame_ms=63 * args.frame_step)  # the shot in 3 s
        print(f"Animation, independent frames and with feedback side by side: {gif}")
    sheet = os.path.join(args.out, "contact_sheet.png")
    contact_sheet(pictures, demo_scene.FRAMES, sheet)
    print(f"Contact sheet: {sheet}")


if __name__ == "__main__":
    main()
