"""Channel forms per type: a web chat channel has origins, greeting, colours and its embed snippet; a
WhatsApp channel has its id and credentials; neither shows the other's fields."""

from __future__ import annotations

from django.test import Client

from channels_app import webchat
from channels_app.models import Channel
from tenants.services import staff_user_create


def owner_client(tenant) -> Client:
    user, _ = staff_user_create(tenant=tenant, username="owner", role="owner", password="pw-123456789")
    client = Client()
    client.force_login(user)
    return client


def test_adding_a_channel_starts_with_its_type_and_web_chat_asks_no_meta_credentials(tenant):
    owner = owner_client(tenant)

    choose = owner.get("/admin/channels_app/channel/add/")
    form = owner.get("/admin/channels_app/channel/add/?type=webchat")

    assert choose.status_code == 200
    assert 'href="?type=webchat"' in choose.content.decode() and 'href="?type=whatsapp"' in choose.content.decode()
    html = form.content.decode()
    assert form.status_code == 200 and "Add Web chat channel" in html
    for name in ("allowed_origins", "widget_title", "greeting", "accent_color", "accent_text_color", "demo_page"):
        assert f'name="{name}"' in html, name
    for name in ("app_secret", "access_token", "verify_token", "external_id", "display_phone_number"):
        assert f'name="{name}"' not in html, name


def test_web_chat_channel_saved_from_the_form_serves_sessions_and_shows_its_snippet(tenant):
    owner = owner_client(tenant)

    bad = owner.post(
        "/admin/channels_app/channel/add/?type=webchat",
        {"type": "webchat", "name": "Site chat", "is_active": "on", "allowed_origins": "www.example.com",
         "accent_color": "#2456d6", "accent_text_color": "#ffffff"},
    )  # fmt: skip
    added = owner.post(
        "/admin/channels_app/channel/add/?type=webchat",
        {"type": "webchat", "name": "Site chat", "is_active": "on",
         "allowed_origins": "https://www.example.com\nHTTPS://Shop.Example.com:443/",
         "widget_title": "Ask Acme", "greeting": "Hi! How can we help?",
         "accent_color": "#AA0000", "accent_text_color": "#ffffff", "demo_page": "on"},
    )  # fmt: skip

    assert bad.status_code == 200
    assert "is not an origin" in bad.context["adminform"].form.errors["allowed_origins"][0]
    assert added.status_code == 302, added.context["adminform"].form.errors
    channel = Channel.objects.for_tenant(tenant).get()
    assert channel.type == "webchat" and channel.external_id.startswith("wk_")
    assert channel.config == {
        "allowed_origins": ["https://www.example.com", "https://shop.example.com"],
        "title": "Ask Acme",
        "greeting": "Hi! How can we help?",
        "accent_color": "#aa0000",
        "accent_text_color": "#ffffff",
        "demo_page": True,
    }
    session = webchat.session_start(
        widget_key=channel.external_id, origin="https://shop.example.com", client="203.0.113.9"
    ).as_response()
    assert session["widget"]["title"] == "Ask Acme" and session["widget"]["greeting"] == "Hi! How can we help?"

    page = owner.get(f"/admin/channels_app/channel/{channel.pk}/change/")
    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="embed-snippet"' in html and 'id="copy-embed-snippet"' in html
    assert f"data-widget-key=&quot;{channel.external_id}&quot;" in html
    assert "http://testserver/static/webchat/widget.js" in html
    assert "--mc-accent:#aa0000;--mc-accent-text:#ffffff" in html
    assert f'href="/demo/{tenant.slug}/"' in html
    for name in ("app_secret", "access_token", "verify_token", "display_phone_number"):
        assert f'name="{name}"' not in html, name


def test_whatsapp_channel_form_has_its_id_and_credentials_and_keeps_other_config(wa_channel):
    Channel.objects.filter(pk=wa_channel.pk).update(config={"display_phone_number": "15550001111", "extra": 1})
    owner = owner_client(wa_channel.tenant)

    page = owner.get(f"/admin/channels_app/channel/{wa_channel.pk}/change/")
    html = page.content.decode()
    saved = owner.post(
        f"/admin/channels_app/channel/{wa_channel.pk}/change/",
        {"name": "Support line", "is_active": "on", "external_id": wa_channel.external_id,
         "display_phone_number": "+1 555 000 2222"},
    )  # fmt: skip

    assert "Phone number ID" in html and 'name="access_token"' in html and 'name="display_phone_number"' in html
    assert 'name="allowed_origins"' not in html and 'id="embed-snippet"' not in html
    assert saved.status_code == 302, saved.context["adminform"].form.errors
    wa_channel.refresh_from_db()
    assert wa_channel.config == {"display_phone_number": "+1 555 000 2222", "extra": 1}
    assert wa_channel.type == "whatsapp"


def test_meta_channel_needs_its_numeric_id(tenant):
    from django.contrib.auth import get_user_model

    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456789"))
    url = "/admin/channels_app/channel/add/?type=whatsapp"
    data = {"tenant": str(tenant.pk), "type": "whatsapp", "name": "Line", "is_active": "on"}

    missing = client.post(url, {**data, "external_id": ""})
    letters = client.post(url, {**data, "external_id": "+1 555"})
    saved = client.post(url, {**data, "external_id": "1065000111", "access_token": "EAAx", "app_secret": "s"})

    assert missing.context["adminform"].form.errors == {"external_id": ["This field is required."]}
    assert letters.context["adminform"].form.errors == {"external_id": ["Meta's ids are digits only."]}
    assert saved.status_code == 302, saved.context["adminform"].form.errors
    channel = Channel.objects.get(external_id="1065000111")
    assert (channel.type, channel.tenant_id, channel.config) == ("whatsapp", tenant.pk, {})
