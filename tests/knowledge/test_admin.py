from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from knowledge.models import Document
from tests.knowledge.conftest import wait_for_status


@pytest.fixture
def admin_client_logged(db: Any) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-long-enough")
    client = Client()
    client.force_login(user)
    return client


def test_admin_upload_then_try_a_question_shows_ranked_sources(
    live_worker: Any, admin_client_logged: Client, tenant: Any
) -> None:
    response = admin_client_logged.post(
        "/admin/knowledge/document/add/",
        {
            "tenant": str(tenant.pk),
            "title": "Handbook",
            "upload": SimpleUploadedFile("handbook.md", b"# Leave\n\nStaff get 25 days of paid leave per year."),
        },
    )
    assert response.status_code == 302, response.content[:2000]
    document = wait_for_status(Document.objects.for_tenant(tenant).get().pk)
    assert (document.title, document.status) == ("Handbook", "indexed")

    listing = admin_client_logged.get("/admin/knowledge/document/")
    page = admin_client_logged.get(
        "/admin/knowledge/document/try/", {"tenant": str(tenant.pk), "q": "how many days of paid leave?"}
    )
    nothing = admin_client_logged.get(
        "/admin/knowledge/document/try/", {"tenant": str(tenant.pk), "q": "volcano eruption forecast"}
    )

    assert "1/1 (100%)" in listing.content.decode()
    html = page.content.decode()
    assert 'id="results"' in html and "Handbook" in html and "Staff get 25 days of paid leave per year." in html
    assert 'id="no-results"' in nothing.content.decode()
