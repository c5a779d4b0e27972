"""One generate request on a loaded model, step by step: the sampler, the starting latents
(with image-to-image's own noising, so per-step guides follow the noise that started the run),
the per-step callback (cancel, guides, progress), and the pipeline call."""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

from .. import families
from ..errors import Cancelled, JobError
from ..schema import VAE_TILING_PIXELS, GenerateRequest
from . import guides as guides_module
from . import pictures
from .loading import LoadedModel


@dataclass
class Result:
    image: np.ndarray
    seed: int
    timings: dict
    model: str


@dataclass
class Plan:
    """What one run needs besides the embeddings."""

    pipe: object
    image2image: bool
    padded: tuple  # (height, width), multiples of 64
    generator: object
    latents: object = None  # the starting latents, when Silk makes them
    strength: float = 1.0
    total: int = 0  # steps that actually run
    guides: tuple = ()
    init_picture: object = None  # image-to-image's initial picture (PIL), padded


def check_units(request: GenerateRequest, units: list, controlnet_count: int) -> None:
    if len(units) != controlnet_count:
        raise JobError("bad_request", f"{len(units)} ControlNet images for a model with {controlnet_count} ControlNets")
    for unit in units:
        if unit.image.ndim != 3 or unit.image.shape[2] not in (1, 3, 4):
            raise JobError("bad_request", "ControlNet images must be (height, width, channels) arrays")


def generate(loaded: LoadedModel, request: GenerateRequest, images: dict, units: list, embeddings, progress,
             cancel, extra: dict | None = None) -> Result:
    """Paint ``request`` with ``units`` ([ControlUnit] holding arrays) and ``images`` (init_image,
    mask, noise arrays); ``progress(step, steps, preview)`` after each step; ``cancel`` an Event;
    ``extra``: more pipeline arguments (an IP-Adapter's image embeddings)."""
    started = time.perf_counter()
    check_units(request, units, len(loaded.controlnets))
    plan = make_plan(loaded, request, images)
    prompts = dict(embeddings.for_request(loaded, request), **(extra or {}))  # a copy: the cache's stays as it is
    arguments = pipeline_arguments(loaded, request, plan, units, prompts)
    arguments["callback_on_step_end"] = step_callback(loaded, request, plan, progress, cancel)
    torch = loaded.torch
    with torch.inference_mode(), cancellable_inside_steps(plan.pipe, cancel), \
            tiled_decoding_for_large_frames(plan.pipe, loaded, request):
        output = plan.pipe(**arguments)
    image = np.asarray(output.images[0], dtype=np.float32)[:request.height, :request.width]
    return Result(image=np.ascontiguousarray(np.clip(image, 0.0, 1.0)), seed=request.seed,
                  timings={"total": round(time.perf_counter() - started, 4), "steps": plan.total},
                  model=loaded.model.source)


def make_plan(loaded: LoadedModel, request: GenerateRequest, images: dict) -> Plan:
    torch = loaded.torch
    init = images.get("init_image")
    pipe = loaded.image2image if init is not None else loaded.text2image
    pipe.scheduler = families.make_scheduler(request.scheduler, loaded.scheduler_config,
                                             latents_edited=init is not None and (
                                                 images.get("mask") is not None or request.fusion > 0))
    plan = Plan(pipe=pipe, image2image=init is not None, total=request.steps,
                padded=(pictures.padded(request.height), pictures.padded(request.width)),
                generator=torch.Generator(device="cpu").manual_seed(request.seed))
    factor = loaded.family.vae_scale_factor
    latent_shape = (1, pipe.unet.config.in_channels, plan.padded[0] // factor, plan.padded[1] // factor)
    given = pictures.checked_noise(images.get("noise"), request.height, request.width, factor, latent_shape[1])
    noise = starting_noise(plan, latent_shape, given, pipe, torch) if given is not None or init is not None else None
    if init is not None:
        noise_initial_image(loaded, request, plan, images, noise)
    elif given is not None:
        plan.latents = noise  # the text-to-image pipeline scales it by the scheduler's init_noise_sigma
    return plan


def starting_noise(plan: Plan, shape: tuple, given, pipe, torch):
    """The seed's noise, drawn exactly as the pipeline would draw it (so the generator is left in
    the same state for an ancestral sampler's per-step noise), with the request's noise in place
    of it over the frame; the rest is the padding to a multiple of 64."""
    from diffusers.utils.torch_utils import randn_tensor

    device, dtype = pipe._execution_device, pipe.unet.dtype
    noise = randn_tensor(shape, generator=plan.generator, device=torch.device(device), dtype=dtype)
    if given is not None:
        rows, columns = given.shape[:2]
        noise[:, :, :rows, :columns] = torch.from_numpy(np.ascontiguousarray(given.transpose(2, 0, 1)))[None].to(
            device, dtype)
    return noise


def noise_initial_image(loaded: LoadedModel, request: GenerateRequest, plan: Plan, images: dict, noise) -> None:
    """Encode and noise the initial image here (the pipeline skips its own noising when given
    latents): the strength mask and fusion then follow the very noise that started the run."""
    pipe, torch, steps = plan.pipe, loaded.torch, request.steps
    device = pipe._execution_device
    plan.strength = request.strength
    pipe.scheduler.set_timesteps(steps, device=device)
    timesteps, plan.total = pipe.get_timesteps(steps, plan.strength, device)
    if plan.total < 1 or len(timesteps) == 0:
        raise JobError("bad_request", f"{steps} steps at strength {plan.strength:g} leave no step to run: "
                       "raise steps or strength")
    begin = len(pipe.scheduler.timesteps) - len(timesteps)
    init = pictures.fit(images["init_image"], *plan.padded)
    plan.init_picture = pictures.to_pil(init)
    # Faithful encoding decodes the frame twice: in tiles where the final decoding is.
    with tiled_decoding_for_large_frames(pipe, loaded, request) if request.faithful_encoding else nullcontext():
        init_latents = pictures.encode_image(pipe, init, loaded.family, torch, faithful=request.faithful_encoding)
    plan.latents = pipe.scheduler.add_noise(init_latents, noise, timesteps[:1])
    target = guides_module.NoisedInit(init_latents, noise, pipe.scheduler, begin)
    mask = images.get("mask")
    if mask is not None:
        mask = pictures.fit(mask[..., :1] if mask.ndim == 3 else mask[..., None], *plan.padded)
    plan.guides = tuple(guides_module.guides_for(request, target, mask, plan.strength,
                                                 loaded.family.vae_scale_factor, plan.padded, torch))


def step_callback(loaded: LoadedModel, request: GenerateRequest, plan: Plan, progress, cancel):
    def on_step_end(pipeline, step, timestep, callback_kwargs):
        if cancel.is_set():
            raise Cancelled()
        latents = callback_kwargs["latents"]
        if plan.guides:
            latents = guides_module.apply_all(plan.guides, latents, step, plan.total)
            callback_kwargs["latents"] = latents
        shown = pictures.preview(latents, request.height, request.width, loaded.family) if request.preview else None
        progress(step + 1, plan.total, shown)
        return callback_kwargs

    return on_step_end


def pipeline_arguments(loaded: LoadedModel, request: GenerateRequest, plan: Plan, units: list,
                       embeddings: dict) -> dict:
    height, width = plan.padded
    control_images = [pictures.to_pil(pictures.fit(unit.image, height, width)) for unit in units]
    scales = [unit.weight for unit in units]
    arguments = dict(
        num_inference_steps=request.steps, guidance_scale=request.guidance, generator=plan.generator,
        controlnet_conditioning_scale=scales[0] if len(scales) == 1 else scales,
        control_guidance_start=[unit.start for unit in units], control_guidance_end=[unit.end for unit in units],
        output_type="np", height=height, width=width, **embeddings)
    if plan.latents is not None:
        arguments["latents"] = plan.latents
    if plan.image2image:
        arguments.update(image=plan.init_picture, control_image=control_images, strength=plan.strength)
    else:
        arguments["image"] = control_images
    return arguments


@contextmanager
def cancellable_inside_steps(pipe, cancel):
    """A cancel also lands inside one long step: every UNet, ControlNet and VAE decoder block checks
    it before it runs (one step of a 4096x4096 frame can take minutes)."""
    def check(_module, _inputs):
        if cancel.is_set():
            raise Cancelled()

    blocks = []
    for model in (pipe.unet, getattr(pipe.vae, "decoder", None), *_controlnets(pipe)):
        if model is None:
            continue
        for name in ("down_blocks", "up_blocks"):
            blocks.extend(getattr(model, name, None) or [])
        if getattr(model, "mid_block", None) is not None:
            blocks.append(model.mid_block)
    handles = [block.register_forward_pre_hook(check) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _controlnets(pipe) -> list:
    controlnet = getattr(pipe, "controlnet", None)
    if controlnet is None:
        return []
    return list(getattr(controlnet, "nets", None) or [controlnet])


@contextmanager
def tiled_decoding_for_large_frames(pipe, loaded: LoadedModel, request: GenerateRequest):
    """Frames over schema.VAE_TILING_PIXELS are decoded in tiles even when the model was loaded
    without VAE tiling: decoding one in a piece needs more memory than the denoising did."""
    hint = request.width * request.height > VAE_TILING_PIXELS and not loaded.model.vae_tiling
    if hint:
        pipe.vae.enable_tiling()
    try:
        yield
    finally:
        if hint:
            pipe.vae.disable_tiling()
