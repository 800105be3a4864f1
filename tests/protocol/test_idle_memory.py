"""What an idle logged-in client holds (issue 10: memory per idle client), driven without sockets.

An idle client should cost its connection object and little else: no message scanner, no
session tracker (clientsession.py) until its first link, no buffers or verdict tables, and its
session values shared with every client that logged in with the same ones. The bytes are measured by benchmarks/idle_memory.py (against PgBouncer); these
tests pin down the structure so a change that brings per-client containers back is seen.
"""

from __future__ import annotations

from tests.protocol.fakes import Plane, complete, parameter_status, query, ready, server_of


def assert_holds_no_containers(client) -> None:
    assert client.scanner is None or client.scanner.at_boundary
    session = client.session
    assert client.pending == () and session.pending_changes in ((), []) and session.tx_changes == ()
    assert session.resync_reported == () and not session.stmt_verdicts and not session.portal_verdicts


def test_a_logged_in_idle_client_holds_no_containers_and_shares_its_session_values():
    plane = Plane()
    a, b = plane.add_client(), plane.add_client()
    for client in (a, b):
        assert client.scanner is None and client.session is None and client.pending == ()
        assert client.params._reported is None and client.params._statements is None
        assert client.statements._names is None
    assert a.params.startup_reported is b.params.startup_reported


def test_after_a_transaction_the_client_holds_no_buffers_and_still_shares_its_values():
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("SELECT 1"))
    server = server_of(client)
    server.data_received(complete("SELECT 1") + ready())
    assert plane.released(server) == 1 and client.server is None
    assert_holds_no_containers(client)
    assert client.params._reported is None and client.params._statements is None


def test_a_parameter_change_takes_a_private_copy_that_other_clients_never_see():
    plane = Plane(servers=2)
    client, other = plane.add_client(), plane.add_client()
    client.data_received(query("SET application_name = 'batch'"))
    server = server_of(client)
    server.data_received(complete("SET") + parameter_status("application_name", "batch") + ready())
    assert client.params.get_reported("application_name") == "batch"
    assert other.params.get_reported("application_name") == ""
    assert dict(other.params.startup_reported) == dict(client.params.startup_reported)
    assert other.params._reported is None, "the other client still shares its startup values"
