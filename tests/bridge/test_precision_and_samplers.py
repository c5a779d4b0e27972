"""What tiny in fp32 used to hide: precision that holds (fp16 and bf16 on the CPU, through the
worker, after both pipelines and after LoRAs), samplers that do not leak into each other, UniPC
with a strength mask, cancelling inside one step, and clear errors for a missing ControlNet."""
import os
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded; before diffusers reads it

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from silk.bridge import families  # noqa: E402
from silk.bridge.client import JobCancelled, JobFailed  # noqa: E402
from silk.bridge.diffusion import DiffusionBackend, JobError  # noqa: E402
from tests.bridge.conftest import control_images  # noqa: E402
from tests.bridge.test_models import write_lora  # noqa: E402


def component_dtypes(info: dict) -> dict:
    return {name: component["dtype"] for name, component in info["components"].items()}


@pytest.mark.parametrize("precision, dtype", [("fp16", "float16"), ("bf16", "bfloat16")])
def test_half_precision_holds_on_the_cpu_through_the_worker(make_client, tmp_path, model_cache, precision, dtype):
    client = make_client()
    model = {"source": "tiny", "precision": precision}
    info = client.load_model(model)
    dtypes = component_dtypes(info)
    # Both pipelines, every component (each ControlNet apart), in the asked precision.
    assert {name.split(".")[0] for name in dtypes} == {"text2image", "image2image"}
    assert {"text2image.unet", "image2image.vae", "image2image.text_encoder", "image2image.controlnet.0",
            "image2image.controlnet.1"} <= set(dtypes)
    assert set(dtypes.values()) == {dtype} and info["dtype"] == dtype and info["family"] == "sd15"
    picture, _ = client.generate(model, "x", control_images(), 80, 64, steps=2, scheduler="euler")
    assert np.isfinite(picture).all() and picture.std() > 0.01
    # After a LoRA, still the same precision everywhere (its layers included).
    from diffusers import UNet2DConditionModel

    from silk.bridge import tiny_model

    unet = UNet2DConditionModel.from_pretrained(tiny_model.ensure_tiny(model_cache), subfolder="unet")
    lora = write_lora(unet, tmp_path / "style.safetensors", seed=3)
    with_lora = dict(model, loras=[{"path": lora, "weight": 0.8}])
    image2image = client.generate(with_lora, "x", control_images(), 64, 64, steps=2, scheduler="euler",
                                  init_image=np.full((64, 64, 3), 0.5, np.float32), strength=0.7)[0]
    assert np.isfinite(image2image).all()
    status = client.status()
    (loaded,) = status["loaded"]
    assert loaded["loras"] == 1 and set(component_dtypes(loaded).values()) == {dtype}, component_dtypes(loaded)


def test_the_same_euler_request_paints_the_same_picture_whatever_ran_before(make_client):
    settings = dict(steps=4, seed=11, scheduler="euler")
    fresh, _ = make_client().generate({"source": "tiny"}, "a cube", control_images(), 80, 64, **settings)
    used = make_client()
    for sampler in families.SAMPLER_IDS:  # Karras sigmas, ancestral noise, UniPC's history...
        used.generate({"source": "tiny"}, "a cube", control_images(), 80, 64, steps=4, seed=11, scheduler=sampler)
    again, _ = used.generate({"source": "tiny"}, "a cube", control_images(), 80, 64, **settings)
    np.testing.assert_array_equal(again, fresh)


@pytest.fixture(scope="module")
def backend(model_cache):
    return DiffusionBackend(cache_dir=model_cache)


def test_unipc_keeps_the_strength_masks_edits(backend, monkeypatch):
    """UniPC's corrector rebuilds each sample from its own history, undoing latents edited between
    steps: with a mask it runs without it, and every step starts from the edited latents."""
    from diffusers import UniPCMultistepScheduler

    corrections, inputs = [], []
    original_correct = UniPCMultistepScheduler.multistep_uni_c_bh_update
    original_step = UniPCMultistepScheduler.step

    def correct(self, *args, **kwargs):
        corrections.append(1)
        return original_correct(self, *args, **kwargs)

    def step(self, model_output, timestep, sample, *args, **kwargs):
        inputs.append(sample.clone())
        return original_step(self, model_output, timestep, sample, *args, **kwargs)

    from silk.bridge.diffusion import StrengthMask

    edited, init_latents = [], []
    original_apply = StrengthMask.apply

    def apply(self, latents, step_index, total):
        out = original_apply(self, latents, step_index, total)
        edited.append(out.clone())
        init_latents[:] = [self.init_latents]
        return out

    monkeypatch.setattr(UniPCMultistepScheduler, "multistep_uni_c_bh_update", correct)
    monkeypatch.setattr(UniPCMultistepScheduler, "step", step)
    monkeypatch.setattr(StrengthMask, "apply", apply)
    mask = np.zeros((64, 64, 1), np.float32)
    mask[16:48, 16:48] = 1.0  # repaint a square, keep the rest
    init = np.random.default_rng(4).random((64, 64, 3), dtype=np.float32)
    request = {"model": {"source": "tiny"}, "prompt": "x", "steps": 6, "seed": 2, "width": 64, "height": 64,
               "scheduler": "unipc", "strength": 1.0}
    units = [{"image": image["image"]} for image in control_images(64, 64)]
    backend.generate(request, {"init_image": init, "mask": mask}, units, progress=lambda *a: None,
                     cancel=threading.Event())
    assert corrections == [] and len(edited) == 6
    for before, after in zip(edited, inputs[1:]):  # each step starts exactly where the mask left the latents
        assert torch.equal(before, after)
    keep = torch.from_numpy(mask[::8, ::8, 0] == 0)
    assert torch.equal(edited[-1][0][:, keep], init_latents[0][0][:, keep])  # kept pixels: the initial image
    backend.generate(request, {}, units, progress=lambda *a: None, cancel=threading.Event())
    assert corrections, "without edits UniPC keeps its corrector"


def test_a_cancel_lands_inside_one_long_step(make_client):
    client = make_client()
    client.load_model({"source": "tiny"})
    cancel_at = []

    def should_cancel():
        if not cancel_at and client.state == "busy":
            cancel_at.append(time.monotonic() + 1.0)
        return bool(cancel_at) and time.monotonic() > cancel_at[0]

    started = time.monotonic()
    with pytest.raises(JobCancelled):  # one step of 2048x2048 takes far longer than this on one core
        client.generate({"source": "tiny"}, "x", control_images(8, 8), 2048, 2048, steps=1, timeout=300,
                        should_cancel=should_cancel)
    assert time.monotonic() - cancel_at[0] < 10, time.monotonic() - started
    picture, _ = client.generate({"source": "tiny"}, "x", control_images(), 80, 64, steps=1)
    assert picture.shape == (64, 80, 3)


def test_a_missing_local_controlnet_folder_says_it_does_not_exist(backend, tmp_path):
    missing = str(tmp_path / "controlnets" / "depth")
    with pytest.raises(JobError, match=f"The ControlNet folder '{missing}' does not exist") as caught:
        backend.load({"source": "tiny", "controlnets": [missing]})
    assert caught.value.code == "missing_controlnet"
    with pytest.raises(JobError, match=r"The ControlNet folder '\./nowhere' does not exist"):
        backend.load({"source": "tiny", "controlnets": ["./nowhere"]})
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobError, match="is not a diffusers ControlNet"):
        backend.load({"source": "tiny", "controlnets": [str(tmp_path / "empty")]})


def test_wrong_field_types_through_the_worker_are_bad_requests(make_client):
    client = make_client()
    client.ensure_started()
    frame = {"attachment": 0, "shape": [8, 8, 3], "dtype": ["float32"]}
    for message in ({"type": "generate", "model": {"source": "tiny"}, "prompt": "x", "width": 8, "height": 8,
                     "controlnets": [{"image": frame}]},
                    {"type": "load_model", "model": {"source": "tiny", "precision": ["fp16"]}},
                    {"type": "generate", "model": "tiny", "prompt": "x"}):
        with pytest.raises(JobFailed) as caught:
            client._call(message, [bytes(8 * 8 * 3 * 4)], timeout=10)
        assert caught.value.code in ("bad_request", "bad_model"), caught.value
    assert client.ping()["type"] == "pong"
