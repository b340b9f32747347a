"""Wall time of an investigation command, verification included, run after run.

    python -m benchmarks.resume --audit TRAIL [--dsn DSN] [--runs 5] [--customer 42]

Runs ``accessguard audit who-read --customer N --format json`` ``--runs``
times as a user would (a new process each time) and prints each run's wall
time and peak memory, then the p50 of the runs after the first. The first run
verifies the whole trail and leaves a verification mark; the others resume
from it (``accessguard.audit.resume``, ``accessguard.audit.pgresume``).
``ACCESSGUARD_AUDIT_KEY`` must be set to the trail's key. With ``--fresh`` the
file trail's mark is removed first (the PostgreSQL mark lives in the XDG cache).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _run(argv: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=False)  # noqa: S603 - our own CLI
    took = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child yet
    return took, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audit", type=Path, help="a JSON-lines trail")
    source.add_argument("--dsn", help="the PostgreSQL sink")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--customer", default="42")
    parser.add_argument("--fresh", action="store_true", help="remove the file trail's mark first")
    args = parser.parse_args(argv)
    cli = shutil.which("accessguard") or str(Path(sys.executable).with_name("accessguard"))
    where = ["--audit", str(args.audit)] if args.audit else ["--dsn", args.dsn]
    if args.fresh and args.audit:
        args.audit.with_name(args.audit.name + ".verified").unlink(missing_ok=True)
    command = [cli, "audit", "who-read", *where, "--customer", args.customer, "--format", "json"]
    times = []
    for n in range(1, args.runs + 1):
        took, peak = _run(command)
        times.append(took)
        print(f"run {n}: {took:.2f} s, peak {peak / 1024:.0f} MB (largest run so far)")
    if len(times) > 1:
        print(f"p50 after the first run: {statistics.median(times[1:]):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
