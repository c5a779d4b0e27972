"""Loading a model: device and precision, the family (detected from the model itself), the
ControlNets, both pipelines in the asked precision, and clear words for what goes wrong."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from .. import families, tiny_model
from ..errors import JobError
from ..schema import ModelRequest

log = logging.getLogger("silk.worker")
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


@dataclass
class LoadedModel:
    """Both pipelines of one model (sharing their components), and what generation needs to know."""

    text2image: object
    image2image: object
    model: ModelRequest
    family: families.Family
    device: str
    dtype: object  # torch dtype
    controlnets: list
    scheduler_config: dict  # the model's ORIGINAL scheduler config: every sampler is built from it
    torch: object
    loras: dict = field(default_factory=dict)  # adapter name -> file path
    lora_weights: tuple | None = ()
    ip_adapter: object = None  # the IP-Adapter loaded into the pipelines (bridge/ip_adapter.py)
    ip_adapter_hidden_states: object = None

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    def components(self) -> dict:
        """Every torch module of both pipelines (each ControlNet apart) with the dtype and device of
        its weights (LoRA layers included); several are listed joined by '+', which is a finding."""
        described = {}
        for pipe_name, pipe in (("text2image", self.text2image), ("image2image", self.image2image)):
            for name, module in pipe.components.items():
                parts = getattr(module, "nets", None) or [module]
                for index, part in enumerate(parts):
                    if not hasattr(part, "parameters"):
                        continue
                    parameters = list(part.parameters())
                    if not parameters:
                        continue
                    label = f"{pipe_name}.{name}" + (f".{index}" if len(parts) > 1 else "")
                    described[label] = {
                        "dtype": "+".join(sorted({str(p.dtype).replace("torch.", "") for p in parameters})),
                        "device": "+".join(sorted({str(p.device) for p in parameters}))}
        return described

    def describe(self) -> dict:
        return {"source": self.model.source, "family": self.family.id, "device": self.device,
                "dtype": self.dtype_name, "controlnets": len(self.controlnets), "loras": len(self.loras),
                "components": self.components()}


def choose_device(model: ModelRequest):
    """(device, torch dtype). ``auto`` precision is fp16 on CUDA and MPS, fp32 on the CPU; an explicit
    fp16 or bf16 is honoured everywhere, the CPU included (slow there, but what was asked for)."""
    import torch

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    device = model.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise JobError("bad_device", "CUDA was asked for but this worker's torch sees no CUDA GPU")
    if device == "mps" and not mps:
        raise JobError("bad_device", "Apple MPS was asked for but is not available")
    precision = model.precision
    if precision == "auto":
        precision = "fp32" if device == "cpu" else "fp16"
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise JobError("bad_device", "This GPU cannot compute in bf16: choose fp16 or automatic precision")
    return device, getattr(torch, DTYPES[precision])


def load(model: ModelRequest, cache_dir: str | None) -> LoadedModel:
    """Load ``model``'s pipelines (LoRAs are applied separately, see loras.py)."""
    import torch

    device, dtype = choose_device(model)
    source, config, controlnet_names, controlnet_sources = _resolve(model, cache_dir)
    check_source(source)
    if config is not None:
        check_config(config)
    family = families.FAMILIES[choose_family(model, source, config)]
    if not controlnet_sources:
        raise JobError("bad_model", "at least one ControlNet is needed (a repo id or folder per unit)")
    controlnets = [load_controlnet(name, found, dtype) for name, found in zip(controlnet_names, controlnet_sources)]
    text2image = _text2image(family, source, config, controlnets, dtype)
    for name, controlnet in zip(controlnet_names, controlnets):
        check_controlnet_fits(name, controlnet.config, model.source, text2image.unet.config, family)
    _place(text2image, model, device)
    # The dtype again here: without it from_pipe casts every shared component to float32. (Its
    # cast warns that no module needs keeping in fp32, on every load: not worth a log line.)
    quiet = logging.getLogger("diffusers.models.modeling_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        image2image = getattr(_diffusers(), family.pipelines[1]).from_pipe(text2image, dtype=dtype)
    finally:
        quiet.setLevel(level)
    image2image.set_progress_bar_config(disable=True)
    return LoadedModel(text2image=text2image, image2image=image2image, model=model, family=family, device=device,
                       dtype=dtype, controlnets=controlnets, scheduler_config=dict(text2image.scheduler.config),
                       torch=torch)


def _diffusers():
    import diffusers

    return diffusers


def _resolve(model: ModelRequest, cache_dir):
    """The model's folder or file, its config, and its ControlNets (as written, and where they are)."""
    source = model.source
    controlnet_sources = [resolve_controlnet(name, cache_dir) for name in model.controlnets]
    if source in tiny_model.TINY_MODELS:
        source, own = local_model(source, cache_dir)
        controlnet_sources = controlnet_sources or own
    config = local_model(model.config, cache_dir)[0] if model.config in tiny_model.TINY_MODELS else model.config
    return source, config, model.controlnets or controlnet_sources, controlnet_sources


def local_model(name: str, cache_dir) -> tuple:
    """A model Silk builds (tiny, tiny-xl, sd15-random): its folder, built on first use, and its
    ControlNet folders."""
    ensure, controlnets = tiny_model.TINY_MODELS[name]
    folder = ensure(cache_dir)
    return folder, [os.path.join(folder, sub) for sub in controlnets.values()]


def resolve_controlnet(name: str, cache_dir) -> str:
    """``tiny:depth``, ``tiny-xl:depth`` etc. name a local model's ControlNet; anything else is as given."""
    model, _, kind = name.partition(":")
    if kind and model in tiny_model.TINY_MODELS:
        folders = tiny_model.TINY_MODELS[model][1]
        if kind not in folders:
            raise JobError("missing_controlnet", f"'{model}' has no '{kind}' ControlNet (it has: "
                           + ", ".join(folders) + ")")
        return os.path.join(local_model(model, cache_dir)[0], folders[kind])
    return name


def _looks_local(name: str) -> bool:
    """A path, not a hub id: absolute, relative with ./ or ~, backslashes, or more than owner/name."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1
            or not families.REPO_ID.fullmatch(name))


def load_controlnet(name: str, source: str, dtype):
    from diffusers import ControlNetModel

    if not os.path.isdir(source) and _looks_local(source):
        raise JobError("missing_controlnet", f"The ControlNet folder '{name}' does not exist")
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise JobError("missing_controlnet", f"The folder '{name}' is not a diffusers ControlNet (no config.json)")
    try:
        return from_pretrained(ControlNetModel, source, dtype)
    except Exception as error:
        raise JobError("missing_controlnet", f"Cannot load the ControlNet '{name}': {short(error)}. Give a hub "
                       "repo id (with internet or a filled cache) or a local folder") from None


def from_pretrained(cls, source: str, dtype, **options):
    """``cls.from_pretrained``, taking the repo's fp16 weights where it has them (half the download)."""
    import torch

    if dtype == torch.float16 and _may_have_fp16_variant(source):
        try:
            return cls.from_pretrained(source, dtype=dtype, variant="fp16", **options)
        except (OSError, ValueError) as error:
            if "variant" not in str(error).lower() and "fp16" not in str(error):
                raise
            log.info("%s has no fp16 variant; loading its full weights", source)
    return cls.from_pretrained(source, dtype=dtype, **options)


def _may_have_fp16_variant(source: str) -> bool:
    if not os.path.isdir(source):
        return True  # a hub repo: try, and fall back when it has none
    for _root, _dirs, names in os.walk(source):
        if any(".fp16." in name for name in names):
            return True
    return False


def _text2image(family, source: str, config, controlnets, dtype):
    pipeline_class = getattr(_diffusers(), family.pipelines[0])
    options = dict(family.pipeline_options)
    if os.path.isfile(source):
        if config is not None:
            options["config"] = config
        pipe = pipeline_class.from_single_file(source, controlnet=controlnets, dtype=dtype, **options)
    else:
        pipe = from_pretrained(pipeline_class, source, dtype, controlnet=controlnets, **options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _place(pipe, model: ModelRequest, device: str) -> None:
    if model.cpu_offload and device == "cuda":
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    if model.attention_slicing:
        pipe.enable_attention_slicing()
    if model.vae_tiling:
        pipe.vae.enable_tiling()


# -- checks, family, messages ----------------------------------------------------------
def check_source(source: str) -> None:
    """Fail early, and clearly, when the base model cannot be found."""
    if os.path.isfile(source):
        if not source.lower().endswith((".safetensors", ".ckpt")):
            raise JobError("bad_model", f"'{source}' is a file but not a .safetensors or .ckpt checkpoint")
        return
    if os.path.isdir(source):
        if not os.path.exists(os.path.join(source, "model_index.json")):
            raise JobError("bad_model", f"The folder '{source}' is not a diffusers model (no model_index.json)")
        return
    if _looks_local(source):
        raise JobError("bad_model", f"The model '{source}' does not exist: give a diffusers folder, a .safetensors "
                       "or .ckpt file, a hub repo id like 'owner/name', or 'tiny'")
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(source, "model_index.json")
    except Exception as error:
        raise JobError("bad_model", f"Cannot load the model '{source}': it is neither a local folder nor a model the "
                       f"hub could provide here ({short(error)}). Give a local folder, a checkpoint file, or "
                       "'tiny' for offline tests") from None


def check_config(config: str) -> None:
    if os.path.isdir(config):
        if not os.path.exists(os.path.join(config, "model_index.json")):
            raise JobError("bad_model", f"The config folder '{config}' is not a diffusers model (no model_index.json)")
    elif _looks_local(config):
        raise JobError("bad_model", f"The config '{config}' is neither a diffusers folder nor a hub repo id")


def choose_family(model: ModelRequest, source: str, config) -> str:
    """``model.family`` unless "auto"; else what the model itself says (families.detect). A family
    the model contradicts is an error."""
    detected, evidence = families.detect(source, config, hub=True)
    if model.family == "auto":
        return detected or families.DEFAULT_FAMILY
    if detected and detected != model.family:
        raise JobError("bad_model", f"The model '{model.source}' is {families.FAMILIES[detected].label} ({evidence}), "
                       f"but the spec's family is '{model.family}': set family to 'auto' or '{detected}'")
    return model.family


def _unet_family(config) -> str:
    if config.get("addition_embed_type") == "text_time":
        return "SDXL"
    return "SD 2" if config.get("cross_attention_dim") == 1024 else "SD 1.5"


def check_controlnet_fits(name: str, controlnet_config, source: str, unet_config, family) -> None:
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
            raise JobError("controlnet_mismatch", f"The ControlNet '{name}' is made for {controlnet_family} models, but "
                           f"the model '{source}' is {model_family} (their {label} differs: {made_for} vs {model}). "
                           f"Use an {model_family} ControlNet, e.g. '{family.controlnets['DEPTH']}' for depth")
        raise JobError("controlnet_mismatch", f"The ControlNet '{name}' does not fit the model '{source}': their "
                       f"{label} differs ({made_for} vs {model})")


def short(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def explain_load_error(model: ModelRequest, error: Exception) -> JobError:
    text = str(error)
    hub_trouble = any(word in text.lower() for word in ("offline", "connect", "repository", "outgoing traffic")) \
        or any(word in text for word in ("does not appear to have", "not a local folder", "Repo id", "snapshot"))
    if os.path.isfile(model.source):
        if "Unable to load weights from checkpoint file" in text or "header" in text.lower():
            return JobError("bad_model", f"Cannot load the model '{model.source}': the file is not a readable "
                            f"checkpoint ({short(error)})")
        if "appear to be missing" in text:
            return JobError("bad_model", f"Cannot load the model '{model.source}': the file is not a Stable Diffusion "
                            f"checkpoint of this family ({short(error)})")
        if hub_trouble and model.config is None:
            return JobError("bad_model", f"Cannot load the model '{model.source}': a single-file checkpoint needs "
                            f"the diffusers configs of its architecture, which the hub could not provide here "
                            f"({short(error)}). Set the model's 'config' to a diffusers folder of the same "
                            "architecture")
    if isinstance(error, OSError) and hub_trouble:
        return JobError("bad_model", f"Cannot load the model '{model.source}': it is neither a local folder nor a "
                        f"model the hub could provide here ({short(error)}). Give a local folder, a checkpoint "
                        "file, or 'tiny' for offline tests")
    return JobError("bad_model", f"Cannot load the model '{model.source}': {short(error)}")
