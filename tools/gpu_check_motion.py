"""GPU check for motion modules: memory and time of one window at real size.

Builds, in memory, random-weight models with the real shapes of SD 1.5 (UNet 320-640-1280-1280,
an SD VAE, a 768-wide 12-layer CLIP text encoder, two SD 1.5 ControlNets) and of an SD 1.5
AnimateDiff motion module (diffusers' MotionAdapter defaults: the v2/v3 modules' shape), makes
the video pipelines exactly as the worker does (``bridge.motion.video_pipelines``: from_pipe,
precision kept), and paints one window text-to-video and one video-to-video at strength 0.6, reporting the wall time and the peak GPU memory of each:

    .venv/bin/python tools/gpu_check_motion.py [--frames 16] [--size 512] [--steps 20] [--precision fp16]
    .venv/bin/python tools/gpu_check_motion.py --device cpu --precision bf16 --frames 2 --size 64 --steps 2   # CPU smoke run

Random weights paint noise, but cost exactly what trained weights of the same shapes cost.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sd15_shaped(torch, dtype, device):
    """A random SD 1.5-shaped ControlNet pipeline (two ControlNets), on ``device`` in ``dtype``."""
    import tempfile

    from diffusers import (AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, StableDiffusionControlNetPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    from silk.bridge import tiny_model

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    tokenizer = tiny_model._tokenizer(tempfile.mkdtemp(prefix="silk-tokenizer-"))
    vocabulary = tiny_model._byte_vocabulary()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocabulary), hidden_size=768, intermediate_size=3072, num_attention_heads=12,
        num_hidden_layers=12, max_position_embeddings=77, bos_token_id=vocabulary["<|startoftext|>"],
        eos_token_id=vocabulary["<|endoftext|>"], pad_token_id=vocabulary["<|endoftext|>"]))
    controlnets = [ControlNetModel.from_unet(unet) for _ in range(2)]
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionControlNetPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                             controlnet=controlnets, scheduler=scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    return pipe.to(device, dtype)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="fp16", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--decode-chunk", type=int, default=16)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if "silk" not in sys.modules:
        spec = importlib.util.spec_from_file_location("silk", os.path.join(root, "__init__.py"),
                                                      submodule_search_locations=[root])
        module = importlib.util.module_from_spec(spec)
        sys.modules["silk"] = module
        spec.loader.exec_module(module)
    import numpy as np
    import torch
    from diffusers import MotionAdapter
    from PIL import Image

    from silk.bridge import motion

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    cuda = args.device.startswith("cuda")
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # made in their precision: no fp32 copy of 2 billion weights first
    try:
        base = sd15_shaped(torch, dtype, args.device)
        torch.manual_seed(1)
        adapter = MotionAdapter().to(args.device, dtype)  # diffusers' defaults: SD 1.5 v2/v3 modules' shape
    finally:
        torch.set_default_dtype(default)
    pipes = motion.video_pipelines(base, adapter, dtype)
    assert {p.dtype for p in pipes["text2video"].unet.parameters()} == {dtype}
    rng = np.random.default_rng(0)
    pictures = [[Image.fromarray((rng.random((args.size, args.size, 3)) * 255).astype(np.uint8))
                 for _ in range(args.frames)] for _ in range(2)]
    results = {"device": torch.cuda.get_device_name() if cuda else args.device, "precision": args.precision,
               "frames": args.frames, "size": args.size, "steps": args.steps, "decode_chunk": args.decode_chunk,
               "model_gib": round(sum(p.numel() * p.element_size() for name in ("unet", "vae", "text_encoder",
                                                                                "controlnet")
                                      for p in getattr(pipes["text2video"], name).parameters()) / 2 ** 30, 3)}
    common = dict(prompt="a room", conditioning_frames=pictures, num_inference_steps=args.steps, guidance_scale=7.0,
                  height=args.size, width=args.size, output_type="np", decode_chunk_size=args.decode_chunk)

    def measure(label, run):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        with torch.inference_mode():
            output = run()
        if cuda:
            torch.cuda.synchronize()
        frames = np.asarray(output.frames[0], dtype=np.float32)
        assert frames.shape == (args.frames, args.size, args.size, 3) and np.isfinite(frames).all(), frames.shape
        entry = {"seconds": round(time.perf_counter() - started, 2)}
        if cuda:
            entry["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        results[label] = entry
        print(label, entry, flush=True)

    generator = torch.Generator("cpu")
    measure("warm-up (text-to-video)", lambda: pipes["text2video"](num_frames=args.frames,
                                                                  generator=generator.manual_seed(0), **common))
    measure("text-to-video window", lambda: pipes["text2video"](num_frames=args.frames,
                                                               generator=generator.manual_seed(0), **common))
    video = [picture for picture in pictures[0]]
    measure("video-to-video window (strength 0.6)", lambda: pipes["video2video"](
        video=video, strength=0.6, generator=generator.manual_seed(0), **common))
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
