"""From the guides and the scene's Silk settings to one request for the worker. No ``bpy``.

The ``bpy`` layer copies ``scene.silk`` into the plain ``UnitSettings`` /
``JobSettings`` below; everything else (which ControlNet each unit needs, which
picture it sees, what the worker is asked) is decided here, where it is tested in
milliseconds.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from . import conditioning

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_UNIT_KINDS = ("DEPTH", "NORMAL")

# The ControlNet each unit type uses unless the unit names its own, per model family.
DEFAULT_CONTROLNETS = {
    "sd15": {
        "DEPTH": "lllyasviel/control_v11f1p_sd15_depth",
        "NORMAL": "lllyasviel/control_v11p_sd15_normalbae",
        "CANNY": "lllyasviel/control_v11p_sd15_canny",
        "LINEART": "lllyasviel/control_v11p_sd15_lineart",
        "SOFTEDGE": "lllyasviel/control_v11p_sd15_softedge",
        "OPENPOSE": "lllyasviel/control_v11p_sd15_openpose",
    },
    "sdxl": {
        "DEPTH": "diffusers/controlnet-depth-sdxl-1.0",
        "CANNY": "diffusers/controlnet-canny-sdxl-1.0",
        "OPENPOSE": "thibaud/controlnet-openpose-sdxl-1.0",
    },
}
# The worker's names for the annotators that make a unit's picture.
ANNOTATORS = {"CANNY": "canny", "LINEART": "lineart", "SOFTEDGE": "hed", "OPENPOSE": "openpose"}


class JobSettingsError(Exception):
    """Settings that cannot make a picture, worded for the render report."""


@dataclass
class UnitSettings:
    kind: str = "DEPTH"
    source: str = "DEPTH"  # for annotator units: DEPTH or NORMAL guide, or IMAGE
    controlnet: str = ""
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    image: np.ndarray | None = None  # display sRGB, (H, W, 3 or 4), rows top-down
    low_threshold: int = 100
    high_threshold: int = 200


@dataclass
class JobSettings:
    model: str = DEFAULT_MODEL
    family: str = "AUTO"
    units: list = field(default_factory=list)
    loras: list = field(default_factory=list)  # [(path, weight)]
    prompt: str = ""
    negative_prompt: str = ""
    # Prompt travel: [{"prompt", "negative_prompt", "weight"}], weights summing to 1 (empty: ``prompt``).
    prompt_mix: list = field(default_factory=list)
    seed: int = 0
    steps: int = 20
    guidance: float = 7.0
    scheduler: str = "euler"
    device: str = "auto"
    precision: str = "auto"
    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False


def model_family(model: str, family: str = "AUTO") -> str:
    if family in ("SD15", "SDXL"):
        return family.lower()
    name = os.path.basename(model.rstrip("/\\"))
    # "juggernautXL", "sd_xl_base", "stable-diffusion-xl": an upper-case XL, or xl standing alone.
    return "sdxl" if re.search(r"XL|sdxl|(^|[^a-z])xl([^a-z]|$)", name) or "sdxl" in name.lower() else "sd15"


def controlnet_for(unit: UnitSettings, model: str, family: str) -> str:
    """The ControlNet a unit loads: its own, the tiny model's, or the family default."""
    if unit.controlnet.strip():
        return unit.controlnet.strip()
    if model in ("tiny", "mini"):
        # Each has a depth and a normal ControlNet; other types share the depth one.
        return f"{model}:normal" if unit.kind == "NORMAL" else f"{model}:depth"
    if model == "tiny-xl":
        return "tiny-xl:depth"  # tiny-xl has one (depth) ControlNet, like real SDXL has no normal one
    found = DEFAULT_CONTROLNETS[family].get(unit.kind)
    if found is None:
        label = "SDXL" if family == "sdxl" else "SD 1.5"
        raise JobSettingsError(f"There is no default {label} ControlNet for the {unit.kind.title()} unit; "
                               "give one in the unit's ControlNet field (a hub repo id or a folder)")
    return found


def model_request(settings: JobSettings) -> dict:
    model = settings.model.strip()
    if not model:
        raise JobSettingsError("No model is set: choose 'tiny', a hub repo id, a diffusers folder or a checkpoint file")
    if not settings.units:
        raise JobSettingsError("No ControlNet unit is enabled: add one in Silk's ControlNet panel")
    family = model_family(model, settings.family)
    request = {
        "source": model,
        "controlnets": [controlnet_for(unit, model, family) for unit in settings.units],
        "device": settings.device, "precision": settings.precision,
        "attention_slicing": settings.attention_slicing, "vae_tiling": settings.vae_tiling,
        "cpu_offload": settings.cpu_offload,
    }
    if settings.family != "AUTO":
        request["family"] = family
    loras = [{"path": path, "weight": float(weight)} for path, weight in settings.loras]
    for lora in loras:
        if not os.path.isfile(lora["path"]):
            raise JobSettingsError(f"The LoRA file '{lora['path']}' does not exist")
    if loras:
        request["loras"] = loras
    return request


def unit_picture(unit: UnitSettings, guides, depth_range: conditioning.DepthRange) -> np.ndarray:
    """The picture a unit's ControlNet (or its annotator) sees, display values (H, W, 3)."""
    height, width = guides.depth.shape
    source = unit.kind if unit.kind in ("DEPTH", "NORMAL") else unit.source
    if unit.kind == "IMAGE":
        source = "IMAGE"
    if source == "DEPTH":
        return conditioning.depth_condition(guides.depth, depth_range)
    if source == "NORMAL":
        return conditioning.normal_condition(guides.normal, guides.camera.view)
    if unit.image is None:
        raise JobSettingsError(f"The {unit.kind.title()} unit needs an image: choose one in the unit")
    return fit_image(unit.image, height, width)


def fit_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A user's image scaled to cover the render (centre crop, like a camera background)."""
    data = np.asarray(image, dtype=np.float32)[..., :3]
    if data.ndim != 3 or data.shape[2] != 3:
        raise JobSettingsError("A ControlNet image must be an RGB picture")
    source_h, source_w = data.shape[:2]
    scale = max(height / source_h, width / source_w)
    # Nearest sampling of the covering rectangle, centred.
    rows = np.clip(((np.arange(height) + 0.5 - height / 2) / scale + source_h / 2).astype(int), 0, source_h - 1)
    cols = np.clip(((np.arange(width) + 0.5 - width / 2) / scale + source_w / 2).astype(int), 0, source_w - 1)
    return np.ascontiguousarray(data[rows][:, cols])


def control_units(settings: JobSettings, guides, depth_range: conditioning.DepthRange) -> list[dict]:
    """The worker's ControlNet units: picture, weight, start, end, and the annotator to run."""
    units = []
    for unit in settings.units:
        if not 0.0 <= unit.start < unit.end <= 1.0:
            raise JobSettingsError(f"The {unit.kind.title()} unit's Start ({unit.start:.2f}) must be below its End "
                                   f"({unit.end:.2f})")
        entry = {"image": unit_picture(unit, guides, depth_range), "weight": float(unit.weight),
                 "start": float(unit.start), "end": float(unit.end)}
        annotator = ANNOTATORS.get(unit.kind)
        if annotator:
            entry["annotator"] = annotator
            if annotator == "canny":
                entry["annotator_options"] = {"low_threshold": int(unit.low_threshold),
                                              "high_threshold": int(unit.high_threshold)}
        units.append(entry)
    return units


def upscale_preview(preview: np.ndarray, height: int, width: int, factor: int = 8) -> np.ndarray:
    """A step preview (one pixel per 8x8 block of the frame, uint8 sRGB) blown up to the frame, float [0, 1]."""
    large = np.repeat(np.repeat(preview[..., :3], factor, axis=0), factor, axis=1)[:height, :width]
    if large.shape[:2] != (height, width):  # a preview too small for the frame: repeat its edge
        large = np.pad(large, ((0, height - large.shape[0]), (0, width - large.shape[1]), (0, 0)), mode="edge")
    return large.astype(np.float32) / 255.0
