"""Image prompts that travel: which reference pictures (IP-Adapter) a frame blends, and with
what weight, from the keys of the Prompt panel. No ``bpy``.

Keys travel exactly as prompt keys do (``schedule.travel``, the same easing); a key's own
weight multiplies its share, and the worker scales the adapter by the sum (docs/animation.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import schedule

# Reference pictures are sent at most this large: CLIP image encoders see 224x224 (SD 1.5) or
# 224-336 (SDXL) pixels, so a larger picture only costs transfer.
MAX_REFERENCE_SIDE = 448


@dataclass(frozen=True)
class ImagePromptKey:
    frame: int
    image: object  # what names the picture (the bpy layer: a Blender image's name)
    weight: float = 1.0


def image_prompt_mix(keys, frame: int, easing: float = 1.0) -> list[tuple[object, float]]:
    """[(image, weight)] that frame ``frame`` blends; empty when no key (or only weight 0) applies."""
    keys = sorted(keys, key=lambda key: key.frame)
    mix = [(keys[index].image, keys[index].weight * share)
           for index, share in schedule.travel([key.frame for key in keys], frame, easing)]
    return [(image, weight) for image, weight in mix if weight > 0]


def reference_picture(pixels: np.ndarray) -> np.ndarray:
    """A reference picture (H, W, 3+) made small enough to send: averaged over whole blocks
    until its longer side is at most MAX_REFERENCE_SIDE. float32 (h, w, 3)."""
    data = np.asarray(pixels, dtype=np.float32)[..., :3]
    factor = -(-max(data.shape[:2]) // MAX_REFERENCE_SIDE)
    if factor > 1:
        height, width = data.shape[0] // factor * factor, data.shape[1] // factor * factor
        data = data[:height, :width].reshape(height // factor, factor, width // factor, factor, 3).mean(axis=(1, 3))
    return np.ascontiguousarray(data, dtype=np.float32)


def request_arguments(job) -> dict:
    """The image prompts of a job (``JobSettings``) as ``WorkerClient.generate`` arguments."""
    if not job.image_prompts:
        return {}
    return {"image_prompts": job.image_prompts, "ip_adapter": job.ip_adapter}
