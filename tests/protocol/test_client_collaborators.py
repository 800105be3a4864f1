"""What a client asks the collaborators App hands down (ClientHost), driven through the login
adapter without sockets: admission while shutting down, the per-database client limit counted
and uncounted through PoolDirectory and ClientRegistry, SUSPEND and the drain reaching a login
that completes meanwhile. The wire and the limits' wording are the ones the integration tests
check against real clients; here the point is that the collaborators alone carry them.
"""

from __future__ import annotations

import inspect

from pgpool import auth
from pgpool.client import ClientConnection, ClientHost
from pgpool.pool import ClientState
from pgpool.protocol import messages as m
from pgpool.protocol.errors import parse_error_fields
from tests.protocol.fakes import FakeTransport, Plane, split_messages
from tests.waiting import wait_until


def start_login(plane: Plane, database: str = "appdb") -> tuple[ClientConnection, FakeTransport]:
    client = ClientConnection(plane.app)
    transport = FakeTransport(f"C-{client.id}")
    client.connection_made(transport)   # type: ignore[arg-type]
    client.data_received(m.startup_message({"user": "app", "database": database}))
    return client, transport


def error_of(transport: FakeTransport) -> tuple[str, str]:
    [fields] = [parse_error_fields(reply[5:]) for reply in split_messages(transport.written) if reply[:1] == b"E"]
    return fields["C"], fields["M"]


def test_client_host_is_collaborators_only():
    """A client is handed attributes (settings and collaborators), never methods of App to call back."""
    methods = [name for name, value in vars(ClientHost).items()
               if inspect.isfunction(value) and not name.startswith("_")]
    assert methods == []
    assert {"client_registry", "pool_directory", "admin_gate", "client_auth", "cancel"} <= set(
        ClientHost.__annotations__)


async def test_login_while_shutting_down_is_refused_57P03():
    plane = Plane(auth_type="trust")
    plane.app.client_registry.shutting_down = True
    client, transport = start_login(plane)
    await wait_until(lambda: transport.closed, message="refused")
    assert error_of(transport) == ("57P03", "pgpool is shutting down: no new connections")
    assert client not in plane.app.clients and plane.app.client_login_failures == 1


async def test_max_db_client_connections_counts_logins_and_frees_the_slot_when_one_leaves():
    plane = Plane(auth_type="trust", max_db_client_connections=2)
    registry = plane.app.client_registry
    # Plane took its pool through PoolDirectory.get_pool, which counts one client (as auth_query's lookups do).
    assert registry.db_clients["appdb"] == 1
    first, first_transport = start_login(plane)
    await wait_until(lambda: first.login is None, message="first login done")
    assert not first_transport.closed and registry.db_clients["appdb"] == 2
    second, second_transport = start_login(plane)
    await wait_until(lambda: second_transport.closed, message="second refused")
    assert error_of(second_transport) == (
        "53300", 'client connections exceeded (max_db_client_connections): database "appdb" has 2 clients, '
                 'the limit is 2')
    first.disconnect("test done")
    assert registry.db_clients["appdb"] == 1 and registry.user_clients["app"] == 1
    third, third_transport = start_login(plane)
    await wait_until(lambda: third.login is None, message="third login done")
    assert not third_transport.closed and third.state == ClientState.IDLE


async def test_disabled_database_refuses_logins_55000():
    plane = Plane(auth_type="trust")
    counted = plane.app.client_registry.db_clients["appdb"]
    plane.app.set_disabled("appdb", True)
    client, transport = start_login(plane)
    await wait_until(lambda: transport.closed, message="refused")
    assert error_of(transport) == ("55000", 'database does not allow connections: "appdb" (DISABLE on the admin '
                                            'console; ENABLE appdb lifts it)')
    assert plane.app.client_registry.db_clients["appdb"] == counted


async def test_login_during_suspend_is_held_until_resume():
    plane = Plane(auth_type="trust")
    plane.app.suspension.active = True     # what SUSPEND sets before holding the sockets it finds
    client, transport = start_login(plane)
    await wait_until(lambda: client.login is None, message="login done")
    assert not transport.reading and plane.app.suspended
    plane.app.resume_suspended()
    assert transport.reading and not plane.app.suspended


async def test_login_while_draining_leaves_at_once_with_57P01():
    plane = Plane(auth_type="md5")
    plane.app.client_auth.users = {"app": auth.md5_secret("app", "secret")}
    registry = plane.app.client_registry
    client, transport = start_login(plane)
    await wait_until(lambda: transport.writes, message="md5 request")   # admitted: past the client limit
    [request] = split_messages(transport.take())
    _, salt = m.parse_authentication(request[5:])
    registry.shutting_down = True        # the drain begins while the client is still logging in
    client.data_received(m.password_message(auth.md5_response("secret", "app", salt)))
    await wait_until(lambda: client.login is None, message="login done")
    assert client.drain and not transport.closed
    plane.app.loop.run_soon()   # the drain runs on the next loop turn (call_soon)
    assert transport.closed
    assert error_of(transport) == ("57P01", "pgpool is shutting down (client drained at transaction boundary)")
    assert registry.all_left.is_set()
