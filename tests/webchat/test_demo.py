"""`make run`'s demo: a web chat channel on /demo/<slug>/ and a sample document, created once."""

from __future__ import annotations

from io import StringIO

from django.core.management import call_command

from channels_app.demo import SAMPLE_DOCUMENT_TITLE, ensure_demo_content
from channels_app.models import Channel


def test_bootstrap_prints_the_demo_page_and_a_second_run_creates_nothing_new(db, settings):
    settings.PUBLIC_BASE_URL = "http://127.0.0.1:8123"
    first, second = StringIO(), StringIO()

    call_command("bootstrap_demo", "--base-url", "http://127.0.0.1:8123", stdout=first)
    call_command("bootstrap_demo", "--base-url", "http://127.0.0.1:8123", stdout=second)

    assert "Web chat demo: http://127.0.0.1:8123/demo/demo/" in first.getvalue()
    assert "Web chat demo: http://127.0.0.1:8123/demo/demo/" in second.getvalue()
    [channel] = Channel.objects.filter(type=Channel.Type.WEBCHAT, tenant__slug="demo")
    assert channel.external_id.startswith("wk_")
    assert channel.config["demo_page"] is True
    assert "http://127.0.0.1:8123" in channel.config["allowed_origins"]
    assert "http://localhost:8123" in channel.config["allowed_origins"]


def test_demo_page_embeds_the_widget_with_the_channel_key(client, tenant):
    ensure_demo_content(tenant=tenant)
    channel = Channel.objects.for_tenant(tenant).get(type=Channel.Type.WEBCHAT)

    response = client.get(f"/demo/{tenant.slug}/")

    html = response.content.decode()
    assert response.status_code == 200
    assert f'data-widget-key="{channel.external_id}"' in html
    assert 'src="/static/webchat/widget.js"' in html
    assert 'href="/static/webchat/widget.css"' in html
    # The page names our icon: a browser asks for /favicon.ico otherwise, a 404 in the console.
    assert '<link rel="icon" type="image/svg+xml" href="/static/metachat/favicon.svg">' in html


def test_demo_page_is_404_for_a_tenant_without_a_demo_channel(client, tenant, make_webchat_channel):
    make_webchat_channel(tenant)  # a real site's widget is not shown on a demo page

    assert client.get(f"/demo/{tenant.slug}/").status_code == 404
    assert client.get("/demo/no-such-tenant/").status_code == 404


def test_demo_content_uploads_the_sample_document_once(tenant):
    from knowledge.models import Document

    ensure_demo_content(tenant=tenant)
    lines = ensure_demo_content(tenant=tenant)

    assert Document.objects.for_tenant(tenant).filter(title=SAMPLE_DOCUMENT_TITLE).count() == 1
    assert lines[0] == f"Web chat demo: {{base_url}}/demo/{tenant.slug}/"
