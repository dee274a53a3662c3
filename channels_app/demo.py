"""Demo content for `make run` (called by tenants.demo.ensure_demo): a web chat channel on the demo page,
and a small sample document so the demo assistant has something to answer from.

Idempotent: run at every start; it adds what is missing and widens the allowed origins to the current
PUBLIC_BASE_URL. Returns the lines `make run` prints ("{base_url}" is filled in by the caller).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction

from channels_app.models import Channel, new_widget_key
from channels_app.webchat import normalize_origin
from tenants.models import Tenant

logger = logging.getLogger(__name__)

DEMO_CHANNEL_NAME = "Demo page web chat"
SAMPLE_DOCUMENT_TITLE = "About Demo Company (sample)"
SAMPLE_DOCUMENT = b"""# About Demo Company

Demo Company sells refurbished laptops and tablets online and from its shop in Lisbon.

## Opening hours
The Lisbon shop is open Monday to Friday from 9:00 to 18:00 and on Saturday from 10:00 to 14:00.
It is closed on Sundays and public holidays.

## Shipping
Orders ship within 2 business days. Delivery in Portugal takes 1 to 3 days and costs 4.90 EUR;
orders over 100 EUR ship free. We ship to every country of the European Union.

## Warranty and returns
Every device comes with an 18-month warranty covering hardware faults.
You can return a device within 30 days of delivery for a full refund, as long as it is undamaged.

## Contact
Email support@demo-company.example or call +351 210 000 000 during opening hours.
"""


def demo_origins() -> list[str]:
    origins = {"http://127.0.0.1:8000", "http://localhost:8000"}
    base = normalize_origin(getattr(settings, "PUBLIC_BASE_URL", ""))
    if base:
        origins.add(base)
        host = urlsplit(base).hostname
        if host in ("127.0.0.1", "localhost"):  # both spellings of the local host reach the same server
            other = "localhost" if host == "127.0.0.1" else "127.0.0.1"
            origins.add(base.replace(f"//{host}", f"//{other}", 1))
    return sorted(origins)


def ensure_demo_channel(*, tenant: Tenant) -> Channel:
    with transaction.atomic():
        channel = (
            Channel.objects.for_tenant(tenant)
            .select_for_update()
            .filter(type=Channel.Type.WEBCHAT, config__demo_page=True)
            .order_by("created_at")
            .first()
        )
        if channel is None:
            return Channel.objects.create(
                tenant=tenant,
                type=Channel.Type.WEBCHAT,
                name=DEMO_CHANNEL_NAME,
                external_id=new_widget_key(),
                config={"allowed_origins": demo_origins(), "demo_page": True, "title": tenant.name},
            )
        config = dict(channel.config or {})
        current = list(config.get("allowed_origins", []))
        missing = [o for o in demo_origins() if o not in current]
        if missing:
            config["allowed_origins"] = current + missing
            channel.config = config
            channel.save(update_fields=["config", "updated_at"])
        return channel


def ensure_sample_document(*, tenant: Tenant) -> str | None:
    """Upload the sample document through the knowledge service if it is there; a note on what happened."""
    try:
        from knowledge.services import document_upload
    except (ImportError, AttributeError):
        return None
    try:
        from knowledge.models import Document

        if Document.objects.for_tenant(tenant).filter(title=SAMPLE_DOCUMENT_TITLE).exists():
            return None
    except Exception:  # no title to check by: upload anyway, identical content is recognised there
        logger.debug("could not check for the sample document; uploading it")
    try:
        document_upload(
            tenant=tenant,
            file=SimpleUploadedFile("about-demo-company.md", SAMPLE_DOCUMENT, content_type="text/markdown"),
            title=SAMPLE_DOCUMENT_TITLE,
        )
    except Exception as exc:  # demo content must never stop `make run`; say why instead
        logger.warning("sample document upload failed", extra={"error": str(exc)})
        return f"  (sample document not uploaded: {exc})"
    return f"  Sample document uploaded: {SAMPLE_DOCUMENT_TITLE!r} (ask about opening hours, shipping, returns)"


def ensure_demo_content(*, tenant: Tenant) -> list[str]:
    channel = ensure_demo_channel(tenant=tenant)
    lines = [
        f"Web chat demo: {{base_url}}/demo/{tenant.slug}/",
        f"  widget key: {channel.external_id}   (allowed origins: {', '.join(channel.config.get('allowed_origins', []))})",
    ]
    note = ensure_sample_document(tenant=tenant)
    if note:
        lines.append(note)
    return lines
