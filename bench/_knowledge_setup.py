"""Shared set-up of the knowledge benchmarks: Django on a dedicated, kept database.

The benchmarks never touch the development database: they create (or reuse, with its data) the
database named by BENCH_DATABASE_NAME, migrated like a test database, on the same PostgreSQL server.
"""

from __future__ import annotations

import base64
import os
import secrets
from typing import Any


def setup(database_name: str) -> Any:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("SECRET_KEY_ID", "bench-k1")
    os.environ.setdefault("SECRET_ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    os.environ.setdefault("ADMIN_API_KEY", "adm_bench_" + secrets.token_urlsafe(16))
    os.environ.setdefault("REDIS_KEY_PREFIX", f"bench{os.getpid()}")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["TEST_DATABASE_NAME"] = os.environ.get("BENCH_DATABASE_NAME", database_name)
    from config import local

    local.for_tests(os.environ)  # the embedded servers (unless DATABASE_URL / REDIS_URL name others)
    import django

    django.setup()
    from django.db import connection

    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False, keepdb=True)
    return connection


def setup_django(redis_prefix: str) -> None:
    """Django on the platform's database as ``make test`` finds it (the embedded server unless
    DATABASE_URL names another), this run's own Redis key prefix and throwaway keys, quiet logs: for the
    benchmarks that make their own database afterwards (or none)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["REDIS_KEY_PREFIX"] = redis_prefix
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    from config import local

    local.for_tests(os.environ)
    import django

    django.setup()


def start_worker(queues: tuple[str, ...] = ("indexing", "default"), concurrency: int = 1) -> Any:
    """A real Celery worker (threads) on the real broker, inside this process: returns a context manager."""
    from celery.contrib.testing.worker import start_worker as _start

    from config.celery import app

    return _start(
        app,
        pool="threads",
        concurrency=concurrency,
        perform_ping_check=False,
        shutdown_timeout=60,
        queues=list(queues),
        loglevel="WARNING",
    )


def worker_process(connection: Any, queues: str = "indexing,default") -> Any:
    """A real Celery worker in its own process (threads pool, 1 thread) on the bench database."""
    import subprocess
    import sys
    from pathlib import Path
    from urllib.parse import urlparse, urlunparse

    from django.conf import settings

    env = dict(os.environ)
    url = urlparse(settings.DATABASE_URL)
    env["DATABASE_URL"] = urlunparse(url._replace(path="/" + connection.settings_dict["NAME"]))
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config.celery", "worker", "-Q", queues, "-P", "threads", "-c", "1",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "ERROR"],
        cwd=Path(__file__).resolve().parent.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
