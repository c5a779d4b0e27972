"""LoRAs on a loaded model: load each file once (as its own adapter), drop the unwanted,
set the weights; changing weights never reloads the model."""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re

from ..errors import JobError
from .loading import LoadedModel, short


def apply(loaded: LoadedModel, loras: list) -> None:
    """Make the pipeline's adapters exactly ``loras`` ([LoraRequest]). A file is known by path,
    size and modification time, so one rewritten on disk is read again."""
    pipe = loaded.text2image
    if loras and importlib.util.find_spec("peft") is None:
        raise JobError("missing_modules", "LoRAs need the 'peft' package in the worker's Python: run 'Install "
                       "worker environment' in Silk's preferences again, or pip install peft")
    wanted = [(_adapter_name(lora), lora) for lora in loras]
    wanted_names = [name for name, _ in wanted]
    _drop_stale(loaded, wanted_names)
    for name, lora in wanted:
        if name not in loaded.loras:
            loaded.lora_weights = None  # loading changes which adapters are active: set them again below
            _load(loaded, name, lora)
            loaded.loras[name] = lora.path
    weights = tuple((name, lora.weight) for name, lora in wanted)
    if wanted and weights != loaded.lora_weights:
        pipe.set_adapters(wanted_names, adapter_weights=[lora.weight for _, lora in wanted])
    loaded.lora_weights = weights


def _adapter_name(lora) -> str:
    try:
        stat = os.stat(lora.path)
    except OSError:
        raise JobError("bad_lora", f"The LoRA file '{lora.path}' does not exist") from None
    identity = f"{lora.path}|{stat.st_size}|{stat.st_mtime_ns}"
    return "lora_" + hashlib.sha1(identity.encode()).hexdigest()[:12]


def _drop_stale(loaded: LoadedModel, wanted_names: list) -> None:
    stale = [name for name in loaded.loras if name not in wanted_names]
    if not stale:
        return
    if len(stale) == len(loaded.loras):
        loaded.text2image.unload_lora_weights()  # restores the original layers, not just empty adapters
    else:
        loaded.text2image.delete_adapters(stale)
    for name in stale:
        del loaded.loras[name]


def _load(loaded: LoadedModel, name: str, lora) -> None:
    pipe = loaded.text2image
    try:
        with logged_warnings("diffusers.utils.peft_utils") as warnings:
            pipe.load_lora_weights(lora.path, adapter_name=name)
    except Exception as error:  # diffusers removes a half-loaded adapter itself
        raise JobError("bad_lora", f"The LoRA '{lora.path}' does not fit the model '{loaded.model.source}': "
                       + _why_not(error, name, loaded.family.label)) from None
    # diffusers loads a LoRA whose layers only partly exist in the model and merely logs the
    # rest as unexpected keys: a partial fit means a LoRA made for another model.
    unused = [message for message in warnings if "unexpected keys" in message or "missing keys" in message]
    if unused or not any(name in names for names in pipe.get_list_adapters().values()):
        if unused and loaded.loras:
            pipe.delete_adapters([name])
        elif unused:
            pipe.unload_lora_weights()
        raise JobError("bad_lora", f"The LoRA '{lora.path}' does not fit the model '{loaded.model.source}': "
                       f"some of its weights match no layer of this {loaded.family.label} model; is it made for "
                       "another model family?")
    _match_dtype(loaded)


def _match_dtype(loaded: LoadedModel) -> None:
    """peft creates adapter layers in fp32 whatever the model's precision: cast them so the model
    stays in the precision it was loaded in."""
    for pipe_part in (loaded.text2image.unet, getattr(loaded.text2image, "text_encoder", None),
                      getattr(loaded.text2image, "text_encoder_2", None)):
        if pipe_part is None:
            continue
        for parameter_name, parameter in pipe_part.named_parameters():
            if "lora_" in parameter_name and parameter.dtype != loaded.dtype:
                parameter.data = parameter.data.to(loaded.dtype)


def _why_not(error: Exception, name: str, label: str) -> str:
    text = str(error)
    mismatch = re.search(r"size mismatch for (\S+?): copying a param with shape torch\.Size\((\[[^\]]*\])\) "
                         r"from checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)", text)
    if mismatch:
        layer = mismatch.group(1).replace(f".{name}.", ".")
        return (f"its layers have other shapes than this {label} model's (e.g. {layer}: "
                f"{mismatch.group(2)} vs {mismatch.group(3)}); is it made for another model family?")
    if "not found in the base model" in text:
        return f"it names layers this {label} model does not have; is it made for another model family?"
    return f"it is not a LoRA diffusers can read ({short(error)})"


class logged_warnings:
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
