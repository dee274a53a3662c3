"""Logs as an operator reads them: every line a process writes is one JSON object; one access line per
HTTP request (method, route pattern, status, latency, tenant, correlation id); a traceback is one
line; credentials never appear. Read from the output of real processes (a daphne server, a Django
process), not from an in-process handler."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import requests
from django.conf import settings

from tenants import services
from tests.conftest import wait_until
from tests.test_correlation import json_lines
from tests.webchat.conftest import ROOT, free_port, server_env, start_daphne

CANARY_TOKEN = "vt-canary-3e9d1b7a55"


def access_lines(path: Path) -> list[dict[str, Any]]:
    return [line for line in json_lines(path) if line["logger"] == "metachat.access"]


def test_each_request_has_one_access_line_with_its_route_status_latency_tenant_and_id(
    transactional_db, tenant, tmp_path
):
    key = services.api_key_create(tenant=tenant).raw_key
    server = start_daphne(free_port(), tmp_path)
    try:
        listed = requests.get(
            f"{server.url}/api/tenants/{tenant.pk}/channels/",
            headers={"X-API-Key": key, "X-Request-ID": "support-ticket-8812"},
            timeout=15,
        )
        by_key = requests.get(f"{server.url}/api/tenants/", headers={"X-API-Key": key}, timeout=15)
        missing = requests.get(f"{server.url}/api/no/such/{uuid.uuid4()}", timeout=15)
        schema = requests.get(f"{server.url}/api/schema/", timeout=60)  # drf-spectacular at run time
    finally:
        server.stop()
    assert listed.status_code == 200
    assert missing.status_code == 404
    assert schema.status_code == 200

    lines = access_lines(server.log_path)  # and every line of the server's output is JSON
    assert [(line["method"], line["route"], line["status"]) for line in lines] == [
        ("GET", "api/tenants/<uuid:tenant_id>/channels/", 200),
        ("GET", "api/tenants/", by_key.status_code),
        ("GET", None, 404),  # no pattern matched: the raw path (an id, a typo, a probe) is not logged
        ("GET", "api/schema/", 200),
    ]
    first, second, unmatched, _schema = lines
    assert first["tenant_id"] == str(tenant.pk)
    assert first["correlation_id"] == listed.headers["X-Request-ID"] == "support-ticket-8812"
    assert second["tenant_id"] == str(tenant.pk)  # not in the URL: the tenant of the key
    assert second["correlation_id"] == by_key.headers["X-Request-ID"]  # generated, and echoed
    assert unmatched["tenant_id"] is None
    assert all(isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0 for line in lines)
    assert str(unmatched["correlation_id"]) == missing.headers["X-Request-ID"]


def test_the_access_log_can_be_turned_off(transactional_db, tmp_path):
    server = start_daphne(free_port(), tmp_path, {"ACCESS_LOG": "false"})
    try:
        answered = requests.get(f"{server.url}/api/health", timeout=15)
    finally:
        server.stop()
    assert answered.headers["X-Request-ID"]  # the id is still chosen and echoed
    assert access_lines(server.log_path) == []


def test_a_refused_request_logs_its_id_and_no_credential(transactional_db, tenant, tmp_path):
    server = start_daphne(free_port(), tmp_path)
    try:
        handshake = requests.get(
            f"{server.url}/webhooks/whatsapp",
            params={"hub.mode": "subscribe", "hub.verify_token": CANARY_TOKEN, "hub.challenge": "42"},
            timeout=15,
        )
        bad_key = requests.get(
            f"{server.url}/api/tenants/{tenant.pk}/channels/",
            headers={"Authorization": f"Bearer {CANARY_TOKEN}"},
            timeout=15,
        )
    finally:
        server.stop()
    assert handshake.status_code == 403
    assert bad_key.status_code == 401

    text = server.log_path.read_text()
    assert CANARY_TOKEN not in text
    lines = json_lines(server.log_path)
    refused = [line for line in lines if line["logger"] == "django.request"]
    assert {line["status_code"] for line in refused} == {401, 403}
    # Django writes these once its middleware has returned: they carry the request's id all the same.
    assert {line["correlation_id"] for line in refused} == {
        handshake.headers["X-Request-ID"],
        bad_key.headers["X-Request-ID"],
    }
    assert any("hub.verify_token=***" in line["request"] for line in refused)


def test_a_server_error_is_one_json_line_with_the_traceback_and_the_request_id(transactional_db, tmp_path):
    """The database is unreachable: the API answers 500, and the log has the traceback in one line."""
    server = start_daphne(
        free_port(), tmp_path, {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none", "DB_CONNECT_TIMEOUT": "1"}
    )
    try:
        response = requests.get(
            f"{server.url}/api/tenants/",
            headers={"X-API-Key": settings.ADMIN_API_KEY, "X-Request-ID": "outage-drill-1"},
            timeout=30,
        )
    finally:
        server.stop()
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"

    lines = json_lines(server.log_path)
    (error,) = [line for line in lines if "traceback" in line]
    assert error["level"] == "ERROR"
    assert error["correlation_id"] == "outage-drill-1"
    assert error["exc_type"] == "OperationalError"
    assert error["traceback"].startswith("Traceback (most recent call last):")
    assert error["traceback"].count("\n") > 5  # the whole traceback, inside one JSON line
    (access,) = [line for line in lines if line["logger"] == "metachat.access"]
    assert (access["route"], access["status"], access["correlation_id"]) == ("api/tenants/", 500, "outage-drill-1")


SCRIPT = """
import logging, warnings
import django
django.setup()
from drf_spectacular.drainage import warn
warnings.warn("this setting is going away", DeprecationWarning)
warn("could not resolve the serializer of a view")
logging.getLogger("metachat.test").warning("calling https://graph.example/x?access_token=%s", "EAAsecret123")
raise RuntimeError("boom while calling https://graph.example/x?access_token=EAAsecret123")
"""


def test_warnings_schema_warnings_and_an_uncaught_exception_are_json_lines_without_credentials():
    env = {**server_env(), "PYTHONWARNINGS": "always"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    output = run.stdout + run.stderr
    assert "EAAsecret123" not in output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # each one JSON
    by_logger = {line["logger"]: line for line in lines}
    assert "this setting is going away" in by_logger["py.warnings"]["message"]
    assert by_logger["drf_spectacular"]["message"] == "schema warning: could not resolve the serializer of a view"
    assert "access_token=***" in by_logger["metachat.test"]["message"]
    crash = by_logger["metachat.uncaught"]
    assert json.loads(run.stderr.strip().splitlines()[-1]) == crash  # where a crash is looked for
    assert crash["level"] == "CRITICAL"
    assert crash["exc_type"] == "RuntimeError"
    assert "access_token=***" in crash["message"]
    assert crash["traceback"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: boom while calling https://graph.example/x?access_token=***" in crash["traceback"]


def test_the_schema_command_has_nothing_to_warn_about(tmp_path):
    out = tmp_path / "schema.yml"
    run = subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--fail-on-warn", "--file", str(out)],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stdout.strip() == run.stderr.strip() == ""
    assert out.read_text().startswith("openapi:")


def test_celery_beat_writes_json_lines_even_without_quiet(tmp_path, redis_client):
    """Beat sends what is due at once: to a key prefix of its own, so no test's worker runs it."""
    prefix = f"beatlog{uuid.uuid4().hex[:8]}"
    log_path = tmp_path / "beat.log"
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "config",
        "beat",
        "-s",
        str(tmp_path / "schedule"),
        "--loglevel",
        "INFO",
    ]
    with log_path.open("wb") as log:
        env = {**server_env(), "REDIS_KEY_PREFIX": prefix}
        beat = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: any(line["message"] == "celery beat starting" for line in json_lines(log_path)), timeout=180)
    finally:
        beat.terminate()
        beat.wait(timeout=20)
        for key in redis_client.scan_iter(f"{prefix}:*"):
            redis_client.delete(key)
    lines = json_lines(log_path)  # the banner too would have to be JSON
    assert {line["logger"] for line in lines} <= {"celery.beat", "py.warnings"}
