"""Per-step latent guides: what edits the latents after each denoising step (docs/worker.md,
"Temporal feedback"). Each guide has ``apply(latents, step, total) -> latents``; a new one
(and a new request field for it) needs a class here and a line in ``guides_for``."""
from __future__ import annotations

import numpy as np


class NoisedInit:
    """The initial image's latents noised, with the noise that started the run, to the noise
    level the latents have after a step of the run. ``begin`` is where the run's (truncated)
    schedule starts in the scheduler's timesteps."""

    def __init__(self, init_latents, noise, scheduler, begin: int):
        self.init_latents = init_latents
        self.noise = noise
        self.scheduler = scheduler
        self.begin = begin
        self._cached = (None, None)

    def after(self, step: int, total: int):
        if self._cached[0] == step:
            return self._cached[1]
        if step + 1 >= total:
            noised = self.init_latents
        else:
            timesteps = self.scheduler.timesteps
            index = min(self.begin + step + 1, len(timesteps) - 1)
            # Schedulers that count steps (Euler, DPM-Solver, UniPC) take the level from their step
            # index, the others (DDIM, LCM) from this timestep: the same level either way.
            noised = self.scheduler.add_noise(self.init_latents, self.noise, timesteps[index:index + 1])
        self._cached = (step, noised)
        return noised


class StrengthMask:
    """Per-pixel denoising strength (differential diffusion): a pixel with strength s
    follows the noised initial image until the last s of the schedule, then denoises
    freely. Strength 1 = generate anew, 0 = keep the initial image."""

    def __init__(self, target: NoisedInit, mask: np.ndarray, strength: float, factor: int, torch):
        self.target = target
        self.init_latents = target.init_latents
        latents = target.init_latents
        small = mask[::factor, ::factor, 0] if mask.ndim == 3 else mask[::factor, ::factor]
        self.mask = torch.from_numpy(np.ascontiguousarray(np.clip(small, 0, 1), dtype=np.float32))[None, None].to(
            latents.device, latents.dtype)
        self.strength = max(float(strength), 1e-6)
        self.torch = torch

    def apply(self, latents, step, total):
        done = (step + 1) / total  # fraction of this run's steps completed
        # A pixel joins the free denoising once the schedule's remaining fraction is within its strength.
        keep = (self.mask / self.strength) <= (1.0 - done)
        if not bool(keep.any()):
            return latents
        return self.torch.where(keep, self.target.after(step, total).to(latents.dtype), latents)


class Fusion:
    """Occlusion-aware latent fusion: after every step, the latents of pixels visible in the
    previous frame move ``amount`` of the way to the initial image's latents noised to the same
    level; pixels the previous frame did not see denoise freely. After the fraction ``end`` of the
    steps fusion stops, so the last steps refine the frame instead of pulling it toward the
    (resampled, softer) previous frame."""

    def __init__(self, target: NoisedInit, visible, amount: float, torch, end: float = 1.0):
        self.target = target
        self.visible = visible  # (1, 1, h, w) bool on the latent grid, or None: every pixel
        self.amount = float(amount)
        self.end = float(end)
        self.torch = torch

    def apply(self, latents, step, total):
        if (step + 1) / total > self.end + 1e-9:
            return latents
        target = self.target.after(step, total).to(latents.dtype)
        pulled = self.torch.lerp(latents, target, self.amount)  # exactly ``target`` at amount 1
        if self.visible is None:
            return pulled
        return self.torch.where(self.visible, pulled, latents)


def visible_latents(mask: np.ndarray | None, factor: int, height: int, width: int, device, torch):
    """Which latent pixels the previous frame saw: those whose every frame pixel has a
    strength below 1 (so a silhouette's latent pixel is repainted). ``mask`` is at the padded
    frame size; None (no mask) means every pixel was visible."""
    if mask is None:
        return None
    values = np.asarray(mask, dtype=np.float32).reshape(height, width)
    blocks = values.reshape(height // factor, factor, width // factor, factor).max(axis=(1, 3))
    return torch.from_numpy(np.ascontiguousarray(blocks < 1.0))[None, None].to(device)


def guides_for(request, target: NoisedInit, mask: np.ndarray | None, strength: float, factor: int,
               padded: tuple, torch) -> list:
    """The guides a request asks for, in the order they apply (strength mask, then fusion).
    ``mask`` is the strength mask at the padded frame size (height, width, 1), or None."""
    guides = []
    if mask is not None:
        guides.append(StrengthMask(target, mask, strength, factor, torch))
    if request.fusion > 0:
        visible = visible_latents(mask, factor, padded[0], padded[1], target.init_latents.device, torch)
        guides.append(Fusion(target, visible, request.fusion, torch, end=request.fusion_end))
    return guides


def apply_all(guides: list, latents, step: int, total: int):
    for guide in guides:
        latents = guide.apply(latents, step, total)
    return latents
