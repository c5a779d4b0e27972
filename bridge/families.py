"""The model-family registry: everything Silk knows about SD 1.5 and SDXL, in one place.

Per family: its diffusers pipeline classes, the default ControlNet per unit kind, the latent
layout (channels, the VAE's scale factor), latent-to-RGB preview factors, its native size, and
how a model is recognised as one (a folder's ``model_index.json``, a single file's keys, a hub
repo's ``model_index.json``). Also the unit kinds the engine offers and the samplers with their
exact diffusers settings. The worker, the engine's defaults and Blender's menus all read these
tables; nothing here imports torch, diffusers or bpy (detection reads JSON and a safetensors
header by hand), so Blender's Python can use it as well.
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class UnitKind:
    """A kind of ControlNet unit: what the ControlNet sees and which annotator (if any) draws it."""

    id: str  # the engine's enum identifier (saved in .blend files: never rename)
    label: str
    description: str
    annotator: str | None = None  # the worker's annotator that turns the unit's source into its picture
    guide: str | None = None  # DEPTH or NORMAL: the scene guide the unit shows as it is


UNIT_KINDS = (
    UnitKind("DEPTH", "Depth", "The scene's exact depth (inverse, near white)", guide="DEPTH"),
    UnitKind("NORMAL", "Normal", "The scene's exact camera-space normals (BAE)", guide="NORMAL"),
    UnitKind("CANNY", "Canny", "Canny edges of a guide or an image (no annotator weights needed)", annotator="canny"),
    UnitKind("LINEART", "Line Art", "Line art of a guide or an image (annotator weights needed)",
             annotator="lineart"),
    UnitKind("SOFTEDGE", "Soft Edge", "HED soft edges of a guide or an image (annotator weights needed)",
             annotator="hed"),
    UnitKind("OPENPOSE", "OpenPose", "Human poses found in an image (annotator weights needed)",
             annotator="openpose"),
    UnitKind("IMAGE", "Image", "An image used as it is (give the ControlNet that reads it)"),
)
UNIT_KIND_IDS = tuple(kind.id for kind in UNIT_KINDS)
DEFAULT_UNIT_KINDS = ("DEPTH", "NORMAL")  # a new scene's units


@dataclass(frozen=True)
class Family:
    id: str
    label: str
    pipelines: tuple  # (text-to-image, image-to-image) diffusers class names
    controlnets: dict  # unit kind id -> the default ControlNet (hub repo id)
    native_size: int  # the side the family was trained at
    latent_rgb: tuple  # (rows per latent channel of RGB factors, RGB bias): cheap step previews
    pipeline_options: dict = field(default_factory=dict)  # extra arguments for loading its pipelines
    latent_channels: int = 4
    vae_scale_factor: int = 8
    vae_overflows_in_fp16: bool = False  # its VAE must run in fp32 when the model is fp16
    class_name_marker: str = ""  # in model_index.json's _class_name
    checkpoint_key: str = ""  # a key prefix only this family's single-file checkpoints have


FAMILIES = {
    "sd15": Family(
        id="sd15", label="SD 1.5",
        pipelines=("StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline"),
        controlnets={"DEPTH": "lllyasviel/control_v11f1p_sd15_depth",
                     "NORMAL": "lllyasviel/control_v11p_sd15_normalbae",
                     "CANNY": "lllyasviel/control_v11p_sd15_canny",
                     "LINEART": "lllyasviel/control_v11p_sd15_lineart",
                     "SOFTEDGE": "lllyasviel/control_v11p_sd15_softedge",
                     "OPENPOSE": "lllyasviel/control_v11p_sd15_openpose"},
        native_size=512,
        latent_rgb=(((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264),
                     (-0.184, -0.271, -0.473)), (0.0, 0.0, 0.0)),
        pipeline_options={"safety_checker": None, "requires_safety_checker": False},
        checkpoint_key="cond_stage_model.transformer."),
    # SDXL has no widely used normal-map ControlNet in diffusers' format (the union models need
    # another model class): its Normal units are skipped with a warning.
    "sdxl": Family(
        id="sdxl", label="SDXL",
        pipelines=("StableDiffusionXLControlNetPipeline", "StableDiffusionXLControlNetImg2ImgPipeline"),
        controlnets={"DEPTH": "diffusers/controlnet-depth-sdxl-1.0",
                     "CANNY": "diffusers/controlnet-canny-sdxl-1.0",
                     "OPENPOSE": "thibaud/controlnet-openpose-sdxl-1.0"},
        native_size=1024,
        latent_rgb=(((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
                     (-0.3165, -0.2492, -0.2188)), (0.1084, -0.0175, -0.0011)),
        pipeline_options={"add_watermarker": False},
        vae_overflows_in_fp16=True, class_name_marker="XL", checkpoint_key="conditioner.embedders.1."),
}
DEFAULT_FAMILY = "sd15"  # what a model that says nothing about itself is taken for

# Models Silk builds itself (bridge/tiny_model.py), offline: their family and ControlNet per unit kind.
# ``tiny`` lends its depth ControlNet to the annotator kinds (random weights: any picture fits).
LOCAL_MODELS = {
    "tiny": ("sd15", {"DEPTH": "tiny:depth", "NORMAL": "tiny:normal", "CANNY": "tiny:depth",
                      "LINEART": "tiny:depth", "SOFTEDGE": "tiny:depth", "OPENPOSE": "tiny:depth",
                      "IMAGE": "tiny:depth"}),
    "tiny-xl": ("sdxl", {"DEPTH": "tiny-xl:depth"}),
    "sd15-random": ("sd15", {"DEPTH": "sd15-random:depth", "NORMAL": "sd15-random:normal"}),
    "mini": ("sd15", {"DEPTH": "mini:depth", "NORMAL": "mini:normal"}),  # trained by tools/mini
}


@dataclass(frozen=True)
class Sampler:
    id: str
    label: str
    description: str
    scheduler: str  # the diffusers scheduler class
    settings: dict  # exactly what is set on top of the model's original scheduler config
    # Adds fresh noise at every step: per-step latent edits toward a noised target (fusion) would
    # leave its latents less noisy than it expects.
    fresh_noise_each_step: bool = False


_PLAIN_SIGMAS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
SAMPLERS = (
    Sampler("euler", "Euler", "Euler, deterministic", "EulerDiscreteScheduler", dict(_PLAIN_SIGMAS)),
    Sampler("euler_a", "Euler a", "Euler ancestral: adds fresh noise each step", "EulerAncestralDiscreteScheduler",
            {}, fresh_noise_each_step=True),
    Sampler("dpmpp_2m", "DPM++ 2M", "DPM-Solver++ 2M: good pictures in 20-30 steps", "DPMSolverMultistepScheduler",
            dict(_PLAIN_SIGMAS, algorithm_type="dpmsolver++", solver_order=2)),
    Sampler("dpmpp_2m_karras", "DPM++ 2M Karras", "DPM-Solver++ 2M with Karras sigmas",
            "DPMSolverMultistepScheduler", dict(_PLAIN_SIGMAS, algorithm_type="dpmsolver++", solver_order=2,
                                                use_karras_sigmas=True)),
    Sampler("ddim", "DDIM", "DDIM, deterministic", "DDIMScheduler", {}),
    Sampler("unipc", "UniPC", "UniPC: good pictures in few steps", "UniPCMultistepScheduler",
            dict(_PLAIN_SIGMAS)),
    Sampler("lcm", "LCM", "For LCM models and LoRAs (4-8 steps, guidance 1-2)", "LCMScheduler", {},
            fresh_noise_each_step=True),
)
SAMPLER_IDS = tuple(sampler.id for sampler in SAMPLERS)


def sampler(name: str) -> Sampler:
    return next(s for s in SAMPLERS if s.id == name)


def make_scheduler(name: str, original_config, latents_edited: bool = False):
    """A fresh scheduler for sampler ``name``, from the model's ORIGINAL scheduler config (kept at
    load), so no setting of an earlier run carries over. UniPC's corrector rebuilds the sample from
    its own history and would undo latents edited between steps (strength mask, fusion): with
    ``latents_edited`` it is disabled on every step."""
    import diffusers

    chosen = sampler(name)
    settings = dict(chosen.settings)
    if latents_edited and chosen.scheduler == "UniPCMultistepScheduler":
        settings["disable_corrector"] = list(range(1000))
    return getattr(diffusers, chosen.scheduler).from_config(original_config, **settings)


def controlnet_for_kind(model: str, family: str, kind: str) -> str | None:
    """The default ControlNet for a unit kind: the local model's own, else the family's (None: none)."""
    local = LOCAL_MODELS.get(model)
    if local is not None:
        return local[1].get(kind)
    return FAMILIES[family].controlnets.get(kind)


# -- detection --------------------------------------------------------------------------
def detect(source: str, config: str | None = None, hub: bool = False) -> tuple[str | None, str]:
    """The family a model is, and the evidence, or (None, why not). ``source``: a local model's
    name, a diffusers folder, a single .safetensors file (its configs from ``config`` if given),
    or (with ``hub``) a hub repo id whose model_index.json is fetched."""
    if source in LOCAL_MODELS:
        return LOCAL_MODELS[source][0], f"'{source}' is Silk's own model"
    if os.path.isfile(source):
        if config:
            found = detect(config, hub=hub)
            if found[0]:
                return found[0], found[1].replace("its ", "its config's ", 1)
        return _from_checkpoint(source)
    if os.path.isdir(source):
        return _from_folder(source)
    if hub and REPO_ID.fullmatch(source):
        return _from_hub(source)
    return None, "it is not a local model"


def _from_class_name(class_name: str, where: str) -> tuple[str, str]:
    for family in FAMILIES.values():
        if family.class_name_marker and family.class_name_marker in class_name:
            return family.id, f"{where} names {class_name}"
    return DEFAULT_FAMILY, f"{where} names {class_name}"


def _from_folder(folder: str) -> tuple[str | None, str]:
    try:
        with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as handle:
            class_name = json.load(handle).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None, "its model_index.json cannot be read"
    if not isinstance(class_name, str):
        return None, "its model_index.json names no pipeline"
    return _from_class_name(class_name, "its model_index.json")


def _from_hub(repo: str) -> tuple[str | None, str]:
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo, "model_index.json")
    except Exception:  # offline or unknown: the loader says why, in its own words
        return None, "the hub could not provide its model_index.json"
    return _from_folder(os.path.dirname(path))


def safetensors_keys(path: str) -> list:
    """The tensor names in a .safetensors file, read from its JSON header (no tensor is loaded)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if not 2 <= length <= 100 << 20:
            raise ValueError("not a safetensors header")
        header = json.loads(handle.read(length))
    return [key for key in header if key != "__metadata__"]


def _from_checkpoint(path: str) -> tuple[str | None, str]:
    """Single files: each family's text encoders live under their own key prefix. A .ckpt is a
    pickle: it is not opened here."""
    if not path.lower().endswith(".safetensors"):
        return None, "a .ckpt cannot be peeked at"
    try:
        keys = safetensors_keys(path)
    except (OSError, ValueError, struct.error):
        return None, "its header cannot be read"
    for family in sorted(FAMILIES.values(), key=lambda f: f.id != "sdxl"):  # SDXL files also hold SD 1.5-like keys
        if family.checkpoint_key and any(key.startswith(family.checkpoint_key) for key in keys):
            return family.id, "its checkpoint keys say so"
    return None, "its keys match no family"


def guess_from_name(name: str) -> str:
    """The family a hub id's NAME suggests ("juggernautXL", "sd_xl_base", "stable-diffusion-xl"): only
    until the worker has loaded it and said what it really is."""
    base = os.path.basename(name.rstrip("/\\"))
    return "sdxl" if re.search(r"XL|sdxl|(^|[^a-z])xl([^a-z]|$)", base) or "sdxl" in base.lower() else DEFAULT_FAMILY
