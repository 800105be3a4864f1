"""Which metrics port a configuration gets: a port nobody asked for must never stop start-up.

Rule (metrics_port's description in pgpool/config.py): a pgbouncer.ini that names neither
metrics_port nor metrics_addr turns the endpoint off; a TOML file (or no file) keeps 9127;
PGPOOL_METRICS_PORT and --set win over both.
"""

from __future__ import annotations

from pgpool.config import load_settings

NO_ENV: dict[str, str] = {}
INI = "[databases]\n* = host=127.0.0.1\n[pgbouncer]\nlisten_port = 6433\n"


def test_pgbouncer_ini_without_metrics_settings_has_metrics_off(tmp_path):
    path = tmp_path / "pgbouncer.ini"
    path.write_text(INI)
    assert load_settings(path, environ=NO_ENV).settings.metrics_port == 0


def test_ini_without_extension_is_read_as_pgbouncer_ini_with_the_same_rule(tmp_path):
    path = tmp_path / "pgbouncer.conf"
    path.write_text(INI)
    assert load_settings(path, environ=NO_ENV).settings.metrics_port == 0


def test_pgbouncer_ini_that_names_metrics_port_keeps_it(tmp_path):
    path = tmp_path / "pgbouncer.ini"
    path.write_text(INI + "metrics_port = 9200\n")
    assert load_settings(path, environ=NO_ENV).settings.metrics_port == 9200


def test_pgbouncer_ini_that_names_only_metrics_addr_gets_the_default_port(tmp_path):
    path = tmp_path / "pgbouncer.ini"
    path.write_text(INI + "metrics_addr = 0.0.0.0\n")
    assert load_settings(path, environ=NO_ENV).settings.metrics_port == 9127


def test_environment_and_set_turn_metrics_on_for_a_pgbouncer_ini(tmp_path):
    path = tmp_path / "pgbouncer.ini"
    path.write_text(INI)
    assert load_settings(path, environ={"PGPOOL_METRICS_PORT": "9300"}).settings.metrics_port == 9300
    assert load_settings(path, {"metrics_port": "9301"}, environ=NO_ENV).settings.metrics_port == 9301


def test_toml_and_no_file_keep_9127(tmp_path):
    path = tmp_path / "pgpool.toml"
    path.write_text('[pgpool]\nlisten_port = 6433\n[databases]\n"*" = "host=127.0.0.1"\n')
    assert load_settings(path, environ=NO_ENV).settings.metrics_port == 9127
    assert load_settings(None, environ=NO_ENV).settings.metrics_port == 9127
