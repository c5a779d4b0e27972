"""The worker's C heap (glibc malloc) set up for diffusion: memory a step frees is kept for the
next step instead of going back to the kernel after every operation.

Why: torch's CPU tensors come from malloc. By default glibc gives every thread its own arena,
whose heaps are at most 64 MiB and are mapped and unmapped as they fill and empty; it serves
blocks over a (dynamic, at most 32 MiB) threshold with mmaps of their own; and it returns the
top of the heap past a small trim threshold. oneDNN's convolutions allocate a weight-sized
buffer on every call (112 MiB for SD 1.5's largest one), so the worker, whose jobs run on a
thread of their own, mapped, zero-filled page by page and unmapped about 3 GB per denoising step
of ``sd15-random`` at 256x256: 810,000 page faults and 1.5 s of kernel time per step (a plain
diffusers call on the main thread: 0 to 144,000). With one arena, no separately mapped blocks
and a 1 GiB trim threshold, a step faults no page at all (docs/benchmarks.md, issue 10).

The cost: what a job frees stays in the worker until it has been idle for
``IDLE_TRIM_SECONDS``; then ``trim()`` gives it back (the server calls it). Only with glibc
(Linux); elsewhere both functions do nothing. Settings the user made (``MALLOC_*`` variables,
``GLIBC_TUNABLES`` naming malloc, ``LD_PRELOAD``: another allocator) are left alone.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import sys

log = logging.getLogger("silk.worker")

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept for reuse; more goes back at once
IDLE_TRIM_SECONDS = 30.0  # a worker idle this long gives back what its jobs freed
USER_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                  "MALLOC_TOP_PAD_", "LD_PRELOAD")


@functools.lru_cache(maxsize=1)
def _glibc():
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def user_settings(environ=os.environ) -> list:
    """The variables by which the user set the allocator up (then Silk leaves it as it is)."""
    found = [name for name in USER_VARIABLES if environ.get(name)]
    if "malloc" in environ.get("GLIBC_TUNABLES", ""):
        found.append("GLIBC_TUNABLES")
    return found


def tune(environ=os.environ) -> dict | None:
    """Keep freed memory for reuse (see the module's doc). Call first thing in the worker, before
    any other thread starts: the arena limit holds for arenas made after it. Returns what was
    set, or None where nothing was."""
    libc = _glibc()
    if libc is None:
        return None
    mine = user_settings(environ)
    if mine:
        log.info("malloc left as set by %s", ", ".join(mine))
        return None
    settings = {"arena_max": (M_ARENA_MAX, 1), "mmap_max": (M_MMAP_MAX, 0),
                "trim_threshold": (M_TRIM_THRESHOLD, TRIM_THRESHOLD)}
    done = {name: value for name, (parameter, value) in settings.items() if libc.mallopt(parameter, value) == 1}
    log.info("malloc keeps freed memory for reuse: %s", done)
    return done


def trim() -> bool:
    """Give the memory the heap holds free back to the system; True where that could be asked."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
