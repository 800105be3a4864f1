"""pgpool.hba: pg_hba.conf / pg_ident.conf parsing and first-match rule choice, without sockets.

Cases follow PgBouncer's src/hba.c and PostgreSQL's pg_hba.conf documentation: the first
matching line decides; hostssl/hostnossl look at TLS; "replication" matches only physical
replication; sameuser; CIDR and address + mask; what PgBouncer does not support is refused.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from pgpool.hba import HbaError, load_hba, parse_hba, parse_ident

HBA = """# TYPE     DATABASE        USER            ADDRESS             METHOD
local      all             all                                 peer
hostssl    secure          all             0.0.0.0/0           cert map=certs
hostnossl  secure          all             all                 reject
host       all             blocked         all                 reject
host       "All", app      app,"Bob"       127.0.0.1/32        scram-sha-256
host       sameuser        all             10.0.0.0 255.0.0.0  md5
host       replication     repl            ::1/128             trust
host       all             all             ::1/128             password   # trailing comment
host       all             @admins         192.168.1.0/24      trust
"""

IDENT = """
certs   client.example.com   app
certs   "ops team"           all
"""


@pytest.fixture
def hba(tmp_path):
    (tmp_path / "admins").write_text("alice, bob\ncarol\n")
    return parse_hba(HBA, "pg_hba.conf", tmp_path, parse_ident(IDENT))


def method(hba, address, database, user, *, tls=False, replication=None):
    rule = hba.find_rule(address=address, is_tls=tls, database=database, user=user, replication=replication)
    return None if rule is None else (rule.method, rule.line)


def test_first_matching_line_decides(hba):
    assert method(hba, "127.0.0.1", "app", "app") == ("scram-sha-256", 6)
    assert method(hba, "127.0.0.1", "app", "blocked") == ("reject", 5)     # the earlier reject wins
    assert method(hba, "127.0.0.1", "All", "Bob") == ("scram-sha-256", 6)  # quoted: case kept, not a keyword
    assert method(hba, "127.0.0.1", "all", "app") is None                  # "All" quoted is not the keyword
    assert method(hba, "127.0.0.1", "app", "bob") is None                  # names are case-sensitive
    assert method(hba, "127.0.0.2", "app", "app") is None                  # /32 is one address


def test_local_rules_only_for_unix_sockets(hba):
    assert method(hba, None, "app", "app") == ("peer", 2)
    assert method(hba, "127.0.0.1", "other", "nobody") is None


def test_hostssl_and_hostnossl_follow_the_tls_flag(hba):
    assert method(hba, "203.0.113.9", "secure", "app", tls=True) == ("cert", 3)
    assert method(hba, "203.0.113.9", "secure", "app", tls=False) == ("reject", 4)
    rule = hba.find_rule(address="203.0.113.9", is_tls=True, database="secure", user="app")
    assert rule.ident_map == "certs"


def test_sameuser_and_netmask(hba):
    assert method(hba, "10.1.2.3", "carol", "carol") == ("md5", 7)
    assert method(hba, "10.1.2.3", "carol", "dave") is None
    assert method(hba, "11.1.2.3", "carol", "carol") is None


def test_replication_keyword_matches_physical_replication_only(hba):
    assert method(hba, "::1", "app", "repl", replication="physical") == ("trust", 8)
    # "all" does not cover physical replication: only the replication line can.
    assert method(hba, "::1", "app", "other", replication="physical") is None
    # Logical replication names a database and matches like a normal connection.
    assert method(hba, "::1", "app", "repl", replication="logical") == ("password", 9)
    assert method(hba, "::1", "replication", "x") == ("password", 9)


def test_at_file_lists_and_ipv4_mapped_addresses(hba):
    assert method(hba, "192.168.1.77", "any", "carol") == ("trust", 10)
    assert method(hba, "::ffff:192.168.1.77", "any", "alice") == ("trust", 10)
    assert method(hba, "192.168.1.77", "any", "mallory") is None


def test_ident_map(hba):
    assert hba.ident_allows("certs", "client.example.com", "app")
    assert not hba.ident_allows("certs", "client.example.com", "postgres")
    assert hba.ident_allows("certs", "ops team", "postgres")      # all
    assert not hba.ident_allows("nomap", "client.example.com", "app")


@pytest.mark.parametrize("line, message", [
    ("host all all 127.0.0.1/32 ldap ldapserver=x", "unsupported authentication method 'ldap'"),
    ("host all all 127.0.0.1/32 gss", "unsupported authentication method 'gss'"),
    ("hostgssenc all all all trust", "GSSAPI encryption is not supported"),
    ("hots all all all trust", "unknown connection type 'hots'"),
    ("host samerole all all trust", "samerole is not supported"),
    ("host all +admins all trust", "group membership (+admins) is not supported"),
    ("host all /^a all trust", "regular expressions (/^a) are not supported"),
    ("host all all db.example.com trust", "host names are not supported"),
    ("host all all samenet trust", "samenet is not supported"),
    ("host all all 127.0.0.1 trust", "not an IP address with a prefix length or mask"),
    ("host all all 127.0.0.1/32", "missing authentication method"),
    ("host all all 127.0.0.1/32 trust clientcert=verify-full", "unsupported option 'clientcert=verify-full'"),
    ("host all all 127.0.0.1/32 cert map=nosuch", "ident map 'nosuch' is not in auth_ident_file"),
    ('host "unterminated all 127.0.0.1/32 trust', "unterminated quoted string"),
    ("host all", "missing user name"),
])
def test_what_pgpool_cannot_use_is_refused_with_file_and_line(line, message):
    with pytest.raises(HbaError) as err:
        parse_hba(f"# header\n{line}\n", "hba.conf")
    assert str(err.value).startswith("hba.conf line 2: ") and message in str(err.value)


def test_bad_ident_lines_are_refused():
    with pytest.raises(HbaError, match="ident.conf line 1: expected MAPNAME SYSTEM-USERNAME DATABASE-USERNAME"):
        parse_ident("m onlytwo\n", "ident.conf")
    with pytest.raises(HbaError, match="regular expressions"):
        parse_ident("m /^(.*)$ app\n", "ident.conf")


def test_load_hba_reads_both_files(tmp_path):
    (tmp_path / "ident").write_text("m cn app\n")
    (tmp_path / "hba").write_text("hostssl all all all cert map=m\n")
    config = load_hba(tmp_path / "hba", tmp_path / "ident")
    assert config.rules[0].ident_map == "m" and config.ident_allows("m", "cn", "app")
    with pytest.raises(HbaError, match="cannot read"):
        load_hba(tmp_path / "missing")


@given(st.ip_addresses(v=4), st.integers(0, 32), st.ip_addresses(v=4))
def test_cidr_matching_agrees_with_masking_the_address(base, prefix, client):
    # PostgreSQL compares (client ^ base) & mask; host bits set in the base are ignored.
    config = parse_hba(f"host all all {base}/{prefix} trust\n")
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    expected = (int(client) ^ int(base)) & mask == 0
    found = config.find_rule(address=str(client), is_tls=False, database="d", user="u") is not None
    assert found == expected


@given(st.ip_addresses(v=6), st.integers(0, 128), st.ip_addresses(v=6))
def test_ipv6_cidr_matching(base, prefix, client):
    config = parse_hba(f"host all all {base}/{prefix} trust\n")
    mask = ((1 << 128) - 1) ^ ((1 << (128 - prefix)) - 1)
    expected = (int(client) ^ int(base)) & mask == 0
    if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
        return   # matched as its IPv4 address, as the kernel reports it
    assert (config.find_rule(address=str(client), is_tls=False, database="d", user="u") is not None) == expected
