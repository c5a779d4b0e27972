"""Measure the latent walks' noise (engine/latent_walk.py) at SD 1.5's 512x512 latent size.

DRIFT: the correlation of consecutive frames' noise must equal cos(angle) within 0.02.
LOOP: the step from the last frame's noise to the first's must equal the median step
within 10%. Also: each field's mean and spread (unit Gaussian) and the time to compute a
frame's noise in order and alone (a resumed render walks the chain from the shot start).
Prints a Markdown table for docs/benchmarks.md; exits 1 when a figure is out of bounds.

    .venv/bin/python tools/bench_latent_walk.py   (make bench-latent-walk)
"""
from __future__ import annotations

import math
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools.blender_env import load_silk  # noqa: E402

load_silk(register=False)
from silk.engine import latent_walk  # noqa: E402

SHAPE = (64, 64, 4)  # 512x512 frame
FRAMES = 48
DRIFT_TOLERANCE = 0.02
LOOP_TOLERANCE = 0.10


def drift_rows() -> tuple[list, bool]:
    rows, ok = [], True
    for degrees in (2, 5, 10, 30, 60, 90):
        angle = math.radians(degrees)
        walk = latent_walk.DriftWalk()
        started = time.perf_counter()
        noises = [walk.noise(1234, 1, frame, SHAPE, lambda _f: angle) for frame in range(1, FRAMES + 1)]
        in_order = (time.perf_counter() - started) / FRAMES
        started = time.perf_counter()
        latent_walk.DriftWalk().noise(1234, 1, FRAMES, SHAPE, lambda _f: angle)
        alone = time.perf_counter() - started
        correlations = [latent_walk.correlation(a, b) for a, b in zip(noises, noises[1:])]
        measured = float(np.mean(correlations))
        error = abs(measured - math.cos(angle))
        stacked = np.stack(noises).astype(np.float64)
        ok &= error <= DRIFT_TOLERANCE
        rows.append(f"| DRIFT {degrees} deg | {math.cos(angle):.4f} | {measured:.4f} (min {min(correlations):.4f}, "
                    f"max {max(correlations):.4f}) | {error:.4f} | {stacked.mean():+.4f} / {stacked.std():.4f} | "
                    f"{in_order * 1000:.2f} ms / {alone * 1000:.0f} ms |")
    return rows, ok


def loop_rows() -> tuple[list, bool]:
    rows, ok = [], True
    for turns, length in ((1, FRAMES), (2, FRAMES), (1, 12)):
        started = time.perf_counter()
        noises = [latent_walk.loop_noise(1234, 1, length, frame, SHAPE, turns) for frame in range(1, length + 1)]
        per_frame = (time.perf_counter() - started) / length
        steps = latent_walk.step_sizes(noises)
        median = float(np.median(steps[:-1]))
        ratio = steps[-1] / median
        stacked = np.stack(noises).astype(np.float64)
        ok &= abs(ratio - 1.0) <= LOOP_TOLERANCE
        rows.append(f"| LOOP {turns} turn(s), {length} frames | median step {median:.4f} | last->first "
                    f"{steps[-1]:.4f} | ratio {ratio:.4f} | {stacked.mean():+.4f} / {stacked.std():.4f} | "
                    f"{per_frame * 1000:.2f} ms |")
    return rows, ok


def main() -> int:
    print(f"Latent walks, noise {SHAPE} (512x512 frames), {FRAMES}-frame shots; {platform.processor() or 'cpu'}, "
          f"{os.cpu_count()} cores, numpy {np.__version__}\n")
    drift, drift_ok = drift_rows()
    print("| Mode | cos(angle) | consecutive correlation, mean over the shot | error | all values mean / std | "
          "time per frame in order / frame 48 alone |")
    print("|---|---|---|---|---|---|")
    print("\n".join(drift))
    loop, loop_ok = loop_rows()
    print("\n| Mode | median consecutive step (RMS) | last-to-first step | ratio | all values mean / std | "
          "time per frame |")
    print("|---|---|---|---|---|---|")
    print("\n".join(loop))
    print(f"\nDRIFT within {DRIFT_TOLERANCE}: {'yes' if drift_ok else 'NO'}; LOOP within "
          f"{LOOP_TOLERANCE:.0%}: {'yes' if loop_ok else 'NO'}")
    return 0 if drift_ok and loop_ok else 1


if __name__ == "__main__":
    sys.exit(main())
