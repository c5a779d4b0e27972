"""Motion modules (bridge/motion.py): the tiny adapter, its original single-file layout, video
pipelines sharing one motion UNet in the model's precision, and generate_video through the real
worker process (frames back, prompt travel, init video with per-frame strength, cancel, bad
requests). Tiny sizes: 64x64, 2-4 frames, 2 steps."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded; before diffusers reads it

import threading  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from silk.bridge import motion, tiny_model  # noqa: E402
from silk.bridge.client import JobCancelled, JobFailed, WorkerClient, WorkerConfig  # noqa: E402
from silk.bridge.diffusion import DiffusionBackend, JobError  # noqa: E402
from tests.bridge.conftest import TINY, worker_python  # noqa: E402

TINY_MOTION = {"source": "tiny"}


def control_videos(frames=3, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return [{"image": rng.random((frames, size, size, 3), dtype=np.float32)} for _ in range(2)]


@pytest.fixture(scope="module")
def client(tmp_path_factory, worker_env):
    folder = tmp_path_factory.mktemp("video-worker")
    worker = WorkerClient(WorkerConfig(python=worker_python(), log_path=str(folder / "worker.log"),
                                       env=dict(worker_env)))
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def backend(model_cache):
    return DiffusionBackend(cache_dir=model_cache)


def run(backend, frames=2, images=None, control=None, model=None, motion_module=None, **extra):
    request = dict({"model": model or TINY, "motion": TINY_MOTION if motion_module is None else motion_module,
                    "prompt": "a red cube", "frames": frames, "steps": 2, "seed": 3, "width": 64, "height": 64},
                   **extra)
    count = frames if isinstance(frames, int) and not isinstance(frames, bool) else 2
    return motion.generate_video(backend, request, images or {}, control or control_videos(count),
                                 progress=lambda *a: None, cancel=threading.Event()).frames


# -- the adapter and its files -----------------------------------------------------------
def test_tiny_motion_adapter_fits_tiny_and_is_not_the_identity(model_cache):
    from diffusers import MotionAdapter, UNet2DConditionModel

    adapter = MotionAdapter.from_pretrained(motion.ensure_tiny_motion(model_cache))
    unet = UNet2DConditionModel.from_pretrained(tiny_model.ensure_tiny(model_cache), subfolder="unet")
    motion.check_motion_fits("tiny", adapter.config, "tiny", unet.config)  # raises on a mismatch
    projections = [p for name, p in adapter.named_parameters() if name.endswith("proj_out.weight")]
    assert projections and all(float(p.abs().max()) > 0 for p in projections)  # a fresh adapter's are zero


def test_single_file_round_trip_in_the_original_animatediff_layout(model_cache, backend, tmp_path):
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    folder = motion.ensure_tiny_motion(model_cache)
    path = str(tmp_path / "tiny-motion.safetensors")
    motion.save_original_motion_checkpoint(folder, path)
    original = load_file(path)
    assert "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe" \
        in original  # the key by which diffusers recognises an AnimateDiff file
    assert any(".norms.0." in key for key in original) and any(".ff_norm." in key for key in original)
    expected = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    assert convert_animatediff_checkpoint_to_diffusers(original).keys() == expected.keys()
    loaded = motion.load_motion_adapter(motion.MotionSpec(path, config="tiny"), torch.float32, model_cache)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    # ... and it paints exactly what the folder paints
    single = run(backend, motion_module={"source": path, "config": "tiny"})
    folder_frames = run(backend)
    assert np.array_equal(single, folder_frames)


def test_motion_module_sources_are_checked_with_clear_errors(backend, tmp_path, model_cache):
    not_motion = tmp_path / "notes.txt"
    not_motion.write_text("x")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    for source, words in ((str(not_motion), "not a .safetensors"), (str(broken), "Cannot load the motion module"),
                          (str(empty), "no config.json"), ("/no/such/file.safetensors", "does not exist"),
                          ("not a repo", "does not exist")):
        with pytest.raises(JobError) as caught:
            run(backend, motion_module={"source": source})
        assert caught.value.code == "bad_motion" and words in caught.value.message, caught.value.message
    with pytest.raises(JobError, match="only for single files"):
        run(backend, motion_module={"source": "tiny", "config": "tiny"})
    # an adapter for other UNet blocks: named as the mismatch, in words
    from diffusers import MotionAdapter

    other = tmp_path / "other-adapter"
    MotionAdapter(**dict(motion.tiny_motion_config(), block_out_channels=(32, 64))).save_pretrained(str(other))
    with pytest.raises(JobError) as caught:
        run(backend, motion_module={"source": str(other)})
    assert caught.value.code == "motion_mismatch" and "[32, 64]" in caught.value.message


# -- precision ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_from_pipe_keeps_the_precision_and_shares_one_motion_unet(dtype, model_cache):
    """What a GPU runs (fp16, bf16), on the CPU: both video pipelines in the model's precision,
    the motion UNet and every other component shared, and a window paints finite frames."""
    from diffusers import ControlNetModel, MotionAdapter, StableDiffusionControlNetPipeline

    folder = tiny_model.ensure_tiny(model_cache)
    controlnets = [ControlNetModel.from_pretrained(os.path.join(folder, name), torch_dtype=dtype)
                   for name in tiny_model.CONTROLNET_FOLDERS]
    base = StableDiffusionControlNetPipeline.from_pretrained(folder, controlnet=controlnets, torch_dtype=dtype,
                                                             safety_checker=None, requires_safety_checker=False)
    adapter = MotionAdapter.from_pretrained(motion.ensure_tiny_motion(model_cache), torch_dtype=dtype)
    pipes = motion.video_pipelines(base, adapter, dtype)
    text2video, video2video = pipes["text2video"], pipes["video2video"]
    assert video2video.unet is text2video.unet and video2video.vae is base.vae
    assert video2video.controlnet is text2video.controlnet and text2video.text_encoder is base.text_encoder
    for pipe in (text2video, video2video):
        for name in ("unet", "vae", "text_encoder", "controlnet", "motion_adapter"):
            assert {p.dtype for p in getattr(pipe, name).parameters()} == {dtype}, (name, dtype)
    assert type(text2video.unet).__name__ == "UNetMotionModel"
    from PIL import Image

    pictures = [[Image.new("RGB", (64, 64), (90, 120, 200))] * 2] * 2
    output = text2video(prompt="x", num_frames=2, conditioning_frames=pictures, num_inference_steps=1,
                        height=64, width=64, output_type="np", guidance_scale=1.0)
    assert np.isfinite(np.asarray(output.frames, dtype=np.float32)).all()


# -- motion LoRAs ------------------------------------------------------------------------
def write_motion_lora(adapter, path, rank=2, seed=0, scale=0.5):
    """A LoRA on the motion modules' attention, in diffusers' (PEFT) naming."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, module in adapter.named_modules():
        if name.endswith(("attn1.to_q", "attn1.to_v")) and isinstance(module, torch.nn.Linear):
            weights[f"unet.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=generator) * scale
            weights[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=generator) * scale
    assert weights
    save_file(weights, str(path))
    return str(path)


def test_motion_loras_change_the_frames_and_weight_zero_is_none(backend, model_cache, tmp_path):
    from diffusers import MotionAdapter

    adapter = MotionAdapter.from_pretrained(motion.ensure_tiny_motion(model_cache))
    lora = write_motion_lora(adapter, tmp_path / "pan.safetensors")
    plain = run(backend)
    moved = run(backend, motion_module={"source": "tiny", "loras": [{"path": lora, "weight": 1.0}]})
    off = run(backend, motion_module={"source": "tiny", "loras": [{"path": lora, "weight": 0.0}]})
    again = run(backend)
    assert np.abs(moved - plain).mean() > 1e-3
    assert np.allclose(off, plain, atol=1e-5) and np.allclose(again, plain, atol=1e-5)
    with pytest.raises(JobError) as caught:
        run(backend, motion_module={"source": "tiny", "loras": [{"path": str(tmp_path / "none.safetensors")}]})
    assert caught.value.code == "bad_lora"


# -- through the worker ------------------------------------------------------------------
def test_a_window_of_frames_through_the_worker(client):
    progress = []
    frames, info = client.generate_video(TINY, TINY_MOTION, "a lighthouse", control_videos(3), 64, 64, 3, steps=2,
                                         seed=5, preview=True, on_progress=progress.append)
    assert frames.shape == (3, 64, 64, 3) and frames.dtype == np.float32 and np.isfinite(frames).all()
    assert 0.0 <= frames.min() and frames.max() <= 1.0
    assert [p.step for p in progress] == [1, 2] and progress[-1].preview.shape == (8, 8, 3)
    assert info["timings"]["frames"] == 3 and info["seed"] == 5
    again, _ = client.generate_video(TINY, TINY_MOTION, "a lighthouse", control_videos(3), 64, 64, 3, steps=2, seed=5)
    assert np.array_equal(frames, again)
    per_frame, _ = client.generate_video(TINY, TINY_MOTION, "a lighthouse", control_videos(3), 64, 64, 3, steps=2,
                                         seed=5, decode_chunk=1)  # the VAE decodes frame by frame: the same frames
    assert np.allclose(per_frame, frames, atol=1e-5)
    # The frames are painted together: a change to the last frame's guides changes the first frame.
    videos = control_videos(3)
    videos[0]["image"][2] = 1.0 - videos[0]["image"][2]
    coupled, _ = client.generate_video(TINY, TINY_MOTION, "a lighthouse", videos, 64, 64, 3, steps=2, seed=5)
    assert np.abs(coupled[0] - frames[0]).mean() > 1e-4
    # prompt travel: {frame: prompt}
    travel, _ = client.generate_video(TINY, TINY_MOTION, "a lighthouse", control_videos(3), 64, 64, 3, steps=2,
                                      seed=5, prompts={2: "a red barn"})
    assert travel.shape == (3, 64, 64, 3) and np.abs(travel[2] - frames[2]).mean() > 1e-4


def test_init_video_with_per_frame_strength_masks_through_the_worker(client):
    base, _ = client.generate_video(TINY, TINY_MOTION, "x", control_videos(2), 64, 64, 2, steps=2, seed=1)

    def paint(masks):
        return client.generate_video(TINY, TINY_MOTION, "x", control_videos(2, seed=1), 64, 64, 2, steps=4, seed=2,
                                     init_video=base, strength=1.0, masks=masks)[0]

    kept = paint(np.zeros((2, 64, 64), np.float32))  # every pixel keeps the initial video
    free = paint(np.ones((2, 64, 64), np.float32))  # every pixel painted anew
    first_kept = paint(np.stack([np.zeros((64, 64)), np.ones((64, 64))]).astype(np.float32))
    assert np.abs(kept - base).mean() < np.abs(free - base).mean()
    # per frame: frame 0 follows the kept run, frame 1 the free one (up to the motion module's mixing)
    assert np.abs(first_kept[0] - kept[0]).mean() < np.abs(first_kept[0] - free[0]).mean()
    assert np.abs(first_kept[1] - free[1]).mean() < np.abs(first_kept[1] - kept[1]).mean()


def test_cancel_takes_effect_within_one_step_and_the_worker_goes_on(client):
    seen = []
    with pytest.raises(JobCancelled):
        client.generate_video(TINY, TINY_MOTION, "x", control_videos(2), 64, 64, 2, steps=300,
                              on_progress=seen.append, should_cancel=lambda: len(seen) >= 3, prompts={1: "y"})
    assert 3 <= len(seen) <= 5, f"{len(seen)} steps ran after asking at step 3"
    frames, _ = client.generate_video(TINY, TINY_MOTION, "x", control_videos(2), 64, 64, 2, steps=2)
    assert frames.shape == (2, 64, 64, 3)


def test_bad_video_requests_get_clear_errors_and_the_worker_survives(client):
    def refused(expected_code="bad_request", frames=2, controls=None, **options):
        with pytest.raises(JobFailed) as caught:
            client.generate_video(options.pop("model", TINY), options.pop("motion_module", TINY_MOTION), "x",
                                  controls if controls is not None else control_videos(2), 64, 64, frames,
                                  steps=2, **options)
        assert caught.value.code == expected_code, (caught.value.code, str(caught.value))
        return str(caught.value)

    assert "frames=3" in refused(frames=3)  # 2-frame guides for 3 frames
    assert "need an init_video" in refused(masks=np.zeros((2, 64, 64), np.float32))
    assert "init_video" in refused(init_video=np.zeros((3, 64, 64, 3), np.float32))
    assert "frames 0 to 1" in refused(prompts={5: "y"})
    assert "more than this motion module takes (32)" in refused(frames=40, controls=control_videos(40, size=8))
    assert "1 ControlNet videos for a model with 2" in refused(controls=control_videos(2)[:1])
    assert "SD 1.5" in refused("bad_model", model={"source": "tiny-xl"}, controls=control_videos(2)[:1])
    assert "image LoRAs" in refused("bad_lora", model=dict(TINY, loras=[{"path": "/x.safetensors"}]))
    assert "motion" in refused("bad_motion", motion_module={"source": ""})
    for controlnets in (5, "depth", [3]):  # as a careless or hostile peer sends them, not our client
        with pytest.raises(JobFailed) as caught:
            client._call({"type": "generate_video", "controlnets": controlnets}, timeout=30)
        assert caught.value.code in ("bad_request", "malformed"), (caught.value.code, str(caught.value))
    frames, _ = client.generate_video(TINY, TINY_MOTION, "x", control_videos(2), 64, 64, 2, steps=2)
    assert frames.shape == (2, 64, 64, 3)


def test_out_of_memory_names_the_window_size_and_the_worker_survives(tmp_path, worker_env):
    # The worker's memory is capped (SILK_WORKER_MEMORY_LIMIT_MB), the CPU twin of a full GPU.
    worker = WorkerClient(WorkerConfig(python=worker_python(), log_path=str(tmp_path / "worker.log"),
                                       env=dict(worker_env, SILK_WORKER_MEMORY_LIMIT_MB="6144")))
    try:
        with pytest.raises(JobFailed) as caught:
            # 8x8 guides padded to the frame (as the image test does): the first activations alone exceed the cap
            worker.generate_video(TINY, TINY_MOTION, "x", control_videos(2, size=8), 4096, 4096, 2, steps=1,
                                  timeout=120)
        assert caught.value.code == "out_of_memory", str(caught.value)
        assert "2 frames of 4096x4096" in str(caught.value) and "Context Frames" in str(caught.value)
        frames, _ = worker.generate_video(TINY, TINY_MOTION, "x", control_videos(2), 64, 64, 2, steps=2)
        assert frames.shape == (2, 64, 64, 3)
    finally:
        worker.stop()


def test_wrongly_typed_video_fields_are_bad_requests(backend):
    """The protocol passes generate_video's fields on (as it does generate's, which bridge/schema.py
    checks); motion.py checks them: each wrong type is a bad_request (or bad_motion), never a crash."""
    from silk.bridge import protocol

    good = {"type": "generate_video", "id": 1, "model": {}, "motion": {}, "prompt": "x", "frames": 2}
    assert protocol.validate_request(dict(good))["type"] == "generate_video"
    assert "generate_video" in protocol.FEATURES
    for field, value, code in (("frames", 2.5, "bad_request"), ("frames", True, "bad_request"),
                               ("motion", "tiny", "bad_motion"), ("prompts", ["x"], "bad_request"),
                               ("decode_chunk", True, "bad_request"), ("steps", "4", "bad_request"),
                               ("seed", 1.5, "bad_request"), ("width", None, "bad_request"),
                               ("negative_prompt", 3, "bad_request"), ("prompt", ["x"], "bad_request")):
        options = {"motion_module": value} if field == "motion" else {field: value}
        with pytest.raises(JobError) as caught:
            run(backend, **options)
        assert caught.value.code == code, (field, value, caught.value.code, caught.value.message)
