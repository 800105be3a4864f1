"""Host lists, DNS and server roles: which address the next server connection of a pool tries.

Owns: PgBouncer's `host=a,b,c` with `load_balance_hosts` (round-robin: each new connection starts
one host further; disable: always in the listed order, first that works), a small DNS cache
bounded by `dns_max_ttl` (answers) and `dns_nxdomain_ttl` (failures), and libpq's
`target_session_attrs` judged from what a logged-in server reports (`in_hot_standby`,
`default_transaction_read_only`; PostgreSQL 14+) or, on older servers, from one query.
Must not open server connections or know about clients: pool.py walks the plan this module gives.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import DatabaseEntry, Settings

TARGET_SESSION_ATTRS = ("any", "read-write", "primary", "read-only", "standby", "prefer-standby")
# Run on a server that reports neither in_hot_standby nor default_transaction_read_only (< PG 14).
ROLE_QUERY = ("SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN 'on' ELSE 'off' END || ',' || "
              "pg_catalog.current_setting('transaction_read_only')")


@dataclass(frozen=True, slots=True)
class Role:
    standby: bool      # in hot standby (recovery)
    read_only: bool    # standby, or default_transaction_read_only on

    @classmethod
    def from_reported(cls, reported: dict[str, str]) -> "Role | None":
        """The role a server reported at login; None when it reports too little (PostgreSQL < 14)."""
        hot = reported.get("in_hot_standby")
        default_ro = reported.get("default_transaction_read_only")
        if hot is None or default_ro is None:
            return None
        standby = hot == "on"
        return cls(standby, standby or default_ro == "on")

    @classmethod
    def from_query(cls, row: str | None) -> "Role":
        recovery, _, read_only = (row or "off,off").partition(",")
        standby = recovery == "on"
        return cls(standby, standby or read_only == "on")


def accepts(attrs: str, role: Role, *, second_pass: bool = False) -> bool:
    """Does a server of this role satisfy target_session_attrs (libpq's meanings)?

    prefer-standby takes standbys on the first pass over the hosts and anything on the second.
    """
    if attrs == "any":
        return True
    if attrs == "read-write":
        return not role.read_only
    if attrs == "primary":
        return not role.standby
    if attrs == "read-only":
        return role.read_only
    if attrs == "standby":
        return role.standby
    if attrs == "prefer-standby":
        return role.standby or second_pass
    raise ValueError(attrs)


def unfit(attrs: str, reported: dict[str, str]) -> bool:
    """A logged-in server whose reported role no longer fits (a primary demoted, a standby promoted)."""
    if attrs == "any":
        return False
    role = Role.from_reported(reported)
    return role is not None and not accepts(attrs, role, second_pass=True)


def needs_writer(attrs: str) -> bool:
    return attrs in ("read-write", "primary")


def split_hosts(host: str) -> list[str]:
    return [part.strip() for part in host.split(",") if part.strip()]


class DnsCache:
    """getaddrinfo answers kept at most dns_max_ttl seconds, failures dns_nxdomain_ttl seconds."""

    __slots__ = ("_answers",)

    def __init__(self) -> None:
        self._answers: dict[tuple[str, int], tuple[float, list[str] | OSError]] = {}

    async def resolve(self, host: str, port: int, settings: "Settings") -> list[str]:
        """Addresses of `host` (IPs pass through); raises OSError (cached) when it does not resolve."""
        key = (host, port)
        now = time.monotonic()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > now:
            if isinstance(cached[1], OSError):
                raise cached[1]
            return cached[1]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as error:
            if settings.dns_nxdomain_ttl:
                self._answers[key] = (now + settings.dns_nxdomain_ttl, error)
            raise
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if settings.dns_max_ttl:
            self._answers[key] = (now + settings.dns_max_ttl, addresses)
        return addresses

    def forget(self, host: str) -> None:
        """Ask DNS again next time (a failover moved the name)."""
        for key in [key for key in self._answers if key[0] == host]:
            del self._answers[key]

    def resolved(self) -> list[tuple[str, int, list[str], float]]:
        """(host, port, addresses, seconds left) of the names that resolved, for SHOW DNS_HOSTS."""
        now = time.monotonic()
        return [(host, port, value, expires - now) for (host, port), (expires, value) in self._answers.items()
                if not isinstance(value, OSError)]

    def entries(self) -> list[tuple[str, int, str, float]]:
        """(host, port, addresses or error, seconds left) for SHOW DNS_HOSTS-like views."""
        now = time.monotonic()
        return [(host, port, str(value) if isinstance(value, OSError) else ",".join(value), expires - now)
                for (host, port), (expires, value) in self._answers.items()]


class HostPlan:
    """Per pool: the order in which the next connection tries the hosts of its database entry."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def order(self, db: "DatabaseEntry") -> list[str]:
        hosts = split_hosts(db.host) or ["127.0.0.1"]
        if db.load_balance_hosts == "disable" or len(hosts) == 1:
            return hosts
        start = self._next % len(hosts)
        self._next += 1
        return hosts[start:] + hosts[:start]

    @staticmethod
    def passes(db: "DatabaseEntry") -> int:
        return 2 if db.target_session_attrs == "prefer-standby" else 1
