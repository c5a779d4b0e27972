"""F12 with diffusion in Blender's module: the real worker, the `tiny` model, no mocks."""
import os
import threading
import time
import types

import bpy
import numpy as np
import pytest

from silk.engine import job_settings, render_engine, result_history, settings, worker_link
from tests.blender.test_engine import simple_scene
from tests.support import exr, scenes
from tests.support.scenes import read_png
from tools.blender_env import set_multilayer_exr, set_png


def diffuse_scene(width=80, height=56, steps=3):
    """The engine tests' scene (Silk, Standard view), painted by tiny."""
    scene = simple_scene(width, height)
    silk = scene.silk
    silk.mode = "DIFFUSE"
    silk.model = "tiny"
    silk.steps = steps
    silk.scheduler = "euler"
    silk.prompt = "a stone cube on a meadow"
    return scene


def errors():
    return [message for level, message in render_engine.last_reports if level == "ERROR"]


def render_expecting_error(match):
    with pytest.raises(RuntimeError, match=match):
        bpy.ops.render.render()
    assert len(errors()) == 1, render_engine.last_reports


def test_f12_paints_an_image_of_the_render_size_with_the_guide_passes(silk, tmp_path):
    scene = diffuse_scene(80, 56)
    set_multilayer_exr(scene)
    scene.render.filepath = str(tmp_path / "f12.exr")
    bpy.ops.render.render(write_still=True)
    assert not errors(), render_engine.last_reports
    passes = exr.read_passes(str(tmp_path / "f12.exr"))
    combined = passes["Combined"]
    assert combined.shape[:2] == (56, 80)
    assert float(combined[..., :3].std()) > 0.01  # a painting, not a constant
    assert np.all(combined[..., 3] == 1.0)
    for name in ("Depth", "Normal", "Vector", "Occlusion"):
        assert passes[name].shape[:2] == (56, 80)
    assert np.any(passes["Vector"] != 0)
    assert render_engine.last_picture.shape == (56, 80, 3)


def test_saved_png_equals_the_workers_picture_with_the_standard_view(silk, tmp_path):
    scene = diffuse_scene(72, 48)
    scene.render.dither_intensity = 0.0
    set_png(scene)
    scene.render.filepath = str(tmp_path / "exact.png")
    bpy.ops.render.render(write_still=True)
    saved = read_png(tmp_path / "exact.png")
    picture = render_engine.last_picture
    assert saved.shape == picture.shape
    assert float(np.abs(saved - picture).max()) <= 1.0 / 255 + 1e-6


def test_f12_result_is_kept_in_a_short_image_history(silk):
    scene = diffuse_scene(40, 32, steps=2)
    scene.silk.history_length = 2
    for image in result_history.history_images():
        bpy.data.images.remove(image)
    for seed in (1, 2, 3):
        scene.silk.seed = seed
        bpy.ops.render.render()
    history = result_history.history_images(scene.name)
    assert [image.name for image in history] == [f"Silk {scene.name} 0003 #2", f"Silk {scene.name} 0003 #3"]
    newest = history[-1]
    assert tuple(newest.size) == (40, 32) and newest.get("silk_frame") == 3
    pixels = np.empty(40 * 32 * 4, dtype=np.float32)
    newest.pixels.foreach_get(pixels)
    assert pixels.reshape(32, 40, 4)[..., :3].std() > 0.01
    # Stepping back through the history, as the Image Editor's buttons do.
    space = types.SimpleNamespace(image=newest)
    assert result_history.step(space, -1) == history[0]
    assert result_history.step(space, +1) is None


def test_settings_are_read_per_frame_so_keyframes_schedule_them(silk):
    scene = diffuse_scene()
    silk_settings = scene.silk
    bpy.ops.silk.unit_add(kind="CANNY")  # the defaults (depth, normal) are added first
    for frame, (seed, guidance, weight) in ((1, (5, 3.0, 0.2)), (9, (13, 11.0, 1.4))):
        silk_settings.seed, silk_settings.guidance_scale, silk_settings.units[0].weight = seed, guidance, weight
        silk_settings.keyframe_insert("seed", frame=frame)
        silk_settings.keyframe_insert("guidance_scale", frame=frame)
        silk_settings.units[0].keyframe_insert("weight", frame=frame)
    scene.frame_set(1)
    first = job_settings.from_scene(scene)
    scene.frame_set(9)
    last = job_settings.from_scene(scene)
    assert (first.seed, first.guidance, first.units[0].weight) == (5, pytest.approx(3.0), pytest.approx(0.2))
    assert (last.seed, last.guidance, last.units[0].weight) == (13, pytest.approx(11.0), pytest.approx(1.4))
    assert [unit.kind for unit in last.units] == ["DEPTH", "NORMAL", "CANNY"]


def test_every_numeric_setting_is_animatable(silk):
    from silk.engine import settings

    for group in (settings.SilkSceneSettings, settings.SilkControlUnit, settings.SilkLora, settings.SilkPromptKey):
        for prop in group.bl_rna.properties:
            if prop.type in ("INT", "FLOAT") and prop.identifier not in ("active_unit", "active_lora", "active_prompt_key"):
                assert prop.is_animatable, f"{group.__name__}.{prop.identifier} cannot be keyframed"


def test_a_canny_unit_on_the_depth_guide_paints(silk):
    scene = diffuse_scene(64, 48, steps=2)
    bpy.ops.silk.unit_add(kind="CANNY")
    scene.silk.units.remove(1)  # depth + canny: tiny has two ControlNets
    bpy.ops.render.render()
    assert not errors(), render_engine.last_reports
    canny_picture = render_engine.last_picture.copy()
    scene.silk.units[1].kind = "NORMAL"
    bpy.ops.render.render()
    assert not np.allclose(canny_picture, render_engine.last_picture)


def cancel_when_busy(after_seconds=0.3):
    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            client = worker_link._client
            if client is not None and client.state == "busy":
                time.sleep(after_seconds)
                worker_link.cancel_requested.set()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_cancel_mid_render_stops_and_leaves_the_worker_ready(silk):
    scene = diffuse_scene(64, 64, steps=2)
    bpy.ops.render.render()  # warm: worker started, model loaded
    pid = worker_link._client.worker_pid
    scene.silk.steps = 400
    watcher = cancel_when_busy()
    started = time.monotonic()
    bpy.ops.render.render()
    watcher.join(5)
    assert time.monotonic() - started < 30  # 400 steps would take minutes
    assert any("Cancelled" in message for _, message in render_engine.last_reports)
    assert not errors() and render_engine.last_picture is None
    scene.silk.steps = 2
    bpy.ops.render.render()
    assert not errors() and render_engine.last_picture is not None
    assert worker_link._client.worker_pid == pid  # the same worker, still serving


def test_wrong_model_path_is_one_clear_error(silk, tmp_path):
    scene = diffuse_scene()
    scene.silk.model = str(tmp_path / "no-such-model")
    render_expecting_error("does not exist.*diffusers folder")


def test_unknown_sampler_is_one_clear_error(silk):
    scene = diffuse_scene()
    scene.silk["scheduler"] = 99  # as a file saved by a newer Silk with more samplers would load
    render_expecting_error("Unknown sampler.*Sampling panel")


def test_missing_controlnet_is_one_clear_error(silk, tmp_path):
    scene = diffuse_scene()
    bpy.ops.silk.unit_add(kind="DEPTH")
    scene.silk.units.remove(2)
    scene.silk.units[1].controlnet = str(tmp_path / "no-such-controlnet")
    render_expecting_error("The ControlNet folder '.*no-such-controlnet' does not exist")


def test_worker_crash_mid_render_is_one_clear_error_and_the_next_render_recovers(silk):
    scene = diffuse_scene(64, 64, steps=2)
    bpy.ops.render.render()
    old_pid = worker_link._client.worker_pid
    scene.silk.steps = 400

    def kill_when_busy():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            client = worker_link._client
            if client.state == "busy":
                time.sleep(0.3)
                client.kill()
                return
            time.sleep(0.01)

    threading.Thread(target=kill_when_busy, daemon=True).start()
    started = time.monotonic()
    render_expecting_error("worker stopped unexpectedly")
    assert time.monotonic() - started < 30
    scene.silk.steps = 2
    bpy.ops.render.render()
    assert not errors() and render_engine.last_picture is not None
    assert worker_link._client.worker_pid != old_pid


def test_render_preview_paints_the_current_frame_small_into_an_image(silk):
    scene = diffuse_scene(100, 60)
    scene.silk.preview_scale = 0.5
    scene.silk.preview_steps = 2
    assert bpy.ops.silk.render_preview() == {"FINISHED"}
    image = bpy.data.images[f"Silk Preview {scene.name}"]
    assert tuple(image.size) == (50, 30)
    pixels = np.empty(50 * 30 * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    assert pixels.reshape(30, 50, 4)[..., :3].std() > 0.01


def test_worker_status_and_start_stop(silk):
    diffuse_scene()
    bpy.ops.silk.stop_worker()
    assert worker_link.status()[0] == "stopped"
    assert bpy.ops.silk.start_worker() == {"FINISHED"}
    assert worker_link.status()[0] == "ready"
    bpy.ops.render.render()
    state, text = worker_link.status()
    assert state == "ready" and text == "Ready on CPU with tiny"


def test_panels_register_and_poll_on_this_blender(silk):
    from silk.ui import panels

    scene = diffuse_scene()
    for panel in panels.CLASSES:
        assert panel.is_registered, panel.__name__
        if hasattr(panel, "poll") and issubclass(panel, bpy.types.Panel):
            panel.poll(bpy.context)  # no exception
    assert panels.SILK_PT_render.poll(bpy.context)
    scene.render.engine = "CYCLES"
    assert not panels.SILK_PT_render.poll(bpy.context)
    scene.view_settings.view_transform = "Standard"
    assert panels.color_management_note(scene) is None
    scene.view_settings.view_transform = "Filmic" if bpy.app.version < (4, 0, 0) else "AgX"
    assert "Standard" in panels.color_management_note(scene)


def write_random_lora(model_cache, path, rank=4, scale=0.5):
    """A LoRA for tiny's UNet on its attention projections, written as safetensors with numpy
    (shapes read from the UNet's own safetensors header; no torch in Blender's Python)."""
    import glob
    import json
    import struct

    unet_file = glob.glob(os.path.join(model_cache, "tiny-v*", "unet", "*.safetensors"))[0]
    with open(unet_file, "rb") as handle:
        header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
    rng = np.random.default_rng(5)
    tensors = {}
    for name, info in sorted(header.items()):
        if name.endswith((".attn1.to_q.weight", ".attn2.to_q.weight")):
            out_features, in_features = info["shape"]
            layer = name[: -len(".weight")]
            tensors[f"unet.{layer}.lora_A.weight"] = (rng.standard_normal((rank, in_features)) * scale).astype("<f4")
            tensors[f"unet.{layer}.lora_B.weight"] = (rng.standard_normal((out_features, rank)) * scale).astype("<f4")
    assert tensors
    layout, offset = {}, 0
    for name, array in tensors.items():
        layout[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    encoded = json.dumps(layout).encode()
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)) + encoded)
        for array in tensors.values():
            handle.write(array.tobytes())
    return str(path)


def test_a_lora_with_weight_changes_the_painting(silk, tmp_path):
    scene = diffuse_scene(64, 48, steps=2)
    bpy.ops.render.render()  # builds tiny in the model cache
    base = render_engine.last_picture.copy()
    lora = scene.silk.loras.add()
    lora.path = write_random_lora(os.environ["SILK_MODEL_CACHE"], tmp_path / "style.safetensors")
    lora.weight = 0.0
    bpy.ops.render.render()
    assert not errors(), render_engine.last_reports
    assert np.allclose(render_engine.last_picture, base, atol=1e-5)
    lora.weight = 1.0
    bpy.ops.render.render()
    assert not np.allclose(render_engine.last_picture, base, atol=1e-3)


def warnings():
    return [message for level, message in render_engine.last_reports if level == "WARNING"]


SKIPPED_NORMAL = "The Normal unit was skipped: there is no SDXL ControlNet for it"


def test_sdxl_family_paints_a_fresh_scene_and_warns_about_the_normal_unit(silk):
    scene = diffuse_scene(64, 64, steps=2)
    assert not scene.silk.units_initialized  # a new scene: the default Depth and Normal units
    scene.silk.model = "tiny-xl"
    bpy.ops.render.render()
    assert not errors(), render_engine.last_reports
    assert [w for w in warnings() if w.startswith(SKIPPED_NORMAL)], render_engine.last_reports
    assert render_engine.last_picture.shape == (64, 64, 3) and render_engine.last_picture.std() > 0.01
    assert worker_link.loaded.get("source") == "tiny-xl" and worker_link.loaded.get("family") == "sdxl"


def test_an_sdxl_folder_without_xl_in_its_name_is_known_by_what_it_is(silk, tmp_path):
    import shutil

    from silk.bridge import tiny_model

    folder = str(tmp_path / "dreamy-painter")
    shutil.copytree(tiny_model.ensure_tiny_xl(), folder)
    scene = diffuse_scene(64, 64, steps=2)
    settings.ensure_default_units(scene)  # what the panel does for a new scene: Depth and Normal
    assert [unit.kind for unit in scene.silk.units] == ["DEPTH", "NORMAL"]
    scene.silk.model = folder
    scene.silk.units[0].controlnet = os.path.join(folder, "controlnet-depth")  # offline: no hub default
    bpy.ops.render.render()
    assert not errors(), render_engine.last_reports
    assert [w for w in warnings() if w.startswith(SKIPPED_NORMAL)], render_engine.last_reports
    assert worker_link.loaded.get("family") == "sdxl" and render_engine.last_picture.std() > 0.01


def test_render_preview_between_two_prompt_keys_sends_the_prompt_mix_f12_sends(silk, monkeypatch):
    from silk.bridge.client import WorkerClient

    scene = diffuse_scene(64, 48, steps=2)
    for frame, prompt in ((1, "a stone cube"), (9, "a glass cube")):
        scene.frame_set(frame)
        bpy.ops.silk.prompt_key_add()
        scene.silk.prompt_keys[-1].prompt = prompt
    scene.frame_set(4)
    sent = []
    original = WorkerClient.generate

    def spy(self, request, *args, **kwargs):
        sent.append(request)
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(WorkerClient, "generate", spy)
    bpy.ops.render.render()
    scene.silk.preview_steps = 2
    assert bpy.ops.silk.render_preview() == {"FINISHED"}
    f12, preview = (request.to_json()["prompt_mix"] for request in sent)
    assert [entry["prompt"] for entry in f12] == ["a stone cube", "a glass cube"] and 0 < f12[1]["weight"] < 1
    assert preview == f12


def test_panels_draw_only_properties_and_icons_that_exist(silk):
    """Panels cannot be drawn without a window; check what their code names instead."""
    import glob
    import re

    from silk.engine import settings
    from silk.ui import preferences
    from tools.blender_env import ROOT

    known = set()
    for group in (settings.SilkSceneSettings, settings.SilkControlUnit, settings.SilkLora, settings.SilkPromptKey,
                  preferences.SilkPreferences):
        known |= {prop.identifier for prop in group.bl_rna.properties}
    icons = {item.identifier for item in bpy.types.UILayout.bl_rna.functions["prop"].parameters["icon"].enum_items}
    for path in glob.glob(os.path.join(ROOT, "ui", "*.py")) + glob.glob(os.path.join(ROOT, "operators", "*.py")):
        source = open(path).read()
        drawn = set(re.findall(r'prop\((?:settings|unit|lora|key|self|context\.scene\.silk), "(\w+)"', source))
        assert drawn <= known, (path, drawn - known)
        assert set(re.findall(r'icon="(\w+)"', source)) <= icons, path
    from silk.ui import panels

    assert set(panels.STATUS_ICONS.values()) <= icons


def test_list_operators_add_select_and_remove(silk):
    scene = diffuse_scene()
    silk_settings = scene.silk
    for _ in range(3):
        bpy.ops.silk.lora_add()
    assert len(silk_settings.loras) == 3 and silk_settings.active_lora == 2
    bpy.ops.silk.lora_remove()
    assert len(silk_settings.loras) == 2 and silk_settings.active_lora == 1
    silk_settings.active_lora = 0
    bpy.ops.silk.lora_remove()
    bpy.ops.silk.lora_remove()
    assert len(silk_settings.loras) == 0 and silk_settings.active_lora == 0
    assert bpy.ops.silk.lora_remove.poll() is False
    scene.frame_set(7)
    bpy.ops.silk.prompt_key_add()
    assert silk_settings.prompt_keys[0].frame == 7 and silk_settings.prompt_keys[0].prompt == silk_settings.prompt
    bpy.ops.silk.unit_add(kind="LINEART")  # the default units come first
    assert [unit.kind for unit in silk_settings.units] == ["DEPTH", "NORMAL", "LINEART"]
    assert silk_settings.active_unit == 2
    for _ in range(3):
        bpy.ops.silk.unit_remove()
    assert len(silk_settings.units) == 0 and silk_settings.units_initialized  # empty now means empty
