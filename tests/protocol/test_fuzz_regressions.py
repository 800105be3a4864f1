"""Inputs from fuzzing, and the attack classes the fuzz targets were seeded with, as plain tests.

Each test feeds bytes to a parser and checks that it refuses them with its documented error
type (never another exception, never a long computation). The fuzz targets' seeds are
replayed too, so the harness in benchmarks/fuzz cannot rot unnoticed. No sockets.
"""

from __future__ import annotations

import struct

import pytest

from benchmarks.fuzz.targets import TARGETS
from pgpool import prepared
from pgpool.protocol import messages as m
from pgpool.protocol import scram
from pgpool.protocol.errors import ProtocolError, parse_error_fields
from tests.protocol import fakes
from tests.protocol.fakes import Plane, server_of

PASSWORD = "pencil"
VERIFIER = scram.make_verifier(PASSWORD, salt=b"regression-salt!", iterations=16)
CLIENT_NONCE = "c" * 24
SERVER_NONCE = "s" * 24


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_runs_its_seeds(name):
    target = TARGETS[name]
    assert target.seeds, f"target {name} has no seeds"
    for seed in target.seeds:
        target.run(seed)


def exchange() -> tuple[scram.ScramClient, scram.ScramServer, bytes]:
    """Client and server after client-first / server-first; returns the client's correct final message."""
    client = scram.ScramClient(PASSWORD, nonce=CLIENT_NONCE)
    server = scram.ScramServer(VERIFIER, nonce=SERVER_NONCE)
    server_first = server.handle_client_first(client.client_first())
    return client, server, client.handle_server_first(server_first)


# ---- PgBouncer 2026 CVE classes: SCRAM client-final without nonce ---------------------------

@pytest.mark.parametrize("mangle", [
    lambda final: b",".join(p for p in final.split(b",") if not p.startswith(b"r=")),    # no r= at all
    lambda final: final.replace(b"r=" + (CLIENT_NONCE + SERVER_NONCE).encode(), b"r="),   # empty nonce
    lambda final: final.replace(b"r=", b"x="),                                             # renamed attribute
    lambda final: final.split(b",p=")[0],                                                  # no proof
    lambda final: b"p=" + final.split(b",p=")[1],                                         # proof only
    lambda final: b"",
    lambda final: b",,,",
])
def test_scram_client_final_without_nonce_is_refused(mangle):
    _, server, final = exchange()
    with pytest.raises(scram.ScramError):
        server.handle_client_final(mangle(final))
    assert server.client_key is None


def test_scram_client_final_after_refusal_stays_refused():
    _, server, final = exchange()
    with pytest.raises(scram.ScramError):
        server.handle_client_final(b"c=biws,p=" + b"A" * 44)
    with pytest.raises(scram.ScramError):   # no second try on the same exchange
        server.handle_client_final(final)


# ---- an absurd iteration count sent by a server ---------------------------------------------

@pytest.mark.parametrize("iterations", [
    b"2147483647", b"4294967296", b"99999999999999999999", b"10000001", b"0", b"-1", b"+4096", b" 4096",
    b"4096 ", b"\xd9\xa3", b"1e9", b"0x1000", b"",
])
def test_scram_absurd_iteration_count_is_refused_before_pbkdf2(iterations):
    # A count of 2**31 would run PBKDF2 for minutes on the event loop: refused before any work.
    client = scram.ScramClient(PASSWORD, nonce=CLIENT_NONCE)
    client.client_first()
    salt = scram._b64(b"salt")
    server_first = b"r=" + (CLIENT_NONCE + SERVER_NONCE).encode() + b",s=" + salt.encode() + b",i=" + iterations
    with pytest.raises(scram.ScramError):
        client.handle_server_first(server_first)


def test_scram_iteration_bound_is_inclusive():
    client = scram.ScramClient(client_key=b"k" * 32, server_key=b"s" * 32, nonce=CLIENT_NONCE)
    client.client_first()
    nonce = (CLIENT_NONCE + SERVER_NONCE).encode()
    final = client.handle_server_first(b"r=" + nonce + b",s=c2FsdA==,i=" + str(scram.MAX_ITERATIONS).encode())
    assert final.startswith(b"c=biws,r=")


# ---- lengths that overflow ------------------------------------------------------------------

@pytest.mark.parametrize("declared", [0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 5, 1 << 16])
def test_sasl_initial_response_length_that_overflows_is_refused(declared):
    data = b"n,,n=,r=" + CLIENT_NONCE.encode()
    body = m.cstring("SCRAM-SHA-256") + struct.pack("!I", declared) + data
    with pytest.raises(ProtocolError):
        m.parse_sasl_initial_response(body)


def test_sasl_initial_response_minus_one_means_no_data():
    body = m.cstring("SCRAM-SHA-256") + struct.pack("!i", -1)
    assert m.parse_sasl_initial_response(body) == ("SCRAM-SHA-256", b"")


@pytest.mark.parametrize("body", [b"", b"SCRAM-SHA-256", b"SCRAM-SHA-256\x00", b"SCRAM-SHA-256\x00\x00\x00\x00"])
def test_sasl_initial_response_truncated_is_refused(body):
    with pytest.raises(ProtocolError):
        m.parse_sasl_initial_response(body)


@pytest.mark.parametrize("packet", [
    struct.pack("!II", 8, 80877102),                            # CancelRequest without pid and key
    struct.pack("!II", 24, 80877102) + b"\x00" * 16,            # CancelRequest too long
    struct.pack("!II", 10, 196608) + b"u\x00",                # no terminator
    struct.pack("!II", 15, 196608) + b"u\x00v\x00w\x00\x00",    # name without value
    struct.pack("!II", 13, 196608) + b"\xff\x00x\x00\x00",     # not UTF-8
])
def test_startup_packet_malformed_is_refused(packet):
    with pytest.raises(ProtocolError):
        m.parse_startup_packet(packet)


# ---- found by the `prepared` target: a ReadyForQuery without its status byte ----------------

def test_tracker_refuses_ready_for_query_without_status_byte():
    # Fuzz input prepared-crash-407c236e: P/B/E/S, their replies, then 'Z' with an empty body
    # raised IndexError out of the tracker. A server that sends it broke the protocol.
    data = bytes.fromhex("02000001010101020300030500800000" "8b011880054080" "09f6")
    with pytest.raises(ProtocolError):
        TARGETS["prepared"].func(data)


@pytest.mark.parametrize("body", [b"", b"II"])
def test_tracker_refuses_ready_for_query_of_wrong_size(body):
    registry = prepared.StatementRegistry()
    server = prepared.ServerStatements(registry, 10)
    server.link(prepared.ClientStatements())
    query = m.query("SELECT 1")
    assert server.on_client_message(ord("Q"), query, 5, len(query)) is None
    ready = m.message(b"Z", body)
    with pytest.raises(ProtocolError) as refused:
        server.on_server_message(ord("Z"), ready + b"X", 5, len(ready))
    assert refused.value.sqlstate == "08P01"


@pytest.mark.parametrize("body", [b"", b"II"])
@pytest.mark.parametrize("tracking", [True, False])
def test_server_sending_ready_for_query_of_wrong_size_is_closed(body, tracking):
    # The next message's type byte must never be read as the transaction status.
    plane = Plane(**({} if tracking else {"max_prepared_statements": 0}))
    client = plane.add_client()
    client.data_received(fakes.query("SELECT 1"))
    server = server_of(client)
    server.data_received(fakes.select_reply(b"1", status=b"I")[:-6] + fakes.msg(b"Z", body) + fakes.ready(b"I"))
    assert server.transport.closed
    assert b"C08006\x00" in client.transport.written and b"malformed ReadyForQuery" in client.transport.written
    assert plane.released(server) == 0


# ---- found by the soak: a server's FATAL followed by pgpool's own error -----------------------

def error_messages(data: bytes) -> list[dict[str, str]]:
    return [parse_error_fields(message[5:]) for message in fakes.split_messages(data) if message[:1] == b"E"]


@pytest.mark.parametrize("split", [False, True])
def test_server_fatal_gives_the_client_one_error_naming_pool_and_cause(split):
    # pg_terminate_backend sends FATAL 57P01 and closes. pgpool forwarded that FATAL and then sent
    # its own 08006: two ErrorResponses made libpq report two results for one command ("received
    # 2 results from command 'COMMIT'" in psycopg). Now the client gets one: 08006 with both.
    plane = Plane()
    client = plane.add_client()
    client.data_received(fakes.query("COMMIT"))
    server = server_of(client)
    fatal = fakes.error("57P01", "terminating connection due to administrator command", severity="FATAL")
    if split:
        server.data_received(fatal[:7])
        server.data_received(fatal[7:])
    else:
        server.data_received(fatal)
    server.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    errors = error_messages(client.transport.written)
    assert [e["C"] for e in errors] == ["08006"]
    assert "server connection lost for pool appdb/app" in errors[0]["M"]
    assert "terminating connection due to administrator command (57P01)" in errors[0]["M"]
    assert client.closed and client.transport.closed


def test_server_lost_without_fatal_still_gets_pgpools_error():
    plane = Plane()
    client = plane.add_client()
    client.data_received(fakes.query("COMMIT"))
    server = server_of(client)
    server.data_received(fakes.error("40001", "could not serialize access"))   # an ERROR is no goodbye
    server.connection_lost(None)
    errors = error_messages(client.transport.written)
    assert [e["C"] for e in errors] == ["40001", "08006"]
    assert "server connection lost for pool appdb/app" in errors[1]["M"]
