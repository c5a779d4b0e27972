"""The worker's Stable Diffusion backend (torch and diffusers live only here).

Models: a Hugging Face repo id, a local diffusers folder, a single-file
``.safetensors``/``.ckpt`` checkpoint, or ``tiny``/``tiny-xl`` (see tiny_model.py);
each with a ControlNet (repo id or folder) per unit, and optionally LoRAs. Two
families: SD 1.5 and SDXL, told apart by the model's ``model_index.json`` (or the
checkpoint's keys) unless the spec says. Loaded pipelines stay cached and
text-to-image and image-to-image share their components; prompt embeddings are
cached per prompt; LoRAs are applied to the cached pipeline, so changing their
weights never reloads the model.

Temporal feedback for animation (docs/worker.md, "Temporal feedback"): image-to-image
encodes and noises the initial image itself, with one noise (the seed's, or the request's
``noise``) that the per-pixel strength mask and occlusion-aware ``fusion`` then follow
every step; ``prompt_mix`` paints with a weighted mean of several prompts' embeddings.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import ip_adapter, tiny_model
from .server import Cancelled, JobError

log = logging.getLogger("silk.worker")

REQUIRED_MODULES = ("torch", "diffusers", "transformers", "safetensors", "numpy", "PIL")
SCHEDULERS = ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc", "lcm")
FAMILIES = ("sd15", "sdxl")
FAMILY_LABELS = {"sd15": "SD 1.5", "sdxl": "SDXL"}
# The ControlNet the engine uses per family and guide. SDXL has no widely used normal-map
# ControlNet in diffusers' format (the union models need another model class), so SDXL
# renders are steered by depth alone.
DEFAULT_CONTROLNETS = {
    "sd15": {"depth": "lllyasviel/control_v11f1p_sd15_depth", "normal": "lllyasviel/control_v11p_sd15_normalbae"},
    "sdxl": {"depth": "diffusers/controlnet-depth-sdxl-1.0"},
}
# text-to-image and image-to-image pipeline classes per family
PIPELINES = {
    "sd15": ("StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline"),
    "sdxl": ("StableDiffusionXLControlNetPipeline", "StableDiffusionXLControlNetImg2ImgPipeline"),
}
# The VAE's downsampling factor and the UNet's: sizes are padded to a multiple of this.
SIZE_MULTIPLE = 64
# Latent-to-RGB approximations for cheap previews (rows: latent channels; then a bias per colour).
LATENT_RGB = {
    "sd15": (np.array([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264],
                       [-0.184, -0.271, -0.473]]), np.zeros(3)),
    "sdxl": (np.array([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
                       [-0.3165, -0.2492, -0.2188]]), np.array([0.1084, -0.0175, -0.0011])),
}
LORA_WEIGHT_LIMIT = 10.0
PROMPT_MIX_LIMIT = 64  # prompts in one prompt_mix
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class LoraSpec:
    path: str
    weight: float = 1.0


@dataclass
class ModelSpec:
    source: str
    controlnets: list = field(default_factory=list)
    config: str | None = None  # for a single-file checkpoint: the diffusers folder or repo id whose configs it uses
    family: str = "auto"  # auto, sd15 or sdxl
    loras: list = field(default_factory=list)  # [LoraSpec]
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
        for name in ("device", "precision", "family"):
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
        if spec.family not in ("auto",) + FAMILIES:
            raise JobError("bad_model", f"unknown family {spec.family!r} (auto, sd15 or sdxl)")
        config = data.get("config")
        if config is not None:
            if not isinstance(config, str) or not config.strip():
                raise JobError("bad_model", "'config' must be a diffusers folder or hub repo id")
            if not spec.source.lower().endswith((".safetensors", ".ckpt")):
                raise JobError("bad_model", "'config' is only for single-file checkpoints (.safetensors or .ckpt); "
                               "a folder or repo id brings its own configs")
            spec.config = config.strip()
        spec.loras = _lora_specs(data.get("loras", []))
        return spec

    def key(self) -> tuple:
        """What identifies a loaded pipeline. Not the LoRAs: they are applied to the loaded
        pipeline, so changing them never reloads the model."""
        return (self.source, tuple(self.controlnets), self.config, self.family, self.device, self.precision,
                self.attention_slicing, self.vae_tiling, self.cpu_offload)


def _lora_specs(loras) -> list:
    if not isinstance(loras, list):
        raise JobError("bad_lora", "'loras' must be a list of {\"path\": file, \"weight\": number}")
    specs = []
    for lora in loras:
        if not isinstance(lora, dict) or not isinstance(lora.get("path"), str) or not lora["path"].strip():
            raise JobError("bad_lora", "each LoRA needs a 'path' to its .safetensors file")
        weight = lora.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or abs(weight) > LORA_WEIGHT_LIMIT:
            raise JobError("bad_lora", f"the LoRA weight must be a number from -{LORA_WEIGHT_LIMIT:g} to "
                           f"{LORA_WEIGHT_LIMIT:g}")
        specs.append(LoraSpec(path=os.path.abspath(os.path.expanduser(lora["path"].strip())), weight=float(weight)))
    paths = [lora.path for lora in specs]
    if len(set(paths)) != len(paths):
        raise JobError("bad_lora", "each LoRA file may be listed once (add up its weights instead)")
    return specs


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
        self._ip_adapters = ip_adapter.IPAdapters(cache_dir)

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
                "controlnets": len(entry["controlnets"]), "family": entry["family"],
                "loras": len(entry["loras"])}

    def _pipeline(self, spec: ModelSpec) -> dict:
        """The loaded pipeline for ``spec`` (loading it if needed), with the spec's LoRAs applied."""
        self._require()
        with self._lock:
            entry = self._pipelines.get(spec.key())
            if entry is None:
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
                log.info("loaded %s (%s) on %s in %.1f s", spec.source, entry["family"], entry["device"],
                         time.perf_counter() - started)
                self._pipelines[spec.key()] = entry
            self._apply_loras(entry, spec.loras)
            return entry

    def _load(self, spec: ModelSpec) -> dict:
        import diffusers
        import torch
        from diffusers import ControlNetModel

        device, dtype = _choose_device(spec)
        self._device_name = device
        source = spec.source
        controlnet_sources = [self._resolve_controlnet(name) for name in spec.controlnets]
        if source in tiny_model.TINY_MODELS:
            source, tiny_controlnets = self._tiny(source)
            controlnet_sources = controlnet_sources or tiny_controlnets
        controlnet_names = spec.controlnets or controlnet_sources  # as the user wrote them, for messages
        _check_source(source)
        config = self._tiny(spec.config)[0] if spec.config in tiny_model.TINY_MODELS else spec.config
        if config is not None:
            _check_config(config)
        family = _choose_family(spec, source, config)
        if not controlnet_sources:
            raise JobError("bad_model", "at least one ControlNet is needed (a repo id or folder per unit)")
        controlnets = []
        for name, controlnet in zip(controlnet_names, controlnet_sources):
            try:
                controlnets.append(ControlNetModel.from_pretrained(controlnet, torch_dtype=dtype))
            except Exception as error:
                raise JobError("missing_controlnet", f"Cannot load the ControlNet '{name}': {_short(error)}. "
                               "Give a hub repo id (with internet or a filled cache) or a local folder") from None
        text2image_class, image2image_class = (getattr(diffusers, name) for name in PIPELINES[family])
        options = ({"safety_checker": None, "requires_safety_checker": False} if family == "sd15"
                   else {"add_watermarker": False})
        if os.path.isfile(source):
            if config is not None:
                options["config"] = config
            text2image = text2image_class.from_single_file(source, controlnet=controlnets, torch_dtype=dtype, **options)
        else:
            text2image = text2image_class.from_pretrained(source, controlnet=controlnets, torch_dtype=dtype, **options)
        for name, controlnet in zip(controlnet_names, controlnets):
            _check_controlnet_fits(name, controlnet.config, spec.source, text2image.unet.config, family)
        text2image.set_progress_bar_config(disable=True)
        if spec.cpu_offload and device == "cuda":
            text2image.enable_model_cpu_offload()
        else:
            text2image.to(device)
        if spec.attention_slicing:
            text2image.enable_attention_slicing()
        if spec.vae_tiling:
            text2image.vae.enable_tiling()
        image2image = image2image_class.from_pipe(text2image)
        image2image.set_progress_bar_config(disable=True)
        return {"text2image": text2image, "image2image": image2image, "device": device, "family": family,
                "dtype": str(dtype).replace("torch.", ""), "controlnets": controlnets, "spec": spec,
                "schedulers": {}, "loras": {}, "lora_weights": (), "torch": torch}

    def _tiny(self, name: str) -> tuple:
        """A tiny model's folder (built on first use) and its ControlNet folders."""
        ensure, controlnets = tiny_model.TINY_MODELS[name]
        folder = ensure(self.cache_dir)
        return folder, [os.path.join(folder, sub) for sub in controlnets.values()]

    def _resolve_controlnet(self, name: str) -> str:
        """``tiny:depth``, ``tiny-xl:depth`` etc. name a tiny model's ControlNet; anything else is as given."""
        model, _, kind = name.partition(":")
        if kind and model in tiny_model.TINY_MODELS:
            folders = tiny_model.TINY_MODELS[model][1]
            if kind not in folders:
                raise JobError("missing_controlnet", f"'{model}' has no '{kind}' ControlNet (it has: "
                               + ", ".join(folders) + ")")
            return os.path.join(self._tiny(model)[0], folders[kind])
        return name

    # -- LoRAs ------------------------------------------------------------
    def _apply_loras(self, entry: dict, loras: list) -> None:
        """Make the pipeline's adapters exactly ``loras``: load files not loaded yet (each under
        its own adapter name), drop the ones no longer wanted, then set the weights. A file is
        known by path, size and modification time, so one rewritten on disk is read again."""
        pipe = entry["text2image"]
        if loras and importlib.util.find_spec("peft") is None:
            raise JobError("missing_modules", "LoRAs need the 'peft' package in the worker's Python: run 'Install "
                           "worker environment' in Silk's preferences again, or pip install peft")
        wanted = []
        for lora in loras:
            try:
                stat = os.stat(lora.path)
            except OSError:
                raise JobError("bad_lora", f"The LoRA file '{lora.path}' does not exist") from None
            identity = f"{lora.path}|{stat.st_size}|{stat.st_mtime_ns}"
            wanted.append(("lora_" + hashlib.sha1(identity.encode()).hexdigest()[:12], lora))
        loaded = entry["loras"]
        wanted_names = [name for name, _ in wanted]
        stale = [name for name in loaded if name not in wanted_names]
        if stale:
            if len(stale) == len(loaded):
                pipe.unload_lora_weights()  # restores the original layers, not just empty adapters
            else:
                pipe.delete_adapters(stale)
            for name in stale:
                del loaded[name]
        for name, lora in wanted:
            if name not in loaded:
                entry["lora_weights"] = None  # loading changes which adapters are active: set them again below
                self._load_lora(entry, name, lora)
                loaded[name] = lora.path
        weights = tuple((name, lora.weight) for name, lora in wanted)
        if wanted and weights != entry["lora_weights"]:
            pipe.set_adapters(wanted_names, adapter_weights=[lora.weight for _, lora in wanted])
        entry["lora_weights"] = weights

    def _load_lora(self, entry: dict, name: str, lora: LoraSpec) -> None:
        pipe = entry["text2image"]
        label = FAMILY_LABELS[entry["family"]]
        try:
            with _logged_warnings("diffusers.utils.peft_utils") as warnings:
                pipe.load_lora_weights(lora.path, adapter_name=name)
        except Exception as error:  # diffusers removes a half-loaded adapter itself
            text = str(error)
            mismatch = re.search(r"size mismatch for (\S+?): copying a param with shape torch\.Size\((\[[^\]]*\])\) "
                                 r"from checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)", text)
            if mismatch:
                layer = mismatch.group(1).replace(f".{name}.", ".")
                reason = (f"its layers have other shapes than this {label} model's (e.g. {layer}: "
                          f"{mismatch.group(2)} vs {mismatch.group(3)}); is it made for another model family?")
            elif "not found in the base model" in text:
                reason = f"it names layers this {label} model does not have; is it made for another model family?"
            else:
                reason = f"it is not a LoRA diffusers can read ({_short(error)})"
            raise JobError("bad_lora", f"The LoRA '{lora.path}' does not fit the model '{entry['spec'].source}': "
                           + reason) from None
        # diffusers loads a LoRA whose layers only partly exist in the model and merely logs the
        # rest as unexpected keys: a partial fit means a LoRA made for another model.
        unused = [message for message in warnings if "unexpected keys" in message or "missing keys" in message]
        if unused or not any(name in names for names in pipe.get_list_adapters().values()):
            if unused and entry["loras"]:
                pipe.delete_adapters([name])
            elif unused:
                pipe.unload_lora_weights()
            raise JobError("bad_lora", f"The LoRA '{lora.path}' does not fit the model '{entry['spec'].source}': "
                           f"some of its weights match no layer of this {label} model; is it made for another "
                           "model family?")

    # -- generation -------------------------------------------------------
    def generate(self, request: dict, images: dict, units: list, progress, cancel) -> Result:
        spec = ModelSpec.from_request(request["model"])
        entry = self._pipeline(spec)
        settings = _generation_settings(request, units, len(entry["controlnets"]), "init_image" in images)
        settings["image_prompt"] = ip_adapter.parse_request(request, images.get("image_prompts", []))
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

    def generate_video(self, request: dict, images: dict, units: list, progress, cancel):
        """One window of frames with a motion module: see bridge/motion.py."""
        from .motion import generate_video

        return generate_video(self, request, images, units, progress, cancel)

    def _generate(self, entry, spec, request, settings, images, units, progress, cancel, started) -> Result:
        torch = entry["torch"]
        width, height = settings["width"], settings["height"]
        padded_w, padded_h = _padded(width), _padded(height)
        init = images.get("init_image")
        mask = images.get("mask")
        use_image2image = init is not None
        pipe = entry["image2image"] if use_image2image else entry["text2image"]
        pipe.scheduler = self._scheduler(entry, settings["scheduler"])
        scheduler = pipe.scheduler
        device, dtype = pipe._execution_device, pipe.unet.dtype
        factor = pipe.vae_scale_factor
        latent_shape = (1, pipe.unet.config.in_channels, padded_h // factor, padded_w // factor)
        given_noise = _checked_noise(images.get("noise"), height, width, factor, latent_shape[1])
        generator = torch.Generator(device="cpu").manual_seed(settings["seed"])

        control_images = [_to_pil(_fit(unit["image"], padded_h, padded_w)) for unit in units]
        embeddings = dict(self._prompt_embeddings(entry, request["prompt"], settings),  # a copy: those are cached
                          **self._ip_adapters.arguments(entry, settings["image_prompt"], settings["guidance"]))
        steps = settings["steps"]
        strength = settings["strength"] if use_image2image else 1.0
        # The starting noise: the seed's (drawn here exactly as the pipeline would draw it, so the
        # generator is left in the same state for an ancestral sampler's per-step noise), with the
        # request's noise in place of it over the frame; the rest is the padding to a multiple of 64.
        noise = None
        if given_noise is not None or use_image2image:
            from diffusers.utils.torch_utils import randn_tensor

            noise = randn_tensor(latent_shape, generator=generator, device=torch.device(device), dtype=dtype)
            if given_noise is not None:
                rows, columns = given_noise.shape[:2]
                noise[:, :, :rows, :columns] = torch.from_numpy(
                    np.ascontiguousarray(given_noise.transpose(2, 0, 1)))[None].to(device, dtype)
        latents = None
        total = steps
        guides = []
        if use_image2image:
            # Encode and noise the initial image here (the pipeline skips its own noising when
            # given latents): the strength mask and fusion then follow the very noise that
            # started the run.
            scheduler.set_timesteps(steps, device=device)
            timesteps, total = pipe.get_timesteps(steps, strength, device)
            if total < 1 or len(timesteps) == 0:
                raise JobError("bad_request", f"{steps} steps at strength {strength:g} leave no step to run: "
                               "raise steps or strength")
            begin = len(scheduler.timesteps) - len(timesteps)
            init_latents = _encode_image(pipe, _fit(init, padded_h, padded_w), torch)
            latents = scheduler.add_noise(init_latents, noise, timesteps[:1])
            target = _NoisedInit(init_latents, noise, scheduler, begin)
            fitted_mask = None
            if mask is not None:
                fitted_mask = _fit(mask[..., :1] if mask.ndim == 3 else mask[..., None], padded_h, padded_w)
                guides.append(_StrengthMask(target, fitted_mask, strength, factor, torch))
            if settings["fusion"] > 0:
                visible = _visible_latents(fitted_mask, factor, padded_h, padded_w, device, torch)
                guides.append(_Fusion(target, visible, settings["fusion"], torch, settings["fusion_end"]))
        elif given_noise is not None:
            latents = noise  # the text-to-image pipeline scales it by the scheduler's init_noise_sigma

        def on_step_end(pipeline, step, timestep, callback_kwargs):
            if cancel.is_set():
                raise Cancelled()
            latents = callback_kwargs["latents"]
            for guide in guides:
                latents = guide.apply(latents, step, total)
            if guides:
                callback_kwargs["latents"] = latents
            preview = _preview(latents, height, width, entry["family"]) if request.get("preview") else None
            progress(step + 1, total, preview)
            return callback_kwargs

        common = dict(
            num_inference_steps=steps, guidance_scale=settings["guidance"], generator=generator,
            controlnet_conditioning_scale=[u["weight"] for u in settings["units"]],
            control_guidance_start=[u["start"] for u in settings["units"]],
            control_guidance_end=[u["end"] for u in settings["units"]],
            output_type="np", callback_on_step_end=on_step_end, height=padded_h, width=padded_w, **embeddings,
        )
        if latents is not None:
            common["latents"] = latents
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

    def _prompt_embeddings(self, entry, prompt: str, settings: dict) -> dict:
        """The request's embeddings: its prompt's, or the mix of its ``prompt_mix``."""
        if settings["prompt_mix"]:
            return self._mixed_embeddings(entry, settings["prompt_mix"], settings["guidance"])
        return self._embed(entry, prompt, settings["negative_prompt"], settings["guidance"])

    def _mixed_embeddings(self, entry, mix: list, guidance: float) -> dict:
        """Prompt travel: the weight-normalised sum of each (prompt, negative prompt, weight)'s
        embeddings (and of SDXL's pooled ones). Each entry's embeddings come from the cache;
        entries of weight 0 are not encoded, and a single entry left is used exactly as it is."""
        total = sum(weight for _, _, weight in mix)
        parts = [(self._embed(entry, prompt, negative, guidance), weight / total)
                 for prompt, negative, weight in mix if weight > 0]
        if len(parts) == 1:
            return parts[0][0]
        mixed = {}
        for name, first in parts[0][0].items():
            if first is None:  # no negative embeddings without classifier-free guidance
                mixed[name] = None
                continue
            value = first * parts[0][1]
            for embeddings, weight in parts[1:]:
                value = value + embeddings[name] * weight
            mixed[name] = value
        return mixed

    def _embed(self, entry, prompt: str, negative: str, guidance: float) -> dict:
        """The prompt's embeddings as pipeline arguments (SDXL adds the pooled ones), cached.
        LoRAs on a text encoder change them, so their weights are part of the key."""
        pipe = entry["text2image"]
        text_adapters = {name for component, names in pipe.get_list_adapters().items()
                         if component.startswith("text_encoder") for name in names} if entry["loras"] else set()
        text_loras = tuple(item for item in entry["lora_weights"] if item[0] in text_adapters)
        key = (id(pipe), prompt, negative, guidance > 1.0, text_loras)
        found = self._embeddings.get(key)
        if found is None:
            encoded = pipe.encode_prompt(
                prompt, device=pipe._execution_device, num_images_per_prompt=1,
                do_classifier_free_guidance=guidance > 1.0, negative_prompt=negative or None)
            names = ("prompt_embeds", "negative_prompt_embeds")
            if entry["family"] == "sdxl":
                names += ("pooled_prompt_embeds", "negative_pooled_prompt_embeds")
            found = dict(zip(names, encoded))
            if len(self._embeddings) > 64:
                self._embeddings.clear()
            self._embeddings[key] = found
        return found


def _encode_image(pipe, image: np.ndarray, torch):
    """The VAE's latents of an RGB picture in [0, 1] (the distribution's mean, no sampling:
    the same picture always gives the same latents), scaled as the pipelines scale them."""
    device = pipe._execution_device
    dtype = pipe.unet.dtype
    vae = pipe.vae
    if image.shape[2] < 3:  # grey (or grey and alpha): the grey on every channel, as _to_pil does
        image = np.repeat(image[..., :1], 3, axis=2)
    # SDXL's VAE overflows in fp16 (force_upcast): encode in fp32 as its pipelines do.
    vae_dtype = torch.float32 if getattr(vae.config, "force_upcast", False) and dtype == torch.float16 else dtype
    pixels = torch.from_numpy(np.ascontiguousarray(image[..., :3].transpose(2, 0, 1)))[None].to(device, vae_dtype)
    original_vae_dtype = vae.dtype
    with torch.no_grad():
        if vae_dtype != original_vae_dtype:
            vae.to(vae_dtype)
        latents = vae.encode(pixels * 2 - 1).latent_dist.mean
        if vae_dtype != original_vae_dtype:
            vae.to(original_vae_dtype)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents)
        latents = (latents - mean) * vae.config.scaling_factor / std
    else:
        latents = latents * vae.config.scaling_factor
    return latents.to(dtype)


class _NoisedInit:
    """The initial image's latents noised, with the noise that started the run, to the noise
    level the latents have after a step of the run. ``begin`` is where the run's (truncated)
    schedule starts in the scheduler's timesteps."""

    def __init__(self, init_latents, noise, scheduler, begin: int):
        self.init_latents = init_latents
        self.noise = noise
        self.scheduler = scheduler
        self.begin = begin
        self._cached = (None, None)

    def after(self, step: int, total: int):
        if self._cached[0] == step:
            return self._cached[1]
        if step + 1 >= total:
            noised = self.init_latents
        else:
            timesteps = self.scheduler.timesteps
            index = min(self.begin + step + 1, len(timesteps) - 1)
            # Schedulers that count steps (Euler, DPM-Solver, UniPC) take the level from their step
            # index, the others (DDIM, LCM) from this timestep: the same level either way.
            noised = self.scheduler.add_noise(self.init_latents, self.noise, timesteps[index:index + 1])
        self._cached = (step, noised)
        return noised


class _StrengthMask:
    """Per-pixel denoising strength (differential diffusion): a pixel with strength s
    follows the noised initial image until the last s of the schedule, then denoises
    freely. Strength 1 = generate anew, 0 = keep the initial image."""

    def __init__(self, target: _NoisedInit, mask: np.ndarray, strength: float, factor: int, torch):
        self.target = target
        self.init_latents = target.init_latents
        latents = target.init_latents
        small = mask[::factor, ::factor, 0] if mask.ndim == 3 else mask[::factor, ::factor]
        self.mask = torch.from_numpy(np.ascontiguousarray(np.clip(small, 0, 1), dtype=np.float32))[None, None].to(
            latents.device, latents.dtype)
        self.strength = max(float(strength), 1e-6)
        self.torch = torch

    def apply(self, latents, step, total):
        done = (step + 1) / total  # fraction of this run's steps completed
        # A pixel joins the free denoising once the schedule's remaining fraction is within its strength.
        keep = (self.mask / self.strength) <= (1.0 - done)
        if not bool(keep.any()):
            return latents
        return self.torch.where(keep, self.target.after(step, total).to(latents.dtype), latents)


class _Fusion:
    """Occlusion-aware latent fusion: after every step, the latents of pixels visible in the
    previous frame move ``amount`` of the way to the initial image's latents noised to the
    same level; pixels the previous frame did not see denoise freely. After the fraction ``end``
    of the steps fusion stops, so the last steps refine the frame instead of pulling it toward
    the (resampled, softer) previous frame."""

    def __init__(self, target: _NoisedInit, visible, amount: float, torch, end: float = 1.0):
        self.target = target
        self.visible = visible  # (1, 1, h, w) bool on the latent grid, or None: every pixel
        self.amount = float(amount)
        self.torch = torch
        self.end = float(end)

    def apply(self, latents, step, total):
        if (step + 1) / total > self.end + 1e-9:
            return latents
        target = self.target.after(step, total).to(latents.dtype)
        pulled = self.torch.lerp(latents, target, self.amount)  # exactly ``target`` at amount 1
        if self.visible is None:
            return pulled
        return self.torch.where(self.visible, pulled, latents)


def _visible_latents(mask: np.ndarray | None, factor: int, height: int, width: int, device, torch):
    """Which latent pixels the previous frame saw: those whose every frame pixel has a
    strength below 1 (so a silhouette's latent pixel is repainted). ``mask`` is at the padded
    frame size; None (no mask) means every pixel was visible."""
    if mask is None:
        return None
    values = np.asarray(mask, dtype=np.float32).reshape(height, width)
    blocks = values.reshape(height // factor, factor, width // factor, factor).max(axis=(1, 3))
    return torch.from_numpy(np.ascontiguousarray(blocks < 1.0))[None, None].to(device)


def _checked_noise(noise, height: int, width: int, factor: int, channels: int):
    """The request's latent noise, checked: float32 (rows, columns, channels) at the latent size
    of the requested frame (before padding), finite."""
    if noise is None:
        return None
    expected = (-(-height // factor), -(-width // factor), channels)
    if not isinstance(noise, np.ndarray) or noise.dtype != np.float32:
        kind = noise.dtype.name if isinstance(noise, np.ndarray) else type(noise).__name__
        raise JobError("bad_request", f"noise must be a float32 array, not {kind}")
    if tuple(noise.shape) != expected:
        raise JobError("bad_request", f"noise must have the shape {expected} (ceil(height/{factor}), "
                       f"ceil(width/{factor}), {channels} latent channels) for a {width}x{height} frame, "
                       f"not {tuple(noise.shape)}")
    if not np.isfinite(noise).all():
        raise JobError("bad_request", "noise must be finite (no NaN or infinity)")
    return noise


class _logged_warnings:
    """Collect the warnings one logger emits inside a ``with`` block (as a list of messages)."""

    def __init__(self, name: str):
        self.logger = logging.getLogger(name)
        self.messages: list = []
        self.handler = logging.Handler(logging.WARNING)
        self.handler.emit = lambda record: self.messages.append(record.getMessage())

    def __enter__(self) -> list:
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)  # also when diffusers' verbosity is set quieter
        self.logger.addHandler(self.handler)
        return self.messages

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def _generation_settings(request: dict, units: list, controlnet_count: int, has_init: bool = False) -> dict:
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
    fusion = request.get("fusion", 0.0)
    if isinstance(fusion, bool) or not isinstance(fusion, (int, float)) or not 0.0 <= fusion <= 1.0:
        raise JobError("bad_request", "fusion must be a number from 0 to 1")
    if fusion > 0 and not has_init:
        raise JobError("bad_request", "fusion pulls the latents toward the initial image: it needs an init_image")
    fusion_end = request.get("fusion_end", 1.0)
    if isinstance(fusion_end, bool) or not isinstance(fusion_end, (int, float)) or not 0.0 <= fusion_end <= 1.0:
        raise JobError("bad_request", "fusion_end must be a number from 0 to 1")
    seed = request.get("seed", 0)
    return {"scheduler": scheduler, "steps": steps, "width": width, "height": height, "strength": strength,
            "guidance": guidance, "units": settings_units, "seed": int(seed) % (2 ** 63),
            "negative_prompt": request.get("negative_prompt", ""), "fusion": float(fusion),
            "fusion_end": float(fusion_end),
            "prompt_mix": _prompt_mix(request.get("prompt_mix"))}


def _prompt_mix(mix) -> list:
    """``prompt_mix`` as [(prompt, negative prompt, weight)]; empty when not given (or empty)."""
    if mix is None:
        return []
    if not isinstance(mix, list) or len(mix) > PROMPT_MIX_LIMIT:
        raise JobError("bad_request", f"prompt_mix must be a list of at most {PROMPT_MIX_LIMIT} "
                       "{\"prompt\", \"negative_prompt\", \"weight\"} objects")
    entries = []
    for index, item in enumerate(mix):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) \
                or not isinstance(item.get("negative_prompt", ""), str):
            raise JobError("bad_request", f"prompt_mix[{index}] needs a 'prompt' (text) and may have a "
                           "'negative_prompt' (text)")
        weight = item.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise JobError("bad_request", f"prompt_mix[{index}] needs a 'weight': a number of at least 0")
        entries.append((item["prompt"], item.get("negative_prompt", ""), float(weight)))
    if entries and not sum(weight for _, _, weight in entries) > 0:
        raise JobError("bad_request", "the weights of prompt_mix must add up to more than 0")
    return entries


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


def _preview(latents, height: int, width: int, family: str = "sd15") -> np.ndarray:
    """A cheap RGB picture of the current latents, one pixel per 8x8 block of the requested
    frame (the padding added to reach a multiple of 64 is cut off)."""
    rows, columns = -(-height // 8), -(-width // 8)
    data = latents[0, :, :rows, :columns].float().cpu().numpy().transpose(1, 2, 0)
    factors, bias = LATENT_RGB[family]
    rgb = data @ factors + bias
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
    if not _REPO_ID.fullmatch(source) or os.path.isabs(source):
        raise JobError("bad_model", f"The model '{source}' does not exist: give a diffusers folder, a .safetensors "
                       "or .ckpt file, a hub repo id like 'owner/name', or 'tiny'")
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(source, "model_index.json")
    except Exception as error:
        raise JobError("bad_model", f"Cannot load the model '{source}': it is neither a local folder nor a model the "
                       f"hub could provide here ({_short(error)}). Give a local folder, a checkpoint file, or "
                       "'tiny' for offline tests") from None


def _check_config(config: str) -> None:
    if os.path.isdir(config):
        if not os.path.exists(os.path.join(config, "model_index.json")):
            raise JobError("bad_model", f"The config folder '{config}' is not a diffusers model (no model_index.json)")
    elif not _REPO_ID.fullmatch(config) or os.path.isabs(config):
        raise JobError("bad_model", f"The config '{config}' is neither a diffusers folder nor a hub repo id")


def _pipeline_class_name(name: str) -> str | None:
    """The ``_class_name`` in a diffusers folder's or hub repo's model_index.json, if it can be read here."""
    try:
        if os.path.isdir(name):
            path = os.path.join(name, "model_index.json")
        elif _REPO_ID.fullmatch(name):
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(name, "model_index.json")
        else:
            return None
        with open(path) as handle:
            return json.load(handle).get("_class_name")
    except Exception:  # unreadable or offline: the family falls back to the spec or SD 1.5
        return None


def _checkpoint_family(path: str) -> str | None:
    """SDXL checkpoints keep their text encoders under ``conditioner.embedders``; SD 1.5 ones under
    ``cond_stage_model``. Only .safetensors can be peeked at without loading everything."""
    if not path.lower().endswith(".safetensors"):
        return None
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            keys = list(handle.keys())
    except Exception:  # a broken file is reported by the loader, with its own message
        return None
    if any(key.startswith("conditioner.embedders.1.") for key in keys):
        return "sdxl"
    if any(key.startswith("cond_stage_model.transformer.") for key in keys):
        return "sd15"
    return None


def _choose_family(spec: ModelSpec, source: str, config: str | None) -> str:
    """``spec.family`` unless "auto"; else what the model says: "XL" in its pipeline class name
    (model_index.json), or a single file's keys. A family the model contradicts is an error."""
    described = config if os.path.isfile(source) else source
    class_name = _pipeline_class_name(described) if described else None
    if class_name:
        detected, evidence = ("sdxl" if "XL" in class_name else "sd15"), f"its model_index.json names {class_name}"
    else:
        detected = _checkpoint_family(source) if os.path.isfile(source) else None
        evidence = "its checkpoint keys say so"
    if spec.family == "auto":
        return detected or "sd15"
    if detected and detected != spec.family:
        raise JobError("bad_model", f"The model '{spec.source}' is {FAMILY_LABELS[detected]} ({evidence}), but the "
                       f"spec's family is '{spec.family}': set family to 'auto' or '{detected}'")
    return spec.family


def _unet_family(config) -> str:
    if config.get("addition_embed_type") == "text_time":
        return "SDXL"
    return "SD 2" if config.get("cross_attention_dim") == 1024 else "SD 1.5"


def _check_controlnet_fits(name: str, controlnet_config, source: str, unet_config, family: str) -> None:
    """A ControlNet adds its outputs to the UNet's blocks and reads the same text embeddings:
    those shapes must agree. Say so in words instead of letting torch fail on a shape."""
    def norm(value):
        return tuple(value) if isinstance(value, (list, tuple)) else value

    for key, label in (("addition_embed_type", "added embedding"), ("cross_attention_dim", "text-embedding width"),
                       ("block_out_channels", "block channels"), ("layers_per_block", "layers per block")):
        made_for, model = norm(controlnet_config.get(key)), norm(unet_config.get(key))
        if made_for == model:
            continue
        controlnet_family, model_family = _unet_family(controlnet_config), _unet_family(unet_config)
        if controlnet_family != model_family:
            suggestion = DEFAULT_CONTROLNETS[family]["depth"]
            raise JobError("controlnet_mismatch", f"The ControlNet '{name}' is made for {controlnet_family} models, but "
                           f"the model '{source}' is {model_family} (their {label} differs: {made_for} vs {model}). "
                           f"Use an {model_family} ControlNet, e.g. '{suggestion}' for depth")
        raise JobError("controlnet_mismatch", f"The ControlNet '{name}' does not fit the model '{source}': their "
                       f"{label} differs ({made_for} vs {model})")


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
    hub_trouble = ("offline" in text.lower() or "connect" in text.lower() or "does not appear to have" in text
                   or "not a local folder" in text or "Repo id" in text or "repository" in text.lower()
                   or "snapshot" in text or "outgoing traffic" in text)
    if os.path.isfile(spec.source):
        if "Unable to load weights from checkpoint file" in text or "header" in text.lower():
            return JobError("bad_model", f"Cannot load the model '{spec.source}': the file is not a readable "
                            f"checkpoint ({_short(error)})")
        if "appear to be missing" in text:
            return JobError("bad_model", f"Cannot load the model '{spec.source}': the file is not a Stable Diffusion "
                            f"checkpoint of this family ({_short(error)})")
        if hub_trouble and spec.config is None:
            return JobError("bad_model", f"Cannot load the model '{spec.source}': a single-file checkpoint needs "
                            f"the diffusers configs of its architecture, which the hub could not provide here "
                            f"({_short(error)}). Set the model's 'config' to a diffusers folder of the same "
                            "architecture")
    if isinstance(error, OSError) and hub_trouble:
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
