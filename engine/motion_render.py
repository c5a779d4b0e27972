"""Rendering with a motion module: the ``bpy`` glue between the render engine and
``windows.WindowPainter`` (the logic lives there, without ``bpy``).

On the first frame of a window the engine evaluates every frame of the window, computes its
guides and sends ONE ``generate_video`` request; the later frames of the window are written
from what came back.
"""
from __future__ import annotations

import os

import bpy
import numpy as np

from ..bridge.client import JobCancelled
from . import animation, diffusion_job, job_settings, windows
from .color import srgb_to_linear


def wanted(scene) -> bool:
    """Whether this scene paints with a motion module (its setting is not empty)."""
    return bool(getattr(scene.silk, "motion_module", "").strip())


def motion_request(scene) -> dict:
    """The worker's ``motion`` field: the module and its enabled motion LoRAs."""
    settings = scene.silk
    source = job_settings._model_source(settings.motion_module)  # "//..." is relative to the .blend file
    loras = [{"path": bpy.path.abspath(lora.path), "weight": float(lora.weight)}
             for lora in settings.motion_loras if lora.enabled and lora.path]
    for lora in loras:
        if not os.path.isfile(lora["path"]):
            raise diffusion_job.JobSettingsError(f"The motion LoRA file '{lora['path']}' does not exist")
    request = {"source": source}
    if loras:
        request["loras"] = loras
    return request


def window_settings(scene, temporal) -> windows.WindowSettings:
    settings = scene.silk
    return windows.WindowSettings(context_frames=settings.context_frames, context_overlap=settings.context_overlap,
                                  strength=temporal.strength, use_loop=temporal.use_loop)


def take_label(job, scene, model: str) -> str:
    settings = scene.silk
    return " | ".join([f"seed {job.seed}", f"motion {os.path.basename(settings.motion_module.strip().rstrip('/'))}",
                       f"ctx {settings.context_frames}/{settings.context_overlap}",
                       os.path.basename(model.rstrip("/"))])


def paint(engine, frames, session, worker, model: dict, result, combined) -> animation.Painted:
    """The current frame's picture, painting its window (one request) when it is needed.
    ``frames`` is the render's ``SceneFrames`` (guides, settings and motion at any frame),
    ``session`` the ``animation.RenderSession`` (depth ranges, loop rewrites)."""
    scene = frames.scene
    frame = scene.frame_current
    height, width = frames.height, frames.width
    settings = frames.settings(frame)
    normalization = scene.silk.depth_normalization
    depth_range = session.depth_range(frames, frame, frames.guides(frame, None), normalization)
    motion = motion_request(scene)
    if not frames.is_animation:
        windows.forget_all()  # F12 always paints anew: the user re-renders to see a change

    def paint_window(window, start):
        count = len(window.frames)
        engine.update_stats("Silk", f"Evaluating the {count} frames of window {window.frames[0]}-{window.frames[-1]}")
        first_job = frames.settings(window.first).job  # the window's settings are its first frame's
        videos, prompts, previous_prompt = None, {}, None
        for position, number in enumerate(window.frames):
            if engine._should_cancel():
                raise JobCancelled("Cancelled")
            units = diffusion_job.control_units(first_job, frames.guides(number, None), depth_range)
            if videos is None:
                annotated = [unit.kind for unit in first_job.units if diffusion_job.ANNOTATORS.get(unit.kind)]
                if annotated:
                    raise diffusion_job.JobSettingsError(
                        f"The {annotated[0].title()} unit cannot steer a motion module yet (annotators do not run "
                        "on videos): use Depth, Normal and Image units, or clear the Motion Module")
                videos = [{"image": np.empty((count,) + np.shape(unit.image), np.float32), "weight": unit.weight,
                           "start": unit.start, "end": unit.end} for unit in units]
            for video, unit in zip(videos, units):
                video["image"][position] = unit.image
            prompt = frames.settings(number).job.prompt
            if prompt != previous_prompt:
                prompts[position], previous_prompt = prompt, prompt
        label = f"window {window.frames[0]}-{window.frames[-1]} | {motion['source']}"

        def on_progress(progress):
            engine.update_progress(progress.step / max(1, progress.steps))
            engine.update_stats("Silk", f"Step {progress.step}/{progress.steps} | {label}")
            if progress.preview is not None and window.first == frame:
                combined[..., :3] = srgb_to_linear(diffusion_job.upscale_preview(progress.preview, height, width))
                engine._write_passes(result, {"Combined": combined})
                engine.update_result(result)

        extra = {}
        if start is not None:
            extra.update(init_video=start.init_video, masks=start.masks, strength=float(start.masks.max()))
        engine.update_stats("Silk", f"Painting {label}")
        pictures, _info = worker.generate_video(
            model.to_json() if hasattr(model, "to_json") else model, motion, first_job.prompt, videos, width, height, count,
            prompts=prompts if len(prompts) > 1 else None, negative_prompt=first_job.negative_prompt,
            seed=first_job.seed, steps=first_job.steps, guidance=first_job.guidance, scheduler=first_job.scheduler,
            preview=True, on_progress=on_progress, should_cancel=engine._should_cancel, **extra)
        return pictures

    def motion_between(number: int, other: int):
        found = frames.guides(number, other)
        return found.vector, found.occlusion

    def frame_path(number: int) -> str:
        return frames.output_file(number) if frames.is_animation else ""

    painter = windows.WindowPainter(
        frames.shot(frame), window_settings(scene, settings.temporal), (session.number,) + tuple(frames.take_key),
        width, height, paint_window, motion_between, frame_path,
        rewrite_fn=lambda number, picture: session.rewrite(frames.name, number, picture),
        reuse_saved=bool(frames.is_animation and not scene.render.use_overwrite))
    return animation.Painted(painter.picture(frame))
