"""Image frames between the client and the worker, without pickling.

Local worker: frames live in memory-mapped files in a directory the client owns
(under /dev/shm on Linux, so in RAM). Both processes map the same file, so a frame
crosses the process boundary without being copied. The client creates and deletes
every file, so nothing is left behind when the worker crashes; directories of
clients that died are swept on the next start.

Remote worker: the same frame descriptors name attachments of the message instead.

A frame descriptor (JSON): ``{"file": name, "shape": [...], "dtype": "float32"}`` or
``{"attachment": index, "shape": [...], "dtype": ...}``.
"""
from __future__ import annotations

import mmap
import os
import re
import secrets
import shutil
import tempfile

import numpy as np

DTYPES = {"float32": np.float32, "uint8": np.uint8, "float16": np.float16}
MAX_FRAME_BYTES = 1 << 30
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DIRECTORY_PREFIX = "silk-frames-"


class FrameError(ValueError):
    pass


def shared_root() -> str:
    """Where frame directories go: RAM-backed where the OS offers it."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def check_descriptor(descriptor) -> tuple[tuple, np.dtype]:
    """Validate a frame descriptor's shape and dtype (not its location)."""
    if not isinstance(descriptor, dict):
        raise FrameError("a frame must be described by an object")
    shape = descriptor.get("shape")
    dtype = descriptor.get("dtype")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
            or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 65536 for n in shape)):
        raise FrameError("frame shape must be 1 to 4 positive integers up to 65536")
    if dtype not in DTYPES:
        raise FrameError(f"frame dtype must be one of {sorted(DTYPES)}")
    size = int(np.prod(shape)) * np.dtype(DTYPES[dtype]).itemsize
    if size > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {size} bytes is too large")
    return tuple(shape), np.dtype(DTYPES[dtype])


class SharedFrames:
    """The client's directory of frame files, with a pool of reusable buffers."""

    def __init__(self, root: str | None = None):
        root = root or shared_root()
        sweep_stale(root)
        self.directory = os.path.join(root, f"{DIRECTORY_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        os.makedirs(self.directory, mode=0o700)
        self._maps: dict[str, tuple[mmap.mmap, int]] = {}
        self._counter = 0
        self.probe_name = "probe"
        self.probe_secret = secrets.token_hex(16)
        with open(os.path.join(self.directory, self.probe_name), "w") as handle:
            handle.write(self.probe_secret)

    def allocate(self, shape, dtype=np.float32, name: str | None = None) -> tuple[np.ndarray, dict]:
        """A new (or reused, by ``name``) shared buffer: the array view and its descriptor."""
        dtype = np.dtype(dtype)
        size = int(np.prod(shape)) * dtype.itemsize
        if name is None:
            self._counter += 1
            name = f"f{self._counter}"
        found = self._maps.get(name)
        if found is None or found[1] < size:
            if found is not None:
                found[0].close()
            path = os.path.join(self.directory, name)
            with open(path, "w+b") as handle:
                handle.truncate(max(size, 1))
                mapped = mmap.mmap(handle.fileno(), max(size, 1))
            self._maps[name] = (mapped, size)
            found = self._maps[name]
        array = np.frombuffer(found[0], dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        descriptor = {"file": name, "shape": [int(n) for n in shape], "dtype": dtype.name}
        return array, descriptor

    def view(self, descriptor: dict) -> np.ndarray:
        shape, dtype = check_descriptor(descriptor)
        mapped = self._maps.get(descriptor.get("file"))
        if mapped is None:
            raise FrameError(f"no shared frame named {descriptor.get('file')!r}")
        return np.frombuffer(mapped[0], dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def close(self) -> None:
        for mapped, _ in self._maps.values():
            try:
                mapped.close()
            except BufferError:
                pass  # an array still views it; the file goes away with the directory
        self._maps.clear()
        shutil.rmtree(self.directory, ignore_errors=True)


def sweep_stale(root: str) -> None:
    """Delete frame directories whose client process no longer exists."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if not name.startswith(DIRECTORY_PREFIX):
            continue
        try:
            pid = int(name[len(DIRECTORY_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class WorkerFrames:
    """The worker's side: opens frames the client named, inside the client's directory only."""

    def __init__(self, directory: str | None):
        self.directory = directory
        self._maps: dict[str, mmap.mmap] = {}

    def open(self, descriptor: dict, attachments: list, writable: bool = False) -> np.ndarray:
        shape, dtype = check_descriptor(descriptor)
        count = int(np.prod(shape))
        if "attachment" in descriptor:
            index = descriptor["attachment"]
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(attachments):
                raise FrameError("frame names a missing attachment")
            buffer = attachments[index]
            if len(buffer) != count * dtype.itemsize:
                raise FrameError("attachment size does not match the frame's shape")
            return np.frombuffer(buffer, dtype=dtype).reshape(shape)
        name = descriptor.get("file")
        if self.directory is None:
            raise FrameError("shared frames are not available on this connection")
        if not isinstance(name, str) or not _NAME.match(name) or name == "probe":
            raise FrameError("invalid shared frame name")
        mapped = self._maps.get(name)
        size = count * dtype.itemsize
        if mapped is None or len(mapped) < size:
            if mapped is not None:
                mapped.close()
            path = os.path.join(self.directory, name)
            try:
                with open(path, "r+b") as handle:
                    if os.fstat(handle.fileno()).st_size < size:
                        raise FrameError("shared frame is smaller than its shape")
                    mapped = mmap.mmap(handle.fileno(), 0)
            except OSError as error:
                raise FrameError(f"cannot open shared frame {name!r}: {error.strerror}") from None
            self._maps[name] = mapped
        return np.frombuffer(mapped, dtype=dtype, count=count).reshape(shape)

    def forget(self) -> None:
        for mapped in self._maps.values():
            try:
                mapped.close()
            except BufferError:
                pass
        self._maps.clear()


def verify_probe(directory: str, probe: str) -> bool:
    """True when ``directory`` holds the client's probe secret: we share its files."""
    try:
        with open(os.path.join(directory, "probe")) as handle:
            return secrets.compare_digest(handle.read(), probe)
    except OSError:
        return False
