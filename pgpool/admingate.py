"""The way into the admin console: which databases are the console's, who may open it, its welcome.

Owns: the virtual database names (pgbouncer, pgpool), the refusals before a console opens
(replication connections; a build without the console) and the welcome a console client gets.
App hands one to every client (`ClientHost.admin_gate`) with the console factory cli.py gave it.
Must not: import the console (admin.py sits above the data plane); it is handed the factory.
"""

from __future__ import annotations

from typing import Any, Callable

from . import auth
from .protocol import messages as m
from .protocol.errors import FEATURE_NOT_SUPPORTED, INVALID_CATALOG_NAME, ProtocolError

ADMIN_DATABASES = ("pgbouncer", "pgpool")

# What a console client is told at login: a server of its own kind, and no cancel key.
ADMIN_WELCOME = b"".join((m.parameter_status("server_version", "15.0 (pgpool)"),
                          m.parameter_status("client_encoding", "UTF8"),
                          m.parameter_status("server_encoding", "UTF8"),
                          m.parameter_status("DateStyle", "ISO, MDY"),
                          m.parameter_status("standard_conforming_strings", "on"),
                          m.backend_key_data(0, 0), m.READY_FOR_QUERY_IDLE))


class AdminGate:
    __slots__ = ("open_console",)

    def __init__(self, open_console: Callable[[Any, auth.Credentials], Any] | None):
        self.open_console = open_console    # (client, creds) -> the console session; None: no console

    def open(self, client: Any, creds: auth.Credentials) -> Any:
        """The console session for an authenticated client of a virtual database."""
        if client.replication:
            raise ProtocolError(FEATURE_NOT_SUPPORTED, "replication connections to the admin console are not supported")
        if self.open_console is None:
            raise ProtocolError(INVALID_CATALOG_NAME, "the admin console is not available in this build")
        return self.open_console(client, creds)
