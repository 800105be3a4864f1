"""The server login retry schedule (pool.login_retry_delay) and the transient/permanent split."""

from __future__ import annotations

from hypothesis import given, strategies as st

from pgpool.pool import LOGIN_RETRY_FIRST, LOGIN_RETRY_LAST, is_transient, login_retry_delay
from pgpool.protocol.errors import ProtocolError


@given(st.integers(1, 10_000), st.floats(0, 3600), st.floats(0, 1))
def test_delay_is_bounded_and_never_zero(failures, server_login_retry, rand):
    delay = login_retry_delay(failures, server_login_retry, rand)
    assert LOGIN_RETRY_FIRST / 2 <= delay <= max(LOGIN_RETRY_FIRST, min(LOGIN_RETRY_LAST, server_login_retry))


def test_schedule_grows_from_first_to_cap():
    slowest = [login_retry_delay(n, 15.0, 1.0) for n in range(1, 12)]
    assert slowest[0] == LOGIN_RETRY_FIRST
    assert slowest == sorted(slowest) and slowest[-1] == LOGIN_RETRY_LAST
    # Jitter: the same attempt is spread over [half, full] of its step.
    assert login_retry_delay(3, 15.0, 0.0) == login_retry_delay(3, 15.0, 1.0) / 2


def test_a_small_server_login_retry_caps_the_schedule():
    assert login_retry_delay(50, 0.2, 1.0) == 0.2
    assert login_retry_delay(50, 0.0, 1.0) == LOGIN_RETRY_FIRST   # 0 never means a busy loop


def test_transient_and_permanent_causes():
    assert is_transient(ProtocolError("57P03", "the database system is starting up"))
    assert is_transient(ProtocolError("53300", "sorry, too many clients already"))
    assert is_transient(ProtocolError("08006", "could not connect: Connection refused", transient=True))
    assert not is_transient(ProtocolError("28P01", "password authentication failed"))
    assert not is_transient(ProtocolError("3D000", "database does not exist"))
    assert not is_transient(ProtocolError("08006", "certificate verify failed"))   # TLS: not flagged
