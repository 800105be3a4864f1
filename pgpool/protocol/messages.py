"""Parse and build the control-plane messages.

Owns: StartupMessage and the special requests, authentication messages, ParameterStatus,
BackendKeyData, ReadyForQuery, Query, and the RowDescription / DataRow / CommandComplete
shapes the admin console answers with. The data plane never calls these per message.
"""

from __future__ import annotations

import struct
from typing import Iterable, Sequence

from .constants import (
    AUTH_CLEARTEXT, AUTH_MD5, AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL,
    CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, PROTOCOL_VERSION_3, SSL_REQUEST_CODE,
)
from .errors import PROTOCOL_VIOLATION, FEATURE_NOT_SUPPORTED, ProtocolError

_int32 = struct.Struct("!I")
_int32x2 = struct.Struct("!II")
_int16 = struct.Struct("!h")


def message(msg_type: bytes, body: bytes = b"") -> bytes:
    return msg_type + _int32.pack(len(body) + 4) + body


def cstring(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


# ---- startup phase -------------------------------------------------------------------------

class StartupKind:
    STARTUP = "startup"
    SSL = "ssl"
    GSSENC = "gssenc"
    CANCEL = "cancel"


def parse_startup_packet(packet: bytes) -> tuple[str, object]:
    """Classify a length-prefixed startup-phase packet (length included).

    Returns (kind, payload): parameters dict for StartupMessage, (pid, key) for CancelRequest.
    """
    if len(packet) < 8:
        raise ProtocolError(PROTOCOL_VIOLATION, "invalid startup packet length")
    code = _int32.unpack_from(packet, 4)[0]
    if code == SSL_REQUEST_CODE:
        return StartupKind.SSL, None
    if code == GSSENC_REQUEST_CODE:
        return StartupKind.GSSENC, None
    if code == CANCEL_REQUEST_CODE:
        if len(packet) != 16:
            raise ProtocolError(PROTOCOL_VIOLATION, "invalid CancelRequest length")
        return StartupKind.CANCEL, _int32x2.unpack_from(packet, 8)
    if code >> 16 != 3:
        raise ProtocolError(FEATURE_NOT_SUPPORTED,
                            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0")
    return StartupKind.STARTUP, parse_startup_parameters(packet[8:])


def parse_startup_parameters(body: bytes) -> dict[str, str]:
    parts = body.split(b"\x00")
    # A well-formed body is name\0value\0...\0, so it ends with two empty parts.
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"":
        raise ProtocolError(PROTOCOL_VIOLATION, "invalid startup packet layout: expected terminator as last byte")
    parts = parts[:-2]
    if len(parts) % 2:
        raise ProtocolError(PROTOCOL_VIOLATION, "invalid startup packet layout: missing parameter value")
    params: dict[str, str] = {}
    for i in range(0, len(parts), 2):
        try:
            name = parts[i].decode("utf-8")
            value = parts[i + 1].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(PROTOCOL_VIOLATION, "startup packet is not valid UTF-8") from None
        params[name] = value
    return params


def startup_minor_version(packet: bytes) -> int:
    return _int32.unpack_from(packet, 4)[0] & 0xFFFF


def negotiate_protocol_version(newest_minor: int, unrecognized: list[str]) -> bytes:
    """NegotiateProtocolVersion: what a 3.0 server answers a newer minor version or _pq_ options."""
    return message(b"v", _int32.pack(newest_minor) + _int32.pack(len(unrecognized))
                   + b"".join(cstring(name) for name in unrecognized))


def startup_message(params: dict[str, str]) -> bytes:
    body = _int32.pack(PROTOCOL_VERSION_3) + b"".join(cstring(k) + cstring(v) for k, v in params.items()) + b"\x00"
    return _int32.pack(len(body) + 4) + body


# SSLRequest: the 8-byte packet a client sends to ask for TLS before its StartupMessage.
SSL_REQUEST = _int32.pack(8) + _int32.pack(SSL_REQUEST_CODE)


def cancel_request(pid: int, key: int) -> bytes:
    return _int32.pack(16) + _int32.pack(CANCEL_REQUEST_CODE) + _int32x2.pack(pid, key)


# ---- authentication ------------------------------------------------------------------------

AUTHENTICATION_OK = message(b"R", _int32.pack(AUTH_OK))
AUTHENTICATION_CLEARTEXT = message(b"R", _int32.pack(AUTH_CLEARTEXT))


def authentication_md5(salt: bytes) -> bytes:
    return message(b"R", _int32.pack(AUTH_MD5) + salt)


def authentication_sasl(mechanisms: Iterable[str] = ("SCRAM-SHA-256",)) -> bytes:
    return message(b"R", _int32.pack(AUTH_SASL) + b"".join(cstring(m) for m in mechanisms) + b"\x00")


def authentication_sasl_continue(data: bytes) -> bytes:
    return message(b"R", _int32.pack(AUTH_SASL_CONTINUE) + data)


def authentication_sasl_final(data: bytes) -> bytes:
    return message(b"R", _int32.pack(AUTH_SASL_FINAL) + data)


def parse_authentication(body: bytes) -> tuple[int, bytes]:
    if len(body) < 4:
        raise ProtocolError(PROTOCOL_VIOLATION, "invalid authentication message")
    return _int32.unpack_from(body, 0)[0], body[4:]


def parse_sasl_mechanisms(data: bytes) -> list[str]:
    return [m.decode("utf-8", "replace") for m in data.split(b"\x00") if m]


def password_message(password: str | bytes) -> bytes:
    if isinstance(password, str):
        password = password.encode("utf-8")
    return message(b"p", password + b"\x00")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", cstring(mechanism) + _int32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


def parse_sasl_initial_response(body: bytes) -> tuple[str, bytes]:
    nul = body.find(b"\x00")
    if nul < 0 or len(body) < nul + 5:
        raise ProtocolError(PROTOCOL_VIOLATION, "malformed SASLInitialResponse")
    mechanism = body[:nul].decode("utf-8", "replace")
    size = struct.unpack_from("!i", body, nul + 1)[0]
    data = body[nul + 5:]
    if size != -1 and size != len(data):
        raise ProtocolError(PROTOCOL_VIOLATION, "malformed SASLInitialResponse length")
    return mechanism, data


def parse_password(body: bytes) -> str:
    if not body.endswith(b"\x00"):
        raise ProtocolError(PROTOCOL_VIOLATION, "malformed password message")
    return body[:-1].decode("utf-8", "replace")


# ---- session messages ----------------------------------------------------------------------

def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstring(name) + cstring(value))


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    parts = body.split(b"\x00")
    if len(parts) < 3:
        raise ProtocolError(PROTOCOL_VIOLATION, "malformed ParameterStatus")
    return parts[0].decode("utf-8", "replace"), parts[1].decode("utf-8", "replace")


def backend_key_data(pid: int, key: int) -> bytes:
    return message(b"K", _int32x2.pack(pid, key))


def parse_backend_key_data(body: bytes) -> tuple[int, int]:
    if len(body) < 8:
        raise ProtocolError(PROTOCOL_VIOLATION, "malformed BackendKeyData")
    return _int32x2.unpack_from(body, 0)


READY_FOR_QUERY_IDLE = message(b"Z", b"I")
SYNC = message(b"S")
FLUSH = message(b"H")
TERMINATE = message(b"X")


def ready_for_query(status: int) -> bytes:
    return message(b"Z", bytes((status,)))


def query(sql: str) -> bytes:
    return message(b"Q", cstring(sql))


def parse_notification(body: bytes) -> tuple[int, str, str]:
    parts = body[4:].split(b"\x00")
    if len(body) < 4 or len(parts) < 3:
        raise ProtocolError(PROTOCOL_VIOLATION, "malformed NotificationResponse")
    pid = _int32.unpack_from(body, 0)[0]
    return pid, parts[0].decode("utf-8", "replace"), parts[1].decode("utf-8", "replace")


# ---- admin console result sets -------------------------------------------------------------

TEXT_OID = 25
INT8_OID = 20
NUMERIC_OID = 1700


def row_description(columns: Sequence[tuple[str, int]]) -> bytes:
    body = _int16.pack(len(columns))
    for name, type_oid in columns:
        size = 8 if type_oid == INT8_OID else -1
        body += cstring(name) + struct.pack("!IhIhih", 0, 0, type_oid, size, -1, 0)
    return message(b"T", body)


def data_row(values: Sequence[object]) -> bytes:
    body = _int16.pack(len(values))
    for value in values:
        if value is None:
            body += struct.pack("!i", -1)
        else:
            raw = str(value).encode("utf-8")
            body += _int32.pack(len(raw)) + raw
    return message(b"D", body)


def first_column(buf: bytes, start: int, end: int) -> str | None:
    """The first column of a DataRow body, as text (None for NULL or an empty row)."""
    if end - start < 6 or _int16.unpack_from(buf, start)[0] < 1:
        return None
    size = struct.unpack_from("!i", buf, start + 2)[0]
    if size < 0:
        return None
    return buf[start + 6:start + 6 + size].decode("utf-8", "replace")


def command_complete(tag: str) -> bytes:
    return message(b"C", cstring(tag))


def notice_response(message_text: str, severity: str = "NOTICE", sqlstate: str = "00000") -> bytes:
    body = (b"S" + cstring(severity) + b"V" + cstring(severity) + b"C" + cstring(sqlstate)
            + b"M" + cstring(message_text) + b"\x00")
    return message(b"N", body)


def empty_query_response() -> bytes:
    return message(b"I")
