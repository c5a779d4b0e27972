"""``make gpu-check``: what Silk's worker does on an NVIDIA GPU, in one command, offline.

Runs Silk's diffusion backend (the worker's code, in this process) on ``sd15-random`` (SD 1.5's
full architecture with random weights, built locally: no download) with two ControlNets and
checks, printing one table row each:

- fp16 and bf16: every component of both pipelines is in that precision (after loading and after
  painting), and the time per frame and peak VRAM at 512x512, 20 steps;
- attention slicing, and model CPU offload: they load, paint, and what they cost;
- VAE tiling: at 1024x1024 (below that a frame fits one tile);
- out of memory: with the GPU capped to little more than the model, a 2048x2048 frame fails with
  Silk's ``out_of_memory`` error, and the same backend then paints a 512x512 frame.

Finishes in a few minutes on one GPU (plus building sd15-random once, ~7 GB of disk). Without
CUDA it stops at once and says why. Record what it prints in docs/benchmarks.md.

    .venv/bin/python tools/gpu_check.py [--frames 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIZE, STEPS = 512, 20
COLUMNS = (("check", 26), ("precision", 10), ("size", 10), ("s/frame", 9), ("peak VRAM", 11), ("result", 0))


class GpuCheckError(Exception):
    """Why the check cannot run here, worded for the person who ran it."""


def require_cuda(torch) -> str:
    """The GPU's name, or GpuCheckError naming what is missing."""
    if not torch.cuda.is_available():
        build = torch.__version__
        hint = ("this torch is a CPU-only build: install a CUDA build (Silk's 'Install worker environment' picks "
                "one for the card)" if "+cpu" in build or torch.version.cuda is None else
                "torch was built with CUDA but sees no GPU: check the NVIDIA driver (nvidia-smi)")
        raise GpuCheckError(f"make gpu-check needs an NVIDIA GPU with CUDA; {hint}. torch {build}")
    return torch.cuda.get_device_name(0)


def format_table(rows: list) -> str:
    """The rows ({column: value}) as a fixed-width text table; missing values print as '-'."""
    def cell(row, name):
        value = row.get(name)
        if value is None:
            return "-"
        if name == "s/frame":
            return f"{value:.3f}"
        if name == "peak VRAM":
            return f"{value / 2 ** 30:.2f} GiB"
        return str(value)

    lines = ["".join(f"{name:<{width}}" if width else name for name, width in COLUMNS)]
    lines.append("-" * max(len(lines[0]), 80))
    for row in rows:
        lines.append("".join(f"{cell(row, name):<{width}}" if width else cell(row, name) for name, width in COLUMNS))
    return "\n".join(lines)


class Checker:
    def __init__(self, torch, frames: int):
        from silk.bridge.diffusion import DiffusionBackend

        self.torch, self.frames = torch, frames
        self.backend = DiffusionBackend()
        self.rows = []

    def model(self, precision: str, **options) -> dict:
        return dict({"source": "sd15-random", "device": "cuda", "precision": precision}, **options)

    def paint(self, model: dict, size: int):
        import numpy as np

        rng = np.random.default_rng(0)
        units = [{"image": rng.random((size, size, 3), dtype=np.float32)} for _ in range(2)]
        request = {"model": model, "prompt": "a stone cube on a meadow", "width": size, "height": size,
                   "steps": STEPS, "scheduler": "euler", "seed": 1}
        return self.backend.generate(request, {}, units, progress=lambda *a: None, cancel=threading.Event())

    def run(self, check: str, precision: str, size: int = SIZE, **options) -> None:
        torch = self.torch
        model = self.model(precision, **options)
        row = {"check": check, "precision": precision, "size": f"{size}x{size}"}
        try:
            info = self.backend.load(model)
            expected = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[precision]
            wrong = {name: c["dtype"] for name, c in info["components"].items() if c["dtype"] != expected}
            self.paint(model, size)  # warm-up
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            for _ in range(self.frames):
                self.paint(model, size)
            torch.cuda.synchronize()
            row["s/frame"] = (time.perf_counter() - started) / self.frames
            row["peak VRAM"] = torch.cuda.max_memory_allocated()
            after = {name: c["dtype"] for name, c in self.backend.status()["loaded"][0]["components"].items()}
            wrong.update({name: dtype for name, dtype in after.items() if dtype != expected})
            row["result"] = "ok" if not wrong else f"FAIL: not {expected}: {wrong}"
        except Exception as error:  # one failed check must not hide the others
            row["result"] = f"FAIL: {type(error).__name__}: {str(error)[:200]}"
        self.rows.append(row)

    def out_of_memory(self) -> None:
        from silk.bridge.errors import JobError

        torch = self.torch
        row = {"check": "out of memory + recovery", "precision": "fp16", "size": "2048x2048"}
        model = self.model("fp16")
        try:
            self.backend.load(model)
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_allocated() + 2 ** 30) / total))
            try:
                self.paint(model, 2048)
                row["result"] = "FAIL: a 2048x2048 frame fitted in the model + 1 GiB"
            except JobError as error:
                row["result"] = f"reported ({error.code})" if error.code == "out_of_memory" else f"FAIL: {error}"
            finally:
                torch.cuda.set_per_process_memory_fraction(1.0)
            self.paint(model, SIZE)
            row["result"] += "; then painted 512x512"
        except Exception as error:
            row["result"] = f"FAIL: {type(error).__name__}: {str(error)[:200]}"
        self.rows.append(row)


def main() -> int:
    parser = argparse.ArgumentParser(description="Silk's worker on an NVIDIA GPU: precisions, memory options, "
                                                 "out-of-memory recovery, time and VRAM per frame")
    parser.add_argument("--frames", type=int, default=3, help="timed frames per check (after a warm-up)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random-weight models only: nothing is downloaded
    import torch

    try:
        gpu = require_cuda(torch)
    except GpuCheckError as error:
        print(f"gpu-check: {error}", file=sys.stderr)
        return 2
    from tools.blender_env import load_silk

    load_silk(register=False)
    from silk.bridge import tiny_model

    print(f"{gpu}; torch {torch.__version__}; sd15-random at {tiny_model.ensure_sd15_random()}", flush=True)
    checker = Checker(torch, args.frames)
    checker.run("fp16", "fp16")
    if torch.cuda.is_bf16_supported():
        checker.run("bf16", "bf16")
    checker.run("attention slicing", "fp16", attention_slicing=True)
    checker.run("model CPU offload", "fp16", cpu_offload=True)
    checker.run("VAE tiling", "fp16", size=1024, vae_tiling=True)
    checker.out_of_memory()
    print(f"\nsd15-random, two ControlNets, {STEPS} steps, euler; {args.frames} timed frames per row\n")
    print(format_table(checker.rows))
    return 1 if any(str(row.get("result", "")).startswith("FAIL") for row in checker.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
