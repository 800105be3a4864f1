"""`pgpool --workers N`: N pgpool processes on one port, peered, under one supervisor.

Owns: starting the workers (each an ordinary `python -m pgpool` with so_reuseport = 1,
peer_id = 1..N, a private Unix socket directory, and a [peers] section naming every worker's
socket, so a CancelRequest the kernel hands to the wrong worker is forwarded to the right one),
passing signals on to them, restarting a worker that dies, and the pidfile.

Must not: serve clients or read the data plane. Each worker is a complete pgpool; this module
only runs them. Per worker, metrics_port becomes metrics_port + i - 1 (0 stays off).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

from .config import Settings

log = logging.getLogger("pgpool.workers")

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
RESTART_DELAY = 1.0      # seconds before a worker that died is started again


def refuse_reason(settings: Settings) -> str | None:
    """Why --workers cannot run this configuration, or None."""
    if settings.peer_id or settings.peers:
        return "--workers assigns peer_id and [peers] itself; remove them from the configuration"
    if settings.listen_port == 0:
        return "--workers needs a fixed listen_port (all workers share it)"
    return None


def worker_command(config: str | None, overrides: Mapping[str, str], settings: Settings, index: int, count: int,
                   socket_dirs: list[Path], verbose: int) -> list[str]:
    sets = dict(overrides)
    sets.update({"so_reuseport": "1", "peer_id": str(index), "unix_socket_dir": str(socket_dirs[index - 1]),
                 "pidfile": "", "metrics_port": str(settings.metrics_port + index - 1 if settings.metrics_port else 0)})
    for peer in range(1, count + 1):
        sets[f"peers.{peer}"] = f"host={socket_dirs[peer - 1]} port={settings.listen_port}"
    command = [sys.executable, "-m", "pgpool"]
    if config:
        command += ["--config", config]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    return command + (["-" + "v" * verbose] if verbose else [])


def run_workers(config: str | None, overrides: Mapping[str, str], settings: Settings, count: int,
                verbose: int = 0) -> int:
    reason = refuse_reason(settings)
    if reason:
        print(f"pgpool: {reason}", file=sys.stderr)
        return 2
    runtime = Path(tempfile.mkdtemp(prefix="pgpool-workers-"))
    socket_dirs = [runtime / f"worker-{i}" for i in range(1, count + 1)]
    for directory in socket_dirs:
        directory.mkdir(mode=0o700)
    commands = {i: worker_command(config, overrides, settings, i, count, socket_dirs, verbose)
                for i in range(1, count + 1)}
    procs: dict[int, subprocess.Popen] = {}
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping.append(signum)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    if settings.pidfile:
        Path(settings.pidfile).write_text(f"{os.getpid()}\n")
    try:
        for index, command in commands.items():
            # Own session: a terminal's Ctrl-C reaches the supervisor, which passes it on once.
            procs[index] = subprocess.Popen(command, start_new_session=True)
        log.info("pgpool --workers %d: pids %s on port %d", count, [p.pid for p in procs.values()],
                 settings.listen_port)
        while True:
            for index, proc in list(procs.items()):
                code = proc.poll()
                if code is None or stopping:
                    continue
                log.warning("worker %d (pid %d) exited with code %s; starting it again in %gs", index, proc.pid,
                            code, RESTART_DELAY)
                time.sleep(RESTART_DELAY)
                procs[index] = subprocess.Popen(commands[index], start_new_session=True)
            if stopping and all(proc.poll() is not None for proc in procs.values()):
                return 0
            time.sleep(0.1)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(runtime, ignore_errors=True)
        if settings.pidfile:
            try:
                os.unlink(settings.pidfile)
            except OSError:
                pass
