"""Prometheus metrics with ``prometheus_client``, at GET /metrics (text format 0.0.4).

**Several processes, one exposition.** Every process (daphne, each Celery worker process, beat) writes
its counters and histograms to its own memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR``; a scrape
of /metrics merges every file of the directory (``MultiProcessCollector``), so a turn timed in a
worker shows at the API's /metrics. Writing is an in-process mmap update: no Redis or network round
trip on any request. The directory must be empty when the processes that share it start (their pids
name the files): ``config.launcher`` creates a fresh one for ``make run`` and the tests; each
docker-compose container and Kubernetes pod gets its own empty tmpfs/emptyDir, and its worker
processes serve theirs on ``METRICS_PORT`` (``serve_worker_metrics``). Without the variable (a bare
``manage.py`` command) the metrics stay in the process and /metrics shows that process's.

**Declared once, per area.** Each app declares its own metrics in its ``metrics.py`` with ``counter``
and ``histogram`` (names without the ``metachat_`` prefix, which is added here) and records with
``incr(name, **labels)`` / ``observe(name, seconds, **labels)`` or the returned objects. Gauges that
describe stored state (backlogs, queue depths, lags) are computed at scrape time by callables each app
registers with ``register_gauge``, so this module knows no app.

**Bounded tenant label.** ``tenant_label(tenant_id)`` is the tenant's slug for the METRICS_TENANT_LABELS
busiest tenants (the ranking an app registers with ``register_tenant_ranking``: conversations ranks by
messages over the last closed days) and ``other`` for the rest, refreshed every
METRICS_TENANT_LABELS_REFRESH_SECONDS per process.

A metrics failure never breaks the caller: it is logged and dropped. The endpoint needs the admin API
key (``Authorization: Bearer $ADMIN_API_KEY``, which Prometheus' ``authorization`` scrape setting sends)
unless METRICS_PUBLIC=true.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # The client opens its files in this directory from the first metric on (it picks its mode when
    # first imported, below). A directory that cannot be made leaves this process's metrics in memory.
    try:
        os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    except OSError as exc:
        logging.getLogger(__name__).error(
            "metrics kept in this process: PROMETHEUS_MULTIPROC_DIR cannot be created",
            extra={"path": os.environ.pop("PROMETHEUS_MULTIPROC_DIR"), "error": str(exc)},
        )

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

from config.redis_clients import client_for

logger = logging.getLogger(__name__)
disable_created_metrics()  # as in multiprocess mode: no *_created series

PREFIX = "metachat_"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
Sample = tuple[str, dict[str, str], float]

# Bucket sets (seconds), by what is timed.
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LLM_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0)

_DECLARED = CollectorRegistry(auto_describe=True)  # the in-process registry (no multiprocess directory)
_metrics: dict[str, Counter | Histogram] = {}
_gauges: dict[str, tuple[str, Callable[[], Iterable[Sample]]]] = {}


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


# --- declaring and recording -------------------------------------------------------------------------


def _declare(
    kind: type[Counter] | type[Histogram],
    name: str,
    help_text: str,
    labels: Sequence[str],
    initial: Iterable[Mapping[str, str]],
    **kwargs: Any,
) -> Any:
    assert _NAME.match(name) and not name.startswith(PREFIX), name
    if name in _metrics:  # a module imported twice (tests reloading it): the same metric
        return _metrics[name]
    metric = kind(PREFIX + name, help_text, labelnames=tuple(labels), registry=_DECLARED, **kwargs)
    for values in initial:  # known label values exported at 0 from the start (no missing series)
        metric.labels(**values)
    _metrics[name] = metric
    return metric


def counter(name: str, help_text: str, labels: Sequence[str] = (), initial: Iterable[Mapping[str, str]] = ()) -> Any:
    """A counter ``metachat_<name>`` (``name`` ends in ``_total``)."""
    assert name.endswith("_total"), name
    return _declare(Counter, name, help_text, labels, initial)


def histogram(
    name: str,
    help_text: str,
    labels: Sequence[str] = (),
    buckets: Sequence[float] = STAGE_BUCKETS,
    initial: Iterable[Mapping[str, str]] = (),
) -> Any:
    """A histogram ``metachat_<name>`` (``name`` ends in its unit, ``_seconds``)."""
    assert name.endswith("_seconds"), name
    return _declare(Histogram, name, help_text, labels, initial, buckets=tuple(buckets))


def incr(name: str, amount: float = 1, **labels: str) -> None:
    """Add to the declared counter ``name`` (``incr("webhook_requests_total", platform=..., outcome=...)``).
    Never raises for a metrics reason; an undeclared name or wrong labels is a bug, logged."""
    try:
        metric = _metrics[name]
        (metric.labels(**labels) if labels else metric).inc(amount)  # type: ignore[union-attr]
    except Exception as exc:
        logger.error("metric not counted", extra={"metric": name, "error": str(exc)[:200]})


def observe(name: str, seconds: float, **labels: str) -> None:
    """Record ``seconds`` in the declared histogram ``name``. Never raises (see ``incr``)."""
    try:
        metric = _metrics[name]
        (metric.labels(**labels) if labels else metric).observe(seconds)  # type: ignore[union-attr]
    except Exception as exc:
        logger.error("metric not observed", extra={"metric": name, "error": str(exc)[:200]})


# --- the tenant label ----------------------------------------------------------------------------------

OTHER_TENANT = "other"


class _TenantLabels:
    """tenant id → label, from the registered ranking, refreshed at most every refresh interval."""

    def __init__(self) -> None:
        self.ranking: Callable[[int], list[tuple[Any, str]]] | None = None
        self.labels: dict[str, str] = {}
        self.loaded_at = -1e18
        self.lock = threading.Lock()

    def label(self, tenant_id: Any) -> str:
        if time.monotonic() - self.loaded_at > settings.METRICS_TENANT_LABELS_REFRESH_SECONDS:
            self.refresh()
        return self.labels.get(str(tenant_id), OTHER_TENANT)

    def refresh(self) -> None:
        # One thread refreshes; the others go on with the labels they have (none at the very start).
        if self.ranking is None or not self.lock.acquire(blocking=False):
            return
        try:
            ranked = self.ranking(settings.METRICS_TENANT_LABELS)
            self.labels = {str(tenant_id): slug for tenant_id, slug in ranked}
        except Exception as exc:
            logger.warning("tenant labels not refreshed", extra={"error": str(exc)[:200]})
        finally:
            self.loaded_at = time.monotonic()
            self.lock.release()


_tenant_labels = _TenantLabels()


def register_tenant_ranking(fn: Callable[[int], list[tuple[Any, str]]]) -> None:
    """``fn(n)``: the n busiest tenants as (tenant id, slug), busiest first."""
    _tenant_labels.ranking = fn
    _tenant_labels.loaded_at = -1e18


def tenant_label(tenant_id: Any) -> str:
    """The ``tenant`` label value of a tenant: its slug among the busiest N, else ``other``."""
    return _tenant_labels.label(tenant_id)


def reset_tenant_labels() -> None:
    """Forget the cached ranking: the next label reads it again (tests, after creating tenants)."""
    _tenant_labels.loaded_at = -1e18


# --- scrape-time gauges ---------------------------------------------------------------------------------


def register_gauge(name: str, help_text: str, fn: Callable[[], Iterable[Sample]]) -> None:
    """``fn`` yields (name, labels, value) samples at scrape time (stored state: backlogs, lags)."""
    _gauges[name] = (help_text, fn)


class _ScrapeGauges:
    """Each registered gauge, its samples under its own name only (a sample of another name below a
    ``# TYPE`` line would be read as untyped)."""

    def collect(self) -> Iterator[Metric]:
        for name, (help_text, fn) in sorted(_gauges.items()):
            metric = Metric(name, help_text, "gauge")
            try:
                for sample_name, labels, value in fn():
                    if sample_name != name:
                        raise ValueError(f"sample {sample_name!r} under gauge {name!r}")
                    metric.add_sample(sample_name, labels, float(value))
            except Exception as exc:
                logger.warning("gauge failed", extra={"gauge": name, "error": str(exc)[:200]})
                continue
            yield metric


class _Declared:
    """This process's own values (no multiprocess directory)."""

    def collect(self) -> Iterator[Metric]:
        yield from _DECLARED.collect()


def scrape_registry(*, gauges: bool = True) -> CollectorRegistry:
    """What a scrape collects: every process's counters and histograms (the files of the multiprocess
    directory, else this process's), then (``gauges``) the scrape-time gauges."""
    registry = CollectorRegistry()
    directory = multiprocess_dir()
    if directory:
        MultiProcessCollector(registry, path=directory)
    else:
        registry.register(_Declared())
    if gauges:
        registry.register(_ScrapeGauges())
    return registry


def render(*, gauges: bool = True) -> bytes:
    return generate_latest(scrape_registry(gauges=gauges))


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not getattr(settings, "METRICS_PUBLIC", False):
        from tenants.auth import key_from_request

        given = key_from_request(request)
        if not (
            settings.ADMIN_API_KEY and given and hmac.compare_digest(given.encode(), settings.ADMIN_API_KEY.encode())
        ):
            return HttpResponse("admin API key required\n", status=401, content_type="text/plain")
    return HttpResponse(render(), content_type=CONTENT_TYPE_PLAIN_0_0_4)


# --- HTTP: latency by route -------------------------------------------------------------------------------

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_http = histogram(
    "http_request_duration_seconds",
    "HTTP requests by route (URL pattern name), method and status class, from the first byte in to the last out",
    labels=("route", "method", "status"),
    buckets=HTTP_BUCKETS,
)
# Refused before routing (config.ingress): body too large, NUL characters, ...
counter("http_requests_refused_total", "HTTP requests refused before reaching a view, by reason", labels=("reason",))


@functools.lru_cache(maxsize=4096)
def route_of(path: str) -> str:
    """The URL pattern's name (``namespace:name``, else the view's dotted path) of ``path``; ``static``
    under STATIC_URL; ``unmatched`` for any other unknown path (a scanner's paths add no series)."""
    from django.urls import Resolver404, resolve

    try:
        return resolve(path).view_name
    except Resolver404:
        static = settings.STATIC_URL or ""
        return "static" if static.startswith("/") and path.startswith(static) else "unmatched"


class HttpMetrics:
    """ASGI middleware (outermost, see config.asgi): every HTTP request's duration by route, method and
    status class, Django's views and the webhook fast path alike. One histogram observation each."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # No answer started: "disconnected" (the client went away, the server cancelled the request),
        # unless the application raised ("5xx").
        status = "disconnected"

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = f"{message['status'] // 100}xx"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            if status == "disconnected":
                status = "5xx"
            raise
        finally:
            method = scope.get("method", "")
            try:
                _http.labels(
                    route=route_of(scope.get("path", "")),
                    method=method if method in HTTP_METHODS else "other",
                    status=status,
                ).observe(time.perf_counter() - started)
            except Exception as exc:
                logger.error("metric not observed", extra={"metric": "http", "error": str(exc)[:200]})


# --- database: query time ---------------------------------------------------------------------------------

DB_OPERATIONS = ("select", "insert", "update", "delete", "other")
_db = histogram(
    "db_query_duration_seconds",
    "Database statements run through Django's cursors, by statement kind (WITH ... counts as other)",
    labels=("operation",),
    buckets=DB_BUCKETS,
    initial=[{"operation": op} for op in DB_OPERATIONS],
)
_db_children = {op: _db.labels(operation=op) for op in DB_OPERATIONS}
_FIRST_WORD = re.compile(r"\s*([A-Za-z]+)")


def _timed_statement(execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any) -> Any:
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        elapsed = time.perf_counter() - started
        word = _FIRST_WORD.match(sql) if isinstance(sql, str) else None
        child = _db_children.get(word.group(1).lower() if word else "other") or _db_children["other"]
        try:
            child.observe(elapsed)
        except Exception as exc:
            logger.error("metric not observed", extra={"metric": "db", "error": str(exc)[:200]})


def _time_statements(sender: Any, connection: Any, **_: Any) -> None:
    """Every new database connection times its statements (Django's execute_wrappers: a wrapper kept
    on the connection object, which outlives reconnections; added once). First in the list, outermost:
    a ``with connection.execute_wrapper(w)`` block that opened the connection pops its own ``w``."""
    if _timed_statement not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, _timed_statement)


def _connect_database_timing() -> None:
    from django.db.backends.signals import connection_created

    connection_created.connect(_time_statements, dispatch_uid="metachat-metrics-db-timing")


_connect_database_timing()


# --- Celery: queue depth at scrape time -----------------------------------------------------------------

# kombu's Redis transport keeps a queue's messages of priority p in "<queue>\x06\x16<p>" (p in 3, 6, 9).
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def celery_queues() -> list[str]:
    routes = settings.CELERY_TASK_ROUTES.values()
    return sorted({settings.CELERY_TASK_DEFAULT_QUEUE} | {r["queue"] for r in routes if "queue" in r})


def celery_queue_gauge() -> Iterable[Sample]:
    """Messages waiting in each Celery queue (the Redis broker's lists, read at scrape time; tasks a
    worker has taken are not counted). Nothing for another broker."""
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return
    prefix = (settings.CELERY_BROKER_TRANSPORT_OPTIONS or {}).get("global_keyprefix", "")
    queues = celery_queues()
    pipe = client_for(url).pipeline(transaction=False)
    for queue in queues:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(f"{prefix}{queue}{suffix}")
    lengths = pipe.execute()
    step = len(_PRIORITY_SUFFIXES)
    for index, queue in enumerate(queues):
        yield "metachat_celery_queue_length", {"queue": queue}, sum(lengths[index * step : (index + 1) * step])


register_gauge("metachat_celery_queue_length", "Messages waiting in a Celery queue", celery_queue_gauge)


# --- a worker's own endpoint ------------------------------------------------------------------------------


def serve_worker_metrics(**_: Any) -> None:
    """A Celery worker in a container of its own (compose, Kubernetes) serves its processes' metrics on
    METRICS_PORT (no scrape-time gauges: the API's /metrics has those). Unset under ``make run``, where
    every process shares one directory and the API's /metrics shows them all. Connected to
    ``worker_ready`` (the worker's main process)."""
    port = os.environ.get("METRICS_PORT", "")
    if not port:
        return
    from prometheus_client import start_http_server

    start_http_server(int(port), registry=scrape_registry(gauges=False))
    logger.info("worker metrics served", extra={"port": int(port)})


def _connect_worker_server() -> None:
    from celery import signals

    signals.worker_ready.connect(serve_worker_metrics, weak=False, dispatch_uid="metachat-worker-metrics")


_connect_worker_server()
