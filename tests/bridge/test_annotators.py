"""ControlNet annotators: Canny exactly (OpenCV, no weights), the weighted detectors' loading and
errors (controlnet-aux stood in for where its weights cannot be had here), and both through the
real worker with the `tiny` model."""
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from silk.bridge import annotators, protocol, schema
from silk.bridge.annotators import Annotators, canny
from silk.bridge.client import JobFailed
from silk.bridge.errors import JobError
from tests.bridge.conftest import TINY, worker_python


def square_picture(height=40, width=48, top=10, bottom=30, left=12, right=36, value=1.0, channels=3):
    """Black, with a square of ``value`` over rows top..bottom-1 and columns left..right-1."""
    image = np.zeros((height, width, channels), np.float32)
    image[top:bottom, left:right] = value
    return image


def edges_of(output):
    """The edge mask of an annotator output, after checking it is a proper 0/1 RGB map."""
    assert output.dtype == np.float32 and output.ndim == 3 and output.shape[2] == 3
    assert set(np.unique(output)) <= {0.0, 1.0}
    assert np.array_equal(output[..., 0], output[..., 1]) and np.array_equal(output[..., 0], output[..., 2])
    return output[..., 0] == 1.0


# -- Canny ------------------------------------------------------------------
def test_canny_puts_edges_on_the_square_border_and_nowhere_else():
    top, bottom, left, right = 10, 30, 12, 36
    picture = square_picture(top=top, bottom=bottom, left=left, right=right)
    output = Annotators().run("canny", picture)
    assert output.shape == picture.shape
    edges = edges_of(output)
    inside = picture[..., 0] > 0.5
    # The border band: pixels with a 4-neighbour on the other side of the step.
    band = np.zeros_like(inside)
    band[1:] |= inside[1:] != inside[:-1]
    band[:-1] |= inside[1:] != inside[:-1]
    band[:, 1:] |= inside[:, 1:] != inside[:, :-1]
    band[:, :-1] |= inside[:, 1:] != inside[:, :-1]
    assert edges.any() and not (edges & ~band).any(), "edges off the square's border"
    # Every side is traced along its length (corners aside): exactly one of the two pixels
    # straddling the step is an edge, never both (a one-pixel line).
    columns = slice(left + 1, right - 1)
    rows = slice(top + 1, bottom - 1)
    assert np.all(edges[top - 1, columns].astype(int) + edges[top, columns] == 1)
    assert np.all(edges[bottom - 1, columns].astype(int) + edges[bottom, columns] == 1)
    assert np.all(edges[rows, left - 1].astype(int) + edges[rows, left] == 1)
    assert np.all(edges[rows, right - 1].astype(int) + edges[rows, right] == 1)


def test_canny_takes_grey_and_rgba_pictures_like_controlnet_aux():
    rgb = Annotators().run("canny", square_picture())
    grey = Annotators().run("canny", square_picture(channels=1))
    assert np.array_equal(rgb, grey)
    # Alpha composites over white (controlnet-aux's HWC3): fully transparent is all white, no edges.
    transparent = np.concatenate([square_picture(), np.zeros((40, 48, 1), np.float32)], axis=2)
    assert not edges_of(Annotators().run("canny", transparent)).any()
    opaque = np.concatenate([square_picture(), np.ones((40, 48, 1), np.float32)], axis=2)
    assert np.array_equal(Annotators().run("canny", opaque), rgb)


def test_canny_thresholds_change_the_result():
    picture = square_picture(48, 96, top=12, bottom=36, left=8, right=40)  # a bright square...
    picture[12:36, 56:88] = 0.1  # ...and a faint one (26 of 255: a gradient of 104, below 200)
    bright, faint = np.zeros((48, 96), bool), np.zeros((48, 96), bool)
    bright[:, :48], faint[:, 48:] = True, True
    run = Annotators().run
    default = edges_of(run("canny", picture))
    assert default[bright].any() and not default[faint].any()
    sensitive = edges_of(run("canny", picture, {"low_threshold": 10, "high_threshold": 20}))
    assert sensitive[bright].any() and sensitive[faint].any()
    assert np.array_equal(sensitive[bright], default[bright])
    assert not edges_of(run("canny", picture, {"low_threshold": 2000, "high_threshold": 3000})).any()


def test_canny_is_what_controlnet_aux_computes():
    """controlnet-aux's CannyDetector is cv2.Canny on the uint8 RGB picture, its edge map
    repeated to three channels (it cannot be imported here to compare with directly: it
    needs a torchvision that does not load with this machine's CPU torch)."""
    import cv2

    rng = np.random.default_rng(3)
    picture = np.kron(rng.random((8, 8, 3)), np.ones((64, 64, 1))).astype(np.float32)
    ours = Annotators().run("canny", picture, {"low_threshold": 60, "high_threshold": 120})
    edges = cv2.Canny(annotators.rgb_uint8(picture), 60, 120)
    assert edges.any()
    assert np.array_equal(ours, np.repeat(edges[..., None], 3, axis=2).astype(np.float32) / 255.0)


def test_none_passes_the_image_through():
    picture = square_picture()
    assert Annotators().run("none", picture) is picture
    assert Annotators().apply({"image": {}}, picture) is picture


@pytest.mark.parametrize("name, options, words", [
    ("sobel", {}, ["Unknown annotator 'sobel'", "none, canny, hed, lineart, openpose, midas"]),
    ("canny", {"sigma": 2}, ["no option 'sigma'", "low_threshold, high_threshold"]),
    ("canny", {"low_threshold": "low"}, ["'low_threshold' must be a number"]),
    ("canny", {"high_threshold": True}, ["'high_threshold' must be a number"]),
    ("canny", {"low_threshold": -1}, ["'low_threshold' must be a number >= 0"]),
    ("hed", {"scribble": 1}, ["'scribble' must be true or false"]),
    ("midas", {"detect_resolution": 8}, ["detect_resolution must be between"]),
    ("none", {"low_threshold": 1}, ["'none' annotator has no option"]),
])
def test_bad_names_and_options_are_bad_requests(name, options, words):
    with pytest.raises(JobError) as caught:
        Annotators().run(name, square_picture(), options)
    assert caught.value.code == "bad_request"
    for word in words:
        assert word in caught.value.message


# -- weighted annotators, with controlnet-aux stood in ------------------------
class FakeDetector:
    """Stands in for a controlnet-aux detector class: records its loads and calls, and answers at
    the detector's own resolution (not the input's), as the real ones do."""

    loads: list = []
    calls: list = []
    fail_with: Exception | None = None

    def __init__(self, weights):
        self.weights = weights

    @classmethod
    def from_pretrained(cls, weights):
        cls.loads.append(weights)
        if cls.fail_with is not None:
            raise cls.fail_with
        return cls(weights)

    def __call__(self, image, detect_resolution, image_resolution, output_type, **options):
        self.calls.append(dict(options, shape=image.shape, dtype=image.dtype, detect_resolution=detect_resolution,
                               image_resolution=image_resolution, output_type=output_type))
        # An inverted, 64x64 map of the input: wrong size on purpose, to be scaled back.
        import cv2

        return cv2.resize(255 - image, (64, 64), interpolation=cv2.INTER_NEAREST)


@pytest.fixture
def fake_controlnet_aux(monkeypatch):
    FakeDetector.loads, FakeDetector.calls, FakeDetector.fail_with = [], [], None
    module = types.ModuleType("controlnet_aux")
    for spec in annotators.WEIGHTED.values():
        setattr(module, spec.detector, FakeDetector)
    monkeypatch.setitem(sys.modules, "controlnet_aux", module)
    return FakeDetector


def weights_folder(path, name):
    path.mkdir(exist_ok=True)
    for file in annotators.WEIGHTED[name].files:
        (path / file).write_bytes(b"weights")
    return str(path)


def test_weighted_annotator_output_is_rgb_at_the_input_size_and_loaded_once(fake_controlnet_aux, tmp_path):
    folder = weights_folder(tmp_path / "annotators", "hed")
    runner = Annotators()
    picture = square_picture(50, 70, top=10, bottom=40, left=10, right=60)
    output = runner.run("hed", picture, {"safe": True}, folder)
    assert output.shape == (50, 70, 3) and output.dtype == np.float32
    assert 0.0 <= output.min() and output.max() <= 1.0
    assert output[25, 35, 0] == 0.0 and output[2, 2, 0] == 1.0  # the fake's inversion, scaled back in place
    call = fake_controlnet_aux.calls[0]
    assert call["shape"] == (50, 70, 3) and call["dtype"] == np.uint8 and call["output_type"] == "np"
    assert call["safe"] is True and call["detect_resolution"] == call["image_resolution"] == 512
    runner.run("hed", picture, {"detect_resolution": 256}, folder)
    assert fake_controlnet_aux.calls[1]["detect_resolution"] == 256
    assert fake_controlnet_aux.loads == [folder]  # cached: loaded once
    other = weights_folder(tmp_path / "other", "hed")
    runner.run("hed", picture, None, other)
    assert fake_controlnet_aux.loads == [folder, other]


def test_missing_weight_files_in_a_folder_are_named(fake_controlnet_aux, tmp_path):
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "sk_model.pth").write_bytes(b"w")
    with pytest.raises(JobError) as caught:
        Annotators().run("lineart", square_picture(), None, str(folder))
    assert caught.value.code == "missing_annotator"
    message = caught.value.message
    assert str(folder) in message and "sk_model2.pth" in message and "lllyasviel/Annotators" in message
    assert "annotator_weights" in message
    assert fake_controlnet_aux.loads == []  # never handed to the library


def test_a_weights_folder_that_does_not_exist_is_named(fake_controlnet_aux, tmp_path):
    missing = str(tmp_path / "no" / "such" / "folder")
    with pytest.raises(JobError) as caught:
        Annotators().run("openpose", square_picture(), None, missing)
    assert caught.value.code == "missing_annotator"
    assert f"The folder '{missing}'" in caught.value.message and "does not exist" in caught.value.message
    assert "body_pose_model.pth" in caught.value.message


def test_unreachable_hub_weights_name_the_repo_and_the_way_round(fake_controlnet_aux):
    fake_controlnet_aux.fail_with = OSError("We couldn't connect to 'https://huggingface.co' to load the files\n"
                                            "and they are not in the cached files.")
    runner = Annotators()
    with pytest.raises(JobError) as caught:
        runner.run("midas", square_picture())
    message = caught.value.message
    assert caught.value.code == "missing_annotator"
    assert "'midas'" in message and "hub repo 'lllyasviel/Annotators'" in message
    assert "couldn't connect" in message and "not in the cached files" not in message  # the first line only
    assert "dpt_hybrid-midas-501f0c75.pt" in message and "annotator_weights" in message
    fake_controlnet_aux.fail_with = None
    runner.run("midas", square_picture())  # a failed load is not cached: it works once the weights are there
    assert len(fake_controlnet_aux.loads) == 2


def test_controlnet_aux_that_cannot_import_names_why_and_the_fix(monkeypatch, tmp_path):
    """Whether or not the real controlnet-aux imports here, a broken one comes first on the path."""
    package = tmp_path / "broken" / "controlnet_aux"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist\\nmore of the traceback')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "broken"))
    monkeypatch.delitem(sys.modules, "controlnet_aux", raising=False)
    runner = Annotators()
    for _ in range(2):  # the second time too, from the first failure's reason
        with pytest.raises(JobError) as caught:
            runner.run("hed", square_picture())
        message = caught.value.message
        assert caught.value.code == "missing_annotator"
        assert "'hed'" in message and "operator torchvision::nms does not exist" in message
        assert "more of the traceback" not in message
        assert "controlnet-aux" in message and "torchvision" in message and "Install worker environment" in message


# -- protocol and client --------------------------------------------------------
FRAME = {"file": "f", "shape": [8, 8, 3], "dtype": "float32"}


def generate_request(unit):
    return {"type": "generate", "id": 3, "model": TINY, "prompt": "x", "width": 8, "height": 8, "controlnets": [unit]}


@pytest.mark.parametrize("unit, where", [
    ("canny", "controlnets[0]"),
    ({"image": FRAME, "annotator": 5}, "controlnets[0].annotator"),
    ({"image": FRAME, "annotator": None}, "controlnets[0].annotator"),
    ({"image": FRAME, "annotator": "canny", "annotator_options": [100, 200]}, "controlnets[0].annotator_options"),
    ({"image": FRAME, "annotator": "canny", "annotator_options": {"low_threshold": None}}, "low_threshold"),
    ({"image": FRAME, "annotator": "canny", "annotator_options": {"low_threshold": [1]}}, "low_threshold"),
    ({"image": FRAME, "annotator": "canny", "annotator_options": {"low_threshold": {"a": 1}}}, "low_threshold"),
    ({"image": FRAME, "annotator": "hed", "annotator_weights": 7}, "controlnets[0].annotator_weights"),
])
def test_the_schema_refuses_malformed_annotator_fields(unit, where):
    with pytest.raises(JobError) as caught:
        schema.parse(generate_request(unit))
    assert caught.value.code == "bad_request" and where in caught.value.message


def test_the_schema_accepts_annotator_fields():
    unit = {"image": FRAME, "annotator": "canny", "annotator_weights": "/weights",
            "annotator_options": {"low_threshold": 50, "high_threshold": 150.5, "note": "x", "flag": True}}
    assert schema.parse(generate_request(unit)).to_json()["controlnets"][0] == dict(unit, weight=1.0, start=0.0,
                                                                                   end=1.0)
    assert schema.parse(generate_request({"image": FRAME})).controlnets[0].annotator is None  # all optional


def test_client_refuses_annotators_with_a_worker_that_predates_them(make_client):
    client = make_client()
    client.ensure_started()
    assert client.worker_annotators == list(annotators.ANNOTATORS)  # from the worker's hello
    client.worker_annotators = None  # what an older worker's hello gives
    units = [{"image": square_picture(), "annotator": "canny"}, {"image": square_picture()}]
    with pytest.raises(JobFailed) as caught:
        client.generate(TINY, "x", units, 48, 40, steps=1)
    assert caught.value.code == "unsupported" and "'canny'" in str(caught.value)


# -- through the worker -----------------------------------------------------------
@pytest.fixture(scope="module")
def steering_model(model_cache, tmp_path_factory):
    """tiny with ControlNets whose control picture changes the result. tiny's own are fresh
    ControlNets, whose zero convolutions (the control picture's embedding out, and every output)
    make them no-ops: these copies get small random weights there."""
    import torch
    from diffusers import ControlNetModel

    from silk.bridge.tiny_model import CONTROLNET_FOLDERS, ensure_tiny

    base = ensure_tiny(model_cache)
    folders = []
    for seed, folder in enumerate(CONTROLNET_FOLDERS, start=40):
        controlnet = ControlNetModel.from_pretrained(os.path.join(base, folder))
        torch.manual_seed(seed)
        with torch.no_grad():
            for block in [controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks,
                          controlnet.controlnet_mid_block]:
                block.weight.normal_(0.0, 0.5)
        target = str(tmp_path_factory.mktemp("steering") / folder)
        controlnet.save_pretrained(target, safe_serialization=True)
        folders.append(target)
    return {"source": "tiny", "controlnets": folders}


def two_squares():
    """A bright square, and a faint one (a step of 20 of 255) that the default thresholds do not see."""
    picture = square_picture(64, 80, top=16, bottom=48, left=8, right=36)
    picture[16:48, 44:72] = 20 / 255
    return picture


def control_units(first_unit_extra=None, first_image=None):
    """tiny's two ControlNets: the first gets two squares (and an annotator), the second noise."""
    rng = np.random.default_rng(5)
    first = {"image": two_squares() if first_image is None else first_image}
    first.update(first_unit_extra or {})
    return [first, {"image": rng.random((64, 80, 3), dtype=np.float32), "weight": 0.7}]


def test_canny_unit_in_the_worker_is_exactly_canny_of_its_image(make_client, steering_model):
    client = make_client()
    options = {"low_threshold": 20, "high_threshold": 60}
    model = steering_model
    annotated, info = client.generate(model, "x", control_units({"annotator": "canny", "annotator_options": options}),
                                      80, 64, steps=2, seed=4)
    # The same picture made from Canny edges computed here: the worker gave the ControlNet exactly those.
    edges = canny(annotators.rgb_uint8(two_squares()), **options)
    assert edges_of(edges).any() and not np.array_equal(edges, canny(annotators.rgb_uint8(two_squares())))
    expected, _ = client.generate(model, "x", control_units(first_image=edges), 80, 64, steps=2, seed=4)
    raw, raw_info = client.generate(model, "x", control_units(), 80, 64, steps=2, seed=4)
    assert annotated.shape == (64, 80, 3)
    assert np.array_equal(annotated, expected)
    # Same seed and inputs give bit-identical pictures (test_worker.py), so any difference is the
    # control picture's doing; tiny's random networks pass it on only faintly.
    assert not np.array_equal(annotated, raw) and np.abs(annotated - raw).max() > 1e-5
    assert info["timings"]["annotators"] >= 0.0 and "annotators" not in raw_info["timings"]


def test_unknown_annotator_is_a_bad_request_and_the_worker_keeps_serving(make_client):
    client = make_client()
    with pytest.raises(JobFailed) as caught:
        client.generate(TINY, "x", control_units({"annotator": "sobel"}), 80, 64, steps=1)
    assert caught.value.code == "bad_request"
    assert "Unknown annotator 'sobel'" in str(caught.value) and "canny" in str(caught.value)
    image, _ = client.generate(TINY, "x", control_units({"annotator": "canny"}), 80, 64, steps=1)
    assert image.shape == (64, 80, 3)


def test_hed_in_the_worker_without_its_library_or_weights_is_a_clear_error(make_client):
    worker_has_controlnet_aux = subprocess.run([worker_python(), "-c", "import controlnet_aux"],
                                               capture_output=True).returncode == 0
    client = make_client()
    with pytest.raises(JobFailed) as caught:
        client.generate(TINY, "x", control_units({"annotator": "hed"}), 80, 64, steps=1)
    message = str(caught.value)
    assert caught.value.code == "missing_annotator" and "'hed'" in message
    if worker_has_controlnet_aux:  # then the weights are what is missing: the hub is off in the tests
        assert "hub repo 'lllyasviel/Annotators'" in message and "annotator_weights" in message
    else:
        assert "controlnet-aux" in message and "torchvision" in message and "Install worker environment" in message
    assert "Traceback" not in message
    assert client.ping()["type"] == "pong"
    image, _ = client.generate(TINY, "x", control_units(), 80, 64, steps=1)
    assert image.shape == (64, 80, 3)
