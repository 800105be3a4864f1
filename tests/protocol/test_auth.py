"""auth_file parsing, md5, method choice, password checks, and no user enumeration."""

import base64
import collections
import hashlib
import secrets

import pytest

from pgpool.auth import (
    AuthFileError,
    Credentials,
    SecretKind,
    check_md5,
    check_plain,
    choose_client_method,
    load_auth_file,
    lookup_credentials,
    md5_response,
    md5_secret,
    scram_verifier_for,
    secret_kind,
    server_password_for,
)
from pgpool.protocol.scram import ScramClient, ScramError, ScramServer, build_verifier, parse_verifier

# Captured from PostgreSQL 15: SET password_encryption = 'md5'; CREATE ROLE m_user PASSWORD 'pencil';
POSTGRES_MD5_PENCIL = "md501280f2bb5b3b86b333b3101c150024a"
# Captured from PostgreSQL 15 with password_encryption = 'scram-sha-256', password "pencil".
POSTGRES_SCRAM_PENCIL = ("SCRAM-SHA-256$4096:a4hy55u+8YDc3CPUaGjAjw==$RkRgVMl71tkzPbCdfjGfCYvbKhZf99j6f82NtXArivQ="
                         ":eGQOhFn9kj4ScbfwMCaSGdneoPoZR0cofR0fd9phydM=")

PLAIN = Credentials("alice", "pencil", SecretKind.PLAIN, known=True)
MD5 = Credentials("m_user", POSTGRES_MD5_PENCIL, SecretKind.MD5, known=True)
SCRAM = Credentials("carol", POSTGRES_SCRAM_PENCIL, SecretKind.SCRAM, known=True)


def scram_login(creds: Credentials, password: str) -> bytes:
    """A client's SCRAM login against pgpool; returns the server-first-message, raises ScramError."""
    server, client = ScramServer(scram_verifier_for(creds)), ScramClient(password)
    server_first = server.handle_client_first(client.client_first())
    client.handle_server_final(server.handle_client_final(client.handle_server_first(server_first)))
    return server_first


def salt_and_iterations(server_first: bytes) -> str:
    return server_first.decode().split(",", 1)[1]


# auth_file

def write(tmp_path, text: str):
    path = tmp_path / "userlist.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_auth_file(tmp_path):
    path = write(tmp_path, "\n".join([
        "; PgBouncer comment",
        "# hash comment",
        "",
        '"alice" "pencil"',
        '  "bob"\t"md501280f2bb5b3b86b333b3101c150024a"   trailing words are ignored',
        f'"carol" "{POSTGRES_SCRAM_PENCIL}"',
        '"we""ird" "pa""ss"',
        '"" "empty user"',
        '"dave" ""',
        '"j\u00f6rg" "s\u00e9cret"',
        '"alice" "later wins"',
        "   ",
    ]) + "\n")
    assert load_auth_file(path) == {
        "alice": "later wins",
        "bob": "md501280f2bb5b3b86b333b3101c150024a",
        "carol": POSTGRES_SCRAM_PENCIL,
        'we"ird': 'pa"ss',
        "": "empty user",
        "dave": "",
        "j\u00f6rg": "s\u00e9cret",
    }


def test_load_auth_file_accepts_str_path_crlf_and_bom(tmp_path):
    path = tmp_path / "userlist.txt"
    path.write_bytes(b'\xef\xbb\xbf"alice" "pencil"\r\n"bob" "x"\r\n')
    assert load_auth_file(str(path)) == {"alice": "pencil", "bob": "x"}


@pytest.mark.parametrize("text, lineno, reason", [
    ('"alice" "pencil"\nalice pencil\n', 2, "double-quoted"),
    ('; ok\n\n"alice" "pencil\n', 3, "unterminated"),
    ('"alice\n', 1, "unterminated"),
    ('"alice"\n', 1, "quoted secret"),
    ('"alice""pencil"\n', 1, "quoted secret"),
    ('"alice" "pencil"\n"bob"pencil\n', 2, "quoted secret"),
    ('"alice" pencil\n', 1, "double-quoted"),
])
def test_load_auth_file_errors_name_file_and_line(tmp_path, text, lineno, reason):
    path = write(tmp_path, text)
    with pytest.raises(AuthFileError, match=reason) as caught:
        load_auth_file(path)
    assert str(caught.value).startswith(f"{path}:{lineno}: ")
    assert "pencil" not in str(caught.value)


def test_load_auth_file_missing(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(AuthFileError, match="cannot read auth_file") as caught:
        load_auth_file(path)
    assert str(path) in str(caught.value)


# md5

def test_md5_secret_matches_postgres_and_pgbouncer_docs():
    assert md5_secret("m_user", "pencil") == POSTGRES_MD5_PENCIL
    assert md5_secret("admin", "1234") == "md545f2603610af569b6155c45067268c6b"  # PgBouncer's config.md


def test_md5_response_from_password_or_secret():
    salt = bytes.fromhex("01020304")
    expected = "md5" + hashlib.md5(POSTGRES_MD5_PENCIL[3:].encode() + salt).hexdigest()
    assert md5_response("pencil", "m_user", salt) == expected
    assert md5_response(POSTGRES_MD5_PENCIL, "m_user", salt) == expected
    assert md5_response("pencil", "m_user", b"\x00\x00\x00\x00") != expected


@pytest.mark.parametrize("creds", [PLAIN, MD5], ids=["plain", "md5"])
def test_check_md5_accepts_what_a_client_sends(creds):
    salt = secrets.token_bytes(4)
    assert check_md5(creds, salt, md5_response("pencil", creds.user, salt))
    assert not check_md5(creds, salt, md5_response("pencil!", creds.user, salt))
    assert not check_md5(creds, salt, md5_response("pencil", creds.user, b"salt"))
    assert not check_md5(creds, salt, "pencil")
    assert not check_md5(creds, salt, "")


def test_check_md5_cannot_check_scram_secret():
    salt = b"salt"
    assert not check_md5(SCRAM, salt, md5_response("pencil", "carol", salt))


# Secrets and plain checks

@pytest.mark.parametrize("secret, kind", [
    ("pencil", SecretKind.PLAIN),
    ("", SecretKind.PLAIN),
    (POSTGRES_MD5_PENCIL, SecretKind.MD5),
    (POSTGRES_MD5_PENCIL.upper(), SecretKind.PLAIN),  # PgBouncer: lower-case hex only
    (POSTGRES_MD5_PENCIL[:-1], SecretKind.PLAIN),
    (POSTGRES_MD5_PENCIL + "0", SecretKind.PLAIN),
    (POSTGRES_SCRAM_PENCIL, SecretKind.SCRAM),
    ("SCRAM-SHA-256$4096:broken", SecretKind.PLAIN),
])
def test_secret_kind(secret, kind):
    assert secret_kind(secret) is kind


@pytest.mark.parametrize("creds", [PLAIN, MD5, SCRAM], ids=["plain", "md5", "scram"])
def test_check_plain(creds):
    assert check_plain(creds, "pencil")
    assert not check_plain(creds, "pencil!")
    assert not check_plain(creds, "Pencil")
    assert not check_plain(creds, "")


def test_empty_secret_never_matches():
    creds = lookup_credentials({"dave": ""}, "dave")
    assert creds.known
    assert not check_plain(creds, "")
    assert not check_md5(creds, b"salt", md5_response("", "dave", b"salt"))
    with pytest.raises(ScramError):
        scram_login(creds, "")


def test_credentials_repr_hides_secret():
    assert "pencil" not in repr(PLAIN)
    assert POSTGRES_SCRAM_PENCIL not in repr(SCRAM)


# Method choice (PgBouncer's auth_type rules)

@pytest.mark.parametrize("auth_type, creds, method", [
    ("trust", PLAIN, "trust"),
    ("any", SCRAM, "trust"),
    ("plain", SCRAM, "plain"),
    ("md5", PLAIN, "md5"),
    ("md5", MD5, "md5"),
    ("md5", SCRAM, "scram-sha-256"),
    ("scram-sha-256", PLAIN, "scram-sha-256"),
    ("scram-sha-256", SCRAM, "scram-sha-256"),
    ("scram-sha-256", MD5, "scram-sha-256"),
])
def test_choose_client_method(auth_type, creds, method):
    assert choose_client_method(auth_type, creds) == method


@pytest.mark.parametrize("auth_type", ["cert", "hba", "pam", "ldap", "password", ""])
def test_choose_client_method_rejects_unsupported(auth_type):
    with pytest.raises(ValueError, match="unsupported auth_type"):
        choose_client_method(auth_type, PLAIN)


# SCRAM logins for each kind of secret

def test_scram_login_with_scram_secret():
    scram_login(SCRAM, "pencil")
    with pytest.raises(ScramError, match="password authentication failed"):
        scram_login(SCRAM, "pencil!")


def test_scram_login_with_plain_secret():
    scram_login(PLAIN, "pencil")
    with pytest.raises(ScramError, match="password authentication failed"):
        scram_login(PLAIN, "pencil!")


def test_scram_login_with_md5_secret_fails_like_a_wrong_password():
    with pytest.raises(ScramError, match="password authentication failed"):
        scram_login(MD5, "pencil")


# No user enumeration: an unknown user looks like a known user with a wrong password

SCRAM_USERS = {"carol": POSTGRES_SCRAM_PENCIL, "erin": build_verifier("x"), "bob": POSTGRES_MD5_PENCIL}
MD5_USERS = {"m_user": POSTGRES_MD5_PENCIL, "alice": "pencil", "carol": POSTGRES_SCRAM_PENCIL}
ONLY_SCRAM = {"carol": POSTGRES_SCRAM_PENCIL, "erin": build_verifier("x")}
NO_SCRAM = {"m_user": POSTGRES_MD5_PENCIL, "alice": "pencil"}


def test_lookup_known_user():
    assert lookup_credentials(SCRAM_USERS, "carol") == SCRAM
    assert lookup_credentials(MD5_USERS, "alice") == PLAIN


def what_a_client_is_asked(auth_type: str, creds: Credentials) -> tuple:
    """Everything a client sees before it answers: the method, and for SCRAM the salt length and iterations."""
    method = choose_client_method(auth_type, creds)
    if method != "scram-sha-256":
        return (method,)
    first = dict(part.split("=", 1) for part in
                 ScramServer(scram_verifier_for(creds)).handle_client_first(b"n,,n=,r=abc").decode().split(","))
    return (method, len(base64.b64decode(first["s"])), int(first["i"]))


MIXES = {
    "md5 only": {"a": POSTGRES_MD5_PENCIL, "b": md5_secret("b", "x")},
    "scram only": {"a": POSTGRES_SCRAM_PENCIL, "b": build_verifier("x")},
    "plain only": {"a": "pencil", "b": "x"},
    "md5 and scram": {"a": POSTGRES_MD5_PENCIL, "b": POSTGRES_SCRAM_PENCIL, "c": build_verifier("x")},
    "all kinds, odd iterations": {"a": POSTGRES_MD5_PENCIL, "b": build_verifier("x", iterations=8192),
                                  "c": "pencil", "d": build_verifier("y"), "e": md5_secret("e", "z")},
}


@pytest.mark.parametrize("auth_type", ["md5", "scram-sha-256", "plain", "any"])
@pytest.mark.parametrize("mix", list(MIXES))
def test_unknown_users_are_asked_what_known_users_are_asked_in_the_same_proportions(mix, auth_type):
    # Issue 8 case 11: with a mixed auth_file under md5, SCRAM users were asked for SASL and unknown
    # users for md5, which listed the SCRAM users. Now the answer for a name says nothing about it.
    users = MIXES[mix]
    known = collections.Counter(what_a_client_is_asked(auth_type, lookup_credentials(users, u)) for u in users)
    names = [f"nobody{i}" for i in range(2000)]
    unknown = collections.Counter(what_a_client_is_asked(auth_type, lookup_credentials(users, n)) for n in names)
    assert set(unknown) == set(known)
    for shape, count in known.items():
        assert abs(unknown[shape] / len(names) - count / len(users)) < 0.06, (shape, unknown, known)
    # And the same answer on every attempt: retrying a name does not tell either.
    assert all(what_a_client_is_asked(auth_type, lookup_credentials(users, n)) ==
               what_a_client_is_asked(auth_type, lookup_credentials(users, n)) for n in names[:50])


def test_unknown_user_scram_login_fails_like_wrong_password_with_stable_salt():
    fake = lookup_credentials(ONLY_SCRAM, "mallory")
    assert fake.kind is SecretKind.SCRAM
    with pytest.raises(ScramError) as unknown:
        scram_login(fake, "anything")
    with pytest.raises(ScramError) as wrong:
        scram_login(SCRAM, "anything")
    assert str(unknown.value) == str(wrong.value)

    # Same salt and iteration count on every attempt, shaped like a real verifier.
    attempts = set()
    for _ in range(3):
        server = ScramServer(scram_verifier_for(lookup_credentials(ONLY_SCRAM, "mallory")))
        attempts.add(salt_and_iterations(server.handle_client_first(b"n,,n=,r=abc")))
    assert len(attempts) == 1
    fake_salt_and_iterations = attempts.pop()
    real_first = ScramServer(scram_verifier_for(SCRAM)).handle_client_first(b"n,,n=,r=abc")
    assert len(fake_salt_and_iterations) == len(salt_and_iterations(real_first))
    assert fake_salt_and_iterations.endswith(",i=4096")
    # Another unknown user gets another salt, so the salt does not mark "unknown".
    other = ScramServer(scram_verifier_for(lookup_credentials(ONLY_SCRAM, "trudy")))
    assert salt_and_iterations(other.handle_client_first(b"n,,n=,r=abc")) != fake_salt_and_iterations


def test_plain_secret_under_scram_looks_like_unknown_user():
    # A plain password gets a derived salt, as fake credentials do: no random salt per attempt.
    users = {"alice": "pencil"}
    seen = {salt_and_iterations(ScramServer(scram_verifier_for(lookup_credentials(users, "alice")))
                                .handle_client_first(b"n,,n=,r=abc")) for _ in range(2)}
    assert len(seen) == 1
    assert seen.pop().endswith(",i=4096")


def test_unknown_user_md5_and_plain_checks_fail():
    for users in (SCRAM_USERS, MD5_USERS):
        fake = lookup_credentials(users, "mallory")
        assert lookup_credentials(users, "mallory") == fake
        salt = b"salt"
        # Not even a response built from the fake secret itself gets in.
        assert not check_md5(fake, salt, md5_response(fake.secret, "mallory", salt))
        assert not check_plain(fake, "anything")
        assert not check_plain(fake, fake.secret)
    fake = lookup_credentials(NO_SCRAM, "mallory")
    assert fake.kind is SecretKind.MD5
    assert secret_kind(fake.secret) is SecretKind.MD5


def test_fake_scram_secret_rejects_even_its_own_keys():
    fake = lookup_credentials(ONLY_SCRAM, "mallory")
    verifier = parse_verifier(fake.secret)
    assert verifier is not None
    server = ScramServer(verifier)
    client = ScramClient(client_key=verifier.stored_key, server_key=verifier.server_key)
    client_final = client.handle_server_first(server.handle_client_first(client.client_first()))
    with pytest.raises(ScramError, match="password authentication failed"):
        server.handle_client_final(client_final)


# Password for logging into PostgreSQL

@pytest.mark.parametrize("creds, db_password, expected", [
    (PLAIN, "dbpass", "dbpass"),
    (SCRAM, "dbpass", "dbpass"),
    (None, "dbpass", "dbpass"),
    (PLAIN, None, "pencil"),
    (PLAIN, "", "pencil"),
    (MD5, None, POSTGRES_MD5_PENCIL),
    (SCRAM, None, None),
    (None, None, None),
    (Credentials("dave", "", SecretKind.PLAIN, known=True), None, None),
    (lookup_credentials(MD5_USERS, "mallory"), None, None),
])
def test_server_password_for(creds, db_password, expected):
    assert server_password_for(creds, db_password) == expected


def test_md5_secret_from_auth_file_answers_server_md5_challenge():
    # What pgpool sends Postgres for AuthenticationMD5Password with only the md5 secret.
    salt = b"\x9a\x01\xfe\x10"
    password = server_password_for(MD5, None)
    assert md5_response(password, "m_user", salt) == md5_response("pencil", "m_user", salt)
