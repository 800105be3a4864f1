"""The HTTP endpoint on metrics_addr:metrics_port: /metrics, /healthz and /readyz.

Owns: a minimal HTTP/1.1 server on asyncio streams (GET and HEAD, one request per
connection: Prometheus and kubelet probes need nothing more, so no web framework) and the
readiness rule with its cache. Must not touch pool state: readiness only reads pools and, when
a database has no logged-in server, asks PostgreSQL for a login prompt.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import TYPE_CHECKING

from prometheus_client.exposition import choose_encoder

from .metrics import make_registry
from .protocol import messages as m
from .protocol.errors import parse_error_fields

if TYPE_CHECKING:
    from .app import App
    from .config import DatabaseEntry

log = logging.getLogger("pgpool.http")

MAX_REQUEST_HEAD = 16 * 1024
REQUEST_TIMEOUT = 10.0
PROBE_TIMEOUT = 2.0
# SQLSTATE classes meaning "no server connection can be had now": connection exception,
# invalid catalog name (the database is gone), insufficient resources, operator intervention
# (starting up, shutting down). Any other answer, even a password refusal, shows a live server.
NOT_READY_CLASSES = ("08", "3D", "53", "57")

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
            503: "Service Unavailable"}


class HttpEndpoint:
    def __init__(self, app: "App"):
        self.app = app
        self.registry = make_registry(app)
        self.readiness = Readiness(app)
        self.servers: list[asyncio.AbstractServer] = []

    async def start(self) -> None:
        settings = self.app.settings
        for host in [h.strip() for h in settings.metrics_addr.split(",") if h.strip()]:
            server = await asyncio.start_server(self.handle, None if host == "*" else host, settings.metrics_port,
                                                reuse_address=True)
            self.servers.append(server)
            for sock in server.sockets:
                log.info("metrics and health on http://%s:%s/metrics, /healthz, /readyz", *sock.getsockname()[:2])

    def close(self) -> None:
        for server in self.servers:
            server.close()
        self.servers.clear()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                status, content_type, body, method = await self.respond(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        except Exception as error:   # a bug here must cost one HTTP request, nothing more
            log.exception("HTTP request failed")
            status, content_type, body, method = 500, "text/plain", f"internal error: {error!r}\n".encode(), "GET"
        headers = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                   f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
        writer.write(headers.encode("ascii") + (b"" if method == "HEAD" else body))
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def respond(self, head: bytes) -> tuple[int, str, bytes, str]:
        if len(head) > MAX_REQUEST_HEAD:
            return 400, "text/plain", b"request too large\n", "GET"
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split()
        if len(parts) != 3:
            return 400, "text/plain", b"bad request line\n", "GET"
        method, target = parts[0], parts[1].split("?", 1)[0]
        headers = {name.strip().lower(): value.strip() for name, _, value in
                   (line.partition(":") for line in header_lines if line)}
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n", method
        if target == "/metrics":
            # Prometheus' Accept header picks the format: classic text 0.0.4 unless it asks for more.
            encode, content_type = choose_encoder(headers.get("accept", ""))
            return 200, content_type, encode(self.registry), method
        if target == "/healthz":
            return 200, "text/plain", b"ok\n", method
        if target == "/readyz":
            ready, reasons = await self.readiness.check()
            body = ("ready\n" if ready else "not ready: " + "; ".join(reasons) + "\n").encode()
            return (200 if ready else 503), "text/plain", body, method
        if target == "/":
            return 200, "text/plain", b"pgpool: /metrics /healthz /readyz\n", method
        return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n", method


class Readiness:
    """Ready = listening, not shutting down, and each database can give a server connection.

    The database part is cached for readyz_cache_seconds and shared by concurrent probes;
    listening and shutting down are read fresh, so a drain turns /readyz unready at once.
    """

    def __init__(self, app: "App"):
        self.app = app
        self.cached: tuple[float, list[str]] | None = None
        self.running: asyncio.Task | None = None

    async def check(self) -> tuple[bool, list[str]]:
        app = self.app
        if app.shutting_down:
            return False, ["shutting down"]
        if not app.listeners:
            return False, ["not listening"]
        now = time.monotonic()
        if self.cached is not None and now - self.cached[0] < app.settings.readyz_cache_seconds:
            reasons = self.cached[1]
        else:
            if self.running is None:
                self.running = asyncio.get_running_loop().create_task(self._databases())
            task = self.running
            try:
                reasons = await asyncio.shield(task)
            finally:
                if self.running is task and task.done():
                    self.running = None
            self.cached = (time.monotonic(), reasons)
        return not reasons, reasons

    async def _databases(self) -> list[str]:
        checks = [self._database(name, entry, user) for name, entry, user in self._targets()]
        results = await asyncio.gather(*checks)
        return [reason for reason in results if reason]

    def _targets(self) -> list[tuple[str, "DatabaseEntry", str]]:
        """Every configured database plus those reached through "*", with a user to probe as."""
        app = self.app
        targets: dict[str, tuple["DatabaseEntry", str]] = {}
        for name, entry in app.settings.databases.items():
            if name != "*":
                targets[name] = (entry, entry.user or "")
        for pool in app.pools.values():
            entry, user = targets.get(pool.db.name, (pool.db, ""))
            targets[pool.db.name] = (entry, user or pool.server_user)
        return [(name, entry, user or "postgres") for name, (entry, user) in targets.items()]

    async def _database(self, name: str, entry: "DatabaseEntry", user: str) -> str | None:
        pools = self.app.pools_of(name)
        if any(len(p.idle) + len(p.active) + len(p.maintenance) for p in pools):
            return None     # a pool already holds a logged-in server: nothing to ask
        retry = self.app.settings.server_login_retry
        for pool in pools:
            if pool.login_error is not None and time.monotonic() - pool.login_error_at < retry:
                return f"{name}: server login failing: {pool.login_error.message}"
        problem = await probe_server(entry.host, entry.port, user, entry.dbname or name)
        return f"{name}: {problem}" if problem else None


async def probe_server(host: str, port: int, user: str, dbname: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when PostgreSQL answers a StartupMessage with an authentication request, else why not.

    Cheap by design: one TCP connection, one message each way, closed before any password.
    """
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            if host.startswith("/"):   # a Unix socket directory, as in a [databases] entry
                reader, writer = await asyncio.open_unix_connection(f"{host.rstrip('/')}/.s.PGSQL.{port}")
            else:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(m.startup_message({"user": user, "database": dbname, "application_name": "pgpool-readyz"}))
            head = await reader.readexactly(5)
            if head[:1] == b"R":
                return None
            if head[:1] != b"E":
                return f"unexpected reply {head[:1]!r} from {host}:{port}"
            length = struct.unpack("!I", head[1:])[0]
            fields = parse_error_fields(await reader.readexactly(min(max(length - 4, 0), 8192)))
            sqlstate = fields.get("C", "")
            if sqlstate[:2] in NOT_READY_CLASSES:
                return f"{host}:{port} refuses connections: {fields.get('M', '')} ({sqlstate})"
            return None
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g}s"
    except (OSError, asyncio.IncompleteReadError) as error:
        return f"cannot reach {host}:{port}: {error}"
    finally:
        if writer is not None:
            writer.close()


async def start(app: "App") -> HttpEndpoint:
    endpoint = HttpEndpoint(app)
    await endpoint.start()
    return endpoint
