"""Prometheus metrics (config.metrics) as a scrape of /metrics sees them, in this process: the admin key,
declared counters and histograms, the bounded tenant label, and the scrape-time gauges computed from
the database and the broker. The exposition of real server and worker processes after real traffic,
checked with promtool, is tests/test_metrics_promtool.py."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from config import metrics
from conversations.models import AnalyticsChannelDay
from events.models import Event
from knowledge.models import Document
from tests.metrics_scrape import families, scrape, total, value


@pytest.fixture(autouse=True)
def _fresh_tenant_labels() -> Any:
    metrics.reset_tenant_labels()
    yield
    metrics.reset_tenant_labels()


@pytest.mark.django_db
def test_metrics_need_the_admin_key(client):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer mcp_wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer " + "x").status_code == 401


@pytest.mark.django_db
def test_metrics_public_serves_without_a_key(client, settings):
    settings.METRICS_PUBLIC = True
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


@pytest.mark.django_db
def test_a_counted_request_shows_under_its_prefixed_name_with_help_and_type(client):
    before = scrape(client)
    metrics.incr("webhook_requests_total", platform="whatsapp", outcome="invalid_signature")
    metrics.incr("webhook_requests_total", platform="whatsapp", outcome="invalid_signature")
    metrics.incr("webhook_requests_total", platform="messenger", outcome="ok")

    after = scrape(client)

    name = "metachat_webhook_requests_total"
    refused = {"platform": "whatsapp", "outcome": "invalid_signature"}
    assert value(after, name, **refused) - value(before, name, **refused) == 2
    ok = {"platform": "messenger", "outcome": "ok"}
    assert value(after, name, **ok) - value(before, name, **ok) == 1
    assert "# TYPE metachat_webhook_requests_total counter" in after
    assert "# HELP metachat_webhook_requests_total Meta webhook POSTs" in after


@pytest.mark.django_db
def test_every_family_is_prefixed_typed_and_explained(client):
    body = scrape(client)
    declared = families(body)
    assert declared
    for name, kind in declared.items():
        assert name.startswith("metachat_"), name
        assert f"# HELP {name}" in body or f"# HELP {name}_total" in body, name
        if kind == "histogram":
            assert name.endswith("_seconds"), name


def test_an_undeclared_counter_or_wrong_labels_is_logged_and_never_raises(caplog):
    with caplog.at_level(logging.ERROR, logger="config.metrics"):
        metrics.incr("no_such_counter_total")
        metrics.incr("webhook_requests_total", wrong="label")
        metrics.observe("no_such_duration_seconds", 0.1)
    assert [r.getMessage() for r in caplog.records] == ["metric not counted"] * 2 + ["metric not observed"]


@pytest.mark.django_db
def test_a_failing_gauge_costs_only_itself(client, caplog):
    def broken() -> Any:
        raise RuntimeError("table gone")

    metrics.register_gauge("metachat_probe_broken", "A gauge that fails", broken)
    try:
        with caplog.at_level(logging.WARNING, logger="config.metrics"):
            body = scrape(client)
    finally:
        metrics._gauges.pop("metachat_probe_broken")
    assert "metachat_probe_broken" not in body
    assert "# TYPE metachat_conversations gauge" in body
    assert any(r.getMessage() == "gauge failed" for r in caplog.records)


@pytest.mark.django_db
def test_a_gauge_yielding_samples_of_another_name_is_left_out(client):
    metrics.register_gauge("metachat_probe_gauge", "A gauge", lambda: [("metachat_probe_other", {}, 1)])
    try:
        body = scrape(client)
    finally:
        metrics._gauges.pop("metachat_probe_gauge")
    assert "metachat_probe" not in body


@pytest.mark.django_db
def test_database_statements_are_timed_by_kind(client):
    before = scrape(client)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.execute("  select 2")
    after = scrape(client)
    name = "metachat_db_query_duration_seconds_count"
    # The two statements, and the scrape's own reads of the gauges' tables.
    assert value(after, name, operation="select") - value(before, name, operation="select") >= 2


@pytest.mark.django_db
def test_statement_timing_survives_a_wrapper_block_that_opened_the_connection():
    from django.db import connections

    seen: list[str] = []

    def spy(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    fresh = connections.create_connection("default")
    try:
        with fresh.execute_wrapper(spy), fresh.cursor() as cursor:  # connects inside the block
            cursor.execute("SELECT 1")
        assert seen == ["SELECT 1"]
        assert fresh.execute_wrappers == [metrics._timed_statement]
    finally:
        fresh.close()


# --- the tenant label -----------------------------------------------------------------------------------


def _rollup(tenant: Any, messages: int) -> None:
    from channels_app.models import Channel

    channel = Channel.objects.create(tenant=tenant, type="whatsapp", name="wa", external_id=uuid.uuid4().hex[:12])
    AnalyticsChannelDay.objects.create(
        tenant=tenant, channel=channel, day=timezone.localdate() - dt.timedelta(days=1), messages=messages
    )


@pytest.mark.django_db
def test_the_busiest_tenants_are_named_and_the_others_are_other(make_tenant, settings):
    quiet, busy, busiest = make_tenant("Quiet"), make_tenant("Busy"), make_tenant("Busiest")
    _rollup(quiet, 5)
    _rollup(busy, 50)
    _rollup(busiest, 500)
    settings.METRICS_TENANT_LABELS = 2

    assert metrics.tenant_label(busiest.pk) == busiest.slug
    assert metrics.tenant_label(busy.pk) == busy.slug
    assert metrics.tenant_label(quiet.pk) == "other"
    assert metrics.tenant_label(uuid.uuid4()) == "other"


@pytest.mark.django_db
def test_the_ranking_is_kept_until_its_refresh_interval(make_tenant, settings):
    settings.METRICS_TENANT_LABELS = 1
    settings.METRICS_TENANT_LABELS_REFRESH_SECONDS = 3600
    first = make_tenant("First")
    assert metrics.tenant_label(first.pk) == first.slug
    second = make_tenant("Second")
    _rollup(second, 1000)  # now the busiest, but the labels are only re-read after the interval
    assert metrics.tenant_label(second.pk) == "other"
    metrics.reset_tenant_labels()
    assert metrics.tenant_label(second.pk) == second.slug
    assert metrics.tenant_label(first.pk) == "other"


@pytest.mark.django_db
def test_tenants_without_rollups_fill_the_named_places_oldest_first(make_tenant, settings):
    settings.METRICS_TENANT_LABELS = 2
    tenants = [make_tenant(f"T{i}") for i in range(3)]
    assert [metrics.tenant_label(t.pk) for t in tenants] == [tenants[0].slug, tenants[1].slug, "other"]


# --- scrape-time gauges ---------------------------------------------------------------------------------


def _document(tenant: Any, status: str) -> Document:
    return Document.objects.create(
        tenant=tenant, title="doc", filename="doc.txt", format="text", size_bytes=0,
        sha256=uuid.uuid4().hex, storage_name="-", status=status,
    )  # fmt: skip


@pytest.mark.django_db
def test_indexing_backlog_by_queue_tenant_and_status(client, make_tenant, settings):
    settings.METRICS_TENANT_LABELS = 1
    named, unnamed = make_tenant("Named"), make_tenant("Unnamed")
    for _ in range(3):
        _document(named, "pending")
    _document(named, "processing")
    _document(named, "indexed")
    _document(unnamed, "pending")

    body = scrape(client)

    name = "metachat_indexing_backlog_documents"
    assert value(body, name, queue="indexing", tenant=named.slug, status="pending") == 3
    assert value(body, name, queue="indexing", tenant=named.slug, status="processing") == 1
    assert value(body, name, queue="indexing", tenant="other", status="pending") == 1
    assert total(body, name) == 5  # the indexed document is no backlog


@pytest.mark.django_db
def test_outbox_lag_is_the_age_of_the_oldest_event_not_fanned_out(client, tenant):
    assert value(scrape(client), "metachat_outbox_lag_seconds", outlet="webhook_fanout") == 0
    event = Event.objects.create(tenant=tenant, type="conversation.created", payload={}, dispatch_pending=True)
    Event.objects.filter(pk=event.pk).update(created_at=timezone.now() - dt.timedelta(minutes=10))
    Event.objects.create(tenant=tenant, type="conversation.created", payload={}, dispatch_pending=True)

    lag = value(scrape(client), "metachat_outbox_lag_seconds", outlet="webhook_fanout")

    assert 600 <= lag < 700


@pytest.mark.django_db
def test_celery_queue_depth_reads_the_broker_lists(client, redis_client, settings):
    from config.celery import app

    queues = metrics.celery_queues()
    assert {"default", "indexing", "webhooks"} <= set(queues)
    key = f"{settings.CELERY_BROKER_TRANSPORT_OPTIONS['global_keyprefix']}webhooks"
    before = value(scrape(client), "metachat_celery_queue_length", queue="webhooks")
    try:
        for _ in range(3):  # nothing consumes the queue during this test
            app.send_task("events.sweep_outbox", queue="webhooks")
        after = value(scrape(client), "metachat_celery_queue_length", queue="webhooks")
    finally:
        redis_client.delete(key)
    assert after - before == 3
    assert value(scrape(client), "metachat_celery_queue_length", queue="webhooks") == 0


def test_the_declared_stages_are_the_pipelines():
    from conversations.metrics import TURN_STAGES
    from conversations.pipeline import STAGES

    assert tuple(stage.__module__.rsplit(".", 1)[-1] for stage in STAGES) == TURN_STAGES


def _http_count(status: str) -> float:
    body = metrics.render(gauges=False).decode()
    return value(body, "metachat_http_request_duration_seconds_count", route="health", method="GET", status=status)


def _serve_once(app: Any) -> list[dict]:
    """One GET /api/health through HttpMetrics around ``app``; the messages sent."""
    import asyncio

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/api/health", "headers": []}
    asyncio.run(metrics.HttpMetrics(app)(scope, receive, send))
    return sent


def test_a_request_is_counted_by_the_status_class_it_was_answered_with():
    async def answers_503(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"down"})

    before = _http_count("5xx")
    assert [m["type"] for m in _serve_once(answers_503)] == ["http.response.start", "http.response.body"]
    assert _http_count("5xx") - before == 1


def test_an_application_error_is_5xx_and_a_request_left_unanswered_is_disconnected():
    async def fails(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("bug")

    async def client_went_away(scope: Any, receive: Any, send: Any) -> None:
        return None  # Django's handler gives up on a request whose client disconnected

    failed, gone = _http_count("5xx"), _http_count("disconnected")
    with pytest.raises(RuntimeError):
        _serve_once(fails)
    assert _serve_once(client_went_away) == []
    assert _http_count("5xx") - failed == 1
    assert _http_count("disconnected") - gone == 1


def test_routes_are_url_pattern_names_not_paths():
    assert metrics.route_of("/api/health") == "health"
    assert metrics.route_of("/metrics") == "metrics"
    assert metrics.route_of("/webhooks/whatsapp") == "webhook-whatsapp"
    assert metrics.route_of("/no/such/path/4711") == "unmatched"
    assert metrics.route_of("/static/x.js") == "static"


# --- the deployments give every process group an empty directory of its own ----------------------------


def test_every_deployed_process_writes_its_metrics_to_an_empty_writable_directory():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    app = compose["x-app"]
    assert app["environment"]["PROMETHEUS_MULTIPROC_DIR"] in app["tmpfs"]  # a tmpfs: empty at each start
    assert app["environment"]["METRICS_PORT"] == "9100"
    apps = {name: s for name, s in compose["services"].items() if s.get("image") == app["image"]}
    assert {"api", "worker", "indexing-worker", "webhook-worker", "beat", "migrate"} <= set(apps)
    for name, service in apps.items():
        assert service["environment"]["PROMETHEUS_MULTIPROC_DIR"] in service["tmpfs"], name

    base = root / "deploy" / "kubernetes" / "base"
    deployments = [
        doc
        for path in sorted(base.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "Deployment"
    ]
    assert {d["metadata"]["name"] for d in deployments} >= {
        "metachat-api", "metachat-worker-default", "metachat-worker-indexing", "metachat-worker-webhooks", "metachat-beat"
    }  # fmt: skip
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            directory = env["PROMETHEUS_MULTIPROC_DIR"]
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert "emptyDir" in mounts[directory], deployment["metadata"]["name"]  # empty with each pod
            if "worker" in deployment["metadata"]["name"]:
                assert {"name": "metrics", "containerPort": int(env["METRICS_PORT"])} in container["ports"]
        for container in spec.get("initContainers", []):  # the migration wait keeps its metrics in memory
            assert "PROMETHEUS_MULTIPROC_DIR" not in {e["name"] for e in container.get("env", [])}


def test_every_incr_and_observe_call_names_a_declared_metric_with_its_labels():
    """``incr``/``observe`` log rather than raise on an undeclared name or wrong labels (a metrics bug
    must not break a request): the code's calls are checked here instead."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    calls = []
    for package in ("config", "tenants", "channels_app", "conversations", "knowledge", "events"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("incr", "observe")
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "metrics"
                ):
                    labels = {k.arg for k in node.keywords if k.arg != "amount"}
                    calls.append((path.name, node.args[0].value, labels))
    assert len(calls) >= 20
    for where, name, labels in calls:
        declared = metrics._metrics.get(name)
        assert declared is not None, (where, name)
        assert set(declared._labelnames) == labels, (where, name)
