"""Image frames between the client and the worker, without pickling.

Local worker: frames live in memory-mapped files in a directory the client owns,
inside the frames root: a private (0700) folder of the user's under /dev/shm on Linux
(so in RAM), else the temporary folder. Both processes map the same file, so a frame
crosses the process boundary without being copied. The client creates and deletes
every file, so nothing is left behind when the worker crashes; directories of
clients that died are swept on the next start.

The worker shares only a folder directly inside its own frames root, owned by its user
and private, that holds the client's probe secret; it opens the folder once (without
following a link) and every frame inside it by name relative to that folder, only
regular files of its user, never following a link and never blocking on a FIFO.

Remote worker: the same frame descriptors name attachments of the message instead.

A frame descriptor (JSON): ``{"file": name, "shape": [...], "dtype": "float32"}`` or
``{"attachment": index, "shape": [...], "dtype": ...}``.
"""
from __future__ import annotations

import hmac
import mmap
import os
import re
import secrets
import shutil
import stat
import tempfile

import numpy as np

DTYPES = {"float32": np.float32, "uint8": np.uint8, "float16": np.float16}
MAX_FRAME_BYTES = 1 << 30
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DIRECTORY_PREFIX = "silk-frames-"
PROBE_NAME = "probe"
MAX_PROBE_BYTES = 256
# Opening a file the client named: never through a link, never blocking (a FIFO would), not inherited.
_OPEN_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
# Where the OS can open a file relative to an open folder (POSIX), the worker does.
_RELATIVE_OPEN = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY") and hasattr(os, "O_NOFOLLOW")


class FrameError(ValueError):
    pass


def shared_root(create: bool = True) -> str:
    """The frames root: where frame directories go, and the only place a worker shares frames
    from. RAM-backed where the OS offers it, in a folder of this user's own (``silk-<uid>``,
    0700); SILK_FRAMES_ROOT names another. Raises FrameError when the folder is not this user's
    private folder (someone else made it, or made it a link)."""
    root = os.environ.get("SILK_FRAMES_ROOT")
    if not root:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
        root = os.path.join(base, f"silk-{_user_tag()}")
    if create:
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)
        except OSError as error:
            raise FrameError(f"cannot make the frames folder {root}: {error.strerror}") from None
        problem = _not_private(root)
        if problem:
            raise FrameError(f"the frames folder {root} {problem}; remove it, or set SILK_FRAMES_ROOT")
    return root


def _user_tag() -> str:
    if hasattr(os, "getuid"):
        return str(os.getuid())
    import getpass  # Windows: the temporary folder is per user already

    return re.sub(r"[^A-Za-z0-9_.-]", "_", getpass.getuser()) or "user"


def _not_private(path: str) -> str | None:
    """Why ``path`` is not a private folder of this user's (None when it is)."""
    try:
        info = os.lstat(path)
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder (or is a link)"
    if hasattr(os, "geteuid"):
        if info.st_uid != os.geteuid():
            return "belongs to another user"
        if info.st_mode & 0o077:
            return "can be opened by other users"
    return None


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
        self.probe_name = PROBE_NAME
        self.probe_secret = secrets.token_hex(16)
        descriptor = os.open(os.path.join(self.directory, self.probe_name),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(descriptor, "w") as handle:
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
    """The worker's side: opens frames the client named, inside the client's folder only.

    ``folder`` is what ``open_client_folder`` returned (None: attachments only)."""

    def __init__(self, folder: "ClientFolder | None"):
        self.folder = folder
        self._maps: dict[str, mmap.mmap] = {}

    @property
    def directory(self) -> str | None:
        return self.folder.path if self.folder else None

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
        if self.folder is None:
            raise FrameError("shared frames are not available on this connection")
        if not isinstance(name, str) or not _NAME.match(name) or name == PROBE_NAME:
            raise FrameError("invalid shared frame name")
        mapped = self._maps.get(name)
        size = count * dtype.itemsize
        if mapped is None or len(mapped) < size:
            if mapped is not None:
                mapped.close()
            try:
                handle = self.folder.open_file(name, os.O_RDWR)
                try:
                    if os.fstat(handle).st_size < size:
                        raise FrameError("shared frame is smaller than its shape")
                    mapped = mmap.mmap(handle, 0)
                finally:
                    os.close(handle)
            except OSError as error:
                raise FrameError(f"cannot open shared frame {name!r}: {error.strerror or error}") from None
            self._maps[name] = mapped
        return np.frombuffer(mapped, dtype=dtype, count=count).reshape(shape)

    def forget(self) -> None:
        for mapped in self._maps.values():
            try:
                mapped.close()
            except BufferError:
                pass
        self._maps.clear()
        if self.folder is not None:
            self.folder.close()


class ClientFolder:
    """A client's frame folder the worker has checked: held open (POSIX), so renaming or
    replacing the path afterwards changes nothing; files are opened relative to it."""

    def __init__(self, path: str, descriptor: int | None):
        self.path = path
        self._descriptor = descriptor

    def open_file(self, name: str, flags: int) -> int:
        """An open descriptor of the regular file ``name`` of this user's in the folder; OSError otherwise
        (a link, a FIFO, a device, a folder, someone else's file, a file with other names)."""
        if self._descriptor is not None:
            handle = os.open(name, flags | _OPEN_FLAGS, dir_fd=self._descriptor)
        else:  # no relative opens here (Windows): the path, after checking it is no link
            path = os.path.join(self.path, name)
            if os.path.islink(path):
                raise OSError(0, "a link")
            handle = os.open(path, flags | _OPEN_FLAGS | getattr(os, "O_BINARY", 0))
        try:
            info = os.fstat(handle)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(0, "not a regular file")
            if hasattr(os, "geteuid") and (info.st_uid != os.geteuid() or info.st_nlink != 1):
                raise OSError(0, "not a file of the worker's user with one name")
        except BaseException:
            os.close(handle)
            raise
        return handle

    def close(self) -> None:
        if self._descriptor is not None:
            try:
                os.close(self._descriptor)
            except OSError:
                pass
            self._descriptor = None


def open_client_folder(directory, probe, root: str | None = None) -> ClientFolder | None:
    """The client's frame folder when the worker may share it: a folder named like a client's
    (``silk-frames-...``) directly inside the frames root, this user's and private, not a link,
    holding a regular file ``probe`` whose content is ``probe``. None otherwise: frames then
    travel in the connection."""
    if not isinstance(directory, str) or not isinstance(probe, str) or not probe:
        return None
    descriptor = None
    try:
        root = os.path.realpath(root or shared_root(create=False))
        parent, name = os.path.split(os.path.normpath(directory))
        if os.path.realpath(parent) != root or not name.startswith(DIRECTORY_PREFIX) or not _NAME.match(name):
            return None
        path = os.path.join(root, name)
        if _not_private(root) or _not_private(path):
            return None
        if _RELATIVE_OPEN:
            descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _OPEN_FLAGS)
            if _not_private_descriptor(descriptor):
                os.close(descriptor)
                return None
        folder = ClientFolder(path, descriptor)
        descriptor = None  # the folder owns it now
        if not _probe_matches(folder, probe):
            folder.close()
            return None
        return folder
    except (OSError, ValueError):  # ValueError: a NUL byte or an unencodable character in the path
        if descriptor is not None:
            os.close(descriptor)
        return None


def _not_private_descriptor(descriptor: int) -> bool:
    info = os.fstat(descriptor)
    return (not stat.S_ISDIR(info.st_mode)
            or (hasattr(os, "geteuid") and (info.st_uid != os.geteuid() or info.st_mode & 0o077)))


def _probe_matches(folder: ClientFolder, probe: str) -> bool:
    try:
        handle = folder.open_file(PROBE_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        content = os.read(handle, MAX_PROBE_BYTES + 1)
    except OSError:
        return False
    finally:
        os.close(handle)
    return hmac.compare_digest(content, probe.encode("utf-8", "surrogatepass"))
