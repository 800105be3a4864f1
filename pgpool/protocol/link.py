"""The conversation between a server connection and the client holding it: what is owed, what goes where.

Owns: one queue of the requests sent to the server and not yet answered, in reply order
(as PgBouncer's outstanding-request list), each with what its reply becomes: forwarded
to the client, swallowed (pgpool's own queries, parameter replays, checks, resets; a
tracker's own Parse / Close) or made up (a ParseComplete for a Parse the server already
has). From the queue follow the conversation's states, the transaction status, COPY IN,
error-skip-to-Sync, and the one release rule (`releasable`). Also which server message
types must be looked at now (the server scanner's watch table). Sans-IO: fed whole
messages (from the framing scanners), returns the bytes to send; never knows pools,
sockets or asyncio. Named prepared statements are a subclass's business (prepared.py's
ServerStatements rewrites names and adds its own entries to this queue).

States, derived from the queue (see `state`):

    IDLE        nothing owed, no extended message since the last Sync, not in COPY
    BUSY        replies owed (a Query, a Sync, pgpool's own query)
    EXTENDED    extended-protocol messages sent since the last Sync (a Sync is still to come)
    COPY_IN     the server is in COPY FROM STDIN: it ignores Sync until CopyDone / CopyFail
    SKIPPING    an extended-protocol request failed: the server discards messages up to Sync
and the transaction status of the last ReadyForQuery (idle, in a block, failed).

Transitions are data: `_ENDS[kind]` are the reply types that end a request of that kind,
`_INSIDE[kind]` the watched types that may come inside its reply without ending it; an
ErrorResponse ends an extended-protocol request and the server then skips to Sync, so
every request up to the next Sync ends with it. Anything else the server sends while a
request is owed means pgpool lost track: a protocol error that closes that server only.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional

from .constants import (
    B_BIND_COMPLETE, B_CLOSE_COMPLETE, B_COMMAND_COMPLETE, B_COPY_IN_RESPONSE, B_DATA_ROW, B_EMPTY_QUERY_RESPONSE,
    B_ERROR_RESPONSE, B_NO_DATA, B_PARAMETER_STATUS, B_PARSE_COMPLETE, B_PORTAL_SUSPENDED, B_READY_FOR_QUERY,
    B_ROW_DESCRIPTION, F_BIND, F_CLOSE, F_COPY_DATA, F_COPY_DONE, F_COPY_FAIL, F_DESCRIBE, F_EXECUTE, F_FLUSH,
    F_FUNCTION_CALL, F_PARSE, F_QUERY, F_SYNC, F_TERMINATE, TX_IDLE,
)
from .errors import CONNECTION_FAILURE, PROGRAM_LIMIT_EXCEEDED, PROTOCOL_VIOLATION, ProtocolError, parse_error_fields
from .framing import MessageScanner, watch_table
from .messages import first_column

# Request kinds in the queue, and the reply types that end each one. ErrorResponse also
# ends the extended-protocol kinds; Query, FunctionCall and Sync end only at 'Z'.
# K_OWN is pgpool's own simple query: every reply to it is read and swallowed (_on_injected_reply).
K_PARSE, K_BIND, K_DESCRIBE, K_EXECUTE, K_CLOSE, K_SYNC, K_QUERY, K_MARK, K_OWN = range(9)
_ENDS = (b"1", b"2", b"Tn", b"CIs", b"3", b"Z", b"Z", b"", b"Z")
_EXTENDED = (True, True, True, True, True, False, False, False, False)
# Watched types that may appear inside a reply without ending it; anything else is a lost track.
_INSIDE = (b"", b"", b"", b"G", b"", b"E", b"TCIEG", b"", b"")
_KIND_NAMES = ("Parse", "Bind", "Describe", "Execute", "Close", "Sync", "Query", "CopyDone", "pgpool's own query")

# What the reply to a queued request becomes.
A_FORWARD, A_SWALLOW, A_SYNTH = range(3)

# Queue entries are (kind, action, info); the common ones are shared constants, not per-message
# objects. info is None, pgpool's own query (`Injected`, kind K_OWN), a made-up
# reply (A_SYNTH: (reply bytes, ...)), or what a subclass needs to commit or undo the request.
_PARSE_FWD = (K_PARSE, A_FORWARD, None)
_BIND_FWD = (K_BIND, A_FORWARD, None)
_DESCRIBE_FWD = (K_DESCRIBE, A_FORWARD, None)
_EXECUTE_FWD = (K_EXECUTE, A_FORWARD, None)
_CLOSE_FWD = (K_CLOSE, A_FORWARD, None)
_SYNC_FWD = (K_SYNC, A_FORWARD, None)
_QUERY_FWD = (K_QUERY, A_FORWARD, None)
# A client's CopyDone / CopyFail sent before the server said CopyInResponse: Syncs before it are ignored.
_MARK = (K_MARK, A_SYNTH, (b"", None, None, 0))

# Client message type -> the entry it queues (None: queues nothing). The rest are refused.
_CLIENT_ENTRY: dict[int, Optional[tuple]] = {
    F_PARSE: _PARSE_FWD, F_BIND: _BIND_FWD, F_DESCRIBE: _DESCRIBE_FWD, F_EXECUTE: _EXECUTE_FWD,
    F_CLOSE: _CLOSE_FWD, F_SYNC: _SYNC_FWD, F_QUERY: _QUERY_FWD, F_FUNCTION_CALL: _QUERY_FWD,
    F_FLUSH: None, F_COPY_DATA: None, F_COPY_DONE: None, F_COPY_FAIL: None, F_TERMINATE: None,
}
FRONTEND_TYPES = watch_table(*_CLIENT_ENTRY)
_ENTRY_BY_TYPE = tuple(_CLIENT_ENTRY.get(t) for t in range(256))
# Messages that leave state on the server until a Sync. Flush is not one: alone it asks for nothing.
_OPENS_EXTENDED = watch_table(F_PARSE, F_BIND, F_DESCRIBE, F_EXECUTE, F_CLOSE)

# Server message types to look at. Always: what drives pooling. While only simple queries and
# Syncs are owed, nothing else is needed; otherwise every type that ends or may sit inside a reply.
WATCH_CORE = watch_table(B_READY_FOR_QUERY, B_ERROR_RESPONSE, B_PARAMETER_STATUS, B_COPY_IN_RESPONSE)
REPLY_TYPES = (B_PARSE_COMPLETE, B_BIND_COMPLETE, B_CLOSE_COMPLETE, B_NO_DATA, B_ROW_DESCRIPTION,
               B_COMMAND_COMPLETE, B_EMPTY_QUERY_RESPONSE, B_PORTAL_SUSPENDED, B_ERROR_RESPONSE,
               B_READY_FOR_QUERY, B_COPY_IN_RESPONSE)
WATCH_REPLIES = watch_table(*REPLY_TYPES, B_PARAMETER_STATUS)
# CommandComplete tags matter while a SET inside a transaction waits for COMMIT.
WATCH_CORE_TAGS = watch_table(B_READY_FOR_QUERY, B_ERROR_RESPONSE, B_PARAMETER_STATUS, B_COPY_IN_RESPONSE,
                              B_COMMAND_COMPLETE)
# pgpool's own query: every reply is read (and swallowed).
WATCH_ALL = bytes([1]) * 256

IDLE, BUSY, EXTENDED, COPY_IN, SKIPPING = "idle", "busy", "extended", "copy_in", "skipping"

Done = Callable[[Optional[ProtocolError]], None]


class Injected:
    """pgpool's own simple query on the server: its replies never reach a client."""
    __slots__ = ("done", "error", "rows")

    def __init__(self, done: Done):
        self.done = done
        self.error: ProtocolError | None = None
        self.rows: list[str | None] = []     # first column of each DataRow


class Link:
    """One server connection's conversation, with whichever client holds it (or none)."""
    __slots__ = ("scanner", "_queue", "_skipping", "_copy_in", "tx_status", "_head_failed", "_to_client",
                 "open_extended", "injected", "rows", "watch_tags")

    # A subclass that rewrites statement names reads Parse / Bind / Describe / Close whole.
    rewrites_names = False

    def __init__(self, scanner: MessageScanner | None = None):
        self.scanner = scanner              # the server side's scanner: its watch table follows the queue
        self._queue: deque[tuple] = deque()
        self._skipping = False              # the server had an error and discards messages until Sync
        self._copy_in = False               # the server is in COPY IN: it ignores Sync until CopyDone/CopyFail
        self.tx_status = TX_IDLE            # status byte of the last ReadyForQuery
        self._head_failed = False           # an ErrorResponse came inside the Query / Sync at the queue head
        self._to_client: list[bytes] = []   # made-up replies due now (nothing owed before them)
        self.open_extended = False          # extended-protocol messages sent since the last Sync
        self.injected = 0                   # pgpool's own queries in the queue
        self.rows: list[str | None] = []    # first column of each DataRow of pgpool's last own query
        self.watch_tags = False             # CommandComplete tags wanted (a SET in a transaction waits)

    # ---- states and the release rule -----------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing owed by the server."""
        return not self._queue and not self._skipping

    @property
    def settled(self) -> bool:
        """Nothing owed, nothing half sent: no open extended-protocol segment, no COPY."""
        return not self._queue and not self._skipping and not self.open_extended and not self._copy_in

    @property
    def releasable(self) -> bool:
        """The one release rule: the server may change hands (ReadyForQuery 'I', nothing outstanding)."""
        return self.tx_status == TX_IDLE and self.settled

    @property
    def client_busy(self) -> bool:
        """A request of the client's is outstanding (pgpool's own queries do not count)."""
        return len(self._queue) > self.injected or self._skipping or self.open_extended or self._copy_in

    @property
    def state(self) -> str:
        if self._skipping:
            return SKIPPING
        if self._copy_in:
            return COPY_IN
        if self.open_extended:
            return EXTENDED
        return BUSY if self._queue else IDLE

    def owed_ready(self) -> int:
        """ReadyForQuery still owed to the client: its Queries, FunctionCalls and Syncs in the queue."""
        count = 0
        for entry in self._queue:
            if entry[0] == K_QUERY or entry[0] == K_SYNC:   # pgpool's own queries are K_OWN
                count += 1
        return count

    def head_is_injected(self) -> bool:
        queue = self._queue
        return bool(queue) and queue[0][0] == K_OWN

    # ---- linking -------------------------------------------------------------------------------

    def link(self) -> None:
        """A client got this server (idle: ReadyForQuery 'I', nothing outstanding)."""
        self._reset()
        self.update_watch()

    def unlink(self) -> bool:
        """The link ended. False when client requests were still outstanding: the server's state is unknown."""
        clean = self.settled
        if not clean:
            self._reset()
        self._to_client.clear()
        self.watch_tags = False
        self.update_watch()
        return clean

    def _reset(self) -> None:
        if self.injected:
            return   # pgpool's own query is on its way: its replies still come in order
        self._queue.clear()
        self._to_client.clear()
        self._skipping = False
        self._copy_in = False
        self._head_failed = False
        self.open_extended = False

    def update_watch(self) -> None:
        """Point the server scanner at the message types that matter now (on the hot path: one call)."""
        scanner = self.scanner
        if scanner is None:
            return
        queue = self._queue
        if self.injected and queue and queue[0][0] == K_OWN:
            scanner.watch = WATCH_ALL      # pgpool's own query at the head: every reply is read
            return
        watch = WATCH_CORE_TAGS if self.watch_tags else WATCH_CORE
        if self._skipping or self._copy_in or self.open_extended:
            # Only a Sync already sent bounds what the narrow watch may hide: its ReadyForQuery
            # shows that every request before it is answered (an open segment's error, or a named
            # statement queued behind it, could not be told apart from the hidden replies).
            watch = WATCH_REPLIES
        else:
            # Requests forwarded as they are, with nothing to commit or undo, need only the core types:
            # ReadyForQuery ends each segment, and the replies it hides are caught up (_catch_up).
            # Not for a Query sent inside an open segment: its error would look like the segment's.
            in_segment = False
            for entry in queue:
                kind = entry[0]
                if entry[1] != A_FORWARD or entry[2] is not None or (in_segment and kind == K_QUERY):
                    watch = WATCH_REPLIES
                    break
                if kind == K_SYNC:
                    in_segment = False
                elif _EXTENDED[kind]:
                    in_segment = True
        scanner.watch = watch

    def take_client_output(self) -> bytes:
        """Replies made up while handling client messages that are due now (nothing was owed before them)."""
        if not self._to_client:
            return b""
        out = b"".join(self._to_client)
        self._to_client.clear()
        return out

    # ---- pgpool's own queries ------------------------------------------------------------------

    def inject(self, message: bytes, done: Done) -> bytes:
        """Queue pgpool's own simple Query (`message`, to be sent now); `done(error)` at its ReadyForQuery."""
        self._queue.append((K_OWN, A_SWALLOW, Injected(done)))
        self.injected += 1
        self.update_watch()
        return message

    def fail_injected(self, reason: str) -> None:
        """The server is gone: pgpool's own queries end with this error."""
        entries = [entry for entry in self._queue if entry[0] == K_OWN]
        self._queue.clear()
        self.injected = 0
        for entry in entries:
            entry[2].done(ProtocolError(CONNECTION_FAILURE, reason))

    def _end_injected(self, entry: tuple, error: ProtocolError | None = None) -> None:
        """pgpool's own query left the queue (its count already lowered): answer its caller."""
        own: Injected = entry[2]
        self.rows = own.rows
        own.done(error if error is not None else own.error)

    # ---- client -> server ----------------------------------------------------------------------

    def on_client_message(self, msg_type: int, buf: bytes | None, start: int, end: int) -> bytes | None:
        """A whole client message (body is buf[start:end]); returns None (send as is), b"" or replacement bytes."""
        if not FRONTEND_TYPES[msg_type]:
            raise ProtocolError(PROTOCOL_VIOLATION, f"invalid frontend message type {msg_type} ({chr(msg_type)!r})")
        if msg_type == F_SYNC:
            self.open_extended = False
        elif _OPENS_EXTENDED[msg_type]:
            self.open_extended = True
        elif msg_type == F_FLUSH and end != start:
            # Postgres fails a Flush with a body and skips to the next Sync: a reply is owed.
            self.open_extended = True
        if self._skipping:
            # The server discards everything but Sync after an error, as Postgres does: no reply owed.
            if msg_type != F_SYNC:
                return None
            self._skipping = False
            self._queue.append(_SYNC_FWD)
            return None
        if msg_type == F_COPY_DONE or msg_type == F_COPY_FAIL:
            if self._copy_in:
                self._copy_in = False
            elif self._queue:
                self._queue.append(_MARK)
            return None
        if msg_type == F_SYNC and self._copy_in:
            return None     # ignored by the server in COPY IN
        if buf is None and self.rewrites_names and msg_type in (F_PARSE, F_BIND, F_DESCRIBE, F_CLOSE):
            # Announced unread by the scanner (larger than its max_inspect): names cannot be rewritten.
            raise ProtocolError(PROGRAM_LIMIT_EXCEEDED,
                                f"{chr(msg_type)!r} message of {end - start} bytes is too large to track "
                                f"prepared statements (raise the client scanner's max_inspect)")
        if buf is None or not self.rewrites_names:
            # Sent as it is (unread, or nothing to rewrite): its reply is forwarded as it comes.
            entry = _ENTRY_BY_TYPE[msg_type]
            if entry is not None:
                self._queue.append(entry)
            return None
        return self.on_request(msg_type, buf, start, end)

    def on_request(self, msg_type: int, buf: bytes, start: int, end: int) -> bytes | None:
        """Queue what a request's reply becomes; a subclass rewrites statement names here."""
        entry = _ENTRY_BY_TYPE[msg_type]
        if entry is not None:
            self._queue.append(entry)
        return None

    def synth(self, kind: int, payload: bytes, info: tuple) -> None:
        """A reply pgpool makes up, due after everything owed before it."""
        if self._queue:
            self._queue.append((kind, A_SYNTH, (payload,) + info))
        else:
            self._to_client.append(payload)   # nothing is owed before it: it is final

    # ---- server -> client ----------------------------------------------------------------------

    def on_server_message(self, msg_type: int, buf: bytes | None, start: int, end: int) -> bytes | None:
        """A whole server message; returns None (forward), b"" (drop) or replacement bytes."""
        if msg_type == B_READY_FOR_QUERY and buf is not None and end - start != 1:
            # Its status byte is read at buf[start]: never take the next message's byte for it.
            raise ProtocolError(PROTOCOL_VIOLATION, f"malformed ReadyForQuery from server: {end - start} bytes "
                                                    f"instead of the status byte")
        queue = self._queue
        if not queue:
            if msg_type == B_ERROR_RESPONSE or msg_type == B_PARAMETER_STATUS:
                return None     # asynchronous: FATAL at shutdown, a reported setting, ...
            raise self._lost(msg_type)
        head = queue[0]
        kind = head[0]
        if kind == K_OWN:
            return self._on_injected_reply(head, msg_type, buf, start, end)
        if msg_type == B_PARAMETER_STATUS:
            return None
        if msg_type in _ENDS[kind]:
            queue.popleft()
            if msg_type == B_READY_FOR_QUERY:
                if buf is not None:
                    self.tx_status = buf[start]
                failed, self._head_failed = self._head_failed, False
                if head[2] is not None:
                    if failed:
                        self.undo(head)
                    else:
                        self.commit(head)
                out = None
                if queue and queue[0][0] == K_OWN:
                    self.update_watch()
            elif head[1] == A_FORWARD:
                if head[2] is not None:
                    self.commit(head)
                out = None
            else:
                self.commit(head)
                out = b""
            if queue and queue[0][1] == A_SYNTH:
                return self._emit_due(out, msg_type, buf, start, end)
            return out
        if msg_type == B_ERROR_RESPONSE:
            if _EXTENDED[kind]:
                return self._on_error(buf, start, end)
            self._head_failed = True
            self._copy_in = False
            return self.on_query_error(head, buf, start, end)
        if msg_type in _INSIDE[kind]:
            if msg_type == B_COPY_IN_RESPONSE:
                self._on_copy_in()
            elif msg_type == B_COMMAND_COMPLETE and head[2] is not None:
                return self.on_tag(head, buf, start, end)
            return None
        if self._catch_up(msg_type):
            return self.on_server_message(msg_type, buf, start, end)
        raise self._lost(msg_type)

    def _catch_up(self, msg_type: int) -> bool:
        """The narrowed watch (update_watch) hid the replies to plain extended-protocol forwards at the
        head: drop those, which the server has answered; True when the new head takes `msg_type`."""
        queue = self._queue
        popped = False
        while queue:
            head = queue[0]
            kind = head[0]
            if msg_type in _ENDS[kind] or msg_type in _INSIDE[kind]:
                return popped
            if not _EXTENDED[kind] or head[1] != A_FORWARD or head[2] is not None:
                return False
            queue.popleft()
            popped = True
        return False

    def _on_injected_reply(self, head: tuple, msg_type: int, buf: bytes | None, start: int, end: int) -> bytes:
        own: Injected = head[2]
        if msg_type == B_READY_FOR_QUERY:
            if buf is not None:
                self.tx_status = buf[start]
            queue = self._queue
            queue.popleft()
            self.injected -= 1
            # Replies pgpool made up for client requests sent meanwhile are due now.
            made_up = []
            while queue and queue[0][1] == A_SYNTH:
                made_up.append(queue.popleft()[2][0])
            self.update_watch()
            self._end_injected(head)
            return b"".join(made_up)
        elif msg_type == B_DATA_ROW:
            if buf is not None:
                own.rows.append(first_column(buf, start, end))
        elif msg_type == B_ERROR_RESPONSE and own.error is None and buf is not None:
            fields = parse_error_fields(buf[start:end])
            own.error = ProtocolError(fields.get("C", PROTOCOL_VIOLATION), fields.get("M", "error"))
        return b""

    def _lost(self, msg_type: int) -> ProtocolError:
        head = _KIND_NAMES[self._queue[0][0]] if self._queue else "nothing"
        return ProtocolError(PROTOCOL_VIOLATION, f"pgpool lost track of the reply order: server sent "
                                                 f"{chr(msg_type)!r} while {head} was owed")

    def _emit_due(self, out: bytes | None, msg_type: int, buf: bytes | None, start: int, end: int) -> bytes:
        """The message just handled, then every made-up reply now at the head of the queue."""
        if buf is None:
            raise ProtocolError(PROGRAM_LIMIT_EXCEEDED, f"{chr(msg_type)!r} reply too large to reorder replies")
        pieces = [buf[start - 5:end] if out is None else out]
        queue = self._queue
        while queue and queue[0][1] == A_SYNTH:
            pieces.append(queue.popleft()[2][0])
        return b"".join(pieces)

    def _on_error(self, buf: bytes | None, start: int, end: int) -> bytes | None:
        """An extended-protocol request failed: it and everything up to the next Sync are skipped."""
        queue = self._queue
        failed = [queue.popleft()]
        while queue and queue[0][0] != K_SYNC:
            failed.append(queue.popleft())
        if not queue:
            self._skipping = True
        self._copy_in = False
        head = failed[0]
        out, sqlstate = self.on_request_error(head, buf, start, end)
        # Undo newest first, so a Close followed by a Parse of the same name restores the older statement.
        for entry in reversed(failed):
            if entry[0] == K_OWN:
                self.injected -= 1
                self._end_injected(entry, ProtocolError(PROTOCOL_VIOLATION, "skipped by the server after an error"))
            elif entry[2] is not None:
                self.undo(entry, sqlstate if entry is head else "")
        if self.injected:
            self.update_watch()
        return out

    def _on_copy_in(self) -> None:
        # Postgres ignores Sync during COPY IN: forget the Syncs sent before the client's CopyDone.
        queue = self._queue
        rest = list(queue)
        queue.clear()
        queue.append(rest[0])
        for i in range(1, len(rest)):
            entry = rest[i]
            if entry[0] == K_MARK:
                queue.extend(rest[i + 1:])
                return
            if entry[0] != K_SYNC:
                queue.append(entry)
        self._copy_in = True

    # ---- what a subclass adds (named statements) -----------------------------------------------

    def commit(self, entry: tuple) -> None:
        """A request with info succeeded."""

    def undo(self, entry: tuple, sqlstate: str = "") -> None:
        """A request with info failed or was skipped by the server."""

    def on_request_error(self, head: tuple, buf: bytes | None, start: int,
                         end: int) -> tuple[bytes | None, str]:
        """An extended-protocol request failed: the error to send instead (None: as is), and its SQLSTATE."""
        return None, ""

    def on_query_error(self, head: tuple, buf: bytes | None, start: int, end: int) -> bytes | None:
        """An ErrorResponse inside a Query / Sync reply: the error to send instead (None: as is)."""
        return None

    def on_tag(self, head: tuple, buf: bytes | None, start: int, end: int) -> bytes | None:
        """A CommandComplete inside the reply to a request with info."""
        return None
