"""SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, for both roles.

Owns: SCRAM verifiers (the `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`
secrets Postgres keeps in pg_authid), SASLprep of passwords, and two small state
objects: `ScramServer` (pgpool authenticating a client) and `ScramClient` (pgpool
logging into PostgreSQL). Bytes in, bytes out.

Must not: touch sockets, frame messages (the SASL payloads only; the caller wraps
them in AuthenticationSASLContinue / SASLResponse), or put secrets in exception
messages or reprs.

PostgreSQL's profile of SCRAM: no channel binding (we only offer SCRAM-SHA-256,
never -PLUS, so the gs2 header is "n,," or "y,,"), no authorization identity, and
the user name in client-first-message is ignored (libpq sends it empty): the user
comes from the StartupMessage.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass, field

DEFAULT_ITERATIONS = 4096  # Postgres' scram_iterations default
DEFAULT_SALT_LEN = 16  # Postgres' SCRAM_DEFAULT_SALT_LEN
RAW_NONCE_LEN = 18  # Postgres' SCRAM_RAW_NONCE_LEN; 24 base64 characters on the wire
KEY_LEN = 32  # SHA-256 digest size
# pbkdf2 runs on the caller's thread: a server asking for more than this is broken or hostile.
MAX_ITERATIONS = 10_000_000

_VERIFIER_RE = re.compile(
    r"SCRAM-SHA-256\$([0-9]{1,9}):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)"
)


class ScramError(Exception):
    """A failed or malformed SCRAM exchange. The message is safe to log: never a secret."""


@dataclass(frozen=True)
class ScramVerifier:
    """What a server stores instead of the password; keys are kept out of repr."""

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def to_secret(self) -> str:
        """The text form Postgres stores in pg_authid.rolpassword and auth_file holds."""
        return (f"SCRAM-SHA-256${self.iterations}:{_b64(self.salt)}"
                f"${_b64(self.stored_key)}:{_b64(self.server_key)}")


def parse_verifier(text: str) -> ScramVerifier | None:
    """Parse a SCRAM-SHA-256 secret; None if `text` does not have that shape."""
    match = _VERIFIER_RE.fullmatch(text)
    if match is None:
        return None
    iterations = int(match[1])
    try:
        salt, stored_key, server_key = (base64.b64decode(match[i], validate=True) for i in (2, 3, 4))
    except ValueError:
        return None
    if iterations < 1 or not salt or len(stored_key) != KEY_LEN or len(server_key) != KEY_LEN:
        return None
    return ScramVerifier(iterations, salt, stored_key, server_key)


def make_verifier(password: str, salt: bytes | None = None,
                  iterations: int = DEFAULT_ITERATIONS) -> ScramVerifier:
    """The verifier Postgres would store for `password` with this salt and iteration count."""
    if salt is None:
        salt = secrets.token_bytes(DEFAULT_SALT_LEN)
    client_key, server_key = _keys_from_password(password, salt, iterations)
    return ScramVerifier(iterations, salt, _h(client_key), server_key)


def build_verifier(password: str, salt: bytes | None = None,
                   iterations: int = DEFAULT_ITERATIONS) -> str:
    """`make_verifier` in text form, as `SET password_encryption = 'scram-sha-256'` stores it."""
    return make_verifier(password, salt, iterations).to_secret()


def check_password(verifier: ScramVerifier, password: str) -> bool:
    """True if `password` produces `verifier` (constant-time comparison of both keys)."""
    client_key, server_key = _keys_from_password(password, verifier.salt, verifier.iterations)
    stored_ok = hmac.compare_digest(_h(client_key), verifier.stored_key)
    server_ok = hmac.compare_digest(server_key, verifier.server_key)
    return stored_ok & server_ok


def saslprep(password: str) -> str:
    """SASLprep (RFC 4013) the way Postgres' pg_saslprep applies it to passwords.

    As in Postgres: pure ASCII is returned unchanged, and a password that is not
    valid for SASLprep (prohibited or unassigned characters, broken bidi rules,
    nothing left after mapping) is used unchanged rather than rejected.
    Prohibition and bidi checks run on the mapped, not yet normalized string, as
    Postgres does.
    """
    if password.isascii():
        return password
    mapped = []
    for ch in password:
        if stringprep.in_table_c12(ch):
            mapped.append(" ")
        elif not stringprep.in_table_b1(ch):
            mapped.append(ch)
    if not mapped or any(_is_prohibited(ch) for ch in mapped):
        return password
    if any(stringprep.in_table_d1(ch) for ch in mapped):
        if any(stringprep.in_table_d2(ch) for ch in mapped):
            return password
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            return password
    return unicodedata.normalize("NFKC", "".join(mapped))


class _Step(enum.Enum):
    CLIENT_FIRST = "client-first-message"
    CLIENT_FINAL = "client-final-message"
    SERVER_FIRST = "server-first-message"
    SERVER_FINAL = "server-final-message"
    DONE = "end of exchange"


class ScramServer:
    """pgpool's side when a client logs in with SCRAM-SHA-256.

    Feed the client's SASLInitialResponse payload to `handle_client_first` and its
    SASLResponse payload to `handle_client_final`. A verifier that no password can
    satisfy (fake credentials) runs the same steps and fails only at the proof, so
    a client cannot tell an unknown user from a wrong password.
    """

    def __init__(self, verifier: ScramVerifier, *, nonce: str | None = None):
        # `nonce` fixes the server nonce, for test vectors only.
        self._verifier = verifier
        self._server_nonce = _new_nonce() if nonce is None else _check_nonce(nonce)
        self._step = _Step.CLIENT_FIRST
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        # ClientKey proven by the client: with the verifier's ServerKey it logs into a
        # server that stores the same verifier (PgBouncer's SCRAM pass-through).
        self.client_key: bytes | None = None

    def handle_client_first(self, data: bytes) -> bytes:
        """Read client-first-message; return server-first-message."""
        _expect(self, _Step.CLIENT_FIRST)
        self._step = _Step.DONE  # any error below ends the exchange
        text = _decode(data)
        if text.startswith("p="):
            raise ScramError("client requires SCRAM channel binding, which is not supported")
        if not (text.startswith("n,") or text.startswith("y,")):
            raise ScramError("malformed SCRAM client-first-message: bad gs2 header")
        if text.startswith("a=", 2):
            raise ScramError("SCRAM authorization identity is not supported")
        if not text.startswith(",", 2):
            raise ScramError("malformed SCRAM client-first-message: bad gs2 header")
        self._gs2_header, bare = text[:3], text[3:]
        attrs = bare.split(",")
        if attrs[0].startswith("m="):
            raise ScramError("SCRAM mandatory extensions are not supported")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise ScramError("malformed SCRAM client-first-message: expected n= and r=")
        self._nonce = _check_nonce(attrs[1][2:]) + self._server_nonce
        self._client_first_bare = bare
        self._server_first = (f"r={self._nonce},s={_b64(self._verifier.salt)}"
                              f",i={self._verifier.iterations}")
        self._step = _Step.CLIENT_FINAL
        return self._server_first.encode()

    def handle_client_final(self, data: bytes) -> bytes:
        """Check client-final-message's proof; return server-final-message (v=...)."""
        _expect(self, _Step.CLIENT_FINAL)
        self._step = _Step.DONE
        attrs = _decode(data).split(",")
        if (len(attrs) < 3 or not attrs[0].startswith("c=") or not attrs[1].startswith("r=")
                or not attrs[-1].startswith("p=")):
            raise ScramError("malformed SCRAM client-final-message: expected c=, r=, p=")
        if _b64decode(attrs[0][2:]) != self._gs2_header.encode():
            raise ScramError("SCRAM channel binding data does not match the gs2 header")
        if attrs[1][2:] != self._nonce:
            raise ScramError("SCRAM nonce does not match")
        proof = _b64decode(attrs[-1][2:])
        if len(proof) != KEY_LEN:
            raise ScramError("malformed SCRAM client-final-message: bad proof length")
        without_proof = ",".join(attrs[:-1])
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        client_key = _xor(proof, _hmac(self._verifier.stored_key, auth_message))
        if not hmac.compare_digest(_h(client_key), self._verifier.stored_key):
            raise ScramError("password authentication failed: SCRAM proof does not match")
        self.client_key = client_key
        return b"v=" + _b64(_hmac(self._verifier.server_key, auth_message)).encode()


class ScramClient:
    """pgpool's side when PostgreSQL asks it for SCRAM-SHA-256.

    Give either the password, or `client_key` and `server_key` recovered from a
    client's SCRAM login (`ScramServer.client_key` and the verifier's ServerKey).
    Keys only work if the server stores the very same verifier (same salt and
    iteration count, not merely the same password): the salt and iteration count
    the server sends are then not used, and a mismatch shows up as the server
    rejecting the proof.
    """

    def __init__(self, password: str | None = None, *, client_key: bytes | None = None,
                 server_key: bytes | None = None, username: str = "",
                 nonce: str | None = None):
        # `username` and `nonce` exist for test vectors: Postgres ignores the user
        # name here, and the nonce must be random.
        if (password is None) == (client_key is None):
            raise ValueError("ScramClient needs either a password or client_key")
        if (client_key is None) != (server_key is None):
            raise ValueError("client_key and server_key go together; a password derives both")
        if client_key is not None and (len(client_key) != KEY_LEN or len(server_key) != KEY_LEN):
            raise ValueError("client_key and server_key must be 32 bytes")
        self._password = password
        self._client_key = client_key
        self._server_key = server_key
        self._client_nonce = _new_nonce() if nonce is None else _check_nonce(nonce)
        username = username.replace("=", "=3D").replace(",", "=2C")
        self._client_first_bare = f"n={username},r={self._client_nonce}"
        self._server_signature = b""
        self._step = _Step.CLIENT_FIRST

    def client_first(self) -> bytes:
        """client-first-message, the SASLInitialResponse payload."""
        _expect(self, _Step.CLIENT_FIRST)
        self._step = _Step.SERVER_FIRST
        return b"n,," + self._client_first_bare.encode()

    def handle_server_first(self, data: bytes) -> bytes:
        """Read server-first-message; return client-final-message."""
        _expect(self, _Step.SERVER_FIRST)
        self._step = _Step.DONE
        server_first = _decode(data)
        attrs = server_first.split(",")
        if attrs[0].startswith("m="):
            raise ScramError("SCRAM mandatory extensions are not supported")
        if (len(attrs) < 3 or not attrs[0].startswith("r=") or not attrs[1].startswith("s=")
                or not attrs[2].startswith("i=")):
            raise ScramError("malformed SCRAM server-first-message: expected r=, s=, i=")
        nonce = _check_nonce(attrs[0][2:])
        if len(nonce) <= len(self._client_nonce) or not nonce.startswith(self._client_nonce):
            raise ScramError("SCRAM server nonce does not extend the client nonce")
        salt = _b64decode(attrs[1][2:])
        if not salt:
            raise ScramError("malformed SCRAM server-first-message: empty salt")
        iterations = attrs[2][2:]
        if not (iterations.isascii() and iterations.isdigit() and len(iterations) <= 9):
            raise ScramError("malformed SCRAM server-first-message: bad iteration count")
        if not 1 <= int(iterations) <= MAX_ITERATIONS:
            raise ScramError(f"SCRAM iteration count {int(iterations)} is outside 1..{MAX_ITERATIONS}")
        if self._password is not None:
            client_key, server_key = _configured_password_keys(self._password, salt, int(iterations))
        else:
            client_key, server_key = self._client_key, self._server_key
        without_proof = f"c={_b64(b'n,,')},r={nonce}"
        auth_message = f"{self._client_first_bare},{server_first},{without_proof}".encode()
        proof = _xor(client_key, _hmac(_h(client_key), auth_message))
        self._server_signature = _hmac(server_key, auth_message)
        self._step = _Step.SERVER_FINAL
        return f"{without_proof},p={_b64(proof)}".encode()

    def handle_server_final(self, data: bytes) -> None:
        """Verify server-final-message: the server must prove it knows the verifier."""
        _expect(self, _Step.SERVER_FINAL)
        self._step = _Step.DONE
        first = _decode(data).split(",")[0]
        if first.startswith("e="):
            reason = "".join(ch for ch in first[2:100] if ch.isprintable())
            raise ScramError(f"server rejected SCRAM authentication: {reason}")
        if not first.startswith("v="):
            raise ScramError("malformed SCRAM server-final-message: expected v=")
        if not hmac.compare_digest(_b64decode(first[2:]), self._server_signature):
            raise ScramError("SCRAM server signature does not match: "
                             "the server could not prove it knows the password")


def _keys_from_password(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) from SaltedPassword = Hi(SASLprep(password), salt, i)."""
    salted = hashlib.pbkdf2_hmac("sha256", _utf8(saslprep(password)), salt, iterations)
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


# A server sends the same salt and iteration count every time, so each new server
# connection would redo the same pbkdf2 (milliseconds on the event loop). Only
# pgpool's own configured passwords go through here, never a client's attempts.
_configured_password_keys = functools.lru_cache(maxsize=256)(_keys_from_password)


def _is_prohibited(ch: str) -> bool:
    # RFC 4013 section 2.3 (C.1.2 was mapped to space already) plus unassigned code
    # points (A.1), which RFC 3454 prohibits in stored strings.
    return (stringprep.in_table_c12(ch) or stringprep.in_table_c21_c22(ch)
            or stringprep.in_table_c3(ch) or stringprep.in_table_c4(ch)
            or stringprep.in_table_c5(ch) or stringprep.in_table_c6(ch)
            or stringprep.in_table_c7(ch) or stringprep.in_table_c8(ch)
            or stringprep.in_table_c9(ch) or stringprep.in_table_a1(ch))


def _expect(exchange: ScramServer | ScramClient, step: _Step) -> None:
    if exchange._step is not step:
        raise ScramError(f"unexpected SCRAM step: expected {exchange._step.value}")


def _decode(data: bytes) -> str:
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError("malformed SCRAM message: not valid UTF-8") from None
    # Postgres reads these as C strings: an embedded NUL would cut the message short.
    if "\x00" in text:
        raise ScramError("malformed SCRAM message: contains NUL")
    return text


def _check_nonce(nonce: str) -> str:
    # RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII except ",".
    if not nonce or not all("!" <= ch <= "~" and ch != "," for ch in nonce):
        raise ScramError("malformed SCRAM nonce")
    return nonce


def _new_nonce() -> str:
    return _b64(secrets.token_bytes(RAW_NONCE_LEN))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ScramError("malformed SCRAM message: bad base64") from None


def _utf8(text: str) -> bytes:
    # surrogateescape round-trips passwords that were not valid UTF-8 on the wire.
    return text.encode("utf-8", "surrogateescape")


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")
