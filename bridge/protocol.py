"""Wire format between the client and the worker.

A message is: 4-byte big-endian length N, then N bytes of UTF-8 JSON (an object),
then the binary attachments the JSON declares in ``"attachments": [n1, n2, ...]``.
JSON carries everything but pixels; pixels travel as shared frames (local worker)
or attachments (remote worker). Nothing is ever unpickled: decoding is ``json``
plus checks, so a hostile peer can at worst get an error reply.
"""
from __future__ import annotations

import json
import math
import struct
import time

PROTOCOL_VERSION = 1
MAX_JSON_BYTES = 1 << 20  # 1 MiB of JSON is far more than any request needs
MAX_ATTACHMENT_BYTES = 1 << 30  # one 8K RGBA float32 frame is 512 MiB
MAX_ATTACHMENTS = 16
# Before its token is checked a peer gets one small message (a hello is a few hundred bytes;
# this leaves room for a long shared-folder path), no attachments, and a few seconds.
MAX_HELLO_BYTES = 16 * 1024
# Text an error reply echoes (a name the peer sent, an exception's message) is cut to this many
# characters, so an error reply always encodes far below MAX_JSON_BYTES (at most 12 bytes each).
MAX_ERROR_TEXT = 2000
HEADER = struct.Struct(">I")

# Requests the worker accepts, and the fields each must (and may) carry.
REQUESTS = {
    "hello": ({"protocol": int, "token": str}, {"shared_dir": (str, type(None)), "probe": (str, type(None)),
                                                "client": str}),
    "ping": ({}, {}),
    "status": ({}, {}),
    # The fields of 'load_model' and 'generate' are checked by bridge/schema.py (bad_request replies).
    "load_model": ({}, {}),
    "generate": ({}, {}),
    # One window of a video model: its fields are checked by bridge/motion.py (bad_request replies).
    "generate_video": ({}, {}),
    "cancel": ({"job": int}, {}),
    "echo": ({"frame": dict}, {"output": (dict, type(None))}),
    "shutdown": ({}, {}),
}
# What a worker can do beyond protocol 1's first 'generate', listed in its hello reply
# ("features"): a client refuses to send these to a worker that does not list them (an older
# worker would ignore the fields and paint without them).
FEATURES = ("fusion", "noise", "prompt_mix", "fusion_end", "ip_adapter", "generate_video", "faithful_encoding")
# Replies and notices the client accepts.
REPLIES = {"hello", "pong", "status", "ok", "result", "progress", "error", "cancelled", "echo"}


class ProtocolError(Exception):
    """A message that breaks the protocol; ``code`` is sent back in the error reply."""

    def __init__(self, code: str, message: str, reply_to=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reply_to = reply_to


def encode(message: dict, attachments: list[bytes] | tuple = ()) -> bytes:
    """One message on the wire: header, JSON, attachments."""
    return b"".join(bytes(part) for part in encode_parts(message, attachments))


def encode_parts(message: dict, attachments: list[bytes] | tuple = ()) -> list:
    """The message as pieces to send one after the other (the header and JSON, then each attachment
    as it is): a big frame is never copied into one buffer. Raises ProtocolError when the JSON is
    over MAX_JSON_BYTES, TypeError/ValueError when the message is not JSON."""
    if attachments:
        message = dict(message, attachments=[len(memoryview(a).cast("B")) for a in attachments])
    # ensure_ascii (the default) writes any character, a lone surrogate too, as ASCII escapes.
    payload = json.dumps(message, separators=(",", ":"), allow_nan=False).encode("ascii")
    if len(payload) > MAX_JSON_BYTES:
        raise ProtocolError("oversized", f"message of {len(payload)} bytes exceeds {MAX_JSON_BYTES}")
    return [HEADER.pack(len(payload)) + payload, *attachments]


def decode_json(payload: bytes) -> dict:
    """Parse and sanity-check the JSON part of a message (no type checks yet)."""
    if len(payload) > MAX_JSON_BYTES:
        raise ProtocolError("oversized", f"message of {len(payload)} bytes exceeds {MAX_JSON_BYTES}")
    try:
        text = payload.decode("utf-8")
        message = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ProtocolError("malformed", f"not valid UTF-8 JSON: {error}") from None
    if not isinstance(message, dict):
        raise ProtocolError("malformed", "a message must be a JSON object")
    attachments = message.get("attachments", [])
    if (not isinstance(attachments, list) or len(attachments) > MAX_ATTACHMENTS
            or not all(_is_int(n) and 0 <= n <= MAX_ATTACHMENT_BYTES for n in attachments)
            or sum(attachments) > MAX_ATTACHMENT_BYTES):
        raise ProtocolError("malformed", "attachments must be a short list of sizes within limits",
                            _reply_id(message))
    return message


def _reject_constant(name):
    raise ValueError(f"{name} is not allowed")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _reply_id(message: dict):
    value = message.get("id")
    return value if _is_int(value) else None


def validate_request(message: dict) -> dict:
    """Check a decoded request's type and fields; raise ProtocolError naming the problem."""
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in REQUESTS:
        raise ProtocolError("unknown_type", f"unknown request type {kind!r}", _reply_id(message))
    if not _is_int(message.get("id")) or message["id"] < 0:
        raise ProtocolError("malformed", "a request needs a non-negative integer 'id'")
    required, optional = REQUESTS[kind]
    for name, expected in required.items():
        if name not in message:
            raise ProtocolError("malformed", f"'{kind}' needs '{name}'", message["id"])
        _check_type(kind, name, message[name], expected, message["id"])
    for name, expected in optional.items():
        if name in message:
            _check_type(kind, name, message[name], expected, message["id"])
    return message


def _check_type(kind, name, value, expected, reply_to):
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        ok = False
    elif int in types and float not in types:
        ok = _is_int(value)
    else:
        ok = isinstance(value, types)
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        names = "/".join(t.__name__ for t in types)
        raise ProtocolError("malformed", f"'{kind}.{name}' must be {names}", reply_to)


def validate_reply(message: dict) -> dict:
    kind = message.get("type")
    if kind not in REPLIES:
        raise ProtocolError("unknown_type", f"unknown reply type {kind!r}")
    return message


def error_reply(error: ProtocolError) -> dict:
    return make_error(error.code, error.message, error.reply_to)


def make_error(code: str, message, reply_to=None) -> dict:
    """An error reply that always encodes within MAX_JSON_BYTES, whatever text it echoes: the
    message is cut to MAX_ERROR_TEXT characters and a reply_to that is not a plausible request id
    (a non-negative integer below 2**64) is dropped."""
    return {"type": "error", "reply_to": reply_to if _is_int(reply_to) and 0 <= reply_to < 1 << 64 else None,
            "code": shorten(code, 64), "message": shorten(message, MAX_ERROR_TEXT)}


def shorten(text, limit: int) -> str:
    """``text`` (anything; an object whose str() fails too) as at most about ``limit`` characters."""
    if not isinstance(text, str):
        try:
            text = str(text)
        except Exception:
            text = f"<{type(text).__name__} that cannot be shown>"
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters)"
    return text


class StreamReader:
    """Reads whole messages from a socket.

    With ``patient=True`` a socket timeout (which the socket may have so that sends
    cannot block forever) only means "nothing yet": reading goes on where it was, and
    a message is never torn.
    """

    def __init__(self, sock, patient: bool = False):
        self.sock = sock
        self.patient = patient
        self.deadline: float | None = None  # a time.monotonic() by which reading must be done

    def _wait_limit(self) -> None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed")
            self.sock.settimeout(left)

    def _recv(self, size: int) -> bytes:
        while True:
            self._wait_limit()
            try:
                return self.sock.recv(size)
            except TimeoutError:
                if not self.patient or self.deadline is not None:
                    raise

    def _recv_into(self, view, size: int) -> int:
        while True:
            self._wait_limit()
            try:
                return self.sock.recv_into(view, size)
            except TimeoutError:
                if not self.patient or self.deadline is not None:
                    raise

    def read_exact(self, count: int) -> bytes:
        chunks, remaining = [], count
        while remaining:
            chunk = self._recv(min(remaining, 1 << 20))
            if not chunk:
                raise ConnectionError("connection closed")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def read_into(self, count: int) -> bytearray:
        buffer = bytearray(count)
        view = memoryview(buffer)
        position = 0
        while position < count:
            received = self._recv_into(view[position:], count - position)
            if not received:
                raise ConnectionError("connection closed")
            position += received
        return buffer

    def discard(self, count: int) -> None:
        while count:
            chunk = self._recv(min(count, 1 << 20))
            if not chunk:
                raise ConnectionError("connection closed")
            count -= len(chunk)

    def read_message(self) -> tuple[dict, list]:
        """One message and its attachments. Raises ProtocolError for a bad message whose
        bytes were fully consumed (the stream stays usable), ConnectionError otherwise."""
        (length,) = HEADER.unpack(self.read_exact(HEADER.size))
        if length > MAX_JSON_BYTES:
            if length > 64 * MAX_JSON_BYTES:
                raise ConnectionError(f"declared message size {length} is absurd; closing")
            self.discard(length)
            raise ProtocolError("oversized", f"message of {length} bytes exceeds {MAX_JSON_BYTES}")
        message = decode_json(self.read_exact(length))
        attachments = [self.read_into(size) for size in message.get("attachments", [])]
        return message, attachments

    def read_first(self, deadline: float, limit: int = MAX_HELLO_BYTES) -> dict:
        """The first message of a peer not yet trusted: all of it by ``deadline`` (time.monotonic()),
        at most ``limit`` bytes of JSON, and no attachments. Nothing is read beyond what that
        allows (a declared size is never allocated): on ProtocolError answer it and close, on
        ConnectionError or TimeoutError just close."""
        self.deadline = deadline
        try:
            (length,) = HEADER.unpack(self.read_exact(HEADER.size))
            if length > limit:
                raise ProtocolError("oversized", f"a first message of {length} bytes exceeds {limit}")
            message = decode_json(self.read_exact(length))
        finally:
            self.deadline = None
        if message.get("attachments"):
            raise ProtocolError("handshake", "the first message cannot carry attachments", _reply_id(message))
        return message
