"""auth_query: secrets of users not in auth_file, looked up on the server, cached briefly.

Owns: running auth_query through a pool of auth_user (PgBouncer's auth_user / auth_query /
auth_dbname, global or per database), one lookup in flight per user (a burst of logins asks
once), and a short cache so a burst does not query per login while a changed password still
takes effect within seconds. Must not speak the wire protocol (a borrowed server runs the
query) or decide how a client authenticates (auth.py and client.py do).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Callable

from . import auth
from .protocol.errors import INVALID_AUTHORIZATION_SPECIFICATION, INVALID_CATALOG_NAME, ProtocolError

if TYPE_CHECKING:
    from .config import Settings
    from .pool import Pool

log = logging.getLogger("pgpool.auth")

CACHE_SECONDS = 10.0   # how long a looked-up secret (or its absence) is reused

Key = tuple[str, str, str, str]   # (auth database, auth_user, auth_query, user)


class AuthQuery:
    def __init__(self, get_pool: Callable[[str, str, auth.Credentials | None], "Pool"]):
        self._get_pool = get_pool
        self._cache: dict[Key, tuple[float, auth.Credentials]] = {}
        self._in_flight: dict[Key, asyncio.Future] = {}

    def clear(self) -> None:
        self._cache.clear()

    async def lookup(self, settings: "Settings", users: dict[str, str], database: str, user: str,
                     fallback: auth.Credentials) -> auth.Credentials:
        """`user`'s credentials from auth_query when the database entry (or the global setting)
        names an auth_user, else `fallback` (what auth_file gave)."""
        entry = settings.find_database(database)
        if entry is None:
            return fallback
        auth_user = entry.auth_user or settings.auth_user
        if not auth_user:
            return fallback
        key = (entry.auth_dbname or settings.auth_dbname or database, auth_user,
               entry.auth_query or settings.auth_query, user)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        future = self._in_flight.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_task(self._fetch(key, users))
            self._in_flight[key] = future
            future.add_done_callback(lambda _: self._in_flight.pop(key, None))
        return await asyncio.shield(future)

    async def _fetch(self, key: Key, users: dict[str, str]) -> auth.Credentials:
        database, auth_user, query, user = key
        try:
            pool = self._get_pool(database, auth_user, auth.lookup_credentials(users, auth_user))
        except ProtocolError as error:
            if error.sqlstate == INVALID_CATALOG_NAME:
                raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION,
                                    f'auth_query for user "{user}" cannot run: auth_dbname: {error.message}') from None
            raise
        server = await pool.borrow_server()
        try:
            error, _ = await server.run_query(auth.auth_query_sql(query, user))
            rows = list(server.injected_rows)
        finally:
            pool.release_server(server)
        if error is not None:
            log.error("pool %s: auth_query failed for user %r: %s (%s); users not in auth_file cannot log in "
                      "through it", pool.name, user, error.message, error.sqlstate)
            raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION,
                                f'auth_query failed for user "{user}" in pool {pool.name}: {error.message} '
                                f'(SQLSTATE {error.sqlstate})',
                                hint="see docs/tls-and-rds.md: auth_user needs a SECURITY DEFINER function "
                                     "where pg_authid is not readable")
        creds = auth.credentials_from_auth_query(user, rows)
        self._cache[key] = (time.monotonic() + CACHE_SECONDS, creds)
        return creds
