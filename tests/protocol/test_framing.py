"""MessageScanner: the header walk gives the same result however the stream is cut into reads.

The oracle is computed from the list of messages, never from the scanner: for each
message, what a handler is shown and what must be forwarded. Then the stream is fed
whole, split at every offset, and cut into random chunks; output and handler calls
must not change.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgpool.protocol.errors import PROGRAM_LIMIT_EXCEEDED, PROTOCOL_VIOLATION, ProtocolError
from pgpool.protocol.framing import WATCH_NONE, MessageScanner, watch_table

WATCHED = b"ZESQ"
UNWATCHED = b"DdTC"
WATCH = watch_table(*WATCHED)
MAX_INSPECT = 64          # small, so "too large to inspect" costs little to generate
MAX_MESSAGE = 1 << 20
REPLACEMENT = b"N\x00\x00\x00\x05!"


def frame(msg_type: bytes, body: bytes = b"") -> bytes:
    return msg_type + struct.pack("!I", len(body) + 4) + body


# ---- handlers: what the owner of a scanner may do with a watched message ----------------------

def decide(policy: str, msg_type: int, body: bytes) -> bytes | None:
    """A handler's answer as a pure function of the message, so splitting cannot change it."""
    if policy == "keep":
        return None
    if policy == "drop":
        return b""
    if policy == "replace":
        return REPLACEMENT
    # mixed: drop ParameterStatus, replace ErrorResponse, keep the rest
    if msg_type == ord("S"):
        return b""
    if msg_type == ord("E"):
        return REPLACEMENT + body[:3]
    return None


class Recorder:
    """A handler that records (type, body or None, body size) and answers per `policy`."""

    def __init__(self, policy: str = "keep"):
        self.policy = policy
        self.calls: list[tuple[int, bytes | None, int]] = []

    def __call__(self, msg_type: int, buf: bytes | None, start: int, end: int) -> bytes | None:
        if buf is None:
            self.calls.append((msg_type, None, end - start))
            return None
        body = bytes(buf[start:end])
        self.calls.append((msg_type, body, end - start))
        return decide(self.policy, msg_type, body)


def oracle(messages: list[tuple[bytes, bytes]], policy: str,
           max_inspect: int = MAX_INSPECT) -> tuple[bytes, list[tuple[int, bytes | None, int]]]:
    """The forwarded bytes and the handler calls the protocol rules call for."""
    out = []
    calls: list[tuple[int, bytes | None, int]] = []
    for msg_type, body in messages:
        raw = frame(msg_type, body)
        t = msg_type[0]
        if msg_type in WATCHED and len(body) > max_inspect:
            calls.append((t, None, len(body)))
            out.append(raw)        # announced at its header, streamed through unread
        elif msg_type in WATCHED:
            calls.append((t, body, len(body)))
            answer = decide(policy, t, body)
            out.append(raw if answer is None else answer)
        else:
            out.append(raw)
    return b"".join(out), calls


def scanner_for(recorder: Recorder, *, max_message: int = MAX_MESSAGE, max_inspect: int = MAX_INSPECT,
                watch: bytes = WATCH) -> MessageScanner:
    return MessageScanner(watch, recorder, max_message=max_message, max_inspect=max_inspect)


def run(chunks: list[bytes], policy: str, **kw) -> tuple[bytes, list]:
    rec = Recorder(policy)
    scanner = scanner_for(rec, **kw)
    out = b"".join(scanner.feed(chunk) for chunk in chunks)
    assert scanner.at_boundary
    return out, rec.calls


def cut(stream: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos = [], 0
    for size in sizes:
        if pos >= len(stream):
            break
        chunks.append(stream[pos:pos + size])
        pos += size
    if pos < len(stream):
        chunks.append(stream[pos:])
    return chunks


def boundaries(messages: list[tuple[bytes, bytes]]) -> set[int]:
    offsets, pos = {0}, 0
    for msg_type, body in messages:
        pos += 5 + len(body)
        offsets.add(pos)
    return offsets


# ---- strategies ------------------------------------------------------------------------------

bodies = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=MAX_INSPECT),                       # inspectable
    st.binary(min_size=MAX_INSPECT + 1, max_size=4 * MAX_INSPECT),     # too large to inspect
    st.sampled_from([MAX_INSPECT, MAX_INSPECT + 1]).map(lambda n: b"b" * n),   # either side of the limit
)
messages_st = st.lists(st.tuples(st.sampled_from([bytes([t]) for t in WATCHED + UNWATCHED]), bodies),
                       min_size=1, max_size=12)
policies = st.sampled_from(["keep", "drop", "replace", "mixed"])


# ---- splitting does not change the result ----------------------------------------------------

@given(messages_st, policies)
def test_whole_stream_matches_the_protocol_oracle(messages, policy):
    stream = b"".join(frame(t, b) for t, b in messages)
    assert run([stream], policy) == oracle(messages, policy)


@settings(max_examples=60)
@given(messages_st, policies)
def test_split_at_every_offset_gives_the_same_output_and_calls(messages, policy):
    stream = b"".join(frame(t, b) for t, b in messages)
    expected = oracle(messages, policy)
    for offset in range(len(stream) + 1):
        assert run([stream[:offset], stream[offset:]], policy) == expected, f"split at {offset}"


@given(messages_st, policies, st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=200))
def test_random_chunks_give_the_same_output_and_calls(messages, policy, sizes):
    stream = b"".join(frame(t, b) for t, b in messages)
    assert run(cut(stream, sizes), policy) == oracle(messages, policy)


@settings(max_examples=40)
@given(messages_st, policies)
def test_byte_at_a_time_gives_the_same_output_and_calls(messages, policy):
    stream = b"".join(frame(t, b) for t, b in messages)
    assert run([stream[i:i + 1] for i in range(len(stream))], policy) == oracle(messages, policy)


def test_every_split_of_a_small_stream_with_two_cuts():
    """Exhaustive over all (i, j) cut pairs: headers split twice, bodies split around a header."""
    messages = [(b"D", b"ab"), (b"Z", b"I"), (b"S", b"a\x00b\x00"), (b"d", b""), (b"E", b"x" * 5)]
    stream = b"".join(frame(t, b) for t, b in messages)
    for policy in ("keep", "mixed"):
        expected = oracle(messages, policy)
        for i in range(len(stream) + 1):
            for j in range(i, len(stream) + 1):
                assert run([stream[:i], stream[i:j], stream[j:]], policy) == expected, (policy, i, j)


@given(messages_st, st.lists(st.integers(min_value=0, max_value=40), max_size=100))
def test_at_boundary_is_true_exactly_between_messages(messages, sizes):
    stream = b"".join(frame(t, b) for t, b in messages)
    ends = boundaries(messages)
    scanner = scanner_for(Recorder())
    fed = 0
    assert scanner.at_boundary
    for chunk in cut(stream, sizes):
        scanner.feed(chunk)
        fed += len(chunk)
        assert scanner.at_boundary == (fed in ends), f"after {fed} bytes"


def test_at_boundary_false_inside_a_header_an_inspected_body_and_a_streamed_body():
    scanner = scanner_for(Recorder())
    scanner.feed(b"Z\x00\x00")                      # split header
    assert not scanner.at_boundary
    scanner.feed(b"\x00\x05")                       # header complete, body of a watched message missing
    assert not scanner.at_boundary
    scanner.feed(b"I")
    assert scanner.at_boundary
    scanner.feed(frame(b"D", b"x" * 100)[:50])      # unwatched, streaming
    assert not scanner.at_boundary
    scanner.feed(b"x" * 55)
    assert scanner.at_boundary


# ---- pass-through and streaming --------------------------------------------------------------

def test_unchanged_reads_are_forwarded_as_the_same_object():
    """When every message passes through, the read itself is written: no copy, one write."""
    scanner = scanner_for(Recorder("keep"))
    data = frame(b"D", b"row") + frame(b"Z", b"I") + frame(b"C", b"SELECT 1\x00")
    assert scanner.feed(data) is data
    streamed = frame(b"d", b"x" * 1000)
    assert scanner.feed(streamed[:300]) is not None
    tail = streamed[300:]
    assert scanner.feed(tail) is tail


@pytest.mark.parametrize("msg_type", [b"D", b"Z"], ids=["unwatched", "watched-too-large"])
def test_huge_message_streams_through_without_being_buffered(msg_type):
    size = 8 << 20
    rec = Recorder("drop")     # a watched message too large to read cannot be dropped: it streams
    scanner = scanner_for(rec, max_message=1 << 30, max_inspect=1 << 16)
    header = msg_type + struct.pack("!I", size + 4)
    out = scanner.feed(header + b"\x00" * 1000)
    assert out == header + b"\x00" * 1000, "bytes must be forwarded before the message ends"
    chunk = b"\x01" * 65536
    sent = 1000
    while sent + len(chunk) <= size:
        assert scanner.feed(chunk) == chunk
        assert scanner._partial is None
        assert not scanner.at_boundary
        sent += len(chunk)
    rest = b"\x02" * (size - sent)
    after = frame(b"Z", b"I")
    assert scanner.feed(rest + after) == rest, "the inspectable ReadyForQuery after it is dropped"
    assert scanner.at_boundary
    expected_calls = [(ord("Z"), b"I", 1)] if msg_type == b"D" else [(ord("Z"), None, size), (ord("Z"), b"I", 1)]
    assert rec.calls == expected_calls


def test_max_inspect_is_the_largest_body_a_handler_reads():
    rec = Recorder("drop")
    scanner = scanner_for(rec)
    at_limit, over = frame(b"E", b"a" * MAX_INSPECT), frame(b"E", b"b" * (MAX_INSPECT + 1))
    assert scanner.feed(at_limit + over) == over
    assert rec.calls == [(ord("E"), b"a" * MAX_INSPECT, MAX_INSPECT), (ord("E"), None, MAX_INSPECT + 1)]


def test_split_header_is_held_and_never_forwarded_twice():
    scanner = scanner_for(Recorder("keep"))
    data = frame(b"D", b"abc") + frame(b"D", b"def")
    assert scanner.feed(data[:10]) == data[:8]       # first message, then 2 bytes of a header held
    assert scanner._partial is not None and len(scanner._partial) == 2
    assert scanner.feed(data[10:]) == data[8:]


def test_scanner_with_nothing_watched_calls_no_handler():
    rec = Recorder("drop")
    scanner = scanner_for(rec, watch=WATCH_NONE)
    data = frame(b"Z", b"I") + frame(b"E", b"x")
    assert scanner.feed(data[:3]) == b"" and scanner.feed(data[3:]) == data
    assert rec.calls == []


# ---- errors are raised at the same point however the stream is split -------------------------

def _error_point(policy: str, chunks: list[bytes]):
    """Feed until the scanner raises; return (error, index of the byte being fed, output, calls)."""
    rec = Recorder(policy)
    scanner = scanner_for(rec)
    out = []
    fed = 0
    for chunk in chunks:
        try:
            out.append(scanner.feed(chunk))
        except ProtocolError as error:
            return error, fed, fed + len(chunk), b"".join(out), rec.calls
        fed += len(chunk)
    raise AssertionError("no ProtocolError raised")


@pytest.mark.parametrize("length, sqlstate", [
    (MAX_MESSAGE + 1, PROGRAM_LIMIT_EXCEEDED),
    (0xFFFFFFFF, PROGRAM_LIMIT_EXCEEDED),
    (3, PROTOCOL_VIOLATION),
    (0, PROTOCOL_VIOLATION),
])
@settings(max_examples=40)
@given(prefix=messages_st, policy=policies, bad_type=st.sampled_from([b"Z", b"D"]), trailer=st.binary(max_size=20),
       sizes=st.lists(st.integers(min_value=0, max_value=30), max_size=60))
def test_bad_length_raises_at_its_header_however_split(length, sqlstate, prefix, policy, bad_type, trailer, sizes):
    head = b"".join(frame(t, b) for t, b in prefix)
    stream = head + bad_type + struct.pack("!I", length) + trailer
    bad_end = len(head) + 5                      # the error is due once the whole header is in
    expected_out, expected_calls = oracle(prefix, policy)
    whole = [stream]
    for chunks in (whole, cut(stream, sizes), [stream[i:i + 1] for i in range(len(stream))]):
        error, start, stop, out, calls = _error_point(policy, chunks)
        assert error.sqlstate == sqlstate
        assert start < bad_end <= stop, "raised by the read that completed the bad header"
        assert calls == expected_calls
        assert expected_out.startswith(out), "nothing after the bad header may be forwarded"
    for offset in range(len(stream) + 1):
        error, start, stop, out, calls = _error_point(policy, [stream[:offset], stream[offset:]])
        assert (error.sqlstate, calls) == (sqlstate, expected_calls)


def test_max_packet_size_is_inclusive():
    limit = 100
    ok = b"D" + struct.pack("!I", limit) + b"x" * (limit - 4)
    scanner = scanner_for(Recorder(), max_message=limit)
    assert scanner.feed(ok) == ok
    with pytest.raises(ProtocolError) as raised:
        scanner.feed(b"D" + struct.pack("!I", limit + 1))
    assert raised.value.sqlstate == PROGRAM_LIMIT_EXCEEDED
    assert "max_packet_size" in raised.value.message


def test_length_four_is_an_empty_message_and_three_is_invalid():
    rec = Recorder()
    scanner = scanner_for(rec)
    assert scanner.feed(b"S\x00\x00\x00\x04") == b"S\x00\x00\x00\x04"
    assert rec.calls == [(ord("S"), b"", 0)]
    with pytest.raises(ProtocolError) as raised:
        scanner.feed(b"S\x00\x00\x00\x03")
    assert raised.value.sqlstate == PROTOCOL_VIOLATION


@settings(max_examples=40)
@given(prefix=messages_st, sizes=st.lists(st.integers(min_value=0, max_value=30), max_size=60))
def test_handler_error_propagates_at_the_same_message_however_split(prefix, sizes):
    """A handler refusing a message (the client's invalid-type check) stops the walk there."""
    def refusing(msg_type, buf, start, end):
        rec(msg_type, buf, start, end)
        if msg_type == ord("Q"):
            raise ProtocolError(PROTOCOL_VIOLATION, "refused")
        return None

    stream = b"".join(frame(t, b) for t, b in prefix) + frame(b"Q", b"bad\x00") + frame(b"Z", b"I")
    calls = oracle(prefix, "keep")[1] + [(ord("Q"), b"bad\x00", 4)]
    first_q = next(i for i, call in enumerate(calls) if call[0] == ord("Q"))
    expected = calls[:first_q + 1]
    for chunks in ([stream], cut(stream, sizes)):
        rec = Recorder()
        scanner = MessageScanner(WATCH, refusing, max_message=MAX_MESSAGE, max_inspect=MAX_INSPECT)
        with pytest.raises(ProtocolError):
            for chunk in chunks:
                scanner.feed(chunk)
        assert rec.calls == expected
