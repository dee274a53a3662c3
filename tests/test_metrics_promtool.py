"""/metrics of real processes after real traffic, checked by Prometheus' own linter, and the deploy/
alert rules and Grafana dashboard checked against it.

A daphne process and a Celery worker process (as ``make run`` starts them) share a fresh
PROMETHEUS_MULTIPROC_DIR; a user's message arrives through the signed WhatsApp webhook, the worker
answers it with the local LLM server and sends the reply to the local Graph API server. The scrape of
daphne's /metrics must then hold the worker's turn (multiprocess aggregation), pass
``promtool check metrics`` without a single lint problem, and name every metric the dashboard and the
alert rules query. promtool is Debian's ``prometheus`` package (``make promtool``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings

from tests.conftest import wait_until
from tests.metrics_scrape import samples, total, value
from tests.security import test_faults
from tests.webchat.conftest import free_port, start_daphne

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "metachat-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

# The conversation tests' fixtures and the real-process helpers of the fault tests.
_turn_settings = test_faults._turn_settings
graph = test_faults.graph
whatsapp = test_faults.whatsapp
llm = test_faults.llm
processes = test_faults.processes


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make promtool` installs Debian's prometheus package"
    return subprocess.run([path, *args], input=stdin, capture_output=True, text=True, timeout=60)


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    return exprs


def alert_expressions() -> list[str]:
    import yaml

    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def metric_names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in re.findall(r"\bmetachat_[a-z0-9_]+", expr)}


def exposed_names(body: str) -> set[str]:
    """Every sample name, and every declared family (a gauge with no rows right now has no sample)."""
    names = {name for name, _labels in samples(body)}
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


@pytest.fixture
def served(processes: Any, tmp_path: Path, whatsapp: Any, graph: Any, llm: Any) -> Any:
    """daphne and a turns worker sharing one empty multiprocess directory, the worker on this test's
    local LLM and Graph API servers and serving its own metrics on ``server.worker_metrics_url`` (as in a
    container of its own)."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    server = start_daphne(free_port(), tmp_path, {"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    port = free_port()
    test_faults.celery_worker(processes, "metrics", PROMETHEUS_MULTIPROC_DIR=str(directory), METRICS_PORT=str(port))
    server.worker_metrics_url = f"http://127.0.0.1:{port}/metrics"
    yield server
    server.stop()


def scrape_over_http(base_url: str) -> str:
    response = requests.get(
        f"{base_url}/metrics", headers={"Authorization": f"Bearer {settings.ADMIN_API_KEY}"}, timeout=30
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return response.text


def test_real_traffic_metrics_pass_promtool_and_cover_the_dashboard_and_the_alerts(served, whatsapp, graph, tenant):
    response = test_faults.post_webhook(served.url, whatsapp, "Where is my parcel?")
    assert response.status_code == 200
    wait_until(lambda: graph.texts, timeout=60)
    assert requests.get(f"{served.url}/api/health", timeout=10).status_code in (200, 503)
    assert requests.get(f"{served.url}/no/such/page/4711", timeout=10).status_code == 404
    # The worker records the turn's outcome (and its messages) after sending the reply.
    wait_until(lambda: total(scrape_over_http(served.url), "metachat_turns_total") >= 1, timeout=30)

    body = scrape_over_http(served.url)

    checked = promtool("check", "metrics", stdin=body)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")

    # The worker's figures, at the API process's endpoint.
    assert value(body, "metachat_turns_total", platform="whatsapp", outcome="answered") == 1
    assert value(body, "metachat_turn_duration_seconds_count", platform="whatsapp") == 1
    for stage in ("resolve", "intake", "retrieval", "completion", "reply", "finish"):
        assert value(body, "metachat_turn_stage_duration_seconds_count", stage=stage) == 1, stage
    assert total(body, "metachat_llm_request_duration_seconds_count") == 1
    assert value(body, "metachat_retrieval_duration_seconds_count") == 1
    assert total(body, "metachat_db_query_duration_seconds_count", operation="select") > 0
    # Per tenant (by slug: one of the few tenants there are) and channel.
    messages = {"tenant": tenant.slug, "channel": "whatsapp"}
    assert value(body, "metachat_messages_total", direction="inbound", **messages) == 1
    assert value(body, "metachat_messages_total", direction="outbound", **messages) == 1
    # daphne's own: the webhook request by route name, not path; unknown paths share one series.
    assert value(body, "metachat_webhook_requests_total", platform="whatsapp", outcome="ok") == 1
    http = "metachat_http_request_duration_seconds_count"
    assert value(body, http, route="webhook-whatsapp", method="POST", status="2xx") == 1
    assert value(body, http, route="unmatched", method="GET", status="4xx") == 1
    assert not [labels for name, labels in samples(body) if name == http and ("route", "/webhooks/whatsapp") in labels]
    # Scrape-time gauges from the database and the broker.
    assert value(body, "metachat_outbox_lag_seconds", outlet="webhook_fanout") >= 0
    assert {"default", "indexing", "webhooks"} <= {
        dict(labels)["queue"] for name, labels in samples(body) if name == "metachat_celery_queue_length"
    }

    exposed = exposed_names(body)
    assert metric_names(dashboard_expressions()) - exposed == set()
    assert metric_names(alert_expressions()) - exposed == set()

    # The worker's own endpoint (METRICS_PORT): the same files, no key, no scrape-time gauges.
    worker_body = requests.get(served.worker_metrics_url, timeout=30).text
    checked = promtool("check", "metrics", stdin=worker_body)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    assert value(worker_body, "metachat_turn_stage_duration_seconds_count", stage="completion") == 1
    assert "metachat_celery_queue_length" not in worker_body


def test_alert_rules_pass_promtool_and_cover_what_operators_are_paged_for():
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout
    names = metric_names(alert_expressions())
    for needed in (
        "metachat_turn_duration_seconds_bucket",
        "metachat_webhook_delivery_attempts_total",
        "metachat_indexing_backlog_documents",
        "metachat_celery_queue_length",
        "metachat_outbox_lag_seconds",
        "metachat_http_request_duration_seconds_count",
    ):
        assert needed in names


def test_the_dashboard_charts_the_five_key_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "metachat-overview"
    charts = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(charts) >= 15
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in charts)
    assert all(t["expr"] for p in charts for t in p["targets"])
    names = metric_names(dashboard_expressions())
    for needed in (
        "metachat_messages_total",
        "metachat_llm_request_duration_seconds_bucket",
        "metachat_retrieval_duration_seconds_bucket",
        "metachat_webhook_delivery_attempts_total",
        "metachat_db_query_duration_seconds_bucket",
        "metachat_turn_stage_duration_seconds_bucket",
        "metachat_http_request_duration_seconds_bucket",
    ):
        assert needed in names
