"""Host lists, roles and the DNS cache (pgpool/hosts.py), without a server."""

from __future__ import annotations

import asyncio

import pytest

from pgpool.config import DatabaseEntry, Settings
from pgpool.hosts import TARGET_SESSION_ATTRS, DnsCache, HostPlan, Role, accepts, split_hosts

PRIMARY = Role(standby=False, read_only=False)
READ_ONLY_PRIMARY = Role(standby=False, read_only=True)
STANDBY = Role(standby=True, read_only=True)


@pytest.mark.parametrize("attrs, allowed", [
    ("any", {PRIMARY, READ_ONLY_PRIMARY, STANDBY}),
    ("read-write", {PRIMARY}),
    ("primary", {PRIMARY, READ_ONLY_PRIMARY}),
    ("read-only", {READ_ONLY_PRIMARY, STANDBY}),
    ("standby", {STANDBY}),
    ("prefer-standby", {STANDBY}),
])
def test_accepts_follows_libpq(attrs, allowed):
    assert {r for r in (PRIMARY, READ_ONLY_PRIMARY, STANDBY) if accepts(attrs, r)} == allowed


def test_prefer_standby_takes_anything_on_the_second_pass():
    assert accepts("prefer-standby", PRIMARY, second_pass=True)
    assert HostPlan.passes(DatabaseEntry(name="d", target_session_attrs="prefer-standby")) == 2
    assert all(HostPlan.passes(DatabaseEntry(name="d", target_session_attrs=a)) == 1
               for a in TARGET_SESSION_ATTRS if a != "prefer-standby")


def test_role_from_reported_parameters_and_from_query():
    assert Role.from_reported({"in_hot_standby": "off", "default_transaction_read_only": "off"}) == PRIMARY
    assert Role.from_reported({"in_hot_standby": "off", "default_transaction_read_only": "on"}) == READ_ONLY_PRIMARY
    assert Role.from_reported({"in_hot_standby": "on", "default_transaction_read_only": "off"}) == STANDBY
    assert Role.from_reported({"server_version": "13.4"}) is None   # before PostgreSQL 14: ask
    assert Role.from_query("on,on") == STANDBY and Role.from_query("off,on") == READ_ONLY_PRIMARY
    assert Role.from_query("off,off") == PRIMARY


def test_round_robin_rotates_and_disable_keeps_the_order():
    plan = HostPlan()
    db = DatabaseEntry(name="d", host="a, b,c")
    assert [plan.order(db) for _ in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    fixed = DatabaseEntry(name="d", host="a,b,c", load_balance_hosts="disable")
    assert [plan.order(fixed) for _ in range(2)] == [["a", "b", "c"]] * 2
    assert split_hosts(" , ") == [] and plan.order(DatabaseEntry(name="d", host="x")) == ["x"]


async def test_dns_cache_respects_both_ttls(monkeypatch):
    calls: list[str] = []

    async def fake_getaddrinfo(host, port, **kw):
        calls.append(host)
        if host == "gone.invalid":
            raise OSError(-2, "Name or service not known")
        return [(2, 1, 6, "", ("10.0.0.%d" % len(calls), port))]

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
    cache = DnsCache()
    settings = Settings(dns_max_ttl=60, dns_nxdomain_ttl=60)
    first = await cache.resolve("db.example", 5432, settings)
    assert await cache.resolve("db.example", 5432, settings) == first and calls == ["db.example"]
    cache.forget("db.example")   # a 25006: ask again
    assert await cache.resolve("db.example", 5432, settings) != first
    for _ in range(2):
        with pytest.raises(OSError):
            await cache.resolve("gone.invalid", 5432, settings)
    assert calls.count("gone.invalid") == 1
    uncached = Settings(dns_max_ttl=0, dns_nxdomain_ttl=0)
    await cache.resolve("fresh.example", 5432, uncached)
    await cache.resolve("fresh.example", 5432, uncached)
    assert calls.count("fresh.example") == 2


def test_unfit_after_a_role_change():
    from pgpool.hosts import unfit
    demoted = {"in_hot_standby": "off", "default_transaction_read_only": "on"}
    promoted = {"in_hot_standby": "off", "default_transaction_read_only": "off"}
    assert unfit("read-write", demoted) and not unfit("primary", demoted)
    assert unfit("standby", promoted) and not unfit("prefer-standby", promoted)
    assert not unfit("any", demoted) and not unfit("read-write", {})   # unknown: keep (checked at login)
