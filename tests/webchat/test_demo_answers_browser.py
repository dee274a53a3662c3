"""The demo's questions through the web chat in Chromium (issue 17): the sentence that answers them, in
English and in Portuguese, each source once in the list under the message and not in its text."""

from __future__ import annotations

import os

import pytest

from channels_app.models import Channel, new_widget_key
from tests.conversations.test_offline_answers import HANDBOOK_EN, HANDBOOK_PT

pytestmark = [pytest.mark.browser]


@pytest.mark.parametrize(
    ("question", "answer", "preamble", "source"),
    [
        (
            "What are your opening hours?",
            "The Lisbon shop is open Monday to Friday from 9:00 to 18:00",
            "Here is what I found in",
            "Handbook",
        ),
        (
            "Quanto custa o envio para Espanha?",
            "O envio para Espanha custa 7,90 EUR e demora 2 a 4 dias úteis.",
            "Eis o que encontrei nos documentos",
            "Manual",
        ),
    ],
)
def test_demo_question_gets_its_answer_with_the_source_once(
    browser, daphne_servers, live_worker, tenant, question, answer, preamble, source
):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from playwright.sync_api import expect

    from knowledge.models import Document
    from knowledge.services import document_upload
    from tests.conftest import wait_until

    ids = [
        document_upload(
            tenant=tenant, file=SimpleUploadedFile(name, content, content_type="text/markdown"), title=title
        ).pk
        for name, content, title in (("handbook.md", HANDBOOK_EN, "Handbook"), ("manual.md", HANDBOOK_PT, "Manual"))
    ]
    wait_until(
        lambda: all(Document.objects.for_tenant(tenant).get(pk=i).status == Document.Status.INDEXED for i in ids),
        timeout=float(os.environ.get("WEBCHAT_E2E_INDEX_TIMEOUT", "180")),
    )
    server = daphne_servers()
    Channel.objects.create(
        tenant=tenant, type=Channel.Type.WEBCHAT, name="Demo page", external_id=new_widget_key(),
        config={"allowed_origins": [server.url], "demo_page": True},
    )  # fmt: skip
    page = browser.new_page()
    page.goto(f"{server.url}/demo/{tenant.slug}/")
    log = page.get_by_role("log", name="Conversation")
    expect(page.locator(".mc-widget")).to_have_attribute("data-connection", "online", timeout=15000)

    page.get_by_label("Your message").fill(question)
    page.keyboard.press("Enter")

    reply = log.locator(".mc-msg--assistant").last
    expect(reply).to_contain_text(answer, timeout=60000)
    expect(reply).to_contain_text(preamble)
    sources = reply.locator(".mc-sources")
    expect(sources).to_contain_text(source, timeout=10000)
    listed = sources.inner_text()
    assert listed.count(source) == 1, listed
    assert reply.inner_text().count(source) == 1  # in the list only, not repeated in the text
