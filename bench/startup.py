"""Cold start of `make run` and idle memory of its processes.

Starts the platform exactly as `make run` does (``python -m config.launcher run``) with an empty
VAR_DIR (first start: initdb, migrations, demo bootstrap) and then again on the same data (second
start), measuring the time until /api/health answers 200, and the resident memory (RSS) of daphne,
the workers and beat once idle. ``--fresh-clone`` also measures a first ``make run`` in a fresh clone
(venv creation and package installation included).

    python -m bench.startup [--port 8190] [--fresh-clone]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def start(
    cmd: list[str], cwd: Path, env: dict[str, str], port: int, timeout: float = 900
) -> tuple[subprocess.Popen, float]:
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    while not _healthy(port):
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd} exited with {proc.returncode} before becoming healthy")
        if time.monotonic() - started > timeout:
            raise RuntimeError("timed out waiting for /api/health")
        time.sleep(0.1)
    return proc, time.monotonic() - started


def stop(proc: subprocess.Popen) -> float:
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    return time.monotonic() - started


def rss_by_role(proc: subprocess.Popen) -> dict[str, float]:
    roles: dict[str, float] = {}
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            args = " ".join(child.cmdline())
            rss = child.memory_info().rss / 2**20
        except psutil.Error:
            continue
        if "daphne" in args:
            role = "daphne"
        elif " beat" in args:
            role = "beat"
        elif "-Q webhooks" in args:
            role = "webhook worker (threads)"
        elif "-Q indexing" in args:
            role = "indexing worker (incl. pool process)"
        elif "worker" in args:
            role = "turns worker (threads)"
        elif "postgres" in args:
            role = "embedded postgres"
        elif "redis-server" in args:
            role = "embedded redis"
        else:
            continue
        roles[role] = roles.get(role, 0.0) + rss
    return roles


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8190)
    parser.add_argument("--redis-port", type=int, default=6397)
    parser.add_argument("--idle-seconds", type=float, default=10)
    parser.add_argument("--fresh-clone", action="store_true")
    args = parser.parse_args(argv)

    var_dir = Path(tempfile.mkdtemp(prefix="metachat-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_ENCRYPTION_KEY"}}
    env.update(PORT=str(args.port), VAR_DIR=str(var_dir), EMBEDDED_REDIS_PORT=str(args.redis_port))
    cmd = [sys.executable, "-m", "config.launcher", "run"]
    try:
        proc, first = start(cmd, ROOT, env, args.port)
        stop(proc)
        proc, second = start(cmd, ROOT, env, args.port)
        time.sleep(args.idle_seconds)
        memory = rss_by_role(proc)
        stopped_in = stop(proc)
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)

    print(f"first start (empty data: initdb, migrate, bootstrap) to healthy: {first:.1f} s")
    print(f"second start (same data) to healthy:                       {second:.1f} s")
    print(f"Ctrl-C to everything stopped:                              {stopped_in:.1f} s")
    print(f"idle RSS after {args.idle_seconds:.0f} s:")
    for role, mib in sorted(memory.items()):
        print(f"  {role:32s} {mib:7.1f} MiB")

    if args.fresh_clone:
        clone = Path(tempfile.mkdtemp(prefix="metachat-clone-"))
        try:
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            env2 = dict(env, VAR_DIR=str(clone / "var"))
            proc, fresh = start(["make", "run"], clone, env2, args.port, timeout=1800)
            stop(proc)
            print(f"fresh clone `make run` (venv + install + first start) to healthy: {fresh:.1f} s")
        finally:
            shutil.rmtree(clone, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
