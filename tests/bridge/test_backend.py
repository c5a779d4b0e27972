"""The diffusion backend in-process (torch in this Python): caching, sharing, the strength mask."""
import threading

import numpy as np
import pytest

import torch  # the worker's libraries are in the test venv (make venv)

from silk.bridge import diffusion  # noqa: E402
from silk.bridge.diffusion import DiffusionBackend, JobError  # noqa: E402
from tests.bridge.conftest import TINY  # noqa: E402


@pytest.fixture(scope="module")
def backend(model_cache):
    return DiffusionBackend(cache_dir=model_cache)


def units(height=64, width=64, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.random((height, width, 3), dtype=np.float32)} for _ in range(2)]


def request(**extra):
    return dict({"model": TINY, "prompt": "x", "steps": 6, "seed": 3, "width": 64, "height": 64,
                 "strength": 1.0, "guidance": 7.0}, **extra)


def test_pipelines_are_cached_and_share_components(backend):
    backend.load(TINY)
    entry = backend._pipeline(diffusion.ModelSpec.from_request(TINY))
    assert backend._pipeline(diffusion.ModelSpec.from_request(TINY)) is entry
    assert entry["image2image"].unet is entry["text2image"].unet
    assert entry["image2image"].vae is entry["text2image"].vae
    assert entry["image2image"].controlnet is entry["text2image"].controlnet


def test_prompt_embeddings_are_computed_once_per_prompt(backend, monkeypatch):
    entry = backend._pipeline(diffusion.ModelSpec.from_request(TINY))
    calls = []
    original = entry["text2image"].encode_prompt

    def counting(*args, **kwargs):
        if args[0] is not None:  # the pipeline passes precomputed embeddings through with prompt=None
            calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(entry["text2image"], "encode_prompt", counting)
    for _ in range(3):
        backend.generate(request(prompt="a unique prompt"), {}, units(), progress=lambda *a: None,
                         cancel=threading.Event())
    assert calls == ["a unique prompt"]


def test_strength_mask_keeps_exactly_the_masked_latents(backend, monkeypatch):
    rng = np.random.default_rng(5)
    init = rng.random((64, 64, 3), dtype=np.float32)
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[:, 32:] = 1.0  # left: keep (strength 0), right: regenerate (strength 1)
    final = {}
    original = diffusion._StrengthMask.apply

    def record(self, latents, step, total):
        out = original(self, latents, step, total)
        if step + 1 == total:
            final["latents"], final["init"] = out.clone(), self.init_latents.clone()
        return out

    monkeypatch.setattr(diffusion._StrengthMask, "apply", record)
    backend.generate(request(), {"init_image": init, "mask": mask}, units(), progress=lambda *a: None,
                     cancel=threading.Event())
    latents, initial = final["latents"][0], final["init"][0]
    assert torch.equal(latents[:, :, :4], initial[:, :, :4])  # latent columns 0-3 = pixels 0-31
    assert (latents[:, :, 4:] - initial[:, :, 4:]).abs().mean() > 0.1


def test_unknown_scheduler_and_bad_sizes_are_refused(backend):
    with pytest.raises(JobError, match="Unknown scheduler"):
        backend.generate(request(scheduler="nope"), {}, units(), progress=lambda *a: None, cancel=threading.Event())
    with pytest.raises(JobError, match="width and height"):
        backend.generate(request(width=4), {}, units(), progress=lambda *a: None, cancel=threading.Event())
