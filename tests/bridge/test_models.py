"""Model kinds through the real backend, in-process: single-file checkpoints, LoRAs, SDXL (tiny-xl).

Everything is made here from the project's own random-weight models: a single-file
checkpoint written in the original layout, LoRAs with random low-rank weights.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded; before diffusers reads it

import threading  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from silk.bridge.schema import ModelRequest  # noqa: E402
from silk.bridge import diffusion, families, tiny_model  # noqa: E402
from silk.bridge.diffusion import DiffusionBackend, JobError  # noqa: E402

TINY_CONTROLNETS = ["tiny:depth", "tiny:normal"]


@pytest.fixture(scope="module")
def backend(model_cache):
    return DiffusionBackend(cache_dir=model_cache)


@pytest.fixture(scope="module")
def tiny_folder(model_cache):
    return tiny_model.ensure_tiny(model_cache)


@pytest.fixture(scope="module")
def checkpoint(tiny_folder, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("checkpoints") / "tiny-original.safetensors")
    tiny_model.save_original_checkpoint(tiny_folder, path)
    return path


def units(count=2, height=64, width=64, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.random((height, width, 3), dtype=np.float32)} for _ in range(count)]


def generate(backend, model, count=2, images=None, control=None, **extra):
    request = dict({"model": model, "prompt": "a red cube", "steps": 4, "seed": 7, "width": 64, "height": 64,
                    "guidance": 7.0, "scheduler": "euler"}, **extra)
    return backend.generate(request, images or {}, control or units(count), progress=lambda *a: None,
                            cancel=threading.Event()).image


def entry_for(backend, model):
    return backend._pipelines[ModelRequest.from_json(model).key()]


# -- single-file checkpoints ------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "tiny-xl"])
def test_original_layout_converts_back_to_exactly_the_diffusers_weights(name, model_cache, tmp_path):
    """Our writer is the inverse of diffusers' own single-file converters: every weight comes back."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, \
        convert_ldm_vae_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = tiny_model.TINY_MODELS[name][0](model_cache)
    path = str(tmp_path / "original.safetensors")
    tiny_model.save_original_checkpoint(folder, path)
    original = load_file(path)
    text_prefixes = (("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.") if name == "tiny-xl"
                     else ("cond_stage_model.transformer.",))
    assert all(key.startswith(("model.diffusion_model.", "first_stage_model.") + text_prefixes) for key in original)
    assert all(any(key.startswith(prefix) for key in original) for prefix in text_prefixes)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    clip = {key.removeprefix("text_model."): value for key, value in convert_ldm_clip_checkpoint(original).items()}
    pairs = [(unet, convert_ldm_unet_checkpoint(original, dict(unet.config))),
             (vae, convert_ldm_vae_checkpoint(original, dict(vae.config))), (text_encoder, clip)]
    if name == "tiny-xl":
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2")
        pairs.append((text_encoder_2, convert_open_clip_checkpoint(text_encoder_2, original,
                                                                   prefix="conditioner.embedders.1.model.")))
    for model, converted in pairs:
        expected = {key: value for key, value in model.state_dict().items() if not key.endswith("position_ids")}
        assert set(converted) == set(expected), type(model).__name__
        assert all(torch.equal(converted[key], expected[key]) for key in expected), type(model).__name__


def test_single_file_checkpoint_paints_the_folder_models_picture(backend, checkpoint, tiny_folder, tmp_path):
    folder_image = generate(backend, {"source": "tiny"})
    single = {"source": checkpoint, "config": tiny_folder, "controlnets": TINY_CONTROLNETS}
    info = backend.load(single)
    assert info["family"] == "sd15" and info["source"] == checkpoint
    single_image = generate(backend, single)
    np.testing.assert_allclose(single_image, folder_image, atol=1e-5)
    # The weights come from the file, not from the config folder: change one in the file, get another picture.
    weights = load_file(checkpoint)
    weights["model.diffusion_model.out.2.weight"] = weights["model.diffusion_model.out.2.weight"] * 3.0
    changed = str(tmp_path / "changed.safetensors")
    save_file(weights, changed)
    changed_image = generate(backend, dict(single, source=changed))
    assert np.abs(changed_image - folder_image).max() > 0.01


def test_sdxl_single_file_checkpoint_paints_the_folder_models_picture(backend, model_cache, tmp_path):
    path = str(tmp_path / "tiny-xl-original.safetensors")
    tiny_model.save_original_checkpoint(tiny_model.ensure_tiny_xl(model_cache), path)
    assert families.detect(path)[0] == "sdxl"
    folder_image = generate(backend, {"source": "tiny-xl"}, count=1)
    single = {"source": path, "config": "tiny-xl", "controlnets": ["tiny-xl:depth"]}
    assert backend.load(single)["family"] == "sdxl"
    assert type(entry_for(backend, single).text2image).__name__ == "StableDiffusionXLControlNetPipeline"
    np.testing.assert_allclose(generate(backend, single, count=1), folder_image, atol=1e-5)


def test_single_file_config_may_name_a_tiny_model_and_is_only_for_checkpoints(backend, checkpoint):
    assert backend.load({"source": checkpoint, "config": "tiny", "controlnets": TINY_CONTROLNETS})["family"] == "sd15"
    with pytest.raises(JobError, match="'config' is only for single-file checkpoints"):
        backend.load({"source": "tiny", "config": "tiny"})
    with pytest.raises(JobError, match="neither a diffusers folder nor a hub repo id"):
        backend.load({"source": checkpoint, "config": "/no/such/folder", "controlnets": TINY_CONTROLNETS})


def test_single_file_family_comes_from_its_keys_and_a_contradiction_is_refused(backend, checkpoint, tiny_folder):
    assert families.detect(checkpoint)[0] == "sd15"
    with pytest.raises(JobError, match=r"is SD 1\.5 \(its config's model_index.json names StableDiffusionPipeline\).*'sdxl'"):
        backend.load({"source": checkpoint, "config": tiny_folder, "family": "sdxl", "controlnets": TINY_CONTROLNETS})


def test_broken_checkpoints_give_clear_errors(backend, tiny_folder, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(JobError, match="Cannot load the model .*garbage.safetensors': the file is not a readable "
                                       "checkpoint") as caught:
        backend.load({"source": str(garbage), "config": tiny_folder, "controlnets": TINY_CONTROLNETS})
    assert caught.value.code == "bad_model"
    # A valid .safetensors that holds no Stable Diffusion weights.
    unrelated = str(tmp_path / "unrelated.safetensors")
    save_file({"some.tensor": torch.zeros(3)}, unrelated)
    with pytest.raises(JobError, match="not a Stable Diffusion checkpoint"):
        backend.load({"source": unrelated, "config": tiny_folder, "controlnets": TINY_CONTROLNETS})


def test_single_file_without_config_offline_says_to_set_one(backend, checkpoint):
    with pytest.raises(JobError, match="Set the model's 'config' to a diffusers folder"):
        backend.load({"source": checkpoint, "controlnets": TINY_CONTROLNETS})


# -- LoRAs --------------------------------------------------------------------------------
def write_lora(unet, path, seed, rank=4, scale=0.5):
    """A LoRA on every attention projection, in the peft key layout diffusers saves and reads."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, module in unet.named_modules():
        layer = getattr(module, "base_layer", module)  # a layer a LoRA is already loaded into is wrapped
        if name.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "attn2.to_out.0")) \
                and isinstance(layer, torch.nn.Linear):
            weights[f"unet.{name}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=generator) * scale
            weights[f"unet.{name}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=generator) * scale
    assert weights
    save_file(weights, str(path))
    return str(path)


@pytest.fixture(scope="module")
def loras(backend, tmp_path_factory):
    backend.load({"source": "tiny"})
    unet = entry_for(backend, {"source": "tiny"}).text2image.unet
    folder = tmp_path_factory.mktemp("loras")
    return write_lora(unet, folder / "one.safetensors", seed=1), write_lora(unet, folder / "two.safetensors", seed=2)


def test_lora_weights_change_the_picture_without_reloading_the_model(backend, loras, monkeypatch):
    first, second = loras
    base = generate(backend, {"source": "tiny"})
    entry = entry_for(backend, {"source": "tiny"})
    loads, lora_loads = [], []
    monkeypatch.setattr(diffusion.loading, "load",
                        lambda *args: loads.append(args) or pytest.fail("the model was reloaded"))
    original_load_lora = entry.text2image.load_lora_weights
    monkeypatch.setattr(entry.text2image, "load_lora_weights",
                        lambda path, **kw: lora_loads.append(path) or original_load_lora(path, **kw))

    def with_loras(*weights):
        return {"source": "tiny", "loras": [{"path": path, "weight": w} for path, w in zip(loras, weights)]}

    at_zero = generate(backend, with_loras(0.0))
    at_one = generate(backend, with_loras(1.0))
    at_half = generate(backend, with_loras(0.5))
    np.testing.assert_allclose(at_zero, base, atol=1e-6)  # weight 0 = the base model
    assert np.abs(at_one - base).max() > 0.02 and np.abs(at_half - at_one).max() > 0.01
    assert lora_loads == [first]  # the file was read once; only its weight changed after that
    both = generate(backend, with_loras(1.0, 0.7))
    assert lora_loads == [first, second] and np.abs(both - at_one).max() > 0.01
    np.testing.assert_allclose(generate(backend, with_loras(0.0, 0.0)), base, atol=1e-6)
    assert sorted(entry.text2image.get_list_adapters()["unet"]) == sorted(entry.loras)
    np.testing.assert_allclose(generate(backend, with_loras(1.0)), at_one, atol=1e-6)  # the second one dropped
    np.testing.assert_allclose(generate(backend, {"source": "tiny"}), base, atol=1e-6)  # all unloaded
    assert entry.text2image.get_list_adapters() == {} and not loads
    assert entry_for(backend, {"source": "tiny"}) is entry
    assert backend.load(with_loras(0.3))["loras"] == 1


def test_a_missing_or_unfitting_lora_is_a_clear_error(backend, loras, model_cache, tmp_path):
    base = generate(backend, {"source": "tiny"})
    with pytest.raises(JobError, match="The LoRA file '.*nope.safetensors' does not exist") as caught:
        backend.load({"source": "tiny", "loras": [{"path": str(tmp_path / "nope.safetensors"), "weight": 1}]})
    assert caught.value.code == "bad_lora"
    # A LoRA made for tiny-xl: some of its layers exist in tiny, the others do not.
    from diffusers import UNet2DConditionModel

    xl_unet = UNet2DConditionModel.from_pretrained(tiny_model.ensure_tiny_xl(model_cache), subfolder="unet")
    xl_lora = write_lora(xl_unet, tmp_path / "xl.safetensors", seed=3)
    with pytest.raises(JobError, match="does not fit the model 'tiny': some of its weights match no layer of this "
                                       r"SD 1\.5 model; is it made for another model family") as caught:
        backend.load({"source": "tiny", "loras": [{"path": xl_lora}]})
    assert caught.value.code == "bad_lora"
    # tiny's layer names with other widths.
    wider = {key: torch.cat([value, value], dim=1) if ".lora_A." in key else value
             for key, value in load_file(loras[0]).items()}
    save_file(wider, str(tmp_path / "wider.safetensors"))
    with pytest.raises(JobError, match=r"its layers have other shapes than this SD 1\.5 model's \(e\.g\. \S+: "
                                       r"\[4, \d+\] vs \[4, \d+\]\); is it made for another model family"):
        backend.load({"source": "tiny", "loras": [{"path": str(tmp_path / "wider.safetensors")}]})
    renamed = {key.replace("unet.", "unet.no_such_block.", 1): value for key, value in load_file(loras[0]).items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"))
    with pytest.raises(JobError, match="names layers this SD 1.5 model does not have"):
        backend.load({"source": "tiny", "loras": [{"path": str(tmp_path / "renamed.safetensors")}]})
    (tmp_path / "garbage.safetensors").write_bytes(b"not a lora")
    with pytest.raises(JobError, match="not a LoRA diffusers can read"):
        backend.load({"source": "tiny", "loras": [{"path": str(tmp_path / "garbage.safetensors")}]})
    for bad in ([{"weight": 1}], [{"path": loras[0], "weight": "x"}], [{"path": loras[0], "weight": 99}],
                [{"path": loras[0]}, {"path": loras[0]}], "one.safetensors"):
        with pytest.raises(JobError) as caught:
            backend.load({"source": "tiny", "loras": bad})
        assert caught.value.code == "bad_lora"
    np.testing.assert_allclose(generate(backend, {"source": "tiny"}), base, atol=1e-6)  # the model is unharmed


def test_a_lora_file_rewritten_on_disk_is_read_again(backend, tmp_path):
    backend.load({"source": "tiny"})
    unet = entry_for(backend, {"source": "tiny"}).text2image.unet
    path = write_lora(unet, tmp_path / "edited.safetensors", seed=11)
    edited = write_lora(unet, tmp_path / "edited-later.safetensors", seed=12)  # same size, other weights
    model = {"source": "tiny", "loras": [{"path": path, "weight": 1.0}]}
    before = generate(backend, model)
    with open(edited, "rb") as source, open(path, "wb") as target:
        target.write(source.read())
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))  # a newer time even on coarse clocks
    after = generate(backend, model)
    assert np.abs(after - before).max() > 0.01
    assert len(entry_for(backend, model).loras) == 1  # the old version's adapter is gone


def test_a_text_encoder_lora_weight_change_encodes_the_prompt_again(backend, tmp_path):
    """Cached prompt embeddings depend on a text-encoder LoRA's weight; a stale cache would keep the old picture."""
    backend.load({"source": "tiny"})
    text_encoder = entry_for(backend, {"source": "tiny"}).text2image.text_encoder
    generator = torch.Generator().manual_seed(5)
    weights = {}
    for name, module in text_encoder.named_modules():
        if name.endswith(("q_proj", "v_proj")) and isinstance(module, torch.nn.Linear):
            weights[f"text_encoder.{name}.lora_A.weight"] = torch.randn(4, module.in_features, generator=generator)
            weights[f"text_encoder.{name}.lora_B.weight"] = torch.randn(module.out_features, 4, generator=generator)
    path = str(tmp_path / "text.safetensors")
    save_file(weights, path)
    base = generate(backend, {"source": "tiny"})
    model = {"source": "tiny", "loras": [{"path": path, "weight": 0.0}]}
    np.testing.assert_allclose(generate(backend, model), base, atol=1e-6)
    model["loras"][0]["weight"] = 1.0
    assert np.abs(generate(backend, model) - base).max() > 0.02
    model["loras"][0]["weight"] = 0.0
    np.testing.assert_allclose(generate(backend, model), base, atol=1e-6)
    assert "text_encoder" in entry_for(backend, model).text2image.get_list_adapters()


def test_lora_weights_are_not_part_of_the_pipeline_key(loras):
    def key(weight):
        return ModelRequest.from_json({"source": "tiny", "loras": [{"path": loras[0], "weight": weight}]}).key()

    assert key(0.2) == key(0.9) == ModelRequest.from_json({"source": "tiny"}).key()


# -- SDXL ---------------------------------------------------------------------------------
TINY_XL = {"source": "tiny-xl"}


def test_tiny_xl_is_shaped_like_sdxl(model_cache):
    import json

    from diffusers import ControlNetModel, UNet2DConditionModel

    folder = tiny_model.ensure_tiny_xl(model_cache)
    with open(os.path.join(folder, "model_index.json")) as handle:
        index = json.load(handle)
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    unet = UNet2DConditionModel.load_config(folder, subfolder="unet")
    assert unet["addition_embed_type"] == "text_time" and unet["cross_attention_dim"] == 32 + 64
    controlnet = ControlNetModel.load_config(os.path.join(folder, "controlnet-depth"))
    assert controlnet["addition_embed_type"] == "text_time"
    assert families.FAMILIES["sdxl"].controlnets["DEPTH"] == "diffusers/controlnet-depth-sdxl-1.0"
    assert "NORMAL" not in families.FAMILIES["sdxl"].controlnets  # SDXL has no normal ControlNet
    assert {"DEPTH", "NORMAL"} <= set(families.FAMILIES["sd15"].controlnets)


def test_sdxl_text_to_image(backend, monkeypatch):
    info = backend.load(TINY_XL)
    assert info["family"] == "sdxl" and info["controlnets"] == 1
    entry = entry_for(backend, TINY_XL)
    assert type(entry.text2image).__name__ == "StableDiffusionXLControlNetPipeline"
    assert type(entry.image2image).__name__ == "StableDiffusionXLControlNetImg2ImgPipeline"
    assert entry.image2image.unet is entry.text2image.unet
    calls = []
    original = entry.text2image.encode_prompt
    monkeypatch.setattr(entry.text2image, "encode_prompt",
                        lambda *a, **kw: calls.append(a[0] if a else kw.get("prompt")) or original(*a, **kw))
    control = units(1, 64, 80)
    progress = []
    image = backend.generate({"model": TINY_XL, "prompt": "a lighthouse", "steps": 4, "seed": 5, "width": 80,
                              "height": 64, "preview": True, "scheduler": "euler"}, {}, control,
                             progress=lambda *a: progress.append(a), cancel=threading.Event()).image
    assert image.shape == (64, 80, 3) and np.isfinite(image).all() and image.std() > 0.01
    assert [p[0] for p in progress] == [1, 2, 3, 4] and progress[-1][2].shape == (8, 10, 3)
    again = generate(backend, TINY_XL, control=control, prompt="a lighthouse", seed=5, steps=4, width=80)
    np.testing.assert_array_equal(image, again)  # same seed, same picture; the prompt was encoded once
    assert [prompt for prompt in calls if prompt is not None] == ["a lighthouse"]
    embeddings = next(iter(backend._embeddings._cache.values()))
    assert set(embeddings) == {"prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                               "negative_pooled_prompt_embeds"}
    other_prompt = generate(backend, TINY_XL, control=control, prompt="a forest", seed=5, steps=4, width=80)
    assert np.abs(other_prompt - image).max() > 0.01
    unsteered = backend.generate({"model": TINY_XL, "prompt": "a lighthouse", "steps": 4, "seed": 5, "width": 80,
                                  "height": 64}, {}, [dict(control[0], weight=0.0)], progress=lambda *a: None,
                                 cancel=threading.Event()).image
    assert np.abs(unsteered - image).max() > 0.01  # tiny-xl's ControlNet really steers


def test_sdxl_image_to_image_with_a_strength_mask(backend, monkeypatch):
    rng = np.random.default_rng(9)
    init = rng.random((64, 64, 3), dtype=np.float32)
    plain = generate(backend, TINY_XL, count=1, images={"init_image": init}, strength=0.75, steps=8)
    assert plain.shape == (64, 64, 3) and np.isfinite(plain).all()
    assert np.abs(plain - generate(backend, TINY_XL, count=1)).max() > 0.01  # the initial image matters
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[:, 32:] = 1.0
    final = {}
    original = diffusion.StrengthMask.apply

    def record(self, latents, step, total):
        out = original(self, latents, step, total)
        if step + 1 == total:
            final["latents"], final["init"] = out.clone(), self.init_latents.clone()
        return out

    monkeypatch.setattr(diffusion.StrengthMask, "apply", record)
    masked = generate(backend, TINY_XL, count=1, images={"init_image": init, "mask": mask}, strength=1.0, steps=6)
    assert masked.shape == (64, 64, 3)
    latents, initial = final["latents"][0], final["init"][0]
    assert torch.equal(latents[:, :, :4], initial[:, :, :4])  # strength 0: the initial image's latents exactly
    assert (latents[:, :, 4:] - initial[:, :, 4:]).abs().mean() > 0.1


def test_sdxl_lora(backend, tmp_path):
    backend.load(TINY_XL)
    lora = write_lora(entry_for(backend, TINY_XL).text2image.unet, tmp_path / "xl.safetensors", seed=4)
    base = generate(backend, TINY_XL, count=1)
    with_lora = generate(backend, dict(TINY_XL, loras=[{"path": lora, "weight": 1.0}]), count=1)
    assert np.abs(with_lora - base).max() > 0.02
    np.testing.assert_allclose(generate(backend, dict(TINY_XL, loras=[{"path": lora, "weight": 0.0}]), count=1),
                               base, atol=1e-6)


def test_a_controlnet_of_the_other_family_is_named_as_the_mismatch(backend):
    with pytest.raises(JobError, match=r"The ControlNet 'tiny:depth' is made for SD 1\.5 models, but the model "
                                       r"'tiny-xl' is SDXL.*'diffusers/controlnet-depth-sdxl-1.0'") as caught:
        backend.load({"source": "tiny-xl", "controlnets": ["tiny:depth"]})
    assert caught.value.code == "controlnet_mismatch"
    with pytest.raises(JobError, match=r"The ControlNet 'tiny-xl:depth' is made for SDXL models, but the model "
                                       r"'tiny' is SD 1\.5") as caught:
        backend.load({"source": "tiny", "controlnets": ["tiny-xl:depth", "tiny:normal"]})
    assert caught.value.code == "controlnet_mismatch"
    with pytest.raises(JobError, match="'tiny' has no 'canny' ControlNet"):
        backend.load({"source": "tiny", "controlnets": ["tiny:canny"]})


def test_family_from_the_spec(backend):
    with pytest.raises(JobError, match=r"'tiny-xl' is SDXL \(its model_index.json names StableDiffusionXLPipeline\)"):
        backend.load({"source": "tiny-xl", "family": "sd15"})
    with pytest.raises(JobError, match="unknown family 'sd3'"):
        backend.load({"source": "tiny-xl", "family": "sd3"})
    assert backend.load({"source": "tiny-xl", "family": "sdxl"})["family"] == "sdxl"
