"""Video with AnimateDiff motion modules (the worker side of docs/worker.md, "generate_video").

A motion module (diffusers' ``MotionAdapter``) adds temporal attention to an SD 1.5 UNet, so
a window of frames is denoised together. Silk steers every frame of the window with its own
ControlNet pictures (the scene's exact guides) and can start the window from an initial video
with a per-pixel, per-frame strength: the previous window's frames warped by exact motion,
which is how the engine joins windows (engine/windows.py).

Motion modules: a hub repo id, a diffusers folder, a single ``.safetensors``/``.ckpt`` file in
the original AnimateDiff layout (read with ``MotionAdapter.from_single_file``), or ``tiny``: a
random adapter shaped for the ``tiny`` model, built locally like it. The adapter is cached with
the loaded model; the text-to-video and video-to-video pipelines are made from the model's
pipeline with ``from_pipe`` (so they share every component, the motion UNet included) in the
model's precision. Motion LoRAs go through ``load_lora_weights``.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import families, tiny_model
from .diffusion import free_memory, is_out_of_memory, loras as model_loras
from .diffusion.guides import NoisedInit, StrengthMask
from .diffusion.loading import short
from .diffusion.pictures import encode_image, fit, padded, preview, to_pil
from .errors import Cancelled, JobError
from .schema import ModelRequest, _loras

TINY_MOTION_VERSION = "tiny-motion-v1"
MAX_VIDEO_FRAMES = 128  # frames in one request (a window, or a FreeNoise run)
MAX_FRAME_PROMPTS = 64
DEFAULT_DECODE_CHUNK = 16  # frames the VAE decodes at once (diffusers' default); 1 = per frame, least memory
# The original AnimateDiff names of the parts diffusers renames (inverse of diffusers'
# convert_animatediff_checkpoint_to_diffusers).
_ORIGINAL_NAMES = ((".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."),
                   (".norm1.", ".norms.0."), (".norm2.", ".norms.1."), (".norm3.", ".ff_norm."))


# -- the tiny motion adapter -------------------------------------------------------------
def tiny_motion_config() -> dict:
    """A MotionAdapter shaped for ``tiny``'s UNet: the same block channels and layers per block
    (diffusers' own tests use 2 groups and 4 heads for such a small one)."""
    return dict(block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=2,
                motion_num_attention_heads=4, motion_max_seq_length=32, use_motion_mid_block=True)


def ensure_tiny_motion(cache_dir: str | None = None) -> str:
    """The tiny motion adapter's folder, built on first use."""
    return tiny_model._ensure(cache_dir, TINY_MOTION_VERSION, build_tiny_motion)


def build_tiny_motion(path: str) -> None:
    """Seeded random weights everywhere, the output projections included: a fresh adapter's
    output projections are zero (it starts as the identity), which would let a test pass with
    a motion module that never touches the frames."""
    import torch
    from diffusers import MotionAdapter

    torch.manual_seed(40)
    adapter = MotionAdapter(**tiny_motion_config())
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if "norm" in name:
                continue
            parameter.normal_(0.0, 0.2 if parameter.ndim > 1 else 0.02)
    adapter.save_pretrained(path, safe_serialization=True)


def original_motion_state_dict(adapter) -> dict:
    """The adapter's weights under the original AnimateDiff names (``motion_modules.N.temporal_transformer``,
    ``attention_blocks.0/1``, ``norms.0/1``, ``ff_norm``) with the sinusoidal position tables
    (``pos_encoder.pe``) the original files carry and by which diffusers recognises them."""
    renamed = {}
    for key, value in adapter.state_dict().items():
        head, marker, rest = key.partition(".motion_modules.")
        if not marker:
            raise ValueError(f"no original AnimateDiff name known for the motion weight {key!r}")
        index, _, rest = rest.partition(".")
        rest = "." + rest
        for new, old in _ORIGINAL_NAMES:
            rest = rest.replace(new, old)
        renamed[f"{head}.motion_modules.{index}.temporal_transformer{rest}"] = value
    length = adapter.config.motion_max_seq_length
    for key in list(renamed):
        if key.endswith(".attention_blocks.0.to_q.weight") or key.endswith(".attention_blocks.1.to_q.weight"):
            width = renamed[key].shape[1]
            renamed[key.replace(".to_q.weight", ".pos_encoder.pe")] = _sinusoidal_table(length, width)
    return renamed


def _sinusoidal_table(length: int, width: int):
    import torch

    position = torch.arange(length).unsqueeze(1)
    scale = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
    table = torch.zeros(1, length, width)
    table[0, :, 0::2] = torch.sin(position * scale)
    table[0, :, 1::2] = torch.cos(position * scale)
    return table


def save_original_motion_checkpoint(adapter_folder: str, path: str) -> None:
    """Write a diffusers MotionAdapter folder as one ``.safetensors`` file in the original layout."""
    from diffusers import MotionAdapter
    from safetensors.torch import save_file

    adapter = MotionAdapter.from_pretrained(adapter_folder)
    save_file({key: value.detach().contiguous() for key, value in original_motion_state_dict(adapter).items()}, path)


# -- the request's motion module ---------------------------------------------------------
@dataclass
class MotionSpec:
    source: str
    config: str | None = None  # for a single file: the adapter folder or repo id whose config.json it uses
    loras: list = field(default_factory=list)  # [LoraSpec]: motion LoRAs

    @classmethod
    def from_request(cls, data) -> "MotionSpec":
        if not isinstance(data, dict) or not isinstance(data.get("source"), str) or not data["source"].strip():
            raise JobError("bad_motion", "the request needs a 'motion' module: {\"source\": 'tiny', a hub repo id, "
                           "a diffusers folder or an AnimateDiff .safetensors/.ckpt file}")
        spec = cls(source=data["source"].strip())
        config = data.get("config")
        if config is not None:
            if not isinstance(config, str) or not config.strip():
                raise JobError("bad_motion", "the motion module's 'config' must be a folder or hub repo id")
            if not spec.source.lower().endswith((".safetensors", ".ckpt")):
                raise JobError("bad_motion", "the motion module's 'config' is only for single files")
            spec.config = config.strip()
        try:
            spec.loras = _loras(data.get("loras", []))
        except JobError as error:
            raise JobError("bad_lora", "motion LoRAs: " + error.message) from None
        return spec

    def key(self) -> tuple:
        return (self.source, self.config)


def load_motion_adapter(spec: MotionSpec, dtype, cache_dir: str | None = None):
    """The MotionAdapter ``spec`` names, in ``dtype``."""
    from diffusers import MotionAdapter

    source = spec.source
    config = ensure_tiny_motion(cache_dir) if spec.config == "tiny" else spec.config
    if source == "tiny":
        return MotionAdapter.from_pretrained(ensure_tiny_motion(cache_dir), torch_dtype=dtype)
    if os.path.isfile(source):
        if not source.lower().endswith((".safetensors", ".ckpt")):
            raise JobError("bad_motion", f"'{source}' is a file but not a .safetensors or .ckpt motion module")
        options = {"config": config} if config else {}
        try:
            return MotionAdapter.from_single_file(source, torch_dtype=dtype, **options)
        except Exception as error:
            hint = ("" if config else " A single file needs the config of its architecture, which the hub could not "
                    "provide here: set the motion module's config to a diffusers motion adapter folder")
            raise JobError("bad_motion", f"Cannot load the motion module '{source}': {short(error)}.{hint}") from None
    if os.path.isdir(source):
        if not os.path.exists(os.path.join(source, "config.json")):
            raise JobError("bad_motion", f"The folder '{source}' is not a diffusers motion adapter (no config.json)")
    elif not families.REPO_ID.fullmatch(source) or os.path.isabs(source):
        raise JobError("bad_motion", f"The motion module '{source}' does not exist: give a hub repo id like "
                       "'guoyww/animatediff-motion-adapter-v1-5-3', a diffusers folder, an AnimateDiff "
                       ".safetensors/.ckpt file, or 'tiny'")
    try:
        return MotionAdapter.from_pretrained(source, torch_dtype=dtype)
    except Exception as error:
        raise JobError("bad_motion", f"Cannot load the motion module '{source}': {short(error)}") from None


def check_motion_fits(source: str, adapter_config, model: str, unet_config) -> None:
    """A motion module adds one temporal layer after each UNet layer: block channels and layers
    per block must agree (an SDXL adapter on an SD 1.5 model fails here, in words)."""
    def norm(value):
        return tuple(value) if isinstance(value, (list, tuple)) else value

    channels, model_channels = norm(adapter_config["block_out_channels"]), norm(unet_config["block_out_channels"])
    layers, model_layers = adapter_config["motion_layers_per_block"], unet_config["layers_per_block"]
    if isinstance(layers, (list, tuple)) and len(set(layers)) == 1:
        layers = layers[0]
    if channels != model_channels or norm(layers) != norm(model_layers):
        raise JobError("motion_mismatch", f"The motion module '{source}' does not fit the model '{model}': it is made "
                       f"for UNet blocks of {list(channels)} channels and {layers} layers, the model has "
                       f"{list(model_channels)} and {model_layers}. SD 1.5 models take SD 1.5 motion modules "
                       "(e.g. guoyww/animatediff-motion-adapter-v1-5-3)")


def video_pipelines(base, adapter, dtype) -> dict:
    """Text-to-video and video-to-video ControlNet pipelines made from an SD 1.5 ControlNet
    pipeline with ``from_pipe``: one motion UNet (built from the base UNet and the adapter) and
    every other component shared, all in ``dtype``."""
    from diffusers import AnimateDiffControlNetPipeline, AnimateDiffVideoToVideoControlNetPipeline

    text2video = AnimateDiffControlNetPipeline.from_pipe(base, motion_adapter=adapter, torch_dtype=dtype)
    video2video = AnimateDiffVideoToVideoControlNetPipeline.from_pipe(text2video, torch_dtype=dtype)
    for pipe in (text2video, video2video):
        pipe.set_progress_bar_config(disable=True)
    return {"text2video": text2video, "video2video": video2video}


# -- the request -------------------------------------------------------------------------
def video_settings(request: dict, units: list, controlnet_count: int, images: dict, max_frames: int) -> dict:
    """``generate_video``'s settings, checked, with a clear ``bad_request`` for anything wrong.
    ``images``: the opened ``init_video`` and ``masks``; ``max_frames``: what the motion module
    takes at once (its motion_max_seq_length), unless FreeNoise windows are asked for."""
    SCHEDULERS = families.SAMPLER_IDS

    def number(name, default, low, high, kind=(int, float)):
        value = request.get(name, default)
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) \
                or not low <= value <= high:
            raise JobError("bad_request", f"{name} must be a {'whole ' if kind is int else ''}number from {low:g} "
                           f"to {high:g}")
        return value

    frames = request.get("frames")
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_VIDEO_FRAMES:
        raise JobError("bad_request", f"frames must be a whole number from 1 to {MAX_VIDEO_FRAMES}")
    context = request.get("context_frames")
    if context is not None:
        context = number("context_frames", 16, 2, max_frames, int)
    if frames > max_frames and context is None:
        raise JobError("bad_request", f"{frames} frames at once are more than this motion module takes "
                       f"({max_frames}): lower Context Frames, or give context_frames for FreeNoise windows")
    stride = number("context_stride", 4, 1, MAX_VIDEO_FRAMES, int) if context is not None else None
    scheduler = request.get("scheduler", "euler")
    if scheduler not in SCHEDULERS:
        raise JobError("bad_scheduler", f"Unknown scheduler '{scheduler}'. Choose one of: {', '.join(SCHEDULERS)}")
    width, height = request.get("width"), request.get("height")
    if not (isinstance(width, int) and isinstance(height, int) and not isinstance(width, bool)
            and not isinstance(height, bool) and 8 <= width <= 8192 and 8 <= height <= 8192):
        raise JobError("bad_request", "width and height must be whole numbers between 8 and 8192")
    steps = number("steps", 20, 1, 1000, int)
    guidance = float(number("guidance", 7.0, 0.0, 50.0))
    strength = float(number("strength", 1.0, 1e-6, 1.0))
    decode_chunk = number("decode_chunk", DEFAULT_DECODE_CHUNK, 1, MAX_VIDEO_FRAMES, int)
    if not units:
        raise JobError("bad_request", "at least one ControlNet video is needed")
    if len(units) != controlnet_count:
        raise JobError("bad_request", f"{len(units)} ControlNet videos for a model with {controlnet_count} ControlNets")
    settings_units = []
    for index, unit in enumerate(units):
        if any(unit.get(name) not in (None, "none") for name in ("annotator",)):
            raise JobError("bad_request", "annotators do not run on videos: send the guides themselves")
        weight, start, end = unit.get("weight", 1.0), unit.get("start", 0.0), unit.get("end", 1.0)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (weight, start, end)):
            raise JobError("bad_request", "ControlNet weight, start and end must be numbers")
        if not (0.0 <= start < end <= 1.0 and 0.0 <= weight <= 5.0):
            raise JobError("bad_request", "ControlNet units need 0 <= start < end <= 1 and a weight from 0 to 5")
        video = unit["image"]
        if video.ndim != 4 or video.shape[0] != frames or video.shape[3] not in (1, 3, 4):
            raise JobError("bad_request", f"ControlNet video {index} must be a (frames={frames}, height, width, "
                           f"channels) array, not {tuple(video.shape)}")
        settings_units.append({"weight": float(weight), "start": float(start), "end": float(end)})
    init, masks = images.get("init_video"), images.get("masks")
    if init is not None and (init.ndim != 4 or init.shape[0] != frames or init.shape[3] not in (1, 3, 4)):
        raise JobError("bad_request", f"init_video must be a (frames={frames}, height, width, channels) array, "
                       f"not {tuple(init.shape)}")
    if masks is not None:
        if init is None:
            raise JobError("bad_request", "masks give each pixel's strength over init_video: they need an init_video")
        shape = tuple(masks.shape[:3])
        if masks.ndim not in (3, 4) or shape != tuple(init.shape[:3]) or (masks.ndim == 4 and masks.shape[3] != 1):
            raise JobError("bad_request", f"masks must be a (frames, height, width) array the size of init_video "
                           f"{tuple(init.shape[:3])}, not {tuple(masks.shape)}")
        if not np.isfinite(masks).all():
            raise JobError("bad_request", "masks must be finite (no NaN or infinity)")
    negative = request.get("negative_prompt", "")
    if not isinstance(negative, str) or not isinstance(request.get("prompt", ""), str):
        raise JobError("bad_request", "prompt and negative_prompt must be texts")
    prompts = _frame_prompts(request.get("prompts"), request.get("prompt", ""), frames)
    seed = request.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise JobError("bad_request", "seed must be a whole number")
    return {"frames": frames, "scheduler": scheduler, "steps": steps, "width": width, "height": height,
            "guidance": guidance, "strength": strength if init is not None else 1.0, "units": settings_units,
            "seed": seed % (2 ** 63), "negative_prompt": negative, "prompts": prompts, "decode_chunk": decode_chunk,
            "context_frames": context, "context_stride": stride}


def _frame_prompts(prompts, prompt: str, frames: int):
    """Prompt travel: ``{"frame": prompt}`` (JSON keys are text) as {int: prompt}, the request's
    ``prompt`` at frame 0 unless given there; None when there is no travel."""
    if prompts is None or prompts == {}:
        return None
    if not isinstance(prompts, dict) or len(prompts) > MAX_FRAME_PROMPTS:
        raise JobError("bad_request", f"prompts must be an object of at most {MAX_FRAME_PROMPTS} "
                       "{\"frame\": \"prompt\"} entries")
    travel = {}
    for key, text in prompts.items():
        if not isinstance(key, str) or not key.isdigit() or not isinstance(text, str):
            raise JobError("bad_request", f"prompts maps frame numbers to texts ({key!r} is not one)")
        frame = int(key)
        if frame >= frames:
            raise JobError("bad_request", f"prompts names frame {frame}, but the video has frames 0 to {frames - 1}")
        travel[frame] = text
    travel.setdefault(0, prompt)
    return dict(sorted(travel.items()))


@dataclass
class VideoResult:
    frames: np.ndarray  # (frames, height, width, 3) float32 in [0, 1]
    seed: int
    timings: dict
    model: str


# -- generation --------------------------------------------------------------------------
def generate_video(backend, request: dict, images: dict, units: list, progress, cancel) -> VideoResult:
    """The ``generate_video`` job: every frame of one window at once. ``images``: ``init_video``
    (frames, h, w, c) and ``masks`` (frames, h, w[, 1]) when given; ``units``: ControlNet units
    whose ``image`` is a (frames, h, w, c) video."""
    spec = ModelRequest.from_json(request.get("model"))
    motion = MotionSpec.from_request(request.get("motion"))
    if spec.loras:
        raise JobError("bad_lora", "image LoRAs are not applied with a motion module yet: remove them, or paint "
                       "without a motion module (motion LoRAs go in the motion module's 'loras')")
    entry = backend.loaded(spec)
    if entry.family.id != "sd15":
        raise JobError("bad_model", "motion modules need an SD 1.5 model: diffusers has no AnimateDiff ControlNet "
                       "pipeline for SDXL")
    started = time.perf_counter()
    settings = None
    try:
        pipes = _video_entry(backend, entry, motion)
        settings = video_settings(request, units, len(entry.controlnets), images,
                                  pipes["adapter"].config.motion_max_seq_length)
        _apply_motion_loras(entry, pipes, motion.loras)
        return _generate(entry, pipes, spec, settings, images, units, request, progress, cancel, started)
    except (MemoryError, RuntimeError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(error):
            raise
        free_memory()
        if settings is None:
            entry.motion = None  # a half-built motion UNet is not kept
            raise JobError("out_of_memory", "The GPU ran out of memory loading the motion module beside the model "
                           "(it holds a second copy of the UNet): turn on model CPU offload in Silk's Worker "
                           "settings. The worker is still running.") from None
        raise JobError("out_of_memory", _out_of_memory_message(spec, settings)) from None


def _video_entry(backend, entry, motion: MotionSpec) -> dict:
    """The model's video pipelines for ``motion``, built on first use and kept with the loaded
    model (``LoadedModel.motion``; one motion module at a time)."""
    cached = getattr(entry, "motion", None)
    if cached is not None and cached["key"] == motion.key():
        return cached
    entry.motion = None
    free_memory()
    adapter = load_motion_adapter(motion, entry.dtype, backend.cache_dir)
    base = entry.text2image
    check_motion_fits(motion.source, adapter.config, entry.model.source, base.unet.config)
    try:
        pipes = video_pipelines(base, adapter, entry.dtype)
    except Exception as error:
        raise JobError("bad_motion", f"Cannot use the motion module '{motion.source}' with the model "
                       f"'{entry.model.source}': {short(error)}") from None
    if entry.model.attention_slicing:
        pipes["text2video"].enable_attention_slicing()
    cached = dict(pipes, key=motion.key(), adapter=adapter, loras={}, lora_weights=(), offloaded=None)
    entry.motion = cached
    return cached


def _apply_motion_loras(entry, pipes: dict, loras: list) -> None:
    """Make the motion UNet's LoRA adapters exactly ``loras``, as the model's own LoRAs are
    made (diffusion/loras.apply: each file once under a name from its path, size and time;
    weights by set_adapters), on the text-to-video pipeline, whose UNet is the motion UNet."""
    from types import SimpleNamespace

    view = SimpleNamespace(text2image=pipes["text2video"], loras=pipes["loras"], lora_weights=pipes["lora_weights"],
                           family=entry.family, model=entry.model, dtype=entry.dtype)
    try:
        model_loras.apply(view, loras)
    finally:
        pipes["lora_weights"] = view.lora_weights


def _use_offload(pipes: dict, pipe, spec: ModelRequest, device: str) -> None:
    """Model CPU offload hooks belong to one pipeline: move them to the one about to run."""
    if not (spec.cpu_offload and device == "cuda") or pipes["offloaded"] is pipe:
        return
    if pipes["offloaded"] is not None:
        pipes["offloaded"].remove_all_hooks()
    pipe.enable_model_cpu_offload()
    pipes["offloaded"] = pipe


def _generate(entry, pipes, spec, settings, images, units, request, progress, cancel, started):
    torch = entry.torch
    frames, width, height = settings["frames"], settings["width"], settings["height"]
    padded_w, padded_h = padded(width), padded(height)
    init, masks = images.get("init_video"), images.get("masks")
    pipe = pipes["video2video"] if init is not None else pipes["text2video"]
    _use_offload(pipes, pipe, spec, entry.device)
    pipe.scheduler = families.make_scheduler(settings["scheduler"], entry.scheduler_config,
                                             latents_edited=masks is not None)
    scheduler = pipe.scheduler
    device, dtype = pipe._execution_device, pipe.unet.dtype
    factor = pipe.vae_scale_factor
    generator = torch.Generator(device="cpu").manual_seed(settings["seed"])
    conditioning = [[to_pil(fit(picture, padded_h, padded_w)) for picture in unit["image"]] for unit in units]
    steps, strength = settings["steps"], settings["strength"]
    guides, total, latents = [], steps, None
    if init is not None:
        from diffusers.utils.torch_utils import randn_tensor

        scheduler.set_timesteps(steps, device=device)
        timesteps, total = pipe.get_timesteps(steps, scheduler.timesteps, strength, device)
        if total < 1 or len(timesteps) == 0:
            raise JobError("bad_request", f"{steps} steps at strength {strength:g} leave no step to run: "
                           "raise steps or strength")
        begin = len(scheduler.timesteps) - len(timesteps)
        # Encode frame by frame (the mean, no sampling) and noise with one known noise, so the
        # strength masks follow the very noise that started the run (as image-to-image does).
        init_latents = torch.stack([encode_image(pipe, fit(picture, padded_h, padded_w), entry.family, torch)[0]
                                    for picture in init], dim=1)[None]
        noise = randn_tensor(init_latents.shape, generator=generator, device=torch.device(device), dtype=dtype)
        latents = scheduler.add_noise(init_latents, noise, timesteps[:1])
        if masks is not None:
            target = NoisedInit(init_latents, noise, scheduler, begin)
            fitted = np.stack([fit(mask.reshape(mask.shape[0], mask.shape[1], 1), padded_h, padded_w)[..., 0]
                               for mask in masks])
            guides.append(_VideoStrengthMask(target, fitted, strength, factor, torch))

    def on_step_end(pipeline, step, timestep, callback_kwargs):
        if cancel.is_set():
            raise Cancelled()
        current = callback_kwargs["latents"]
        for guide in guides:
            current = guide.apply(current, step, total)
        if guides:
            callback_kwargs["latents"] = current
        picture = preview(current[:, :, 0], height, width, entry.family) if request.get("preview") else None
        progress(step + 1, total, picture)
        return callback_kwargs

    prompt = settings["prompts"] or request.get("prompt", "")
    common = dict(
        prompt=prompt, negative_prompt=settings["negative_prompt"] or None, num_inference_steps=steps,
        guidance_scale=settings["guidance"], generator=generator, conditioning_frames=conditioning,
        controlnet_conditioning_scale=[u["weight"] for u in settings["units"]],
        control_guidance_start=[u["start"] for u in settings["units"]],
        control_guidance_end=[u["end"] for u in settings["units"]],
        output_type="np", callback_on_step_end=on_step_end, height=padded_h, width=padded_w,
        decode_chunk_size=settings["decode_chunk"])
    # A {frame: prompt} dict is FreeNoise's prompt travel; FreeNoise also runs windows longer
    # than the motion module takes. Its blocks live in the shared motion UNet: always undo it.
    free_noise = settings["prompts"] is not None or settings["context_frames"] is not None
    if free_noise:
        context = settings["context_frames"] or frames
        pipe.enable_free_noise(context_length=context, context_stride=settings["context_stride"] or 4,
                               noise_type="shuffle_context" if frames > context else "random")
    try:
        with torch.inference_mode():
            if init is not None:
                output = pipe(latents=latents, strength=strength, **common)
            else:
                output = pipe(num_frames=frames, **common)
    finally:
        if free_noise:
            pipe.disable_free_noise()
    video = np.asarray(output.frames[0], dtype=np.float32)[:, :height, :width, :3]
    return VideoResult(frames=np.ascontiguousarray(np.clip(video, 0.0, 1.0)), seed=settings["seed"],
                       timings={"total": round(time.perf_counter() - started, 4), "steps": total,
                                "frames": frames}, model=spec.source)


class _VideoStrengthMask(StrengthMask):
    """Per-pixel, per-frame denoising strength over an initial video: diffusion._StrengthMask
    (differential diffusion) with one mask per frame on the (1, 1, frames, h, w) latent grid."""

    def __init__(self, target: NoisedInit, masks: np.ndarray, strength: float, factor: int, torch):
        self.target = target
        self.init_latents = target.init_latents
        small = np.clip(masks[:, ::factor, ::factor], 0, 1).astype(np.float32)  # (frames, h, w)
        self.mask = torch.from_numpy(np.ascontiguousarray(small))[None, None].to(self.init_latents.device,
                                                                                 self.init_latents.dtype)
        self.strength = max(float(strength), 1e-6)
        self.torch = torch


def _out_of_memory_message(spec: ModelRequest, settings: dict) -> str:
    tips = [f"lower Context Frames (this window had {settings['frames']})"]
    if settings["decode_chunk"] > 1:
        tips.append("decode frame by frame (decode_chunk 1)")
    tips += [name for name, on in (("attention slicing", spec.attention_slicing),
                                   ("model CPU offload", spec.cpu_offload)) if not on]
    return (f"The GPU ran out of memory painting {settings['frames']} frames of {settings['width']}x"
            f"{settings['height']} at once: " + ", or ".join(tips) + ", or lower the resolution. "
            "The worker is still running.")
