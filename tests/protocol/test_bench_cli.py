"""benchmarks/pgbench_compare's command line: the documented default run must start."""

from benchmarks.pgbench_compare import TLS_TARGETS, parse_args


def test_the_default_targets_need_no_certificates():
    # The TLS targets need the certificates --tls makes; by default they must not be asked for.
    assert parse_args([]).target_names == ["direct", "pgpool", "pgbouncer"]


def test_tls_adds_the_tls_targets():
    assert set(TLS_TARGETS) <= set(parse_args(["--tls"]).target_names)
