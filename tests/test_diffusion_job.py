"""From guides and settings to the worker's request (no bpy, no worker)."""
import numpy as np
import pytest

from silk.engine import conditioning, diffusion_job
from silk.engine.diffusion_job import JobSettings, JobSettingsError, UnitSettings
from silk.engine.guides import compute_guides
from tests import synthetic


@pytest.fixture(scope="module")
def guides():
    sphere = synthetic.placed("sphere", synthetic.uv_sphere(), synthetic.translation(z=-5.0))
    return compute_guides(synthetic.frame(synthetic.camera(64, 48), sphere))


def test_family_follows_the_setting_or_the_models_name():
    assert diffusion_job.model_family("stable-diffusion-v1-5/stable-diffusion-v1-5") == "sd15"
    assert diffusion_job.model_family("stabilityai/stable-diffusion-xl-base-1.0") == "sdxl"
    assert diffusion_job.model_family("/models/juggernautXL_v9.safetensors") == "sdxl"
    assert diffusion_job.model_family("/models/xlarge-painter") == "sd15"  # 'xl' must stand alone
    assert diffusion_job.model_family("anything", "SDXL") == "sdxl"
    assert diffusion_job.model_family("some-sdxl-thing", "SD15") == "sd15"


def test_default_units_use_the_depth_and_normal_controlnets_of_the_issue():
    request = diffusion_job.model_request(JobSettings(units=[UnitSettings("DEPTH"), UnitSettings("NORMAL")]))
    assert request["source"] == diffusion_job.DEFAULT_MODEL
    assert request["controlnets"] == ["lllyasviel/control_v11f1p_sd15_depth", "lllyasviel/control_v11p_sd15_normalbae"]
    assert "family" not in request and "loras" not in request


def test_tiny_uses_its_own_controlnets_and_a_units_own_controlnet_wins():
    units = [UnitSettings("DEPTH"), UnitSettings("NORMAL"), UnitSettings("CANNY"),
             UnitSettings("DEPTH", controlnet=" /my/controlnet ")]
    request = diffusion_job.model_request(JobSettings(model="tiny", units=units))
    assert request["controlnets"] == ["tiny:depth", "tiny:normal", "tiny:depth", "/my/controlnet"]
    request = diffusion_job.model_request(JobSettings(model="tiny-xl", units=units[:2]))
    assert request["controlnets"] == ["tiny-xl:depth", "tiny-xl:depth"]


def test_sdxl_has_no_default_normal_controlnet_and_says_so():
    with pytest.raises(JobSettingsError, match="no default SDXL ControlNet for the Normal unit"):
        diffusion_job.model_request(JobSettings(model="stabilityai/stable-diffusion-xl-base-1.0",
                                                units=[UnitSettings("NORMAL")]))
    request = diffusion_job.model_request(JobSettings(model="x", family="SDXL", units=[UnitSettings("DEPTH")]))
    assert request["controlnets"] == ["diffusers/controlnet-depth-sdxl-1.0"] and request["family"] == "sdxl"


def test_settings_that_cannot_work_are_clear_errors(tmp_path):
    with pytest.raises(JobSettingsError, match="No model"):
        diffusion_job.model_request(JobSettings(model="  ", units=[UnitSettings()]))
    with pytest.raises(JobSettingsError, match="No ControlNet unit"):
        diffusion_job.model_request(JobSettings(model="tiny", units=[]))
    with pytest.raises(JobSettingsError, match="LoRA file .*missing.safetensors"):
        diffusion_job.model_request(JobSettings(model="tiny", units=[UnitSettings()],
                                                loras=[(str(tmp_path / "missing.safetensors"), 1.0)]))
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"x")
    request = diffusion_job.model_request(JobSettings(model="tiny", units=[UnitSettings()], loras=[(str(lora), 0.5)]))
    assert request["loras"] == [{"path": str(lora), "weight": 0.5}]


def test_units_see_the_guide_pictures_and_annotators_get_their_options(guides):
    depth_range = conditioning.DepthRange.from_percentiles(guides.depth, guides.coverage)
    settings = JobSettings(model="tiny", units=[
        UnitSettings("DEPTH", weight=0.8, start=0.1, end=0.9),
        UnitSettings("NORMAL"),
        UnitSettings("CANNY", source="NORMAL", low_threshold=50, high_threshold=120),
        UnitSettings("SOFTEDGE", source="DEPTH"),
    ])
    units = diffusion_job.control_units(settings, guides, depth_range)
    depth_picture = conditioning.depth_condition(guides.depth, depth_range)
    normal_picture = conditioning.normal_condition(guides.normal, guides.camera.view)
    np.testing.assert_array_equal(units[0]["image"], depth_picture)
    assert (units[0]["weight"], units[0]["start"], units[0]["end"]) == (0.8, 0.1, 0.9)
    assert "annotator" not in units[0] and "annotator" not in units[1]
    np.testing.assert_array_equal(units[1]["image"], normal_picture)
    np.testing.assert_array_equal(units[2]["image"], normal_picture)
    assert units[2]["annotator"] == "canny"
    assert units[2]["annotator_options"] == {"low_threshold": 50, "high_threshold": 120}
    assert units[3]["annotator"] == "hed"
    np.testing.assert_array_equal(units[3]["image"], depth_picture)


def test_image_units_need_an_image_and_cover_the_frame(guides):
    depth_range = conditioning.DepthRange(1.0, 10.0)
    with pytest.raises(JobSettingsError, match="needs an image"):
        diffusion_job.control_units(JobSettings(units=[UnitSettings("IMAGE")]), guides, depth_range)
    with pytest.raises(JobSettingsError, match="Start .* must be below its End"):
        diffusion_job.control_units(JobSettings(units=[UnitSettings("DEPTH", start=0.6, end=0.4)]), guides,
                                    depth_range)
    # A 2:1 picture whose left half is red and right half blue, onto the 64x48 frame: covering
    # means the height fits and the sides are cropped, centred.
    picture = np.zeros((30, 60, 4), dtype=np.float32)
    picture[:, :30, 0] = 1.0
    picture[:, 30:, 2] = 1.0
    units = diffusion_job.control_units(JobSettings(units=[UnitSettings("IMAGE", image=picture)]), guides,
                                        depth_range)
    image = units[0]["image"]
    assert image.shape == (48, 64, 3)
    assert np.all(image[:, :32, 0] == 1.0) and np.all(image[:, 32:, 2] == 1.0)


def test_step_previews_fill_the_frame_block_by_block():
    preview = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    large = diffusion_job.upscale_preview(preview, 12, 20)
    assert large.shape == (12, 20, 3) and large.dtype == np.float32
    assert np.allclose(large[0:8, 0:8], preview[0, 0] / 255.0)
    assert np.allclose(large[8:12, 16:20], preview[1, 2] / 255.0)
    padded = diffusion_job.upscale_preview(preview, 20, 30)  # a preview too small: edges repeat
    assert padded.shape == (20, 30, 3)
    np.testing.assert_allclose(padded[19, 29], preview[1, 2] / 255.0)
