"""Shared fixtures. Tests run against the real PostgreSQL+pgvector, Redis and RabbitMQ (see README).

Run them through ``make test`` or ``python -m config.launcher pytest [args]``, which set the
environment (test encryption key, admin key, a Redis key prefix unique to the run).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from tenants import services
from tenants.models import Tenant
from tests.browser import browser  # noqa: F401 (the Chromium fixture, for every browser test)


@pytest.fixture
def make_tenant(db: Any) -> Callable[..., Tenant]:
    counter = {"n": 0}

    def make(name: str | None = None, **kwargs: Any) -> Tenant:
        counter["n"] += 1
        return services.tenant_create(name=name or f"Tenant {counter['n']}", **kwargs)

    return make


@pytest.fixture
def tenant(make_tenant: Callable[..., Tenant]) -> Tenant:
    return make_tenant("Acme")


@pytest.fixture
def other_tenant(make_tenant: Callable[..., Tenant]) -> Tenant:
    return make_tenant("Globex")


@pytest.fixture
def admin_api() -> APIClient:
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=settings.ADMIN_API_KEY)
    return client


@pytest.fixture
def api_for() -> Callable[[Tenant], APIClient]:
    """``api_for(tenant)``: an API client authenticated with a fresh key of that tenant."""

    def make(tenant: Tenant) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_X_API_KEY=services.api_key_create(tenant=tenant).raw_key)
        return client

    return make


@pytest.fixture
def tenant_api(api_for: Callable[[Tenant], APIClient], tenant: Tenant) -> APIClient:
    return api_for(tenant)


@pytest.fixture
def redis_client() -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@contextlib.contextmanager
def _worker(*, keep_connections: bool) -> Iterator[Any]:
    from celery.contrib.testing.worker import start_worker
    from celery.signals import task_postrun
    from django.db import connections

    from config.celery import app

    def close_thread_connections(**_kwargs: Any) -> None:
        connections.close_all()

    if not keep_connections:
        task_postrun.connect(close_thread_connections, weak=False)
    queues = ",".join(sorted({"default", "indexing", "webhooks"} | set(_routed_queues())))
    try:
        with start_worker(
            app,
            pool="threads",
            concurrency=4,
            perform_ping_check=False,
            shutdown_timeout=30,
            queues=queues.split(","),
            loglevel="WARNING",
        ) as worker:
            yield worker
    finally:
        task_postrun.disconnect(close_thread_connections)
    if keep_connections:
        terminate_other_sessions()


@pytest.fixture
def live_worker(transactional_db: Any) -> Iterator[Any]:
    """A real Celery worker (threads pool) consuming the real Redis broker, for this test.

    The worker sees only committed data, hence ``transactional_db``. Queues: every queue the
    platform routes to. In production a worker thread keeps its database connection between tasks;
    these threads end with the test, so here each closes its connection after every task.
    (Terminating the other sessions at the end instead also killed connections this test process
    still used: the one Playwright's greenlets open in the main thread.)
    """
    with _worker(keep_connections=False) as worker:
        yield worker


@pytest.fixture
def live_worker_keeping_connections(transactional_db: Any) -> Iterator[Any]:
    """``live_worker`` whose threads keep their database connections between tasks, as in production
    (for tests of what happens to those connections); the sessions are terminated at the end."""
    with _worker(keep_connections=True) as worker:
        yield worker


def terminate_other_sessions() -> int:
    """End every other session on the test database (threads that ended without closing theirs)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


@pytest.fixture(scope="session", autouse=True)
def _test_database_droppable(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Before pytest-django drops the test database: no session of a finished thread may hold it."""
    yield
    with django_db_blocker.unblock():
        terminate_other_sessions()


def _routed_queues() -> list[str]:
    routes = getattr(settings, "CELERY_TASK_ROUTES", {}) or {}
    return [r["queue"] for r in routes.values() if isinstance(r, dict) and "queue" in r]


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; return its value or fail with a clear message."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def local_http_server() -> Iterator[Callable[..., Any]]:
    """Start real local HTTP servers in threads: ``server = local_http_server(HandlerClass)``.

    Returns an object with ``.url`` (http://127.0.0.1:PORT) and ``.server`` (the ThreadingHTTPServer).
    """
    from http.server import ThreadingHTTPServer

    servers: list[ThreadingHTTPServer] = []

    class Running:
        def __init__(self, server: ThreadingHTTPServer):
            self.server = server
            self.url = f"http://127.0.0.1:{server.server_address[1]}"

    def start(handler: Any) -> Running:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Running(server)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def pg_dump_text(transactional_db: Any) -> Callable[[], str]:
    """``pg_dump_text()``: a plain-SQL dump of the whole test database, as another process sees it."""
    import subprocess

    from django.db import connection

    from config.embedded import postgres_bin

    def dump() -> str:
        params = connection.get_connection_params()
        cmd = [postgres_bin("pg_dump"), "--no-owner", "--data-only", "-d", params["dbname"]]
        if params.get("host"):
            cmd += ["-h", params["host"]]
        if params.get("port"):
            cmd += ["-p", str(params["port"])]
        cmd += ["-U", params.get("user") or "postgres"]
        env = {"PGPASSWORD": params.get("password") or "", "PATH": "/usr/bin:/bin"}
        return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=120).stdout

    return dump
