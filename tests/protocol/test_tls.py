"""TLS without sockets: the negotiation decisions, the contexts built from settings, and real
handshakes between those contexts through memory BIOs, fed in arbitrary chunks."""

from __future__ import annotations

import ssl

import pglast
import pytest
import trustme
from hypothesis import given, strategies as st

from pgpool import auth, tls
from pgpool.config import load_settings
from pgpool.protocol.errors import ProtocolError

NO_ENV: dict[str, str] = {}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    files = {"ca": d / "ca.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    for name, idents, cn in (("server", ("db.example.com",), None), ("client", ("app@example.com",), "app")):
        cert = ca.issue_cert(*idents, common_name=cn)
        files[name + "_cert"] = d / f"{name}.crt"
        files[name + "_key"] = d / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(files[name + "_cert"]))
        cert.private_key_pem.write_to_path(str(files[name + "_key"]))
    return {k: str(v) for k, v in files.items()}


def settings(**values):
    return load_settings(None, {k: str(v) for k, v in values.items()}, environ=NO_ENV).settings


def both_sides(pki, client_mode="require", server_mode="verify-full", **more):
    return tls.build_contexts(settings(
        client_tls_sslmode=client_mode, client_tls_cert_file=pki["server_cert"], client_tls_key_file=pki["server_key"],
        client_tls_ca_file=pki["ca"], server_tls_sslmode=server_mode, server_tls_ca_file=pki["ca"],
        server_tls_cert_file=pki["client_cert"], server_tls_key_file=pki["client_key"], **more))


def handshake(client_ctx, server_ctx, hostname, chunks):
    """Run a TLS handshake through memory BIOs, delivering each flight split at the given sizes."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    sizes = iter(chunks)

    def deliver(data, bio):
        while data:
            n = max(1, next(sizes, len(data)))
            bio.write(data[:n])
            data = data[n:]

    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj in (("c", client), ("s", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        deliver(c_out.read(), s_in)
        deliver(s_out.read(), c_in)
        if all(done.values()):
            return client, server
    raise AssertionError("handshake did not finish")


# ---- decisions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["allow", "prefer", "require", "verify-ca", "verify-full"])
def test_server_answers(mode):
    assert tls.server_answer_means_tls(b"S", mode, "server h:1 for pool p") is True
    if mode in ("allow", "prefer"):
        assert tls.server_answer_means_tls(b"N", mode, "x") is False   # on in clear, as libpq
    else:
        with pytest.raises(ProtocolError, match="server does not support SSL, but SSL was required .*pool p"):
            tls.server_answer_means_tls(b"N", mode, "server h:1 for pool p")
    for junk in (b"E", b"\x00", b"H"):
        with pytest.raises(ProtocolError, match="invalid response to SSL negotiation"):
            tls.server_answer_means_tls(junk, mode, "x")


def test_ssl_request_answer_and_clear_text_clients(pki):
    off = tls.build_contexts(settings())
    assert tls.answer_ssl_request(off) == b"N"
    tls.check_clear_text_client(off, "app", "app", "1.2.3.4:5")
    for mode in ("allow", "prefer"):
        ctx = both_sides(pki, client_mode=mode)
        assert tls.answer_ssl_request(ctx) == b"S"
        tls.check_clear_text_client(ctx, "app", "app", "1.2.3.4:5")
    for mode in ("require", "verify-ca", "verify-full"):
        ctx = both_sides(pki, client_mode=mode)
        with pytest.raises(ProtocolError) as caught:
            tls.check_clear_text_client(ctx, "app", "db", "1.2.3.4:5")
        assert caught.value.sqlstate == "28000"
        assert caught.value.message == 'no pg_hba.conf entry for host "1.2.3.4", user "app", database "db", no encryption'


def test_protocols():
    T = ssl.TLSVersion
    assert tls.parse_protocols("secure", "x") == (T.TLSv1_2, T.TLSv1_3)
    assert tls.parse_protocols("tlsv1.3", "x") == (T.TLSv1_3, T.TLSv1_3)
    assert tls.parse_protocols("TLSv1.2, tlsv1.1", "x") == (T.TLSv1_1, T.TLSv1_2)
    assert tls.parse_protocols("all", "x") == (T.TLSv1, T.TLSv1_3)
    with pytest.raises(tls.TlsConfigError, match="server_tls_protocols = 'sslv3': unknown protocol 'sslv3'"):
        tls.parse_protocols("sslv3", "server_tls_protocols")


def test_configuration_errors_name_the_setting(pki, tmp_path):
    with pytest.raises(tls.TlsConfigError, match="needs client_tls_cert_file and client_tls_key_file"):
        tls.build_contexts(settings(client_tls_sslmode="require"))
    with pytest.raises(tls.TlsConfigError, match="verify-ca needs client_tls_ca_file"):
        tls.build_contexts(settings(client_tls_sslmode="verify-ca", client_tls_cert_file=pki["server_cert"],
                                    client_tls_key_file=pki["server_key"]))
    with pytest.raises(tls.TlsConfigError, match="auth_type = cert needs"):
        tls.build_contexts(settings(auth_type="cert"))
    with pytest.raises(tls.TlsConfigError, match="server_tls_ca_file .*No such file"):
        tls.build_contexts(settings(server_tls_sslmode="verify-full", server_tls_ca_file=str(tmp_path / "nope")))
    with pytest.raises(tls.TlsConfigError, match="server_tls_ciphers = 'NOPE'"):
        tls.build_contexts(settings(server_tls_ciphers="NOPE"))
    with pytest.raises(tls.TlsConfigError, match="server_tls13_ciphers = 'NOPE'"):
        tls.build_contexts(settings(server_tls13_ciphers="NOPE"))
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key")
    with pytest.raises(tls.TlsConfigError, match="client_tls_cert_file"):
        tls.build_contexts(settings(client_tls_sslmode="require", client_tls_cert_file=pki["server_cert"],
                                    client_tls_key_file=str(bad_key)))
    assert tls.build_contexts(settings(server_tls_sslmode="disable")).server is None


# ---- handshakes in memory ------------------------------------------------------------------------

@given(st.lists(st.integers(min_value=1, max_value=400), max_size=30))
def test_verify_full_handshake_any_chunking(pki, chunks):
    """pgpool's server context against its client context: SNI name checked, ALPN, client certificate."""
    ctx = both_sides(pki, client_mode="verify-full")
    client_ctx = ctx.server
    client_ctx.set_alpn_protocols([tls.ALPN_POSTGRESQL])
    client, server = handshake(client_ctx, ctx.client, "db.example.com", chunks)
    assert server.selected_alpn_protocol() == tls.ALPN_POSTGRESQL
    assert tls.certificate_user(server.getpeercert()) == "app"
    assert client.version() in ("TLSv1.2", "TLSv1.3")


def test_verify_full_refuses_another_name_and_require_does_not(pki):
    ctx = both_sides(pki)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(ctx.server, ctx.client, "other.example.com", [])
    relaxed = both_sides(pki, server_mode="require")
    handshake(relaxed.server, relaxed.client, "other.example.com", [])   # encrypts without checking, as libpq


def test_verify_ca_ignores_the_name_but_not_the_issuer(pki):
    ctx = both_sides(pki, server_mode="verify-ca")
    handshake(ctx.server, ctx.client, "other.example.com", [])
    stranger = trustme.CA().issue_cert("db.example.com")
    foreign = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    stranger.configure_cert(foreign)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ctx.server, foreign, "db.example.com", [])


def test_tls13_suites_are_applied(pki):
    ctx = both_sides(pki, server_tls13_ciphers="TLS_CHACHA20_POLY1305_SHA256")
    client, _ = handshake(ctx.server, ctx.client, "db.example.com", [])
    assert client.cipher()[0] == "TLS_CHACHA20_POLY1305_SHA256"


def test_certificate_user():
    assert tls.certificate_user(None) is None
    assert tls.certificate_user({}) is None
    assert tls.certificate_user({"subject": ((("organizationName", "x"),), (("commonName", "bob"),))}) == "bob"


# ---- auth pieces ---------------------------------------------------------------------------------

@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1))
def test_auth_query_binds_any_user_name_as_one_literal(user):
    sql = auth.auth_query_sql("SELECT rolname, rolpassword FROM pg_authid WHERE rolname=$1 AND $10 = $10;", user)
    stmt = pglast.parse_sql(sql)[0].stmt
    literals = []

    def walk(node):
        if isinstance(node, pglast.ast.A_Const) and isinstance(node.val, pglast.ast.String):
            literals.append(node.val.sval)
        if isinstance(node, pglast.ast.Node):
            for name in node:
                walk(getattr(node, name))
        elif isinstance(node, tuple):
            for item in node:
                walk(item)
    walk(stmt)
    assert literals == [user]
    assert "$10 = $10" in sql   # only $1 is bound


def test_credentials_from_auth_query():
    scram = auth.scram.make_verifier("pw").to_secret()
    for missing in ([], [None], [""]):
        creds = auth.credentials_from_auth_query("u", missing)
        # Shaped like a SCRAM role: the same method is asked of unknown users as of real ones.
        assert (creds.known, creds.kind) == (False, auth.SecretKind.SCRAM)
        assert auth.choose_client_method("md5", creds) == "scram-sha-256"
    md5 = auth.md5_secret("u", "pw")
    creds = auth.credentials_from_auth_query("u", [md5])
    assert (creds.known, creds.kind) == (True, auth.SecretKind.MD5)
    assert auth.credentials_from_auth_query("u", [scram]).kind is auth.SecretKind.SCRAM


def test_check_certificate_user():
    assert auth.check_certificate_user("app", "app") is None
    assert auth.check_certificate_user("app", None) == "connection requires a valid client certificate"
    assert auth.check_certificate_user("app", "bob") == 'certificate authentication failed for user "app"'
