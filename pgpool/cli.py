"""Command line: `pgpool --config FILE [--set KEY=VALUE ...] [-v]`. Argument parsing, and the
top of the import graph: it hands the operator surfaces (admin console, /metrics and health,
janitor, stats log) down to App, which never imports them."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from . import admin, describe_version, http, janitor, statslog, top
from .app import App, Surfaces
from .auth import AuthFileError
from .hba import HbaError
from .config import ConfigError, load_settings
from .log import setup_logging
from .tls import build_contexts
from .workers import run_workers

log = logging.getLogger("pgpool")

OPERATOR_SURFACES = Surfaces(open_console=admin.open_console, start_http=http.start,
                             run_janitor=janitor.run_janitor, start_stats_log=statslog.start)


class PrintVersion(argparse.Action):
    """--version: describe_version() on one line (argparse's own action wraps a long build description)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and the build (compiled or pure Python), then exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(describe_version())
        parser.exit()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pgpool", description="PostgreSQL connection pooler (PgBouncer-compatible settings).",
        epilog="`pgpool top [DSN ...]`: a live view of running pgpools through their admin consoles "
               "(pgpool top --help).")
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="pgpool TOML or an existing pgbouncer.ini (with its auth_file)")
    parser.add_argument("--set", "-s", metavar="KEY=VALUE", action="append", default=[],
                        help="override a setting (repeatable); wins over the file and PGPOOL_* variables")
    parser.add_argument("--verbose", "-v", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run N pgpool processes on one port (so_reuseport), peered for cancel requests")
    parser.add_argument("--version", action=PrintVersion)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["top"]:
        return top.main(argv[1:])
    args = parse_args(argv)
    overrides: dict[str, str] = {}
    for item in args.set:
        if "=" not in item:
            print(f"pgpool: --set expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    try:
        loaded = load_settings(args.config, overrides)
    except ConfigError as error:
        print(f"pgpool: invalid configuration: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"pgpool: cannot read configuration: {error}", file=sys.stderr)
        return 2
    settings = loaded.settings
    setup_logging(settings.log_format, max(args.verbose, settings.verbose), settings.logfile or None)
    if args.check:
        try:
            build_contexts(settings)   # certificate and key files are read here, not in config.py
        except ConfigError as error:
            print(f"pgpool: invalid configuration: {error}", file=sys.stderr)
            return 2
        for warning in loaded.warnings:
            print(f"warning: {warning}")
        print("configuration ok")
        return 0
    if args.workers > 1:
        return run_workers(args.config, overrides, settings, args.workers, args.verbose)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:   # uvloop is a dependency; run anyway, slower, where it cannot load
        runner = asyncio.run
    try:
        app = App(loaded, overrides, OPERATOR_SURFACES)
    except AuthFileError as error:
        print(f"pgpool: invalid auth_file: {error}", file=sys.stderr)
        return 2
    except HbaError as error:
        print(f"pgpool: invalid auth_hba_file/auth_ident_file: {error}", file=sys.stderr)
        return 2
    except ConfigError as error:   # TLS files that cannot be used
        print(f"pgpool: invalid configuration: {error}", file=sys.stderr)
        return 2
    try:
        return runner(_serve(app))
    except KeyboardInterrupt:
        return 0


async def _serve(app) -> int:
    try:
        await app.start()
    except OSError as error:
        log.error("pgpool cannot start: %s", error)
        return 1
    app.install_signal_handlers()
    if app.settings.pidfile:
        with open(app.settings.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    log.info("%s started (pid %d)", describe_version(), os.getpid())
    await app.wait_stopped()
    if app.settings.pidfile:
        try:
            os.unlink(app.settings.pidfile)
        except OSError:
            pass
    log.info("pgpool stopped")
    return 0
