"""The worker's Stable Diffusion backend (torch and diffusers live only in this package).

Models: a Hugging Face repo id, a local diffusers folder, a single-file ``.safetensors``/
``.ckpt`` checkpoint, or one Silk builds (``tiny``, ``tiny-xl``, ``sd15-random``; see
tiny_model.py); each with a ControlNet (repo id or folder) per unit, and optionally LoRAs.
The family (bridge/families.py) is detected from the model itself. Loaded pipelines stay
cached and text-to-image and image-to-image share their components in the precision asked
for; prompt embeddings are cached per prompt; LoRAs are applied to the cached pipeline, so
changing their weights never reloads the model.

By concern: ``loading`` (device, precision, family, pipelines), ``loras``, ``prompts``
(embeddings, prompt_mix), ``guides`` (per-step latent edits: strength mask, fusion),
``pictures`` (padding, VAE encoding, previews) and ``generation`` (one request's steps).
Requests are typed in bridge/schema.py; errors live in bridge/errors.py.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time

from ..errors import Cancelled, JobError
from .. import ip_adapter
from ..schema import FRAME_FIELDS, ControlUnit, GenerateRequest, ModelRequest
from . import generation, loading, loras
from .generation import Result
from .guides import Fusion, NoisedInit, StrengthMask, visible_latents
from .pictures import preview
from .prompts import PromptEmbeddings

__all__ = ["DiffusionBackend", "JobError", "Cancelled", "Result", "Fusion", "NoisedInit", "StrengthMask",
           "visible_latents", "preview"]
log = logging.getLogger("silk.worker")
REQUIRED_MODULES = ("torch", "diffusers", "transformers", "safetensors", "numpy", "PIL")


class DiffusionBackend:
    def __init__(self, cache_dir: str | None = None, max_pipelines: int = 1):
        self.cache_dir = cache_dir
        self.max_pipelines = max_pipelines
        self._pipelines: dict = {}  # ModelRequest.key() -> LoadedModel
        self._embeddings = PromptEmbeddings()
        self._ip_adapters = ip_adapter.IPAdapters(cache_dir)
        self._lock = threading.Lock()
        self._device_name = None

    # -- environment ------------------------------------------------------
    @staticmethod
    def missing_modules() -> list:
        return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]

    def status(self) -> dict:
        """The device, the loaded models (each with its family and every component's dtype and
        device), GPU memory where there is a GPU, and missing libraries."""
        info = {"device": self._device_name, "models": [key[0] for key in self._pipelines],
                "loaded": [loaded.describe() for loaded in self._pipelines.values()],
                "gpu_free_bytes": None, "missing": self.missing_modules()}
        torch = sys.modules.get("torch")
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
    def load(self, model) -> dict:
        """Load ``model`` (a ModelRequest or its JSON); the reply says what was loaded, its
        family included, and every component's dtype and device."""
        return self.loaded(ModelRequest.from_json(model)).describe()

    def loaded(self, model: ModelRequest):
        """The LoadedModel for ``model`` (loading it if needed), with the model's LoRAs applied."""
        self._require()
        with self._lock:
            found = self._pipelines.get(model.key())
            if found is None:
                self._pipelines.clear()  # one model at a time keeps memory predictable
                self._embeddings.clear()
                free_memory()
                started = time.perf_counter()
                try:
                    found = loading.load(model, self.cache_dir)
                except JobError:
                    raise
                except Exception as error:
                    raise loading.explain_load_error(model, error) from None
                self._device_name = found.device
                log.info("loaded %s (%s, %s) on %s in %.1f s", model.source, found.family.id, found.dtype_name,
                         found.device, time.perf_counter() - started)
                self._pipelines[model.key()] = found
            loras.apply(found, model.loras)
            return found

    # -- generation -------------------------------------------------------
    def generate_video(self, request: dict, images: dict, units: list, progress, cancel):
        """One window of frames with a motion module: see bridge/motion.py."""
        from ..motion import generate_video

        return generate_video(self, request, images, units, progress, cancel)

    def generate(self, request, images: dict, units: list, progress, cancel) -> Result:
        """Paint a request (GenerateRequest, or its JSON). ``units``: [ControlUnit] or their JSON,
        with arrays as images; ``images``: the init_image, mask and noise arrays it has."""
        if not isinstance(request, GenerateRequest):
            frames = {key: value for key, value in images.items() if key in FRAME_FIELDS}
            if request.get("image_prompts") and images.get("image_prompts"):  # the pictures in their entries
                frames["image_prompts"] = [dict(entry, image=picture) for entry, picture in
                                           zip(request["image_prompts"], images["image_prompts"])]
            request = GenerateRequest.from_json(dict(request, controlnets=request.get("controlnets") or units,
                                                     **frames))
        units = [unit if isinstance(unit, ControlUnit) else ControlUnit.from_json(unit, index)
                 for index, unit in enumerate(units)]
        loaded = self.loaded(request.model)
        image_prompt = ip_adapter.parse_request({"image_prompts": request.image_prompts,
                                                 "ip_adapter": request.ip_adapter}, images.get("image_prompts", []))
        try:
            extra = self._ip_adapters.arguments(loaded, image_prompt, request.guidance)
            return generation.generate(loaded, request, images, units, self._embeddings, progress, cancel, extra)
        except Cancelled:
            raise
        except (MemoryError, RuntimeError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(error):
                raise
            free_memory()
            raise JobError("out_of_memory", out_of_memory_message(request.model)) from None


def free_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(error: Exception) -> bool:
    """GPU out of memory, or the CPU allocator refusing (e.g. under SILK_WORKER_MEMORY_LIMIT_MB)."""
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def out_of_memory_message(model: ModelRequest) -> str:
    tips = [name for name, on in (("attention slicing", model.attention_slicing), ("VAE tiling", model.vae_tiling),
                                  ("model CPU offload", model.cpu_offload)) if not on]
    return ("The GPU ran out of memory. Lower the resolution" + (", or turn on " + ", ".join(tips) if tips else "")
            + " in Silk's Worker settings. The worker is still running.")
