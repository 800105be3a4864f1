"""pgpool.protocol.link without sockets: the conversation machine driven by bytes alone.

A `Conversation` is what client.py and server.py do around a Link: client bytes go through
a client-side scanner into `on_client_message`, server bytes through the Link's own
scanner into `on_server_message`. Every test reads the real release rule
(`Link.releasable`), and the split tests check that where TCP cuts the streams changes
nothing: not the bytes forwarded, not the state, not the moment the server is released.
"""

from __future__ import annotations

import re
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgpool.prepared import ClientStatements, ServerStatements, StatementRegistry
from pgpool.protocol.errors import PROTOCOL_VIOLATION, ProtocolError
from pgpool.protocol.framing import MessageScanner
from pgpool.protocol.link import (
    BUSY, COPY_IN, EXTENDED, IDLE, SKIPPING, WATCH_ALL, WATCH_CORE, WATCH_CORE_TAGS, WATCH_REPLIES, Link,
)
from tests.protocol.fakes import (
    BIND_COMPLETE, COPY_DONE, FLUSH, PARSE_COMPLETE, SYNC, bind, complete, copy_data, copy_in_response, data_row,
    describe, error, execute, msg, notice, parameter_status, parse, query, ready, row_description, select_reply,
    split_messages,
)

WATCH_CLIENT = bytes(0 if t == ord("d") else 1 for t in range(256))


class Conversation:
    """client.py / server.py reduced to what they do with bytes around a Link."""

    def __init__(self, tracked: bool = False):
        self.server_scanner = MessageScanner(WATCH_CORE, self._server_message, max_message=1 << 20, peer="server")
        if tracked:
            self.link: Link = ServerStatements(StatementRegistry(), 10, scanner=self.server_scanner)
            self.link.link(ClientStatements())
        else:
            self.link = Link(self.server_scanner)
        self.client_scanner = MessageScanner(WATCH_CLIENT, self.link.on_client_message, max_message=1 << 20)
        self.to_server = b""
        self.to_client = b""
        self.released_after: list[int] = []     # server bytes fed when the link first became releasable
        self._fed = 0

    def _server_message(self, msg_type: int, buf: bytes | None, start: int, end: int) -> bytes | None:
        return self.link.on_server_message(msg_type, buf, start, end)

    def client_sends(self, data: bytes) -> None:
        self.to_server += self.client_scanner.feed(data)
        self.to_client += self.link.take_client_output()
        self.link.update_watch()

    def server_sends(self, data: bytes) -> None:
        self.to_client += self.server_scanner.feed(data)
        self._fed += len(data)
        if self.link.releasable and not self.released_after:
            self.released_after.append(self._fed)


def test_a_simple_query_is_owed_one_ready_for_query():
    c = Conversation()
    assert c.link.releasable and c.link.state == IDLE
    c.client_sends(query("SELECT 1"))
    assert c.to_server == query("SELECT 1")
    assert c.link.state == BUSY and c.link.owed_ready() == 1 and not c.link.releasable
    reply = select_reply(data_row(b"1"))
    c.server_sends(reply[:-6])
    assert not c.link.releasable, "released before ReadyForQuery"
    c.server_sends(reply[-6:])
    assert c.to_client == reply and c.link.releasable


def test_pipelined_queries_release_only_after_the_last_answer():
    c = Conversation()
    c.client_sends(query("SELECT 1") + query("SELECT 2"))
    assert c.link.owed_ready() == 2
    c.server_sends(select_reply(data_row(b"1")))
    assert not c.link.releasable
    c.server_sends(select_reply(data_row(b"2")))
    assert c.link.releasable


def test_a_transaction_keeps_the_server_until_it_ends():
    c = Conversation()
    c.client_sends(query("BEGIN"))
    c.server_sends(complete("BEGIN") + ready(b"T"))
    assert c.link.settled and not c.link.releasable, "in a transaction block"
    c.client_sends(query("COMMIT"))
    c.server_sends(complete("COMMIT") + ready(b"I"))
    assert c.link.releasable


@pytest.mark.parametrize("tracked", [False, True])
def test_extended_messages_keep_the_server_until_sync(tracked):
    c = Conversation(tracked)
    c.client_sends(parse("SELECT 1") + bind() + execute() + FLUSH)
    assert c.link.state == EXTENDED
    c.server_sends(PARSE_COMPLETE + BIND_COMPLETE + data_row(b"1") + complete("SELECT 1"))
    assert c.link.idle and not c.link.settled and not c.link.releasable, "no Sync yet: the segment is open"
    c.client_sends(SYNC)
    c.server_sends(ready())
    assert c.link.releasable


def test_a_flush_alone_asks_for_nothing_but_a_flush_with_a_body_owes_a_sync():
    c = Conversation()
    c.client_sends(FLUSH)
    assert c.link.releasable
    c.client_sends(msg(b"H", b"junk"))
    assert c.link.state == EXTENDED, "Postgres fails it and skips to the next Sync"
    c.client_sends(SYNC)
    c.server_sends(error("08P01", "invalid message format") + ready())
    assert c.link.releasable


@pytest.mark.parametrize("tracked", [False, True])
def test_an_error_skips_to_sync_and_a_query_sent_meanwhile_is_not_owed(tracked):
    """Postgres discards every message up to Sync after an extended-protocol error, simple Queries too."""
    c = Conversation(tracked)
    c.client_sends(parse("SELEC 1") + bind() + execute())
    c.server_sends(error())
    assert c.link.state == SKIPPING
    c.client_sends(query("SELECT 2"))
    assert c.link.owed_ready() == 0, "the server discards it: no ReadyForQuery will come for it"
    c.client_sends(SYNC)
    c.server_sends(ready())
    assert c.link.releasable


def test_an_error_inside_a_pipeline_drops_the_requests_up_to_sync():
    c = Conversation()
    c.client_sends(parse("SELEC 1") + bind() + describe(b"P") + execute() + SYNC + query("SELECT 2"))
    c.server_sends(error() + ready())
    assert c.link.owed_ready() == 1 and not c.link.releasable
    c.server_sends(select_reply(data_row(b"2")))
    assert c.link.releasable


@pytest.mark.parametrize("tracked", [False, True])
def test_copy_in_ignores_syncs_sent_before_copy_done(tracked):
    """psycopg sends Parse/Bind/Execute/Sync; the server starts COPY at Execute and ignores that Sync."""
    c = Conversation(tracked)
    c.client_sends(parse("COPY t FROM STDIN") + bind() + execute() + SYNC)
    c.server_sends(PARSE_COMPLETE + BIND_COMPLETE + copy_in_response())
    assert c.link.state == COPY_IN and c.link.owed_ready() == 0
    c.client_sends(copy_data(b"1\n") + COPY_DONE + SYNC)
    assert c.link.owed_ready() == 1
    c.server_sends(complete("COPY 1") + ready())
    assert c.link.releasable


def test_copy_done_sent_before_the_server_started_copy():
    """Everything in one write: CopyDone reaches pgpool before CopyInResponse comes back."""
    c = Conversation()
    c.client_sends(query("COPY t FROM STDIN") + copy_data(b"1\n") + COPY_DONE)
    c.server_sends(copy_in_response())
    assert c.link.state == BUSY, "the CopyDone already went: not in COPY any more"
    c.server_sends(complete("COPY 1") + ready())
    assert c.link.releasable


def test_a_function_call_is_owed_a_ready_for_query():
    c = Conversation()
    c.client_sends(msg(b"F", b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"))
    assert c.link.owed_ready() == 1
    c.server_sends(msg(b"V", b"\xff\xff\xff\xff") + ready())
    assert c.link.releasable


def test_pgpool_own_query_is_swallowed_and_answers_its_caller():
    c = Conversation()
    answers = []
    c.to_server += c.link.inject(query("SELECT current_setting('work_mem')"), answers.append)
    assert c.server_scanner.watch is WATCH_ALL and not c.link.client_busy
    c.server_sends(row_description("w") + data_row(b"4MB") + notice() + parameter_status("TimeZone", "UTC"))
    c.server_sends(complete("SELECT 1") + ready())
    assert c.to_client == b"", "none of pgpool's own replies reach a client"
    assert answers == [None] and c.link.rows == ["4MB"]
    assert c.server_scanner.watch is WATCH_CORE and c.link.releasable


def test_pgpool_own_query_failing_gives_its_error():
    c = Conversation()
    answers = []
    c.link.inject(query("SELECT nope"), answers.append)
    c.server_sends(error("42703", 'column "nope" does not exist') + ready())
    assert answers[0].sqlstate == "42703" and c.to_client == b""


def test_a_client_query_behind_pgpool_own_query_is_forwarded_after_it():
    c = Conversation()
    answers = []
    c.link.inject(query("SET work_mem = '8MB'"), answers.append)
    c.client_sends(query("SELECT 1"))
    assert c.link.client_busy
    c.server_sends(complete("SET") + ready())
    assert answers == [None] and c.to_client == b""
    c.server_sends(select_reply(data_row(b"1")))
    assert split_messages(c.to_client)[-1] == ready() and c.link.releasable


def test_losing_the_server_ends_pgpool_own_queries_with_the_reason():
    c = Conversation()
    answers = []
    c.link.inject(query("SELECT 1"), answers.append)
    c.link.fail_injected("server closed the connection")
    assert answers[0].sqlstate == "08006" and "closed" in answers[0].message
    assert c.link.idle and c.link.injected == 0


def test_commandcomplete_tags_are_watched_only_when_asked():
    c = Conversation(tracked=True)
    c.link.watch_tags = True
    c.link.update_watch()
    assert c.server_scanner.watch is WATCH_CORE_TAGS
    c.client_sends(parse("SELECT 1"))
    assert c.server_scanner.watch is WATCH_REPLIES, "an open segment: its replies are told apart only if seen"
    c.client_sends(SYNC)
    assert c.server_scanner.watch is WATCH_CORE_TAGS, "plain forwards up to a Sync need no more than the core types"
    c.client_sends(parse("SELECT 1", "s1") + SYNC)
    assert c.server_scanner.watch is WATCH_REPLIES, "a named statement's ParseComplete must be seen to commit it"


@pytest.mark.parametrize("tracked", [False, True])
def test_plain_extended_forwards_are_followed_with_the_core_watch(tracked):
    c = Conversation(tracked)
    c.client_sends(parse("SELECT 1") + bind() + execute() + SYNC + parse("SELEC 1") + bind() + execute() + SYNC)
    assert c.server_scanner.watch is WATCH_CORE, "unnamed statements: nothing to commit, nothing to rewrite"
    reply = PARSE_COMPLETE + BIND_COMPLETE + data_row(b"1") + complete("SELECT 1") + ready() + error() + ready()
    c.server_sends(reply)
    assert c.to_client == reply and c.link.releasable and c.link.state == IDLE


def test_replies_hidden_by_the_narrow_watch_are_caught_up_when_a_named_statement_widens_it():
    c = Conversation(tracked=True)
    c.client_sends(parse("SELECT 1") + bind() + execute() + FLUSH)
    c.server_sends(PARSE_COMPLETE + BIND_COMPLETE)        # seen by nobody: the watch is narrow
    c.client_sends(parse("SELECT 2", "s1") + SYNC)
    assert c.server_scanner.watch is WATCH_REPLIES
    c.server_sends(data_row(b"1") + complete("SELECT 1") + PARSE_COMPLETE + ready())
    assert c.link.releasable and c.link.owed_ready() == 0
    c.to_client = b""
    c.client_sends(bind("", "s1") + execute() + SYNC)
    assert b"PGPOOL_" in c.to_server.rsplit(b"B", 1)[1], "s1's ParseComplete was seen: the name is known"
    c.server_sends(BIND_COMPLETE + data_row(b"2") + complete("SELECT 1") + ready())
    assert c.link.releasable


def test_an_invalid_frontend_message_type_is_a_protocol_violation():
    c = Conversation()
    with pytest.raises(ProtocolError) as caught:
        c.client_sends(msg(b"Y", b""))
    assert caught.value.sqlstate == PROTOCOL_VIOLATION and "invalid frontend message type" in caught.value.message


def test_a_reply_to_nothing_means_pgpool_lost_track():
    c = Conversation()
    c.link.watch_tags = True
    c.link.update_watch()
    with pytest.raises(ProtocolError) as caught:
        c.server_sends(ready())
    assert "lost track of the reply order" in caught.value.message


def test_a_malformed_ready_for_query_is_refused():
    c = Conversation()
    c.client_sends(query("SELECT 1"))
    with pytest.raises(ProtocolError) as caught:
        c.server_sends(msg(b"Z", b"II"))
    assert "malformed ReadyForQuery" in caught.value.message


def test_an_asynchronous_error_or_parameter_status_while_idle_passes_through():
    c = Conversation()
    fatal = error("57P01", "terminating connection due to administrator command", "FATAL")
    c.server_sends(parameter_status("default_transaction_read_only", "on") + fatal)
    assert c.to_client == parameter_status("default_transaction_read_only", "on") + fatal


def test_unlink_reports_a_dirty_link_and_resets_it():
    c = Conversation()
    c.client_sends(query("SELECT pg_sleep(10)"))
    assert not c.link.unlink(), "released with a query running: the server's state is unknown"
    assert c.link.releasable


# ---- where TCP cuts the streams changes nothing ----------------------------------------------------

CONVERSATIONS = [
    # (client bytes, server bytes): whole conversations ending releasable
    (query("SELECT 1") + query("SELECT 2"), select_reply(data_row(b"1")) + select_reply(data_row(b"2"))),
    (parse("SELECT 1", "s") + bind("", "s") + describe(b"P") + execute() + SYNC,
     PARSE_COMPLETE + BIND_COMPLETE + row_description("c") + data_row(b"1") + complete("SELECT 1") + ready()),
    (parse("SELEC 1") + bind() + execute() + SYNC + query("SELECT 2"),
     error() + ready() + select_reply(data_row(b"2"))),
    (parse("COPY t FROM STDIN") + bind() + execute() + SYNC + copy_data(b"1\n") + COPY_DONE + SYNC,
     PARSE_COMPLETE + BIND_COMPLETE + copy_in_response() + complete("COPY 1") + ready()),
    (query("BEGIN") + query("SET LOCAL work_mem = '1MB'") + query("COMMIT"),
     complete("BEGIN") + ready(b"T") + complete("SET") + ready(b"T") + complete("COMMIT") + ready()),
]


def run_split(tracked: bool, client: bytes, server: bytes, client_cuts: list[int], server_cuts: list[int]):
    c = Conversation(tracked)
    for piece in cut(client, client_cuts):
        c.client_sends(piece)
    for piece in cut(server, server_cuts):
        c.server_sends(piece)
    # Server-side statement names come from a process-wide counter: only their shape is compared
    # (per message, without the length, which changes with the counter's number of digits).
    to_server = [(msg[:1], re.sub(rb"PGPOOL_\d+", b"PGPOOL_n", msg[5:])) for msg in split_messages(c.to_server)]
    return to_server, c.to_client, c.link.state, c.link.releasable, c.released_after


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({p for p in cuts if 0 < p < len(data)})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


@pytest.mark.parametrize("tracked", [False, True])
@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_every_single_cut_of_the_server_stream_gives_the_same_conversation(tracked, index):
    client, server = CONVERSATIONS[index]
    whole = run_split(tracked, client, server, [], [])
    assert whole[3], "each scripted conversation ends releasable"
    for offset in range(1, len(server)):
        assert run_split(tracked, client, server, [], [offset])[:4] == whole[:4], f"server stream cut at {offset}"
    for offset in range(1, len(client)):
        assert run_split(tracked, client, server, [offset], [])[:4] == whole[:4], f"client stream cut at {offset}"


@settings(max_examples=60, deadline=None)
@given(index=st.integers(min_value=0, max_value=len(CONVERSATIONS) - 1), tracked=st.booleans(),
       client_cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=12),
       server_cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=12))
def test_random_chunks_give_the_same_conversation(index, tracked, client_cuts, server_cuts):
    client, server = CONVERSATIONS[index]
    assert run_split(tracked, client, server, client_cuts, server_cuts)[:4] == \
        run_split(tracked, client, server, [], [])[:4]


class WideLink(ServerStatements):
    """The reference for the narrowed watch: every reply type is looked at, always."""

    def update_watch(self) -> None:
        ServerStatements.update_watch(self)
        if self.scanner.watch is not WATCH_ALL:
            self.scanner.watch = WATCH_REPLIES


# (client bytes, server bytes) of whole exchanges; `n` is a fresh statement name (and text: a text
# the server already has would be answered by pgpool, and the scripted reply would be wrong).
SEGMENTS: list[Callable[[str], tuple[bytes, bytes]]] = [
    lambda n: (query("SELECT 1"), select_reply(data_row(b"1"))),
    lambda n: (query("SELEC 1"), error() + ready()),
    lambda n: (parse("SELECT 1") + bind() + execute() + SYNC,
     PARSE_COMPLETE + BIND_COMPLETE + data_row(b"1") + complete("SELECT 1") + ready()),
    lambda n: (parse("SELEC 1") + bind() + execute() + SYNC, error() + ready()),
    lambda n: (parse("SELECT 1") + bind() + describe(b"P") + execute() + FLUSH,
     PARSE_COMPLETE + BIND_COMPLETE + row_description("c") + data_row(b"1") + complete("SELECT 1")),
    lambda n: (SYNC, ready()),
    lambda n: (parse(f"SELECT '{n}'", n) + bind("", n) + execute() + SYNC,
     PARSE_COMPLETE + BIND_COMPLETE + data_row(b"1") + complete("SELECT 1") + ready()),
    lambda n: (parse(f"SELECT '{n}'", n) + describe(b"S", n) + SYNC,
     PARSE_COMPLETE + msg(b"t", b"\x00\x00") + row_description("c") + ready()),
    lambda n: (parse(f"SELEC '{n}'", n) + bind("", n) + execute() + SYNC, error() + ready()),
    lambda n: (parse("COPY t FROM STDIN") + bind() + execute() + SYNC + copy_data(b"1\n") + COPY_DONE + SYNC,
               PARSE_COMPLETE + BIND_COMPLETE + copy_in_response() + complete("COPY 1") + ready()),
    lambda n: (query("BEGIN"), complete("BEGIN") + ready(b"T")),
    lambda n: (query("COMMIT"), complete("COMMIT") + ready()),
]


def run_segments(link_class: type, steps: list[tuple[int, bool]]):
    """Each step: the client sends a segment, then (or not yet) the server answers all that is owed."""
    c = Conversation(tracked=True)
    c.link = link_class(StatementRegistry(), 10, scanner=c.server_scanner)
    c.link.link(ClientStatements())
    c.client_scanner = MessageScanner(WATCH_CLIENT, c.link.on_client_message, max_message=1 << 20)
    owed = b""
    seen = []
    for number, (index, answer) in enumerate(steps):
        client, server = SEGMENTS[index](f"s{number}")
        c.client_sends(client)
        owed += server
        if answer:
            c.server_sends(owed)
            owed = b""
        seen.append((c.link.releasable, c.link.owed_ready(), c.link.tx_status))
    c.server_sends(owed)
    to_server = [(msg[:1], re.sub(rb"PGPOOL_\d+", b"PGPOOL_n", msg[5:])) for msg in split_messages(c.to_server)]
    return to_server, c.to_client, seen, c.link.state, c.link.releasable


@settings(max_examples=500, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(min_value=0, max_value=len(SEGMENTS) - 1), st.booleans()),
                      min_size=1, max_size=12))
def test_the_narrowed_watch_changes_nothing_a_client_or_the_pool_sees(steps):
    """Following plain forwards with the core types only gives the same bytes, states and release
    points as looking at every reply, whatever mix of plain, named and simple requests is in flight."""
    assert run_segments(ServerStatements, steps) == run_segments(WideLink, steps)


def test_the_release_point_is_the_last_ready_for_query_not_earlier():
    client, server = CONVERSATIONS[0]
    for offset in range(1, len(server)):
        released = run_split(False, client, server, [], [offset])[4]
        assert released == [len(server)], f"cut at {offset}: released after {released} of {len(server)} bytes"


def test_a_parse_answered_locally_behind_pgpool_own_query_comes_right_after_it():
    """A client's Parse of a statement the server has, sent while pgpool's audit runs: its made-up
    ParseComplete is due when the audit ends, before the replies to what the client sent next."""
    c = Conversation(tracked=True)
    c.client_sends(parse("SELECT 1", "s1") + SYNC)
    c.server_sends(PARSE_COMPLETE + ready())
    c.to_client = b""
    audits = []
    c.link.inject(query("SELECT 'audit'"), audits.append)
    c.client_sends(parse("SELECT 1", "s2") + describe(b"S", "s2") + SYNC)
    c.server_sends(row_description("a") + data_row(b"audit") + complete("SELECT 1") + ready())
    assert audits == [None] and c.to_client == PARSE_COMPLETE
    c.server_sends(msg(b"t", b"\x00\x00") + row_description("c") + ready())
    assert split_messages(c.to_client) == [PARSE_COMPLETE, msg(b"t", b"\x00\x00"), row_description("c"), ready()]
    assert c.link.releasable
