"""A finished animation render becomes a take in the Video Sequencer.

``render()`` (render thread) only records what it painted (in the render session); when the job ends a
``render_complete`` handler (main thread) writes the frames a looping shot repainted,
then adds the take to an editing scene of its own, "<scene> Silk Takes" (so the
rendered scene's own render is never replaced by its sequencer): one channel per take,
the strip named with the take number and the settings; rendering the same range to the
same output again (after a change, or resuming an interrupted render) replaces that
take's strip. Blender 4.2-4.3 call strips "sequences", 4.4+ "strips".
"""
from __future__ import annotations

import os

import bpy
import numpy as np

from . import exr_output, render_engine
from .color import srgb_to_linear
from .result_history import write_picture

TAKE_KEY = "silk_take"
RANGE_KEY = "silk_range"
OUTPUT_KEY = "silk_output"  # the render's output path: a take is a range rendered to one place


def record(scene, frame: int, label: str) -> None:
    """An animation frame was painted (called from render())."""
    render_engine.session.record(scene.name, frame, label)


def rewrite(scene, frame: int, picture: np.ndarray) -> None:
    """Save ``picture`` over frame ``frame``'s file when the job ends (a loop's cross-fade)."""
    render_engine.session.rewrite(scene.name, frame, picture)


def editing_scene_name(scene_name: str) -> str:
    return f"{scene_name} Silk Takes"


def _strips(editor):
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def _all_strips(editor):
    return editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all


@bpy.app.handlers.persistent
def finish_job(*_args) -> None:
    """The job ended (complete or cancelled): a cancelled or failed job still shows its
    finished frames as a take; resuming the range later replaces that strip."""
    for entry in render_engine.session.drain_records():
        scene = bpy.data.scenes.get(entry.scene_name)
        if scene is None:
            continue
        for frame, picture in sorted(entry.rewrites.items()):
            try:
                _save_frame(scene, frame, picture)
            except (OSError, RuntimeError) as error:  # the rendered frame stays as it was
                render_engine.last_reports.append(("ERROR", f"Loop frame {frame} was not saved: {error}"))
                print(f"Silk: loop frame {frame} was not saved: {error}")
        if entry.frames:
            add_take(scene, entry.label)


MULTILAYER_EXR = "OPEN_EXR_MULTILAYER"


def image_io():
    """Blender's OpenImageIO module (rewrites EXR frames), or None."""
    return exr_output.open_image_io(os.path.join(bpy.utils.resource_path("LOCAL"), "python"))


def loop_output_problem(scene) -> str:
    """Why a loop's repainted first frames could not be saved over their files ("" if they can)."""
    render = scene.render
    if render.is_movie_format:
        # A movie has no file per frame to save over (and rewriting it would lose the render).
        return "the output is a movie. Render to an image sequence (PNG, EXR) and encode the movie from it"
    if render.image_settings.file_format == MULTILAYER_EXR and image_io() is None:
        return ("the output is a multilayer EXR and this Blender has no OpenImageIO module to rewrite it. "
                "Render to PNG or single-layer EXR")
    return ""


def _save_frame(scene, frame: int, picture: np.ndarray) -> None:
    path = scene.render.frame_path(frame=frame)
    height, width = picture.shape[:2]
    oiio = image_io() if scene.render.image_settings.file_format in (MULTILAYER_EXR, "OPEN_EXR") else None
    if oiio is not None and os.path.exists(path):
        # The Combined pass as render() wrote it: scene-linear, opaque; the other passes stay.
        rgba = np.ones((height, width, 4), dtype=np.float32)
        rgba[..., :3] = srgb_to_linear(picture[..., :3])
        exr_output.replace_combined(oiio, path, rgba)
        return
    image = bpy.data.images.new("Silk loop frame", width, height, alpha=True, float_buffer=True)
    try:
        write_picture(image, picture)
        image.save_render(path, scene=scene)  # the scene's file format and colour management
    finally:
        bpy.data.images.remove(image)


def take_files(scene) -> tuple[int, list[str]]:
    """The first frame and the files of the range's finished frames (contiguous from the start)."""
    render = scene.render
    if render.is_movie_format:
        path = render.frame_path(frame=scene.frame_start)
        return scene.frame_start, [path] if os.path.exists(path) else []
    files = []
    for frame in range(scene.frame_start, scene.frame_end + 1):
        path = render.frame_path(frame=frame)
        if not os.path.exists(path):
            break
        files.append(path)
    return scene.frame_start, files


def add_take(scene, label: str):
    """Put the range's frames into the editing scene's sequencer; returns the strip."""
    start, files = take_files(scene)
    return place_take(scene, label, start, files, [scene.frame_start, scene.frame_end],
                      bpy.path.abspath(scene.render.filepath), scene.render.is_movie_format)


def place_take(scene, label: str, start: int, files: list, frame_range: list, output: str, movie: bool = False):
    """Put ``files`` (frames from ``start`` on, or one movie) into the editing scene's
    sequencer as the take of ``frame_range`` rendered to ``output``; returns the strip."""
    if not files:
        return None
    editing = bpy.data.scenes.get(editing_scene_name(scene.name))
    if editing is None:
        editing = bpy.data.scenes.new(editing_scene_name(scene.name))
    editing.render.resolution_x = scene.render.resolution_x
    editing.render.resolution_y = scene.render.resolution_y
    editing.render.resolution_percentage = scene.render.resolution_percentage
    editing.render.fps, editing.render.fps_base = scene.render.fps, scene.render.fps_base
    editor = editing.sequence_editor or editing.sequence_editor_create()
    strips = _strips(editor)
    frame_range = list(frame_range)
    existing = [strip for strip in _all_strips(editor) if TAKE_KEY in strip.keys()]
    same_range = [strip for strip in existing
                  if list(strip.get(RANGE_KEY, [])) == frame_range and strip.get(OUTPUT_KEY) == output]
    if same_range:
        take = int(same_range[0][TAKE_KEY])
        channel = same_range[0].channel
        for strip in same_range:
            strips.remove(strip)
    else:
        take = max((int(strip[TAKE_KEY]) for strip in existing), default=0) + 1
        channel = min(take, 128)
    name = f"Take {take} | {label}"[:63]
    if movie:
        strip = strips.new_movie(name, files[0], channel, start)
    else:
        strip = strips.new_image(name, files[0], channel, start)
        for path in files[1:]:
            strip.elements.append(os.path.basename(path))
    strip[TAKE_KEY] = take
    strip[RANGE_KEY] = frame_range
    strip[OUTPUT_KEY] = output
    editing.frame_start = min(editing.frame_start, start) if existing else start
    editing.frame_end = max(editing.frame_end, start + len(files) - 1) if existing else start + len(files) - 1
    return strip


def register():
    for handlers in (bpy.app.handlers.render_complete, bpy.app.handlers.render_cancel):
        if finish_job not in handlers:
            handlers.append(finish_job)


def unregister():
    for handlers in (bpy.app.handlers.render_complete, bpy.app.handlers.render_cancel):
        if finish_job in handlers:
            handlers.remove(finish_job)
    render_engine.session.drain_records()
