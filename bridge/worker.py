"""Silk's diffusion worker process. Run with the worker's Python:

    python bridge/worker.py [--host 127.0.0.1] [--port 0] [--port-file PATH]
                            [--parent-pid PID] [--exit-on-disconnect] [--log-level INFO]

The client's token comes from the environment variable SILK_WORKER_TOKEN (never the
command line, which other users can read). For a remote worker on a GPU machine, see
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

    token = os.environ.get("SILK_WORKER_TOKEN")
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"SILK_WORKER_TOKEN not set; this worker's token is: {token}", file=sys.stderr, flush=True)
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
