"""SCRAM-SHA-256 for both roles: RFC 7677's vector, PostgreSQL's verifiers, malformed input."""

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgpool.protocol.scram import (
    MAX_ITERATIONS,
    ScramClient,
    ScramError,
    ScramServer,
    ScramVerifier,
    build_verifier,
    check_password,
    make_verifier,
    parse_verifier,
    saslprep,
)

# RFC 7677 section 3: user "user", password "pencil".
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
RFC_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

# Captured from PostgreSQL 15 (initdb -E UTF8) with
#   SET password_encryption = 'scram-sha-256'; CREATE ROLE r PASSWORD E'...';
#   SELECT rolpassword FROM pg_authid WHERE rolname = 'r';
# The non-ASCII passwords pin down SASLprep: mapped to nothing (soft hyphen),
# non-ASCII space, NFKC, and a bidi failure that makes Postgres use the raw bytes.
POSTGRES_VERIFIERS = {
    "pencil": "SCRAM-SHA-256$4096:a4hy55u+8YDc3CPUaGjAjw==$RkRgVMl71tkzPbCdfjGfCYvbKhZf99j6f82NtXArivQ=:eGQOhFn9kj4ScbfwMCaSGdneoPoZR0cofR0fd9phydM=",
    'we"ird pa$$:word': "SCRAM-SHA-256$4096:CC29FidTtOGdb7gRBkiILg==$IDBZAFQiLwZbpvblzEQig/86bXQRt2a1kJs05lTuIXQ=:fQ7nGw9HZ6AAaXgV6oQ4pIQnmWzE4b+2itV3AdFoa98=",
    "I\u00adX": "SCRAM-SHA-256$4096:gztBlbJK2J8CQBjLwwFN2Q==$2WcqJcW1Azap9A8qjH/1MA92KBB7hw2OfoeKxbKQUm4=:CjwOUdC2RA1SN1INsc/ThqGkNIJp6WmRo7p+MEMxlzs=",
    "\u2168": "SCRAM-SHA-256$4096:OrTQ9MK/xzz3dlxfLTMFAg==$UM/y8NjoOO62BLfOt6TpAMA2592oRw6/wpsgQ5S2ALA=:8fFMzplyKUnNGQRQGtPwfxE2coQIYrR1fgC1NLdnR4Q=",
    "\u00aa": "SCRAM-SHA-256$4096:A7ADeUSH5D/bkgBAMpRHdQ==$AFLyUg9JILjUtv8UctZEpyz3Gxo6cV9LVEpyKFHXUM0=:XVVd+KoE+6f+jow3OCikkcG6w9Sl3v0N4pwBl0sBz0A=",
    "a\u00a0b\u00e9": "SCRAM-SHA-256$4096:pg8a8IUBDnlViuPNiZgfHw==$M0+BxQo/pTk0H2xGPpP6Uyadkiyw4DwRGy/CiM+0V1U=:COMOrVNnD2YSz2rZHfF2HMoS7svUkBa1UPC3xIZJtG4=",
    "\u0627\u0031": "SCRAM-SHA-256$4096:cPjQMbixOMe5hAl9is9vVg==$WWtf1Ej6e6eUOFwQpuPMIgCr4tBCUVf08KJwTAizwIk=:DWFByFFhGi5aKLifTuSswTbmimL4FHFDLtz8bS2Wfr4=",
}

PENCIL = parse_verifier(POSTGRES_VERIFIERS["pencil"])


def exchange(server: ScramServer, client: ScramClient) -> None:
    """Run a whole exchange; raises ScramError from whichever side rejects it."""
    server_first = server.handle_client_first(client.client_first())
    server_final = server.handle_client_final(client.handle_server_first(server_first))
    client.handle_server_final(server_final)


def started_server(verifier: ScramVerifier = PENCIL) -> tuple[ScramServer, bytes]:
    server = ScramServer(verifier)
    server_first = server.handle_client_first(b"n,,n=,r=clientnonce")
    return server, server_first


def client_after_first(nonce: str = "clientnonce") -> ScramClient:
    client = ScramClient("pencil", nonce=nonce)
    client.client_first()
    return client


# RFC 7677 test vector

def test_rfc7677_server_side():
    verifier = make_verifier("pencil", RFC_SALT, 4096)
    server = ScramServer(verifier, nonce=RFC_SERVER_NONCE)
    assert server.handle_client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.client_key is not None


def test_rfc7677_client_side():
    client = ScramClient("pencil", username="user", nonce=RFC_CLIENT_NONCE)
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.handle_server_final(RFC_SERVER_FINAL)


def test_client_sends_empty_user_name_by_default():
    assert ScramClient("pencil", nonce="abc").client_first() == b"n,,n=,r=abc"


def test_client_escapes_user_name():
    client = ScramClient("pencil", username="a=b,c", nonce="abc")
    assert client.client_first() == b"n,,n=a=3Db=2Cc,r=abc"


# Verifiers

@pytest.mark.parametrize("password", list(POSTGRES_VERIFIERS))
def test_build_verifier_matches_postgres(password):
    stored = POSTGRES_VERIFIERS[password]
    verifier = parse_verifier(stored)
    assert build_verifier(password, verifier.salt, verifier.iterations) == stored
    assert check_password(verifier, password)
    assert not check_password(verifier, password + "x")


def test_build_verifier_defaults_to_random_16_byte_salt_and_4096_iterations():
    first, second = parse_verifier(build_verifier("pencil")), parse_verifier(build_verifier("pencil"))
    assert first.iterations == 4096
    assert len(first.salt) == 16
    assert first.salt != second.salt
    assert check_password(first, "pencil") and check_password(second, "pencil")


def test_parse_verifier_round_trips():
    assert PENCIL.iterations == 4096
    assert PENCIL.to_secret() == POSTGRES_VERIFIERS["pencil"]


KEY = base64.b64encode(b"k" * 32).decode()


@pytest.mark.parametrize("text", [
    "pencil",
    "md501280f2bb5b3b86b333b3101c150024a",
    "",
    f"SCRAM-SHA-256$4096:c2FsdA==${base64.b64encode(b'k' * 31).decode()}:{KEY}",
    f"SCRAM-SHA-256$0:c2FsdA==${KEY}:{KEY}",
    f"SCRAM-SHA-256$4096:c2FsdA=${KEY}:{KEY}",
    f"SCRAM-SHA-256$4096:${KEY}:{KEY}",
    f"SCRAM-SHA-256$\u0664\u0660\u0669\u0666:c2FsdA==${KEY}:{KEY}",
    POSTGRES_VERIFIERS["pencil"] + " ",
    POSTGRES_VERIFIERS["pencil"].replace("SHA-256", "SHA-1"),
])
def test_parse_verifier_rejects_other_shapes(text):
    assert parse_verifier(text) is None


def test_parse_verifier_accepts_any_salt_length_and_iterations():
    verifier = parse_verifier(f"SCRAM-SHA-256$1:c2FsdA==${KEY}:{KEY}")
    assert (verifier.iterations, verifier.salt, verifier.stored_key) == (1, b"salt", b"k" * 32)


def test_verifier_repr_hides_keys():
    text = repr(PENCIL)
    assert base64.b64encode(PENCIL.stored_key).decode() not in text
    assert "stored_key" not in text and "server_key" not in text


# SASLprep (RFC 4013 section 3 examples, with Postgres' "use it unchanged" on failure)

@pytest.mark.parametrize("given_password, prepared", [
    ("I\u00adX", "IX"),
    ("user", "user"),
    ("USER", "USER"),
    ("\u00aa", "a"),
    ("\u2168", "IX"),
    ("a\u00a0b\u00e9", "a b\u00e9"),
    ("\u0007", "\u0007"),  # ASCII is never touched, as in Postgres
    ("\u00e9\u0007", "\u00e9\u0007"),  # prohibited control character: unchanged
    ("\u0627\u0031", "\u0627\u0031"),  # RandALCat not last: unchanged
    ("\u0627a\u0627", "\u0627a\u0627"),  # RandALCat mixed with LCat: unchanged
    ("\u0627\u0628", "\u0627\u0628"),  # all RandALCat: fine
    ("\u00e9\u0221", "\u00e9\u0221"),  # unassigned in Unicode 3.2: unchanged
    ("\u00ad", "\u00ad"),  # nothing left after mapping: unchanged
    ("\ue000x", "\ue000x"),  # private use: unchanged
])
def test_saslprep(given_password, prepared):
    assert saslprep(given_password) == prepared


# Round trips

def test_round_trip_right_password():
    server, client = ScramServer(PENCIL), ScramClient("pencil")
    exchange(server, client)
    assert len(server.client_key) == 32


def test_round_trip_wrong_password_is_rejected_by_server():
    server, client = ScramServer(PENCIL), ScramClient("pencil!")
    with pytest.raises(ScramError, match="password authentication failed") as caught:
        exchange(server, client)
    assert "pencil" not in str(caught.value)
    assert server.client_key is None


def test_round_trip_saslprep_equivalent_password():
    verifier = parse_verifier(POSTGRES_VERIFIERS["\u2168"])
    exchange(ScramServer(verifier), ScramClient("IX"))


def test_server_accepts_y_gs2_header():
    # libpq sends "y,," over TLS when the server offers no SCRAM-SHA-256-PLUS.
    client = ScramClient("pencil", nonce="abc")
    client.client_first()
    server = ScramServer(PENCIL)
    server_first = server.handle_client_first(b"y,,n=,r=abc")
    final = client.handle_server_first(server_first).replace(b"c=biws", b"c=eSws")
    with pytest.raises(ScramError, match="password authentication failed"):
        # The proof covered "c=biws", so the swapped channel-binding field breaks it...
        server.handle_client_final(final)
    # ...while an honest "y,," client gets through.
    server = ScramServer(PENCIL)
    server_first = server.handle_client_first(b"y,,n=,r=abc")
    server.handle_client_final(_y_client_final(server_first))
    assert server.client_key is not None


def _y_client_final(server_first: bytes) -> bytes:
    # A client-final-message as a "y,," client builds it, computed by hand.
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c=eSws,r={attrs['r']}"
    auth_message = f"n=,r=abc,{server_first.decode()},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def test_client_rejects_server_that_does_not_know_the_verifier():
    wrong = make_verifier("other", PENCIL.salt, PENCIL.iterations)
    impostor = ScramVerifier(PENCIL.iterations, PENCIL.salt, PENCIL.stored_key, wrong.server_key)
    with pytest.raises(ScramError, match="server signature does not match"):
        exchange(ScramServer(impostor), ScramClient("pencil"))


# Pass-through: a client's proven ClientKey logs pgpool into the server

def test_client_key_recovered_from_login_logs_into_server_with_same_verifier():
    pgpool_side = ScramServer(PENCIL)
    exchange(pgpool_side, ScramClient("pencil"))
    postgres_side = ScramServer(PENCIL)
    exchange(postgres_side, ScramClient(client_key=pgpool_side.client_key, server_key=PENCIL.server_key))
    assert postgres_side.client_key == pgpool_side.client_key


def test_client_key_does_not_work_against_a_verifier_with_another_salt():
    pgpool_side = ScramServer(PENCIL)
    exchange(pgpool_side, ScramClient("pencil"))
    other_salt = make_verifier("pencil", b"another salt", PENCIL.iterations)
    with pytest.raises(ScramError, match="password authentication failed"):
        exchange(ScramServer(other_salt),
                 ScramClient(client_key=pgpool_side.client_key, server_key=PENCIL.server_key))


@pytest.mark.parametrize("kwargs", [
    {},
    {"password": "x", "client_key": b"k" * 32, "server_key": b"k" * 32},
    {"client_key": b"k" * 32},
    {"password": "x", "server_key": b"k" * 32},
    {"client_key": b"k" * 31, "server_key": b"k" * 32},
])
def test_client_needs_password_or_both_keys(kwargs):
    with pytest.raises(ValueError):
        ScramClient(**kwargs)


# Malformed and out-of-order messages

@pytest.mark.parametrize("message, reason", [
    (b"", "gs2 header"),
    (b"n,,", "expected n= and r="),
    (b"x,,n=,r=abc", "gs2 header"),
    (b"n,n=,r=abc", "gs2 header"),
    (b"p=tls-server-end-point,,n=,r=abc", "channel binding"),
    (b"n,a=admin,n=,r=abc", "authorization identity"),
    (b"n,,m=ext,n=,r=abc", "mandatory extensions"),
    (b"n,,r=abc,n=", "expected n= and r="),
    (b"n,,n=", "expected n= and r="),
    (b"n,,n=,r=", "nonce"),
    (b"n,,n=,r=a b", "nonce"),
    (b"n,,n=,r=\xc3\xa9", "nonce"),
    (b"n,,n=,r=abc\x00", "NUL"),
    (b"n,,n=\xff,r=abc", "UTF-8"),
])
def test_server_rejects_malformed_client_first(message, reason):
    with pytest.raises(ScramError, match=reason):
        ScramServer(PENCIL).handle_client_first(message)


def test_server_rejects_malformed_client_final():
    def final_for(server_first: bytes, **replace: str) -> bytes:
        nonce = server_first.decode().split(",")[0][2:]
        attrs = {"c": "biws", "r": nonce, "p": base64.b64encode(b"p" * 32).decode()}
        attrs.update(replace)
        return ",".join(f"{k}={v}" for k, v in attrs.items() if v is not None).encode()

    cases = [
        ({"c": None}, "expected c=, r=, p="),
        ({"p": None}, "expected c=, r=, p="),
        ({"c": "eSws"}, "channel binding"),
        ({"c": "cD10bHMsLA=="}, "channel binding"),
        ({"c": "bi!ws"}, "base64"),
        ({"r": "clientnonce"}, "nonce does not match"),
        ({"p": base64.b64encode(b"p" * 31).decode()}, "proof length"),
        ({"p": "***"}, "base64"),
        ({}, "password authentication failed"),
    ]
    for replace, reason in cases:
        server, server_first = started_server()
        with pytest.raises(ScramError, match=reason):
            server.handle_client_final(final_for(server_first, **replace))
        assert server.client_key is None


def test_server_steps_out_of_order():
    with pytest.raises(ScramError, match="unexpected SCRAM step"):
        ScramServer(PENCIL).handle_client_final(b"c=biws,r=x,p=x")
    server, _ = started_server()
    with pytest.raises(ScramError, match="unexpected SCRAM step"):
        server.handle_client_first(b"n,,n=,r=again")
    with pytest.raises(ScramError):
        server.handle_client_final(b"garbage")
    with pytest.raises(ScramError, match="unexpected SCRAM step"):
        server.handle_client_final(b"garbage")


@pytest.mark.parametrize("message, reason", [
    (b"", "expected r=, s=, i="),
    (b"m=ext,r=clientnonceX,s=c2FsdA==,i=4096", "mandatory extensions"),
    (b"r=clientnonceX,s=c2FsdA==", "expected r=, s=, i="),
    (b"s=c2FsdA==,r=clientnonceX,i=4096", "expected r=, s=, i="),
    (b"r=othernonceXY,s=c2FsdA==,i=4096", "does not extend the client nonce"),
    (b"r=clientnonce,s=c2FsdA==,i=4096", "does not extend the client nonce"),
    (b"r=clientnonce\x7f,s=c2FsdA==,i=4096", "nonce"),
    (b"r=clientnonceX,s=c2FsdA,i=4096", "base64"),
    (b"r=clientnonceX,s=,i=4096", "empty salt"),
    (b"r=clientnonceX,s=c2FsdA==,i=0", "outside 1.."),
    (b"r=clientnonceX,s=c2FsdA==,i=%d" % (MAX_ITERATIONS + 1), "outside 1.."),
    (b"r=clientnonceX,s=c2FsdA==,i=-1", "bad iteration count"),
    (b"r=clientnonceX,s=c2FsdA==,i=4k", "bad iteration count"),
    (b"r=clientnonceX,s=c2FsdA==,i=" + "\u0664".encode(), "bad iteration count"),
    (b"r=clientnonceX,s=c2FsdA==,i=99999999999999999999", "bad iteration count"),
    (b"r=clientnonceX,s=c2FsdA==,i=4096\x00", "NUL"),
])
def test_client_rejects_malformed_server_first(message, reason):
    with pytest.raises(ScramError, match=reason):
        client_after_first().handle_server_first(message)


def test_client_reports_server_error_without_secrets():
    client = client_after_first()
    client.handle_server_first(b"r=clientnonceX,s=c2FsdA==,i=1")
    with pytest.raises(ScramError, match="server rejected SCRAM authentication: invalid-proof"):
        client.handle_server_final(b"e=invalid-proof")


@pytest.mark.parametrize("message, reason", [
    (b"", "expected v="),
    (b"x=abc", "expected v="),
    (b"v=***", "base64"),
    (b"v=" + base64.b64encode(b"s" * 32), "server signature does not match"),
    (b"v=", "server signature does not match"),
])
def test_client_rejects_bad_server_final(message, reason):
    client = client_after_first()
    client.handle_server_first(b"r=clientnonceX,s=c2FsdA==,i=1")
    with pytest.raises(ScramError, match=reason):
        client.handle_server_final(message)


def test_client_steps_out_of_order():
    client = ScramClient("pencil")
    with pytest.raises(ScramError, match="unexpected SCRAM step"):
        client.handle_server_first(b"r=x,s=c2FsdA==,i=1")
    client = ScramClient("pencil")
    client.client_first()
    with pytest.raises(ScramError, match="unexpected SCRAM step"):
        client.client_first()
    with pytest.raises(ScramError, match="unexpected SCRAM step"):
        client.handle_server_final(b"v=abc")


# Hypothesis: whatever arrives, the only exception is ScramError

FUZZ = settings(max_examples=300, deadline=None)
printable_nonce = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=","),
                          min_size=1, max_size=30)
fuzz_text = st.text(max_size=60)


def only_scram_errors(step, data) -> None:
    try:
        step(data)
    except ScramError:
        pass


@FUZZ
@given(data=st.binary(max_size=200))
def test_server_first_step_random_bytes(data):
    only_scram_errors(ScramServer(PENCIL).handle_client_first, data)


@FUZZ
@given(data=st.binary(max_size=200))
def test_server_final_step_random_bytes(data):
    server, _ = started_server()
    only_scram_errors(server.handle_client_final, data)


@FUZZ
@given(head=st.sampled_from(["n,,", "y,,", "p=x,,", "n,a=x,", "n,,m=x,", ""]),
       user=fuzz_text, nonce=fuzz_text, tail=fuzz_text)
def test_server_first_step_structured(head, user, nonce, tail):
    message = f"{head}n={user},r={nonce}{tail}".encode("utf-8", "surrogatepass")
    only_scram_errors(ScramServer(PENCIL).handle_client_first, message)


@FUZZ
@given(channel=st.sampled_from(["biws", "eSws", "", "!"]) | fuzz_text,
       nonce_tail=fuzz_text, middle=fuzz_text,
       proof=st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()) | fuzz_text)
def test_server_final_step_structured(channel, nonce_tail, middle, proof):
    server, server_first = started_server()
    nonce = server_first.decode().split(",")[0][2:]
    message = f"c={channel},r={nonce}{nonce_tail},{middle}p={proof}".encode("utf-8", "surrogatepass")
    only_scram_errors(server.handle_client_final, message)


@FUZZ
@given(data=st.binary(max_size=200))
def test_client_server_first_step_random_bytes(data):
    only_scram_errors(client_after_first().handle_server_first, data)


@FUZZ
@given(nonce_tail=printable_nonce | fuzz_text,
       salt=st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()) | fuzz_text,
       iterations=st.integers(-3, 8).map(str) | fuzz_text, tail=fuzz_text)
def test_client_server_first_step_structured(nonce_tail, salt, iterations, tail):
    message = f"r=clientnonce{nonce_tail},s={salt},i={iterations}{tail}".encode("utf-8", "surrogatepass")
    only_scram_errors(client_after_first().handle_server_first, message)


@FUZZ
@given(data=st.binary(max_size=200) | fuzz_text.map(lambda t: ("v=" + t).encode("utf-8", "surrogatepass")))
def test_client_server_final_step_random_bytes(data):
    client = client_after_first()
    client.handle_server_first(b"r=clientnonceX,s=c2FsdA==,i=1")
    only_scram_errors(client.handle_server_final, data)
