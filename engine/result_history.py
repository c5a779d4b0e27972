"""F12 results kept as image datablocks the user can step back through.

``render()`` runs on the render thread, where datablocks must not be made: it only
queues the pixels; a ``render_complete`` / ``render_cancel`` handler (main thread)
turns them into images named after the scene and frame, keeps the newest
``scene.silk.history_length`` of them, and shows the newest in every open Image
Editor except those pinned to another image or showing the Render Result.
"""
from __future__ import annotations

import threading

import bpy
import numpy as np

from .color import srgb_to_linear

HISTORY_KEY = "silk_history"  # custom property: the result's number, newest highest
_pending: list = []
_pending_lock = threading.Lock()


def queue(scene, combined: np.ndarray) -> None:
    """Keep a finished frame (scene-linear RGBA, rows top-down) for the history."""
    with _pending_lock:
        _pending.append((scene.name, scene.frame_current, np.array(combined, dtype=np.float32, copy=True)))


def history_images(scene_name: str | None = None) -> list:
    """Silk's result images, oldest first (optionally of one scene)."""
    images = [image for image in bpy.data.images if HISTORY_KEY in image.keys()
              and (scene_name is None or image.get("silk_scene") == scene_name)]
    return sorted(images, key=lambda image: image[HISTORY_KEY])


@bpy.app.handlers.persistent
def flush(*_args) -> None:
    with _pending_lock:
        pending = _pending[:]
        _pending.clear()
    for scene_name, frame, combined in pending:
        show(_store(scene_name, frame, combined))
        _trim(scene_name)


def write_pixels(image, rgba: np.ndarray) -> None:
    """Fill a float image from scene-linear RGBA rows top-down (images are stored bottom-up)."""
    image.pixels.foreach_set(np.ascontiguousarray(rgba[::-1], dtype=np.float32).reshape(-1))


def write_picture(image, picture: np.ndarray) -> None:
    """Fill a float image from a display-sRGB picture (the worker's), rows top-down."""
    height, width = picture.shape[:2]
    rgba = np.ones((height, width, 4), dtype=np.float32)
    rgba[..., :3] = srgb_to_linear(picture[..., :3])
    write_pixels(image, rgba)


def _store(scene_name: str, frame: int, combined: np.ndarray):
    existing = history_images(scene_name)
    number = (existing[-1][HISTORY_KEY] + 1) if existing else 1
    height, width = combined.shape[:2]
    image = bpy.data.images.new(f"Silk {scene_name} {frame:04d} #{number}", width, height, alpha=True,
                                float_buffer=True)
    write_pixels(image, combined)
    image.pack()  # survives saving the .blend without a file on disk
    image[HISTORY_KEY] = number
    image["silk_scene"] = scene_name
    image["silk_frame"] = frame
    return image


def _trim(scene_name: str) -> None:
    scene = bpy.data.scenes.get(scene_name)
    keep = scene.silk.history_length if scene is not None else 8
    for old in history_images(scene_name)[:-keep]:
        if old.users == 0:
            bpy.data.images.remove(old)
        else:
            del old[HISTORY_KEY]  # in use elsewhere (a material, a pinned editor): keep it, out of the history


def image_editors():
    manager = bpy.context.window_manager
    for window in getattr(manager, "windows", ()):
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                yield area, area.spaces.active


def show(image) -> None:
    for area, space in image_editors():
        shown = space.image
        if space.use_image_pin and shown is not None and shown != image:
            continue
        if shown is not None and shown.type == "RENDER_RESULT":
            continue  # the render window keeps showing the render
        space.image = image
        area.tag_redraw()


def step(space, direction: int):
    """The history image ``direction`` steps from the one ``space`` shows (None at the ends)."""
    shown = space.image
    scene_name = shown.get("silk_scene") if shown is not None and HISTORY_KEY in shown.keys() else None
    images = history_images(scene_name)
    if not images:
        return None
    if shown not in images:
        return images[-1]
    index = images.index(shown) + direction
    return images[index] if 0 <= index < len(images) else None


def register():
    for handlers in (bpy.app.handlers.render_complete, bpy.app.handlers.render_cancel):
        if flush not in handlers:
            handlers.append(flush)


def unregister():
    for handlers in (bpy.app.handlers.render_complete, bpy.app.handlers.render_cancel):
        if flush in handlers:
            handlers.remove(flush)
    with _pending_lock:
        _pending.clear()
