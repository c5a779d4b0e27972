"""From guides and settings to the worker's request (no bpy, no worker)."""
import numpy as np
import pytest

from silk.bridge import families, schema
from silk.engine import conditioning, diffusion_job
from silk.engine.diffusion_job import JobSettings, JobSettingsError, UnitSettings
from silk.engine.guides import compute_guides
from tests import synthetic


@pytest.fixture(scope="module")
def guides():
    sphere = synthetic.placed("sphere", synthetic.uv_sphere(), synthetic.translation(z=-5.0))
    return compute_guides(synthetic.frame(synthetic.camera(64, 48), sphere))


def test_family_follows_the_setting_then_the_model_itself_then_the_worker_then_the_name(tmp_path):
    assert diffusion_job.model_family("stable-diffusion-v1-5/stable-diffusion-v1-5") == "sd15"
    assert diffusion_job.model_family("stabilityai/stable-diffusion-xl-base-1.0") == "sdxl"
    assert diffusion_job.model_family("/models/juggernautXL_v9.safetensors") == "sdxl"
    assert diffusion_job.model_family("/models/xlarge-painter") == "sd15"  # 'xl' must stand alone
    assert diffusion_job.model_family("anything", "SDXL") == "sdxl"
    assert diffusion_job.model_family("some-sdxl-thing", "SD15") == "sd15"
    assert diffusion_job.model_family("tiny-xl") == "sdxl" and diffusion_job.model_family("tiny") == "sd15"
    # A local SDXL fine-tune without XL in its name: its model_index.json says what it is.
    folder = tmp_path / "dreamy-painter"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    assert diffusion_job.model_family(str(folder)) == "sdxl"
    # A hub id: what the worker reported once it loaded it beats the name.
    assert diffusion_job.model_family("someone/dreamy-painter", reported="sdxl") == "sdxl"


def test_default_units_use_the_depth_and_normal_controlnets_of_the_registry():
    request = diffusion_job.model_request(JobSettings(units=[UnitSettings("DEPTH"), UnitSettings("NORMAL")]))
    assert request.source == diffusion_job.DEFAULT_MODEL
    assert request.controlnets == [families.FAMILIES["sd15"].controlnets[kind] for kind in ("DEPTH", "NORMAL")]
    assert request.family == "auto" and request.loras == []
    assert "family" not in request.to_json() and "loras" not in request.to_json()


def test_defaults_come_from_the_schema():
    job = JobSettings()
    assert (job.steps, job.guidance, job.scheduler) == tuple(schema.default(n) for n in ("steps", "guidance",
                                                                                          "scheduler"))
    assert job.precision == schema.ModelRequest.precision and UnitSettings().weight == schema.ControlUnit.weight


def test_tiny_uses_its_own_controlnets_and_a_units_own_controlnet_wins():
    units = [UnitSettings("DEPTH"), UnitSettings("NORMAL"), UnitSettings("CANNY"),
             UnitSettings("DEPTH", controlnet=" /my/controlnet ")]
    request = diffusion_job.model_request(JobSettings(model="tiny", units=units))
    assert request.controlnets == ["tiny:depth", "tiny:normal", "tiny:depth", "/my/controlnet"]


def test_a_unit_kind_the_family_has_no_controlnet_for_is_skipped_with_a_warning(tmp_path):
    units = [UnitSettings("DEPTH"), UnitSettings("NORMAL")]
    job = JobSettings(model="tiny-xl", units=units)
    usable, warnings = diffusion_job.usable_units(job)
    assert [u.settings.kind for u in usable] == ["DEPTH"] and diffusion_job.model_request(job).controlnets == [
        "tiny-xl:depth"]
    assert warnings == ["The Normal unit was skipped: there is no SDXL ControlNet for it. Give one in the unit's "
                        "ControlNet field, or disable the unit"]
    job = JobSettings(model="x", family="SDXL", units=units)
    assert diffusion_job.model_request(job).controlnets == ["diffusers/controlnet-depth-sdxl-1.0"]
    assert diffusion_job.model_request(job).family == "sdxl"
    with pytest.raises(JobSettingsError, match="No enabled ControlNet unit has a ControlNet for this SDXL model"):
        diffusion_job.model_request(JobSettings(model="tiny-xl", units=[UnitSettings("NORMAL")]))
    # Its own ControlNet makes a unit usable whatever the family.
    own = JobSettings(model="tiny-xl", units=[UnitSettings("NORMAL", controlnet="/my/xl-normal")])
    assert diffusion_job.usable_units(own)[1] == []


class FakeWorker:
    def __init__(self, family):
        self.family, self.loads = family, []

    def load_model(self, model, should_cancel=None):
        self.loads.append(model.controlnets)
        return {"source": model.source, "family": self.family}


def test_a_hub_model_of_another_family_than_its_name_is_loaded_again_with_that_familys_controlnets():
    job = JobSettings(model="someone/dreamy-painter", units=[UnitSettings("DEPTH"), UnitSettings("NORMAL")])
    worker = FakeWorker("sdxl")
    assert diffusion_job.load_model(worker, job)["family"] == "sdxl"
    assert worker.loads == [[families.FAMILIES["sd15"].controlnets["DEPTH"], families.FAMILIES["sd15"].controlnets[
        "NORMAL"]], [families.FAMILIES["sdxl"].controlnets["DEPTH"]]]
    assert job.reported_family == "sdxl" and len(diffusion_job.usable_units(job)[1]) == 1
    same = FakeWorker("sd15")
    diffusion_job.load_model(same, JobSettings(model="someone/plain", units=[UnitSettings("DEPTH")]))
    assert len(same.loads) == 1


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
    assert request.to_json()["loras"] == [{"path": str(lora), "weight": 0.5}]


def test_one_function_builds_the_frame_request_with_prompt_mix_and_feedback(guides):
    depth_range = conditioning.DepthRange.from_percentiles(guides.depth, guides.coverage)
    mix = [{"prompt": "a", "negative_prompt": "n", "weight": 0.25}, {"prompt": "b", "negative_prompt": "", "weight": 0.75}]
    job = JobSettings(model="tiny", units=[UnitSettings("DEPTH")], prompt="a", prompt_mix=mix, seed=9, steps=5)
    request = diffusion_job.generate_request(job, guides, depth_range)
    assert (request.width, request.height, request.seed, request.steps) == (64, 48, 9, 5)
    assert request.to_json()["prompt_mix"] == [{"prompt": "a", "negative_prompt": "n", "weight": 0.25},
                                               {"prompt": "b", "weight": 0.75}]
    assert request.init_image is None and request.fusion == 0.0 and request.preview
    init = np.zeros((48, 64, 3), np.float32)
    mask = np.full((48, 64), 0.4, np.float32)
    fed = diffusion_job.generate_request(job, guides, depth_range, seed=3, init_image=init, mask=mask, fusion=0.5,
                                         fusion_end=0.8)
    assert fed.strength == pytest.approx(0.4) and (fed.fusion, fed.fusion_end, fed.seed) == (0.5, 0.8, 3)
    assert fed.edits_latents and set(fed.features()) == {"fusion", "prompt_mix", "fusion_end"}
    with pytest.raises(JobSettingsError, match="steps"):
        diffusion_job.generate_request(JobSettings(model="tiny", units=[UnitSettings()], steps=0), guides, depth_range)


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
    np.testing.assert_array_equal(units[0].image, depth_picture)
    assert (units[0].weight, units[0].start, units[0].end) == (0.8, 0.1, 0.9)
    assert units[0].annotator is None and units[1].annotator is None
    np.testing.assert_array_equal(units[1].image, normal_picture)
    np.testing.assert_array_equal(units[2].image, normal_picture)
    assert units[2].annotator == "canny"
    assert units[2].annotator_options == {"low_threshold": 50, "high_threshold": 120}
    assert units[3].annotator == "hed"
    np.testing.assert_array_equal(units[3].image, depth_picture)


def test_image_units_need_an_image_and_cover_the_frame(guides):
    depth_range = conditioning.DepthRange(1.0, 10.0)
    with pytest.raises(JobSettingsError, match="needs an image"):
        diffusion_job.control_units(JobSettings(units=[UnitSettings("IMAGE", controlnet="/cn")]), guides, depth_range)
    with pytest.raises(JobSettingsError, match="Start .* must be below its End"):
        diffusion_job.control_units(JobSettings(units=[UnitSettings("DEPTH", start=0.6, end=0.4)]), guides,
                                    depth_range)
    # A 2:1 picture whose left half is red and right half blue, onto the 64x48 frame: covering
    # means the height fits and the sides are cropped, centred.
    picture = np.zeros((30, 60, 4), dtype=np.float32)
    picture[:, :30, 0] = 1.0
    picture[:, 30:, 2] = 1.0
    units = diffusion_job.control_units(JobSettings(units=[UnitSettings("IMAGE", image=picture, controlnet="/cn")]),
                                        guides, depth_range)
    image = units[0].image
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
