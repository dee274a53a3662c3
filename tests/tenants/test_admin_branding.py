"""The admin is branded as the platform and has no "View site" link to a page that does not exist."""

from __future__ import annotations

from django.contrib.auth import get_user_model


def test_admin_says_meta_chat_platform_and_links_to_no_missing_site(client, db):
    login = client.get("/admin/login/")
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", "pw-12345678"))

    index = client.get("/admin/")

    html = index.content.decode()
    assert index.status_code == 200
    assert "<title>Administration | Meta Chat Platform</title>" in html
    assert '<a href="/admin/">Meta Chat Platform</a>' in html
    assert "View site" not in html and "Django administration" not in html
    assert "Meta Chat Platform" in login.content.decode()
