"""Silk's diffusion worker process. Run with the worker's Python:

    python bridge/worker.py [--host 127.0.0.1] [--port 0] [--port-file PATH]
                            [--parent-pid PID] [--exit-on-disconnect] [--log-level INFO]
                            [--log-file PATH]

The client's token comes from the environment variable SILK_WORKER_TOKEN (never the
command line, which other users can read). SILK_WORKER_MEMORY_LIMIT_MB caps the
worker's memory (POSIX). For a remote worker on a GPU machine, see
docs/worker.md: it listens on loopback unless --host says otherwise, and then a
token is required all the same.

The log rotates by size and is private to the user (bridge/worker_log.py): by default in
the user's state folder and on stderr; with --log-file in that file only, which then also
takes the process's own stdout and stderr. The worker exits with code 0 on ``shutdown``,
SIGTERM, SIGINT, and (with --exit-on-disconnect) when its client leaves, after cancelling a
running job at its next step.

Memory a job frees is kept for the next job and given back after IDLE_TRIM_SECONDS idle
(bridge/allocator.py: without it every denoising step refaulted ~3 GB of oneDNN buffers).
"""
import argparse
import importlib.util
import logging
import os
import secrets
import signal
import sys

# Longest wait for a cancelled job to reach its next step before the process exits anyway
# (os._exit never runs C++ destructors under a running job, so it cannot abort).
EXIT_WAIT_SECONDS = 20.0


def _import_silk():
    """Import the extension's package from the folder around this script, as 'silk'."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if "silk" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "silk", os.path.join(root, "__init__.py"), submodule_search_locations=[root])
        module = importlib.util.module_from_spec(spec)
        sys.modules["silk"] = module
        spec.loader.exec_module(module)


def _limit_memory(megabytes: int) -> None:
    """Cap the worker's address space (POSIX), e.g. on a shared farm node: a job that needs
    more fails with an out-of-memory error instead of pushing the machine into swap."""
    try:
        import resource
    except ImportError:  # Windows
        logging.getLogger("silk.worker").warning("SILK_WORKER_MEMORY_LIMIT_MB is not supported here")
        return
    limit = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Silk's diffusion worker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", help="write the listening port here once ready")
    parser.add_argument("--parent-pid", type=int, help="exit when this process goes away")
    parser.add_argument("--exit-on-disconnect", action="store_true")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-file", help="log here only (rotated; also takes stdout and stderr); "
                                           "default: the user's state folder, and stderr")
    args = parser.parse_args(argv)

    token = os.environ.get("SILK_WORKER_TOKEN")
    if not token:
        token = secrets.token_urlsafe(24)
        # To the terminal, before the log takes over stderr: the token never goes into a log.
        print(f"SILK_WORKER_TOKEN not set; this worker's token is: {token}", file=sys.stderr, flush=True)
    limit = os.environ.get("SILK_WORKER_MEMORY_LIMIT_MB")
    if limit:
        _limit_memory(int(limit))
    # The server itself needs numpy; say so plainly (the client reads this line) rather than
    # dying on an ImportError. Missing diffusion libraries are reported in the handshake.
    if importlib.util.find_spec("numpy") is None:
        missing = [name for name in ("numpy", "torch", "diffusers", "transformers", "safetensors", "PIL")
                   if importlib.util.find_spec(name) is None]
        print("SILK_WORKER_MISSING " + ",".join(missing), file=sys.stderr, flush=True)
        return 3
    _import_silk()
    from silk.bridge import worker_log

    log_path = worker_log.setup(args.log_level, args.log_file, capture_output=bool(args.log_file))
    log = logging.getLogger("silk.worker")
    from silk.bridge import allocator

    allocator.tune()  # before any other thread starts (bridge/allocator.py)
    from silk.bridge.diffusion import DiffusionBackend
    from silk.bridge.server import WorkerServer

    server = WorkerServer(token=token, backend=DiffusionBackend(), host=args.host, port=args.port,
                          exit_on_disconnect=args.exit_on_disconnect, parent_pid=args.parent_pid)
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda number, frame: server.request_stop())
    log.info("listening on %s:%d (pid %d, log %s)", args.host, server.port, os.getpid(), log_path)
    if args.port_file:
        temporary = args.port_file + ".tmp"
        with open(temporary, "w") as handle:
            handle.write(str(server.port))
        os.replace(temporary, args.port_file)  # appears whole or not at all
    code = 0
    try:
        server.serve_forever()
    except BaseException:
        log.exception("the server failed")
        code = 1
    finally:
        idle = server.close(EXIT_WAIT_SECONDS)
        log.info("exiting%s", "" if idle else f" with a job still running after {EXIT_WAIT_SECONDS:.0f} s")
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        # Not a normal interpreter exit: torch's threads may still be inside a job, and tearing
        # the interpreter down under them aborts the process (exit -6).
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
