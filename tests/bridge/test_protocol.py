"""Messages round-trip exactly; anything else is rejected with a ProtocolError, never a crash."""
import io
import json
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from silk.bridge import protocol
from silk.bridge.protocol import ProtocolError, StreamReader


class BytesSocket:
    """Just enough of a socket for StreamReader, over bytes."""

    def __init__(self, data: bytes):
        self.stream = io.BytesIO(data)

    def recv(self, size):
        return self.stream.read(size)

    def recv_into(self, view, size):
        chunk = self.stream.read(size)
        view[:len(chunk)] = chunk
        return len(chunk)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 53, 2 ** 53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.dictionaries(st.text(max_size=12).filter(lambda k: k != "attachments"), json_values, max_size=8),
    kind=st.sampled_from(sorted(protocol.REQUESTS) + sorted(protocol.REPLIES)),
    attachments=st.lists(st.binary(max_size=2048), max_size=4),
)
def test_every_message_round_trips(body, kind, attachments):
    message = dict(body, type=kind, id=7)
    wire = protocol.encode(message, attachments)
    decoded, received = StreamReader(BytesSocket(wire)).read_message()
    expected = dict(message)
    if attachments:
        expected["attachments"] = [len(a) for a in attachments]
    assert decoded == expected
    assert [bytes(r) for r in received] == attachments


def test_several_messages_on_one_stream_stay_in_step():
    wire = b"".join(protocol.encode({"type": "ping", "id": n}, [bytes([n]) * n]) for n in range(1, 6))
    reader = StreamReader(BytesSocket(wire))
    for n in range(1, 6):
        message, attachments = reader.read_message()
        assert message["id"] == n and bytes(attachments[0]) == bytes([n]) * n


@pytest.mark.parametrize("message, code", [
    ({"type": "nonsense", "id": 1}, "unknown_type"),
    ({"type": "ping"}, "malformed"),
    ({"type": "ping", "id": -1}, "malformed"),
    ({"type": "ping", "id": True}, "malformed"),
    ({"type": "cancel", "id": 3, "job": "seven"}, "malformed"),
    ({"type": "hello", "id": 4, "protocol": 1}, "malformed"),
])
def test_invalid_requests_are_named(message, code):
    with pytest.raises(ProtocolError) as caught:
        protocol.validate_request(message)
    assert caught.value.code == code


def test_oversized_message_is_refused_and_the_stream_stays_usable():
    big = b"x" * (protocol.MAX_JSON_BYTES + 10)
    wire = struct.pack(">I", len(big)) + big + protocol.encode({"type": "ping", "id": 9})
    reader = StreamReader(BytesSocket(wire))
    with pytest.raises(ProtocolError) as caught:
        reader.read_message()
    assert caught.value.code == "oversized"
    assert reader.read_message()[0] == {"type": "ping", "id": 9}


def test_nan_and_non_objects_are_rejected():
    for payload in (b"NaN", b"[1, 2]", b'{"a": Infinity}', b"\xff\xfe", b'"text"', b"{" * 5000):
        with pytest.raises(ProtocolError):
            protocol.decode_json(payload)


def mutations(rng: random.Random, count: int):
    """Random bytes, and valid messages with random damage, as length-prefixed payloads."""
    seeds = [
        json.dumps({"type": t, "id": 1, "prompt": "p", "model": {"source": "tiny"}, "job": 1, "frame": {}}).encode()
        for t in protocol.REQUESTS
    ]
    for n in range(count):
        kind = n % 4
        if kind == 0:
            payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        else:
            payload = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 6)):
                position = rng.randrange(len(payload))
                action = rng.random()
                if action < 0.4:
                    payload[position] = rng.getrandbits(8)
                elif action < 0.7:
                    del payload[position]
                else:
                    payload.insert(position, rng.choice(b'{}[]",:0123456789-eE.tfn \\'))
            payload = bytes(payload)
        yield payload


def test_decoder_fuzz_never_crashes():
    rng = random.Random(1234)
    count = 0
    for payload in mutations(rng, 12000):
        try:
            message = protocol.decode_json(payload)
            protocol.validate_request(message)
        except ProtocolError:
            pass
        count += 1
    assert count == 12000
