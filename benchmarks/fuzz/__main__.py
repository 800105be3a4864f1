"""python -m benchmarks.fuzz --seconds N [--target NAME ...]: run the fuzz targets, report.

Each target runs under atheris (libFuzzer) in a child process of its own, for N seconds,
with its seeds as the starting corpus and only pgpool's modules instrumented for
coverage. The report gives, per target: executions, executions per second, libFuzzer's
coverage counters (`cov`: code edges reached, `ft`: features, i.e. edges with hit-count
buckets) and corpus size, and whether it crashed (the input is kept as a file; replay it
with `--target NAME --replay FILE`, which needs no atheris).

A crash is any exception other than the documented refusals of the target's parser,
an input that runs longer than --timeout seconds, or a process growing past --rss-mb.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ATHERIS_MISSING = (
    "atheris is not importable in this Python ({python} {version}).\n"
    "Install it with `{python} -m pip install atheris` (binary wheels exist for CPython on Linux x86_64;\n"
    "elsewhere pip builds it from source, which needs clang with libFuzzer: see https://github.com/google/atheris).\n"
    "Without atheris, `--target NAME --replay FILE` still replays saved inputs."
)

_STATUS_RE = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/", re.MULTILINE)
_EXECS_RE = re.compile(r"stat::number_of_executed_units: (\d+)")
_ARTIFACT_RE = re.compile(r"Test unit written to (\S+)")


def run_worker(name: str, seconds: int, corpus: Path, artifacts: Path, timeout: int, rss_mb: int) -> None:
    """In the child: instrument pgpool, then hand the target to libFuzzer (which exits the process)."""
    import atheris

    with atheris.instrument_imports(include=["pgpool"]):
        from benchmarks.fuzz.targets import TARGETS
    target = TARGETS[name]
    argv = [sys.argv[0], str(corpus), f"-max_total_time={seconds}", f"-timeout={timeout}",
            f"-rss_limit_mb={rss_mb}", f"-max_len={target.max_len}", "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/{name}-", "-print_pcs=0"]
    atheris.Setup(argv, target.run)
    atheris.Fuzz()


def run_target(name: str, seconds: int, corpus_root: Path, artifacts: Path, timeout: int,
               rss_mb: int) -> dict:
    """Run one target in a child process; parse libFuzzer's report."""
    from benchmarks.fuzz.targets import TARGETS   # for the seeds only; the child instruments its own copy

    corpus = corpus_root / name
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(TARGETS[name].seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    command = [sys.executable, "-m", "benchmarks.fuzz", "--worker", name, "--seconds", str(seconds),
               "--corpus", str(corpus_root), "--artifacts", str(artifacts), "--timeout", str(timeout),
               "--rss-mb", str(rss_mb)]
    started = time.monotonic()
    # Bounded: libFuzzer stops itself after max_total_time; the margin covers loading and one slow input.
    proc = subprocess.run(command, capture_output=True, text=True, errors="replace",
                          timeout=seconds + timeout + 120)
    elapsed = time.monotonic() - started
    log = proc.stdout + proc.stderr
    (artifacts / f"{name}.log").write_text(log)
    status = _STATUS_RE.findall(log)
    execs = _EXECS_RE.search(log)
    artifact = _ARTIFACT_RE.search(log)
    result = {
        "target": name,
        "seconds": round(elapsed, 1),
        "executions": int(execs.group(1)) if execs else (int(status[-1][0]) if status else 0),
        "cov": int(status[-1][1]) if status else 0,
        "ft": int(status[-1][2]) if status else 0,
        "corpus": int(status[-1][3]) if status else 0,
        "exit": proc.returncode,
        "crash": artifact.group(1) if artifact else None,
    }
    result["exec_per_s"] = round(result["executions"] / max(elapsed, 1e-9))
    if proc.returncode != 0 and not result["crash"]:
        result["crash"] = f"exit {proc.returncode}; see {artifacts / (name + '.log')}"
    if result["crash"]:
        tail = log[log.find("=== Uncaught Python exception"):] if "Uncaught" in log else log[-3000:]
        result["error"] = tail[:4000]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per target (default 60)")
    parser.add_argument("--target", action="append", help="run only this target (repeatable); see --list")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--corpus", type=Path, help="corpus directory to keep and grow across runs "
                                                    "(default: a temporary one, seeds only)")
    parser.add_argument("--artifacts", type=Path, help="where crash inputs and logs go (default: ./fuzz-artifacts)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it is a hang")
    parser.add_argument("--rss-mb", type=int, default=2048, help="memory limit of a fuzzing process")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--replay", type=Path, help="run one saved input through --target (no atheris needed)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        run_worker(args.worker, args.seconds, args.corpus / args.worker, args.artifacts, args.timeout, args.rss_mb)
        return 0

    if not (args.list or args.replay) and importlib.util.find_spec("atheris") is None:
        print(ATHERIS_MISSING.format(python=sys.executable, version=sys.version.split()[0]), file=sys.stderr)
        return 2
    from benchmarks.fuzz.targets import TARGETS

    if args.list:
        for target in TARGETS.values():
            print(f"{target.name:18} {target.doc}")
        return 0
    names = args.target or list(TARGETS)
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    if args.replay:
        if len(names) != 1:
            parser.error("--replay needs exactly one --target")
        TARGETS[names[0]].run(args.replay.read_bytes())
        print(f"{names[0]}: {args.replay} ran without a crash")
        return 0
    artifacts = (args.artifacts or Path("fuzz-artifacts")).resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    temp = None
    if args.corpus is None:
        temp = tempfile.mkdtemp(prefix="pgpool-fuzz-corpus-")
    corpus_root = (args.corpus or Path(temp)).resolve()
    results = []
    try:
        print(f"{'target':18} {'seconds':>7} {'executions':>11} {'exec/s':>7} {'cov':>5} {'ft':>6} {'corpus':>6}  result",
              flush=True)
        for name in names:
            result = run_target(name, args.seconds, corpus_root, artifacts, args.timeout, args.rss_mb)
            results.append(result)
            outcome = f"CRASH {result['crash']}" if result["crash"] else "ok"
            print(f"{name:18} {result['seconds']:7.1f} {result['executions']:11d} {result['exec_per_s']:7d} "
                  f"{result['cov']:5d} {result['ft']:6d} {result['corpus']:6d}  {outcome}", flush=True)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    crashed = [r for r in results if r["crash"]]
    for result in crashed:
        print(f"\n--- {result['target']} ---\n{result.get('error', '')}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"python": sys.version.split()[0], "seconds_per_target": args.seconds,
                                         "results": results}, indent=2) + "\n")
    print(f"\n{len(results)} target(s), {sum(r['executions'] for r in results)} executions, "
          f"{len(crashed)} crashed; logs and crash inputs in {artifacts}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
