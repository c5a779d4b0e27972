"""Silk's per-frame overhead against a plain diffusers call, on the full-size ``sd15-random``.

The same model (SD 1.5's architecture, two ControlNets), the same settings (image-to-image at
strength 1, Euler, guidance 7, a fixed seed, two control pictures) and the same frame size, in
the same run: a plain ``StableDiffusionControlNetImg2ImgPipeline`` call in a child process, and
Silk's path (client -> worker process -> backend -> the same pipeline class, with step
previews, as F12 sends it). Both stay loaded (their weights are the same files, mapped once
from the page cache) and paint in turns, plain, Silk, Silk, plain, ..., so that a change in the
machine's load falls on both alike; each paints one warm-up frame first. Reports the median seconds per
frame of each, their ratio (goal: <= 1.05), each process's peak resident memory, and per frame
the kernel time and page faults of the process that paints (Linux; where Silk's worker once
lost 1.5 s a step to refaulting freed memory, see bridge/allocator.py).

    .venv/bin/python tools/bench_overhead.py [--size 256] [--steps 4] [--frames 3] [--threads N]

``--threads N`` runs both sides with N torch threads (OMP_NUM_THREADS); with 1 the comparison
holds up better on a machine other work is loading (two OpenMP threads that spin at every
barrier lose far more to other processes than one). The load average is printed at the start
and the end.

Builds sd15-random into the model cache on first use (~7 GB, a few minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SEED, GUIDANCE, STRENGTH, PROMPT = 7, 7.0, 1.0, "a stone cube on a meadow"


def inputs(size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    init = rng.random((size, size, 3), dtype=np.float32)
    controls = [rng.random((size, size, 3), dtype=np.float32) for _ in range(2)]
    return init, controls


def plain_child(args) -> None:
    """The plain diffusers call, as its documentation writes it; prints JSON."""
    import torch
    from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionControlNetImg2ImgPipeline
    from PIL import Image

    from silk.bridge import tiny_model

    folder = tiny_model.ensure_sd15_random()
    controlnets = [ControlNetModel.from_pretrained(os.path.join(folder, sub), dtype=torch.float32)
                   for sub in ("controlnet-depth", "controlnet-normal")]
    pipe = StableDiffusionControlNetImg2ImgPipeline.from_pretrained(
        folder, controlnet=controlnets, dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=False)
    pipe.set_progress_bar_config(disable=True)
    init, controls = inputs(args.size)
    to_pil = lambda a: Image.fromarray((a * 255 + 0.5).astype("uint8"))  # noqa: E731

    def frame():
        pipe(PROMPT, image=to_pil(init), control_image=[to_pil(c) for c in controls], strength=STRENGTH,
             num_inference_steps=args.steps, guidance_scale=GUIDANCE, output_type="np",
             generator=torch.Generator().manual_seed(SEED), height=args.size, width=args.size)

    def kernel():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_stime, usage.ru_minflt

    paint = measured(frame, kernel)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:  # one frame per "frame" line, until anything else
        if line.strip() != "frame":
            break
        print(json.dumps(paint()), flush=True)
    print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), flush=True)


def measured(frame, kernel):
    """``frame`` timed: a function that paints one and returns its seconds and its (kernel
    seconds, page faults) from ``kernel()``'s running totals."""
    def paint() -> dict:
        before = kernel()
        started = time.perf_counter()
        frame()
        took = time.perf_counter() - started
        return {"time": took, "kernel": [after - was for after, was in zip(kernel(), before)]}

    return paint


def process_kernel(pid: int):
    """(kernel seconds, minor page faults) of process ``pid`` so far, from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK"), int(fields[7])


class PlainSide:
    """The plain call in a child process that paints a frame per request."""

    name = "plain"

    def __init__(self, args):
        command = [sys.executable, __file__, "--plain-child", f"--size={args.size}", f"--steps={args.steps}"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=dict(os.environ, **threads_env(args)))
        self._answer()

    def _answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"the plain side stopped (exit code {self.process.wait()})")

    def frame(self) -> dict:
        self.process.stdin.write("frame\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> int:
        """Ends the child; its peak resident memory."""
        self.process.stdin.write("done\n")
        self.process.stdin.flush()
        peak = self._answer()["peak_rss"]
        self.process.wait(timeout=60)
        return peak


class SilkSide:
    """Silk's path as F12 takes it: the client, the worker process, step previews."""

    name = "silk"

    def __init__(self, args):
        from silk.bridge.client import WorkerClient, WorkerConfig

        log_path = os.path.join(tempfile.gettempdir(), "silk-bench-overhead.log")
        self.client = WorkerClient(WorkerConfig(python=sys.executable, env=threads_env(args), log_path=log_path))
        self.model = {"source": "sd15-random", "precision": "fp32"}
        self.args = args
        init, controls = inputs(args.size)
        self.client.load_model(self.model)

        def frame():
            self.client.generate(self.model, PROMPT, [{"image": c} for c in controls], args.size, args.size,
                                 seed=SEED, steps=args.steps, guidance=GUIDANCE, scheduler="euler", init_image=init,
                                 strength=STRENGTH, preview=True, timeout=3600)

        self.frame = measured(frame, lambda: process_kernel(self.client.worker_pid))

    def close(self) -> int:
        try:
            with open(f"/proc/{self.client.worker_pid}/status") as handle:
                return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM"))
        finally:
            self.client.stop()


def threads_env(args) -> dict:
    return {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads on both sides (default: torch's own choice)")
    parser.add_argument("--plain-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from tools.blender_env import load_silk

    load_silk(register=False)
    if args.plain_child:
        return plain_child(args)
    from silk.bridge import tiny_model

    print(f"sd15-random: {tiny_model.ensure_sd15_random()}", flush=True)
    load = os.getloadavg()
    sides = [PlainSide(args)]
    results = {"plain": {"frames": []}, "silk": {"frames": []}}
    try:
        sides.append(SilkSide(args))
        for side in sides:
            side.frame()  # warm-up: first-call allocations and kernel choices
        for turn in range(args.frames):  # plain, Silk, Silk, plain, ...: load changes fall on both alike
            for side in sides if turn % 2 == 0 else sides[::-1]:
                results[side.name]["frames"].append(side.frame())
                print(f"{side.name} {results[side.name]['frames'][-1]['time']:.2f} s", flush=True)
    finally:
        for side in sides:
            results[side.name]["peak_rss"] = side.close()
    report(args, results["plain"], results["silk"], (load, os.getloadavg()))


def report(args, plain: dict, ours: dict, loads: tuple) -> None:
    for data in (plain, ours):
        data["times"] = [frame["time"] for frame in data["frames"]]
        data["kernel"] = [frame["kernel"] for frame in data["frames"]]
    plain_time, silk_time = statistics.median(plain["times"]), statistics.median(ours["times"])
    threads, machine = args.threads or "default", platform.processor() or platform.machine()
    print(f"\n{args.size}x{args.size}, {args.steps} steps, two ControlNets, fp32, {args.frames} frames each, in turns, "
          f"after a warm-up; {machine}, {os.cpu_count()} cores, torch threads {threads}; "
          "load average (1, 5, 15 min) " + " at the start, ".join(", ".join(f"{x:.2f}" for x in load) for load in loads)
          + " at the end")
    width = 8 * args.frames + 2
    print(f"{'':24}{'s/frame (median)':>18}{'all frames':>{width}}{'peak RSS':>12}{'kernel s/frame':>16}"
          f"{'faults/frame':>14}")
    for label, data, median in (("plain diffusers", plain, plain_time), ("Silk (client+worker)", ours, silk_time)):
        frames = ", ".join(f"{t:.2f}" for t in data["times"])
        kernel = statistics.median(cost[0] for cost in data["kernel"])
        faults = statistics.median(cost[1] for cost in data["kernel"])
        print(f"{label:24}{median:>18.3f}{frames:>{width}}{data['peak_rss'] / 2 ** 30:>10.2f} GiB{kernel:>16.2f}"
              f"{faults:>14,.0f}")
    print(f"Silk / plain: {silk_time / plain_time:.3f}x (goal <= 1.05)")


if __name__ == "__main__":
    main()
