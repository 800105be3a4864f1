"""Protocol errors and the one ErrorResponse builder.

Owns: `ProtocolError(sqlstate, message)`, SQLSTATE names as in PostgreSQL's
errcodes.txt, and `error_response()` which every error sent to a client goes through.
"""

from __future__ import annotations

import struct

# SQLSTATEs used by pgpool, named as in errcodes.txt.
PROTOCOL_VIOLATION = "08P01"
CONNECTION_FAILURE = "08006"
SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION = "08001"
INVALID_AUTHORIZATION_SPECIFICATION = "28000"
INVALID_PASSWORD = "28P01"
INVALID_CATALOG_NAME = "3D000"
TOO_MANY_CONNECTIONS = "53300"
PROGRAM_LIMIT_EXCEEDED = "54000"
QUERY_CANCELED = "57014"
ADMIN_SHUTDOWN = "57P01"
CRASH_SHUTDOWN = "57P02"
CANNOT_CONNECT_NOW = "57P03"
IDLE_SESSION_TIMEOUT = "57P05"
IDLE_IN_TRANSACTION_SESSION_TIMEOUT = "25P03"
FEATURE_NOT_SUPPORTED = "0A000"
READ_ONLY_SQL_TRANSACTION = "25006"
OBJECT_NOT_IN_PREREQUISITE_STATE = "55000"
INTERNAL_ERROR = "XX000"
SYNTAX_ERROR = "42601"
INSUFFICIENT_PRIVILEGE = "42501"
DUPLICATE_PREPARED_STATEMENT = "42P05"
INVALID_SQL_STATEMENT_NAME = "26000"


class ProtocolError(Exception):
    """An error to report to one peer as an ErrorResponse, then usually close it."""

    def __init__(self, sqlstate: str, message: str, *, detail: str | None = None,
                 hint: str | None = None, severity: str = "FATAL", transient: bool = False):
        super().__init__(message)
        # A server login failure that may heal by itself (unreachable, reset): retried soon.
        self.transient = transient
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.hint = hint
        self.severity = severity

    def to_bytes(self) -> bytes:
        return error_response(self.sqlstate, self.message, detail=self.detail,
                              hint=self.hint, severity=self.severity)


def _field(code: bytes, value: str) -> bytes:
    return code + value.encode("utf-8", "replace").replace(b"\x00", b"?") + b"\x00"


def error_response(sqlstate: str, message: str, *, detail: str | None = None,
                   hint: str | None = None, severity: str = "ERROR") -> bytes:
    """Build an ErrorResponse ('E') message; FATAL for errors that close the connection."""
    body = _field(b"S", severity) + _field(b"V", severity) + _field(b"C", sqlstate) + _field(b"M", message)
    if detail:
        body += _field(b"D", detail)
    if hint:
        body += _field(b"H", hint)
    body += b"\x00"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def parse_error_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse / NoticeResponse body, keyed by their one-letter code."""
    fields: dict[str, str] = {}
    pos = 0
    end = len(body)
    while pos < end and body[pos] != 0:
        code = chr(body[pos])
        nul = body.find(b"\x00", pos + 1)
        if nul < 0:
            break
        fields[code] = body[pos + 1:nul].decode("utf-8", "replace")
        pos = nul + 1
    return fields
