"""Client authentication data: the auth_file, secrets, method choice, password checks.

Owns: parsing PgBouncer's auth_file (userlist.txt), telling plain / md5 / SCRAM
secrets apart, fake credentials for unknown users, which method to ask a client
for, checking a client's password, and which password pgpool uses to log into
PostgreSQL.

Must not: touch sockets or build wire messages (the connection layer does, with
`protocol/`), or put secrets in exception messages or reprs.

No user enumeration: an unknown user gets fake credentials shaped like those of a
known user of the same auth_file (picked by a keyed hash of the name), so the method
asked for, the SCRAM salt and iteration count, and the work done per attempt look
like those of a known user giving a wrong password. Fake credentials never pass a check.

Text is str throughout; decode wire bytes and files as UTF-8 with
errors="surrogateescape" so passwords that are not valid UTF-8 still compare
byte for byte.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pgpool.protocol import scram

MD5_PREFIX = "md5"
_HEX = frozenset("0123456789abcdef")

# Per-process key for fake secrets and SCRAM salts derived from a user name:
# stable across attempts (repeats look the same), unpredictable across processes.
_DERIVATION_KEY = secrets.token_bytes(32)


class AuthFileError(Exception):
    """auth_file unreadable or malformed; names the file and line, never a secret."""


class SecretKind(enum.Enum):
    PLAIN = "plain"  # the password itself
    MD5 = "md5"  # "md5" + md5(password + user).hexdigest()
    SCRAM = "scram-sha-256"  # SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>


@dataclass(frozen=True)
class Credentials:
    user: str
    secret: str = field(repr=False)
    kind: SecretKind
    known: bool  # False: fake credentials for a user not in the auth_file


def load_auth_file(path: str | Path) -> dict[str, str]:
    """Read a PgBouncer auth_file: {user: secret}.

    Format, as PgBouncer's: one `"user" "secret"` per line; a doubled `""` inside
    quotes is a literal quote; the rest of a line after the secret is ignored;
    blank lines and lines starting with `;` or `#` are skipped; a later line for
    the same user wins. Unlike PgBouncer, which stops loading at the first broken
    line and keeps what it read, a broken line is an error, so a typo cannot
    silently lock users out.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise AuthFileError(f"{path}: cannot read auth_file: {exc.strerror or exc}") from None
    users: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in ";#":
            continue
        try:
            user, end = _read_quoted(stripped, 0)
            gap = end
            while gap < len(stripped) and stripped[gap] in " \t":
                gap += 1
            if gap == end:
                raise ValueError("expected whitespace and a quoted secret after the user name")
            secret, _ = _read_quoted(stripped, gap)
        except ValueError as exc:
            raise AuthFileError(f"{path}:{lineno}: {exc}") from None
        users[user] = secret
    return users


def md5_secret(user: str, password: str) -> str:
    """The md5 secret Postgres stores: "md5" + md5(password + user)."""
    return MD5_PREFIX + hashlib.md5(_utf8(password) + _utf8(user)).hexdigest()


def md5_response(secret_or_password: str, user: str, salt: bytes) -> str:
    """The PasswordMessage answer to AuthenticationMD5Password: "md5" + md5(md5hex + salt).

    `secret_or_password` is a plain password or an md5 secret; as in PgBouncer and
    Postgres, anything shaped like an md5 secret is taken as one.
    """
    if secret_kind(secret_or_password) is not SecretKind.MD5:
        secret_or_password = md5_secret(user, secret_or_password)
    inner = secret_or_password[len(MD5_PREFIX):].encode("ascii")
    return MD5_PREFIX + hashlib.md5(inner + bytes(salt)).hexdigest()


def secret_kind(secret: str) -> SecretKind:
    """Classify an auth_file secret as PgBouncer does; anything unrecognised is plain."""
    if (len(secret) == 35 and secret.startswith(MD5_PREFIX)
            and _HEX.issuperset(secret[len(MD5_PREFIX):])):
        return SecretKind.MD5
    if scram.parse_verifier(secret) is not None:
        return SecretKind.SCRAM
    return SecretKind.PLAIN


def lookup_credentials(users: Mapping[str, str], user: str) -> Credentials:
    """Credentials for `user`, or fake ones that fail exactly like a wrong password.

    An unknown user is treated like one known user picked by a keyed hash of its
    name: a SCRAM verifier with that user's iteration count and salt length if its
    secret is SCRAM, else an md5 secret. Under every auth_type and any mix of
    secrets an unknown name is therefore asked for what some known user is asked
    for, in the same proportions, and the same thing on every attempt: the answer
    tells nothing about whether the name exists. (No single method can serve both
    md5 and SCRAM secrets, so "the method every user gets" does not exist for a
    mixed file; a majority rule would mark every user of the minority kind as
    known.) This walks `users` once per unknown user; that is cheap next to a login.
    """
    secret = users.get(user)
    if secret is not None:
        return Credentials(user, secret, secret_kind(secret), known=True)
    model = _model_secret(users, user)
    if model is None:   # nobody to look like (auth_query): a SCRAM role, Postgres' default since 14
        return Credentials(user, _fake_verifier(user).to_secret(), SecretKind.SCRAM, known=False)
    verifier = scram.parse_verifier(model)
    if verifier is not None:
        fake = _fake_verifier(user, verifier.iterations, len(verifier.salt))
        return Credentials(user, fake.to_secret(), SecretKind.SCRAM, known=False)
    fake_md5 = MD5_PREFIX + _derive(b"md5", user).hex()[:32]
    return Credentials(user, fake_md5, SecretKind.MD5, known=False)


def _model_secret(users: Mapping[str, str], user: str) -> str | None:
    """The secret of the known user an unknown `user` is made to look like."""
    if not users:
        return None
    index = int.from_bytes(_derive(b"model", user)[:8], "big") % len(users)
    for i, secret in enumerate(users.values()):
        if i == index:
            return secret
    return None


def choose_client_method(auth_type: str, creds: Credentials) -> str:
    """The method to ask the client for: "trust", "plain", "md5" or "scram-sha-256".

    PgBouncer's rules (config.md, auth_type):
    - "trust" and "any" -> "trust". Under "trust" the user must still be in the
      auth_file: the caller rejects `creds.known == False` ("trust" authentication
      failed); under "any" the user name is not checked.
    - "plain" -> "plain" (clear-text password; any secret kind can be checked).
    - "md5" -> "md5", but "scram-sha-256" for a user whose secret is a SCRAM
      verifier (an md5 answer cannot be checked against it).
    - "scram-sha-256" -> "scram-sha-256" whatever the secret. The auth_file must
      hold SCRAM verifiers or plain passwords; with an md5 secret the login fails
      (PgBouncer: "SCRAM authentication failed: user has MD5 secret"). pgpool does
      not fall back to md5, which would weaken what was configured;
      `scram_verifier_for` makes such a login fail like a wrong password, and the
      caller should log the cause.
    Other auth types (cert, hba, pam, ldap) raise ValueError.
    """
    if auth_type in ("trust", "any"):
        return "trust"
    if auth_type == "plain":
        return "plain"
    if auth_type == "md5":
        return "scram-sha-256" if creds.kind is SecretKind.SCRAM else "md5"
    if auth_type == "scram-sha-256":
        return "scram-sha-256"
    raise ValueError(f"unsupported auth_type {auth_type!r}")


def scram_verifier_for(creds: Credentials) -> scram.ScramVerifier:
    """The verifier a `ScramServer` checks this client against.

    A SCRAM secret is used as is. A plain password gets a verifier with a salt
    derived from the user name, shaped like the fake ones, so it does not stand out
    from an unknown user; its ClientKey is no use for pass-through, but a plain
    password logs into the server directly. An md5 secret, an empty password or
    fake credentials give a verifier no password matches.
    """
    if creds.kind is SecretKind.SCRAM:
        verifier = scram.parse_verifier(creds.secret)
        if verifier is not None:
            return verifier
    if creds.known and creds.kind is SecretKind.PLAIN and creds.secret:
        return _verifier_for_plain(creds.user, creds.secret)
    return _fake_verifier(creds.user)


def check_plain(creds: Credentials, password: str) -> bool:
    """Check a clear-text password (auth_type plain) against any kind of secret.

    Constant-time comparisons; fake credentials do the same work and fail.
    Empty passwords never match, as in Postgres and PgBouncer.
    """
    if creds.kind is SecretKind.SCRAM:
        verifier = scram.parse_verifier(creds.secret)
        ok = verifier is not None and scram.check_password(verifier, password)
    elif creds.kind is SecretKind.MD5:
        ok = hmac.compare_digest(_utf8(creds.secret), _utf8(md5_secret(creds.user, password)))
    else:
        ok = hmac.compare_digest(_utf8(creds.secret), _utf8(password))
    return ok and creds.known and bool(creds.secret) and bool(password)


def check_md5(creds: Credentials, salt: bytes, response: str) -> bool:
    """Check the answer to AuthenticationMD5Password; only plain and md5 secrets can be."""
    if creds.kind is SecretKind.SCRAM:
        return False
    expected = md5_response(creds.secret, creds.user, salt)
    ok = hmac.compare_digest(expected.encode("ascii"), _utf8(response))
    return ok and creds.known and bool(creds.secret)


def server_password_for(creds: Credentials | None, db_password: str | None) -> str | None:
    """The password pgpool gives PostgreSQL when it asks for one, or None.

    In order: the `password` of the [databases] entry if set; else the user's
    auth_file secret if it is a plain password (works for any server method) or an
    md5 secret (works only if the server asks for md5: `md5_response` accepts it;
    the caller must not feed it to `ScramClient`). A SCRAM secret cannot log in by
    itself: the caller uses the ClientKey a SCRAM client login recovered
    (`ScramServer.client_key` with the verifier's ServerKey), which works only if
    the server stores the same verifier. Fake credentials give None.
    """
    if db_password:
        return db_password
    if creds is None or not creds.known or not creds.secret or creds.kind is SecretKind.SCRAM:
        return None
    return creds.secret


def auth_query_sql(query: str, user: str) -> str:
    """`query` with $1 bound to `user`, wrapped to return the secret as its only column.

    pgpool's own queries run as simple queries, so the user name goes in as a dollar-quoted
    literal (immune to standard_conforming_strings and backslashes) with a tag that does not
    occur in the name. auth_query returns (user name, secret) as in PgBouncer; the wrapper
    renames the columns so any two-column query fits.
    """
    tag = "$pgpool$"
    n = 0
    while tag in user or tag[:-1] in user:
        n += 1
        tag = f"$pgpool{n}$"
    literal = f"{tag}{user}{tag}"
    bound = re.sub(r"\$1(?!\d)", lambda _: literal, query.strip().rstrip(";"))
    return f"SELECT pgpool_secret FROM ({bound}) AS pgpool_auth(pgpool_user, pgpool_secret)"


def credentials_from_auth_query(user: str, rows: list[str | None]) -> Credentials:
    """Credentials for `user` from auth_query's secret column. When the role is missing, cannot
    log in, or its password is NULL or expired: fake SCRAM credentials (what Postgres stores by
    default since version 14), so such a user is asked for the same method as the real ones."""
    secret = rows[0] if rows else None
    if not secret:
        return lookup_credentials({}, user)
    return Credentials(user, secret, secret_kind(secret), known=True)


def check_certificate_user(user: str, cert_user: str | None) -> str | None:
    """auth_type cert: None if the verified client certificate's CN is `user`, else why not (as Postgres)."""
    if cert_user is None:
        return "connection requires a valid client certificate"
    if cert_user != user:
        return f'certificate authentication failed for user "{user}"'
    return None


def _read_quoted(line: str, start: int) -> tuple[str, int]:
    """The quoted field at line[start] with "" unescaped, and the index after it."""
    if not line.startswith('"', start):
        raise ValueError('expected a double-quoted field')
    out = []
    i = start + 1
    while True:
        end = line.find('"', i)
        if end < 0:
            raise ValueError("unterminated quoted field")
        out.append(line[i:end])
        if not line.startswith('"', end + 1):
            return "".join(out), end + 1
        out.append('"')
        i = end + 2


def _derive(purpose: bytes, user: str) -> bytes:
    return hmac.digest(_DERIVATION_KEY, purpose + b"\0" + _utf8(user), "sha256")


def _fake_verifier(user: str, iterations: int = scram.DEFAULT_ITERATIONS,
                   salt_len: int = scram.DEFAULT_SALT_LEN) -> scram.ScramVerifier:
    # Keys are derived like the salt, so nothing about a fake verifier changes
    # between attempts; no password hashes to them.
    return scram.ScramVerifier(
        iterations=iterations,
        salt=_derive(b"salt", user)[:salt_len],
        stored_key=_derive(b"stored", user),
        server_key=_derive(b"server", user),
    )


@functools.lru_cache(maxsize=1024)
def _verifier_for_plain(user: str, password: str) -> scram.ScramVerifier:
    # Cached: pbkdf2 costs milliseconds and the result only depends on the arguments.
    salt = _derive(b"salt", user)[:scram.DEFAULT_SALT_LEN]
    return scram.make_verifier(password, salt, scram.DEFAULT_ITERATIONS)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")
