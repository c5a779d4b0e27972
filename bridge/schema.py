"""The worker's requests, typed: the model, a ControlNet unit, the temporal fields and the
generate request. Defaults live here and only here (the engine, the client, the server and
the backend all read them from these dataclasses), and so does validation: ``from_json``
checks every field's type and range and raises ``JobError`` with a ``bad_request`` (or
``bad_model``, ``bad_lora``, ``bad_scheduler``) code naming the field, so a wrong type is never
an ``internal`` error. ``to_json`` gives protocol version 1's fields, unchanged.

No torch, no bpy: Blender's Python builds these too. Pixels are numpy arrays while a request is
built; on the wire they are frame descriptors (``{"file"|"attachment", "shape", "dtype"}``).

Limits (docs/worker.md, "Limits"): a side of at most ``MAX_SIDE`` pixels, at most ``MAX_PIXELS``
per frame, and at most ``MAX_PIXEL_STEPS`` pixels x steps per request; frames over
``VAE_TILING_PIXELS`` are decoded in tiles whether or not the model asked for VAE tiling.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields

from . import families
from .errors import JobError

MAX_SIDE = 8192
MAX_PIXELS = 4096 * 4096  # memory: activations and attention grow with the pixel count
MAX_PIXEL_STEPS = 2048 * 2048 * 150  # time: 150 steps at 2048x2048, or 37 at 4096x4096
MAX_STEPS = 1000
VAE_TILING_PIXELS = 2048 * 2048
LORA_WEIGHT_LIMIT = 10.0
PROMPT_MIX_LIMIT = 64
MAX_CONTROLNETS = 8
MAX_LORAS = 16
MAX_IMAGE_PROMPTS = 4
DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
FAMILY_CHOICES = ("auto",) + tuple(families.FAMILIES)
FRAME_FIELDS = ("init_image", "mask", "noise")


# -- field checks (one place) ---------------------------------------------------------
def _fail(code: str, message: str):
    raise JobError(code, message)


def _text(value, name: str, code: str = "bad_request", empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        _fail(code, f"'{name}' must be {'text' if empty else 'non-empty text'}")
    return value


def _number(value, name: str, low: float, high: float, code: str = "bad_request") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        _fail(code, f"'{name}' must be a number from {low:g} to {high:g}")
    return float(value)


def _whole(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail("bad_request", f"'{name}' must be a whole number from {low} to {high}")
    return value


def _flag(value, name: str, code: str = "bad_request") -> bool:
    if not isinstance(value, bool):
        _fail(code, f"'{name}' must be true or false")
    return value


def _choice(value, name: str, choices, code: str = "bad_request") -> str:
    if not isinstance(value, str) or value not in choices:
        shown = repr(value)[:40] if isinstance(value, str) else type(value).__name__
        _fail(code, f"unknown {name} {shown} (choose {', '.join(choices)})")
    return value


def _frame(value, name: str):
    """A frame: an array while building, a descriptor on the wire (its location is the
    frames module's business; its shape and dtype are checked here for type)."""
    if value is None or hasattr(value, "__array__"):
        return value
    if not isinstance(value, dict):
        _fail("bad_request", f"'{name}' must be a frame descriptor object")
    shape, dtype = value.get("shape"), value.get("dtype")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        _fail("bad_request", f"'{name}.shape' must be a list of whole numbers")
    if not isinstance(dtype, str):
        _fail("bad_request", f"'{name}.dtype' must be text")
    if "file" in value and not isinstance(value["file"], str):
        _fail("bad_request", f"'{name}.file' must be text")
    if "attachment" in value and (isinstance(value["attachment"], bool) or not isinstance(value["attachment"], int)):
        _fail("bad_request", f"'{name}.attachment' must be a whole number")
    return value


def _object(value, name: str, code: str = "bad_request") -> dict:
    if not isinstance(value, dict):
        _fail(code, f"'{name}' must be an object")
    return value


def _list(value, name: str, limit: int, code: str = "bad_request") -> list:
    if not isinstance(value, list) or len(value) > limit:
        _fail(code, f"'{name}' must be a list of at most {limit} entries")
    return value


# -- the model -------------------------------------------------------------------------
@dataclass
class LoraRequest:
    path: str
    weight: float = 1.0

    @classmethod
    def from_json(cls, data, index: int) -> "LoraRequest":
        if not isinstance(data, dict) or not isinstance(data.get("path"), str) or not data["path"].strip():
            _fail("bad_lora", f"loras[{index}] needs a 'path' to its .safetensors file")
        weight = _number(data.get("weight", cls.weight), f"loras[{index}].weight", -LORA_WEIGHT_LIMIT,
                         LORA_WEIGHT_LIMIT, code="bad_lora")
        return cls(path=os.path.abspath(os.path.expanduser(data["path"].strip())), weight=weight)


@dataclass
class ModelRequest:
    source: str
    controlnets: list = field(default_factory=list)  # repo ids or folders, one per unit (empty: a local model's)
    config: str | None = None  # a single-file checkpoint's diffusers configs (folder or repo id)
    family: str = "auto"
    loras: list = field(default_factory=list)  # [LoraRequest]
    device: str = "auto"
    precision: str = "auto"
    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False

    def key(self) -> tuple:
        """What identifies a loaded pipeline. Not the LoRAs: they are applied to the loaded
        pipeline, so changing them never reloads the model."""
        return (self.source, tuple(self.controlnets), self.config, self.family, self.device, self.precision,
                self.attention_slicing, self.vae_tiling, self.cpu_offload)

    def to_json(self) -> dict:
        data = {"source": self.source, "controlnets": list(self.controlnets), "device": self.device,
                "precision": self.precision, "attention_slicing": self.attention_slicing,
                "vae_tiling": self.vae_tiling, "cpu_offload": self.cpu_offload}
        if self.family != "auto":
            data["family"] = self.family
        if self.config is not None:
            data["config"] = self.config
        if self.loras:
            data["loras"] = [{"path": lora.path, "weight": lora.weight} for lora in self.loras]
        return data

    @classmethod
    def from_json(cls, data) -> "ModelRequest":
        if isinstance(data, cls):
            return data
        data = _object(data, "model", code="bad_model")
        source = data.get("source")
        if not isinstance(source, str) or not source.strip():
            _fail("bad_model", "the model needs a 'source': 'tiny', a hub repo id, a folder or a checkpoint file")
        names = _list(data.get("controlnets", []), "controlnets", MAX_CONTROLNETS, code="bad_model")
        if not all(isinstance(name, str) and name.strip() for name in names):
            _fail("bad_model", "'controlnets' must be a list of repo ids or folders")
        model = cls(source=source.strip(), controlnets=[name.strip() for name in names])
        for name, choices in (("device", DEVICES), ("precision", PRECISIONS), ("family", FAMILY_CHOICES)):
            if name in data:
                setattr(model, name, _choice(data[name], name, choices, code="bad_model"))
        for name in ("attention_slicing", "vae_tiling", "cpu_offload"):
            if name in data:
                setattr(model, name, _flag(data[name], name, code="bad_model"))
        model.config = _config(data.get("config"), model.source)
        model.loras = _loras(data.get("loras", []))
        return model


def _config(config, source: str) -> str | None:
    if config is None:
        return None
    if not isinstance(config, str) or not config.strip():
        _fail("bad_model", "'config' must be a diffusers folder or hub repo id")
    if not source.lower().endswith((".safetensors", ".ckpt")):
        _fail("bad_model", "'config' is only for single-file checkpoints (.safetensors or .ckpt); a folder or "
              "repo id brings its own configs")
    return config.strip()


def _loras(data) -> list:
    if not isinstance(data, list) or len(data) > MAX_LORAS:
        _fail("bad_lora", f"'loras' must be a list of at most {MAX_LORAS} {{\"path\": file, \"weight\": number}}")
    loras = [LoraRequest.from_json(item, index) for index, item in enumerate(data)]
    paths = [lora.path for lora in loras]
    if len(set(paths)) != len(paths):
        _fail("bad_lora", "each LoRA file may be listed once (add up its weights instead)")
    return loras


# -- a ControlNet unit -----------------------------------------------------------------
@dataclass
class ControlUnit:
    image: object  # numpy array (H, W, C) while building; a frame descriptor on the wire
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    annotator: str | None = None  # the worker runs it on the image first (bridge/annotators.py)
    annotator_options: dict = field(default_factory=dict)
    annotator_weights: str | None = None

    def to_json(self, frame) -> dict:
        data = {"image": frame(self.image), "weight": self.weight, "start": self.start, "end": self.end}
        if self.annotator is not None:
            data["annotator"] = self.annotator
        if self.annotator_options:
            data["annotator_options"] = dict(self.annotator_options)
        if self.annotator_weights is not None:
            data["annotator_weights"] = self.annotator_weights
        return data

    @classmethod
    def from_json(cls, data, index: int) -> "ControlUnit":
        if isinstance(data, cls):
            return data
        where = f"controlnets[{index}]"
        data = _object(data, where)
        if "image" not in data or data["image"] is None:
            _fail("bad_request", f"'{where}' needs an 'image' frame")
        unit = cls(image=_frame(data["image"], f"{where}.image"),
                   weight=_number(data.get("weight", cls.weight), f"{where}.weight", 0.0, 5.0),
                   start=_number(data.get("start", cls.start), f"{where}.start", 0.0, 1.0),
                   end=_number(data.get("end", cls.end), f"{where}.end", 0.0, 1.0))
        if not unit.start < unit.end:
            _fail("bad_request", f"'{where}' needs start < end")
        if "annotator" in data:
            unit.annotator = _text(data["annotator"], f"{where}.annotator")
        if "annotator_weights" in data:
            unit.annotator_weights = _text(data["annotator_weights"], f"{where}.annotator_weights")
        options = _object(data.get("annotator_options", {}), f"{where}.annotator_options")
        for name, value in options.items():
            if not isinstance(value, (int, float, str, bool)) or (isinstance(value, float) and not math.isfinite(value)):
                _fail("bad_request", f"'{where}.annotator_options.{str(name)[:40]}' must be a number, text or "
                      "true/false")
        unit.annotator_options = dict(options)
        return unit


@dataclass
class PromptWeight:
    """One prompt of a prompt_mix (prompt travel between keyed prompts)."""

    prompt: str
    weight: float
    negative_prompt: str = ""

    @classmethod
    def from_json(cls, data, index: int) -> "PromptWeight":
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str) \
                or not isinstance(data.get("negative_prompt", ""), str):
            _fail("bad_request", f"prompt_mix[{index}] needs a 'prompt' (text) and may have a 'negative_prompt' "
                  "(text)")
        weight = data.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            _fail("bad_request", f"prompt_mix[{index}] needs a 'weight': a number of at least 0")
        return cls(prompt=data["prompt"], weight=float(weight), negative_prompt=data.get("negative_prompt", ""))


# -- generate --------------------------------------------------------------------------
@dataclass
class GenerateRequest:
    model: ModelRequest
    prompt: str
    controlnets: list  # [ControlUnit]
    width: int
    height: int
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 7.0
    scheduler: str = "dpmpp_2m_karras"
    # image-to-image and temporal feedback (docs/worker.md, "Temporal feedback")
    init_image: object = None
    strength: float = 0.55  # also the engine's default feedback strength
    mask: object = None  # per-pixel strength
    noise: object = None  # latent starting noise
    fusion: float = 0.0  # pull toward the noised initial image after each step...
    fusion_end: float = 1.0  # ...until this fraction of the steps is done
    faithful_encoding: bool = False  # encode init_image compensating the VAE's round-trip error
    prompt_mix: list = field(default_factory=list)  # [PromptWeight]
    # Image prompts (IP-Adapter): [{"image": frame, "weight": number}] and {"source", "image_encoder",
    # "scale"}; their values are checked by bridge/ip_adapter.py's parse_request.
    image_prompts: list | None = None
    ip_adapter: dict | None = None
    preview: bool = False
    output: dict | None = None  # where the worker writes the picture (shared frames)

    @property
    def edits_latents(self) -> bool:
        """Whether latents are changed between steps (strength mask or fusion), which some
        samplers' history must respect."""
        return self.init_image is not None and (self.mask is not None or self.fusion > 0)

    def features(self) -> list:
        """The fields past protocol 1's first generate that this request uses (a worker must list them)."""
        return [name for name, used in (("fusion", self.fusion > 0), ("noise", self.noise is not None),
                                        ("prompt_mix", bool(self.prompt_mix)),
                                        ("fusion_end", self.fusion > 0 and self.fusion_end < 1.0),
                                        ("faithful_encoding", self.faithful_encoding and self.init_image is not None),
                                        ("ip_adapter", bool(self.image_prompts))) if used]

    def to_json(self, frame=lambda value, name: value) -> dict:
        """Protocol 1's generate fields; ``frame(array, name)`` turns an array into a descriptor."""
        data = {"type": "generate", "model": self.model.to_json(), "prompt": self.prompt,
                "negative_prompt": self.negative_prompt, "seed": self.seed, "steps": self.steps,
                "guidance": self.guidance, "scheduler": self.scheduler, "width": self.width, "height": self.height,
                "strength": self.strength, "preview": self.preview,
                "controlnets": [unit.to_json(lambda image, i=i: frame(image, f"control{i}"))
                                for i, unit in enumerate(self.controlnets)]}
        for name in FRAME_FIELDS:
            if getattr(self, name) is not None:
                data[name] = frame(getattr(self, name), name)
        if self.fusion > 0:
            data["fusion"] = self.fusion
            if self.fusion_end < 1.0:  # only meaningful with fusion
                data["fusion_end"] = self.fusion_end
        if self.faithful_encoding and self.init_image is not None:  # only meaningful with an initial image
            data["faithful_encoding"] = True
        if self.prompt_mix:
            data["prompt_mix"] = [dict({"prompt": p.prompt, "weight": p.weight},
                                       **({"negative_prompt": p.negative_prompt} if p.negative_prompt else {}))
                                  for p in self.prompt_mix]
        if self.image_prompts:
            data["image_prompts"] = [{"image": frame(entry["image"], f"image_prompt{index}"),
                                      "weight": entry.get("weight", 1.0)} for index, entry in enumerate(self.image_prompts)]
            data["ip_adapter"] = dict(self.ip_adapter or {})
        if self.output is not None:
            data["output"] = self.output
        return data

    @classmethod
    def from_json(cls, data) -> "GenerateRequest":
        """A generate request checked field by field; unknown fields are ignored (protocol 1)."""
        if isinstance(data, cls):
            return data.validated()
        data = _object(data, "generate")
        if "model" not in data:
            _fail("bad_request", "'generate' needs a 'model'")
        request = cls(model=ModelRequest.from_json(data["model"]),
                      prompt=_text(data.get("prompt"), "prompt"),
                      controlnets=[ControlUnit.from_json(unit, index) for index, unit in
                                   enumerate(_list(data.get("controlnets", []), "controlnets", MAX_CONTROLNETS))],
                      width=data.get("width"), height=data.get("height"))
        for item in fields(cls):
            if item.name in data and item.name not in ("model", "prompt", "controlnets", "width", "height"):
                setattr(request, item.name, data[item.name])
        request.prompt_mix = [PromptWeight.from_json(entry, index) for index, entry in
                              enumerate(_list(request.prompt_mix or [], "prompt_mix", PROMPT_MIX_LIMIT))]
        return request.validated()

    def validated(self) -> "GenerateRequest":
        """Check (and normalise) every field; raise JobError naming the first wrong one."""
        self.negative_prompt = _text(self.negative_prompt, "negative_prompt")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            _fail("bad_request", "'seed' must be a whole number")
        self.seed = self.seed % (2 ** 63)
        self.steps = _whole(self.steps, "steps", 1, MAX_STEPS)
        self.guidance = _number(self.guidance, "guidance", 0.0, 50.0)
        self.scheduler = _choice(self.scheduler, "scheduler", families.SAMPLER_IDS, code="bad_scheduler")
        self.width = _whole(self.width, "width", 8, MAX_SIDE)
        self.height = _whole(self.height, "height", 8, MAX_SIDE)
        self._check_cost()
        self.strength = _number(self.strength, "strength", 0.0, 1.0)
        if self.strength <= 0:
            _fail("bad_request", "'strength' must be above 0")
        self.fusion = _number(self.fusion, "fusion", 0.0, 1.0)
        self.fusion_end = _number(self.fusion_end, "fusion_end", 0.0, 1.0)
        self.preview = _flag(self.preview, "preview")
        self.faithful_encoding = _flag(self.faithful_encoding, "faithful_encoding")
        for name in FRAME_FIELDS:
            setattr(self, name, _frame(getattr(self, name), name))
        kind = getattr(getattr(self.noise, "dtype", None), "kind", "f")
        if kind != "f":
            _fail("bad_request", f"noise must be a float32 array, not {self.noise.dtype.name}")
        if self.output is not None:
            _frame(_object(self.output, "output"), "output")
        self._check_image_prompts()
        if not self.controlnets:
            _fail("bad_request", "at least one ControlNet image is needed")
        if self.fusion > 0 and self.init_image is None:
            _fail("bad_request", "fusion pulls the latents toward the initial image: it needs an init_image")
        if self.prompt_mix and not sum(entry.weight for entry in self.prompt_mix) > 0:
            _fail("bad_request", "the weights of prompt_mix must add up to more than 0")
        return self

    def _check_image_prompts(self) -> None:
        if self.image_prompts is not None:
            if not isinstance(self.image_prompts, list) or not 1 <= len(self.image_prompts) <= MAX_IMAGE_PROMPTS:
                _fail("bad_request", f"image_prompts must be a list of 1 to {MAX_IMAGE_PROMPTS} "
                      "{\"image\": frame, \"weight\": number} objects")
            for index, entry in enumerate(self.image_prompts):
                if not isinstance(entry, dict) or entry.get("image") is None:
                    _fail("bad_request", f"image_prompts[{index}] needs an 'image' frame")
                _frame(entry["image"], f"image_prompts[{index}].image")
        if self.ip_adapter is not None and not isinstance(self.ip_adapter, dict):
            _fail("bad_request", "ip_adapter must be an object: {\"source\", \"image_encoder\", \"scale\"}")

    def _check_cost(self) -> None:
        pixels = self.width * self.height
        if pixels > MAX_PIXELS:
            _fail("bad_request", f"a {self.width}x{self.height} frame has more than the worker's limit of "
                  f"{MAX_PIXELS // 1_000_000} megapixels: render smaller and upscale")
        if pixels * self.steps > MAX_PIXEL_STEPS:
            _fail("bad_request", f"{self.steps} steps at {self.width}x{self.height} exceed the worker's limit of "
                  f"{MAX_PIXEL_STEPS // 1_000_000} million pixel-steps per request: use fewer steps or a smaller "
                  "frame")


def parse(message: dict):
    """The typed request a job message carries: GenerateRequest for 'generate', ModelRequest for
    'load_model', None for others. Raises JobError for a wrong field."""
    if message.get("type") == "generate":
        return GenerateRequest.from_json(message)
    if message.get("type") == "load_model":
        return ModelRequest.from_json(message.get("model"))
    return None


def build(model, prompt: str, controlnets: list, width: int, height: int, **fields) -> GenerateRequest:
    """A GenerateRequest from plain values (dicts for the model, the units and prompt_mix entries;
    numpy arrays and numbers allowed), checked as the worker checks it."""
    data = {name: _plain(value) for name, value in fields.items()}
    data.update(model=model.to_json() if isinstance(model, ModelRequest) else model, prompt=prompt,
                width=_plain(width), height=_plain(height),
                controlnets=[unit if isinstance(unit, ControlUnit) else {key: _plain(value) for key, value in unit.items()}
                             for unit in controlnets])
    if data.get("image_prompts"):
        data["image_prompts"] = [{key: _plain(value) for key, value in entry.items()} if isinstance(entry, dict)
                                 else entry for entry in data["image_prompts"]]
    if data.get("prompt_mix"):
        data["prompt_mix"] = [entry if isinstance(entry, PromptWeight) else
                              {key: _plain(value) for key, value in entry.items()} for entry in data["prompt_mix"]]
    return GenerateRequest.from_json({key: value for key, value in data.items() if value is not None})


def _plain(value):
    """A numpy scalar as the Python number it holds (JSON and the checks above take those)."""
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "shape", None) == ():
        return item()
    return value


def default(name: str):
    """A generate request's default for ``name`` (the engine's settings start from these)."""
    return GenerateRequest.__dataclass_fields__[name].default
