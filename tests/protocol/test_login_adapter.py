"""client.py's login adapter around protocol/startup.py's ClientLogin, driven without sockets.

The machine itself is tested in test_startup.py; this checks the glue: bytes that arrive one
at a time across event-loop turns wake the login coroutine, what the machine writes goes out
before an error, EOF ends the login quietly, and bytes after the startup reach the data plane.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from pgpool import auth
from pgpool.client import ClientConnection
from pgpool.pool import ClientState
from pgpool.protocol import messages as m
from pgpool.protocol.errors import parse_error_fields
from tests.protocol.fakes import SERVER_PARAMS, FakeTransport, Plane, query, split_messages
from tests.waiting import wait_until


def start_client(plane: Plane) -> tuple[ClientConnection, FakeTransport]:
    client = ClientConnection(plane.app)
    transport = FakeTransport("C-login")
    client.connection_made(transport)   # type: ignore[arg-type]
    assert client.login is not None and client in plane.app.clients
    return client, transport


async def feed_bytewise(client: ClientConnection, data: bytes) -> None:
    for i in range(len(data)):
        client.data_received(data[i:i + 1])
        await asyncio.sleep(0)   # one loop turn: the login coroutine runs on what it has


@pytest.mark.parametrize("bytewise", [True, False])
async def test_trust_login_ends_on_the_data_plane(bytewise):
    plane = Plane(auth_type="trust")
    client, transport = start_client(plane)
    data = m.startup_message({"user": "app", "database": "appdb"}) + query("SELECT 1")
    if bytewise:
        await feed_bytewise(client, data)
    else:
        client.data_received(data)   # the query is left over in the machine: take_rest() hands it on
    await wait_until(lambda: client.login is None, message="login done")
    replies = split_messages(transport.written)
    assert replies[0] == m.AUTHENTICATION_OK
    assert [r[:1] for r in replies[1:]] == [b"S"] * len(SERVER_PARAMS) + [b"K", b"Z"]
    assert client.state != ClientState.LOGIN and client.pool is plane.pool
    # What followed the startup packet went the data plane's way: to the pool's server.
    [server] = plane.servers
    await wait_until(lambda: server.transport.written, message="query forwarded")
    assert server.transport.written.endswith(query("SELECT 1"))


async def test_md5_wrong_password_gets_28P01_after_the_md5_request():
    plane = Plane(auth_type="md5")
    plane.app.client_auth.users = {"app": auth.md5_secret("app", "right")}
    client, transport = start_client(plane)
    client.data_received(m.startup_message({"user": "app", "database": "appdb"}))
    await wait_until(lambda: transport.writes, message="md5 request")
    [request] = split_messages(transport.take())
    code, salt = m.parse_authentication(request[5:])
    assert code == 5 and len(salt) == 4
    await feed_bytewise(client, m.password_message(auth.md5_response("wrong", "app", salt)))
    await wait_until(lambda: transport.closed, message="refused")
    fields = parse_error_fields(split_messages(transport.written)[0][5:])
    assert (fields["C"], fields["M"]) == ("28P01", 'password authentication failed for user "app"')


async def test_negotiation_is_written_before_the_error_that_follows():
    plane = Plane(auth_type="trust")
    client, transport = start_client(plane)
    body = struct.pack("!I", 3 << 16 | 2) + b"\x00"      # protocol 3.2, no user
    client.data_received(struct.pack("!I", len(body) + 4) + body)
    await wait_until(lambda: transport.closed, message="refused")
    negotiate, error = split_messages(transport.written)
    assert negotiate == m.negotiate_protocol_version(0, [])
    assert parse_error_fields(error[5:])["C"] == "28000"


async def test_eof_during_login_closes_quietly():
    plane = Plane(auth_type="trust")
    client, transport = start_client(plane)
    client.data_received(m.startup_message({"user": "app"})[:6])
    await asyncio.sleep(0)
    client.connection_lost(None)
    await wait_until(lambda: client.login_task is None, message="login task ended")
    assert transport.written == b"" and client.closed and client not in plane.app.clients


async def test_cancel_request_closes_without_a_reply():
    plane = Plane(auth_type="trust")
    client, transport = start_client(plane)
    client.data_received(m.cancel_request(1, 2))
    await wait_until(lambda: transport.closed, message="closed")
    assert transport.written == b""
