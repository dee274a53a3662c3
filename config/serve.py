"""The web process (the Procfile's ``web``): daphne serving HTTP and WebSocket on HOST:PORT.

With ``WEB_CONCURRENCY`` = 1 (a container, a Kubernetes pod: scale by replicas) this process becomes
daphne. With more (``make run``: 2), it opens one listening socket and starts that many daphne
processes accepting on it (``--fd``): the kernel spreads connections over them, so HTTP and WebSocket
traffic uses every core, not one Python process; it forwards SIGTERM/SIGINT to them and exits when
any of them does (its supervisor then restarts or stops the whole group).

daphne's own per-request access line is off (``-v 0``): the application writes one JSON access line
per request itself (config.logs), with the route, the tenant and the correlation id. ``DAPHNE_ACCESS_LOG``
(a file or ``-``) turns daphne's plain-text one on as well.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def listening_socket(host: str, port: int) -> socket.socket:
    """One listening TCP socket that several daphne processes accept on (``--fd``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def daphne_logging(env: Mapping[str, str] | None = None) -> list[str]:
    access_log = (env or os.environ).get("DAPHNE_ACCESS_LOG", "")
    return ["--access-log", access_log] if access_log else ["-v", "0"]


def daphne_command(sock: socket.socket, env: Mapping[str, str] | None = None) -> list[str]:
    """daphne accepting on an inherited socket."""
    return [PY, "-m", "daphne", "--fd", str(sock.fileno()), *daphne_logging(env), "config.asgi:application"]


def start_daphne(
    sock: socket.socket, processes: int, env: Mapping[str, str], stdout: Any = None, stderr: Any = None
) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            daphne_command(sock, env), cwd=ROOT, env=dict(env), pass_fds=[sock.fileno()], stdout=stdout, stderr=stderr
        )
        for _ in range(processes)
    ]


def stop_processes(children: list[subprocess.Popen], *, grace: float = 15.0, signal_sent: bool = False) -> None:
    """SIGTERM each child still running (unless already sent), wait up to ``grace`` seconds in all for
    them to finish, then kill what is left."""
    if not signal_sent:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()


def main() -> int:
    host = os.environ.get("HOST", "0.0.0.0")
    port = int(os.environ.get("PORT", "8000"))
    processes = max(1, int(os.environ.get("WEB_CONCURRENCY", "1")))
    if processes == 1:
        os.execv(PY, [PY, "-m", "daphne", "-b", host, "-p", str(port), *daphne_logging(), "config.asgi:application"])  # noqa: S606
    sock = listening_socket(host, port)
    children = start_daphne(sock, processes, os.environ)
    sock.close()  # the daphne processes hold it
    stopping = {"signal": 0, "failed": 0}

    def forward(signum: int, _frame: object) -> None:
        stopping["signal"] = signum
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while not stopping["signal"]:
        exited = [child for child in children if child.poll() is not None]
        if exited:
            stopping["failed"] = 1
            forward(signal.SIGTERM, None)
            print(f"daphne exited with {exited[0].returncode}; stopping the web process", file=sys.stderr)
            break
        time.sleep(0.5)
    stop_processes(children, signal_sent=True)
    return stopping["failed"]


if __name__ == "__main__":
    sys.exit(main())
