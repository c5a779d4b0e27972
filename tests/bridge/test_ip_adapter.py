"""Image prompts (IP-Adapter): the tiny adapter in diffusers' layout, embeddings blended between
reference pictures, clear errors; in-process and through the live worker."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded; before diffusers reads it

import shutil  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from silk.bridge import ip_adapter, tiny_model  # noqa: E402
from silk.bridge.client import JobFailed  # noqa: E402
from silk.bridge.diffusion import DiffusionBackend, JobError  # noqa: E402
from tests.bridge.conftest import TINY  # noqa: E402

RED = np.zeros((40, 50, 3), np.float32)
RED[..., 0] = 1.0
BLUE = np.zeros((30, 30, 3), np.float32)
BLUE[..., 2] = 1.0


@pytest.fixture(scope="module")
def backend(model_cache):
    return DiffusionBackend(cache_dir=model_cache)


def control(height=64, width=64):
    rng = np.random.default_rng(0)
    return [{"image": rng.random((height, width, 3), dtype=np.float32)} for _ in range(2)]


def generate(backend, pictures=(), weights=None, model=TINY, adapter=None, **extra):
    request = dict({"model": model, "prompt": "x", "steps": 2, "seed": 3, "width": 64, "height": 64,
                    "guidance": 7.0}, **extra)
    images = {}
    if pictures:
        weights = weights or [1.0] * len(pictures)
        # In process the frames are the arrays themselves (the schema checks descriptors on the wire).
        request["image_prompts"] = [{"image": picture, "weight": weight} for picture, weight in zip(pictures, weights)]
        request["ip_adapter"] = dict({"scale": 1.0}, **(adapter or {}))
        images["image_prompts"] = list(pictures)
    return backend.generate(request, images, control(), progress=lambda *a: None, cancel=threading.Event()).image


def test_tiny_ip_adapter_is_in_diffusers_layout_sized_for_tinys_unet(model_cache):
    from diffusers import UNet2DConditionModel

    folder = ip_adapter.ensure_tiny_ip_adapter("tiny", model_cache)
    shapes = ip_adapter.weight_shapes(os.path.join(folder, ip_adapter.TINY_WEIGHT_NAME))
    assert shapes["image_proj"]["proj.weight"] == (4 * 32, 32)  # 4 tokens of tiny's text-embedding width 32
    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "..", tiny_model.TINY_VERSION), subfolder="unet")
    sizes = ip_adapter.attention_hidden_sizes(unet)
    assert [shapes["ip_adapter"][f"{1 + 2 * i}.to_k_ip.weight"] for i in range(len(sizes))] == \
        [(size, 32) for size in sizes]
    assert os.path.isfile(os.path.join(folder, "image_encoder", "config.json"))


def test_an_image_prompt_changes_the_picture_and_removing_it_restores_it(backend):
    plain = generate(backend)
    red = generate(backend, [RED])
    blue = generate(backend, [BLUE])
    assert np.abs(red - plain).mean() > 0.02  # the image prompt steers the picture
    assert np.abs(red - blue).mean() > 0.02  # and which picture matters
    assert np.array_equal(generate(backend, [RED]), red)  # deterministic (cached embeddings give the same)
    assert np.array_equal(generate(backend), plain)  # the adapter is removed when no picture is sent
    # Scale 0 paints as without the adapter (up to float rounding in the attention).
    assert np.abs(generate(backend, [RED], adapter={"scale": 0.0}) - plain).max() < 1e-4


def test_travel_between_two_pictures_blends_their_embeddings(backend):
    generate(backend, [RED])  # loads the adapter
    entry = next(iter(backend._pipelines.values()))
    adapters = backend._ip_adapters

    def embeds(weights):
        prompt = ip_adapter.ImagePrompt("", "", 1.0, [RED, BLUE], weights)
        return adapters.arguments(entry, prompt, guidance=7.0)["ip_adapter_image_embeds"][0]

    red, blue, mixed = embeds([1.0, 0.0]), embeds([0.0, 1.0]), embeds([0.25, 0.75])
    assert red.shape == (2, 1, 32)  # negative and positive, one picture, 32-wide
    assert torch.count_nonzero(red[0]) == 0  # the plain IP-Adapter's negative is zeros
    assert torch.allclose(mixed, 0.25 * red + 0.75 * blue, atol=1e-6)
    assert not torch.allclose(red, blue, atol=1e-3)
    # Key weights scale the adapter: two keys at weight 1 travelling give scale x 1.
    assert generate(backend, [RED, BLUE], weights=[1.0, 0.0]) == pytest.approx(generate(backend, [RED]), abs=1e-5)
    halfway = generate(backend, [RED, BLUE], weights=[0.5, 0.5])
    assert np.abs(halfway - generate(backend, [RED])).mean() > 1e-3


def test_tiny_xl_gets_its_own_adapter(backend):
    xl = {"source": "tiny-xl"}

    def run(pictures=()):
        request = {"model": xl, "prompt": "x", "steps": 2, "seed": 3, "width": 64, "height": 64, "guidance": 7.0}
        images = {}
        if pictures:
            request["image_prompts"] = [{"image": picture, "weight": 1.0} for picture in pictures]
            images["image_prompts"] = list(pictures)
        return backend.generate(request, images, control()[:1], progress=lambda *a: None,
                                cancel=threading.Event()).image

    assert np.abs(run([RED]) - run()).mean() > 0.01


@pytest.mark.parametrize("request_part, message", [
    ({"image_prompts": [{"image": {}, "weight": -1.0}]}, "weight must be a number from 0"),
    ({"image_prompts": [{"image": {}, "weight": 0.0}]}, "add up to more than 0"),
    ({"image_prompts": [{"image": {}}], "ip_adapter": {"scale": 9.0}}, "scale must be a number from 0 to 4"),
    ({"image_prompts": [{"image": {}}], "ip_adapter": {"scale": float("nan")}}, "scale must be a number"),
    ({"image_prompts": [{"image": {}}], "ip_adapter": "h94/IP-Adapter"}, "ip_adapter must be an object"),
    ({"ip_adapter": {"scale": 1.0}}, "without image_prompts"),
])
def test_bad_image_prompt_requests_are_refused_with_a_reason(request_part, message):
    with pytest.raises(JobError, match=message):
        ip_adapter.parse_request(dict(request_part), [RED] * len(request_part.get("image_prompts", [])))


def test_bad_pictures_and_too_many_are_refused():
    with pytest.raises(JobError, match="1 to 4"):
        ip_adapter.image_prompt_frames({"image_prompts": [{"image": {}}] * 5})
    with pytest.raises(JobError, match="needs an 'image' frame"):
        ip_adapter.image_prompt_frames({"image_prompts": [{"weight": 1.0}]})
    for bad in (np.zeros((8, 8), np.float32), np.zeros((8, 8, 3), np.uint8), np.full((4, 4, 3), np.nan, np.float32)):
        with pytest.raises(JobError, match="image_prompts\\[0\\].image must be"):
            ip_adapter.parse_request({"image_prompts": [{"image": {}}]}, [bad])


def test_wrong_files_family_mismatch_and_missing_encoder_get_clear_errors(backend, model_cache, tmp_path):
    folder = ip_adapter.ensure_tiny_ip_adapter("tiny", model_cache)
    weights = os.path.join(folder, ip_adapter.TINY_WEIGHT_NAME)
    # A ControlNet's weights are no IP-Adapter.
    not_adapter = os.path.join(model_cache, tiny_model.TINY_VERSION, "controlnet-depth",
                               "diffusion_pytorch_model.safetensors")
    with pytest.raises(JobError, match="is not an IP-Adapter: it has no image_proj"):
        generate(backend, [RED], adapter={"source": not_adapter, "image_encoder": os.path.join(folder,
                                                                                               "image_encoder")})
    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(JobError, match="cannot be read"):
        generate(backend, [RED], adapter={"source": str(garbage), "image_encoder": os.path.join(folder,
                                                                                                "image_encoder")})
    text = tmp_path / "notes.txt"
    text.write_text("an IP-Adapter?")
    with pytest.raises(JobError, match="is not a .safetensors or .bin file"):
        generate(backend, [RED], adapter={"source": str(text)})
    # tiny's adapter on tiny-xl: made for the other family.
    with pytest.raises(JobError, match=r"made for tiny \(SD 1.5-shaped\) models, but the model 'tiny-xl' is "
                                       r"tiny-xl \(SDXL-shaped\)") as caught:
        backend.generate({"model": {"source": "tiny-xl"}, "prompt": "x", "steps": 2, "width": 64, "height": 64,
                          "image_prompts": [{"image": RED}], "ip_adapter": {"source": weights}},
                         {"image_prompts": [RED]}, control()[:1], progress=lambda *a: None, cancel=threading.Event())
    assert caught.value.code == "ip_adapter_mismatch"
    # The adapter alone, without the image_encoder folder beside it.
    alone = tmp_path / "lonely"
    alone.mkdir()
    shutil.copy(weights, alone / "ip-adapter.safetensors")
    with pytest.raises(JobError, match="has no image encoder: there is no image_encoder folder") as caught:
        generate(backend, [RED], adapter={"source": str(alone)})
    assert caught.value.code == "missing_image_encoder"
    with pytest.raises(JobError, match="is not a folder with a config.json"):
        generate(backend, [RED], adapter={"source": str(alone), "image_encoder": str(tmp_path)})
    # A hub adapter without a file name, and a hub the worker cannot reach.
    with pytest.raises(JobError, match="hub repo id with the file's path"):
        generate(backend, [RED], adapter={"source": "h94/IP-Adapter"})
    with pytest.raises(JobError, match="the hub could not provide it here"):
        generate(backend, [RED], adapter={"source": "h94/IP-Adapter/models/ip-adapter_sd15.safetensors"})
    # After all that, the default adapter still paints.
    assert np.abs(generate(backend, [RED]) - generate(backend)).mean() > 0.02


def test_image_prompts_through_the_worker(make_client):
    client = make_client()
    client.ensure_started()
    assert "ip_adapter" in client.worker_features
    common = dict(seed=3, steps=2, guidance=7.0)
    units = control()
    plain, _ = client.generate(TINY, "x", units, 64, 64, **common)
    red, _ = client.generate(TINY, "x", units, 64, 64, image_prompts=[{"image": RED, "weight": 1.0}],
                             ip_adapter={"scale": 1.0}, **common)
    mixed, _ = client.generate(TINY, "x", units, 64, 64, image_prompts=[{"image": RED, "weight": 0.5},
                                                                         {"image": BLUE, "weight": 0.5}],
                               ip_adapter={"scale": 1.0}, **common)
    assert np.abs(red - plain).mean() > 0.02 and np.abs(mixed - red).mean() > 1e-3
    with pytest.raises(JobFailed, match="is not an IP-Adapter|does not exist") as caught:
        client.generate(TINY, "x", units, 64, 64, image_prompts=[{"image": RED}],
                        ip_adapter={"source": "/no/such/adapter.safetensors"}, **common)
    assert caught.value.code == "bad_ip_adapter"
    with pytest.raises(JobFailed, match="weights of image_prompts must add up"):
        client.generate(TINY, "x", units, 64, 64, image_prompts=[{"image": RED, "weight": 0.0}], **common)
    again, _ = client.generate(TINY, "x", units, 64, 64, **common)  # the worker is fine afterwards
    assert np.array_equal(again, plain)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_image_prompts_in_half_precision(model_cache, dtype):
    """A GPU runs fp16 or bf16: the image encoder, the adapter's layers and the embeddings
    follow the pipeline's dtype (run here on the CPU)."""
    from silk.bridge.schema import ModelRequest

    backend = DiffusionBackend(cache_dir=model_cache)
    entry = backend.loaded(ModelRequest.from_json(TINY))
    entry.text2image.to(dtype)
    plain = generate(backend)
    red = generate(backend, [RED])
    pipe = entry.text2image
    assert pipe.image_encoder.dtype == dtype
    assert all(parameter.dtype == dtype for parameter in pipe.unet.encoder_hid_proj.parameters())
    prompt = ip_adapter.ImagePrompt("", "", 1.0, [RED], [1.0])
    assert backend._ip_adapters.arguments(entry, prompt, 7.0)["ip_adapter_image_embeds"][0].dtype == dtype
    assert np.isfinite(red).all() and np.abs(red - plain).mean() > 0.02
