"""``mini`` end to end: loaded by name like ``tiny``, it paints pictures that follow the guides.

The guides are the engine's own (a sphere and a tilted card before a wall, through
``compute_guides`` and the conditioning pictures), painted by the diffusion backend.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import threading  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from silk.bridge import tiny_model  # noqa: E402
from silk.bridge.diffusion import DiffusionBackend  # noqa: E402
from silk.engine import conditioning  # noqa: E402
from silk.engine.guides import compute_guides  # noqa: E402
from tests import synthetic  # noqa: E402
from tools.mini import MINI_SETTINGS, metrics  # noqa: E402

WIDTH, HEIGHT = 160, 128


def rotation_x(degrees):
    angle = np.radians(degrees)
    matrix = np.eye(4)
    matrix[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return matrix


@pytest.fixture(scope="module")
def guides():
    """Depth and normal pictures of a sphere and a tilted card in front of a wall."""
    camera = synthetic.camera(WIDTH, HEIGHT, fov=50.0)
    frame = synthetic.frame(
        camera,
        synthetic.placed("wall", synthetic.quad(size=40.0), synthetic.translation(0, 0, -9)),
        synthetic.placed("ball", synthetic.uv_sphere(radius=1.1), synthetic.translation(0.9, -0.2, -4.5)),
        synthetic.placed("card", synthetic.quad(size=1.8), synthetic.translation(-1.6, 0.3, -5) @ rotation_x(-35)),
    )
    found = compute_guides(frame)
    depth_range = conditioning.depth_range_of_frame(found.depth, found.coverage, 0.1, 100.0)
    return (conditioning.depth_condition(found.depth, depth_range),
            conditioning.normal_condition(found.normal, camera.view))


@pytest.fixture(scope="module")
def backend(model_cache):
    return DiffusionBackend(cache_dir=model_cache)


def paint(backend, guides, seed, **extra):
    depth, normal = guides
    request = dict(MINI_SETTINGS, model={"source": "mini"}, prompt="marble", seed=seed, width=WIDTH, height=HEIGHT,
                   strength=1.0, **extra)
    return backend.generate(request, {}, [{"image": depth}, {"image": normal}], progress=lambda *a: None,
                            cancel=threading.Event())


def test_mini_is_a_diffusers_folder_in_the_repository_loaded_by_name(backend):
    folder = tiny_model.ensure_mini()
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "controlnet-depth", "controlnet-normal"):
        assert os.path.isdir(os.path.join(folder, part)), part
    info = backend.load({"source": "mini"})
    assert (info["source"], info["controlnets"], info["family"]) == ("mini", 2, "sd15")


def test_mini_paints_the_guides_edges(backend, guides):
    result = paint(backend, guides, seed=1)
    assert result.image.shape == (HEIGHT, WIDTH, 3)
    alignment = metrics.edge_alignment(*guides, result.image)
    # The painting has edges where the geometry does, well above the chance level.
    assert alignment["recall"] > 0.5, alignment
    assert alignment["recall"] > alignment["chance"] + 0.15, alignment


def test_mini_seeds_choose_different_textures(backend, guides):
    first, second = paint(backend, guides, seed=1).image, paint(backend, guides, seed=2).image
    assert np.abs(first - second).mean() > 0.03
    assert first.std() > 0.05 and second.std() > 0.05  # pictures, not flat colour
