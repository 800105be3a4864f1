"""How a client proves who it is: its credentials, and the auth method it must pass.

Owns: the auth_file users (replaced whole by RELOAD), the auth_hba_file / auth_ident_file rules,
the credential lookup (auth_file first, then auth_query through its pool for users not in it),
and the method a client must pass: auth_type's, or with auth_type = hba the first matching
line's, with its peer (SO_PEERCRED) and cert (certificate common name) checks. App builds one
and hands it to every client (`ClientHost.client_auth`); a client asks it, never App, who it
may be. Holds no pool and no session.
"""

from __future__ import annotations

import pwd
import socket
import struct
from typing import Any, Protocol

from . import auth, hba, tls
from .config import SettingsHost
from .protocol.errors import INVALID_AUTHORIZATION_SPECIFICATION, ProtocolError


class AuthSubject(Protocol):
    """What a client shows (client.py's ClientConnection): its transport, names and kind."""
    transport: Any
    user: str
    database: str
    replication: str | None


class CredentialLookup(Protocol):
    """auth_query (authquery.py's AuthQuery): secrets of users not in auth_file, from the server."""
    async def lookup(self, settings: Any, auth_users: dict[str, str], database: str, user: str,
                     creds: auth.Credentials) -> auth.Credentials: ...
    def clear(self) -> None: ...


class ClientAuth:
    """Credentials and auth methods for clients (see the module docstring)."""
    __slots__ = ("host", "users", "hba", "auth_query")

    def __init__(self, host: SettingsHost, users: dict[str, str], hba_config: hba.HbaConfig | None,
                 auth_query: CredentialLookup):
        self.host = host
        self.users = users              # auth_file: user -> secret
        self.hba = hba_config           # auth_type = hba: the parsed rules, else None
        self.auth_query = auth_query

    def replace(self, users: dict[str, str], hba_config: hba.HbaConfig | None) -> None:
        """RELOAD read new files: new logins use them; cached auth_query answers are dropped."""
        self.users = users
        self.hba = hba_config
        self.auth_query.clear()

    async def credentials(self, user: str, database: str, *, admin: bool) -> auth.Credentials:
        """`user`'s secret: from auth_file, else (not for the admin console) from auth_query."""
        creds = auth.lookup_credentials(self.users, user)
        if not creds.known and not admin:
            creds = await self.auth_query.lookup(self.host.settings, self.users, database, user, creds)
        return creds

    def method_for(self, client: AuthSubject, creds: auth.Credentials) -> str:
        """The method a client must pass: auth_type's, or with auth_type = hba the first matching
        auth_hba_file line's ("trust" once a certificate login succeeded)."""
        settings = self.host.settings
        if settings.auth_type != "hba" or self.hba is None:
            return auth.choose_client_method(settings.auth_type, creds)
        transport = client.transport
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else None
        is_tls = transport.get_extra_info("ssl_object") is not None
        replication = getattr(client, "replication", None)
        rule = self.hba.find_rule(address=address, is_tls=is_tls, database=client.database, user=client.user,
                                  replication=replication)
        encryption = "SSL encryption" if is_tls else "no encryption"
        if rule is None:
            raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION,
                                f'no authentication method is found: no {self.hba.source} entry for host '
                                f'"{address or "local"}", user "{client.user}", database "{client.database}", '
                                f'{encryption}')
        where = rule.describe(self.hba.source)
        if rule.method == "reject":
            raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION,
                                f'login rejected: {where} rejects host "{address}", user "{client.user}", '
                                f'database "{client.database}", {encryption}')
        if rule.method == "cert":
            self._check_certificate(client, rule, is_tls, where)
            return "trust"
        if rule.method == "peer":
            self._check_peer(client, rule, where)
            return "trust"
        return auth.choose_client_method("plain" if rule.method == "password" else rule.method, creds)

    def _check_peer(self, client: AuthSubject, rule: hba.HbaRule, where: str) -> None:
        """peer (local lines): the Unix user at the other end of the socket is the user, or maps to it."""
        failed = f'peer authentication failed for user "{client.user}" ({where})'
        sock = client.transport.get_extra_info("socket")
        if sock is None or sock.family != socket.AF_UNIX:
            raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION, f"{failed}: not a Unix socket connection")
        uid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
        try:
            system_user = pwd.getpwuid(uid).pw_name
        except KeyError:
            raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION, f"{failed}: no user name for uid {uid}") from None
        allowed = (self.hba.ident_allows(rule.ident_map, system_user, client.user)  # type: ignore[union-attr]
                   if rule.ident_map else system_user == client.user)
        if not allowed:
            raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION,
                                f'{failed}: the socket belongs to Unix user "{system_user}"')

    def _check_certificate(self, client: AuthSubject, rule: hba.HbaRule, is_tls: bool, where: str) -> None:
        """cert: the TLS client certificate's common name is the user, or maps to it (map=)."""
        failed = f'certificate authentication failed for user "{client.user}" ({where})'
        if not is_tls:
            raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION, f"{failed}: the connection is not TLS")
        common_name = tls.certificate_user(client.transport.get_extra_info("peercert"))
        if common_name is None:
            raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION, f"{failed}: no client certificate")
        allowed = (self.hba.ident_allows(rule.ident_map, common_name, client.user)  # type: ignore[union-attr]
                   if rule.ident_map else common_name == client.user)
        if not allowed:
            raise ProtocolError(INVALID_AUTHORIZATION_SPECIFICATION,
                                f'{failed}: certificate common name "{common_name}" may not log in as this user')
