"""Temporal feedback in the worker's generate: occlusion-aware latent fusion, caller-given noise
and prompt travel (prompt_mix). In-process with the real backend and through the live worker,
with the random-weight `tiny` and `tiny-xl` models."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded; before diffusers reads it

import threading  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402 - the worker's libraries are in the test venv (make venv)
from diffusers import EulerDiscreteScheduler  # noqa: E402

from silk.bridge.schema import ModelRequest, PromptWeight  # noqa: E402
from silk.bridge import diffusion, protocol, schema  # noqa: E402
from silk.bridge.client import JobFailed  # noqa: E402
from silk.bridge.diffusion import DiffusionBackend, JobError  # noqa: E402
from tests.bridge.conftest import TINY, control_images  # noqa: E402

TINY_XL = {"source": "tiny-xl"}
SQUARE = (slice(16, 48), slice(16, 48))  # frame pixels; latent pixels 2-5 in both directions


@pytest.fixture(scope="module")
def backend(model_cache):
    return DiffusionBackend(cache_dir=model_cache)


def units(count=2, height=64, width=64, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.random((height, width, 3), dtype=np.float32)} for _ in range(count)]


def generate(backend, images=None, model=TINY, count=2, **extra):
    request = dict({"model": model, "prompt": "x", "steps": 6, "seed": 3, "width": 64, "height": 64,
                    "guidance": 7.0, "scheduler": "euler"}, **extra)
    control = units(count, request["height"], request["width"])
    return backend.generate(request, images or {}, control, progress=lambda *a: None,
                            cancel=threading.Event()).image


def weights(*entries):
    return [PromptWeight(prompt, weight, negative) for prompt, negative, weight in entries]


def square_mask(size=64):
    """Strength 1 in a square (new surface: repaint), 0.3 elsewhere (seen in the previous frame)."""
    mask = np.full((size, size), 0.3, dtype=np.float32)
    mask[SQUARE] = 1.0
    return mask


def latent_square():
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 2:6] = True
    return inside


def seed_noise(seed, height, width):
    """The noise the seed alone starts from: torch.randn with a CPU generator, shaped like the
    latents of the frame padded to a multiple of 64; returned (rows, columns, 4) for the frame."""
    padded = (1, 4, -(-height // 64) * 8, -(-width // 64) * 8)
    noise = torch.randn(padded, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    return np.ascontiguousarray(noise[0, :, :-(-height // 8), :-(-width // 8)].permute(1, 2, 0).numpy())


def record_fusion(monkeypatch):
    """Every step's latents before and after fusion, the target and the initial latents."""
    steps = []
    original = diffusion.Fusion.apply

    def record(self, latents, step, total):
        out = original(self, latents, step, total)
        steps.append({"step": step, "total": total, "before": latents.clone(), "after": out.clone(),
                      "target": self.target.after(step, total).clone(),
                      "init": self.target.init_latents.clone(), "noise": self.target.noise.clone()})
        return out

    monkeypatch.setattr(diffusion.Fusion, "apply", record)
    return steps


# -- fusion ----------------------------------------------------------------------------------
def test_fusion_one_holds_visible_latents_on_the_noised_initial_image_every_step(backend, monkeypatch):
    init = generate(backend, seed=1, steps=4)
    steps = record_fusion(monkeypatch)
    generate(backend, {"init_image": init, "mask": square_mask()}, strength=1.0, fusion=1.0)
    assert [s["step"] for s in steps] == list(range(6)) and steps[0]["total"] == 6
    square = latent_square()
    for s in steps:
        after, before, target = s["after"][0], s["before"][0], s["target"][0]
        assert torch.equal(after[:, ~square], target[:, ~square])  # visible: on the noised init exactly
        assert torch.equal(after[:, square], before[:, square])  # the new surface denoises freely
    last = steps[-1]
    assert torch.equal(last["after"][0][:, ~square], last["init"][0][:, ~square])  # converged to the init
    assert (last["after"][0][:, square] - last["init"][0][:, square]).abs().mean() > 0.1  # the square differs
    # Earlier steps' targets carry noise: the init noised to that step's level, not the init itself.
    assert (steps[0]["target"] - steps[0]["init"]).abs().mean() > 0.1


def test_fusion_moves_a_fraction_of_the_way_and_zero_leaves_the_latents_free(backend, monkeypatch):
    init = generate(backend, seed=1, steps=4)
    steps = record_fusion(monkeypatch)
    generate(backend, {"init_image": init, "mask": square_mask()}, strength=1.0, fusion=0.5)
    square = latent_square()
    for s in steps:
        expected = s["before"] + 0.5 * (s["target"] - s["before"])
        torch.testing.assert_close(s["after"][0][:, ~square], expected[0][:, ~square], rtol=0, atol=1e-5)
        assert torch.equal(s["after"][0][:, square], s["before"][0][:, square])
    half = (steps[-1]["after"][0][:, ~square] - steps[-1]["init"][0][:, ~square]).abs().mean()
    steps.clear()
    generate(backend, {"init_image": init, "mask": square_mask()}, strength=1.0)  # fusion 0: no fusion at all
    assert steps == []
    final = {}
    original = diffusion.StrengthMask.apply

    def keep_last(self, latents, step, total):
        out = original(self, latents, step, total)
        final.update(latents=out.clone(), init=self.init_latents.clone())
        return out

    monkeypatch.setattr(diffusion.StrengthMask, "apply", keep_last)
    generate(backend, {"init_image": init, "mask": square_mask()}, strength=1.0)
    free = (final["latents"][0][:, ~square] - final["init"][0][:, ~square]).abs().mean()
    assert free > 0.1 and half < 0.7 * free


def test_faithful_encoding_decodes_large_frames_in_tiles_as_the_final_decoding_does(backend, monkeypatch):
    from silk.bridge.diffusion import generation, pictures

    tiled = []
    faithful_latents = pictures.faithful_latents

    def spy(vae, *args):
        tiled.append(bool(vae.use_tiling))
        return faithful_latents(vae, *args)

    monkeypatch.setattr(pictures, "faithful_latents", spy)
    init = np.full((64, 64, 3), 0.5, dtype=np.float32)
    generate(backend, {"init_image": init}, strength=0.5, faithful_encoding=True)
    monkeypatch.setattr(generation, "VAE_TILING_PIXELS", 32 * 32)  # 64x64 now counts as a large frame
    picture = generate(backend, {"init_image": init}, strength=0.5, faithful_encoding=True)
    assert tiled == [False, True] and picture.shape == (64, 64, 3) and np.isfinite(picture).all()
    assert not backend.loaded(schema.ModelRequest.from_json(TINY)).image2image.vae.use_tiling  # off again after


def test_fusion_end_stops_fusion_after_that_fraction_of_the_steps(backend, monkeypatch):
    init = generate(backend, seed=1, steps=4)
    steps = record_fusion(monkeypatch)
    generate(backend, {"init_image": init}, strength=1.0, fusion=1.0, fusion_end=0.5)  # no mask: all visible
    pulled = [s["step"] for s in steps if torch.equal(s["after"], s["target"])]
    untouched = [s["step"] for s in steps if torch.equal(s["after"], s["before"])]
    assert pulled == [0, 1, 2] and untouched == [3, 4, 5]  # 6 steps: fusion through step 3 of 6
    with pytest.raises(JobError, match="fusion_end"):
        generate(backend, {"init_image": init}, strength=1.0, fusion=0.5, fusion_end=1.5)
    assert "fusion_end" in protocol.FEATURES and "fusion_end" in schema.GenerateRequest.__dataclass_fields__


def test_fusion_without_a_mask_converges_to_the_initial_image_whatever_the_seed_or_prompt(backend):
    """A static scene: every pixel was visible, fusion 1 pulls all latents onto the noised
    initial image every step with the noise that noised it, so the result is the initial
    image's own latents decoded, whatever the seed, prompt or ControlNets do."""
    init = generate(backend, seed=1, steps=4)
    first = generate(backend, {"init_image": init}, strength=0.8, fusion=1.0, seed=5, prompt="a")
    second = generate(backend, {"init_image": init}, strength=0.8, fusion=1.0, seed=6, prompt="b",
                      scheduler="dpmpp_2m")
    np.testing.assert_array_equal(first, second)
    free = generate(backend, {"init_image": init}, strength=0.8, seed=5, prompt="a")
    assert np.abs(free - first).mean() > 0.01


def test_the_visible_latents_are_min_pooled_so_silhouettes_are_repainted():
    mask = np.full((16, 24, 1), 0.4, dtype=np.float32)
    mask[3, 9] = 1.0  # one new frame pixel: its whole latent pixel (row 0, column 1) is repainted
    mask[8:16, 16:24] = 0.99  # below 1: still visible
    visible = diffusion.visible_latents(mask, 8, 16, 24, "cpu", torch)
    assert visible.shape == (1, 1, 2, 3) and visible.dtype == torch.bool
    assert visible[0, 0].tolist() == [[True, False, True], [True, True, True]]
    assert diffusion.visible_latents(None, 8, 16, 24, "cpu", torch) is None


def test_fusion_is_checked(backend):
    init = np.zeros((64, 64, 3), dtype=np.float32)
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(JobError, match="'fusion' must be a number from 0 to 1") as caught:
            generate(backend, {"init_image": init}, fusion=bad)
        assert caught.value.code == "bad_request"
    with pytest.raises(JobError, match="needs an init_image") as caught:
        generate(backend, fusion=0.5)
    assert caught.value.code == "bad_request"
    generate(backend, fusion=0.0, steps=1)  # zero is no fusion: fine without an initial image


# -- noise -----------------------------------------------------------------------------------
def test_noise_equal_to_the_seeds_reproduces_the_seed_only_picture_exactly(backend):
    """80x64 runs padded to 128x64: the given noise covers the frame's 8x10 latents, the padding
    keeps the seed's noise, so noise equal to the seed's gives exactly the seed's picture."""
    alone = generate(backend, seed=3, width=80, height=64)
    given = generate(backend, {"noise": seed_noise(3, 64, 80)}, seed=3, width=80, height=64)
    np.testing.assert_array_equal(given, alone)
    init = generate(backend, seed=1, steps=4)
    alone = generate(backend, {"init_image": init}, seed=3, strength=0.7)
    given = generate(backend, {"init_image": init, "noise": seed_noise(3, 64, 64)}, seed=3, strength=0.7)
    np.testing.assert_array_equal(given, alone)


def test_the_same_noise_gives_the_same_picture_whatever_the_seed(backend):
    rng = np.random.default_rng(4)
    noise = rng.standard_normal((8, 8, 4)).astype(np.float32)
    other_noise = rng.standard_normal((8, 8, 4)).astype(np.float32)
    first = generate(backend, {"noise": noise}, seed=1)
    np.testing.assert_array_equal(generate(backend, {"noise": noise}, seed=2), first)
    assert np.abs(generate(backend, {"noise": other_noise}, seed=1) - first).max() > 0.01
    assert np.abs(generate(backend, seed=1) - first).max() > 0.01
    init = generate(backend, seed=1, steps=4)
    images = {"init_image": init, "mask": square_mask(), "noise": noise}
    first = generate(backend, images, seed=1, strength=1.0, fusion=0.5)
    np.testing.assert_array_equal(generate(backend, images, seed=2, strength=1.0, fusion=0.5), first)
    changed = generate(backend, dict(images, noise=other_noise), seed=1, strength=1.0, fusion=0.5)
    assert np.abs(changed - first).max() > 0.01
    # Ancestral samplers draw each step's noise from the seed (documented): the seed still matters.
    ancestral = generate(backend, {"noise": noise}, seed=1, scheduler="euler_a")
    assert np.abs(generate(backend, {"noise": noise}, seed=2, scheduler="euler_a") - ancestral).max() > 0.01


def test_image_to_image_starts_from_the_initial_image_noised_with_the_given_noise(backend, monkeypatch):
    """The first timestep of the schedule cut by strength, with the given noise; fusion uses that noise."""
    init = generate(backend, seed=1, steps=4)
    noise = np.random.default_rng(2).standard_normal((8, 8, 4)).astype(np.float32)
    entry = backend._pipelines[ModelRequest.from_json(TINY).key()]
    pipe_class = type(entry.image2image)
    calls = []
    original_call = pipe_class.__call__

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("latents").clone())
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(pipe_class, "__call__", spy)
    steps = record_fusion(monkeypatch)
    generate(backend, {"init_image": init, "noise": noise}, strength=0.5, steps=8, fusion=0.3)
    given = torch.from_numpy(noise).permute(2, 0, 1)[None]
    assert torch.equal(steps[0]["noise"], given)
    scheduler = EulerDiscreteScheduler.from_config(entry.text2image.scheduler.config)
    scheduler.set_timesteps(8)
    scheduler.set_begin_index(4)  # strength 0.5 of 8 steps: the last 4
    expected = scheduler.add_noise(steps[0]["init"], given, scheduler.timesteps[4:5])
    torch.testing.assert_close(calls[0], expected, rtol=0, atol=1e-6)
    assert len(steps) == 4


@pytest.mark.parametrize("shape, dtype, message", [
    ((8, 8, 3), np.float32, r"shape \(8, 8, 4\)"),
    ((7, 8, 4), np.float32, r"shape \(8, 8, 4\)"),
    ((4, 8, 8), np.float32, r"shape \(8, 8, 4\)"),
    ((8, 8, 4), np.float64, "float32"),
    ((8, 8, 4), np.uint8, "float32"),
])
def test_bad_noise_is_a_clear_error(backend, shape, dtype, message):
    with pytest.raises(JobError, match=message) as caught:
        generate(backend, {"noise": np.zeros(shape, dtype=dtype)})
    assert caught.value.code == "bad_request"


def test_noise_must_be_finite(backend):
    noise = np.zeros((8, 8, 4), dtype=np.float32)
    noise[1, 2, 3] = np.nan
    with pytest.raises(JobError, match="finite"):
        generate(backend, {"noise": noise})


# -- prompt mix ------------------------------------------------------------------------------
def mix(*entries):
    return [{"prompt": p, "negative_prompt": n, "weight": w} for p, n, w in entries]


def test_prompt_mix_of_one_prompt_is_that_prompt_and_half_and_half_is_neither(backend):
    alone = generate(backend, prompt="a lighthouse", negative_prompt="fog")
    only_a = generate(backend, prompt="ignored", prompt_mix=mix(("a lighthouse", "fog", 1.0), ("a forest", "", 0)))
    np.testing.assert_array_equal(only_a, alone)
    other = generate(backend, prompt="a forest")
    half = generate(backend, prompt="ignored", prompt_mix=mix(("a lighthouse", "fog", 0.5), ("a forest", "", 0.5)))
    assert np.abs(half - alone).max() > 0.01 and np.abs(half - other).max() > 0.01
    np.testing.assert_array_equal(generate(backend, prompt="a lighthouse", negative_prompt="fog", prompt_mix=[]),
                                  alone)  # an empty mix is no mix


@pytest.mark.parametrize("guidance", [7.0, 1.0])
def test_mixed_embeddings_are_the_weight_normalised_sum(backend, guidance):
    backend.load(TINY)
    entry = backend._pipelines[ModelRequest.from_json(TINY).key()]
    a = backend._embeddings.embed(entry, "a lighthouse", "fog", guidance)
    b = backend._embeddings.embed(entry, "a forest", "", guidance)
    halves = backend._embeddings.mixed(entry, weights(("a lighthouse", "fog", 0.5), ("a forest", "", 0.5)), guidance)
    quarter = backend._embeddings.mixed(entry, weights(("a lighthouse", "fog", 1.0), ("a forest", "", 3.0)), guidance)
    assert set(halves) == set(a) == {"prompt_embeds", "negative_prompt_embeds"}
    for name in a:
        if a[name] is None:  # no classifier-free guidance: no negative embeddings
            assert guidance <= 1.0 and name == "negative_prompt_embeds" and halves[name] is None
            continue
        assert not torch.equal(a[name], b[name])
        torch.testing.assert_close(halves[name], (a[name] + b[name]) / 2, rtol=0, atol=1e-6)
        torch.testing.assert_close(quarter[name], 0.25 * a[name] + 0.75 * b[name], rtol=0, atol=1e-6)
    assert backend._embeddings.mixed(entry, weights(("a lighthouse", "fog", 2.0), ("a forest", "", 0.0)), guidance) is a
    generate(backend, prompt_mix=mix(("a lighthouse", "fog", 0.5), ("a forest", "", 0.5)), guidance=guidance,
             steps=2)


def test_prompt_mix_entries_come_from_the_embedding_cache(backend, monkeypatch):
    entry = backend._pipelines[ModelRequest.from_json(TINY).key()]
    calls = []
    original = entry.text2image.encode_prompt

    def counting(*args, **kwargs):
        if args[0] is not None:
            calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(entry.text2image, "encode_prompt", counting)
    for weight in (0.2, 0.5, 0.8):
        generate(backend, prompt_mix=mix(("cache one", "", 1 - weight), ("cache two", "", weight),
                                         ("cache three", "", 0.0)), steps=1)
    assert calls == ["cache one", "cache two"]  # once each; a weight of 0 is never encoded


@pytest.mark.parametrize("bad, message", [
    ("a lighthouse", "must be a list"),
    ([{"prompt": "a", "weight": -1}], "at least 0"),
    ([{"prompt": "a", "weight": 0}, {"prompt": "b", "weight": 0.0}], "add up to more than 0"),
    ([{"weight": 1}], "needs a 'prompt'"),
    ([{"prompt": "a", "negative_prompt": 3, "weight": 1}], "needs a 'prompt'"),
    ([{"prompt": "a", "weight": True}], "needs a 'weight'"),
    ([{"prompt": "a", "weight": float("inf")}], "needs a 'weight'"),
    ([{"prompt": "a"}], "needs a 'weight'"),
    (["a"], "needs a 'prompt'"),
])
def test_bad_prompt_mix_is_a_clear_error(backend, bad, message):
    with pytest.raises(JobError, match=message) as caught:
        generate(backend, prompt_mix=bad, steps=1)
    assert caught.value.code == "bad_request"


# -- SDXL ------------------------------------------------------------------------------------
def test_sdxl_fusion_noise_and_prompt_mix(backend, monkeypatch):
    init = generate(backend, model=TINY_XL, count=1, seed=1, steps=4)
    steps = record_fusion(monkeypatch)
    noise = np.random.default_rng(3).standard_normal((8, 8, 4)).astype(np.float32)
    images = {"init_image": init, "mask": square_mask(), "noise": noise}
    first = generate(backend, images, model=TINY_XL, count=1, strength=1.0, fusion=1.0, seed=1)
    square = latent_square()
    last = steps[-1]
    assert torch.equal(last["after"][0][:, ~square], last["init"][0][:, ~square])
    assert (last["after"][0][:, square] - last["init"][0][:, square]).abs().mean() > 0.1
    again = generate(backend, images, model=TINY_XL, count=1, strength=1.0, fusion=1.0, seed=2)
    np.testing.assert_array_equal(again, first)  # the given noise, not the seed
    alone = generate(backend, model=TINY_XL, count=1, seed=4, width=80)
    np.testing.assert_array_equal(generate(backend, {"noise": seed_noise(4, 64, 80)}, model=TINY_XL, count=1,
                                           seed=4, width=80), alone)

    entry = backend._pipelines[ModelRequest.from_json(TINY_XL).key()]
    a = backend._embeddings.embed(entry, "a lighthouse", "", 7.0)
    b = backend._embeddings.embed(entry, "a forest", "fog", 7.0)
    halves = backend._embeddings.mixed(entry, weights(("a lighthouse", "", 1.0), ("a forest", "fog", 1.0)), 7.0)
    assert set(halves) == {"prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                           "negative_pooled_prompt_embeds"}
    for name in halves:
        torch.testing.assert_close(halves[name], (a[name] + b[name]) / 2, rtol=0, atol=1e-6)
    only_a = generate(backend, model=TINY_XL, count=1, prompt="x", prompt_mix=mix(("a lighthouse", "", 1.0),
                                                                                   ("a forest", "fog", 0.0)))
    np.testing.assert_array_equal(only_a, generate(backend, model=TINY_XL, count=1, prompt="a lighthouse"))


# -- the wire and the live worker --------------------------------------------------------------
def test_requests_check_the_new_fields():
    base = {"type": "generate", "id": 5, "model": {"source": "tiny"}, "prompt": "x", "width": 8, "height": 8,
            "controlnets": [{"image": {"file": "c", "shape": [8, 8, 3], "dtype": "float32"}}],
            "init_image": {"file": "i", "shape": [8, 8, 3], "dtype": "float32"}}
    good = dict(base, fusion=0.5, fusion_end=0.6, noise={"file": "n", "shape": [8, 8, 4], "dtype": "float32"},
                prompt_mix=[{"prompt": "a", "weight": 1}, {"prompt": "b", "negative_prompt": "c", "weight": 0.5}])
    parsed = schema.parse(good)
    assert parsed.fusion == 0.5 and parsed.fusion_end == 0.6 and parsed.noise == good["noise"]
    assert [(p.prompt, p.negative_prompt, p.weight) for p in parsed.prompt_mix] == [("a", "", 1.0), ("b", "c", 0.5)]
    assert schema.parse(dict(base, fusion=1, noise=None, prompt_mix=[])).fusion == 1.0
    for bad in ({"fusion": "0.5"}, {"fusion": True}, {"fusion_end": 2}, {"noise": 5}, {"noise": [1, 2]},
                {"prompt_mix": "a"}, {"prompt_mix": ["a"]}, {"prompt_mix": [{"weight": 1}]},
                {"prompt_mix": [{"prompt": "a"}]}, {"prompt_mix": [{"prompt": "a", "weight": "1"}]},
                {"prompt_mix": [{"prompt": "a", "weight": True}]}, {"prompt_mix": [{"prompt": 1, "weight": 1}]},
                {"prompt_mix": [{"prompt": "a", "weight": 1, "negative_prompt": None}]}):
        with pytest.raises(JobError) as caught:
            schema.parse(dict(base, **bad))
        assert caught.value.code == "bad_request"
    assert {"fusion", "noise", "prompt_mix", "fusion_end"} <= set(protocol.FEATURES)  # (and later ones: ip_adapter)


def test_faithful_encoding_is_a_flag_sent_and_listed_only_with_an_initial_image():
    base = {"type": "generate", "id": 5, "model": {"source": "tiny"}, "prompt": "x", "width": 8, "height": 8,
            "controlnets": [{"image": {"file": "c", "shape": [8, 8, 3], "dtype": "float32"}}]}
    init = {"init_image": {"file": "i", "shape": [8, 8, 3], "dtype": "float32"}}
    assert schema.parse(dict(base, **init, faithful_encoding=True)).faithful_encoding is True
    assert schema.parse(dict(base, **init)).faithful_encoding is False
    for bad in ("yes", 1, None):
        with pytest.raises(JobError, match="faithful_encoding") as caught:
            schema.parse(dict(base, **init, faithful_encoding=bad))
        assert caught.value.code == "bad_request"
    text_to_image = schema.parse(dict(base, faithful_encoding=True))
    assert "faithful_encoding" not in text_to_image.features() and "faithful_encoding" not in text_to_image.to_json()
    with_init = schema.parse(dict(base, **init, faithful_encoding=True))
    assert "faithful_encoding" in with_init.features() and with_init.to_json()["faithful_encoding"] is True
    assert "faithful_encoding" in protocol.FEATURES


def test_client_sends_the_new_fields_only_when_used(make_client, monkeypatch):
    client = make_client()
    client.ensure_started()
    assert {"fusion", "noise", "prompt_mix", "fusion_end"} <= set(client.worker_features)
    sent = []

    def fake_call(request, attachments, **kwargs):
        sent.append(request)
        return {"type": "result", "image": {"attachment": 0, "shape": [8, 8, 3], "dtype": "float32"}}, \
            [np.zeros((8, 8, 3), np.float32).tobytes()]

    monkeypatch.setattr(client, "_call", fake_call)
    client.generate(TINY, "x", control_images(8, 8), 8, 8)
    client.generate(TINY, "x", control_images(8, 8), 8, 8, fusion=0.0, noise=None, prompt_mix=[])
    assert not {"fusion", "noise", "prompt_mix"} & (set(sent[0]) | set(sent[1]))
    client.generate(TINY, "x", control_images(8, 8), 8, 8, init_image=np.zeros((8, 8, 3)), fusion=0.4,
                    noise=np.zeros((1, 1, 4), np.float64), prompt_mix=[{"prompt": "a", "weight": np.float32(2)}])
    request = sent[2]
    assert request["fusion"] == 0.4 and request["noise"]["dtype"] == "float32"
    assert request["noise"]["shape"] == [1, 1, 4]
    assert request["prompt_mix"] == [{"prompt": "a", "weight": 2.0}]
    assert type(request["prompt_mix"][0]["weight"]) is float
    with pytest.raises(JobFailed) as caught:
        client.generate(TINY, "x", control_images(8, 8), 8, 8, noise=np.zeros((1, 1, 4), np.int32))
    assert caught.value.code == "bad_request"
    client.generate(TINY, "x", control_images(8, 8), 8, 8, init_image=np.zeros((8, 8, 3)), fusion=0.4, fusion_end=0.6)
    assert sent[3]["fusion_end"] == 0.6
    client.generate(TINY, "x", control_images(8, 8), 8, 8, init_image=np.zeros((8, 8, 3)), fusion=0.4, fusion_end=1.0)
    assert "fusion_end" not in sent[4]  # the default (fusion on every step) is not sent
    client.worker_features = ["fusion", "noise", "prompt_mix"]  # a worker from before fusion_end
    with pytest.raises(JobFailed, match="fusion_end") as caught:
        client.generate(TINY, "x", control_images(8, 8), 8, 8, init_image=np.zeros((8, 8, 3)), fusion=0.4,
                        fusion_end=0.6)
    assert caught.value.code == "unsupported"
    del sent[3:]
    client.worker_features = None  # a worker from before these fields would ignore them: refuse instead
    for extra in ({"fusion": 0.5, "init_image": np.zeros((8, 8, 3))}, {"noise": np.zeros((1, 1, 4), np.float32)}, {"prompt_mix": [{"prompt": "a",
                                                                                                   "weight": 1}]}):
        with pytest.raises(JobFailed, match="older than") as caught:
            client.generate(TINY, "x", control_images(8, 8), 8, 8, **extra)
        assert caught.value.code == "unsupported"
    client.generate(TINY, "x", control_images(8, 8), 8, 8)  # without them, an older worker is fine
    assert len(sent) == 4


def test_fusion_noise_and_prompt_mix_through_the_worker(make_client):
    client = make_client()

    def run(size=64, **extra):
        extra.setdefault("steps", 8)
        return client.generate(TINY, extra.pop("prompt", "x"), control_images(size, size), size, size, **extra)[0]

    # Fusion, in pixels, at 128x128 with a 32x32 square. tiny is random: its VAE does not give the
    # initial image back (decode(encode(init)) is 0.17 away from it on average), its UNet drives
    # freely denoised latents far out with Euler (|latent| up to ~25 against the initial image's
    # ~0.05), and its decoder normalises the whole picture with GroupNorm, so the square's
    # statistics reach every pixel. DDIM (tiny's config clips its samples to [-1, 1]) keeps them
    # comparable, and the frame is large beside the square. So: closer to the initial image, and
    # much closer to the initial image as this VAE reproduces it (fusion 1 without a mask). The
    # exact latent behaviour is checked in-process above, for every scheduler.
    init = run(128, seed=1, steps=4)
    mask = square_mask(128)
    outside = np.ones((128, 128), dtype=bool)
    outside[SQUARE] = False

    def distance(picture, where, reference=init):
        return float(np.abs(picture - reference).mean(axis=2)[where].mean())

    settings = dict(seed=3, init_image=init, strength=1.0, scheduler="ddim")
    free = run(128, mask=mask, **settings)
    fused = run(128, mask=mask, fusion=1.0, **settings)
    reproduced = run(128, fusion=1.0, **settings)  # every pixel visible: the initial image's own latents
    assert distance(fused, outside) < 0.96 * distance(free, outside)
    assert distance(fused, outside, reproduced) < 0.8 * distance(free, outside, reproduced)
    assert distance(fused, ~outside) > 1.3 * distance(fused, outside)  # the square is repainted
    with pytest.raises(JobFailed, match="needs an init_image") as caught:
        run(fusion=0.5)
    assert caught.value.code == "bad_request"
    with pytest.raises(JobFailed, match="from 0 to 1") as caught:
        run(init_image=init[:64, :64], fusion=2.0)
    assert caught.value.code == "bad_request"

    # Noise: the same noise, any seed, the same picture; other noise, another picture.
    noise = np.random.default_rng(8).standard_normal((8, 8, 4)).astype(np.float32)
    first = run(seed=1, noise=noise)
    np.testing.assert_array_equal(run(seed=2, noise=noise), first)
    assert np.abs(run(seed=1, noise=-noise) - first).max() > 0.01
    np.testing.assert_array_equal(run(seed=5, noise=seed_noise(5, 64, 64)), run(seed=5))
    with pytest.raises(JobFailed, match=r"shape \(8, 8, 4\)") as caught:
        run(noise=np.zeros((8, 8, 3), np.float32))
    assert caught.value.code == "bad_request"

    # Prompt travel: weight 1 on one prompt is that prompt.
    only_a = run(prompt="ignored", prompt_mix=mix(("a lighthouse", "fog", 1.0), ("a forest", "", 0.0)))
    np.testing.assert_array_equal(only_a, run(prompt="a lighthouse", negative_prompt="fog"))
    assert client.ping()["type"] == "pong"  # the worker kept serving through the refusals


def test_a_grey_initial_image_is_its_grey_on_every_channel(backend):
    grey = np.random.default_rng(6).random((64, 64, 1), dtype=np.float32)
    settings = dict(strength=0.5, fusion=0.5, steps=4)
    np.testing.assert_array_equal(generate(backend, {"init_image": grey}, **settings),
                                  generate(backend, {"init_image": np.repeat(grey, 3, axis=2)}, **settings))
