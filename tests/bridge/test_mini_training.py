"""``tools/mini/train.py``, the recipe ``make train-mini`` runs, end to end on a toy data set:
each stage trains exactly the steps it is given (so the recipe does the same work on any
machine), records them, and the export is a diffusers folder Silk loads like any other."""
import json
import os
import types

import numpy as np
import pytest
import torch

from tools.mini import train

SIZE = 64  # pictures of the toy data set; the shipped data is 128x128


@pytest.fixture
def toy_data(tmp_path):
    """Two shards in make_data.py's format: smooth colour pictures with their depth and normals."""
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    for shard in range(2):
        count = 3
        rgb = np.stack([np.stack([(x * a + y * b) % 1 for a, b in rng.uniform(0, 2, (3, 2))], -1)
                        for _ in range(count)])
        normal = np.stack([np.stack([x, y, np.full_like(x, 0.8)], -1)] * count)
        np.savez(folder / f"shard_{shard:04d}.npz", rgb=(rgb * 255).astype(np.uint8),
                 depth=(np.stack([y] * count) * 255).astype(np.uint8), normal=(normal * 255).astype(np.uint8),
                 family=rng.integers(-1, 3, count))
    return str(folder)


@pytest.fixture
def torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_recipe_trains_each_stage_for_its_steps_and_exports_a_loadable_model(toy_data, tmp_path, torch_threads):
    work, out = str(tmp_path / "work"), str(tmp_path / "mini")
    # A generous time ceiling beside each step bound: the steps must be what stops each stage.
    common = ["--data", toy_data, "--work", work, "--minutes", "30"]
    train.main(["vae", *common, "--steps", "5", "--crop", "32"])
    train.main(["decoder", *common, "--steps", "3", "--crop", "32"])
    train.main(["diffusion", *common, "--steps", "2", "--batch", "2", "--crop", str(SIZE)])
    train.main(["diffusion", *common, "--steps", "3", "--batch", "2", "--crop", str(SIZE), "--init-from", work,
                "--timestep-power", "1"])
    train.main(["export", "--work", work, "--out", out, "--controlnet-scale", "1.5"])

    log = json.load(open(os.path.join(out, "training.json")))
    assert log["vae"]["steps"] == 5 and log["vae"]["pictures"] == 6
    assert log["decoder"]["steps"] == 3
    assert log["diffusion (zero-snr, timestep power 2)"]["steps"] == 2
    assert log["diffusion (zero-snr, timestep power 1)"]["steps"] == 3
    assert log["diffusion (zero-snr, timestep power 1)"]["init_from"] == work

    from diffusers import ControlNetModel, StableDiffusionPipeline
    from safetensors import safe_open

    for folder in ("unet", "vae", *train.UNIT_FOLDERS.values()):  # stored in fp16, as shipped
        with safe_open(os.path.join(out, folder, "diffusion_pytorch_model.safetensors"), "pt") as weights:
            assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"F16"}, folder
    pipeline = StableDiffusionPipeline.from_pretrained(out)
    assert pipeline.scheduler.config.timestep_spacing == "trailing"
    assert pipeline.scheduler.config.rescale_betas_zero_snr
    for folder in train.UNIT_FOLDERS.values():
        ControlNetModel.from_pretrained(os.path.join(out, folder))
    # The exported VAE's posterior is sharp: a sampled latent is its mean.
    assert float(pipeline.vae.quant_conv.bias[4:].max()) == -30.0


def test_a_stage_stops_at_its_steps_or_its_minutes_whichever_comes_first():
    by_steps = train.Budget(types.SimpleNamespace(steps=4, minutes=60.0))
    assert by_steps.left(3) and not by_steps.left(4)
    assert by_steps.fraction(2) == 0.5  # the VAE settles its learning rate by this
    by_time = train.Budget(types.SimpleNamespace(steps=10**9, minutes=0.0))
    assert not by_time.left(0)
    only_time = train.Budget(types.SimpleNamespace(steps=None, minutes=1.0))
    assert only_time.left(10**9) and 0.0 <= only_time.fraction(0) < 0.1


def test_without_a_bound_a_stage_trains_eight_minutes(monkeypatch):
    seen = {}
    monkeypatch.setattr(train, "train_vae", lambda args: seen.update(vars(args)))
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)
    train.main(["vae"])
    assert seen["minutes"] == 8.0 and seen["steps"] is None
