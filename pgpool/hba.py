"""auth_type = hba: PgBouncer's subset of pg_hba.conf and pg_ident.conf, parsed and matched.

Owns: reading auth_hba_file (local / host / hostssl / hostnossl lines; database and user lists
with all, sameuser, replication, "quoted" names and @file includes; IPv4/IPv6 addresses as CIDR
or address + mask, or all; methods trust, reject, md5, password, scram-sha-256, cert, peer; the
map= option) and auth_ident_file (map, system user, database user or all), and choosing the
first rule that matches a connection, as PgBouncer's src/hba.c does.

Must not: touch sockets or authenticate anyone (app.py runs cert and peer checks). The caller passes what it knows about the
connection (address, TLS or not, database, user, replication kind) and runs the method itself.
Anything PgBouncer does not support (samerole, +group, /regex, hostnames, ldap, pam, other
options) is refused when the file is read, with the file and line, instead of matching wrongly.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from .config import read_quoted

METHODS = frozenset({"trust", "reject", "md5", "password", "scram-sha-256", "cert", "peer"})
CONNECTION_TYPES = frozenset({"local", "host", "hostssl", "hostnossl"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HbaError(Exception):
    """A line pgpool cannot use; str(error) names the file and line."""


@dataclass(frozen=True)
class NameList:
    """One database or user column: keywords plus explicit names."""

    all: bool = False
    sameuser: bool = False          # databases only: the database named like the user
    replication: bool = False       # databases only: physical replication connections
    names: frozenset[str] = frozenset()

    def matches(self, name: str, pair: str) -> bool:
        return self.all or (self.sameuser and name == pair) or name in self.names


@dataclass(frozen=True)
class HbaRule:
    line: int
    connection_type: str            # local, host, hostssl or hostnossl
    databases: NameList
    users: NameList
    network: Network | None         # None: any address (all), or a local rule
    method: str
    ident_map: str | None = None    # map= option: pg_ident.conf map for cert / peer

    def describe(self, source: str) -> str:
        return f"{source} line {self.line}"


@dataclass
class HbaConfig:
    """Rules in file order, the ident maps, and where they came from (for messages)."""

    rules: list[HbaRule] = field(default_factory=list)
    ident_maps: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    source: str = "auth_hba_file"

    def find_rule(self, *, address: str | None, is_tls: bool, database: str, user: str,
                  replication: str | None = None) -> HbaRule | None:
        """The first rule for this connection, or None (then: no entry, refuse).

        address None means a Unix socket; replication is None, "physical" or "logical". A
        physical replication connection matches only rules whose database column says
        replication; a logical one matches by its database like any other (PgBouncer 1.23+).
        """
        ip = ipaddress.ip_address(address.split("%", 1)[0]) if address is not None else None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for rule in self.rules:
            kind = rule.connection_type
            if ip is None:
                if kind != "local":
                    continue
            elif kind == "local" or (kind == "hostssl" and not is_tls) or (kind == "hostnossl" and is_tls):
                continue
            elif rule.network is not None and ip not in rule.network:
                continue
            if replication == "physical":
                if not rule.databases.replication:
                    continue
            elif not rule.databases.matches(database, user):
                continue
            if not rule.users.matches(user, database):
                continue
            return rule
        return None

    def ident_allows(self, map_name: str, system_user: str, database_user: str) -> bool:
        """pg_ident.conf: may `system_user` (certificate CN, OS user) log in as `database_user`?"""
        return any(system == system_user and (target is None or target == database_user)
                   for system, target in self.ident_maps.get(map_name, ()))


# ---- reading ---------------------------------------------------------------------------------------

def _tokens(line: str, where: str) -> list[tuple[str, bool]]:
    """Split a line as PgBouncer's tokenizer: (text, quoted) pairs and "," separators; '#' ends it."""
    tokens: list[tuple[str, bool]] = []
    i, n = 0, len(line)
    while i < n:
        char = line[i]
        if char.isspace():
            i += 1
        elif char == "#":
            break
        elif char == ",":
            tokens.append((",", False))
            i += 1
        elif char == '"':
            quoted = read_quoted(line, i)
            if quoted is None:
                raise HbaError(f"{where}: unterminated quoted string")
            text, i = quoted
            tokens.append((text, True))
        else:
            start = i
            while i < n and not line[i].isspace() and line[i] not in ',#"':
                i += 1
            tokens.append((line[start:i], False))
    return tokens


def _read_names(tokens: list[tuple[str, bool]], pos: int, *, is_db: bool, base: Path | None,
                where: str) -> tuple[NameList, int]:
    flags = {"all": False, "sameuser": False, "replication": False}
    names: set[str] = set()
    while True:
        if pos >= len(tokens) or tokens[pos][0] == ",":
            raise HbaError(f"{where}: missing {'database' if is_db else 'user'} name")
        text, quoted = tokens[pos]
        pos += 1
        keyword = text.lower() if not quoted else ""
        if keyword == "all":
            flags["all"] = True
        elif is_db and keyword in ("sameuser", "replication"):
            flags[keyword] = True
        elif keyword in ("samerole", "samegroup"):
            raise HbaError(f"{where}: {keyword} is not supported (as in PgBouncer)")
        elif not quoted and text.startswith("+"):
            raise HbaError(f"{where}: group membership ({text}) is not supported (as in PgBouncer)")
        elif not quoted and text.startswith("/"):
            raise HbaError(f"{where}: regular expressions ({text}) are not supported (as in PgBouncer)")
        elif not quoted and text.startswith("@"):
            names.update(_read_name_file(text[1:], base, where))
        else:
            names.add(text)
        if pos < len(tokens) and tokens[pos][0] == "," and not tokens[pos][1]:
            pos += 1
            continue
        return NameList(flags["all"], flags["sameuser"], flags["replication"], frozenset(names)), pos


def _read_name_file(name: str, base: Path | None, where: str) -> set[str]:
    path = Path(name)
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise HbaError(f"{where}: cannot read @{name} ({path}): {error.strerror or error}") from None
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        for token, _quoted in _tokens(line, f"{path} line {number}"):
            if token != ",":
                names.add(token)
    return names


def _read_network(tokens: list[tuple[str, bool]], pos: int, where: str) -> tuple[Network | None, int]:
    if pos >= len(tokens):
        raise HbaError(f"{where}: missing address")
    text = tokens[pos][0]
    pos += 1
    if text.lower() == "all":
        return None, pos
    if text.lower() in ("samehost", "samenet"):
        raise HbaError(f"{where}: {text} is not supported (as in PgBouncer); write the addresses")
    try:
        if "/" in text:
            return ipaddress.ip_network(text, strict=False), pos
        if pos >= len(tokens):
            raise HbaError(f"{where}: address {text} needs a /prefix length or a mask")
        mask = tokens[pos][0]
        pos += 1
        return ipaddress.ip_network(f"{text}/{mask}", strict=False), pos
    except ValueError:
        raise HbaError(f"{where}: not an IP address with a prefix length or mask: {text} "
                       f"(host names are not supported, as in PgBouncer)") from None


def parse_hba(text: str, source: str = "auth_hba_file", base: Path | None = None,
              ident_maps: dict[str, list[tuple[str, str | None]]] | None = None) -> HbaConfig:
    """Every rule of a pg_hba.conf text, or HbaError naming the first line pgpool cannot use.

    PgBouncer skips such a line with a warning; pgpool refuses the file, because a skipped
    reject line would let in what it was written to keep out.
    """
    config = HbaConfig(ident_maps=dict(ident_maps or {}), source=source)
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{source} line {number}"
        tokens = _tokens(line, where)
        if not tokens:
            continue
        kind = tokens[0][0].lower()
        if kind not in CONNECTION_TYPES:
            extra = " (GSSAPI encryption is not supported)" if kind.startswith("hostgss") or \
                kind.startswith("hostnogss") else ""
            raise HbaError(f"{where}: unknown connection type {tokens[0][0]!r}{extra}")
        databases, pos = _read_names(tokens, 1, is_db=True, base=base, where=where)
        users, pos = _read_names(tokens, pos, is_db=False, base=base, where=where)
        network: Network | None = None
        if kind != "local":
            network, pos = _read_network(tokens, pos, where)
        if pos >= len(tokens):
            raise HbaError(f"{where}: missing authentication method")
        method = tokens[pos][0].lower()
        pos += 1
        if method not in METHODS:
            raise HbaError(f"{where}: unsupported authentication method {method!r}; pgpool supports "
                           f"{', '.join(sorted(METHODS))}")
        ident_map = None
        for option, _quoted in tokens[pos:]:
            key, eq, value = option.partition("=")
            if key != "map" or not eq or not value:
                raise HbaError(f"{where}: unsupported option {option!r} (only map=NAME)")
            if value not in config.ident_maps:
                raise HbaError(f"{where}: ident map {value!r} is not in auth_ident_file")
            ident_map = value
        config.rules.append(HbaRule(number, kind, databases, users, network, method, ident_map))
    return config


def parse_ident(text: str, source: str = "auth_ident_file") -> dict[str, list[tuple[str, str | None]]]:
    """pg_ident.conf: map name -> [(system user, database user or None for all)]."""
    maps: dict[str, list[tuple[str, str | None]]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{source} line {number}"
        tokens = _tokens(line, where)
        if not tokens:
            continue
        if len(tokens) != 3 or any(token == "," for token, quoted in tokens if not quoted):
            raise HbaError(f"{where}: expected MAPNAME SYSTEM-USERNAME DATABASE-USERNAME")
        (map_name, _), (system, system_quoted), (target, target_quoted) = tokens
        if not system_quoted and system.startswith("/"):
            raise HbaError(f"{where}: regular expressions ({system}) are not supported (as in PgBouncer)")
        all_users = not target_quoted and target.lower() == "all"
        maps.setdefault(map_name, []).append((system, None if all_users else target))
    return maps


def load_hba(hba_file: Path, ident_file: Path | None = None) -> HbaConfig:
    """Read auth_ident_file (if any), then auth_hba_file; HbaError on anything unusable."""
    maps: dict[str, list[tuple[str, str | None]]] = {}
    if ident_file is not None:
        maps = parse_ident(_read(ident_file), str(ident_file))
    return parse_hba(_read(hba_file), str(hba_file), hba_file.parent, maps)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise HbaError(f"cannot read {path}: {error.strerror or error}") from None
