"""``sd15-random``: the published Stable Diffusion 1.5 architecture at full size with seeded
random weights, built locally (nothing is downloaded).

The UNet (860M parameters), the VAE (84M), the CLIP ViT-L/14 text encoder (123M) and two
ControlNets (361M each, started from the UNet's weights as real ControlNets are) have exactly
SD 1.5's shapes, so loading, memory and time per step are what a real SD 1.5 checkpoint costs;
the weights are noise, so the pictures are noise. The tokenizer is tiny's local byte-level one
(its ids fit CLIP's 49408-entry embedding). About 7 GB in fp32 safetensors; built once into the
model cache (bridge/tiny_model.py's ``default_cache_dir``) and then loaded like any diffusers
folder. Benchmarks (tools/bench_overhead.py) and ``make gpu-check`` use it.
"""
from __future__ import annotations

import os

SD15_RANDOM_VERSION = "sd15-random-v1"
CONTROLNET_FOLDERS = {"depth": "controlnet-depth", "normal": "controlnet-normal"}

# SD 1.5's published component configs (stable-diffusion-v1-5: unet, vae, text_encoder).
UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
            attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280), norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
           block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215)
TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)


def ensure_sd15_random(cache_dir: str | None = None) -> str:
    """The sd15-random folder, built on first use (a minute or two and ~7 GB of disk)."""
    from . import tiny_model

    return tiny_model._ensure(cache_dir, SD15_RANDOM_VERSION, build_sd15_random)


def build_sd15_random(path: str) -> None:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from . import tiny_model

    os.makedirs(path, exist_ok=True)
    tokenizer = tiny_model._tokenizer(os.path.join(path, "tokenizer"))
    vocabulary = tiny_model._byte_vocabulary()
    special = dict(bos_token_id=vocabulary["<|startoftext|>"], eos_token_id=vocabulary["<|endoftext|>"],
                   pad_token_id=vocabulary["<|endoftext|>"])
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET)
    torch.manual_seed(1)
    vae = AutoencoderKL(**VAE)
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT, **special))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    del pipe, vae, text_encoder
    for seed, folder in enumerate(CONTROLNET_FOLDERS.values(), start=10):
        _save_controlnet(unet, os.path.join(path, folder), seed, torch)


def _save_controlnet(unet, folder: str, seed: int, torch) -> None:
    from diffusers import ControlNetModel

    from .tiny_model import _make_control_picture_matter

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet)  # SD 1.5 ControlNets start as a copy of the UNet's encoder
    _make_control_picture_matter(controlnet, torch)
    controlnet.save_pretrained(folder, safe_serialization=True)
    del controlnet
