"""Benchmark: the `tiny` model on one CPU core, in-process, 128x128, two ControlNets, Euler,
guidance 7; median of 5 after a warm-up, for 10 and 20 steps.

    SILK_MODEL_CACHE=<folder> .venv/bin/python tools/bench_tiny.py
"""
import os
import statistics
import sys
import threading
import time

os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tools.blender_env import load_silk  # noqa: E402


def main() -> None:
    load_silk(register=False)
    from silk.bridge.diffusion import DiffusionBackend

    torch.set_num_threads(1)
    backend = DiffusionBackend(cache_dir=os.environ.get("SILK_MODEL_CACHE"))
    rng = np.random.default_rng(0)
    units = [{"image": rng.random((128, 128, 3), dtype=np.float32)} for _ in range(2)]
    for steps in (10, 20):
        request = {"model": {"source": "tiny"}, "prompt": "a room", "steps": steps, "seed": 1, "width": 128,
                   "height": 128, "guidance": 7.0, "scheduler": "euler"}

        def run():
            backend.generate(request, {}, units, progress=lambda *a: None, cancel=threading.Event())

        run()  # warm-up
        times = []
        for _ in range(5):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        print(f"tiny 128x128, {steps} steps, one core: {statistics.median(times):.3f} s (median of 5)")


if __name__ == "__main__":
    main()
