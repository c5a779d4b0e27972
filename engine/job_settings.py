"""Copy ``scene.silk`` (at the current frame) into plain ``JobSettings`` and
``TemporalSettings``; find the shot a frame belongs to.

The only ``bpy`` step between the scene and a worker request; every value is read
when the frame renders, so keyframes and drivers apply.
"""
from __future__ import annotations

import bpy
import numpy as np

from . import diffusion_job, schedule, walk_settings, worker_link
from .color import linear_to_srgb
from .animation import TemporalSettings
from .diffusion_job import JobSettings, JobSettingsError, UnitSettings
from ..bridge import families

KNOWN_SCHEDULERS = set(families.SAMPLER_IDS)


def from_scene(scene) -> JobSettings:
    settings = scene.silk
    if not settings.units_initialized and not len(settings.units):
        units = [UnitSettings(kind=kind, source=kind) for kind in families.DEFAULT_UNIT_KINDS]
    else:
        units = [_unit(unit) for unit in settings.units if unit.enabled]
    scheduler = settings.scheduler
    if scheduler not in KNOWN_SCHEDULERS:
        # An enum value this version does not know, e.g. from a file saved by a newer Silk.
        raise JobSettingsError(f"Unknown sampler {scheduler or '(none)'!r}: choose one in Silk's Sampling panel")
    device, precision = worker_link.device_setting()
    prompt, negative_prompt, prompt_mix = settings.prompt, settings.negative_prompt, []
    keys = [schedule.PromptKey(key.frame, key.prompt, key.negative_prompt) for key in settings.prompt_keys]
    if keys:
        mix = schedule.prompt_mix(keys, scene.frame_current, settings.prompt_easing)
        prompt, negative_prompt = mix[0][0], mix[0][1]
        if len(mix) > 1:
            prompt_mix = [{"prompt": p, "negative_prompt": n, "weight": w} for p, n, w in mix]
    image_prompts, ip_adapter = walk_settings.image_prompts(scene)
    model = _model_source(settings.model)
    return JobSettings(
        model=model, family=settings.model_family, units=units,
        reported_family=worker_link.loaded.get("family") if worker_link.loaded.get("source") == model else None,
        loras=[(bpy.path.abspath(lora.path), lora.weight) for lora in settings.loras if lora.enabled and lora.path],
        prompt=prompt, negative_prompt=negative_prompt, prompt_mix=prompt_mix, seed=settings.seed,
        steps=settings.steps, guidance=settings.guidance_scale, scheduler=scheduler, device=device, precision=precision,
        attention_slicing=settings.attention_slicing, vae_tiling=settings.vae_tiling,
        cpu_offload=settings.cpu_offload, image_prompts=image_prompts, ip_adapter=ip_adapter)


def _model_source(model: str) -> str:
    model = model.strip()
    if model.startswith("//"):  # relative to the .blend file
        return bpy.path.abspath(model)
    return model


def _unit(unit) -> UnitSettings:
    needs_image = unit.kind == "IMAGE" or (unit.kind not in ("DEPTH", "NORMAL") and unit.source == "IMAGE")
    image = _image_pixels(unit.image) if needs_image and unit.image is not None else None
    return UnitSettings(kind=unit.kind, source=unit.source, controlnet=bpy.path.abspath(unit.controlnet)
                        if unit.controlnet.startswith("//") else unit.controlnet,
                        weight=unit.weight, start=unit.start, end=unit.end, image=image,
                        low_threshold=unit.low_threshold, high_threshold=unit.high_threshold)


def _image_pixels(image) -> np.ndarray:
    """An image's pixels as display sRGB, rows top-down."""
    width, height = image.size
    if width == 0 or height == 0:
        raise JobSettingsError(f"The image '{image.name}' has no pixels (is its file missing?)")
    pixels = np.empty(width * height * image.channels, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    pixels = pixels.reshape(height, width, image.channels)[::-1]
    if image.channels < 3:
        pixels = np.repeat(pixels[..., :1], 3, axis=2)
    rgb = pixels[..., :3]
    # Float images hold scene-linear values; byte images hold their file's (sRGB) values.
    return linear_to_srgb(rgb) if image.is_float else np.ascontiguousarray(rgb)


def temporal_from_scene(scene) -> TemporalSettings:
    settings = scene.silk
    return TemporalSettings(
        use_feedback=settings.use_feedback, strength=settings.strength, fusion=settings.fusion,
        fusion_end=settings.fusion_end, noise_mode=settings.noise_mode, color_coherence=settings.color_coherence,
        faithful_encoding=settings.use_faithful_encoding, hold_to_start=settings.hold_to_start,
        cadence=settings.cadence, use_loop=settings.use_loop, loop_frames=settings.loop_frames,
        noise_drift=settings.noise_drift, loop_turns=settings.loop_turns,
        drift_angle_at=walk_settings.drift_angle_reader(scene))


SHOT_MARKER_PREFIX = "shot"


def shot_cuts(scene) -> list[int]:
    """Frames where feedback restarts: camera changes (camera-bound markers) and markers
    the user named "Shot..." (Silk's 'Mark Shot Start' adds one)."""
    cuts = []
    previous_camera = None
    for marker in sorted(scene.timeline_markers, key=lambda marker: marker.frame):
        if marker.camera is not None:
            if marker.camera != previous_camera:
                cuts.append(marker.frame)
            previous_camera = marker.camera
        elif marker.name.lower().startswith(SHOT_MARKER_PREFIX):
            cuts.append(marker.frame)
    return cuts


def shot_of(scene, frame: int) -> schedule.Shot:
    return schedule.shot_of(frame, min(scene.frame_start, frame), max(scene.frame_end, frame), shot_cuts(scene))
