"""Coverage-guided fuzzing of every pgpool parser that reads untrusted bytes.

Owns: the fuzz targets (`targets.py`: one plain function per parser, with the
exception types that parser documents, and seed inputs) and the runner
(`__main__.py`: `python -m benchmarks.fuzz --seconds N [--target NAME]`, which runs
each target under atheris/libFuzzer in its own process and reports executions and
coverage). Must not: hold fixes or tests (crashes found become regression tests in
tests/protocol/test_fuzz_regressions.py), or need a database or a socket.
"""
