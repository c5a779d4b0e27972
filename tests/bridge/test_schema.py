"""The typed request schema (bridge/schema.py) and the family registry (bridge/families.py), without a worker."""
import json
import os
import struct

import numpy as np
import pytest

from silk.bridge import families, schema
from silk.bridge.errors import JobError
from silk.bridge.schema import ControlUnit, GenerateRequest, ModelRequest

FRAME = {"file": "f", "shape": [8, 8, 3], "dtype": "float32"}
# A generate request as protocol 1 documents it (docs/worker.md): it must keep working.
V1 = {"type": "generate", "id": 7, "model": {"source": "tiny", "controlnets": ["tiny:depth"], "precision": "fp32"},
      "prompt": "a cube", "negative_prompt": "blur", "seed": 5, "steps": 4, "guidance": 6.5, "scheduler": "ddim",
      "width": 80, "height": 64, "strength": 0.5, "init_image": FRAME, "mask": FRAME, "preview": True,
      "controlnets": [{"image": FRAME, "weight": 0.7, "start": 0.1, "end": 0.9, "annotator": "canny",
                       "annotator_options": {"low_threshold": 10}}], "output": FRAME}


def test_a_protocol_1_request_parses_and_goes_back_to_the_same_json():
    request = schema.parse(V1)
    assert isinstance(request, GenerateRequest) and isinstance(request.model, ModelRequest)
    assert (request.seed, request.steps, request.guidance, request.scheduler) == (5, 4, 6.5, "ddim")
    assert request.controlnets[0] == ControlUnit(image=FRAME, weight=0.7, start=0.1, end=0.9, annotator="canny",
                                                 annotator_options={"low_threshold": 10})
    assert request.edits_latents and request.features() == []
    again = request.to_json()
    assert {key: again[key] for key in V1 if key != "id"} == {key: value for key, value in V1.items() if key != "id"} \
        | {"model": dict(V1["model"], device="auto", attention_slicing=False, vae_tiling=False, cpu_offload=False)}
    assert schema.parse(json.loads(json.dumps(again))) == request


def test_the_defaults_are_written_once_and_every_reader_uses_them():
    request = schema.parse({"type": "generate", "model": {"source": "tiny"}, "prompt": "x", "width": 8,
                            "height": 8, "controlnets": [{"image": FRAME}]})
    for name in ("steps", "guidance", "scheduler", "strength", "seed", "fusion", "fusion_end", "negative_prompt"):
        assert getattr(request, name) == schema.default(name)
    assert schema.default("scheduler") in families.SAMPLER_IDS


WRONG_TYPES = [
    ("prompt", 5), ("negative_prompt", None), ("seed", 1.5), ("seed", True), ("steps", "20"), ("steps", 2.5),
    ("guidance", "7"), ("guidance", float("inf")), ("scheduler", ["euler"]), ("width", 64.0), ("height", None),
    ("strength", True), ("fusion", "0.5"), ("fusion_end", [1]), ("preview", 1), ("prompt_mix", {"prompt": "a"}),
    ("controlnets", "depth"), ("controlnets", [5]), ("controlnets", [{"image": 5}]),
    ("controlnets", [{"image": dict(FRAME, dtype=["float32"])}]), ("controlnets", [{"image": dict(FRAME, shape="8")}]),
    ("controlnets", [{"image": FRAME, "weight": "1"}]), ("controlnets", [{"image": FRAME, "annotator": 3}]),
    ("controlnets", [{"image": FRAME, "annotator_options": {"a": [1]}}]), ("init_image", "picture"),
    ("mask", dict(FRAME, dtype={"a": 1})), ("noise", dict(FRAME, attachment="0")), ("output", [1]),
    ("model", "tiny"), ("model", {"source": 5}), ("model", {"source": "tiny", "precision": ["fp16"]}),
    ("model", {"source": "tiny", "device": 0}), ("model", {"source": "tiny", "cpu_offload": "yes"}),
    ("model", {"source": "tiny", "controlnets": "tiny:depth"}), ("model", {"source": "tiny", "loras": {}}),
    ("model", {"source": "tiny", "loras": [{"path": "a", "weight": "1"}]}),
]


@pytest.mark.parametrize("name, value", WRONG_TYPES, ids=[f"{n}-{type(v).__name__}" for n, v in WRONG_TYPES])
def test_every_wrong_field_type_is_a_clear_user_error_not_internal(name, value):
    with pytest.raises(JobError) as caught:
        schema.parse(dict(V1, **{name: value}))
    assert caught.value.code in ("bad_request", "bad_model", "bad_lora", "bad_scheduler")
    assert len(caught.value.message) < 300


def test_frame_size_and_work_are_capped():
    base = dict(V1, steps=20)
    schema.parse(dict(base, width=4096, height=4096, steps=37))  # the largest frame, at its most steps
    with pytest.raises(JobError, match="megapixels"):
        schema.parse(dict(base, width=8192, height=4096))
    with pytest.raises(JobError, match="pixel-steps"):
        schema.parse(dict(base, width=4096, height=4096, steps=38))
    with pytest.raises(JobError, match="from 8 to 8192"):
        schema.parse(dict(base, width=8200))


def test_building_from_numpy_values_gives_plain_json():
    request = schema.build({"source": "tiny"}, "x", [{"image": np.zeros((8, 8, 3)), "weight": np.float32(0.5)}],
                           np.int64(8), 8, seed=np.int64(3), prompt_mix=[{"prompt": "a", "weight": np.float32(2)}])
    data = request.to_json(lambda array, name: {"attachment": 0, "shape": list(array.shape), "dtype": "float32"})
    assert json.loads(json.dumps(data))["controlnets"][0]["weight"] == 0.5
    assert data["prompt_mix"] == [{"prompt": "a", "weight": 2.0}] and type(data["seed"]) is int
    with pytest.raises(JobError, match="float32"):
        schema.build({"source": "tiny"}, "x", [{"image": np.zeros((8, 8, 3))}], 8, 8,
                     noise=np.zeros((1, 1, 4), np.int32))


# -- the registry -----------------------------------------------------------------------
def test_every_sampler_is_built_from_the_original_config_whatever_ran_before():
    from diffusers import PNDMScheduler

    original = dict(PNDMScheduler(beta_schedule="scaled_linear", steps_offset=1).config)
    first = {name: dict(families.make_scheduler(name, original).config) for name in families.SAMPLER_IDS}
    karras = families.make_scheduler("dpmpp_2m_karras", original)
    assert karras.config.use_karras_sigmas is True
    for name in families.SAMPLER_IDS:  # a Karras run before changes nothing
        assert dict(families.make_scheduler(name, original).config) == first[name]
    assert first["euler"]["use_karras_sigmas"] is False and first["dpmpp_2m"]["use_karras_sigmas"] is False
    # A model whose own config asks for Karras sigmas still gets exactly what the sampler says.
    assert families.make_scheduler("euler", dict(original, use_karras_sigmas=True)).config.use_karras_sigmas is False
    unipc = families.make_scheduler("unipc", original, latents_edited=True)
    assert set(range(150)) <= set(unipc.config.disable_corrector)
    assert families.make_scheduler("unipc", original).config.disable_corrector == []


def test_unit_kinds_and_default_controlnets_come_from_the_registry():
    assert families.DEFAULT_UNIT_KINDS == ("DEPTH", "NORMAL")
    assert set(families.DEFAULT_UNIT_KINDS) <= set(families.UNIT_KIND_IDS)
    for family in families.FAMILIES.values():
        assert set(family.controlnets) <= set(families.UNIT_KIND_IDS)
    assert families.controlnet_for_kind("some/model", "sdxl", "NORMAL") is None
    assert families.controlnet_for_kind("tiny-xl", "sdxl", "DEPTH") == "tiny-xl:depth"
    assert families.controlnet_for_kind("tiny", "sd15", "CANNY") == "tiny:depth"


def write_safetensors(path, keys):
    header = json.dumps({key: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                         for i, key in enumerate(keys)}).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header + bytes(4 * len(keys)))


def test_detection_reads_folders_and_single_files_without_torch(tmp_path):
    xl = tmp_path / "my-finetune"  # no "xl" in the name
    xl.mkdir()
    (xl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert families.detect(str(xl)) == ("sdxl", "its model_index.json names StableDiffusionXLPipeline")
    write_safetensors(tmp_path / "a.safetensors", ["conditioner.embedders.1.model.x", "model.diffusion_model.y"])
    write_safetensors(tmp_path / "b.safetensors", ["cond_stage_model.transformer.x"])
    assert families.detect(str(tmp_path / "a.safetensors"))[0] == "sdxl"
    assert families.detect(str(tmp_path / "b.safetensors"))[0] == "sd15"
    (tmp_path / "c.safetensors").write_bytes(b"\xff" * 64)
    assert families.detect(str(tmp_path / "c.safetensors"))[0] is None
    assert families.detect("owner/name") == (None, "it is not a local model")
    assert families.detect("tiny-xl")[0] == "sdxl" and families.guess_from_name("juggernautXL") == "sdxl"
    assert not os.path.exists(tmp_path / "d")
