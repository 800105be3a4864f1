"""pgpool's settings: one pydantic-settings model with PgBouncer's names, meanings and defaults.

Owns: the `Settings` model and its `[databases]` / `[users]` entries, reading a pgpool TOML
file or an unchanged pgbouncer.ini, layering PGPOOL_<SETTING> environment variables and
`--set` overrides on top, turning every bad key or value into one user-facing `ConfigError`,
and knowing which settings a RELOAD / SIGHUP can change live.

Must not: open sockets, read the auth_file, configure logging or touch running pools. The
core decides what to do with a new `Settings`; `diff_settings` only tells it what changed.
"""

from __future__ import annotations

import argparse
import configparser
import difflib
import os
import sys
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "PGPOOL_"

# PgBouncer reserves this database name for its admin console; pgpool's console answers to it too.
ADMIN_DATABASE = "pgbouncer"


# PgBouncer's auth_query default: an expired password reads as NULL, so the login fails.
DEFAULT_AUTH_QUERY = ("SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END "
                      "FROM pg_authid WHERE rolname=$1 AND rolcanlogin")

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]


class PoolMode(str, Enum):
    SESSION = "session"  # server goes back to the pool when the client disconnects
    TRANSACTION = "transaction"  # ... when the transaction ends (ReadyForQuery 'I')
    STATEMENT = "statement"  # ... after every statement; multi-statement transactions refused


class ConfigError(Exception):
    """A configuration problem; str(error) is written for the person who edits the file."""


# Settings PgBouncer documents (doc/config.md, src/main.c) that pgpool does not implement, with
# PgBouncer's default as PgBouncer spells it (None = not set). A value equal to the default
# changes nothing, so it is accepted silently; anything else refuses the configuration.
PGBOUNCER_UNIMPLEMENTED: dict[str, str | None] = {
    "application_name_add_host": "0",
    "auth_ldap_options": None,
    "cancel_wait_timeout": "10",
    "client_tls_dheparams": "auto",
    "client_tls_ecdhcurve": "auto",
    "conffile": None,
    "disable_pqexec": "0",
    "resolv_conf": "",
    "scram_iterations": "4096",
    "syslog": "0",
    "tcp_socket_buffer": "0",
    "user": None,
}

# PgBouncer settings pgpool accepts with any value and that change nothing, each with the reason
# (docs/moving-from-pgbouncer.md lists them). Everything in PGBOUNCER_UNIMPLEMENTED set to
# anything but PgBouncer's default refuses to start instead: pgpool would not do what it says.
PGBOUNCER_NO_EFFECT: dict[str, str] = {
    "pkt_buf": "pgpool forwards whatever each read returns; there is no fixed packet buffer",
    "sbuf_loopcnt": "pgpool hands every read to the protocol at once; there is no loop count",
    "tcp_defer_accept": "a Linux accept() latency tweak pgpool does without",
    "service_name": "names a Windows service",
    "job_name": "names a Windows service",
    "syslog_ident": "used only with syslog = 1, which pgpool refuses",
    "syslog_facility": "used only with syslog = 1, which pgpool refuses",
    "dns_zone_check_period": "pgpool asks the system resolver at every server connect, so a "
                             "changed zone is seen at the next connect",
}

# Connection-string keys PgBouncer accepts in [databases] / [users] that pgpool ignores.
PGBOUNCER_UNIMPLEMENTED_DATABASE_KEYS = frozenset(
    {
        "application_name",
    }
)
PGBOUNCER_UNIMPLEMENTED_USER_KEYS: frozenset[str] = frozenset()

_BOOL_ALLOWED = "a boolean: 1/0, yes/no, true/false, on/off"
_LIST_ALLOWED = "a comma-separated list of names (or a TOML array)"


def _setting(default: Any, description: str, *, restart: bool = False, allowed: str | None = None,
             **constraints: Any) -> Any:
    """A Settings field; `restart` marks settings a RELOAD cannot change on a running pgpool."""
    extra: dict[str, Any] = {"restart": restart}
    if allowed:
        extra["allowed"] = allowed
    return Field(default, description=description, json_schema_extra=extra, **constraints)


def _split_list(value: Any) -> Any:
    """pgbouncer.ini lists are comma-separated strings ("a, b"); TOML may give an array."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)):
        return [str(item).strip() for item in value if str(item).strip()]
    return value


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


class DatabaseEntry(BaseModel):
    """One `[databases]` entry: where clients asking for `name` are routed, and its pool limits.

    Unset (None) limits inherit from the user entry or the global setting, see
    `Settings.pool_settings`.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Database name clients ask for; '*' is the fallback entry.")
    host: str = Field(
        "127.0.0.1", description="Server host name or IP address, or a comma-separated list of them "
        "(PgBouncer's host=a,b,c): a new server connection tries them in turn (see load_balance_hosts); "
        "an unresolvable or unreachable host is skipped.")
    load_balance_hosts: Literal["round-robin", "disable"] = Field(
        "round-robin", description="With several hosts: round-robin = each new server connection starts "
        "at the next host; disable = always try them in the listed order, first that works. PgBouncer's "
        "names and default.")
    target_session_attrs: Literal["any", "read-write", "primary", "read-only", "standby",
                                  "prefer-standby"] = Field(
        "any", description="pgpool: which servers this database's pools accept, with libpq's names: "
        "read-write / primary never get a read-only server (learned from in_hot_standby and "
        "default_transaction_read_only, PostgreSQL 14+, else one query at login); a 25006 read-only "
        "error from a server that reports read-only retires that host's servers and re-resolves its "
        "name. read-only / standby / prefer-standby (standbys first, else any) as libpq.")
    port: int = Field(5432, ge=1, le=65535, description="Server port.")
    dbname: str | None = Field(
        None, description="Database name on the server; defaults to the entry's name "
        "(for '*', the database the client asked for).")
    user: str | None = Field(
        None, description="Log in to the server as this user for every client (one pool per "
        "database); None = the client's own user.")
    password: str | None = Field(
        None, description="Password for `user`; None = the secret from auth_file.")
    pool_size: int | None = Field(None, ge=0, description="Overrides default_pool_size.")
    min_pool_size: int | None = Field(None, ge=0, description="Overrides min_pool_size.")
    reserve_pool: int | None = Field(
        None, ge=0, description="Overrides reserve_pool_size (reserve_pool_size is accepted too).")
    pool_mode: PoolMode | None = Field(None, description="Overrides pool_mode.")
    max_db_connections: int | None = Field(
        None, ge=0, description="Overrides max_db_connections (0 = use the global value).")
    max_db_client_connections: int | None = Field(
        None, ge=0, description="Overrides max_db_client_connections (0 = use the global value).")
    query_wait_timeout: float | None = Field(
        None, description="Overrides query_wait_timeout for this database (-1 = not set; a "
        "[users] value wins).")
    server_lifetime: float | None = Field(
        None, ge=0, description="Overrides server_lifetime for this database (0 = use the global "
        "value, as in PgBouncer).")
    connect_query: str | None = Field(
        None, description="Query run once on every new server connection before first use.")
    client_encoding: str | None = Field(None, description="client_encoding asked of the server.")
    datestyle: str | None = Field(None, description="DateStyle asked of the server.")
    timezone: str | None = Field(None, description="TimeZone asked of the server.")
    auth_user: str | None = Field(
        None, description="Overrides auth_user for this database: look up unknown users' secrets "
        "with auth_query through a server connection of this user.")
    auth_query: str | None = Field(None, description="Overrides auth_query for this database.")
    auth_dbname: str | None = Field(
        None, description="Overrides auth_dbname for this database: run auth_query in this "
        "database instead.")

    @field_validator("pool_mode", "load_balance_hosts", "target_session_attrs", mode="before")
    @classmethod
    def _lower_pool_mode(cls, value: Any) -> Any:
        return _lower(value)

    @field_validator("query_wait_timeout", mode="after")
    @classmethod
    def _unset_negative(cls, value: float | None) -> float | None:
        return None if value is not None and value < 0 else value   # PgBouncer: -1 = not set

    @model_validator(mode="after")
    def _default_dbname(self) -> DatabaseEntry:
        # '*' keeps dbname unset so find_database can use the name the client asked for.
        if self.dbname is None and self.name != "*":
            self.dbname = self.name
        return self

    def server_parameters(self) -> dict[str, str]:
        """Startup parameters this entry asks of the server, spelled as Postgres reports them."""
        params = {"client_encoding": self.client_encoding, "DateStyle": self.datestyle,
                  "TimeZone": self.timezone}
        return {key: value for key, value in params.items() if value is not None}


class UserEntry(BaseModel):
    """One `[users]` entry: limits for every pool that logs in to the server as `name`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="User name.")
    pool_mode: PoolMode | None = Field(None, description="Overrides pool_mode for this user.")
    max_user_connections: int | None = Field(
        None, ge=0, description="Overrides max_user_connections (0 = use the global value).")
    pool_size: int | None = Field(None, ge=0, description="Overrides the pool size for this user.")
    reserve_pool_size: int | None = Field(
        None, ge=0, description="Overrides reserve_pool_size for this user.")
    max_user_client_connections: int | None = Field(
        None, ge=0, description="Overrides max_user_client_connections (0 = use the global value).")
    query_timeout: float | None = Field(
        None, ge=0, description="Overrides query_timeout for pools logging in as this user (0 = "
        "use the global value).")
    query_wait_timeout: float | None = Field(
        None, description="Overrides query_wait_timeout for this user's clients (-1 = not set; "
        "wins over the database value).")
    idle_transaction_timeout: float | None = Field(
        None, ge=0, description="Overrides idle_transaction_timeout (0 = use the global value).")
    transaction_timeout: float | None = Field(
        None, ge=0, description="Overrides transaction_timeout (0 = use the global value).")
    client_idle_timeout: float | None = Field(
        None, ge=0, description="Overrides client_idle_timeout for this user's clients (0 = use "
        "the global value).")

    @field_validator("pool_mode", mode="before")
    @classmethod
    def _lower_pool_mode(cls, value: Any) -> Any:
        return _lower(value)

    @field_validator("query_wait_timeout", mode="after")
    @classmethod
    def _unset_negative(cls, value: float | None) -> float | None:
        return None if value is not None and value < 0 else value   # PgBouncer: -1 = not set


class PeerEntry(BaseModel):
    """One `[peers]` entry: where to forward a CancelRequest whose key names peer `peer_id`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The peer_id (1-16383), as the entry's key.",
                      json_schema_extra={"allowed": "a peer_id from 1 to 16383"})
    host: str = Field(description="Host name, IP address, or a Unix socket directory (starts "
                                  "with /) of that pgpool or PgBouncer process.")
    port: int = Field(6432, ge=1, le=65535, description="Its port.")
    pool_size: int | None = Field(
        None, ge=1, description="Cancel requests in flight to this peer at once (default: "
        "default_pool_size).")

    @field_validator("name")
    @classmethod
    def _peer_id(cls, value: str) -> str:
        if not value.strip().isdigit() or not 1 <= int(value) <= 16383:
            raise ValueError("a [peers] key is a peer_id from 1 to 16383")
        return str(int(value))


@dataclass(frozen=True)
class EffectivePoolSettings:
    """The limits one (database, user) pool runs with, after per-entry overrides."""

    pool_size: int
    min_pool_size: int
    reserve_pool_size: int
    pool_mode: PoolMode
    max_db_connections: int
    max_user_connections: int
    # Timeouts of the pool's login user ([users] entry, else global), as PgBouncer's janitor.
    query_timeout: float = 0.0
    idle_transaction_timeout: float = 0.0
    transaction_timeout: float = 0.0
    server_lifetime: float = 3600.0


@dataclass(frozen=True)
class ClientLimits:
    """Limits that follow a client's own login user (not the pool's forced user)."""

    client_idle_timeout: float
    query_wait_timeout: float
    max_db_client_connections: int
    max_user_client_connections: int


# load_settings layers the environment itself (with provenance for error messages), so it
# switches off the model's own environment source while it builds a Settings.
_read_environment: ContextVar[bool] = ContextVar("pgpool_config_read_environment", default=True)


class _PgpoolEnvSource(PydanticBaseSettingsSource):
    """PGPOOL_<SETTING> variables, case-insensitive, parsed like pgbouncer.ini values."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if not _read_environment.get():
            return {}
        names = implemented_settings()
        found: dict[str, Any] = {}
        for key, value in os.environ.items():
            if key.upper().startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() in names:
                found[key[len(ENV_PREFIX):].lower()] = value
        return found


class Settings(BaseSettings):
    """Every pgpool setting. `Settings()` alone gives the defaults plus PGPOOL_* variables;
    `load_settings` adds a config file and `--set` overrides."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="forbid", validate_default=True)

    # Where clients connect
    listen_addr: str = _setting(
        "127.0.0.1", "Comma-separated addresses to listen on for clients; * = all addresses; "
        "empty = no TCP, the Unix socket only.",
        restart=True, allowed="a comma-separated list of host names or IP addresses, *, or empty")
    listen_port: int = _setting(6432, "TCP port to listen on for clients (0 = any free port); "
                                "also names the Unix socket .s.PGSQL.<listen_port>.",
                                restart=True, ge=0, le=65535)
    unix_socket_dir: str = _setting(
        "/tmp", "Directory of the Unix socket .s.PGSQL.<listen_port> clients may connect to "
        "('' = no Unix socket). As PgBouncer.", restart=True, allowed="a directory path or empty")
    unix_socket_mode: str = _setting(
        "0777", "File mode of the Unix socket, octal.", restart=True,
        allowed="an octal file mode such as 0777", pattern=r"^0?[0-7]{3,4}$")
    unix_socket_group: str = _setting(
        "", "Group owning the Unix socket ('' = the process's group).", restart=True)

    listen_backlog: int = _setting(
        4096, "Backlog of the listening sockets (the kernel caps it at net.core.somaxconn). PgBouncer's "
        "default is 128; pgpool's is larger so a burst of connects is not dropped into SYN retries.",
        ge=1, restart=True)
    so_reuseport: bool = _setting(
        False, "Set SO_REUSEPORT on the listening sockets so several pgpool processes share one "
        "port (pair with peer_id and [peers] so cancel requests reach the right process).",
        restart=True)
    peer_id: int = _setting(
        0, "This process's id among peers (1-16383), encoded in every client's cancel key so "
        "that a peer receiving its CancelRequest forwards it here (0 = peering off).",
        restart=True, ge=0, le=16383)

    # TLS between clients and pgpool (PgBouncer's client_tls_* settings)
    client_tls_sslmode: SslMode = _setting(
        "disable", "TLS with clients: disable (refuse SSLRequest), allow / prefer (TLS if the "
        "client asks), require (refuse clients without TLS), verify-ca / verify-full (also "
        "require a client certificate signed by client_tls_ca_file).")
    client_tls_key_file: str = _setting("", "Private key of pgpool's TLS certificate for clients.",
                                        allowed="a file path")
    client_tls_cert_file: str = _setting("", "pgpool's TLS certificate (chain) shown to clients.",
                                         allowed="a file path")
    client_tls_ca_file: str = _setting(
        "", "CA certificates that sign client certificates ('' = client certificates are not "
        "requested).", allowed="a file path")
    client_tls_protocols: str = _setting(
        "secure", "TLS versions allowed with clients: secure (= tlsv1.2,tlsv1.3), all, legacy, "
        "or a list of tlsv1.0, tlsv1.1, tlsv1.2, tlsv1.3.")
    client_tls_ciphers: str = _setting(
        "default", "OpenSSL cipher list for TLS 1.2 and older with clients (default, secure, "
        "fast, normal, all, or an OpenSSL cipher string).")
    client_tls13_ciphers: str = _setting(
        "", "TLS 1.3 cipher suites with clients, colon-separated ('' = OpenSSL's default).")

    # TLS between pgpool and servers (PgBouncer's server_tls_* settings)
    server_tls_sslmode: SslMode = _setting(
        "prefer", "TLS to servers, as libpq's sslmode: disable, allow and prefer (TLS when the "
        "server offers it), require (no TLS = no login), verify-ca (and the certificate is "
        "signed by server_tls_ca_file), verify-full (and names the database entry's host, sent "
        "as SNI). PgBouncer >= 1.20's default.")
    server_tls_ca_file: str = _setting(
        "", "CA certificates that sign server certificates, e.g. the AWS RDS global bundle "
        "('' = the system's CA store).", allowed="a file path")
    server_tls_cert_file: str = _setting("", "Client certificate pgpool shows to servers.",
                                         allowed="a file path")
    server_tls_key_file: str = _setting("", "Private key of server_tls_cert_file.",
                                        allowed="a file path")
    server_tls_protocols: str = _setting(
        "secure", "TLS versions allowed to servers (as client_tls_protocols).")
    server_tls_ciphers: str = _setting(
        "default", "OpenSSL cipher list for TLS 1.2 and older to servers (as client_tls_ciphers).")
    server_tls13_ciphers: str = _setting(
        "", "TLS 1.3 cipher suites to servers, colon-separated ('' = OpenSSL's default).")

    # TCP options of every client and server socket, as PgBouncer (new connections pick up a RELOAD)
    tcp_keepalive: bool = _setting(
        True, "Turn on TCP keepalive (SO_KEEPALIVE) on client and server sockets, so a peer that "
        "vanished without a FIN (a dead host, a dropped NAT entry) is found. PgBouncer's default: 1.")
    tcp_keepidle: int = _setting(
        0, "Seconds a connection is idle before the first keepalive probe (TCP_KEEPIDLE; 0 = the "
        "OS default, 7200 s on Linux).", ge=0)
    tcp_keepintvl: int = _setting(
        0, "Seconds between keepalive probes (TCP_KEEPINTVL; 0 = the OS default, 75 s on Linux).", ge=0)
    tcp_keepcnt: int = _setting(
        0, "Unanswered keepalive probes before the connection is dropped (TCP_KEEPCNT; 0 = the OS "
        "default, 9 on Linux).", ge=0)
    dns_max_ttl: float = _setting(
        15.0, "Seconds a resolved host name is trusted before DNS is asked again (PgBouncer's "
        "dns_max_ttl; 0 = ask at every new server connection). A 25006 in a read-write pool forgets "
        "the name at once, so a failover that moves a DNS name is followed.", ge=0)
    dns_nxdomain_ttl: float = _setting(
        15.0, "Seconds a host name that did not resolve is not asked again (PgBouncer's "
        "dns_nxdomain_ttl).", ge=0)
    tcp_user_timeout: int = _setting(
        0, "Milliseconds sent data may stay unacknowledged before the connection is dropped "
        "(TCP_USER_TIMEOUT, Linux; 0 = the OS default). Bounds how long a server that stopped "
        "answering mid-query (blackholed network) holds its client.", ge=0)

    # Authentication and console access
    auth_type: Literal["trust", "plain", "md5", "scram-sha-256", "cert", "hba"] = _setting(
        "md5", "How clients authenticate: trust, plain, md5 (SCRAM for users whose secret is "
        "SCRAM), scram-sha-256, cert (TLS client certificate whose CN is the user name; "
        "needs client_tls_sslmode and client_tls_ca_file), or hba (the method of the first "
        "matching auth_hba_file line).")
    auth_hba_file: Path | None = _setting(
        None, "pg_hba.conf-format file used when auth_type = hba (local/host/hostssl/hostnossl; "
        "trust, reject, md5, password, scram-sha-256, cert, peer); relative to the config file.",
        allowed="a file path")
    auth_ident_file: Path | None = _setting(
        None, "pg_ident.conf-format maps for the map= option of auth_hba_file lines (cert "
        "common name or peer user -> database user); relative to the config file.",
        allowed="a file path")
    auth_file: Path | None = _setting(
        None, "userlist.txt of \"user\" \"secret\" lines (plain password, md5 hash or SCRAM "
        "secret); relative to the config file's directory.", allowed="a file path")
    auth_user: str = _setting(
        "", "Users not in auth_file are looked up with auth_query through a server connection "
        "of this user ('' = off); its own secret comes from auth_file. As PgBouncer.")
    auth_query: str = _setting(
        DEFAULT_AUTH_QUERY, "Query returning (user name, secret) for the user name in $1; the "
        "secret may be an md5 hash or a SCRAM verifier. PgBouncer's default reads pg_authid "
        "(on RDS use a SECURITY DEFINER function, see docs/tls-and-rds.md).")
    auth_dbname: str = _setting(
        "", "Database auth_query runs in ('' = the database the client asked for).")
    admin_users: list[str] = _setting(
        [], "Users allowed to run every admin console command.", allowed=_LIST_ALLOWED)
    stats_users: list[str] = _setting(
        [], "Users allowed to run the read-only SHOW commands on the admin console.",
        allowed=_LIST_ALLOWED)

    # Pools
    pool_mode: PoolMode = _setting(
        PoolMode.TRANSACTION, "When a server goes back to the pool: session (client leaves), "
        "transaction (transaction ends) or statement. PgBouncer's default is session.")
    max_client_conn: int = _setting(100, "Maximum number of client connections.", ge=1)
    default_pool_size: int = _setting(
        20, "Server connections per (database, user) pool unless an entry sets pool_size.", ge=0)
    min_pool_size: int = _setting(
        0, "Keep at least this many server connections in a pool (0 = off; capped at the pool "
        "size).", ge=0)
    reserve_pool_size: int = _setting(
        0, "Extra server connections a pool may open for clients that waited "
        "reserve_pool_timeout (0 = off).", ge=0)
    reserve_pool_timeout: float = _setting(
        5.0, "Seconds a client waits before the reserve pool is used (0 = off).", ge=0)
    max_db_connections: int = _setting(
        0, "Maximum server connections per database across its pools (0 = unlimited).", ge=0)
    max_user_connections: int = _setting(
        0, "Maximum server connections per user across its pools (0 = unlimited).", ge=0)
    max_db_client_connections: int = _setting(
        0, "Maximum client connections per database (the name clients ask for), across users "
        "(0 = unlimited). Admin users on the console are exempt.", ge=0)
    max_user_client_connections: int = _setting(
        0, "Maximum client connections per user (the name clients log in as), across databases "
        "(0 = unlimited).", ge=0)
    server_round_robin: bool = _setting(
        False, "Reuse idle servers in turn (FIFO) instead of the most recently used (LIFO).")
    server_connect_concurrency: int = _setting(
        10, "pgpool: at most this many server connections being opened at once per pool, the "
        "bound on connect storms during a burst.", ge=1)
    session_pinning: bool = _setting(
        True, "pgpool: in transaction/statement mode, pin a client to its server once it creates "
        "session state; false = refuse such statements with an error.")
    session_audit: Literal["auto", "always"] = _setting(
        "auto", "pgpool: when to ask a server which session state a transaction left (settings, "
        "LISTEN, advisory locks, temporary objects, WITH HOLD cursors, SQL PREPARE, role) before "
        "it changes hands. auto = only after statements the parser cannot prove stateless (plain "
        "SELECT/INSERT/UPDATE/DELETE never pay); always = after every transaction, which also "
        "catches state made by triggers or views (one extra round trip per transaction). "
        "Not in PgBouncer, which tracks only reported parameters.")

    # Server connection upkeep
    server_reset_query: str = _setting(
        "DISCARD ALL", "Query run on a server released by a session-mode client ('' = none).")
    server_reset_query_always: bool = _setting(
        False, "Run server_reset_query in every pool mode, not only session mode.")
    server_check_delay: float = _setting(
        30.0, "Seconds a released server stays trusted before server_check_query is run on "
        "reuse (0 = always check).", ge=0)
    server_check_query: str = _setting(
        "<empty>", "Query that checks an idle server is alive ('' = no check, '<empty>' = an "
        "empty query, PgBouncer 1.25's default).")
    server_fast_close: bool = _setting(
        False, "In session mode, close a server marked close_needed (RECONNECT, a RELOAD that "
        "changed its database entry) at the end of the current transaction instead of the end "
        "of the session; its client is disconnected too.")
    server_lifetime: float = _setting(
        3600.0, "Close an unused server connected longer than this many seconds (0 = use once).",
        ge=0)
    server_idle_timeout: float = _setting(
        600.0, "Close a server idle longer than this many seconds (0 = never).", ge=0)
    server_connect_timeout: float = _setting(
        15.0, "Seconds a server connection and login may take.", ge=0)
    pool_idle_timeout: float = _setting(
        0.0, "Free a (database, user) pool with no clients and no servers after this many "
        "seconds; its statistics are forgotten (0 = never).", ge=0)
    autodb_idle_timeout: float = _setting(
        3600.0, "Free the pools of a database created through the '*' entry once none of them "
        "has had a client or server for this many seconds (0 = never).", ge=0)
    server_login_retry: float = _setting(
        15.0, "Seconds to wait after a server login failed for a permanent cause (wrong password "
        "28P01, no such database 3D000, TLS verification) before trying again; clients get the "
        "error meanwhile. Transient causes (57P03 starting up / shutting down, 53300, refused, reset, "
        "server_connect_timeout) are retried on a short jittered backoff (0.05 s growing to at most "
        "min(0.5 s, this value)) while waiting clients keep waiting up to query_wait_timeout.", ge=0)

    # Client timeouts
    client_login_timeout: float = _setting(
        60.0, "Disconnect a client that has not logged in within this many seconds.", ge=0)
    query_timeout: float = _setting(
        0.0, "Cancel queries running longer than this many seconds (0 = off).", ge=0)
    query_wait_timeout: float = _setting(
        120.0, "Disconnect a client that waited this many seconds for a server (0 = wait "
        "forever).", ge=0)
    client_idle_timeout: float = _setting(
        0.0, "Disconnect a client idle longer than this many seconds (0 = off).", ge=0)
    idle_transaction_timeout: float = _setting(
        0.0, "Disconnect a client idle in a transaction longer than this many seconds (0 = off).",
        ge=0)
    transaction_timeout: float = _setting(
        0.0, "Disconnect a client whose transaction has been open longer than this many seconds "
        "(0 = off).", ge=0)
    query_wait_notify: float = _setting(
        5.0, "Send a waiting client a NOTICE (PgBouncer's 'No server connection available in "
        "postgres backend, client being queued') after this many seconds in the queue (0 = "
        "never).", ge=0)

    # Protocol
    max_packet_size: int = _setting(
        2147483647, "Largest protocol message accepted, in bytes.", ge=4, le=2147483647)
    ignore_startup_parameters: list[str] = _setting(
        [], "Startup parameters clients may send that pgpool ignores instead of refusing.",
        allowed=_LIST_ALLOWED)
    track_extra_parameters: list[str] = _setting(
        ["IntervalStyle"], "Reported parameters tracked per client (besides client_encoding, "
        "DateStyle, TimeZone, standard_conforming_strings, application_name) and restored on "
        "server change.", restart=True, allowed=_LIST_ALLOWED)
    max_prepared_statements: int = _setting(
        200, "Protocol-level named prepared statements kept per server connection in "
        "transaction/statement mode (0 = no tracking).", ge=0)

    login_notify_message: str = _setting(
        "", "NOTICE sent to every client after a successful login, e.g. to say it reached a "
        "pooler ('' = none).")

    # Logging and statistics
    log_connections: bool = _setting(True, "Log successful client logins.")
    log_disconnections: bool = _setting(True, "Log disconnections with their reasons.")
    log_pooler_errors: bool = _setting(True, "Log the errors pgpool sends to clients.")
    log_stats: bool = _setting(True, "Log aggregated statistics every stats_period.")
    stats_period: int = _setting(
        60, "Seconds between updates of the SHOW averages and the stats log line.", ge=1)
    verbose: int = _setting(0, "Log verbosity: 0 = info, 1 and up = debug (like -v).", ge=0)
    logfile: str = _setting(
        "", "Log file, relative to the config file's directory ('' = stderr only).", restart=True)
    pidfile: str = _setting(
        "", "File to write the process id to ('' = none).", restart=True)
    log_format: Literal["text", "json"] = _setting(
        "text", "pgpool: log line format, text or json.", restart=True)

    # pgpool's own: metrics, health and shutdown
    metrics_addr: str = _setting(
        "127.0.0.1", "pgpool: address of the /metrics, /healthz and /readyz HTTP endpoint.",
        restart=True)
    metrics_port: int = _setting(
        9127, "pgpool: port of the metrics HTTP endpoint (0 = off). A pgbouncer.ini that names neither "
        "metrics_port nor metrics_addr turns the endpoint off (PgBouncer has none, and two pgpools started "
        "from two unchanged pgbouncer.ini files must not compete for one port); a TOML file, PGPOOL_METRICS_PORT "
        "or --set keeps or sets the port. A configured port that is taken stops start-up with an error.",
        restart=True, ge=0, le=65535)
    readyz_cache_seconds: float = _setting(
        2.0, "pgpool: seconds a /readyz answer (a server round trip) is reused.", ge=0)
    suspend_timeout: float = _setting(
        10.0, "Seconds SUSPEND waits for output already queued to be written before it answers.",
        gt=0)
    shutdown_timeout: float = _setting(
        30.0, "pgpool: seconds a graceful shutdown waits for clients before closing them.", ge=0)

    databases: dict[str, DatabaseEntry] = Field(
        default_factory=dict,
        description="[databases]: name -> DatabaseEntry; '*' is the fallback.")
    users: dict[str, UserEntry] = Field(
        default_factory=dict, description="[users]: name -> UserEntry.")
    peers: dict[str, PeerEntry] = Field(
        default_factory=dict, description="[peers]: peer_id -> PeerEntry.")
    config_path: Path | None = Field(
        None, description="The config file these settings were read from, if any.")

    @field_validator("admin_users", "stats_users", "ignore_startup_parameters",
                     "track_extra_parameters", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("pool_mode", "auth_type", "log_format", "client_tls_sslmode", "server_tls_sslmode",
                     mode="before")
    @classmethod
    def _lower_choices(cls, value: Any) -> Any:
        return _lower(value)

    @field_validator("auth_file", "auth_hba_file", "auth_ident_file", mode="before")
    @classmethod
    def _unset_auth_file(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metrics_addr")
    @classmethod
    def _nonempty_addr(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("empty address")
        return value

    @field_validator("listen_addr")
    @classmethod
    def _strip_addr(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _somewhere_to_listen(self) -> Settings:
        if not self.listen_addr and not self.unix_socket_dir:
            raise ValueError("listen_addr and unix_socket_dir are both empty: nowhere for clients to connect")
        return self

    @model_validator(mode="after")
    def _hba_needs_its_file(self) -> Settings:
        if self.auth_type == "hba" and self.auth_hba_file is None:
            raise ValueError("auth_type = hba needs auth_hba_file (a pg_hba.conf-format file)")
        return self

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.metrics_port and self.metrics_port == self.listen_port:
            raise ValueError(f"metrics_port {self.metrics_port} must differ from listen_port "
                             f"{self.listen_port} (or be 0 to turn metrics off)")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   *_others: PydanticBaseSettingsSource,
                                   **_kw: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only keyword arguments and PGPOOL_* variables; no .env or secrets files.
        return init_settings, _PgpoolEnvSource(settings_cls)

    def find_database(self, name: str) -> DatabaseEntry | None:
        """The entry for `name`, else the '*' entry aimed at `name`, else None.

        The admin console database is not handled here; the caller checks it first.
        """
        entry = self.databases.get(name)
        if entry is not None:
            return entry
        fallback = self.databases.get("*")
        if fallback is None:
            return None
        return fallback.model_copy(update={"name": name, "dbname": fallback.dbname or name})

    def pool_settings(self, db: DatabaseEntry, user: str) -> EffectivePoolSettings:
        """Limits for the pool of (db, user); `user` is the client's user name.

        As in PgBouncer (src/server.c), the [users] entry of the pool's login user (db.user
        when the entry forces one, else the client's) wins over the database entry for
        pool_size, reserve_pool_size and pool_mode, and both win over the global setting.
        Per-entry max_*_connections of 0 fall back to the global value, as in PgBouncer.
        """
        login_user = self.users.get(db.user or user)

        def first_set(*values: Any) -> Any:
            return next(value for value in values if value is not None)

        u_pool_size = login_user.pool_size if login_user else None
        u_reserve = login_user.reserve_pool_size if login_user else None
        u_mode = login_user.pool_mode if login_user else None
        u_max = login_user.max_user_connections if login_user else None
        pool_size = first_set(u_pool_size, db.pool_size, self.default_pool_size)
        return EffectivePoolSettings(
            pool_size=pool_size,
            min_pool_size=min(first_set(db.min_pool_size, self.min_pool_size), pool_size),
            reserve_pool_size=first_set(u_reserve, db.reserve_pool, self.reserve_pool_size),
            pool_mode=first_set(u_mode, db.pool_mode, self.pool_mode),
            max_db_connections=db.max_db_connections or self.max_db_connections,
            max_user_connections=u_max or self.max_user_connections,
            # A [users] timeout of 0 means "not set" in PgBouncer (src/janitor.c).
            query_timeout=(login_user and login_user.query_timeout) or self.query_timeout,
            idle_transaction_timeout=(login_user and login_user.idle_transaction_timeout)
            or self.idle_transaction_timeout,
            transaction_timeout=(login_user and login_user.transaction_timeout)
            or self.transaction_timeout,
            server_lifetime=db.server_lifetime or self.server_lifetime,
        )

    def client_limits(self, db: DatabaseEntry, client_user: str) -> ClientLimits:
        """What follows the client's own user: the [users] entry of the name it logged in as.

        query_wait_timeout: user value, else database value, else global (src/janitor.c);
        the others: user value (when > 0), else global.
        """
        entry = self.users.get(client_user)
        wait = self.query_wait_timeout
        if db.query_wait_timeout is not None:
            wait = db.query_wait_timeout
        if entry is not None and entry.query_wait_timeout is not None:
            wait = entry.query_wait_timeout
        return ClientLimits(
            client_idle_timeout=(entry and entry.client_idle_timeout) or self.client_idle_timeout,
            query_wait_timeout=wait,
            max_db_client_connections=db.max_db_client_connections or self.max_db_client_connections,
            max_user_client_connections=(entry and entry.max_user_client_connections)
            or self.max_user_client_connections,
        )


_NOT_SETTINGS = frozenset({"databases", "users", "peers", "config_path"})


def implemented_settings() -> list[str]:
    """Names of every setting pgpool implements, in the model's order."""
    return [name for name in Settings.model_fields if name not in _NOT_SETTINGS]


RELOADABLE_SETTINGS: frozenset[str] = frozenset(
    [name for name in implemented_settings()
     if not Settings.model_fields[name].json_schema_extra["restart"]]  # type: ignore[index]
    + ["databases", "users", "peers"])

_PATH_SETTINGS = ("auth_file", "auth_hba_file", "auth_ident_file", "logfile", "pidfile", "client_tls_key_file",
                  "client_tls_cert_file", "client_tls_ca_file", "server_tls_ca_file", "server_tls_cert_file",
                  "server_tls_key_file")


@dataclass
class LoadedConfig:
    settings: Settings
    warnings: list[str] = field(default_factory=list)


def load_settings(path: str | Path | None, overrides: Mapping[str, str] = {},
                  environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read `path` (pgpool TOML or pgbouncer.ini), then PGPOOL_* variables from `environ`
    (default os.environ), then `overrides` (`--set KEY=VALUE`); later wins.

    Override keys are setting names, or `databases.NAME` / `users.NAME` with a connection
    string. Raises ConfigError listing every problem found.
    """
    loader = _Loader()
    config_path = None
    if path is not None:
        config_path = Path(path).resolve()
        loader.read_file(config_path)
    loader.read_environ(os.environ if environ is None else environ)
    loader.read_overrides(overrides)
    settings = loader.build(config_path)
    return LoadedConfig(settings=settings, warnings=loader.warnings)


def change_setting(settings: Settings, key: str, value: str) -> Settings:
    """The admin console's `SET key = value`: a copy of `settings` with one value changed,
    checked as the config file's value would be. Raises ConfigError saying why not."""
    name = key.strip().lower()
    if name in _NOT_SETTINGS or name not in Settings.model_fields:
        if name in PGBOUNCER_UNIMPLEMENTED or name in PGBOUNCER_NO_EFFECT:
            raise ConfigError(f"{name} is a PgBouncer setting pgpool does not implement")
        known = implemented_settings()
        raise ConfigError(f"unknown setting {key!r}{_suggest(name, known)}")
    if name not in RELOADABLE_SETTINGS:
        raise ConfigError(f"{name} cannot be changed on a running pgpool; change the config file "
                          f"and restart")
    raw: Any = value
    if name in _PATH_SETTINGS and settings.config_path is not None and value.strip() \
            and not Path(value.strip()).is_absolute():
        raw = str(settings.config_path.parent / value.strip())
    current = {field: getattr(settings, field) for field in Settings.model_fields}
    loader = _Loader()
    loader.sources[name] = "SET"
    token = _read_environment.set(False)
    try:
        return Settings(**{**current, name: raw})
    except ValidationError as exc:
        raise ConfigError("; ".join(loader._describe(error) for error in exc.errors())) from None
    finally:
        _read_environment.reset(token)


def diff_settings(old: Settings, new: Settings) -> tuple[list[str], list[str]]:
    """(changed settings a reload applies, changed settings that need a restart)."""
    reloadable: list[str] = []
    restart: list[str] = []
    for name in Settings.model_fields:
        if name == "config_path" or getattr(old, name) == getattr(new, name):
            continue
        (reloadable if name in RELOADABLE_SETTINGS else restart).append(name)
    return reloadable, restart


def _format_default(value: Any) -> str:
    """A default as a markdown cell: values in code spans, absent values in words."""
    if value is None:
        return "not set"
    if value == "" or value == []:
        return "empty"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, Enum):
        text = value.value
    elif isinstance(value, list):
        text = ", ".join(value)
    else:
        text = str(value)
    return f"`{text}`"


def settings_markdown_table() -> str:
    """| name | default | meaning | reloadable | for every implemented setting."""
    lines = ["| name | default | meaning | reloadable |", "|---|---|---|---|"]
    for name in implemented_settings():
        info = Settings.model_fields[name]
        default = _format_default(info.get_default(call_default_factory=True))
        meaning = (info.description or "").replace("|", "\\|")
        reload = "yes" if name in RELOADABLE_SETTINGS else "no (restart)"
        lines.append(f"| `{name}` | {default} | {meaning} | {reload} |")
    return "\n".join(lines) + "\n"


def _allowed(info: FieldInfo) -> str:
    """What a field accepts, in words, for ConfigError messages."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "allowed" in extra:
        return str(extra["allowed"])
    annotation = info.annotation
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) is not Literal and len(args) == 1:
        annotation = args[0]  # Optional[X] -> X
    low = next((m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in info.metadata if isinstance(m, annotated_types.Le)), None)
    if annotation is bool:
        return _BOOL_ALLOWED
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(arg) for arg in get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of " + ", ".join(member.value for member in annotation)
    if annotation in (int, float):
        noun = "an integer" if annotation is int else "a number of seconds"
        if low is not None and high is not None:
            return f"{noun} from {low} to {high}"
        if low is not None:
            return f"{noun} >= {low}"
        return noun
    return "a string"


def _same_as_pgbouncer_default(name: str, value: Any) -> bool:
    text = ("1" if value else "0") if isinstance(value, bool) else str(value).strip()
    default = PGBOUNCER_UNIMPLEMENTED[name]
    if default is None or text == "":
        return text == "" and not default
    try:
        return float(text) == float(default)
    except ValueError:
        return text.lower() == default.lower()


def _suggest(word: str, candidates: list[str] | frozenset[str]) -> str:
    close = difflib.get_close_matches(word, sorted(candidates), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def read_quoted(text: str, i: int) -> tuple[str, int] | None:
    """The string quoted by text[i] (' or ") with doubled quotes standing for one, and the index after
    it; None when it is not closed. The quoting of libpq connection strings and of pg_hba.conf."""
    quote = text[i]
    parts: list[str] = []
    i += 1
    while True:
        close = text.find(quote, i)
        if close < 0:
            return None
        parts.append(text[i:close])
        if not text.startswith(quote, close + 1):
            return "".join(parts), close + 1
        parts.append(quote)
        i = close + 2


def parse_connstr(text: str) -> list[tuple[str, str]]:
    """Split a PgBouncer connection string (`host=a port=1 connect_query='select 1'`) into
    pairs. Values may be single-quoted, with '' for a quote inside; spaces around '=' are
    allowed. Raises ValueError on syntax errors."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return pairs
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if not key or i >= n or text[i] != "=":
            raise ValueError(f"expected key=value at {text[start:]!r}")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == "'":
            quoted = read_quoted(text, i)
            if quoted is None:
                raise ValueError(f"unterminated quoted value for {key}")
            value, i = quoted
        else:
            start = i
            while i < n and not text[i].isspace():
                i += 1
            value = text[start:i]
        if value == "":
            raise ValueError(f"empty value for {key}")
        pairs.append((key.lower(), value))


def _unquote_key(key: str) -> str:
    """pgbouncer.ini keys may be quoted: 'name' or "na""me" (SQL identifier quoting)."""
    key = key.strip()
    if len(key) >= 2 and key[0] == key[-1] == "'":
        return key[1:-1]
    if len(key) >= 2 and key[0] == key[-1] == '"':
        return key[1:-1].replace('""', '"')
    return key


_INCLUDE_DEPTH = 10


class _Loader:
    """Collects raw values with where each came from, then validates them all at once."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.databases: dict[str, tuple[Any, str]] = {}
        self.users: dict[str, tuple[Any, str]] = {}
        self.peers: dict[str, tuple[Any, str]] = {}
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.config_dir: Path | None = None
        self.from_file: set[str] = set()  # settings whose relative paths follow the file
        self.read_pgbouncer_ini = False

    # ---- gathering -------------------------------------------------------------------------

    def set_setting(self, key: str, value: Any, source: str, *, from_file: bool = False) -> None:
        name = key.strip().lower()
        if name in _NOT_SETTINGS or name not in Settings.model_fields:
            if name in PGBOUNCER_NO_EFFECT:
                return
            if name in PGBOUNCER_UNIMPLEMENTED:
                if not _same_as_pgbouncer_default(name, value):
                    default = PGBOUNCER_UNIMPLEMENTED[name]
                    self.errors.append(
                        f"setting {name} = {value!r} ({source}) is a PgBouncer setting pgpool "
                        f"does not implement; remove it or set it to PgBouncer's default "
                        f"({'not set' if default is None else repr(default)})")
                return
            known = implemented_settings() + list(PGBOUNCER_UNIMPLEMENTED) + list(PGBOUNCER_NO_EFFECT)
            self.errors.append(f"unknown setting {key!r} ({source}){_suggest(name, known)}")
            return
        self.values[name] = value
        self.sources[name] = source
        if from_file:
            self.from_file.add(name)
        else:
            self.from_file.discard(name)

    def read_file(self, path: Path) -> None:
        self.config_dir = path.parent
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
        if path.suffix.lower() == ".toml":
            self.read_toml(text, str(path))
        elif path.suffix.lower() == ".ini":
            self.read_ini(text, path)
        else:
            # No telling extension: TOML when it parses as TOML, otherwise pgbouncer.ini.
            try:
                tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                self.read_ini(text, path)
            else:
                self.read_toml(text, str(path))

    def read_toml(self, text: str, origin: str) -> None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc
        for table in ("pgbouncer", "pgpool"):  # [pgpool] wins over its alias [pgbouncer]
            section = data.get(table, {})
            if not isinstance(section, dict):
                self.errors.append(f"{origin}: {table} must be a table ([{table}])")
                continue
            for key, value in section.items():
                self.set_setting(key, value, f"{origin} [{table}]", from_file=True)
        for table, target in (("databases", self.databases), ("users", self.users), ("peers", self.peers)):
            section = data.get(table, {})
            if not isinstance(section, dict):
                self.errors.append(f"{origin}: {table} must be a table ([{table}])")
                continue
            for name, value in section.items():
                target[name] = (value, f"{origin} [{table}]")
        for key, value in data.items():
            if key in ("pgbouncer", "pgpool", "databases", "users", "peers"):
                continue
            if not isinstance(value, dict) and (key.lower() in Settings.model_fields
                                                  or key.lower() in PGBOUNCER_UNIMPLEMENTED):
                self.errors.append(f"{origin}: setting {key!r} must be inside the [pgpool] table")
            else:
                tables = ["pgpool", "pgbouncer", "databases", "users", "peers"]
                self.errors.append(f"{origin}: unknown table or key {key!r}{_suggest(key, tables)}")

    def _ini_lines(self, path: Path, text: str, depth: int) -> list[str]:
        """Lines with leading blanks removed (configparser would read an indented line as
        the previous value's continuation, PgBouncer does not) and %include expanded."""
        lines: list[str] = []
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("%include") and line[8:9].isspace():
                target = Path(line[8:].strip())
                # PgBouncer resolves against its working directory; pgpool, like every other
                # relative path in a config file, against the including file's directory.
                target = target if target.is_absolute() else path.parent / target
                if depth >= _INCLUDE_DEPTH:
                    raise ConfigError(f"{path}: %include nested deeper than {_INCLUDE_DEPTH}")
                try:
                    included = target.read_text(encoding="utf-8")
                except OSError as exc:
                    raise ConfigError(f"{path}: cannot read %include {target}: "
                                      f"{exc.strerror or exc}") from exc
                lines.extend(self._ini_lines(target, included, depth + 1))
            else:
                lines.append(line)
        return lines

    def read_ini(self, text: str, path: Path) -> None:
        origin = str(path)
        self.read_pgbouncer_ini = True
        parser = configparser.ConfigParser(
            delimiters=("=",), comment_prefixes=("#", ";"), inline_comment_prefixes=None,
            strict=False, interpolation=None, empty_lines_in_values=False,
            default_section="\0no default section")
        # Keep the case of database and user names; setting names are lowered by set_setting.
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            parser.read_string("\n".join(self._ini_lines(path, text, 0)), source=origin)
        except configparser.Error as exc:
            raise ConfigError(f"{origin}: not a valid pgbouncer.ini: {exc}") from exc
        for section in parser.sections():
            kind = section.strip().lower()
            items = parser.items(section)
            if kind == "pgbouncer" or kind == "pgpool":
                for key, value in items:
                    self.set_setting(key, value, f"{origin} [{section}]", from_file=True)
            elif kind in ("databases", "users"):
                target = self.databases if kind == "databases" else self.users
                for key, value in items:
                    target[_unquote_key(key)] = (value, f"{origin} [{section}]")
            elif kind == "peers":
                for key, value in items:
                    self.peers[_unquote_key(key)] = (value, f"{origin} [{section}]")
            else:
                sections = ["pgbouncer", "databases", "users", "peers"]
                self.errors.append(
                    f"{origin}: unknown section [{section}]{_suggest(kind, sections)}")

    def read_environ(self, environ: Mapping[str, str]) -> None:
        names = implemented_settings() + list(PGBOUNCER_UNIMPLEMENTED) + list(PGBOUNCER_NO_EFFECT)
        for key, value in environ.items():
            if not key.upper().startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX):].lower()
            if name in names:
                self.set_setting(name, value, f"environment variable {key}")
            else:
                # The environment is shared with other tools: warn rather than refuse to start.
                suggestion = _suggest(name, names)
                self.warnings.append(
                    f"environment variable {key} names no pgpool setting; ignored{suggestion}")

    def read_overrides(self, overrides: Mapping[str, str]) -> None:
        for key, value in overrides.items():
            head, dot, rest = key.partition(".")
            if dot and head.lower() == "databases" and rest:
                self.databases[rest] = (value, f"--set {key}")
            elif dot and head.lower() == "users" and rest:
                self.users[rest] = (value, f"--set {key}")
            elif dot and head.lower() == "peers" and rest:
                self.peers[rest] = (value, f"--set {key}")
            else:
                self.set_setting(key, value, f"--set {key}")

    # ---- validating ------------------------------------------------------------------------

    def _entry_fields(self, name: str, raw: Any, source: str, model: type[BaseModel],
                      unimplemented: frozenset[str], what: str) -> dict[str, Any] | None:
        if isinstance(raw, str):
            try:
                pairs = parse_connstr(raw)
            except ValueError as exc:
                self.errors.append(f"{what} {name!r} ({source}): syntax error: {exc}")
                return None
        elif isinstance(raw, dict):
            pairs = [(str(key).lower(), value) for key, value in raw.items()]
        else:
            self.errors.append(f"{what} {name!r} ({source}): expected a connection string "
                               f"or a table, got {raw!r}")
            return None
        canonical = {key: key for key in model.model_fields if key != "name"}
        if model is DatabaseEntry:
            # PgBouncer's newer spelling of the same database key.
            canonical["reserve_pool_size"] = "reserve_pool"
        known = set(canonical)
        fields: dict[str, Any] = {}
        for key, value in pairs:
            if key in known:
                fields[canonical[key]] = value
            elif key in unimplemented:
                self.errors.append(f"{what} {name!r} ({source}): parameter {key} is a PgBouncer "
                                   f"parameter pgpool does not implement; remove it")
            else:
                self.errors.append(f"{what} {name!r} ({source}): unknown parameter "
                                   f"{key!r}{_suggest(key, sorted(known | unimplemented))}")
        return fields

    def _build_entries(self) -> tuple[dict[str, DatabaseEntry], dict[str, UserEntry], dict[str, PeerEntry]]:
        databases: dict[str, DatabaseEntry] = {}
        users: dict[str, UserEntry] = {}
        peers: dict[str, PeerEntry] = {}
        plan: list[tuple[dict[str, tuple[Any, str]], dict[str, Any], type[BaseModel],
                         frozenset[str], str]] = [
            (self.databases, databases, DatabaseEntry, PGBOUNCER_UNIMPLEMENTED_DATABASE_KEYS,
             "database"),
            (self.users, users, UserEntry, PGBOUNCER_UNIMPLEMENTED_USER_KEYS, "user"),
            (self.peers, peers, PeerEntry, frozenset(), "peer"),
        ]
        for raw_entries, built, model, unimplemented, what in plan:
            for name, (raw, source) in raw_entries.items():
                if what == "database" and name == ADMIN_DATABASE:
                    self.errors.append(f"database name {name!r} ({source}) is reserved for the "
                                       f"admin console")
                    continue
                fields = self._entry_fields(name, raw, source, model, unimplemented, what)
                if fields is None:
                    continue
                try:
                    built[name] = model.model_validate({"name": name, **fields})
                except ValidationError as exc:
                    for error in exc.errors():
                        key = str(error["loc"][0]) if error["loc"] else "?"
                        info = model.model_fields.get(key)
                        allowed = _allowed(info) if info else error["msg"]
                        self.errors.append(f"{what} {name!r} ({source}): invalid value "
                                           f"{error['input']!r} for {key}; allowed: {allowed}")
        # A [peers] key is a number: one peer_id, however it was spelled ("01" is 1).
        return databases, users, {entry.name: entry for entry in peers.values()}

    def build(self, config_path: Path | None) -> Settings:
        values = dict(self.values)
        for name in _PATH_SETTINGS:
            value = values.get(name)
            if (self.config_dir is not None and name in self.from_file
                    and isinstance(value, str) and value.strip()
                    and not Path(value.strip()).is_absolute()):
                values[name] = str(self.config_dir / value.strip())
        if self.read_pgbouncer_ini and not {"metrics_port", "metrics_addr"} & values.keys():
            # A port nobody asked for must never stop start-up (see metrics_port's description).
            values["metrics_port"] = 0
        databases, users, peers = self._build_entries()
        if self.errors:
            raise ConfigError("\n".join(self.errors))
        token = _read_environment.set(False)
        try:
            return Settings(**values, databases=databases, users=users, peers=peers, config_path=config_path)
        except ValidationError as exc:
            raise ConfigError("\n".join(self._describe(error) for error in exc.errors())) from None
        finally:
            _read_environment.reset(token)

    def _describe(self, error: Any) -> str:
        if not error["loc"]:  # a model-level check such as distinct ports
            message = str(error.get("ctx", {}).get("error", error["msg"]))
            return f"invalid configuration: {message}"
        name = str(error["loc"][0])
        source = self.sources.get(name, "default")
        info = Settings.model_fields[name]
        return (f"invalid value {error['input']!r} for {name} ({source}); "
                f"allowed: {_allowed(info)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgpool.config",
                                     description="pgpool settings reference and checker")
    parser.add_argument("--markdown", action="store_true",
                        help="print the settings table (as in docs/settings.md)")
    parser.add_argument("--check", metavar="FILE", help="load FILE and report problems")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(settings_markdown_table())
        return 0
    if args.check:
        try:
            loaded = load_settings(args.check)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        for warning in loaded.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{args.check}: ok")
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())


class SettingsHost(Protocol):
    """Where the current settings are read (App: a RELOAD replaces them, so holders read them anew)."""
    settings: Settings
