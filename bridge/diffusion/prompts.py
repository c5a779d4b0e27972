"""Prompt embeddings, cached per prompt (and per text-encoder LoRA weights), and prompt_mix:
the weighted mean of several prompts' embeddings (prompt travel)."""
from __future__ import annotations

CACHE_LIMIT = 64


class PromptEmbeddings:
    def __init__(self):
        self._cache: dict = {}

    def clear(self) -> None:
        self._cache.clear()

    def for_request(self, loaded, request) -> dict:
        """The request's embeddings as pipeline arguments: its prompt's, or its prompt_mix's mean."""
        if request.prompt_mix:
            return self.mixed(loaded, request.prompt_mix, request.guidance)
        return self.embed(loaded, request.prompt, request.negative_prompt, request.guidance)

    def mixed(self, loaded, mix: list, guidance: float) -> dict:
        """The weight-normalised sum of each entry's embeddings (and of SDXL's pooled ones). Entries
        of weight 0 are not encoded, and a single entry left is used exactly as it is."""
        total = sum(entry.weight for entry in mix)
        parts = [(self.embed(loaded, entry.prompt, entry.negative_prompt, guidance), entry.weight / total)
                 for entry in mix if entry.weight > 0]
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

    def embed(self, loaded, prompt: str, negative: str, guidance: float) -> dict:
        """One prompt's embeddings (SDXL adds the pooled ones), cached. LoRAs on a text encoder
        change them, so their weights are part of the key."""
        pipe = loaded.text2image
        text_adapters = {name for component, names in pipe.get_list_adapters().items()
                         if component.startswith("text_encoder") for name in names} if loaded.loras else set()
        text_loras = tuple(item for item in loaded.lora_weights or () if item[0] in text_adapters)
        key = (id(pipe), prompt, negative, guidance > 1.0, text_loras)
        found = self._cache.get(key)
        if found is None:
            encoded = pipe.encode_prompt(
                prompt, device=pipe._execution_device, num_images_per_prompt=1,
                do_classifier_free_guidance=guidance > 1.0, negative_prompt=negative or None)
            names = ("prompt_embeds", "negative_prompt_embeds")
            if loaded.family.id == "sdxl":
                names += ("pooled_prompt_embeds", "negative_pooled_prompt_embeds")
            found = dict(zip(names, encoded))
            if len(self._cache) > CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = found
        return found
