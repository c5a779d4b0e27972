"""Pictures in and out of the pipelines: padding to the latent grid, the VAE's latents of an
initial image, the request's noise checked, and cheap RGB previews of latents."""
from __future__ import annotations

import numpy as np

from ..errors import JobError

SIZE_MULTIPLE = 64  # the VAE's and the UNet's downsampling together: sizes are padded to this


def padded(size: int) -> int:
    return max(SIZE_MULTIPLE, -(-size // SIZE_MULTIPLE) * SIZE_MULTIPLE)


def fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad an image to (height, width) by repeating its edge; the result is cropped back later."""
    data = np.asarray(image, dtype=np.float32)
    if data.ndim == 2:
        data = data[..., None]
    pad_h, pad_w = max(0, height - data.shape[0]), max(0, width - data.shape[1])
    if pad_h or pad_w:
        data = np.pad(data, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return data[:height, :width]


def to_pil(image: np.ndarray):
    from PIL import Image

    data = image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=2)
    return Image.fromarray((np.clip(data, 0, 1) * 255 + 0.5).astype(np.uint8))


def preview(latents, height: int, width: int, family) -> np.ndarray:
    """A cheap RGB picture of the current latents, one pixel per 8x8 block of the requested
    frame (the padding added to reach a multiple of 64 is cut off)."""
    factor = family.vae_scale_factor
    rows, columns = -(-height // factor), -(-width // factor)
    data = latents[0, :, :rows, :columns].float().cpu().numpy().transpose(1, 2, 0)
    factors, bias = family.latent_rgb
    rgb = data @ np.asarray(factors) + np.asarray(bias)
    return (np.clip((rgb + 1.0) * 0.5, 0, 1) * 255).astype(np.uint8)


def encode_image(pipe, image: np.ndarray, family, torch, faithful: bool = False):
    """The VAE's latents of an RGB picture in [0, 1] (the distribution's mean, no sampling:
    the same picture always gives the same latents), scaled as the pipelines scale them.
    ``faithful``: compensated for the VAE's round-trip error (:func:`faithful_latents`)."""
    device, dtype, vae = pipe._execution_device, pipe.unet.dtype, pipe.vae
    if image.shape[2] < 3:  # grey (or grey and alpha): the grey on every channel, as to_pil does
        image = np.repeat(image[..., :1], 3, axis=2)
    # SDXL's VAE overflows in fp16: encode in fp32 as its pipelines do (not SD 1.5's, nor in bf16).
    upcast = family.vae_overflows_in_fp16 and dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    vae_dtype = torch.float32 if upcast else vae.dtype
    pixels = torch.from_numpy(np.ascontiguousarray(image[..., :3].transpose(2, 0, 1)))[None].to(device, vae_dtype)
    original = vae.dtype
    with torch.no_grad():
        if upcast:
            vae.to(torch.float32)
        try:
            latents = vae.encode(pixels * 2 - 1).latent_dist.mean
            if faithful:
                latents = faithful_latents(vae, pixels * 2 - 1, latents, torch)
        finally:
            if upcast:
                vae.to(original)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents)
        latents = (latents - mean) * vae.config.scaling_factor / std
    else:
        latents = latents * vae.config.scaling_factor
    return latents.to(dtype)


def faithful_latents(vae, pixels, latents, torch):
    """Latents that decode closer to ``pixels`` (in [-1, 1]) than the encoder's own
    (Rerender-A-Video's fidelity-oriented encoding).

    A VAE changes a picture on its way through (colour, contrast, detail); a feedback loop
    re-encodes its last output every frame, so the change builds up over a shot. Encoding the
    decoded picture again measures that change in latent space, and subtracting it once
    compensates for it. It overshoots where the decoder clips colours, so each latent pixel
    keeps the compensation only where it brings the decoded picture closer. Costs two decodes
    and an encode."""
    decoded = vae.decode(latents).sample.clamp(-1, 1)
    compensated = 2 * latents - vae.encode(decoded).latent_dist.mean
    redecoded = vae.decode(compensated).sample.clamp(-1, 1)

    def error(picture):  # mean absolute error over each latent pixel's block
        return torch.nn.functional.adaptive_avg_pool2d((picture - pixels).abs().mean(1, keepdim=True).float(),
                                                       latents.shape[-2:])

    return torch.where(error(redecoded) < error(decoded), compensated, latents)


def checked_noise(noise, height: int, width: int, factor: int, channels: int):
    """The request's latent noise, checked: float32 (rows, columns, channels) at the latent size
    of the requested frame (before padding), finite."""
    if noise is None:
        return None
    expected = (-(-height // factor), -(-width // factor), channels)
    if not isinstance(noise, np.ndarray) or noise.dtype != np.float32:
        kind = noise.dtype.name if isinstance(noise, np.ndarray) else type(noise).__name__
        raise JobError("bad_request", f"noise must be a float32 array, not {kind}")
    if tuple(noise.shape) != expected:
        raise JobError("bad_request", f"noise must have the shape {expected} (ceil(height/{factor}), "
                       f"ceil(width/{factor}), {channels} latent channels) for a {width}x{height} frame, "
                       f"not {tuple(noise.shape)}")
    if not np.isfinite(noise).all():
        raise JobError("bad_request", "noise must be finite (no NaN or infinity)")
    return noise
