"""The data plane without sockets: ClientConnection and ServerConnection driven by fake transports.

What is checked is what a user of the pool would see: which bytes reach the client and the
server, when a server goes back to the pool (exactly once, after the last byte of the
transaction, however the server's bytes are split into reads), which session parameters
follow the client, and that backpressure and errors stay with the connection they belong to.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgpool.client import PENDING_LIMIT
from pgpool.pool import ClientState, ServerState
from pgpool.protocol.errors import parse_error_fields

from tests.protocol.fakes import (
    BIND_COMPLETE, COPY_DONE, FLUSH, NO_DATA, PARSE_COMPLETE, SYNC, TERMINATE, Plane, bind, complete, copy_data,
    copy_fail, copy_in_response, copy_out_response, data_row, describe, error, execute, extended, extended_reply, msg,
    notice, notification, parameter_status, parse, query, ready, row_description, select_reply, server_of,
    split_messages,
)


# ---- scenarios: a conversation that ends a transaction --------------------------------------

@dataclass(frozen=True)
class Step:
    side: str      # "client": bytes the client sends; "server": bytes the server answers
    data: bytes


def C(data: bytes) -> Step:
    return Step("client", data)


def S(data: bytes) -> Step:
    return Step("server", data)


COPY_DONE_B = msg(b"c")

SCENARIOS: dict[str, list[Step]] = {
    "simple-query": [C(query("SELECT 1")), S(select_reply(b"1", b"2"))],
    "empty-query": [C(query("")), S(msg(b"I") + ready())],
    "query-error": [C(query("SELEC 1")), S(error() + ready())],
    "multi-statement-query": [C(query("SELECT 1; SELECT 2")),
                              S(row_description("a") + data_row(b"1") + complete("SELECT 1")
                                + row_description("b") + data_row(b"2") + complete("SELECT 1") + ready())],
    "transaction-block": [
        C(query("BEGIN")), S(complete("BEGIN") + ready(b"T")),
        C(query("SELECT 1")), S(select_reply(b"1", status=b"T")),
        C(query("COMMIT")), S(complete("COMMIT") + ready(b"I")),
    ],
    "failed-transaction-block": [
        C(query("BEGIN")), S(complete("BEGIN") + ready(b"T")),
        C(query("SELEC 1")), S(error() + ready(b"E")),
        C(query("ROLLBACK")), S(complete("ROLLBACK") + ready(b"I")),
    ],
    "extended-pipeline": [C(extended("SELECT 1") + extended("SELECT 2") + extended("SELECT 3")),
                          S(extended_reply(b"1") + extended_reply(b"2") + extended_reply(b"3"))],
    "extended-pipeline-with-error": [
        C(extended("SELECT 1") + extended("SELEC 2") + extended("SELECT 3")),
        S(extended_reply(b"1") + error() + ready() + extended_reply(b"3")),
    ],
    "extended-flush-then-sync": [
        C(parse("SELECT $1") + describe(b"S") + FLUSH),
        S(PARSE_COMPLETE + msg(b"t", b"\x00\x01\x00\x00\x00\x19") + row_description("v")),
        C(bind() + execute() + SYNC),
        S(BIND_COMPLETE + data_row(b"x") + complete("SELECT 1") + ready()),
    ],
    "extended-unsynced-after-ready": [
        C(extended("SELECT 1") + parse("SELECT 2") + describe(b"S") + FLUSH),
        S(extended_reply(b"1") + PARSE_COMPLETE + msg(b"t", b"\x00\x00") + row_description("v")),
        C(bind() + execute() + SYNC),
        S(BIND_COMPLETE + data_row(b"2") + complete("SELECT 1") + ready()),
    ],
    "copy-in-simple": [
        C(query("COPY t FROM STDIN")), S(copy_in_response()),
        C(copy_data(b"1\n") + copy_data(b"2\n") + COPY_DONE), S(complete("COPY 2") + ready()),
    ],
    "copy-in-simple-copyfail": [
        C(query("COPY t FROM STDIN")), S(copy_in_response()),
        C(copy_data(b"1\n") + copy_fail("client gave up")), S(error("57014", "COPY from stdin failed") + ready()),
    ],
    "copy-in-extended": [
        C(parse("COPY t FROM STDIN") + bind() + execute() + SYNC), S(PARSE_COMPLETE + BIND_COMPLETE + copy_in_response()),
        C(copy_data(b"1\n") + COPY_DONE + SYNC), S(complete("COPY 1") + ready()),
    ],
    "copy-in-extended-flush": [
        C(parse("COPY t FROM STDIN") + bind() + execute() + FLUSH), S(PARSE_COMPLETE + BIND_COMPLETE + copy_in_response()),
        C(copy_data(b"1\n") + COPY_DONE + SYNC), S(complete("COPY 1") + ready()),
    ],
    "copy-in-extended-sync-during-copy": [
        # The server ignores Flush and Sync while in COPY IN: only the Sync after CopyDone is answered.
        C(parse("COPY t FROM STDIN") + bind() + execute() + FLUSH), S(PARSE_COMPLETE + BIND_COMPLETE + copy_in_response()),
        C(copy_data(b"1\n") + SYNC + FLUSH + copy_data(b"2\n") + COPY_DONE + SYNC), S(complete("COPY 2") + ready()),
    ],
    "copy-in-extended-copyfail": [
        C(parse("COPY t FROM STDIN") + bind() + execute() + SYNC), S(PARSE_COMPLETE + BIND_COMPLETE + copy_in_response()),
        C(copy_fail("nope") + SYNC), S(error("57014", "COPY from stdin failed") + ready()),
    ],
    "copy-out": [
        C(query("COPY t TO STDOUT")),
        S(copy_out_response() + copy_data(b"1\n") + copy_data(b"2\n") + COPY_DONE_B + complete("COPY 2") + ready()),
    ],
    "copy-out-extended": [
        C(parse("COPY t TO STDOUT") + bind() + execute() + SYNC),
        S(PARSE_COMPLETE + BIND_COMPLETE + copy_out_response() + copy_data(b"1\n") + COPY_DONE_B
          + complete("COPY 1") + ready()),
    ],
}


def client_bytes(steps: list[Step]) -> bytes:
    return b"".join(s.data for s in steps if s.side == "client")


def server_bytes(steps: list[Step]) -> bytes:
    return b"".join(s.data for s in steps if s.side == "server")


def run_scenario(steps: list[Step], cuts: dict[int, list[bytes]] | None = None, plane: Plane | None = None):
    """Play `steps` on a fresh plane; server step i may be given as a list of reads in `cuts`.

    Asserts that the server stays linked until the last read of the last step, and is
    released exactly once by it, after every byte of the answer reached the client.
    """
    plane = plane or Plane()
    client = plane.add_client()
    server = None
    last = len(steps) - 1
    for index, step in enumerate(steps):
        reads = (cuts or {}).get(index, [step.data])
        reads = [r for r in reads if r]    # asyncio never delivers an empty read
        for n, read in enumerate(reads):
            if step.side == "client":
                client.data_received(read)
                server = server or server_of(client)
                assert client.server is server, f"step {index}: the client lost its server"
            else:
                assert server is not None
                server.data_received(read)
                final = index == last and n == len(reads) - 1
                assert plane.released(server) == (1 if final else 0), \
                    f"step {index} read {n}: released {plane.released(server)} times"
    assert server is not None
    (_, seen), = [r for r in plane.releases if r[0] is server]
    answer = server_bytes(steps)
    assert seen == len(answer), "released before the client was sent the whole answer"
    assert client.transport.written == answer
    assert server.transport.written == client_bytes(steps)
    assert client.server is None and server.client is None
    assert server.state == ServerState.IDLE and server in plane.pool.idle
    assert client.state == ClientState.IDLE and not client.closed
    return plane, client, server


@pytest.mark.parametrize("name", SCENARIOS)
def test_server_goes_back_once_at_the_end_of_the_transaction(name):
    run_scenario(SCENARIOS[name])


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_two_way_split_of_every_server_answer_releases_once_after_the_last_byte(name):
    steps = SCENARIOS[name]
    for index, step in enumerate(steps):
        if step.side != "server":
            continue
        for offset in range(1, len(step.data)):
            run_scenario(steps, {index: [step.data[:offset], step.data[offset:]]})


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos = [], 0
    for size in sizes:
        if pos >= len(data):
            break
        chunks.append(data[pos:pos + size])
        pos += size
    return chunks + ([data[pos:]] if pos < len(data) else [])


@settings(max_examples=300)
@given(name=st.sampled_from(sorted(SCENARIOS)), sizes=st.lists(st.integers(1, 17), min_size=1, max_size=80))
def test_random_reads_on_both_sides_release_once_after_the_last_byte(name, sizes):
    steps = SCENARIOS[name]
    run_scenario(steps, {i: cut(step.data, sizes) for i, step in enumerate(steps)})


@settings(max_examples=300)
@given(name=st.sampled_from(sorted(SCENARIOS)), data=st.data())
def test_async_messages_anywhere_are_forwarded_and_do_not_change_the_release(name, data):
    """NoticeResponse, NotificationResponse and ParameterStatus may come between any two messages."""
    steps = list(SCENARIOS[name])
    extras = [notice("careful"), notification("jobs", "42"), parameter_status("application_name", "batch")]
    for index, step in enumerate(steps):
        if step.side != "server":
            continue
        messages = split_messages(step.data)
        # Not after the last ReadyForQuery: from there on the server is no longer this client's.
        limit = len(messages) - 1 if index == len(steps) - 1 else len(messages)
        for extra in data.draw(st.lists(st.sampled_from(extras), max_size=3)):
            messages.insert(data.draw(st.integers(0, limit)), extra)
            limit += 1
        steps[index] = S(b"".join(messages))
    sizes = data.draw(st.lists(st.integers(1, 23), min_size=1, max_size=40))
    run_scenario(steps, {i: cut(step.data, sizes) for i, step in enumerate(steps)})


# ---- what keeps a server linked --------------------------------------------------------------

def test_transaction_block_keeps_the_server_between_queries():
    plane = Plane(servers=2)
    client = plane.add_client()
    client.data_received(query("BEGIN"))
    server = server_of(client)
    server.data_received(complete("BEGIN") + ready(b"T"))
    assert client.server is server and plane.releases == []
    client.data_received(query("SELECT 1"))
    assert server_of(client) is server, "a transaction must stay on its server"
    assert server.transport.written == query("BEGIN") + query("SELECT 1")


def test_parse_describe_flush_without_sync_keeps_the_link():
    plane = Plane()
    client = plane.add_client()
    client.data_received(parse("SELECT 1", "s1") + describe(b"S", "s1") + FLUSH)
    server = server_of(client)
    server.data_received(PARSE_COMPLETE + msg(b"t", b"\x00\x00") + NO_DATA)
    assert client.server is server and plane.releases == []
    assert client.transport.written == PARSE_COMPLETE + msg(b"t", b"\x00\x00") + NO_DATA


def test_pipeline_releases_only_after_the_last_ready_for_query():
    plane = Plane()
    client = plane.add_client()
    client.data_received(extended("SELECT 1") + extended("SELECT 2"))
    server = server_of(client)
    server.data_received(extended_reply(b"1"))
    assert client.server is server, "one ReadyForQuery is still owed"
    server.data_received(extended_reply(b"2"))
    assert client.server is None and plane.released(server) == 1


def test_a_flush_with_no_server_linked_takes_none():
    """Nothing is pending with no server linked: a Flush then asks for nothing, and taking a server
    for it would hold one that no ReadyForQuery ever releases."""
    plane = Plane(servers=1)
    a, b = plane.add_client(), plane.add_client()
    a.data_received(query("SELECT 1"))
    server = server_of(a)
    server.data_received(select_reply(b"1"))
    assert server.transport.take() == query("SELECT 1") and a.server is None
    a.data_received(FLUSH)
    a.data_received(FLUSH + FLUSH)
    assert a.server is None and a.state == ClientState.IDLE and not a.pending
    b.data_received(query("SELECT 2"))
    assert server_of(b) is server and server.transport.take() == query("SELECT 2")


def test_next_transaction_after_release_takes_a_server_again():
    plane = Plane()
    client = plane.add_client()
    for n in range(3):
        client.data_received(query(f"SELECT {n}"))
        server = server_of(client)
        server.data_received(select_reply(str(n).encode()))
        assert client.server is None
    assert len(plane.releases) == 3


def test_huge_data_row_streams_to_the_client_while_the_server_stays_linked():
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("SELECT big"))
    server = server_of(client)
    size = 4 << 20
    row = data_row(b"x" * size)
    server.data_received(row_description("big") + row[:1000])
    for pos in range(1000, len(row), 65536):
        server.data_received(row[pos:pos + 65536])
        assert client.server is server
    assert len(client.transport.written) == len(row_description("big")) + len(row)
    server.data_received(complete("SELECT 1") + ready())
    assert plane.released(server) == 1


# ---- COPY IN that the server ends -------------------------------------------------------------

def test_copy_in_the_server_rejects_ends_at_its_ready_for_query():
    """A bad row ends COPY FROM STDIN on the server: ErrorResponse, then ReadyForQuery 'I'.

    The client may never send CopyDone (libpq's PQputCopyData fails once the error arrived);
    the server is idle and must go back to the pool, and the client's next query must run.
    """
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("COPY t FROM STDIN"))
    server = server_of(client)
    server.data_received(copy_in_response())
    client.data_received(copy_data(b"not a number\n"))
    server.data_received(error("22P02", 'invalid input syntax for type integer: "not a number"') + ready(b"I"))
    assert plane.released(server) == 1, "the server is idle after ReadyForQuery 'I'"
    assert client.server is None
    client.data_received(query("SELECT 1"))
    server_of(client).data_received(select_reply(b"1"))
    assert plane.released(server) == 2


def test_copy_in_sent_in_one_write_releases_at_the_ready_for_query():
    """A client may send COPY's data and CopyDone before CopyInResponse arrives."""
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("COPY t FROM STDIN") + copy_data(b"1\n") + COPY_DONE)
    server = server_of(client)
    server.data_received(copy_in_response() + complete("COPY 1") + ready())
    assert plane.released(server) == 1
    assert client.server is None


# ---- parameters ------------------------------------------------------------------------------

def test_parameter_status_is_forwarded_and_updates_the_clients_reported_params():
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("SET application_name = 'batch'"))
    server = server_of(client)
    answer = complete("SET") + parameter_status("application_name", "batch") + ready()
    server.data_received(answer)
    assert client.transport.written == answer
    assert client.params.reported["application_name"] == "batch"
    assert server.params.reported["application_name"] == "batch"
    assert "application_name" not in client.params.statements


def test_set_followed_by_idle_ready_for_query_is_recorded():
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("SET search_path TO app"))
    server = server_of(client)
    server.data_received(complete("SET") + ready(b"I"))
    assert client.params.statements == {"search_path": "SET search_path TO app"}
    assert server.params.statements == {"search_path": "SET search_path TO app"}


@pytest.mark.parametrize("split", [False, True])
def test_set_that_failed_is_not_recorded(split):
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("SET search_path TO app"))
    server = server_of(client)
    answer = error("22023", "invalid value") + ready(b"I")
    if split:
        for i in range(len(answer)):
            server.data_received(answer[i:i + 1])
    else:
        server.data_received(answer)
    assert client.params.statements == {}
    assert server.params.statements == {}


def test_set_local_is_not_recorded():
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("SET LOCAL search_path TO app"))
    server_of(client).data_received(complete("SET") + ready())
    assert client.params.statements == {}


def test_a_set_inside_a_statement_list_is_recorded_with_its_own_text():
    """Issue 8: `SET statement_timeout=1; SELECT 1` used to leak to the next client untracked."""
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("SET search_path TO app; SELECT 1"))
    server_of(client).data_received(complete("SET") + select_reply(b"1"))
    assert client.params.statements == {"search_path": "SET search_path TO app"}


def test_set_inside_a_committed_transaction_is_recorded_and_a_rolled_back_one_is_not():
    plane = Plane()
    client = plane.add_client()
    for sql, tag, status in (("BEGIN", "BEGIN", b"T"), ("SET search_path TO app", "SET", b"T"),
                             ("COMMIT", "COMMIT", b"I"), ("BEGIN", "BEGIN", b"T"),
                             ("SET statement_timeout = 5", "SET", b"T"), ("ROLLBACK", "ROLLBACK", b"I")):
        client.data_received(query(sql))
        server_of(client).data_received(complete(tag) + ready(status))
    assert client.params.statements == {"search_path": "SET search_path TO app"}


def test_pipelined_set_after_a_failing_query_is_recorded():
    """Two Query messages in one write: each ReadyForQuery settles its own query's SET."""
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("SELECT 1/0") + query("SET search_path TO app"))
    server = server_of(client)
    server.data_received(error("22012", "division by zero") + ready() + complete("SET") + ready())
    assert client.params.statements == {"search_path": "SET search_path TO app"}


def test_pipelined_set_that_fails_after_a_good_query_is_not_recorded():
    """A SET the server refused must not be replayed on the next server (the replay would fail too)."""
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("SELECT 1") + query("SET statement_timeout = 'soon'"))
    server = server_of(client)
    server.data_received(select_reply(b"1") + error("22023", 'invalid value for parameter "statement_timeout"') + ready())
    assert client.params.statements == {}


def test_recorded_set_is_replayed_before_the_clients_query_on_another_server():
    plane = Plane(servers=2)
    first, second = plane.servers
    client = plane.add_client()
    client.data_received(query("SET search_path TO app"))
    assert client.server is second            # the idle list is LIFO
    second.data_received(complete("SET") + ready())
    # Another client takes `second`: this client's next transaction gets `first`.
    other = plane.add_client()
    other.data_received(query("BEGIN"))
    second.data_received(complete("BEGIN") + ready(b"T"))
    client.transport.take()
    client.data_received(query("SHOW search_path"))
    assert client.server is first
    assert first.transport.take() == query("SET search_path TO app"), "parameters first, the query waits"
    first.data_received(complete("SET") + ready())
    assert client.transport.written == b"", "replies to pgpool's own SET never reach the client"
    assert first.transport.take() == query("SHOW search_path")
    first.data_received(select_reply(b"app"))
    assert client.transport.written == select_reply(b"app")
    assert plane.released(first) == 1


@pytest.mark.parametrize("setting", [{"pool_mode": "session"}, {"server_reset_query_always": "1"}],
                         ids=["session-mode", "reset-always"])
def test_parameters_are_replayed_after_the_server_reset_query_wiped_them(setting):
    """After DISCARD ALL the server has none of its old session: the next client's own
    parameters must be sent again, even if they equal what the server had before the reset."""
    plane = Plane(**setting)
    server = plane.servers[0]
    statements = {"search_path": "SET search_path TO app"}
    first = plane.add_client(statements=statements)
    first.data_received(query("SELECT 1"))
    assert server.transport.take() == query("SET search_path TO app")
    server.data_received(complete("SET") + ready())
    assert server.transport.take() == query("SELECT 1")
    server.data_received(select_reply(b"1"))
    if setting.get("pool_mode") == "session":
        first.data_received(TERMINATE)      # session mode: the server is reset when the client leaves
    assert server.transport.take() == query("DISCARD ALL")
    server.data_received(complete("DISCARD ALL") + ready())
    assert server.state == ServerState.IDLE

    second = first if setting.get("server_reset_query_always") else plane.add_client(statements=statements)
    second.data_received(query("SHOW search_path"))
    assert server_of(second) is server
    assert server.transport.take() == query("SET search_path TO app"), "search_path was lost to DISCARD ALL"


# ---- backpressure ------------------------------------------------------------------------------

def test_client_write_pause_pauses_reading_the_server_and_resume_resumes_it():
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("SELECT big"))
    server = server_of(client)
    client.pause_writing()
    client.pause_writing()
    assert server.transport.calls == ["pause_reading"], "idempotent: one pause"
    client.resume_writing()
    client.resume_writing()
    assert server.transport.calls == ["pause_reading", "resume_reading"]


def test_server_write_pause_pauses_reading_the_client_and_resume_resumes_it():
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("BEGIN"))
    server = server_of(client)
    server.pause_writing()
    server.pause_writing()
    assert client.transport.calls == ["pause_reading"]
    server.resume_writing()
    assert client.transport.calls == ["pause_reading", "resume_reading"]


def test_unlink_resumes_both_sides():
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("SELECT 1"))
    server = server_of(client)
    client.pause_writing()
    server.pause_writing()
    assert server.transport.calls == ["pause_reading"] and client.transport.calls == ["pause_reading"]
    server.data_received(select_reply(b"1"))
    assert plane.released(server) == 1
    assert server.transport.calls[-1] == "resume_reading", "an idle server must be read (errors, EOF)"
    assert client.transport.calls[-1] == "resume_reading", "an unlinked client must be read"


def test_a_paused_client_pauses_the_next_server_it_gets():
    plane = Plane(servers=2)
    client = plane.add_client()
    client.pause_writing()
    client.data_received(query("SELECT 1"))
    server = server_of(client)
    assert server.transport.calls == ["pause_reading"]
    client.resume_writing()
    assert server.transport.calls == ["pause_reading", "resume_reading"]


def test_client_waiting_for_a_server_is_paused_past_the_pending_limit_and_resumed_when_linked():
    plane = Plane()
    plane.pool.paused = True         # no server is handed out: the client queues its bytes
    client = plane.add_client()
    chunk = copy_data(b"x" * 65536)
    client.data_received(query("COPY t FROM STDIN"))
    sent = 0
    while not client.transport.calls:
        client.data_received(chunk)
        sent += 1
    assert client.transport.calls == ["pause_reading"]
    assert sent * len(chunk) > PENDING_LIMIT - len(chunk)
    plane.pool.paused = False
    plane.pool.dispatch()
    server = server_of(client)
    assert server.transport.written == query("COPY t FROM STDIN") + chunk * sent
    assert client.transport.calls == ["pause_reading", "resume_reading"]


# ---- leaving and errors ------------------------------------------------------------------------

def test_terminate_is_not_forwarded_and_an_idle_linked_server_is_kept():
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("BEGIN"))
    server = server_of(client)
    server.data_received(complete("BEGIN") + ready(b"T"))
    server.transport.take()
    client.data_received(TERMINATE)
    assert client.closed and client.transport.closed
    assert TERMINATE not in server.transport.written
    assert not server.transport.closed, "the server is rolled back and reused, not closed"
    assert server.transport.take() == query("ROLLBACK")
    server.data_received(complete("ROLLBACK") + ready())
    assert server.state == ServerState.IDLE and server in plane.pool.idle


@pytest.mark.parametrize("split", [False, True])
def test_terminate_from_an_unlinked_client_touches_no_server(split):
    plane = Plane()
    client = plane.add_client()
    if split:
        client.data_received(TERMINATE[:2])
        client.data_received(TERMINATE[2:])
    else:
        client.data_received(TERMINATE)
    assert client.closed and client.transport.closed
    server = plane.servers[0]
    assert server.transport.written == b"" and server.state == ServerState.IDLE
    assert client not in plane.app.clients


def test_invalid_frontend_message_type_closes_only_that_client():
    plane = Plane(servers=2)
    bad, good = plane.add_client(), plane.add_client()
    for client in (bad, good):
        client.data_received(query("BEGIN"))
        server_of(client).data_received(complete("BEGIN") + ready(b"T"))
    bad_server, good_server = bad.server, good.server
    assert bad_server is not good_server
    bad.transport.take()

    bad.data_received(msg(b"z", b"junk"))

    answer = bad.transport.written
    assert answer[:1] == b"E"
    fields = parse_error_fields(answer[5:])
    assert fields["C"] == "08P01" and fields["S"] == "FATAL"
    assert "invalid frontend message type" in fields["M"]
    assert bad.closed and bad.transport.closed
    assert b"z\x00\x00\x00\x08junk" not in bad_server.transport.written
    assert good.server is good_server and not good.closed
    good.data_received(query("COMMIT"))
    good_server.data_received(complete("COMMIT") + ready())
    assert good.transport.written.endswith(complete("COMMIT") + ready())
    assert plane.released(good_server) == 1


def test_invalid_first_message_of_an_unlinked_client_gets_08P01_and_the_server_stays_usable():
    plane = Plane()
    client = plane.add_client()
    client.data_received(msg(b"\x01"))
    fields = parse_error_fields(client.transport.written[5:])
    assert fields["C"] == "08P01"
    assert client.closed
    server = plane.servers[0]
    assert server.state == ServerState.IDLE and server.transport.written == b""
    other = plane.add_client()
    other.data_received(query("SELECT 1"))
    assert server_of(other) is server


def test_client_leaving_mid_query_cancels_and_closes_its_server():
    plane = Plane()
    client = plane.add_client()
    client.data_received(query("SELECT pg_sleep(60)"))
    server = server_of(client)
    client.connection_lost(None)
    assert plane.app.cancels == [("127.0.0.1", 5432, server.backend_pid, server.backend_key)]
    assert server.transport.closed and server.state == ServerState.CLOSED
    assert server not in plane.pool.idle


def test_server_lost_mid_query_fails_its_client_only():
    plane = Plane(servers=2)
    one, two = plane.add_client(), plane.add_client()
    one.data_received(query("SELECT 1"))
    two.data_received(query("SELECT 2"))
    server_of(one).connection_lost(ConnectionResetError("reset by peer"))
    fields = parse_error_fields(one.transport.written[5:])
    assert fields["C"] == "08006" and one.closed
    assert not two.closed
    server_of(two).data_received(select_reply(b"2"))
    assert two.transport.written == select_reply(b"2")


def test_max_packet_size_from_a_client_is_refused_with_54000():
    plane = Plane(max_packet_size="1024")
    client = plane.add_client()
    client.data_received(query("SELECT '" + "x" * 2000 + "'"))
    fields = parse_error_fields(client.transport.written[5:])
    assert fields["C"] == "54000" and "max_packet_size" in fields["M"]
    assert client.closed
