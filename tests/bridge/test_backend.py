"""The diffusion backend in-process (torch in this Python): caching, sharing, the strength mask, previews."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded; before diffusers reads it

import threading  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import torch  # noqa: E402 - the worker's libraries are in the test venv (make venv)

from silk.bridge.schema import ModelRequest  # noqa: E402
from silk.bridge import diffusion, families  # noqa: E402
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
                 "strength": 1.0, "guidance": 7.0, "scheduler": "euler"}, **extra)


def test_pipelines_are_cached_and_share_components(backend):
    backend.load(TINY)
    entry = backend.loaded(ModelRequest.from_json(TINY))
    assert backend.loaded(ModelRequest.from_json(TINY)) is entry
    assert entry.image2image.unet is entry.text2image.unet
    assert entry.image2image.vae is entry.text2image.vae
    assert entry.image2image.controlnet is entry.text2image.controlnet


def test_prompt_embeddings_are_computed_once_per_prompt(backend, monkeypatch):
    entry = backend.loaded(ModelRequest.from_json(TINY))
    calls = []
    original = entry.text2image.encode_prompt

    def counting(*args, **kwargs):
        if args[0] is not None:  # the pipeline passes precomputed embeddings through with prompt=None
            calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(entry.text2image, "encode_prompt", counting)
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
    original = diffusion.StrengthMask.apply

    def record(self, latents, step, total):
        out = original(self, latents, step, total)
        if step + 1 == total:
            final["latents"], final["init"] = out.clone(), self.init_latents.clone()
        return out

    monkeypatch.setattr(diffusion.StrengthMask, "apply", record)
    backend.generate(request(), {"init_image": init, "mask": mask}, units(), progress=lambda *a: None,
                     cancel=threading.Event())
    latents, initial = final["latents"][0], final["init"][0]
    assert torch.equal(latents[:, :, :4], initial[:, :, :4])  # latent columns 0-3 = pixels 0-31
    assert (latents[:, :, 4:] - initial[:, :, 4:]).abs().mean() > 0.1


def test_unknown_scheduler_and_bad_sizes_are_refused(backend):
    with pytest.raises(JobError, match="unknown scheduler .nope."):
        backend.generate(request(scheduler="nope"), {}, units(), progress=lambda *a: None, cancel=threading.Event())
    with pytest.raises(JobError, match="'width' must be a whole number from 8 to 8192"):
        backend.generate(request(width=4), {}, units(), progress=lambda *a: None, cancel=threading.Event())


def test_preview_covers_the_requested_frame_not_the_padding(backend):
    """An 80x64 frame runs padded to 128x64; its preview is one pixel per 8x8 block of the 80x64."""
    progress = []
    backend.generate(request(width=80, height=64, steps=2, preview=True), {}, units(64, 80),
                     progress=lambda *a: progress.append(a), cancel=threading.Event())
    assert [p[2].shape for p in progress] == [(8, 10, 3), (8, 10, 3)]
    assert all(p[2].dtype == np.uint8 for p in progress)


def test_preview_crops_the_latents_before_converting():
    latents = torch.full((1, 4, 8, 16), 50.0)  # the padding: saturates the picture
    latents[:, :, :, :11] = 0.0
    preview = diffusion.preview(latents, 57, 81, families.FAMILIES["sd15"])  # ceil(57/8) x ceil(81/8) = 8 x 11
    assert preview.shape == (8, 11, 3)
    assert (preview == 127).all()  # zero latents are mid-grey: nothing from the padding
    xl = diffusion.preview(torch.zeros(1, 4, 8, 8), 64, 64, families.FAMILIES["sdxl"])
    bias = np.asarray(families.FAMILIES["sdxl"].latent_rgb[1])
    assert np.array_equal(xl[0, 0], ((bias + 1) * 0.5 * 255).astype(np.uint8))
