"""What one client's session carries from server to server, beyond its bytes.

Owns: the verdicts of the client's statements (by statement name and portal, from
session.classify), its SET / RESET on their way (settled at the ReadyForQuery that
answers them; kept only if the transaction commits), when a session audit is due and
what its answer means (settings adopted, pins set or lifted), and what a RESET leaves to
replay. Sans-IO: client.py feeds it the client's requests and the server's answers and
acts on what it says (refuse, audit, replay, release); it never writes to a socket and
never holds a pool.

The server is the source of truth: what cannot be proven stateless is followed by an
audit (session.audit_sql), and its answer replaces what pgpool believed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from .config import SettingsHost
from .params import SessionChange, SessionParams, search_path_key, set_config_sql, sync_sql
from .prepared import ClientStatements
from .protocol import messages as m
from .protocol.constants import F_BIND, F_EXECUTE, F_PARSE, F_QUERY, TX_FAILED, TX_IDLE, TX_IN_BLOCK
from .session import AUDIT, DROPS, REFUSE, STATELESS, UNDO, Verdict, classify, parse_audit, refusal_sql

if TYPE_CHECKING:
    from .protocol.link import Link
    from .stats import PoolStats

log = logging.getLogger("pgpool.client")


class LinkedServer(Protocol):
    """What the session needs of the server its client holds (server.py's ServerConnection)."""
    params: SessionParams
    link: Any
    log_prefix: str
    needs_reset: bool
    close_needed: str | None


class ClientSession:
    """One client's session state as pgpool follows it (see the module docstring)."""
    __slots__ = ("host", "params", "statements", "stats", "pool_name", "reported_names", "session_mode", "log_prefix",
                 "stmt_verdicts", "portal_verdicts", "pending_changes", "tx_changes", "tx_snapshot", "rfq_seen",
                 "query_failed", "last_tag", "pinned", "audit_due", "auditing", "audit_cause", "resync_due",
                 "resync_reported")

    def __init__(self, host: SettingsHost, params: SessionParams, statements: ClientStatements, stats: "PoolStats",
                 pool_name: str, reported_names: Any, session_mode: bool, log_prefix: str):
        self.host = host
        self.params = params
        self.statements = statements
        self.stats = stats
        self.pool_name = pool_name
        self.reported_names = reported_names
        self.session_mode = session_mode     # session pooling: the server is the client's, nothing is audited
        self.log_prefix = log_prefix
        # Verdicts of what is not stateless: statement name -> verdict, portal name -> verdict. A
        # verdict belongs to the statement and counts at every Execute, in whatever transaction.
        # An idle client holds no containers: each dict is None and each list () until first needed.
        self.stmt_verdicts: dict[bytes, Verdict] | None = None
        self.portal_verdicts: dict[bytes, Verdict] | None = None
        # SET/RESET sent, not yet answered, each with the number of the ReadyForQuery that answers it.
        self.pending_changes: list[tuple[int, SessionChange]] | tuple[()] = ()
        self.tx_changes: list[SessionChange] | tuple[()] = ()   # SET/RESET inside a transaction, kept if it commits
        self.tx_snapshot: tuple[dict[str, str], dict[str, str]] | None = None   # statements before them
        self.rfq_seen = 0                        # ReadyForQuery received so far: numbers the replies
        self.query_failed = False
        self.last_tag = b""
        self.pinned = False                      # keeps its server: it holds unshareable session state
        self.audit_due = False                   # ask the server about session state at the transaction's end
        self.auditing = False                    # an audit is on its way: its answer may pin
        self.audit_cause = ""                    # the statement that made the audit due, for the log
        self.resync_due = False                  # a RESET left the server off the client's startup values
        self.resync_reported: list[str] | tuple[()] = ()   # reported names to announce once the server has them again
        statements.path_key = search_path_key(params)   # shared prepared statements are keyed by search_path too

    # ---- requests ------------------------------------------------------------------------------

    def on_request(self, link: "Link", msg_type: int, buf: bytes | None, start: int, end: int) -> bytes | None:
        """What a request does to the session; None, or the refusal to send instead of it."""
        if buf is None:
            return None
        if msg_type == F_QUERY:
            verdict = classify(buf, start, end - 1)
            if verdict is not STATELESS:
                # Its changes settle at the ReadyForQuery that answers this Query.
                if self.note_verdict(verdict, self.rfq_seen + link.owed_ready() + 1):
                    return m.query(refusal_sql(self.pool_name, buf[start:end - 1].decode("utf-8", "replace")))
        elif msg_type == F_EXECUTE:
            if self.portal_verdicts:
                verdict = self.portal_verdicts.get(buf[start:buf.find(b"\x00", start, end)])
                if verdict is not None:   # settles at the ReadyForQuery of the next Sync
                    self.note_verdict(verdict, self.rfq_seen + link.owed_ready() + 1)
        elif msg_type == F_BIND:
            if self.stmt_verdicts or self.portal_verdicts:
                portal_end = buf.find(b"\x00", start, end)
                statement = buf[portal_end + 1:buf.find(b"\x00", portal_end + 1, end)]
                verdict = self.stmt_verdicts.get(statement) if self.stmt_verdicts else None
                if verdict is not None:
                    if self.portal_verdicts is None:
                        self.portal_verdicts = {}
                    self.portal_verdicts[buf[start:portal_end]] = verdict
                elif self.portal_verdicts:
                    self.portal_verdicts.pop(buf[start:portal_end], None)
        elif msg_type == F_PARSE:
            return self._on_parse(buf, start, end)
        return None

    def refuses(self) -> bool:
        """State that cannot move is refused instead of pinned (session_pinning off, not session mode)."""
        return not self.session_mode and not self.host.settings.session_pinning

    def _on_parse(self, buf: bytes, start: int, end: int) -> bytes | None:
        name_end = buf.find(b"\x00", start, end)
        query_end = buf.find(b"\x00", name_end + 1, end)
        if not 0 <= name_end < query_end:
            return None
        verdict = classify(buf, name_end + 1, query_end)
        if verdict is STATELESS:
            if self.stmt_verdicts:
                self.stmt_verdicts.pop(buf[start:name_end], None)
            return None
        name = buf[start:name_end]
        if self.stmt_verdicts is None:
            self.stmt_verdicts = {}
        self.stmt_verdicts[name] = verdict
        if verdict.flags & REFUSE and self.refuses():
            self.stats.count_error("session_state_refused")
            sql = refusal_sql(self.pool_name, buf[name_end + 1:query_end].decode("utf-8", "replace"))
            return m.message(b"P", name + b"\x00" + m.cstring(sql) + b"\x00\x00")
        return None

    def note_verdict(self, verdict: Verdict, answer: int) -> bool:
        """A statement that is not proven stateless is being executed; True: refuse it instead.

        Its SET / RESETs wait for ReadyForQuery number `answer`; whatever else it may do makes
        the audit due at the end of the transaction (dropping state matters to a pinned client only).
        """
        flags = verdict.flags
        if flags & REFUSE and self.refuses():
            self.stats.count_error("session_state_refused")
            return True
        for change in verdict.changes:
            if not self.pending_changes:
                self.pending_changes = []
            self.pending_changes.append((answer, change))  # type: ignore[union-attr]
        if self.session_mode:
            return False
        if flags & AUDIT or (flags & DROPS and (self.pinned or self.auditing)) or \
                (flags & UNDO and (self.tx_changes or self.pending_changes)):
            if not self.audit_due:
                self.audit_due = True
                self.audit_cause = verdict.cause or ("ROLLBACK TO SAVEPOINT after SET" if flags & UNDO
                                                     else "a statement that may drop session state")
        return False

    # ---- replies -------------------------------------------------------------------------------

    def on_ready(self, status: int, server: LinkedServer | None) -> None:
        """A ReadyForQuery reached the client: settle the changes it answers."""
        self.rfq_seen += 1
        if self.pending_changes:
            self._settle_changes(status, server)
        if self.tx_changes and status == TX_IDLE:
            self._settle_tx_changes(server)
        self.query_failed = False

    def end_transaction(self) -> None:
        """The transaction ended (ReadyForQuery 'I', nothing outstanding): portals end with it."""
        if self.portal_verdicts:
            self.portal_verdicts.clear()

    def on_command_complete(self, tag: bytes) -> None:
        self.last_tag = tag

    def on_error(self) -> None:
        self.query_failed = True

    def forget_transaction(self) -> None:
        """The client lost its server inside a transaction: a SET in it dies with it."""
        self.tx_changes = ()
        self.tx_snapshot = None

    def _settle_changes(self, status: int, server: LinkedServer | None) -> None:
        """Settle the SET/RESETs this ReadyForQuery answers; later ones in a pipeline wait for theirs.

        Inside a transaction they count at once (the rest of it must see them), and the
        statements from before are kept to put back if it does not commit.
        """
        answered = [change for number, change in self.pending_changes if number <= self.rfq_seen]
        if not answered:
            return
        self.pending_changes = [item for item in self.pending_changes if item[0] > self.rfq_seen]
        if self.query_failed or status == TX_FAILED:
            return
        if status == TX_IN_BLOCK:
            if not self.tx_changes:
                self.tx_changes = []
                server_statements = server.params.copy_statements() if server is not None else {}
                self.tx_snapshot = (self.params.copy_statements(), server_statements)
            self.tx_changes.extend(answered)  # type: ignore[union-attr]
            _watch_tags(server, True)
        self._apply_changes(answered, server)

    def _settle_tx_changes(self, server: LinkedServer | None) -> None:
        self.tx_changes = ()
        snapshot, self.tx_snapshot = self.tx_snapshot, None
        _watch_tags(server, False)
        if not self.last_tag.startswith(b"COMMIT") and snapshot is not None:
            # Rolled back: the SETs and RESETs went with it (reported values come back as ParameterStatus).
            self.params.statements = snapshot[0]
            if server is not None:
                server.params.statements = snapshot[1]
            self.statements.path_key = search_path_key(self.params)

    def _apply_changes(self, changes: list[SessionChange], server: LinkedServer | None) -> None:
        """Apply settled changes to both sides; a RESET leaves the server off the client's startup values."""
        reported = self.reported_names
        for change in changes:
            if change.kind != "set":
                self.resync_due = True
            self.params.apply(change, reported)
            if server is not None:
                server.params.apply(change, reported)
        self.statements.path_key = search_path_key(self.params)

    # ---- the audit -----------------------------------------------------------------------------

    def start_audit(self, always: bool) -> bool:
        """At the end of a transaction: True when the audit query must run now."""
        if not (self.audit_due or always):
            return False
        if not self.audit_due:
            self.audit_cause = "session_audit = always"
        self.audit_due = False
        self.auditing = True
        return True

    def adopt_audit(self, rows: list[str | None], failure: str | None, server: LinkedServer) -> None:
        """The server said what session state it holds: adopt its settings, pin or unpin."""
        self.auditing = False
        self.stats.session_audits += 1
        try:
            if failure is not None:
                raise ValueError(failure)
            result = parse_audit(rows)
        except ValueError as problem:
            log.warning("%s: session audit failed (%s); keeping the server pinned", self.log_prefix, problem)
            self._set_pins(("unknown",), server)
        else:
            self._adopt_settings(result.settings, server)
            self._set_pins(result.pins, server)

    def _adopt_settings(self, found: dict[str, str], server: LinkedServer) -> None:
        """Settings the audit found are the truth for both sides: follow them, forget what is gone."""
        reported = self.reported_names
        client_statements = self.params.statements
        server_statements = server.params.statements
        for name, value in found.items():
            if name in reported:
                continue   # followed through ParameterStatus
            sql = set_config_sql(name, value)
            if name not in server_statements:
                self.stats.settings_adopted += 1
                log.info("%s: follows setting %s = %r found by the session audit (after: %s)", self.log_prefix,
                         name, value, self.audit_cause)
            client_statements[name] = sql
            server_statements[name] = sql
        for name in [name for name in server_statements if name not in found]:
            del server_statements[name]   # undone on the server (ROLLBACK TO SAVEPOINT, RESET in a function)
            client_statements.pop(name, None)
        self.statements.path_key = search_path_key(self.params)

    def _set_pins(self, pins: tuple[str, ...], server: LinkedServer) -> None:
        settings = self.host.settings
        if pins and not settings.session_pinning:
            # Nothing refused it up front (a function, a DO block): never hand the state over.
            log.warning("%s: session state (%s) left by %s and session_pinning is off: the server is reset "
                        "before reuse", self.log_prefix, ", ".join(pins), self.audit_cause)
            server.needs_reset = True
            if not settings.server_reset_query:
                server.close_needed = "session state left on it, session_pinning off, server_reset_query empty"
            pins = ()
        if pins and not self.pinned:
            self.pinned = True
            stats = self.stats
            for cause in pins:
                stats.pins[cause] = stats.pins.get(cause, 0) + 1
            log.info("%s: pinned to server %s: session state (%s) from: %s", self.log_prefix,
                     server.log_prefix, ", ".join(pins), self.audit_cause)
        elif not pins and self.pinned:
            self.pinned = False
            log.info("%s: unpinned: no session state left on server %s", self.log_prefix, server.log_prefix)

    # ---- after a RESET -------------------------------------------------------------------------

    def resync_sql(self, server: LinkedServer) -> str:
        """What gives the linked server the client's values again after a RESET ('' if nothing)."""
        self.resync_due = False
        self.resync_reported = [name for name in self.reported_names
                                if self.params.get_reported(name) != server.params.get_reported(name)]
        return sync_sql(self.params, server.params, self.reported_names)

    def reported_after_reset(self, server: LinkedServer) -> bytes:
        """ParameterStatus for reported values a RESET put back to the client's startup value."""
        names = self.resync_reported or [name for name in self.reported_names
                                         if self.params.get_reported(name) != server.params.get_reported(name)]
        self.resync_reported = ()
        reported = self.params.reported_view()
        return b"".join(m.parameter_status(name, reported[name]) for name in names if name in reported)


def _watch_tags(server: LinkedServer | None, wanted: bool) -> None:
    """CommandComplete tags matter while a SET inside the transaction waits for its COMMIT."""
    if server is not None:
        server.link.watch_tags = wanted
        server.link.update_watch()
