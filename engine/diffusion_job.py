"""From the guides and the scene's Silk settings to one request for the worker. No ``bpy``.

The ``bpy`` layer copies ``scene.silk`` into the plain ``UnitSettings`` /
``JobSettings`` below; everything else (which ControlNet each unit needs, which
picture it sees, what the worker is asked) is decided here, where it is tested in
milliseconds.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..bridge import families, schema
from ..bridge.errors import JobError
from ..bridge.schema import ControlUnit, GenerateRequest, LoraRequest, ModelRequest, PromptWeight
from . import conditioning

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_UNIT_KINDS = families.DEFAULT_UNIT_KINDS
GUIDE_KINDS = {kind.id for kind in families.UNIT_KINDS if kind.guide}
ANNOTATORS = {kind.id: kind.annotator for kind in families.UNIT_KINDS if kind.annotator}


class JobSettingsError(Exception):
    """Settings that cannot make a picture, worded for the render report."""


@dataclass
class UnitSettings:
    kind: str = "DEPTH"
    source: str = "DEPTH"  # for annotator units: DEPTH or NORMAL guide, or IMAGE
    controlnet: str = ""
    weight: float = ControlUnit.weight
    start: float = ControlUnit.start
    end: float = ControlUnit.end
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
    negative_prompt: str = schema.default("negative_prompt")
    # Prompt travel: [{"prompt", "negative_prompt", "weight"}], weights summing to 1 (empty: ``prompt``).
    prompt_mix: list = field(default_factory=list)
    # Image prompts (image_prompts.py): [{"image": (h, w, 3) array, "weight"}] and the IP-Adapter to use.
    image_prompts: list = field(default_factory=list)
    ip_adapter: dict = field(default_factory=dict)
    seed: int = schema.default("seed")
    steps: int = schema.default("steps")
    guidance: float = schema.default("guidance")
    scheduler: str = schema.default("scheduler")
    device: str = ModelRequest.device
    precision: str = ModelRequest.precision
    attention_slicing: bool = ModelRequest.attention_slicing
    vae_tiling: bool = ModelRequest.vae_tiling
    cpu_offload: bool = ModelRequest.cpu_offload
    reported_family: str | None = None  # what the worker found the model to be, when it has said


def model_family(model: str, family: str = "AUTO", reported: str | None = None) -> str:
    """The setting's family; else what the model itself says (families.detect: Silk's own models,
    local folders and .safetensors files); else what the worker reported on loading it; else, for a
    hub id not loaded yet, what its name suggests (the worker checks it on load, see load_model)."""
    if family.lower() in families.FAMILIES:
        return family.lower()
    detected, _evidence = families.detect(model)
    return detected or reported or families.guess_from_name(model)


@dataclass
class UsableUnit:
    settings: UnitSettings
    controlnet: str


def usable_units(settings: JobSettings) -> tuple[list, list]:
    """([UsableUnit], warnings): each enabled unit with the ControlNet it loads (its own, else the
    model's or the family's default). A unit kind the family has no ControlNet for is skipped with
    a warning for the render report, not an error."""
    model = settings.model.strip()
    family = model_family(model, settings.family, settings.reported_family)
    usable, warnings = [], []
    for unit in settings.units:
        controlnet = unit.controlnet.strip() or families.controlnet_for_kind(model, family, unit.kind)
        if controlnet:
            usable.append(UsableUnit(unit, controlnet))
            continue
        label = families.FAMILIES[family].label
        warnings.append(f"The {_kind_label(unit.kind)} unit was skipped: there is no {label} ControlNet for it. "
                        "Give one in the unit's ControlNet field, or disable the unit")
    if settings.units and not usable:
        raise JobSettingsError(f"No enabled ControlNet unit has a ControlNet for this {families.FAMILIES[family].label} "
                               "model: " + " ".join(warnings))
    return usable, warnings


def _kind_label(kind: str) -> str:
    return next((k.label for k in families.UNIT_KINDS if k.id == kind), kind.title())


def model_request(settings: JobSettings) -> ModelRequest:
    model = settings.model.strip()
    if not model:
        raise JobSettingsError("No model is set: choose 'tiny', a hub repo id, a diffusers folder or a checkpoint file")
    if not settings.units:
        raise JobSettingsError("No ControlNet unit is enabled: add one in Silk's ControlNet panel")
    usable, _warnings = usable_units(settings)
    request = ModelRequest(source=model, controlnets=[unit.controlnet for unit in usable], device=settings.device,
                           precision=settings.precision, attention_slicing=settings.attention_slicing,
                           vae_tiling=settings.vae_tiling, cpu_offload=settings.cpu_offload)
    if settings.family != "AUTO":
        request.family = model_family(model, settings.family)
    for path, weight in settings.loras:
        if not os.path.isfile(path):
            raise JobSettingsError(f"The LoRA file '{path}' does not exist")
        request.loras.append(LoraRequest(path=path, weight=float(weight)))
    return request


def load_model(worker, settings: JobSettings, should_cancel=None) -> dict:
    """Load the settings' model on ``worker``. A hub model the worker finds to be of another family
    than its name suggested is loaded again with that family's ControlNets."""
    info = worker.load_model(model_request(settings), should_cancel=should_cancel)
    reported = info.get("family")
    if reported in families.FAMILIES and reported != model_family(settings.model, settings.family,
                                                                   settings.reported_family):
        settings.reported_family = reported
        info = worker.load_model(model_request(settings), should_cancel=should_cancel)
    return info


def generate_request(settings: JobSettings, guides, depth_range: conditioning.DepthRange, *, seed=None,
                     init_image=None, mask=None, fusion: float = 0.0, fusion_end: float = 1.0, noise=None,
                     faithful_encoding: bool = False, preview: bool = True) -> GenerateRequest:
    """THE request for one frame: F12, Render Preview and every animation frame build it here.
    With ``init_image`` (image-to-image), ``mask`` is the per-pixel strength and its maximum the
    strength; ``fusion`` and ``noise`` are the temporal feedback's (engine/animation.py)."""
    height, width = guides.depth.shape
    request = GenerateRequest(
        model=model_request(settings), prompt=settings.prompt, controlnets=control_units(settings, guides, depth_range),
        width=width, height=height, negative_prompt=settings.negative_prompt,
        seed=settings.seed if seed is None else seed, steps=settings.steps, guidance=settings.guidance,
        scheduler=settings.scheduler, preview=preview, noise=noise,
        prompt_mix=[PromptWeight(entry["prompt"], float(entry["weight"]), entry.get("negative_prompt", ""))
                    for entry in settings.prompt_mix])
    if settings.image_prompts:
        request.image_prompts, request.ip_adapter = list(settings.image_prompts), dict(settings.ip_adapter)
    if init_image is not None:
        request.init_image, request.mask = init_image, mask
        request.strength = float(np.max(mask)) if mask is not None else request.strength
        request.fusion, request.fusion_end = float(fusion), float(fusion_end)
        request.faithful_encoding = bool(faithful_encoding)
    try:
        return request.validated()
    except JobError as error:
        raise JobSettingsError(error.message) from None


def unit_picture(unit: UnitSettings, guides, depth_range: conditioning.DepthRange) -> np.ndarray:
    """The picture a unit's ControlNet (or its annotator) sees, display values (H, W, 3)."""
    height, width = guides.depth.shape
    source = unit.kind if unit.kind in GUIDE_KINDS else unit.source
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


def control_units(settings: JobSettings, guides, depth_range: conditioning.DepthRange) -> list:
    """The worker's ControlNet units ([ControlUnit]) of the usable units: picture, weight, start,
    end, and the annotator to run."""
    units = []
    for usable in usable_units(settings)[0]:
        unit = usable.settings
        if not 0.0 <= unit.start < unit.end <= 1.0:
            raise JobSettingsError(f"The {unit.kind.title()} unit's Start ({unit.start:.2f}) must be below its End "
                                   f"({unit.end:.2f})")
        entry = ControlUnit(image=unit_picture(unit, guides, depth_range), weight=float(unit.weight),
                            start=float(unit.start), end=float(unit.end), annotator=ANNOTATORS.get(unit.kind))
        if entry.annotator == "canny":
            entry.annotator_options = {"low_threshold": int(unit.low_threshold),
                                       "high_threshold": int(unit.high_threshold)}
        units.append(entry)
    return units


def upscale_preview(preview: np.ndarray, height: int, width: int, factor: int = 8) -> np.ndarray:
    """A step preview (one pixel per 8x8 block of the frame, uint8 sRGB) blown up to the frame, float [0, 1]."""
    large = np.repeat(np.repeat(preview[..., :3], factor, axis=0), factor, axis=1)[:height, :width]
    if large.shape[:2] != (height, width):  # a preview too small for the frame: repeat its edge
        large = np.pad(large, ((0, height - large.shape[0]), (0, width - large.shape[1]), (0, 0)), mode="edge")
    return large.astype(np.float32) / 255.0
