"""Hostile request bodies against a running daphne: what one unauthenticated client costs the server.

Starts one daphne process as `make run` does (``config.serve.start_daphne`` on a shared socket, the
same ``config.asgi:application``) and measures its resident memory (VmRSS) around:
  a. a 100 MB multipart POST to ``/api/tenants/`` without an API key (declared Content-Length);
  b. a POST declaring ``Content-Length: 2147483648`` that sends a few bytes and then nothing, and the
     same declaring 4 MB (under the body limit, so only the read deadline can end it): the time until
     the server closes each connection.
Nothing is written to the database: both requests are refused before any view runs.

Targets: RSS +<= 50 MB after each; the stalled connection closed within 10 s.

    python -m bench._abuse_bodies (or all of it: python -m bench.abuse)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

BIG_BODY_BYTES = 100 * 1024 * 1024
DECLARED_BYTES = 2 * 1024 * 1024 * 1024
STALLED_BYTES = 4 * 1024 * 1024  # under the API's body limit: the read deadline has to end it
STALL_LIMIT_SECONDS = 120.0


def run() -> list[tuple[str, str]]:
    """Start daphne, run both attacks, stop daphne; the figures as (label, value) pairs."""
    from config.launcher import test_env
    from config.serve import listening_socket, start_daphne

    env, _started = test_env()
    env["LOG_LEVEL"] = "WARNING"
    port = _free_port()
    sock = listening_socket("127.0.0.1", port)
    (daphne,) = start_daphne(sock, 1, env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sock.close()
    try:
        _wait_until_serving(daphne, port)
        _small_post(port)  # warm: the first request imports the views and opens nothing else
        figures: list[tuple[str, str]] = []

        before = _rss_mb(daphne.pid)
        status, elapsed = _big_multipart_post(port)
        time.sleep(1.0)
        after = _rss_mb(daphne.pid)
        figures += [
            ("100 MB multipart POST /api/tenants/ without a key: answer", f"{status} in {elapsed:.2f} s"),
            ("  daphne RSS before / after", f"{before:.0f} MB / {after:.0f} MB (+{after - before:.0f} MB)"),
        ]

        for declared in (DECLARED_BYTES, STALLED_BYTES):
            before = _rss_mb(daphne.pid)
            status, closed_after = _stalled_declared_body(port, declared)
            after = _rss_mb(daphne.pid)
            closed = f"closed after {closed_after:.1f} s" if closed_after is not None else "still open"
            figures += [
                (f"POST declaring {_size(declared)}, sending 10 bytes: answer", f"{status}, connection {closed}"),
                ("  daphne RSS before / after", f"{before:.0f} MB / {after:.0f} MB (+{after - before:.0f} MB)"),
            ]
        return figures
    finally:
        daphne.send_signal(signal.SIGTERM)
        try:
            daphne.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daphne.kill()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(daphne: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if daphne.poll() is not None or time.monotonic() > deadline:
                error = daphne.stderr.read().decode()[-2000:] if daphne.stderr else ""
                raise RuntimeError(f"daphne did not start: {error}") from None
            time.sleep(0.2)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _small_post(port: int) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/tenants/", data=b'{"name": "x"}', headers={"Content-Type": "application/json"}
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as exc:
        exc.close()


class _Reader(threading.Thread):
    """Reads whatever the server answers on ``conn`` until it closes the connection."""

    def __init__(self, conn: socket.socket):
        super().__init__(daemon=True)
        self.conn = conn
        self.data = b""
        self.answered_at: float | None = None
        self.closed_at: float | None = None

    def run(self) -> None:
        try:
            while chunk := self.conn.recv(65536):
                self.answered_at = self.answered_at or time.monotonic()
                self.data += chunk
        except OSError:
            pass
        self.closed_at = time.monotonic()

    @property
    def status(self) -> str:
        first = self.data.split(b"\r\n", 1)[0].decode("latin-1")
        return first.split(" ", 1)[1] if " " in first else "no answer"


def _big_multipart_post(port: int) -> tuple[str, float]:
    boundary = "----abusebench"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + BIG_BODY_BYTES + len(tail)
    conn = socket.create_connection(("127.0.0.1", port), timeout=STALL_LIMIT_SECONDS)
    reader = _Reader(conn)
    reader.start()
    started = time.monotonic()
    try:
        conn.sendall(
            f"POST /api/tenants/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {length}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
        )
        conn.sendall(head)
        piece = b"x" * (1024 * 1024)
        for _ in range(BIG_BODY_BYTES // len(piece)):
            if reader.closed_at is not None:
                break
            conn.sendall(piece)
        conn.sendall(tail)
    except OSError:
        pass  # the server refused the body and closed: its answer is what the reader got
    reader.join(STALL_LIMIT_SECONDS)
    conn.close()
    return reader.status, (reader.answered_at or time.monotonic()) - started


def _size(n: int) -> str:
    return f"{n / 1024**3:.0f} GB" if n >= 1024**3 else f"{n / 1024**2:.0f} MB"


def _stalled_declared_body(port: int, declared: int) -> tuple[str, float | None]:
    conn = socket.create_connection(("127.0.0.1", port), timeout=STALL_LIMIT_SECONDS)
    reader = _Reader(conn)
    reader.start()
    started = time.monotonic()
    conn.sendall(
        f"POST /api/tenants/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f'Content-Length: {declared}\r\n\r\n{{"name": '.encode()
    )
    reader.join(STALL_LIMIT_SECONDS)
    conn.close()
    closed_after = reader.closed_at - started if reader.closed_at is not None else None
    return reader.status, closed_after


def main(argv: list[str]) -> int:
    for label, figure in run():
        print(f"{label}: {figure}", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.exit(main(sys.argv[1:]))
