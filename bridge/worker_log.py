"""The worker's log: private, bounded, and quiet under a flood. No ``bpy`` here.

- Files live in a per-user folder (0700) and are created 0600, never through a link.
- They rotate by size: ``MAX_BYTES`` per file, ``BACKUPS`` older files (``worker.log.1`` ...).
- A message repeated word for word (a peer sending the same bad request again and again) is
  written ``REPEATS`` times per ``WINDOW`` seconds; the next one after the window says how
  many were left out.
- With ``capture_output`` the process's own stdout and stderr (native crash messages,
  libraries that print) go into the current log file too, and follow it when it rotates.

Nothing secret is logged: the worker never passes a token or a request's content to the log.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading
import time

MAX_BYTES = 2 * 1024 * 1024
BACKUPS = 3
REPEATS = 5
WINDOW = 60.0
FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def log_folder() -> str:
    """This user's folder for Silk's logs, made private (0700) if it is new."""
    if sys.platform == "win32":
        base = os.path.join(os.environ.get("LOCALAPPDATA") or os.path.expanduser("~"), "Silk", "Logs")
    elif sys.platform == "darwin":
        base = os.path.join(os.path.expanduser("~"), "Library", "Logs", "Silk")
    else:
        state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        base = os.path.join(state, "silk", "logs")
    os.makedirs(base, mode=0o700, exist_ok=True)
    return base


def default_log_path(name: str = "worker.log") -> str:
    return os.path.join(log_folder(), name)


def open_private(path: str, mode: str = "ab", **text_options):
    """``path`` opened for appending, created 0600 (an existing file is made 0600), never through a link."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags | getattr(os, "O_BINARY", 0), 0o600)
    if hasattr(os, "fchmod"):
        os.fchmod(descriptor, 0o600)
    return os.fdopen(descriptor, mode, **text_options)


class RepeatLimiter(logging.Filter):
    """Lets an identical message through ``repeats`` times per ``window`` seconds."""

    def __init__(self, repeats: int = REPEATS, window: float = WINDOW, clock=time.monotonic):
        super().__init__()
        self.repeats, self.window, self.clock = repeats, window, clock
        self._seen: dict = {}  # message -> [window start, count, left out]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            key = (record.levelno, record.name, record.getMessage()[:500])
        except Exception:  # a record whose arguments do not format: let logging report it
            return True
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or now - seen[0] > self.window:
                left_out = seen[2] if seen else 0
                if len(self._seen) > 2000:  # many different messages: forget the old ones
                    self._seen.clear()
                self._seen[key] = [now, 1, 0]
                if left_out:
                    record.msg = f"{record.msg} [{left_out} more like this left out in the last {self.window:.0f} s]"
                return True
            seen[1] += 1
            if seen[1] > self.repeats:
                seen[2] += 1
                return False
            return True


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose files are 0600 and never opened through a link; with
    ``capture_output`` it also points file descriptors 1 and 2 at the current file."""

    def __init__(self, path: str, max_bytes: int = MAX_BYTES, backups: int = BACKUPS, capture_output: bool = False):
        self.capture_output = capture_output
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")

    def _open(self):
        # backslashreplace: a lone surrogate a peer sent cannot make a log line fail
        stream = open_private(self.baseFilename, "a", encoding="utf-8", errors="backslashreplace")
        if self.capture_output:
            for stream_object in (sys.stdout, sys.stderr):
                try:
                    stream_object.flush()
                except (AttributeError, OSError, ValueError):
                    pass
            for target in (1, 2):
                os.dup2(stream.fileno(), target)
        return stream

    def doRollover(self):
        if self.capture_output:  # let go of the old file (Windows cannot rename an open file)
            null = os.open(os.devnull, os.O_WRONLY)
            for target in (1, 2):
                os.dup2(null, target)
            os.close(null)
        super().doRollover()


def setup(level: str = "INFO", log_file: str | None = None, capture_output: bool = False,
          to_stderr: bool = True, max_bytes: int = MAX_BYTES) -> str:
    """Configure the worker's logging; returns the log file's path."""
    path = log_file or default_log_path()
    handler = PrivateRotatingFileHandler(path, max_bytes=max_bytes, capture_output=capture_output)
    handlers = [handler]
    if to_stderr and not capture_output:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = logging.Formatter(FORMAT)
    for each in handlers:
        each.setFormatter(formatter)
        each.addFilter(RepeatLimiter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for each in handlers:
        root.addHandler(each)
    root.setLevel(level)
    logging.captureWarnings(True)  # library warnings go through the same limits
    return path
