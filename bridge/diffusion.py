"""The worker's Stable Diffusion backend (torch and diffusers live only here).

Models: a Hugging Face repo id, a local diffusers folder, a single-file
``.safetensors``/``.ckpt`` checkpoint, or ``tiny`` (see tiny_model.py); each with a
ControlNet (repo id or folder) per unit. Loaded pipelines stay cached and
text-to-image and image-to-image share their components; prompt embeddings are
cached per prompt.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .server import Cancelled, JobError

log = logging.getLogger("silk.worker")

REQUIRED_MODULES = ("torch", "diffusers", "transformers", "safetensors", "numpy", "PIL")
SCHEDULERS = ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc", "lcm")
# The VAE's downsampling factor and the UNet's: sizes are padded to a multiple of this.
SIZE_MULTIPLE = 64
# SD 1.5 latent-to-RGB approximation for cheap previews (rows: latent channels).
LATENT_RGB = np.array([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]])


@dataclass
class ModelSpec:
    source: str
    controlnets: list = field(default_factory=list)
    device: str = "auto"
    precision: str = "auto"
    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False

    @classmethod
    def from_request(cls, data: dict) -> "ModelSpec":
        if not isinstance(data.get("source"), str) or not data["source"].strip():
            raise JobError("bad_model", "the model needs a 'source': 'tiny', a hub repo id, a folder or a checkpoint file")
        controlnets = data.get("controlnets", [])
        if not isinstance(controlnets, list) or not all(isinstance(c, str) and c for c in controlnets):
            raise JobError("bad_model", "'controlnets' must be a list of repo ids or folders")
        spec = cls(source=data["source"].strip(), controlnets=list(controlnets))
        for name in ("device", "precision"):
            if name in data:
                if not isinstance(data[name], str):
                    raise JobError("bad_model", f"'{name}' must be a string")
                setattr(spec, name, data[name])
        for name in ("attention_slicing", "vae_tiling", "cpu_offload"):
            if name in data:
                setattr(spec, name, bool(data[name]))
        if spec.device not in ("auto", "cuda", "mps", "cpu"):
            raise JobError("bad_model", f"unknown device {spec.device!r} (auto, cuda, mps or cpu)")
        if spec.precision not in ("auto", "fp16", "bf16", "fp32"):
            raise JobError("bad_model", f"unknown precision {spec.precision!r} (auto, fp16, bf16 or fp32)")
        return spec

    def key(self) -> tuple:
        return (self.source, tuple(self.controlnets), self.device, self.precision,
                self.attention_slicing, self.vae_tiling, self.cpu_offload)


@dataclass
class Result:
    image: np.ndarray
    seed: int
    timings: dict
    model: str


class DiffusionBackend:
    def __init__(self, cache_dir: str | None = None, max_pipelines: int = 1):
        self.cache_dir = cache_dir
        self.max_pipelines = max_pipelines
        self._pipelines: dict = {}
        self._embeddings: dict = {}
        self._lock = threading.Lock()
        self._device_name = None

    # -- environment ------------------------------------------------------
    @staticmethod
    def missing_modules() -> list:
        return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]

    def status(self) -> dict:
        info = {"device": self._device_name, "models": [key[0] for key in self._pipelines],
                "gpu_free_bytes": None, "missing": self.missing_modules()}
        torch = _torch_if_loaded()
        if torch is not None and torch.cuda.is_available():
            try:
                free, total = torch.cuda.mem_get_info()
                info.update(gpu_free_bytes=int(free), gpu_total_bytes=int(total))
            except RuntimeError:
                pass
        return info

    def _require(self) -> None:
        missing = self.missing_modules()
        if missing:
            raise JobError("missing_modules", "The worker's Python lacks " + ", ".join(missing)
                           + ". Run 'Install worker environment' in Silk's preferences, or install them into it "
                           "(pip install torch diffusers transformers safetensors pillow numpy)")

    # -- models -----------------------------------------------------------
    def load(self, model: dict) -> dict:
        spec = ModelSpec.from_request(model)
        entry = self._pipeline(spec)
        return {"source": spec.source, "device": entry["device"], "dtype": entry["dtype"],
                "controlnets": len(entry["controlnets"])}

    def _pipeline(self, spec: ModelSpec) -> dict:
        self._require()
        with self._lock:
            entry = self._pipelines.get(spec.key())
            if entry is not None:
                return entry
            self._pipelines.clear()  # one model at a time keeps memory predictable
            self._embeddings.clear()
            _free_memory()
            started = time.perf_counter()
            try:
                entry = self._load(spec)
            except JobError:
                raise
            except Exception as error:
                raise _explain_load_error(spec, error) from None
            log.info("loaded %s on %s in %.1f s", spec.source, entry["device"], time.perf_counter() - started)
            self._pipelines[spec.key()] = entry
            return entry

    def _load(self, spec: ModelSpec) -> dict:
        import torch
        from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline, \
            StableDiffusionControlNetPipeline

        device, dtype = _choose_device(spec)
        self._device_name = device
        source = spec.source
        controlnet_sources = list(spec.controlnets)
        if source == "tiny":
            from . import tiny_model

            source = tiny_model.ensure_tiny(self.cache_dir)
            if not controlnet_sources:
                controlnet_sources = [os.path.join(source, folder) for folder in tiny_model.CONTROLNET_FOLDERS]
        _check_source(source)
        if not controlnet_sources:
            raise JobError("bad_model", "at least one ControlNet is needed (a repo id or folder per unit)")
        controlnets = []
        for controlnet in controlnet_sources:
            try:
                controlnets.append(ControlNetModel.from_pretrained(controlnet, torch_dtype=dtype))
            except Exception as error:
                raise JobError("missing_controlnet", f"Cannot load the ControlNet '{controlnet}': {_short(error)}. "
                               "Give a hub repo id (with internet or a filled cache) or a local folder") from None
        if os.path.isfile(source):
            text2image = StableDiffusionControlNetPipeline.from_single_file(
                source, controlnet=controlnets, torch_dtype=dtype, safety_checker=None)
        else:
            text2image = StableDiffusionControlNetPipeline.from_pretrained(
                source, controlnet=controlnets, torch_dtype=dtype, safety_checker=None,
                requires_safety_checker=False)
        text2image.set_progress_bar_config(disable=True)
        if spec.cpu_offload and device == "cuda":
            text2image.enable_model_cpu_offload()
        else:
            text2image.to(device)
        if spec.attention_slicing:
            text2image.enable_attention_slicing()
        if spec.vae_tiling:
            text2image.vae.enable_tiling()
        image2image = StableDiffusionControlNetImg2ImgPipeline.from_pipe(text2image)
        image2image.set_progress_bar_config(disable=True)
        return {"text2image": text2image, "image2image": image2image, "device": device,
                "dtype": str(dtype).replace("torch.", ""), "controlnets": controlnets, "spec": spec,
                "schedulers": {}, "torch": torch}

    # -- generation -------------------------------------------------------
    def generate(self, request: dict, images: dict, units: list, progress, cancel) -> Result:
        spec = ModelSpec.from_request(request["model"])
        entry = self._pipeline(spec)
        settings = _generation_settings(request, units, len(entry["controlnets"]))
        started = time.perf_counter()
        try:
            return self._generate(entry, spec, request, settings, images, units, progress, cancel, started)
        except Cancelled:
            raise
        except (MemoryError, RuntimeError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not _is_out_of_memory(error):
                raise
            _free_memory()
            raise JobError("out_of_memory", _out_of_memory_message(spec)) from None

    def _generate(self, entry, spec, request, settings, images, units, progress, cancel, started) -> Result:
        torch = entry["torch"]
        width, height = settings["width"], settings["height"]
        padded_w, padded_h = _padded(width), _padded(height)
        init = images.get("init_image")
        mask = images.get("mask")
        use_image2image = init is not None
        pipe = entry["image2image"] if use_image2image else entry["text2image"]
        pipe.scheduler = self._scheduler(entry, settings["scheduler"])
        device = entry["device"]
        generator = torch.Generator(device="cpu").manual_seed(settings["seed"])

        control_images = [_to_pil(_fit(unit["image"], padded_h, padded_w)) for unit in units]
        prompt_embeds, negative_embeds = self._embed(entry, request["prompt"], settings["negative_prompt"],
                                                     settings["guidance"])
        steps = settings["steps"]
        strength = settings["strength"] if use_image2image else 1.0
        total = max(1, int(steps * strength)) if use_image2image else steps
        blend = None
        if use_image2image and mask is not None:
            blend = _StrengthMask(pipe, _fit(mask[..., :1] if mask.ndim == 3 else mask[..., None], padded_h, padded_w),
                                  _fit(init, padded_h, padded_w), strength, generator, torch)

        def on_step_end(pipeline, step, timestep, callback_kwargs):
            if cancel.is_set():
                raise Cancelled()
            latents = callback_kwargs["latents"]
            if blend is not None:
                latents = blend.apply(latents, step, total)
                callback_kwargs["latents"] = latents
            preview = _preview(latents) if request.get("preview") else None
            progress(step + 1, total, preview)
            return callback_kwargs

        common = dict(
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
            num_inference_steps=steps, guidance_scale=settings["guidance"], generator=generator,
            controlnet_conditioning_scale=[u["weight"] for u in settings["units"]],
            control_guidance_start=[u["start"] for u in settings["units"]],
            control_guidance_end=[u["end"] for u in settings["units"]],
            output_type="np", callback_on_step_end=on_step_end, height=padded_h, width=padded_w,
        )
        if len(control_images) == 1:
            common["controlnet_conditioning_scale"] = common["controlnet_conditioning_scale"][0]
        with torch.inference_mode():
            if use_image2image:
                output = pipe(image=_to_pil(_fit(init, padded_h, padded_w)), control_image=control_images,
                              strength=strength, **common)
            else:
                output = pipe(image=control_images, **common)
        image = np.asarray(output.images[0], dtype=np.float32)
        image = _crop(image, height, width)
        return Result(image=np.ascontiguousarray(np.clip(image, 0.0, 1.0)), seed=settings["seed"],
                      timings={"total": round(time.perf_counter() - started, 4), "steps": total},
                      model=spec.source)

    def _scheduler(self, entry, name: str):
        cached = entry["schedulers"].get(name)
        if cached is not None:
            return cached
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, \
            EulerDiscreteScheduler, LCMScheduler, UniPCMultistepScheduler

        config = entry["text2image"].scheduler.config
        makers = {
            "euler": lambda: EulerDiscreteScheduler.from_config(config),
            "euler_a": lambda: EulerAncestralDiscreteScheduler.from_config(config),
            "dpmpp_2m": lambda: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
            "dpmpp_2m_karras": lambda: DPMSolverMultistepScheduler.from_config(
                config, algorithm_type="dpmsolver++", use_karras_sigmas=True),
            "ddim": lambda: DDIMScheduler.from_config(config),
            "unipc": lambda: UniPCMultistepScheduler.from_config(config),
            "lcm": lambda: LCMScheduler.from_config(config),
        }
        scheduler = makers[name]()
        entry["schedulers"][name] = scheduler
        return scheduler

    def _embed(self, entry, prompt: str, negative: str, guidance: float):
        key = (id(entry["text2image"]), prompt, negative, guidance > 1.0)
        found = self._embeddings.get(key)
        if found is None:
            pipe = entry["text2image"]
            positive, negative_embeds = pipe.encode_prompt(
                prompt, device=pipe._execution_device, num_images_per_prompt=1,
                do_classifier_free_guidance=guidance > 1.0, negative_prompt=negative or None)
            found = (positive, negative_embeds)
            if len(self._embeddings) > 64:
                self._embeddings.clear()
            self._embeddings[key] = found
        return found


class _StrengthMask:
    """Per-pixel denoising strength (differential diffusion): a pixel with strength s
    follows the noised initial image until the last s of the schedule, then denoises
    freely. Strength 1 = generate anew, 0 = keep the initial image."""

    def __init__(self, pipe, mask, init, strength, generator, torch):
        device = pipe._execution_device
        dtype = pipe.unet.dtype
        image = torch.from_numpy(np.ascontiguousarray(init[..., :3].transpose(2, 0, 1)))[None].to(device, dtype)
        with torch.no_grad():
            latents = pipe.vae.encode(image * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        self.init_latents = latents
        factor = pipe.vae_scale_factor
        small = mask[::factor, ::factor, 0] if mask.ndim == 3 else mask[::factor, ::factor]
        self.mask = torch.from_numpy(np.ascontiguousarray(np.clip(small, 0, 1), dtype=np.float32))[None, None].to(
            device, dtype)
        self.strength = max(float(strength), 1e-6)
        self.noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device, dtype)
        self.scheduler = pipe.scheduler
        self.torch = torch

    def apply(self, latents, step, total):
        timesteps = self.scheduler.timesteps
        order = getattr(self.scheduler, "order", 1)
        index = min((step + 1) * order, len(timesteps) - 1)
        done = (step + 1) / total  # fraction of this run's steps completed
        # A pixel joins the free denoising once the schedule's remaining fraction is within its strength.
        keep = (self.mask / self.strength) <= (1.0 - done)
        if not bool(keep.any()):
            return latents
        if step + 1 >= total:
            noised = self.init_latents
        else:
            noised = self.scheduler.add_noise(self.init_latents, self.noise, timesteps[index:index + 1])
        return self.torch.where(keep, noised.to(latents.dtype), latents)


def _generation_settings(request: dict, units: list, controlnet_count: int) -> dict:
    scheduler = request.get("scheduler", "euler")
    if scheduler not in SCHEDULERS:
        raise JobError("bad_scheduler", f"Unknown scheduler '{scheduler}'. Choose one of: {', '.join(SCHEDULERS)}")
    steps = request.get("steps", 20)
    if not 1 <= steps <= 1000:
        raise JobError("bad_request", "steps must be between 1 and 1000")
    width, height = request.get("width"), request.get("height")
    if not (isinstance(width, int) and isinstance(height, int) and 8 <= width <= 8192 and 8 <= height <= 8192):
        raise JobError("bad_request", "width and height must be whole numbers between 8 and 8192")
    strength = float(request.get("strength", 0.6))
    if not 0.0 < strength <= 1.0:
        raise JobError("bad_request", "strength must be in (0, 1]")
    guidance = float(request.get("guidance", 7.0))
    if not 0.0 <= guidance <= 50.0:
        raise JobError("bad_request", "guidance must be between 0 and 50")
    if not units:
        raise JobError("bad_request", "at least one ControlNet image is needed")
    if len(units) != controlnet_count:
        raise JobError("bad_request", f"{len(units)} ControlNet images for a model with {controlnet_count} ControlNets")
    settings_units = []
    for unit in units:
        weight, start, end = unit.get("weight", 1.0), unit.get("start", 0.0), unit.get("end", 1.0)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (weight, start, end)):
            raise JobError("bad_request", "ControlNet weight, start and end must be numbers")
        if not (0.0 <= start < end <= 1.0 and 0.0 <= weight <= 5.0):
            raise JobError("bad_request", "ControlNet units need 0 <= start < end <= 1 and a weight from 0 to 5")
        image = unit["image"]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise JobError("bad_request", "ControlNet images must be (height, width, channels) arrays")
        settings_units.append({"weight": float(weight), "start": float(start), "end": float(end)})
    seed = request.get("seed", 0)
    return {"scheduler": scheduler, "steps": steps, "width": width, "height": height, "strength": strength,
            "guidance": guidance, "units": settings_units, "seed": int(seed) % (2 ** 63),
            "negative_prompt": request.get("negative_prompt", "")}


def _padded(size: int) -> int:
    return max(SIZE_MULTIPLE, -(-size // SIZE_MULTIPLE) * SIZE_MULTIPLE)


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad an image to (height, width) by repeating its edge; the result is cropped back later."""
    data = np.asarray(image, dtype=np.float32)
    if data.ndim == 2:
        data = data[..., None]
    if data.dtype == np.uint8:
        data = data / 255.0
    pad_h, pad_w = max(0, height - data.shape[0]), max(0, width - data.shape[1])
    if pad_h or pad_w:
        data = np.pad(data, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return data[:height, :width]


def _crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return image[:height, :width]


def _to_pil(image: np.ndarray):
    from PIL import Image

    data = image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=2)
    return Image.fromarray((np.clip(data, 0, 1) * 255 + 0.5).astype(np.uint8))


def _preview(latents) -> np.ndarray:
    """A cheap RGB picture of the current latents (8x smaller than the output)."""
    data = latents[0].float().cpu().numpy().transpose(1, 2, 0)
    rgb = data @ LATENT_RGB
    return (np.clip((rgb + 1.0) * 0.5, 0, 1) * 255).astype(np.uint8)


def _check_source(source: str) -> None:
    """Fail early, and clearly, when the base model cannot be found."""
    if os.path.isfile(source):
        if not source.lower().endswith((".safetensors", ".ckpt")):
            raise JobError("bad_model", f"'{source}' is a file but not a .safetensors or .ckpt checkpoint")
        return
    if os.path.isdir(source):
        if not os.path.exists(os.path.join(source, "model_index.json")):
            raise JobError("bad_model", f"The folder '{source}' is not a diffusers model (no model_index.json)")
        return
    import re

    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) or os.path.isabs(source):
        raise JobError("bad_model", f"The model '{source}' does not exist: give a diffusers folder, a .safetensors "
                       "or .ckpt file, a hub repo id like 'owner/name', or 'tiny'")
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(source, "model_index.json")
    except Exception as error:
        raise JobError("bad_model", f"Cannot load the model '{source}': it is neither a local folder nor a model the "
                       f"hub could provide here ({_short(error)}). Give a local folder, a checkpoint file, or "
                       "'tiny' for offline tests") from None


def _choose_device(spec: ModelSpec):
    import torch

    device = spec.device
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise JobError("bad_device", "CUDA was asked for but this worker's torch sees no CUDA GPU")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise JobError("bad_device", "Apple MPS was asked for but is not available")
    precision = spec.precision
    if precision == "auto":
        precision = "fp16" if device == "cuda" else "fp32"
    if device == "cpu" and precision != "fp32":
        log.info("CPU runs in fp32 (asked for %s)", precision)
        precision = "fp32"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    return device, dtype


def _torch_if_loaded():
    import sys

    return sys.modules.get("torch")


def _free_memory() -> None:
    import gc

    gc.collect()
    torch = _torch_if_loaded()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def _explain_load_error(spec: ModelSpec, error: Exception) -> JobError:
    text = str(error)
    if isinstance(error, OSError) and ("offline" in text.lower() or "connect" in text.lower()
                                       or "does not appear to have" in text or "not a local folder" in text
                                       or "Repo id" in text or "repository" in text.lower()):
        return JobError("bad_model", f"Cannot load the model '{spec.source}': it is neither a local folder nor a "
                        f"model the hub could provide here ({_short(error)}). Give a local folder, a checkpoint "
                        "file, or 'tiny' for offline tests")
    return JobError("bad_model", f"Cannot load the model '{spec.source}': {_short(error)}")


def _is_out_of_memory(error: Exception) -> bool:
    """GPU out of memory, or the CPU allocator refusing (e.g. under SILK_WORKER_MEMORY_LIMIT_MB)."""
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def _out_of_memory_message(spec: ModelSpec) -> str:
    tips = [name for name, on in (("attention slicing", spec.attention_slicing), ("VAE tiling", spec.vae_tiling),
                                  ("model CPU offload", spec.cpu_offload)) if not on]
    return ("The GPU ran out of memory. Lower the resolution" + (", or turn on " + ", ".join(tips) if tips else "")
            + " in Silk's Worker settings. The worker is still running.")
