"""TLS: the SSL contexts pgpool uses with clients and servers, and the negotiation decisions.

Owns: building `ssl.SSLContext`s from the client_tls_* and server_tls_* settings (protocol
versions, ciphers, certificates, verification, ALPN), rebuilding them on RELOAD (new
connections get the new files, live ones keep their session), and the pure decisions of the
handshake: what to answer a client's SSLRequest, what a server's answer to ours means, whether
a clear-text client may log in, the user a client certificate names.

Must not: touch sockets or transports (client.py / server.py wrap them with these contexts) or
send protocol messages.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import sys
from dataclasses import dataclass

from .config import ConfigError, Settings
from .protocol.errors import CONNECTION_FAILURE, INVALID_AUTHORIZATION_SPECIFICATION, ProtocolError

log = logging.getLogger("pgpool.tls")

ALPN_POSTGRESQL = "postgresql"   # PostgreSQL 17's ALPN name, required with direct TLS

_VERSIONS = {"tlsv1.0": ssl.TLSVersion.TLSv1, "tlsv1": ssl.TLSVersion.TLSv1, "tlsv1.1": ssl.TLSVersion.TLSv1_1,
             "tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}
# PgBouncer's protocol keywords (usual_tls.c).
_PROTOCOL_WORDS = {"secure": ("tlsv1.2", "tlsv1.3"), "all": ("tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3"),
                   "legacy": ("tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3")}
# PgBouncer's cipher keywords (usual_tls.c), as OpenSSL cipher strings.
_CIPHER_WORDS = {
    "secure": "HIGH:!aNULL:!eNULL:!MD5:!RC4:!3DES:!SHA1:!kRSA",
    "fast": "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL",
    "normal": "HIGH:!aNULL:!eNULL:!MD5:!RC4",
    "compat": "HIGH:MEDIUM:!aNULL:!eNULL:!MD5",
    "legacy": "ALL:!aNULL:!eNULL",
    "insecure": "ALL:!aNULL:!eNULL",
    "all": "ALL:!aNULL:!eNULL",
}

_STRICT = ("require", "verify-ca", "verify-full")   # a peer without TLS is refused


class TlsConfigError(ConfigError):
    """A TLS setting or file that cannot be used; the message names the setting and the cause."""


@dataclass(frozen=True)
class TlsContexts:
    """The contexts in force; replaced whole on RELOAD, so a connection sees one consistent set."""

    client: ssl.SSLContext | None       # pgpool as TLS server for clients; None = client_tls_sslmode disable
    client_mode: str
    server: ssl.SSLContext | None       # pgpool as TLS client of Postgres; None = server_tls_sslmode disable
    server_mode: str


def build_contexts(settings: Settings) -> TlsContexts:
    """Contexts for `settings`; raises TlsConfigError naming the setting at fault."""
    if settings.auth_type == "cert" and (settings.client_tls_sslmode == "disable" or not settings.client_tls_ca_file):
        raise TlsConfigError("auth_type = cert needs client_tls_sslmode (not disable) and client_tls_ca_file "
                             "(the CA that signs client certificates)")
    return TlsContexts(build_client_context(settings), settings.client_tls_sslmode,
                       build_server_context(settings), settings.server_tls_sslmode)


def build_client_context(settings: Settings) -> ssl.SSLContext | None:
    """The server-side context clients' TLS sessions use."""
    mode = settings.client_tls_sslmode
    if mode == "disable":
        return None
    if not settings.client_tls_cert_file or not settings.client_tls_key_file:
        raise TlsConfigError(f"client_tls_sslmode = {mode} needs client_tls_cert_file and client_tls_key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_common(ctx, "client", settings.client_tls_protocols, settings.client_tls_ciphers,
                  settings.client_tls13_ciphers)
    _load_cert(ctx, "client", settings.client_tls_cert_file, settings.client_tls_key_file)
    if settings.client_tls_ca_file:
        _load_ca(ctx, "client_tls_ca_file", settings.client_tls_ca_file)
        # verify-ca/full: no login without a valid certificate; otherwise one is asked for (cert auth).
        ctx.verify_mode = ssl.CERT_REQUIRED if mode in ("verify-ca", "verify-full") else ssl.CERT_OPTIONAL
    elif mode in ("verify-ca", "verify-full"):
        raise TlsConfigError(f"client_tls_sslmode = {mode} needs client_tls_ca_file to check client certificates")
    ctx.set_alpn_protocols([ALPN_POSTGRESQL])
    return ctx


def build_server_context(settings: Settings) -> ssl.SSLContext | None:
    """The client-side context pgpool's TLS sessions to Postgres use, as libpq's sslmode."""
    mode = settings.server_tls_sslmode
    if mode == "disable":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_common(ctx, "server", settings.server_tls_protocols, settings.server_tls_ciphers,
                  settings.server_tls13_ciphers)
    if mode in ("verify-ca", "verify-full"):
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = mode == "verify-full"
        if settings.server_tls_ca_file:
            _load_ca(ctx, "server_tls_ca_file", settings.server_tls_ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        # allow / prefer / require encrypt without checking who answers, as libpq does.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.server_tls_cert_file or settings.server_tls_key_file:
        _load_cert(ctx, "server", settings.server_tls_cert_file, settings.server_tls_key_file)
    return ctx


def _apply_common(ctx: ssl.SSLContext, side: str, protocols: str, ciphers: str, tls13_ciphers: str) -> None:
    low, high = parse_protocols(protocols, f"{side}_tls_protocols")
    ctx.minimum_version, ctx.maximum_version = low, high
    ctx.options |= ssl.OP_NO_COMPRESSION
    word = ciphers.strip().lower()
    if word not in ("", "default"):
        try:
            ctx.set_ciphers(_CIPHER_WORDS.get(word, ciphers))
        except ssl.SSLError as error:
            raise TlsConfigError(f"{side}_tls_ciphers = {ciphers!r}: {error}") from None
    if tls13_ciphers.strip():
        set_tls13_ciphers(ctx, tls13_ciphers.strip(), f"{side}_tls13_ciphers")


def parse_protocols(text: str, setting: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """(lowest, highest) TLS version of a PgBouncer protocols value ("secure", "tlsv1.2,tlsv1.3", ...)."""
    names: list[str] = []
    for word in text.replace(":", ",").replace(" ", ",").split(","):
        word = word.strip().lower()
        if not word:
            continue
        if word in _PROTOCOL_WORDS:
            names.extend(_PROTOCOL_WORDS[word])
        elif word in _VERSIONS:
            names.append(word)
        else:
            raise TlsConfigError(f"{setting} = {text!r}: unknown protocol {word!r} "
                                 f"(allowed: secure, all, legacy, tlsv1.0, tlsv1.1, tlsv1.2, tlsv1.3)")
    if not names:
        raise TlsConfigError(f"{setting} is empty")
    versions = sorted({_VERSIONS[name] for name in names})
    return versions[0], versions[-1]


def _load_cert(ctx: ssl.SSLContext, side: str, cert_file: str, key_file: str) -> None:
    try:
        ctx.load_cert_chain(cert_file, key_file or None)
    except (OSError, ssl.SSLError) as error:
        raise TlsConfigError(f"{side}_tls_cert_file {cert_file!r} / {side}_tls_key_file {key_file!r}: "
                             f"{getattr(error, 'strerror', None) or error}") from None


def _load_ca(ctx: ssl.SSLContext, setting: str, path: str) -> None:
    try:
        ctx.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as error:
        raise TlsConfigError(f"{setting} {path!r}: {getattr(error, 'strerror', None) or error}") from None


def set_tls13_ciphers(ctx: ssl.SSLContext, suites: str, setting: str) -> None:
    """SSL_CTX_set_ciphersuites, which Python's ssl module does not expose.

    CPython's SSLContext object holds its SSL_CTX pointer right after the object header; libssl
    is already loaded by the _ssl extension, so the symbol is found in the process.
    """
    if sys.implementation.name != "cpython":
        raise TlsConfigError(f"{setting}: only supported on CPython")
    try:
        func = ctypes.CDLL(None).SSL_CTX_set_ciphersuites
    except AttributeError:
        import _ssl   # the extension links libssl; its handle finds the symbol where CDLL(None) cannot
        func = ctypes.CDLL(_ssl.__file__).SSL_CTX_set_ciphersuites
    func.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
    func.restype = ctypes.c_int
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or func(pointer, suites.encode("ascii")) != 1:
        raise TlsConfigError(f"{setting} = {suites!r}: no usable TLS 1.3 cipher suite "
                             f"(names such as TLS_AES_256_GCM_SHA384, colon-separated)")


# ---- negotiation decisions (pure) ----------------------------------------------------------------

def answer_ssl_request(contexts: TlsContexts) -> bytes:
    """What a client's SSLRequest gets: 'S' (then TLS) when client TLS is on, else 'N'."""
    return b"S" if contexts.client is not None else b"N"


def check_clear_text_client(contexts: TlsContexts, user: str, database: str, peer: str) -> None:
    """Refuse a client that logs in without TLS when client_tls_sslmode requires it.

    The wording is Postgres' own for a hostssl-only pg_hba, which is what users search for.
    """
    if contexts.client_mode in _STRICT:
        host = peer.rsplit(":", 1)[0] if peer else "?"
        raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION,
                            f'no pg_hba.conf entry for host "{host}", user "{user}", database "{database}", '
                            f'no encryption',
                            detail=f"pgpool: client_tls_sslmode = {contexts.client_mode} requires TLS (SSL required)")


def server_answer_means_tls(answer: bytes, mode: str, where: str) -> bool:
    """Interpret a server's one-byte answer to SSLRequest: True = start TLS, False = go on in clear.

    'N' under require/verify-* is libpq's "server does not support SSL, but SSL was required";
    anything but 'S' or 'N' is a protocol violation (an old server's ErrorResponse included).
    """
    if answer == b"S":
        return True
    if answer == b"N":
        if mode in _STRICT:
            raise ProtocolError(CONNECTION_FAILURE, f"server does not support SSL, but SSL was required "
                                                    f"(server_tls_sslmode = {mode}): {where}")
        return False
    raise ProtocolError(CONNECTION_FAILURE, f"received invalid response to SSL negotiation: {answer!r}: {where}")


def describe_tls_error(error: BaseException) -> str:
    """The cause of a failed handshake in words: the verification message when there is one."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    return str(error) or type(error).__name__


def certificate_user(peercert: dict | None) -> str | None:
    """The commonName of a verified client certificate (auth_type cert's user name), if any."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None
