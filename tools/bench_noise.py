"""Benchmark: does Silk's warped noise travel with the motion and stay white Gaussian noise?

A camera slowly pans (1 px right and 0.25 px down per frame) while zooming in 1.3x over 16
frames, over a 512x512 frame (64x64 latent pixels); the exact motion (Vector pass convention) is
computed analytically. After 16 frames it reports, for Silk's particle warping (engine/noise.py)
and for the nearest-latent-pixel re-sampling Silk used before (for comparison):

- per-channel standard deviation (white N(0, 1) noise: 1),
- lag-1 spatial autocorrelation of the latent (0 for white noise),
- fraction of unique values (1 when no sample is duplicated),
- correlation between a surface point's latent noise at frame 16 and at frame 8: between the
  latent pixels holding it (``nearest``, beside the ceiling ideal integral noise reaches under the
  same motion) and alignment-aware (``overlap``); high = the noise travels with the surface,
- milliseconds per frame.

    .venv/bin/python tools/bench_noise.py [--size 512] [--frames 16] [--zoom 1.3]
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from engine import noise  # noqa: E402  (the checkout's engine package, no bpy)

PAN = (1.0, 0.25)  # frame pixels per frame: right, down (the scene moves the other way)


def camera_motion(size: int, frames: int, zoom: float):
    """Per frame: the map from frame t's pixel positions to frame t-1's (x right, y down)."""
    centre = (size - 1) / 2
    per_frame = zoom ** (1.0 / frames)

    def to_previous(x, y):
        return centre + (x + PAN[0] - centre) / per_frame, centre + (y + PAN[1] - centre) / per_frame

    return to_previous


def vector_pass(size: int, to_previous) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    x, y = to_previous(cols, rows)
    vector = np.zeros((size, size, 4), dtype=np.float32)
    vector[..., 0] = x - cols
    vector[..., 1] = -(y - rows)  # +y up
    return vector


def nearest_resampling(latent, vector, rng):
    """What Silk did before: latent noise re-sampled at each latent pixel's centre, nearest."""
    from engine import temporal

    return temporal.warp_noise(latent, vector, np.zeros(vector.shape[:2], dtype=np.float32), rng)


def _preimages(latent: int, to_previous, steps: int):
    """Each latent pixel of frame t as a rectangle of frame t-steps, in latent units (the motion
    is a pan plus a zoom: rectangles stay axis-aligned)."""
    edges = np.arange(latent + 1) * noise.LATENT_FACTOR - 0.5
    x0, y0 = np.meshgrid(edges[:-1], edges[:-1])
    x1, y1 = np.meshgrid(edges[1:], edges[1:])
    for _ in range(steps):
        x0, y0 = to_previous(x0, y0)
        x1, y1 = to_previous(x1, y1)
    return [(v + 0.5) / noise.LATENT_FACTOR for v in (x0, y0, x1, y1)]


def surface_correlation(now, earlier, to_previous, steps: int) -> dict:
    """How the noise of a surface point now relates to its noise ``steps`` frames earlier.

    ``nearest``: the issue's measure, correlation between the latent pixel holding a surface point
    now and the one holding it then (over every latent pixel's centre still in the frame).
    ``nearest_ceiling``: the same measure for ideal integral noise (HIWYN's continuous white noise)
    under the same motion: a latent pixel's area then only partly overlaps the one holding its
    centre, so even ideal travelling noise stays below 1 (about 0.44 for random alignment).
    ``overlap``: correlation between the latent now and the earlier latents weighted by how much
    of each the pixel's area covered then (alignment-aware; 1 for a perfect carry)."""
    latent = now.shape[0]
    x0, y0, x1, y1 = _preimages(latent, to_previous, steps)
    inside = (x0 >= 0) & (y0 >= 0) & (x1 <= latent) & (y1 <= latent)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    holder_x, holder_y = np.floor(cx).astype(int), np.floor(cy).astype(int)
    area = (x1 - x0) * (y1 - y0)
    prediction = np.zeros_like(now, dtype=np.float64)
    holder_overlap = np.zeros_like(area)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            cell_x, cell_y = holder_x + dx, holder_y + dy
            overlap = (np.clip(np.minimum(x1, cell_x + 1) - np.maximum(x0, cell_x), 0, None)
                       * np.clip(np.minimum(y1, cell_y + 1) - np.maximum(y0, cell_y), 0, None))
            valid = inside & (cell_x >= 0) & (cell_x < latent) & (cell_y >= 0) & (cell_y < latent)
            prediction[valid] += overlap[valid, None] * earlier[cell_y[valid], cell_x[valid]]
            if dx == 0 and dy == 0:
                holder_overlap = overlap
    held = earlier[np.clip(holder_y, 0, latent - 1), np.clip(holder_x, 0, latent - 1)]
    return {
        "nearest": float(np.corrcoef(now[inside].ravel(), held[inside].ravel())[0, 1]),
        "nearest_ceiling": float((holder_overlap / np.sqrt(area))[inside].mean()),
        "overlap": float(np.corrcoef(now[inside].ravel(), prediction[inside].ravel())[0, 1]),
    }


def run(method: str, size: int, frames: int, zoom: float, seed: int = 7, subpixels: int = noise.SUBPIXELS) -> dict:
    to_previous = camera_motion(size, frames, zoom)
    vector = vector_pass(size, to_previous)
    occlusion = np.zeros((size, size), dtype=np.float32)
    field = noise.shot_noise(size, size, seed, subpixels)
    latents = [field.latent()]
    seconds = 0.0
    for frame in range(1, frames + 1):
        rng = noise.frame_rng(seed, frame)
        started = time.perf_counter()
        if method == "particles":
            field = noise.warp_field(field, vector, occlusion, rng)
            latents.append(field.latent())
        else:
            latents.append(nearest_resampling(latents[-1], vector, rng))
        seconds += time.perf_counter() - started
    last = latents[-1]
    return {
        "std_per_channel": [round(float(v), 3) for v in last.reshape(-1, last.shape[2]).std(axis=0)],
        "lag1_autocorrelation": round(noise.lag1_autocorrelation(last), 4),
        "unique_fraction": round(noise.unique_fraction(last), 4),
        "surface_correlation_8_frames": {key: round(value, 3) for key, value in surface_correlation(
            last, latents[frames - 8], to_previous, 8).items()},
        "ms_per_frame": round(1000 * seconds / frames, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--zoom", type=float, default=1.3)
    parser.add_argument("--subpixels", type=int, default=noise.SUBPIXELS, help="particles per latent pixel, per axis")
    args = parser.parse_args()
    results = {method: run(method, args.size, args.frames, args.zoom, subpixels=args.subpixels)
               for method in ("particles", "nearest")}
    pan_only = {method: run(method, args.size, args.frames, 1.0, subpixels=args.subpixels)
                for method in ("particles", "nearest")}
    print(json.dumps({"size": args.size, "frames": args.frames, "zoom": args.zoom, "pan_px_per_frame": PAN,
                      "subpixels": args.subpixels, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                      "results": results, "pan_only": pan_only}, indent=2))
    warped = results["particles"]
    passed = (all(0.9 <= v <= 1.1 for v in warped["std_per_channel"]) and warped["lag1_autocorrelation"] < 0.1
              and warped["unique_fraction"] >= 0.9 and warped["surface_correlation_8_frames"]["nearest"] > 0.5)
    print("targets (std 0.9-1.1, lag-1 < 0.1, unique >= 90%, 8-frame surface correlation > 0.5):",
          "met" if passed else "NOT met")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
