"""Image prompts with IP-Adapter (diffusers ``load_ip_adapter``), on the worker's side.

A ``generate`` request may carry ``image_prompts``: reference pictures (frames) with
weights, and ``ip_adapter``: which adapter to paint them with (``source``: a hub repo id
with the file's path, a folder, a single .safetensors/.bin file, ``tiny``/``tiny-xl``, or
empty for the model family's default), its CLIP image encoder (``image_encoder``, found
beside the adapter when not given) and ``scale``. Each picture is encoded once by the
image encoder (cached by its pixels); a frame blends the pictures' embeddings by their
weights, as prompt travel blends text embeddings, and paints with them as
``ip_adapter_image_embeds``. The weights also scale the adapter: ``scale`` times their sum.

``tiny`` and ``tiny-xl`` get a random-weight IP-Adapter and image encoder built locally,
in diffusers' IP-Adapter layout, so every path runs offline.
"""
from __future__ import annotations

import glob
import hashlib
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from . import tiny_model
from .errors import JobError

MAX_IMAGE_PROMPTS = 4  # pictures in one request: a frame blends two keys, or a few at one key
MAX_SCALE = 4.0
MAX_WEIGHT = 10.0
WEIGHT_SUFFIXES = (".safetensors", ".bin")
TINY_IP_ADAPTER_VERSION = "ip-adapter-v1"
TINY_WEIGHT_NAME = "ip-adapter_tiny.safetensors"
# The adapter each family paints with when the request names none (files in the h94/IP-Adapter repo).
DEFAULT_IP_ADAPTERS = {
    "sd15": "h94/IP-Adapter/models/ip-adapter_sd15.safetensors",
    "sdxl": "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors",
}
# Families by the width of the text embeddings the UNet's cross-attention reads.
_WIDTH_FAMILIES = {768: "SD 1.5", 1024: "SD 2", 2048: "SDXL", 32: "tiny (SD 1.5-shaped)", 96: "tiny-xl (SDXL-shaped)"}
_REPO_FILE = re.compile(r"([A-Za-z0-9][\w.-]*/[\w.-]+)/((?:[\w.-]+/)*)([\w.-]+)")


# -- the request ------------------------------------------------------------------------
@dataclass
class ImagePrompt:
    """A request's image prompts, checked."""

    source: str  # as the request gave it ("" = the family's default)
    image_encoder: str
    scale: float
    images: list  # (H, W, 3) float32 arrays in [0, 1]
    weights: list  # floats >= 0, summing to more than 0


def image_prompt_frames(request: dict) -> list:
    """The frame descriptors of ``request['image_prompts']`` (for the server to open), checked
    for shape before anything is opened."""
    prompts = request.get("image_prompts")
    if prompts is None:
        return []
    if not isinstance(prompts, list) or not 1 <= len(prompts) <= MAX_IMAGE_PROMPTS:
        raise JobError("bad_request", f"image_prompts must be a list of 1 to {MAX_IMAGE_PROMPTS} "
                       "{\"image\": frame, \"weight\": number} objects")
    frames = []
    for index, entry in enumerate(prompts):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), dict):
            raise JobError("bad_request", f"image_prompts[{index}] needs an 'image' frame")
        frames.append(entry["image"])
    return frames


def parse_request(request: dict, images: list) -> ImagePrompt | None:
    """The request's image prompts (``images``: the opened frames of ``image_prompts``), or None."""
    prompts, adapter = request.get("image_prompts"), request.get("ip_adapter")
    if prompts is None:
        if adapter is not None:
            raise JobError("bad_request", "ip_adapter is given without image_prompts: send the reference pictures")
        return None
    adapter = {} if adapter is None else adapter
    if not isinstance(adapter, dict):
        raise JobError("bad_request", "ip_adapter must be an object: {\"source\", \"image_encoder\", \"scale\"}")
    source, encoder = adapter.get("source", ""), adapter.get("image_encoder", "")
    if not isinstance(source, str) or not isinstance(encoder, str) or len(source) > 1000 or len(encoder) > 1000:
        raise JobError("bad_request", "ip_adapter.source and ip_adapter.image_encoder must be short texts")
    scale = adapter.get("scale", 1.0)
    if not _number(scale) or not 0.0 <= scale <= MAX_SCALE:
        raise JobError("bad_request", f"ip_adapter.scale must be a number from 0 to {MAX_SCALE:g}")
    if len(images) != len(prompts):
        raise JobError("bad_request", "every image prompt needs its image")
    weights, pictures = [], []
    for index, (entry, image) in enumerate(zip(prompts, images)):
        weight = entry.get("weight", 1.0)
        if not _number(weight) or not 0.0 <= weight <= MAX_WEIGHT:
            raise JobError("bad_request", f"image_prompts[{index}].weight must be a number from 0 to {MAX_WEIGHT:g}")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype.kind != "f" or min(image.shape[:2]) < 1:
            raise JobError("bad_request", f"image_prompts[{index}].image must be a (height, width, 3 or 4) float "
                           "picture")
        if not np.isfinite(image).all():
            raise JobError("bad_request", f"image_prompts[{index}].image must be finite (no NaN or infinity)")
        weights.append(float(weight))
        pictures.append(np.clip(image[..., :3], 0.0, 1.0).astype(np.float32))
    if not sum(weights) > 0:
        raise JobError("bad_request", "the weights of image_prompts must add up to more than 0")
    return ImagePrompt(source.strip(), encoder.strip(), float(scale), pictures, weights)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- finding the files --------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterFiles:
    weights: str  # a local .safetensors/.bin file
    encoder: str  # a local folder or a hub repo id
    encoder_subfolder: str  # within a hub repo ("" for a folder)
    label: str  # the adapter as the user named it, for messages


def resolve(prompt: ImagePrompt, model_source: str, family: str, cache_dir: str | None) -> AdapterFiles:
    source = prompt.source
    if not source:
        source = model_source if model_source in tiny_model.TINY_MODELS else DEFAULT_IP_ADAPTERS[family]
    if source in tiny_model.TINY_MODELS:
        folder = ensure_tiny_ip_adapter(source, cache_dir)
        return AdapterFiles(os.path.join(folder, TINY_WEIGHT_NAME), prompt.image_encoder or
                            os.path.join(folder, "image_encoder"), "", source)
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        found = sorted(path for suffix in WEIGHT_SUFFIXES for path in glob.glob(os.path.join(expanded, "*" + suffix)))
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise JobError("bad_ip_adapter", f"The IP-Adapter folder '{source}' holds {what} .safetensors/.bin files; "
                           "it needs exactly one, or give the file itself")
        return AdapterFiles(found[0], _local_encoder(prompt, source, found[0]), "", source)
    if os.path.isfile(expanded):
        if not expanded.lower().endswith(WEIGHT_SUFFIXES):
            raise JobError("bad_ip_adapter", f"The IP-Adapter '{source}' is not a .safetensors or .bin file")
        return AdapterFiles(os.path.abspath(expanded), _local_encoder(prompt, source, expanded), "", source)
    match = _REPO_FILE.fullmatch(source)
    if match is None or os.path.isabs(source) or not source.lower().endswith(WEIGHT_SUFFIXES):
        raise JobError("bad_ip_adapter", f"The IP-Adapter '{source}' does not exist: give a folder, a .safetensors or "
                       "a .bin file, or a hub repo id with the file's path, e.g. '" + DEFAULT_IP_ADAPTERS["sd15"] + "'")
    repo, subfolder, name = match.group(1), match.group(2).rstrip("/"), match.group(3)
    try:
        from huggingface_hub import hf_hub_download

        weights = hf_hub_download(repo, name, subfolder=subfolder or None)
    except Exception as error:
        raise JobError("bad_ip_adapter", f"Cannot load the IP-Adapter '{source}': it is not a local file and the hub "
                       f"could not provide it here ({_short(error)}). Give a local file or folder") from None
    if prompt.image_encoder:
        return AdapterFiles(weights, prompt.image_encoder, "", source)
    encoder_subfolder = "/".join(part for part in (subfolder, "image_encoder") if part)
    try:
        hf_hub_download(repo, "config.json", subfolder=encoder_subfolder)
    except Exception as error:
        raise JobError("missing_image_encoder", f"The IP-Adapter '{source}' needs its CLIP image encoder, which the "
                       f"hub could not provide from {repo}/{encoder_subfolder} ({_short(error)}). Give the image "
                       "encoder's folder") from None
    return AdapterFiles(weights, repo, encoder_subfolder, source)


def _local_encoder(prompt: ImagePrompt, source: str, weights: str) -> str:
    if prompt.image_encoder:
        encoder = os.path.expanduser(prompt.image_encoder)
        if not os.path.isfile(os.path.join(encoder, "config.json")) and not _REPO_FILE.fullmatch(encoder + "/x"):
            raise JobError("missing_image_encoder", f"The image encoder '{prompt.image_encoder}' is not a folder "
                           "with a config.json (a CLIP vision model saved by transformers)")
        return encoder
    folder = os.path.dirname(os.path.abspath(weights))
    candidates = [os.path.join(folder, "image_encoder"), os.path.join(os.path.dirname(folder), "image_encoder")]
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise JobError("missing_image_encoder", f"The IP-Adapter '{source}' has no image encoder: there is no "
                   f"image_encoder folder (with a config.json) in {' or '.join(candidates)}. Put its CLIP image "
                   "encoder there or name its folder in 'Image Encoder'")


# -- checking the files before diffusers sees them -------------------------------------------
def weight_shapes(path: str) -> dict:
    """{"image_proj": {name: shape}, "ip_adapter": {name: shape}} of an IP-Adapter file, read
    without unpickling anything (safetensors headers; .bin files with ``weights_only``)."""
    shapes = {"image_proj": {}, "ip_adapter": {}}
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as handle:
                for key in handle.keys():
                    group, _, name = key.partition(".")
                    if group in shapes:
                        shapes[group][name] = tuple(handle.get_slice(key).get_shape())
        else:
            import torch

            data = torch.load(path, map_location="cpu", weights_only=True)
            for group in shapes:
                part = data.get(group, {}) if isinstance(data, dict) else {}
                shapes[group] = {name: tuple(value.shape) for name, value in part.items() if hasattr(value, "shape")}
    except Exception as error:
        raise JobError("bad_ip_adapter", f"The IP-Adapter file '{path}' cannot be read: {_short(error)}") from None
    return shapes


def check_fits(files: AdapterFiles, shapes: dict, unet_config, attention_layers: int, model: str) -> bool:
    """Raise a clear JobError when the adapter is not an IP-Adapter or not made for this model;
    return whether it reads the image encoder's hidden states (Plus) rather than its embeds."""
    projection, layers = shapes["image_proj"], shapes["ip_adapter"]
    if not projection or not layers:
        raise JobError("bad_ip_adapter", f"'{files.label}' is not an IP-Adapter: it has no image_proj and ip_adapter "
                       "weights (is it a LoRA, a ControlNet or a model?)")
    if "perceiver_resampler.proj_in.weight" in projection or ("norm.weight" in projection
                                                               and "proj.weight" not in projection):
        raise JobError("bad_ip_adapter", f"'{files.label}' is a FaceID IP-Adapter, which needs face embeddings Silk "
                       "does not make; use an IP-Adapter or IP-Adapter Plus")
    keys = [name for name in layers if name.endswith(".to_k_ip.weight")]
    width = layers[keys[0]][1] if keys else None
    model_width = unet_config.get("cross_attention_dim")
    if width != model_width:
        made_for = _WIDTH_FAMILIES.get(width, f"other models (text-embedding width {width})")
        model_family = _WIDTH_FAMILIES.get(model_width, f"a model with text-embedding width {model_width}")
        raise JobError("ip_adapter_mismatch", f"The IP-Adapter '{files.label}' is made for {made_for} models, but the "
                       f"model '{model}' is {model_family} (text-embedding width {width} vs {model_width}): use an "
                       "IP-Adapter of the model's family")
    if len(keys) != attention_layers:
        raise JobError("ip_adapter_mismatch", f"The IP-Adapter '{files.label}' has {len(keys)} attention layers, the "
                       f"model '{model}' {attention_layers}: it is made for another architecture")
    return "proj.weight" not in projection  # Plus and full-face adapters read hidden states


# -- the tiny IP-Adapters -----------------------------------------------------------------------
def ensure_tiny_ip_adapter(model: str, cache_dir: str | None = None) -> str:
    """The folder of ``tiny``'s (or ``tiny-xl``'s) IP-Adapter, built on first use: the weights
    file and its ``image_encoder`` folder."""
    ensure_model = tiny_model.TINY_MODELS[model][0]
    model_folder = ensure_model(cache_dir)
    version = f"{os.path.basename(model_folder)}-{TINY_IP_ADAPTER_VERSION}"
    return tiny_model._ensure(cache_dir, version, lambda path: build_tiny_ip_adapter(model_folder, path))


def attention_hidden_sizes(unet) -> list:
    """The width of each cross-attention layer of a UNet, in the order diffusers numbers an
    IP-Adapter's layers (1, 3, 5, ...)."""
    config = unet.config
    sizes = []
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        if name.startswith("mid_block"):
            sizes.append(config.block_out_channels[-1])
        elif name.startswith("up_blocks"):
            sizes.append(list(reversed(config.block_out_channels))[int(name[len("up_blocks.")])])
        else:
            sizes.append(config.block_out_channels[int(name[len("down_blocks.")])])
    return sizes


def build_tiny_ip_adapter(model_folder: str, path: str) -> None:
    """A random IP-Adapter sized for the model's UNet, in diffusers' layout (``image_proj.*``:
    the image embedding projected to 4 tokens of the text-embedding width; ``ip_adapter.N.to_k_ip``
    / ``to_v_ip``: keys and values of those tokens for each cross-attention layer), beside a
    tiny CLIP vision encoder with projection (32x32 pictures, 32-wide embeddings)."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(model_folder, subfolder="unet")
    width = unet.config.cross_attention_dim
    embed = 32
    torch.manual_seed(40)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_hidden_layers=2, projection_dim=embed))
    encoder.save_pretrained(os.path.join(path, "image_encoder"), safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        os.path.join(path, "image_encoder"))
    generator = torch.Generator().manual_seed(41)
    weights = {
        "image_proj.proj.weight": torch.randn(4 * width, embed, generator=generator) / math.sqrt(embed),
        "image_proj.proj.bias": torch.zeros(4 * width),
        "image_proj.norm.weight": torch.ones(width),
        "image_proj.norm.bias": torch.zeros(width),
    }
    for index, hidden in enumerate(attention_hidden_sizes(unet)):
        for name in ("to_k_ip", "to_v_ip"):
            # Wide enough that the image tokens change the picture as a trained adapter's do.
            weights[f"ip_adapter.{1 + 2 * index}.{name}.weight"] = (
                torch.randn(hidden, width, generator=generator) * 2.0 / math.sqrt(width))
    save_file({key: value.contiguous() for key, value in weights.items()}, os.path.join(path, TINY_WEIGHT_NAME))


# -- the pipeline's side -------------------------------------------------------------------------
class IPAdapters:
    """Keeps the pipeline's IP-Adapter as the requests want it (loaded, swapped or removed)
    and the image embeddings of the pictures it has seen."""

    def __init__(self, cache_dir: str | None = None):
        self.cache_dir = cache_dir
        self._embeddings: dict = {}

    def arguments(self, entry, prompt: ImagePrompt | None, guidance: float) -> dict:
        """Pipeline arguments for the request: ``ip_adapter_image_embeds`` (or nothing, with any
        loaded adapter removed: a UNet with an adapter needs image embeddings every call)."""
        pipe = entry.text2image
        if prompt is None:
            if entry.ip_adapter is not None:
                pipe.unload_ip_adapter()
                entry.ip_adapter = None
            return {}
        files = resolve(prompt, entry.model.source, entry.family.id, self.cache_dir)
        self._load(entry, files)
        total = sum(prompt.weights)
        pipe.set_ip_adapter_scale(prompt.scale * total)
        torch = entry.torch
        positive, negative = None, None
        for image, weight in zip(prompt.images, prompt.weights):
            if weight <= 0:
                continue
            embeds, uncond = self._embed(entry, image)
            share = weight / total
            positive = embeds * share if positive is None else positive + embeds * share
            negative = uncond * share if negative is None else negative + uncond * share
        embeds = torch.cat([negative, positive]) if guidance > 1.0 else positive
        return {"ip_adapter_image_embeds": [embeds.to(pipe._execution_device, pipe.unet.dtype)]}

    def _load(self, entry, files: AdapterFiles) -> None:
        stat = os.stat(files.weights)
        identity = (files.weights, stat.st_size, stat.st_mtime_ns, files.encoder, files.encoder_subfolder)
        if entry.ip_adapter == identity:
            return
        pipe = entry.text2image
        if entry.ip_adapter is not None:
            pipe.unload_ip_adapter()
            entry.ip_adapter = None
        model = entry.model.source
        shapes = weight_shapes(files.weights)
        hidden_states = check_fits(files, shapes, pipe.unet.config, len(attention_hidden_sizes(pipe.unet)), model)
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        try:
            options = {"subfolder": files.encoder_subfolder} if files.encoder_subfolder else {}
            encoder = CLIPVisionModelWithProjection.from_pretrained(files.encoder, dtype=pipe.unet.dtype, **options)
        except Exception as error:
            raise JobError("missing_image_encoder", f"Cannot load the image encoder of the IP-Adapter '{files.label}' "
                           f"from '{files.encoder}': {_short(error)}") from None
        config = encoder.config
        reads = shapes["image_proj"].get("proj.weight", (0, config.projection_dim))[1] if not hidden_states else None
        if reads is not None and reads != config.projection_dim:
            raise JobError("ip_adapter_mismatch", f"The image encoder '{files.encoder}' gives {config.projection_dim}-"
                           f"wide image embeddings, but the IP-Adapter '{files.label}' reads {reads}-wide ones: use "
                           "the encoder it was trained with")
        size = config.image_size
        pipe.register_modules(image_encoder=encoder.to(pipe._execution_device),
                              feature_extractor=CLIPImageProcessor(size={"shortest_edge": size},
                                                                   crop_size={"height": size, "width": size}))
        try:
            pipe.load_ip_adapter(os.path.dirname(files.weights), subfolder="", weight_name=os.path.basename(
                files.weights), image_encoder_folder=None)
        except Exception as error:
            pipe.image_encoder = None
            raise JobError("bad_ip_adapter", f"Cannot load the IP-Adapter '{files.label}': {_short(error)}") from None
        entry.ip_adapter = identity
        entry.ip_adapter_hidden_states = hidden_states
        self._embeddings.clear()

    def _embed(self, entry, image: np.ndarray):
        """(embeds, negative embeds) of one picture, each (1, 1, ...), cached by its pixels."""
        key = (entry.ip_adapter, hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest(), image.shape)
        found = self._embeddings.get(key)
        if found is None:
            from PIL import Image

            pipe = entry.text2image
            picture = Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
            with entry.torch.inference_mode():
                embeds, uncond = pipe.encode_image(picture, pipe._execution_device, 1,
                                                   entry.ip_adapter_hidden_states)
            found = (embeds[None], uncond[None])
            if len(self._embeddings) > 32:
                self._embeddings.clear()
            self._embeddings[key] = found
        return found


def _short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]
