"""The OpenAPI schema an integrator reads at /api/docs/: generated without a single drf-spectacular
warning or error (each one used to be a log line per schema request), every operation tagged with its
area and described, every documented error in the platform's envelope, enums with real names, the
security schemes declared; and Swagger UI served from our own static files, not a CDN."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

ALLOWED_TAGS = {"Tenants", "Channels", "Knowledge", "Conversations", "Events & webhooks", "Web chat", "Health"}
ERROR_REF = "#/components/schemas/Error"


@pytest.fixture(scope="module")
def generated() -> tuple[dict[str, Any], list[str], list[str]]:
    """The schema /api/schema/ serves, with what the generator warned about (``--fail-on-warn``)."""
    GENERATOR_STATS.reset()
    schema = SchemaGenerator().get_schema(request=None, public=True)
    warnings = sorted(GENERATOR_STATS._warn_cache)
    errors = sorted(GENERATOR_STATS._error_cache)
    GENERATOR_STATS.reset()
    return schema, warnings, errors


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def test_the_schema_is_generated_without_a_warning_or_an_error_and_is_valid_openapi(generated: Any) -> None:
    schema, warnings, errors = generated
    assert warnings == []
    assert errors == []
    validate_schema(schema)


def test_every_operation_has_an_area_tag_a_summary_and_a_description_for_an_integrator(generated: Any) -> None:
    schema = generated[0]
    ops = operations(schema)
    assert len(ops) >= 50
    untagged = [f"{m} {p}: {op.get('tags')}" for m, p, op in ops if len(op.get("tags", [])) != 1]
    assert untagged == []
    unknown = [f"{m} {p}: {op['tags']}" for m, p, op in ops if op["tags"][0] not in ALLOWED_TAGS]
    assert unknown == []
    undescribed = [f"{m} {p}" for m, p, op in ops if len(op.get("description", "")) < 40 or not op.get("summary")]
    assert undescribed == []
    # Every area shows up, in the declared order, with its own description.
    assert {t["name"] for t in schema["tags"]} == ALLOWED_TAGS
    assert {op["tags"][0] for _, _, op in ops} == ALLOWED_TAGS
    # Internal docstrings ("An action: POST only; it must not inherit...") are not what an integrator reads.
    leaked = [f"{m} {p}" for m, p, op in ops if "must not inherit" in op["description"]]
    assert leaked == []


def test_every_documented_error_answers_the_envelope(generated: Any) -> None:
    schema = generated[0]
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    body = schema["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"code", "message", "details"}

    problems = []
    for method, path, op in operations(schema):
        if path == "/api/health":  # a 503 there is the health report itself
            continue
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
            if ref != ERROR_REF:
                problems.append(f"{method} {path} {status}: {ref}")
    assert problems == []


def test_error_statuses_are_documented_where_they_apply(generated: Any) -> None:
    schema = generated[0]
    ops = {(m, p): op for m, p, op in operations(schema)}
    missing = []
    for (method, path), op in ops.items():
        statuses = set(op["responses"])
        if op.get("security", [{}]) != [{}]:
            if "401" not in statuses:
                missing.append(f"{method} {path}: 401")
            if "429" not in statuses:
                missing.append(f"{method} {path}: 429")
        if "{" in path and "404" not in statuses:
            missing.append(f"{method} {path}: 404")
        if "requestBody" in op and not {"400", "413"} <= statuses:
            missing.append(f"{method} {path}: 400/413")
    assert missing == []
    # Admin-only operations say so, in their security and with a 403.
    for key in [("GET", "/api/tenants/"), ("POST", "/api/tenants/"), ("DELETE", "/api/tenants/{tenant_id}/")]:
        assert "403" in ops[key]["responses"], key
        assert {"AdminApiKey": []} in ops[key]["security"] and {"TenantApiKey": []} not in ops[key]["security"]
    # Conflicts the services raise are documented with their code.
    resolve = ops[("POST", "/api/tenants/{tenant_id}/conversations/{conversation_id}/resolve/")]
    assert resolve["responses"]["409"]["content"]["application/json"]["examples"]
    assert "409" in ops[("POST", "/api/tenants/{tenant_id}/channels/")]["responses"]
    assert "409" in ops[("DELETE", "/api/tenants/{tenant_id}/secrets/{name}/")]["responses"]
    upload = ops[("POST", "/api/tenants/{tenant_id}/documents/")]["responses"]
    assert {"413", "415"} <= set(upload)


def test_enums_have_real_names_and_auth_schemes_are_declared(generated: Any) -> None:
    schema = generated[0]
    names = set(schema["components"]["schemas"])
    hashed = sorted(n for n in names if re.fullmatch(r".*[0-9a-f]{3}Enum", n))
    assert hashed == []
    assert {"ChannelTypeEnum", "DocumentStatusEnum", "WebhookDeliveryStatusEnum", "EventTypeEnum"} <= names
    schemes = schema["components"]["securitySchemes"]
    assert schemes["TenantApiKey"]["scheme"] == "bearer"
    assert schemes["AdminApiKey"]["scheme"] == "bearer"
    assert schemes["ApiKeyHeader"] == {**schemes["ApiKeyHeader"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    # The widget's public endpoint needs no key: no security requirement at all (or an empty one).
    webchat = schema["paths"]["/api/webchat/sessions/"]["post"]
    assert webchat.get("security", [{}]) == [{}]


def test_the_main_operations_carry_examples(generated: Any) -> None:
    schema = generated[0]

    def has_example(op: dict[str, Any]) -> bool:
        bodies = [op.get("requestBody", {}), *op["responses"].values()]
        return any(media.get("examples") for body in bodies for media in body.get("content", {}).values())

    main = [
        ("post", "/api/tenants/"),
        ("post", "/api/tenants/{tenant_id}/channels/"),
        ("get", "/api/tenants/{tenant_id}/search"),
        ("post", "/api/tenants/{tenant_id}/webhooks/"),
        ("post", "/api/tenants/{tenant_id}/conversations/{conversation_id}/reply/"),
        ("post", "/api/webchat/sessions/"),
    ]
    assert [key for key in main if not has_example(schema["paths"][key[1]][key[0]])] == []


def test_the_docs_page_loads_swagger_ui_from_our_static_files(client: Any) -> None:
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', html) + re.findall(r'<link[^>]+href="([^"]+)"', html)
    assert scripts, html[:500]
    assert [s for s in scripts if not s.startswith("/static/")] == []
    assert "cdn" not in html.lower()
    # Served from the static files (config.asgi's static handler under daphne; the browser test loads them).
    bundle = next(s for s in scripts if s.endswith("swagger-ui-bundle.js"))
    assert finders.find(bundle.removeprefix(settings.STATIC_URL))
    assert client.get("/api/redoc/").status_code == 200


# --- docs/api.md: its webhook verification snippets against the platform's own signer ------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _snippet(language: str, marker: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), flags=re.S)
    return next(block for block in blocks if marker in block)


def _signed_cases() -> list[tuple[str, dict[str, str], str, bool]]:
    """(secret, headers, body, expected) as the platform sends them (events.signing), and forgeries."""
    from events import signing

    secret, previous = signing.generate_secret(), signing.generate_secret()
    body = '{"id": "e1", "type": "message.received", "payload": {"text": "héllo"}}'
    now = int(time.time())

    def headers(timestamp: int, keys: list[str], webhook_id: str = "7d0c1f3e-event") -> dict[str, str]:
        signature = signing.signature_header_for_keys(
            keys=[signing.secret_key(k) for k in keys], webhook_id=webhook_id, timestamp=timestamp, body=body.encode()
        )
        return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}

    return [
        (secret, headers(now, [secret]), body, True),
        (secret, headers(now, [secret, previous]), body, True),  # during a rotation: new and previous
        (previous, headers(now, [secret, previous]), body, True),  # a receiver not switched yet
        (secret, headers(now, [previous]), body, False),
        (secret, headers(now, [secret]), body.replace("héllo", "hello"), False),  # body changed
        (secret, {**headers(now, [secret]), "webhook-id": "another"}, body, False),
        (secret, headers(now - 3600, [secret]), body, False),  # an old request replayed
        (secret, {"webhook-id": "x", "webhook-timestamp": str(now)}, body, False),  # unsigned
    ]


def test_the_python_webhook_verification_in_docs_accepts_our_signatures_and_refuses_forgeries() -> None:
    namespace: dict[str, Any] = {}
    exec(_snippet("python", "def verify_webhook"), namespace)
    verify = namespace["verify_webhook"]
    results = [verify(secret, headers, body.encode()) for secret, headers, body, _ in _signed_cases()]
    assert results == [expected for *_, expected in _signed_cases()]


@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed")
def test_the_javascript_webhook_verification_in_docs_accepts_our_signatures_and_refuses_forgeries(
    tmp_path: Path,
) -> None:
    cases = _signed_cases()
    module = tmp_path / "verify.mjs"
    module.write_text(
        _snippet("js", "export function verifyWebhook")
        + "\nconst cases = JSON.parse(process.argv[2]);\n"
        + "console.log(JSON.stringify(cases.map(([s, h, b]) => verifyWebhook(s, h, Buffer.from(b, 'utf8')))));\n"
    )
    argument = json.dumps([[secret, headers, body] for secret, headers, body, _ in cases])
    out = subprocess.run(["node", str(module), argument], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(out.stdout) == [expected for *_, expected in cases]
