"""Startup packets, control-plane builders and parsers, and ErrorResponse fields (no sockets).

Expected bytes are written out from the PostgreSQL protocol docs ("Message Formats"),
not produced by the code under test.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgpool.protocol import messages as m
from pgpool.protocol.constants import AUTH_MD5, AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL
from pgpool.protocol.errors import (
    FEATURE_NOT_SUPPORTED, PROTOCOL_VIOLATION, ProtocolError, error_response, parse_error_fields,
)


def packet(code: int, payload: bytes = b"") -> bytes:
    """A startup-phase packet: Int32 length (itself included), Int32 code, payload."""
    return struct.pack("!II", 8 + len(payload), code) + payload


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """(type byte, body) of one typed message, checking its length word."""
    assert len(raw) >= 5
    (length,) = struct.unpack_from("!I", raw, 1)
    assert length == len(raw) - 1, "length word must count itself and the body"
    return raw[:1], raw[5:]


def expect_error(sqlstate: str, fn, *args) -> ProtocolError:
    with pytest.raises(ProtocolError) as raised:
        fn(*args)
    assert raised.value.sqlstate == sqlstate
    return raised.value


# ---- startup packets --------------------------------------------------------------------------

def test_ssl_request():
    assert m.parse_startup_packet(packet(80877103)) == (m.StartupKind.SSL, None)


def test_gssenc_request():
    assert m.parse_startup_packet(packet(80877104)) == (m.StartupKind.GSSENC, None)


def test_cancel_request():
    raw = packet(80877102, struct.pack("!II", 4242, 0xDEADBEEF))
    assert m.parse_startup_packet(raw) == (m.StartupKind.CANCEL, (4242, 0xDEADBEEF))


@pytest.mark.parametrize("payload", [b"", b"\x00" * 4, b"\x00" * 12], ids=["no-key", "short", "long"])
def test_cancel_request_of_the_wrong_length_is_a_protocol_violation(payload):
    expect_error(PROTOCOL_VIOLATION, m.parse_startup_packet, packet(80877102, payload))


def test_startup_message_v3():
    body = b"user\x00alice\x00database\x00app\x00options\x00-c a=b\x00\x00"
    kind, params = m.parse_startup_packet(packet(196608, body))
    assert kind == m.StartupKind.STARTUP
    assert params == {"user": "alice", "database": "app", "options": "-c a=b"}


def test_startup_message_with_no_parameters():
    assert m.parse_startup_packet(packet(196608, b"\x00")) == (m.StartupKind.STARTUP, {})


@pytest.mark.parametrize("major, minor", [(2, 0), (1, 0), (4, 0), (0, 0), (1234, 5677)])
def test_other_protocol_versions_are_refused_with_feature_not_supported(major, minor):
    error = expect_error(FEATURE_NOT_SUPPORTED, m.parse_startup_packet,
                         packet(major << 16 | minor, b"user\x00a\x00\x00"))
    assert f"{major}.{minor}" in error.message


@pytest.mark.parametrize("raw", [b"", b"\x00\x00\x00\x08", b"\x00\x00\x00\x07\x00\x03\x00"],
                         ids=["empty", "length-only", "seven-bytes"])
def test_packets_shorter_than_eight_bytes_are_a_protocol_violation(raw):
    expect_error(PROTOCOL_VIOLATION, m.parse_startup_packet, raw)


@pytest.mark.parametrize("body", [
    b"",                                   # no terminator at all
    b"user\x00alice\x00",                  # last pair not followed by the terminator
    b"user\x00alice",                      # value not NUL-terminated
    b"user\x00\x00",                       # name without value: "user" then terminator
    b"user\x00alice\x00database\x00\x00",  # odd number of strings
    b"user\x00alice\x00\x00extra",         # bytes after the terminator
    b"us\xffer\x00alice\x00\x00",          # not UTF-8
    b"user\x00al\xc3\x00\x00",             # truncated UTF-8 sequence
], ids=["empty", "no-terminator", "unterminated-value", "missing-value", "odd", "trailing", "bad-utf8-name",
        "bad-utf8-value"])
def test_malformed_startup_layouts_are_a_protocol_violation(body):
    expect_error(PROTOCOL_VIOLATION, m.parse_startup_packet, packet(196608, body))


@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_but_protocol_error(raw):
    try:
        m.parse_startup_packet(raw)
    except ProtocolError:
        pass


@given(st.sampled_from([196608, 80877102, 80877103, 80877104, 131072]),
       st.lists(st.sampled_from([b"\x00", b"user", b"\xff", b"\xc3", b"a", b"="]), max_size=12))
def test_random_startup_bodies_never_raise_anything_but_protocol_error(code, pieces):
    try:
        kind, payload = m.parse_startup_packet(packet(code, b"".join(pieces)))
    except ProtocolError:
        return
    if kind == m.StartupKind.STARTUP:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in payload.items())


# ---- builders round-trip with parsers ---------------------------------------------------------

text = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=30)


@given(st.dictionaries(text.filter(bool), text, max_size=6))
def test_startup_message_round_trips(params):
    raw = m.startup_message(params)
    assert struct.unpack_from("!I", raw)[0] == len(raw)
    assert m.parse_startup_packet(raw) == (m.StartupKind.STARTUP, params)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_cancel_request_round_trips(pid, key):
    raw = m.cancel_request(pid, key)
    assert raw == struct.pack("!IIII", 16, 80877102, pid, key)
    assert m.parse_startup_packet(raw) == (m.StartupKind.CANCEL, (pid, key))


@given(text, text)
def test_parameter_status_round_trips(name, value):
    t, body = split_message(m.parameter_status(name, value))
    assert t == b"S"
    assert m.parse_parameter_status(body) == (name, value)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_backend_key_data_round_trips(pid, key):
    t, body = split_message(m.backend_key_data(pid, key))
    assert (t, body) == (b"K", struct.pack("!II", pid, key))
    assert m.parse_backend_key_data(body) == (pid, key)


@given(text)
def test_password_message_round_trips(password):
    t, body = split_message(m.password_message(password))
    assert t == b"p"
    assert m.parse_password(body) == password


@given(st.binary(max_size=100))
def test_sasl_initial_response_round_trips(data):
    t, body = split_message(m.sasl_initial_response("SCRAM-SHA-256", data))
    assert t == b"p"
    assert body == b"SCRAM-SHA-256\x00" + struct.pack("!i", len(data)) + data
    assert m.parse_sasl_initial_response(body) == ("SCRAM-SHA-256", data)


def test_sasl_initial_response_without_data_uses_length_minus_one():
    assert m.parse_sasl_initial_response(b"SCRAM-SHA-256\x00\xff\xff\xff\xff") == ("SCRAM-SHA-256", b"")


@pytest.mark.parametrize("body", [b"SCRAM-SHA-256", b"SCRAM-SHA-256\x00\x00\x00", b"M\x00\x00\x00\x00\x05abc"],
                         ids=["no-nul", "short-length", "length-mismatch"])
def test_malformed_sasl_initial_response_is_a_protocol_violation(body):
    expect_error(PROTOCOL_VIOLATION, m.parse_sasl_initial_response, body)


def test_password_without_terminator_is_a_protocol_violation():
    expect_error(PROTOCOL_VIOLATION, m.parse_password, b"secret")


@pytest.mark.parametrize("raw, code, data", [
    (m.AUTHENTICATION_OK, AUTH_OK, b""),
    (m.authentication_md5(b"salt"), AUTH_MD5, b"salt"),
    (m.authentication_sasl_continue(b"r=abc"), AUTH_SASL_CONTINUE, b"r=abc"),
    (m.authentication_sasl_final(b"v=xyz"), AUTH_SASL_FINAL, b"v=xyz"),
], ids=["ok", "md5", "sasl-continue", "sasl-final"])
def test_authentication_messages_round_trip(raw, code, data):
    t, body = split_message(raw)
    assert t == b"R"
    assert m.parse_authentication(body) == (code, data)


def test_authentication_sasl_lists_mechanisms():
    t, body = split_message(m.authentication_sasl(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]))
    assert body == struct.pack("!I", AUTH_SASL) + b"SCRAM-SHA-256\x00SCRAM-SHA-256-PLUS\x00\x00"
    code, data = m.parse_authentication(body)
    assert code == AUTH_SASL
    assert m.parse_sasl_mechanisms(data) == ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]


def test_constant_messages_are_as_the_docs_say():
    assert m.READY_FOR_QUERY_IDLE == b"Z\x00\x00\x00\x05I"
    assert m.ready_for_query(ord("T")) == b"Z\x00\x00\x00\x05T"
    assert m.SYNC == b"S\x00\x00\x00\x04"
    assert m.FLUSH == b"H\x00\x00\x00\x04"
    assert m.TERMINATE == b"X\x00\x00\x00\x04"
    assert m.empty_query_response() == b"I\x00\x00\x00\x04"
    assert m.query("SELECT 1") == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert m.command_complete("SELECT 1") == b"C\x00\x00\x00\x0dSELECT 1\x00"


def test_notification_round_trips():
    body = struct.pack("!I", 77) + b"ch\x00" + b"payload\x00"
    t, body = split_message(b"A" + struct.pack("!I", 4 + len(body)) + body)
    assert m.parse_notification(body) == (77, "ch", "payload")


def decode_row_description(body: bytes) -> list[tuple[str, int, int]]:
    (count,) = struct.unpack_from("!h", body)
    pos, columns = 2, []
    for _ in range(count):
        nul = body.index(b"\x00", pos)
        name = body[pos:nul].decode()
        table_oid, attnum, type_oid, size, typmod, fmt = struct.unpack_from("!IhIhih", body, nul + 1)
        assert (table_oid, attnum, typmod, fmt) == (0, 0, -1, 0)
        columns.append((name, type_oid, size))
        pos = nul + 1 + 18
    assert pos == len(body)
    return columns


def decode_data_row(body: bytes) -> list[bytes | None]:
    (count,) = struct.unpack_from("!h", body)
    pos, values = 2, []
    for _ in range(count):
        (size,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if size == -1:
            values.append(None)
        else:
            values.append(body[pos:pos + size])
            pos += size
    assert pos == len(body)
    return values


def test_row_description_layout():
    t, body = split_message(m.row_description([("database", m.TEXT_OID), ("cl_active", m.INT8_OID)]))
    assert t == b"T"
    assert decode_row_description(body) == [("database", 25, -1), ("cl_active", 20, 8)]


@given(st.lists(st.one_of(st.none(), st.integers(), text), max_size=8))
def test_data_row_round_trips(values):
    t, body = split_message(m.data_row(values))
    assert t == b"D"
    assert decode_data_row(body) == [None if v is None else str(v).encode() for v in values]


def test_notice_response_fields():
    t, body = split_message(m.notice_response("pool is paused", severity="WARNING", sqlstate="01000"))
    assert t == b"N"
    assert parse_error_fields(body) == {"S": "WARNING", "V": "WARNING", "C": "01000", "M": "pool is paused"}


# ---- ErrorResponse -----------------------------------------------------------------------------

any_text = st.text(max_size=40)   # NULs and lone surrogates included


def sent_as(value: str) -> str:
    """What a client reads back: NUL cannot be inside a field, unencodable characters are replaced."""
    return value.encode("utf-8", "replace").replace(b"\x00", b"?").decode("utf-8")


@given(st.sampled_from(["ERROR", "FATAL", "PANIC"]), st.text("0123456789ABCDEFP", min_size=5, max_size=5),
       any_text, st.one_of(st.none(), any_text), st.one_of(st.none(), any_text))
def test_error_response_round_trips(severity, sqlstate, message, detail, hint):
    t, body = split_message(error_response(sqlstate, message, detail=detail, hint=hint, severity=severity))
    assert t == b"E"
    assert body.endswith(b"\x00\x00") or body == b"\x00"
    expected = {"S": severity, "V": severity, "C": sqlstate, "M": sent_as(message)}
    if detail:
        expected["D"] = sent_as(detail)
    if hint:
        expected["H"] = sent_as(hint)
    assert parse_error_fields(body) == expected


def test_nul_in_a_message_does_not_cut_the_error_short():
    t, body = split_message(error_response("XX000", "before\x00after", detail="d\x00d"))
    fields = parse_error_fields(body)
    assert fields["M"] == "before?after"
    assert fields["D"] == "d?d"
    assert fields["C"] == "XX000"


def test_non_utf8_in_a_received_error_is_replaced_not_raised():
    body = b"SERROR\x00C22021\x00Minvalid byte \xff\xfe here\x00\x00"
    assert parse_error_fields(body) == {"S": "ERROR", "C": "22021", "M": "invalid byte \ufffd\ufffd here"}


def test_unencodable_text_in_a_sent_error_is_replaced():
    fields = parse_error_fields(split_message(error_response("XX000", "bad \udcff char"))[1])
    assert fields["M"] == "bad ? char"


def test_protocol_error_is_fatal_by_default():
    error = ProtocolError(PROTOCOL_VIOLATION, "invalid frontend message type 122", hint="h")
    fields = parse_error_fields(split_message(error.to_bytes())[1])
    assert fields == {"S": "FATAL", "V": "FATAL", "C": "08P01", "M": "invalid frontend message type 122", "H": "h"}


@given(st.binary(max_size=80))
def test_parse_error_fields_accepts_any_bytes(body):
    fields = parse_error_fields(body)
    assert all(len(code) == 1 for code in fields)


# ---- every parser of bytes a peer sent fails only with ProtocolError ---------------------------

PEER_INPUT_PARSERS = [
    m.parse_authentication, m.parse_sasl_mechanisms, m.parse_password, m.parse_sasl_initial_response,
    m.parse_parameter_status, m.parse_backend_key_data, m.parse_notification,
]


@pytest.mark.parametrize("parse", PEER_INPUT_PARSERS, ids=lambda f: f.__name__)
@given(body=st.one_of(st.binary(max_size=24),
                      st.lists(st.sampled_from([b"\x00", b"\xff", b"ab", b"\x00\x00\x00"]), max_size=8).map(b"".join)))
def test_parsers_of_peer_input_raise_only_protocol_error(parse, body):
    try:
        parse(body)
    except ProtocolError as error:
        assert error.sqlstate == PROTOCOL_VIOLATION
