"""TCP options of client and server sockets: TCP_NODELAY, keepalive, TCP_USER_TIMEOUT.

Owns: turning PgBouncer's tcp_keepalive / tcp_keepidle / tcp_keepintvl / tcp_keepcnt /
tcp_user_timeout settings into setsockopt calls, once per connection. Must not hold
connection state; options a platform lacks are skipped (0 always means "the OS default").
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings

# (setting, socket option) pairs applied when the setting is non-zero and the OS has the option.
_TCP_NUMERIC = tuple((name, option) for name, option in (
    ("tcp_keepidle", getattr(socket, "TCP_KEEPIDLE", None)),
    ("tcp_keepintvl", getattr(socket, "TCP_KEEPINTVL", None)),
    ("tcp_keepcnt", getattr(socket, "TCP_KEEPCNT", None)),
    ("tcp_user_timeout", getattr(socket, "TCP_USER_TIMEOUT", None)),
) if option is not None)


def apply_tcp_options(sock: socket.socket | None, settings: "Settings") -> None:
    """Set pgpool's options on a connected TCP socket (Unix sockets and None are left alone)."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if settings.tcp_keepalive else 0)
    for name, option in _TCP_NUMERIC:
        value = getattr(settings, name)
        if value and (settings.tcp_keepalive or name == "tcp_user_timeout"):
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
