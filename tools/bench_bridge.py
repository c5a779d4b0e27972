"""Benchmark the bridge: frame round trips and per-frame generation overhead.

    .venv/bin/python tools/bench_bridge.py [--repeats 20]

1. A 1024x1024 RGBA float32 frame (16 MiB) sent to the worker and back:
   - through the bridge: written in place into a shared buffer (how the engine hands
     over guides), echoed by the worker into a second shared buffer, read as a view;
   - the same when the frame is first copied into the shared buffer;
   - through a pickled multiprocessing.Queue to a child process and back (what
     existing add-ons do);
   - a plain in-memory copy of the same bytes (np.copyto), the floor.
2. Generating a 128x128 frame with the `tiny` model (8 steps, 2 ControlNets) through
   the bridge vs calling the same backend in this process with the same settings.
Medians of ``--repeats`` runs after a warm-up.
"""
import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from tools.blender_env import load_silk  # noqa: E402


def _echo_queue(inbox, outbox):
    while True:
        item = inbox.get()
        if item is None:
            return
        outbox.put(item)


def median_time(function, repeats):
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    load_silk(register=False)
    from silk.bridge.client import WorkerClient, WorkerConfig
    from silk.bridge.diffusion import DiffusionBackend

    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version()}
    frame = np.random.default_rng(0).random((1024, 1024, 4), dtype=np.float32)
    cache = os.environ.get("SILK_MODEL_CACHE")
    client = WorkerClient(WorkerConfig(python=sys.executable, env={"HF_HUB_OFFLINE": "1"}))
    client.ensure_started()
    try:
        shared_in, in_descriptor = client.buffer(frame.shape, np.float32, name="bench-in")
        np.copyto(shared_in, frame)
        _, out_descriptor = client.buffer(frame.shape, np.float32, name="bench-out")

        def bridge_in_place():
            result = client.echo(in_descriptor, output=out_descriptor)
            assert result.shape == frame.shape

        def bridge_with_copy():
            np.copyto(shared_in, frame)
            client.echo(in_descriptor, output=out_descriptor)

        results["bridge_in_place"] = median_time(bridge_in_place, args.repeats)[0]
        results["bridge_with_copy"] = median_time(bridge_with_copy, args.repeats)[0]
        assert np.array_equal(client.frames.view(out_descriptor), frame)

        context = multiprocessing.get_context("spawn")
        inbox, outbox = context.Queue(), context.Queue()
        child = context.Process(target=_echo_queue, args=(inbox, outbox))
        child.start()

        def pickled_queue():
            inbox.put(frame)
            echoed = outbox.get(timeout=60)
            assert echoed.shape == frame.shape

        results["pickled_queue"] = median_time(pickled_queue, args.repeats)[0]
        inbox.put(None)
        child.join(timeout=10)

        target = np.empty_like(frame)
        results["memory_copy"] = median_time(lambda: np.copyto(target, frame), args.repeats)[0]

        # Generation: the same tiny model, settings and thread count on both sides.
        rng = np.random.default_rng(1)
        controls = [rng.random((128, 128, 3), dtype=np.float32) for _ in range(2)]
        settings = dict(steps=8, seed=5, guidance=7.0, scheduler="euler")
        model = {"source": "tiny"}
        client.load_model(model)

        def through_bridge():
            client.generate(model, "a cat", [{"image": c} for c in controls], 128, 128, **settings)

        backend = DiffusionBackend(cache_dir=cache)
        request = dict(settings, model=model, prompt="a cat", width=128, height=128, negative_prompt="")

        def in_process():
            backend.generate(request, {}, [{"image": c} for c in controls], progress=lambda *a: None,
                             cancel=threading.Event())

        generate_repeats = max(5, args.repeats // 2)
        results["generate_bridge"] = median_time(through_bridge, generate_repeats)[0]
        results["generate_in_process"] = median_time(in_process, generate_repeats)[0]
    finally:
        client.stop()

    results["queue_over_bridge"] = results["pickled_queue"] / results["bridge_in_place"]
    results["bridge_over_copy"] = results["bridge_in_place"] / results["memory_copy"]
    results["bridge_with_copy_over_copy"] = results["bridge_with_copy"] / results["memory_copy"]
    results["generate_ratio"] = results["generate_bridge"] / results["generate_in_process"]
    results = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in results.items()}
    print(json.dumps(results, indent=2))
    print(f"16 MiB frame round trip: bridge {results['bridge_in_place'] * 1e3:.2f} ms "
          f"({results['bridge_with_copy'] * 1e3:.2f} ms copying it in first), pickled Queue "
          f"{results['pickled_queue'] * 1e3:.2f} ms, memory copy {results['memory_copy'] * 1e3:.2f} ms: "
          f"bridge {results['queue_over_bridge']:.1f}x faster than the Queue (goal >= 5x), "
          f"{results['bridge_over_copy']:.2f}x a memory copy (goal <= 2x)")
    print(f"tiny 128x128, 8 steps: bridge {results['generate_bridge']:.3f} s vs in-process "
          f"{results['generate_in_process']:.3f} s = {results['generate_ratio']:.3f}x (goal <= 1.10x)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
