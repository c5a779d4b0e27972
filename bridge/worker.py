"""Silk's diffusion worker process. Run with the worker's Python:

    python bridge/worker.py [--host 127.0.0.1] [--port 0] [--port-file PATH]
                            [--parent-pid PID] [--exit-on-disconnect] [--log-level INFO]

The client's token comes from the environment variable SILK_WORKER_TOKEN (never the
command line, which other users can read). SILK_WORKER_MEMORY_LIMIT_MB caps the
worker's memory (POSIX). For a remote worker on a GPU machine, see
docs/worker.md: it listens on loopback unless --host says otherwise, and then a
token is required all the same.
"""
import argparse
import importlib.util
import logging
import os
import secrets
import sys


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    limit = os.environ.get("SILK_WORKER_MEMORY_LIMIT_MB")
    if limit:
        _limit_memory(int(limit))
    token = os.environ.get("SILK_WORKER_TOKEN")
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"SILK_WORKER_TOKEN not set; this worker's token is: {token}", file=sys.stderr, flush=True)
    # The server itself needs numpy; say so plainly (the client reads this line) rather than
    # dying on an ImportError. Missing diffusion libraries are reported in the handshake.
    if importlib.util.find_spec("numpy") is None:
        missing = [name for name in ("numpy", "torch", "diffusers", "transformers", "safetensors", "PIL")
                   if importlib.util.find_spec(name) is None]
        print("SILK_WORKER_MISSING " + ",".join(missing), file=sys.stderr, flush=True)
        return 3
    _import_silk()
    from silk.bridge.diffusion import DiffusionBackend
    from silk.bridge.server import WorkerServer

    server = WorkerServer(token=token, backend=DiffusionBackend(), host=args.host, port=args.port,
                          exit_on_disconnect=args.exit_on_disconnect, parent_pid=args.parent_pid)
    logging.getLogger("silk.worker").info("listening on %s:%d", args.host, server.port)
    if args.port_file:
        temporary = args.port_file + ".tmp"
        with open(temporary, "w") as handle:
            handle.write(str(server.port))
        os.replace(temporary, args.port_file)  # appears whole or not at all
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
