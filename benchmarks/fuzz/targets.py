"""The fuzz targets: one function per parser of untrusted bytes, plus seeds.

A target is a plain function `f(data: bytes) -> None` registered with the exception
types its parser documents (`ProtocolError`, `ScramError`, `ConfigError`, ...). Raising
one of those is a refusal, which is fine; any other exception, an assertion about the
parser's own invariants, a hang or a huge allocation is a crash. Targets read their
input with `Input` (no atheris import here), so a crash file replays with plain Python:
`python -m benchmarks.fuzz --target NAME --replay FILE`.

Adding a target is one decorated function. Statement classifiers are one entry in
`CLASSIFIERS` (the `classify` target runs them all on every input).
"""

from __future__ import annotations

import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pgpool import auth, params, prepared, session
from pgpool.config import ConfigError, _Loader
from pgpool.protocol import messages as m
from pgpool.protocol import scram
from pgpool.protocol import startup
from pgpool.protocol.constants import (
    AUTH_SASL, B_AUTHENTICATION, B_BACKEND_KEY_DATA, B_DATA_ROW, B_ERROR_RESPONSE,
    B_NOTICE_RESPONSE, B_NOTIFICATION_RESPONSE, B_PARAMETER_STATUS, B_READY_FOR_QUERY,
)
from pgpool.protocol.errors import ProtocolError, parse_error_fields
from pgpool.protocol.framing import MessageScanner

_int16 = struct.Struct("!H")
_int32 = struct.Struct("!I")


class Input:
    """Structured reads from fuzz bytes; reads past the end give zeros / empty bytes."""
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    @property
    def empty(self) -> bool:
        return self.pos >= len(self.data)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return (self.byte() << 8) | self.byte()

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def part(self) -> bytes:
        """A u16-length-prefixed piece (how multi-message targets split their input)."""
        return self.take(self.u16())

    def rest(self) -> bytes:
        chunk = self.data[self.pos:]
        self.pos = len(self.data)
        return chunk


def part(data: bytes) -> bytes:
    """The encoding `Input.part` reads, for seeds and regression inputs."""
    return _int16.pack(len(data)) + data


@dataclass
class Target:
    name: str
    func: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    doc: str
    seeds: list[bytes] = field(default_factory=list)
    max_len: int = 4096

    def run(self, data: bytes) -> None:
        """One input: documented refusals are fine, anything else propagates (a crash)."""
        try:
            self.func(data)
        except self.allowed:
            pass


TARGETS: dict[str, Target] = {}


def target(*allowed: type[BaseException], seeds: Callable[[], list[bytes]] = lambda: [],
           max_len: int = 4096) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
    def register(func: Callable[[bytes], None]) -> Callable[[bytes], None]:
        name = func.__name__.removeprefix("fuzz_")
        doc = (func.__doc__ or "").strip().splitlines()[0]
        TARGETS[name] = Target(name, func, tuple(allowed), doc, seeds(), max_len)
        return func
    return register


def frame(msg_type: bytes, body: bytes = b"") -> bytes:
    return msg_type + _int32.pack(len(body) + 4) + body


# ---- startup phase ---------------------------------------------------------------------------

def _startup_seeds() -> list[bytes]:
    return [
        m.startup_message({"user": "app", "database": "app", "application_name": "x",
                           "options": "-c search_path=a\\ b --work_mem=4MB"}),
        _int32.pack(8) + _int32.pack(80877103) + m.startup_message({"user": "u"}),   # SSLRequest, then startup
        _int32.pack(8) + _int32.pack(80877104),                                        # GSSENCRequest
        m.cancel_request(1234, 5678),
        _int32.pack(8 + 10) + _int32.pack(3 << 16 | 2) + b"_pq_.x\x00y\x00\x00",   # 3.2 with a _pq_ option
    ]


@target(ProtocolError, seeds=_startup_seeds)
def fuzz_startup(data: bytes) -> None:
    """StartupMessage, SSLRequest, GSSENCRequest, CancelRequest as the client login machine reads them."""
    login = startup.ClientLogin()
    login.receive_data(data)
    login.receive_eof()
    while True:
        event = login.next_event()
        if isinstance(event, startup.SslRequest):
            login.answer_ssl(False)    # SSL/GSSENC requests are followed by the real startup packet
        elif isinstance(event, startup.CancelRequest):
            assert 0 <= event.pid < 1 << 32 and 0 <= event.key < 1 << 32
            return
        elif isinstance(event, startup.Startup):
            assert event.user and event.database
            for name in event.params:
                params.canonical_name(name)
            params.parse_options(event.params.get("options", ""))
            return
        else:
            assert event is startup.NEED_DATA
            return


# ---- authentication --------------------------------------------------------------------------

_PASSWORD = "pencil"
_VERIFIER = scram.make_verifier(_PASSWORD, salt=b"fuzz-fixed-salt!", iterations=64)
_SERVER_NONCE = "S" * 24
_CLIENT_NONCE = "C" * 24
_USERS = {"plain": "secret", "md5": auth.md5_secret("md5", "secret")}


def _scram_exchange() -> tuple[bytes, bytes, bytes, bytes]:
    """A successful exchange with fixed nonces: client-first, server-first, client-final, server-final."""
    client = scram.ScramClient(_PASSWORD, nonce=_CLIENT_NONCE)
    server = scram.ScramServer(_VERIFIER, nonce=_SERVER_NONCE)
    c1 = client.client_first()
    s1 = server.handle_client_first(c1)
    c2 = client.handle_server_first(s1)
    s2 = server.handle_client_final(c2)
    client.handle_server_final(s2)
    return c1, s1, c2, s2


def _scram_server_seeds() -> list[bytes]:
    c1, _, c2, _ = _scram_exchange()
    initial = m.cstring("SCRAM-SHA-256") + _int32.pack(len(c1)) + c1
    no_nonce = b",".join(p for p in c2.split(b",") if not p.startswith(b"r="))   # CVE class: no nonce
    return [part(initial) + c2, part(initial) + no_nonce,
            part(m.cstring("SCRAM-SHA-256") + b"\xff\xff\xff\xff" + c1) + c2,   # length -1
            part(m.cstring("SCRAM-SHA-256") + b"\x7f\xff\xff\xff" + c1) + c2]   # length overflows


@target(ProtocolError, scram.ScramError, seeds=_scram_server_seeds)
def fuzz_scram_server(data: bytes) -> None:
    """SCRAM, pgpool as server: SASLInitialResponse (client-first) then SASLResponse (client-final)."""
    inp = Input(data)
    mechanism, first = m.parse_sasl_initial_response(inp.part())
    exchange = scram.ScramServer(_VERIFIER, nonce=_SERVER_NONCE)
    server_first = exchange.handle_client_first(first)
    assert server_first.startswith(b"r=")
    exchange.handle_client_final(inp.rest())
    # Reaching here means the proof matched: only the fixed password can do that.
    assert exchange.client_key is not None


def _scram_client_seeds() -> list[bytes]:
    _, s1, _, s2 = _scram_exchange()
    huge = s1.replace(b"i=64", b"i=2147483647")                    # CVE class: absurd iteration count
    return [b"\x00" + part(s1) + s2, b"\x01" + part(s1) + s2, b"\x00" + part(huge) + s2,
            b"\x01" + part(s1) + b"e=invalid-proof"]


_CLIENT_KEY = scram._hmac(scram.hashlib.pbkdf2_hmac("sha256", _PASSWORD.encode(), _VERIFIER.salt, 64),
                          b"Client Key")


@target(scram.ScramError, seeds=_scram_client_seeds)
def fuzz_scram_client(data: bytes) -> None:
    """SCRAM, pgpool as client of a hostile server: server-first then server-final."""
    inp = Input(data)
    if inp.byte() & 7 == 0:
        # The password path runs PBKDF2 with the server's count: the bound is what is tested.
        client = scram.ScramClient(_PASSWORD, nonce=_CLIENT_NONCE)
    else:
        client = scram.ScramClient(client_key=_CLIENT_KEY, server_key=_VERIFIER.server_key, nonce=_CLIENT_NONCE)
    client.client_first()
    client.handle_server_first(inp.part())
    client.handle_server_final(inp.rest())


def _password_seeds() -> list[bytes]:
    salt = b"\x01\x02\x03\x04"
    return [b"\x00" + salt + b"secret\x00", b"\x01" + salt + auth.md5_response(_USERS["md5"], "md5", salt).encode()
            + b"\x00", b"\x02" + salt + _VERIFIER.to_secret().encode() + b"\x00",
            b"\x03" + salt + m.cstring("SCRAM-SHA-256") + b"\xff\xff\xff\xff"]


@target(ProtocolError, seeds=_password_seeds)
def fuzz_password(data: bytes) -> None:
    """PasswordMessage (cleartext, md5), SASLInitialResponse, and secrets read back as verifiers."""
    inp = Input(data)
    mode = inp.byte() & 3
    salt = inp.take(4)
    body = inp.rest()
    if mode == 3:
        m.parse_sasl_initial_response(body)
        return
    password = m.parse_password(body)
    if mode == 0:
        assert auth.check_plain(auth.lookup_credentials(_USERS, "plain"), password) == (password == "secret")
    elif mode == 1:
        auth.check_md5(auth.lookup_credentials(_USERS, "md5"), salt, password)
    else:
        auth.secret_kind(password)
        scram.parse_verifier(password)


# ---- framing ---------------------------------------------------------------------------------

def _policy(msg_type: int, body: bytes) -> bytes | None:
    """What the test handler does with a watched message: a pure function of it."""
    if msg_type % 3 == 1:
        return b""
    if msg_type % 3 == 2:
        return frame(b"N", body[:3])
    return None


def _reference_walk(stream: bytes, watch: bytes, max_message: int, max_inspect: int) -> tuple[bytes, bool, bool]:
    """(forwarded bytes, error found, stream ends on a message boundary), computed message by message."""
    out = []
    pos, n = 0, len(stream)
    while pos < n:
        if n - pos < 5:
            return b"".join(out), False, False
        msg_type = stream[pos]
        length = _int32.unpack_from(stream, pos + 1)[0]
        if length < 4 or length > max_message:
            return b"".join(out), True, False
        end = pos + 1 + length
        if watch[msg_type] and length - 4 <= max_inspect:
            if end > n:
                return b"".join(out), False, False
            answer = _policy(msg_type, stream[pos + 5:end])
            out.append(stream[pos:end] if answer is None else answer)
        else:
            out.append(stream[pos:end])
        pos = end
    return b"".join(out), False, pos == n


def _scan_in_chunks(data: bytes, parse_whole: Callable[[int, bytes], None] | None) -> None:
    inp = Input(data)
    bits = inp.take(32).ljust(32, b"\x00")
    watch = bytes(bits[i // 8] >> (i % 8) & 1 for i in range(256))
    max_message = (64, 512, 1 << 20)[inp.byte() % 3]
    max_inspect = inp.byte() % 80
    cuts = [inp.byte() % 64 + 1 for _ in range(inp.byte() % 16)]
    stream = inp.rest()

    def handler(msg_type: int, buf: bytes | None, start: int, end: int) -> bytes | None:
        if buf is None:
            assert end - start > max_inspect
            return None
        body = buf[start:end]
        if parse_whole is not None:
            try:
                parse_whole(msg_type, body)
            except ProtocolError:
                pass
        return _policy(msg_type, body)

    scanner = MessageScanner(watch, handler, max_message=max_message, max_inspect=max_inspect)
    chunks, pos = [], 0
    for size in cuts:
        chunks.append(stream[pos:pos + size])
        pos += size
    chunks.append(stream[pos:])
    out = []
    expected, error, boundary = _reference_walk(stream, watch, max_message, max_inspect)
    try:
        for chunk in chunks:
            out.append(scanner.feed(chunk))
    except ProtocolError:
        assert error, "scanner refused a stream whose headers are all valid"
        assert expected.startswith(b"".join(out))
        raise
    assert not error, "scanner accepted an invalid length"
    assert b"".join(out) == expected, "chunking changed what was forwarded"
    assert scanner.at_boundary == boundary


def _framing_seeds() -> list[bytes]:
    head = b"\xff" * 32 + b"\x02\x40" + b"\x03\x05\x07\x0b"   # watch all; 1 MB; inspect 64; 3 cuts
    stream = (frame(b"P", b"s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17") + frame(b"B", b"\x00s1\x00" + b"\x00" * 8)
              + frame(b"E", b"\x00\x00\x00\x00\x00") + frame(b"S") + frame(b"Q", b"SELECT 1\x00")
              + frame(b"d", b"x" * 100) + frame(b"X"))
    backend = (frame(b"R", b"\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00") + frame(b"S", b"TimeZone\x00UTC\x00")
               + frame(b"K", b"\x00\x00\x00\x01\x00\x00\x00\x02") + frame(b"Z", b"I")
               + frame(b"E", b"SERROR\x00C42P01\x00Mno\x00\x00") + frame(b"D", b"\x00\x01\x00\x00\x00\x011")
               + frame(b"A", b"\x00\x00\x00\x01chan\x00payload\x00"))
    return [head + stream, head + backend, head + stream[:7], head + b"Q\xff\xff\xff\xff"]


@target(ProtocolError, seeds=_framing_seeds)
def fuzz_framing_frontend(data: bytes) -> None:
    """MessageScanner on a client stream cut into random chunks; output checked against a reference walk."""
    _scan_in_chunks(data, None)


def _parse_backend(msg_type: int, body: bytes) -> None:
    """The parsers pgpool applies to whole server messages (login, admin, tracking)."""
    if msg_type == B_AUTHENTICATION:
        code, rest = m.parse_authentication(body)
        if code == AUTH_SASL:
            m.parse_sasl_mechanisms(rest)
    elif msg_type in (B_ERROR_RESPONSE, B_NOTICE_RESPONSE):
        parse_error_fields(body)
    elif msg_type == B_PARAMETER_STATUS:
        m.parse_parameter_status(body)
    elif msg_type == B_BACKEND_KEY_DATA:
        m.parse_backend_key_data(body)
    elif msg_type == B_NOTIFICATION_RESPONSE:
        m.parse_notification(body)
    elif msg_type == B_DATA_ROW:
        m.first_column(b"xxxxx" + body, 5, 5 + len(body))
    elif msg_type == B_READY_FOR_QUERY and body:
        assert 0 <= body[0] < 256


@target(ProtocolError, seeds=_framing_seeds)
def fuzz_framing_backend(data: bytes) -> None:
    """MessageScanner on a server stream in random chunks, with the backend message parsers on whole messages."""
    _scan_in_chunks(data, _parse_backend)


@target(ProtocolError, seeds=lambda: [_framing_seeds()[1][38:]])
def fuzz_backend_login(data: bytes) -> None:
    """A server's login replies read by the server login machine (then a connect_query), and the
    backend parsers on the same bytes."""
    login = startup.ServerLogin(1 << 16, "fuzz", "fuzz:5432", "fuzz:5432")
    login.send_startup({"user": "u", "database": "d"})
    login.receive_data(data)
    login.receive_eof()
    queried = False
    while True:
        event = login.next_event()
        if isinstance(event, startup.PasswordRequest):
            login.send_password("secret")
        elif isinstance(event, startup.ScramRequest):
            login.start_scram(scram.ScramClient(client_key=_CLIENT_KEY, server_key=_VERIFIER.server_key,
                                                nonce=_CLIENT_NONCE))
        elif isinstance(event, startup.Ready) and not queried:
            queried = True
            login.send_query("SELECT 1")
        else:
            break
    for msg_type, body in _whole_messages(data, 64):
        _parse_backend(msg_type, body)


def _whole_messages(data: bytes, limit: int) -> list[tuple[int, bytes]]:
    """Up to `limit` (type, body) of the whole messages at the start of `data`."""
    found, pos = [], 0
    while len(found) < limit and pos + 5 <= len(data):
        length = _int32.unpack_from(data, pos + 1)[0]
        if length < 4 or pos + 1 + length > len(data):
            break
        found.append((data[pos], data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    return found


# ---- the prepared-statement tracker ----------------------------------------------------------

_NAMES = (b"", b"s1", b"s2", b"S3", b"PGPOOL_1", b"PGPOOL_missing", b"pgpool_9", b"a\"b")
_SQL = (b"SELECT 1", b"SELECT $1", b"DEALLOCATE s1", b"DEALLOCATE ALL", b"DISCARD ALL", b'deallocate "s2"',
        b"DEALLOCATE PGPOOL_1", b"BEGIN", b"COMMIT", b"COPY t FROM STDIN", b"deallocate prepare pgpool_9",
        b"  DEALLOCATE  S3 ;")
_CLIENT_KINDS = b"PBDECSHQFcf"
_SERVER_KINDS = b"123nTCIsEZGDSN"


def _client_message(inp: Input) -> tuple[int, bytes]:
    kind = _CLIENT_KINDS[inp.byte() % len(_CLIENT_KINDS)]
    pick = inp.byte()
    name = _NAMES[pick % len(_NAMES)]
    sql = _SQL[(pick >> 3) % len(_SQL)]
    if pick >= 0xF0:    # hostile body: whatever the fuzzer wrote
        body = inp.part()
    elif kind == ord("P"):
        body = name + b"\x00" + sql + b"\x00" + _int16.pack(pick & 1) + b"\x00\x00\x00\x17" * (pick & 1)
    elif kind == ord("B"):
        body = b"\x00" + name + b"\x00\x00\x00\x00\x00\x00\x00"
    elif kind in b"DC":
        body = b"SPx"[pick % 3:pick % 3 + 1] + name + b"\x00"
    elif kind == ord("E"):
        body = b"\x00\x00\x00\x00\x00"
    elif kind == ord("Q"):
        body = sql + b"\x00"
    else:
        body = b""
    return kind, body


def _server_message(inp: Input) -> tuple[int, bytes]:
    kind = _SERVER_KINDS[inp.byte() % len(_SERVER_KINDS)]
    pick = inp.byte()
    if pick >= 0xF0:
        body = inp.part()
    elif kind == ord("Z"):
        body = b"ITE"[pick % 3:pick % 3 + 1]
    elif kind == ord("E"):
        code = (b"26000", b"42P05", b"25P02", b"42601")[pick % 4]
        name = _NAMES[(pick >> 2) % len(_NAMES)]
        body = b"SERROR\x00C" + code + b'\x00Mprepared statement "' + name + b'" failed\x00\x00'
    elif kind == ord("C"):
        body = b"SELECT 1\x00"
    else:
        body = b""
    return kind, body


def _prepared_seeds() -> list[bytes]:
    # Each op: op byte, kind index, pick (name index + 8 * query index).
    # P s1 / B s1 / E / S, then 1 2 C Z: a named statement's first round trip, twice, with a
    # client switch in between; then a DEALLOCATE ALL Query and its CommandComplete + ReadyForQuery.
    client = b"\x00\x00\x01" + b"\x01\x01\x01" + b"\x02\x03\x00" + b"\x03\x05\x00"
    server = b"\x80\x00\x00" + b"\x80\x01\x00" + b"\x80\x05\x00" + b"\x80\x09\x00"
    dealloc = b"\x04\x07\x18" + b"\x80\x05\x00" + b"\x80\x09\x00"
    # The second client's Parse is answered by pgpool: the server already has the statement.
    return [b"\x02" + client + server + b"\xf1" + client + server[3:] + dealloc, b"\x00" + dealloc]


@target(ProtocolError, seeds=_prepared_seeds, max_len=2048)
def fuzz_prepared(data: bytes) -> None:
    """ServerStatements fed well-framed but hostile client and server message sequences."""
    inp = Input(data)
    registry = prepared.StatementRegistry()
    clients = [prepared.ClientStatements(), prepared.ClientStatements()]
    limit = 1 + inp.byte() % 4
    server = prepared.ServerStatements(registry, limit)
    server.link(clients[0])
    for _ in range(400):
        if inp.empty:
            break
        op = inp.byte()
        if op < 0x80:
            msg_type, body = _client_message(inp)
            buf = frame(bytes((msg_type,)), body)
            if op == 0x7F:   # announced by the scanner as too large to inspect
                server.on_client_message(msg_type, None, 0, len(body) + (1 << 20))
            else:
                out = server.on_client_message(msg_type, buf, 5, len(buf))
                assert out is None or isinstance(out, bytes)
            server.take_client_output()
        elif op < 0xF0:
            msg_type, body = _server_message(inp)
            buf = frame(bytes((msg_type,)), body)
            server.on_server_message(msg_type, buf, 5, len(buf))
        elif op < 0xF8:
            # The client leaves; a server with requests outstanding is closed, as server.py does.
            if not server.unlink():
                server = prepared.ServerStatements(registry, limit)
            server.link(clients[op & 1])
        elif op < 0xFC:
            server.forget_all()
        else:
            msg_type, body = _client_message(inp)
            clients[op & 1].parse_without_server(registry, frame(bytes((msg_type,)), body) + frame(b"S"))
        assert len(server.cache) <= limit, "statement cache exceeds max_prepared_statements"
        assert all(sst.state != prepared.DEAD for sst in server.cache.values()), "a dead statement is cached"


# ---- statement classifiers -------------------------------------------------------------------

# name -> function(buf, start, end) over a NUL-terminated statement. Adding a classifier
# (pgpool/session.py, ...) is one entry here.
CLASSIFIERS: dict[str, Callable[[bytes, int, int], object]] = {
    "session.classify": lambda buf, start, end: session.classify(buf, start, end - 1),
    "prepared.classify_deallocate": lambda buf, start, end: prepared.classify_deallocate(buf[start:end - 1]),
    "prepared.scan_deallocations": lambda buf, start, end: prepared.scan_deallocations(buf, start, end - 1),
}


def _classify_seeds() -> list[bytes]:
    return [b"SET search_path TO a, b", b"SET SESSION TIME ZONE 'UTC'", b"RESET ALL", b"DISCARD ALL",
            b"LISTEN x; SELECT pg_advisory_lock(1)", b"CREATE TEMP TABLE t()", b"DECLARE c CURSOR WITH HOLD FOR",
            b"/* c */ -- x\n set \"Quoted\" = 1;", b"DEALLOCATE PREPARE \"a\"\"b\"", b"SET ROLE x",
            b"select 1 into temporary t", b"RESET \"x.y\""]


@target(seeds=_classify_seeds, max_len=8192)
def fuzz_classify(data: bytes) -> None:
    """Statement classifiers on a Query body at an offset inside a message buffer (they never raise)."""
    buf = b"Q\x00\x00\x00\x00" + data + b"\x00"
    for classify in CLASSIFIERS.values():
        classify(buf, 5, len(buf))


def _audit_seeds() -> list[bytes]:
    return [b"ssearch_path=a, b\nsTimeZone=UTC\npLISTEN", b"s\np", b"x"]


@target(ValueError, seeds=_audit_seeds)
def fuzz_session_audit(data: bytes) -> None:
    """session.parse_audit on the rows a server returns to pgpool's audit query."""
    rows = [None if row == b"\xff" else row.decode("utf-8", "replace") for row in data.split(b"\n")]
    session.parse_audit(rows)


# ---- config loaders --------------------------------------------------------------------------

_CONFIG_DIR = Path(tempfile.gettempdir())


def _config_text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")   # read_file reads config files as strict UTF-8
    except UnicodeDecodeError:
        return None
    # %include reads files: an operator's choice, outside what a fuzzer should open.
    return text.replace("%include", "%inc")


def _toml_seeds() -> list[bytes]:
    return [b'[pgpool]\nlisten_port = 6433\npool_mode = "transaction"\nmax_client_conn = 100\n'
            b'[databases]\napp = "host=127.0.0.1 port=5432 dbname=app pool_size=5"\n'
            b'db2 = { host = "h", port = 1, pool_mode = "session" }\n[users]\nu = "pool_mode=session"\n',
            b"listen_port = 1\n[peers]\n", b'[pgbouncer]\nignore_startup_parameters = "extra_float_digits"\n']


@target(ConfigError, seeds=_toml_seeds)
def fuzz_config_toml(data: bytes) -> None:
    """The TOML config loader and settings validation."""
    text = _config_text(data)
    if text is None:
        return
    loader = _Loader()
    loader.read_toml(text, "fuzz.toml")
    loader.build(None)


def _ini_seeds() -> list[bytes]:
    return [b"[databases]\n* = host=127.0.0.1 port=5432\n\"q\"\"n\" = dbname=x connect_query='select ''1'''\n"
            b"[pgbouncer]\nlisten_port = 6432\nauth_type = md5\nserver_reset_query = DISCARD ALL\n"
            b"[users]\nu = pool_mode=transaction max_user_connections=3\n",
            b"[pgbouncer]\n  logfile = x.log\n; comment\n[peers]\n1 = host=h\n"]


@target(ConfigError, seeds=_ini_seeds)
def fuzz_config_ini(data: bytes) -> None:
    """The pgbouncer.ini config loader and settings validation."""
    text = _config_text(data)
    if text is None:
        return
    loader = _Loader()
    loader.read_ini(text, _CONFIG_DIR / "fuzz.ini")
    loader.build(None)


def replay(name: str, data: bytes) -> None:
    """Run one input through a target (raises on a crash)."""
    TARGETS[name].run(data)


