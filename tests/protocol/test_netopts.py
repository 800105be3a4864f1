"""TCP options as PgBouncer sets them, read back from a real socket (no connection needed)."""

from __future__ import annotations

import socket

from pgpool.config import Settings
from pgpool.netopts import apply_tcp_options


def _options(settings: Settings) -> dict[str, int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        apply_tcp_options(sock, settings)
        return {
            "nodelay": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "intvl": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "cnt": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }


def test_every_setting_reaches_the_socket():
    got = _options(Settings(tcp_keepidle=7, tcp_keepintvl=3, tcp_keepcnt=2, tcp_user_timeout=1500))
    assert got == {"nodelay": 1, "keepalive": 1, "idle": 7, "intvl": 3, "cnt": 2, "user_timeout": 1500}


def test_defaults_are_pgbouncers_keepalive_on_os_timings():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as plain:
        os_idle = plain.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
    got = _options(Settings())
    assert got["keepalive"] == 1 and got["idle"] == os_idle and got["user_timeout"] == 0


def test_keepalive_off_leaves_probe_timings_alone_but_not_user_timeout():
    got = _options(Settings(tcp_keepalive=False, tcp_keepidle=7, tcp_user_timeout=900))
    assert got["keepalive"] == 0 and got["idle"] != 7 and got["user_timeout"] == 900


def test_unix_sockets_are_left_alone():
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        apply_tcp_options(sock, Settings(tcp_keepidle=7))
    apply_tcp_options(None, Settings())
