"""What session state a statement may leave behind, and asking the server what is there.

Owns: classifying statement texts (simple Query bodies and Parse queries) with the real
PostgreSQL parser (pglast), behind a byte-level pre-filter for the plain statements ORMs
send and a cache keyed by the text, so each distinct SQL is parsed once; the `Verdict`
that belongs to a statement and holds at every execution of it; the audit query that asks
a server which session state exists, and reading its answer; the statement that refuses
unshareable state when session_pinning is off. Pure: no sockets, no pools.

The verdict only decides when to ask. A statement proven stateless never costs a round
trip; anything else (set_config, DO, CALL, functions that are not built-in, LISTEN,
PREPARE, temporary objects, WITH HOLD cursors, advisory locks, SET ROLE, ...) is followed,
at the end of its transaction, by the audit, and the server's answer decides: settings
become the client's tracked state, unmovable state pins the client. What no statement text
shows (a trigger that takes an advisory lock, a view calling a user function) is only
seen with session_audit = always.
"""

from __future__ import annotations

import re

from pglast import ast, parser
from pglast.enums import DiscardMode, TransactionStmtKind, VariableSetKind
from pglast.keywords import COL_NAME_KEYWORDS, RESERVED_KEYWORDS

from ._build import is_compiled
from .params import SessionChange, canonical_name
from .pg_functions import BUILTIN_FUNCTIONS

# Verdict flags.
AUDIT = 1        # may create session state or change settings pgpool does not follow: ask the server
DROPS = 2        # may drop session state: ask the server when the client is pinned
REFUSE = 4       # creates state that cannot move (refused when session_pinning is off)
UNDO = 8         # ROLLBACK TO SAVEPOINT: a SET before it may be undone; ask if settings changed


class Verdict:
    """What executing one statement text may do to the session. Shared, never mutated."""
    __slots__ = ("flags", "changes", "cause")

    def __init__(self, flags: int = 0, changes: tuple[SessionChange, ...] = (), cause: str = ""):
        self.flags = flags
        self.changes = changes    # SET / RESET / RESET ALL / DISCARD ALL, in statement order
        self.cause = cause        # the first thing that needs an audit, for logs and errors

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Verdict) and (self.flags, self.changes, self.cause) == \
            (other.flags, other.changes, other.cause)

    def __hash__(self) -> int:
        return hash((self.flags, self.changes, self.cause))

    def __repr__(self) -> str:
        return f"Verdict({self.flags}, {self.changes!r}, {self.cause!r})"


STATELESS = Verdict()

# Built-in functions that create session state, or drop it.
_CREATING_FUNCTIONS = {
    "set_config": AUDIT,
    "setseed": AUDIT,
    "pg_advisory_lock": AUDIT | REFUSE,
    "pg_advisory_lock_shared": AUDIT | REFUSE,
    "pg_try_advisory_lock": AUDIT | REFUSE,
    "pg_try_advisory_lock_shared": AUDIT | REFUSE,
    # These run the SQL text they are given.
    "query_to_xml": AUDIT, "query_to_xmlschema": AUDIT, "query_to_xml_and_xmlschema": AUDIT,
    "cursor_to_xml": AUDIT, "cursor_to_xmlschema": AUDIT,
    "pg_create_logical_replication_slot": AUDIT, "pg_create_physical_replication_slot": AUDIT,
    "pg_replication_origin_session_setup": AUDIT,
    "pg_advisory_unlock": DROPS, "pg_advisory_unlock_shared": DROPS, "pg_advisory_unlock_all": DROPS,
    "pg_replication_origin_session_reset": DROPS,
}
SAFE_FUNCTIONS = BUILTIN_FUNCTIONS - frozenset(_CREATING_FUNCTIONS)

# Parameters that are not session settings to follow: role changes pin, transaction_* are per transaction.
_NOT_FOLLOWED = frozenset(("role", "session_authorization", "transaction_isolation", "transaction_read_only",
                           "transaction_deferrable"))

CURSOR_OPT_HOLD = 0x0020

# ---- the byte-level pre-filter ---------------------------------------------------------------

# Statements that can do nothing to a session when they stand alone.
_TRIVIAL_HEAD_LIST = (b"beg", b"com", b"end", b"abo", b"sta", b"sho", b"fet", b"mov")
_TRIVIAL_HEADS = frozenset(_TRIVIAL_HEAD_LIST)
# Plain DML: stateless when every call in it is a safe built-in and it makes no temporary table.
_DML_HEADS = frozenset((b"sel", b"ins", b"upd", b"del", b"wit", b"val", b"tab"))
# SQL grammar that may stand before "(" in plain DML without being a call. Only reserved words
# (no function can be named so without quotes), and four everyday unreserved ones checked in
# context by _grammar_word: `) OVER (`, `) FILTER (`, `ON CONFLICT (`, `GROUP / ORDER / PARTITION BY (`.
_PAREN_WORDS = frozenset(word for word in (
    "in", "values", "exists", "any", "all", "some", "as", "cast", "coalesce", "nullif", "greatest", "least",
    "row", "array", "extract", "position", "substring", "overlay", "trim", "using", "on", "and", "or", "not",
    "when", "then", "else", "case", "select", "where", "from", "lateral", "grouping", "numeric", "decimal",
    "varchar", "char", "character", "timestamp", "time", "interval", "float", "bit", "union", "except",
    "intersect", "limit", "offset", "having", "only", "group", "treat", "normalize", "xmlelement",
    "xmlattributes", "xmlforest", "xmlconcat", "xmlparse", "xmlroot", "xmlserialize", "xmlexists",
) if word in RESERVED_KEYWORDS or word in COL_NAME_KEYWORDS)
_AFTER_PAREN_WORDS = frozenset((b"over", b"filter"))
_AFTER_WORD = {b"conflict": (b"on",), b"by": (b"group", b"order", b"partition")}
_SAFE_CALLS = frozenset(name.encode() for name in SAFE_FUNCTIONS | _PAREN_WORDS)
_SPACE = frozenset(b" \t\r\n")
_INSERT_TARGET = rb"\s*insert\s+into\s+[a-z_][a-z0-9_$.]*\s*(?:as\s+[a-z_]\w*\s*)?\("
_INSERT_TARGET_RE = re.compile(_INSERT_TARGET)
_INSERT_TARGET_AT = re.compile(_INSERT_TARGET, re.IGNORECASE).match


def prefilter(text: bytes) -> bool:
    """True when `text` is certainly stateless, decided from bytes alone (no decode, no parser)."""
    lower = text.lower()
    pos = 0
    end = len(lower)
    while pos < end and lower[pos] in _SPACE:
        pos += 1
    head = lower[pos:pos + 3]
    semicolon = lower.find(b";", pos)
    if semicolon >= 0 and lower[semicolon + 1:].strip(b" \t\r\n;"):
        return False            # a statement list: the parser splits it
    # (find and `int in bytes`, not `bytes in bytes`: the same search at half the cost in CPython 3.11)
    if lower.find(b"/*") >= 0 or lower.find(b"--") >= 0:
        return False            # a comment may stand between a function's name and its "("
    if head in _TRIVIAL_HEADS:
        return 40 not in lower  # "("
    if head == b"rol":          # ROLLBACK, but not ROLLBACK TO SAVEPOINT
        return end - pos < 64 and b"to" not in lower[pos + 8:].split()
    if head not in _DML_HEADS:
        return False
    if head != b"ins" and head != b"upd" and head != b"del" and lower.find(b"temp") >= 0:
        return False            # SELECT ... INTO TEMP
    if head == b"ins":
        target = _INSERT_TARGET_RE.match(lower, pos)
        if target is not None:
            pos = target.end()  # INSERT INTO t (columns): not a call
    return _calls_are_safe(lower, pos, end)


# What prefilter_at says besides "not certain" (0): certainly stateless, and whether the text
# had calls to look up (then a repeat is cheaper from the cache than checked again) or none.
PLAIN = 1                     # no "(" at all: never in the cache of verdicts (classify)
CHECKED = 2                   # its calls were looked up: cached


def _head(word: bytes) -> int:
    return (word[0] << 16) | (word[1] << 8) | word[2]


_SEL, _INS, _UPD, _DEL, _WIT, _VAL, _TAB = (_head(word) for word in (b"sel", b"ins", b"upd", b"del", b"wit", b"val",
                                                                      b"tab"))
_BEG, _COM, _END, _ABO, _STA, _SHO, _FET, _MOV = (_head(word) for word in _TRIVIAL_HEAD_LIST)
_ROL = _head(b"rol")


def prefilter_at(buf: bytes, start: int, end: int, calls: bool = True) -> int:
    """prefilter(buf[start:end]) read in place, in one pass: 0 (not certain), PLAIN or CHECKED.

    Always the same answer as prefilter (tests/protocol/test_session_prefilter.py checks it); with
    calls=False it answers only PLAIN or 0, and stops at the first "(". It is the compiled build's
    pre-filter: session.pxd makes its loops C loops over the bytes. Interpreted, each byte costs a
    bytecode round, so there classify uses _plain_shape and prefilter instead."""
    if end > len(buf):
        end = len(buf)          # as buf[start:end] would; no byte past it is read
    pos = start
    while pos < end and buf[pos] in b" \t\r\n":
        pos += 1
    if end - pos < 3:
        return 0                # no statement head the filter knows
    # Bit 5 lower-cases a letter; a byte that is not a letter never matches a head (all letters).
    head = ((buf[pos] | 32) << 16) | ((buf[pos + 1] | 32) << 8) | (buf[pos + 2] | 32)
    paren = False
    temp = False
    previous = 0
    scan = pos
    while scan < end:
        byte = buf[scan]
        if byte == 59:          # ";"
            break
        if byte == 40:          # "("
            if not calls:
                return 0
            paren = True
        elif (byte == 42 and previous == 47) or (byte == 45 and previous == 45):
            return 0            # "/*" or "--": a comment may stand between a function's name and its "("
        elif (byte | 32) == 112 and scan - pos >= 3 and (buf[scan - 1] | 32) == 109 \
                and (buf[scan - 2] | 32) == 101 and (buf[scan - 3] | 32) == 116:
            temp = True         # "temp" in any case: SELECT ... INTO TEMP
        previous = byte
        scan += 1
    while scan < end:           # after the first ";" only blanks and ";" (psql's and pgbench's ending)
        if buf[scan] not in b" \t\r\n;":
            return 0            # a statement list: the parser splits it
        scan += 1
    if head == _BEG or head == _COM or head == _END or head == _ABO or head == _STA or head == _SHO \
            or head == _FET or head == _MOV:
        return 0 if paren else PLAIN
    if head == _ROL:            # ROLLBACK, but not ROLLBACK TO SAVEPOINT: rare, prefilter decides
        return CHECKED if calls and prefilter(buf[start:end]) else 0
    if head == _SEL or head == _WIT or head == _VAL or head == _TAB:
        if temp:
            return 0
    elif head == _INS:
        if paren:
            target = _INSERT_TARGET_AT(buf, pos, end)
            if target is not None:
                pos = target.end()   # INSERT INTO t (columns): not a call
    elif head != _UPD and head != _DEL:
        return 0
    if not paren:
        return PLAIN
    return CHECKED if _calls_are_safe(buf, pos, end) else 0


# The interpreted build's PLAIN: one regex call instead of prefilter's dozen bytes operations, for
# the commonest shape only (a statement with no "(", comment, statement list or "temp" after a
# head prefilter knows, spelled whole so that no "temp" spans it). Every text it matches, prefilter
# passes as PLAIN. The body is runs of plain bytes, each run after one "/", "-" or "t" that starts
# no comment or "temp", and the tail starts with the ";" the body excludes: one way to match any
# text, so one that fails backtracks in linear time. No possessive quantifiers: CPython 3.11.2's
# re (Debian 12's) matched b"SELECT TEMP" and b"start --" with them.
_PLAIN_HEADS = (b"select", b"update", b"delete", b"with", b"values", b"table",
                b"begin", b"commit", b"end", b"abort", b"start", b"show", b"fetch", b"move")
_plain_shape = re.compile(
    rb"[ \t\r\n]*(?:" + b"|".join(b"".join(b"[%c%c]" % (c, c - 32) for c in word) for word in _PLAIN_HEADS)
    + rb")\b[^(;/\-tT]*(?:(?:/(?!\*)|-(?!-)|[tT](?![eE][mM][pP]))[^(;/\-tT]*)*(?:;[; \t\r\n]*)?").fullmatch


def _calls_are_safe(text: bytes, start: int, end: int) -> bool:
    """Every "name(" in text[start:end] names a safe built-in or is SQL grammar (IN (, VALUES (, ...).

    Reads letters in either case (prefilter passes lower-cased text, prefilter_at the client's)."""
    paren = text.find(b"(", start, end)
    while paren >= 0:
        last = paren - 1
        while last >= start and text[last] in b" \t\r\n":
            last -= 1
        first = last
        while first >= start and text[first] in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$":
            first -= 1
        if first < last:
            if first >= start and text[first] in b'."':
                return False    # schema.name( or "quoted"name(: the parser decides
            word = text[first + 1:last + 1]
            if word not in _SAFE_CALLS:
                word = word.lower()   # prefilter_at's text is as the client wrote it
                if word not in _SAFE_CALLS and not _grammar_word(text, start, first, word):
                    return False
        elif last >= start and text[last] in b'."\'':
            return False        # "quoted"( / schema."name"(
        paren = text.find(b"(", paren + 1, end)
    return True


def _grammar_word(text: bytes, start: int, before: int, word: bytes) -> bool:
    """An unreserved word before "(" that the words before it show to be grammar, not a call."""
    while before >= start and text[before] in b" \t\r\n":
        before -= 1
    if word in _AFTER_PAREN_WORDS:
        return before >= start and text[before] == 41   # ")": count(*) FILTER (...), sum(x) OVER (...)
    previous = _AFTER_WORD.get(word)
    if previous is None:
        return False
    first = before
    while first >= start and text[first] in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$":
        first -= 1
    return text[first + 1:before + 1].lower() in previous


# ---- the parser -----------------------------------------------------------------------------

def _is_none(node: ast.VariableSetStmt) -> bool:
    """SET ROLE NONE: back to the session user."""
    args = node.args or ()
    return len(args) == 1 and getattr(getattr(args[0], "val", None), "sval", None) == "none"


class _Walk:
    """Collects flags, changes and the first cause over a parse tree."""
    __slots__ = ("flags", "changes", "cause", "text", "transaction_control")

    def __init__(self, text: str):
        self.transaction_control = False
        self.flags = 0
        self.changes: list[SessionChange] = []
        self.cause = ""
        self.text = text

    def mark(self, flags: int, cause: str) -> None:
        self.flags |= flags
        if not self.cause and flags & (AUDIT | REFUSE):
            self.cause = cause

    def statement(self, raw: ast.RawStmt) -> None:
        node = raw.stmt
        if isinstance(node, ast.VariableSetStmt):
            self.variable_set(node, raw)
            return
        if isinstance(node, ast.DiscardStmt):
            if node.target == DiscardMode.DISCARD_ALL:
                self.changes.append(SessionChange("reset_all"))
            self.mark(DROPS, "DISCARD")
        elif isinstance(node, ast.ListenStmt):
            self.mark(AUDIT | REFUSE, "LISTEN")
        elif isinstance(node, (ast.UnlistenStmt, ast.ClosePortalStmt, ast.DeallocateStmt, ast.DropStmt)):
            self.mark(DROPS, "")
        elif isinstance(node, ast.PrepareStmt):
            self.mark(AUDIT | REFUSE, "PREPARE")
            return              # the prepared query runs at EXECUTE, which is audited
        elif isinstance(node, ast.ExecuteStmt):
            self.mark(AUDIT, "EXECUTE")
        elif isinstance(node, ast.DeclareCursorStmt) and node.options & CURSOR_OPT_HOLD:
            self.mark(AUDIT | REFUSE, "cursor WITH HOLD")
        elif isinstance(node, ast.DoStmt):
            self.mark(AUDIT, "DO block")
            return
        elif isinstance(node, ast.CallStmt):
            self.mark(AUDIT, "CALL")
        elif isinstance(node, ast.LoadStmt):
            self.mark(AUDIT, "LOAD")
        elif isinstance(node, ast.TransactionStmt):
            if node.kind == TransactionStmtKind.TRANS_STMT_ROLLBACK_TO:
                self.flags |= UNDO
            self.transaction_control = True
            return
        elif isinstance(node, (ast.CreateStmt, ast.ViewStmt, ast.CreateSeqStmt)):
            relation = node.view if isinstance(node, ast.ViewStmt) else \
                node.sequence if isinstance(node, ast.CreateSeqStmt) else node.relation
            self.relation(relation)
        elif isinstance(node, ast.CreateFunctionStmt):
            names = node.funcname or ()
            if len(names) > 1 and getattr(names[0], "sval", "") == "pg_temp":
                self.mark(AUDIT | REFUSE, "temporary function")
        self.walk(node)

    def variable_set(self, node: ast.VariableSetStmt, raw: ast.RawStmt) -> None:
        kind = node.kind
        name = node.name or ""
        if node.is_local and kind != VariableSetKind.VAR_RESET_ALL:
            return              # SET LOCAL ends with the transaction
        if name in ("role", "session_authorization"):
            if kind in (VariableSetKind.VAR_SET_VALUE, VariableSetKind.VAR_SET_CURRENT) and not _is_none(node):
                self.mark(AUDIT | REFUSE, "SET ROLE" if name == "role" else "SET SESSION AUTHORIZATION")
            else:
                self.mark(DROPS, "")
            return
        if kind == VariableSetKind.VAR_RESET_ALL:
            self.changes.append(SessionChange("reset_all"))
        elif kind == VariableSetKind.VAR_SET_MULTI:
            if name != "TRANSACTION":     # SESSION CHARACTERISTICS sets default_transaction_*
                self.mark(AUDIT, f"SET {name}")
        elif name in _NOT_FOLLOWED:
            return
        elif kind in (VariableSetKind.VAR_RESET, VariableSetKind.VAR_SET_DEFAULT):
            # SET x TO DEFAULT is RESET x: back to the session's startup value.
            self.changes.append(SessionChange("reset", canonical_name(name)))
        elif kind == VariableSetKind.VAR_SET_VALUE:
            start = raw.stmt_location or 0
            statement = self.text[start:start + raw.stmt_len] if raw.stmt_len else self.text[start:]
            self.changes.append(SessionChange("set", canonical_name(name), statement.strip().rstrip(";").strip()))
        else:                             # SET x FROM CURRENT: the value is only known to the server
            self.mark(AUDIT, f"SET {name} FROM CURRENT")

    def relation(self, relation: ast.RangeVar | None) -> None:
        if relation is not None and (relation.relpersistence == "t" or relation.schemaname == "pg_temp"):
            self.mark(AUDIT | REFUSE, "temporary table")

    def walk(self, node: object) -> None:
        stack = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, tuple | list):
                stack.extend(item)
                continue
            if not isinstance(item, ast.Node):
                continue
            if isinstance(item, ast.FuncCall):
                self.call(item)
            elif isinstance(item, ast.IntoClause):
                self.relation(item.rel)
            elif isinstance(item, ast.RawStmt):
                self.statement(item)
                continue
            for slot in type(item).__slots__:
                value = getattr(item, slot, None)
                if isinstance(value, ast.Node | tuple | list):
                    stack.append(value)

    def call(self, node: ast.FuncCall) -> None:
        parts = [getattr(part, "sval", "") for part in node.funcname or ()]
        name = parts[-1] if parts else ""
        schema = parts[0] if len(parts) > 1 else "pg_catalog"
        if schema != "pg_catalog" or name not in BUILTIN_FUNCTIONS:
            self.mark(AUDIT, f"function {'.'.join(parts)}()")
        else:
            flags = _CREATING_FUNCTIONS.get(name, 0)
            if flags:
                self.mark(flags, f"{name}()")


# The parser builds a Python object per node (tens of microseconds each, recursively): a long or
# deeply nested statement would stall every client on the event loop, and a huge one can exhaust
# the C stack. Past these bounds a statement is not parsed; the server is asked instead.
PARSE_LIMIT = 8 * 1024        # bytes of statement text
TOKEN_LIMIT = 1000            # lexer tokens (the lexer is linear and cheap)
_TOO_BIG = Verdict(AUDIT, (), "statement too long for pgpool to classify")
_UNPARSABLE = Verdict(AUDIT, (), "statement pgpool cannot parse")


def verdict_of(text: bytes) -> Verdict:
    """The verdict for one statement text, uncached: pre-filter first, then the parser."""
    if prefilter(text):
        return STATELESS
    return _parsed_verdict(text)


def _parsed_verdict(text: bytes) -> Verdict:
    """The parser's verdict, for a text the pre-filter is not certain of."""
    if len(text) > PARSE_LIMIT:
        return _TOO_BIG
    try:
        sql = text.decode("utf-8")
        if len(parser.scan(sql)) > TOKEN_LIMIT:
            return _TOO_BIG
        statements = parser.parse_sql(sql)
    except Exception:   # ParseError, UnicodeDecodeError, RecursionError: never let client text escape
        # The server will refuse it too; if it does not (another encoding), ask it afterwards.
        return _UNPARSABLE
    walk = _Walk(sql)
    for raw in statements:
        walk.statement(raw)
    if walk.changes and walk.transaction_control:
        # `BEGIN; SET ...; ROLLBACK` in one Query: whether the SET holds is the server's to say.
        walk.mark(AUDIT, "SET or RESET beside transaction control in one query")
    if not walk.flags and not walk.changes:
        return STATELESS
    return Verdict(walk.flags, tuple(walk.changes), walk.cause)


# ---- the cache ------------------------------------------------------------------------------

CACHE_ENTRIES = 10_000        # distinct statement texts remembered (cleared whole when full)
CACHE_TEXT_LIMIT = 16 * 1024  # longer texts are classified every time (they are rarely repeated)

_cache: dict[bytes, Verdict] = {}
_plain: set[bytes] = set()    # interpreted build: PLAIN texts, apart, so they never push verdicts out

# Compiled, prefilter_at decides in C what prefilter would; interpreted, one regex call decides
# the commonest shape and prefilter the rest (a byte loop costs 30 times more there).
_COMPILED = is_compiled(__name__)


def classify(buf: bytes, start: int, end: int) -> Verdict:
    """The verdict for the statement text buf[start:end] (no trailing NUL), cached per text.

    A statement with no "(" that the pre-filter passes (PLAIN: pgbench's; an ORM's simple
    lookups) never goes into the cache of verdicts: inlined literals make each such text new,
    and they would push out the verdicts that took the parser (the cache is cleared whole when
    full). Compiled, it is decided in place before the cache, as fast as a lookup; interpreted,
    it is remembered in a set of its own, since the check costs five lookups there."""
    if _COMPILED and prefilter_at(buf, start, end, False) == PLAIN:
        return STATELESS
    text = buf[start:end]
    verdict = _cache.get(text)
    if verdict is not None:
        return verdict
    if _COMPILED:
        verdict = STATELESS if prefilter_at(buf, start, end) else _parsed_verdict(text)
    elif text in _plain:
        return STATELESS
    elif 40 not in text and _plain_shape(text) is not None:   # no "(": a memchr spares a failing regex call
        if end - start <= CACHE_TEXT_LIMIT:
            if len(_plain) >= CACHE_ENTRIES:
                _plain.clear()
            _plain.add(text)
        return STATELESS
    else:
        verdict = verdict_of(text)
    if end - start <= CACHE_TEXT_LIMIT:
        if len(_cache) >= CACHE_ENTRIES:
            _cache.clear()
        _cache[text] = verdict
    return verdict


def clear_cache() -> None:
    _cache.clear()
    _plain.clear()


# ---- the audit ------------------------------------------------------------------------------

# One row per finding, one text column: 's<name>=<value>' for a setting whose source is the
# session, 'p<cause>' for state that cannot move to another server.
_AUDIT_SQL = (
    "SELECT 's' || name || '=' || pg_catalog.current_setting(name) FROM pg_catalog.pg_settings"
    " WHERE source = 'session'"
    " UNION ALL SELECT 'plisten' WHERE EXISTS (SELECT FROM pg_catalog.pg_listening_channels())"
    " UNION ALL SELECT 'pprepared_statement' WHERE EXISTS (SELECT FROM pg_catalog.pg_prepared_statements"
    " WHERE from_sql)"
    " UNION ALL SELECT 'padvisory_lock' WHERE EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype = 'advisory'"
    " AND pid = pg_catalog.pg_backend_pid())"
    " UNION ALL SELECT 'ptemp_object' WHERE EXISTS (SELECT FROM pg_catalog.pg_class"
    " WHERE relnamespace = pg_catalog.pg_my_temp_schema()) OR EXISTS (SELECT FROM pg_catalog.pg_proc"
    " WHERE pronamespace = pg_catalog.pg_my_temp_schema())"
    " UNION ALL SELECT 'pcursor' WHERE EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable)"
    " UNION ALL SELECT 'prole' WHERE current_user <> {login} OR session_user <> {login}"
)

PIN_CAUSES = ("listen", "prepared_statement", "advisory_lock", "temp_object", "cursor", "role")


def audit_sql(login_user: str) -> str:
    return _AUDIT_SQL.format(login="'" + login_user.replace("'", "''") + "'")


class AuditResult:
    __slots__ = ("settings", "pins")

    def __init__(self, settings: dict[str, str], pins: tuple[str, ...]):
        self.settings = settings   # name -> value (as current_setting shows it) set in this session
        self.pins = pins           # causes of state that cannot move, in PIN_CAUSES order


def parse_audit(rows: list[str | None]) -> AuditResult:
    """Read the audit's rows; ValueError if they are not what audit_sql returns."""
    settings: dict[str, str] = {}
    pins = set()
    for row in rows:
        if not row or row[0] not in "sp":
            raise ValueError(f"unexpected audit row {row!r}")
        if row[0] == "s":
            name, sep, value = row[1:].partition("=")
            if not sep:
                raise ValueError(f"unexpected audit row {row!r}")
            if name not in _NOT_FOLLOWED:
                settings[canonical_name(name)] = value
        elif row[1:] in PIN_CAUSES:
            pins.add(row[1:])
        else:
            raise ValueError(f"unexpected audit row {row!r}")
    return AuditResult(settings, tuple(cause for cause in PIN_CAUSES if cause in pins))


def refusal_sql(pool_name: str, statement: str) -> str:
    """A statement the server fails with 0A000, so the error lands where the refused one would."""
    message = (f"pgpool pool {pool_name}: this statement creates session state (LISTEN, PREPARE, "
               f"advisory lock, temporary table, WITH HOLD cursor or SET ROLE) and session_pinning is off: "
               f"{statement[:100]}").replace("'", "''").replace("$", "")
    return f"DO $pgpool$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = '{message}'; END $pgpool$"
