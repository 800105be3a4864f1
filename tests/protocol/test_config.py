"""pgpool.config: what a user sees when pgpool reads its settings (no sockets)."""

from pathlib import Path

import pytest

from pgpool import config
from pgpool.config import (
    RELOADABLE_SETTINGS,
    ConfigError,
    DatabaseEntry,
    PoolMode,
    Settings,
    diff_settings,
    load_settings,
    parse_connstr,
    settings_markdown_table,
)

REPO = Path(__file__).resolve().parents[2]
NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- defaults ---------------------------------------------------------------------------------

def test_defaults_are_pgbouncers_except_pool_mode_and_listen_addr():
    s = load_settings(None, environ=NO_ENV).settings
    assert s.pool_mode is PoolMode.TRANSACTION
    assert (s.listen_addr, s.listen_port) == ("127.0.0.1", 6432)
    assert s.auth_type == "md5" and s.auth_file is None
    assert (s.max_client_conn, s.default_pool_size, s.min_pool_size) == (100, 20, 0)
    assert (s.reserve_pool_size, s.reserve_pool_timeout) == (0, 5.0)
    assert (s.max_db_connections, s.max_user_connections) == (0, 0)
    assert s.server_reset_query == "DISCARD ALL" and s.server_reset_query_always is False
    assert (s.server_check_delay, s.server_check_query) == (30.0, "<empty>")   # PgBouncer 1.25
    assert (s.max_db_client_connections, s.max_user_client_connections, s.transaction_timeout) == (0, 0, 0)
    assert (s.server_fast_close, s.pool_idle_timeout, s.autodb_idle_timeout, s.query_wait_notify) == (
        False, 0, 3600.0, 5.0)
    assert (s.server_lifetime, s.server_idle_timeout) == (3600.0, 600.0)
    assert (s.server_connect_timeout, s.server_login_retry, s.client_login_timeout) == (
        15.0, 15.0, 60.0)
    assert (s.query_timeout, s.query_wait_timeout) == (0, 120.0)
    assert (s.client_idle_timeout, s.idle_transaction_timeout) == (0, 0)
    assert s.max_packet_size == 2147483647
    assert s.ignore_startup_parameters == [] and s.track_extra_parameters == ["IntervalStyle"]
    assert s.max_prepared_statements == 200
    assert s.log_connections and s.log_disconnections and s.log_pooler_errors and s.log_stats
    assert (s.stats_period, s.verbose, s.logfile, s.pidfile) == (60, 0, "", "")
    assert s.server_round_robin is False
    assert (s.metrics_addr, s.metrics_port, s.shutdown_timeout) == ("127.0.0.1", 9127, 30.0)
    assert (s.log_format, s.server_connect_concurrency) == ("text", 10)
    assert s.session_pinning is True and s.readyz_cache_seconds == 2.0
    assert s.databases == {} and s.users == {} and s.config_path is None


def test_every_setting_has_a_description_and_appears_in_the_markdown_table():
    table = settings_markdown_table()
    for name in config.implemented_settings():
        assert Settings.model_fields[name].description, name
        assert f"| `{name}` |" in table
    assert "| `listen_port` | `6432` |" in table
    assert "no (restart)" in table.split("| `listen_port` |")[1].splitlines()[0]


def test_settings_constructor_reads_pgpool_environment(monkeypatch):
    monkeypatch.setenv("pgpool_default_pool_size", "7")
    monkeypatch.setenv("PGPOOL_ADMIN_USERS", "a, b")
    s = Settings()
    assert s.default_pool_size == 7 and s.admin_users == ["a", "b"]


# ---- TOML -------------------------------------------------------------------------------------

def test_toml_settings_and_both_database_formats(tmp_path):
    path = write(tmp_path, "pgpool.toml", """
[pgpool]
listen_port = 7432
admin_users = ["admin", "ops"]
stats_users = "mon, grafana"
pool_mode = "Session"
server_lifetime = 60
auth_file = "users.txt"

[databases]
appdb = "host=10.0.0.1 port=5433 dbname=real_app pool_size=10 connect_query='select ''x'''"
"*" = "host=127.0.0.1"

[databases.reports]
host = "10.0.0.2"
user = "reporter"
reserve_pool_size = 3
pool_mode = "statement"
timezone = "UTC"

[users]
alice = "pool_mode=transaction max_user_connections=5"
[users.bob]
pool_size = 4
""")
    loaded = load_settings(path, environ=NO_ENV)
    s = loaded.settings
    assert loaded.warnings == []
    assert s.listen_port == 7432 and s.pool_mode is PoolMode.SESSION
    assert s.admin_users == ["admin", "ops"] and s.stats_users == ["mon", "grafana"]
    assert s.server_lifetime == 60.0
    assert s.auth_file == tmp_path / "users.txt"  # relative to the config file
    assert s.config_path == path.resolve()
    app = s.databases["appdb"]
    assert (app.host, app.port, app.dbname, app.pool_size) == ("10.0.0.1", 5433, "real_app", 10)
    assert app.connect_query == "select 'x'"
    reports = s.databases["reports"]
    assert (reports.dbname, reports.user, reports.reserve_pool) == ("reports", "reporter", 3)
    assert reports.pool_mode is PoolMode.STATEMENT
    assert reports.server_parameters() == {"TimeZone": "UTC"}
    assert s.users["alice"].max_user_connections == 5 and s.users["bob"].pool_size == 4


def test_pgbouncer_table_is_an_alias_in_toml(tmp_path):
    path = write(tmp_path, "p.toml", "[pgbouncer]\nmax_client_conn = 5\n")
    assert load_settings(path, environ=NO_ENV).settings.max_client_conn == 5


def test_toml_setting_outside_its_table_is_an_error(tmp_path):
    path = write(tmp_path, "p.toml", "listen_port = 1\n")
    with pytest.raises(ConfigError, match=r"listen_port.*\[pgpool\]"):
        load_settings(path, environ=NO_ENV)


# ---- pgbouncer.ini ----------------------------------------------------------------------------

PGBOUNCER_INI = """\
;; comment
# another comment
[databases]
appdb = host=db.internal port=6543 dbname=app user=svc password=s3cret client_encoding=UTF8
'odd-name' = host=127.0.0.1
* = host=127.0.0.1 port=5432

[users]
Alice = pool_mode=session pool_size=3

[pgbouncer]
   LISTEN_PORT = 6000
listen_addr = *
admin_users = root, postgres ; not a comment: PgBouncer has no inline comments
log_connections = no
log_stats = off
server_round_robin = yes
pool_mode = statement
query_timeout = 2.5
ignore_startup_parameters = extra_float_digits,options
auth_file = /etc/pgbouncer/userlist.txt
logfile = log/pgbouncer.log
tcp_keepalive = 1
"""


def test_pgbouncer_ini_is_read_unchanged(tmp_path):
    path = write(tmp_path, "pgbouncer.ini", PGBOUNCER_INI)
    loaded = load_settings(path, environ=NO_ENV)
    s = loaded.settings
    assert loaded.warnings == []  # tcp_keepalive = 1 is PgBouncer's default: nothing to say
    assert s.listen_port == 6000 and s.listen_addr == "*"
    assert s.admin_users == [
        "root", "postgres ; not a comment: PgBouncer has no inline comments"]
    assert (s.log_connections, s.log_stats, s.server_round_robin) == (False, False, True)
    assert s.pool_mode is PoolMode.STATEMENT and s.query_timeout == 2.5
    assert s.ignore_startup_parameters == ["extra_float_digits", "options"]
    assert s.auth_file == Path("/etc/pgbouncer/userlist.txt")
    assert s.logfile == str(tmp_path / "log/pgbouncer.log")
    app = s.databases["appdb"]
    assert (app.host, app.port, app.dbname, app.user, app.password) == (
        "db.internal", 6543, "app", "svc", "s3cret")
    assert app.server_parameters() == {"client_encoding": "UTF8"}
    assert "odd-name" in s.databases
    assert s.users["Alice"].pool_mode is PoolMode.SESSION  # names keep their case


def test_format_is_detected_from_content_without_extension(tmp_path):
    ini = write(tmp_path, "pooler.conf", PGBOUNCER_INI)
    toml = write(tmp_path, "pooler.cfg", '[pgpool]\nlisten_port = 6001\n')
    assert load_settings(ini, environ=NO_ENV).settings.listen_port == 6000
    assert load_settings(toml, environ=NO_ENV).settings.listen_port == 6001


def test_ini_include_is_followed(tmp_path):
    write(tmp_path, "extra.ini", "[pgbouncer]\ndefault_pool_size = 3\n")
    path = write(tmp_path, "main.ini", "[pgbouncer]\nlisten_port = 6001\n%include extra.ini\n")
    s = load_settings(path, environ=NO_ENV).settings
    assert (s.listen_port, s.default_pool_size) == (6001, 3)


def test_ini_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, "bad.ini", "[pgbouncer]\nthis line has no equals sign\n")
    with pytest.raises(ConfigError, match="bad.ini"):
        load_settings(path, environ=NO_ENV)


def test_connection_string_syntax():
    assert parse_connstr(" host = a  port=1 connect_query='it''s' ") == [
        ("host", "a"), ("port", "1"), ("connect_query", "it's")]
    with pytest.raises(ValueError):
        parse_connstr("host=")
    with pytest.raises(ValueError):
        parse_connstr("connect_query='open")


def test_bad_connection_string_names_the_database(tmp_path):
    path = write(tmp_path, "p.ini", "[databases]\nappdb = host\n")
    with pytest.raises(ConfigError, match="database 'appdb'.*syntax error"):
        load_settings(path, environ=NO_ENV)


def test_admin_console_name_is_reserved(tmp_path):
    path = write(tmp_path, "p.ini", "[databases]\npgbouncer = host=x\n")
    with pytest.raises(ConfigError, match="reserved for the admin console"):
        load_settings(path, environ=NO_ENV)


# ---- the '*' fallback ---------------------------------------------------------------------------

def test_find_database_exact_then_fallback_then_none():
    s = load_settings(None, {"databases.appdb": "host=h1", "databases.*": "host=h2 port=5999"},
                      environ=NO_ENV).settings
    assert s.find_database("appdb").host == "h1"
    other = s.find_database("other")
    assert (other.name, other.dbname, other.host, other.port) == ("other", "other", "h2", 5999)
    assert s.databases["*"].dbname is None  # the stored fallback is not changed
    no_fallback = load_settings(None, {"databases.appdb": "host=h1"}, environ=NO_ENV).settings
    assert no_fallback.find_database("other") is None


def test_fallback_with_explicit_dbname_keeps_it():
    s = load_settings(None, {"databases.*": "dbname=shared"}, environ=NO_ENV).settings
    assert s.find_database("x").dbname == "shared"


# ---- precedence ---------------------------------------------------------------------------------

def test_file_then_env_then_overrides(tmp_path):
    path = write(tmp_path, "p.toml",
                 "[pgpool]\ndefault_pool_size = 1\nmin_pool_size = 1\nmax_client_conn = 1\n")
    environ = {"PGPOOL_MIN_POOL_SIZE": "2", "pgpool_Max_Client_Conn": "2", "HOME": "/root"}
    s = load_settings(path, {"MAX_CLIENT_CONN": "3"}, environ=environ).settings
    assert (s.default_pool_size, s.min_pool_size, s.max_client_conn) == (1, 2, 3)


def test_relative_paths_from_env_and_overrides_stay_as_given(tmp_path):
    path = write(tmp_path, "p.toml", '[pgpool]\nauth_file = "users.txt"\n')
    s = load_settings(path, {"pidfile": "run/pgpool.pid"},
                      environ={"PGPOOL_AUTH_FILE": "other.txt"}).settings
    assert s.auth_file == Path("other.txt") and s.pidfile == "run/pgpool.pid"


def test_unknown_environment_variable_is_a_warning():
    loaded = load_settings(None, environ={"PGPOOL_DEFAULT_POOL_SIZ": "5"})
    assert loaded.settings.default_pool_size == 20
    assert any("PGPOOL_DEFAULT_POOL_SIZ" in w and "default_pool_size" in w
               for w in loaded.warnings)


# ---- errors and warnings --------------------------------------------------------------------------

def test_invalid_value_names_key_value_and_what_is_allowed(tmp_path):
    path = write(tmp_path, "p.ini", "[pgbouncer]\npool_mode = sometimes\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ=NO_ENV)
    message = str(err.value)
    assert "pool_mode" in message and "'sometimes'" in message
    assert "session, transaction, statement" in message and "p.ini" in message


@pytest.mark.parametrize("key, value, allowed", [
    ("listen_port", "70000", "an integer from 0 to 65535"),
    ("default_pool_size", "-1", "an integer >= 0"),
    ("query_wait_timeout", "soon", "a number of seconds >= 0"),
    ("log_stats", "maybe", "1/0, yes/no, true/false, on/off"),
    ("auth_type", "ldap", "trust, plain, md5, scram-sha-256, cert, hba"),
])
def test_invalid_override_values(key, value, allowed):
    with pytest.raises(ConfigError) as err:
        load_settings(None, {key: value}, environ=NO_ENV)
    message = str(err.value)
    assert key in message and repr(value) in message and allowed in message
    assert "--set" in message


def test_invalid_database_value_names_entry_key_and_value():
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"databases.appdb": "host=h pool_size=lots"}, environ=NO_ENV)
    message = str(err.value)
    assert "'appdb'" in message and "pool_size" in message and "'lots'" in message
    assert "an integer >= 0" in message


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"listen_port": "x", "verbose": "-1"}, environ=NO_ENV)
    assert "listen_port" in str(err.value) and "verbose" in str(err.value)


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path):
    path = write(tmp_path, "p.ini", "[pgbouncer]\ndefault_pool_sise = 5\n")
    with pytest.raises(ConfigError, match="'default_pool_sise'.*did you mean default_pool_size"):
        load_settings(path, environ=NO_ENV)


def test_unknown_database_parameter_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match="'hots'.*did you mean host"):
        load_settings(None, {"databases.appdb": "hots=x"}, environ=NO_ENV)


def test_unimplemented_pgbouncer_setting_refuses_to_start_unless_at_its_default(tmp_path):
    path = write(tmp_path, "p.ini", "[pgbouncer]\ntcp_keepalive = 1\n"
                 "client_tls_ecdhcurve = auto\npkt_buf = 8192\nresolv_conf = /etc/x.conf\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ=NO_ENV)
    # Only resolv_conf: the others are at PgBouncer's default or documented as having no effect.
    assert str(err.value).count("\n") == 0
    assert "setting resolv_conf = '/etc/x.conf'" in str(err.value)
    assert "pgpool does not implement; remove it or set it to PgBouncer's default ('')" in str(err.value)


def test_no_effect_pgbouncer_settings_are_accepted_silently(tmp_path):
    path = write(tmp_path, "p.ini", "[pgbouncer]\nunix_socket_dir = /var/run/postgresql\npkt_buf = 8192\n"
                 "listen_backlog = 1024\ndns_zone_check_period = 60\n")
    assert load_settings(path, environ=NO_ENV).warnings == []
    assert set(config.PGBOUNCER_NO_EFFECT).isdisjoint(config.PGBOUNCER_UNIMPLEMENTED)


def test_unimplemented_pgbouncer_database_key_refuses_to_start():
    with pytest.raises(ConfigError, match="database 'appdb' .*parameter application_name is a PgBouncer parameter "
                                          "pgpool does not implement"):
        load_settings(None, {"databases.appdb": "host=h application_name=x"}, environ=NO_ENV)


def test_users_section_takes_every_pgbouncer_key():
    loaded = load_settings(None, {"users.bob": "pool_mode=session pool_size=3 reserve_pool_size=1 "
                                  "max_user_connections=4 query_timeout=5 query_wait_timeout=6 "
                                  "idle_transaction_timeout=7 transaction_timeout=8 client_idle_timeout=9 "
                                  "max_user_client_connections=10"}, environ=NO_ENV)
    bob = loaded.settings.users["bob"]
    assert (bob.pool_mode, bob.pool_size, bob.reserve_pool_size, bob.max_user_connections) == (
        PoolMode.SESSION, 3, 1, 4)
    assert (bob.query_timeout, bob.query_wait_timeout, bob.idle_transaction_timeout, bob.transaction_timeout,
            bob.client_idle_timeout, bob.max_user_client_connections) == (5, 6, 7, 8, 9, 10)


def test_precedence_between_global_database_and_user_values_is_pgbouncers():
    s = load_settings(None, {
        "query_timeout": "1", "idle_transaction_timeout": "2", "transaction_timeout": "3",
        "query_wait_timeout": "4", "client_idle_timeout": "5", "max_db_client_connections": "6",
        "max_user_client_connections": "7", "default_pool_size": "8", "reserve_pool_size": "1",
        "databases.d": "host=h query_wait_timeout=40 max_db_client_connections=60 pool_size=80 "
                       "reserve_pool_size=2 pool_mode=statement server_lifetime=99",
        "databases.forced": "host=h user=bob",
        "databases.unset": "host=h query_wait_timeout=-1",
        "users.bob": "query_timeout=10 idle_transaction_timeout=20 transaction_timeout=30 query_wait_timeout=400 "
                     "client_idle_timeout=50 max_user_client_connections=70 pool_size=800 reserve_pool_size=3 "
                     "pool_mode=session",
        "users.carol": "query_timeout=0 query_wait_timeout=0",
    }, environ=NO_ENV).settings
    d, forced, unset = s.databases["d"], s.databases["forced"], s.databases["unset"]
    # The pool's login user: bob's values win over the database's, which win over the global ones.
    bob = s.pool_settings(d, "bob")
    assert (bob.pool_size, bob.reserve_pool_size, bob.pool_mode) == (800, 3, PoolMode.SESSION)
    assert (bob.query_timeout, bob.idle_transaction_timeout, bob.transaction_timeout) == (10, 20, 30)
    alice = s.pool_settings(d, "alice")
    assert (alice.pool_size, alice.reserve_pool_size, alice.pool_mode, alice.server_lifetime) == (
        80, 2, PoolMode.STATEMENT, 99)
    assert (alice.query_timeout, alice.idle_transaction_timeout, alice.transaction_timeout) == (1, 2, 3)
    # A forced user's [users] entry decides for every client of that database.
    assert s.pool_settings(forced, "alice").query_timeout == 10
    # [users] query_timeout = 0 means "not set", as in PgBouncer's janitor.
    assert s.pool_settings(d, "carol").query_timeout == 1
    # Client-side limits follow the client's own user; query_wait_timeout: user > database > global,
    # and an explicit 0 (wait forever) is a value, -1 is "not set".
    assert s.client_limits(d, "bob") == config.ClientLimits(50, 400, 60, 70)
    assert s.client_limits(d, "alice") == config.ClientLimits(5, 40, 60, 7)
    assert s.client_limits(d, "carol").query_wait_timeout == 0
    assert s.client_limits(unset, "alice").query_wait_timeout == 4
    assert s.client_limits(forced, "alice") == config.ClientLimits(5, 4, 6, 7)


def test_change_setting_checks_the_value_as_the_file_would(tmp_path):
    s = load_settings(write(tmp_path, "p.ini", "[pgbouncer]\ndefault_pool_size = 5\n"), environ=NO_ENV).settings
    changed = config.change_setting(s, "default_pool_size", "7")
    assert changed.default_pool_size == 7 and s.default_pool_size == 5
    assert config.change_setting(s, "server_round_robin", "1").server_round_robin is True
    assert config.change_setting(s, "admin_users", "a, b").admin_users == ["a", "b"]
    assert config.change_setting(s, "auth_file", "users.txt").auth_file == tmp_path / "users.txt"
    with pytest.raises(ConfigError, match="invalid value 'x' for default_pool_size .SET.; allowed: an integer >= 0"):
        config.change_setting(s, "default_pool_size", "x")
    with pytest.raises(ConfigError, match="listen_port cannot be changed on a running pgpool"):
        config.change_setting(s, "listen_port", "1")
    with pytest.raises(ConfigError, match="unknown setting 'default_pool_sise'.*did you mean default_pool_size"):
        config.change_setting(s, "default_pool_sise", "1")
    with pytest.raises(ConfigError, match="resolv_conf is a PgBouncer setting pgpool does not implement"):
        config.change_setting(s, "resolv_conf", "x")


def test_unknown_ini_section_is_an_error(tmp_path):
    path = write(tmp_path, "p.ini", "[databses]\nx = host=y\n")
    with pytest.raises(ConfigError, match="databses.*did you mean databases"):
        load_settings(path, environ=NO_ENV)


def test_metrics_port_must_differ_from_listen_port():
    with pytest.raises(ConfigError, match="metrics_port 6432 must differ from listen_port"):
        load_settings(None, {"metrics_port": "6432"}, environ=NO_ENV)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.toml", environ=NO_ENV)


# ---- pool settings resolution ---------------------------------------------------------------------

def test_pool_settings_resolution():
    s = load_settings(None, {
        "default_pool_size": "20", "reserve_pool_size": "1", "min_pool_size": "2",
        "max_db_connections": "50", "max_user_connections": "40",
        "databases.plain": "host=h",
        "databases.tuned": "host=h pool_size=8 reserve_pool=3 pool_mode=session "
                           "min_pool_size=30 max_db_connections=9",
        "databases.forced": "host=h user=svc",
        "users.alice": "pool_size=5 pool_mode=statement max_user_connections=4",
        "users.svc": "pool_size=6",
    }, environ=NO_ENV).settings
    plain = s.pool_settings(s.databases["plain"], "bob")
    assert plain == config.EffectivePoolSettings(20, 2, 1, PoolMode.TRANSACTION, 50, 40)
    tuned = s.pool_settings(s.databases["tuned"], "bob")
    # min_pool_size is capped at the pool size, as in PgBouncer
    assert tuned == config.EffectivePoolSettings(8, 8, 3, PoolMode.SESSION, 9, 40)
    # As in PgBouncer, the user's entry wins over the database's for pool_size and pool_mode.
    alice = s.pool_settings(s.databases["tuned"], "alice")
    assert (alice.pool_size, alice.pool_mode, alice.max_user_connections) == (
        5, PoolMode.STATEMENT, 4)
    # A database that forces a server user takes that user's entry, not the client's.
    assert s.pool_settings(s.databases["forced"], "alice").pool_size == 6


def test_pool_settings_for_fallback_database():
    s = load_settings(None, {"databases.*": "host=h pool_size=3"}, environ=NO_ENV).settings
    entry = s.find_database("anything")
    assert isinstance(entry, DatabaseEntry)
    assert s.pool_settings(entry, "bob").pool_size == 3


# ---- reload -------------------------------------------------------------------------------------

def test_diff_settings_splits_reloadable_from_restart():
    old = load_settings(None, {"databases.a": "host=h"}, environ=NO_ENV).settings
    new = load_settings(None, {"databases.a": "host=h2", "default_pool_size": "5",
                               "listen_port": "7000", "metrics_port": "0"},
                        environ=NO_ENV).settings
    reloadable, restart = diff_settings(old, new)
    assert sorted(reloadable) == ["databases", "default_pool_size"]
    assert sorted(restart) == ["listen_port", "metrics_port"]
    assert diff_settings(old, old) == ([], [])


def test_reloadable_settings():
    for name in ("default_pool_size", "query_wait_timeout", "databases", "users", "auth_file",
                 "admin_users", "stats_users", "log_connections", "pool_mode"):
        assert name in RELOADABLE_SETTINGS
    for name in ("listen_addr", "listen_port", "metrics_addr", "metrics_port", "logfile",
                 "pidfile"):
        assert name not in RELOADABLE_SETTINGS


# ---- the shipped examples and docs -----------------------------------------------------------------

def test_example_pgpool_toml_lists_every_setting_at_its_default():
    path = REPO / "config" / "pgpool.toml"
    loaded = load_settings(path, environ=NO_ENV)
    assert loaded.warnings == []
    s, defaults = loaded.settings, Settings.model_validate({})
    text = path.read_text()
    for name in config.implemented_settings():
        assert f"\n{name} =" in text or f"\n# {name} =" in text, name
        if name != "auth_file":
            assert getattr(s, name) == getattr(defaults, name), name
    assert s.auth_file == REPO / "config" / "userlist.txt"
    db = s.find_database("postgres")
    assert (db.host, db.port) == ("127.0.0.1", 5432)


def test_example_pgbouncer_ini_loads_cleanly():
    loaded = load_settings(REPO / "config" / "pgbouncer.ini", environ=NO_ENV)
    assert loaded.warnings == []
    s = loaded.settings
    assert s.auth_file == REPO / "config" / "userlist.txt" and s.auth_file.exists()
    assert s.find_database("appdb").port == 5432 and s.find_database("anything") is not None


def test_example_userlist_has_plain_md5_and_scram_secrets():
    lines = (REPO / "config" / "userlist.txt").read_text().splitlines()
    secrets = [line.split('" "')[1].rstrip('"') for line in lines]
    assert any(secret.startswith("md5") and len(secret) == 35 for secret in secrets)
    assert any(secret.startswith("SCRAM-SHA-256$") for secret in secrets)


def test_markdown_cli(capsys):
    assert config.main(["--markdown"]) == 0
    assert capsys.readouterr().out == settings_markdown_table()


def test_peers_section_in_ini_and_toml(tmp_path):
    ini = write(tmp_path, "p.ini", "[pgbouncer]\npeer_id = 2\nso_reuseport = 1\n[peers]\n1 = host=/tmp/p1\n"
                "2 = host=10.0.0.2 port=6433 pool_size=4\n")
    s = load_settings(ini, environ=NO_ENV).settings
    assert (s.peer_id, s.so_reuseport) == (2, True)
    assert (s.peers["1"].host, s.peers["1"].port, s.peers["1"].pool_size) == ("/tmp/p1", 6432, None)
    assert (s.peers["2"].host, s.peers["2"].port, s.peers["2"].pool_size) == ("10.0.0.2", 6433, 4)
    toml = write(tmp_path, "p.toml", '[pgpool]\npeer_id = 1\n[peers]\n1 = "host=a"\n02 = "host=b"\n')
    assert set(load_settings(toml, environ=NO_ENV).settings.peers) == {"1", "2"}
    with pytest.raises(ConfigError, match="peer 'x'.*1 to 16383"):
        load_settings(None, {"peers.x": "host=a"}, environ=NO_ENV)
    with pytest.raises(ConfigError, match="peer '3'.*host"):
        load_settings(None, {"peers.3": "port=1"}, environ=NO_ENV)
    with pytest.raises(ConfigError, match="peer_id"):
        load_settings(None, {"peer_id": "16384"}, environ=NO_ENV)
